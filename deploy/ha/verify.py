#!/usr/bin/env python3
"""After a fault: is every acknowledged event on every instance, exactly
once, where its receipt says, and does each instance's log verify?

usage: verify.py --state FILE --acks FILE --servers A,B,... --bin PHB_LEDGER
                 --work DIR [--wait SECONDS]

For each instance that answers (as root, signed read calls):
1. ReadLog from the start until it holds the last acknowledged sequence (a
   reader copies what the writer confirmed, so it may trail for a moment:
   waits up to --wait seconds); the log's sequences are 1..n without gaps
   and each entry's prev_hash is the previous entry's hash;
2. every acknowledged event (acks file, load.py) is there exactly once, at
   its acknowledged sequence, with its acknowledged entry hash; no
   (signer, event id) appears twice;
3. the logs of all instances are the same (one is a prefix of the other:
   readers may trail the writer by the entries written since);
4. `phb-ledger export --server` and `phb-ledger audit verify` of the export
   with the root key, the ledger key, the acks file as receipts and
   `--against` the same instance: the chain, every signature, every rule
   replayed, the Merkle checkpoints, and the projections the instance
   serves equal to a replay (docs/audit.md).

Prints one line per instance; a line with "LOST N" names acknowledged
events missing there. Exit 1 on any failure.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import grpc

import phbha
from phbha import Signer, pb


def log(msg):
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} verify: {msg}", file=sys.stderr, flush=True)


def read_log(channel, root, from_sequence):
    """(sequence, hash, prev_hash, signer_id, event_id) of every entry from
    from_sequence to the instance's head."""
    stub = phbha.pb_grpc.LedgerServiceStub(channel)
    out = []
    for msg in stub.ReadLog(pb.ReadLogRequest(from_sequence=from_sequence, follow=False),
                            metadata=root.read_metadata("ReadLog"), timeout=120):
        e = msg.entry
        ev = pb.Event.FromString(e.signed_event.event)
        out.append((e.sequence, bytes(e.hash), bytes(e.prev_hash), e.signed_event.signer_id, ev.event_id))
    return out


def check_instance(address, channels, root, acks, target, wait):
    """The instance's log (list of entries), and a list of problems."""
    problems = []
    entries = []
    deadline = time.time() + wait
    while True:
        try:
            entries.extend(read_log(channels.get(address), root, len(entries) + 1))
        except grpc.RpcError as e:
            if time.time() < deadline:
                time.sleep(0.5)
                continue
            return None, [f"not readable: {e.code().name} {e.details()}"]
        if len(entries) >= target or time.time() >= deadline:
            break
        time.sleep(0.3)
    if len(entries) < target:
        problems.append(f"holds {len(entries)} entries after {wait:.0f} s, the last acknowledged is {target}")
    zero = bytes(32)
    for i, (seq, h, prev, _, _) in enumerate(entries):
        if seq != i + 1:
            problems.append(f"entry {i + 1} has sequence {seq}: the sequences are not 1..n")
            break
        if prev != (entries[i - 1][1] if i else zero):
            problems.append(f"entry {seq}: prev_hash is not entry {seq - 1}'s hash")
            break
    seen = {}
    for seq, _, _, signer, event_id in entries:
        seen.setdefault((signer, event_id), []).append(seq)
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    if twice:
        k, v = next(iter(twice.items()))
        problems.append(f"{len(twice)} events recorded more than once, e.g. {k} at {v}")
    lost, misplaced = [], []
    for a in acks:
        where = seen.get((a["signer"], a["event_id"]))
        if not where:
            lost.append(a)
            continue
        seq = a["sequence"]
        if where != [seq] or entries[seq - 1][1].hex() != a["entry_hash"]:
            misplaced.append((a, where))
    if lost:
        a = lost[0]
        problems.append(f"LOST {len(lost)} acknowledged events missing, e.g. {a['signer']}/{a['event_id']} "
                        f"acknowledged at sequence {a['sequence']}")
    if misplaced:
        a, where = misplaced[0]
        problems.append(f"{len(misplaced)} acknowledged events not where their receipt says, e.g. "
                        f"{a['event_id']} acknowledged at {a['sequence']}, found at {where}")
    return entries, problems


def audit(address, args, state, ledger_pub, receipts, out_dir):
    """export + audit verify of one instance; a problem, or None."""
    name = address.replace(":", "_")
    export = os.path.join(out_dir, f"{name}.phbx")
    root_key = state["root_key_file"]
    r = subprocess.run([args.bin, "export", "--server", address, "--signer", "root", "--key", root_key,
                        "--out", export], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return f"export failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
    with open(root_key, encoding="ascii") as f:
        root_pub = bytes(phbha.SigningKey(bytes.fromhex(f.read().strip())).verify_key).hex()
    r = subprocess.run([args.bin, "audit", "verify", export, "--root-key", root_pub, "--ledger-key", ledger_pub,
                        "--ledger-id", state["ledger_id"], "--receipts", receipts,
                        "--against", address, "--signer", "root", "--key", root_key, "--json"],
                       capture_output=True, text=True, timeout=900)
    with open(os.path.join(out_dir, f"{name}.audit.json"), "w", encoding="utf-8") as f:
        f.write(r.stdout)
        f.write(r.stderr)
    if r.returncode != 0:
        return f"audit verify FAILED: {(r.stderr.strip() or r.stdout.strip())[:600]}"
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True)
    p.add_argument("--acks", required=True)
    p.add_argument("--servers", required=True)
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--wait", type=float, default=60)
    p.add_argument("--min-instances", type=int, default=1)
    p.add_argument("--no-audit", action="store_true", help="skip export + audit verify")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    with open(args.state, encoding="utf-8") as f:
        state = json.load(f)
    root = Signer("root", phbha.read_key(state["root_key_file"]))
    ledger_pub = bytes(phbha.read_key(state["ledger_key_file"]).verify_key).hex()

    # The acknowledgements so far (the load may still be running: later
    # lines are for the next verification).
    acks = []
    with open(args.acks, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                acks.append(json.loads(line))
    receipts = os.path.join(args.work, "receipts.jsonl")
    with open(receipts, "w", encoding="utf-8") as f:
        for a in acks:
            f.write(json.dumps(a) + "\n")
    target = max((a["sequence"] for a in acks), default=0)
    log(f"{len(acks)} acknowledgements, the last at sequence {target}")

    channels = phbha.Channels()
    failed = False
    logs = {}
    for address in args.servers.split(","):
        # An instance that does not answer at all (killed in this phase and
        # not yet back) is reported, not counted as surviving.
        if phbha.health(channels.get(address), phbha.READ_HEALTH, timeout=2) is None:
            print(f"{address}: not serving: skipped")
            continue
        entries, problems = check_instance(address, channels, root, acks, target, args.wait)
        if entries is not None:
            logs[address] = entries
        if not problems and not args.no_audit:
            problem = audit(address, args, state, ledger_pub, receipts, args.work)
            if problem:
                problems.append(problem)
        if problems:
            failed = True
            print(f"{address}: FAILED: " + "; ".join(problems))
        else:
            print(f"{address}: {len(entries)} entries, sequences 1..{len(entries)} chained; all {len(acks)} "
                  f"acknowledged events present once at their receipts' sequence and hash"
                  + ("" if args.no_audit else "; export + audit verify (signatures, rules, checkpoints, "
                                                 "projections --against the instance): OK"))
    # The same log everywhere: the shorter a prefix of the longer.
    addresses = list(logs)
    for a, b in zip(addresses, addresses[1:]):
        la, lb = logs[a], logs[b]
        n = min(len(la), len(lb))
        if [e[1] for e in la[:n]] != [e[1] for e in lb[:n]]:
            first = next(i for i in range(n) if la[i][1] != lb[i][1]) + 1
            failed = True
            print(f"{a} and {b}: FAILED: the logs differ from sequence {first}")
    if len(logs) >= 2 and not failed:
        print(f"the {len(logs)} instances hold the same log (up to the shortest, "
              f"{min(len(v) for v in logs.values())} entries)")
    if len(logs) < args.min_instances:
        failed = True
        print(f"FAILED: {len(logs)} instances answered, wanted {args.min_instances}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
