"""S3Backend specifics: configuration, key layout, listing, error translation (real SeaweedFS)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from rempart.core.clock import FakeClock
from rempart.core.errors import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    ConfigError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TransientError,
)
from rempart.storage.base import FileType, Handle
from rempart.storage.s3 import S3Backend, S3Config, map_s3_errors
from rempart.testing.servers import S3Server, free_ports, s3_client


def _cfg(server: S3Server, bucket: str, prefix: str = "", *, client: bool = False, **kw: Any) -> S3Config:
    creds = server.client if client else server.admin
    return S3Config(server.endpoint, bucket, prefix, creds.access_key, creds.secret_key, server.region, **kw)


def _h(data: bytes, ftype: FileType = FileType.DATA) -> Handle:
    return Handle(ftype, hashlib.sha256(data).hexdigest())


@pytest.fixture(scope="module")
def bucket(seaweed: S3Server) -> str:
    s3_client(seaweed, seaweed.admin).create_bucket(Bucket="s3-specifics")  # type: ignore[attr-defined]
    return "s3-specifics"


# --- configuration --------------------------------------------------------------------------


def test_config_repr_hides_credentials() -> None:
    cfg = S3Config("https://s3.example", "bucket", "p", "AKIDSECRETISH", "verysecretvalue")
    assert "verysecretvalue" not in repr(cfg)
    assert "AKIDSECRETISH" not in repr(cfg)
    assert "verysecretvalue" not in cfg.location
    assert "bucket" in repr(cfg)


@pytest.mark.parametrize(
    "kw",
    [
        {"endpoint": "ftp://x"},
        {"bucket": "A"},
        {"bucket": "ab"},
        {"bucket": "has_underscore"},
        {"prefix": "/lead"},
        {"prefix": "trail/"},
        {"prefix": "a/../b"},
        {"prefix": "a//b"},
        {"lock_mode": "compliance-ish"},
        {"object_lock_days": 0},
    ],
)
def test_config_rejects_bad_values(kw: dict[str, Any]) -> None:
    base: dict[str, Any] = {"endpoint": "http://127.0.0.1:1", "bucket": "bucket", "prefix": "ok/prefix"}
    with pytest.raises(ConfigError):
        S3Config(**{**base, **kw})


def test_locking_needs_a_clock() -> None:
    with pytest.raises(ConfigError, match="clock"):
        S3Backend(S3Config("http://127.0.0.1:1", "bucket", object_lock_days=1))


# --- error translation ----------------------------------------------------------------------


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, NotFound),
        ("404", 404, NotFound),
        ("NoSuchBucket", 404, NotFound),
        ("AccessDenied", 403, PermissionDenied),
        ("InvalidAccessKeyId", 403, AuthenticationError),
        ("SignatureDoesNotMatch", 403, AuthenticationError),
        ("PreconditionFailed", 412, AlreadyExists),
        ("SlowDown", 503, TransientError),
        ("InternalError", 500, TransientError),
        ("Weird", 502, TransientError),
        ("TooManyRequests", 429, TransientError),
        ("QuotaExceeded", 403, QuotaExceeded),
        ("InvalidArgument", 400, BackendError),
    ],
)
def test_map_s3_errors(code: str, status: int, expected: type[Exception]) -> None:
    with pytest.raises(expected) as ei:
        with map_s3_errors("op"):
            raise _client_error(code, status)
    assert type(ei.value) is expected
    assert isinstance(ei.value.__cause__, ClientError)


@pytest.mark.parametrize("exc", [EndpointConnectionError(endpoint_url="http://x"),
                                 ReadTimeoutError(endpoint_url="http://x")])
def test_map_s3_connection_errors_are_transient(exc: Exception) -> None:
    with pytest.raises(TransientError):
        with map_s3_errors("op"):
            raise exc


def test_nothing_listening_is_transient() -> None:
    port = free_ports(1)[0]
    b = S3Backend(S3Config(f"http://127.0.0.1:{port}", "bucket", "", "AK", "SK", connect_timeout=2))
    with pytest.raises(TransientError):
        b.stat(_h(b"x"))
    with pytest.raises(TransientError):
        b.save(_h(b"x"), b"x")
    with pytest.raises(TransientError):
        list(b.list(FileType.DATA))


def test_wrong_secret_is_authentication_error_without_leaking(seaweed: S3Server, bucket: str) -> None:
    cfg = S3Config(seaweed.endpoint, bucket, "", seaweed.admin.access_key, "not-the-secret-" + "z" * 20)
    b = S3Backend(cfg)
    for op in (lambda: b.load(_h(b"x")), lambda: list(b.list(FileType.DATA)), lambda: b.save(_h(b"x"), b"x")):
        with pytest.raises((AuthenticationError, PermissionDenied)) as ei:
            op()
        assert "not-the-secret" not in str(ei.value)
        assert seaweed.admin.secret_key not in str(ei.value)
    # GET and LIST carry the error code; a HEAD response has no body, so it can only say 403
    with pytest.raises(AuthenticationError):
        b.load(_h(b"x"))
    with pytest.raises(AuthenticationError):
        S3Backend(S3Config(seaweed.endpoint, bucket, "", "UNKNOWNKEY", "whatever")).load(_h(b"x"))


def test_client_credential_cannot_touch_another_bucket(seaweed: S3Server, bucket: str) -> None:
    b = S3Backend(_cfg(seaweed, bucket, client=True))
    with pytest.raises(PermissionDenied):
        b.save(_h(b"intruder"), b"intruder")
    with pytest.raises(PermissionDenied):
        list(b.list(FileType.DATA))


def test_missing_bucket_is_not_found(seaweed: S3Server) -> None:
    b = S3Backend(_cfg(seaweed, "no-such-bucket"))
    with pytest.raises(NotFound):
        b.load(_h(b"x"))
    with pytest.raises(NotFound):
        list(b.list(FileType.DATA))


# --- layout and listing ---------------------------------------------------------------------


def test_key_layout_and_foreign_objects_not_listed(seaweed: S3Server, bucket: str) -> None:
    prefix = f"practices/{uuid.uuid4().hex}"
    b = S3Backend(_cfg(seaweed, bucket, prefix))
    h = _h(b"pack")
    b.save(h, b"pack")
    b.save(Handle(FileType.CONFIG, "config"), b"{}")
    b.save(_h(b"snap", FileType.SNAPSHOT), b"snap")
    raw: Any = s3_client(seaweed, seaweed.admin)
    keys = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert keys == sorted([f"{prefix}/config", f"{prefix}/data/{h.name}",
                           f"{prefix}/snapshots/{hashlib.sha256(b'snap').hexdigest()}"])
    for junk in (f"{prefix}/data/{h.name}.tmp", f"{prefix}/data/README", f"{prefix}/data/sub/{h.name}",
                 f"{prefix}/data/{h.name.upper()}"):
        raw.put_object(Bucket=bucket, Key=junk, Body=b"junk")
    assert [f.name for f in b.list(FileType.DATA)] == [h.name]
    other = S3Backend(_cfg(seaweed, bucket, prefix + "x"))
    assert list(other.list(FileType.DATA)) == []


def test_list_follows_pagination(seaweed: S3Server, bucket: str) -> None:
    b = S3Backend(_cfg(seaweed, bucket, f"pages/{uuid.uuid4().hex}"))
    b.list_page_size = 2
    datas = [bytes([i]) * (i + 1) for i in range(7)]
    for d in datas:
        b.save(_h(d, FileType.INDEX), d)
    listed = list(b.list(FileType.INDEX))
    assert [f.name for f in listed] == sorted(_h(d).name for d in datas)
    assert sorted(f.size for f in listed) == [len(d) for d in datas]


# --- bucket creation ------------------------------------------------------------------------


def test_create_makes_an_object_lock_bucket(seaweed: S3Server) -> None:
    name = f"created-{uuid.uuid4().hex[:12]}"
    b = S3Backend(_cfg(seaweed, name, object_lock_days=1), clock=FakeClock(), create=True)
    raw: Any = s3_client(seaweed, seaweed.admin)
    cfg = raw.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"]
    assert cfg["ObjectLockEnabled"] == "Enabled"
    assert raw.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    S3Backend(_cfg(seaweed, name, object_lock_days=1), clock=FakeClock(), create=True)  # idempotent
    assert b.properties.retention


def test_create_refuses_existing_bucket_without_lock(seaweed: S3Server, bucket: str) -> None:
    with pytest.raises(ConfigError, match="without Object Lock"):
        S3Backend(_cfg(seaweed, bucket, object_lock_days=1), clock=FakeClock(), create=True)
    S3Backend(_cfg(seaweed, bucket), create=True)  # no lock wanted: an existing bucket is fine


def test_if_none_match_closes_the_head_then_put_race(seaweed: S3Server, bucket: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when HEAD saw nothing (another writer got in between), the server refuses the PUT."""
    b = S3Backend(_cfg(seaweed, bucket, f"race/{uuid.uuid4().hex}"))
    h = _h(b"first")
    b.save(h, b"first")

    def head_sees_nothing(key: str) -> dict[str, Any]:
        raise _client_error("404", 404)

    monkeypatch.setattr(b, "_head", head_sees_nothing)
    with pytest.raises(AlreadyExists):
        b.save(h, b"second")
    monkeypatch.undo()
    assert b.load(h) == b"first"
    raw: Any = s3_client(seaweed, seaweed.admin)
    assert len(raw.list_object_versions(Bucket=bucket, Prefix=b._key(h)).get("Versions", [])) == 1
