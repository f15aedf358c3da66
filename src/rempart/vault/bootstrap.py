"""Open the vault's moving parts from its config: database (migrated), storage, service."""

from __future__ import annotations

from rempart.core.clock import Clock
from rempart.vault import db
from rempart.vault.config import VaultConfig
from rempart.vault.service import Vault
from rempart.vault.store import Store
from rempart.vault.watch import tables as watch_tables


def open_vault(config: VaultConfig, clock: Clock) -> Vault:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.spool_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(config.db_url)
    db.migrate(engine)
    watch_tables.migrate(engine)  # drills and alerts live beside the index, watched or not
    store = Store(config.storage, clock)
    return Vault(config, engine, store, clock)
