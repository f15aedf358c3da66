"""Rempart: ransomware-resilient, encrypted, deduplicated backups for small health practices.

Layers (imports point down only; enforced by import-linter, see pyproject.toml):

    cli
    agent | vault
    snapshot | detect
    repository
    crypto | chunking | storage
    core
"""

__version__ = "0.1.0"
