#!/usr/bin/env bash
# Set up everything the tests need, then run linters, type checks, layer contracts and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = "0" ] && [ -f .ci/install-system.sh ]; then
  bash .ci/install-system.sh
fi
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
