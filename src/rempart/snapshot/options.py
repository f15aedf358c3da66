"""What a backup run takes and what it reports: its options (frozen, built once at the edge),
its counters and warnings, and the hooks detection plugs into."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol


class FileObserver(Protocol):
    """Detection hooks; the agent layer provides one built on rempart.detect."""

    def sample_plan(self, size: int) -> list[tuple[int, int]]: ...  # sorted by offset, disjoint

    def features(self, name: str, size: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]: ...

    def changed(self, path: str, prev: dict[str, Any] | None, cur: dict[str, Any], new: bool) -> None: ...

    #: a new file whose verdict its reading process computed already (``worker_features``)
    def judged_new(self, path: str, judged_raw: bytes) -> None: ...


@dataclass(frozen=True)
class BackupOptions:
    workers: int = 2
    #: files handed to readers and not finished yet, at most: a later run reads a day's changes,
    #: and a deeper queue would start its second reading process (memory) for files one reads
    #: in time (bench/compare.py, 2 GiB folder, day backup: 89 MiB summed PSS with 16, 103 with 256)
    max_inflight: int = 16
    #: the same for a first backup, which reads everything: a deep queue lets the read-ahead
    #: below run ahead of the readers (cold 2 GiB folder, 18.3 -> 16.0 s with 256)
    first_max_inflight: int = 256
    #: and at most this much of their contents asked of the disk ahead of the readers
    max_inflight_bytes: int = 64 * 1024 * 1024
    #: per file: the first this many bytes (the kernel's own read-ahead follows a reader)
    read_ahead: int = 4 * 1024 * 1024
    #: re-read files whose last full read is older than this many seconds (None: never)
    reread_after: float | None = 7 * 86400
    force_reread: bool = False
    excludes: tuple[str, ...] = ()
    #: (device, inode) of folders never backed up, wherever the walk meets them: the repository
    #: and the state folder when they lie inside a source (each run would store the packs of the
    #: runs before again, and they look like encrypted files to detection)
    skip_dirs: frozenset[tuple[int, int]] = frozenset()
    read_retries: int = 2
    #: read files in ``workers`` separate processes (all cores busy; see snapshot/worker_main)
    #: once this run has more than ``process_after`` bytes to read; threads until then. Not on
    #: Windows: the processes build packs in shared memory passed as file descriptors
    processes: bool = os.name == "posix"
    process_after: int = 32 * 1024 * 1024
    #: the same for a first backup (no previous snapshot in the state cache): it reads everything
    first_process_after: int = 4 * 1024 * 1024


MAX_WARNINGS = 1000


@dataclass
class BackupStats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    #: the first MAX_WARNINGS messages; ``warnings_dropped`` counts the rest
    warnings: list[str] = field(default_factory=list)
    warnings_dropped: int = 0
    trees_reused: int = 0

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.warnings_dropped += 1

    @property
    def warning_count(self) -> int:
        return len(self.warnings) + self.warnings_dropped

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("warnings", "warnings_dropped")}
        d["warnings"] = self.warning_count
        return d
