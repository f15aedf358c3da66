"""S3 Object Lock against a real SeaweedFS: the *storage* refuses deletion and overwrite.

Raw boto3 calls (not our backend) show what the server itself enforces, with the provider's
admin credential as well as the practice credential.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from rempart.core.clock import FakeClock, SystemClock
from rempart.core.errors import AlreadyExists, PermissionDenied
from rempart.storage.base import FileType, Handle
from rempart.storage.s3 import S3Backend, S3Config
from rempart.testing.servers import S3Server, locked_bucket, s3_client


@pytest.fixture(scope="module")
def bucket(seaweed: S3Server) -> str:
    return locked_bucket(seaweed)


@pytest.fixture
def admin(seaweed: S3Server) -> Any:
    return s3_client(seaweed, seaweed.admin)


@pytest.fixture
def client(seaweed: S3Server) -> Any:
    return s3_client(seaweed, seaweed.client)


@pytest.fixture
def practice(seaweed: S3Server, bucket: str) -> Iterator[S3Backend]:
    """The backend as a practice would hold it: client credential, COMPLIANCE for 1 day."""
    cfg = S3Config(seaweed.endpoint, bucket, f"lock/{uuid.uuid4().hex}", seaweed.client.access_key,
                   seaweed.client.secret_key, seaweed.region, object_lock_days=1)
    b = S3Backend(cfg, clock=SystemClock())
    yield b
    b.close()


def _save(b: S3Backend, data: bytes) -> tuple[Handle, str, str]:
    h = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
    b.save(h, data)
    key = b._key(h)
    version = b._s3.head_object(Bucket=b.config.bucket, Key=key)["VersionId"]
    return h, key, version


def _refused(fn: Any, **kw: Any) -> str:
    with pytest.raises(ClientError) as ei:
        fn(**kw)
    return str(ei.value.response["ResponseMetadata"]["HTTPStatusCode"])


def _version_bytes(s3: Any, bucket: str, key: str, version: str) -> bytes:
    body: bytes = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
    return body


def test_saved_object_carries_compliance_retention_from_injected_clock(seaweed: S3Server, bucket: str,
                                                                        admin: Any) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    clock = FakeClock(start)
    cfg = S3Config(seaweed.endpoint, bucket, f"lock/{uuid.uuid4().hex}", seaweed.client.access_key,
                   seaweed.client.secret_key, seaweed.region, object_lock_days=2)
    b = S3Backend(cfg, clock=clock)
    h, key, version = _save(b, b"pack bytes")
    r = admin.get_object_retention(Bucket=bucket, Key=key, VersionId=version)["Retention"]
    assert r["Mode"] == "COMPLIANCE"
    assert abs((r["RetainUntilDate"] - (start + timedelta(days=2))).total_seconds()) < 1
    assert b.retention(h) == ("COMPLIANCE", r["RetainUntilDate"])


@pytest.mark.parametrize("who", ["admin", "client"])
def test_locked_version_cannot_be_deleted_even_by_admin(practice: S3Backend, who: str, admin: Any,
                                                         client: Any) -> None:
    s3 = admin if who == "admin" else client
    h, key, version = _save(practice, b"locked " + who.encode())
    bucket = practice.config.bucket
    assert _refused(s3.delete_object, Bucket=bucket, Key=key, VersionId=version) == "403"
    assert _refused(s3.delete_object, Bucket=bucket, Key=key, VersionId=version,
                    BypassGovernanceRetention=True) == "403"
    assert _version_bytes(admin, bucket, key, version) == b"locked " + who.encode()
    assert practice.load(h) == b"locked " + who.encode()


def test_backend_remove_with_admin_credential_is_refused_by_storage(seaweed: S3Server,
                                                                    practice: S3Backend) -> None:
    h, _, _ = _save(practice, b"keep me")
    cfg = S3Config(seaweed.endpoint, practice.config.bucket, practice.config.prefix, seaweed.admin.access_key,
                   seaweed.admin.secret_key, seaweed.region)
    provider = S3Backend(cfg)  # no lock policy of its own, full rights: only the lock stops it
    with pytest.raises(PermissionDenied, match="Object Lock"):
        provider.remove(h)
    assert provider.load(h) == b"keep me"


@pytest.mark.parametrize("who", ["admin", "client"])
def test_overwrite_only_adds_a_version_and_original_stays(practice: S3Backend, who: str, admin: Any,
                                                          client: Any) -> None:
    s3 = admin if who == "admin" else client
    h, key, v1 = _save(practice, b"original")
    bucket = practice.config.bucket
    with pytest.raises(AlreadyExists):
        practice.save(h, b"ransom")  # our backend never tries
    assert _refused(s3.put_object, Bucket=bucket, Key=key, Body=b"ransom", IfNoneMatch="*") == "412"
    v2 = s3.put_object(Bucket=bucket, Key=key, Body=b"ransom")["VersionId"]  # raw, unconditional
    assert v2 != v1
    assert _version_bytes(admin, bucket, key, v1) == b"original"
    assert _refused(s3.delete_object, Bucket=bucket, Key=key, VersionId=v1) == "403"
    versions = admin.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    assert {v["VersionId"] for v in versions} == {v1, v2}


def test_client_delete_without_version_only_hides_behind_a_marker(practice: S3Backend, admin: Any,
                                                                 client: Any) -> None:
    _, key, v1 = _save(practice, b"still here")
    bucket = practice.config.bucket
    marker = client.delete_object(Bucket=bucket, Key=key)
    assert marker.get("DeleteMarker") is True
    assert _version_bytes(admin, bucket, key, v1) == b"still here"
    assert _refused(client.delete_object, Bucket=bucket, Key=key, VersionId=v1) == "403"


@pytest.mark.parametrize("who", ["admin", "client"])
def test_retention_cannot_be_shortened_or_downgraded(practice: S3Backend, who: str, admin: Any,
                                                     client: Any) -> None:
    s3 = admin if who == "admin" else client
    h, key, version = _save(practice, b"retained " + who.encode())
    bucket = practice.config.bucket
    mode, until = practice.retention(h) or ("", datetime.min)
    assert mode == "COMPLIANCE"
    shorter = {"Mode": "COMPLIANCE", "RetainUntilDate": until - timedelta(hours=12)}
    assert _refused(s3.put_object_retention, Bucket=bucket, Key=key, VersionId=version,
                    Retention=shorter) == "403"
    assert _refused(s3.put_object_retention, Bucket=bucket, Key=key, VersionId=version,
                    Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
                    BypassGovernanceRetention=True) == "403"
    assert practice.retention(h) == ("COMPLIANCE", until)


def test_extend_retention(practice: S3Backend, admin: Any) -> None:
    h, key, version = _save(practice, b"still referenced")
    _, until = practice.retention(h) or ("", datetime.min)
    later = (until + timedelta(days=10)).replace(microsecond=0)
    practice.extend_retention(h, later)
    assert practice.retention(h) == ("COMPLIANCE", later)
    r = admin.get_object_retention(Bucket=practice.config.bucket, Key=key, VersionId=version)["Retention"]
    assert r["RetainUntilDate"] == later
    practice.extend_retention(h, later - timedelta(days=5))  # never shortens, no error
    assert practice.retention(h) == ("COMPLIANCE", later)


@pytest.mark.parametrize("fresh", [False, True])
def test_reads_and_retention_address_the_accepted_version(seaweed: S3Server, practice: S3Backend, admin: Any,
                                                          client: Any, fresh: bool) -> None:
    """A newer version or a delete marker put over a locked key by a stolen credential is
    ignored: the backend reads, sizes and extends the lock of the version it wrote (remembered
    from its PUT, or, ``fresh``, found again by a new process from the version list)."""
    data = b"accepted bytes " * 100
    h, key, v1 = _save(practice, data)
    bucket = practice.config.bucket
    client.put_object(Bucket=bucket, Key=key, Body=b"ransom")  # a newer version
    b = S3Backend(practice.config, clock=SystemClock()) if fresh else practice
    assert b.load(h) == data and b.load(h, offset=15, length=15) == data[15:30]
    assert b.stat(h).size == len(data)
    client.delete_object(Bucket=bucket, Key=key)  # and a delete marker on top
    assert b.load(h, offset=0, length=8) == data[:8]
    _, until = b.retention(h) or ("", datetime.min)
    later = (until + timedelta(days=3)).replace(microsecond=0)
    time.sleep(1.05)  # SeaweedFS moves a version's LastModified to when its retention changed:
    b.extend_retention(h, later)  # the accepted version now looks newer than the intruder's
    r = admin.get_object_retention(Bucket=bucket, Key=key, VersionId=v1)["Retention"]
    assert r["RetainUntilDate"] == later  # the accepted version's lock grew, not the intruder's
    # still listed, with the accepted size (an index rebuilt from storage alone keeps it)
    assert [(f.name, f.size) for f in b.list(FileType.DATA)] == [(h.name, len(data))]
    # and a process started after the extension still finds the accepted version
    later_process = S3Backend(practice.config, clock=SystemClock())
    assert later_process.load(h) == data and later_process.stat(h).size == len(data)
    assert [(f.name, f.size) for f in S3Backend(practice.config, clock=SystemClock()).list(FileType.DATA)] \
        == [(h.name, len(data))]
    later_process.close()
    if fresh:
        b.close()


def test_listing_pages_through_versions_and_names_each_object_once(practice: S3Backend, client: Any) -> None:
    saved = [_save(practice, bytes([65 + i]) * (100 + i)) for i in range(3)]
    bucket = practice.config.bucket
    for _, key, _ in saved[:2]:  # newer versions: a key's versions now span pages of one entry
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
        client.put_object(Bucket=bucket, Key=key, Body=b"yy")
    fresh = S3Backend(practice.config, clock=SystemClock())
    fresh.list_page_size = 1
    listed = sorted((f.name, f.size) for f in fresh.list(FileType.DATA))
    assert listed == sorted((h.name, 100 + i) for i, (h, _, _) in enumerate(saved))
    assert all(fresh.load(h) == bytes([65 + i]) * (100 + i) for i, (h, _, _) in enumerate(saved))
    fresh.close()


def test_client_cannot_change_bucket_lock_configuration(practice: S3Backend, client: Any) -> None:
    bucket = practice.config.bucket
    assert _refused(client.put_object_lock_configuration, Bucket=bucket,
                    ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}) == "403"
    assert _refused(client.delete_bucket, Bucket=bucket) == "403"


def test_remove_succeeds_once_retention_expired(seaweed: S3Server, bucket: str, admin: Any) -> None:
    """GC path: after expiry the provider's remove deletes every version for real."""
    cfg = S3Config(seaweed.endpoint, bucket, f"lock/{uuid.uuid4().hex}", seaweed.admin.access_key,
                   seaweed.admin.secret_key, seaweed.region)
    b = S3Backend(cfg)
    data = b"short-lived"
    h = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
    key = b._key(h)
    until = datetime.now(UTC) + timedelta(seconds=2)
    admin.put_object(Bucket=bucket, Key=key, Body=data, ObjectLockMode="COMPLIANCE",
                     ObjectLockRetainUntilDate=until)
    with pytest.raises(PermissionDenied):
        b.remove(h)
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.2)
    b.remove(h)
    assert list(b.list(FileType.DATA)) == []
    assert admin.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []) == []
