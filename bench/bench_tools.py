"""Adapters for the three backup tools: how to init, back up and restore, and their versions.

Each adapter owns its own folder (repository, local cache/state, recovery kit) so runs never
share state. Passwords come from environment variables, never the command line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_measure import run_quiet

PASSPHRASE = "bench-passphrase-not-secret"  # throwaway repositories


def _venv_bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed (see bench/README.md)")
    return found


@dataclass
class Tool:
    """Base adapter. ``name`` is the label in the tables."""

    name: str
    home: Path  # private folder for this tool in this run

    @property
    def repo(self) -> Path:
        return self.home / "repo"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def init_argv(self) -> list[str]:
        raise NotImplementedError

    def backup_argv(self, data: Path, label: str) -> list[str]:
        raise NotImplementedError

    def restore_argv(self, target: Path) -> tuple[list[str], Path | None]:
        """(argv, cwd) restoring the latest snapshot into ``target``."""
        raise NotImplementedError

    def backup_ok_codes(self) -> tuple[int, ...]:
        return (0,)

    def init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        run_quiet(self.init_argv(), env=self.env())


class Rempart(Tool):
    def __init__(self, name: str, home: Path, detect: bool) -> None:
        super().__init__(name, home)
        self.detect = detect
        self.exe = _venv_bin("rempart")

    @property
    def kit(self) -> Path:
        return self.home / "recovery.kit"

    def env(self) -> dict[str, str]:
        # The real KDF (no REMPART_KDF_TEST): the restore pays for unlocking the kit, as restic
        # and borg pay for their own KDF on every command.
        return {"REMPART_KIT_PASSPHRASE": PASSPHRASE, "REMPART_STATE_DIR": str(self.cache_dir),
                "REMPART_KDF_TEST": ""}

    def init_argv(self) -> list[str]:
        return [self.exe, "-r", str(self.repo), "init", "--kit", str(self.kit)]

    def backup_argv(self, data: Path, label: str) -> list[str]:
        argv = [self.exe, "-q", "--json", "-r", str(self.repo), "backup", str(data)]
        if not self.detect:
            argv.append("--no-detect")
        return argv

    def backup_ok_codes(self) -> tuple[int, ...]:
        return (0, 30)  # 30 = detection alert: recorded and reported as a false positive

    def restore_argv(self, target: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "-q", "-r", str(self.repo), "restore", "latest", "--target", str(target),
                "--kit", str(self.kit)], None

    def version(self) -> str:
        v = run_quiet([sys.executable, "-c", "import rempart; print(rempart.__version__)"]).strip()
        try:
            rev = run_quiet(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"])
            dirty = run_quiet(["git", "-C", str(Path(__file__).resolve().parent), "status", "--porcelain",
                               "--", "../src/rempart"]).strip()
            v += f" (git {rev.strip()}{' + uncommitted changes in src/' if dirty else ''})"
        except Exception:
            pass
        return f"rempart {v}"


class Restic(Tool):
    def __init__(self, name: str, home: Path) -> None:
        super().__init__(name, home)
        self.exe = _venv_bin("restic")

    def env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD": PASSPHRASE, "RESTIC_CACHE_DIR": str(self.cache_dir)}

    def init_argv(self) -> list[str]:
        return [self.exe, "-q", "-r", str(self.repo), "init"]

    def backup_argv(self, data: Path, label: str) -> list[str]:
        # compression: the default ("auto") of repository format 2
        return [self.exe, "-q", "-r", str(self.repo), "backup", str(data)]

    def restore_argv(self, target: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "-q", "-r", str(self.repo), "restore", "latest", "--target", str(target)], None

    def version(self) -> str:
        return run_quiet([self.exe, "version"]).strip()


class Borg(Tool):
    def __init__(self, name: str, home: Path) -> None:
        super().__init__(name, home)
        self.exe = _venv_bin("borg")
        self.last_archive = ""
        m = re.search(r"(\d+)\.", self.version())
        self.major = int(m.group(1)) if m else 1

    def env(self) -> dict[str, str]:
        return {"BORG_PASSPHRASE": PASSPHRASE, "BORG_BASE_DIR": str(self.cache_dir),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes", "BORG_REPO": str(self.repo)}

    def init_argv(self) -> list[str]:
        if self.major >= 2:
            return [self.exe, "repo-create", "-e", "repokey-blake2-aes-ocb"]
        return [self.exe, "init", "-e", "repokey-blake2", str(self.repo)]

    def backup_argv(self, data: Path, label: str) -> list[str]:
        self.last_archive = label
        if self.major >= 2:
            return [self.exe, "create", "--compression", "zstd,3", label, str(data)]
        return [self.exe, "create", "--compression", "zstd,3", f"{self.repo}::{label}", str(data)]

    def restore_argv(self, target: Path) -> tuple[list[str], Path | None]:
        target.mkdir(parents=True, exist_ok=True)
        if self.major >= 2:
            return [self.exe, "extract", self.last_archive], target
        return [self.exe, "extract", f"{self.repo}::{self.last_archive}"], target

    def version(self) -> str:
        return run_quiet([self.exe, "--version"]).strip()


def make_tool(name: str, home: Path) -> Tool:
    if name == "rempart":
        return Rempart(name, home, detect=True)
    if name == "rempart-nodetect":
        return Rempart(name, home, detect=False)
    if name == "restic":
        return Restic(name, home)
    if name == "borg":
        return Borg(name, home)
    raise SystemExit(f"unknown tool {name!r}")


def detection_available() -> bool:
    """Whether this rempart build ships the detection module ``rempart backup`` uses by default."""
    res = subprocess.run([sys.executable, "-c", "import rempart.agent.detection"], capture_output=True,
                         check=False)
    return res.returncode == 0


def restored_root(target: Path, data: Path) -> Path:
    """Where a tool put ``data`` inside ``target`` (all three keep the absolute path)."""
    return target / str(data.absolute()).lstrip("/")
