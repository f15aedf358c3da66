"""A reading process of the archiver (``python -m rempart.snapshot.worker_main``).

Python threads share one interpreter lock: chunking, hashing, compressing and encrypting all
release it, but the Python code around them does not, so threads kept only ~1.4 of 2 cores busy
(docs/benchmarks.md). Reading processes each read whole files, chunk, hash and, for the chunks
the parent says are new, compress and seal them into packs; the parent process keeps everything
that is shared (walk, dedup decisions, uploads, index, state cache, trees, detection verdicts).

New blobs go straight into packs the process builds itself, in buffers of shared memory the
parent created (one per process and a spare, mapped by all): when one is full, the process
writes the pack's header, hashes it and tells the parent, which stores it from the same memory
(no copy of blob bytes through the pipe, no hashing in the parent). The parent gives each
process a buffer at the start and another for each pack it hands over: the spare, or the buffer
of the next pack stored.

Small files are read in groups: a process takes every small-file request already waiting in its
pipe (up to ``GROUP_FILES`` files, ``GROUP_BYTES`` bytes) and asks about all their chunks at
once, so an initial backup asks about once per 1 MiB instead of once per file. Questions are
answered while the process works on: it reads and hashes the next block of a large file, or
the next group, before it waits for the answer about the last one.

The pipe protocol is in ``rempart.snapshot.wire``. A process that ends without ``Z`` may have
taken blobs it never stored: the parent then fails the backup, whatever files were outstanding.
"""

from __future__ import annotations

import importlib
import json
import marshal
import os
import signal
import stat as statmod
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from rempart.chunking.fastcdc import Chunker, ChunkerParams
from rempart.crypto.aead import DataKey
from rempart.crypto.idkey import IdKey
from rempart.snapshot.wire import (
    FEATURES,
    ID,
    ID32,
    JUDGED,
    Inbox,
    Request,
    decode_request,
    encode_result,
    send,
)
from rempart.snapshot.worker_parts import (
    O_BINARY,
    O_NOFOLLOW,
    Packs,
    Read,
    SealState,
    compress_block,
    open_ahead,
    seal_block,
    settled,
)

#: a block asked about and not stored yet: its chunks, their ids, their compressed form (if done)
_Block = tuple[list[memoryview], list[bytes], list[tuple[int, bytes | memoryview]] | None]

SMALL = 256 * 1024  # files up to this size (at the walk) are read in groups
GROUP_FILES = 64
GROUP_BYTES = 1024 * 1024


class _Worker:
    def __init__(self, inbox: Inbox, out: int) -> None:
        self.inbox, self.out = inbox, out
        self.queued: deque[tuple[bytes, bytes]] = deque()  # messages that arrived while waiting
        self.answers: deque[bytes] = deque()  # answers (``A``) read before they were awaited
        #: the last group of small files, asked about and waiting for its answer (at most one:
        #: the next group is read and hashed meanwhile, then this one is stored)
        self.pending: Callable[[], None] | None = None
        self.alone: deque[Request] = deque()  # requests to read on their own, before any other
        self.run: dict[str, Any] | None = None
        self.packs: Packs | None = None
        self.ahead = True  # compress before the answer (``_compress``): the last answer was mostly new

    def serve(self) -> None:
        while True:
            if self.alone:  # small files that changed or grew while read in a group
                self._finish_pending()
                self._request(self.alone.popleft())
                continue
            msg = self._take(wait=self.pending is None)
            if msg is None:
                if self.pending is not None:  # nothing else to do meanwhile: finish the group
                    self._finish_pending()
                    continue
                return  # the parent went away: no Z, it knows the run is lost
            kind, payload = msg
            if kind == b"S":
                self._finish_pending()
                while self.alone:
                    self._request(self.alone.popleft())
                if self.packs is not None:
                    self.packs.finish()
                send(self.out, b"Z")
                return
            if kind == b"K":
                self._setup(json.loads(payload))
                send(self.out, b"H")  # ready: the parent waits for this before handing out files
            elif kind == b"R":
                first = decode_request(payload)
                if first.size > SMALL:
                    self._large(first)
                else:
                    after = self._group(self._gather(first))  # asked about, not stored yet
                    self._finish_pending()  # the previous group's answer comes first
                    self.pending = after

    def _finish_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending()

    def _take(self, wait: bool = True) -> tuple[bytes, bytes] | None:
        """The next message that is not a buffer given nor an answer (those are taken here,
        at once)."""
        while True:
            msg = self.queued.popleft() if self.queued else self.inbox.get(wait)
            if msg is None or not self._given(msg):
                return msg

    def _given(self, msg: tuple[bytes, bytes]) -> bool:
        """Take the buffer if ``msg`` gives one (``D``), keep it if it answers a question
        (``A``); False for any other message."""
        if msg[0] == b"A":
            self.answers.append(msg[1])
            return True
        if msg[0] != b"D" or self.packs is None:
            return False
        self.packs.free.append(ID32.unpack(msg[1])[0])
        return True

    def _gather(self, first: Request) -> list[Request]:
        """``first`` and the small-file requests already waiting right behind it."""
        group, total = [first], first.size
        while len(group) < GROUP_FILES and total < GROUP_BYTES:
            msg = self._take(wait=False)
            if msg is None:
                break
            r = decode_request(msg[1]) if msg[0] == b"R" else None
            if r is None or r.size > SMALL:
                self.queued.appendleft(msg)  # served next, in order
                break
            group.append(r)
            total += r.size
        return group

    def _wait_buffer(self) -> None:
        """Read one message: a buffer given is taken, anything else served later."""
        msg = self.inbox.get()
        if msg is None:
            raise EOFError("the backup process went away")
        if not self._given(msg):
            self.queued.append(msg)

    def _setup(self, p: dict[str, Any]) -> None:
        idk = IdKey(bytes.fromhex(p["id_key"]))
        key = DataKey(bytes.fromhex(p["data_key"]))
        features = None
        if p.get("features"):  # "module:function", given by the layer above (detection)
            module, _, func = p["features"].partition(":")
            features = getattr(importlib.import_module(module), func)
        self.packs = Packs(self.out, key, bytes.fromhex(p["envelope"]), p["buffers"], p["capacity"],
                            p["pack_size"], p["max_blobs"], self._wait_buffer)
        self.run = {"id": idk, "level": p["level"], "features": features,
                    "chunker": Chunker(ChunkerParams.from_dict(p["chunker"]), idk.chunker_seed())}

    def _ask(self, ids: list[bytes]) -> None:
        """Ask which of ``ids`` are new; the answers come back in the order asked."""
        send(self.out, b"Q", b"".join(ids))

    def _answer(self) -> bytes:
        """The answer to the oldest question not answered yet (one byte per id: 1 if new)."""
        while not self.answers:
            msg = self.inbox.get()
            if msg is None:
                raise EOFError("the backup process went away")
            if not self._given(msg):
                self.queued.append(msg)  # a read request sent meanwhile: served next
        answer = self.answers.popleft()
        if answer:
            self.ahead = 2 * answer.count(1) >= len(answer)
        return answer

    def _compress(self, state: SealState, chunks: list[memoryview]) -> list[tuple[int, bytes | memoryview]] | None:
        """While ``self.ahead``: a block compressed as the parent answers about it (a first backup
        waited ~2.4 s of ~14 s for answers, session 8), else None: only the new chunks, after the
        answer (an answer saying mostly "stored" turns it off: a day backup of a large database)."""
        if not self.ahead:
            return None
        assert self.run is not None
        return compress_block(state, chunks, self.run["level"])

    def _seal(self, state: SealState, chunks: list[memoryview], ids: list[bytes],
              compressed: list[tuple[int, bytes | memoryview]] | None, new: bytes | memoryview) -> None:
        assert self.run is not None and self.packs is not None
        seal_block(self.packs, state, chunks, ids, compressed, new, self.run["level"])

    def _report(self, r: Request, result: Read) -> None:
        content, size, st, samples = result
        fn = self.run["features"] if self.run else None
        if fn is not None:  # computed here: the parent gets the features, not the samples
            feats, judged = fn(os.path.basename(r.path), size, samples)
            samples = [(FEATURES, feats.encode() if feats else b"")]
            if judged is not None:
                samples.append((JUDGED, marshal.dumps(judged)))
        send(self.out, b"F", *encode_result(r.req, content, size, st, samples))

    def _failed(self, r: Request, exc: Exception) -> None:
        if isinstance(exc, OSError):
            send(self.out, b"E", ID.pack(r.req), str(exc.strerror or exc).encode("utf-8", "replace"))
        else:  # reported to the parent, which stops the backup
            send(self.out, b"X", ID.pack(r.req), f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))

    def _request(self, r: Request) -> None:
        try:
            for _attempt in range(r.retries + 1):
                result = self._read_once(r)
                if result is not None:
                    self._report(r, result)
                    return
            send(self.out, b"C", ID.pack(r.req))
        except EOFError:
            raise
        except Exception as exc:
            self._failed(r, exc)

    def _large(self, r: Request) -> None:
        """Read a large file; the answer about its last block is awaited (and the block stored)
        only once the next file's first block is read and hashed (``pending``)."""
        finish = None
        try:
            finish = self._read_deferred(r)
        except EOFError:
            raise
        except Exception as exc:
            self._failed(r, exc)
        self._finish_pending()  # if the file ended before its first question
        self.pending = finish

    def _read_deferred(self, r: Request) -> Callable[[], None]:
        state, last, st1, st2 = self._read_blocks(r, self._finish_pending)

        def finish() -> None:
            try:
                if last is not None:
                    self._seal(state, *last, self._answer())
                result = settled(state, st1, st2)
                if result is None:
                    self.alone.append(r)  # changed while read: read again on its own
                else:
                    self._report(r, result)
            except EOFError:
                raise
            except Exception as exc:
                self._failed(r, exc)

        return finish

    def _blocks(self, f: Any, state: SealState, idk: IdKey, first_asked: Callable[[], None]) -> _Block | None:
        """Read, hash and ask about ``f`` block by block (compressing each at once when
        ``state.ahead``), storing each block once the next one is asked about; returns the
        last block, asked about and not stored yet. ``first_asked()`` runs once the first
        question is sent."""
        assert self.run is not None
        last: _Block | None = None
        batches = self.run["chunker"].batches(f, overlap=True)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return last
            except OSError:
                # the file cannot be read on (a failing disk, a share gone): the parent counts
                # on us for what it claimed in the last answer (other files with those chunks
                # will not store them), and that block is still in memory: store it, then report
                if last is not None:
                    self._seal(state, *last, self._answer())
                raise
            ids = [idk.blob_id(c) for c in batch]
            self._ask(ids)
            compressed = self._compress(state, batch)
            if last is not None:
                self._seal(state, *last, self._answer())
            else:
                first_asked()
            last = batch, ids, compressed

    def _read_once(self, r: Request) -> Read | None:
        state, last, st1, st2 = self._read_blocks(r, lambda: None)
        if last is not None:
            self._seal(state, *last, self._answer())
        return settled(state, st1, st2)

    def _read_blocks(self, r: Request, first_asked: Callable[[], None]
                     ) -> tuple[SealState, _Block | None, os.stat_result, os.stat_result]:
        """Open ``r`` and go through it with ``_blocks``: (seal state, the last block, asked
        about and not stored yet, stat before and after the reads)."""
        run = self.run
        if run is None:
            raise RuntimeError("read request before the run's keys")
        fd = os.open(r.path, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
        with os.fdopen(fd, "rb", buffering=0) as f:
            st1 = os.fstat(fd)
            if not statmod.S_ISREG(st1.st_mode):
                raise OSError(0, "no longer a regular file")
            state = SealState(r.plan)
            # the next block is read and hashed while the parent answers about the last one
            last = self._blocks(f, state, run["id"], first_asked)
            st2 = os.fstat(fd)
        return state, last, st1, st2

    def _group(self, group: list[Request]) -> Callable[[], None] | None:
        """Read small files whole and ask about all their chunks at once; returns what stores
        and reports them once the answer is in (the caller reads the next group meanwhile).
        A file that changed meanwhile (or grew large) is read again on its own."""
        run = self.run
        read: list[tuple[Request, bytes, list[memoryview], list[bytes], os.stat_result, os.stat_result]] = []
        prepared: list[tuple[SealState, list[tuple[int, bytes | memoryview]] | None]] = []
        try:
            if run is None:
                raise RuntimeError("read request before the run's keys")
            idk, chunker = run["id"], run["chunker"]
            for r, fd in open_ahead(group, self._failed):
                try:
                    with os.fdopen(fd, "rb", buffering=0) as f:
                        st1 = os.fstat(fd)
                        if not statmod.S_ISREG(st1.st_mode):
                            raise OSError(0, "no longer a regular file")
                        # its size and one byte more: a file that grew meanwhile is caught by
                        # ``settled``, and no 256 KiB buffer is allocated and shrunk per file
                        data = f.read(min(st1.st_size, SMALL) + 1)
                        st2 = os.fstat(fd)
                except OSError as exc:
                    self._failed(r, exc)
                    continue
                if len(data) > SMALL:
                    self.alone.append(r)
                    continue
                chunks = list(chunker.chunks_of(data))
                read.append((r, data, chunks, [idk.blob_id(c) for c in chunks], st1, st2))
            if not read:
                return None
            self._ask([i for item in read for i in item[3]])
            for item in read:  # while the parent answers
                state = SealState(item[0].plan)
                prepared.append((state, self._compress(state, item[2])))
        except EOFError:
            raise
        except Exception as exc:
            for r in group:
                self._failed(r, exc)  # the parent takes the first report of each file
            return None

        def store() -> None:
            try:
                new = memoryview(self._answer())
                at = 0
                for (r, _data, chunks, ids, st1, st2), (state, compressed) in zip(read, prepared, strict=True):
                    self._seal(state, chunks, ids, compressed, new[at : at + len(ids)])
                    at += len(ids)
                    result = settled(state, st1, st2)
                    if result is None:
                        self.alone.append(r)
                    else:
                        self._report(r, result)
            except EOFError:
                raise
            except Exception as exc:
                for item in read:
                    self._failed(item[0], exc)  # the parent takes the first report of each file

        return store


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipes
    out = os.dup(1)
    os.dup2(2, 1)  # print() in this process goes to stderr, never into the message stream
    sys.stdout = sys.stderr
    try:
        _Worker(Inbox(0), out).serve()
    except (EOFError, BrokenPipeError):
        pass  # the parent stopped (or was killed): nothing to clean up
    return 0


if __name__ == "__main__":
    sys.exit(main())
