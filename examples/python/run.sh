#!/usr/bin/env bash
# Runs the payroll example against a fresh phb-ledger server, started from a
# configuration file with mutual TLS (examples/tls-setup.sh).
# Usage: examples/python/run.sh   (from anywhere; exits non-zero on any failure)
#   PHB_LEDGER_BIN=/path/to/phb-ledger  use a prebuilt server binary
#                                       (else: cargo build, target/debug/phb-ledger)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"
HERE="$REPO/examples/python"

# 1. Python packages, pinned, in a venv under target/ (reused while it matches
#    requirements.txt).
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
VENV="$REPO/target/examples-python-venv"
STAMP="$VENV/.requirements.txt"
if ! { [ -x "$VENV/bin/python" ] && cmp -s "$HERE/requirements.txt" "$STAMP"; }; then
  rm -rf "$VENV"
  mkdir -p "$REPO/target"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-warn-script-location -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$STAMP"
fi
PY="$VENV/bin/python"

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
#    the program connects as (subject CN = organisation id; `root` for the
#    operator's registrations). The ids carry a per-run suffix, chosen here
#    because the certificates must name them.
# shellcheck source=../tls-setup.sh
. "$REPO/examples/tls-setup.sh"
RUN="$(openssl rand -hex 3)"
make_certificates "$WORK/tls" root "icb-example-$RUN" "payroll-co-$RUN"

# 4. A fresh server from WORK/phb-ledger.toml, on a free port. Without a root
#    public key it generates DATA/root.key; the operator's part (registering
#    organisations) uses it.
start_server "$BIN" "$WORK"
DATA="$WORK/data"

# 5. Stubs generated from proto/ at run time.
STUBS="$WORK/stubs"
mkdir -p "$STUBS" "$WORK/spool"
"$PY" -m grpc_tools.protoc -I"$REPO/proto" --python_out="$STUBS" --grpc_python_out="$STUBS" \
  "$REPO/proto/phb/ledger/v1/ledger.proto"

# 6. The payroll provider's program, by host name: the server certificate
#    names localhost.
status=0
PYTHONPATH="$STUBS" timeout 120 "$PY" "$HERE/payroll_run.py" --server "localhost:$PORT" \
  --ledger-id "$(cat "$DATA/ledger-id")" --root-key "$DATA/root.key" \
  --tls-dir "$WORK/tls" --run "$RUN" --spool "$WORK/spool" || status=$?
if [ "$status" -ne 0 ]; then
  echo "payroll example: server log (last 40 lines):" >&2
  tail -n 40 "$WORK/server.err" >&2
fi
exit "$status"
