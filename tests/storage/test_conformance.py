"""Every backend passes the same conformance suite (rempart.testing.backend_suite)."""

from __future__ import annotations

import http.client
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest

from rempart.core.clock import SystemClock
from rempart.core.errors import PermissionDenied
from rempart.storage.base import Backend, Handle
from rempart.storage.local import LocalBackend
from rempart.storage.memory import MemoryBackend
from rempart.storage.s3 import S3Backend, S3Config
from rempart.testing import servers
from rempart.testing.backend_suite import BackendSuite, SimulatedCrash
from rempart.testing.servers import S3Server, s3_client


class TestLocalBackend(BackendSuite):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[LocalBackend]:
        b = LocalBackend(tmp_path / "repo", create=True)
        yield b
        b.close()

    def interrupt_save(self, backend: Backend, h: Handle, data: bytes) -> None:
        """Die like SIGKILL after the temp file is written and fsynced, before the link."""

        def crash(*a: object, **k: object) -> None:
            raise SimulatedCrash("killed before link")

        with mock.patch.object(os, "link", crash), mock.patch.object(os, "unlink", lambda *a, **k: None):
            backend.save(h, data)


class TestMemoryBackend(BackendSuite):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()

    def interrupt_save(self, backend: Backend, h: Handle, data: bytes) -> None:
        class Exploding:
            def __bytes__(self) -> bytes:
                raise SimulatedCrash("killed while copying")

        backend.save(h, Exploding())  # type: ignore[arg-type]


def _raw_put(request: object, *, full: bool) -> None:
    """Send botocore's signed PUT ourselves: all of the body, or only half and then hang up."""
    url = urlsplit(request.url)  # type: ignore[attr-defined]
    body = request.body  # type: ignore[attr-defined]
    if hasattr(body, "read"):
        body = body.read()
    body = bytes(body)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.putrequest("PUT", url.path + (f"?{url.query}" if url.query else ""), skip_host=True,
                    skip_accept_encoding=True)
    for k, v in request.headers.items():  # type: ignore[attr-defined]
        if k.lower() != "expect":
            conn.putheader(k, v)
    conn.putheader("Host", url.netloc)
    conn.endheaders()
    if full:
        conn.send(body)
        assert conn.getresponse().status == 200
    else:
        conn.send(body[: len(body) // 2])
        conn.sock.close()
    conn.close()
    raise SimulatedCrash("connection dropped half-way through the upload")


def _send_raw(backend: S3Backend, h: Handle, data: bytes, *, full: bool) -> None:
    events = backend._s3.meta.events
    events.register_first("before-send.s3.PutObject", lambda request, **_: _raw_put(request, full=full),
                          unique_id="rempart-crash")
    try:
        backend.save(h, data)
    finally:
        events.unregister("before-send.s3.PutObject", unique_id="rempart-crash")


class _S3Suite(BackendSuite):
    def interrupt_save(self, backend: Backend, h: Handle, data: bytes) -> None:
        assert isinstance(backend, S3Backend)
        _send_raw(backend, h, data, full=False)

    def test_control_full_raw_put_is_visible(self, backend: S3Backend) -> None:
        """Control for the interrupted-save test: the same raw request, sent whole, stores the file."""
        data = self.make_content(self.file_types[0], 5)
        h = self.handle(self.file_types[0], data)
        with pytest.raises(SimulatedCrash):
            _send_raw(backend, h, data, full=True)
        assert backend.load(h) == data


@pytest.fixture(scope="module")
def plain_bucket(seaweed: S3Server) -> str:
    s3_client(seaweed, seaweed.admin).create_bucket(Bucket="conformance")  # type: ignore[attr-defined]
    return "conformance"


@pytest.fixture(scope="module")
def locked_bucket(seaweed: S3Server) -> str:
    return servers.locked_bucket(seaweed)


class TestS3Backend(_S3Suite):
    """Plain bucket, provider (admin) credential: everything allowed, including remove."""

    @pytest.fixture
    def backend(self, seaweed: S3Server, plain_bucket: str) -> Iterator[S3Backend]:
        cfg = S3Config(seaweed.endpoint, plain_bucket, f"t/{uuid.uuid4().hex}", seaweed.admin.access_key,
                       seaweed.admin.secret_key, seaweed.region)
        b = S3Backend(cfg)
        yield b
        b.close()


class TestS3BackendCompliance(_S3Suite):
    """Object Lock bucket, practice credential, COMPLIANCE 1 day: the storage refuses removes."""

    can_remove = False

    @pytest.fixture
    def backend(self, seaweed: S3Server, locked_bucket: str) -> Iterator[S3Backend]:
        cfg = S3Config(seaweed.endpoint, locked_bucket, f"t/{uuid.uuid4().hex}", seaweed.client.access_key,
                       seaweed.client.secret_key, seaweed.region, object_lock_days=1)
        b = S3Backend(cfg, clock=SystemClock())
        assert b.properties.retention
        yield b
        b.close()

    def test_remove_refusal_comes_from_storage(self, backend: S3Backend) -> None:
        h, data = self.put(backend, self.file_types[0], 0)
        with pytest.raises(PermissionDenied, match="Object Lock"):
            backend.remove(h)
        assert backend.load(h) == data
