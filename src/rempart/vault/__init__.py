"""The vault server: append-only, multi-practice storage with retention and GC, without keys.

Owns the HTTP app (``app``, ``routes_*``), its service layer (``service``, ``practices``,
``gc``, ``retention``, ``reindex``), the metadata database (``db``), tokens, audit trail, TLS,
limits and metrics. May import ``rempart.core``, ``rempart.storage`` and the plain formats of
``rempart.repository``; never ``rempart.crypto``, ``rempart.snapshot``, ``rempart.agent`` or
``rempart.chunking`` (import-linter enforces it).
"""
