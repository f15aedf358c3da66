"""Run the agent as an operating-system service; lower its CPU and I/O priority.

Linux: a systemd unit (``rempart agent install``). Windows: see docs/agent.md (a service
created with NSSM or ``sc.exe``); the priority class is set from inside the process.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from rempart.core.errors import UserError

UNIT_NAME = "rempart-agent.service"


def unit_text(*, python: str, config: Path, state_dir: Path, user: str | None = None, nice: int = 10) -> str:
    """The systemd unit: restarts on failure, starts after the network, low CPU and I/O priority."""
    argv = [python, "-m", "rempart.cli.main", "--config", str(config), "--state-dir", str(state_dir), "agent", "run"]
    lines = [
        "[Unit]",
        "Description=Rempart backup agent",
        "Documentation=https://rempart.local/docs/agent",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(shlex.quote(a) for a in argv),
        "Restart=always",
        "RestartSec=30",
        f"Nice={nice}",
        "IOSchedulingClass=idle",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "UMask=0077",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def install_systemd(text: str, *, unit_dir: Path = Path("/etc/systemd/system"), enable: bool = True) -> Path:
    if sys.platform != "linux":
        raise UserError("`rempart agent install` writes a systemd unit (Linux); on Windows see docs/agent.md")
    path = unit_dir / UNIT_NAME
    try:
        path.write_text(text, encoding="utf-8")
    except PermissionError:
        raise UserError(f"cannot write {path}: run as root (or use --dry-run to print the unit)") from None
    if enable:
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]):
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode:
                raise UserError(f"{' '.join(cmd)} failed: {r.stderr.strip()[:300]}")
    return path


def lower_priority(nice: int) -> None:
    """CPU niceness on POSIX (``os.nice``); below-normal priority class on Windows."""
    if nice <= 0:
        return
    if os.name == "nt":  # pragma: no cover - Windows only
        import ctypes

        below_normal = 0x00004000
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), below_normal)
        return
    current = os.nice(0)
    if current < nice:
        os.nice(nice - current)
