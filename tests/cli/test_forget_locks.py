"""Repository locks between a running backup and `rempart forget --prune`, with real processes.

Each backup here is a real `rempart backup` process (its own process group, so that SIGSTOP,
SIGCONT and SIGKILL reach its reading processes too), paused or killed once it has uploaded a
pack: it has then read the index and deduplicated against what is stored. `forget`, `unlock`,
`check` and `restore` run in this process through the real command line, with the real clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.cli.test_forget import env_vars
from tests.engine.conftest import Result

from rempart.cli.main import main


@dataclass
class Repo:
    tmp: Path
    path: Path
    kit: Path
    src: Path
    run: Callable[..., Result]

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ) | env_vars(self.tmp) | extra

    def backup(self) -> str:
        r = self.run("backup", str(self.src), "--json", "--no-detect")
        assert r.code == 0, r.err
        return str(r.json()["snapshot"])

    def spawn_backup(self, **extra_env: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "rempart.cli.main", "--json", "backup", str(self.src),
                                 "--no-detect"], env=self.env(**extra_env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def packs(self) -> set[str]:
        return {p.name for p in (self.path / "data").rglob("*") if p.is_file()}

    def snapshots(self) -> set[str]:
        return set(os.listdir(self.path / "snapshots"))

    def locks(self) -> set[str]:
        return set(os.listdir(self.path / "locks"))

    def forget(self, *args: str) -> Result:
        return self.run("forget", "--json", *args)

    def check_read_data(self) -> None:
        r = self.run("check", "--json", "--read-data", "--kit", str(self.kit))
        assert r.code == 0 and r.json()["ok"], r.out + r.err

    def restored(self, snap: str, target: Path) -> dict[str, bytes]:
        r = self.run("restore", snap, "--target", str(target), "--kit", str(self.kit), "--json")
        assert r.code == 0, r.err
        root = target / self.src.relative_to("/")
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def source(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.src)): p.read_bytes() for p in self.src.rglob("*") if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Repo]:
    for k, v in env_vars(tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("REMPART_LOCK_LIFETIME", raising=False)

    def run(*args: str) -> Result:
        code = main(list(args))
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    r = run("init", "--kit", str(tmp_path / "kit.json"), "--pack-size", "1")
    assert r.code == 0, r.err
    src = tmp_path / "src"
    src.mkdir()
    yield Repo(tmp_path, tmp_path / "repo", tmp_path / "kit.json", src, run)


def wait_for(ready: Callable[[], Any], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the backup ended too early: {proc.communicate()}"
        assert time.monotonic() < end, "the backup never got there"
        time.sleep(0.002)


def two_backups_then_a_bin_only_in_a_doomed_pack(repo: Repo) -> tuple[bytes, set[str]]:
    """a.bin lives only in the first snapshot's pack, which `--keep-last 1 --prune` deletes;
    then a.bin is back in the source next to a large file (the backup takes a while)."""
    old = os.urandom(200_000)
    (repo.src / "a.bin").write_bytes(old)
    repo.backup()
    (repo.src / "a.bin").unlink()
    (repo.src / "b.bin").write_bytes(os.urandom(100_000))
    repo.backup()
    r = repo.forget("--keep-last", "1", "--prune", "--dry-run")
    assert r.code == 0, r.err
    doomed = set(r.json()["prune"]["packs_removed"])
    assert doomed
    (repo.src / "a.bin").write_bytes(old)
    (repo.src / "big.bin").write_bytes(os.urandom(24 << 20))
    return old, doomed


def paused_backup(repo: Repo, **env: str) -> subprocess.Popen[str]:
    """A backup process stopped (with its reading processes) after it stored its first pack."""
    before = repo.packs()
    proc = repo.spawn_backup(**env)
    wait_for(lambda: repo.packs() - before, proc)
    os.killpg(proc.pid, signal.SIGSTOP)
    wait_stopped(proc.pid)
    assert repo.locks(), "a running backup holds a lock file"
    return proc


def wait_stopped(pgid: int, timeout: float = 20.0) -> None:
    """Wait until every thread of every process in ``pgid`` is stopped. SIGSTOP wakes one thread
    of each process, which then stops the others: until it gets a CPU (seconds on a loaded
    machine), another thread may go on, and store one more pack (seen once in 30 runs)."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
                states += [(t / "stat").read_text().rsplit(")", 1)[1].split()[0]
                           for t in Path(f"/proc/{pid}/task").iterdir()]
            except (OSError, IndexError):
                continue  # gone meanwhile
        if states and all(s in "TtZ" for s in states):
            return
        assert time.monotonic() < deadline, f"the backup did not stop: thread states {states}"
        time.sleep(0.01)


def test_prune_refuses_while_a_backup_runs_and_the_finished_backup_restores(repo: Repo) -> None:
    old, doomed = two_backups_then_a_bin_only_in_a_doomed_pack(repo)
    snaps = repo.snapshots()
    proc = paused_backup(repo)
    try:
        packs = repo.packs()
        r = repo.forget("--keep-last", "1", "--prune")
        assert r.code == 11, r.out + r.err
        err = json.loads(r.err)
        assert err["error"] == "locked" and "a backup is writing to this repository" in err["message"]
        assert "this computer" in err["message"] and "nothing was removed" in err["message"]
        assert repo.packs() == packs and repo.snapshots() == snaps  # not even a snapshot was forgotten
        u = repo.run("unlock", "--json")  # a live lock stays
        assert u.code == 0 and u.json()["removed"] == [] and len(u.json()["remaining"]) == 1
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    out, err_text = proc.communicate(timeout=120)
    assert proc.returncode == 0, err_text
    new = json.loads(out)["snapshot"]
    assert json.loads(out)["storage"]["bytes_stored"] < (24 << 20) + 150_000  # a.bin was deduplicated
    assert repo.locks() == set()  # released

    r = repo.forget("--keep-last", "1", "--prune")  # now alone: it runs
    assert r.code == 0, r.err
    assert repo.snapshots() == {new} and not doomed <= set(r.json()["prune"]["packs_removed"])
    repo.check_read_data()
    assert repo.restored(new, repo.tmp / "out") == repo.source()
    assert repo.restored(new, repo.tmp / "out2")["a.bin"] == old


def test_a_killed_backup_does_not_block_prune_and_its_packs_are_collected(repo: Repo) -> None:
    (repo.src / "small.txt").write_text("kept")
    first = repo.backup()
    (repo.src / "big.bin").write_bytes(os.urandom(24 << 20))
    before = repo.packs()
    proc = paused_backup(repo)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert repo.locks(), "nobody released the killed backup's lock"
    orphans = repo.packs() - before
    assert orphans
    r = repo.forget("--prune")  # the lock's process is gone from this computer: it protects nothing
    assert r.code == 0, r.err
    assert orphans <= set(r.json()["prune"]["packs_removed"]) and repo.packs() == before
    assert r.json()["locks_removed"] >= 1 and repo.locks() == set()
    repo.check_read_data()
    second = repo.backup()
    repo.check_read_data()
    assert repo.restored(second, repo.tmp / "o") == repo.source()
    assert repo.restored(first, repo.tmp / "o1") == {"small.txt": b"kept"}


def test_a_backup_paused_past_its_lock_lifetime_does_not_commit(repo: Repo) -> None:
    old, doomed = two_backups_then_a_bin_only_in_a_doomed_pack(repo)
    snaps = repo.snapshots()
    proc = paused_backup(repo, REMPART_LOCK_LIFETIME="4")
    try:
        time.sleep(4.5)  # no refresh for longer than the lifetime: the lock has expired
        r = repo.forget("--keep-last", "1", "--prune")
        assert r.code == 0, r.err  # so the prune runs, and deletes a.bin's pack
        assert doomed <= set(r.json()["prune"]["packs_removed"])
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    _, err_text = proc.communicate(timeout=120)
    assert proc.returncode == 11, err_text
    err = json.loads(err_text.strip().splitlines()[-1])
    assert err["error"] == "locked" and "was not refreshed for" in err["message"]
    assert "nothing was committed" in err["message"]
    assert repo.snapshots() < snaps  # no snapshot referencing the deleted pack was written
    r = repo.run("check", "--json")
    assert r.code == 0 and r.json()["ok"], r.out + r.err
    new = repo.backup()  # runs again: a.bin is stored again
    repo.check_read_data()
    assert repo.restored(new, repo.tmp / "out")["a.bin"] == old
    assert repo.restored(new, repo.tmp / "out2") == repo.source()


HOSTILE: list[tuple[str, bytes]] = [
    ("garbage", b"\x00\xff not a lock at all"),
    ("json with a wrong name", b'{"v":1}'),
    ("oversized", b"{" + b" " * 10_000 + b"}"),
    ("nested", b"[" * 5000 + b"]" * 5000),
]


@pytest.mark.parametrize("what,data", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_lock_file_gives_a_clear_error_and_unlock_removes_it(repo: Repo, what: str, data: bytes) -> None:
    (repo.src / "f.txt").write_text("x")
    snap = repo.backup()
    name = "ab" * 32
    (repo.path / "locks" / name).write_bytes(data)
    files = {p: p.read_bytes() for p in repo.path.rglob("*") if p.is_file()}
    r = repo.forget("--keep-last", "1", "--prune")
    assert r.code == 11 and "Traceback" not in r.err
    assert "cannot be used" in json.loads(r.err)["message"] and "unlock --remove-all" in json.loads(r.err)["hint"]
    r = repo.run("backup", str(repo.src), "--no-detect")
    assert r.code == 11 and "a backup cannot start" in r.err and "Traceback" not in r.err
    assert {p: p.read_bytes() for p in repo.path.rglob("*") if p.is_file()} == files  # nothing changed
    r = repo.run("unlock")  # not removed without --remove-all: its holder is unknown
    assert r.code == 1 and "cannot be used" in r.err and (repo.path / "locks" / name).exists()
    r = repo.run("unlock", "--remove-all", "--json")
    assert r.code == 0 and r.json()["removed"] == [name]
    assert repo.forget("--keep-last", "1", "--prune").code == 0
    assert repo.snapshots() == {snap}


def test_the_command_line_reports_a_hostile_lock_without_a_traceback(repo: Repo) -> None:
    """The same, as separate processes: what the operator sees on the terminal."""
    (repo.path / "locks" / ("cd" * 32)).write_bytes(b'{"v":1,"kind":"prune","lifetime":1e999}')
    for args in (["forget", "--prune"], ["backup", str(repo.src)]):
        p = subprocess.run([sys.executable, "-m", "rempart.cli.main", *args], env=repo.env(),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 11 and "Traceback" not in p.stderr
        assert p.stderr.startswith("rempart: error: lock file locks/cdcdcdcdcdcdcdcd... cannot be used")
