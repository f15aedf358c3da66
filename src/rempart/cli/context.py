"""What every command receives: settings resolved once from flags, environment and config."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rempart.core.clock import Clock, SystemClock
from rempart.core.errors import UserError


@dataclass
class Context:
    repo: str | None
    state_dir: Path
    json: bool
    quiet: bool
    env: dict[str, str] = field(repr=False)
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        env = dict(os.environ)
        repo = args.repo or env.get("REMPART_REPOSITORY")
        state = args.state_dir or env.get("REMPART_STATE_DIR")
        if not state:
            import platformdirs

            state = platformdirs.user_data_dir("rempart", appauthor=False)
        return cls(repo=repo, state_dir=Path(state), json=args.json, quiet=args.quiet or args.json, env=env)

    def require_repo(self) -> str:
        if not self.repo:
            raise UserError(
                "no repository given", hint="pass -r REPO or set REMPART_REPOSITORY"
            )
        return self.repo

    def secret(self, env_name: str, prompt: str, *, confirm: bool = False) -> str:
        """A secret from the environment, else from an interactive prompt; never from argv."""
        value = self.env.get(env_name)
        if value:
            return value
        if not sys.stdin.isatty():
            raise UserError(f"{prompt} is needed", hint=f"set {env_name} or run interactively")
        value = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} (again): ") != value:
            raise UserError("the two entries differ")
        return value

    def print(self, text: str) -> None:
        if not self.quiet:
            print(text)
