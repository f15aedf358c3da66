"""FileFeatures.to_json: the text kept in tree nodes and the state cache, built without ``json``.
It must be exactly ``json.dumps(to_dict(), sort_keys=True, separators=(",", ":"))``: a tree
blob's id depends on these bytes, so a different spelling would make every unchanged folder a
new tree blob."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rempart.detect.features import FileFeatures, features_of


def _canonical(f: FileFeatures) -> str:
    return json.dumps(f.to_dict(), sort_keys=True, separators=(",", ":"))


ints = st.integers(min_value=-(2**70), max_value=2**70)
text = st.text(max_size=20)  # any Unicode: quotes, backslashes, controls, astral characters
opt_bool = st.none() | st.booleans()
features = st.builds(
    FileFeatures,
    type=text, size=ints, ext=text, valid=opt_bool, why=text, enc=st.booleans(), db=st.booleans(),
    random=opt_bool, entropy=st.none() | ints, chi2=st.none() | ints,
    zr=st.none() | st.tuples(ints, ints) | st.lists(ints, max_size=4).map(tuple),
    hashes=st.lists(ints, max_size=6).map(tuple), encoded=st.none() | text, utf8=opt_bool,
    note=ints, entries=st.none() | ints,
)


@settings(max_examples=400, deadline=None)
@given(features)
def test_to_json_is_the_canonical_json_of_to_dict(f: FileFeatures) -> None:
    assert f.to_json() == _canonical(f)
    assert FileFeatures.from_dict(json.loads(f.to_json())) == FileFeatures.from_dict(f.to_dict())


odd_values: list[dict[str, Any]] = [
    {"entropy": 7.5}, {"chi2": 1e300}, {"size": True}, {"note": 2.0}, {"hashes": (1, 2.5)},
    {"zr": (True, 3)}, {"valid": 1}, {"entries": False}, {"encoded": b"b64"}, {"type": None},
]


def test_values_outside_the_declared_types_go_through_json() -> None:
    """Floats, bools where ints belong and the like (a sketch read back from an older cache)
    come out exactly as ``json`` spells them, not as the fast path would."""
    base = FileFeatures("data", 10, ".bin", hashes=(1, 2))
    for change in odd_values:
        f = base._replace(**change)
        try:
            expected = _canonical(f)
        except TypeError:  # not JSON at all (bytes): the same error as before
            continue
        assert f.to_json() == expected, change


def test_real_sketches_are_spelled_the_same() -> None:
    """Sketches of real content kinds (text with a note, random data, zeros, an empty file)."""
    samples = [
        ("LISEZ-MOI.txt", b"Vos fichiers sont chiffres. Payez en bitcoin pour la cle." * 20),
        ("random.bin", bytes(range(256)) * 64),
        ("zeros.img", bytes(8192)),
        ("empty.dat", b""),
        ("notes \u00e9t\u00e9 \"x\".md", "caf\u00e9 \u2603\n".encode() * 100),
    ]
    for name, data in samples:
        f = features_of(name, len(data), [(0, data)] if data else [])
        assert f.to_json() == _canonical(f), name
