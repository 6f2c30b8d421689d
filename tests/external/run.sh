#!/usr/bin/env bash
# External-client check: a Python client written from proto/ and docs/ alone
# drives a fresh phb-ledger server and audits its log independently.
# Usage: bash tests/external/run.sh   (from anywhere; exits with check.py's status)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"

# 1. Python packages: a venv under target/ (reused while it works), or the
#    user site where the venv module is missing (Debian without python3-venv).
PKGS=(grpcio grpcio-tools grpcio-reflection grpcio-health-checking pynacl)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
VENV="$REPO/target/external-venv"
has_pkgs() { "$1" -c 'import grpc, grpc_tools.protoc, grpc_reflection, grpc_health, nacl' >/dev/null 2>&1; }
if [ -x "$VENV/bin/python" ] && has_pkgs "$VENV/bin/python"; then
  PY="$VENV/bin/python"
else
  rm -rf "$VENV"
  mkdir -p "$REPO/target"
  if python3 -m venv "$VENV" >/dev/null 2>&1 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    PY="$VENV/bin/python"
    "$PY" -m pip install --quiet --no-warn-script-location "${PKGS[@]}"
  else
    rm -rf "$VENV"
    PY=python3
    has_pkgs "$PY" || PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install --quiet --no-warn-script-location --user "${PKGS[@]}"
  fi
fi
has_pkgs "$PY" || { echo "external: cannot import grpcio/grpcio-tools/pynacl with $PY" >&2; exit 1; }

# 2. The server (debug: CI's `cargo test` has already built it). PHB_LEDGER_BIN
#    names a prebuilt binary instead.
if [ -n "${PHB_LEDGER_BIN:-}" ]; then
  BIN="$PHB_LEDGER_BIN"
else
  cargo build --locked --quiet --bin phb-ledger
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/phb-ledger"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  [ -z "$SERVER_PID" ] || stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 3. Start it on a fresh data directory without --root-public-key, so it
#    generates DATA/root.key; wait for its "listening on ADDR" line.
DATA="$WORK/data"
start_server() {
  : >"$WORK/server.out"
  "$BIN" serve --data "$DATA" --listen 127.0.0.1:0 >"$WORK/server.out" 2>>"$WORK/server.err" &
  SERVER_PID=$!
  ADDR=""
  for _ in $(seq 1 300); do
    ADDR="$(sed -n 's/^phb-ledger .* listening on \(.*\)$/\1/p' "$WORK/server.out" | head -n1)"
    [ -n "$ADDR" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "external: the server did not report its address" >&2
  cat "$WORK/server.out" "$WORK/server.err" >&2
  exit 1
}
stop_server() {  # graceful (SIGTERM), then SIGKILL after 10 s
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
start_server

# 4. Stubs from proto/ only.
STUBS="$WORK/stubs"
mkdir -p "$STUBS"
"$PY" -m grpc_tools.protoc -I"$REPO/proto" --python_out="$STUBS" --grpc_python_out="$STUBS" \
  "$REPO/proto/phb/ledger/v1/ledger.proto"

# 5. The client and the audit; then a restart on the same data and a second
#    audit (as root) that must find the same log and the head pinned before.
status=0
PYTHONPATH="$STUBS" timeout 300 "$PY" "$REPO/tests/external/check.py" "$ADDR" "$DATA" --write-head "$WORK/head" || status=$?
if [ "$status" -eq 0 ]; then
  echo "-- restart the server on the same data directory"
  stop_server
  start_server
  PYTHONPATH="$STUBS" timeout 300 "$PY" "$REPO/tests/external/check.py" "$ADDR" "$DATA" --audit-only "$WORK/head" || status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "external: server log (last 40 lines):" >&2
  tail -n 40 "$WORK/server.err" >&2
fi
exit "$status"
