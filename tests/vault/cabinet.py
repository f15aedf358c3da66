"""A practice folder backed up to a real vault through the CLI, for the restore tests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

PASS = "a long and private passphrase"


def rempart(repo: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rempart.cli.main", "-q", "-r", repo, *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def back_up_cabinet(vault: Any, tmp_path: Path, *, seed: int, folders: int, files: int, sizes: tuple[int, int],
                    init: tuple[str, ...] = (), backup: tuple[str, ...] = ()) -> tuple[str, str, dict[str, str], Path]:
    """Start ``vault``, add a practice and back up ``folders`` x ``files`` random files of
    ``sizes`` bytes plus a 3 MiB scan. Returns (practice, repository URL, environment with the
    restore token, source folder); the kit is ``tmp_path / "kit"``."""
    vault.start()
    name, toks = vault.add_practice()
    rng = random.Random(seed)
    src = tmp_path / "cabinet"
    for d in range(folders):
        (src / f"dossier-{d}").mkdir(parents=True)
        for i in range(files):
            (src / f"dossier-{d}" / f"note-{i:03d}.bin").write_bytes(rng.randbytes(rng.randint(*sizes)))
    (src / "scan.bin").write_bytes(rng.randbytes(3 * 2**20))
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_KIT_PASSPHRASE": PASS, "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    for args in (("init", "--kit", str(tmp_path / "kit"), *init), ("backup", str(src), *backup)):
        r = rempart(repo, env, *args)
        assert r.returncode in (0, 30), r.stderr
    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    return name, repo, env, src
