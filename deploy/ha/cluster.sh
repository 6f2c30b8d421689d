#!/usr/bin/env bash
# A PostgreSQL test cluster for phb-ledger's high-availability work
# (docs/high-availability.md): 3 etcd members and 3 PostgreSQL 15 nodes
# under Patroni 4, all on loopback, with synchronous replication in strict
# mode, so a commit is acknowledged only once a standby has flushed it.
#
# Usage: deploy/ha/cluster.sh COMMAND
#   start            install what is missing, then start etcd and Patroni
#                    (a new cluster, or the existing one in the state dir);
#                    waits for a leader and a synchronous standby, prints
#                    the ledger's connection string
#   stop             stop every process of the cluster (data is kept)
#   clean            stop, then remove the state directory's cluster data
#   status           patronictl list
#   url              the multi-host connection string for the ledger
#   addresses        HOST:PORT of every PostgreSQL node, comma-separated
#   leader           the name of the Patroni leader (pg1..pg3), if any
#   sync-standby     the name of the synchronous standby, if any
#   pid NAME         the process ids of node NAME (pg1..pg3: Patroni, the
#                    postmaster and its children; e1..e3: etcd), one a line
#   kill NAME        SIGKILL every process of NAME (a crashed machine)
#   postmaster NAME  the process id of node NAME's postmaster
#   freeze NAME      SIGSTOP every process of NAME (a hung machine)
#   thaw NAME        SIGCONT every process of NAME
#   start-node NAME  start node NAME again (after kill)
#   psql NAME [ARGS] psql as the superuser on node NAME
#
# Environment:
#   PHB_HA_DIR   the state directory (default /tmp/phb-ha): venv, etcd and
#                PostgreSQL data, logs, pid files. As root, the `postgres`
#                user must be able to reach it (not under /root)
#   PHB_HA_IDLE_SESSION_TIMEOUT  e.g. 10s: idle_session_timeout for the
#                ledger's role (unset by default: the ledger sets 10 s on its
#                own sessions, docs/high-availability.md)
#   PHB_HA_PG_PORT, PHB_HA_API_PORT, PHB_HA_ETCD_PORT  first port of each
#                group of three (defaults 54331, 18091, 23791; etcd peers
#                use PHB_HA_ETCD_PORT+10..)
#
# Runs as root (apt-get, and PostgreSQL refuses to run as root, so Patroni
# and PostgreSQL run as the `postgres` user Debian's package creates) or as
# an ordinary user with the packages already installed.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${PHB_HA_DIR:-/tmp/phb-ha}"
PG_PORT="${PHB_HA_PG_PORT:-54331}"
API_PORT="${PHB_HA_API_PORT:-18091}"
ETCD_PORT="${PHB_HA_ETCD_PORT:-23791}"
PG_VERSION=15
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"
VENV="$DIR/venv"
SCOPE=phb-ha
NODES=(pg1 pg2 pg3)
ETCDS=(e1 e2 e3)
# Test-only credentials: loopback, throwaway data.
LEDGER_USER=phb
# An experiment, off by default (docs/high-availability.md, "A frozen
# writer"): the server ends the ledger's sessions idle this long.
IDLE_SESSION_TIMEOUT="${PHB_HA_IDLE_SESSION_TIMEOUT:-}"
LEDGER_PASSWORD=phb-ha-test
SUPER_PASSWORD=postgres-ha-test
REPL_PASSWORD=replicator-ha-test
REWIND_PASSWORD=rewind-ha-test

log() { printf '%s cluster: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

node_index() {  # pg2 -> 1, e3 -> 2
  case "$1" in
    pg[1-3]) echo $(("${1#pg}" - 1)) ;;
    e[1-3]) echo $(("${1#e}" - 1)) ;;
    *) die "unknown node '$1' (pg1..pg3, e1..e3)" ;;
  esac
}
pg_port() { echo $((PG_PORT + $(node_index "$1"))); }
api_port() { echo $((API_PORT + $(node_index "$1"))); }
etcd_client_port() { echo $((ETCD_PORT + $(node_index "$1"))); }
etcd_peer_port() { echo $((ETCD_PORT + 10 + $(node_index "$1"))); }

# The user PostgreSQL runs as: PostgreSQL refuses root.
if [ "$(id -u)" -eq 0 ]; then PG_USER=postgres; else PG_USER="$(id -un)"; fi
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

url() {
  local hosts="" n
  for n in "${NODES[@]}"; do hosts="${hosts:+$hosts,}127.0.0.1:$(pg_port "$n")"; done
  echo "postgresql://$LEDGER_USER:$LEDGER_PASSWORD@$hosts/phb?target_session_attrs=read-write&connect_timeout=2"
}

# --- installation ----------------------------------------------------------

install_packages() {
  local missing=()
  [ -x "$PG_BIN/postgres" ] || missing+=("postgresql-$PG_VERSION")
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
  /usr/bin/python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
  log "installing ${missing[*]}"
  # Debian starts a package's service on install (etcd-server's would take
  # 127.0.0.1:2379, postgresql's a cluster on 5432): the test cluster runs
  # its own processes, so forbid service starts during the install, and
  # take away the one policy file only if this script made it.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 || rc=$?
  [ -z "$made_policy" ] || rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed"
  if command -v systemctl >/dev/null 2>&1 && systemctl list-unit-files etcd.service >/dev/null 2>&1; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
}

install_venv() {
  local stamp="$VENV/.requirements.txt"
  if [ -x "$VENV/bin/patroni" ] && cmp -s "$HERE/requirements.txt" "$stamp"; then return 0; fi
  log "creating the Python venv $VENV (Patroni 4, psycopg, grpcio, PyNaCl from PyPI)"
  rm -rf "$VENV"
  # The system python, not a per-user one (pyenv under /root): the
  # postgres user must be able to run Patroni from this venv.
  /usr/bin/python3 -m venv "$VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    "$VENV/bin/python" -m pip install --quiet --no-warn-script-location -r "$HERE/requirements.txt" >&2
  cp "$HERE/requirements.txt" "$stamp"
  chmod -R a+rX "$VENV"
}

# --- configuration ---------------------------------------------------------

etcd_hosts() {
  local h="" e
  for e in "${ETCDS[@]}"; do h="${h:+$h,}127.0.0.1:$(etcd_client_port "$e")"; done
  echo "$h"
}

write_patroni_config() {  # NAME
  local n="$1" d="$DIR/$1"
  cat >"$d/patroni.yml" <<EOF
# Written by deploy/ha/cluster.sh: node $n of the phb-ledger test cluster.
scope: $SCOPE
namespace: /service/
name: $n
restapi:
  listen: 127.0.0.1:$(api_port "$n")
  connect_address: 127.0.0.1:$(api_port "$n")
etcd3:
  hosts: $(etcd_hosts)
bootstrap:
  dcs:
    # Patroni's minimums (ttl >= 20, loop_wait >= 1), so a lost leader is
    # replaced as fast as Patroni allows; retry_timeout above its minimum
    # of 3 s so a busy 2-core test machine does not demote a healthy
    # leader over one slow etcd answer (loop_wait + 2 * retry_timeout must
    # stay below ttl).
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    # Only a standby with every byte the leader reported may be promoted,
    # and in synchronous mode only the synchronous standby, which has
    # flushed every acknowledged commit.
    maximum_lag_on_failover: 0
    synchronous_mode: true
    # No standby: commits wait rather than being acknowledged with one copy.
    synchronous_mode_strict: true
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        synchronous_commit: "on"
        # No timeout may cancel a commit waiting for the standby: the
        # cancelled commit is already durable locally and the client would
        # be told it failed (Patroni's replication-modes docs).
        statement_timeout: 0
        max_connections: 100
  initdb:
    - data-checksums
    - encoding: UTF8
    - locale: C.UTF-8
    - auth-local: peer
  post_bootstrap: $DIR/post-bootstrap.sh
postgresql:
  listen: 127.0.0.1:$(pg_port "$n")
  connect_address: 127.0.0.1:$(pg_port "$n")
  data_dir: $d/data
  bin_dir: $PG_BIN
  pgpass: $d/pgpass
  authentication:
    superuser:
      username: postgres
      password: $SUPER_PASSWORD
    replication:
      username: replicator
      password: $REPL_PASSWORD
    rewind:
      username: rewinder
      password: $REWIND_PASSWORD
  # The leader's checkpoint at once, not spread over minutes: a new or
  # rebuilt standby is streaming (and can become synchronous) sooner.
  basebackup:
    - checkpoint: fast
  pg_hba:
    - local all postgres peer
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
  parameters:
    unix_socket_directories: $d
    password_encryption: scram-sha-256
    logging_collector: "off"
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
EOF
  chmod 600 "$d/patroni.yml"
}

write_post_bootstrap() {
  local idle=""
  if [ -n "$IDLE_SESSION_TIMEOUT" ]; then
    idle="ALTER ROLE $LEDGER_USER SET idle_session_timeout = '$IDLE_SESSION_TIMEOUT';"
  fi
  # Patroni runs this once, on the node that initialises the cluster, with
  # a superuser connection string as its argument.
  cat >"$DIR/post-bootstrap.sh" <<EOF
#!/bin/sh
set -e
psql "\$1" -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE ROLE $LEDGER_USER LOGIN PASSWORD '$LEDGER_PASSWORD';
-- The ledger's commits must never be cancelled while they wait for the
-- synchronous standby (docs/high-availability.md).
ALTER ROLE $LEDGER_USER SET statement_timeout = 0;
ALTER ROLE $LEDGER_USER SET idle_in_transaction_session_timeout = 0;
CREATE DATABASE phb OWNER $LEDGER_USER;
$idle
SQL
EOF
  chmod 755 "$DIR/post-bootstrap.sh"
}

# --- processes -------------------------------------------------------------

pidfile() { echo "$DIR/run/$1.pid"; }
alive() {  # PID: alive and not a zombie (a killed process lingers as one until reaped)
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}
recorded_pid() {  # NAME
  local f
  f="$(pidfile "$1")"
  [ -f "$f" ] && cat "$f"
  return 0
}

start_etcd() {  # NAME
  local e="$1" pid cluster="" m
  pid="$(recorded_pid "$e")"
  if alive "$pid"; then return 0; fi
  for m in "${ETCDS[@]}"; do cluster="${cluster:+$cluster,}$m=http://127.0.0.1:$(etcd_peer_port "$m")"; done
  local state=new
  [ -d "$DIR/$e/member" ] && state=existing
  mkdir -p "$DIR/$e"
  setsid etcd --name "$e" --data-dir "$DIR/$e" \
    --listen-client-urls "http://127.0.0.1:$(etcd_client_port "$e")" \
    --advertise-client-urls "http://127.0.0.1:$(etcd_client_port "$e")" \
    --listen-peer-urls "http://127.0.0.1:$(etcd_peer_port "$e")" \
    --initial-advertise-peer-urls "http://127.0.0.1:$(etcd_peer_port "$e")" \
    --initial-cluster "$cluster" --initial-cluster-token "$SCOPE" \
    --initial-cluster-state "$state" \
    </dev/null >>"$DIR/log/$e.log" 2>&1 &
  echo $! >"$(pidfile "$e")"
}

start_patroni() {  # NAME
  local n="$1" pid
  pid="$(recorded_pid "$n")"
  if alive "$pid"; then return 0; fi
  mkdir -p "$DIR/$n"
  chown "$PG_USER" "$DIR/$n"
  chmod 700 "$DIR/$n"
  write_patroni_config "$n"
  chown "$PG_USER" "$DIR/$n/patroni.yml"
  # A postmaster left by a killed Patroni still holds the port and the
  # data directory: Patroni adopts a running postmaster at start, so leave
  # it; only a stale pid file is Patroni's to clean.
  touch "$DIR/log/$n.log"
  chown "$PG_USER" "$DIR/log/$n.log"
  # Its own session, so a signal to the script's process group does not
  # reach it, and `kill NAME` can take the node down as a unit.
  # setpriv executes Patroni in place (runuser would stay as its parent,
  # and stop itself when Patroni is stopped): the recorded pid is Patroni's.
  if [ "$(id -u)" -eq 0 ]; then
    setsid env HOME="$(getent passwd "$PG_USER" | cut -d: -f6)" USER="$PG_USER" LOGNAME="$PG_USER" \
      setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups \
      "$VENV/bin/patroni" "$DIR/$n/patroni.yml" </dev/null >>"$DIR/log/$n.log" 2>&1 &
  else
    setsid "$VENV/bin/patroni" "$DIR/$n/patroni.yml" </dev/null >>"$DIR/log/$n.log" 2>&1 &
  fi
  echo $! >"$(pidfile "$n")"
}

# Every process of a node: Patroni (and any child it has), the postmaster
# and its children.
node_pids() {  # NAME
  local n="$1" pid child pm
  pid="$(recorded_pid "$n")"
  if alive "$pid"; then
    echo "$pid"
    for child in $(pgrep -P "$pid" 2>/dev/null); do
      echo "$child"
    done
  fi
  case "$n" in
    pg*)
      if [ -f "$DIR/$n/data/postmaster.pid" ]; then
        pm="$(head -n1 "$DIR/$n/data/postmaster.pid")"
        if alive "$pm"; then
          echo "$pm"
          pgrep -P "$pm" 2>/dev/null || true
        fi
      fi
      ;;
  esac
}

signal_node() {  # SIGNAL NAME
  local pids
  pids="$(node_pids "$2" | sort -u | tr '\n' ' ')"
  [ -n "${pids// /}" ] || { log "$2: no process"; return 0; }
  # shellcheck disable=SC2086  # a list of pids
  kill "-$1" $pids 2>/dev/null || true
}

wait_for() {  # SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2" i
  shift 2
  for ((i = 0; i < limit * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${limit}s waiting for $what (logs: $DIR/log/)"
}

# The cluster as Patroni's REST API reports it, from any node that answers:
# "name role state lag" lines.
members() {
  local n
  for n in "${NODES[@]}"; do
    if "$VENV/bin/python" - "$(api_port "$n")" <<'PY' 2>/dev/null; then return 0; fi
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/cluster", timeout=2) as r:
    cluster = json.load(r)
for m in cluster["members"]:
    print(m["name"], m["role"], m["state"], m.get("lag", 0))
PY
  done
  return 1
}

leader() {
  members | awk '$2 == "leader" && ($3 == "running" || $3 == "streaming") { print $1 }' | head -n1
}
sync_standby() {
  members | awk '$2 == "sync_standby" && $3 == "streaming" { print $1 }' | head -n1
}
healthy() {  # a leader, a streaming synchronous standby, and the ledger user can write
  [ -n "$(leader)" ] && [ -n "$(sync_standby)" ] || return 1
  psql "$(url)" -Atqc 'SELECT 1' >/dev/null
}

cmd_start() {
  install_packages
  mkdir -p "$DIR/run" "$DIR/log"
  chmod 755 "$DIR"
  install_venv
  write_post_bootstrap
  local e n
  for e in "${ETCDS[@]}"; do start_etcd "$e"; done
  wait_for 30 "etcd" env ETCDCTL_API=3 etcdctl --endpoints "$(etcd_hosts)" endpoint health
  for n in "${NODES[@]}"; do start_patroni "$n"; done
  log "waiting for a leader and a synchronous standby"
  wait_for 120 "a Patroni leader" sh -c "[ -n \"\$(\"$0\" leader)\" ]"
  wait_for 120 "a synchronous standby" sh -c "[ -n \"\$(\"$0\" sync-standby)\" ]"
  wait_for 60 "the ledger's database" psql "$(url)" -Atqc 'SELECT 1'
  cmd_status >&2
  log "leader $(leader), synchronous standby $(sync_standby)"
  url
}

cmd_stop() {
  local n e pid i
  # Patroni first (SIGTERM: it stops its PostgreSQL), then etcd.
  for n in "${NODES[@]}"; do
    pid="$(recorded_pid "$n")"
    if alive "$pid"; then kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for n in "${NODES[@]}"; do
    pid="$(recorded_pid "$n")"
    for ((i = 0; i < 150; i++)); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then log "$n: Patroni did not stop in 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    # A postmaster whose Patroni was killed outlives it.
    if [ -f "$DIR/$n/data/postmaster.pid" ]; then
      local pm
      pm="$(head -n1 "$DIR/$n/data/postmaster.pid")"
      if alive "$pm"; then
        kill -CONT "$pm" 2>/dev/null || true
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/$n/data" stop -m fast -t 30 >/dev/null 2>&1 || kill -KILL "$pm" 2>/dev/null || true
      fi
    fi
    rm -f "$(pidfile "$n")"
  done
  for e in "${ETCDS[@]}"; do
    pid="$(recorded_pid "$e")"
    if alive "$pid"; then kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for e in "${ETCDS[@]}"; do
    pid="$(recorded_pid "$e")"
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    rm -f "$(pidfile "$e")"
  done
  log "stopped"
}

cmd_clean() {
  cmd_stop
  local x
  for x in "${NODES[@]}" "${ETCDS[@]}" run log post-bootstrap.sh ledgers; do rm -rf "${DIR:?}/$x"; done
  log "removed the cluster's data and the ledger instances' under $DIR (the venv is kept)"
}

cmd_status() {
  "$VENV/bin/patronictl" -c "$DIR/pg1/patroni.yml" list 2>/dev/null || members
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  clean) cmd_clean ;;
  status) cmd_status ;;
  url) url ;;
  addresses) for n in "${NODES[@]}"; do echo "127.0.0.1:$(pg_port "$n")"; done | paste -sd, ;;
  leader) leader ;;
  sync-standby) sync_standby ;;
  members) members ;;
  healthy) healthy ;;
  pid) [ $# -eq 1 ] || die "usage: $0 pid NAME"; node_index "$1" >/dev/null; node_pids "$1" | sort -un ;;
  kill)
    [ $# -eq 1 ] || die "usage: $0 kill NAME"
    signal_node KILL "$1"
    # Gone before this returns, so a start-node right after starts anew.
    for ((i = 0; i < 100; i++)); do [ -n "$(node_pids "$1")" ] || break; sleep 0.05; done
    ;;
  postmaster)
    [ $# -eq 1 ] || die "usage: $0 postmaster NAME"
    [ -f "$DIR/$1/data/postmaster.pid" ] && head -n1 "$DIR/$1/data/postmaster.pid"
    ;;
  freeze) [ $# -eq 1 ] || die "usage: $0 freeze NAME"; signal_node STOP "$1" ;;
  thaw) [ $# -eq 1 ] || die "usage: $0 thaw NAME"; signal_node CONT "$1" ;;
  start-node)
    [ $# -eq 1 ] || die "usage: $0 start-node NAME"
    mkdir -p "$DIR/run" "$DIR/log"
    case "$1" in pg*) start_patroni "$1" ;; e*) start_etcd "$1" ;; *) node_index "$1" ;; esac
    ;;
  psql)
    [ $# -ge 1 ] || die "usage: $0 psql NAME [ARGS]"
    n="$1"; shift
    as_pg psql -h "$DIR/$n" -p "$(pg_port "$n")" -U postgres "$@"
    ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
