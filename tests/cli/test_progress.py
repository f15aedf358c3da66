"""The live status line: shown on a terminal, redrawn a few times a second at most, absent
when stderr is not a terminal or with -q."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "rempart.cli.main"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMPART_")}
    env.update(REMPART_KIT_PASSPHRASE="correct horse battery staple", REMPART_KDF_TEST="1",
               REMPART_STATE_DIR=str(tmp_path / "state"), REMPART_REPOSITORY=str(tmp_path / "repo"),
               TERM="xterm", COLUMNS="120")
    return env


def _backup_on_a_terminal(tmp_path: Path, *extra: str) -> tuple[int, str]:
    """Run a backup whose stderr is a pseudo-terminal; returns (exit code, what it showed)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*CLI, *extra, "backup", str(tmp_path / "src")], env=_env(tmp_path),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
    finally:
        os.close(follower)
    shown = bytearray()
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(leader)
    return proc.wait(60), shown.decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_a_backup_on_a_terminal_shows_its_progress_and_quiet_shows_none(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"letter-{i:03d}.txt").write_text(f"Dear patient {i},\n" * 50)
    init = subprocess.run([*CLI, "init", "--kit", str(tmp_path / "kit.json")], env=_env(tmp_path),
                          capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    code, shown = _backup_on_a_terminal(tmp_path)
    assert code == 0, shown
    assert re.search(r"backing up \d+ files, [\d.]+ (B|KiB) read", shown), shown  # counts as files are read
    code, shown = _backup_on_a_terminal(tmp_path, "-q")
    assert code == 0, shown
    assert "backing up" not in shown
