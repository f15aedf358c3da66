"""The benchmark data set generator: deterministic, realistic, every file well-formed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from detect_helpers import features_of

import datagen


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generate_and_mutate_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        datagen.generate(tmp_path / name, 4, seed=7)
        datagen.mutate_day(tmp_path / name, 1, seed=7)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b and len(a) > 300
    datagen.generate(tmp_path / "c", 4, seed=8)
    assert _digests(tmp_path / "c") != a


def test_every_generated_file_is_well_formed(tmp_path: Path) -> None:
    root = tmp_path / "p"
    datagen.generate(root, 6, seed=1)
    before = _digests(root)
    datagen.mutate_day(root, 0, seed=1)
    after = _digests(root)
    kinds: dict[str, int] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            f = features_of(p.name, p.read_bytes())
            assert f.valid is True or f.type == "text" or p.name == "DENTAL.DAT", (p, f)
            kinds[f.type] = kinds.get(f.type, 0) + 1
    assert {"sqlite", "dicom", "jpeg", "docx", "xlsx", "pdf", "gzip", "pe", "text", "data"} <= set(kinds)
    changed = {k for k in after if before.get(k) != after[k]}
    assert datagen.DB in changed and datagen.DAT in changed  # the databases change every day
    assert any(k.endswith(".dcm") for k in changed - set(before))  # new X-rays
    assert set(before) - set(after)  # some deletions (old dumps, drafts)
