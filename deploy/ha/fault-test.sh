#!/usr/bin/env bash
# Fault tests on the test cluster (docs/high-availability.md): under a
# concurrent write load, one fault at a time, each followed by a settle
# period and a verification that every acknowledged write is present
# exactly once on every surviving node; then a table of the measured write
# outages and lost acknowledgements. Exit 1 if any acknowledged write was
# lost, an old primary did not step down, or a phase timed out.
#
# Usage: deploy/ha/fault-test.sh [sql|ledger]
#   sql     the bare cluster: deploy/ha/sqlload.py inserts rows with
#           synchronous commit (proves the PostgreSQL configuration)
#   ledger  phb-ledger instances on the cluster (deploy/ha/ledgers.sh):
#           deploy/ha/load.py appends signed events, deploy/ha/verify.py
#           reads every instance's log and runs the auditor (export + audit
#           verify); adds the fault "kill -9 the ledger's writer"
#           (default: ledger)
#
# The faults, in order:
#   pg-leader-kill      kill -9 every process of the Patroni leader's node
#                       (Patroni and PostgreSQL: a crashed machine); it is
#                       started again after writes resume and rejoins as a
#                       standby (pg_rewind)
#   pg-leader-freeze    SIGSTOP every process of the leader's node until
#                       another node leads (past the 20 s lock TTL), then
#                       SIGCONT: the old primary must step down
#   pg-sync-kill        kill -9 the synchronous standby's node, start it again
#   pg-postmaster-kill  kill -9 of the leader's postmaster only (as the OOM
#                       killer would): Patroni, still running, restarts it
#   ledger-writer-kill  (ledger) kill -9 the phb-ledger writer instance;
#                       another takes over; the killed one restarts as a reader
#   ledger-writer-freeze  (ledger) SIGSTOP the writer for up to 60 s, then
#                       SIGCONT: another must take over (PostgreSQL ends the
#                       frozen writer's idle session after 10 s, releasing
#                       the lock), and the old one must be fenced
#
# Environment: PHB_HA_DIR (the cluster's state dir, default /tmp/phb-ha),
#   PHB_HA_WORK (this run's files, default $PHB_HA_DIR/fault-test),
#   PHB_HA_WORKERS (concurrent writers, default 4), PHB_HA_SETTLE (seconds
#   after recovery before verifying, default 5), PHB_HA_KEEP=1 (reuse a
#   running cluster instead of a fresh one; leave it running at the end),
#   PHB_HA_FAULTS (a space-separated subset of the faults, in order),
#   PHB_LEDGER_BIN (ledger mode: the phb-ledger binary), PHB_HA_LEDGERS
#   (ledger mode: instances, default 3).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
MODE="${1:-ledger}"
case "$MODE" in sql | ledger) ;; *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;; esac
export PHB_HA_DIR="${PHB_HA_DIR:-/tmp/phb-ha}"
WORK="${PHB_HA_WORK:-$PHB_HA_DIR/fault-test}"
WORKERS="${PHB_HA_WORKERS:-4}"
SETTLE="${PHB_HA_SETTLE:-5}"
LEDGERS="${PHB_HA_LEDGERS:-3}"
if [ "$MODE" = ledger ]; then
  FAULTS="${PHB_HA_FAULTS:-pg-leader-kill pg-leader-freeze pg-sync-kill pg-postmaster-kill ledger-writer-kill ledger-writer-freeze}"
else
  FAULTS="${PHB_HA_FAULTS:-pg-leader-kill pg-leader-freeze pg-sync-kill pg-postmaster-kill}"
fi
CLUSTER="$HERE/cluster.sh"
LEDGERS_SH="$HERE/ledgers.sh"
PY="$PHB_HA_DIR/venv/bin/python"
ACKS="$WORK/acks.jsonl"
RESULTS="$WORK/results.txt"
LOAD_PID=""
FAILED=0

log() { printf '%s fault-test: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
fail() { log "FAILED: $*"; FAILED=1; }

cleanup() {
  local rc=$?
  stop_load
  if [ "${PHB_HA_KEEP:-}" != 1 ]; then
    if [ "$MODE" = ledger ]; then "$LEDGERS_SH" stop >/dev/null 2>&1 || true; fi
    "$CLUSTER" stop >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the load --------------------------------------------------------------

start_load() {
  rm -f "$WORK/stop"
  if [ "$MODE" = sql ]; then
    "$PY" "$HERE/sqlload.py" run --url "$("$CLUSTER" url)" --acks "$ACKS" --workers "$WORKERS" \
      --stop-file "$WORK/stop" 2>>"$WORK/load.log" &
  else
    "$PY" "$HERE/load.py" run --state "$WORK/load-state.json" --servers "$("$LEDGERS_SH" addresses)" \
      --acks "$ACKS" --workers "$WORKERS" --stop-file "$WORK/stop" 2>>"$WORK/load.log" &
  fi
  LOAD_PID=$!
}

stop_load() {
  [ -n "$LOAD_PID" ] || return 0
  touch "$WORK/stop"
  local i
  for ((i = 0; i < 300; i++)); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$LOAD_PID" 2>/dev/null || true
  wait "$LOAD_PID" 2>/dev/null || true
  LOAD_PID=""
}

last_ack_time() {
  [ -s "$ACKS" ] || { echo 0; return; }
  tail -n 2 "$ACKS" | sed -n 's/.*"t": *\([0-9.]*\).*/\1/p' | tail -n1
}

later() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

# Until an acknowledgement later than T arrives, or SECONDS pass.
wait_writes_after() {  # T SECONDS
  local deadline
  deadline=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$LOAD_PID" 2>/dev/null || { fail "the load generator exited (see $WORK/load.log)"; return 1; }
    if later "$(last_ack_time)" "$1"; then return 0; fi
    sleep 0.2
  done
  fail "no acknowledged write within $2 s"
  return 1
}

verify() {  # LABEL
  local out="$WORK/verify-$1.txt" rc=0
  if [ "$MODE" = sql ]; then
    "$PY" "$HERE/sqlload.py" verify --acks "$ACKS" --min-nodes 3 \
      --nodes "$("$CLUSTER" addresses)" >"$out" 2>&1 || rc=$?
  else
    # Every instance must answer: each fault's instance is back by now.
    local servers
    servers="$("$LEDGERS_SH" addresses)"
    "$PY" "$HERE/verify.py" --state "$WORK/load-state.json" --acks "$ACKS" \
      --servers "$servers" --min-instances "$(echo "$servers" | tr ',' '\n' | wc -l)" --bin "$("$LEDGERS_SH" bin)" \
      --work "$WORK/verify-$1" >"$out" 2>&1 || rc=$?
  fi
  sed 's/^/    /' "$out" >&2
  LOST="$(sed -n 's/.*LOST \([0-9]*\).*/\1/p; s/.*: FAILED: \([0-9]*\) acknowledged rows missing.*/\1/p' "$out" |
    awk '{ s += $1 } END { print s + 0 }')"
  if [ "$rc" -ne 0 ]; then
    fail "verification after $1 (details: $out)"
    [ "$LOST" -gt 0 ] || LOST="?"
  fi
}

# --- cluster helpers -------------------------------------------------------

wait_until() {  # SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$(($(date +%s) + limit))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  fail "timed out after ${limit}s waiting for $what"
  return 1
}

leader_is_not() { local l; l="$("$CLUSTER" leader)"; [ -n "$l" ] && [ "$l" != "$1" ]; }
sync_is_not() { local s; s="$("$CLUSTER" sync-standby)"; [ -n "$s" ] && [ "$s" != "$1" ]; }
# All three nodes running, one leader, one synchronous standby.
all_healthy() {
  [ "$("$CLUSTER" members | awk '$3 == "running" || $3 == "streaming"' | wc -l)" -eq 3 ] &&
    [ -n "$("$CLUSTER" leader)" ] && [ -n "$("$CLUSTER" sync-standby)" ]
}
is_replica() {  # NAME: Patroni and PostgreSQL both say it is not the primary
  "$CLUSTER" members | awk -v n="$1" '$1 == n && $2 != "leader" { found = 1 } END { exit !found }' &&
    [ "$("$CLUSTER" psql "$1" -Atqc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = t ]
}

record() {  # FAULT T0 T_END NOTE
  local o
  o="$("$PY" "$HERE/outage.py" "$ACKS" "$2" "$3")"
  local gap acked
  gap="$(echo "$o" | awk '{ print $1 }')"
  acked="$(echo "$o" | awk '{ print $4 }')"
  printf '%-20s %8s %10s %6s  %s\n' "$1" "$gap" "$acked" "$LOST" "$4" >>"$RESULTS"
  log "$1: longest write outage ${gap} s; $acked writes acknowledged in the window; lost $LOST"
}

# --- the faults ------------------------------------------------------------

# Seconds since a `now` reading, one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

fault_pg_leader_kill() {
  local l t0 t1 note
  l="$("$CLUSTER" leader)"
  log "pg-leader-kill: kill -9 every process of the leader $l (sync standby $("$CLUSTER" sync-standby))"
  t0="$(now)"
  "$CLUSTER" kill "$l"
  wait_until 90 "a new leader" leader_is_not "$l" || true
  wait_writes_after "$t0" 90 || true
  note="new leader $("$CLUSTER" leader) after $(since "$t0") s"
  log "pg-leader-kill: $note; starting $l again"
  "$CLUSTER" start-node "$l"
  wait_until 180 "$l to rejoin" is_replica "$l" || true
  wait_until 120 "a healthy cluster" all_healthy || true
  sleep "$SETTLE"
  t1="$(now)"
  verify pg-leader-kill
  record pg-leader-kill "$t0" "$t1" "$note; $l rejoined as a standby"
}

fault_pg_leader_freeze() {
  local l t0 t1 note stepped=""
  l="$("$CLUSTER" leader)"
  log "pg-leader-freeze: SIGSTOP every process of the leader $l"
  t0="$(now)"
  "$CLUSTER" freeze "$l"
  wait_until 90 "another leader while $l is frozen" leader_is_not "$l" || true
  wait_writes_after "$t0" 90 || true
  note="new leader $("$CLUSTER" leader) after $(since "$t0") s"
  log "pg-leader-freeze: $note; SIGCONT $l"
  local tc
  tc="$(now)"
  "$CLUSTER" thaw "$l"
  if wait_until 60 "$l to step down after SIGCONT" is_replica "$l"; then
    stepped="$l stepped down $(since "$tc") s after SIGCONT"
  else
    stepped="$l DID NOT step down"
    fail "$stepped"
  fi
  log "pg-leader-freeze: $stepped"
  wait_until 180 "a healthy cluster" all_healthy || true
  sleep "$SETTLE"
  t1="$(now)"
  verify pg-leader-freeze
  record pg-leader-freeze "$t0" "$t1" "$note; $stepped"
}

fault_pg_sync_kill() {
  local s t0 t1 note
  s="$("$CLUSTER" sync-standby)"
  log "pg-sync-kill: kill -9 every process of the synchronous standby $s (leader $("$CLUSTER" leader))"
  t0="$(now)"
  "$CLUSTER" kill "$s"
  wait_until 90 "another synchronous standby" sync_is_not "$s" || true
  wait_writes_after "$t0" 90 || true
  note="new synchronous standby $("$CLUSTER" sync-standby) after $(since "$t0") s"
  log "pg-sync-kill: $note; starting $s again"
  "$CLUSTER" start-node "$s"
  wait_until 180 "a healthy cluster" all_healthy || true
  sleep "$SETTLE"
  t1="$(now)"
  verify pg-sync-kill
  record pg-sync-kill "$t0" "$t1" "$note; $s rejoined"
}

fault_pg_postmaster_kill() {
  local l pm t0 t1 note
  l="$("$CLUSTER" leader)"
  pm="$("$CLUSTER" postmaster "$l")"
  [ -n "$pm" ] || { fail "no postmaster pid for the leader $l"; return; }
  log "pg-postmaster-kill: kill -9 the leader $l's postmaster ($pm), Patroni left running"
  t0="$(now)"
  kill -KILL "$pm"
  wait_writes_after "$t0" 120 || true
  wait_until 180 "a healthy cluster" all_healthy || true
  note="Patroni restarted PostgreSQL in place; leader $("$CLUSTER" leader) (was $l)"
  log "pg-postmaster-kill: $note"
  sleep "$SETTLE"
  t1="$(now)"
  verify pg-postmaster-kill
  record pg-postmaster-kill "$t0" "$t1" "$note"
}

# Not in the default list: a frozen writer (a hung process or VM) whose
# PostgreSQL session stays open, as the kernel still answers for it.
fault_ledger_writer_freeze() {
  local w t0 t1 note took="" failed_before="$FAILED"
  w="$("$LEDGERS_SH" writer)"
  [ -n "$w" ] || { fail "no ledger instance reports the writer role"; return; }
  log "ledger-writer-freeze: SIGSTOP the phb-ledger writer $w for up to 60 s"
  t0="$(now)"
  "$LEDGERS_SH" freeze "$w"
  if wait_until 60 "another writer while $w is frozen" sh -c "w=\$(\"$LEDGERS_SH\" writer); [ -n \"\$w\" ] && [ \"\$w\" != \"$w\" ]"; then
    took="another instance ($("$LEDGERS_SH" writer)) took over after $(since "$t0") s"
  else
    # Not a loss: writes wait for the frozen writer. Said in the notes.
    FAILED="$failed_before"
    took="NO takeover in 60 s"
  fi
  log "ledger-writer-freeze: $took; SIGCONT $w"
  "$LEDGERS_SH" thaw "$w"
  wait_writes_after "$t0" 90 || true
  note="$took; writer after SIGCONT: $("$LEDGERS_SH" writer)"
  sleep "$SETTLE"
  t1="$(now)"
  verify ledger-writer-freeze
  record ledger-writer-freeze "$t0" "$t1" "$note"
}

fault_ledger_writer_kill() {
  local w t0 t1 note
  w="$("$LEDGERS_SH" writer)"
  [ -n "$w" ] || { fail "no ledger instance reports the writer role"; return; }
  log "ledger-writer-kill: kill -9 the phb-ledger writer $w"
  t0="$(now)"
  "$LEDGERS_SH" kill "$w"
  if [ "$("$LEDGERS_SH" addresses | tr ',' '\n' | wc -l)" -eq 1 ]; then
    # One instance (a binary with the file backend only): nobody can take
    # over, so this measures a restart instead.
    "$LEDGERS_SH" start-one "$w"
    wait_writes_after "$t0" 90 || true
    note="single instance: restarted, writing again after $(since "$t0") s"
  else
    wait_until 90 "another writer" sh -c "w=\$(\"$LEDGERS_SH\" writer); [ -n \"\$w\" ] && [ \"\$w\" != \"$w\" ]" || true
    wait_writes_after "$t0" 90 || true
    note="new writer $("$LEDGERS_SH" writer) after $(since "$t0") s"
    log "ledger-writer-kill: $note; restarting $w"
    "$LEDGERS_SH" start-one "$w"
    if [ "$("$LEDGERS_SH" writer)" = "$w" ]; then
      note="$note; $w restarted and holds the writer role again"
    else
      note="$note; $w restarted as a reader"
    fi
  fi
  sleep "$SETTLE"
  t1="$(now)"
  verify ledger-writer-kill
  record ledger-writer-kill "$t0" "$t1" "$note"
}

# --- the run ---------------------------------------------------------------

# All of it in one function, so bash has read the whole script before it
# runs: an edit while a run is under way cannot change that run.
main() {

  if [ "${PHB_HA_KEEP:-}" != 1 ]; then
    [ "$MODE" = ledger ] && { "$LEDGERS_SH" stop >/dev/null 2>&1 || true; }
    "$CLUSTER" clean >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  mkdir -p "$WORK"
  log "starting the cluster ($PHB_HA_DIR)"
  timeout 600 "$CLUSTER" start >"$WORK/cluster-url" || { log "the cluster did not start"; exit 1; }
  if [ "$MODE" = ledger ]; then
    log "starting $LEDGERS phb-ledger instances"
    timeout 300 "$LEDGERS_SH" start "$LEDGERS" || { log "the ledger instances did not start"; exit 1; }
    log "setting up organisations and budgets"
    timeout 300 "$PY" "$HERE/load.py" setup --state "$WORK/load-state.json" --servers "$("$LEDGERS_SH" addresses)" \
      --budgets "$WORKERS" --data "$("$LEDGERS_SH" first-data)" 2>>"$WORK/load.log" ||
      { log "setup failed (see $WORK/load.log)"; exit 1; }
  fi
  printf '%-20s %8s %10s %6s  %s\n' fault "outage_s" "acked" "lost" notes >"$RESULTS"
  log "starting the load: $WORKERS concurrent writers"
  start_load
  wait_writes_after "$(now)" 60 || exit 1
  sleep 5

  for f in $FAULTS; do
    LOST=0
    case "$f" in
      pg-leader-kill) fault_pg_leader_kill ;;
      pg-leader-freeze) fault_pg_leader_freeze ;;
      pg-sync-kill) fault_pg_sync_kill ;;
      pg-postmaster-kill) fault_pg_postmaster_kill ;;
      ledger-writer-kill)
        if [ "$MODE" = ledger ]; then fault_ledger_writer_kill; else log "ledger-writer-kill: ledger mode only"; fi
        ;;
      ledger-writer-freeze)
        if [ "$MODE" = ledger ]; then fault_ledger_writer_freeze; else log "ledger-writer-freeze: ledger mode only"; fi
        ;;
      *) fail "unknown fault $f" ;;
    esac
    sleep 3
  done

  stop_load
  LOST=0
  verify final
  total="$(wc -l <"$ACKS")"
  printf '%-20s %8s %10s %6s  %s\n' "final" "-" "$total" "$LOST" "every acknowledgement of the run, after the load stopped" >>"$RESULTS"
  echo
  echo "fault test ($MODE mode, $WORKERS writers) on $(date -u +%Y-%m-%d), $(nproc) cores:"
  cat "$RESULTS"
  if awk 'NR > 1 && $4 != "0" { bad = 1 } END { exit !bad }' "$RESULTS"; then fail "acknowledged writes were lost"; fi
  if [ "$FAILED" -ne 0 ]; then
    echo "fault test: FAILED (see above and $WORK)"
    exit 1
  fi
  echo "fault test: OK"
}

main "$@"
