"""rempart agent run [--once] | install [--dry-run]: the scheduled backup service."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from rempart.cli.context import Context


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="run the backup schedule from the agent configuration (a service)")
    r.add_argument("--once", action="store_true", help="one backup now (with retries), then exit")
    r.add_argument("--max-runs", type=int, default=None, help=argparse.SUPPRESS)
    i = sub.add_parser("install", help="install and enable the agent as a systemd service (Linux)")
    i.add_argument("--dry-run", action="store_true", help="print the unit instead of installing it")
    i.add_argument("--user", help="run the service as this user (default: root, to read every file)")
    i.add_argument("--unit-dir", default="/etc/systemd/system", help=argparse.SUPPRESS)
    i.add_argument("--no-enable", action="store_true", help="write the unit but do not enable/start it")


def _config_path(args: argparse.Namespace, ctx: Context) -> Path:
    from rempart.agent.enroll import CONFIG_FILE

    return Path(args.config or ctx.env.get("REMPART_CONFIG") or ctx.state_dir / CONFIG_FILE)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from rempart.agent.config import load_config

    config_path = _config_path(args, ctx)
    config = load_config(config_path, ctx.env)
    if args.agent_command == "install":
        from rempart.agent.install import install_systemd, unit_text

        text = unit_text(python=sys.executable, config=config_path.absolute(), state_dir=ctx.state_dir.absolute(),
                         user=args.user, nice=config.limits.nice)
        if args.dry_run:
            sys.stdout.write(text)
            return 0
        path = install_systemd(text, unit_dir=Path(args.unit_dir), enable=not args.no_enable)
        ctx.print(f"installed {path}" + ("" if args.no_enable else " and started the service"))
        return 0
    return _run(args, ctx, config)


def _run(args: argparse.Namespace, ctx: Context, config: object) -> int:
    from rempart.agent.config import AgentConfig
    from rempart.agent.connect import open_repository, reporter_for
    from rempart.agent.install import lower_priority
    from rempart.agent.schedule import resolve_zone
    from rempart.agent.service import AgentService

    assert isinstance(config, AgentConfig)
    logging.basicConfig(level=logging.WARNING if ctx.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s rempart-agent %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lower_priority(config.limits.nice)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack (diagnosing a hang)
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("rempart.agent").info("signal %d: stopping after the current step", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        if hasattr(signal, "SIGBREAK"):  # Windows service stop (NSSM sends Ctrl+Break)
            signal.signal(signal.SIGBREAK, on_signal)
    service = AgentService(
        config, ctx.state_dir, ctx.clock, resolve_zone(config.schedule.timezone),
        open_repo=lambda: open_repository(config, ctx.clock),
        reporter=lambda: reporter_for(config, ctx.clock), env=ctx.env, stop=stop,
    )
    if args.once:
        rec = service.run_once()
        if ctx.json:
            from rempart.cli.common import print_json

            print_json({"outcome": rec.outcome, "snapshot": rec.snapshot, "counts": rec.counts,
                        "error_class": rec.error_class, "error": rec.error})
        return {"ok": 0, "partial": 3, "suspicious": 30}.get(rec.outcome, 1)
    service.run_forever(max_runs=args.max_runs)
    return 0
