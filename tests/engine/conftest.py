"""Fixtures for the core engine: a CLI runner (in-process and subprocess) on a local repository."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rempart.cli.main import main

PASSPHRASE = "correct horse battery staple"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.out)


@dataclass
class Env:
    tmp: Path
    repo: Path
    kit: Path
    state: Path

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REMPART_KIT_PASSPHRASE=PASSPHRASE,
            REMPART_KDF_TEST="1",
            REMPART_STATE_DIR=str(self.state),
            REMPART_REPOSITORY=str(self.repo),
        )
        return env


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    e = Env(tmp_path, tmp_path / "repo", tmp_path / "kit.json", tmp_path / "state")
    for k, v in e.environ().items():
        if k.startswith("REMPART_"):
            monkeypatch.setenv(k, v)
    return e


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def run(*args: str) -> Result:
        code = main(list(args))
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    return run


@pytest.fixture
def repo(env: Env, cli) -> Env:  # type: ignore[no-untyped-def]
    r = cli("init", "--kit", str(env.kit))
    assert r.code == 0, r.err
    return env


def run_subprocess(env: Env, *args: str, timeout: float = 120) -> Result:
    p = subprocess.run([sys.executable, "-m", "rempart.cli.main", *args], env=env.environ(),
                       capture_output=True, text=True, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything a faithful restore must reproduce, keyed by relative path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo", st.st_mode)
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, st.st_size, p.read_bytes())
    return out
