"""Repository checks.

Structure (no key): packs' plain headers parse, index files parse and name existing packs,
snapshots match their names and every blob they reference is in a pack.
Data (``ReadSession``): every pack's bytes match its name, every pack header's GMAC verifies,
every blob decrypts and matches its keyed id, every snapshot's metadata decrypts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from rempart.core.errors import RempartError
from rempart.repository.format import parse_index, parse_pack_header
from rempart.repository.index import BlobIndex
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository
from rempart.storage.base import FileType, Handle


@dataclass
class CheckReport:
    packs: int = 0
    blobs: int = 0
    snapshots: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_structure(repo: Repository, report: CheckReport) -> BlobIndex:
    index = BlobIndex(repo_id=repo.config.id)
    sizes = {}
    for fi in repo.backend.list(FileType.DATA):
        sizes[fi.name] = fi.size
        try:
            header = repo.read_pack_header(fi.name, fi.size)
            index.add_pack(bytes.fromhex(fi.name), header.entries)
            report.packs += 1
            report.blobs += len(header.entries)
        except RempartError as exc:
            report.errors.append(f"pack {fi.name[:12]}: {exc.message}")
    for fi in repo.backend.list(FileType.INDEX):
        try:
            data = repo.backend.load(Handle(FileType.INDEX, fi.name))
            if hashlib.sha256(data).hexdigest() != fi.name:
                report.errors.append(f"index {fi.name[:12]}: content does not match its name")
                continue
            for pack, _entries in list(parse_index(data)):
                if pack.hex() not in sizes:
                    report.errors.append(f"index {fi.name[:12]}: names pack {pack.hex()[:12]}, which is missing")
        except RempartError as exc:
            report.errors.append(f"index {fi.name[:12]}: {exc.message}")
    for fi in repo.backend.list(FileType.SNAPSHOT):
        try:
            snap, _ = repo.load_snapshot(fi.name)
            report.snapshots += 1
            missing = [r for r in snap.refs if r not in index]
            if missing:
                report.errors.append(f"snapshot {fi.name[:8]}: {len(missing)} referenced blob(s) missing")
            if snap.tree not in index:
                report.errors.append(f"snapshot {fi.name[:8]}: root tree missing")
        except RempartError as exc:  # load_snapshot's messages name the snapshot already
            msg = exc.message
            report.errors.append(msg if msg.startswith("snapshot ") else f"snapshot {fi.name[:8]}: {msg}")
    return index


def check_data(session: ReadSession, report: CheckReport, progress: Callable[[int], None] | None = None) -> None:
    repo = session.repo
    for fi in repo.backend.list(FileType.DATA):
        try:
            data = repo.backend.load(Handle(FileType.DATA, fi.name))
            report.bytes_read += len(data)
            if hashlib.sha256(data).hexdigest() != fi.name:
                report.errors.append(f"pack {fi.name[:12]}: content does not match its name")
                continue
            header = parse_pack_header(data, len(data))
            key = session.private_key.unwrap(header.envelope)
            key.open(header.gmac, header.authenticated)
            view = memoryview(data)
            pid = bytes.fromhex(fi.name)
            for e in header.entries:
                session.decode(pid, e.type, e.id, view[e.offset : e.offset + e.length], verify=True)
        except RempartError as exc:
            report.errors.append(f"pack {fi.name[:12]}: {exc.message}")
        if progress:
            progress(report.bytes_read)
    damaged: list[str] = []  # reported by the structure pass already
    for name, snap in repo.list_snapshots(damaged):
        try:
            session.snapshot_meta(snap)
        except RempartError as exc:
            report.errors.append(f"snapshot {name[:8]}: {exc.message}")
