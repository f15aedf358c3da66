"""The repository config (plain JSON, create-only) and its creation."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from rempart.chunking.fastcdc import ChunkerParams
from rempart.core.errors import IntegrityError, NotFound, RepositoryNotFound
from rempart.crypto.keys import IdKey, RecoveryPrivateKey, RecoveryPublicKey
from rempart.storage.base import Backend, FileType, Handle

CONFIG = Handle(FileType.CONFIG, "config")
#: 10 MiB: each reading process fills one pack buffer of this size and a spare one is being
#: stored, the largest part of a backup's memory (2 GiB practice folder, summed peak PSS:
#: 12 MiB packs 132/133 MiB, 10 MiB 126/127, same time; 16 MiB packs cost 12 MiB more than 12)
DEFAULT_PACK_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class RepoConfig:
    id: str
    created: str
    public_key: RecoveryPublicKey
    sealed_id_key: bytes
    chunker: ChunkerParams
    pack_size: int = DEFAULT_PACK_SIZE
    compression: int = 3

    def to_bytes(self) -> bytes:
        doc = {
            "version": 1,
            "id": self.id,
            "created": self.created,
            "recovery_public_key": base64.b64encode(self.public_key.raw).decode(),
            "key_fingerprint": self.public_key.fingerprint.hex(),
            "sealed_id_key": base64.b64encode(self.sealed_id_key).decode(),
            "chunker": self.chunker.to_dict(),
            "pack_size": self.pack_size,
            "compression": f"zstd:{self.compression}",
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RepoConfig:
        try:
            doc = json.loads(data)
            if doc.get("version") != 1:
                raise IntegrityError(f"unsupported repository version {doc.get('version')!r}")
            comp = str(doc.get("compression", "zstd:3"))
            return cls(
                id=str(doc["id"]),
                created=str(doc["created"]),
                public_key=RecoveryPublicKey(base64.b64decode(doc["recovery_public_key"])),
                sealed_id_key=base64.b64decode(doc["sealed_id_key"]),
                chunker=ChunkerParams.from_dict(doc["chunker"]),
                pack_size=int(doc["pack_size"]),
                compression=int(comp.split(":")[1]) if comp.startswith("zstd:") else 0,
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise IntegrityError("the repository config is damaged") from exc


def new_config(
    created: str,
    private_key: RecoveryPrivateKey,
    id_key: IdKey,
    *,
    chunker: ChunkerParams | None = None,
    pack_size: int = DEFAULT_PACK_SIZE,
    compression: int = 3,
) -> RepoConfig:
    return RepoConfig(
        id=os.urandom(16).hex(),
        created=created,
        public_key=private_key.public,
        sealed_id_key=private_key.public.seal(id_key.raw),
        chunker=chunker or ChunkerParams(),
        pack_size=pack_size,
        compression=compression,
    )


def load_config(backend: Backend) -> RepoConfig:
    try:
        data = backend.load(CONFIG)
    except NotFound:
        raise RepositoryNotFound(
            f"no repository at {backend.properties.location or 'this location'}",
            hint="create one with `rempart init`, or check -r / REMPART_REPOSITORY",
        ) from None
    return RepoConfig.from_bytes(data)
