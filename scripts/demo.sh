#!/usr/bin/env bash
# Rempart demo: set up, start a local vault (HTTPS, self-signed, pinned), enroll a practice,
# back up a generated dental-practice folder twice (a working day in between), then restore it
# on a "wiped machine" (empty state, restore token + recovery kit only) and compare; then a
# restore drill (recorded in the vault) and the vault's keyless scrub.
# Everything lives in DEMO_DIR (default: a fresh temporary folder); the vault stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
R="$PWD/.venv/bin/rempart"
PY="$PWD/.venv/bin/python"
DEMO=${DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/rempart-demo.XXXXXX")}
PORT=${DEMO_PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
SIZE=${DEMO_SIZE_MB:-50}
mkdir -p "$DEMO"
echo "== demo folder: $DEMO"

cat > "$DEMO/vault.toml" <<TOML
data_dir = "vault-data"
[listen]
host = "127.0.0.1"
port = $PORT
TOML
"$R" vault practice add cabinet-dupont --config "$DEMO/vault.toml" --json > "$DEMO/tokens.json"
"$R" vault serve --config "$DEMO/vault.toml" > "$DEMO/vault.log" 2>&1 &
VAULT_PID=$!
trap 'kill $VAULT_PID 2>/dev/null; wait $VAULT_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if $PY - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PYEOF
  sleep 0.1
done
token() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens'][sys.argv[2]])" "$DEMO/tokens.json" "$1"; }

export REMPART_REPOSITORY="https://127.0.0.1:$PORT/cabinet-dupont"
export REMPART_VAULT_PIN=$("$R" vault fingerprint --config "$DEMO/vault.toml")
export REMPART_KIT_PASSPHRASE=${REMPART_KIT_PASSPHRASE:-demo passphrase, change me}
export REMPART_STATE_DIR="$DEMO/practice-pc-state"

echo "== generating ${SIZE} MB of practice data"
$PY bench/datagen.py generate "$DEMO/practice" --size-mb "$SIZE" --seed 1

echo "== practice PC: init (writes the recovery kit for the IT provider) and first backup"
REMPART_VAULT_TOKEN=$(token backup) "$R" init --kit "$DEMO/recovery-kit.json" --printable "$DEMO/recovery-kit.txt"
REMPART_VAULT_TOKEN=$(token backup) "$R" backup "$DEMO/practice"
$PY bench/datagen.py mutate "$DEMO/practice" --day 1
echo "== one working day later"
REMPART_VAULT_TOKEN=$(token backup) "$R" backup "$DEMO/practice"
REMPART_VAULT_TOKEN=$(token backup) "$R" snapshots

echo "== the backup token cannot read old backups or delete anything"
if REMPART_VAULT_TOKEN=$(token backup) "$R" restore latest --target "$DEMO/nope" --kit "$DEMO/recovery-kit.json" 2>/dev/null; then
  echo "unexpected: a backup token could restore"; exit 1
fi

echo "== wiped machine: restore with the restore token and the offline kit"
export REMPART_STATE_DIR="$DEMO/new-pc-state"
REMPART_VAULT_TOKEN=$(token restore) "$R" check --read-data --kit "$DEMO/recovery-kit.json"
REMPART_VAULT_TOKEN=$(token restore) "$R" restore latest --target "$DEMO/restored" --kit "$DEMO/recovery-kit.json"
diff -r "$DEMO/practice" "$DEMO/restored$DEMO/practice" && echo "== restored copy is identical to the source"

echo "== monthly restore drill (IT provider's machine), recorded in the vault; the vault's keyless scrub"
mkdir -p "$DEMO/scratch"
REMPART_VAULT_TOKEN=$(token restore) "$R" drill --kit "$DEMO/recovery-kit.json" --scratch "$DEMO/scratch"
"$R" vault scrub --config "$DEMO/vault.toml"

echo "== the practice takes a copy of its repository (no key; restore token) and restores from it alone"
REMPART_VAULT_TOKEN=$(token restore) "$R" mirror --to "$DEMO/usb-copy"
"$R" -r "$DEMO/usb-copy" restore latest --target "$DEMO/restored-from-copy" --kit "$DEMO/recovery-kit.json"
diff -r "$DEMO/practice" "$DEMO/restored-from-copy$DEMO/practice" && echo "== the copy restores identically, without the vault"
