"""Fixtures for detection tests: the bench builders (bench/detection/formats.py) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"  # datagen.py and detection/
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from detection import formats as fm  # noqa: E402
from rempart.detect.features import FileFeatures, FileSample, extract_features  # noqa: E402
from rempart.detect.sampling import sample_plan  # noqa: E402


def features_of(name: str, data: bytes) -> FileFeatures:
    """Features computed exactly as the archiver does: plan, capture, extract."""
    ranges = [(off, data[off : off + n]) for off, n in sample_plan(len(data))]
    return extract_features(FileSample(name, len(data), ranges))


@pytest.fixture
def rand() -> fm.Rand:
    return fm.Rand("tests")
