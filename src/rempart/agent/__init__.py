"""The agent: backup runs on the practice PC (credentials, detection wiring, schedule).

Holds no secret that can read, change or delete past backups: only the recovery public key and
the id key (see docs/design.md, key hierarchy).
"""
