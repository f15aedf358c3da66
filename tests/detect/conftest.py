"""Fixtures for detection tests: the bench builders (bench/detection/formats.py) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"  # datagen.py and detection/
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from detection import formats as fm  # noqa: E402


@pytest.fixture
def rand() -> fm.Rand:
    return fm.Rand("tests")
