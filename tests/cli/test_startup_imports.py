"""What a backup with nothing changed loads: not the detection's format checks nor
cryptography's serialization package (each module is a file to read on a cold start), while
detection still judges the run. Run in a fresh interpreter: this test process has them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: modules a run that reads no file has no use for
NOT_LOADED = ("rempart.detect.features", "rempart.detect.formats_media", "zipfile",
              "cryptography.hazmat.primitives.serialization", "rempart.snapshot.workers", "subprocess")

_SCRIPT = """
import json, sys
from rempart.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _backup(tmp_path: Path, src: Path) -> tuple[dict[str, object], set[str]]:
    env = dict(os.environ, REMPART_KIT_PASSPHRASE="correct horse battery staple", REMPART_KDF_TEST="1",
               REMPART_STATE_DIR=str(tmp_path / "state"), REMPART_REPOSITORY=str(tmp_path / "repo"))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, "--json", "backup", str(src)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    return json.loads(proc.stdout), set(report["modules"])


def test_a_no_change_backup_loads_no_format_check_and_is_still_judged(tmp_path: Path) -> None:
    env = dict(os.environ, REMPART_KIT_PASSPHRASE="correct horse battery staple", REMPART_KDF_TEST="1",
               REMPART_STATE_DIR=str(tmp_path / "state"))
    subprocess.run([sys.executable, "-m", "rempart.cli.main", "-q", "-r", str(tmp_path / "repo"), "init",
                    "--kit", str(tmp_path / "kit.json")], env=env, check=True, timeout=120)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "letter.txt").write_text("Dear patient, your appointment is on Monday.\n" * 50)
    (src / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(4000) + b"\xff\xd9")

    first, loaded_first = _backup(tmp_path, src)
    assert first["stats"]["files_new"] == 2  # type: ignore[index]
    assert "rempart.detect.features" in loaded_first  # files were read: their features computed

    second, loaded = _backup(tmp_path, src)
    assert second["stats"]["files_unchanged"] == 2 and second["stats"]["files_read"] == 0  # type: ignore[index]
    assert second["detection"]["verdict"] == "clean"  # type: ignore[index]  # judged, not skipped
    assert "rempart.detect.assess" in loaded and "rempart.detect.judge" in loaded
    assert not loaded & set(NOT_LOADED), sorted(loaded & set(NOT_LOADED))


def test_the_backup_program_ends_without_teardown_yet_complete_and_closed(tmp_path: Path) -> None:
    """``rempart backup`` as its own process skips the interpreter's teardown (FAST_EXIT): its
    output is complete, its exit code kept, and the databases were closed before (SQLite
    removes a WAL file on the last close; a process merely killed leaves it)."""
    env = dict(os.environ, REMPART_KIT_PASSPHRASE="correct horse battery staple", REMPART_KDF_TEST="1",
               REMPART_STATE_DIR=str(tmp_path / "state"), REMPART_REPOSITORY=str(tmp_path / "repo"))
    subprocess.run([sys.executable, "-m", "rempart.cli.main", "-q", "init", "--kit", str(tmp_path / "kit.json")],
                   env=env, check=True, timeout=120)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03d}.txt").write_text(f"record {i}\n" * (i + 1))
    for run in range(2):
        proc = subprocess.run([sys.executable, "-m", "rempart.cli.main", "--json", "backup", str(src)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)  # all of it was flushed
        assert out["stats"]["files"] == 300 and out["detection"]["verdict"] == "clean"
        assert out["stats"]["files_unchanged"] == (300 if run else 0)
        state = next((tmp_path / "state" / "repos").iterdir())
        assert (state / "index.sqlite").is_file() and (state / "cache.sqlite").is_file()
        assert not list(state.glob("*-wal")), sorted(p.name for p in state.iterdir())
    missing = subprocess.run([sys.executable, "-m", "rempart.cli.main", "--json", "backup", str(tmp_path / "nope")],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode != 0 and "no such file" in missing.stderr  # errors reported as before
