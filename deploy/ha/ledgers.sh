#!/usr/bin/env bash
# phb-ledger instances on the test cluster (deploy/ha/cluster.sh): one log
# in PostgreSQL, one instance holding the writer role, the others serving
# reads and naming the writer (docs/high-availability.md).
#
# Usage: deploy/ha/ledgers.sh COMMAND
#   start N          start instances l1..lN (N <= 3); l1 first, on a fresh
#                    data directory it generates the root and ledger keys;
#                    the others get l1's root public key and a copy of its
#                    ledger.key before their first start
#   start-one NAME   start instance NAME again (same flags)
#   stop             SIGTERM every instance (SIGKILL after 15 s)
#   kill NAME        SIGKILL instance NAME
#   freeze NAME      SIGSTOP instance NAME; thaw NAME: SIGCONT
#   writer           the name of the instance whose health says it writes
#   addresses        the gRPC address of every instance, comma-separated
#   pid NAME         instance NAME's process id, if running
#   bin              the phb-ledger binary used
#   first-data       l1's data directory (root.key, ledger.key, ledger-id)
#
# Environment: PHB_LEDGER_BIN (default: target/debug/phb-ledger of this
#   repository), PHB_HA_DIR (default /tmp/phb-ha; instances under
#   $PHB_HA_DIR/ledgers), PHB_HA_LEDGER_PORT (first gRPC port, default
#   50151; metrics on PHB_HA_METRICS_PORT, default 19561, and up).
#
# A binary without `--log-backend` (the file backend only) cannot share a
# log: then only l1 is started, on its own log, so load.py and verify.py
# can still be exercised.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DIR="${PHB_HA_DIR:-/tmp/phb-ha}"
LDIR="$DIR/ledgers"
BIN="${PHB_LEDGER_BIN:-$REPO/target/debug/phb-ledger}"
PORT="${PHB_HA_LEDGER_PORT:-50151}"
METRICS_PORT="${PHB_HA_METRICS_PORT:-19561}"
PY="$DIR/venv/bin/python"

log() { printf '%s ledgers: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

index() {
  case "$1" in l[1-3]) echo "${1#l}" ;; *) die "unknown instance '$1' (l1..l3)" ;; esac
}
addr() { echo "127.0.0.1:$((PORT + $(index "$1") - 1))"; }
metrics_addr() { echo "127.0.0.1:$((METRICS_PORT + $(index "$1") - 1))"; }
shared_log() { "$BIN" serve --help 2>/dev/null | grep -q -- '--log-backend'; }
configured() { cat "$LDIR/instances" 2>/dev/null || true; }
# Alive and not a zombie: a killed process lingers as one until reaped,
# and `kill -0` still succeeds on it.
running() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}
pid_of() {
  local f="$LDIR/$1/pid" p
  [ -f "$f" ] || return 0
  p="$(cat "$f")"
  if running "$p"; then echo "$p"; fi
}

start_one() {  # NAME
  local n="$1" d="$LDIR/$1"
  [ -z "$(pid_of "$n")" ] || return 0
  [ -x "$BIN" ] || die "no phb-ledger binary at $BIN (build it, or set PHB_LEDGER_BIN)"
  mkdir -p "$d/data"
  local args=(serve --data "$d/data" --listen "$(addr "$n")" --metrics-listen "$(metrics_addr "$n")")
  if [ "$n" != l1 ]; then
    # One ledger: every instance has the operator's root public key and
    # the ledger key that signs checkpoints (0600), before its first start.
    [ -f "$LDIR/l1/data/root.pub" ] || die "start l1 first: $n needs its root.pub and ledger.key"
    if [ ! -f "$d/data/ledger.key" ]; then
      install -m 600 "$LDIR/l1/data/ledger.key" "$d/data/ledger.key"
    fi
    args+=(--root-public-key "$(cat "$LDIR/l1/data/root.pub")")
  fi
  if shared_log; then
    args+=(--log-backend postgres --postgres-url "$("$HERE/cluster.sh" url)" --advertise "$(addr "$n")")
  fi
  : >"$d/stdout"
  setsid "$BIN" "${args[@]}" </dev/null >"$d/stdout" 2>>"$d/stderr" &
  echo $! >"$d/pid"
  local i
  for ((i = 0; i < 600; i++)); do
    if grep -q 'listening on' "$d/stdout" 2>/dev/null; then
      log "$n: listening on $(addr "$n") (pid $(cat "$d/pid"))"
      return 0
    fi
    running "$(cat "$d/pid")" || { tail -n 20 "$d/stderr" >&2; die "$n exited at start"; }
    sleep 0.1
  done
  tail -n 20 "$d/stderr" >&2
  die "$n did not report its address in 60 s"
}

cmd_start() {  # N
  local want="$1" n i
  if [ "$want" -lt 1 ] || [ "$want" -gt 3 ]; then die "start N: 1 to 3 instances"; fi
  if ! shared_log && [ "$want" -gt 1 ]; then
    log "$BIN has no --log-backend (file backend only): starting l1 alone"
    want=1
  fi
  mkdir -p "$LDIR"
  : >"$LDIR/instances"
  for ((i = 1; i <= want; i++)); do echo "l$i" >>"$LDIR/instances"; done
  for n in $(configured); do start_one "$n"; done
  # The writer role is taken by one of them; wait for it.
  for ((i = 0; i < 300; i++)); do
    if [ -n "$(cmd_writer)" ]; then log "writer: $(cmd_writer)"; return 0; fi
    sleep 0.2
  done
  die "no instance took the writer role in 60 s"
}

cmd_stop() {
  local n p i
  for n in $(configured); do
    p="$(pid_of "$n")"
    [ -z "$p" ] || kill -TERM "$p" 2>/dev/null || true
  done
  for n in $(configured); do
    p="$(pid_of "$n")"
    for ((i = 0; i < 150; i++)); do
      if ! running "$p"; then break; fi
      sleep 0.1
    done
    if running "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}

addresses() {
  local n out=""
  for n in $(configured); do out="${out:+$out,}$(addr "$n")"; done
  echo "$out"
}

cmd_writer() {
  local w n
  w="$("$PY" "$HERE/load.py" writer --servers "$(addresses)" 2>/dev/null)" || return 0
  for n in $(configured); do
    if [ "$(addr "$n")" = "$w" ]; then echo "$n"; return 0; fi
  done
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) [ $# -eq 1 ] || die "usage: $0 start N"; cmd_start "$1" ;;
  start-one) [ $# -eq 1 ] || die "usage: $0 start-one NAME"; index "$1" >/dev/null; start_one "$1" ;;
  stop) cmd_stop ;;
  kill)
    [ $# -eq 1 ] || die "usage: $0 kill NAME"
    p="$(pid_of "$1")"
    if [ -n "$p" ]; then
      kill -KILL "$p"
      for ((i = 0; i < 100; i++)); do running "$p" || break; sleep 0.05; done
    fi
    ;;
  freeze | thaw)
    [ $# -eq 1 ] || die "usage: $0 $cmd NAME"
    p="$(pid_of "$1")"
    if [ -n "$p" ]; then
      if [ "$cmd" = freeze ]; then kill -STOP "$p"; else kill -CONT "$p"; fi
    fi
    ;;
  writer) cmd_writer ;;
  addresses) addresses ;;
  pid) [ $# -eq 1 ] || die "usage: $0 pid NAME"; pid_of "$1" ;;
  bin) echo "$BIN" ;;
  first-data) echo "$LDIR/l1/data" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
