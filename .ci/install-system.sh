#!/usr/bin/env bash
# System packages needed by the test suite (Debian 12). Idempotent: safe to run again.
# Helpers append their own apt packages to PACKAGES below (one line each, with a comment).
set -euo pipefail

PACKAGES=(
  postgresql        # real PostgreSQL for vault index tests (rempart.testing.servers.postgres)
  mariadb-server    # real MariaDB for the agent's database-source tests (tests/agent/conftest.py)
  mariadb-client    # mariadb-dump / mariadb for the same tests
  chromium          # headless browser for the dashboard tests (tests/watch/test_browser.py, via Playwright)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# The Debian package starts a cluster of its own; the tests start private ones instead.
