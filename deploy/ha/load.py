#!/usr/bin/env python3
"""Concurrent signed appends against phb-ledger instances that may fail
over under it (docs/high-availability.md, deploy/ha/fault-test.sh).

  load.py setup --state FILE --servers A,B,... --data DIR [--budgets K]
      As the operator (DIR/root.key, the first instance's data directory)
      registers a commissioner, a payroll provider and an account provider;
      as the commissioner opens K direct-payment budgets, funds them and
      approves a care plan with a tax-and-pension line on each (the shape of
      examples/python/payroll_run.py). Writes the ids and keys to FILE.

  load.py run --state FILE --servers A,B,... --acks FILE [--workers K]
              [--stop-file F] [--give-up SECONDS]
      K workers, one budget each, append signed events one request at a
      time: mostly the payroll provider's employer's-tax payments of a few
      pence, and every tenth the commissioner's allocation of 1.00, so no
      budget runs out. Each event is signed once; on UNAVAILABLE, a deadline
      or a lost connection the SAME bytes are sent again, to the writer a
      refusing reader names (x-phb-writer) or the one whose health says it
      writes, until acknowledged (docs/api.md §4: a resend is answered as a
      duplicate with the original receipt). Every acknowledgement is a JSON
      line in the acks file: t (client clock), signer, event_id, sequence,
      entry_hash (hex), tree_size, duplicate, attempts, server — also a
      receipt file for `phb-ledger audit verify --receipts`. Runs until F
      exists or SIGTERM; an event not acknowledged within --give-up seconds
      (default 300) ends the run with status 1.

  load.py writer --servers A,B,...
      Prints the address of the instance that holds the writer role.
"""

import argparse
import datetime
import json
import os
import secrets
import signal
import sys
import threading
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey

import phbha
from phbha import Signer, pb

RPC_TIMEOUT = 10
# Transport failures a resend of the same bytes answers: the outcome of the
# first send is unknown, the resend is written or answered as a duplicate.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def log(msg):
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} load: {msg}", file=sys.stderr, flush=True)


class GaveUp(Exception):
    pass


class Abandoned(Exception):
    """The run is stopping and the ledger did not answer this event in the
    grace period: it is not acknowledged, so not counted (not a loss)."""


# After a stop, an event in flight is still retried this long, so an
# acknowledgement that is coming is written to the acks file.
STOP_GRACE = 30


class Appender:
    """Sends one AppendRequest's bytes until the ledger answers it, to
    whichever instance writes now."""

    def __init__(self, servers, stats, lock, stop=None, give_up=300.0):
        self.servers = servers
        self.channels = phbha.Channels()
        self.writer = None
        self.stats = stats
        self.lock = lock
        self.stop = stop
        self.give_up = give_up
        self.stopped_at = None

    def _count(self, key):
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def send(self, signed):
        request = pb.AppendRequest(events=signed, atomic=True).SerializeToString()
        start = time.time()
        attempts = 0
        while True:
            attempts += 1
            if self.stop is not None and self.stop.is_set():
                if self.stopped_at is None:
                    self.stopped_at = time.time()
                elif time.time() - self.stopped_at > STOP_GRACE:
                    raise Abandoned()
            if time.time() - start > self.give_up:
                raise GaveUp(f"not acknowledged after {self.give_up:.0f} s and {attempts - 1} attempts")
            if self.writer is None:
                self.writer = self.channels.writer(self.servers)
                if self.writer is None:
                    self._count("no_writer")
                    time.sleep(0.2)
                    continue
            target = self.writer
            call = self.channels.get(target).unary_unary(
                phbha.SERVICE + "Append", request_serializer=None,
                response_deserializer=pb.AppendResponse.FromString)
            try:
                reply = call(request, timeout=RPC_TIMEOUT)
            except grpc.RpcError as e:
                code = e.code()
                if code not in TRANSIENT:
                    # Not a transport failure, so not expected; resending
                    # the same bytes is still safe. Counted and reported.
                    self._count(f"unexpected_{code.name}")
                else:
                    self._count(f"retry_{code.name}")
                named = phbha.writer_from_error(e)
                self.writer = named if named and named != target else None
                time.sleep(0.05 if named else 0.2)
                continue
            # A per-event UNAVAILABLE that decided nothing (storage
            # unavailable, refusal_sequence 0) is retried like a call.
            retry = [r for r in reply.results if r.error.code == 14 and r.refusal_sequence == 0]
            if retry:
                self._count("retry_result_UNAVAILABLE")
                self.writer = None
                time.sleep(0.2)
                continue
            return reply.results, attempts, target


# --- setup ------------------------------------------------------------------


def timestamp_now():
    return Timestamp(seconds=int(time.time()))


def event(ledger_id, event_id, budget_id="", **kind):
    return pb.Event(event_id=event_id, ledger_id=ledger_id, budget_id=budget_id, occurred_at=timestamp_now(), **kind)


def check_ok(results, what):
    for r in results:
        if r.error.code != 0:
            raise SystemExit(f"setup: {what}: {r.event_id} refused: {r.error.code} {r.error.message}")


def setup(args):
    servers = args.servers.split(",")
    with open(os.path.join(args.data, "ledger-id"), encoding="ascii") as f:
        ledger_id = f.read().strip()
    root = Signer("root", phbha.read_key(os.path.join(args.data, "root.key")))
    run = secrets.token_hex(3)
    orgs = {role: Signer(f"{role}-{run}", SigningKey.generate()) for role in ("icb", "payroll", "account")}
    stats, lock = {}, threading.Lock()
    appender = Appender(servers, stats, lock)

    results, _, _ = appender.send([root.sign(event(ledger_id, f"register-{s.org_id}",
                                                   organisation_registered=pb.OrganisationRegistered(
                                                       organisation_id=s.org_id, roles=[role],
                                                       public_key=s.public_key)))
                                   for s, role in ((orgs["icb"], pb.ROLE_COMMISSIONER),
                                                   (orgs["payroll"], pb.ROLE_PAYROLL_PROVIDER),
                                                   (orgs["account"], pb.ROLE_ACCOUNT_PROVIDER))])
    check_ok(results, "registrations")

    today = datetime.date.today()
    start = today - datetime.timedelta(days=30)
    end = start + datetime.timedelta(days=364)
    iso = datetime.date.isoformat
    c = orgs["icb"]
    budgets = []
    for i in range(args.budgets):
        b = f"ha-{run}-{i}"
        budgets.append(b)
        events = [
            event(ledger_id, f"{b}-open", b, budget_opened=pb.BudgetOpened(
                holder_ref=f"holder-{run}-{i}", commissioner_id=c.org_id,
                period_start=iso(start), period_end=iso(end), management=pb.MANAGEMENT_DIRECT_PAYMENT,
                funds_holder_id=orgs["account"].org_id, payroll_provider_id=orgs["payroll"].org_id,
                cohort=pb.COHORT_CONTINUING_HEALTHCARE, age_band=pb.AGE_BAND_ADULT)),
            event(ledger_id, f"{b}-allocate", b, allocation=pb.Allocation(
                amount="500000.00", basis=pb.ALLOCATION_BASIS_NEEDS_BASED)),
            event(ledger_id, f"{b}-disburse", b, disbursement=pb.Disbursement(amount="400000.00")),
            event(ledger_id, f"{b}-plan", b, care_plan_approved=pb.CarePlanApproved(
                plan_id=f"plan-{run}-{i}",
                lines=[pb.PlanLine(line_id="oncost", category="tax_and_pension", annual_amount="300000.00",
                                   description="employer's National Insurance and pension")],
                contingency_amount="100.00", valid_from=iso(start), valid_to=iso(end),
                review_due=iso(start + datetime.timedelta(days=182)))),
        ]
        results, _, _ = appender.send([c.sign(e) for e in events])
        check_ok(results, f"budget {b}")
    state = {
        "ledger_id": ledger_id,
        "run": run,
        "root_key_file": os.path.abspath(os.path.join(args.data, "root.key")),
        "ledger_key_file": os.path.abspath(os.path.join(args.data, "ledger.key")),
        "orgs": {k: {"id": s.org_id, "key": bytes(s.key).hex()} for k, s in orgs.items()},
        "budgets": budgets,
    }
    with open(args.state, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    log(f"setup: 3 organisations and {len(budgets)} budgets on ledger {ledger_id} (run {run})")


# --- run --------------------------------------------------------------------


def worker(index, args, state, out, lock, stats, stop, failures):
    ledger_id = state["ledger_id"]
    payroll = Signer(state["orgs"]["payroll"]["id"], SigningKey(bytes.fromhex(state["orgs"]["payroll"]["key"])))
    icb = Signer(state["orgs"]["icb"]["id"], SigningKey(bytes.fromhex(state["orgs"]["icb"]["key"])))
    budget = state["budgets"][index % len(state["budgets"])]
    appender = Appender(args.servers.split(","), stats, lock, stop, args.give_up)
    token = secrets.token_hex(2)  # a restarted run never reuses an event id
    n = 0
    while not stop.is_set():
        n += 1
        event_id = f"{budget}-{token}-w{index}-{n}"
        if n % 10 == 0:
            signer = icb
            ev = event(ledger_id, event_id, budget, allocation=pb.Allocation(
                amount="1.00", basis=pb.ALLOCATION_BASIS_NEEDS_BASED))
        else:
            signer = payroll
            pence = 1 + n % 9
            ev = event(ledger_id, event_id, budget, payment=pb.Payment(
                amount=f"0.0{pence}", payee_kind=pb.PAYEE_KIND_TAX_AUTHORITY, payee_ref="hmrc-paye",
                category="tax_and_pension", reference=f"ha load {index}/{n}"))
        signed = signer.sign(ev)
        try:
            results, attempts, target = appender.send([signed])
        except GaveUp as e:
            failures.append(f"worker {index}: {event_id}: {e}")
            stop.set()
            return
        except Abandoned:
            with lock:
                stats["abandoned_at_stop"] = stats.get("abandoned_at_stop", 0) + 1
            return
        r = results[0]
        if r.error.code != 0:
            # A valid event refused: the rules saw something else than this
            # program expects. Recorded refusals are entries too, but they
            # are not what the load is for: stop and say so.
            failures.append(f"worker {index}: {event_id} refused: {r.error.code} {r.error.message} "
                            f"(refusal_sequence {r.refusal_sequence})")
            stop.set()
            return
        line = json.dumps({"t": time.time(), "signer": signer.org_id, "event_id": event_id,
                           "sequence": r.sequence, "entry_hash": r.entry_hash.hex(), "tree_size": r.tree_size,
                           "duplicate": r.duplicate, "attempts": attempts, "server": target})
        with lock:
            out.write(line + "\n")
            out.flush()
            stats["acked"] = stats.get("acked", 0) + 1
            if r.duplicate:
                stats["acked_as_duplicate"] = stats.get("acked_as_duplicate", 0) + 1


def run(args):
    with open(args.state, encoding="utf-8") as f:
        state = json.load(f)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock = threading.Lock()
    stats, failures = {}, []
    with open(args.acks, "a", encoding="utf-8") as out:
        threads = [threading.Thread(target=worker, args=(i, args, state, out, lock, stats, stop, failures),
                                    daemon=True) for i in range(args.workers)]
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
                with lock:
                    log(" ".join(f"{k}={v}" for k, v in sorted(stats.items())))
        # An event in flight gets its answer (or is given up) before exit:
        # an acknowledgement not written to the file would look lost.
        for t in threads:
            t.join(timeout=STOP_GRACE + RPC_TIMEOUT + 5)
    log("stopped: " + " ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    for f in failures:
        log(f"FAILED: {f}")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--state", required=True)
    s.add_argument("--servers", required=True)
    s.add_argument("--data", required=True, help="the first instance's data directory (root.key, ledger-id)")
    s.add_argument("--budgets", type=int, default=4)
    r = sub.add_parser("run")
    r.add_argument("--state", required=True)
    r.add_argument("--servers", required=True)
    r.add_argument("--acks", required=True)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--stop-file")
    r.add_argument("--give-up", type=float, default=300)
    w = sub.add_parser("writer")
    w.add_argument("--servers", required=True)
    args = p.parse_args()
    if args.cmd == "setup":
        setup(args)
        return 0
    if args.cmd == "run":
        return run(args)
    writer = phbha.Channels().writer(args.servers.split(","))
    if writer is None:
        return 1
    print(writer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
