"""Fidelity: a restore is byte-identical with modes, times, links, empty folders and odd names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.engine.conftest import tree_state


def make_source(root: Path) -> None:
    (root / "docs" / "empty").mkdir(parents=True)
    (root / "docs" / "lettre é ü 日本.txt").write_text("Bonjour, madame Dupont\n" * 100)
    (root / "docs" / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "docs" / "script.sh", 0o750)
    (root / "xray.dcm").write_bytes(os.urandom(700_000))
    (root / "zero").write_bytes(b"")
    os.symlink("docs/script.sh", root / "link-rel")
    os.symlink("/nonexistent/target", root / "link-dangling")
    os.mkfifo(root / "fifo")
    bad = os.fsencode(str(root)) + b"/latin1-\xe9t\xe9.txt"  # not valid UTF-8
    with open(bad, "wb") as f:
        f.write(b"latin-1 name")
    os.utime(root / "xray.dcm", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "docs" / "empty", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def test_restore_is_identical(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_source(src)
    before = tree_state(src)
    r = cli("backup", str(src), "--no-detect")
    assert r.code == 0, r.err
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    restored = tmp_path / "out" / src.relative_to("/")
    after = tree_state(restored)
    assert before["fifo"][0] == "fifo"
    assert after == before


def test_names_that_are_not_utf8_with_detection_on(repo, cli, tmp_path: Path) -> None:
    """Detection keeps per-file rows in SQLite, whose text cannot hold a name that is not UTF-8
    on disk: such a name once failed every backup of its folder (detection is on by default)."""
    src = tmp_path / "src"
    src.mkdir()
    make_source(src)
    raw = os.fsencode(str(src))
    os.mkdir(raw + b"/dossier-\xe9")
    with open(raw + b"/dossier-\xe9/radio-\xff.txt", "wb") as f:
        f.write(b"compte rendu\n" * 50)
    r = cli("backup", str(src))
    assert r.code == 0, r.err
    os.rename(raw + b"/latin1-\xe9t\xe9.txt", raw + b"/dossier-\xe9/renomm\xe9.txt")  # a move
    os.unlink(raw + b"/dossier-\xe9/radio-\xff.txt")  # a deletion
    before = tree_state(src)
    r = cli("backup", str(src))
    assert r.code == 0, r.err
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    assert tree_state(tmp_path / "out" / src.relative_to("/")) == before
    assert os.path.exists(os.fsencode(str(tmp_path / "out" / src.relative_to("/"))) + b"/dossier-\xe9/renomm\xe9.txt")


def test_ls_and_diff_print_names_that_are_not_utf8_on_a_strict_terminal(repo, tmp_path: Path) -> None:
    """Most UTF-8 locales make Python's stdout strict: such a name once failed `ls` and `diff`.
    They print the name's own bytes, as GNU ls does."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    env = repo.environ() | {"PYTHONIOENCODING": "utf-8:strict"}
    snaps = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-m", "rempart.cli.main", "--json", "backup", "--no-detect", str(src)],
                           env=env, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
        snaps.append(json.loads(p.stdout)["snapshot"][:8])
        with open(os.fsencode(str(src)) + b"/compte-rendu-\xe9.txt", "wb") as f:
            f.write(b"x")
    for args in (["ls", snaps[1]], ["diff", *snaps]):
        p = subprocess.run([sys.executable, "-m", "rempart.cli.main", *args, "--kit", str(repo.kit)],
                           env=env, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert b"/compte-rendu-\xe9.txt\n" in p.stdout


def test_a_source_given_as_a_link_to_a_folder_backs_up_the_folder(repo, cli, tmp_path: Path) -> None:
    """`backup /data` where /data links to the real folder once stored one link and no file."""
    real = tmp_path / "disk" / "cabinet"
    (real / "radios").mkdir(parents=True)
    (real / "radios" / "pano.dcm").write_bytes(b"DICM" * 1000)
    os.symlink("radios", real / "inner-link")  # links inside a source stay links
    os.symlink(real, tmp_path / "data")
    r = cli("--json", "backup", "--no-detect", str(tmp_path / "data"))
    assert r.code == 0, r.err
    assert r.json()["stats"]["files"] == 1
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    restored = tmp_path / "out" / (tmp_path / "data").relative_to("/")
    assert not restored.is_symlink() and (restored / "radios" / "pano.dcm").read_bytes() == b"DICM" * 1000
    assert os.readlink(restored / "inner-link") == "radios"


def test_large_sparse_file_round_trips_and_stays_sparse(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "sparse.img"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)  # 2 GiB, almost all holes
        f.seek(1024**3)
        f.write(b"middle" * 1000)
        f.seek(2 * 1024**3 - 10)
        f.write(b"end-marker")
    r = cli("backup", str(src), "--no-detect", "--json")
    assert r.code == 0, r.err
    assert r.json()["storage"]["bytes_stored"] < 5 * 1024**2  # zero chunks deduplicate
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    out = tmp_path / "out" / big.relative_to("/")
    assert out.stat().st_size == big.stat().st_size
    assert out.stat().st_blocks * 512 < 64 * 1024**2  # holes kept
    with open(out, "rb") as f:
        f.seek(1024**3)
        assert f.read(6000) == b"middle" * 1000
        f.seek(2 * 1024**3 - 10)
        assert f.read() == b"end-marker"


@pytest.mark.slow
def test_many_small_files(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(100):
        (src / f"d{d:03}").mkdir(parents=True)
        for i in range(1000):
            (src / f"d{d:03}" / f"f{i:04}.txt").write_bytes(f"patient {d}-{i}\n".encode())
    r = cli("backup", str(src), "--no-detect", "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["files"] == 100_000
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    out = tmp_path / "out" / src.relative_to("/")
    assert sum(len(f) for _, _, f in os.walk(out)) == 100_000
    assert (out / "d042" / "f0999.txt").read_bytes() == b"patient 42-999\n"


def test_restore_selected_paths(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "one.txt").write_text("1")
    (src / "b" / "two.txt").write_text("2")
    assert cli("backup", str(src), "--no-detect").code == 0
    wanted = str(src / "a")
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit), wanted)
    assert r.code == 0, r.err
    out = tmp_path / "out" / src.relative_to("/")
    assert (out / "a" / "one.txt").read_text() == "1"
    assert not (out / "b").exists()
    # a path that matches nothing (a typo) is said, never a silent empty restore
    r = cli("restore", "latest", "--target", str(tmp_path / "out2"), "--kit", str(repo.kit), str(src / "c"))
    assert r.code == 2
    assert "nothing in snapshot" in r.err and f"matches {src / 'c'}" in r.err
    r = cli("restore", "latest", "--target", str(tmp_path / "out3"), "--kit", str(repo.kit), str(src / "c"),
            str(src / "b" / "two.txt"))
    assert r.code == 0, r.err
    assert "warning: nothing in snapshot" in r.err and f"matches {src / 'c'}" in r.err
    assert (tmp_path / "out3" / src.relative_to("/") / "b" / "two.txt").read_text() == "2"


def test_incremental_skips_unchanged_but_not_restored_mtime(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "patients.db"
    f.write_bytes(os.urandom(300_000))
    (src / "other.txt").write_text("stable")
    assert cli("backup", str(src), "--no-detect").code == 0
    r = cli("backup", str(src), "--no-detect", "--json")
    assert r.json()["stats"]["files_read"] == 0
    # ransomware-style: same size, mtime put back; only the ctime betrays the change
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[1000:2000] = os.urandom(1000)
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    r = cli("backup", str(src), "--no-detect", "--json")
    stats = r.json()["stats"]
    assert stats["files_read"] == 1 and stats["files_changed"] == 1
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert (tmp_path / "out" / f.relative_to("/")).read_bytes() == bytes(data)


def test_lost_cache_does_not_reupload(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3_000_000))
    first = cli("backup", str(src), "--no-detect", "--json").json()
    for p in repo.state.rglob("cache.sqlite*"):
        p.unlink()
    second = cli("backup", str(src), "--no-detect", "--json").json()
    assert second["stats"]["files_read"] == 1  # cache gone: the file is read again ...
    assert second["storage"]["blobs_new"] <= 3  # ... but only trees are new, no data
    assert second["storage"]["bytes_stored"] < first["storage"]["bytes_stored"] / 100


def test_periodic_full_reread(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert cli("backup", str(src), "--no-detect").code == 0
    assert cli("backup", str(src), "--no-detect", "--json").json()["stats"]["files_read"] == 0
    r = cli("backup", str(src), "--no-detect", "--json", "--reread-days", "0.0000001")
    assert r.json()["stats"]["files_read"] == 1
    r = cli("backup", str(src), "--no-detect", "--json", "--force-reread")
    assert r.json()["stats"]["files_read"] == 1
    r = cli("backup", str(src), "--no-detect", "--force-reread")  # the counts add up to the files
    assert "1 files (0 new, 0 changed, 0 unchanged, 1 read again, same content)" in r.out


def test_snapshots_json_and_diff(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("k")
    (src / "gone.txt").write_text("g")
    assert cli("backup", str(src), "--no-detect").code == 0
    (src / "gone.txt").unlink()
    (src / "new.txt").write_text("n")
    (src / "keep.txt").write_text("changed")
    assert cli("backup", str(src), "--no-detect").code == 0
    snaps = cli("snapshots", "--json").json()
    assert len(snaps) == 2 and all(len(s["id"]) == 64 for s in snaps)
    assert snaps[1]["parent"] == snaps[0]["id"]
    r = cli("diff", snaps[0]["id"][:8], "latest", "--kit", str(repo.kit), "--json")
    changes = {(c["change"], c["path"].rsplit("/", 1)[-1]) for c in r.json()}
    assert {("-", "gone.txt"), ("+", "new.txt"), ("M", "keep.txt")} <= changes
    r = cli("ls", "latest", "--kit", str(repo.kit))
    assert "new.txt" in r.out and "gone.txt" not in r.out
