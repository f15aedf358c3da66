"""A stand-in for the archiver's detection path: walk, find changed files, sample, assess.

A file is re-read when its (size, mtime_ns, ctime_ns, inode) changed; it counts as changed when
its content hash differs. Features are computed exactly as the archiver will: the ranges of
``sample_plan`` captured from the bytes read for hashing, ``FileSample`` and ``extract_features``.
Timing separates read+hash (the proxy for backup work) from detection (sampling, features,
assessment).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import blake3
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rempart.detect.assess import BackupAssessment, Deletion, FileChange, assess_backup
from rempart.detect.canary import check_canaries
from rempart.detect.features import FileFeatures, FileSample, extract_features
from rempart.detect.ledger import DamageLedger
from rempart.detect.sampling import sample_plan
from rempart.detect.verdict import family

_KEY = bytes(32)
_NONCE = bytes(12)  # timing only: nothing is stored


@dataclass
class Entry:
    key: tuple[int, int, int, int]
    digest: bytes
    features: FileFeatures


@dataclass
class Timing:
    read_hash: float = 0.0
    pipeline: float = 0.0  # read+hash plus zstd(3) and AES-256-GCM of the bytes (when measured)
    detect: float = 0.0
    bytes_read: int = 0
    files_read: int = 0

    def add(self, other: Timing) -> None:
        self.read_hash += other.read_hash
        self.pipeline += other.pipeline
        self.detect += other.detect
        self.bytes_read += other.bytes_read
        self.files_read += other.files_read


@dataclass
class Backuper:
    root: Path
    canaries: dict[str, str] = field(default_factory=dict)  # rel path -> sha256 hex
    index: dict[str, Entry] = field(default_factory=dict)
    ledger: DamageLedger = field(default_factory=DamageLedger)
    snapshots: list[str] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    pipeline: bool = False  # also time compression and encryption of the changed bytes

    def walk(self) -> dict[str, os.stat_result]:
        out = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                out[rel] = os.stat(full)
        return out

    def adopt(self, base: dict[str, Entry]) -> None:
        """Take over a copied tree's index without re-reading it (same content, new inodes)."""
        for rel, st in self.walk().items():
            e = base[rel]
            self.index[rel] = Entry((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino), e.digest, e.features)
        self.snapshots.append("s0000")

    def _read(self, rel: str, size: int, timing: Timing) -> tuple[bytes, bytes, FileSample]:
        t0 = time.process_time()
        with open(self.root / rel, "rb") as f:
            data = f.read()
        digest = blake3.blake3(data).digest()
        t1 = time.process_time()
        plan = sample_plan(len(data))
        sample = FileSample(os.path.basename(rel), len(data), [(o, data[o : o + n]) for o, n in plan])
        t2 = time.process_time()
        timing.read_hash += t1 - t0
        timing.detect += t2 - t1
        if self.pipeline:
            packed = zstandard.ZstdCompressor(level=3).compress(data)
            AESGCM(_KEY).encrypt(_NONCE, packed, None)
            timing.pipeline += time.process_time() - t2 + (t1 - t0)
        timing.bytes_read += len(data)
        timing.files_read += 1
        return data, digest, sample

    def backup(self, when: datetime, *, count_timing: bool = True) -> BackupAssessment:
        timing = Timing()
        stats = self.walk()
        new_index: dict[str, Entry] = {}
        changes: list[FileChange] = []
        observed: dict[str, str | None] = dict.fromkeys(self.canaries)
        for rel, st in stats.items():
            key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            old = self.index.get(rel)
            if old is not None and old.key == key:
                new_index[rel] = old
                if rel in self.canaries:
                    observed[rel] = old.digest.hex()
                continue
            data, digest, sample = self._read(rel, st.st_size, timing)
            if rel in self.canaries:
                observed[rel] = digest.hex()
                new_index[rel] = Entry(key, digest, old.features if old else FileFeatures("text", len(data)))
                continue
            if old is not None and old.digest == digest:
                new_index[rel] = Entry(key, digest, old.features)
                continue
            t0 = time.process_time()
            feats = extract_features(sample)
            timing.detect += time.process_time() - t0
            new_index[rel] = Entry(key, digest, feats)
            changes.append(FileChange(rel, old.features if old else None, feats))
        deletions = [Deletion(rel, e.features) for rel, e in self.index.items() if rel not in stats and rel not in self.canaries]
        families = Counter(family(e.features.type) for rel, e in self.index.items() if rel not in self.canaries)
        t0 = time.process_time()
        status = None
        if self.canaries:
            present = {e.digest.hex(): rel for rel, e in new_index.items()}
            status = check_canaries(self.canaries, observed, present)
            for rel, digest in list(self.canaries.items()):  # follow canaries moved with their folder
                if observed.get(rel) is None and digest in present:
                    del self.canaries[rel]
                    self.canaries[present[digest]] = digest
        result = assess_backup(
            changes,
            deletions,
            total_files=len(stats) - len(self.canaries),
            ledger=self.ledger,
            time=when,
            parent=self.snapshots[-1] if self.snapshots else None,
            canaries=status,
            family_counts=families,
        )
        timing.detect += time.process_time() - t0
        if count_timing:
            self.timing.add(timing)
        self.ledger = result.ledger
        self.index = new_index
        self.snapshots.append(f"s{len(self.snapshots):04d}")
        return result
