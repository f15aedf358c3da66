"""Local-directory backend.

Layout: ``config``, ``data/<2 hex>/<id>``, ``index/<id>``, ``snapshots/<id>``, ``locks/<id>``,
``tmp/`` for files being written. Writes go to ``tmp/`` (packs with ``O_DIRECT``, see
``rempart.storage.direct``), are fsynced, then linked into place
(``link`` fails if the name exists, so nothing is ever overwritten), and the directory is
fsynced.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rempart.core.errors import (
    AlreadyExists,
    BackendError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    StorageFull,
)
from rempart.core.ids import is_hex_id
from rempart.storage.base import BackendProperties, FileInfo, FileType, Handle
from rempart.storage.direct import write_new_file

#: how long a temporary file must have been left untouched before a cleanup takes it for the
#: leftover of a killed writer (an upload still arriving, or a backup still writing, keeps its
#: file fresh)
TMP_GRACE = 3600.0

_DIRS = [t for t in FileType if t is not FileType.CONFIG]


@contextmanager
def map_os_errors(what: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound(f"{what}: not found") from exc
    except FileExistsError as exc:
        raise AlreadyExists(f"{what}: already exists") from exc
    except PermissionError as exc:
        raise PermissionDenied(f"{what}: permission denied by the file system") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"{what}: no space left on the storage device") from exc
        raise BackendError(f"{what}: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be fsynced on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root)
        self.properties = BackendProperties(connections=2, location=str(self.root))
        if create:
            with map_os_errors(f"create {self.root}"):
                self.root.mkdir(parents=True, exist_ok=True)
                for t in _DIRS:
                    (self.root / t.value).mkdir(exist_ok=True)
                (self.root / "tmp").mkdir(exist_ok=True)
                for i in range(256):
                    (self.root / "data" / f"{i:02x}").mkdir(exist_ok=True)

    def file_path(self, h: Handle) -> Path:
        """Where ``h`` lies on disk, for a reader that opens the files itself (the restore
        processes): reading there bypasses any wrapper around this backend."""
        return self._path(h)

    def _path(self, h: Handle) -> Path:
        if h.type is FileType.CONFIG:
            return self.root / "config"
        if h.type is FileType.DATA:
            return self.root / "data" / h.name[:2] / h.name
        return self.root / h.type.value / h.name

    def save(self, h: Handle, data: bytes) -> None:
        self._write(h, data, replace=False)

    def _write(self, h: Handle, data: bytes, *, replace: bool) -> None:
        final = self._path(h)
        tmpdir = self.root / "tmp"
        tmp = tmpdir / f"{h.name}.{secrets.token_hex(8)}.tmp"
        with map_os_errors(f"{'put back' if replace else 'save'} {h}"):
            if not replace and final.exists():
                raise FileExistsError(str(final))
            tmpdir.mkdir(exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_new_file(tmp, data)  # fsynced; a pack from shared memory skips the page cache
                if replace:
                    os.replace(tmp, final)
                else:
                    try:
                        os.link(tmp, final)  # atomic and never replaces an existing file
                    except (AttributeError, NotImplementedError):  # pragma: no cover - no hard links
                        os.rename(tmp, final)  # Windows: rename refuses to replace
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            fsync_dir(final.parent)

    def put_back(self, h: Handle, data: bytes) -> None:
        """Put back the bytes of a damaged or vanished content-addressed object (a vault admin's
        repair from its replica), replacing what is there. Not part of the backend protocol,
        which never overwrites: refused unless ``data`` hashes to the object's name, so only the
        bytes the name promises can ever be written; written like :meth:`save` (``tmp/``,
        fsync), then renamed over the damaged file."""
        if h.type is FileType.CONFIG or hashlib.sha256(data).hexdigest() != h.name:
            raise IntegrityError(f"put back {h}: the bytes do not hash to its name")
        self._write(h, data, replace=True)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        with map_os_errors(f"load {h}"):
            with open(self._path(h), "rb") as f:
                if offset:
                    f.seek(offset)
                data = f.read() if length is None else f.read(length)
        if length is not None and len(data) != length:
            raise IntegrityError(f"load {h}: short read ({len(data)} of {length} bytes)")
        return data

    def stat(self, h: Handle) -> FileInfo:
        with map_os_errors(f"stat {h}"):
            st = self._path(h).stat()
        return FileInfo(h.name, st.st_size)

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        if ftype is FileType.CONFIG:
            p = self.root / "config"
            if p.exists():
                yield FileInfo("config", p.stat().st_size)
            return
        base = self.root / ftype.value
        with map_os_errors(f"list {ftype.value}"):
            if ftype is FileType.DATA:
                paths = sorted(
                    (e for d in sorted(os.scandir(base), key=lambda e: e.name) if d.is_dir()
                     for e in os.scandir(d.path)),
                    key=lambda e: e.name,
                )
            else:
                paths = sorted(os.scandir(base), key=lambda e: e.name)
            for e in paths:
                if e.is_file() and is_hex_id(e.name):
                    yield FileInfo(e.name, e.stat().st_size)

    def remove(self, h: Handle) -> None:
        with map_os_errors(f"remove {h}"):
            os.unlink(self._path(h))
            fsync_dir(self._path(h).parent)

    def close(self) -> None:
        pass

    def clean_tmp(self, older_than: float = 0.0, now: float | None = None) -> int:
        """Remove leftovers of killed writers (``tmp/*.tmp``); returns how many were removed.
        With ``now`` (seconds since the epoch), only files last written more than
        ``older_than`` seconds before it: a writer still at work keeps its file fresh."""
        n = 0
        for p in (self.root / "tmp").glob("*.tmp"):
            try:
                if now is not None and p.stat().st_mtime > now - older_than:
                    continue
                p.unlink()
            except FileNotFoundError:
                continue  # its writer finished meanwhile
            n += 1
        return n
