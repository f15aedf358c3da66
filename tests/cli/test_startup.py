"""Start-up of the CLI: --help with every registered command, the files a backup remembers
for the next start, and the read-ahead that uses them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rempart.cli.main as cli_main
from rempart.cli.cmd_backup import STARTUP_FILES
from rempart.snapshot.pipeline import MetadataReadAhead


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = cli_main.main(list(args))
    except SystemExit as exc:  # argparse's --help
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    monkeypatch.setenv("REMPART_KIT_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("REMPART_KDF_TEST", "1")
    monkeypatch.setenv("REMPART_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("REMPART_REPOSITORY", str(tmp_path / "repo"))
    code, _, err = run(capsys, "init", "--kit", str(tmp_path / "kit.json"))
    assert code == 0, err
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.txt").write_text("one")
    (src / "two.bin").write_bytes(os.urandom(5000))
    return src


def test_help_lists_every_command_even_one_not_shipped(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli_main.COMMANDS, "someday", ("rempart.cli.cmd_someday", "a future command"))
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "backup" in out and "someday" in out and "not available in this build" in out
    code, _, err = run(capsys, "someday")
    assert code == 2
    assert "someday command is not available" in err
    code, out, _ = run(capsys, "backup", "--help")
    assert code == 0 and "--no-detect" in out


def test_a_backup_remembers_its_startup_files_and_rewrites_them_only_on_change(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-q", "backup", str(repo))
    assert code == 0, err
    listing = tmp_path / "state" / STARTUP_FILES
    files = listing.read_text().splitlines()
    cache = next((tmp_path / "state" / "repos").glob("*/cache.sqlite"))
    assert str(cache) in files
    archiver = sys.modules["rempart.snapshot.archiver"]
    assert archiver.__cached__ in files or archiver.__file__ in files  # (no .pyc under PYTHONDONTWRITEBYTECODE)
    assert all(os.path.isfile(f) for f in files)
    assert all(f.endswith((".pyc", ".py", ".so", ".pyd", ".sqlite")) for f in files)
    os.utime(listing, (1, 1))
    code, _, err = run(capsys, "-q", "backup", str(repo))
    assert code == 0, err
    assert listing.stat().st_mtime == 1  # same files: not written again
    listing.write_bytes(b"\xff\xfe not a path\n/nonexistent/x.pyc\n" + b"y" * 5000)  # garbage: a hint only
    code, out, err = run(capsys, "--json", "backup", str(repo))
    assert code == 0, err
    assert '"files_unchanged": 2' in out
    assert str(cache) in listing.read_text().splitlines()


def _tree(root: Path) -> int:
    for i in range(3):
        d = root / f"d{i}" / "sub"
        d.mkdir(parents=True)
        for j in range(4):
            (d / f"f{j}").write_text("x")
    return sum(len(ds) + len(fs) for _, ds, fs in os.walk(root))


@pytest.mark.parametrize("threads", [1, 3])
def test_read_ahead_visits_folders_and_paths_once_and_asks_for_the_files(tmp_path: Path, threads: int) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    total = _tree(src) + _tree(repo / "data")
    asked: list[str] = []
    db = tmp_path / "cache.sqlite"
    db.write_bytes(b"\0" * 10000)

    def files() -> Iterator[str]:
        for f in (str(db), str(tmp_path / "missing.pyc"), str(src)):
            asked.append(f)
            yield f

    ra = MetadataReadAhead([src], threads=threads, folders=[repo / "data", repo / "index"], files=files())
    ra.start().join(30)
    assert ra.visited == total
    assert asked == [str(db), str(tmp_path / "missing.pyc"), str(src)]


def test_read_ahead_survives_a_list_that_cannot_be_read(tmp_path: Path) -> None:
    def broken() -> Iterator[str]:
        raise OSError("unreadable")
        yield ""  # pragma: no cover

    src = tmp_path / "src"
    total = _tree(src)
    ra = MetadataReadAhead([src], files=broken())
    ra.start().join(30)
    assert ra.visited == total


def test_a_backup_removes_temporary_files_a_killed_backup_left_long_ago(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A backup killed while writing a pack leaves a file in the repository's tmp/; the next
    backup removes it once untouched for an hour (a backup running beside it keeps its own
    files fresh)."""
    import time

    from rempart.storage.local import TMP_GRACE

    tmp = tmp_path / "repo" / "tmp"
    stale, fresh = tmp / "ab.1.tmp", tmp / "cd.2.tmp"
    now = time.time()
    for p, age in ((stale, TMP_GRACE + 60), (fresh, 60.0)):
        p.write_bytes(b"half a pack")
        os.utime(p, (now - age, now - age))
    code, _, err = run(capsys, "-q", "backup", str(repo))
    assert code == 0, err
    assert not stale.exists() and fresh.exists()
