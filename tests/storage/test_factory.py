"""open_backend: one location string → the right backend; credentials never from the URL."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from rempart.core.clock import FakeClock
from rempart.core.errors import ConfigError, RepositoryNotFound, UserError
from rempart.storage.factory import open_backend
from rempart.storage.local import LocalBackend
from rempart.storage.s3 import S3Backend, S3Config


def test_plain_path_and_file_url(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound):
        open_backend(str(tmp_path / "repo"))
    b = open_backend(str(tmp_path / "repo"), create=True)
    assert isinstance(b, LocalBackend)
    assert (tmp_path / "repo" / "data" / "ff").is_dir()
    again = open_backend(f"file://{tmp_path / 'repo'}")
    assert isinstance(again, LocalBackend) and again.root == tmp_path / "repo"
    spaced = open_backend(f"file://{tmp_path}/with%20space", create=True)
    assert isinstance(spaced, LocalBackend) and spaced.root == tmp_path / "with space"
    with pytest.raises(UserError, match="local"):
        open_backend("file://server/share/repo")


def test_bad_locations() -> None:
    with pytest.raises(UserError):
        open_backend("")
    with pytest.raises(UserError, match="https"):
        open_backend("http://vault.example:8443/practice", vault_token="t")
    with pytest.raises(UserError, match="scheme"):
        open_backend("ftp://x/y")


def _s3cfg(**kw: Any) -> S3Config:
    return S3Config("http://127.0.0.1:9", "vault", "practices/p1", "AK", "SECRETVALUE", **kw)


def test_s3_needs_a_config_and_must_match_it() -> None:
    with pytest.raises(ConfigError, match="configuration"):
        open_backend("s3://vault/practices/p1")
    b = open_backend("s3://vault/practices/p1", s3=_s3cfg())  # no network until used
    assert isinstance(b, S3Backend) and not b.properties.retention
    assert "SECRETVALUE" not in b.properties.location
    locked = open_backend("s3://vault/practices/p1/", s3=_s3cfg(object_lock_days=30), clock=FakeClock())
    assert locked.properties.retention
    with pytest.raises(ConfigError, match="does not match"):
        open_backend("s3://other/practices/p1", s3=_s3cfg())
    with pytest.raises(ConfigError, match="does not match"):
        open_backend("s3://vault/practices/p2", s3=_s3cfg())


def test_s3_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(UserError) as ei:
        open_backend("s3://AK:LEAKED@vault/practices/p1", s3=_s3cfg())
    assert "LEAKED" not in str(ei.value)


def test_https_goes_to_the_vault_client_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class RecordingVaultBackend:
        def __init__(self, url: str, **kw: Any) -> None:
            seen.update(url=url, **kw)

    fake = types.ModuleType("rempart.storage.vaultclient")
    fake.VaultBackend = RecordingVaultBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rempart.storage.vaultclient", fake)
    with pytest.raises(ConfigError, match="token"):
        open_backend("https://vault.example:8443/dentiste-dupont")
    b = open_backend("https://vault.example:8443/dentiste-dupont", vault_token="tok", vault_ca="/ca.pem",
                     vault_pin="sha256:ab")
    assert isinstance(b, RecordingVaultBackend)
    assert seen == {"url": "https://vault.example:8443/dentiste-dupont", "token": "tok", "ca": "/ca.pem",
                    "pin": "sha256:ab"}
