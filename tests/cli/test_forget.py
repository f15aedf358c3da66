"""`rempart forget`: retention policies, --dry-run, --prune, crash safety, --json and refusals.

Every test drives the real command line on a real local repository. Snapshot times are set by
moving the CLI's clock (``SystemClock.now``, which every command asks for the time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.engine.conftest import PASSPHRASE, Result
from tests.engine.test_detection_restore import encrypt_in_place, make_practice

from rempart.cli.main import main
from rempart.core.clock import FakeClock, SystemClock
from rempart.core.errors import PermissionDenied
from rempart.repository.checker import CheckReport, check_structure
from rempart.repository.prune import (
    PruneResult,
    execute_prune,
    load_snapshots,
    plan_prune,
    remove_snapshots,
)
from rempart.repository.repo import Repository
from rempart.repository.retention import KeepPolicy, SnapRecord, keep_reasons
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend
from rempart.storage.s3 import S3Backend, S3Config
from rempart.testing.servers import S3Server, locked_bucket


@dataclass
class Repo:
    tmp: Path
    path: Path
    kit: Path
    src: Path
    run: Callable[..., Result]
    at: Callable[[datetime], None]

    def backup(self, when: datetime, *extra: str) -> str:
        self.at(when)
        r = self.run("backup", str(self.src), "--json", *extra)
        assert r.code in (0, 30), r.err
        return str(r.json()["snapshot"])

    def files(self) -> dict[str, bytes]:
        """Every file of the repository with its bytes (what a dry run must leave alone)."""
        return {str(p.relative_to(self.path)): p.read_bytes() for p in self.path.rglob("*") if p.is_file()}

    def packs(self) -> set[str]:
        return {p.name for p in (self.path / "data").rglob("*") if p.is_file()}

    def restored(self, snap: str, target: Path) -> dict[str, bytes]:
        r = self.run("restore", snap, "--target", str(target), "--kit", str(self.kit), "--json")
        assert r.code == 0, r.err
        root = target / self.src.relative_to("/")
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def check(self, *extra: str) -> None:
        r = self.run("check", "--json", *extra)
        assert r.code == 0 and r.json()["ok"], r.out + r.err


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)  # type: ignore[arg-type,misc]


def src_state(src: Path) -> dict[str, bytes]:
    return {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}


def env_vars(tmp: Path) -> dict[str, str]:
    return {"REMPART_KIT_PASSPHRASE": PASSPHRASE, "REMPART_KDF_TEST": "1",
            "REMPART_STATE_DIR": str(tmp / "state"), "REMPART_REPOSITORY": str(tmp / "repo")}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Repo]:
    for k, v in env_vars(tmp_path).items():
        monkeypatch.setenv(k, v)
    now = [utc(2026, 1, 1, 8)]
    monkeypatch.setattr(SystemClock, "now", lambda self: now[0])

    def run(*args: str) -> Result:
        code = main(list(args))
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    def at(when: datetime) -> None:
        now[0] = when

    r = run("init", "--kit", str(tmp_path / "kit.json"), "--pack-size", "1")
    assert r.code == 0, r.err
    src = tmp_path / "src"
    src.mkdir()
    yield Repo(tmp_path, tmp_path / "repo", tmp_path / "kit.json", src, run, at)


def forget_json(repo: Repo, *args: str) -> dict:  # type: ignore[type-arg]
    r = repo.run("forget", "--json", *args)
    assert r.code == 0, r.out + r.err
    return r.json()  # type: ignore[no-any-return]


TIMES = [utc(2026, 1, 1, 10), utc(2026, 1, 1, 15), utc(2026, 1, 2, 9), utc(2026, 1, 9, 9),
         utc(2026, 2, 3, 9), utc(2026, 2, 3, 12)]


def test_policies_keep_the_right_snapshots_and_a_dry_run_changes_nothing(repo: Repo) -> None:
    (repo.src / "f.txt").write_text("x")
    ids = []
    for i, t in enumerate(TIMES):
        (repo.src / "f.txt").write_text(f"version {i}")
        ids.append(repo.backup(t, "--no-detect"))
    repo.at(utc(2026, 2, 5, 9))
    before = repo.files()

    def kept(*policy: str) -> list[int]:
        out = forget_json(repo, "--dry-run", *policy)
        assert out["dry_run"] is True and out["removed"] == []
        keep = {r["id"] for r in out["keep"]}
        assert keep.isdisjoint(r["id"] for r in out["remove"])
        assert keep | {r["id"] for r in out["remove"]} == set(ids)
        return sorted(ids.index(k) for k in keep)

    assert kept("--keep-last", "2") == [4, 5]
    assert kept("--keep-daily", "3") == [2, 3, 5]         # newest of 3 Feb, 9 Jan, 2 Jan
    assert kept("--keep-weekly", "2") == [3, 5]           # ISO weeks 6 and 2 (1-2 Jan are week 1)
    assert kept("--keep-monthly", "2") == [3, 5]
    assert kept("--keep-yearly", "5") == [5]
    assert kept("--keep-hourly", "4") == [2, 3, 4, 5]
    assert kept("--keep-within", "7d") == [4, 5]          # relative to the newest snapshot
    assert kept("--keep-within", "1m") == [3, 4, 5]       # 3 Jan 12:00 onwards
    assert kept("--min-age", "3d") == [4, 5]              # against the clock (5 Feb 09:00)
    assert kept("--keep-last", "1", "--keep-monthly", "2", "--keep-daily", "4") == [1, 2, 3, 5]
    out = forget_json(repo, "--dry-run", "--keep-last", "1", "--keep-monthly", "2")
    reasons = {r["id"]: r["reasons"] for r in out["keep"]}
    assert reasons[ids[5]] == ["last", "monthly"] and reasons[ids[3]] == ["monthly"]
    assert out["policy"]["last"] == 1 and out["policy"]["monthly"] == 2
    out = forget_json(repo, "--dry-run", "--prune", "--keep-last", "1")
    assert out["prune"]["packs_total"] == len(repo.packs()) and out["prune"]["packs_removed"]
    assert repo.files() == before  # nothing written, nothing removed

    text = repo.run("forget", "--keep-last", "2")
    assert text.code == 0 and "remove 4 snapshot(s)" in text.out and "last" in text.out
    snaps = repo.run("snapshots", "--json").json()
    assert [s["id"] for s in snaps] == ids[4:]
    assert repo.packs() == {p.split("/")[-1] for p in before if p.startswith("data/")}  # no --prune: packs stay
    repo.check()


def test_prune_removes_exactly_the_unreferenced_packs_and_kept_snapshots_restore(repo: Repo) -> None:
    (repo.src / "a.bin").write_bytes(os.urandom(200_000))
    s1 = repo.backup(utc(2026, 1, 1, 8), "--no-detect")
    p1 = repo.packs()
    (repo.src / "b.bin").write_bytes(os.urandom(200_000))
    s2 = repo.backup(utc(2026, 1, 2, 8), "--no-detect")
    p2 = repo.packs() - p1
    (repo.src / "a.bin").unlink()
    (repo.src / "c.bin").write_bytes(os.urandom(200_000))
    s3 = repo.backup(utc(2026, 1, 3, 8), "--no-detect")
    p3 = repo.packs() - p1 - p2
    assert p1 and p2 and p3
    want = src_state(repo.src)
    index_before = set(os.listdir(repo.path / "index"))

    out = forget_json(repo, "--keep-last", "1", "--prune")
    assert sorted(out["removed"]) == sorted([s1, s2])
    # a.bin and snapshot 1's trees live only in backup 1's packs; backup 2's pack holds b.bin
    # (still referenced) next to snapshot 2's trees (not): whole packs only, so it stays
    assert sorted(out["prune"]["packs_removed"]) == sorted(p1)
    assert repo.packs() == p2 | p3
    assert out["prune"]["bytes_freed"] > 200_000
    assert set(out["prune"]["index_removed"]) <= index_before
    assert not set(os.listdir(repo.path / "index")) & set(out["prune"]["index_removed"])
    assert repo.restored(s3, repo.tmp / "r3") == want
    repo.check("--read-data", "--kit", str(repo.kit))

    # a second prune finds nothing more to collect
    again = forget_json(repo, "--prune")
    assert again["removed"] == [] and again["prune"]["packs_removed"] == []

    # the next backup deduplicates against what is left: nothing changed, almost nothing stored
    r = repo.run("backup", str(repo.src), "--json", "--no-detect")
    assert r.code == 0, r.err
    assert r.json()["storage"]["bytes_stored"] < 20_000
    repo.check()


def test_forgetting_the_latest_snapshot_then_backing_up_reuploads_what_was_collected(repo: Repo) -> None:
    (repo.src / "old.bin").write_bytes(os.urandom(100_000))
    s1 = repo.backup(utc(2026, 1, 1, 8), "--no-detect")
    (repo.src / "new.bin").write_bytes(os.urandom(150_000))
    s2 = repo.backup(utc(2026, 1, 2, 8), "--no-detect")
    out = forget_json(repo, s2[:10], "--prune")
    assert out["removed"] == [s2] and out["prune"]["packs_removed"]
    # the local cache still says new.bin is unchanged, but its blobs are gone: they must be stored again
    r = repo.run("backup", str(repo.src), "--json", "--no-detect")
    assert r.code == 0, r.err
    assert r.json()["storage"]["bytes_stored"] > 150_000
    repo.check("--read-data", "--kit", str(repo.kit))
    assert repo.restored(r.json()["snapshot"], repo.tmp / "r") == src_state(repo.src)
    assert repo.restored(s1, repo.tmp / "r1").keys() == {"old.bin"}


def _spawn_slow_forget(tmp: Path, *args: str, delay: float = 0.15) -> subprocess.Popen[bytes]:
    """A real `rempart forget` process whose deletions take ``delay`` seconds each, so that a
    SIGKILL (or a concurrent backup) can be aimed at a chosen step of the write order."""
    code = ("import sys, time\n"
            "from rempart.storage.local import LocalBackend\n"
            "orig = LocalBackend.remove\n"
            f"def slow(self, h):\n    time.sleep({delay})\n    orig(self, h)\n"
            "LocalBackend.remove = slow\n"
            "from rempart.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ) | env_vars(tmp)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "forget finished before the kill point"
        assert time.monotonic() < end, "kill point never reached"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("stage", ["snapshots", "index-written", "index-removed", "packs"])
def test_a_forget_killed_mid_prune_leaves_a_valid_repository(repo: Repo, stage: str) -> None:
    (repo.src / "big.bin").write_bytes(os.urandom(3 << 20))  # several 1 MiB packs in one index file
    (repo.src / "common.txt").write_text("always the same")
    states = [(repo.backup(utc(2026, 1, 1, 8), "--no-detect"), src_state(repo.src))]
    for day in range(2, 9):  # then each backup replaces the one big file: a new pack per backup
        for p in repo.src.glob("*.bin"):
            p.unlink()
        (repo.src / f"day{day}.bin").write_bytes(os.urandom(120_000))
        states.append((repo.backup(utc(2026, 1, day, 8), "--no-detect"), src_state(repo.src)))
    kept = states[-2:]
    packs, index_dir, snaps_dir = repo.packs(), repo.path / "index", repo.path / "snapshots"
    indexes = set(os.listdir(index_dir))
    plan = forget_json(repo, "--keep-last", "2", "--prune", "--dry-run")["prune"]
    assert plan["index_to_write"] and len(plan["index_removed"]) >= 3 and len(plan["packs_removed"]) >= 4
    proc = _spawn_slow_forget(repo.tmp, "forget", "--keep-last", "2", "--prune")
    if stage == "snapshots":  # 3 of the 6 forgotten snapshot files are gone
        _kill_when(proc, lambda: len(os.listdir(snaps_dir)) <= 5)
    elif stage == "index-written":  # the new index file is there, no old one removed yet
        _kill_when(proc, lambda: bool(set(os.listdir(index_dir)) - indexes))
        assert indexes < set(os.listdir(index_dir))
    elif stage == "index-removed":  # two old index files are gone, every pack is still there
        _kill_when(proc, lambda: len(indexes - set(os.listdir(index_dir))) >= 2)
        assert repo.packs() == packs
    else:  # two doomed packs are gone
        _kill_when(proc, lambda: len(repo.packs()) <= len(packs) - 2)
    assert proc.returncode == -signal.SIGKILL
    remaining = set(os.listdir(snaps_dir))
    assert {s for s, _ in kept} <= remaining and len(remaining) < len(states)
    assert repo.packs() >= packs - set(plan["packs_removed"])  # never a pack a kept snapshot needs
    repo.check()
    for i, (snap, want) in enumerate(kept):
        assert repo.restored(snap, repo.tmp / f"k{i}") == want
    # running it again finishes the job
    forget_json(repo, "--keep-last", "2", "--prune")
    assert set(os.listdir(snaps_dir)) == {s for s, _ in kept}
    assert repo.packs() == packs - set(plan["packs_removed"])
    assert forget_json(repo, "--prune")["prune"]["packs_removed"] == []
    repo.check("--read-data", "--kit", str(repo.kit))
    for i, (snap, want) in enumerate(kept):
        assert repo.restored(snap, repo.tmp / f"again{i}") == want


def test_a_backup_started_during_a_prune_refuses_and_runs_after_it(repo: Repo) -> None:
    old = os.urandom(200_000)
    (repo.src / "a.bin").write_bytes(old)
    repo.backup(utc(2026, 1, 1, 8), "--no-detect")
    for day, name in ((2, "b.bin"), (3, "c.bin")):
        for p in repo.src.glob("*.bin"):
            p.unlink()
        (repo.src / name).write_bytes(os.urandom(100_000))
        repo.backup(utc(2026, 1, day, 8), "--no-detect")
    doomed = set(forget_json(repo, "--keep-last", "1", "--prune", "--dry-run")["prune"]["packs_removed"])
    assert len(doomed) == 2
    proc = _spawn_slow_forget(repo.tmp, "forget", "--keep-last", "1", "--prune", delay=1.0)
    end = time.monotonic() + 30
    while len(os.listdir(repo.path / "snapshots")) > 2:  # the forget is under way
        assert time.monotonic() < end and proc.poll() is None
        time.sleep(0.01)
    (repo.src / "a.bin").write_bytes(old)  # a.bin is back: it lies in a doomed pack
    before = repo.files()
    r = repo.run("backup", str(repo.src), "--json", "--no-detect")
    assert r.code == 11, r.err  # the prune holds the exclusive lock: the backup does not start
    assert "a prune is running on this repository" in json.loads(r.err)["message"]
    assert {k for k in repo.files() if not k.startswith("locks/")} <= set(before)  # it stored nothing
    assert proc.wait(60) == 0
    assert not doomed & repo.packs() and os.listdir(repo.path / "locks") == []
    r = repo.run("backup", str(repo.src), "--json", "--no-detect")  # after the prune: a.bin stored again
    assert r.code == 0, r.err
    new = r.json()["snapshot"]
    assert r.json()["storage"]["bytes_stored"] > 200_000
    repo.check("--read-data", "--kit", str(repo.kit))
    assert repo.restored(new, repo.tmp / "new")["a.bin"] == old


def test_the_snapshot_list_is_read_again_before_packs_are_deleted(repo: Repo) -> None:
    """The second line of defence under the lock: a snapshot that appeared after planning (a
    backup whose lock the prune could not see) stops every pack deletion."""
    (repo.src / "a.bin").write_bytes(os.urandom(100_000))
    s1 = repo.backup(utc(2026, 1, 1, 8), "--no-detect")
    (repo.src / "a.bin").unlink()
    (repo.src / "b.bin").write_bytes(os.urandom(100_000))
    s2 = repo.backup(utc(2026, 1, 2, 8), "--no-detect")
    r = Repository.open(LocalBackend(repo.path))
    try:
        snaps, _ = load_snapshots(r)
        plan = plan_prune(r, [s for s in snaps if s.name == s2])
        assert plan.remove_packs
        remove_snapshots(r, [s1])
        packs = repo.packs()
        res = execute_prune(r, plan, known={s1})  # as if s2 had appeared after the planning
        assert res.newcomers == [s2] and res.removed_packs == [] and repo.packs() == packs
        res = execute_prune(r, plan, known={s1, s2})
        assert res.newcomers == [] and res.removed_packs
    finally:
        r.close()
    repo.check("--read-data", "--kit", str(repo.kit))


def test_suspicious_snapshots_never_count_towards_keep_last(repo: Repo) -> None:
    make_practice(repo.src)
    clean = [repo.backup(utc(2026, 1, 1, 8)), repo.backup(utc(2026, 1, 2, 8))]
    for v in sorted(repo.src.rglob("letter*.docx"))[:25]:
        encrypt_in_place(v)
    bad = [repo.backup(utc(2026, 1, 3, 8)), repo.backup(utc(2026, 1, 3, 9)), repo.backup(utc(2026, 1, 3, 10))]
    verdicts = {s["id"]: s["verdict"] for s in repo.run("snapshots", "--json").json()}
    assert [verdicts[s] for s in clean] == ["clean", "clean"]
    assert verdicts[bad[0]] == "suspicious"
    repo.at(utc(2026, 1, 10))
    out = forget_json(repo, "--dry-run", "--keep-last", "2")
    assert {r["id"] for r in out["keep"]} == set(clean) | {s for s in bad if verdicts[s] == "clean"}
    assert {r["verdict"] for r in out["remove"]} == {"suspicious"}
    out = forget_json(repo, "--dry-run", "--keep-daily", "1")  # the newest *clean* day
    assert {r["id"] for r in out["keep"]} == {clean[1]}


def test_refusals(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo.src / "a.bin").write_bytes(os.urandom(50_000))
    s1 = repo.backup(utc(2026, 1, 1, 8), "--no-detect")
    (repo.src / "a.bin").unlink()
    (repo.src / "b.bin").write_bytes(os.urandom(50_000))
    s2 = repo.backup(utc(2026, 1, 2, 8), "--no-detect")
    before = repo.files()

    r = repo.run("forget")
    assert r.code == 2 and "no policy given" in r.err
    r = repo.run("forget", s1, "--keep-last", "1")
    assert r.code == 2 and "not both" in r.err
    r = repo.run("forget", "ab")
    assert r.code == 2 and "at least 4 characters" in r.err
    r = repo.run("forget", "--keep-within", "soon")
    assert r.code == 2 and "invalid duration" in r.err
    r = repo.run("forget", s1, s2[:8], "--prune")
    assert r.code == 2 and "remove all 2 snapshots" in r.err and "--allow-forget-all" in r.err
    r = repo.run("forget", "--json", "-r", "https://127.0.0.1:9/practice", "--keep-last", "1")
    assert r.code == 2 and "vault applies its own retention" in json.loads(r.err)["message"]
    assert repo.files() == before

    # the storage refuses to delete (immutable file): a clear error, and the repository stays valid
    target = repo.path / "snapshots" / s1
    subprocess.run(["chattr", "+i", str(target)], check=True)
    try:
        r = repo.run("forget", "--keep-last", "1", "--prune")
        assert r.code == 1 and "refused to delete a snapshot" in r.err and "nothing more was removed" in r.err
        assert repo.files() == before
        repo.check()
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    # a pack the storage will not delete stays (reported); everything else is collected
    out = forget_json(repo, "--keep-last", "1", "--dry-run", "--prune")
    (doomed,) = out["prune"]["packs_removed"]
    pack = repo.path / "data" / doomed[:2] / doomed
    subprocess.run(["chattr", "+i", str(pack)], check=True)
    try:
        r = repo.run("forget", "--keep-last", "1", "--prune", "--json")
        assert r.code == 1, r.err
        assert r.json()["prune"]["refused"] == [f"data/{doomed}"] and pack.exists()
        repo.check()
    finally:
        subprocess.run(["chattr", "-i", str(pack)], check=True)
    assert forget_json(repo, "--prune")["prune"]["packs_removed"] == [doomed]
    repo.check("--read-data", "--kit", str(repo.kit))
    r = repo.run("forget", s2, "--allow-forget-all", "--prune", "--json")
    assert r.code == 0 and r.json()["removed"] == [s2]
    assert repo.packs() == set() and repo.run("snapshots", "--json").json() == []
    repo.check()


# --- the same keyless forget and prune on real S3 storage (SeaweedFS) --------------------------
# The command line opens only folders (an s3:// location needs a configuration it has no way to
# receive yet), so these drive the library functions `rempart forget` is made of.


def _to_backend(repo_dir: Path, backend: Any) -> None:
    for p in sorted(repo_dir.rglob("*")):
        rel = p.relative_to(repo_dir)
        if p.is_file() and rel.parts[0] != "tmp":
            ftype = FileType.CONFIG if rel.parts[0] == "config" else FileType(rel.parts[0])
            backend.save(Handle(ftype, p.name), p.read_bytes())


def _to_folder(backend: Any, dest: Path) -> None:
    local = LocalBackend(dest, create=True)
    for t in FileType:
        for fi in backend.list(t):
            local.save(Handle(t, fi.name), backend.load(Handle(t, fi.name)))


def _s3_forget(s3: Any, keep_last: int) -> tuple[list[str], PruneResult]:
    r = Repository.open(s3)
    snaps, damaged = load_snapshots(r)
    assert not damaged
    keep = keep_reasons([SnapRecord(s.name, s.time or 0.0, s.suspicious) for s in snaps],
                        KeepPolicy(last=keep_last), time.time())
    plan = plan_prune(r, [s for s in snaps if s.name in keep])
    try:
        removed = remove_snapshots(r, [s.name for s in snaps if s.name not in keep])
    except PermissionDenied:
        removed = []
    res = execute_prune(r, plan) if removed else PruneResult()
    report = CheckReport()
    check_structure(r, report).close()
    assert report.ok, report.errors
    r.close()
    return removed, res


@pytest.fixture
def s3_bucket(seaweed: S3Server) -> str:
    return locked_bucket(seaweed)


def _three_backups(repo: Repo) -> tuple[list[str], dict[str, bytes]]:
    ids = []
    for day, name in enumerate(["a.bin", "b.bin", "c.bin"], start=1):
        for p in repo.src.glob("*.bin"):
            p.unlink()
        (repo.src / name).write_bytes(os.urandom(150_000))
        ids.append(repo.backup(utc(2026, 1, day, 8), "--no-detect"))
    return ids, src_state(repo.src)


def test_prune_on_s3_then_the_copied_back_repository_checks_and_restores(repo: Repo, seaweed: S3Server,
                                                                        s3_bucket: str) -> None:
    ids, want = _three_backups(repo)
    cfg = S3Config(seaweed.endpoint, s3_bucket, f"forget/{uuid.uuid4().hex}", seaweed.admin.access_key,
                   seaweed.admin.secret_key, seaweed.region)
    s3 = S3Backend(cfg)
    _to_backend(repo.path, s3)
    packs = {fi.name for fi in s3.list(FileType.DATA)}
    removed, res = _s3_forget(s3, keep_last=1)
    assert sorted(removed) == sorted(ids[:2]) and len(res.removed_packs) == 2 and not res.refused
    assert {fi.name for fi in s3.list(FileType.DATA)} == packs - set(res.removed_packs)
    back = repo.tmp / "back"
    _to_folder(s3, back)
    r = repo.run("-r", str(back), "check", "--read-data", "--kit", str(repo.kit), "--json")
    assert r.code == 0 and r.json()["ok"], r.out + r.err
    r = repo.run("-r", str(back), "restore", ids[2], "--target", str(repo.tmp / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    root = repo.tmp / "out" / repo.src.relative_to("/")
    assert {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()} == want


def test_s3_object_lock_refuses_forget_and_nothing_is_lost(repo: Repo, seaweed: S3Server, s3_bucket: str) -> None:
    _three_backups(repo)
    prefix = f"forget-locked/{uuid.uuid4().hex}"
    locked = S3Backend(S3Config(seaweed.endpoint, s3_bucket, prefix, seaweed.client.access_key,
                                seaweed.client.secret_key, seaweed.region, object_lock_days=1),
                       clock=FakeClock(datetime.now(UTC)))
    _to_backend(repo.path, locked)
    before = {t: {fi.name for fi in locked.list(t)} for t in FileType}
    provider = S3Backend(S3Config(seaweed.endpoint, s3_bucket, prefix, seaweed.admin.access_key,
                                  seaweed.admin.secret_key, seaweed.region))  # full rights: only the lock stops it
    removed, res = _s3_forget(provider, keep_last=1)
    assert removed == [] and res.removed_packs == []
    assert {t: {fi.name for fi in provider.list(t)} for t in FileType} == before
