"""The repository: packs of encrypted blobs, the index, snapshots and the config.

``rempart.repository.format`` parses the plain (keyless) parts and imports nothing but core, so
that the vault can verify, index and collect garbage without any key. The other modules add
encryption and may import crypto, chunking and storage.
"""
