"""Writing restored files and folders, relative to the target's directory descriptor.

Shared by the restorer's threads and its restore processes (``restore_child``). Every call is
relative to a directory file descriptor, the last component is opened with O_NOFOLLOW, and
folders are checked to be real folders when created, so neither hostile names in a snapshot nor
symlinks planted in the target can make the restore write outside the target.
"""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Iterator

from rempart.core.errors import DecryptionError, HostilePathError, IntegrityError, UserError
from rempart.snapshot.tree import KIND_DIR, KIND_SYMLINK, Node, check_name

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_BINARY = getattr(os, "O_BINARY", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
HAVE_FCHMOD = hasattr(os, "fchmod")
HAVE_FUTIMES = os.utime in os.supports_fd
HAVE_PWRITE = hasattr(os, "pwrite")
HAVE_PWRITEV = hasattr(os, "pwritev")

WRITE_BYTES = 1024 * 1024  # gather decoded blobs up to this much per write call
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY | O_CLOEXEC


def write_file(root_fd: int, rel: str, size: int, mode: int, mtime_ns: int, blobs: int,
               stream: Iterator[bytes | memoryview]) -> None:
    """Create ``rel`` from the next ``blobs`` plaintexts of ``stream``; a file that cannot be
    completed is removed again and :class:`IntegrityError` names it."""
    try:
        fd = os.open(rel, _NEW_FILE, 0o600, dir_fd=root_fd)
    except FileExistsError:
        remove_existing(root_fd, rel)
        fd = os.open(rel, _NEW_FILE, 0o600, dir_fd=root_fd)
    done = False
    try:
        pos = start = pending_bytes = 0
        pending: list[bytes | memoryview] = []
        for _ in range(blobs):
            try:
                data = next(stream)
            except (IntegrityError, DecryptionError) as exc:
                raise IntegrityError(f"{rel}: cannot restore: {exc}") from exc
            n = len(data)
            if n and _is_zero(data):  # keep holes sparse: write around zero chunks
                if pending:
                    _pwrite_all(fd, pending, start)
                    pending, pending_bytes = [], 0
                pos += n
                start = pos
                continue
            pending.append(data)
            pending_bytes += n
            pos += n
            if pending_bytes >= WRITE_BYTES or len(pending) >= 64:
                _pwrite_all(fd, pending, start)
                pending, pending_bytes, start = [], 0, pos
        if pending:
            _pwrite_all(fd, pending, start)
        if pos != size:
            raise IntegrityError(f"{rel}: restored {pos} bytes, expected {size}")
        if start == pos and pos:  # ends in a hole: give the file its length
            os.ftruncate(fd, pos)
        if HAVE_FCHMOD:
            os.fchmod(fd, statmod.S_IMODE(mode))
        if HAVE_FUTIMES:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        done = True
    finally:
        os.close(fd)
        if not done:
            try:
                os.unlink(rel, dir_fd=root_fd)
            except OSError:
                pass
    if not HAVE_FUTIMES:
        set_times(Node(name=rel, type="file", mode=mode, mtime_ns=mtime_ns), rel, root_fd)


def _is_zero(data: bytes | memoryview) -> bool:
    """Whether ``data`` is all zero bytes (first and last byte first: most data fails there)."""
    if data[0] or data[-1]:
        return False
    if not isinstance(data, bytes):
        data = data.tobytes()  # rare: stored blobs are incompressible, hence seldom zero
    return data == bytes(len(data))


def _pwrite_all(fd: int, bufs: list[bytes | memoryview], offset: int) -> None:
    """Write ``bufs`` back to back at ``offset`` (one system call when possible)."""
    if HAVE_PWRITEV and len(bufs) > 1:
        total = sum(len(b) for b in bufs)
        n = os.pwritev(fd, bufs, offset)
        if n == total:
            return
        # short write (rare): finish buffer by buffer
        for b in bufs:
            if n >= len(b):
                n -= len(b)
                offset += len(b)
                continue
            _pwrite_one(fd, memoryview(b)[n:], offset + n)
            offset += len(b)
            n = 0
        return
    for b in bufs:
        _pwrite_one(fd, b, offset)
        offset += len(b)


def _pwrite_one(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    if not HAVE_PWRITE:
        os.lseek(fd, offset, os.SEEK_SET)
    while view:
        n = os.pwrite(fd, view, offset) if HAVE_PWRITE else os.write(fd, view)
        view = view[n:]
        offset += n


def make_dir(root_fd: int, rel: str) -> None:
    """Create ``rel`` as a real folder; refuse to pass through a symlink in the target."""
    name = rel.rsplit("/", 1)[-1]
    check_name(name)
    try:
        os.mkdir(rel, 0o700, dir_fd=root_fd)
    except FileExistsError:
        st = os.stat(rel, dir_fd=root_fd, follow_symlinks=False)
        if not statmod.S_ISDIR(st.st_mode):
            remove_existing(root_fd, rel)
            os.mkdir(rel, 0o700, dir_fd=root_fd)
    try:
        fd = os.open(rel, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW, dir_fd=root_fd)
    except OSError as exc:
        raise HostilePathError(f"{rel!r}: not a plain folder in the target (symlink?)") from exc
    os.close(fd)


def remove_existing(dir_fd: int, name: str) -> None:
    """Replace what stands at ``name`` (a file or symlink; never follows a symlink)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if statmod.S_ISDIR(st.st_mode):
        raise UserError(f"{name!r} exists in the target as a folder; restore into an empty folder")
    os.unlink(name, dir_fd=dir_fd)


def set_times(node: Node, name: str, dir_fd: int) -> None:
    try:
        if node.type == KIND_DIR:
            os.chmod(name, statmod.S_IMODE(node.mode), dir_fd=dir_fd)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except (NotImplementedError, OSError):
        if node.type != KIND_SYMLINK:
            raise
