"""Helpers shared by the detection tests (a unique module name: tests/conftest.py exists too)."""

from __future__ import annotations

from rempart.detect.features import FileFeatures, FileSample, extract_features
from rempart.detect.sampling import sample_plan


def features_of(name: str, data: bytes) -> FileFeatures:
    """Features computed exactly as the archiver does: plan, capture, extract."""
    ranges = [(off, data[off : off + n]) for off, n in sample_plan(len(data))]
    return extract_features(FileSample(name, len(data), ranges))
