"""Ransomware detection: pure functions over sampled file bytes.

The archiver captures a few byte ranges of every changed file while it reads it for chunking
(:func:`rempart.detect.sampling.sample_plan`), turns them into a small
:class:`rempart.detect.features.FileFeatures` sketch kept in the tree, compares each file with its
previous sketch (:func:`rempart.detect.verdict.compare`) and judges the whole backup
(:func:`rempart.detect.assess.assess_backup`) with a :class:`rempart.detect.ledger.DamageLedger`
carried from backup to backup. Nothing here reads storage, keys or the clock: see docs/detection.md.
"""
