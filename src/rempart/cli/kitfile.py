"""Reading and unlocking the recovery kit, with nothing of the repository code imported.

The kit's key derivation (Argon2id, 64 MiB on purpose) is the peak of memory of a restore; a
command that unlocks the kit before it imports the repository, snapshot and storage code keeps
that peak as low as it can be (``rempart restore``: 98 MiB summed PSS with the index loading
meanwhile, 87-88 MiB kit first, on the 2 GB benchmark folder; docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

from rempart.cli.context import Context
from rempart.core.errors import UserError
from rempart.crypto.kit import RecoveryKit, decrypt_kit


def load_kit(ctx: Context, path: str | None) -> RecoveryKit:
    """The kit at ``path`` (else ``REMPART_KIT``), unlocked with ``REMPART_KIT_PASSPHRASE`` or a
    passphrase typed at a prompt."""
    path = path or ctx.env.get("REMPART_KIT")
    if not path:
        raise UserError("this command needs the recovery kit", hint="pass --kit FILE (or set REMPART_KIT)")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the recovery kit {path}: {exc.strerror}") from exc
    return decrypt_kit(data, ctx.secret("REMPART_KIT_PASSPHRASE", "recovery kit passphrase"))
