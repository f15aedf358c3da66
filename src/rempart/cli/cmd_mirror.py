"""rempart mirror --to FOLDER: copy the repository's objects into a folder, byte for byte.

A local copy of the vault (for a fast restore on site, or when the vault is out of reach) and
the reversibility export a practice takes when it leaves its backup provider: the folder is a
repository that ``rempart -r FOLDER restore`` reads with the recovery kit. Needs no key. From a
vault it needs the **restore** token (a backup token cannot read packs back). Each object is
checked against its SHA-256 name before it is written; running it again copies only what is
new; nothing is ever deleted from the folder. See ``rempart.repository.mirror``.

Exit codes: 0 done; 20 some source objects were damaged (reported, not copied).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rempart.cli.common import human_bytes, open_backend, print_json, progress_line
from rempart.cli.context import Context
from rempart.core.errors import UserError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, type=Path, metavar="FOLDER",
                   help="destination folder: empty, or an earlier mirror of this repository")


def run(args: argparse.Namespace, ctx: Context) -> int:
    from rempart.repository.mirror import MirrorReport, list_source, mirror
    from rempart.storage.local import LocalBackend

    dest: Path = args.to.expanduser()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is not a folder")
    if dest.is_dir() and not (dest / "config").is_file() and any(p.is_file() for p in dest.rglob("*")):
        # (empty folders alone are the skeleton a mirror killed before its first write leaves)
        raise UserError(f"{dest} is neither empty nor a repository", hint="mirror into an empty folder")
    src = open_backend(ctx)
    try:
        same = Path(ctx.repo or "").expanduser().resolve() == dest.resolve()
        if same:
            raise UserError("the destination is the repository itself")
        listed = list_source(src)  # before the folder is created: a token that cannot read fails first
        dst = LocalBackend(dest, create=True)
        with progress_line(ctx, "mirroring") as show:

            def progress(r: MirrorReport, total: int) -> None:
                done = sum(r.copied.values()) + len(r.gone) + len(r.damaged)
                show(f"{done}/{total} objects, {human_bytes(r.bytes_copied)}")

            report = mirror(src, dst, listed=listed, workers=max(1, src.properties.connections),
                            progress=progress)
    finally:
        src.close()
    if ctx.json:
        print_json({**report.to_dict(), "to": str(dest)})
    else:
        c = report.copied
        ctx.print(f"mirrored into {dest}: {c['data']} pack(s), {c['index']} index file(s), "
                  f"{c['snapshots']} snapshot(s) copied ({human_bytes(report.bytes_copied)}); "
                  f"{sum(report.present.values())} already there")
        if report.gone:
            ctx.print(f"{len(report.gone)} object(s) were removed from the source while mirroring (its GC)")
    for name in report.damaged:
        print(f"error: {name[:80]} does not match its name in the source: not copied (run `rempart check`)",
              file=sys.stderr)
    return 20 if report.damaged else 0
