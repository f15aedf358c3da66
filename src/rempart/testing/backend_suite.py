"""Conformance suite for storage backends (restic's backend test suite, kopia's VerifyStorage).

Every backend runs the same tests. To check a backend, subclass :class:`BackendSuite` in a test
module (the class name must start with ``Test``) and provide a ``backend`` fixture that yields
a fresh, empty backend::

    from rempart.testing.backend_suite import BackendSuite

    class TestVaultBackend(BackendSuite):
        @pytest.fixture
        def backend(self, running_vault):
            b = VaultBackend(running_vault.url, token=running_vault.admin_token, ca=running_vault.ca)
            yield b
            b.close()

        # optional knobs, see the class attributes below:
        identical_resave_is_noop = True                # the vault accepts identical re-uploads
        overwrite_errors = (AlreadyExists, UserError)  # what refusing other bytes may raise
        def make_content(self, ftype, i): ...          # e.g. valid pack bytes for the vault
        def interrupt_save(self, backend, h, data): ...  # kill an upload half-way

Names are always ``sha256(content)``, so a backend that checks content addresses passes.
"""

from __future__ import annotations

import hashlib
import random
import threading
from typing import ClassVar

import pytest

from rempart.core.errors import (
    AlreadyExists,
    BackendError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    UserError,
)
from rempart.storage.base import Backend, FileInfo, FileType, Handle, Permissions
from rempart.storage.wrappers import PermissionedBackend

HOSTILE_NAMES = [
    "../x", "a/b", "..", ".", "", "config", "A" * 64, "0" * 63, "0" * 65, "0" * 63 + "/",
    "../" + "0" * 61, "0" * 62 + "\x00a", "0" * 63 + "g", " " + "0" * 63, "0" * 63 + "\n",
    "\u0660" * 64,  # Arabic-Indic digits: str.isdigit() is True, but they are not hex
]


class SimulatedCrash(BaseException):
    """Raised by ``interrupt_save`` hooks: not an Exception, so no backend code swallows it."""


class BackendSuite:
    """Contract tests. Subclasses supply the ``backend`` fixture (fresh and empty)."""

    #: file types exercised by the generic tests (besides the config handle)
    file_types: ClassVar[tuple[FileType, ...]] = (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT,
                                                  FileType.LOCK)
    #: the credential used may delete (False: remove must raise PermissionDenied)
    can_remove: ClassVar[bool] = True
    #: saving the very same bytes again is accepted silently instead of raising AlreadyExists
    identical_resave_is_noop: ClassVar[bool] = False
    #: exceptions accepted when other bytes are saved under an existing name
    overwrite_errors: ClassVar[tuple[type[BaseException], ...]] = (AlreadyExists,)
    #: threads used by the concurrency tests
    threads: ClassVar[int] = 8

    # --- hooks --------------------------------------------------------------------------

    def make_content(self, ftype: FileType, i: int) -> bytes:
        """Content for file ``i`` of a type (deterministic, varied sizes)."""
        rng = random.Random(f"{ftype.value}-{i}")
        return rng.randbytes(rng.choice([1, 17, 4096, 65_537, 300_000]))

    def interrupt_save(self, backend: Backend, h: Handle, data: bytes) -> None:
        """Start saving ``data`` under ``h`` and kill the write half-way (raise SimulatedCrash).

        Backends override this with their own temp mechanism. The default cannot interrupt
        anything, so the test using it is skipped with that reason.
        """
        pytest.skip(f"{type(backend).__name__}: no way to interrupt a save was provided")

    # --- helpers ------------------------------------------------------------------------

    def handle(self, ftype: FileType, data: bytes) -> Handle:
        if ftype is FileType.CONFIG:
            return Handle(FileType.CONFIG, "config")
        return Handle(ftype, hashlib.sha256(data).hexdigest())

    def put(self, backend: Backend, ftype: FileType, i: int) -> tuple[Handle, bytes]:
        data = self.make_content(ftype, i)
        h = self.handle(ftype, data)
        backend.save(h, data)
        return h, data

    @staticmethod
    def names(backend: Backend, ftype: FileType) -> list[str]:
        return [fi.name for fi in backend.list(ftype)]

    # --- tests --------------------------------------------------------------------------

    def test_save_load_round_trip(self, backend: Backend) -> None:
        for ftype in self.file_types:
            for i in range(3):
                h, data = self.put(backend, ftype, i)
                assert backend.load(h) == data
                assert backend.stat(h) == FileInfo(h.name, len(data))

    def test_save_is_create_only(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        h, data = self.put(backend, ftype, 0)
        other = self.make_content(ftype, 1)
        assert other != data
        with pytest.raises(self.overwrite_errors):
            backend.save(h, other)
        if self.identical_resave_is_noop:
            backend.save(h, data)
        else:
            with pytest.raises(AlreadyExists):
                backend.save(h, data)
        assert backend.load(h) == data
        assert self.names(backend, ftype) == [h.name]

    def test_range_loads(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        data = max((self.make_content(ftype, i) for i in range(6)), key=len)
        h = self.handle(ftype, data)
        backend.save(h, data)
        n = len(data)
        cases = [(0, None), (0, n), (0, 1), (n - 1, 1), (n - 1, None), (n // 2, None), (n // 3, n // 3),
                 (1, n - 1), (n, None), (n, 0), (5, 0)]
        for offset, length in cases:
            if offset > n or (length is not None and offset + length > n):
                continue
            want = data[offset:] if length is None else data[offset : offset + length]
            assert backend.load(h, offset=offset, length=length) == want, (offset, length)

    def test_short_read_raises_integrity_error(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        h, data = self.put(backend, ftype, 0)
        n = len(data)
        for offset, length in [(0, n + 1), (n - 1, 2), (n, 1), (n + 10, 5)]:
            with pytest.raises(IntegrityError):
                backend.load(h, offset=offset, length=length)

    def test_missing_file_is_not_found(self, backend: Backend) -> None:
        for ftype in (*self.file_types, FileType.CONFIG):
            h = self.handle(ftype, b"never stored " + ftype.value.encode())
            with pytest.raises(NotFound):
                backend.load(h)
            with pytest.raises(NotFound):
                backend.load(h, offset=1, length=2)
            with pytest.raises(NotFound):
                backend.stat(h)
            if self.can_remove:
                with pytest.raises(NotFound):
                    backend.remove(h)
            else:
                with pytest.raises((NotFound, PermissionDenied)):
                    backend.remove(h)

    def test_list_each_file_once_sorted_per_type(self, backend: Backend) -> None:
        expected: dict[FileType, dict[str, int]] = {}
        for ftype in self.file_types:
            assert self.names(backend, ftype) == []
            expected[ftype] = {}
            for i in range(5):
                h, data = self.put(backend, ftype, i)
                expected[ftype][h.name] = len(data)
        for ftype in self.file_types:
            listed = list(backend.list(ftype))
            assert [fi.name for fi in listed] == sorted(expected[ftype])
            assert {fi.name: fi.size for fi in listed} == expected[ftype]
        assert self.names(backend, FileType.CONFIG) == []

    def test_config_handle(self, backend: Backend) -> None:
        h = Handle(FileType.CONFIG, "config")
        assert self.names(backend, FileType.CONFIG) == []
        data = b'{"version": 1}'
        backend.save(h, data)
        assert backend.load(h) == data
        assert backend.stat(h).size == len(data)
        assert list(backend.list(FileType.CONFIG)) == [FileInfo("config", len(data))]
        with pytest.raises(self.overwrite_errors):
            backend.save(h, b'{"version": 2}')
        assert backend.load(h) == data
        for ftype in self.file_types:
            assert self.names(backend, ftype) == []

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    def test_invalid_names_rejected_before_storage(self, backend: Backend, name: str) -> None:
        for ftype in FileType:
            if ftype is FileType.CONFIG and name == "config":
                continue
            with pytest.raises(UserError):
                Handle(ftype, name)
        for ftype in self.file_types:
            assert self.names(backend, ftype) == []

    def test_concurrent_saves_of_distinct_names(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        items = [(self.make_content(ftype, i), i) for i in range(self.threads * 3)]
        errors: list[BaseException] = []

        def work(chunk: list[tuple[bytes, int]]) -> None:
            try:
                for data, _ in chunk:
                    backend.save(self.handle(ftype, data), data)
            except BaseException as exc:
                errors.append(exc)

        ts = [threading.Thread(target=work, args=(items[k :: self.threads],)) for k in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
        want = sorted({self.handle(ftype, d).name for d, _ in items})
        assert self.names(backend, ftype) == want
        for data, _ in items:
            assert backend.load(self.handle(ftype, data)) == data

    def test_concurrent_saves_of_one_name_keep_one_content(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        data = self.make_content(ftype, 3)
        h = self.handle(ftype, data)
        ok: list[int] = []
        refused: list[BaseException] = []
        barrier = threading.Barrier(self.threads)

        def work(k: int) -> None:
            barrier.wait()
            try:
                backend.save(h, data)
                ok.append(k)
            except BackendError as exc:
                refused.append(exc)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if not self.identical_resave_is_noop:
            assert len(ok) == 1, f"{len(ok)} concurrent saves of one name succeeded"
            assert all(isinstance(e, AlreadyExists) for e in refused), refused
        assert len(ok) + len(refused) == self.threads
        assert backend.load(h) == data
        assert self.names(backend, ftype) == [h.name]

    def test_interrupted_save_leaves_nothing_visible(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        data = max((self.make_content(ftype, i) for i in range(6)), key=len)
        h = self.handle(ftype, data)
        with pytest.raises(SimulatedCrash):
            self.interrupt_save(backend, h, data)
        assert self.names(backend, ftype) == []
        with pytest.raises(NotFound):
            backend.stat(h)
        with pytest.raises(NotFound):
            backend.load(h)
        backend.save(h, data)  # the name is still free and a retry completes
        assert backend.load(h) == data
        assert self.names(backend, ftype) == [h.name]

    def test_remove(self, backend: Backend) -> None:
        ftype = self.file_types[0]
        h, data = self.put(backend, ftype, 0)
        h2, _ = self.put(backend, ftype, 1)
        if not self.can_remove:
            with pytest.raises(PermissionDenied):
                backend.remove(h)
            assert backend.load(h) == data
            return
        backend.remove(h)
        with pytest.raises(NotFound):
            backend.load(h)
        with pytest.raises(NotFound):
            backend.remove(h)
        assert self.names(backend, ftype) == [h2.name]
        backend.save(h, data)  # the name can be used again after a real delete
        assert backend.load(h) == data

    def test_append_only_permissions(self, backend: Backend) -> None:
        ao = PermissionedBackend(backend, Permissions.append_only())
        ftype = FileType.DATA if FileType.DATA in self.file_types else self.file_types[0]
        h, data = self.put(ao, ftype, 0)  # create: allowed
        assert ao.load(h) == data  # read: allowed
        assert ao.stat(h).size == len(data)
        assert self.names(ao, ftype) == [h.name]  # list: allowed
        with pytest.raises(PermissionDenied):
            ao.remove(h)
        with pytest.raises((PermissionDenied, *self.overwrite_errors)):
            ao.save(h, self.make_content(ftype, 1))
        with pytest.raises(PermissionDenied):
            ao.save(Handle(FileType.CONFIG, "config"), b"{}")
        assert backend.load(h) == data
        assert self.names(backend, FileType.CONFIG) == []
        if FileType.LOCK in self.file_types and self.can_remove:
            lh, _ = self.put(ao, FileType.LOCK, 0)
            ao.remove(lh)  # locks are the one type an agent may delete
            assert self.names(backend, FileType.LOCK) == []

