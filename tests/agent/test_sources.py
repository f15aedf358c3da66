"""Database sources against real servers while writes go on; the restored dump loads and is
consistent. Also SQLite's online backup under writes, hooks' timeouts and the archiver's torn-read
handling."""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rempart.agent.config import HookSpec
from rempart.agent.hooks import HookRunner, run_command
from rempart.agent.service import AgentService
from rempart.core.clock import FakeClock
from rempart.core.errors import SourceError
from rempart.crypto.kit import decrypt_kit
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository
from rempart.snapshot.restorer import Restorer
from rempart.storage.local import LocalBackend

from .conftest import PASSPHRASE, LocalSetup, MariaDB, agent_config


def backup_with_sources(setup: LocalSetup, tmp_path: Path, sources: list[dict], env: dict | None = None):  # type: ignore[no-untyped-def]
    empty = tmp_path / "nothing"
    empty.mkdir(exist_ok=True)
    cfg = agent_config(str(setup.repo), [empty], base=tmp_path, extra={"sources": sources})
    clock = FakeClock(datetime(2026, 1, 5, 8, tzinfo=UTC))
    svc = AgentService(cfg, setup.state, clock, UTC, env=env or dict(os.environ),
                       open_repo=lambda: Repository.open(LocalBackend(setup.repo)), sleep=clock.advance)
    return svc.attempt()


def restore_file(setup: LocalSetup, tmp_path: Path, name: str) -> Path:
    repo = Repository.open(LocalBackend(setup.repo))
    kit = decrypt_kit(setup.kit.read_bytes(), PASSPHRASE)
    repo.load_index()
    snaps = sorted(repo.list_snapshots(), key=lambda s: str(s[1].plain["time"]))
    target = tmp_path / "restored"
    Restorer(ReadSession(repo, kit.private_key, kit.id_key)).restore(snaps[-1][1].tree, target)
    hits = [p for p in target.rglob(name) if "staging" in p.parts]
    assert len(hits) == 1, hits
    return hits[0]


class Writer(threading.Thread):
    """Writes orders with two lines each, one transaction per order, until stopped."""

    def __init__(self, write_one) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.write_one = write_one
        self.stop = threading.Event()
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.write_one(self.count)
                self.count += 1
        except BaseException as exc:
            self.error = exc


# --- SQLite ---------------------------------------------------------------------------------


def test_sqlite_online_backup_is_consistent_under_writes(local_repo: LocalSetup, tmp_path: Path) -> None:
    db = tmp_path / "agenda.db"
    with sqlite3.connect(db) as c:
        c.execute("pragma journal_mode=wal")
        c.executescript("create table orders (id integer primary key, pad text);"
                        "create table lines (order_id integer, n integer, pad text);")
    conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)

    def write(i: int) -> None:
        conn.execute("begin")
        conn.execute("insert into orders (pad) values (?)", ("x" * 500,))
        oid = conn.execute("select last_insert_rowid()").fetchone()[0]
        conn.executemany("insert into lines values (?, ?, ?)", [(oid, 1, "y" * 500), (oid, 2, "z" * 500)])
        conn.execute("commit")

    for i in range(2000):
        write(i)
    w = Writer(write)
    w.start()
    time.sleep(0.2)
    before = w.count
    rec = backup_with_sources(local_repo, tmp_path, [{"kind": "sqlite", "name": "agenda", "path": str(db)}])
    after = w.count
    w.stop.set()
    w.join()
    assert w.error is None and after > before  # writes really went on during the backup
    assert rec.outcome == "ok", rec.error or rec.warnings
    restored = restore_file(local_repo, tmp_path, "agenda.sqlite")
    with sqlite3.connect(restored) as c:
        orders = c.execute("select count(*) from orders").fetchone()[0]
        lines = c.execute("select count(*) from lines").fetchone()[0]
        assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert lines == 2 * orders and 2000 + before <= orders <= 2000 + after + 1


# --- PostgreSQL -----------------------------------------------------------------------------


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else (shutil.which(name) or name)


def test_postgres_dump_is_consistent_under_writes(local_repo: LocalSetup, tmp_path: Path, postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as c:
        c.execute("drop table if exists lines; drop table if exists orders")
        c.execute("create table orders (id serial primary key, pad text)")
        c.execute("create table lines (order_id int references orders(id), n int, pad text)")
        c.execute("insert into orders (pad) select repeat('x', 200) from generate_series(1, 5000)")
        c.execute("insert into lines select id, n, repeat('y', 200) from orders, generate_series(1, 2) n")
    wconn = psycopg.connect(postgres_dsn, autocommit=True)

    def write(i: int) -> None:
        with wconn.transaction():
            oid = wconn.execute("insert into orders (pad) values ('w') returning id").fetchone()[0]
            wconn.execute("insert into lines values (%s, 1, 'a'), (%s, 2, 'b')", (oid, oid))

    w = Writer(write)
    w.start()
    time.sleep(0.3)
    before = w.count
    rec = backup_with_sources(local_repo, tmp_path, [{"kind": "postgres", "name": "patients", "dsn": postgres_dsn}])
    after = w.count
    w.stop.set()
    w.join()
    wconn.close()
    assert w.error is None and after > before
    assert rec.outcome == "ok", rec.error or rec.warnings
    dump = restore_file(local_repo, tmp_path, "patients.pgdump")
    with psycopg.connect(postgres_dsn, autocommit=True) as c:
        c.execute("drop database if exists restored_check")
        c.execute("create database restored_check")
    restored_dsn = postgres_dsn.rsplit("/", 1)[0] + "/restored_check"
    from rempart.agent.sources import postgres_env

    env = {**os.environ, **postgres_env(restored_dsn, None)}
    r = subprocess.run([pg_bin("pg_restore"), "--no-owner", "-d", "restored_check", str(dump)],
                       env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(restored_dsn) as c:
        orders = c.execute("select count(*) from orders").fetchone()[0]
        lines = c.execute("select count(*) from lines").fetchone()[0]
    assert lines == 2 * orders and 5000 + before <= orders <= 5000 + after + 1


def test_postgres_bad_password_is_a_reported_source_failure(local_repo: LocalSetup, tmp_path: Path,
                                                           postgres_dsn: str) -> None:
    bad = postgres_dsn.replace("rempart:", "rempart:WRONG", 1)
    rec = backup_with_sources(local_repo, tmp_path, [{"kind": "postgres", "name": "patients", "dsn": bad}])
    assert rec.outcome == "partial" and rec.counts["sources_failed"] == 1
    assert any("pg_dump failed" in w for w in rec.warnings)
    assert not any("WRONG" in w for w in rec.warnings)


# --- MariaDB --------------------------------------------------------------------------------


def test_mariadb_dump_is_consistent_under_writes(local_repo: LocalSetup, tmp_path: Path, mariadb: MariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS cabinet; CREATE DATABASE cabinet;")
    mariadb.sql("CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, pad TEXT) ENGINE=InnoDB;"
                "CREATE TABLE order_lines (order_id INT, n INT, pad TEXT) ENGINE=InnoDB;"
                "INSERT INTO orders (pad) SELECT REPEAT('x', 200) FROM seq_1_to_5000;"
                "INSERT INTO order_lines SELECT id, s.seq, 'y' FROM orders, seq_1_to_2 s;", "cabinet")
    proc = subprocess.Popen(["mariadb", "--no-defaults", "-S", mariadb.socket, "-u", mariadb.user,
                             f"-p{mariadb.password}", "cabinet"], stdin=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    stdin = proc.stdin

    def write(i: int) -> None:
        stdin.write("START TRANSACTION; INSERT INTO orders (pad) VALUES ('w');"
                    "INSERT INTO order_lines VALUES (LAST_INSERT_ID(), 1, 'a'), (LAST_INSERT_ID(), 2, 'b'); COMMIT;\n")
        stdin.flush()

    def count() -> int:
        return int(mariadb.sql("SELECT COUNT(*) FROM orders", "cabinet").strip())

    w = Writer(write)
    w.start()
    time.sleep(0.5)
    before = count()
    pwfile = tmp_path / "maria.pw"
    pwfile.write_text(mariadb.password)
    rec = backup_with_sources(local_repo, tmp_path, [{
        "kind": "mariadb", "name": "cabinet", "database": "cabinet", "socket": mariadb.socket,
        "user": mariadb.user, "password_file": str(pwfile)}])
    after = count()
    w.stop.set()
    w.join()
    stdin.close()
    proc.wait(60)
    assert w.error is None and after > before, (before, after)  # writes really went on during the dump
    assert rec.outcome == "ok", rec.error or rec.warnings
    dump = restore_file(local_repo, tmp_path, "cabinet.sql")
    assert mariadb.password not in dump.read_text(errors="replace")
    mariadb.sql("DROP DATABASE cabinet")
    with open(dump, "rb") as f:
        r = subprocess.run(["mariadb", "--no-defaults", "-S", mariadb.socket, "-u", mariadb.user,
                            f"-p{mariadb.password}"], stdin=f, capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    orders = count()
    lines = int(mariadb.sql("SELECT COUNT(*) FROM order_lines", "cabinet").strip())
    assert lines == 2 * orders and before <= orders <= after
    assert not list((local_repo.state / "agent" / "staging").glob(".*.cnf"))  # password file removed


# --- hooks and commands ---------------------------------------------------------------------


def test_command_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        run_command(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=1, what="hook slow")
    assert time.monotonic() - t0 < 10
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not _alive(child), "the grandchild survived the timeout"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not ours counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_failing_required_pre_hook_runs_posts_of_started_hooks(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks = [HookSpec("a", pre=("sh", "-c", f"echo a-pre >> {log}"), post=("sh", "-c", f"echo a-post >> {log}")),
             HookSpec("b", pre=("sh", "-c", "echo boom >&2; exit 3"), post=("sh", "-c", f"echo b-post >> {log}"))]
    with pytest.raises(SourceError, match="exited with code 3: boom"), HookRunner(hooks):
        pass
    assert log.read_text().split() == ["a-pre", "b-post", "a-post"]


def test_file_changing_while_read_is_retried_then_reported(local_repo: LocalSetup, tmp_path: Path) -> None:
    """The archiver re-reads a file that changes during the read, then reports it: never a torn copy."""
    data = tmp_path / "data"
    data.mkdir()
    busy = data / "busy.log"
    # large enough that every read lasts many of the scribbler's turns, even on a loaded machine
    # (at 4 MB a read could fit between two turns under load, and the test failed now and then)
    busy.write_bytes(os.urandom(24_000_000))
    stop = threading.Event()

    def scribble() -> None:
        with open(busy, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(os.urandom(16))
                f.flush()
                os.utime(busy)
                time.sleep(0.0005)

    t = threading.Thread(target=scribble, daemon=True)
    t.start()
    try:
        cfg = agent_config(str(local_repo.repo), [data], base=tmp_path)
        clock = FakeClock()
        rec = AgentService(cfg, local_repo.state, clock, UTC, sleep=clock.advance,
                           open_repo=lambda: Repository.open(LocalBackend(local_repo.repo))).attempt()
    finally:
        stop.set()
        t.join()
    assert rec.outcome == "partial"
    assert any("changed while being read 3 times" in w and "not backed up" in w for w in rec.warnings)
