"""rempart status: one line for the practice (green/orange/red), ``--json`` for tools."""

from __future__ import annotations

import argparse
from pathlib import Path

from rempart.cli.context import Context

EXIT = {"green": 0, "orange": 1, "red": 2}


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true", help="do not ask the vault, use the local record only")


def run(args: argparse.Namespace, ctx: Context) -> int:
    from rempart.agent.config import load_config
    from rempart.agent.connect import is_vault, reporter_for
    from rempart.agent.enroll import CONFIG_FILE
    from rempart.agent.state import load_state
    from rempart.agent.status import compute
    from rempart.core.errors import RempartError

    config = load_config(Path(args.config or ctx.env.get("REMPART_CONFIG") or ctx.state_dir / CONFIG_FILE), ctx.env)
    state = load_state(ctx.state_dir)
    vault, error = None, None
    reporter = None if args.local else reporter_for(config, ctx.clock)
    if reporter is not None:
        try:
            vault = reporter.status()
        except RempartError as exc:
            error = exc.reference
    st = compute(config.status, state, ctx.clock.now(), vault, error, is_vault(config.repository.url))
    if ctx.json:
        from rempart.cli.common import print_json

        print_json(st.to_dict())
    else:
        print(st.line())
    return EXIT[st.level]
