"""Snapshots: trees, the archiver (backup), the restorer, the state cache, diffs.

May import repository, crypto, chunking, storage and core; not detect (a sibling): detection
plugs in through the FileObserver protocol in ``archiver``.
"""
