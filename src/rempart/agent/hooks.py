"""Run external programs with a timeout that kills the whole process tree; pre/post hooks."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rempart.core.errors import SourceError

if TYPE_CHECKING:
    from rempart.agent.config import HookSpec


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stderr: str


def run_command(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
                stdout: IO[bytes] | None = None, cwd: Path | None = None, what: str = "command") -> CommandResult:
    """Run ``argv`` (never through a shell); kill its process group after ``timeout`` seconds.

    Raises SourceError when the program is missing or times out; returns the exit code otherwise.
    """
    kw: dict[str, object] = {}
    if os.name == "nt":
        kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kw["start_new_session"] = True
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=dict(env) if env is not None else None,
                                cwd=cwd, **kw)  # type: ignore[call-overload]
    except FileNotFoundError:
        raise SourceError(f"{what}: program {argv[0]!r} not found",
                          hint="install it or give its full path in the agent configuration") from None
    except OSError as exc:
        raise SourceError(f"{what}: cannot start {argv[0]!r}: {exc.strerror}") from exc
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        proc.communicate()
        raise SourceError(f"{what}: timed out after {timeout:.0f} s and was stopped") from None
    return CommandResult(proc.returncode, err.decode("utf-8", "replace")[-2000:])


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        proc.kill()


@dataclass
class HookRunner:
    """Runs pre hooks in order and, whatever happens, the post hooks of those that ran in reverse."""

    hooks: Sequence[HookSpec]
    env: Mapping[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    _started: list[HookSpec] = field(default_factory=list)

    def __enter__(self) -> HookRunner:
        for h in self.hooks:
            self._started.append(h)
            if not h.pre:
                continue
            try:
                res = run_command(h.pre, timeout=h.timeout_seconds, env=self.env, what=f"hook {h.name} (pre)")
                if res.returncode:
                    raise SourceError(f"hook {h.name} (pre) exited with code {res.returncode}: "
                                      f"{_last_line(res.stderr)}")
            except SourceError as exc:
                if h.required:
                    self.__exit__(None, None, None)
                    raise
                self.warnings.append(exc.message)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._started:
            h = self._started.pop()
            if not h.post:
                continue
            try:
                res = run_command(h.post, timeout=h.timeout_seconds, env=self.env, what=f"hook {h.name} (post)")
                if res.returncode:
                    self.warnings.append(f"hook {h.name} (post) exited with code {res.returncode}: "
                                         f"{_last_line(res.stderr)}")
            except SourceError as e:
                self.warnings.append(e.message)


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "(no message)"


