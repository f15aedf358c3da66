"""Differences between two snapshot trees; identical subtrees (same id) are skipped unread."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from rempart.snapshot.restorer import TreeReader
from rempart.snapshot.tree import KIND_DIR, Node


@dataclass(frozen=True)
class Change:
    kind: str  # "+" added, "-" removed, "M" content changed, "U" metadata only, "T" type changed
    path: str


def diff_trees(reader: TreeReader, a: bytes | None, b: bytes | None,
               prefix: PurePosixPath = PurePosixPath("/")) -> Iterator[Change]:
    if a == b:
        return
    left = {n.name: n for n in reader.tree(a)} if a else {}
    right = {n.name: n for n in reader.tree(b)} if b else {}
    for name in sorted(left.keys() | right.keys()):
        path = prefix / name
        ln, rn = left.get(name), right.get(name)
        if ln is None and rn is not None:
            yield from _all(reader, "+", rn, path)
        elif rn is None and ln is not None:
            yield from _all(reader, "-", ln, path)
        elif ln is not None and rn is not None:
            if ln.type != rn.type:
                yield from _all(reader, "-", ln, path)
                yield from _all(reader, "+", rn, path)
            elif ln.type == KIND_DIR:
                if (ln.mode, ln.mtime_ns) != (rn.mode, rn.mtime_ns) and ln.subtree == rn.subtree:
                    yield Change("U", str(path))
                yield from diff_trees(reader, ln.subtree, rn.subtree, path)
            elif ln.content != rn.content or ln.target != rn.target:
                yield Change("M", str(path))
            elif (ln.mode, ln.mtime_ns) != (rn.mode, rn.mtime_ns):
                yield Change("U", str(path))


def _all(reader: TreeReader, kind: str, node: Node, path: PurePosixPath) -> Iterator[Change]:
    yield Change(kind, str(path) + ("/" if node.type == KIND_DIR else ""))
    if node.type == KIND_DIR and node.subtree is not None:
        for p, n in reader.walk(node.subtree, path):
            yield Change(kind, str(p) + ("/" if n.type == KIND_DIR else ""))
