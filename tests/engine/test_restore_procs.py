"""Restore in processes (local repositories) and in threads: the same trees, clear failures."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path, PurePosixPath

import pytest
from tests.engine.conftest import PASSPHRASE, tree_state

from rempart.agent.credentials import load_credential
from rempart.core.errors import IntegrityError, LocalError, RempartError
from rempart.crypto.kit import decrypt_kit
from rempart.repository.format import BlobType
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository, WriteSession
from rempart.snapshot.restore_procs import RestoreProcs, pack_paths, pack_source
from rempart.snapshot.restorer import Restorer
from rempart.snapshot.tree import KIND_FILE, Node, encode_tree
from rempart.storage.local import LocalBackend
from rempart.storage.wrappers import LimitedBackend


def _source(root: Path) -> Path:
    rng = random.Random(11)
    src = root / "src"
    (src / "Patients" / "Dossiers été").mkdir(parents=True)
    (src / "vide").mkdir()
    for i in range(300):  # many small files share batches and pack runs
        p = src / "Patients" / f"note-{i:03d}.txt"
        p.write_bytes(rng.randbytes(rng.randrange(0, 9000)))
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 7))
    (src / "Patients" / "Dossiers été" / "radio ü.dcm").write_bytes(b"DICM" * 200_000)  # compressible
    (src / "base.db").write_bytes(rng.randbytes(5 * 1024 * 1024))  # several runs, one file
    (src / "copie.db").write_bytes((src / "base.db").read_bytes())  # deduplicated
    (src / "trou.img").write_bytes(bytes(3 * 1024 * 1024) + b"fin")  # sparse: zero chunks
    (src / "empty.txt").write_bytes(b"")
    os.chmod(src / "base.db", 0o600)
    os.chmod(src / "Patients" / "note-007.txt", 0o751)
    os.symlink("Patients/note-001.txt", src / "lien")
    os.utime(src / "vide", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return src


def _session(env) -> tuple[ReadSession, bytes]:  # type: ignore[no-untyped-def]
    repo = Repository.open(LocalBackend(env.repo))
    repo.load_index()
    kit = decrypt_kit(env.kit.read_bytes(), PASSPHRASE)
    snap = sorted(repo.list_snapshots(), key=lambda s: str(s[1].plain["time"]))[-1][1]
    return ReadSession(repo, kit.private_key), snap.tree


def test_processes_and_threads_restore_the_same_faithful_tree(repo, cli, tmp_path: Path) -> None:
    src = _source(tmp_path)
    assert cli("backup", str(src), "--no-detect").code == 0
    session, tree = _session(repo)
    by_procs = Restorer(session).restore(tree, tmp_path / "p")
    by_threads = Restorer(session, processes=0).restore(tree, tmp_path / "t")
    assert by_procs.processes >= 2 and by_threads.processes == 0
    assert (by_procs.files, by_procs.bytes) == (by_threads.files, by_threads.bytes)
    expected = tree_state(src)
    rel = src.relative_to("/")
    assert tree_state(tmp_path / "p" / rel) == expected
    assert tree_state(tmp_path / "t" / rel) == expected
    hole = tmp_path / "p" / rel / "trou.img"
    assert hole.stat().st_blocks * 512 < 1024 * 1024  # the zeros stayed a hole


def test_a_wrapped_backend_restores_in_threads(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    assert cli("backup", str(src), "--no-detect").code == 0
    session, tree = _session(repo)
    session.repo.backend = LimitedBackend(session.repo.backend, upload_bps=None, download_bps=10**9)  # reads must go through it
    assert pack_source(session) is None
    stats = Restorer(session).restore(tree, tmp_path / "out")
    assert stats.processes == 0
    assert tree_state(tmp_path / "out" / src.relative_to("/")) == tree_state(src)


@pytest.mark.parametrize("processes", [2, 0])
def test_a_full_target_disk_names_the_file_in_processes_and_in_threads(repo, cli, tmp_path: Path, tiny_fs: Path,
                                                                       processes: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"fits\n")
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # more than the 1 MiB disk holds
    assert cli("backup", str(src), "--no-detect").code == 0
    session, tree = _session(repo)
    with pytest.raises(LocalError) as caught:
        Restorer(session, processes=processes).restore(tree, tiny_fs / "out")
    assert caught.value.exit_code == 1
    assert "big.bin: cannot restore: no space left on the device" in caught.value.message
    assert list((tiny_fs / "out").rglob("big.bin")) == []  # the incomplete file was removed


def _forge(env) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    """A snapshot of two files: one whose data lies alone in a pack (trees in another), one
    whose blob is in no pack at all. Returns (the data pack, the root tree)."""
    repo = Repository.open(LocalBackend(env.repo))
    w = WriteSession(repo, load_credential(env.state, repo.config.id).id_key)
    data_id, _ = w.add_blob(BlobType.DATA, os.urandom(5000))
    w.flush()
    nodes = [Node(name="ordonnance.pdf", type=KIND_FILE, mode=0o644, size=5000, content=[data_id]),
             Node(name="absent.txt", type=KIND_FILE, mode=0o644, size=10, content=[os.urandom(32)])]
    tree, _ = w.add_blob(BlobType.TREE, encode_tree(nodes))
    w.flush()
    w.commit({"v": 1, "time": "2030-01-01T00:00:00Z", "tree": tree.hex()}, set(), {})
    w.close()
    repo.load_index()
    loc = repo.index.get(data_id)
    assert loc is not None and loc.pack != repo.index.get(tree).pack  # type: ignore[union-attr]
    return loc.pack, tree


@pytest.mark.parametrize("name,broken,known", [("ordonnance.pdf", "pack .* missing", True),
                                               ("ordonnance.pdf", "load data/.*not found", False),
                                               ("absent.txt", "blob .* missing", True)])
def test_missing_data_fails_naming_the_file_and_leaves_no_partial_file(repo, tmp_path: Path, name: str,
                                                                       broken: str, known: bool) -> None:
    pack, tree = _forge(repo)
    session, _ = _session(repo)
    if known:
        session.pack_key(pack)  # the key is known, then the pack file goes away
    path = Path(pack_paths(session)(pack))  # type: ignore[misc]
    os.chmod(path, 0o600)
    path.unlink()
    restorer = Restorer(session)
    with pytest.raises(IntegrityError if known else RempartError, match=f"{name}: cannot restore: {broken}"):
        restorer.restore(tree, tmp_path / "out", [PurePosixPath("/" + name)])
    assert restorer.stats.processes >= 2
    assert not (tmp_path / "out" / name).exists()


def test_restore_processes_get_no_secret_from_the_environment_or_command_line(
        repo, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMPART_KIT_PASSPHRASE", "sesame-in-env")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    assert cli("backup", str(src), "--no-detect").code == 0
    session, _ = _session(repo)
    root = os.open(tmp_path, os.O_RDONLY)
    procs = RestoreProcs(session, pack_source(session), root, 2)  # type: ignore[arg-type]
    try:
        procs.wait_ready()
        for p in procs._procs:
            environ = Path(f"/proc/{p.popen.pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{p.popen.pid}/cmdline").read_bytes()
            assert b"REMPART_" not in environ and b"sesame" not in environ
            assert cmdline.split(b"\0")[1:3] == [b"-m", b"rempart.snapshot.restore_child"]
    finally:
        procs.close()
        os.close(root)


def test_a_dead_restore_process_fails_its_jobs_instead_of_hanging(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    assert cli("backup", str(src), "--no-detect").code == 0
    session, tree = _session(repo)
    node = next(n for n in _files(session, tree))
    (tmp_path / "out").mkdir()
    root = os.open(tmp_path / "out", os.O_RDONLY)
    procs = RestoreProcs(session, pack_source(session), root, 1)  # type: ignore[arg-type]
    failed: list[BaseException] = []
    reported = threading.Event()

    def fail(exc: BaseException) -> None:
        failed.append(exc)
        reported.set()

    try:
        procs.wait_ready()
        procs._procs[0].popen.kill()
        procs._procs[0].popen.wait()
        procs.submit([("a.txt", node)], lambda f, b: reported.set(), fail)
        assert reported.wait(30)
    finally:
        procs.close()
        os.close(root)
    assert len(failed) == 1 and isinstance(failed[0], RempartError)
    assert "stopped unexpectedly" in str(failed[0])


def _files(session: ReadSession, tree: bytes) -> list[Node]:
    from rempart.snapshot.restorer import TreeReader

    return [n for _, n in TreeReader(session).walk(tree) if n.type == "file"]
