"""The storage backend protocol.

Every backend stores opaque files addressed by a :class:`Handle` (type + name). The contract,
which ``rempart.testing.backend_suite`` checks for every implementation:

* ``save`` is create-only: it never replaces an existing file and raises ``AlreadyExists``
  when the name is taken. A file becomes visible atomically and only once complete (a killed
  writer leaves nothing under the final name). Durable once ``save`` returns.
* ``load`` returns ``length`` bytes from ``offset`` (the rest of the file when ``length`` is
  None); a short read raises ``IntegrityError``; a missing file raises ``NotFound``.
* ``stat`` returns the size; ``list`` yields every complete file of a type exactly once, in
  name order, never a temporary file.
* ``remove`` deletes a file; wrappers gate it by permission letters.

Names are validated before touching storage: ``config`` for the config file, 64 lowercase hex
characters for everything else. Nothing else reaches a path or an object key.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rempart.core.errors import PermissionDenied, UserError
from rempart.core.ids import is_hex_id


class FileType(str, enum.Enum):
    CONFIG = "config"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"


@dataclass(frozen=True)
class Handle:
    type: FileType
    name: str

    def __post_init__(self) -> None:
        validate_name(self.type, self.name)

    def __str__(self) -> str:
        return f"{self.type.value}/{self.name}"


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int


@dataclass(frozen=True)
class BackendProperties:
    """Capabilities described as data, not as methods."""

    connections: int = 2
    #: objects are protected by storage-level retention (S3 Object Lock)
    retention: bool = False
    #: human-readable location, safe to print (never holds a credential)
    location: str = ""


def validate_name(ftype: FileType, name: str) -> None:
    if ftype is FileType.CONFIG:
        if name != "config":
            raise UserError(f"invalid config file name {name[:80]!r}")
        return
    if not is_hex_id(name):
        raise UserError(f"invalid {ftype.value} file name {name[:80]!r}: expected 64 hex digits")


@runtime_checkable
class Backend(Protocol):
    properties: BackendProperties

    def save(self, h: Handle, data: bytes) -> None: ...

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, h: Handle) -> FileInfo: ...

    def list(self, ftype: FileType) -> Iterator[FileInfo]: ...

    def remove(self, h: Handle) -> None: ...

    def close(self) -> None: ...


# --- permission letters (BorgBackup's borgstore model) ---------------------------------
#   l list, r read, w write (create), W overwrite, D delete

ALL = "lrwWD"


@dataclass(frozen=True)
class Permissions:
    """Permission letters per file type; a missing type means no permission at all."""

    letters: dict[FileType, str] = field(default_factory=dict)

    def allows(self, ftype: FileType, letter: str) -> bool:
        return letter in self.letters.get(ftype, "")

    def require(self, ftype: FileType, letter: str, what: str) -> None:
        if not self.allows(ftype, letter):
            raise PermissionDenied(f"this credential may not {what} {ftype.value} files")

    @classmethod
    def full(cls) -> Permissions:
        return cls({t: ALL for t in FileType})

    @classmethod
    def append_only(cls) -> Permissions:
        """What a backup agent gets: create and read the plain parts, never delete."""
        return cls(
            {
                FileType.CONFIG: "lr",
                FileType.DATA: "lrw",
                FileType.INDEX: "lrw",
                FileType.SNAPSHOT: "lrw",
                FileType.LOCK: "lrwD",
            }
        )

    @classmethod
    def read_only(cls) -> Permissions:
        return cls({t: "lr" for t in FileType})
