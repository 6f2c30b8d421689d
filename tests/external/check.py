#!/usr/bin/env python3
"""An independent external client and auditor for phb-ledger.

Written from proto/phb/ledger/v1/ledger.proto, docs/api.md,
docs/log-format.md, docs/flags.md and docs/audit.md alone, the way a partner
organisation would. It drives a running server through a realistic scenario
(and the documented refusals), then reads the whole log as an auditor and
verifies it independently: hash chain, signatures under the keys the log
itself registered, the budget rules, the balances and the flags the server
reports; and the verifiable log (docs/audit.md): the RFC 9162 Merkle roots of
the log it read, the C2SP signed checkpoints (verified with the ledger key),
inclusion and consistency proofs (RFC 9162 §2.1.3.2, §2.1.4.2).

usage: check.py ADDR DATADIR [--write-head FILE | --audit-only FILE]

--write-head FILE keeps the verified head (sequence and hash) in FILE, the
audit's ListFlags answer with its as_of in FILE.flags, and the ledger public
key and the checkpoints kept in FILE.checkpoints; --audit-only FILE only
audits (as root), e.g. after a restart, and checks the log still holds the
head pinned in FILE, ListFlags at that as_of gives the same answer, and
GetCheckpoint gives every kept checkpoint again byte for byte.

ADDR is host:port of a running `phb-ledger serve`; DATADIR is its data
directory, from which only what an operator hands out of band is taken:
`root.key` (the root's hex seed, because this script acts as the operator
too), `root.pub`, `ledger-id` and `ledger.key` (the ledger key's hex seed,
from which only its public half is used, as the operator would hand it to
partners), plus `log/ledger.log`, which is compared byte for byte with what
ReadLog streams. The Python stubs for the ledger
proto must be importable (run.sh generates them with grpc_tools.protoc).
"""

import base64
import copy
import datetime
import hashlib
import os
import re
import secrets
import struct
import sys
import threading
import time
import unicodedata
from decimal import Decimal

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as refl_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
import nacl.bindings
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from phb.ledger.v1 import ledger_pb2 as pb
from phb.ledger.v1 import ledger_pb2_grpc as pb_grpc

SERVICE = "phb.ledger.v1.LedgerService"
METHOD = "/" + SERVICE + "/"
RPC_TIMEOUT = 30

# google.rpc.Code values used in AppendResult.error.code (docs/api.md §7).
OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS = 0, 3, 5, 6
PERMISSION_DENIED, FAILED_PRECONDITION, ABORTED, UNAUTHENTICATED = 7, 9, 10, 16
# Refusals by the ledger's rules: decisions, recorded in the log and final
# (api.md §4 "Refusals are final"; proto AppendResult.refusal_sequence).
DECISIONS = (NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, FAILED_PRECONDITION)
MAX_REFUSAL_MESSAGE_BYTES = 1024


# ---------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------


class Mismatch(Exception):
    """Something the server did differs from what the docs say."""


CHECKS = [0]


def check(cond, msg):
    if not cond:
        raise Mismatch(msg)
    CHECKS[0] += 1


def step(title):
    print(f"-- {title}", flush=True)


# ---------------------------------------------------------------------------
# Documented byte formats (docs/log-format.md §2, §3, §5; docs/api.md §8)
# ---------------------------------------------------------------------------

GENESIS_HASH = bytes(32)


def lp(b):
    return struct.pack(">I", len(b)) + b


def refusal_trailer(refusal, first=False):
    """The bytes a refusal adds to the entry hash input and to a ledger.log
    record (proto `Refusal`): 'R' || u32be(code) || u8(flags: bit 0
    in_atomic_batch, bit 1 first_in_batch) || u32be(len) || message (UTF-8).
    None: no bytes."""
    if refusal is None:
        return b""
    code, in_batch, message = refusal
    flags = (1 if in_batch else 0) | (2 if first else 0)
    return b"R" + struct.pack(">IB", code, flags) + lp(message.encode("utf-8"))


def first_of(entry):
    """True if a LogEntry starts a failed atomic batch's run (first_in_batch)."""
    return entry.HasField("refusal") and entry.refusal.first_in_batch


def refusal_of(entry):
    """A LogEntry's refusal as (code, in_atomic_batch, message), or None for
    an applied entry."""
    if not entry.HasField("refusal"):
        return None
    r = entry.refusal
    return (r.code, r.in_atomic_batch, r.message)


def entry_hash(prev_hash, sequence, micros, signer_id, signature, event, refusal=None, first=False):
    return hashlib.sha256(
        prev_hash
        + struct.pack(">Q", sequence)
        + struct.pack(">q", micros)
        + lp(signer_id.encode("utf-8"))
        + lp(signature)
        + lp(event)
        + refusal_trailer(refusal, first)
    ).digest()


def idempotency_digest(signer_id, signature, event):
    return hashlib.sha256(lp(signer_id.encode("utf-8")) + lp(signature) + lp(event)).digest()


def utf8_prefix(s, limit):
    """The longest prefix of `s` whose UTF-8 encoding fits in `limit` bytes."""
    return s.encode("utf-8")[:limit].decode("utf-8", "ignore")


def ts_micros(ts):
    """Timestamp -> microseconds, as log-format.md §3 (nanos must be >= 0)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def read_signature_metadata(org_id, key, method, timestamp):
    msg = f"{METHOD}{method}\n{timestamp}".encode("ascii")
    sig = base64.b64encode(key.sign(msg).signature).decode("ascii")
    return (("x-phb-org", org_id), ("x-phb-timestamp", str(timestamp)), ("x-phb-signature", sig))


def self_test():
    """The test vectors printed in the docs, so a wrong implementation here
    cannot pass by agreeing with a wrong server."""
    k = SigningKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    check(k.verify_key.encode().hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
          "RFC 8032 test key 1 public key")
    md = dict(read_signature_metadata("x", k, "GetBalance", 1764050000))
    check(md["x-phb-signature"] == "kKkuWMooGJvsP3GwvGXJOn2GfhAh+X5Wrhs382ANnKli1OXtQVezjp11isZoY1rrmJEX+cABAYDUw+ApOP14Aw==",
          "api.md §8 read-signature test vector")
    ev = pb.Event(event_id="e-1", ledger_id="phb-local", budget_id="b-1",
                  occurred_at=Timestamp(seconds=1764000000),
                  allocation=pb.Allocation(amount="4800.00", basis=pb.ALLOCATION_BASIS_NEEDS_BASED))
    data = ev.SerializeToString()
    check(data.hex() == "0a03652d3112097068622d6c6f63616c1a03622d31220608808292c9066a0b0a07343830302e30301002",
          "api.md §10 event serialization test vector")
    check(k.sign(data).signature.hex() == "99df92e8101151703f4b94c3de1c32726aaae3c167e55cd8bfc3ffdb9cacf7e4"
          "5e255d54c8854f05ea6e041bbf5fc21715c09932f77cbc8bf3c6f47752c90602", "api.md §10 signature test vector")
    ev_bytes, sig = bytes.fromhex("0a03652d31"), b"\x01" * 64
    check(entry_hash(GENESIS_HASH, 1, 1764000000000000, "root", sig, ev_bytes).hex()
          == "bdb53223c3b721470481a23fd93eab490d4a717baac36bc56ba39f024ac1e86e", "log-format.md §4 entry hash")
    check(idempotency_digest("root", sig, ev_bytes).hex()
          == "43d531c433e0f8224f9d4a4fc06ffef0da8ce2413f80fc841178498ee914af5e", "log-format.md §4 digest")
    check(crc32c(b"123456789") == 0xE3069283, "log-format.md §5 CRC-32C check value")
    payload = (struct.pack(">Qq", 1, 1764000000000000) + GENESIS_HASH
               + bytes.fromhex("bdb53223c3b721470481a23fd93eab490d4a717baac36bc56ba39f024ac1e86e")
               + lp(b"root") + lp(sig) + lp(ev_bytes))
    check(len(payload) == 0xA5 and crc32c(payload) == 0x2BCF5A8C, "log-format.md §4 record CRC")
    vlog_self_test()


# ---------------------------------------------------------------------------
# The verifiable log (docs/audit.md): RFC 9162 §2.1 Merkle tree hashing,
# proofs and their verification, C2SP signed notes and tlog-checkpoints
# ---------------------------------------------------------------------------

EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({})
EM_DASH = "\u2014"  # begins a signature line of a C2SP signed note


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n):
    """The largest power of two smaller than n (n >= 2): RFC 9162's k."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class MerkleTree:
    """RFC 9162 §2.1.1 over the leaf inputs D[0:n] (here the entry hashes),
    with PATH (§2.1.3.1) and PROOF (§2.1.4.1) computed from the definitions,
    so each proof the server gives can be compared node for node."""

    def __init__(self, leaf_inputs):
        self.leaves = [leaf_hash(d) for d in leaf_inputs]
        self.memo = {}

    def mth(self, lo, hi):  # MTH(D[lo:hi])
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self.leaves[lo]
        if (lo, hi) not in self.memo:
            k = split_point(n)
            self.memo[(lo, hi)] = node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))
        return self.memo[(lo, hi)]

    def root(self, n):
        assert 0 <= n <= len(self.leaves)
        return self.mth(0, n)

    def _path(self, m, lo, hi):  # PATH(m, D[lo:hi])
        if hi - lo == 1:
            return []
        k = split_point(hi - lo)
        if m < k:
            return self._path(m, lo, lo + k) + [self.mth(lo + k, hi)]
        return self._path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]

    def inclusion(self, index, n):
        assert 0 <= index < n <= len(self.leaves)
        return self._path(index, 0, n)

    def _subproof(self, m, lo, hi, b):  # SUBPROOF(m, D[lo:hi], b)
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = split_point(n)
        if m <= k:
            return self._subproof(m, lo, lo + k, b) + [self.mth(lo + k, hi)]
        return self._subproof(m - k, lo + k, hi, False) + [self.mth(lo, lo + k)]

    def consistency(self, m, n):  # PROOF(m, D[n])
        assert 0 < m <= n <= len(self.leaves)
        return self._subproof(m, 0, n, True)


def verify_inclusion(leaf_index, tree_size, leaf, proof, root):
    """RFC 9162 §2.1.3.2, step by step; `leaf` is the leaf hash. Every node
    is used, and the path must end exactly at the root (sn == 0)."""
    if leaf_index >= tree_size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_hash, second_hash, proof):
    """RFC 9162 §2.1.4.2, step by step. Equal sizes are the case the
    algorithm leaves out (its step 1 fails an empty path, and PROOF(m, D[m])
    is empty, proto GetConsistencyProofResponse): the proof must be empty
    and the roots equal."""
    if first == 0 or first > second or any(len(p) != 32 for p in proof):
        return False
    if first == second:
        return not proof and first_hash == second_hash
    if not proof:  # step 1
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # step 2: first is an exact power of 2
        path = [first_hash] + path
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0  # step 7


def flipped(node, bit=0):
    b = bytearray(node)
    b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


def note_key_hash(name, public):
    """docs/audit.md: the first 4 bytes of SHA-256(key name || 0x0A || 0x01
    || 32-byte public key) (C2SP signed-note, Ed25519)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + b"\x01" + public).digest()[:4]


def verifier_key_text(name, public):
    """docs/audit.md / proto GetCheckpointResponse.verifier_key."""
    typed = base64.b64encode(b"\x01" + public).decode("ascii")
    return f"{name}+{note_key_hash(name, public).hex()}+{typed}"


def b64_strict(s, size):
    """Standard base64 with padding, canonical (it re-encodes to `s`), of
    exactly `size` bytes; None otherwise."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != s:
        return None
    return raw


def open_note(text, name, public):
    """A C2SP signed note as docs/audit.md gives it: the body (text up to and
    including the newline before the last blank line), a blank line, then
    exactly one signature line "— {name} {base64(key hash || signature)}\\n"
    by `name` with `public`, the ed25519 signature over exactly the body.
    Returns (body bytes, None), or (None, why not)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    cut = data.rfind(b"\n\n")
    if cut < 0:
        return None, "no blank line before the signatures"
    body, sigs = data[:cut + 1], data[cut + 2:]
    if not sigs.endswith(b"\n"):
        return None, "the signature block does not end with a newline"
    lines = sigs[:-1].split(b"\n")
    if len(lines) != 1:
        return None, f"{len(lines)} signature lines, docs/audit.md gives one"
    prefix = (EM_DASH + " ").encode("utf-8")
    if not lines[0].startswith(prefix):
        return None, f"the signature line does not begin with U+2014 and a space: {lines[0][:8]!r}"
    parts = lines[0][len(prefix):].decode("utf-8", "replace").split(" ")
    if len(parts) != 2:
        return None, f"the signature line is not \"— name signature\": {parts}"
    if parts[0] != name:
        return None, f"signed by key name {parts[0]!r}, expected {name!r}"
    blob = b64_strict(parts[1], 4 + 64)
    if blob is None:
        return None, f"the signature {parts[1]!r} is not canonical base64 of 68 bytes"
    if blob[:4] != note_key_hash(name, public):
        return None, f"key hash {blob[:4].hex()}, expected {note_key_hash(name, public).hex()}"
    try:
        VerifyKey(public).verify(body, blob[4:])
    except BadSignatureError:
        return None, "the ed25519 signature does not verify over the body"
    return body, None


def checkpoint_body(body, origin):
    """C2SP tlog-checkpoint as docs/audit.md gives it: exactly three lines,
    the origin, the size in decimal without leading zeros, the root in
    standard base64 with padding. Returns ((size, root), None) or (None, why)."""
    try:
        lines = body.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None, "the body is not UTF-8"
    if len(lines) != 4 or lines[3] != "":
        return None, f"the body has {len(lines) - 1} lines, docs/audit.md gives three"
    if lines[0] != origin:
        return None, f"origin {lines[0]!r}, expected {origin!r}"
    if not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        return None, f"tree size {lines[1]!r} is not decimal without leading zeros"
    root = b64_strict(lines[2], 32)
    if root is None:
        return None, f"root {lines[2]!r} is not canonical standard base64 of 32 bytes"
    return (int(lines[1]), root), None


def vlog_self_test():
    """Known answers from outside this repository: the RFC 6962 / RFC 9162
    reference tree of Certificate Transparency (8 leaves; roots, inclusion
    and consistency proofs, as transparency-dev/merkle tests them) and the
    Go sumdb/note and C2SP signed-note examples."""
    inputs = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
    roots = ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
             "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
             "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
             "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
             "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
             "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
             "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
             "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
    t = MerkleTree(inputs)
    for n, want in enumerate(roots):
        check(t.root(n).hex() == want, f"RFC 9162 reference tree: MTH of {n} leaves")
    h = {k: bytes.fromhex(v) for k, v in {
        "96a2": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f08": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        "bc1a": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca85": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37e": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6e34": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac5": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "0298": "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "0750": "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"}.items()}
    for index, size, proof in [(0, 1, []), (0, 8, ["96a2", "5f08", "6b47"]), (5, 8, ["bc1a", "ca85", "d37e"]),
                               (2, 3, ["fac5"]), (1, 5, ["6e34", "5f08", "bc1a"])]:
        nodes = [h[p] for p in proof]
        check(t.inclusion(index, size) == nodes, f"RFC 9162 reference tree: PATH({index}, D[{size}])")
        check(verify_inclusion(index, size, t.leaves[index], nodes, t.root(size)),
              f"RFC 9162 reference tree: the inclusion proof of leaf {index} in {size} does not verify")
        for i in range(len(nodes)):
            check(not verify_inclusion(index, size, t.leaves[index], nodes[:i] + [flipped(nodes[i])] + nodes[i + 1:],
                                       t.root(size)), "the inclusion verifier accepts a flipped node")
    for m, n, proof in [(1, 8, ["96a2", "5f08", "6b47"]), (3, 8, ["0298", "0750", "fac5", "6b47"])]:
        nodes = [h[p] for p in proof]
        check(t.consistency(m, n) == nodes, f"RFC 9162 reference tree: PROOF({m}, D[{n}])")
        check(verify_consistency(m, n, t.root(m), t.root(n), nodes),
              f"RFC 9162 reference tree: the consistency proof {m} -> {n} does not verify")
    # Every proof of every size of a 20-leaf tree, from the definitions,
    # verifies, and fails with any node flipped.
    t = MerkleTree([bytes([i]) * 32 for i in range(20)])
    for n in range(1, 21):
        for i in range(n):
            p = t.inclusion(i, n)
            check(verify_inclusion(i, n, t.leaves[i], p, t.root(n)), f"self-test: PATH({i}, D[{n}])")
            check(not any(verify_inclusion(i, n, t.leaves[i], p[:j] + [flipped(p[j])] + p[j + 1:], t.root(n))
                          for j in range(len(p))), f"self-test: PATH({i}, D[{n}]) with a flipped node")
        for m in range(1, n + 1):
            p = t.consistency(m, n)
            check(verify_consistency(m, n, t.root(m), t.root(n), p), f"self-test: PROOF({m}, D[{n}])")
            check(not any(verify_consistency(m, n, t.root(m), t.root(n), p[:j] + [flipped(p[j])] + p[j + 1:])
                          for j in range(len(p))), f"self-test: PROOF({m}, D[{n}]) with a flipped node")
            check(m == n or not verify_consistency(m, n, t.root(m), t.root(n), p[:-1]),
                  f"self-test: PROOF({m}, D[{n}]) truncated")
    # golang.org/x/mod/sumdb/note's example, and C2SP signed-note's.
    for vkey, note in [
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
         "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n"
         f"{EM_DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6"
         "RyyBwJnAM=\n"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
         f"This is an example message.\n\n{EM_DASH} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTg"
         "K7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")]:
        name, _, typed = vkey.split("+", 2)
        public = base64.b64decode(typed)[1:]
        check(verifier_key_text(name, public) == vkey, f"signed-note key hash / verifier key of {name}")
        body, why = open_note(note, name, public)
        check(why is None and note.encode("utf-8").startswith(body), f"signed-note example of {name}: {why}")
        check(open_note(note.replace("problem", "Problem", 1).replace("example", "Example", 1), name, public)[0]
              is None, f"signed-note example of {name}: a changed body verifies")


# ---------------------------------------------------------------------------
# Event validation and the auditor's replay (docs/log-format.md §6)
# ---------------------------------------------------------------------------

ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REF_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# docs/api.md, "Spending categories": the closed vocabulary.
ALLOWED_CATEGORIES = {
    "personal_assistant", "agency_care", "respite", "therapy", "equipment", "it_equipment", "education",
    "exercise_wellbeing", "transport", "community_activity", "clinical_service", "household_support",
    "payroll_and_account_fees", "employer_insurance", "tax_and_pension", "cash",
}
# docs/api.md "Card transactions": blocked merchant category codes, and the
# category each recognised code is charged to.
BLOCKED_MCCS = {7995, 7800, 7801, 7802, 5921, 5813, 5993, 7273, 7297, 5933, 6051}
MCC_CATEGORIES = {}
for codes, cat in [((4111, 4121, 4131, 4789, 5541, 5542), "transport"),
                   ((5045, 5732, 5734, 4814, 4816), "it_equipment"),
                   ((5047, 5200, 5251, 5712, 5722, 5999, 5310, 5311), "equipment"),
                   ((5912,), "pharmaceuticals"),
                   ((5940, 5941, 7941, 7997), "exercise_wellbeing"),
                   ((8011, 8021, 8031, 8041, 8042, 8043, 8049, 8050, 8099), "clinical_service"),
                   ((8062,), "inpatient_care"),
                   ((8211, 8220, 8241, 8244, 8249, 8299), "education"),
                   ((7011, 7012), "respite"),
                   ((8351, 8398, 8641), "community_activity"),
                   ((7349, 7342, 1711, 1799), "household_support"),
                   ((6300,), "employer_insurance")]:
    for code in codes:
        MCC_CATEGORIES[code] = cat
EXCLUDED_CATEGORIES = {
    "gp_primary_care", "emergency_care", "inpatient_care", "pharmaceuticals",
    "alcohol", "tobacco", "gambling", "debt_repayment",
}
AMOUNT_RE = re.compile(r"-?[0-9]{1,10}(\.[0-9]{1,2})?")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_AMOUNT = Decimal("1000000000.00")
MIN_OCCURRED_MICROS = 946_684_800 * 1_000_000  # 2000-01-01T00:00:00Z
DAY_MICROS = 86_400 * 1_000_000
ED25519_L = 2**252 + 27742317777372353535851937790883648493
ORG_KINDS = ("organisation_registered", "key_rotated")
# docs/flags.md: ControlsConfigured names no budget (budget_id empty) and is
# signed by an organisation with ROLE_COMMISSIONER; ExternalMatchRecorded and
# FlagReviewed are the budget commissioner's and are accepted on a stopped
# budget too (api.md §5).
NO_BUDGET_KINDS = ORG_KINDS + ("controls_configured",)
AFTER_STOP_KINDS = ("external_match_recorded", "flag_reviewed")
# proto FlagCode, as flag ids spell the codes (the enum names without
# FLAG_CODE_): "{CODE}:{budget_id}:{key}".
FLAG_CODE_NAMES = {v: n[len("FLAG_CODE_"):] for n, v in pb.FlagCode.items() if v != pb.FLAG_CODE_UNSPECIFIED}
# docs/flags.md: rules that depend on time passing; never raised by an append.
TIME_BASED_FLAGS = (pb.FLAG_CODE_SURPLUS, pb.FLAG_CODE_REVIEW_OVERDUE, pb.FLAG_CODE_CASH_WITHOUT_RECEIPT)
FLAG_KEY_RE = re.compile(r"[A-Za-z0-9._-]+")
# proto ControlsConfigured: 0 means the default; otherwise in range (the
# ranges of crates/phb-domain/src/controls.rs, each refused with 3 naming the
# field). spike_multiple: "" or a decimal from 1.1 to 100, at most 2 places.
CONTROL_RANGES = {
    "surplus_weeks": (1, 104), "surplus_mute_weeks": (1, 104), "admission_days": (1, 366),
    "worker_hours_per_week": (1, 168), "worker_hours_per_day": (1, 24), "spike_weeks": (1, 104),
    "cash_receipt_days": (1, 366), "first_review_weeks": (1, 104), "review_interval_months": (1, 60),
    "refusals_count": (2, 1000), "refusals_days": (1, 366),
}
SPIKE_RE = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
PCT = Decimal("0.01")


class Invalid(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Invalid(msg)


def valid_id(s):
    return ID_RE.fullmatch(s) is not None


# api.md §6 "Text fields", Unicode 16.0.0. Refused anywhere: Cc (checked with
# unicodedata), line/paragraph separators, bidi controls, tag characters,
# interlinear annotations, unassigned default-ignorables.
FORBIDDEN_TEXT = set("\u061c\u200e\u200f\u2028\u2029\u2065") | {chr(c) for c in range(0x202A, 0x202F)} | {
    chr(c) for c in range(0x2066, 0x206A)} | {chr(c) for c in range(0xFFF0, 0xFFFC)} | {
    chr(c) for c in range(0xE0000, 0xE1000) if not 0xE0100 <= c <= 0xE01EF}
# Default_Ignorable_Code_Point or Cf and not refused: allowed, not content,
# at most two in a row.
INVISIBLE_RANGES = [(0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F),
                    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
                    (0x200B, 0x200D), (0x2060, 0x2064), (0x206A, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F),
                    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
                    (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0100, 0xE01EF)]
# White_Space (minus Cc and U+2028/U+2029), and graphic characters that draw nothing.
BLANK_TEXT = set(" \u00a0\u1680\u202f\u205f\u3000\u2800\U0001d159") | {chr(c) for c in range(0x2000, 0x200B)}


def invisible(c):
    return any(lo <= ord(c) <= hi for lo, hi in INVISIBLE_RANGES)


def text_ok(s, limit, required):
    if s == "":
        return not required
    if len(s) > limit or any(unicodedata.category(c) == "Cc" or c in FORBIDDEN_TEXT for c in s):
        return False
    run = 0
    for c in s:
        run = run + 1 if invisible(c) else 0
        if run > 2:
            return False
    return any(not invisible(c) and c not in BLANK_TEXT for c in s)


def amount(s, what, positive):
    need(AMOUNT_RE.fullmatch(s) is not None, f"{what} {s!r} is not a decimal amount")
    d = Decimal(s)
    need(abs(d) <= MAX_AMOUNT, f"{what} {s!r} too large")
    if positive is None:  # zero or more (a contingency)
        need(d >= 0, f"{what} {s!r} is negative")
    else:
        need(d > 0 if positive else d != 0, f"{what} {s!r} not positive / zero")
    return d


def date(s, what):
    need(DATE_RE.fullmatch(s) is not None, f"{what} {s!r} is not YYYY-MM-DD")
    try:
        d = datetime.date.fromisoformat(s)
    except ValueError:
        raise Invalid(f"{what} {s!r} is not a calendar date")
    need(2000 <= d.year <= 2199, f"{what} {s!r} out of 2000-2199")
    return d


# Edwards25519 arithmetic, just enough for the documented key check.
ED_P = 2**255 - 19
ED_D = (-121665 * pow(121666, ED_P - 2, ED_P)) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)


def ed_decompress(b):
    """Point decoding as the server's curve25519-dalek does it (y reduced mod p)."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign, y = n >> 255, (n & ((1 << 255) - 1)) % ED_P
    x2 = (y * y - 1) * pow(ED_D * y * y + 1, ED_P - 2, ED_P) % ED_P
    x = pow(x2, (ED_P + 3) // 8, ED_P)
    if (x * x - x2) % ED_P:
        x = x * ED_SQRT_M1 % ED_P
    if (x * x - x2) % ED_P:
        return None
    return ((ED_P - x) % ED_P if (x & 1) != sign else x, y)


def ed_add(a, b):
    (x1, y1), (x2, y2) = a, b
    t = ED_D * x1 * x2 * y1 * y2 % ED_P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, ED_P - 2, ED_P) % ED_P,
            (y1 * y2 + x1 * x2) * pow(1 - t, ED_P - 2, ED_P) % ED_P)


def ed_compress(pt):
    return (pt[1] | ((pt[0] & 1) << 255)).to_bytes(32, "little")


def ed_mul(n, pt):
    acc, q = (0, 1), pt
    while n:
        if n & 1:
            acc = ed_add(acc, q)
        q = ed_add(q, q)
        n >>= 1
    return acc


def invalid_key(key):
    """log-format.md §7: a key must be the canonical encoding (y < p, and
    re-compressing gives the same bytes) of a point in the prime-order
    subgroup ([l]A = identity). This is libsodium's
    crypto_core_ed25519_is_valid_point; both are checked and must agree."""
    ours = True
    pt = ed_decompress(key)
    if pt is not None:
        y = int.from_bytes(key, "little") & ((1 << 255) - 1)
        canonical = y < ED_P and ed_compress(pt) == bytes(key)
        ours = not (canonical and pt != (0, 1) and ed_mul(ED25519_L, pt) == (0, 1))
    sodium = not nacl.bindings.crypto_core_ed25519_is_valid_point(bytes(key))
    need(ours == sodium, f"key check disagrees with libsodium on {bytes(key).hex()}")
    return ours


def validate_event(raw, ledger_id, now_micros):
    """docs/api.md §6 / log-format.md §6 step 5. Returns the decoded Event."""
    need(1 <= len(raw) <= 65536, f"event is {len(raw)} bytes")
    ev = pb.Event()
    try:
        ev.ParseFromString(raw)
    except DecodeError as e:
        raise Invalid(f"event does not decode: {e}")
    ev.DiscardUnknownFields()
    need(ev.SerializeToString(deterministic=True) == bytes(raw),
         f"event has unknown fields or is not canonical ({ev.ByteSize()} vs {len(raw)} bytes)")
    need(valid_id(ev.event_id), f"bad event_id {ev.event_id!r}")
    need(ev.ledger_id == ledger_id, f"ledger_id {ev.ledger_id!r} != {ledger_id!r}")
    need(ev.HasField("occurred_at"), "occurred_at missing")
    need(0 <= ev.occurred_at.nanos <= 999_999_999, "occurred_at.nanos out of range")
    occ = ts_micros(ev.occurred_at)
    need(MIN_OCCURRED_MICROS <= occ <= now_micros + DAY_MICROS, f"occurred_at {occ} out of window")
    kind = ev.WhichOneof("kind")
    need(kind is not None, "no kind set")
    if kind in NO_BUDGET_KINDS:
        need(ev.budget_id == "", f"budget_id set on {kind}")
    else:
        need(valid_id(ev.budget_id), f"bad budget_id {ev.budget_id!r}")
    k = getattr(ev, kind)
    if kind == "organisation_registered":
        need(valid_id(k.organisation_id) and k.organisation_id != "root", "bad organisation_id")
        need(len(k.roles) > 0 and len(set(k.roles)) == len(k.roles), "roles empty or repeated")
        need(all(r in pb.Role.values() and r != pb.ROLE_UNSPECIFIED for r in k.roles), "bad role")
        need(len(k.public_key) == 32, "public_key not 32 bytes")
    elif kind == "key_rotated":
        need(valid_id(k.organisation_id), "bad organisation_id")
        need(len(k.new_public_key) == 32, "new_public_key not 32 bytes")
    elif kind == "budget_opened":
        need(REF_RE.fullmatch(k.holder_ref) is not None, "bad holder_ref")
        need(valid_id(k.commissioner_id), "bad commissioner_id")
        need(date(k.period_end, "period_end") >= date(k.period_start, "period_start"), "period ends before it starts")
        need(k.management in pb.Management.values() and k.management != pb.MANAGEMENT_UNSPECIFIED, "bad management")
        for f in ("funds_holder_id", "payroll_provider_id", "plan_facilitator_id"):
            need(getattr(k, f) == "" or valid_id(getattr(k, f)), f"bad {f}")
        if k.management == pb.MANAGEMENT_THIRD_PARTY:
            need(k.funds_holder_id != "", "third-party budget without funds_holder_id")
        if k.management == pb.MANAGEMENT_NOTIONAL:
            need(k.funds_holder_id == "" and k.payroll_provider_id == "", "notional budget with a holder/payroll")
        # api.md "Enums": optional (0 = not recorded), unknown values refused.
        need(k.cohort in pb.Cohort.values(), f"unknown cohort {k.cohort}")
        need(k.age_band in pb.AgeBand.values(), f"unknown age_band {k.age_band}")
    elif kind == "allocation":
        amount(k.amount, "allocation.amount", True)
        need(k.basis in pb.AllocationBasis.values() and k.basis != 0, "bad basis")
    elif kind == "disbursement":
        amount(k.amount, "disbursement.amount", True)
    elif kind == "payment":
        amount(k.amount, "payment.amount", True)
        need(k.payee_kind in pb.PayeeKind.values() and k.payee_kind != 0, "bad payee_kind")
        need(REF_RE.fullmatch(k.payee_ref) is not None, "bad payee_ref")
        need(k.category in ALLOWED_CATEGORIES | EXCLUDED_CATEGORIES, "not a spending category")
        need(text_ok(k.reference, 128, False), "bad reference")
        if k.agreement_id:
            need(k.payee_kind in (pb.PAYEE_KIND_PERSONAL_ASSISTANT, pb.PAYEE_KIND_PROVIDER),
                 "an agreement for a tax or pension payment")
            need(valid_id(k.agreement_id), "bad agreement_id")
            amount(k.units, "units", True)
            need(date(k.service_to, "service_to") >= date(k.service_from, "service_from"), "service period reversed")
        else:
            need(k.units == "" and k.service_from == "" and k.service_to == "", "service fields without agreement_id")
    elif kind == "purchase":
        amount(k.amount, "purchase.amount", True)
        need(k.category in ALLOWED_CATEGORIES | EXCLUDED_CATEGORIES, "not a spending category")
        need(REF_RE.fullmatch(k.supplier_ref) is not None, "bad supplier_ref")
        need(text_ok(k.description, 256, False), "bad description")
        need(text_ok(k.receipt_ref, 128, False), "bad receipt_ref")
        need(k.supplier_sector in pb.Sector.values(), "bad supplier_sector")
    elif kind == "review_adjustment":
        amount(k.delta, "review_adjustment.delta", False)
        need(text_ok(k.reason, 256, True), "bad reason")
    elif kind == "budget_stopped":
        need(text_ok(k.reason, 256, True), "bad reason")
    elif kind == "facilitator_appointed":
        need(valid_id(k.organisation_id), "bad organisation_id")
    elif kind == "card_transaction":
        need(REF_RE.fullmatch(k.card_ref) is not None and REF_RE.fullmatch(k.merchant_ref) is not None, "bad ref")
        need(1 <= k.mcc <= 9999, "bad mcc")
        amount(k.amount, "card_transaction.amount", True)
        need(k.channel in pb.CardChannel.values() and k.channel != 0, "bad channel")
    elif kind in ("hospital_admission", "hospital_discharge"):
        date(k.date, f"{kind}.date")
    elif kind == "review_recorded":
        date(k.date, "review_recorded.date")
        need(k.kind in pb.ReviewKind.values() and k.kind != 0, "bad review kind")
        need(text_ok(k.outcome, 256, True), "bad outcome")
    elif kind == "service_agreement_approved":
        need(valid_id(k.agreement_id), "bad agreement_id")
        need(REF_RE.fullmatch(k.payee_ref) is not None, "bad payee_ref")
        need(k.payee_kind in (pb.PAYEE_KIND_PERSONAL_ASSISTANT, pb.PAYEE_KIND_PROVIDER), "bad payee_kind")
        need(k.payee_sector in pb.Sector.values() and k.payee_sector != 0, "bad payee_sector")
        need(k.category in ALLOWED_CATEGORIES | EXCLUDED_CATEGORIES, "not a spending category")
        need(k.unit in pb.Unit.values() and k.unit != 0, "bad unit")
        amount(k.rate, "rate", True)
        need(date(k.valid_to, "valid_to") >= date(k.valid_from, "valid_from"), "agreement dates reversed")
    elif kind == "budget_suspended":
        need(text_ok(k.reason, 256, True), "bad reason")
    elif kind == "budget_resumed":
        pass
    elif kind == "holder_died":
        date(k.date, "holder_died.date")
    elif kind == "reclaim":
        amount(k.amount, "reclaim.amount", True)
        need(k.ground in pb.ReclaimGround.values() and k.ground != 0, "bad ground")
    elif kind == "refund":
        need(k.original_sequence > 0, "refund without original_sequence")
        amount(k.amount, "refund.amount", True)
    elif kind == "external_match_recorded":
        need(REF_RE.fullmatch(k.source) is not None, "bad source")
        need(REF_RE.fullmatch(k.reference) is not None, "bad reference")
        need(k.kind in pb.MatchKind.values() and k.kind != 0, "bad match kind")
    elif kind == "flag_reviewed":
        # docs/flags.md: "{CODE}:{budget_id}:{key}", naming the event's budget.
        code, sep, rest = k.flag_id.partition(":")
        need(sep and code in FLAG_CODE_NAMES.values(), f"flag_id {k.flag_id!r} has no flag code")
        need(rest.startswith(ev.budget_id + ":") and FLAG_KEY_RE.fullmatch(rest[len(ev.budget_id) + 1:]),
             f"flag_id {k.flag_id!r} is not a flag of budget {ev.budget_id!r}")
        need(k.outcome in pb.FlagOutcome.values() and k.outcome != 0, "bad outcome")
        need(text_ok(k.note, 1024, True), "bad note")
    elif kind == "controls_configured":
        for f, (lo, hi) in CONTROL_RANGES.items():
            v = getattr(k, f)
            need(v == 0 or lo <= v <= hi, f"{f} {v} out of range")
        if k.spike_multiple:
            m = k.spike_multiple
            need(len(m) <= 6 and SPIKE_RE.fullmatch(m) and Decimal("1.1") <= Decimal(m) <= 100,
                 f"spike_multiple {m!r} out of range")
    elif kind == "care_plan_approved":
        need(valid_id(k.plan_id), "bad plan_id")
        need(1 <= len(k.lines) <= 100, "a plan has 1 to 100 lines")
        need(len({l.line_id for l in k.lines}) == len(k.lines), "line ids repeat")
        for l in k.lines:
            need(valid_id(l.line_id), "bad line_id")
            need(l.category in ALLOWED_CATEGORIES | EXCLUDED_CATEGORIES, "not a spending category")
            amount(l.annual_amount, "plan line annual_amount", True)
            need(text_ok(l.description, 256, False), "bad description")
        need(not k.contingency_amount.startswith("-"), "negative contingency")
        amount(k.contingency_amount, "contingency_amount", None)
        vf = date(k.valid_from, "valid_from")
        need(date(k.valid_to, "valid_to") >= vf and date(k.review_due, "review_due") >= vf, "plan dates out of order")
    return ev


class Budget:
    def __init__(self, budget_id, opened):
        self.budget_id = budget_id
        self.holder_ref = opened.holder_ref
        self.commissioner_id = opened.commissioner_id
        self.management = opened.management
        self.funds_holder_id = opened.funds_holder_id
        self.payroll_provider_id = opened.payroll_provider_id
        self.plan_facilitator_id = opened.plan_facilitator_id
        self.cohort, self.age_band = opened.cohort, opened.age_band
        self.plan = None
        self.suspended = False
        self.died_on = None
        self.spendings = {}
        self.agreements = {}
        self.in_hospital_since = None
        self.period_start = opened.period_start
        self.period_end = opened.period_end
        self.allocated = self.paid_in = self.spent = Decimal("0.00")
        self.stopped = False
        self.last_sequence = 0

    def __eq__(self, other):
        return isinstance(other, Budget) and vars(self) == vars(other)

    @property
    def notional(self):
        return self.management == pb.MANAGEMENT_NOTIONAL

    @property
    def held(self):
        return Decimal("0.00") if self.notional else self.paid_in - self.spent

    @property
    def available(self):
        return self.allocated - self.spent


def fmt(d):
    d = d.quantize(PCT)
    return "0.00" if d == 0 else f"{d:.2f}"


class Refused(Exception):
    """The budget rules refuse an event, with this google.rpc.Code."""

    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


def deny(cond, code, msg):
    if not cond:
        raise Refused(code, msg)


class Auditor:
    """log-format.md §6: replays the log from nothing but the root public key
    and the ledger id, trusting nothing the server says about itself."""

    def __init__(self, root_public_key, ledger_id):
        self.root_key = root_public_key
        self.ledger_id = ledger_id
        self.head_seq, self.head_hash, self.head_time = 0, GENESIS_HASH, 0
        self.orgs = {}  # id -> {"roles": set, "key": bytes}
        self.budgets = {}  # id -> Budget
        self.seen_keys = set()  # idempotency keys (signer_id, event_id)
        self.stats = {"signers": set(), "kinds": {}, "rotations": 0, "refusals": {}, "in_batch": 0}
        # sequence -> the auditor's own reason for a recorded refusal it
        # re-derived (the failing event of a batch included), so the client
        # can check each refusal was for the rule it meant to test.
        self.reasons = {}
        # The state before the failed atomic batch whose run of entries is
        # being replayed (log-format.md §6 step 8), or None.
        self.run = None
        # docs/flags.md, from applied entries only: the flags this auditor
        # derives itself (EXTERNAL_MATCH, and AFTER_DEATH for a deceased
        # match on a budget with no death recorded), flag id -> expected
        # fields; the latest FlagReviewed of each flag id, -> (outcome,
        # reviewer, sequence, note); each commissioner's ControlsConfigured,
        # -> (sequence, the event's settings).
        self.flags = {}
        self.reviews = {}
        self.controls = {}

    def end_run(self):
        """A run of a failed batch's entries ended: undo its tentative changes."""
        if self.run is not None:
            self.orgs, self.budgets, self.stats["rotations"] = self.run
            self.run = None

    def finish(self):
        """After the last entry."""
        self.end_run()

    def apply(self, entry):
        seq = entry.sequence
        where = f"log entry {seq}"
        check(seq == self.head_seq + 1, f"{where}: expected sequence {self.head_seq + 1}")
        check(entry.prev_hash == self.head_hash,
              f"{where}: prev_hash {entry.prev_hash.hex()} != previous hash {self.head_hash.hex()}")
        rec = entry.recorded_at
        check(entry.HasField("recorded_at") and 0 <= rec.nanos < 1_000_000_000 and rec.nanos % 1000 == 0,
              f"{where}: recorded_at.nanos {rec.nanos} not whole microseconds")
        micros = ts_micros(rec)
        se = entry.signed_event
        refusal = refusal_of(entry)
        first = first_of(entry)
        check(not first or (refusal is not None and refusal[1]),
              f"{where}: first_in_batch without in_atomic_batch")
        continues = refusal is not None and refusal[1] and not first
        if not continues:
            self.end_run()
        else:
            check(self.run is not None, f"{where}: continues a failed atomic batch, but no batch starts before it")
        if first:
            self.run = (copy.deepcopy(self.orgs), copy.deepcopy(self.budgets), self.stats["rotations"])
        want = entry_hash(entry.prev_hash, seq, micros, se.signer_id, se.signature, se.event, refusal, first)
        check(len(entry.hash) == 32 and entry.hash == want,
              f"{where}: hash {entry.hash.hex()} but the documented layout gives {want.hex()}")
        check(micros >= self.head_time, f"{where}: recorded_at went backwards")
        try:
            ev = validate_event(se.event, self.ledger_id, micros)
        except Invalid as e:
            raise Mismatch(f"{where}: invalid event: {e}")
        # Idempotency keys are scoped to the signer (proto Event.event_id):
        # the same event_id from two signers is two events.
        key_id = (se.signer_id, ev.event_id)
        check(key_id not in self.seen_keys, f"{where}: event_id {ev.event_id!r} repeated for signer {se.signer_id!r}")
        self.seen_keys.add(key_id)
        # Signature under the key in force at this point of the log.
        if se.signer_id == "root":
            key = self.root_key
        else:
            check(se.signer_id in self.orgs, f"{where}: unknown signer {se.signer_id!r}")
            key = self.orgs[se.signer_id]["key"]
        check(len(se.signature) == 64, f"{where}: signature not 64 bytes")
        check(int.from_bytes(se.signature[32:], "little") < ED25519_L, f"{where}: non-canonical S")
        try:
            VerifyKey(key).verify(se.event, se.signature)
        except BadSignatureError:
            raise Mismatch(f"{where}: signature by {se.signer_id!r} does not verify under its key at this point")
        CHECKS[0] += 1
        kind = ev.WhichOneof("kind")
        if refusal is None:
            try:
                self.rules(se.signer_id, ev, seq)
            except Refused as e:
                raise Mismatch(f"{where}: applied, but the budget rules refuse it with code {e.code}: {e}")
            self.stats["kinds"][kind] = self.stats["kinds"].get(kind, 0) + 1
            self.derive_flags(se.signer_id, ev, seq)
        else:
            # A recorded refusal (proto Refusal): it changes no state. Outside
            # an atomic batch the rules, applied at this point, must refuse
            # the event with exactly that code; inside one, the batch's other
            # events are not in the log as applied, so only the code's kind
            # can be checked.
            code, in_batch, message = refusal
            check(len(message.encode("utf-8")) <= MAX_REFUSAL_MESSAGE_BYTES,
                  f"{where}: refusal message of {len(message.encode('utf-8'))} bytes")
            if in_batch:
                check(code in DECISIONS + (ABORTED,),
                      f"{where}: refusal code {code} in an atomic batch (only 5, 6, 7, 9, 10 are recorded)")
                self.stats["in_batch"] += 1
                # Re-run as the writer did: what the rules accept counts for
                # the rest of the run (undone at its end); the failing event
                # must be refused with exactly its code.
                try:
                    self.rules(se.signer_id, ev, seq)
                except Refused as e:
                    check(code == ABORTED or e.code == code,
                          f"{where}: recorded refusal code {code} in its batch, but the rules there give {e.code}: {e}")
                    if code != ABORTED:
                        self.reasons[seq] = str(e)
                else:
                    check(code == ABORTED,
                          f"{where}: recorded as refused with code {code} in its batch, but the rules there accept it")
            else:
                check(code in DECISIONS, f"{where}: refusal code {code} outside an atomic batch "
                      "(only 5, 6, 7, 9 are recorded; 10 only with in_atomic_batch)")
                state = (copy.deepcopy(self.orgs), copy.deepcopy(self.budgets), self.stats["rotations"])
                try:
                    self.rules(se.signer_id, ev, seq)
                except Refused as e:
                    check(e.code == code, f"{where}: recorded refusal code {code}, but the rules at this point "
                          f"give {e.code}: {e}")
                    self.reasons[seq] = str(e)
                else:
                    raise Mismatch(f"{where}: recorded as refused with code {code}, but the rules at this point "
                                   "accept it")
                check((self.orgs, self.budgets, self.stats["rotations"]) == state,
                      f"{where}: the auditor's own rules changed state on a refusal")
            self.stats["refusals"][code] = self.stats["refusals"].get(code, 0) + 1
        self.head_seq, self.head_hash, self.head_time = seq, entry.hash, micros
        self.stats["signers"].add(se.signer_id)

    def rules(self, signer_id, ev, seq):
        """The budget rules (api.md §5, log-format.md §6), in the order the
        server checks them, each refusal with its documented code (api.md §7).
        Changes state only if the event is accepted."""
        kind = ev.WhichOneof("kind")
        k = getattr(ev, kind)
        if kind in ORG_KINDS:
            deny(signer_id == "root", PERMISSION_DENIED, f"{kind} signed by {signer_id!r}, not root")
            if kind == "organisation_registered":
                deny(k.organisation_id not in self.orgs, ALREADY_EXISTS, "organisation already registered")
                deny(not invalid_key(k.public_key), INVALID_ARGUMENT, "invalid public key")
                self.orgs[k.organisation_id] = {"roles": set(k.roles), "key": k.public_key}
            else:
                deny(k.organisation_id in self.orgs, NOT_FOUND, "rotation for an unknown organisation")
                deny(not invalid_key(k.new_public_key), INVALID_ARGUMENT, "invalid public key")
                deny(k.new_public_key != self.orgs[k.organisation_id]["key"], FAILED_PRECONDITION,
                     "rotation to the same key")
                self.orgs[k.organisation_id] = dict(self.orgs[k.organisation_id], key=k.new_public_key)
                self.stats["rotations"] += 1
            return
        deny(signer_id != "root", PERMISSION_DENIED, f"{kind} signed by root")
        deny(signer_id in self.orgs, UNAUTHENTICATED, "unregistered signer")
        roles = self.orgs[signer_id]["roles"]
        if kind == "controls_configured":
            # api.md §5: an organisation with ROLE_COMMISSIONER (else 7); it
            # changes no budget (derive_flags keeps the thresholds).
            deny(pb.ROLE_COMMISSIONER in roles, PERMISSION_DENIED,
                 "controls_configured signed by an organisation without ROLE_COMMISSIONER")
            return
        if kind == "budget_opened":
            deny(pb.ROLE_COMMISSIONER in roles and k.commissioner_id == signer_id, PERMISSION_DENIED,
                 "signer is not the commissioner")
            deny(ev.budget_id not in self.budgets, ALREADY_EXISTS, "budget_id already used")
            if k.funds_holder_id:
                role = pb.ROLE_THIRD_PARTY if k.management == pb.MANAGEMENT_THIRD_PARTY else pb.ROLE_ACCOUNT_PROVIDER
                deny(k.funds_holder_id in self.orgs and role in self.orgs[k.funds_holder_id]["roles"],
                     FAILED_PRECONDITION, "funds holder unregistered or lacks its role")
            if k.payroll_provider_id:
                deny(k.payroll_provider_id in self.orgs
                     and pb.ROLE_PAYROLL_PROVIDER in self.orgs[k.payroll_provider_id]["roles"],
                     FAILED_PRECONDITION, "payroll provider unregistered or lacks its role")
            if k.plan_facilitator_id:
                deny(k.plan_facilitator_id in self.orgs
                     and pb.ROLE_PLAN_FACILITATOR in self.orgs[k.plan_facilitator_id]["roles"],
                     FAILED_PRECONDITION, "plan facilitator unregistered or lacks its role")
            b = Budget(ev.budget_id, k)
            b.last_sequence = seq
            self.budgets[ev.budget_id] = b
            return
        deny(ev.budget_id in self.budgets, NOT_FOUND, "unknown budget")
        b = copy.deepcopy(self.budgets[ev.budget_id])  # stored only if the event is accepted
        commissioner = pb.ROLE_COMMISSIONER in roles and b.commissioner_id == signer_id
        funds_holder = b.funds_holder_id == signer_id and (
            pb.ROLE_THIRD_PARTY in roles or pb.ROLE_ACCOUNT_PROVIDER in roles)
        payroll = b.payroll_provider_id == signer_id and pb.ROLE_PAYROLL_PROVIDER in roles
        if kind == "payment":
            allowed = commissioner if b.notional else (
                funds_holder or (payroll and k.payee_kind in (pb.PAYEE_KIND_PERSONAL_ASSISTANT,
                                                              pb.PAYEE_KIND_TAX_AUTHORITY,
                                                              pb.PAYEE_KIND_PENSION_SCHEME)))
        elif kind == "purchase":
            allowed = commissioner if b.notional else funds_holder
        elif kind in ("care_plan_approved", "service_agreement_approved"):
            facilitator = b.plan_facilitator_id == signer_id and pb.ROLE_PLAN_FACILITATOR in roles
            allowed = commissioner or facilitator
        elif kind == "refund":
            allowed = commissioner or funds_holder or payroll
        elif kind == "card_transaction":
            allowed = not b.notional and funds_holder and pb.ROLE_ACCOUNT_PROVIDER in roles
        else:
            allowed = commissioner
        deny(allowed, PERMISSION_DENIED, f"{signer_id} may not sign {kind} on {b.budget_id}")
        deny(not b.stopped or kind in AFTER_STOP_KINDS, FAILED_PRECONDITION, "budget stopped")
        if kind in ("disbursement", "payment", "purchase", "card_transaction"):
            deny(not b.suspended, FAILED_PRECONDITION, "budget suspended")
            on = datetime.datetime.fromtimestamp(ev.occurred_at.seconds, datetime.timezone.utc).date().isoformat()
            until = on
            if kind == "payment" and k.agreement_id:
                until = max(on, k.service_to)
            deny(b.died_on is None or until <= b.died_on, FAILED_PRECONDITION, "after the holder's death")
        spendable = b.available if b.notional else b.held
        if kind == "allocation":
            b.allocated += Decimal(k.amount)
        elif kind == "disbursement":
            a = Decimal(k.amount)
            deny(not b.notional, FAILED_PRECONDITION, "disbursement on a notional budget")
            deny(a <= b.allocated - b.paid_in, FAILED_PRECONDITION, "over-disbursement")
            b.paid_in += a
        elif kind in ("payment", "purchase", "card_transaction"):
            a = Decimal(k.amount)
            if kind == "card_transaction":
                deny(k.mcc not in BLOCKED_MCCS, FAILED_PRECONDITION, "blocked merchant category")
                if k.channel == pb.CARD_CHANNEL_ATM:
                    category = "cash"  # then, like any spending, a plan line for it
                else:
                    deny(k.mcc in MCC_CATEGORIES, FAILED_PRECONDITION, "unmapped merchant category")
                    category = MCC_CATEGORIES[k.mcc]
            else:
                category = k.category
            deny(category not in EXCLUDED_CATEGORIES, FAILED_PRECONDITION, "excluded category")
            if kind == "payment":
                # docs/api.md "Service agreements".
                pa_or_provider = k.payee_kind in (pb.PAYEE_KIND_PERSONAL_ASSISTANT, pb.PAYEE_KIND_PROVIDER)
                if not k.agreement_id:
                    # Whether or not the budget has agreements yet; tax and
                    # pension payments need none.
                    deny(not pa_or_provider, FAILED_PRECONDITION, "payment without an agreement")
                else:
                    ag = b.agreements.get(k.agreement_id)
                    deny(ag is not None, FAILED_PRECONDITION, "unknown agreement")
                    deny((ag.payee_ref, ag.payee_kind, ag.category) == (k.payee_ref, k.payee_kind, k.category),
                         FAILED_PRECONDITION, "payee or category not the agreement's")
                    deny(ag.valid_from <= k.service_from and k.service_to <= ag.valid_to, FAILED_PRECONDITION,
                         "service period outside the agreement")
                    on_day = datetime.datetime.fromtimestamp(ev.occurred_at.seconds, datetime.timezone.utc).date().isoformat()
                    deny(k.service_to <= on_day, FAILED_PRECONDITION, "service period not ended (arrears)")
                    deny(Decimal(ag.rate) * Decimal(k.units) == a, FAILED_PRECONDITION, "amount is not rate x units")
                    if ag.max_units_per_week:
                        days = (datetime.date.fromisoformat(k.service_to)
                                - datetime.date.fromisoformat(k.service_from)).days + 1
                        deny(Decimal(k.units) <= ag.max_units_per_week * ((days + 6) // 7), FAILED_PRECONDITION,
                             "units beyond the weekly limit")
            # Every spending needs a care plan (proto CarePlanApproved: none is
            # accepted before a budget's first plan), in force on occurred_at's
            # UTC date, with a line for the category, the amount within its
            # lines (in line order) plus the unused contingency.
            deny(b.plan is not None, FAILED_PRECONDITION, "no approved care plan")
            on = datetime.datetime.fromtimestamp(ev.occurred_at.seconds, datetime.timezone.utc).date().isoformat()
            p = b.plan
            deny(p["valid_from"] <= on <= p["valid_to"], FAILED_PRECONDITION, "plan not in force")
            idx = [i for i, l in enumerate(p["lines"]) if l[0] == category]
            deny(idx, FAILED_PRECONDITION, "no plan line for the category")
            due, lines = a, []
            for i in idx:
                take = min(p["lines"][i][1] - p["spent"][i], due)
                if take > 0:
                    lines.append([i, take])
                    due -= take
            deny(due <= p["contingency"] - p["contingency_used"], FAILED_PRECONDITION, "beyond the plan")
            deny(a <= spendable, FAILED_PRECONDITION, "overspend")
            b.spent += a
            for i, m in lines:
                p["spent"][i] += m
            p["contingency_used"] += due
            # What a refund gives back while this plan (this approval) is the
            # one in force: [plan approval sequence, [[line, amount], ...],
            # contingency amount].
            b.spendings[seq] = {"signer": signer_id, "amount": a, "refunded": Decimal("0.00"),
                                "charge": [p["approved_at"], lines, due]}
        elif kind == "review_adjustment":
            d = Decimal(k.delta)
            deny(b.allocated + d >= (b.spent if b.notional else b.paid_in), FAILED_PRECONDITION,
                 "review below paid_in/spent")
            b.allocated += d
        elif kind == "budget_stopped":
            b.stopped = True
        elif kind == "hospital_admission":
            deny(b.in_hospital_since is None, FAILED_PRECONDITION, "already in hospital")
            b.in_hospital_since = k.date
        elif kind == "hospital_discharge":
            deny(b.in_hospital_since is not None, FAILED_PRECONDITION, "not in hospital")
            deny(k.date >= b.in_hospital_since, FAILED_PRECONDITION, "discharge before admission")
            b.in_hospital_since = None
        elif kind in ("review_recorded", "external_match_recorded", "flag_reviewed"):
            pass  # no figure changes; the flags are derive_flags' business
        elif kind == "service_agreement_approved":
            deny(commissioner or not k.connected_person, PERMISSION_DENIED,
                 "a connected-person agreement approved by the facilitator")
            deny(k.category not in EXCLUDED_CATEGORIES, FAILED_PRECONDITION, "agreement for an excluded category")
            deny(k.agreement_id not in b.agreements, ALREADY_EXISTS, "agreement id already used")
            b.agreements[k.agreement_id] = k
        elif kind == "budget_suspended":
            deny(not b.suspended, FAILED_PRECONDITION, "already suspended")
            b.suspended = True
        elif kind == "budget_resumed":
            deny(b.suspended, FAILED_PRECONDITION, "not suspended")
            b.suspended = False
        elif kind == "holder_died":
            deny(b.died_on is None, FAILED_PRECONDITION, "death already recorded")
            b.died_on = k.date
        elif kind == "reclaim":
            a = Decimal(k.amount)
            deny(not b.notional, FAILED_PRECONDITION, "reclaim on a notional budget")
            deny(a <= b.held, FAILED_PRECONDITION, "reclaim beyond what is held")
            b.paid_in -= a
            b.allocated -= a
        elif kind == "refund":
            a = Decimal(k.amount)
            orig = b.spendings.get(k.original_sequence)
            deny(orig is not None, FAILED_PRECONDITION, "refund of no spending on this budget")
            deny(orig["signer"] == signer_id, PERMISSION_DENIED, "refund by another organisation than the spender")
            deny(a <= orig["amount"] - orig["refunded"], FAILED_PRECONDITION, "refund beyond the spending")
            orig["refunded"] += a
            b.spent -= a
            # proto Refund: the amount goes back to the plan the original was
            # charged to, if that approval is still the plan in force: its
            # contingency first, then its lines last to first.
            charged_to, lines, contingency = orig["charge"]
            if b.plan is not None and b.plan["approved_at"] == charged_to:
                t = min(contingency, a)
                orig["charge"][2] -= t
                b.plan["contingency_used"] -= t
                due = a - t
                for line in reversed(lines):
                    t = min(line[1], due)
                    line[1] -= t
                    b.plan["spent"][line[0]] -= t
                    due -= t
                orig["charge"][1] = [line for line in lines if line[1] > 0]
                check(due == 0, f"{b.budget_id}: a refund of {a} exceeds its spending's charge")
        elif kind == "facilitator_appointed":
            deny(k.organisation_id in self.orgs and pb.ROLE_PLAN_FACILITATOR in self.orgs[k.organisation_id]["roles"],
                 FAILED_PRECONDITION, "facilitator unregistered or lacks its role")
            b.plan_facilitator_id = k.organisation_id
        elif kind == "care_plan_approved":
            deny(all(l.category not in EXCLUDED_CATEGORIES for l in k.lines), FAILED_PRECONDITION,
                 "a plan line for an excluded category")
            total = Decimal(k.contingency_amount) + sum(Decimal(l.annual_amount) for l in k.lines)
            deny(commissioner or total * 100 <= b.allocated * 115, PERMISSION_DENIED,
                 "a plan more than 15 % above the allocation approved by the facilitator")
            b.plan = {
                "approved_at": seq, "approved_by": signer_id, "plan_id": k.plan_id, "review_due": k.review_due,
                "valid_from": k.valid_from, "valid_to": k.valid_to,
                "lines": [(l.category, Decimal(l.annual_amount), l.line_id, l.description) for l in k.lines],
                "spent": [Decimal("0.00")] * len(k.lines),
                "contingency": Decimal(k.contingency_amount), "contingency_used": Decimal("0.00"),
            }
        b.last_sequence = seq
        # Invariants the docs promise follow from the rules: a breach is the
        # auditor's (or the server's) bug, never a refusal.
        if b.notional:
            check(0 <= b.spent <= b.allocated, f"{b.budget_id}: invariant 0 <= spent <= allocated broken")
        else:
            check(0 <= b.spent <= b.paid_in <= b.allocated,
                  f"{b.budget_id}: invariant 0 <= spent <= paid_in <= allocated broken")
        self.budgets[ev.budget_id] = b

    def derive_flags(self, signer_id, ev, seq):
        """docs/flags.md, for an applied entry (after `rules`): the flags an
        external match raises, the reviews and the thresholds."""
        kind = ev.WhichOneof("kind")
        k = getattr(ev, kind)
        if kind == "controls_configured":
            self.controls[signer_id] = (seq, k.SerializeToString(deterministic=True))
        elif kind == "flag_reviewed":
            self.reviews[k.flag_id] = (k.outcome, signer_id, seq, k.note)  # a later review replaces it
        elif kind == "external_match_recorded":
            b = self.budgets[ev.budget_id]
            deceased = k.kind == pb.MATCH_KIND_DECEASED
            raised = [(pb.FLAG_CODE_EXTERNAL_MATCH, pb.FLAG_SEVERITY_HIGH if deceased else pb.FLAG_SEVERITY_MEDIUM)]
            if deceased and b.died_on is None:
                raised.append((pb.FLAG_CODE_AFTER_DEATH, pb.FLAG_SEVERITY_HIGH))
            for code, severity in raised:
                flag_id = f"{FLAG_CODE_NAMES[code]}:{b.budget_id}:{seq}"
                check(flag_id not in self.flags, f"log entry {seq}: flag {flag_id} raised twice")
                self.flags[flag_id] = {"flag_id": flag_id, "code": code, "severity": severity,
                                       "budget_id": b.budget_id, "commissioner_id": b.commissioner_id,
                                       "sequences": [seq], "raised_at_sequence": seq}

    def review_of(self, flag_id):
        """A flag's review fields as ListFlags must give them (proto Flag)."""
        r = self.reviews.get(flag_id)
        if r is None:
            return {"status": pb.FLAG_STATUS_OPEN, "reviewed_by": "", "review_sequence": 0, "review_note": ""}
        outcome, by, seq, note = r
        status = pb.FLAG_STATUS_CONFIRMED if outcome == pb.FLAG_OUTCOME_CONFIRMED else pb.FLAG_STATUS_DISMISSED
        return {"status": status, "reviewed_by": by, "review_sequence": seq, "review_note": note}

    def expected_flag(self, flag_id):
        return dict(self.flags[flag_id], **self.review_of(flag_id))

    def expected_balance(self, budget_id):
        b = self.budgets[budget_id]
        return {
            "budget_id": b.budget_id, "holder_ref": b.holder_ref, "commissioner_id": b.commissioner_id,
            "management": b.management, "funds_holder_id": b.funds_holder_id,
            "payroll_provider_id": b.payroll_provider_id, "allocated": fmt(b.allocated),
            "paid_in": fmt(b.paid_in), "spent": fmt(b.spent), "held": fmt(b.held),
            "available": fmt(b.available), "stopped": b.stopped, "last_sequence": b.last_sequence,
            "period_start": b.period_start, "period_end": b.period_end,
        }


def compare_balance(expected, got, who):
    for field, want in expected.items():
        have = getattr(got, field)
        check(have == want, f"{who}: budget {expected['budget_id']} {field}: server says {have!r}, "
              f"the replayed log gives {want!r}")
    for field in ("allocated", "paid_in", "spent", "held", "available"):
        check(re.fullmatch(r"-?[0-9]+\.[0-9]{2}", getattr(got, field)) is not None,
              f"{who}: {field} {getattr(got, field)!r} does not have exactly two decimal places")


def parse_ledger_file(path):
    """log-format.md §5: the records of log/ledger.log, CRC-checked."""
    with open(path, "rb") as f:
        data = f.read()
    # Magic "PHBLEDG1", u32be version 1, u32be reserved (not checked).
    check(len(data) >= 16 and data[:12] == b"PHBLEDG1" + struct.pack(">I", 1), f"{path}: bad header {data[:16].hex()}")
    off, out = 16, []
    while off < len(data):
        check(len(data) - off >= 8, f"{path}: damaged record at offset {off} (short frame)")
        plen, crc = struct.unpack(">II", data[off:off + 8])
        check(1 <= plen <= 1 << 20 and off + 8 + plen <= len(data), f"{path}: damaged record at offset {off}")
        payload = data[off + 8:off + 8 + plen]
        check(crc32c(payload) == crc, f"{path}: CRC mismatch at offset {off}")
        seq, micros = struct.unpack(">Qq", payload[:16])
        prev, h = payload[16:48], payload[48:80]
        p, fields = 80, []
        for _ in range(3):
            check(p + 4 <= plen, f"{path}: record {seq} truncated")
            n = struct.unpack(">I", payload[p:p + 4])[0]
            check(p + 4 + n <= plen, f"{path}: record {seq} length runs past the payload")
            fields.append(payload[p + 4:p + 4 + n])
            p += 4 + n
        # Optional refusal trailer: 'R' || u32be code || u8 flags || u32be len || message.
        refusal, extra, first = None, 0, False
        if p < plen:
            check(plen - p >= 10 and payload[p:p + 1] == b"R",
                  f"{path}: record {seq} has {plen - p} bytes after the event that are not a refusal trailer")
            code, flags, n = struct.unpack(">IBI", payload[p + 1:p + 10])
            check(flags in (0, 1, 3), f"{path}: record {seq} refusal flags {flags:#x} (0, 1 or 3)")
            check(p + 10 + n <= plen, f"{path}: record {seq} refusal message runs past the payload")
            check(n <= MAX_REFUSAL_MESSAGE_BYTES, f"{path}: record {seq} refusal message of {n} bytes")
            try:
                message = payload[p + 10:p + 10 + n].decode("utf-8")
            except UnicodeDecodeError:
                raise Mismatch(f"{path}: record {seq} refusal message is not UTF-8")
            refusal, extra = (code, flags & 1 == 1, message), 10 + n
            first = flags == 3
            p += extra
        check(p == plen, f"{path}: record {seq} has {plen - p} bytes left over")
        check(plen == 92 + sum(len(x) for x in fields) + extra, f"{path}: payload_len formula")
        out.append((seq, micros, prev, h, fields[0].decode("utf-8"), fields[1], fields[2], refusal, first))
        off += 8 + plen
    return out


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


def now_ts(offset_seconds=0):
    t = Timestamp()
    t.GetCurrentTime()
    t.seconds += offset_seconds
    return t


class Org:
    def __init__(self, org_id, key=None):
        self.id = org_id
        self.key = key or SigningKey.generate()

    @property
    def public(self):
        return self.key.verify_key.encode()

    def sign(self, event):
        data = event.SerializeToString()  # serialize once; sign and send these bytes
        return pb.SignedEvent(event=data, signer_id=self.id, signature=self.key.sign(data).signature)

    def md(self, method, timestamp=None):
        ts = int(time.time()) if timestamp is None else timestamp
        return read_signature_metadata(self.id, self.key, method, ts)


class Client:
    def __init__(self, channel, ledger_id, tag):
        self.stub = pb_grpc.LedgerServiceStub(channel)
        self.ledger_id = ledger_id
        self.tag = tag
        self.n = 0
        self.head = 0  # last sequence this client saw written (it is the only writer)
        # sequence -> (SignedEvent, entry_hash, refusal): refusal is None for
        # a written event, else (code, in_atomic_batch, message) as answered.
        self.receipts = {}
        self.unrecorded_signed = []  # refused, nothing recorded: none may appear in the log
        self.recorded = []  # (SignedEvent, AppendResult) of refusals recorded in the log: final
        # refusal sequence -> the rule it is meant to test, as the auditor's
        # rules name it (Refused messages in Auditor.rules): the audit checks
        # the auditor re-derives each refusal for that very reason.
        self.why = {}
        # flag id -> Flag, as AppendResult.flags answered it when the entry
        # that raised it was written (docs/flags.md "How flags reach people").
        self.raised = {}
        # AppendResult.tree_size checked: [naming an entry, nothing written].
        self.tree_sizes = [0, 0]

    def event(self, name, budget_id="", occurred_at=None, **kind):
        self.n += 1
        return pb.Event(event_id=f"{self.tag}.{name}.{self.n}", ledger_id=self.ledger_id, budget_id=budget_id,
                        occurred_at=occurred_at if occurred_at is not None else now_ts(), **kind)

    def append(self, signed, atomic=False):
        resp = self.stub.Append(pb.AppendRequest(events=signed, atomic=atomic), timeout=RPC_TIMEOUT)
        check(len(resp.results) == len(signed), f"Append: {len(resp.results)} results for {len(signed)} events")
        for r in resp.results:
            # proto AppendResult.tree_size, docs/audit.md "Receipts": the
            # smallest tree that includes the entry named, i.e. its sequence
            # (written or recorded refusal, duplicates too); 0 if none.
            named = r.sequence or r.refusal_sequence
            check(not (r.sequence and r.refusal_sequence),
                  f"Append {r.event_id!r}: both sequence {r.sequence} and refusal_sequence {r.refusal_sequence}")
            check(r.tree_size == named, f"Append {r.event_id!r}: tree_size {r.tree_size}, expected {named} "
                  f"(sequence {r.sequence}, refusal_sequence {r.refusal_sequence}, code {r.error.code}, "
                  f"duplicate {r.duplicate})")
            self.tree_sizes[named == 0] += 1
        return list(resp.results)

    def written(self, result, signed, what):
        e = result.error
        check(e.code == OK, f"{what}: refused with code {e.code} field {e.field!r}: {e.message}")
        check(not result.duplicate, f"{what}: unexpectedly a duplicate")
        check(result.sequence == self.head + 1,
              f"{what}: written at sequence {result.sequence}, expected {self.head + 1}")
        check(result.refusal_sequence == 0, f"{what}: written, but refusal_sequence {result.refusal_sequence}")
        check(len(result.entry_hash) == 32, f"{what}: entry_hash is {len(result.entry_hash)} bytes")
        ev = pb.Event.FromString(signed.event)
        check(result.event_id == ev.event_id, f"{what}: event_id echoed as {result.event_id!r}")
        self.head = result.sequence
        self.receipts[result.sequence] = (signed, result.entry_hash, None)
        self.took_flags(result, result.sequence, ev, what)
        return result

    def took_flags(self, result, seq, ev, what):
        """AppendResult.flags of an entry written at `seq`: raised by it
        (proto Flag: the last triggering sequence, the key for event-driven
        rules), on its budget, never a time-based rule, each id once."""
        for f in result.flags:
            where = f"{what}: AppendResult flag {f.flag_id!r}"
            check(f.code in FLAG_CODE_NAMES and f.code not in TIME_BASED_FLAGS,
                  f"{where}: code {f.code} (time-based rules are never raised by an append)")
            check(f.flag_id == f"{FLAG_CODE_NAMES[f.code]}:{ev.budget_id}:{seq}" and f.budget_id == ev.budget_id,
                  f"{where}: not \"{{CODE}}:{ev.budget_id}:{seq}\" on budget {ev.budget_id} ({f.budget_id})")
            check(f.raised_at_sequence == seq and f.sequences and f.sequences[-1] == seq
                  and list(f.sequences) == sorted(set(f.sequences)),
                  f"{where}: raised_at {f.raised_at_sequence} sequences {list(f.sequences)} (entry {seq})")
            check(f.severity != pb.FLAG_SEVERITY_UNSPECIFIED and f.explanation != "",
                  f"{where}: no severity or explanation")
            check(f.status == pb.FLAG_STATUS_OPEN and not f.reviewed_by and not f.review_sequence,
                  f"{where}: a fresh flag is not OPEN")
            check(f.flag_id not in self.raised, f"{where}: raised twice")
            self.raised[f.flag_id] = f

    def write(self, signer, event, what):
        signed = signer.sign(event)
        return self.written(self.append([signed])[0], signed, what), signed

    def refused(self, result, signed, code, what, field=None, recorded=None, in_batch=False, why=None):
        """A refusal with `code`. `recorded`: whether the ledger records it in
        the log (a decision of the rules, api.md §4 "Refusals are final"):
        by default yes for 5, 7 and 9 and no for 3, 14 and 16; for 6 (a
        budget or organisation that exists, or a reused event_id) and 10
        (an atomic batch that failed by a decision, or not) the caller says.
        A recorded refusal takes the next sequence, in request order."""
        if recorded is None:
            assert code not in (ALREADY_EXISTS, ABORTED), "say whether this refusal is recorded"
            recorded = code in DECISIONS
        e = result.error
        check(e.code == code, f"{what}: expected code {code}, got {e.code} field {e.field!r}: {e.message!r}")
        if field is not None:
            check(e.field == field, f"{what}: expected field {field!r}, got {e.field!r} ({e.message})")
        check(result.sequence == 0 and not result.duplicate,
              f"{what}: refused but sequence={result.sequence} duplicate={result.duplicate}")
        check(e.message != "", f"{what}: refusal has no message")
        if recorded:
            check(result.refusal_sequence == self.head + 1,
                  f"{what}: refusal_sequence {result.refusal_sequence}, expected the refusal recorded at "
                  f"{self.head + 1}")
            check(len(result.entry_hash) == 32, f"{what}: recorded refusal's entry_hash is "
                  f"{len(result.entry_hash)} bytes")
            ev = pb.Event.FromString(signed.event)
            check(result.event_id == ev.event_id, f"{what}: event_id echoed as {result.event_id!r}")
            self.head = result.refusal_sequence
            self.receipts[self.head] = (signed, result.entry_hash, (code, in_batch, e.message))
            self.recorded.append((signed, result))
            self.took_flags(result, self.head, ev, what)
            if why is not None:
                self.why[self.head] = (why, what)
        else:
            check(result.refusal_sequence == 0 and result.entry_hash == b"",
                  f"{what}: a refusal that decides nothing, but refusal_sequence={result.refusal_sequence} "
                  f"entry_hash={result.entry_hash.hex()!r}")
            check(not result.flags, f"{what}: nothing recorded, yet flags {[f.flag_id for f in result.flags]}")
            if code != ABORTED:  # an aborted event may legitimately be written later
                self.unrecorded_signed.append(signed)

    def refuse(self, signer, event, code, what, field=None, recorded=None, why=None):
        signed = signer.sign(event) if signer is not None else event
        self.refused(self.append([signed])[0], signed, code, what, field, recorded, why=why)
        return signed

    def same_refusal(self, result, original, what):
        """`result` answers a resubmission of a signed event whose refusal
        was recorded as `original` said: the same refusal, as a duplicate."""
        check(result.duplicate and result.sequence == 0, f"{what}: resubmitted refused event: "
              f"duplicate={result.duplicate} sequence={result.sequence} code={result.error.code}")
        check((result.error.code, result.error.message, result.error.field)
              == (original.error.code, original.error.message, original.error.field),
              f"{what}: resubmission answered code {result.error.code} {result.error.message!r}, the original "
              f"refusal was {original.error.code} {original.error.message!r}")
        check(result.refusal_sequence == original.refusal_sequence and result.entry_hash == original.entry_hash,
              f"{what}: resubmission names refusal {result.refusal_sequence}, the original was "
              f"{original.refusal_sequence}")
        check(result.event_id == original.event_id, f"{what}: event_id echoed as {result.event_id!r}")
        check(list(result.flags) == list(original.flags), f"{what}: resubmission answered flags "
              f"{[f.flag_id for f in result.flags]}, the original {[f.flag_id for f in original.flags]}")

    def list_flags(self, reader, page_size=0, as_of=None, **filters):
        """Every page of ListFlags (api.md §8): (flags, head_sequence, pages)."""
        out, token, pages, heads = [], "", 0, set()
        while True:
            req = pb.ListFlagsRequest(page_size=page_size, page_token=token, **filters)
            if as_of is not None:
                req.as_of.CopyFrom(as_of)
            r = self.stub.ListFlags(req, metadata=reader.md("ListFlags"), timeout=RPC_TIMEOUT)
            pages += 1
            check(len(r.flags) <= (page_size or 500), f"ListFlags: page of {len(r.flags)} > {page_size or 500}")
            out.extend(r.flags)
            heads.add(r.head_sequence)
            if not r.next_page_token:
                break
            check(len(r.flags) > 0, "ListFlags: empty page with a next_page_token")
            check(pages < 10_000, "ListFlags: paging does not end")
            token = r.next_page_token
        check(len(heads) == 1, f"ListFlags: pages derived at heads {sorted(heads)} with no write in between")
        ids = [f.flag_id.encode() for f in out]
        check(ids == sorted(ids) and len(set(ids)) == len(ids), f"ListFlags: not strictly ordered by flag_id: {ids}")
        return out, heads.pop(), pages

    def balance(self, reader, budget_id):
        return self.stub.GetBalance(pb.GetBalanceRequest(budget_id=budget_id), metadata=reader.md("GetBalance"),
                                    timeout=RPC_TIMEOUT).balance

    def list_all(self, reader, page_size, commissioner_id=""):
        out, token, pages = [], "", 0
        while True:
            r = self.stub.ListBalances(
                pb.ListBalancesRequest(commissioner_id=commissioner_id, page_size=page_size, page_token=token),
                metadata=reader.md("ListBalances"), timeout=RPC_TIMEOUT)
            pages += 1
            check(len(r.balances) <= (page_size or 100), f"ListBalances: page of {len(r.balances)} > {page_size}")
            out.extend(r.balances)
            if not r.next_page_token:
                break
            check(len(r.balances) > 0, "ListBalances: empty page with a next_page_token")
            check(pages < 10_000, "ListBalances: paging does not end")
            token = r.next_page_token
        ids = [b.budget_id.encode() for b in out]
        check(ids == sorted(ids) and len(set(ids)) == len(ids),
              f"ListBalances: not strictly ordered by budget id: {ids}")
        return out, pages

    def read_log(self, reader, from_sequence=0):
        return [r.entry for r in self.stub.ReadLog(pb.ReadLogRequest(from_sequence=from_sequence, follow=False),
                                                    metadata=reader.md("ReadLog"), timeout=RPC_TIMEOUT)]


def rpc_code(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def health_and_reflection(channel):
    step("health and reflection")
    health = health_pb2_grpc.HealthStub(channel)
    for svc in ("", SERVICE):
        r = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=RPC_TIMEOUT)
        check(r.status == health_pb2.HealthCheckResponse.SERVING, f"health {svc!r}: status {r.status}")
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=RPC_TIMEOUT)
    check(next(watch).status == health_pb2.HealthCheckResponse.SERVING, "health Watch: first status not SERVING")
    watch.cancel()

    # v1alpha through grpcio-reflection's own client: list the services, then
    # build the whole schema (dependencies fetched by file name, as grpcurl
    # does) and use it to encode an Event without the proto files.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    check(SERVICE in services and "grpc.health.v1.Health" in services,
          f"reflection v1alpha (grpcio-reflection client): services {sorted(services)}")
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName(SERVICE)
    # The methods api.md §1 lists must be served, and exactly the methods
    # proto/ declares (methods added to the proto later are then covered by
    # the schema comparison below, not refused here).
    served = {m.name for m in svc.methods}
    documented = {"Append", "GetBalance", "ListBalances", "ReadLog", "GetHoldings", "GetBudgetStatement", "GetCarePlan",
                  "ListFlags", "GetSpendingSummary", "GetQuarterlyReturn",
                  "GetCheckpoint", "GetInclusionProof", "GetConsistencyProof"}
    declared = {m.name for m in pb.DESCRIPTOR.services_by_name["LedgerService"].methods}
    check(documented <= served and served == declared,
          f"reflection v1alpha: methods {sorted(served)}; documented {sorted(documented)}, proto/ {sorted(declared)}")
    check(svc.methods_by_name["ReadLog"].server_streaming, "reflection: ReadLog is not server-streaming")
    lf = svc.methods_by_name["ListFlags"]
    check((lf.input_type.full_name, lf.output_type.full_name, lf.server_streaming)
          == ("phb.ledger.v1.ListFlagsRequest", "phb.ledger.v1.ListFlagsResponse", False),
          f"reflection: ListFlags is {lf.input_type.full_name} -> {lf.output_type.full_name}")
    for name in ("GetCheckpoint", "GetInclusionProof", "GetConsistencyProof"):  # docs/audit.md, unary
        m = svc.methods_by_name[name]
        check((m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
              == (f"phb.ledger.v1.{name}Request", f"phb.ledger.v1.{name}Response", False, False),
              f"reflection: {name} is {m.input_type.full_name} -> {m.output_type.full_name}")
    Dyn = message_factory.GetMessageClass(pool.FindMessageTypeByName("phb.ledger.v1.Event"))
    dyn = Dyn(event_id="e-1", ledger_id="phb-local", budget_id="b-1")
    dyn.occurred_at.seconds = 1764000000
    dyn.allocation.amount, dyn.allocation.basis = "4800.00", 2
    check(dyn.SerializeToString().hex() == "0a03652d3112097068622d6c6f63616c1a03622d31220608808292c9066a0b0a07"
          "343830302e30301002", "reflection: an Event built from the served schema encodes differently")

    local = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(local)

    def schema(fdp):
        # json_name is filled in by some compilers and not by CopyToProto.
        fdp = descriptor_pb2.FileDescriptorProto.FromString(fdp.SerializeToString())
        for m in fdp.message_type:
            for f in m.field:
                f.ClearField("json_name")
        return (list(fdp.message_type), list(fdp.enum_type), list(fdp.service))

    for version in ("v1", "v1alpha"):
        # v1 and v1alpha messages are wire-identical; only the method path differs.
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=refl_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=refl_pb2.ServerReflectionResponse.FromString)
        reqs = [refl_pb2.ServerReflectionRequest(list_services=""),
                refl_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                refl_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
                refl_pb2.ServerReflectionRequest(file_by_filename="google/protobuf/timestamp.proto")]
        resps = list(call(iter(reqs), timeout=RPC_TIMEOUT))
        check(len(resps) == len(reqs), f"reflection {version}: {len(resps)} responses to {len(reqs)} requests")
        check(not any(r.HasField("error_response") for r in resps),
              f"reflection {version}: error {[r.error_response for r in resps]}")
        names = {s.name for s in resps[0].list_services_response.service}
        check(SERVICE in names, f"reflection {version}: {SERVICE} not listed ({sorted(names)})")
        check("grpc.health.v1.Health" in names, f"reflection {version}: health not listed ({sorted(names)})")

        def files(r):
            return [descriptor_pb2.FileDescriptorProto.FromString(b)
                    for b in r.file_descriptor_response.file_descriptor_proto]

        mine = [f for f in files(resps[1]) if f.package == "phb.ledger.v1"]
        check(len(mine) == 1, f"reflection {version}: no phb.ledger.v1 file descriptor")
        check(schema(mine[0]) == schema(local), f"reflection {version}: served schema differs from proto/")
        check(any(s.name == "Health" for f in files(resps[2]) for s in f.service),
              f"reflection {version}: no health descriptor")
        check(any(m.name == "Timestamp" for f in files(resps[3]) for m in f.message_type),
              f"reflection {version}: google/protobuf/timestamp.proto not served")
    print(f"   health SERVING; reflection v1 + v1alpha list {SERVICE}; served schema == proto/")


def raised_fields(f):
    """What an entry raised in a Flag (proto Flag), without its review."""
    return (f.flag_id, f.code, f.severity, f.budget_id, f.commissioner_id, list(f.sequences), f.raised_at_sequence,
            [(t.name, t.value) for t in f.thresholds], f.explanation)


def review_fields(f):
    return (f.status, f.reviewed_by, f.review_sequence, f.review_note)


def flags_scenario(c, root, icb, tp, payroll, acct, auditor, tag, b_tp, b_dp, stopped):
    """docs/flags.md: external matches and their flags (in the AppendResult
    and in ListFlags), reviews (also on a stopped budget), a commissioner's
    thresholds, cohorts and age bands; who may record and list what."""
    step("flags: external matches, reviews, thresholds; a budget with a cohort (docs/flags.md)")
    icb2 = Org(f"icb2-{tag}")
    c.write(root, c.event(f"reg-{icb2.id}", organisation_registered=pb.OrganisationRegistered(
        organisation_id=icb2.id, roles=[pb.ROLE_COMMISSIONER], public_key=icb2.public)), "a second commissioner")
    b_chc = f"{tag}-b8-chc"

    def opened(cohort, age_band):
        return c.event(f"open-{b_chc}", b_chc, budget_opened=pb.BudgetOpened(
            holder_ref=f"holder-{secrets.token_hex(4)}", commissioner_id=icb2.id, period_start="2026-04-01",
            period_end="2027-03-31", management=pb.MANAGEMENT_NOTIONAL, cohort=cohort, age_band=age_band))

    # api.md "Enums": cohort and age_band are optional, unknown values 3.
    c.refuse(icb2, opened(99, pb.AGE_BAND_ADULT), INVALID_ARGUMENT, "BudgetOpened with an unknown cohort",
             "kind.budget_opened.cohort")
    c.refuse(icb2, opened(pb.COHORT_CONTINUING_HEALTHCARE, 3), INVALID_ARGUMENT,
             "BudgetOpened with an unknown age band", "kind.budget_opened.age_band")
    c.write(icb2, opened(pb.COHORT_CONTINUING_HEALTHCARE, pb.AGE_BAND_ADULT),
            "BudgetOpened with cohort COHORT_CONTINUING_HEALTHCARE and age band AGE_BAND_ADULT")
    bal = c.balance(icb2, b_chc)
    check((bal.commissioner_id, bal.allocated) == (icb2.id, "0.00"), f"{b_chc}: {bal}")

    def match(bid, kind, ref):
        return c.event("match", bid, external_match_recorded=pb.ExternalMatchRecorded(
            source="NFI-2026", kind=kind, reference=ref))

    def flags_of(result):
        return sorted((f.flag_id, f.code, f.severity, f.budget_id, f.commissioner_id, list(f.sequences),
                       f.raised_at_sequence) for f in result.flags)

    r_pay, pay_signed = c.write(icb, match(b_dp, pb.MATCH_KIND_PAYROLL, "m-77"),
                                "ExternalMatchRecorded (payroll match) by the commissioner")
    pay_match = c.head
    pay_flag = f"EXTERNAL_MATCH:{b_dp}:{pay_match}"
    want = [(pay_flag, pb.FLAG_CODE_EXTERNAL_MATCH, pb.FLAG_SEVERITY_MEDIUM, b_dp, icb.id, [pay_match], pay_match)]
    check(flags_of(r_pay) == want, f"payroll match: AppendResult.flags {flags_of(r_pay)}, docs/flags.md gives {want}")
    r = c.append([pay_signed])[0]
    check(r.duplicate and r.error.code == OK and r.sequence == pay_match and list(r.flags) == list(r_pay.flags),
          f"the payroll match resent: duplicate={r.duplicate} sequence {r.sequence} flags "
          f"{[f.flag_id for f in r.flags]} (a duplicate answers the flags its original raised)")
    r_dead, _ = c.write(icb, match(stopped, pb.MATCH_KIND_DECEASED, "d-12"),
                        "ExternalMatchRecorded (deceased) on a stopped budget: accepted")
    dead_match = c.head
    dead_flag, dead_after = f"EXTERNAL_MATCH:{stopped}:{dead_match}", f"AFTER_DEATH:{stopped}:{dead_match}"
    want = sorted([(dead_flag, pb.FLAG_CODE_EXTERNAL_MATCH, pb.FLAG_SEVERITY_HIGH, stopped, icb.id, [dead_match],
                    dead_match),
                   (dead_after, pb.FLAG_CODE_AFTER_DEATH, pb.FLAG_SEVERITY_HIGH, stopped, icb.id, [dead_match],
                    dead_match)])
    check(flags_of(r_dead) == want, f"deceased match with no death recorded: AppendResult.flags {flags_of(r_dead)}, "
          f"docs/flags.md gives {want}")
    c.refuse(tp, match(b_tp, pb.MATCH_KIND_PAYROLL, "m-78"), PERMISSION_DENIED,
             "ExternalMatchRecorded by the funds holder", why="may not sign external_match_recorded")
    c.refuse(icb, match(b_chc, pb.MATCH_KIND_PAYROLL, "m-79"), PERMISSION_DENIED,
             "ExternalMatchRecorded by another budget's commissioner", why="may not sign external_match_recorded")
    c.refuse(icb, match(b_dp, pb.MATCH_KIND_UNSPECIFIED, "m-80"), INVALID_ARGUMENT,
             "ExternalMatchRecorded with MATCH_KIND_UNSPECIFIED", "kind.external_match_recorded.kind")
    c.refuse(icb, match(f"{tag}-nope", pb.MATCH_KIND_OTHER, "m-81"), NOT_FOUND,
             "ExternalMatchRecorded on an unknown budget", why="unknown budget")
    c.write(icb2, match(b_chc, pb.MATCH_KIND_PAYROLL, "m-82"), "ExternalMatchRecorded by the other commissioner")
    chc_match = c.head
    chc_flag = f"EXTERNAL_MATCH:{b_chc}:{chc_match}"

    def review(bid, flag_id, outcome, note):
        return c.event("flag-review", bid, flag_reviewed=pb.FlagReviewed(flag_id=flag_id, outcome=outcome, note=note))

    r, _ = c.write(icb, review(b_dp, pay_flag, pb.FLAG_OUTCOME_CONFIRMED, "asking the other employer for timesheets"),
                   "FlagReviewed (confirmed)")
    check(not r.flags, f"a FlagReviewed raised {[f.flag_id for f in r.flags]}")
    c.write(icb, review(b_dp, pay_flag, pb.FLAG_OUTCOME_DISMISSED, "hours do not overlap"),
            "a later FlagReviewed (dismissed) replaces the outcome")
    pay_review = c.head
    c.write(icb, review(stopped, dead_flag, pb.FLAG_OUTCOME_CONFIRMED, "death confirmed; nothing moved after it"),
            "FlagReviewed on a stopped budget: accepted")
    dead_review = c.head
    c.refuse(payroll, review(b_dp, pay_flag, pb.FLAG_OUTCOME_DISMISSED, "not ours"), PERMISSION_DENIED,
             "FlagReviewed by the payroll provider", why="may not sign flag_reviewed")
    c.refuse(icb, review(b_tp, pay_flag, pb.FLAG_OUTCOME_DISMISSED, "wrong budget"), INVALID_ARGUMENT,
             "FlagReviewed of another budget's flag", "kind.flag_reviewed.flag_id")
    for bad in (f"NOT_A_RULE:{b_dp}:{pay_match}", f"EXTERNAL_MATCH:{b_dp}:", f"EXTERNAL_MATCH:{b_dp}", "m-77"):
        c.refuse(icb, review(b_dp, bad, pb.FLAG_OUTCOME_DISMISSED, "malformed"), INVALID_ARGUMENT,
                 f"FlagReviewed of flag_id {bad!r}", "kind.flag_reviewed.flag_id")
    c.refuse(icb, review(b_dp, pay_flag, pb.FLAG_OUTCOME_UNSPECIFIED, "no outcome"), INVALID_ARGUMENT,
             "FlagReviewed with FLAG_OUTCOME_UNSPECIFIED", "kind.flag_reviewed.outcome")
    c.refuse(icb, review(b_dp, pay_flag, pb.FLAG_OUTCOME_DISMISSED, "   "), INVALID_ARGUMENT,
             "FlagReviewed with a blank note", "kind.flag_reviewed.note")

    def controls(**kw):
        return c.event("controls", controls_configured=pb.ControlsConfigured(**kw))

    r, _ = c.write(icb2, controls(surplus_weeks=6, worker_hours_per_day=12, spike_multiple="2.5", refusals_count=5),
                   "ControlsConfigured by a commissioner")
    check(not r.flags, f"a ControlsConfigured raised {[f.flag_id for f in r.flags]}")
    c.write(icb, controls(), "ControlsConfigured with every default (all fields 0 / empty)")
    c.refuse(tp, controls(surplus_weeks=6), PERMISSION_DENIED, "ControlsConfigured by a third party",
             why="without ROLE_COMMISSIONER")
    c.refuse(root, controls(surplus_weeks=6), PERMISSION_DENIED, "ControlsConfigured signed by root",
             why="controls_configured signed by root")
    for field, value in (("worker_hours_per_day", 25), ("surplus_weeks", 105), ("refusals_count", 1),
                         ("review_interval_months", 61), ("spike_multiple", "1"), ("spike_multiple", "2.555"),
                         ("spike_multiple", "101"), ("spike_multiple", "3x")):
        c.refuse(icb, controls(**{field: value}), INVALID_ARGUMENT, f"ControlsConfigured {field} {value!r}",
                 f"kind.controls_configured.{field}")
    on_budget = controls(surplus_weeks=6)
    on_budget.budget_id = b_dp
    c.refuse(icb, on_budget, INVALID_ARGUMENT, "ControlsConfigured naming a budget", "budget_id")

    step("ListFlags: the flags raised, with their reviews; who may list them")
    listed, head, pages = c.list_flags(auditor, page_size=1, code=pb.FLAG_CODE_EXTERNAL_MATCH)
    check(head == c.head, f"ListFlags head_sequence {head}, the log's head is {c.head}")
    check(pages >= len(listed) >= 3 and all(f.code == pb.FLAG_CODE_EXTERNAL_MATCH for f in listed),
          f"ListFlags code=EXTERNAL_MATCH, page_size 1: {len(listed)} flags in {pages} pages")
    by_id = {f.flag_id: f for f in listed}
    for fid, want in ((pay_flag, (pb.FLAG_STATUS_DISMISSED, icb.id, pay_review, "hours do not overlap")),
                      (dead_flag, (pb.FLAG_STATUS_CONFIRMED, icb.id, dead_review,
                                   "death confirmed; nothing moved after it")),
                      (chc_flag, (pb.FLAG_STATUS_OPEN, "", 0, ""))):
        check(fid in by_id, f"ListFlags (auditor, code=EXTERNAL_MATCH) does not list {fid}: {sorted(by_id)}")
        check(review_fields(by_id[fid]) == want, f"ListFlags {fid}: review {review_fields(by_id[fid])}, want {want}")
        check(fid not in c.raised or raised_fields(by_id[fid]) == raised_fields(c.raised[fid]),
              f"ListFlags {fid}: {raised_fields(by_id[fid])} differs from its AppendResult flag "
              f"{raised_fields(c.raised[fid])}")
    everything, _, _ = c.list_flags(auditor)
    check(dead_after in {f.flag_id for f in everything}, f"ListFlags does not list {dead_after}")
    check([f.SerializeToString() for f in c.list_flags(root)[0]] == [f.SerializeToString() for f in everything],
          "ListFlags as root differs from ListFlags as an auditor")
    for who, own, other in ((icb, (pay_flag, dead_flag, dead_after), chc_flag), (icb2, (chc_flag,), pay_flag)):
        seen, _, _ = c.list_flags(who, page_size=2)
        ids = {f.flag_id for f in seen}
        check(all(f.commissioner_id == who.id for f in seen) and set(own) <= ids and other not in ids,
              f"ListFlags as commissioner {who.id}: {sorted(ids)} (its own budgets' flags only)")
        check([f.flag_id for f in seen] == [f.flag_id for f in everything if f.commissioner_id == who.id],
              f"ListFlags as commissioner {who.id} is not the auditor's list limited to its budgets")
        check([f.flag_id for f in c.list_flags(who, commissioner_id=who.id)[0]] == [f.flag_id for f in seen],
              f"ListFlags as {who.id} filtered by itself differs")
    check(rpc_code(lambda: c.list_flags(icb, commissioner_id=icb2.id)) == grpc.StatusCode.PERMISSION_DENIED,
          "a commissioner may list another commissioner's flags")
    for who in (tp, payroll, acct):
        check(rpc_code(lambda: c.list_flags(who)) == grpc.StatusCode.PERMISSION_DENIED,
              f"{who.id} (not a commissioner or auditor) may list flags")
    check(rpc_code(lambda: c.stub.ListFlags(pb.ListFlagsRequest(), timeout=RPC_TIMEOUT))
          == grpc.StatusCode.UNAUTHENTICATED, "unsigned ListFlags is not UNAUTHENTICATED")
    dismissed = [f.flag_id for f in c.list_flags(auditor, status=pb.FLAG_STATUS_DISMISSED)[0]]
    check(pay_flag in dismissed and dead_flag not in dismissed, f"ListFlags status=DISMISSED: {dismissed}")
    since = [f.flag_id for f in c.list_flags(auditor, since_sequence=pay_match, budget_id=b_dp)[0]]
    check(pay_flag not in since, f"ListFlags since_sequence={pay_match} lists the flag raised at it: {since}")
    print(f"   3 matches flagged in their AppendResults ({pay_flag}, ...); reviews, scopes and filters as documented; "
          f"{len(everything)} flags in all")


def flags_as_of():
    """The as_of of the audit's ListFlags: today (UTC), pinned for the restart."""
    today = datetime.datetime.now(datetime.timezone.utc).date()
    return Timestamp(seconds=int(datetime.datetime(today.year, today.month, today.day,
                                                   tzinfo=datetime.timezone.utc).timestamp()))


def run(addr, datadir):
    self_test()
    with open(os.path.join(datadir, "ledger-id")) as f:
        ledger_id = f.read().strip()
    with open(os.path.join(datadir, "root.key")) as f:
        root = Org("root", SigningKey(bytes.fromhex(f.read().strip())))
    with open(os.path.join(datadir, "root.pub")) as f:
        root_pub = bytes.fromhex(f.read().strip())
    check(root.public == root_pub, "root.key and root.pub do not match")
    ledger_pub = ledger_public_key(datadir)
    check(ledger_pub != root_pub, "the ledger key is the root key (docs/audit.md: it is not)")

    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
    health_and_reflection(channel)

    tag = "x" + secrets.token_hex(3)
    c = Client(channel, ledger_id, tag)
    # Run-unique ids, so the script can also run against a ledger that has
    # history; the audit then covers that history too.
    history = c.read_log(root)
    c.head = history[-1].sequence if history else 0
    if not history:  # docs/api.md: GetCheckpoint(0) on an empty log is 5
        got = rpc_code(lambda: get_checkpoint(c, root, 0))
        check(got == grpc.StatusCode.NOT_FOUND, f"GetCheckpoint(0) on an empty log: {got}, docs/api.md says NOT_FOUND")

    # -- organisations -------------------------------------------------------
    step("root registers organisations")
    icb = Org(f"icb-{tag}")
    payroll = Org(f"payroll-{tag}")
    tp = Org(f"tp-{tag}")
    auditor = Org(f"audit-{tag}")
    acct = Org(f"acct-{tag}")  # a prepaid-card account provider
    regs = [(icb, [pb.ROLE_COMMISSIONER]), (payroll, [pb.ROLE_PAYROLL_PROVIDER]),
            (tp, [pb.ROLE_THIRD_PARTY]), (auditor, [pb.ROLE_AUDITOR]), (acct, [pb.ROLE_ACCOUNT_PROVIDER])]
    signed = [root.sign(c.event(f"reg-{o.id}", organisation_registered=pb.OrganisationRegistered(
        organisation_id=o.id, roles=roles, public_key=o.public))) for o, roles in regs]
    for r, s in zip(c.append(signed), signed):
        c.written(r, s, "OrganisationRegistered")
    # docs/audit.md "Receipts": a partner keeps a checkpoint now; at the end
    # the ledger must prove it extends this one.
    early = get_checkpoint(c, tp, 0)
    m, _ = verified_checkpoint(early, ledger_id, ledger_pub, "GetCheckpoint(0) as a third party, early")
    check(m == c.head, f"GetCheckpoint(0) early: size {m}, the head is {c.head}")
    c.refuse(root, c.event("reg-again", organisation_registered=pb.OrganisationRegistered(
        organisation_id=icb.id, roles=[pb.ROLE_AUDITOR], public_key=SigningKey.generate().verify_key.encode())),
        ALREADY_EXISTS, "re-registering an organisation (a decision: recorded)", recorded=True)
    c.refuse(icb, c.event("reg-by-icb", organisation_registered=pb.OrganisationRegistered(
        organisation_id=f"rogue-{tag}", roles=[pb.ROLE_AUDITOR], public_key=SigningKey.generate().verify_key.encode())),
        PERMISSION_DENIED, "OrganisationRegistered signed by an organisation")
    identity = bytes([1]) + bytes(31)  # the identity point: small order
    c.refuse(root, c.event("reg-weak", organisation_registered=pb.OrganisationRegistered(
        organisation_id=f"weak-{tag}", roles=[pb.ROLE_AUDITOR], public_key=identity)),
        INVALID_ARGUMENT, "OrganisationRegistered with a small-order key")
    # A key with a small-order component (mixed order) and a non-canonical
    # encoding of an honest key are refused too (log-format.md §7); the
    # auditor's own check must agree, and so must libsodium's.
    order8 = ed_decompress(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"))
    honest = SigningKey.generate().verify_key.encode()
    mixed = ed_compress(ed_add(ed_decompress(honest), order8))
    # y + p still fits in 255 bits only when y < 19: search a key like that.
    noncanon = None
    for y in range(19):
        for sign in (0, 1):
            cand = (y + ED_P + (sign << 255)).to_bytes(32, "little")
            pt = ed_decompress(cand)
            if noncanon is None and pt is not None and pt != (0, 1) and ed_mul(ED25519_L, pt) == (0, 1):
                noncanon = cand
    check(invalid_key(identity) and invalid_key(mixed) and not invalid_key(honest),
          "the auditor's key check")
    c.refuse(root, c.event("reg-mixed", organisation_registered=pb.OrganisationRegistered(
        organisation_id=f"mixed-{tag}", roles=[pb.ROLE_AUDITOR], public_key=mixed)),
        INVALID_ARGUMENT, "OrganisationRegistered with a mixed-order key")
    if noncanon is not None:
        check(invalid_key(noncanon), "the auditor refuses a non-canonical key")
        c.refuse(root, c.event("reg-noncanon", organisation_registered=pb.OrganisationRegistered(
            organisation_id=f"noncanon-{tag}", roles=[pb.ROLE_AUDITOR], public_key=noncanon)),
            INVALID_ARGUMENT, "OrganisationRegistered with a non-canonically encoded key")

    # -- budgets -------------------------------------------------------------
    step("commissioner opens budgets, allocates, disburses")
    b_tp, b_dp, b_nt = f"{tag}-b1-tp", f"{tag}-b2-dp", f"{tag}-b3-notional"
    extra = [f"{tag}-b4-extra", f"{tag}-b5-extra", f"{tag}-b5-plan"]
    b_late = f"{tag}-b6-tp"  # for the "refusals are final" double-payment scenario
    b_card = f"{tag}-b7-card"  # a direct payment on a prepaid card

    def opened(bid, management, funds="", payroll_id=""):
        return c.event(f"open-{bid}", bid, budget_opened=pb.BudgetOpened(
            holder_ref=f"holder-{secrets.token_hex(4)}", commissioner_id=icb.id, period_start="2026-04-01",
            period_end="2027-03-31", management=management, funds_holder_id=funds, payroll_provider_id=payroll_id))

    batch = [icb.sign(opened(b_tp, pb.MANAGEMENT_THIRD_PARTY, funds=tp.id)),
             icb.sign(opened(b_dp, pb.MANAGEMENT_DIRECT_PAYMENT, payroll_id=payroll.id)),
             icb.sign(opened(b_nt, pb.MANAGEMENT_NOTIONAL)),
             icb.sign(opened(b_late, pb.MANAGEMENT_THIRD_PARTY, funds=tp.id)),
             icb.sign(opened(b_card, pb.MANAGEMENT_DIRECT_PAYMENT, funds=acct.id))] + [
             icb.sign(opened(b, pb.MANAGEMENT_NOTIONAL)) for b in extra]
    for r, s in zip(c.append(batch, atomic=True), batch):
        c.written(r, s, "BudgetOpened")
    c.refuse(icb, opened(b_tp, pb.MANAGEMENT_NOTIONAL), ALREADY_EXISTS,
             "BudgetOpened with a used budget_id (a decision: recorded)", recorded=True)
    c.refuse(icb, opened(f"{tag}-b9", pb.MANAGEMENT_THIRD_PARTY, funds=payroll.id), FAILED_PRECONDITION,
             "third-party budget whose funds holder lacks ROLE_THIRD_PARTY")
    c.refuse(tp, opened(f"{tag}-b9", pb.MANAGEMENT_NOTIONAL), PERMISSION_DENIED, "BudgetOpened by a non-commissioner")

    def alloc(bid, amt, **kw):
        return c.event("alloc", bid, allocation=pb.Allocation(amount=amt, basis=pb.ALLOCATION_BASIS_NEEDS_BASED), **kw)

    today = datetime.datetime.now(datetime.timezone.utc).date()

    def iso(d):
        return d.isoformat()

    def days(n):
        return iso(today + datetime.timedelta(days=n))

    # api.md "Care plans": in force on the spending's occurred_at date.
    def plan(bid, plan_id, lines, contingency="0.00", valid=(-60, 300)):
        return c.event("plan", bid, care_plan_approved=pb.CarePlanApproved(
            plan_id=plan_id, lines=[pb.PlanLine(line_id=f"{plan_id}.{i}", category=cat, annual_amount=amt)
                                    for i, (cat, amt) in enumerate(lines)],
            contingency_amount=contingency, valid_from=days(valid[0]), valid_to=days(valid[1]),
            review_due=days(valid[0] + 180)))

    # api.md "Service agreements": a personal assistant or provider is paid
    # under one, for a service period inside it that has ended.
    def agreement(bid, agreement_id, payee_kind, payee_ref, category, rate, max_units_per_week=0):
        sector = pb.SECTOR_INDIVIDUAL if payee_kind == pb.PAYEE_KIND_PERSONAL_ASSISTANT else pb.SECTOR_INDEPENDENT
        return c.event("agree", bid, service_agreement_approved=pb.ServiceAgreementApproved(
            agreement_id=agreement_id, payee_ref=payee_ref, payee_kind=payee_kind, payee_sector=sector,
            category=category, unit=pb.UNIT_HOUR, rate=rate, max_units_per_week=max_units_per_week,
            valid_from=days(-60), valid_to=days(300)))

    week = dict(service_from=days(-13), service_to=days(-7))

    c.write(icb, alloc(b_tp, "4800.00"), "allocation to third-party budget")
    c.write(icb, alloc(b_dp, "12000"), "allocation to direct-payment budget")
    c.write(icb, alloc(b_nt, "202.04"), "allocation to notional budget")
    c.write(icb, c.event("disb", b_tp, disbursement=pb.Disbursement(amount="1200.5")), "disbursement to third party")
    c.write(icb, c.event("disb", b_dp, disbursement=pb.Disbursement(amount="3000.00")), "disbursement to DP account")
    c.refuse(icb, c.event("disb", b_nt, disbursement=pb.Disbursement(amount="1.00")), FAILED_PRECONDITION,
             "disbursement on a notional budget", why="disbursement on a notional budget")
    c.refuse(icb, c.event("disb", b_tp, disbursement=pb.Disbursement(amount="3599.51")), FAILED_PRECONDITION,
             "over-disbursement (allocated - paid_in = 3599.50)", why="over-disbursement")
    c.refuse(root, alloc(b_tp, "1.00"), PERMISSION_DENIED, "budget event signed by root")
    c.refuse(icb, alloc(f"{tag}-nope", "1.00"), NOT_FOUND, "allocation on an unknown budget")

    # -- spending ------------------------------------------------------------
    step("spending needs an approved care plan; a PA or provider payment needs an agreement")
    # proto CarePlanApproved: no Payment, Purchase or CardTransaction before a
    # budget's first plan; proto Payment.agreement_id: required for personal
    # assistants and providers, whether or not the budget has agreements yet.
    c.refuse(icb, c.event("buy", b_nt, purchase=pb.Purchase(amount="2.04", category="respite", supplier_ref="s-9")),
             FAILED_PRECONDITION, "purchase on a budget with no approved care plan", why="no approved care plan")
    c.refuse(tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="0.01", category="equipment", supplier_ref="s-1")),
             FAILED_PRECONDITION, "third-party purchase with no approved care plan", why="no approved care plan")
    c.write(icb, plan(b_tp, "plan-tp", [("equipment", "3000.00"), ("transport", "500.00")]), "plan of the TP budget")
    c.write(icb, plan(b_dp, "plan-dp", [("personal_assistant", "12000.00")]), "plan of the DP budget")
    c.write(icb, plan(b_nt, "plan-nt", [("respite", "200.00")]), "plan of the notional budget")
    c.write(icb, plan(b_late, "plan-late", [("respite", "2000.00"), ("equipment", "100.00")]), "plan of b6")
    pa_pay = dict(amount="364.00", payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref="pa-3b",
                  category="personal_assistant", reference="payslip 0042")
    c.refuse(payroll, c.event("pay", b_dp, payment=pb.Payment(**pa_pay)), FAILED_PRECONDITION,
             "PA payment naming no agreement, on a budget with a plan and no agreements yet",
             why="payment without an agreement")
    c.write(icb, agreement(b_dp, "pa-3b-2026", pb.PAYEE_KIND_PERSONAL_ASSISTANT, "pa-3b", "personal_assistant",
                           "1.00"), "ServiceAgreementApproved for pa-3b")

    step("third party purchases; payroll pays a personal assistant")
    _, purchase_signed = c.write(tp, c.event("buy", b_tp, purchase=pb.Purchase(
        amount="99.99", category="equipment", supplier_ref="sup-41", description="Shower chair",
        receipt_ref="R-1")), "third-party purchase")
    purchase_seq = c.head
    purchase_hash = c.receipts[purchase_seq][1]
    c.write(payroll, c.event("pay", b_dp, payment=pb.Payment(
        agreement_id="pa-3b-2026", units="364", **pa_pay, **week)), "payroll personal-assistant payment")
    c.refuse(payroll, c.event("pay", b_dp, payment=pb.Payment(
        amount="10.00", payee_kind=pb.PAYEE_KIND_PROVIDER, payee_ref="prov-1", category="respite")),
        PERMISSION_DENIED, "payroll provider paying a provider", why="may not sign payment")
    c.refuse(tp, c.event("buy", b_dp, purchase=pb.Purchase(amount="1.00", category="equipment", supplier_ref="s")),
             PERMISSION_DENIED, "purchase by an organisation the budget does not name", why="may not sign purchase")
    c.write(icb, c.event("buy", b_nt, purchase=pb.Purchase(amount="2.04", category="respite", supplier_ref="s-9")),
            "commissioner purchase on a notional budget, now under its plan")
    # docs/api.md "Spending categories": excluded codes are decisions (recorded),
    # unknown codes are malformed (not recorded).
    c.refuse(icb, c.event("buy", b_nt, purchase=pb.Purchase(amount="1.00", category="gambling", supplier_ref="s-9")),
             FAILED_PRECONDITION, "purchase in an excluded category", why="excluded category")
    c.refuse(icb, c.event("buy", b_nt, purchase=pb.Purchase(amount="1.00", category="personal_care",
                                                             supplier_ref="s-9")),
             INVALID_ARGUMENT, "purchase in an unknown category", field="kind.purchase.category")

    step("a care plan narrows spending (api.md 'Care plans')")
    b_plan = extra[2]
    c.write(icb, alloc(b_plan, "1000.00"), "allocation of the planned budget")
    c.write(icb, c.event("plan", b_plan, care_plan_approved=pb.CarePlanApproved(
        plan_id="plan-1", lines=[pb.PlanLine(line_id="r", category="respite", annual_amount="100.00",
                                             description="short breaks")],
        contingency_amount="10.00", valid_from=days(-300), valid_to=days(400), review_due=days(-60))),
        "CarePlanApproved by the commissioner")
    c.write(icb, c.event("buy", b_plan, purchase=pb.Purchase(amount="105.00", category="respite",
                                                             supplier_ref="s-1")),
            "purchase on the plan line and 5.00 of the contingency")
    plan_buy = c.head
    c.write(icb, c.event("susp", b_plan, budget_suspended=pb.BudgetSuspended(reason="spending review")),
            "BudgetSuspended")
    c.refuse(icb, c.event("buy", b_plan, purchase=pb.Purchase(amount="1.00", category="respite", supplier_ref="s-1")),
             FAILED_PRECONDITION, "purchase while suspended", why="budget suspended")
    c.write(icb, c.event("resume", b_plan, budget_resumed=pb.BudgetResumed()), "BudgetResumed")

    def care_plan(bid):
        cp = c.stub.GetCarePlan(pb.GetCarePlanRequest(budget_id=bid), metadata=icb.md("GetCarePlan"),
                                timeout=RPC_TIMEOUT)
        return [(l.category, l.spent, l.remaining) for l in cp.lines], cp.contingency_used, cp.total

    c.write(icb, c.event("refund", b_plan, refund=pb.Refund(original_sequence=plan_buy, amount="5.00")),
            "Refund of part of a purchase")
    # proto Refund: given back to the plan it was charged to, contingency first.
    got = care_plan(b_plan)
    check(got == ([("respite", "100.00", "0.00")], "0.00", "110.00"),
          f"GetCarePlan after refunding 5.00 of 100.00 line + 5.00 contingency: {got}")
    c.refuse(icb, c.event("refund", b_plan, refund=pb.Refund(original_sequence=plan_buy, amount="100.01")),
             FAILED_PRECONDITION, "refund beyond what is left of the purchase", why="refund beyond the spending")
    c.refuse(icb, c.event("buy", b_plan, purchase=pb.Purchase(amount="10.01", category="respite", supplier_ref="s-1")),
             FAILED_PRECONDITION, "purchase beyond the plan line and contingency", why="beyond the plan")
    c.refuse(icb, c.event("buy", b_plan, purchase=pb.Purchase(amount="1.00", category="equipment", supplier_ref="s-1")),
             FAILED_PRECONDITION, "purchase in a category the plan has no line for",
             why="no plan line for the category")
    c.write(icb, c.event("buy", b_plan, purchase=pb.Purchase(amount="10.00", category="respite", supplier_ref="s-1")),
            "purchase of exactly the contingency given back")
    c.write(icb, c.event("refund", b_plan, refund=pb.Refund(original_sequence=plan_buy, amount="60.00")),
            "second refund of the purchase (its charge holds only its line now)")
    got = care_plan(b_plan)
    check(got == ([("respite", "40.00", "60.00")], "10.00", "110.00"),
          f"GetCarePlan after a refund of 60.00 whose contingency was already given back: {got}")

    step("service agreements: paid at the agreed rate, in arrears (api.md 'Service agreements')")
    b_ag = extra[0]
    c.write(icb, alloc(b_ag, "500.00"), "allocation for agreed payments")
    c.write(icb, plan(b_ag, "plan-ag", [("personal_assistant", "400.00"), ("respite", "50.00"),
                                        ("tax_and_pension", "50.00")]), "plan for agreed payments")
    c.refuse(icb, c.event("pay", b_ag, payment=pb.Payment(
        amount="40.00", payee_kind=pb.PAYEE_KIND_PROVIDER, payee_ref="prov-2", category="respite")),
        FAILED_PRECONDITION, "provider payment naming no agreement, on a budget with no agreements",
        why="payment without an agreement")
    c.write(icb, c.event("pay", b_ag, payment=pb.Payment(
        amount="40.00", payee_kind=pb.PAYEE_KIND_TAX_AUTHORITY, payee_ref="hmrc", category="tax_and_pension")),
        "tax payment naming no agreement (it needs none)")
    c.write(icb, agreement(b_ag, "pa-7-2026", pb.PAYEE_KIND_PERSONAL_ASSISTANT, "pa-7", "personal_assistant",
                           "12.50", max_units_per_week=20), "ServiceAgreementApproved")
    c.write(icb, c.event("wage", b_ag, payment=pb.Payment(
        amount="250.00", payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref="pa-7", category="personal_assistant",
        agreement_id="pa-7-2026", units="20", **week)), "wage under the agreement")
    c.refuse(icb, c.event("wage", b_ag, payment=pb.Payment(
        amount="262.50", payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref="pa-7", category="personal_assistant",
        agreement_id="pa-7-2026", units="21", **week)), FAILED_PRECONDITION, "wage beyond 20 hours a week",
        why="units beyond the weekly limit")
    c.refuse(icb, c.event("wage", b_ag, payment=pb.Payment(
        amount="10.00", payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref="pa-7", category="personal_assistant")),
        FAILED_PRECONDITION, "wage without an agreement on a budget that has agreements",
        why="payment without an agreement")

    step("card transactions: merchant codes, the plan, cash (api.md 'Card transactions')")
    c.write(icb, alloc(b_card, "1000.00"), "allocation to the card budget")
    c.write(icb, c.event("disb", b_card, disbursement=pb.Disbursement(amount="500.00")), "disbursement to the card")

    def card(mcc, amt, channel=pb.CARD_CHANNEL_POS):
        return c.event("card", b_card, card_transaction=pb.CardTransaction(
            card_ref="card-77", merchant_ref=f"m-{mcc}", mcc=mcc, amount=amt, channel=channel))

    c.refuse(acct, card(4111, "30.00"), FAILED_PRECONDITION, "bus fare by card, no approved care plan: declined",
             why="no approved care plan")
    c.write(icb, plan(b_card, "plan-card-1", [("transport", "100.00"), ("equipment", "50.00")]),
            "card budget's first plan, no cash line")
    c.write(acct, card(4111, "30.00"), "bus fare by card (mcc 4111: transport) under the plan: approved")
    card_fare = c.head
    c.refuse(acct, card(7995, "5.00"), FAILED_PRECONDITION, "mcc 7995 (gambling) blocked: declined",
             why="blocked merchant category")
    c.refuse(acct, card(5912, "5.00"), FAILED_PRECONDITION, "mcc 5912 (pharmaceuticals, excluded): declined",
             why="excluded category")
    c.refuse(acct, card(5411, "5.00"), FAILED_PRECONDITION, "mcc 5411 (not mapped): declined",
             why="unmapped merchant category")
    c.refuse(acct, card(5732, "5.00", pb.CARD_CHANNEL_ONLINE), FAILED_PRECONDITION,
             "mcc 5732 (it_equipment) online, no plan line for it: declined", why="no plan line for the category")
    c.refuse(acct, card(6011, "20.00", pb.CARD_CHANNEL_ATM), FAILED_PRECONDITION,
             "ATM withdrawal (cash) without a cash line: declined", why="no plan line for the category")
    c.write(icb, plan(b_card, "plan-card-2", [("transport", "100.00"), ("cash", "40.00")], contingency="10.00"),
            "a new plan with a cash line")
    card_plan = c.head
    c.write(acct, card(6011, "20.00", pb.CARD_CHANNEL_ATM), "ATM withdrawal under the cash line: approved")
    c.write(acct, card(6011, "25.00", pb.CARD_CHANNEL_ATM), "ATM withdrawal: 20.00 of the line, 5.00 contingency")
    card_cash = c.head
    c.refuse(acct, card(6011, "5.01", pb.CARD_CHANNEL_ATM), FAILED_PRECONDITION,
             "ATM withdrawal beyond the cash line and contingency: declined", why="beyond the plan")
    c.refuse(acct, card(7995, "0.01", pb.CARD_CHANNEL_ATM), FAILED_PRECONDITION,
             "ATM at a blocked merchant code, though the plan has cash: declined", why="blocked merchant category")
    c.write(acct, c.event("refund", b_card, refund=pb.Refund(original_sequence=card_cash, amount="10.00")),
            "refund of 10.00 of the 25.00 withdrawal (5.00 contingency, then 5.00 of the cash line)")
    c.write(acct, c.event("refund", b_card, refund=pb.Refund(original_sequence=card_fare, amount="10.00")),
            "refund of the fare charged to the superseded plan (no plan usage restored)")
    got = care_plan(b_card)
    check(got == ([("transport", "0.00", "100.00"), ("cash", "35.00", "5.00")], "0.00", "150.00"),
          f"GetCarePlan of the card budget: {got}")
    cp = c.stub.GetCarePlan(pb.GetCarePlanRequest(budget_id=b_card), metadata=acct.md("GetCarePlan"),
                            timeout=RPC_TIMEOUT)
    check((cp.plan_id, cp.approved_at_sequence, cp.approved_by) == ("plan-card-2", card_plan, icb.id),
          f"GetCarePlan of the card budget names {(cp.plan_id, cp.approved_at_sequence, cp.approved_by)}")
    bal = c.balance(acct, b_card)
    check((bal.paid_in, bal.spent, bal.held) == ("500.00", "55.00", "445.00"), f"{b_card}: {bal}")

    step("overspend is refused, recorded once as a refusal, and changes no balance")
    before = c.balance(icb, b_tp)
    log_before = len(c.read_log(auditor))
    check(log_before == c.head, f"the log holds {log_before} entries, this client saw {c.head}")
    check(before.held == "1100.51", f"held before overspend: {before.held}")
    overspend = c.refuse(tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="1100.52", category="equipment",
                                                                      supplier_ref="sup-41")),
                         FAILED_PRECONDITION, "overspend by 0.01", why="overspend")
    after = c.balance(icb, b_tp)
    check(after == before, f"overspend changed the balance: {before} -> {after}")
    tail = c.read_log(auditor, log_before + 1)
    check(len(tail) == 1 and tail[0].sequence == c.head and tail[0].signed_event == overspend
          and refusal_of(tail[0]) == (FAILED_PRECONDITION, False, c.receipts[c.head][2][2])
          and tail[0].hash == c.receipts[c.head][1],
          f"the overspend is not in the log exactly once as its recorded refusal: {tail}")

    step("refusals are final: a refused payment stays refused after the money arrives")
    # issue 6, defect 7: 550.00 refused for lack of funds, 400.00 paid under a
    # new id, then a disbursement; the refused 550.00 bytes must not be paid.
    c.write(icb, alloc(b_late, "2000.00"), "allocation (double-payment scenario)")
    c.write(icb, c.event("disb", b_late, disbursement=pb.Disbursement(amount="500.00")), "disbursement 500.00")
    c.write(icb, agreement(b_late, "prov-7-2026", pb.PAYEE_KIND_PROVIDER, "prov-7", "respite", "50.00"),
            "ServiceAgreementApproved for prov-7 (50.00 an hour)")
    pay550 = tp.sign(c.event("pay", b_late, payment=pb.Payment(
        amount="550.00", payee_kind=pb.PAYEE_KIND_PROVIDER, payee_ref="prov-7", category="respite",
        reference="invoice 17", agreement_id="prov-7-2026", units="11", **week)))
    first = c.append([pay550])[0]
    c.refused(first, pay550, FAILED_PRECONDITION, "payment of 550.00 with 500.00 held", why="overspend")
    c.same_refusal(c.append([pay550])[0], first, "immediate retry of the refused payment")
    corrected = pb.Event.FromString(pay550.event)
    corrected.payment.amount = "400.00"
    c.refuse(tp, corrected, ALREADY_EXISTS, "a corrected payment under the refused event's id", recorded=False)
    corrected = pb.Event.FromString(pay550.event)
    corrected.event_id += "-v2"
    corrected.payment.amount, corrected.payment.units = "400.00", "8"
    c.write(tp, corrected, "the corrected payment of 400.00 under a new id")
    c.write(icb, c.event("disb", b_late, disbursement=pb.Disbursement(amount="500.00")), "next disbursement")
    late_before = c.balance(icb, b_late)
    check((late_before.paid_in, late_before.spent, late_before.held) == ("1000.00", "400.00", "600.00"),
          f"{b_late} before the resubmission: {late_before}")
    head = c.head
    for what, atomic in (("resubmitted after the disbursement", False), ("resubmitted in an atomic batch", True)):
        c.same_refusal(c.append([pay550], atomic=atomic)[0], first, f"refused payment {what}")
    check(c.balance(icb, b_late) == late_before, "resubmitting the refused payment changed the balance")
    check(len(c.read_log(auditor)) == head, "resubmitting the refused payment wrote to the log")

    step("event ids are scoped to the signer: one id, three organisations, three outcomes")
    shared = f"{tag}.shared-id"

    def with_id(ev):
        ev.event_id = shared
        return ev

    _, icb_shared = c.write(icb, with_id(alloc(extra[0], "10.00")), "commissioner's event under the shared id")
    icb_seq = c.head
    _, tp_shared = c.write(tp, with_id(c.event("buy", b_late, purchase=pb.Purchase(
        amount="1.00", category="equipment", supplier_ref="sup-9"))), "third party's event under the same id")
    tp_seq = c.head
    check(tp_seq != icb_seq, "two organisations' events under one id share a sequence")
    payroll_shared = c.refuse(payroll, with_id(c.event("pay", b_late, payment=pb.Payment(
        amount="1.00", payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref="pa-1", category="personal_assistant"))),
        PERMISSION_DENIED, "payroll's event under the same id, refused by the rules (b6 names no payroll)",
        why="may not sign payment")
    payroll_refusal = c.recorded[-1][1]
    for who, signed, seq in (("commissioner", icb_shared, icb_seq), ("third party", tp_shared, tp_seq)):
        r = c.append([signed])[0]
        check(r.error.code == OK and r.duplicate and r.sequence == seq and r.entry_hash == c.receipts[seq][1]
              and r.refusal_sequence == 0,
              f"retry of the {who}'s event under the shared id: code {r.error.code} duplicate={r.duplicate} "
              f"sequence {r.sequence} (want {seq})")
    c.same_refusal(c.append([payroll_shared])[0], payroll_refusal, "retry of payroll's refused event")
    reused = pb.Event.FromString(tp_shared.event)
    reused.purchase.supplier_ref = "sup-10"
    signed = tp.sign(reused)
    r = c.append([signed])[0]
    c.refused(r, signed, ALREADY_EXISTS, "the third party reusing its own id", recorded=False)
    numbers = set(re.findall(r"(?<![0-9A-Za-z])[0-9]+(?![0-9A-Za-z])", r.error.message))
    check(str(tp_seq) in numbers and str(icb_seq) not in numbers,
          f"ALREADY_EXISTS should name the signer's own sequence {tp_seq} and not another organisation's "
          f"{icb_seq}: {r.error.message!r}")

    step("retry of the same signed bytes is a duplicate")
    r = c.append([purchase_signed])[0]
    check(r.error.code == OK and r.duplicate and r.sequence == purchase_seq and r.entry_hash == purchase_hash
          and r.refusal_sequence == 0,
          f"retry: duplicate={r.duplicate} seq={r.sequence} (want {purchase_seq}) code={r.error.code}")
    changed = pb.Event.FromString(purchase_signed.event)
    changed.purchase.receipt_ref = "R-2"
    c.refuse(tp, changed, ALREADY_EXISTS, "same event_id, different bytes (decides nothing: not recorded)",
             recorded=False)
    garbage = pb.SignedEvent(event=changed.SerializeToString(), signer_id=tp.id, signature=bytes(64))
    c.refuse(None, garbage, UNAUTHENTICATED, "same event_id, bad signature (signature checked before ALREADY_EXISTS)")

    step("atomic batch failing by a rule: every event recorded as refused, none applied later")
    def pa(amt, n, units=None):
        # Wages of pa-3b under its agreement (rate 1.00): units = amount.
        return payroll.sign(c.event(f"payrun-{n}", b_dp, payment=pb.Payment(
            amount=amt, payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref="pa-3b",
            category="personal_assistant", reference=f"run 7/{n}", agreement_id="pa-3b-2026",
            units=units or amt, **week)))

    def refused_batch(batch, codes, what, recorded):
        res = c.append(batch, atomic=True)
        for i, (r, s, code) in enumerate(zip(res, batch, codes)):
            c.refused(r, s, code, f"{what}, event {i + 1}", recorded=recorded, in_batch=recorded,
                      why="overspend" if code == FAILED_PRECONDITION else None)
        return res

    dp_before = c.balance(payroll, b_dp)
    check(dp_before.held == "2636.00", f"{b_dp} held {dp_before.held}, expected 2636.00")
    run_bad = [pa("400.00", 1), pa("400.00", 2), pa("2000.00", 3)]  # held 2636.00: the third overspends
    res_bad = refused_batch(run_bad, (ABORTED, ABORTED, FAILED_PRECONDITION), "atomic batch failing last", True)
    check(c.balance(payroll, b_dp) == dp_before, "failed atomic batch changed the balance")
    check(len(c.read_log(auditor)) == c.head, "failed atomic batch: the log does not hold its 3 refusals")
    head = c.head
    for r, orig in zip(c.append(run_bad, atomic=True), res_bad):
        c.same_refusal(r, orig, "the failed atomic batch resent")
    for s, orig in zip(run_bad[:2], res_bad[:2]):  # each would fit on its own now
        c.same_refusal(c.append([s])[0], orig, "an aborted event of the failed batch resent alone")
    check(c.balance(payroll, b_dp) == dp_before and len(c.read_log(auditor)) == head,
          "resending the failed batch's events changed the balance or the log")
    batch = [pa("0.01", 7), pa("5000.00", 8), pa("0.02", 9)]  # fails in the middle
    refused_batch(batch, (ABORTED, FAILED_PRECONDITION, ABORTED), "atomic batch failing in the middle", True)

    step("atomic batch failing by what decides nothing: nothing recorded, then written")
    later = [pa("0.01", 10), pa("0.01", 11)]
    forged = pb.SignedEvent(event=later[1].event, signer_id=payroll.id, signature=bytes(64))
    refused_batch([later[0], forged], (ABORTED, UNAUTHENTICATED), "atomic batch with a bad signature", False)
    reuse = pb.Event.FromString(run_bad[0].event)  # payroll's own recorded id, new bytes
    reuse.payment.reference = "run 7/1 again"
    refused_batch([later[1], payroll.sign(reuse)], (ABORTED, ALREADY_EXISTS), "atomic batch reusing an event_id",
                  False)
    check(c.balance(payroll, b_dp) == dp_before, "atomic batches that decided nothing changed the balance")
    check(len(c.read_log(auditor)) == c.head, "atomic batches that decided nothing changed the log")
    # The events aborted by a failure that decided nothing may be sent again.
    run_good = later + [pa("400.00", 12), pa("400.00", 13), pa("1835.98", 14)]  # 2636.00 in all
    for r, s in zip(c.append(run_good, atomic=True), run_good):
        c.written(r, s, "atomic batch, fixed with new ids")
    last_good = c.head
    batch = [run_good[0], pa("0.01", 4)]  # held is 0.00 now
    res = c.append(batch, atomic=True)
    c.refused(res[0], batch[0], ABORTED, "atomic batch: a would-be duplicate before the failure (already applied, "
              "so not recorded)", recorded=False)
    c.refused(res[1], batch[1], FAILED_PRECONDITION, "atomic batch: overspend of an empty account", recorded=True,
              in_batch=True, why="overspend")
    batch = [run_good[-1], pa("0.01", 5), pa("0.00", 6, units="1")]
    res = c.append(batch, atomic=False)
    check(res[0].duplicate and res[0].error.code == OK and res[0].sequence == last_good
          and res[0].refusal_sequence == 0, "non-atomic: duplicate result")
    c.refused(res[1], batch[1], FAILED_PRECONDITION, "non-atomic: overspend", why="overspend")
    c.refused(res[2], batch[2], INVALID_ARGUMENT, "non-atomic: zero amount", "kind.payment.amount")

    step("review, stop, key rotation")
    c.write(icb, c.event("review", b_tp, review_adjustment=pb.ReviewAdjustment(
        delta="-587.20", reason="Annual review: fewer support hours")), "negative review adjustment")
    c.refuse(icb, c.event("review", b_tp, review_adjustment=pb.ReviewAdjustment(
        delta="-3012.31", reason="too far")), FAILED_PRECONDITION, "review below paid_in",
        why="review below paid_in")
    c.write(icb, c.event("stop", extra[1], budget_stopped=pb.BudgetStopped(reason="Moved out of area")), "stop")
    c.refuse(icb, alloc(extra[1], "1.00"), FAILED_PRECONDITION, "allocation on a stopped budget",
             why="budget stopped")
    c.refuse(icb, c.event("stop", extra[1], budget_stopped=pb.BudgetStopped(reason="again")), FAILED_PRECONDITION,
             "stopping twice", why="budget stopped")

    old_tp = Org(tp.id, tp.key)
    new_key = SigningKey.generate()
    c.refuse(root, c.event("rot-same", key_rotated=pb.KeyRotated(organisation_id=tp.id, new_public_key=tp.public)),
             FAILED_PRECONDITION, "rotation to the same key")
    c.refuse(root, c.event("rot-unknown", key_rotated=pb.KeyRotated(organisation_id=f"nobody-{tag}",
                                                                    new_public_key=new_key.verify_key.encode())),
             NOT_FOUND, "rotation of an unknown organisation")
    c.write(root, c.event("rot", key_rotated=pb.KeyRotated(organisation_id=tp.id,
                                                          new_public_key=new_key.verify_key.encode())), "key rotation")
    tp = Org(tp.id, new_key)
    c.write(tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="50.00", category="transport", supplier_ref="taxi-2",
                                                          description="Taxi to day centre")), "purchase, new key")
    c.refuse(old_tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="1.00", category="transport", supplier_ref="t")),
             UNAUTHENTICATED, "new event signed with the rotated-out key")
    r = c.append([purchase_signed])[0]
    check(r.duplicate and r.sequence == purchase_seq and r.error.code == OK,
          f"retry under a rotated key is no longer a duplicate (api.md §3: step 2 comes before step 3): code "
          f"{r.error.code} {r.error.message!r} duplicate={r.duplicate} sequence {r.sequence} (want {purchase_seq})")
    check(rpc_code(lambda: c.balance(old_tp, b_tp)) == grpc.StatusCode.UNAUTHENTICATED,
          "a read signed with the rotated-out key was accepted")

    flags_scenario(c, root, icb, tp, payroll, acct, auditor, tag, b_tp, b_dp, stopped=extra[1])

    step("documented field rules (amounts, occurred_at, text, bytes, signatures)")
    for amt in ("5", "4.8", "0.01", "1000000000.00", "0000000001.5"):
        c.write(icb, alloc(extra[0], amt), f"allocation amount {amt!r}")
    refused_amounts = ["", "1e9", "NaN", "inf", "0x10", "١٢", "+5", " 5", "5 ", "1,000", "1_000", "--1", "1.",
                       ".5", "0.001", "1000000000.01", "99999999999", "-5", "0", "0.00"]
    bad = [icb.sign(alloc(extra[0], a)) for a in refused_amounts]
    bad += [icb.sign(c.event("review", extra[0], review_adjustment=pb.ReviewAdjustment(delta=d, reason="r")))
            for d in ("0", "-0.00")]
    fields = ["kind.allocation.amount"] * len(refused_amounts) + ["kind.review_adjustment.delta"] * 2
    for r, s, f, a in zip(c.append(bad), bad, fields, refused_amounts + ["0", "-0.00"]):
        c.refused(r, s, INVALID_ARGUMENT, f"amount {a!r}", f)
    y2k = Timestamp(seconds=946_684_800)
    c.write(icb, alloc(extra[0], "1.00", occurred_at=y2k), "occurred_at 2000-01-01T00:00:00Z")
    c.write(icb, alloc(extra[0], "1.00", occurred_at=now_ts(86_400 - 120)), "occurred_at now + 24 h - 2 min")
    for ts, what in ((Timestamp(seconds=946_684_799, nanos=999_999_999), "1999-12-31T23:59:59.999999999Z"),
                     (now_ts(86_400 + 120), "now + 24 h + 2 min")):
        c.refuse(icb, alloc(extra[0], "1.00", occurred_at=ts), INVALID_ARGUMENT, f"occurred_at {what}",
                 "occurred_at")
    no_ts = alloc(extra[0], "1.00")
    no_ts.ClearField("occurred_at")
    c.refuse(icb, no_ts, INVALID_ARGUMENT, "occurred_at missing", "occurred_at")
    wrong_ledger = alloc(extra[0], "1.00")
    wrong_ledger.ledger_id = ledger_id + "-other"
    c.refuse(icb, wrong_ledger, INVALID_ARGUMENT, "another ledger's id", "ledger_id")
    c.write(tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="0.01", category="equipment", supplier_ref="s-1",
                                                          description="\u00e9" * 256)),
            "description of 256 non-ASCII characters")
    c.refuse(tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="0.01", category="equipment", supplier_ref="s-1",
                                                           description="a" * 257)),
             INVALID_ARGUMENT, "description of 257 characters", "kind.purchase.description")
    for text in ("Taxi\u202egnp.exe", "Taxi\tfare"):
        c.refuse(tp, c.event("buy", b_tp, purchase=pb.Purchase(amount="0.01", category="transport", supplier_ref="t",
                                                               description=text)),
                 INVALID_ARGUMENT, f"description {text!r}", "kind.purchase.description")
    unknown = icb.sign(alloc(extra[0], "1.00"))
    unknown.event += b"\xf8\x06\x01"  # field 111, varint 1: not in the proto
    unknown.signature = icb.key.sign(unknown.event).signature
    c.refused(c.append([unknown])[0], unknown, INVALID_ARGUMENT, "event with an unknown field", "event")
    short_sig = icb.sign(alloc(extra[0], "1.00"))
    short_sig.signature = short_sig.signature[:63]
    c.refused(c.append([short_sig])[0], short_sig, UNAUTHENTICATED, "63-byte signature")
    stranger = Org(f"stranger-{tag}")
    c.refuse(stranger, alloc(extra[0], "1.00"), UNAUTHENTICATED, "unregistered signer")
    check(rpc_code(lambda: c.stub.Append(pb.AppendRequest(events=[]), timeout=RPC_TIMEOUT))
          == grpc.StatusCode.INVALID_ARGUMENT, "empty Append is not INVALID_ARGUMENT")

    # -- reads ---------------------------------------------------------------
    step("authenticated reads")
    stub = c.stub
    gb = pb.GetBalanceRequest(budget_id=b_tp)
    m = "GetBalance"
    check(rpc_code(lambda: stub.GetBalance(gb, timeout=RPC_TIMEOUT)) == grpc.StatusCode.UNAUTHENTICATED,
          "unsigned GetBalance is not UNAUTHENTICATED")
    check(rpc_code(lambda: stub.ListBalances(pb.ListBalancesRequest(), timeout=RPC_TIMEOUT))
          == grpc.StatusCode.UNAUTHENTICATED, "unsigned ListBalances is not UNAUTHENTICATED")
    check(rpc_code(lambda: list(stub.ReadLog(pb.ReadLogRequest(), timeout=RPC_TIMEOUT)))
          == grpc.StatusCode.UNAUTHENTICATED, "unsigned ReadLog is not UNAUTHENTICATED")
    now = int(time.time())
    variants = {
        "signed for another method": icb.md("ListBalances"),
        "timestamp 400 s old": icb.md(m, now - 400),
        "timestamp 400 s ahead": icb.md(m, now + 400),
        "signed by another key": read_signature_metadata(icb.id, tp.key, m, now),
        "unregistered org": stranger.md(m),
        "unpadded base64": tuple((k, v.rstrip("=")) if k == "x-phb-signature" else (k, v) for k, v in icb.md(m)),
        "timestamp that is not a number": read_signature_metadata(icb.id, icb.key, m, f"{now}s"),
        "timestamp with a sign": read_signature_metadata(icb.id, icb.key, m, f"+{now}"),
    }
    for what, md in variants.items():
        code = rpc_code(lambda: stub.GetBalance(gb, metadata=md, timeout=RPC_TIMEOUT))
        check(code == grpc.StatusCode.UNAUTHENTICATED, f"GetBalance with {what}: {code}, want UNAUTHENTICATED")
    check(stub.GetBalance(gb, metadata=icb.md(m, now - 250), timeout=RPC_TIMEOUT).balance.budget_id == b_tp,
          "a timestamp 250 s old was refused (docs: +/-300 s)")
    for reader in (icb, tp, auditor, root):
        check(c.balance(reader, b_tp).budget_id == b_tp, f"{reader.id} cannot read {b_tp}")
    check(rpc_code(lambda: c.balance(tp, b_dp)) == grpc.StatusCode.PERMISSION_DENIED,
          "third party can read a budget that does not name it")
    check(rpc_code(lambda: c.balance(icb, f"{tag}-nope")) == grpc.StatusCode.NOT_FOUND, "unknown budget not NOT_FOUND")
    check(rpc_code(lambda: c.balance(icb, "bad id!")) == grpc.StatusCode.INVALID_ARGUMENT, "bad id not INVALID_ARGUMENT")
    check(rpc_code(lambda: c.read_log(icb)) == grpc.StatusCode.PERMISSION_DENIED, "commissioner may ReadLog")
    check(rpc_code(lambda: c.list_all(icb, 10, commissioner_id=f"other-{tag}")) == grpc.StatusCode.PERMISSION_DENIED,
          "commissioner may list another commissioner")
    check(rpc_code(lambda: stub.ListBalances(pb.ListBalancesRequest(page_token="not-a-token"),
                                             metadata=auditor.md("ListBalances"), timeout=RPC_TIMEOUT))
          == grpc.StatusCode.INVALID_ARGUMENT, "forged page_token not INVALID_ARGUMENT")
    mine, _ = c.list_all(icb, 2, commissioner_id=icb.id)
    check({b.budget_id for b in mine} == {b_tp, b_dp, b_nt, b_late, b_card, *extra}, "commissioner's ListBalances")
    check({b.budget_id for b in c.list_all(tp, 0)[0]} == {b_tp, b_late}, "third party sees only its budgets")
    check({b.budget_id for b in c.list_all(payroll, 0)[0]} == {b_dp}, "payroll sees only its budget")
    paged, pages = c.list_all(auditor, 2)
    whole, _ = c.list_all(auditor, 0)
    check(pages >= 3 and [b.SerializeToString() for b in paged] == [b.SerializeToString() for b in whole],
          "ListBalances pages of 2 differ from one page")

    step("ReadLog follow delivers a new entry")
    head = c.head
    stream = stub.ReadLog(pb.ReadLogRequest(from_sequence=head + 1, follow=True), metadata=auditor.md("ReadLog"),
                          timeout=RPC_TIMEOUT)
    got = []
    reader_thread = threading.Thread(target=lambda: got.append(next(stream).entry), daemon=True)
    reader_thread.start()
    time.sleep(0.2)
    c.write(icb, alloc(b_nt, "10.00"), "allocation during follow")
    reader_thread.join(RPC_TIMEOUT)
    stream.cancel()
    check(got and got[0].sequence == head + 1 and got[0].hash == c.receipts[head + 1][1],
          "ReadLog follow did not deliver the new entry")

    step("every recorded refusal is final: resent, each returns its original refusal")
    # Including events refused before their signer's key was rotated: a
    # duplicate is recognised before the signature is checked (api.md §3).
    # One request per signer: a request that also carries root-signed events
    # is checked differently (api.md §3), and must not be what makes it pass.
    head = c.head
    by_signer = {}
    for s, orig in c.recorded:
        by_signer.setdefault(s.signer_id, []).append((s, orig))
    for signer_id, recorded in by_signer.items():
        check(len(recorded) <= 1000, f"{len(recorded)} recorded refusals of {signer_id}")
        for r, (s, orig) in zip(c.append([s for s, _ in recorded]), recorded):
            c.same_refusal(r, orig, f"resending {signer_id}'s refused event {orig.event_id} "
                           f"(sequence {orig.refusal_sequence})")
    check(len(c.read_log(auditor)) == head, "resending refused events wrote to the log")
    print(f"   {len(c.recorded)} recorded refusals of {len(by_signer)} signers resent: each answered with its "
          "original refusal, nothing written")

    # -- the audit -----------------------------------------------------------
    check(len(c.read_log(auditor)) == c.head, f"the log does not hold the {c.head} entries written")
    check([e.SerializeToString() for e in c.read_log(auditor, 5)]
          == [e.SerializeToString() for e in c.read_log(root)[4:]], "ReadLog from_sequence=5 is not the log's suffix")
    audit, entries = audit_ledger(c, auditor, datadir, root_pub, ledger_id, flags_as_of())
    final = verify_log_tree(c, auditor, tp, entries, ledger_id, ledger_pub, kept=[early], receipts=c.receipts)
    verifiable_log_refusals(c, acct, len(entries))
    audit.checkpoints, audit.ledger_pub = [early, final], ledger_pub
    print(f"   {c.tree_sizes[0]} AppendResults named an entry with tree_size == its sequence, {c.tree_sizes[1]} "
          "wrote nothing with tree_size 0")
    # Receipts: every acknowledgement matches the log, byte for byte.
    for seq, (signed, h, refusal) in c.receipts.items():
        e = entries[seq - 1]
        check(e.hash == h and e.signed_event == signed, f"receipt for sequence {seq} does not match the log")
        if refusal is None:
            check(not e.HasField("refusal"), f"sequence {seq} was acknowledged as written, the log records a refusal")
        else:
            code, in_batch, message = refusal
            recorded = (code, in_batch, utf8_prefix(message, MAX_REFUSAL_MESSAGE_BYTES))
            check(refusal_of(e) == recorded, f"sequence {seq}: the answered refusal {recorded} is recorded as "
                  f"{refusal_of(e)}")
    logged = {}
    for e in entries:
        logged.setdefault(e.signed_event.SerializeToString(), []).append(e)
    check(not any(s.SerializeToString() in logged for s in c.unrecorded_signed),
          "an event refused without a record (3, 16, reused id) is in the log")
    for signed, r in c.recorded:
        found = logged.get(signed.SerializeToString(), [])
        check(len(found) == 1 and found[0].sequence == r.refusal_sequence and found[0].HasField("refusal"),
              f"refused event {r.event_id}: in the log as {[(x.sequence, refusal_of(x)) for x in found]}, "
              f"expected once, as the refusal at {r.refusal_sequence}")
    for seq, (why, what) in sorted(c.why.items()):
        got = audit.reasons.get(seq)
        check(got is not None and why in got, f"{what} (sequence {seq}): meant to be refused for {why!r}, but "
              f"the auditor's rules refuse it for {got!r}")
    print(f"   {len(c.why)} refusals re-derived by the auditor for the very rule each step meant to test")
    refusals = sum(1 for e in entries if e.HasField("refusal"))
    print(f"   {len(c.receipts)} receipts match the log; {len(c.recorded)} refusals recorded once each, "
          f"never applied ({refusals} refusal entries in the log)")
    expect = {b_tp: ("4212.80", "1200.50", "150.00", "1050.50", "4062.80"),
              b_dp: ("12000.00", "3000.00", "3000.00", "0.00", "9000.00"),
              b_nt: ("212.04", "0.00", "2.04", "0.00", "210.00")}
    for bid, figures in expect.items():
        bal = c.balance(auditor, bid)
        got_fig = (bal.allocated, bal.paid_in, bal.spent, bal.held, bal.available)
        check(got_fig == figures, f"{bid}: worked-out figures {figures} != server {got_fig}")
        print(f"   {bid}: allocated {bal.allocated} paid_in {bal.paid_in} spent {bal.spent} "
              f"held {bal.held} available {bal.available}")
    tamper_test(entries, {seq: h for seq, (_, h, _) in c.receipts.items()}, root_pub, ledger_id)
    return audit


# ---------------------------------------------------------------------------
# The verifiable log, over the wire (docs/audit.md; proto GetCheckpoint,
# GetInclusionProof, GetConsistencyProof)
# ---------------------------------------------------------------------------


def ledger_public_key(datadir):
    """The ledger key's public half, taken out of band as a partner gets it
    from the operator: DATADIR/ledger.key holds the secret seed in hex, like
    root.key (docs/operations.md; its encoding is not documented)."""
    with open(os.path.join(datadir, "ledger.key")) as f:
        return SigningKey(bytes.fromhex(f.read().strip())).verify_key.encode()


def get_checkpoint(c, reader, size):
    return c.stub.GetCheckpoint(pb.GetCheckpointRequest(tree_size=size), metadata=reader.md("GetCheckpoint"),
                                timeout=RPC_TIMEOUT)


def verified_checkpoint(resp, ledger_id, ledger_pub, what):
    """docs/audit.md "Checkpoints": the note verifies with the ledger key
    (got out of band, never from the response), its body is a
    tlog-checkpoint of this ledger, and the response's fields repeat it.
    Returns (tree size, root hash)."""
    origin = f"phb-ledger/{ledger_id}"
    body, why = open_note(resp.checkpoint, origin, ledger_pub)
    check(why is None, f"{what}: the signed note does not verify with the ledger key: {why}\n{resp.checkpoint}")
    parsed, why = checkpoint_body(body, origin)
    check(why is None, f"{what}: not a tlog-checkpoint as docs/audit.md gives it: {why}\n{resp.checkpoint}")
    size, root = parsed
    check(resp.tree_size == size and resp.root_hash == root,
          f"{what}: fields tree_size {resp.tree_size} root {resp.root_hash.hex()}, the note states {size} {root.hex()}")
    check(resp.verifier_key == verifier_key_text(origin, ledger_pub),
          f"{what}: verifier_key {resp.verifier_key!r}, the ledger key gives {verifier_key_text(origin, ledger_pub)!r}")
    # The same verifier refuses the note changed in any stated byte, or
    # checked with another key.
    root_b64, other_root = (base64.b64encode(x).decode("ascii") for x in (root, flipped(root)))
    for bad, how in [(resp.checkpoint.replace(f"\n{size}\n", f"\n{size + 1}\n", 1), "its size changed"),
                     (resp.checkpoint.replace(root_b64, other_root, 1), "its root changed"),
                     (resp.checkpoint.replace(origin, origin + "x", 1), "its origin changed")]:
        check(bad != resp.checkpoint and open_note(bad, origin, ledger_pub)[0] is None,
              f"{what}: the note still verifies with {how}")
    check(open_note(resp.checkpoint, origin, SigningKey.generate().verify_key.encode())[0] is None,
          f"{what}: the note verifies with another key")
    return size, root


def check_inclusion(c, reader, tree, entries, seq, size, root, receipt=None):
    """GetInclusionProof(seq, size): the entry's hash, the RFC 9162 PATH node
    for node, verified (§2.1.3.2) against `root`, and refused with any node
    flipped, a node missing or added, another leaf or another index."""
    n = size or len(entries)
    what = f"GetInclusionProof({seq}, {size})"
    r = c.stub.GetInclusionProof(pb.GetInclusionProofRequest(sequence=seq, tree_size=size),
                                 metadata=reader.md("GetInclusionProof"), timeout=RPC_TIMEOUT)
    check(r.leaf_index == seq - 1 and r.tree_size == n,
          f"{what}: leaf_index {r.leaf_index} tree_size {r.tree_size}, expected {seq - 1} {n}")
    check(r.entry_hash == entries[seq - 1].hash, f"{what}: entry_hash {r.entry_hash.hex()} is not the log's "
          f"{entries[seq - 1].hash.hex()}")
    check(receipt is None or r.entry_hash == receipt, f"{what}: entry_hash is not the one the Append receipt kept")
    check(r.root_hash == root, f"{what}: root_hash {r.root_hash.hex()}, the root of {n} entries is {root.hex()}")
    proof = list(r.hashes)
    check(proof == tree.inclusion(seq - 1, n), f"{what}: the proof {[p.hex()[:8] for p in proof]} is not RFC 9162 "
          f"PATH({seq - 1}, D[{n}]) {[p.hex()[:8] for p in tree.inclusion(seq - 1, n)]}")
    leaf = leaf_hash(r.entry_hash)
    check(verify_inclusion(seq - 1, n, leaf, proof, root), f"{what}: does not verify (RFC 9162 §2.1.3.2)")
    for i in range(len(proof)):
        for bit in (0, 255):
            check(not verify_inclusion(seq - 1, n, leaf, proof[:i] + [flipped(proof[i], bit)] + proof[i + 1:], root),
                  f"{what}: still verifies with node {i} flipped")
    check(not verify_inclusion(seq - 1, n, leaf, proof + [root], root), f"{what}: verifies with a node added")
    check(not proof or not verify_inclusion(seq - 1, n, leaf, proof[:-1], root),
          f"{what}: verifies with its last node removed")
    check(not verify_inclusion(seq - 1, n, leaf_hash(flipped(r.entry_hash)), proof, root),
          f"{what}: verifies for another entry hash")
    check(not verify_inclusion(seq - 1, n, r.entry_hash, proof, root),
          f"{what}: verifies with the entry hash itself as the leaf (no 0x00 prefix)")
    for other in (seq - 2, seq):
        check(not (0 <= other < n) or not verify_inclusion(other, n, leaf, proof, root),
              f"{what}: verifies at leaf index {other}")
    return r


def check_consistency(c, reader, tree, m, size, head, roots=None):
    """GetConsistencyProof(m, size): both roots, the RFC 9162 PROOF node for
    node, verified (§2.1.4.2) against both roots (`roots`, e.g. of kept
    checkpoints, else the ones computed from ReadLog), and refused with any
    node flipped, missing or added, or the roots swapped."""
    n = size or head
    what = f"GetConsistencyProof({m}, {size})"
    r = c.stub.GetConsistencyProof(pb.GetConsistencyProofRequest(from_size=m, to_size=size),
                                   metadata=reader.md("GetConsistencyProof"), timeout=RPC_TIMEOUT)
    first, second = roots or (tree.root(m), tree.root(n))
    check(r.from_size == m and r.to_size == n, f"{what}: proves {r.from_size} -> {r.to_size}")
    check(r.from_root_hash == first and r.to_root_hash == second,
          f"{what}: roots {r.from_root_hash.hex()[:16]} {r.to_root_hash.hex()[:16]}, expected {first.hex()[:16]} "
          f"{second.hex()[:16]}")
    proof = list(r.hashes)
    check(proof == tree.consistency(m, n), f"{what}: the proof {[p.hex()[:8] for p in proof]} is not RFC 9162 "
          f"PROOF({m}, D[{n}]) {[p.hex()[:8] for p in tree.consistency(m, n)]}")
    check(m != n or not proof, f"{what}: equal sizes, yet {len(proof)} nodes")
    check(verify_consistency(m, n, first, second, proof), f"{what}: does not verify (RFC 9162 §2.1.4.2)")
    for i in range(len(proof)):
        for bit in (0, 255):
            check(not verify_consistency(m, n, first, second, proof[:i] + [flipped(proof[i], bit)] + proof[i + 1:]),
                  f"{what}: still verifies with node {i} flipped")
    check(not verify_consistency(m, n, first, second, proof + [second]), f"{what}: verifies with a node added")
    if m < n:
        check(not verify_consistency(m, n, first, second, proof[:-1]), f"{what}: verifies with its last node removed")
        check(not verify_consistency(m, n, second, first, proof), f"{what}: verifies with the roots swapped")
        check(not verify_consistency(m, n, flipped(first), second, proof), f"{what}: verifies for another first root")
        check(not verify_consistency(m, n, first, flipped(second), proof), f"{what}: verifies for another second root")
    return r


def tree_sizes(head, *extra):
    """A few sizes up to `head`: the small ones, either side of powers of
    two, the middle, the kept checkpoints' and the head."""
    sizes = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
             head // 2, head - 1, head, *extra}
    return sorted(s for s in sizes if 1 <= s <= head)


def verify_log_tree(c, reader, partner, entries, ledger_id, ledger_pub, kept=(), receipts=None):
    """docs/audit.md, from the log read over ReadLog: the Merkle root of every
    size computed here; GetCheckpoint(0) verified with the ledger key, at the
    head, with the root computed here; every kept checkpoint given again byte
    for byte by its size, with the root of its size here too; the inclusion
    proof of every entry at the head and at smaller sizes, the consistency
    proof of every size to the head and of pairs of smaller sizes, each also
    shown to fail damaged; the partner flow of "Receipts" (a kept checkpoint
    proved to be extended by the latest). `reader` and `partner` are two
    registered organisations (the methods are open to any). Returns the
    checkpoint GetCheckpoint(0) answered."""
    step(f"verifiable log as {reader.id} and {partner.id}: Merkle roots, the signed checkpoint, inclusion and "
         "consistency proofs (docs/audit.md)")
    head = len(entries)
    tree = MerkleTree([e.hash for e in entries])
    roots = [tree.root(s) for s in range(head + 1)]  # every size, from the log as read
    check(roots[0] == EMPTY_ROOT and (head == 0 or roots[1] == leaf_hash(entries[0].hash)),
          "the tree of 0 and 1 entries")

    cp = get_checkpoint(c, partner, 0)
    n, root = verified_checkpoint(cp, ledger_id, ledger_pub, f"GetCheckpoint(0) as {partner.id}")
    check(n == head, f"GetCheckpoint(0): size {n}, the log's head is {head} (docs/audit.md: the server issues one at "
          "the head if the latest is older)")
    check(root == roots[n],
          f"GetCheckpoint(0): root {root.hex()}, the root of the {n} entries read is {roots[n].hex()}")
    again = get_checkpoint(c, reader, n)
    check(again.SerializeToString() == cp.SerializeToString(),
          f"GetCheckpoint({n}) is not the checkpoint GetCheckpoint(0) answered:\n{again.checkpoint}\n{cp.checkpoint}")
    kept_sizes = []
    for k in kept:
        got = get_checkpoint(c, reader, k.tree_size)
        check(got.checkpoint == k.checkpoint and got.SerializeToString() == k.SerializeToString(),
              f"GetCheckpoint({k.tree_size}) is not the checkpoint kept at that size:\n{got.checkpoint}\n"
              f"kept:\n{k.checkpoint}")
        m, mroot = verified_checkpoint(got, ledger_id, ledger_pub, f"GetCheckpoint({k.tree_size})")
        check(m <= head and mroot == roots[m], f"kept checkpoint {m}: root {mroot.hex()}, the root of the first {m} "
              f"entries read is {roots[m].hex() if m <= head else '(beyond the head)'}")
        kept_sizes.append(m)
    # Partner flow (docs/audit.md "Receipts" 3): the ledger seen now extends
    # each kept checkpoint, proved between the two signed roots.
    for k, m in zip(kept, kept_sizes):
        check_consistency(c, partner, tree, m, n, head, roots=(k.root_hash, root))

    sizes = tree_sizes(head, *kept_sizes)
    inclusion = 0
    for s in sizes:
        for seq in range(1, s + 1):
            who = (reader, partner)[seq % 2]
            check_inclusion(c, who, tree, entries, seq, s, roots[s] if s < n else root,
                            receipt=receipts[seq][1] if receipts and seq in receipts and s == n else None)
            inclusion += 1
    for seq in (1, head // 2 + 1, head):
        check_inclusion(c, reader, tree, entries, seq, 0, root)  # tree_size 0: the head
        inclusion += 1
    pairs = {(m, n) for m in range(1, n + 1)} | {(a, b) for a in sizes for b in sizes if a <= b}
    for m, s in sorted(pairs):
        check_consistency(c, (reader, partner)[(m + s) % 2], tree, m, s, head)
    for m in (1, n // 2 + 1, n):
        check_consistency(c, reader, tree, m, 0, head)  # to_size 0: the head
    print(f"   Merkle roots of all {head + 1} sizes computed from ReadLog; GetCheckpoint(0) = {n} entries, signed by "
          f"the ledger key (key hash {note_key_hash(f'phb-ledger/{ledger_id}', ledger_pub).hex()}), its root == ours; "
          f"{len(kept)} kept checkpoint(s) {kept_sizes} given again byte for byte, each extended by it")
    print(f"   {inclusion} inclusion proofs (every entry at sizes {sizes}) and {len(pairs) + 3 + len(kept)} "
          "consistency proofs == RFC 9162 PATH / PROOF, verified by §2.1.3.2 / §2.1.4.2, every one failing with any node flipped")
    return cp


def verifiable_log_refusals(c, reader, head):
    """docs/api.md "GetCheckpoint, GetInclusionProof, GetConsistencyProof":
    the documented codes, and read-call authentication (§8)."""
    step("verifiable log: documented refusals (docs/api.md)")
    stub = c.stub

    def code(fn, req, method, md=True):
        return rpc_code(lambda: fn(req, metadata=reader.md(method) if md else None, timeout=RPC_TIMEOUT))

    cases = [
        (stub.GetCheckpoint, pb.GetCheckpointRequest(tree_size=head + 1000), "GetCheckpoint", grpc.StatusCode.NOT_FOUND,
         "a size no checkpoint was issued at"),
        (stub.GetInclusionProof, pb.GetInclusionProofRequest(sequence=0, tree_size=head), "GetInclusionProof",
         grpc.StatusCode.INVALID_ARGUMENT, "sequence 0"),
        (stub.GetInclusionProof, pb.GetInclusionProofRequest(sequence=head, tree_size=head - 1), "GetInclusionProof",
         grpc.StatusCode.INVALID_ARGUMENT, "sequence beyond tree_size"),
        (stub.GetInclusionProof, pb.GetInclusionProofRequest(sequence=1, tree_size=head + 1), "GetInclusionProof",
         grpc.StatusCode.FAILED_PRECONDITION, "tree_size beyond the head"),
        (stub.GetConsistencyProof, pb.GetConsistencyProofRequest(from_size=0, to_size=head), "GetConsistencyProof",
         grpc.StatusCode.INVALID_ARGUMENT, "from_size 0"),
        (stub.GetConsistencyProof, pb.GetConsistencyProofRequest(from_size=head, to_size=head - 1),
         "GetConsistencyProof", grpc.StatusCode.INVALID_ARGUMENT, "from_size above to_size"),
        (stub.GetConsistencyProof, pb.GetConsistencyProofRequest(from_size=1, to_size=head + 1), "GetConsistencyProof",
         grpc.StatusCode.FAILED_PRECONDITION, "to_size beyond the head"),
    ]
    for fn, req, method, want, what in cases:
        got = code(fn, req, method)
        check(got == want, f"{method} with {what}: {got}, docs/api.md says {want}")
    for fn, req, method in [
            (stub.GetCheckpoint, pb.GetCheckpointRequest(), "GetCheckpoint"),
            (stub.GetInclusionProof, pb.GetInclusionProofRequest(sequence=1), "GetInclusionProof"),
            (stub.GetConsistencyProof, pb.GetConsistencyProofRequest(from_size=1), "GetConsistencyProof")]:
        got = code(fn, req, method, md=False)
        check(got == grpc.StatusCode.UNAUTHENTICATED, f"{method} unsigned: {got}, expected UNAUTHENTICATED")
        got = rpc_code(lambda: fn(req, metadata=reader.md("GetBalance"), timeout=RPC_TIMEOUT))
        check(got == grpc.StatusCode.UNAUTHENTICATED, f"{method} signed for another method: {got}")
    print(f"   {len(cases)} documented refusals (5, 3, 9); unsigned and wrong-method reads UNAUTHENTICATED")


def audit_ledger(c, reader, datadir, root_pub, ledger_id, as_of):
    """log-format.md §6, as `reader` (an auditor or root): replay the whole
    log, compare it with log/ledger.log and the balances with the server's,
    and ListFlags (at `as_of`) with the flags the replay derives; the listing
    is kept as `audit.listed_flags` (flags, head_sequence)."""
    step(f"ReadLog as {reader.id}: verify the whole log independently")
    entries = c.read_log(reader)
    audit = Auditor(root_pub, ledger_id)
    for e in entries:
        audit.apply(e)
    audit.finish()

    # The file on disk must hold exactly the same entries (log-format.md §5).
    records = parse_ledger_file(os.path.join(datadir, "log", "ledger.log"))
    check(len(records) == len(entries), f"ledger.log has {len(records)} records, ReadLog {len(entries)}")
    for rec, e in zip(records, entries):
        se = e.signed_event
        check(rec == (e.sequence, ts_micros(e.recorded_at), e.prev_hash, e.hash, se.signer_id, se.signature,
                      se.event, refusal_of(e), first_of(e)), f"ledger.log record {rec[0]} differs from ReadLog")

    step("balances recomputed from the log equal GetBalance and ListBalances")
    listed, _ = c.list_all(reader, 3)
    check({b.budget_id for b in listed} == set(audit.budgets),
          f"ListBalances budgets {sorted(b.budget_id for b in listed)} != replayed {sorted(audit.budgets)}")
    for b in listed:
        compare_balance(audit.expected_balance(b.budget_id), b, "ListBalances")
        compare_balance(audit.expected_balance(b.budget_id), c.balance(reader, b.budget_id), "GetBalance")

    check_care_plans(c, reader, audit)
    check_statements_and_holdings(c, reader, entries, audit)
    audit.listed_flags, audit.flags_as_of = check_flags(c, reader, audit, as_of), as_of

    kinds = ", ".join(f"{k} {n}" for k, n in sorted(audit.stats["kinds"].items()))
    print(f"   {len(entries)} entries: sequences 1..{audit.head_seq}, entry hashes, prev_hash chain, "
          f"{len(entries)} signatures by {len(audit.stats['signers'])} signers "
          f"({audit.stats['rotations']} key rotation(s)), (signer, event_id) unique, field and budget rules; "
          "ledger.log identical")
    print(f"   applied kinds: {kinds}")
    refusals = ", ".join(f"code {k} {n}" for k, n in sorted(audit.stats["refusals"].items()))
    print(f"   recorded refusals: {refusals or 'none'} ({audit.stats['in_batch']} in atomic batches); each outside a "
          "batch re-derived from the rules with the same code, none changed a balance")
    print(f"   {len(audit.budgets)} budgets: replayed with decimal arithmetic == GetBalance == ListBalances")
    print(f"   head {audit.head_seq} {audit.head_hash.hex()}")
    return audit, entries


def check_care_plans(c, reader, audit):
    """api.md §8 GetCarePlan: the plan in force and its usage, as the
    replayed log gives them (charges, and refunds given back to the plan)."""
    step("GetCarePlan equals the plans and their usage replayed from the log")
    planned = 0
    for budget_id, b in sorted(audit.budgets.items()):
        req = pb.GetCarePlanRequest(budget_id=budget_id)
        if b.plan is None:
            try:
                c.stub.GetCarePlan(req, metadata=reader.md("GetCarePlan"), timeout=RPC_TIMEOUT)
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.NOT_FOUND and "has no approved care plan" in e.details(),
                      f"GetCarePlan {budget_id} (no plan in the log): {e.code()} {e.details()!r}")
                continue
            raise Mismatch(f"GetCarePlan {budget_id}: a plan, but the log approves none")
        planned += 1
        cp = c.stub.GetCarePlan(req, metadata=reader.md("GetCarePlan"), timeout=RPC_TIMEOUT)
        p = b.plan
        total = p["contingency"] + sum(l[1] for l in p["lines"])
        want = (budget_id, p["plan_id"], p["approved_at"], p["approved_by"], p["valid_from"], p["valid_to"],
                p["review_due"], fmt(total), fmt(p["contingency"]), fmt(p["contingency_used"]),
                [(l[2], l[0], fmt(l[1]), fmt(spent), fmt(l[1] - spent), l[3])
                 for l, spent in zip(p["lines"], p["spent"])])
        have = (cp.budget_id, cp.plan_id, cp.approved_at_sequence, cp.approved_by, cp.valid_from, cp.valid_to,
                cp.review_due, cp.total, cp.contingency_amount, cp.contingency_used,
                [(l.line_id, l.category, l.annual_amount, l.spent, l.remaining, l.description) for l in cp.lines])
        check(have == want, f"GetCarePlan {budget_id}: server says {have}, the log gives {want}")
    print(f"   {planned} plans in force and their line usage == the replay; {len(audit.budgets) - planned} "
          "budgets without one are NOT_FOUND")


def check_flags(c, reader, audit, as_of):
    """docs/flags.md and api.md §8 ListFlags, against the replayed log: every
    listed flag well-formed (id, budget, commissioner, sequences, raised_at)
    with the review the log records for its id; the external-match flags
    exactly those the replay derives; every flag an AppendResult answered
    listed as answered; each filter the whole list filtered."""
    step("ListFlags equals the flags the log gives (docs/flags.md)")
    flags, head, pages = c.list_flags(reader, as_of=as_of)
    check(head == audit.head_seq, f"ListFlags head_sequence {head}, the log's head is {audit.head_seq}")
    threshold_names = set(pb.ControlsConfigured.DESCRIPTOR.fields_by_name)
    for f in flags:
        where = f"ListFlags {f.flag_id!r}"
        check(f.code in FLAG_CODE_NAMES, f"{where}: code {f.code}")
        b = audit.budgets.get(f.budget_id)
        check(b is not None and f.commissioner_id == b.commissioner_id,
              f"{where}: budget {f.budget_id!r} commissioner {f.commissioner_id!r} (the log: "
              f"{b.commissioner_id if b else 'no such budget'})")
        prefix = f"{FLAG_CODE_NAMES[f.code]}:{f.budget_id}:"
        check(f.flag_id.startswith(prefix) and FLAG_KEY_RE.fullmatch(f.flag_id[len(prefix):]),
              f"{where}: not \"{{CODE}}:{{budget_id}}:{{key}}\" for its code and budget")
        check(f.sequences and list(f.sequences) == sorted(set(f.sequences)) and f.sequences[-1] <= head,
              f"{where}: sequences {list(f.sequences)}")
        if f.code in TIME_BASED_FLAGS:
            check(f.raised_at_sequence == head, f"{where}: time-based, raised at {f.raised_at_sequence} not the head")
        else:
            check(f.raised_at_sequence == f.sequences[-1] and f.flag_id == prefix + str(f.sequences[-1]),
                  f"{where}: raised at {f.raised_at_sequence}, sequences {list(f.sequences)} (the key is the "
                  "triggering sequence, the last of them)")
        check(f.severity in (pb.FLAG_SEVERITY_LOW, pb.FLAG_SEVERITY_MEDIUM, pb.FLAG_SEVERITY_HIGH)
              and f.explanation.strip() != "", f"{where}: severity {f.severity}, explanation {f.explanation!r}")
        check(all(t.name in threshold_names and t.value for t in f.thresholds),
              f"{where}: thresholds {[(t.name, t.value) for t in f.thresholds]} (named as ControlsConfigured fields)")
        want = audit.review_of(f.flag_id)
        have = dict(zip(("status", "reviewed_by", "review_sequence", "review_note"), review_fields(f)))
        check(have == want, f"{where}: review {have}, the log's latest FlagReviewed gives {want}")
        raised = c.raised.get(f.flag_id)
        if raised is not None:  # this client's own appends (none in --audit-only)
            check(raised_fields(raised) == raised_fields(f),
                  f"{where}: {raised_fields(f)} differs from the AppendResult that raised it {raised_fields(raised)}")
    listed = {f.flag_id: f for f in flags}
    for flag_id in sorted(audit.flags):
        want = audit.expected_flag(flag_id)
        f = listed.get(flag_id)
        check(f is not None, f"ListFlags does not list {flag_id}, which the log raises")
        have = {k: (list(getattr(f, k)) if k == "sequences" else getattr(f, k)) for k in want}
        check(have == want, f"ListFlags {flag_id}: server says {have}, the log gives {want}")
    matches = sorted(i for i, f in listed.items() if f.code == pb.FLAG_CODE_EXTERNAL_MATCH)
    derived = sorted(i for i, f in audit.flags.items() if f["code"] == pb.FLAG_CODE_EXTERNAL_MATCH)
    check(matches == derived, f"ListFlags EXTERNAL_MATCH flags {matches}, the log's matches give {derived}")
    missing = sorted(set(c.raised) - set(listed))
    check(not missing, f"flags answered in AppendResults are not listed: {missing}")
    some = flags[len(flags) // 2] if flags else None
    filters = [({"code": pb.FLAG_CODE_EXTERNAL_MATCH}, lambda f: f.code == pb.FLAG_CODE_EXTERNAL_MATCH, 1),
               ({"status": pb.FLAG_STATUS_OPEN}, lambda f: f.status == pb.FLAG_STATUS_OPEN, 3),
               ({"status": pb.FLAG_STATUS_DISMISSED}, lambda f: f.status == pb.FLAG_STATUS_DISMISSED, 0),
               ({"since_sequence": head // 2}, lambda f: f.raised_at_sequence > head // 2, 0)]
    if some is not None:
        filters += [({"budget_id": some.budget_id}, lambda f: f.budget_id == some.budget_id, 1),
                    ({"commissioner_id": some.commissioner_id, "code": some.code},
                     lambda f: f.commissioner_id == some.commissioner_id and f.code == some.code, 2)]
    for req, keep, page_size in filters:
        got, h, _ = c.list_flags(reader, page_size=page_size, as_of=as_of, **req)
        check(h == head and [f.SerializeToString() for f in got] == [f.SerializeToString() for f in flags if keep(f)],
              f"ListFlags {req} (page_size {page_size}): {[f.flag_id for f in got]}, the whole list filtered: "
              f"{[f.flag_id for f in flags if keep(f)]}")
    codes = ", ".join(f"{FLAG_CODE_NAMES[code]} {n}" for code, n in sorted(
        {code: sum(1 for f in flags if f.code == code) for code in {f.code for f in flags}}.items()))
    print(f"   {len(flags)} flags at head {head} as of {as_of.ToJsonString()[:10]} ({codes or 'none'}): ids, budgets, "
          f"sequences and reviews == the log; {len(derived)} external-match flags derived independently; "
          f"{len(c.raised)} AppendResult flags listed as answered; {len(filters)} filters == the list filtered")
    return flags, head


def check_statements_and_holdings(c, reader, entries, audit):
    """api.md §8 GetBudgetStatement and GetHoldings, recomputed from the log."""
    step("GetBudgetStatement and GetHoldings equal what the log gives")
    decoded = [(e, pb.Event.FromString(e.signed_event.event)) for e in entries]
    for budget_id, b in sorted(audit.budgets.items()):
        rows, token = [], ""
        while True:
            r = c.stub.GetBudgetStatement(
                pb.GetBudgetStatementRequest(budget_id=budget_id, page_size=3, page_token=token),
                metadata=reader.md("GetBudgetStatement"), timeout=RPC_TIMEOUT)
            check(len(r.rows) <= 3, f"GetBudgetStatement {budget_id}: page of {len(r.rows)} > 3")
            rows.extend(r.rows)
            if not r.next_page_token:
                break
            token = r.next_page_token
        check(rows and rows[0].kind == "budget_opened" and not rows[0].refused,
              f"GetBudgetStatement {budget_id}: does not start with its opening")
        opened_at = rows[0].sequence
        mine = [(e, ev) for e, ev in decoded if ev.budget_id == budget_id and e.sequence >= opened_at]
        check([e.sequence for e, _ in mine] == [r.sequence for r in rows],
              f"GetBudgetStatement {budget_id}: rows {[r.sequence for r in rows]} are not the log's "
              f"entries on the budget {[e.sequence for e, _ in mine]}")
        fig = {"allocated": Decimal("0.00"), "paid_in": Decimal("0.00"), "spent": Decimal("0.00")}
        for (e, ev), row in zip(mine, rows):
            kind = ev.WhichOneof("kind")
            k = getattr(ev, kind)
            amount = {"allocation": lambda: Decimal(k.amount), "disbursement": lambda: Decimal(k.amount),
                      "payment": lambda: -Decimal(k.amount), "purchase": lambda: -Decimal(k.amount),
                      "card_transaction": lambda: -Decimal(k.amount),
                      "review_adjustment": lambda: Decimal(k.delta),
                      "reclaim": lambda: -Decimal(k.amount), "refund": lambda: Decimal(k.amount)}.get(kind, lambda: None)()
            refused = e.HasField("refusal")
            if not refused:
                if kind in ("allocation", "review_adjustment"):
                    fig["allocated"] += amount
                elif kind == "disbursement":
                    fig["paid_in"] += amount
                elif kind in ("payment", "purchase", "refund", "card_transaction"):
                    fig["spent"] -= amount
                elif kind == "reclaim":
                    fig["paid_in"] += amount
                    fig["allocated"] += amount
            held = Decimal("0.00") if b.notional else fig["paid_in"] - fig["spent"]
            want = (kind, e.signed_event.signer_id, "" if amount is None else fmt(amount), fmt(fig["allocated"]),
                    fmt(fig["paid_in"]), fmt(fig["spent"]), fmt(held), refused,
                    e.refusal.code if refused else 0, e.refusal.message if refused else "",
                    e.recorded_at, ev.occurred_at)
            have = (row.kind, row.signer_id, row.amount, row.allocated, row.paid_in, row.spent, row.held,
                    row.refused, row.refusal_code, row.refusal_message, row.recorded_at, row.occurred_at)
            check(have == want, f"GetBudgetStatement {budget_id} row {row.sequence}: server says {have}, "
                  f"the log gives {want}")
        last = rows[-1]
        exp = audit.expected_balance(budget_id)
        check((last.allocated, last.paid_in, last.spent, last.held)
              == (exp["allocated"], exp["paid_in"], exp["spent"], exp["held"]),
              f"GetBudgetStatement {budget_id}: last row's figures are not the balance")
    holders = sorted({b.funds_holder_id for b in audit.budgets.values() if b.funds_holder_id})
    for org in holders:
        h = c.stub.GetHoldings(pb.GetHoldingsRequest(organisation_id=org), metadata=reader.md("GetHoldings"),
                               timeout=RPC_TIMEOUT)
        held_for = sorted(bid for bid, b in audit.budgets.items() if b.funds_holder_id == org)
        check([r.budget_id for r in h.holdings] == held_for and not h.restricted,
              f"GetHoldings {org}: rows {[r.budget_id for r in h.holdings]}, the log gives {held_for}")
        tot = [Decimal("0.00")] * 3
        for r in h.holdings:
            exp = audit.expected_balance(r.budget_id)
            check((r.paid_in, r.spent, r.held) == (exp["paid_in"], exp["spent"], exp["held"]),
                  f"GetHoldings {org}: {r.budget_id} figures differ from the replayed balance")
            tot = [tot[0] + Decimal(exp["paid_in"]), tot[1] + Decimal(exp["spent"]), tot[2] + Decimal(exp["held"])]
        check((h.total_paid_in, h.total_spent, h.total_held) == tuple(fmt(t) for t in tot),
              f"GetHoldings {org}: totals {(h.total_paid_in, h.total_spent, h.total_held)} != {tuple(map(fmt, tot))}")
    print(f"   {len(audit.budgets)} statements recomputed row by row from the log; holdings of {len(holders)} "
          "funds holder(s) reconcile to the balances")


def tamper_test(entries, receipts, root_pub, ledger_id):
    """The auditor must notice tampering, or agreeing with the server proves nothing."""
    step("the auditor catches tampered logs")

    def refuses(mutate, what):
        copy = [pb.LogEntry.FromString(e.SerializeToString()) for e in entries]
        at = mutate(copy)  # the sequence the auditor must name, if one, or (sequence, words in the reason)
        at, why = at if isinstance(at, tuple) else (at, "")
        audit = Auditor(root_pub, ledger_id)
        try:
            for e in copy:
                audit.apply(e)
            audit.finish()
        except Mismatch as e:
            check(at is None or (str(e).startswith(f"log entry {at}:") and why in str(e)),
                  f"the auditor refused a log with {what}, but not at entry {at} {why!r}: {e}")
            CHECKS[0] += 1
            return
        raise Mismatch(f"the auditor accepted a log with {what}")

    def rehash(copy, start):
        prev = copy[start - 1].hash if start else GENESIS_HASH
        for e in copy[start:]:
            e.prev_hash = prev
            se = e.signed_event
            e.hash = prev = entry_hash(prev, e.sequence, ts_micros(e.recorded_at), se.signer_id, se.signature,
                                       se.event, refusal_of(e), first_of(e))

    def flip_event(copy):
        copy[-1].signed_event.event = copy[-1].signed_event.event[:-1] + b"\x03"

    def forge_amount(copy):  # rewrite an amount and rebuild the whole chain: only the signature catches it
        i = next(i for i, e in enumerate(copy) if pb.Event.FromString(e.signed_event.event).HasField("purchase"))
        ev = pb.Event.FromString(copy[i].signed_event.event)
        ev.purchase.amount = "9.99"
        copy[i].signed_event.event = ev.SerializeToString()
        rehash(copy, i)

    def drop(copy):
        del copy[len(copy) // 2]
        for n, e in enumerate(copy, 1):
            e.sequence = n
        rehash(copy, 0)

    def old_key(copy):  # an event after the rotation, re-signed with the rotated-out key, is not in the log
        i = next(i for i, e in enumerate(copy) if not e.HasField("refusal")
                 and pb.Event.FromString(e.signed_event.event).HasField("key_rotated"))
        copy[i:] = copy[i + 1:]
        for n, e in enumerate(copy, 1):
            e.sequence = n
        rehash(copy, 0)

    def clock(copy):
        copy[-1].recorded_at.seconds = copy[-2].recorded_at.seconds - 1
        rehash(copy, len(copy) - 1)

    def refusal_index(copy, in_batch, code=None):
        return next(i for i, e in enumerate(copy) if e.HasField("refusal")
                    and e.refusal.in_atomic_batch == in_batch and code in (None, e.refusal.code))

    def refusal_applied(copy):  # a refused overspend turned into an applied entry, chain rebuilt
        i = refusal_index(copy, False, FAILED_PRECONDITION)
        copy[i].ClearField("refusal")
        rehash(copy, i)
        return copy[i].sequence

    def spending_applied(kind):
        # The first spending of `kind` refused outside a batch: in the
        # scenario, the purchase with no care plan and the personal
        # assistant's wage naming no agreement. Applied instead, chain rebuilt.
        def mutate(copy):
            i = next(i for i, e in enumerate(copy) if e.HasField("refusal") and not e.refusal.in_atomic_batch
                     and e.refusal.code == FAILED_PRECONDITION
                     and pb.Event.FromString(e.signed_event.event).HasField(kind))
            copy[i].ClearField("refusal")
            rehash(copy, i)
            return copy[i].sequence, "refuse it"
        return mutate

    def denied_applied(kind):
        # The first `kind` refused outside a batch with PERMISSION_DENIED (in
        # the scenario: the funds holder's external match, the third party's
        # thresholds), applied instead, chain rebuilt.
        def mutate(copy):
            i = next(i for i, e in enumerate(copy) if e.HasField("refusal") and not e.refusal.in_atomic_batch
                     and e.refusal.code == PERMISSION_DENIED
                     and pb.Event.FromString(e.signed_event.event).HasField(kind))
            copy[i].ClearField("refusal")
            rehash(copy, i)
            return copy[i].sequence, "refuse it"
        return mutate

    def refusal_recoded(copy):  # FAILED_PRECONDITION recorded as PERMISSION_DENIED, chain rebuilt
        i = refusal_index(copy, False, FAILED_PRECONDITION)
        copy[i].refusal.code = PERMISSION_DENIED
        rehash(copy, i)
        return copy[i].sequence

    def aborted_alone(copy):  # an ABORTED refusal outside an atomic batch, chain rebuilt
        i = refusal_index(copy, True, ABORTED)
        copy[i].refusal.in_atomic_batch = False
        rehash(copy, i)
        return copy[i].sequence

    def applied_refused(copy):  # an applied purchase recorded as refused instead, chain rebuilt
        i = next(i for i, e in enumerate(copy) if not e.HasField("refusal")
                 and pb.Event.FromString(e.signed_event.event).HasField("purchase"))
        copy[i].refusal.CopyFrom(pb.Refusal(code=FAILED_PRECONDITION, message="overspend"))
        rehash(copy, i)
        return copy[i].sequence

    def refusal_message(copy):  # the recorded message changed, chain not rebuilt
        i = refusal_index(copy, False)
        copy[i].refusal.message += "."
        return copy[i].sequence

    def refused_replayed(copy):  # defect 7: the refused 550.00 appended later as applied, chain rebuilt
        e = next(e for e in copy if e.HasField("refusal") and not e.refusal.in_atomic_batch
                 and pb.Event.FromString(e.signed_event.event).payment.amount == "550.00")
        again = pb.LogEntry.FromString(e.SerializeToString())
        again.ClearField("refusal")
        again.sequence = copy[-1].sequence + 1
        again.recorded_at.CopyFrom(copy[-1].recorded_at)
        copy.append(again)
        rehash(copy, len(copy) - 1)
        return again.sequence, "repeated"  # the rules alone would accept it: 599.00 is held by then

    refuses(flip_event, "a changed event byte")
    refuses(refusal_applied, "a recorded refusal turned into an applied entry (chain rebuilt)")
    refuses(refusal_recoded, "a refusal's code changed (chain rebuilt)")
    refuses(spending_applied("purchase"), "a purchase refused for want of a care plan, applied (chain rebuilt)")
    refuses(spending_applied("payment"), "a PA payment refused for want of an agreement, applied (chain rebuilt)")
    refuses(spending_applied("card_transaction"), "a declined card payment approved (chain rebuilt)")
    refuses(denied_applied("external_match_recorded"), "a funds holder's external match applied (chain rebuilt)")
    refuses(denied_applied("controls_configured"), "a third party's ControlsConfigured applied (chain rebuilt)")
    refuses(denied_applied("flag_reviewed"), "a payroll provider's FlagReviewed applied (chain rebuilt)")
    refuses(aborted_alone, "ABORTED recorded outside an atomic batch (chain rebuilt)")
    refuses(applied_refused, "an applied purchase recorded as refused (chain rebuilt)")
    refuses(refusal_message, "a refusal's message changed")
    refuses(refused_replayed, "a refused payment applied later (its (signer, event_id) again, chain rebuilt)")
    refuses(forge_amount, "a forged amount and a rebuilt chain")
    # A dropped entry with the chain rebuilt can be a valid ledger (log-format.md
    # §6 says so): the partners' receipts are what catch it.
    copy = [pb.LogEntry.FromString(e.SerializeToString()) for e in entries]
    drop(copy)
    check(any(seq > len(copy) or copy[seq - 1].hash != h for seq, h in receipts.items()),
          "a dropped entry with a rebuilt chain still matches every Append receipt")
    refuses(old_key, "the key rotation removed")
    refuses(clock, "recorded_at going backwards")
    print("   refused: a changed byte, a forged amount (chain rebuilt), a removed key rotation, a clock going "
          "backwards, a refusal applied / re-coded / ABORTED alone / its message changed, a purchase without a "
          "plan, a wage without an agreement, a declined card payment and a non-commissioner's external match, "
          "thresholds and flag review applied, an applied purchase "
          "recorded as refused, a refused payment applied later; a dropped entry (chain rebuilt) fails the Append receipts")


def audit_only(addr, datadir, head_file):
    """After a restart: the log the server replayed is the one audited before."""
    self_test()
    with open(os.path.join(datadir, "ledger-id")) as f:
        ledger_id = f.read().strip()
    with open(os.path.join(datadir, "root.key")) as f:
        root = Org("root", SigningKey(bytes.fromhex(f.read().strip())))
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
    c = Client(channel, ledger_id, "audit")
    with open(head_file + ".flags") as f:
        as_of_seconds, pinned = f.read().split()
    as_of = Timestamp(seconds=int(as_of_seconds))
    pinned = pb.ListFlagsResponse.FromString(bytes.fromhex(pinned))
    audit, entries = audit_ledger(c, root, datadir, root.public, ledger_id, as_of)
    with open(head_file) as f:
        seq, h = f.read().split()
    seq = int(seq)
    check(len(entries) >= seq and entries[seq - 1].hash.hex() == h,
          f"after the restart the log no longer holds the pinned head {seq} {h}")
    print(f"   the pinned head {seq} {h[:16]}... is still in the log")
    # docs/audit.md "Checkpoints": every checkpoint is kept and fetched again
    # by its size, byte for byte, with the same ledger key; the latest is
    # still the one at the (unmoved) head.
    with open(head_file + ".checkpoints") as f:
        lines = f.read().split()
    pinned_pub, kept = bytes.fromhex(lines[0]), [pb.GetCheckpointResponse.FromString(bytes.fromhex(x))
                                                 for x in lines[1:]]
    ledger_pub = ledger_public_key(datadir)
    check(ledger_pub == pinned_pub, "after the restart ledger.key holds another key")
    latest = verify_log_tree(c, root, root, entries, ledger_id, pinned_pub, kept=kept)
    check(latest.SerializeToString() == kept[-1].SerializeToString(),
          f"after the restart GetCheckpoint(0) at the same head is\n{latest.checkpoint}\nbefore it was\n"
          f"{kept[-1].checkpoint}")
    print(f"   the checkpoints kept before the restart ({[k.tree_size for k in kept]}) are given again byte for byte; "
          "GetCheckpoint(0) is still the one at the head")
    # docs/flags.md: a pure function of the log and as_of, so the same after
    # a restart (the log did not move: same head, same flags, same ids).
    flags, head = audit.listed_flags
    check(head == pinned.head_sequence, f"after the restart ListFlags is at head {head}, before it "
          f"{pinned.head_sequence}")
    before = {f.flag_id: f for f in pinned.flags}
    for f in flags:
        check(f.flag_id in before and f == before[f.flag_id],
              f"after the restart ListFlags gives {f.flag_id} as {f}, before it {before.get(f.flag_id)}")
    check([f.flag_id for f in flags] == [f.flag_id for f in pinned.flags],
          f"after the restart ListFlags lists {[f.flag_id for f in flags]}, before it "
          f"{[f.flag_id for f in pinned.flags]}")
    print(f"   ListFlags as of {as_of.ToJsonString()[:10]}: the same {len(flags)} flags at the same head as before "
          "the restart")


def main():
    args = sys.argv[1:]
    head_file, audit_mode = None, False
    if len(args) == 4 and args[2] in ("--write-head", "--audit-only"):
        head_file, audit_mode = args[3], args[2] == "--audit-only"
    elif len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        if audit_mode:
            audit_only(args[0], args[1], head_file)
        else:
            audit = run(args[0], args[1])
            if head_file:
                with open(head_file, "w") as f:
                    f.write(f"{audit.head_seq} {audit.head_hash.hex()}\n")
                # The audit's ListFlags answer and its as_of, for the restart.
                flags, head = audit.listed_flags
                answer = pb.ListFlagsResponse(flags=flags, head_sequence=head)
                with open(head_file + ".flags", "w") as f:
                    f.write(f"{audit.flags_as_of.seconds} {answer.SerializeToString().hex()}\n")
                # The ledger key and the checkpoints kept, for the restart.
                with open(head_file + ".checkpoints", "w") as f:
                    f.write(audit.ledger_pub.hex() + "\n")
                    f.writelines(cp.SerializeToString().hex() + "\n" for cp in audit.checkpoints)
    except Mismatch as e:
        print(f"FAIL: {e}", file=sys.stderr)
        print(f"external: {CHECKS[0]} passed, 1 failed")
        return 1
    except grpc.RpcError as e:
        print(f"FAIL: unexpected RPC error {e.code()}: {e.details()}", file=sys.stderr)
        print(f"external: {CHECKS[0]} passed, 1 failed")
        return 1
    print(f"external client: all checks passed in {time.monotonic() - started:.1f} s")
    print(f"external: {CHECKS[0]} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
