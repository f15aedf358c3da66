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
# two worker processes (pytest-xdist): most tests wait on servers and subprocesses, so the
# suite takes ~10 minutes instead of ~14 on the 2-CPU CI machine; `-n 0` runs it in one process
.venv/bin/python -m pytest -q -n 2 "$@"
