"""Tree blobs: deterministic JSON listings of one directory."""

from __future__ import annotations

import hashlib
import json
import os
import stat as statmod
from dataclasses import dataclass, field
from typing import Any

from rempart.core.errors import HostilePathError, IntegrityError

KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_OTHER = "file", "dir", "symlink", "other"


@dataclass
class Node:
    name: str
    type: str
    mode: int = 0
    mtime_ns: int = 0
    size: int = 0
    content: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None
    target: str | None = None
    features: dict[str, Any] | None = None
    inode: int = 0
    #: the features as canonical JSON, when they come from the state cache unparsed
    features_raw: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "mode": self.mode, "mtime_ns": self.mtime_ns}
        if self.type == KIND_FILE:
            d["size"] = self.size
            d["content"] = [c.hex() for c in self.content]
        if self.subtree is not None:
            d["subtree"] = self.subtree.hex()
        if self.target is not None:
            d["target"] = self.target
        if self.features:
            d["features"] = self.features
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        try:
            return cls(
                name=str(d["name"]),
                type=str(d["type"]),
                mode=int(d.get("mode", 0)),
                mtime_ns=int(d.get("mtime_ns", 0)),
                size=int(d.get("size", 0)),
                content=[bytes.fromhex(c) for c in d.get("content", [])],
                subtree=bytes.fromhex(d["subtree"]) if d.get("subtree") else None,
                target=d.get("target"),
                features=d.get("features"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise IntegrityError("tree node is malformed") from exc


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


#: json.dumps' own string encoder (ASCII, the default): the same escapes, without building a
#: dict per node and sorting its keys (trees are encoded by the parent, once per folder)
_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _node_json(n: Node) -> str:
    """``canonical_json(n.to_dict())`` without the features, then the features appended last
    as canonical JSON (so cached sketches need no re-encoding), written directly: keys in
    sorted order, integers as json writes them (test_units checks it against the dict path)."""
    is_file = n.type == KIND_FILE
    parts = []
    if is_file:
        parts.append('{"content":[' + ",".join([f'"{c.hex()}"' for c in n.content]) + "],")
    else:
        parts.append("{")
    parts.append(f'"mode":{int(n.mode)},"mtime_ns":{int(n.mtime_ns)},"name":{_json_str(n.name)},')
    if is_file:
        parts.append(f'"size":{int(n.size)},')
    if n.subtree is not None:
        parts.append(f'"subtree":"{n.subtree.hex()}",')
    if n.target is not None:
        parts.append(f'"target":{_json_str(n.target)},')
    parts.append(f'"type":{_json_str(n.type)}')
    raw = n.features_raw if n.features_raw is not None else (canonical_json(n.features) if n.features else None)
    if raw is not None:
        parts.append(f',"features":{raw}')
    parts.append("}")
    return "".join(parts)


def encode_tree(nodes: list[Node]) -> bytes:
    nodes = sorted(nodes, key=lambda n: n.name)
    return ('{"nodes":[' + ",".join(_node_json(n) for n in nodes) + "]}").encode()


#: changes whenever encode_tree's output for the same nodes would change
TREE_ENCODING = b"rempart tree v1"


def tree_signature(nodes: list[Node]) -> bytes:
    """A digest of everything ``encode_tree`` writes for ``nodes``, much cheaper to compute.
    Equal signatures mean equal tree bytes: a folder whose signature matches the previous
    run's can reuse the previous tree id without encoding and hashing the tree again."""
    h = hashlib.blake2b(TREE_ENCODING, digest_size=32)
    for n in sorted(nodes, key=_name):
        raw = n.features_raw if n.features_raw is not None else (canonical_json(n.features) if n.features else "")
        content = b"".join(n.content) if n.type == KIND_FILE else b""
        target = "-1:" if n.target is None else f"{len(n.target)}:{n.target}"
        h.update(f"{len(n.name)}:{n.name}{len(n.type)}:{n.type}{n.mode}:{n.mtime_ns}:"
                 f"{n.size if n.type == KIND_FILE else 0}:{target}{len(raw)}:{raw}{len(content)}:"
                 .encode("utf-8", "surrogatepass"))
        h.update(content)
        h.update(b"N" if n.subtree is None else b"S" + n.subtree)
    return h.digest()


def _name(n: Node) -> str:
    return n.name


def decode_tree(data: bytes) -> list[Node]:
    try:
        doc = json.loads(data)
        return [Node.from_dict(n) for n in doc["nodes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError("tree blob is malformed") from exc


def kind_of(mode: int) -> str:
    if statmod.S_ISREG(mode):
        return KIND_FILE
    if statmod.S_ISDIR(mode):
        return KIND_DIR
    if statmod.S_ISLNK(mode):
        return KIND_SYMLINK
    return KIND_OTHER


_WIN_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def check_name(name: str) -> str:
    """Refuse a name that could escape or confuse the restore target."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\x00" in name
        or (os.sep != "/" and os.sep in name)
        or (os.altsep is not None and os.altsep in name)
    )
    if os.name == "nt" and not bad:
        bad = ":" in name or name.split(".")[0].lower() in _WIN_RESERVED or name.endswith((" ", "."))
    if bad:
        raise HostilePathError(f"refusing unsafe name {name[:80]!r} in snapshot")
    return name
