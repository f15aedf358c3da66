"""Measuring one command: wall time, peak memory of its process tree, cache control, sizes.

Used by compare.py and memory_scale.py. Every tool runs as a child process; the peak memory is
the larger of

* ``%M`` of ``/usr/bin/time`` (GNU time) wrapped around the tool: ``ru_maxrss`` of the largest
  process in the waited tree, the kernel's exact high-water mark, never misses a short spike.
  It must come from a small parent: Linux copies the RSS high-water mark of the process that
  forks into the child at ``exec``, so ``os.wait4`` from this (large) Python process would
  report at least our own RSS for every tool. Without GNU time, only the sampling is used.
* and
* the largest *sum* of RSS over the whole process tree sampled every 20 ms with psutil (catches
  tools that fork worker processes, whose RSS adds up).

The same sampling also sums PSS (proportional set size: a page shared by n processes counts 1/n
in each) over the tree: for a tool made of several processes (rempart's reading processes) the
RSS sum counts the shared interpreter and libraries once per process, PSS once in all. Both are
reported; for single-process tools they are about equal.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:  # optional: only the tree-sum sampling needs it
    import psutil
except ImportError:  # pragma: no cover - psutil is in the bench extra
    psutil = None


GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def checkout(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` of a ``--src`` option: the name and the folder holding the ``rempart``
    package (``DIR/src`` of a checkout, or DIR itself)."""
    name, _, folder = spec.partition("=")
    root = Path(folder).resolve()
    src = root / "src" if (root / "src" / "rempart").is_dir() else root
    if not name or not (src / "rempart").is_dir():
        raise SystemExit(f"--src NAME=DIR: no rempart package in {folder!r} (nor in its src/)")
    return name, src


class CommandFailed(RuntimeError):
    pass


class CommandTimedOut(CommandFailed):
    pass


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    wall_s: float
    maxrss_bytes: int  # GNU time %M: largest single process in the tree
    tree_rss_bytes: int  # sampled sum over the tree (0 without psutil)
    tree_pss_bytes: int = 0  # sampled sum of PSS over the tree (0 without psutil)
    stdout: str = ""
    stderr: str = ""
    cpu_s: float = float("nan")  # user + system CPU seconds of the tool (GNU time)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def peak_rss_bytes(self) -> int:
        return max(self.maxrss_bytes, self.tree_rss_bytes)


def _sample_tree(pid: int, stop: threading.Event, out: list[int], out_pss: list[int]) -> None:
    if psutil is None:
        return
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    peak = peak_pss = 0
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            total = total_pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                    total += info.rss
                    total_pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
            peak = max(peak, total)
            peak_pss = max(peak_pss, total_pss)
        except psutil.Error:
            break
        stop.wait(0.02)
    out.append(peak)
    out_pss.append(peak_pss)


def run_measured(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 ok_codes: Iterable[int] = (0,), timeout: float | None = None, sample: bool = True) -> Measured:
    """Run ``argv`` to completion; raise CommandFailed unless its exit code is in ``ok_codes``.

    ``sample``: sum the memory of the process tree every 20 ms meanwhile (reading each process's
    ``smaps_rollup`` takes its memory map lock, so the sampling slows what it measures, a tool
    with several processes more than a tool with one); without it, only the wall time, CPU
    time and GNU time's largest single-process RSS.

    With ``timeout`` the whole process group is killed after that many seconds (CommandTimedOut).
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_f:
        wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", rss_f.name, *argv] if GNU_TIME else list(argv)
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, env=full_env, cwd=cwd, stdout=out_f, stderr=err_f,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, _kill) if timeout else None
        if timer:
            timer.start()
        stop = threading.Event()
        sampled: list[int] = []
        sampled_pss: list[int] = []
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, stop, sampled, sampled_pss), daemon=True)
        if sample:
            sampler.start()
        _, status, _rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if timer:
            timer.cancel()
        stop.set()
        if sample:
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # we reaped it ourselves
        out_f.seek(0)
        err_f.seek(0)
        stdout = out_f.read().decode(errors="replace")
        stderr = err_f.read().decode(errors="replace")
        maxrss, cpu = 0, float("nan")
        if GNU_TIME:  # on failure time prints a "Command exited ..." line first
            lines = [ln.split() for ln in rss_f.read().splitlines() if ln.strip() and ln.split()[0].isdigit()]
            if lines and len(lines[-1]) == 3:
                maxrss = int(lines[-1][0]) * 1024
                cpu = float(lines[-1][1]) + float(lines[-1][2])
    m = Measured(list(argv), proc.returncode, wall, maxrss, sampled[0] if sampled else 0,
                 sampled_pss[0] if sampled_pss else 0, stdout, stderr, cpu_s=cpu)
    if timed_out.is_set():
        raise CommandTimedOut(f"{' '.join(argv)} killed after {timeout:.0f}s")
    if m.returncode not in set(ok_codes):
        raise CommandFailed(f"{' '.join(argv)} exited {m.returncode}:\n{stderr[-3000:]}")
    return m


def run_quiet(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    res = subprocess.run(list(argv), env=full_env, cwd=cwd, capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited {res.returncode}:\n{res.stderr[-3000:]}")
    return res.stdout


# -- page cache -------------------------------------------------------------------------------


def can_drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm_read(root: Path) -> int:
    """Read every file under ``root`` once (so every tool sees the same warm page cache)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            try:
                with open(p, "rb", buffering=0) as f:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
            except OSError:
                pass
    return total


def prepare_cache(mode: str, *roots: Path) -> None:
    """``cold``: sync and drop the page cache; ``warm``: sync and read ``roots`` once."""
    if mode == "cold":
        drop_caches()
    else:
        os.sync()
        for r in roots:
            warm_read(r)


# -- sizes --------------------------------------------------------------------------------------


def tree_size(root: Path) -> tuple[int, int]:
    """(apparent bytes of regular files, number of regular files) under ``root``."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
                files += 1
    return total, files


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
