#!/usr/bin/env python3
"""A SQL workload for the bare test cluster (deploy/ha/cluster.sh), to prove
its configuration before the ledger runs on it: does a commit that
PostgreSQL acknowledged survive every fault, and how long are writes
refused?

  sqlload.py run --url URL --acks FILE [--workers K] [--stop-file F]
      K workers insert rows of a probe table, each in its own transaction
      with synchronous commit, through the multi-host connection string
      (target_session_attrs=read-write finds the primary). A row whose
      commit returned is acknowledged: one JSON line {"id", "t"} in FILE.
      An insert whose connection was lost (or hung) is in doubt: it is
      retried with the same id (INSERT ... ON CONFLICT DO NOTHING) on
      whichever node is primary, until it is acknowledged. Runs until F
      exists, or SIGTERM.

  sqlload.py verify --acks FILE --nodes HOST:PORT,... --user U --password P
      On every node that answers (each read directly: standbys are hot
      standbys), every acknowledged id must be present exactly once. A
      standby may still be catching up: waits up to --wait seconds for it
      to hold every acknowledged row. Exit 1 naming what is missing.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid

import psycopg

TABLE = "ha_probe"
# A commit that has not returned after this long is abandoned (the
# connection is shut down from a watchdog thread) and retried elsewhere:
# a frozen primary's kernel still accepts the bytes, so nothing else would
# ever end the wait. Abandoning is safe because the retry is idempotent.
HUNG_SECONDS = 10


def log(msg):
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} sqlload: {msg}", file=sys.stderr, flush=True)


def ensure_table(url):
    deadline = time.time() + 60
    while True:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                    " id uuid PRIMARY KEY, worker int NOT NULL, n bigint NOT NULL,"
                    " written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
                return
        except psycopg.Error as e:
            if time.time() > deadline:
                raise
            log(f"creating the table: {e}; retrying")
            time.sleep(1)


class Watchdog:
    """Shuts a connection's socket down if a statement outlives
    HUNG_SECONDS, so the blocked call fails like a lost connection."""

    def __init__(self, conn):
        self.conn = conn
        self.timer = None

    def __enter__(self):
        self.timer = threading.Timer(HUNG_SECONDS, self.fire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def fire(self):
        try:
            s = socket.socket(fileno=os.dup(self.conn.fileno()))
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        except OSError:
            pass

    def __exit__(self, *exc):
        self.timer.cancel()


def worker(index, url, out, lock, stop, stats):
    conn = None
    n = 0
    while not stop.is_set():
        n += 1
        row_id = uuid.uuid4()
        attempts = 0
        while not stop.is_set():
            attempts += 1
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(url, autocommit=True)
                with Watchdog(conn):
                    conn.execute(
                        f"INSERT INTO {TABLE} (id, worker, n) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                        (row_id, index, n))
                # The commit returned: PostgreSQL has it on the primary and
                # on the synchronous standby.
                with lock:
                    out.write(json.dumps({"id": str(row_id), "t": time.time(), "attempts": attempts}) + "\n")
                    out.flush()
                    stats["acked"] += 1
                    if attempts > 1:
                        stats["retried"] += 1
                break
            except psycopg.Error as e:
                with lock:
                    stats["errors"] += 1
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                conn = None
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if stats["errors"] % 20 == 1:
                    log(f"worker {index}: {msg}; retrying the same row")
                time.sleep(0.1)
    if conn is not None:
        conn.close()


def run(args):
    ensure_table(args.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock = threading.Lock()
    stats = {"acked": 0, "errors": 0, "retried": 0}
    with open(args.acks, "a", encoding="utf-8") as out:
        threads = [threading.Thread(target=worker, args=(i, args.url, out, lock, stop, stats), daemon=True)
                   for i in range(args.workers)]
        for t in threads:
            t.start()
        last = time.time()
        while not stop.is_set():
            if args.stop_file and os.path.exists(args.stop_file):
                stop.set()
                break
            time.sleep(0.2)
            if time.time() - last >= 10:
                last = time.time()
                log(f"acknowledged {stats['acked']}, errors {stats['errors']}, retried-then-acknowledged {stats['retried']}")
        # Let in-flight attempts finish: an unacknowledged row is not
        # counted, whatever became of it.
        for t in threads:
            t.join(timeout=HUNG_SECONDS + 5)
    log(f"stopped: acknowledged {stats['acked']}, errors {stats['errors']}, retried {stats['retried']}")


def verify(args):
    acked = []
    with open(args.acks, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                acked.append(json.loads(line)["id"])
    want = set(acked)
    if len(want) != len(acked):
        print(f"FAILED: the acknowledgement file names an id twice", file=sys.stderr)
        return 1
    failed = False
    checked = 0
    for node in args.nodes.split(","):
        host, port = node.rsplit(":", 1)
        url = (f"host={host} port={port} dbname=phb user={args.user} password={args.password} "
               "connect_timeout=2 target_session_attrs=any")
        deadline = time.time() + args.wait
        while True:
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    role = "standby" if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] else "primary"
                    rows = conn.execute(f"SELECT id::text, count(*) FROM {TABLE} GROUP BY id").fetchall()
            except psycopg.Error as e:
                if time.time() < deadline:
                    time.sleep(1)
                    continue
                print(f"{node}: not reachable ({str(e).strip().splitlines()[0] if str(e).strip() else e}): skipped",
                      file=sys.stderr)
                break
            have = {r[0]: r[1] for r in rows}
            missing = [i for i in acked if i not in have]
            twice = [i for i, c in have.items() if c != 1]
            if missing and time.time() < deadline:
                time.sleep(1)
                continue
            checked += 1
            if missing or twice:
                failed = True
                print(f"{node} ({role}): FAILED: {len(missing)} acknowledged rows missing "
                      f"(e.g. {missing[:3]}), {len(twice)} present more than once", file=sys.stderr)
            else:
                print(f"{node} ({role}): all {len(acked)} acknowledged rows present once "
                      f"({len(have) - len(want)} rows more: written since the acknowledgements were read, or committed but never acknowledged)")
            break
    if checked < args.min_nodes:
        print(f"FAILED: only {checked} nodes answered, wanted {args.min_nodes}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--acks", required=True)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--stop-file")
    v = sub.add_parser("verify")
    v.add_argument("--acks", required=True)
    v.add_argument("--nodes", required=True)
    v.add_argument("--user", default="phb")
    v.add_argument("--password", default="phb-ha-test")
    v.add_argument("--wait", type=float, default=60)
    v.add_argument("--min-nodes", type=int, default=2)
    args = p.parse_args()
    if args.cmd == "run":
        run(args)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
