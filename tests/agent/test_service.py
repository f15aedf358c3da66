"""The agent loop under a FakeClock against a real local repository: schedule, restart,
retries with backoff, lock, resume without re-upload, run reports without paths."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rempart.agent.service import AgentService
from rempart.agent.state import RunLock, load_state
from rempart.core.clock import FakeClock
from rempart.core.errors import TransientError
from rempart.repository.repo import Repository
from rempart.storage.base import FileInfo, FileType, Handle
from rempart.storage.local import LocalBackend
from rempart.storage.wrappers import FaultyBackend, Wrapper

from .conftest import LocalSetup, agent_config

MON_8 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str | None, dict[str, int]]] = []

    def report_run(self, outcome: str, error_class: str | None, counts: dict[str, int]) -> None:
        self.reports.append((outcome, error_class, counts))


class Counting(Wrapper):
    """Counts saves per file name (what crossed the 'network')."""

    def __init__(self, inner: object, fail_data_after: int | None = None) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.saves: dict[str, int] = {}
        self.data_bytes = 0
        self.fail_data_after = fail_data_after

    def save(self, h: Handle, data: bytes) -> None:
        if h.type is FileType.DATA:
            if self.fail_data_after is not None and sum(
                    1 for n in self.saves if n.startswith("data/")) >= self.fail_data_after:
                raise TransientError("link dropped")
            self.data_bytes += len(data)
        self.saves[str(h)] = self.saves.get(str(h), 0) + 1
        self.inner.save(h, data)

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        return self.inner.list(ftype)


def make_files(folder: Path, n: int = 4, size: int = 700_000, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        (folder / f"f{i}.bin").write_bytes(rng.randbytes(size))
    return folder


def service(setup: LocalSetup, clock: FakeClock, data: Path, *, backend_wrap=None, recorder=None,
            schedule=None, seed: int = 0) -> AgentService:
    cfg = agent_config(str(setup.repo), [data], base=setup.state, schedule=schedule)

    def open_repo() -> Repository:
        b = LocalBackend(setup.repo)
        return Repository.open(backend_wrap(b) if backend_wrap else b)

    return AgentService(cfg, setup.state, clock, UTC, open_repo=open_repo,
                        reporter=lambda: recorder, sleep=clock.advance, rng=random.Random(seed))


def run_times(setup: LocalSetup) -> list[datetime]:
    repo = Repository.open(LocalBackend(setup.repo))
    return sorted(datetime.fromisoformat(str(p.plain["time"]).replace("Z", "+00:00"))
                  for _, p in repo.list_snapshots())


def test_loop_follows_opening_hours_and_daily_run(local_repo: LocalSetup, tmp_path: Path) -> None:
    clock = FakeClock(MON_8 + timedelta(hours=10))  # Monday 18:00
    rec = Recorder()
    svc = service(local_repo, clock, make_files(tmp_path / "data", n=1, size=1000), recorder=rec)
    assert svc.run_forever(max_runs=5) == 5
    # 18:00, 19:00 (20:00 is closing time), the daily run at 21:30, then Tuesday 07:00 and 08:00
    assert run_times(local_repo) == [MON_8 + timedelta(hours=h) for h in (10, 11)] + [
        MON_8 + timedelta(hours=13, minutes=30), MON_8 + timedelta(days=1, hours=-1), MON_8 + timedelta(days=1)]
    assert [r[0] for r in rec.reports] == ["ok"] * 5
    st = load_state(local_repo.state)
    assert st.runs == 5 and st.last_outcome == "ok" and not st.pending_reports


def test_restart_picks_up_the_schedule(local_repo: LocalSetup, tmp_path: Path) -> None:
    data = make_files(tmp_path / "data", n=1, size=1000)
    clock = FakeClock(MON_8)
    service(local_repo, clock, data).run_forever(max_runs=1)
    # the process dies and comes back 20 minutes later: it waits for 09:00, not a run at once
    clock.advance(20 * 60)
    service(local_repo, clock, data).run_forever(max_runs=1)
    # then the PC is off until Wednesday 10:05: the missed run happens at start-up
    clock.set(MON_8 + timedelta(days=2, hours=2, minutes=5))
    service(local_repo, clock, data).run_forever(max_runs=1)
    assert run_times(local_repo) == [MON_8, MON_8 + timedelta(hours=1), MON_8 + timedelta(days=2, hours=2, minutes=5)]


def test_transient_failures_retry_with_backoff_then_succeed(local_repo: LocalSetup, tmp_path: Path) -> None:
    clock = FakeClock(MON_8)
    rec = Recorder()
    faulty: list[FaultyBackend] = []

    def wrap(b: LocalBackend) -> FaultyBackend:
        f = FaultyBackend(b)
        if len(faulty) < 2:
            f.fail("save", times=1)  # the first two attempts lose the link at their first upload
        faulty.append(f)
        return f

    svc = service(local_repo, clock, make_files(tmp_path / "data", n=2, size=5000), backend_wrap=wrap,
                  recorder=rec, schedule={"retry_base_seconds": 60, "retry_max_seconds": 600})
    starts: list[datetime] = []
    inner_attempt = svc.attempt

    def attempt():  # type: ignore[no-untyped-def]
        starts.append(clock.now())
        return inner_attempt()

    svc.attempt = attempt  # type: ignore[method-assign]
    svc.run_forever(max_runs=3)
    assert [r[0] for r in rec.reports] == ["failed", "failed", "ok"]
    assert rec.reports[0][1] == "transient-error"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert 30 <= gaps[0] <= 60 and 60 <= gaps[1] <= 120  # exponential with jitter
    st = load_state(local_repo.state)
    assert st.failures == 0 and st.retry_at is None and st.time("last_success") == starts[-1]
    # after success the regular schedule resumes from the successful run
    assert svc.due(st) == starts[-1] + timedelta(hours=1)


def test_permanent_error_is_reported_without_paths_and_not_retried(local_repo: LocalSetup, tmp_path: Path) -> None:
    clock = FakeClock(MON_8)
    rec = Recorder()
    secret_path = tmp_path / "Patients-Dupont-Jean"
    svc = service(local_repo, clock, secret_path, recorder=rec)  # does not exist
    svc.run_forever(max_runs=1)
    outcome, error_class, _counts = rec.reports[0]
    assert (outcome, error_class) == ("failed", "user-error")
    assert "Dupont" not in repr(rec.reports)
    st = load_state(local_repo.state)
    assert st.retry_at is None and "Patients-Dupont-Jean" in (st.last_error or "")  # local only
    assert svc.due(st) == MON_8 + timedelta(hours=1)


def test_never_two_runs_at_once(local_repo: LocalSetup, tmp_path: Path) -> None:
    clock = FakeClock(MON_8)
    svc = service(local_repo, clock, make_files(tmp_path / "data", n=1, size=100))
    with RunLock(local_repo.state):
        rec = svc.attempt()
    assert rec.outcome == "failed" and rec.error_class == "locked" and rec.retryable
    assert run_times(local_repo) == []
    assert svc.attempt().outcome == "ok"


def test_interrupted_upload_resumes_without_sending_stored_packs_again(local_repo: LocalSetup,
                                                                      tmp_path: Path) -> None:
    data = make_files(tmp_path / "data", n=6, size=700_000, seed=3)
    clock = FakeClock(MON_8)
    wrappers: list[Counting] = []

    def wrap(b: LocalBackend) -> Counting:
        c = Counting(b, fail_data_after=3 if not wrappers else None)
        wrappers.append(c)
        return c

    svc = service(local_repo, clock, data, backend_wrap=wrap)
    first = svc.attempt()
    assert first.outcome == "failed" and first.retryable
    stored_first = {n for n in wrappers[0].saves if n.startswith("data/")}
    assert len(stored_first) == 3 and not any(n.startswith("snapshots/") for n in wrappers[0].saves)
    second = svc.attempt()
    assert second.outcome == "ok"
    # each run has its own data key, so re-sent data would form new packs: look at blob level
    from collections import Counter

    repo = Repository.open(LocalBackend(local_repo.repo))
    seen: Counter[bytes] = Counter()
    for fi in repo.backend.list(FileType.DATA):
        seen.update(e.id for e in repo.read_pack_header(fi.name, fi.size).entries)
    assert seen and max(seen.values()) == 1, "blobs stored before the interruption were uploaded again"
    assert second.counts["bytes_uploaded"] == wrappers[1].data_bytes


def test_sources_and_hooks_run_around_the_backup(local_repo: LocalSetup, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "agenda.db"
    with sqlite3.connect(db) as c:
        c.execute("create table rdv (id integer primary key, who text)")
        c.executemany("insert into rdv (who) values (?)", [(f"p{i}",) for i in range(100)])
    marker = tmp_path / "hook.log"
    cfg = agent_config(str(local_repo.repo), [make_files(tmp_path / "data", n=1, size=10)], base=tmp_path, extra={
        "sources": [{"kind": "sqlite", "name": "agenda", "path": str(db)},
                    {"kind": "sqlite", "name": "gone", "path": str(tmp_path / "missing.db")}],
        "hooks": [{"name": "h", "pre": ["sh", "-c", f"echo pre >> {marker}"],
                   "post": ["sh", "-c", f"echo post >> {marker}"]}]})
    clock = FakeClock(MON_8)
    svc = AgentService(cfg, local_repo.state, clock, UTC,
                       open_repo=lambda: Repository.open(LocalBackend(local_repo.repo)), sleep=clock.advance)
    rec = svc.attempt()
    assert rec.outcome == "partial"  # one source failed: stored, but reported
    assert rec.counts["sources_ok"] == 1 and rec.counts["sources_failed"] == 1
    assert any("gone" in w for w in rec.warnings)
    assert marker.read_text().split() == ["pre", "post"]
    staged = local_repo.state / "agent" / "staging" / "agenda.sqlite"
    with sqlite3.connect(staged) as c:
        assert c.execute("select count(*) from rdv").fetchone()[0] == 100
    assert not (local_repo.state / "agent" / "staging" / "gone.sqlite").exists()
    assert os.stat(staged).st_size > 0


def test_failed_upload_fails_the_run_instead_of_hanging(local_repo: LocalSetup, tmp_path: Path) -> None:
    """Regression: WriteSession leaked an upload slot per failed upload, so a lost link with
    several files in flight deadlocked the archiver's threads."""
    import threading as th

    data = make_files(tmp_path / "data", n=12, size=700_000, seed=5)
    clock = FakeClock(MON_8)
    svc = service(local_repo, clock, data, backend_wrap=lambda b: Counting(b, fail_data_after=1),
                  schedule={"retry_attempts": 0})
    out: list[object] = []
    t = th.Thread(target=lambda: out.append(svc.attempt()), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the backup hung after an upload failure"
    assert out[0].outcome == "failed" and out[0].error_class == "transient-error"  # type: ignore[attr-defined]


def test_nothing_to_back_up_is_a_clear_failure(local_repo: LocalSetup, tmp_path: Path) -> None:
    cfg = agent_config(str(local_repo.repo), [], base=tmp_path)
    clock = FakeClock(MON_8)
    rec = AgentService(cfg, local_repo.state, clock, UTC, sleep=clock.advance,
                       open_repo=lambda: Repository.open(LocalBackend(local_repo.repo))).attempt()
    assert (rec.outcome, rec.error_class, rec.retryable) == ("failed", "config-error", False)
    assert "nothing to back up" in (rec.error or "")
