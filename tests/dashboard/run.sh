#!/usr/bin/env bash
# The dashboard in a real browser: Debian's Chromium, headless, driven by
# playwright-core (no browser download: executablePath /usr/bin/chromium),
# against a real `phb-ledger serve` seeded by `phb-ledger demo` and a real
# `phb-ledger dashboard` reading as the demo's commissioner. test.js checks
# every page, the figures against the gRPC API (through the CLI), a flag
# dismissed through the page, the refusals (no token, cross-site POST,
# wrong CSRF token), axe-core, and saves screenshots to
# target/dashboard-screenshots/.
# Usage: tests/dashboard/run.sh   (from anywhere; exits non-zero on any failure)
#   PHB_LEDGER_BIN=/path/to/phb-ledger  use a prebuilt binary (else cargo build)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"
HERE="$REPO/tests/dashboard"

# 1. The browser: Debian's Chromium, installed if missing (as root, like CI).
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial || true)" ]; then
    apt-get -o DPkg::Lock::Timeout=300 update -qq
  fi
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null \
    || { apt-get -o DPkg::Lock::Timeout=300 update -qq \
         && apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null; }
fi
node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("Node 20 or later is needed, not " + process.version); process.exit(1) }'
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)

# 2. The binary.
if [ -n "${PHB_LEDGER_BIN:-}" ]; then
  BIN="$PHB_LEDGER_BIN"
else
  cargo build --locked --quiet --bin phb-ledger
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/phb-ledger"
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until FILE holds a line matching PATTERN (a server's "listening" line).
wait_for() {
  local file="$1" pattern="$2" pid="$3"
  for _ in $(seq 1 300); do
    if grep -q "$pattern" "$file" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "dashboard test: process $pid exited before printing '$pattern'" >&2
      cat "$file" "$file.err" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
  echo "dashboard test: timed out waiting for '$pattern' in $file" >&2
  return 1
}

# 3. A real server on a free port, in the temporary directory.
(cd "$WORK" && exec "$BIN" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.out.err") &
PIDS+=($!)
wait_for "$WORK/serve.out" "listening on" "${PIDS[0]}"
ADDR="$(sed -n 's/^phb-ledger .* listening on \(.*\)$/\1/p' "$WORK/serve.out")"

# 4. Seeded with the demo; the organisations' keys kept for the dashboard.
"$BIN" demo --server "http://$ADDR" --root-key "$WORK/phb-data/root.key" --keys-out "$WORK/keys" >"$WORK/demo.out"
ICB="$(node -e 'console.log(require(process.argv[1]).organisations.commissioner)' "$WORK/keys/demo.json")"

# 5. The dashboard, reading as the commissioner, allowed to review flags.
"$BIN" dashboard --server "http://$ADDR" --org "$ICB" --key "$WORK/keys/$ICB.key" \
  --listen 127.0.0.1:0 --allow-review >"$WORK/dash.out" 2>"$WORK/dash.out.err" &
PIDS+=($!)
wait_for "$WORK/dash.out" "/login?token=" "${PIDS[1]}"
LOGIN="$(grep -o 'http://[^ ]*/login?token=[0-9a-f]*' "$WORK/dash.out")"

# 6. The browser test.
SHOTS="${CARGO_TARGET_DIR:-$REPO/target}/dashboard-screenshots"
rm -rf "$SHOTS" && mkdir -p "$SHOTS"
status=0
PHB_BIN="$BIN" PHB_SERVER="http://$ADDR" PHB_KEYS="$WORK/keys" PHB_LOGIN="$LOGIN" PHB_SHOTS="$SHOTS" \
  timeout 150 node "$HERE/test.js" || status=$?
if [ "$status" -ne 0 ]; then
  echo "dashboard test: dashboard log (last 30 lines):" >&2
  tail -n 30 "$WORK/dash.out.err" >&2 || true
fi
exit "$status"
