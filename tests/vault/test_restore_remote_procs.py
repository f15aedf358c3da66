"""Restores from a REAL vault process run in restore processes that fetch their own byte ranges:
byte-identical trees, the token only down the pipe, retries in the processes, clear failures
when the vault dies, answers errors or a process dies (never a silent partial restore)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.engine.conftest import tree_state

from rempart.core.errors import RempartError
from rempart.crypto.kit import decrypt_kit
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository
from rempart.snapshot.restore_procs import RestoreProcs, pack_source
from rempart.snapshot.restorer import Restorer, TreeReader
from rempart.storage.base import FileType
from rempart.storage.wrappers import RetryBackend

PASS = "a long and private passphrase"


def rempart(repo: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rempart.cli.main", "-q", "-r", repo, *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def _source(root: Path, small: int = 1500) -> Path:
    rng = random.Random(5)
    src = root / "cabinet"
    (src / "Patients" / "Dossiers été").mkdir(parents=True)
    (src / "vide").mkdir()
    for i in range(small):  # many small files: shared runs, many jobs
        p = src / "Patients" / f"note-{i:04d}.txt"
        p.write_bytes(rng.randbytes(rng.randrange(0, 12000)))
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 7))
    (src / "Patients" / "Dossiers été" / "radio ü.dcm").write_bytes(b"DICM" * 300_000)  # compressible
    (src / "base.db").write_bytes(rng.randbytes(9 * 1024 * 1024))  # a large file: several runs
    (src / "trou.img").write_bytes(bytes(2 * 1024 * 1024) + b"fin")  # sparse
    (src / "empty.txt").write_bytes(b"")
    os.chmod(src / "base.db", 0o600)
    os.chmod(src / "Patients" / "note-0007.txt", 0o751)
    os.symlink("Patients/note-0001.txt", src / "lien")
    os.utime(src / "vide", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return src


def _backup(vault: Any, tmp_path: Path, src: Path) -> tuple[str, str, dict[str, str]]:
    name, toks = vault.add_practice()
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_KIT_PASSPHRASE": PASS, "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    for args in (("init", "--kit", str(tmp_path / "kit")), ("backup", str(src), "--no-detect")):
        r = rempart(repo, env, *args)
        assert r.returncode in (0, 30), r.stderr
    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    return name, repo, env


def _session(vault: Any, name: str, token: str, kit: Path, **retry: float) -> tuple[ReadSession, bytes]:
    backend = RetryBackend(vault.backend(name, token), **retry)  # type: ignore[arg-type]
    repo = Repository.open(backend)
    repo.load_index()
    private = decrypt_kit(kit.read_bytes(), PASS).private_key
    snap = sorted(repo.list_snapshots(), key=lambda s: str(s[1].plain["time"]))[-1][1]
    # as the CLI sets a remote restore up: gaps stepped over, runs read ahead
    return ReadSession(repo, private, max_gap=256 * 1024, readahead=2), snap.tree


def _warm(restorer: Restorer, tree: bytes) -> Restorer:
    """Every pack key and tree known to the parent: from now on only the processes ask the vault."""
    session = restorer.session
    for fi in session.repo.backend.list(FileType.DATA):
        session.pack_key(bytes.fromhex(fi.name))
    restorer.reader.prefetch([tree] + [n.subtree for _, n in TreeReader(session).walk(tree) if n.subtree])
    return restorer


@pytest.fixture
def backed_up(own_vault: Any, tmp_path: Path) -> tuple[Any, str, str, dict[str, str], Path]:
    own_vault.start()
    src = _source(tmp_path)
    name, repo, env = _backup(own_vault, tmp_path, src)
    return own_vault, name, repo, env, src


def test_vault_restore_in_processes_is_byte_identical(backed_up: Any, tmp_path: Path) -> None:
    vault, name, repo, env, src = backed_up
    expected = tree_state(src)
    rel = src.relative_to("/")
    session, tree = _session(vault, name, env["REMPART_VAULT_TOKEN"], tmp_path / "kit")
    assert pack_source(session) is not None
    stats = Restorer(session).restore(tree, tmp_path / "p")
    assert stats.processes >= 2
    assert stats.files == sum(1 for v in expected.values() if v[0] == "file")
    assert tree_state(tmp_path / "p" / rel) == expected
    assert (tmp_path / "p" / rel / "trou.img").stat().st_blocks * 512 < 1024 * 1024  # still a hole
    threads = Restorer(session, processes=0).restore(tree, tmp_path / "t")  # the fallback: same tree
    assert threads.processes == 0 and (threads.files, threads.bytes) == (stats.files, stats.bytes)
    assert tree_state(tmp_path / "t" / rel) == expected
    # and through the command line, as a practice restores
    r = rempart(repo, env, "restore", "latest", "--target", str(tmp_path / "cli"), "--kit", str(tmp_path / "kit"))
    assert r.returncode == 0, r.stderr
    assert tree_state(tmp_path / "cli" / rel) == expected


def test_the_token_reaches_the_processes_only_down_their_pipe(
        backed_up: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault, name, _, env, _ = backed_up
    token = env["REMPART_VAULT_TOKEN"]
    monkeypatch.setenv("REMPART_VAULT_TOKEN", token)  # the parent's environment holds it
    session, tree = _session(vault, name, token, tmp_path / "kit")
    node = next(n for _, n in TreeReader(session).walk(tree) if n.name == "base.db")
    (tmp_path / "out").mkdir()
    root = os.open(tmp_path / "out", os.O_RDONLY)
    source = pack_source(session)
    assert source is not None and not source.local
    procs = RestoreProcs(session, source, root, 2)
    done = threading.Event()
    outcome: list[object] = []
    try:
        procs.wait_ready()
        procs.submit([("base.db", node)], lambda f, b: (outcome.append((f, b)), done.set()),
                     lambda e: (outcome.append(e), done.set()))
        assert done.wait(60)
        for p in procs._procs:  # alive, connected to the vault (the job above fetched its ranges)
            environ = Path(f"/proc/{p.popen.pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{p.popen.pid}/cmdline").read_bytes()
            assert token.encode() not in environ and b"REMPART_" not in environ
            assert token.encode() not in cmdline
            assert cmdline.split(b"\0")[1:] == [b"-m", b"rempart.snapshot.restore_child", b""]
    finally:
        procs.close()
        os.close(root)
    assert outcome == [(1, node.size)]
    assert (tmp_path / "out" / "base.db").read_bytes() == (backed_up[4] / "base.db").read_bytes()


def _kill_after_first_job(vault: Any) -> Any:
    fired = threading.Event()

    def progress(stats: Any) -> None:
        if not fired.is_set():
            fired.set()
            vault.kill()
    return progress, fired


def test_a_vault_that_dies_mid_restore_fails_it_clearly(backed_up: Any, tmp_path: Path) -> None:
    vault, name, _, env, src = backed_up
    session, tree = _session(vault, name, env["REMPART_VAULT_TOKEN"], tmp_path / "kit",
                             attempts=3, base_delay=0.05, max_delay=0.2)
    progress, fired = _kill_after_first_job(vault)
    restorer = _warm(Restorer(session, progress=progress), tree)
    t = time.monotonic()
    with pytest.raises(RempartError, match=r"^[^:]+: cannot restore: vault: connection problem") as err:
        restorer.restore(tree, tmp_path / "out")
    assert time.monotonic() - t < 120
    assert fired.is_set() and restorer.stats.processes >= 2
    assert type(err.value).__name__ == "TransientError"
    assert env["REMPART_VAULT_TOKEN"] not in str(err.value)
    restored = sum(1 for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.is_symlink())
    expected = sum(1 for v in tree_state(src).values() if v[0] == "file")
    assert 0 < restored < expected  # some jobs were done, the rest failed: the restore said so


def test_retries_in_the_processes_ride_out_a_vault_restart(backed_up: Any, tmp_path: Path) -> None:
    vault, name, _, env, src = backed_up
    # backoff of up to 2 s per attempt, 12 attempts: far longer than the vault takes to restart
    session, tree = _session(vault, name, env["REMPART_VAULT_TOKEN"], tmp_path / "kit",
                             attempts=12, base_delay=1.0, max_delay=2.0)
    progress, fired = _kill_after_first_job(vault)
    restorer = _warm(Restorer(session, progress=progress), tree)
    restarted = threading.Thread(target=lambda: (fired.wait(60), time.sleep(0.5), vault.start()))
    restarted.start()
    try:
        stats = restorer.restore(tree, tmp_path / "out")
    finally:
        restarted.join()
    assert fired.is_set() and stats.processes >= 2
    assert tree_state(tmp_path / "out" / src.relative_to("/")) == tree_state(src)


def test_a_vault_error_for_a_pack_fails_the_restore_naming_the_file(backed_up: Any, tmp_path: Path) -> None:
    vault, name, _, env, _ = backed_up
    session, tree = _session(vault, name, env["REMPART_VAULT_TOKEN"], tmp_path / "kit",
                             attempts=2, base_delay=0.05, max_delay=0.1)
    restorer = _warm(Restorer(session), tree)
    big = next(n for _, n in TreeReader(session).walk(tree) if n.name == "base.db")
    loc = session.repo.index.get(big.content[0])
    assert loc is not None
    stored = [p for p in (vault.root / "data").rglob(f"*{loc.pack.hex()}*") if p.is_file()]
    assert stored, "the pack's file in the vault's storage"
    for p in stored:
        os.chmod(p, 0o600)
        p.unlink()  # the vault now answers an error for every range of it
    with pytest.raises(RempartError, match=f": cannot restore: vault: load data/{loc.pack.hex()}: not found") as err:
        restorer.restore(tree, tmp_path / "out")
    assert restorer.stats.processes >= 2
    assert env["REMPART_VAULT_TOKEN"] not in str(err.value)
    named = str(err.value).split(": cannot restore:")[0]  # a file of that pack (base.db or a neighbour)
    assert (Path("/") / named).is_file()
    assert not (tmp_path / "out" / named).exists()  # not left half written


def test_a_restore_process_dying_fails_the_restore(backed_up: Any, tmp_path: Path) -> None:
    vault, name, _, env, _ = backed_up
    session, tree = _session(vault, name, env["REMPART_VAULT_TOKEN"], tmp_path / "kit")
    restorer = Restorer(session)
    killed = threading.Event()

    def progress(stats: Any) -> None:
        procs = restorer._procs
        if not killed.is_set() and procs is not None:
            with procs._lock:
                busy = [p for p in procs._procs if p.jobs]
            if busy:  # a process with jobs in hand
                killed.set()
                busy[0].popen.kill()
    restorer.progress = progress
    with pytest.raises(RempartError, match="stopped unexpectedly"):
        restorer.restore(tree, tmp_path / "out")
    assert killed.is_set()
