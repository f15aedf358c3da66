"""The files of the agent's state folder around the state cache's database: the lock that keeps
one backup at a time per repository, a damaged database moved aside, and the read-ahead hint.

A damaged cache (a crash of the disk, a file cut short, or a hand that wrote over it) must not
stop every scheduled backup from then on: the cache only saves reading time (a backup without
it reads every file again, and dedup still uploads nothing already stored), so the damaged file
is kept for whoever investigates, under ``cache.sqlite.damaged``, and the run starts afresh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from rempart.core.errors import LockedError, local_error

DAMAGED_SUFFIX = ".damaged"


def lock_state_folder(folder: Path) -> IO[str]:
    """Create ``folder`` if needed and take its lock file (LockedError if a backup of the same
    repository runs on this machine); the caller closes the returned file to release it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / "lock", "a+")
    except OSError as exc:
        raise local_error(f"state folder {folder}", exc) from exc
    try:
        _lock_exclusive(f)
    except BaseException:
        f.close()
        raise
    return f


def set_aside(path: Path) -> Path:
    """Move the database ``path`` to ``<path>.damaged`` (replacing an older one) and remove its
    write-ahead log and shared-memory files; returns the new name."""
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return aside


def prefetch(path: Path) -> None:
    """Ask the kernel to start reading the whole database file now (asynchronously): on a cold
    page cache the per-folder lookups then find their pages in memory instead of waiting for
    one random 4 KiB read each. A hint only; nothing happens where it is not supported."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock_exclusive(f: Any) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError as exc:
            raise LockedError("another backup of this repository is running") from exc
    except OSError as exc:
        raise LockedError(
            "another backup of this repository is running on this machine",
            hint="wait for it to finish; two runs at once are never allowed",
        ) from exc
