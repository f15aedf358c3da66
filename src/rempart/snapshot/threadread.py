"""Reading a file in a thread of the backup process: small runs, and runs without reading
processes (``snapshot.workers`` reads the rest). Chunks (FastCDC), hashes (keyed BLAKE3) and hands
each chunk to the write session, which compresses and encrypts it, and samples the file for
detection on the way; the result is the same :class:`~rempart.snapshot.wire.ReadOutcome` a
reading process reports, so the archiver records both alike.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
from collections.abc import Callable

from rempart.chunking.fastcdc import Chunker
from rempart.repository.format import BlobType
from rempart.repository.repo import WriteSession
from rempart.snapshot.options import FileObserver
from rempart.snapshot.pipeline import collect_samples
from rempart.snapshot.wire import ReadOutcome

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_BINARY = getattr(os, "O_BINARY", 0)

Read = tuple[list[bytes], int, os.stat_result, list[tuple[int, bytes]]]


class ThreadReader:
    """Thread-safe: each thread has its own chunker."""

    def __init__(self, session: WriteSession, observer: FileObserver | None, make_chunker: Callable[[], Chunker],
                 retries: int) -> None:
        self.session = session
        self.observer = observer
        self.retries = retries
        self._make_chunker = make_chunker
        self._local = threading.local()

    def read(self, spath: str) -> ReadOutcome:
        """Read and store ``spath``, again (up to ``retries`` times) while it changes under us;
        an OSError becomes an ``oserror`` outcome, anything else a ``failed`` one."""
        try:
            for _attempt in range(self.retries + 1):
                result = self._read_once(spath)
                if result is not None:
                    content, size, st, samples = result
                    return ReadOutcome("ok", content, size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                       st.st_mode, samples)
            return ReadOutcome("changed")
        except OSError as exc:
            return ReadOutcome("oserror", message=str(exc.strerror or exc))
        except BaseException as exc:  # re-raised by the walker or by archive()
            return ReadOutcome("failed", error=exc)

    def _chunker(self) -> Chunker:
        c = getattr(self._local, "chunker", None)
        if c is None:
            c = self._local.chunker = self._make_chunker()
        return c

    def _read_once(self, path: str) -> Read | None:
        """Read and store one file; None when it changed while being read."""
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
        with os.fdopen(fd, "rb", buffering=0) as f:
            st1 = os.fstat(fd)
            if not statmod.S_ISREG(st1.st_mode):
                raise OSError(0, "no longer a regular file")
            plan = self.observer.sample_plan(st1.st_size) if self.observer else []
            samples: list[tuple[int, bytes]] = []
            content: list[bytes] = []
            session = self.session
            offset = 0
            compressible = True
            misses = 0
            for chunk in self._chunker().chunks(f):
                n = len(chunk)
                if plan:
                    collect_samples(plan, samples, offset, chunk)
                bid = session.blob_id(chunk)
                # add_blob looks the id up itself (one index lookup per chunk, not two); a known
                # blob counts as compressible
                _, ok = session.add_blob(BlobType.DATA, chunk, bid, compressible=compressible)
                # stop trying to compress data that does not compress (JPEG, DICOM pixels)
                misses = 0 if ok else misses + 1
                compressible = misses < 2 or len(content) % 16 == 0
                content.append(bid)
                offset += n
            st2 = os.fstat(fd)
        if offset != st2.st_size or (st1.st_mtime_ns, st1.st_size) != (st2.st_mtime_ns, st2.st_size):
            return None
        return content, offset, st2, samples
