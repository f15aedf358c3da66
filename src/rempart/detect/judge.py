"""Streaming backup judgement: each change is judged as it arrives, the backup at the end.

Per-file verdicts are local, so :meth:`RunJudge.add_change` decides them at once and keeps only a
compact row per change (path, verdict, a few flags, a fingerprint) in a SQLite database that the
caller provides: ``sqlite3.connect(":memory:")`` for small runs and tests, a file in the agent's
state folder for real backups, so memory does not grow with the number of files. The
end-of-run steps that pair files (moves, archives, replacement siblings, notes per folder, mass
deletion) are set operations over those rows and the deleted files, done by SQL and by Python
loops over cursors. This module opens no file: the connection is the caller's.
"""

from __future__ import annotations

import posixpath
import sqlite3
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rempart.detect import verdict as v
from rempart.detect.stats import NOTE_SCORE, note_name

if TYPE_CHECKING:  # annotations only
    from rempart.detect.features import FileFeatures

BATCH = 512
# Change rows kept in memory before they are written (~1 KiB each with a new file's features):
# writing from the archiver's reader threads hands the GIL back and forth once per row, so small
# runs write only at the end. 16k rows held ~19 MiB in the backup process on the 2 GiB practice
# set; 4k rows: 12 MiB less at the peak, the same time (docs/benchmarks.md, session 3).
SPILL = 4096
SCHEMA = """
CREATE TABLE chg (seq INTEGER PRIMARY KEY, path TEXT, dir TEXT, new INT, kind TEXT, damaged INT,
  ok INT, db INT, fp BLOB, arch INT, cand_kind INT, cand_inv INT, size INT, enc INT, note INT,
  used INT DEFAULT 0);
CREATE TABLE del (seq INTEGER PRIMARY KEY, path TEXT, dir TEXT, fp BLOB, fam TEXT, pairable INT,
  db INT, size INT, state INT DEFAULT 0);
"""
# Indexes for pairing changes with deletions (moves, archives, replaced siblings): only built when
# the run has deletions; the path index only when the ledger asks about paths (see finish()).
PAIR_INDEXES = """
CREATE INDEX chg_fp ON chg(fp) WHERE new = 1;
CREATE INDEX chg_dir ON chg(dir, used, seq) WHERE new = 1;
CREATE INDEX del_fp ON del(fp);
CREATE INDEX del_dir ON del(dir, state);
CREATE INDEX del_path ON del(path);
"""
PATH_INDEX = "CREATE INDEX chg_path ON chg(path)"
INDEXED = 512  # a few hundred rows are scanned faster than indexed
# del.state: 0 remaining, 1 moved (the pair of a new file), 2 archived, 3 replaced
# Moves: per fingerprint, the first new file (lowest seq) pairs with the last deletion.
_MOVE_CHG = """UPDATE chg SET kind = 'moved', damaged = 0 WHERE seq IN (SELECT c.cseq FROM
  (SELECT fp, MIN(seq) AS cseq FROM chg WHERE new = 1 GROUP BY fp) c JOIN
  (SELECT fp, MAX(seq) AS dseq FROM del WHERE fp IS NOT NULL GROUP BY fp) d ON c.fp = d.fp)"""
_MOVE_DEL = """UPDATE del SET state = 1 WHERE seq IN (SELECT d.dseq FROM
  (SELECT fp, MIN(seq) AS cseq FROM chg WHERE new = 1 GROUP BY fp) c JOIN
  (SELECT fp, MAX(seq) AS dseq FROM del WHERE fp IS NOT NULL GROUP BY fp) d ON c.fp = d.fp)"""


_NEW_ODD = frozenset({v.NEW_RANDOM, v.NEW_UNREADABLE})
_ARCHIVE_TYPES = frozenset(t for t in (*v.FAMILIES, "7z") if v.family(t) in ("zip", "7z"))


def _split(path: str) -> tuple[str, str]:
    """(posixpath.dirname, posixpath.basename) of ``path``, in one step."""
    i = path.rfind("/") + 1
    head = path[:i]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head, path[i:]


_FP_STRUCTS: dict[int, struct.Struct] = {}


def fingerprint(f: FileFeatures) -> bytes:
    """Identity of a file version for move detection: size, type and range hashes (packed as they
    are, so that equal fingerprints mean equal values)."""
    n = len(f.hashes)
    packer = _FP_STRUCTS.get(n)
    if packer is None:
        packer = _FP_STRUCTS[n] = struct.Struct(f"<q{n}q")
    try:
        return packer.pack(f.size, *f.hashes) + f.type.encode()
    except struct.error:  # values beyond 64 bits (a hand-made sketch): fall back to their text
        return repr((f.size, f.type, f.hashes)).encode()


def _new_row(fv: v.FileVerdict, cur: FileFeatures, base: str, *, fingerprint_now: bool) -> tuple[Any, ...]:
    """A new file's change row after (path, dir, new): integers, not booleans (sqlite3 binds a
    bool through its slow path). The fingerprint is packed when the row is written, unless
    ``fingerprint_now``."""
    ctype, valid, kind = cur.type, cur.valid, fv.kind
    archive = None
    if valid and ctype in _ARCHIVE_TYPES:
        archive = cur.entries if cur.entries is not None else -1
    return (
        kind, int(fv.damaged), int(bool(valid) or ctype == "text"), int(cur.db),
        fingerprint(cur) if fingerprint_now else cur, archive, int(kind in _NEW_ODD),
        int(valid is not True and ctype not in ("text", "empty")),
        cur.size, int(bool(cur.encoded)), int(cur.note >= NOTE_SCORE or note_name(base)),
    )


def judge_new_file(cur: FileFeatures, name: str) -> tuple[Any, ...]:
    """What :meth:`RunJudge.add_judged_new` takes for a new file named ``name``: its verdict and
    flags, computed where the file was read (the archiver's reading processes), so the backup
    process only stores the row. Plain ints, strings, bytes and None (it crosses a pipe)."""
    return _new_row(v.compare(None, cur), cur, name, fingerprint_now=True)


def read_verdict(name: str, size: int, sampled: Sequence[tuple[int, bytes]]) -> tuple[str, tuple[Any, ...]]:
    """What the archiver's reading processes compute for each file: its features as the JSON
    text stored with the file (:meth:`FileFeatures.to_json`) and :func:`judge_new_file` (used
    if the file turns out to be new)."""
    from rempart.detect.features import features_of  # and the format checks: in those processes only

    cur = features_of(name, size, sampled)
    return cur.to_json(), judge_new_file(cur, name)


class RunJudge:
    """Collects one backup's changes and deletions; thread-safe ``add_change``."""

    def __init__(self, db: sqlite3.Connection, spill: int = SPILL) -> None:
        self.db = db
        self.spill = spill
        self.db.executescript(SCHEMA)
        self._chg: list[tuple[Any, ...]] = []
        self._del: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self.changes = 0
        self.deletions = 0
        self._path_index = False
        self._plain_kinds: Counter[str] = Counter()  # rows kept out of SQLite (see finish)
        self._plain_healthy: set[str] = set()

    def add_change(self, path: str, prev: FileFeatures | None, cur: FileFeatures) -> v.FileVerdict:
        fv = v.compare(prev, cur)
        folder, base = _split(path)
        if prev is None:
            row: tuple[Any, ...] = (path, folder, 1, *_new_row(fv, cur, base, fingerprint_now=False))
        else:
            ctype, valid = cur.type, cur.valid
            row = (
                path, folder, 0, fv.kind, int(fv.damaged), int(bool(valid) or ctype == "text"),
                int(cur.db or prev.db), None, None, 0, 0, cur.size, int(bool(cur.encoded)), 0,
            )
        self._add(row)
        return fv

    def add_judged_new(self, path: str, judged: Sequence[Any]) -> None:
        """A new file judged already by :func:`judge_new_file` (in the process that read it)."""
        self._add((path, _split(path)[0], 1, *judged))

    def _add(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._chg.append(row)
            self.changes += 1
            if len(self._chg) >= self.spill:
                self._flush_changes()

    def add_deletions(self, deletions: Iterable[tuple[str, FileFeatures | None]]) -> None:
        for path, prev in deletions:
            row: tuple[Any, ...]
            if prev is None:
                row = (path, _split(path)[0], None, None, 0, 0, 0)
            else:
                pairable = prev.type != "pe" and bool(prev.valid or prev.type == "text")
                row = (path, _split(path)[0], fingerprint(prev), v.family(prev.type), int(pairable),
                       int(prev.db), prev.size)
            self._del.append(row)
            self.deletions += 1
            if len(self._del) >= BATCH:
                self._flush_deletions()

    def _flush_changes(self) -> None:
        rows, self._chg = self._chg, []
        self._write_changes(rows)

    def _write_changes(self, rows: list[tuple[Any, ...]]) -> None:
        # a new file's row holds its features until written: most rows of a run without
        # deletions never are, and are never fingerprinted
        self._insert(
            "INSERT INTO chg (path,dir,new,kind,damaged,ok,db,fp,arch,cand_kind,cand_inv,size,enc,note) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [r if r[7] is None or type(r[7]) is bytes else (*r[:7], fingerprint(r[7]), *r[8:]) for r in rows])

    def _keep_plain_rows(self) -> None:
        """Without deletions nothing is paired, so the buffered rows that are neither damaged nor
        a ransom note are only counted (kind) and, when healthy, remembered by path for
        :meth:`healthy_change`; only the others are written. The buffer is at most ``spill``
        rows, already in memory: an initial backup writes almost nothing to SQLite."""
        rows, self._chg = self._chg, []
        written = []
        for row in rows:
            if row[4] or row[13]:  # damaged, note
                written.append(row)
            else:
                self._plain_kinds[row[3]] += 1
                if row[5]:  # ok (and not damaged)
                    self._plain_healthy.add(row[0])
        self._write_changes(written)

    def _flush_deletions(self) -> None:
        rows, self._del = self._del, []
        self._insert("INSERT INTO del (path,dir,fp,fam,pairable,db,size) VALUES (?,?,?,?,?,?,?)", rows)

    def _insert(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        self.db.execute("SAVEPOINT batch")  # one transaction per batch (or within the caller's)
        try:
            self.db.executemany(sql, rows)
        except UnicodeEncodeError:  # a name that is not UTF-8 (see _storable): the batch again
            self.db.execute("ROLLBACK TO batch")
            self.db.executemany(sql, [tuple(map(_storable, row)) for row in rows])
        self.db.execute("RELEASE batch")

    def finish(self) -> None:
        """Write what is buffered and index the rows (call once, after the deletions, before the
        queries below). A few hundred rows are scanned faster than indexed."""
        with self._lock:
            if self.deletions:
                self._flush_changes()
            else:
                self._keep_plain_rows()
            self._flush_deletions()
        # Without deletions nothing is paired (an initial backup, most incremental ones): the
        # pairing indexes would be built for no query.
        if self.deletions and self.changes + self.deletions > INDEXED:
            self.db.executescript(PAIR_INDEXES)

    # --- end-of-run steps (call in this order) -----------------------------------------

    def match_moves(self) -> None:
        """A new file with the fingerprint of a deleted file is that file moved: per fingerprint,
        the first new file takes the last deletion (neither counts as new or deleted)."""
        if self.deletions:  # both statements read only new, fp and seq: the first cannot sway the second
            self.db.execute(_MOVE_CHG)
            self.db.execute(_MOVE_DEL)

    def cover_archives(self) -> int:
        """Deletions covered by new archives (zip a folder, then delete it): a zip covers as many
        deletions as it has members, its own folder first; a 7z only its own folder."""
        covered = 0
        last = 0
        while self.db.execute("SELECT 1 FROM del WHERE state = 0 LIMIT 1").fetchone():
            archives = self.db.execute(
                "SELECT seq, dir, arch FROM chg WHERE arch IS NOT NULL AND seq > ? ORDER BY seq LIMIT ?",
                (last, BATCH)).fetchall()
            if not archives:
                break
            for seq, folder, entries in archives:
                last = seq
                budget = entries if entries >= 0 else -1  # -1: no limit (SQLite LIMIT -1)
                near = self._cover(folder, True, budget)
                covered += near
                if entries >= 0 and budget - near > 0:
                    covered += self._cover(folder, False, budget - near)
        return covered

    def _cover(self, folder: str, inside: bool, limit: int) -> int:
        """Mark up to ``limit`` remaining deletions inside (or outside) ``folder`` as archived."""
        cur = self.db.execute(
            "UPDATE del SET state = 2 WHERE seq IN (SELECT seq FROM del WHERE state = 0 AND "
            "(? = '' OR substr(path, 1, length(?) + 1) = ? || '/') = ? ORDER BY seq LIMIT ?)",
            (folder, folder, folder, int(inside), limit))
        return cur.rowcount

    def pair_replacements(self, slack: int) -> int:
        """A valuable file deleted and replaced by an unreadable sibling in its folder."""
        replaced = 0
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT seq, path, dir, size FROM del d WHERE seq > ? AND state = 0 AND pairable = 1 AND "
                "EXISTS (SELECT 1 FROM chg c WHERE c.new = 1 AND c.dir = d.dir) ORDER BY seq LIMIT ?",
                (last, BATCH)).fetchall()
            if not rows:
                return replaced
            for seq, path, folder, size in rows:
                last = seq
                pool = self.db.execute(
                    "SELECT seq, path, size, enc FROM chg WHERE new = 1 AND dir = ? AND used = 0 AND "
                    "((cand_kind = 1 AND kind != 'moved') OR cand_inv = 1) ORDER BY seq", (folder,))
                match = next((cseq for cseq, cpath, csize, enc in pool
                              if pair_match(_text(path), size, _text(cpath), csize, bool(enc), slack)), None)
                pool.close()
                if match is not None:
                    self.db.execute("UPDATE chg SET used = 1 WHERE seq = ?", (match,))
                    self.db.execute("UPDATE del SET state = 3 WHERE seq = ?", (seq,))
                    replaced += 1

    # --- queries ---------------------------------------------------------------------------

    def kind_counts(self) -> dict[str, int]:
        counts = Counter(self._plain_kinds)
        for k, n in self.db.execute("SELECT kind, COUNT(*) FROM chg GROUP BY kind"):
            counts[str(k)] += int(n)
        return dict(counts)

    def remaining(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM del WHERE state = 0").fetchone()[0])

    def remaining_by_family(self) -> dict[str, int]:
        return {str(f): int(n) for f, n in self.db.execute(
            "SELECT fam, COUNT(*) FROM del WHERE state = 0 AND fam IS NOT NULL GROUP BY fam")}

    def damaged_count(self) -> int:
        a = self.db.execute("SELECT COUNT(*) FROM chg WHERE damaged = 1").fetchone()[0]
        b = self.db.execute("SELECT COUNT(*) FROM del WHERE state = 3").fetchone()[0]
        return int(a) + int(b)

    def damaged_database(self) -> bool:
        return bool(self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM chg WHERE damaged = 1 AND db = 1) OR "
            "EXISTS (SELECT 1 FROM del WHERE state = 3 AND db = 1)").fetchone()[0])

    def damaged(self) -> Iterator[tuple[str, str]]:
        """(path, kind) of every damaged file: changed files in arrival order, then replaced ones."""
        for path, kind in _rows(self.db, "SELECT path, kind FROM chg WHERE damaged = 1 ORDER BY seq"):
            yield _text(path), kind
        for (path,) in _rows(self.db, "SELECT path FROM del WHERE state = 3 ORDER BY seq"):
            yield _text(path), "replaced"

    def damaged_paths(self, limit: int) -> list[str]:
        return [_text(p) for (p,) in self.db.execute(
            "SELECT path FROM (SELECT path FROM chg WHERE damaged = 1 UNION ALL "
            "SELECT path FROM del WHERE state = 3) ORDER BY path LIMIT ?", (limit,))]

    def notes(self) -> Iterator[str]:
        for (p,) in _rows(self.db, "SELECT path FROM chg WHERE note = 1 ORDER BY seq"):
            yield _text(p)

    def note_counts(self) -> tuple[int, int]:
        """(ransom notes, folders holding one)."""
        n, d = self.db.execute("SELECT COUNT(*), COUNT(DISTINCT dir) FROM chg WHERE note = 1").fetchone()
        return int(n), int(d)

    def remaining_paths(self) -> Iterator[str]:
        for (p,) in _rows(self.db, "SELECT path FROM del WHERE state = 0 ORDER BY seq"):
            yield _text(p)

    def healthy_change(self, path: str) -> bool:
        """The file changed in this run and is now healthy (valid or text, not damaged)."""
        if path in self._plain_healthy:
            return True
        if not self._path_index and self.changes > INDEXED:  # asked once per ledger entry
            self.db.execute(PATH_INDEX)
            self._path_index = True
        return self.db.execute(
            "SELECT 1 FROM chg WHERE path = ? AND damaged = 0 AND ok = 1 LIMIT 1",
            (_storable(path),)).fetchone() is not None

    def deleted(self, path: str) -> bool:
        return self.db.execute("SELECT 1 FROM del WHERE path = ? LIMIT 1", (_storable(path),)).fetchone() is not None


def _storable(value: Any) -> Any:
    """``value`` as SQLite can store it: a name that was not UTF-8 on disk arrives with lone
    surrogates (Python's file-name decoding), which TEXT cannot hold, so that path is a BLOB of
    its UTF-8 with the surrogates passed through. One to one: equality and grouping by folder
    still hold (a BLOB never equals a TEXT); :func:`_text` gives the path back."""
    if type(value) is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def _text(value: Any) -> str:
    """A path as stored by :func:`_storable`, back as the ``str`` it was."""
    return value.decode("utf-8", "surrogatepass") if type(value) is bytes else str(value)


def _rows(db: sqlite3.Connection, sql: str) -> Iterator[tuple[Any, ...]]:
    """Rows of a read-only query, fetched lazily (nothing writes to these tables meanwhile)."""
    cur = db.execute(sql)
    try:
        while rows := cur.fetchmany(1000):
            yield from rows
    finally:
        cur.close()


def pair_match(old_path: str, old_size: int, new_path: str, new_size: int, new_encoded: bool, slack: int) -> bool:
    """Could the new file be the deleted one, encrypted and renamed?"""
    old_name, new_name = posixpath.basename(old_path), posixpath.basename(new_path)
    if new_name.startswith(old_name) and new_name != old_name:
        return True  # "letter.docx" -> "letter.docx.locked"
    stem = old_name.rsplit(".", 1)[0]
    if stem and new_name.rsplit(".", 1)[0] == stem:
        return True  # "letter.docx" -> "letter.crypt"
    if old_size <= new_size <= old_size + slack:
        return True  # random new name, size of the original plus a header or padding
    return new_encoded and abs(new_size - (old_size * 4 + 2) // 3) <= slack
