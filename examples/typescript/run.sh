#!/usr/bin/env bash
# Runs the TypeScript client against a fresh phb-ledger server, started from a
# configuration file with mutual TLS (examples/tls-setup.sh).
# Usage: examples/typescript/run.sh   (from anywhere; exits non-zero on any failure)
#   PHB_LEDGER_BIN=/path/to/phb-ledger  use a prebuilt server binary
#                                       (else: cargo build, target/debug/phb-ledger)
# Needs Node 20 or later and npm (the registry, for `npm ci`).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"
HERE="$REPO/examples/typescript"

# 1. Install exactly package-lock.json, and compile with tsc.
node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("Node 20 or later is needed, not " + process.version); process.exit(1) }'
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error && rm -rf dist && npx --no-install tsc -p .)

# 2. The server binary.
if [ -n "${PHB_LEDGER_BIN:-}" ]; then
  BIN="$PHB_LEDGER_BIN"
else
  cargo build --locked --quiet --bin phb-ledger
  BIN="$REPO/target/debug/phb-ledger"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 3. Certificates from a throwaway CA: the server's, and one per organisation
#    the client connects as (subject CN = organisation id; `root` for the
#    operator's part). The ids carry a per-run suffix, chosen here because
#    the certificates must name them.
# shellcheck source=../tls-setup.sh
. "$REPO/examples/tls-setup.sh"
RUN="$(openssl rand -hex 3)"
make_certificates "$WORK/tls" root "icb-ts-$RUN" "care-trust-$RUN"

# 4. A fresh server from WORK/phb-ledger.toml, on a free port. Without a root
#    public key it generates DATA/root.key (the operator's part of the client
#    uses it) and prints the ledger key's public half, which the operator
#    hands partners out of band.
start_server "$BIN" "$WORK"
DATA="$WORK/data"
LEDGER_KEY="$(sed -n 's/^generated the ledger key .*, public \([0-9a-f]\{64\}\)$/\1/p' "$WORK/server.out")"
if [ -z "$LEDGER_KEY" ]; then
  echo "typescript client: the server did not print the ledger key" >&2
  cat "$WORK/server.out" >&2
  exit 1
fi

# 5. The client, by host name: the server certificate names localhost.
status=0
timeout 120 node "$HERE/dist/main.js" --server "localhost:$PORT" --ledger-id "$(cat "$DATA/ledger-id")" \
  --root-key "$DATA/root.key" --ledger-key "$LEDGER_KEY" --tls-dir "$WORK/tls" --run "$RUN" \
  --proto "$REPO/proto" || status=$?
if [ "$status" -ne 0 ]; then
  echo "typescript client: server log (last 40 lines):" >&2
  tail -n 40 "$WORK/server.err" >&2
fi
exit "$status"
