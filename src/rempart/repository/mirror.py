"""Mirror a repository's stored objects into another storage, without any key.

What a practice needs when its vault is out of reach, or when it leaves its backup provider
(reversibility): the same repository, byte for byte, on a disk it holds, which ``rempart
restore`` then reads with the recovery kit like any other. Every object except the config is
named by the SHA-256 of its bytes, so each one is checked against its name before it is written:
a damaged object in the source is reported and never copied.

Consistency with a source that changes meanwhile (a backup or the vault's GC running): the
snapshots and index files are listed *before* the packs and copied *after* them. A snapshot is
written only once its packs are (the repository's write ordering), so every pack that a listed
snapshot references is in the later pack listing; a snapshot forgotten meanwhile is no longer
served and is skipped, and while it was kept its packs could not be collected. Locks are not
copied. Nothing is ever deleted from the destination, and an object already there is not
fetched again: running the mirror again copies only what is new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from rempart.core.errors import AlreadyExists, IntegrityError, NotFound, UserError
from rempart.storage.base import Backend, FileType, Handle

#: the order objects are copied in: what a snapshot references before the snapshot
ORDER = (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT)


@dataclass
class MirrorReport:
    copied: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in ORDER})
    present: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in ORDER})
    bytes_copied: int = 0
    gone: list[str] = field(default_factory=list)  # removed from the source meanwhile (GC)
    damaged: list[str] = field(default_factory=list)  # bytes that do not hash to their name
    config_created: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"copied": self.copied, "already_present": self.present, "bytes_copied": self.bytes_copied,
                "gone": self.gone, "damaged": self.damaged, "config_created": self.config_created}


Listing = dict[FileType, list[str]]


def list_source(src: Backend) -> Listing:
    """What to mirror, listed in the safe order (snapshots and index files before packs), after
    a one-byte read of a pack: a credential that may not read packs back (a vault backup token)
    fails here, before anything is written anywhere."""
    listed = {t: sorted(f.name for f in src.list(t)) for t in (FileType.SNAPSHOT, FileType.INDEX)}
    listed[FileType.DATA] = sorted(f.name for f in src.list(FileType.DATA))
    if listed[FileType.DATA]:
        try:
            src.load(Handle(FileType.DATA, listed[FileType.DATA][0]), offset=0, length=1)
        except NotFound:  # collected meanwhile by the source's GC: the copy reports it as gone
            pass
    return listed


def mirror(src: Backend, dst: Backend, *, listed: Listing | None = None, workers: int = 4,
           progress: Callable[[MirrorReport, int], None] | None = None) -> MirrorReport:
    """Copy every object of ``src`` missing from ``dst`` (see the module docstring), from
    ``listed`` (:func:`list_source`; listed now when None).

    ``progress(report, total_to_copy)`` is called after each object."""
    report = MirrorReport()
    if listed is None:
        listed = list_source(src)
    _config(src, dst, report)
    todo: list[Handle] = []
    for t in ORDER:
        have = {f.name for f in dst.list(t)}
        report.present[t.value] = sum(1 for n in listed[t] if n in have)
        todo += [Handle(t, n) for n in listed[t] if n not in have]
    total = len(todo)
    for t in ORDER:  # one type after the other: all packs are stored before any snapshot
        batch = [h for h in todo if h.type is t]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            window: list[tuple[Handle, Future[bytes | None]]] = []
            for h in batch:
                window.append((h, pool.submit(_fetch, src, h, report)))
                if len(window) >= 2 * workers:  # bounded memory: a few objects in flight
                    _store(dst, *window.pop(0), report)
                    if progress:
                        progress(report, total)
            for item in window:
                _store(dst, *item, report)
                if progress:
                    progress(report, total)
    return report


def _config(src: Backend, dst: Backend, report: MirrorReport) -> None:
    h = Handle(FileType.CONFIG, "config")
    try:
        data = src.load(h)
    except NotFound:  # not initialised yet (a vault practice before its first `rempart init`)
        return
    try:
        existing = dst.load(h)
    except NotFound:
        dst.save(h, data)
        report.config_created = True
        return
    if existing != data:
        raise UserError("the destination holds another repository (its config differs)",
                        hint="mirror into an empty folder or into an earlier mirror of this repository")


def _fetch(src: Backend, h: Handle, report: MirrorReport) -> bytes | None:
    try:
        data = src.load(h)
    except NotFound:
        report.gone.append(str(h))
        return None
    except IntegrityError:
        report.damaged.append(str(h))
        return None
    if hashlib.sha256(data).hexdigest() != h.name:
        report.damaged.append(str(h))
        return None
    return data


def _store(dst: Backend, h: Handle, fut: Future[bytes | None], report: MirrorReport) -> None:
    data = fut.result()
    if data is None:
        return
    try:
        dst.save(h, data)
    except AlreadyExists:  # written meanwhile by another mirror run: same name, same bytes
        pass
    report.copied[h.type.value] += 1
    report.bytes_copied += len(data)
