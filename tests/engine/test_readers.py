"""Reading processes (snapshot/workers.py, snapshot/worker_main.py): the same snapshot as reading
threads, dedup across processes, and failures that stop the run cleanly instead of hanging."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from tests.engine.test_pipeline import Rig, make_practice

from rempart.core.errors import RempartError
from rempart.repository.format import BlobType
from rempart.repository.repo import Repository
from rempart.storage.base import FileType, Handle

PROCS = {"processes": True, "process_after": 0, "workers": 2}


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    (tmp_path / "rig").mkdir()
    return Rig(tmp_path / "rig")


class Observer:
    """An observer that records nothing; tests override ``sample_plan`` (called by the walker
    for each file it hands to a reading process)."""

    def sample_plan(self, n: int) -> list[tuple[int, int]]:
        return []

    def features(self, name: str, n: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]:
        return {}

    def changed(self, path: str, prev: Any, cur: Any, new: bool) -> None:
        pass


@pytest.fixture
def archivers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every Archiver created during the test, to reach its reading processes."""
    from rempart.snapshot import archiver as archiver_mod

    made: list[Any] = []
    real_init = archiver_mod.Archiver.__init__

    def spy(self: Any, *a: Any, **k: Any) -> None:
        real_init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(archiver_mod.Archiver, "__init__", spy)
    return made


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "data" / "src"
    s.mkdir(parents=True)
    make_practice(s)
    big = os.urandom(700_000)  # several chunks, stored twice: the copies must dedup
    (s / "db" / "copy-a.bin").write_bytes(big)
    (s / "db" / "copy-b.bin").write_bytes(big)
    return s


def archive_within(seconds: float, rig: Rig, src: Path, observer: Any = None) -> BaseException | bytes | None:
    """A run in processes, in a thread: its root tree id or the error it raised; None if it
    has not ended after ``seconds`` (a hang)."""
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(rig.archive(src, rig.tmp / "p", observer=observer, **PROCS)[0])
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return outcome[0] if outcome else None


def stored_ids(rig: Rig) -> list[bytes]:
    repo = Repository.open(rig.backend)
    repo.load_index()
    ids = []
    for fi in repo.backend.list(FileType.DATA):
        ids += [e.id for e in repo.read_pack_header(fi.name, fi.size).entries if e.type == BlobType.DATA]
    return ids


def test_processes_make_the_same_snapshot_as_threads(rig: Rig, src: Path) -> None:
    threads, _, _ = rig.archive(src, rig.tmp / "t", workers=2, processes=False)
    procs, archiver, session = rig.archive(src, rig.tmp / "p", force_reread=True, **PROCS)
    assert archiver._readers is not None, "the run did not use reading processes"
    assert rig.subtree(threads, src) == rig.subtree(procs, src)
    assert session.stats["blobs_new"] == 0  # everything was stored by the first run


def test_a_first_backup_in_processes_stores_each_blob_once_and_reads_back(rig: Rig, src: Path) -> None:
    root, archiver, session = rig.archive(src, rig.tmp / "p", **PROCS)
    assert archiver._readers is not None
    ids = stored_ids(rig)
    assert len(ids) == len(set(ids)), "a blob was stored twice"
    assert session.stats["blobs_known"] >= 3  # the second copy of the 700 kB file
    listing = rig.listing(root, src)
    for rel in ("db/copy-a.bin", "db/copy-b.bin", "db/practice.db", "docs/letter-7.txt",
                "xrays/2024/patient-003/pano.dcm"):
        assert listing[rel][5] == (src / rel).read_bytes(), rel
    assert listing["link"][4] == "docs/letter-1.txt"


def test_a_file_that_vanishes_before_its_process_reads_it_is_a_warning(rig: Rig, src: Path) -> None:
    victim = src / "docs" / "letter-3.txt"
    size = victim.stat().st_size

    class Remover(Observer):
        def sample_plan(self, n: int) -> list[tuple[int, int]]:
            if n == size and victim.exists():
                victim.unlink()  # between the walker's stat and the process's open
            return []

    root, archiver, _ = rig.archive(src, rig.tmp / "p", observer=Remover(), **PROCS)
    assert any("letter-3.txt" in w for w in archiver.stats.warnings)
    assert "docs/letter-3.txt" not in rig.listing(root, src)
    assert "docs/letter-4.txt" in rig.listing(root, src)


def test_a_killed_reading_process_stops_the_run_with_an_error_not_a_hang(rig: Rig, src: Path,
                                                                         archivers: list[Any]) -> None:
    for i in range(40):
        (src / "docs" / f"more-{i}.bin").write_bytes(os.urandom(200_000))

    class Killer(Observer):
        calls = 0

        def sample_plan(self, n: int) -> list[tuple[int, int]]:
            Killer.calls += 1
            if Killer.calls == 10:
                for proc in archivers[-1]._readers._procs:
                    os.kill(proc.popen.pid, signal.SIGKILL)
            return []

    outcome = archive_within(120, rig, src, observer=Killer())
    assert outcome is not None, "archive() hung after its reading processes died"
    assert isinstance(outcome, RempartError), outcome
    assert "reading process" in str(outcome)


def test_a_reading_process_that_dies_after_asking_which_blobs_exist_is_a_clear_error(
        rig: Rig, src: Path, archivers: list[Any]) -> None:
    """The answer to a process's question then meets a broken pipe: that is the process having
    stopped (one clear error), not a BrokenPipeError out of the backup."""
    for i in range(10):
        (src / "docs" / f"more-{i}.bin").write_bytes(os.urandom(200_000))

    class Killer(Observer):
        armed = False
        killed = False

        def sample_plan(self, n: int) -> list[tuple[int, int]]:
            pool = archivers[-1]._readers
            if not Killer.armed and pool is not None:
                Killer.armed = True
                real_claim = pool._claim

                def claim_then_die(ids: list[bytes]) -> bytes:
                    answer = real_claim(ids)
                    # once: the other process's question, already sent, comes through here too,
                    # after its process was killed and reaped (os.kill would then raise)
                    if not Killer.killed:
                        Killer.killed = True
                        for proc in pool._procs:  # every process dies before it gets its answer
                            os.kill(proc.popen.pid, signal.SIGKILL)
                            proc.popen.wait()
                    return answer  # type: ignore[no-any-return]

                pool._claim = claim_then_die
            return []

    outcome = archive_within(120, rig, src, observer=Killer())
    assert Killer.armed
    assert outcome is not None, "archive() hung after its reading processes died"
    assert isinstance(outcome, RempartError), outcome
    assert "reading process" in str(outcome)


def test_detection_features_computed_in_processes_match_the_threads(rig: Rig, src: Path, tmp_path: Path) -> None:
    from rempart.agent.detection import make_detection

    repo_id = Repository.open(rig.backend).config.id
    (src / "docs" / "scan.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(50_000) + b"\n%%EOF\n")
    threads, _, _ = rig.archive(src, rig.tmp / "t", processes=False,
                                observer=make_detection(tmp_path / "det-t", repo_id))
    in_procs = make_detection(tmp_path / "det-p", repo_id)
    calls: list[str] = []
    real_features = in_procs.features
    in_procs.features = lambda name, *a: calls.append(name) or real_features(name, *a)  # type: ignore[method-assign]
    procs, archiver, _ = rig.archive(src, rig.tmp / "p", observer=in_procs, **PROCS)
    assert calls == [], "features were computed in the parent, not in the reading processes"
    assert archiver._readers is not None
    assert rig.subtree(threads, src) == rig.subtree(procs, src)  # the features are part of each tree
    reader = rig.reader()
    from rempart.snapshot.tree import decode_tree

    docs = rig.subtree(procs, src)
    (node,) = [n for n in decode_tree(reader.load_blob(docs)) if n.name == "docs"]
    assert node.subtree is not None
    letters = {n.name: n for n in decode_tree(reader.load_blob(node.subtree))}
    assert letters["letter-2.txt"].features, "no features recorded by the reading processes"


def _workers_of(pid: int) -> list[int]:
    """Live reading processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"worker_main" in cmd:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_backup_killed_while_processes_read_leaves_no_process_and_a_valid_repository(repo, tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys
    import time

    from tests.engine.conftest import run_subprocess

    src = tmp_path / "src"
    src.mkdir()
    for i in range(80):
        (src / f"scan{i:03d}.bin").write_bytes(os.urandom(1_000_000))
    p = subprocess.Popen([sys.executable, "-m", "rempart.cli.main", "backup", str(src), "--no-detect", "-q"],
                         env=repo.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and len(workers) < 2:
        workers = _workers_of(p.pid)
        time.sleep(0.02)
    assert len(workers) == 2, "the backup did not start its two reading processes"
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "reading processes outlived the killed backup"
    r = run_subprocess(repo, "check")
    assert r.code == 0, r.out + r.err
    r = run_subprocess(repo, "backup", str(src), "--no-detect", "--json")
    assert r.code == 0, r.err
    r = run_subprocess(repo, "restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    out = tmp_path / "out" / src.relative_to("/")
    for i in (0, 41, 79):
        name = f"scan{i:03d}.bin"
        assert hashlib.sha256((out / name).read_bytes()).digest() == hashlib.sha256((src / name).read_bytes()).digest()


def test_when_processes_cannot_start_the_run_reads_in_threads(rig: Rig, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rempart.snapshot import workers

    monkeypatch.setattr(workers.sys, "executable", "/bin/false")  # exits at once: no hello
    root, archiver, _ = rig.archive(src, rig.tmp / "p", **PROCS)
    assert archiver._readers is None
    assert any("reading in threads" in w for w in archiver.stats.warnings)
    listing = rig.listing(root, src)
    assert listing["db/copy-b.bin"][5] == (src / "db" / "copy-b.bin").read_bytes()


def test_packs_built_in_recycled_buffers_hold_exactly_their_blobs() -> None:
    """Pack buffers are reused from pack to pack: a pack must never carry bytes of the previous,
    larger one, and every blob must read back."""
    import hashlib
    import random

    from rempart.crypto.keys import IdKey, RecoveryPrivateKey
    from rempart.repository.config import CONFIG, new_config
    from rempart.repository.reader import ReadSession
    from rempart.repository.repo import WriteSession
    from rempart.storage.memory import MemoryBackend

    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    backend = MemoryBackend()
    backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk, pack_size=300_000).to_bytes())
    repo = Repository.open(backend)
    session = WriteSession(repo, idk)
    rng = random.Random(7)
    blobs = {}
    for i in range(400):  # sizes vary a lot, so consecutive packs end at different offsets
        data = rng.randbytes(rng.choice([10, 5_000, 60_000, 250_000])) + i.to_bytes(4, "little")
        bid, _ = session.add_blob(BlobType.DATA, data)
        blobs[bid] = data
        if i in (150, 151):  # larger than a pack buffer (a huge tree blob): a new, larger buffer
            big = rng.randbytes(900_000)
            blobs[session.add_blob(BlobType.DATA, big, compressible=False)[0]] = big
    session.flush()
    session.close()
    assert session.stats["packs"] >= 20
    repo = Repository.open(backend)
    repo.load_index()
    reader = ReadSession(repo, priv, idk)
    for fi in backend.list(FileType.DATA):
        raw = backend.load(Handle(FileType.DATA, fi.name))
        assert hashlib.sha256(raw).hexdigest() == fi.name  # named after exactly its bytes
        entries = repo.read_pack_header(fi.name, fi.size).entries
        assert entries[0].offset == 0 and all(a.offset + a.length == b.offset for a, b in pairwise(entries))
    for bid, data in blobs.items():
        assert reader.load_blob(bid) == data


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_reading_processes_do_not_inherit_rempart_secrets(rig: Rig, src: Path, monkeypatch: pytest.MonkeyPatch,
                                                         archivers: list[Any]) -> None:
    monkeypatch.setenv("REMPART_VAULT_TOKEN", "rvt_secret_token_value")
    monkeypatch.setenv("REMPART_KIT_PASSPHRASE", "a secret passphrase")
    seen: list[bytes] = []

    class Peek(Observer):
        def sample_plan(self, n: int) -> list[tuple[int, int]]:
            if not seen:
                for proc in archivers[-1]._readers._procs:
                    seen.append(Path(f"/proc/{proc.popen.pid}/environ").read_bytes())
            return []

    rig.archive(src, rig.tmp / "p", observer=Peek(), **PROCS)
    assert len(seen) == 2
    for env in seen:
        assert b"rvt_secret_token_value" not in env and b"a secret passphrase" not in env
        assert b"PATH=" in env  # the environment itself is passed on


def test_processes_build_many_packs_in_their_shared_buffers(rig: Rig, src: Path) -> None:
    """Small packs: each process fills, hands over and gets back its two buffers many times.
    Every pack is named after exactly its bytes, every blob is stored once, every file reads back."""
    import hashlib

    from rempart.repository.config import CONFIG, new_config
    from rempart.storage.memory import MemoryBackend

    rig.backend = MemoryBackend()
    rig.backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", rig.priv, rig.idk, pack_size=100_000).to_bytes())
    for i in range(30):
        (src / "docs" / f"scan-{i}.bin").write_bytes(os.urandom(150_000 + 7_919 * i))
    root, archiver, session = rig.archive(src, rig.tmp / "p", **PROCS)
    assert archiver._readers is not None
    assert session.stats["packs"] >= 40, session.stats
    for fi in rig.backend.list(FileType.DATA):
        assert hashlib.sha256(rig.backend.load(Handle(FileType.DATA, fi.name))).hexdigest() == fi.name
    ids = stored_ids(rig)
    assert len(ids) == len(set(ids)), "a blob was stored twice"
    listing = rig.listing(root, src)
    for i in (0, 13, 29):
        rel = f"docs/scan-{i}.bin"
        assert listing[rel][5] == (src / rel).read_bytes(), rel
    assert listing["db/copy-b.bin"][5] == (src / "db" / "copy-b.bin").read_bytes()


def test_a_process_lost_after_its_files_fails_the_run(rig: Rig, src: Path) -> None:
    """A process that read its files but died before handing over its last pack took blobs it
    never stored: closing the pool must fail, so no snapshot can reference them."""
    from rempart.snapshot.workers import ReaderLost, ReaderPool

    repo = Repository.open(rig.backend)
    repo.load_index()
    from rempart.repository.repo import WriteSession

    session = WriteSession(repo, rig.idk)
    done = threading.Event()
    outcomes: list[Any] = []

    def finished(ctx: Any, outcome: Any) -> None:
        outcomes.append(outcome)
        done.set()

    pool = ReaderPool(1, session.reader_setup(), session.claim, session.add_pack, finished)
    try:
        path = src / "db" / "copy-a.bin"
        pool.submit(str(path), path.stat().st_size, [], 0, None)
        assert done.wait(60)
        assert outcomes[0].kind == "ok" and outcomes[0].content
        os.kill(pool._procs[0].popen.pid, signal.SIGKILL)  # its partly filled pack dies with it
        with pytest.raises(ReaderLost):
            pool.close()
        assert session.stats["packs"] == 0
    finally:
        session.close()


def test_small_files_are_asked_about_in_groups(rig: Rig, src: Path) -> None:
    many = src / "many"
    many.mkdir()
    for i in range(300):
        (many / f"note-{i:03d}.txt").write_bytes(os.urandom(3_000 + i))
    root, archiver, _ = rig.archive(src, rig.tmp / "p", **PROCS)
    files = archiver.stats.files_read
    assert files > 300
    # how many requests wait in a pipe depends on timing (quiet machine: 124 queries for 345
    # files, under load fewer); the exact grouping is tested on the worker itself below
    assert archiver._readers.queries < files * 0.6, (archiver._readers.queries, files)
    listing = rig.listing(root, src)
    for i in (0, 150, 299):
        rel = f"many/note-{i:03d}.txt"
        assert listing[rel][5] == (many / f"note-{i:03d}.txt").read_bytes()


@pytest.mark.parametrize("more", [600_000, 1_000])  # past the group limit (256 KiB), or not
def test_a_small_file_that_grew_before_its_group_was_read_is_read_whole(rig: Rig, src: Path, more: int) -> None:
    """Grown after the walker's stat, past the group limit or within it: stored whole, never
    cut at the size the walker saw."""
    victim = src / "docs" / "letter-5.txt"
    size = victim.stat().st_size
    grown = victim.read_bytes() + os.urandom(more)

    class Grower(Observer):
        def sample_plan(self, n: int) -> list[tuple[int, int]]:
            if n == size:  # after the walker's stat, before the process opens it
                victim.write_bytes(grown)
            return []

    root, archiver, _ = rig.archive(src, rig.tmp / "p", observer=Grower(), **PROCS)
    assert archiver._readers is not None
    assert rig.listing(root, src)["docs/letter-5.txt"][5] == grown


def test_a_failed_upload_stops_a_run_in_processes_with_an_error_not_a_hang(rig: Rig, src: Path,
                                                                            archivers: list[Any]) -> None:
    """The storage refuses the 4th pack: the backup must end with that error (no process left
    waiting forever for the buffer of the pack that failed), and no snapshot is possible."""
    from rempart.core.errors import BackendError
    from rempart.repository.config import CONFIG, new_config
    from rempart.storage.memory import MemoryBackend

    class Refusing(MemoryBackend):
        packs = 0

        def save(self, h: Handle, data: Any) -> None:
            if h.type == FileType.DATA:
                Refusing.packs += 1
                if Refusing.packs == 4:
                    raise BackendError("disk full")
            super().save(h, data)

    rig.backend = Refusing()
    rig.backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", rig.priv, rig.idk, pack_size=100_000).to_bytes())
    for i in range(40):
        (src / "docs" / f"scan-{i}.bin").write_bytes(os.urandom(120_000))
    outcome = archive_within(120, rig, src)
    assert outcome is not None, "archive() hung after an upload failed"
    assert isinstance(outcome, BackendError), outcome
    assert "disk full" in str(outcome)
    assert all(p.popen.poll() is not None for p in archivers[-1]._readers._procs)


def test_a_reading_process_groups_the_small_file_requests_waiting_in_its_pipe() -> None:
    """``_gather``: the small-file requests already in the pipe, in order, up to the group
    limits; the first other message (a large file, a stop) ends the group and is served next."""
    from rempart.snapshot import worker_main as wm
    from rempart.snapshot.wire import Inbox, Request, encode_request, send

    r, w = os.pipe()
    try:
        def req(i: int, size: int) -> Request:
            return Request(i, f"/f{i}", size, [], 0)

        for i in range(1, 5):
            send(w, b"R", encode_request(req(i, 1000)))
        send(w, b"R", encode_request(req(5, wm.SMALL + 1)))  # large: not in the group
        send(w, b"R", encode_request(req(6, 1000)))
        worker = wm._Worker(Inbox(r), w)
        group = worker._gather(req(0, 1000))
        assert [g.req for g in group] == [0, 1, 2, 3, 4]
        nxt = worker._take()
        assert nxt is not None and nxt[0] == b"R" and wm.decode_request(nxt[1]).req == 5
        assert [g.req for g in worker._gather(req(7, 1000))] == [7, 6]  # nothing else waiting
        for i in range(wm.GROUP_FILES + 3):
            send(w, b"R", encode_request(req(100 + i, 10)))
        assert len(worker._gather(req(99, 10))) == wm.GROUP_FILES
        send(w, b"S", b"")
        rest = [worker._take() for _ in range(5)]  # 99 and 100-162 were taken: 163-166 wait, in order
        assert [wm.decode_request(m[1]).req for m in rest[:4] if m] == [163, 164, 165, 166]
        assert rest[4] == (b"S", b"")
        big = wm.SMALL  # still small: four of them make GROUP_BYTES
        assert 4 * big == wm.GROUP_BYTES
        for i in range(5):
            send(w, b"R", encode_request(req(200 + i, big)))
        assert [g.req for g in worker._gather(req(199, big))] == [199, 200, 201, 202]
    finally:
        os.close(r)
        os.close(w)


def test_a_first_backup_starts_every_process_and_a_later_one_only_what_its_changes_need(rig: Rig, src: Path) -> None:
    _, first, _ = rig.archive(src, rig.tmp / "p", **PROCS)
    assert first._readers.processes == 2
    (src / "docs" / "letter-5.txt").write_bytes(os.urandom(5_000))
    (src / "db" / "copy-a.bin").write_bytes(os.urandom(900_000))
    root, later, _ = rig.archive(src, rig.tmp / "p", **PROCS)
    assert later.stats.files_read == 2 and later.stats.files_unchanged > 10
    assert later._readers.processes == 1  # a few changed files: one process, one core
    listing = rig.listing(root, src)
    assert listing["db/copy-a.bin"][5] == (src / "db" / "copy-a.bin").read_bytes()
    assert listing["docs/letter-5.txt"][5] == (src / "docs" / "letter-5.txt").read_bytes()


def test_a_second_process_starts_when_files_queue_up_behind_the_first(rig: Rig, src: Path) -> None:
    from rempart.snapshot.workers import ReaderPool

    repo = Repository.open(rig.backend)
    repo.load_index()
    from rempart.repository.repo import WriteSession

    session = WriteSession(repo, rig.idk)
    outcomes: dict[str, Any] = {}
    all_done = threading.Event()
    files = [src / "db" / "copy-a.bin", *sorted((src / "docs").iterdir())[:6]]

    def finished(ctx: Any, outcome: Any) -> None:
        outcomes[ctx] = outcome
        if len(outcomes) == len(files):
            all_done.set()

    pool = ReaderPool(2, session.reader_setup(), session.claim, session.add_pack, finished, start=1,
                      grow_bytes=200_000)
    try:
        assert pool.processes == 1
        first = pool._procs[0].popen.pid
        os.kill(first, signal.SIGSTOP)  # its files wait in its pipe: a backlog, whatever the timing
        try:
            for f in files[:3]:  # 700 kB, then two documents: less than 200 kB behind the largest
                pool.submit(str(f), f.stat().st_size, [], 0, str(f))
            assert pool.processes == 1
            for f in files[3:]:  # enough behind it now: the next file starts a second process
                pool.submit(str(f), f.stat().st_size, [], 0, str(f))
            assert pool.processes == 2
        finally:
            os.kill(first, signal.SIGCONT)
        assert all_done.wait(60)
        pool.close()
        assert {o.kind for o in outcomes.values()} == {"ok"}
        session.flush()
        reader = rig.reader()
        for f in files:
            got = b"".join(reader.load_blob(bid) for bid in outcomes[str(f)].content)
            assert got == f.read_bytes(), f
    finally:
        session.close()


@contextlib.contextmanager
def _worker_here(rig: Rig) -> Iterator[tuple[Any, int, int, Any]]:
    """A reading process's loop (``worker_main._Worker``) in this process, given one pack
    buffer: (the worker, the pipe end to write to it, the pipe end it writes to, the stream of
    what it sends). The caller runs ``worker.serve`` in a thread."""
    from rempart.repository.repo import WriteSession
    from rempart.snapshot import worker_main as wm
    from rempart.snapshot.wire import Inbox
    from rempart.snapshot.workers import _shared_buffer

    repo = Repository.open(rig.backend)
    repo.load_index()
    session = WriteSession(repo, rig.idk)
    setup = session.reader_setup()
    fds = [_shared_buffer(int(setup["capacity"])) for _ in range(2)]
    to_worker, from_parent = os.pipe()[::-1]
    from_worker, to_parent = os.pipe()
    worker = wm._Worker(Inbox(from_parent), to_parent)
    worker._setup({k: v.hex() if isinstance(v, bytes) else v for k, v in setup.items()} | {"buffers": fds})
    worker.packs.free.append(0)  # type: ignore[union-attr]
    stream = os.fdopen(from_worker, "rb")
    try:
        yield worker, to_worker, to_parent, stream
    finally:
        stream.close()
        for fd in (to_worker, from_parent, to_parent):
            os.close(fd)
        session.close()


def test_a_reading_process_asks_about_the_next_block_before_the_last_answer_arrives(rig: Rig, tmp_path: Path) -> None:
    """The process reads and hashes the next group of small files (or the next 2 MiB of a
    large file) while the parent answers about the last one: two questions are out before
    the first answer, and every file is still stored and reported once the answers come."""
    from rempart.snapshot import wire
    from rempart.snapshot import worker_main as wm
    from rempart.snapshot.wire import Request, decode_result, encode_request, recv, send

    folder = tmp_path / "files"
    folder.mkdir()
    small = [folder / f"s{i:03d}.txt" for i in range(wm.GROUP_FILES + 1)]  # two groups
    for i, f in enumerate(small):
        f.write_bytes(os.urandom(2_000 + i))
    large = folder / "large.bin"
    large.write_bytes(os.urandom(5_000_000))  # several blocks
    with _worker_here(rig) as (worker, to_worker, to_parent, stream):
        serving = threading.Thread(target=worker.serve, daemon=True)
        for i, f in enumerate(small):  # all waiting in the pipe: a full group, then one more
            send(to_worker, b"R", encode_request(Request(i, str(f), f.stat().st_size, [], 0)))
        serving.start()

        def questions(n: int) -> list[int]:
            # a process that waits for an answer before asking again would wait forever: after
            # 20 s a message no process sends ends the wait instead
            timer = threading.Timer(20, send, (to_parent, b"T"))
            timer.start()
            sizes = []
            while len(sizes) < n:
                msg = recv(stream)
                assert msg is not None and msg[0] == b"Q", msg  # nothing stored before an answer
                sizes.append(len(msg[1]) // 32)
            timer.cancel()
            return sizes

        assert questions(2) == [wm.GROUP_FILES, 1]  # the second group asked about before any answer
        for n in (wm.GROUP_FILES, 1):
            send(to_worker, b"A", b"\x01" * n)
        reported = set()
        while len(reported) < len(small):
            msg = recv(stream)
            assert msg is not None and msg[0] == b"F", msg
            reported.add(decode_result(msg[1])[0])
        send(to_worker, b"R", encode_request(Request(999, str(large), large.stat().st_size, [], 0)))
        sizes = questions(2)  # the second block read and hashed before the first answer
        answered = 0
        while True:  # then every question answered as it comes, until the file is reported
            for n in sizes[answered:]:
                send(to_worker, b"A", b"\x01" * n)
            answered = len(sizes)
            msg = recv(stream)
            assert msg is not None and msg[0] in (b"Q", b"F"), msg
            if msg[0] == b"F":
                break
            sizes.append(len(msg[1]) // 32)
        assert len(sizes) >= 3 and decode_result(msg[1])[0] == 999
        assert len(decode_result(msg[1])[1]) == sum(sizes)
        send(to_worker, b"S", b"")
        msg = recv(stream)
        assert msg is not None and msg[0] == b"P"  # the one pack, with every blob
        assert (len(msg[1]) - wire.PACK.size) // wire.PBLOB.size == len(small) + sum(sizes)
        assert recv(stream) == (b"Z", b"")
        serving.join(10)
        assert not serving.is_alive()


def test_a_first_backup_starts_its_processes_sooner_than_a_later_one(rig: Rig, src: Path) -> None:
    opts = {"processes": True, "workers": 2, "process_after": 10**9, "first_process_after": 100_000}
    root, first, _ = rig.archive(src, rig.tmp / "p", **opts)
    assert first._readers is not None and first._readers.processes == 2  # past 100 kB of a first run
    (src / "db" / "copy-a.bin").write_bytes(os.urandom(900_000))
    root, later, _ = rig.archive(src, rig.tmp / "p", **opts)
    assert later._readers is None and later.stats.files_read == 1  # read in a thread
    assert rig.listing(root, src)["db/copy-a.bin"][5] == (src / "db" / "copy-a.bin").read_bytes()


def test_a_pack_of_thousands_of_tiny_blobs_keeps_its_header_in_the_shared_buffer(rig: Rig, tmp_path: Path) -> None:
    """A folder of tiny files gives tiny blobs, each with a header entry as large as itself: a
    pack that only ended at ``pack_size`` bytes would hold more entries than its shared buffer
    has room for (this failed a backup now and then: "pack header did not fit"). A process
    ends the pack at the most entries the buffer is sized for; every file reads back."""
    from rempart.chunking.fastcdc import ChunkerParams
    from rempart.repository.config import CONFIG, new_config
    from rempart.storage.memory import MemoryBackend

    rig.backend = MemoryBackend()
    params = ChunkerParams(min_size=64, avg_size=320, max_size=1024)
    rig.backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", rig.priv, rig.idk, chunker=params,
                                        pack_size=100_000).to_bytes())
    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(4000):  # distinct contents: 4000 blobs of 4 bytes
        (src / f"f{i:05d}").write_bytes(i.to_bytes(4, "big"))
    root, archiver, session = rig.archive(src, rig.tmp / "p", **{**PROCS, "workers": 1})  # one pack for all
    assert archiver._readers is not None
    assert session.stats["packs"] >= 3, session.stats  # 4000 entries, at most 1564 per pack
    ids = stored_ids(rig)
    assert len(ids) == len(set(ids)) >= 4000
    listing = rig.listing(root, src)
    for i in (0, 1999, 3999):
        assert listing[f"f{i:05d}"][5] == i.to_bytes(4, "big")


_EIO_HOOK = '''
import errno, os
_fdopen = os.fdopen
class _Failing:
    """A file that gives an I/O error once 1 MiB has been read (a failing disk, a lost share)."""
    def __init__(self, f):
        self.f, self.done = f, 0
    def readinto(self, b):
        if self.done >= 1 << 20:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        n = self.f.readinto(b)
        self.done += n or 0
        return n
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
def fdopen(fd, *a, **k):
    f = _fdopen(fd, *a, **k)
    try:
        failing = os.readlink(f"/proc/self/fd/{fd}").endswith(".failing")
    except OSError:
        failing = False
    return _Failing(f) if failing else f
os.fdopen = fdopen
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the fault hook names files through /proc")
def test_a_read_error_in_the_middle_of_a_file_skips_it_and_keeps_the_backup_whole(
        rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that fails after its first block (EIO) is skipped with a warning; the blocks the
    process had asked about were claimed for it, so it stores them: another file with the same
    bytes, read after it, restores whole, and the run does not fail. Before, the unanswered
    question shifted the answers of the next file and the whole backup failed."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_EIO_HOOK)  # imported by each reading process at start
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
    src = tmp_path / "data" / "src"
    src.mkdir(parents=True)
    head = os.urandom(3 << 20)
    (src / "a.failing").write_bytes(head + os.urandom(2 << 20))
    (src / "b.bin").write_bytes(head)  # the same chunks as a's first blocks: claimed by a
    (src / "c.txt").write_text("after the failing file\n" * 100)
    root, archiver, _ = rig.archive(src, rig.tmp / "p", processes=True, process_after=0, workers=1)
    assert archiver._readers is not None and archiver._readers.processes == 1  # read by the process
    assert [w for w in archiver.stats.warnings if "a.failing" in w and "Input/output error" in w]
    listing = rig.listing(root, src)
    assert listing["b.bin"][5] == head
    assert listing["c.txt"][5] == (src / "c.txt").read_bytes()
    assert listing.get("a.failing", ("skip",))[0] not in ("file",)  # never a partial copy


def test_a_reading_process_compresses_ahead_only_while_answers_say_new(rig: Rig, tmp_path: Path) -> None:
    """Chunks are compressed as soon as they are asked about while the answers say "new" (a
    first backup); an answer that is mostly "stored already" turns that off from the next
    block on, an answer that is mostly "new" back on. Either way exactly the new chunks are
    stored."""
    from rempart.snapshot import wire
    from rempart.snapshot.wire import Request, decode_result, encode_request, recv, send

    files = []
    for i in range(3):
        f = tmp_path / f"big{i}.bin"
        f.write_bytes(os.urandom(3_000_000))
        files.append(f)
    with _worker_here(rig) as (worker, to_worker, _, stream):
        calls: list[bool] = []
        real = worker._compress

        def spy(state: Any, chunks: Any) -> Any:
            calls.append(worker.ahead)
            return real(state, chunks)

        worker._compress = spy
        serving = threading.Thread(target=worker.serve, daemon=True)
        serving.start()
        stored = 0
        aheads = []
        for i, (f, new) in enumerate(zip(files, (b"\x01", b"\x00", b"\x01"), strict=True)):
            calls.clear()
            send(to_worker, b"R", encode_request(Request(i, str(f), f.stat().st_size, [], 0)))
            while True:
                msg = recv(stream)
                assert msg is not None and msg[0] in (b"Q", b"F"), msg
                if msg[0] == b"F":
                    assert decode_result(msg[1])[0] == i
                    break
                n = len(msg[1]) // 32
                send(to_worker, b"A", new * n)
                stored += n if new == b"\x01" else 0
            aheads.append(list(calls))
        # file 0: ahead (a first run); file 1 begins ahead, until its first all-"stored"
        # answer; file 2 begins compressed after its answers, until its first all-"new" one
        assert len(aheads[0]) >= 3 and all(aheads[0])
        assert aheads[1][0] is True and aheads[1][-1] is False
        assert aheads[2][0] is False and aheads[2][-1] is True
        assert worker.ahead is True
        send(to_worker, b"S", b"")
        blobs = 0
        while (msg := recv(stream)) is not None and msg[0] != b"Z":
            assert msg[0] == b"P"
            blobs += (len(msg[1]) - wire.PACK.size) // wire.PBLOB.size
        assert blobs == stored and stored > 0
        serving.join(10)
