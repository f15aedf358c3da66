"""The vault's OpenAPI document, as checked in at docs/openapi.json.

Regenerate after changing a route: ``python -m rempart.vault.openapi docs/openapi.json``.
tests/vault/test_openapi.py fails while the checked-in file is stale.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rempart.core.clock import FakeClock


def build_spec() -> dict[str, Any]:
    from rempart.vault.app import create_app
    from rempart.vault.config import parse_config

    with tempfile.TemporaryDirectory(prefix="rempart-openapi-") as d:
        app = create_app(parse_config({"tls": {"enabled": False}}, Path(d)), FakeClock())
        spec: dict[str, Any] = app.openapi()
        app.state.vault.engine.dispose()
    return spec


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render(build_spec())
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
