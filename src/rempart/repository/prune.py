"""Forget snapshots and collect unreferenced packs, without any key.

Everything here reads only the plain parts of the format: each snapshot's time, detection
verdict and sorted list of referenced blob ids, and each pack's plain header (the list of blob
ids it holds). It is what the vault does in its database (``rempart.vault.gc``), done directly on
a repository the command line opens.

Write order, so that a run killed at any instant leaves a repository that ``check`` accepts and
from which every kept snapshot restores:

1. the forgotten snapshot files are removed (their packs stay: merely unreferenced);
2. one new index file naming every surviving pack of the index files about to go is written
   (for a while two index files name the same packs: harmless, the index keeps one location);
3. the index files that name a doomed pack are removed (the doomed packs are then named by no
   index file; ``load_index`` reads their headers, like packs a killed backup left);
4. the doomed packs are removed: no kept snapshot references any blob they hold, and no index
   file names them, so ``check`` never sees a dangling reference.

A pack holding even one referenced blob stays whole. Nothing is deleted when a kept snapshot
references a blob no pack holds (a damaged repository: ``check`` first) or a snapshot file
cannot be read (its references are unknown).

A backup still running could reference packs no snapshot references yet (those it uploaded,
and those it deduplicated against): the caller holds the exclusive ``prune`` lock of
``rempart.repository.locks`` from before it lists the snapshots until the last deletion, and
passes its ``check`` as ``guard``, called before step 2 and before every pack deletion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rempart.core.clock import from_iso
from rempart.core.errors import AlreadyExists, IntegrityError, NotFound, PermissionDenied, RempartError
from rempart.repository.format import PackEntry, encode_index, parse_index
from rempart.repository.repo import Repository
from rempart.storage.base import FileInfo, FileType, Handle


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    time: float | None  # epoch seconds; None when the plain part holds no valid time
    iso: str
    suspicious: bool
    refs: tuple[bytes, ...]
    tree: bytes


def load_snapshots(repo: Repository) -> tuple[list[SnapshotInfo], list[str]]:
    """Every snapshot's plain part (checked against its name), and the names of unreadable ones."""
    out, damaged = [], []
    for fi in repo.backend.list(FileType.SNAPSHOT):
        try:
            snap, _ = repo.load_snapshot(fi.name)
        except NotFound:
            continue  # removed meanwhile
        except RempartError:
            damaged.append(fi.name)
            continue
        iso = str(snap.plain.get("time", ""))
        try:
            t: float | None = from_iso(iso).timestamp()
        except (ValueError, TypeError, OverflowError):
            t = None
        det = snap.plain.get("detection")
        suspicious = isinstance(det, dict) and det.get("verdict") == "suspicious"
        out.append(SnapshotInfo(fi.name, t, iso, suspicious, snap.refs, snap.tree))
    return out, damaged


@dataclass
class PrunePlan:
    packs_total: int = 0
    remove_packs: list[FileInfo] = field(default_factory=list)
    #: packs whose header could not be read: kept, whatever they hold
    unreadable_packs: list[str] = field(default_factory=list)
    #: index files that name a doomed or vanished pack -> the packs they name
    remove_index: dict[str, list[bytes]] = field(default_factory=dict)
    #: surviving packs of the removed index files, named again in one new index file
    reindex: dict[bytes, tuple[PackEntry, ...]] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return sum(fi.size for fi in self.remove_packs)


def plan_prune(repo: Repository, kept: Iterable[SnapshotInfo]) -> PrunePlan:
    """Which packs and index files go, given the snapshots that stay. Reads, never writes."""
    referenced: set[bytes] = set()
    for s in kept:
        referenced.update(s.refs)
        referenced.add(s.tree)
    plan = PrunePlan()
    headers: dict[bytes, tuple[PackEntry, ...]] = {}
    held: set[bytes] = set()
    present: set[bytes] = set()
    for fi in repo.backend.list(FileType.DATA):
        plan.packs_total += 1
        present.add(bytes.fromhex(fi.name))
        try:
            entries = repo.read_pack_header(fi.name, fi.size).entries
        except NotFound:
            continue
        except RempartError:
            plan.unreadable_packs.append(fi.name)
            continue
        ids = [e.id for e in entries]
        held.update(ids)
        headers[bytes.fromhex(fi.name)] = entries
        if not any(i in referenced for i in ids):
            plan.remove_packs.append(fi)
    missing = len(referenced - held)
    if missing and not plan.unreadable_packs:
        raise IntegrityError(f"the kept snapshots reference {missing} blob(s) that no pack holds; nothing was deleted",
                             hint="run 'rempart check' and repair the repository before pruning")
    if missing:
        raise IntegrityError(f"{len(plan.unreadable_packs)} pack(s) cannot be read and the kept snapshots reference "
                             f"{missing} blob(s) found in no readable pack; nothing was deleted",
                             hint="run 'rempart check' first")
    doomed = {bytes.fromhex(fi.name) for fi in plan.remove_packs}
    for fi in repo.backend.list(FileType.INDEX):
        try:
            packs = [p for p, _ in parse_index(repo.backend.load(Handle(FileType.INDEX, fi.name)))]
        except NotFound:
            continue
        except RempartError:
            continue  # damaged: check reports it; never rewritten from what it might have said
        if any(p in doomed or p not in present for p in packs):
            plan.remove_index[fi.name] = packs
            for p in packs:
                if p in headers and p not in doomed:
                    plan.reindex[p] = headers[p]
    return plan


@dataclass
class PruneResult:
    new_index: str | None = None
    removed_index: list[str] = field(default_factory=list)
    removed_packs: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    #: files the storage refused to delete (S3 Object Lock, file-system flags): left in place
    refused: list[str] = field(default_factory=list)
    #: snapshots that appeared while pruning (a backup ran meanwhile): no pack was deleted
    newcomers: list[str] = field(default_factory=list)


def remove_snapshots(repo: Repository, names: Iterable[str], done: Callable[[str], None] | None = None) -> list[str]:
    """Remove snapshot files one by one (a refusal by the storage propagates at once)."""
    removed = []
    for name in names:
        try:
            repo.backend.remove(Handle(FileType.SNAPSHOT, name))
        except NotFound:
            pass
        removed.append(name)
        if done:
            done(name)
    return removed


def execute_prune(repo: Repository, plan: PrunePlan, known: set[str] | None = None,
                  progress: Callable[[int], None] | None = None,
                  guard: Callable[[], None] | None = None) -> PruneResult:
    """Steps 2-4 of the module's write order (call after the forgotten snapshots are gone).

    ``guard`` (the prune lock's ``check``) raises to stop before the next irreversible step when
    the lock can no longer be trusted (this process was paused past its lifetime): what is done
    so far leaves a valid repository. ``known``: every snapshot name seen when planning; before
    step 4 the snapshot list is read again and, if a snapshot appeared meanwhile (a backup that
    ran without a lock the prune could see), no pack is deleted: a second line of defence."""
    check = guard or (lambda: None)
    res = PruneResult()
    check()
    if plan.reindex:
        data = encode_index(sorted(plan.reindex.items()))
        res.new_index = hashlib.sha256(data).hexdigest()
        try:
            repo.backend.save(Handle(FileType.INDEX, res.new_index), data)
        except AlreadyExists:
            pass
    protected: set[bytes] = set()  # named by an index file the storage would not delete
    for name, packs in plan.remove_index.items():
        if name == res.new_index:
            continue
        try:
            repo.backend.remove(Handle(FileType.INDEX, name))
        except NotFound:
            pass
        except PermissionDenied:
            res.refused.append(f"index/{name}")
            protected.update(packs)
            continue
        res.removed_index.append(name)
    if known is not None:
        res.newcomers = [fi.name for fi in repo.backend.list(FileType.SNAPSHOT) if fi.name not in known]
        if res.newcomers:
            return res
    for fi in plan.remove_packs:
        if bytes.fromhex(fi.name) in protected:
            continue
        check()
        try:
            repo.backend.remove(Handle(FileType.DATA, fi.name))
        except NotFound:
            pass
        except PermissionDenied:
            res.refused.append(f"data/{fi.name}")
            continue
        res.removed_packs.append(fi.name)
        res.bytes_freed += fi.size
        if progress:
            progress(len(res.removed_packs))
    return res
