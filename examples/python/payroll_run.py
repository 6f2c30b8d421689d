#!/usr/bin/env python3
"""A payroll provider's program for phb-ledger, written from
proto/phb/ledger/v1/ledger.proto and docs/ alone (docs/api.md for signing and
read-call authentication, docs/log-format.md for hashes).

It plays every party so that it can run against a fresh server:

1. Setup, as the operator (the root key) and a commissioner: register a
   commissioner, a payroll provider and an account provider; open a direct
   payment budget naming the account provider as funds holder and the
   payroll provider; allocate and disburse money; approve a care plan with a
   personal assistant line and a tax and pension line; approve service
   agreements with two personal assistants.
2. The payroll run, as the payroll provider: wages for both personal
   assistants under their agreements plus the employer's National Insurance
   and pension contributions, signed and appended as ONE atomic batch; the
   identical request bytes sent again must come back as duplicates (a retry
   after a lost connection is always safe); then the budget's balance and
   care plan, read with signed call metadata, must add up to the penny.

The server speaks mutual TLS: each organisation connects with its own client
certificate, whose subject common name is its organisation id, and a
connection reads and signs only as that organisation. Every read signature
carries a fresh nonce and is single-use (docs/api.md "Authentication
metadata").

A real payroll provider holds only its own key: in production, step 1 is
done by the operator and the commissioner, and the payroll provider starts
at step 2 with its organisation id, its key file, its client certificate
and the budget ids it pays.

usage: payroll_run.py --server HOST:PORT --ledger-id ID --root-key FILE
                      --tls-dir DIR --run SUFFIX [--spool DIR]

The generated stubs (ledger_pb2, ledger_pb2_grpc) must be importable;
run.sh generates them from proto/ with grpc_tools.protoc.
"""

import argparse
import base64
import datetime
import os
import re
import secrets
import sys
import time
from decimal import Decimal

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey

from phb.ledger.v1 import ledger_pb2 as pb
from phb.ledger.v1 import ledger_pb2_grpc as pb_grpc

SERVICE = "/phb.ledger.v1.LedgerService/"
RPC_TIMEOUT_SECONDS = 30
PENNY = Decimal("0.01")


class Failed(Exception):
    """The server answered something this program did not expect."""


def require(condition, message):
    if not condition:
        raise Failed(message)


# ---------------------------------------------------------------------------
# Connection: the one place that knows how the server is reached.
# ---------------------------------------------------------------------------


def open_channel(address, tls_dir, org_id):
    """A mutual-TLS channel acting as org_id: the operator's CA (tls_dir/ca.pem)
    to trust the server, and the organisation's certificate and key
    (tls_dir/client-{org_id}.pem, .key) to be trusted by it. With
    tls.bind_organisation the certificate's subject CN is the organisation
    id, and the connection may read and sign only as it: one channel per
    organisation (docs/operations.md "Transport security")."""

    def read(name):
        with open(os.path.join(tls_dir, name), "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read(f"client-{org_id}.key"),
        certificate_chain=read(f"client-{org_id}.pem"),
    )
    # The host name in `address` must match the server certificate's
    # subject alternative name (here: localhost).
    return grpc.secure_channel(address, credentials)


# ---------------------------------------------------------------------------
# Signing (docs/api.md §2 and §8)
# ---------------------------------------------------------------------------


class Signer:
    """An organisation (or "root") and its ed25519 key."""

    def __init__(self, org_id, signing_key):
        self.org_id = org_id
        self.key = signing_key

    @property
    def public_key(self):
        return bytes(self.key.verify_key)

    def sign(self, event):
        """Serialize ONCE, sign exactly those bytes (docs/api.md §2). The
        bytes go into the SignedEvent as they are: never re-encode them."""
        data = event.SerializeToString()
        return pb.SignedEvent(event=data, signer_id=self.org_id, signature=self.key.sign(data).signature)

    def read_metadata(self, method):
        """x-phb-org, x-phb-timestamp, x-phb-nonce and x-phb-signature over
        "{full method path}\\n{timestamp}\\n{nonce}" (docs/api.md
        "Authentication metadata"), for ONE call: the server accepts each
        (organisation, nonce) once, so sign every call afresh."""
        timestamp = str(int(time.time()))
        nonce = secrets.token_urlsafe(24)  # 32 characters of A-Z a-z 0-9 - _
        message = f"{SERVICE}{method}\n{timestamp}\n{nonce}".encode("ascii")
        signature = base64.b64encode(self.key.sign(message).signature).decode("ascii")
        return (("x-phb-org", self.org_id), ("x-phb-timestamp", timestamp), ("x-phb-nonce", nonce),
                ("x-phb-signature", signature))


def self_test():
    """docs/api.md §10 and §8 publish test vectors: check this program's
    serialization and signing against them before talking to a server."""
    rfc8032_key1 = SigningKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    event = pb.Event(
        event_id="e-1",
        ledger_id="phb-local",
        budget_id="b-1",
        occurred_at=Timestamp(seconds=1764000000),
        allocation=pb.Allocation(amount="4800.00", basis=pb.ALLOCATION_BASIS_NEEDS_BASED),
    )
    data = event.SerializeToString()
    require(
        data.hex() == "0a03652d3112097068622d6c6f63616c1a03622d31220608808292c9066a0b0a07343830302e30301002",
        f"the test vector Event serializes differently here: {data.hex()}",
    )
    require(
        rfc8032_key1.sign(data).signature.hex()
        == "99df92e8101151703f4b94c3de1c32726aaae3c167e55cd8bfc3ffdb9cacf7e4"
        "5e255d54c8854f05ea6e041bbf5fc21715c09932f77cbc8bf3c6f47752c90602",
        "the test vector Event signs differently here",
    )
    read = base64.b64encode(
        rfc8032_key1.sign(b"/phb.ledger.v1.LedgerService/GetBalance\n1764050000").signature
    ).decode("ascii")
    require(
        read == "kKkuWMooGJvsP3GwvGXJOn2GfhAh+X5Wrhs382ANnKli1OXtQVezjp11isZoY1rrmJEX+cABAYDUw+ApOP14Aw==",
        f"the read-call test vector signs differently here: {read}",
    )


# ---------------------------------------------------------------------------
# Money: decimal strings, exact pence (docs/api.md §6 "Amounts")
# ---------------------------------------------------------------------------


def pounds(text):
    """A server figure ("25.80"): exactly two decimal places, always."""
    require(re.fullmatch(r"-?[0-9]+\.[0-9]{2}", text) is not None, f"{text!r} is not a two-decimal amount")
    return Decimal(text)


def amount(value):
    """An amount to send: exact pence or refuse, never rounded."""
    require(value == value.quantize(PENNY), f"{value} is not a whole number of pence")
    return f"{value:.2f}"


def gbp(value):
    return f"£{value:,.2f}"


# ---------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------


CODE_NAMES = {0: "OK", 3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
              9: "FAILED_PRECONDITION", 10: "ABORTED", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}


def check_written(results, signed, what, resent=False):
    """Every result OK, written, in order (docs/api.md §3); duplicates only
    if the request was resent after a failure in transit."""
    require(len(results) == len(signed), f"{what}: {len(results)} results for {len(signed)} events")
    for i, (result, event) in enumerate(zip(results, signed)):
        if result.error.code != 0:
            raise Failed(
                f"{what}: event {i} ({result.event_id}) refused: {CODE_NAMES.get(result.error.code, result.error.code)}"
                f" field {result.error.field!r}: {result.error.message}"
                + (f" (recorded at sequence {result.refusal_sequence}: final)" if result.refusal_sequence else "")
            )
        require(resent or not result.duplicate, f"{what}: event {i} is a duplicate of sequence {result.sequence}")
        require(result.event_id == pb.Event.FromString(event.event).event_id, f"{what}: event {i}: event_id echo")
        require(result.sequence > 0 and len(result.entry_hash) == 32, f"{what}: event {i}: no receipt")
        require(result.tree_size == result.sequence, f"{what}: event {i}: tree_size {result.tree_size}")
    sequences = [r.sequence for r in results]
    require(sequences == list(range(sequences[0], sequences[0] + len(sequences))),
            f"{what}: an atomic batch is written contiguously, got sequences {sequences}")
    return results


def append(stub, signed, what):
    reply = stub.Append(pb.AppendRequest(events=signed, atomic=True), timeout=RPC_TIMEOUT_SECONDS)
    return check_written(reply.results, signed, what)


def timestamp_now():
    # Whole seconds: nanos 0 is left out of the bytes.
    return Timestamp(seconds=int(time.time()))


# ---------------------------------------------------------------------------
# 1. Setup: the operator and the commissioner
# ---------------------------------------------------------------------------


class Scenario:
    """Ids, dates and rates of one run. Every id carries a per-run suffix so
    the program can run any number of times against one server; the client
    certificates name the organisations, so the suffix is chosen with them
    (run.sh)."""

    def __init__(self, ledger_id, today, run):
        self.ledger_id = ledger_id
        self.run = run
        self.commissioner = Signer(f"icb-example-{run}", SigningKey.generate())
        self.payroll = Signer(f"payroll-co-{run}", SigningKey.generate())
        self.account = Signer(f"dp-account-{run}", SigningKey.generate())
        self.budget_id = f"dp-{run}"
        self.period_start = today - datetime.timedelta(days=90)
        self.period_end = self.period_start + datetime.timedelta(days=364)
        self.allocation = Decimal("20000.00")
        self.disbursed = Decimal("6000.00")
        self.pa_line = Decimal("15600.00")
        self.tax_line = Decimal("2400.00")
        self.contingency = Decimal("500.00")
        # Two personal assistants, each under an agreement: an hourly rate
        # and a weekly limit on hours.
        self.pas = {
            "a": {"payee_ref": f"pa-7f3a-{run}", "agreement_id": f"sa-pa-7f3a-{run}",
                  "rate": Decimal("12.60"), "max_hours": 40},
            "b": {"payee_ref": f"pa-c21e-{run}", "agreement_id": f"sa-pa-c21e-{run}",
                  "rate": Decimal("13.15"), "max_hours": 20},
        }

    def event(self, event_id, budget_id="", **kind):
        return pb.Event(event_id=event_id, ledger_id=self.ledger_id, budget_id=budget_id,
                        occurred_at=timestamp_now(), **kind)


def setup(root_stub, commissioner_stub, root, s):
    print("-- setup: the operator registers three organisations", flush=True)
    registrations = [
        root.sign(s.event(f"register-{org.org_id}", organisation_registered=pb.OrganisationRegistered(
            organisation_id=org.org_id, roles=[role], public_key=org.public_key)))
        for org, role in ((s.commissioner, pb.ROLE_COMMISSIONER),
                          (s.payroll, pb.ROLE_PAYROLL_PROVIDER),
                          (s.account, pb.ROLE_ACCOUNT_PROVIDER))
    ]
    append(root_stub, registrations, "registrations")

    print(f"-- setup: {s.commissioner.org_id} opens, funds and plans direct payment {s.budget_id}", flush=True)
    c, b = s.commissioner, s.budget_id
    iso = datetime.date.isoformat
    events = [
        s.event(f"{b}-open", b, budget_opened=pb.BudgetOpened(
            holder_ref=f"holder-{s.run}", commissioner_id=c.org_id,
            period_start=iso(s.period_start), period_end=iso(s.period_end),
            management=pb.MANAGEMENT_DIRECT_PAYMENT,
            funds_holder_id=s.account.org_id, payroll_provider_id=s.payroll.org_id,
            cohort=pb.COHORT_CONTINUING_HEALTHCARE, age_band=pb.AGE_BAND_ADULT)),
        s.event(f"{b}-allocate", b, allocation=pb.Allocation(
            amount=amount(s.allocation), basis=pb.ALLOCATION_BASIS_NEEDS_BASED)),
        s.event(f"{b}-disburse-1", b, disbursement=pb.Disbursement(amount=amount(s.disbursed))),
        # Spending needs an approved plan with a line for its category
        # (docs/api.md "Care plans").
        s.event(f"{b}-plan", b, care_plan_approved=pb.CarePlanApproved(
            plan_id=f"plan-{s.run}",
            lines=[
                pb.PlanLine(line_id="pa", category="personal_assistant", annual_amount=amount(s.pa_line),
                            description="two personal assistants, about 30 hours a week"),
                pb.PlanLine(line_id="oncost", category="tax_and_pension", annual_amount=amount(s.tax_line),
                            description="employer's National Insurance and pension"),
            ],
            contingency_amount=amount(s.contingency),
            valid_from=iso(s.period_start), valid_to=iso(s.period_end),
            review_due=iso(s.period_start + datetime.timedelta(days=182)))),
    ]
    # Personal assistants are paid only under an agreement (docs/api.md
    # "Service agreements").
    for pa in s.pas.values():
        events.append(s.event(f"{b}-{pa['agreement_id']}", b, service_agreement_approved=pb.ServiceAgreementApproved(
            agreement_id=pa["agreement_id"], payee_ref=pa["payee_ref"],
            payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_sector=pb.SECTOR_INDIVIDUAL,
            category="personal_assistant", unit=pb.UNIT_HOUR, rate=amount(pa["rate"]),
            max_units_per_week=pa["max_hours"],
            valid_from=iso(s.period_start), valid_to=iso(s.period_end))))
    append(commissioner_stub, [c.sign(e) for e in events], "the commissioner's setup")


# ---------------------------------------------------------------------------
# 2. The payroll run: the payroll provider
# ---------------------------------------------------------------------------


def build_payroll_run(s, today):
    """The fortnight that ended yesterday, paid in arrears: one wage payment
    per personal assistant and week worked, then the employer's on-costs.
    Returns (lines for the summary, the signed events)."""
    week1 = (today - datetime.timedelta(days=14), today - datetime.timedelta(days=8))
    week2 = (today - datetime.timedelta(days=7), today - datetime.timedelta(days=1))
    hours = [("a", week1, Decimal("37.5")), ("a", week2, Decimal("35")), ("b", week1, Decimal("16")),
             ("b", week2, Decimal("18"))]
    run_id = f"run-{today:%Y%m%d}-{s.run}"
    lines, events = [], []
    for n, (who, (start, end), units) in enumerate(hours, 1):
        pa = s.pas[who]
        wage = pa["rate"] * units  # the ledger refuses anything but rate x units exactly
        lines.append((pa["payee_ref"], f"{units} h x {gbp(pa['rate'])}, {start}..{end}", wage, "wages"))
        events.append(s.event(f"{run_id}-{n}", s.budget_id, payment=pb.Payment(
            amount=amount(wage), payee_kind=pb.PAYEE_KIND_PERSONAL_ASSISTANT, payee_ref=pa["payee_ref"],
            category="personal_assistant", reference=f"payslip {run_id}-{n}",
            agreement_id=pa["agreement_id"], units=str(units),
            service_from=start.isoformat(), service_to=end.isoformat())))
    wages = sum((line[2] for line in lines), Decimal("0"))
    # Employer's National Insurance and pension on this run (illustrative
    # rates, computed in exact pence: the ledger never rounds for you).
    employer_ni = (wages * Decimal("0.138")).quantize(PENNY)
    pension = (wages * Decimal("0.03")).quantize(PENNY)
    for n, (kind, ref, value, label) in enumerate((
            (pb.PAYEE_KIND_TAX_AUTHORITY, "hmrc-paye", employer_ni, "employer's NI (13.8 %)"),
            (pb.PAYEE_KIND_PENSION_SCHEME, "nest-pension", pension, "pension (3 %)")), len(events) + 1):
        lines.append((ref, label, value, "on-cost"))
        events.append(s.event(f"{run_id}-{n}", s.budget_id, payment=pb.Payment(
            amount=amount(value), payee_kind=kind, payee_ref=ref, category="tax_and_pension",
            reference=f"{run_id} employer contributions")))
    return run_id, lines, [s.payroll.sign(e) for e in events]


# An Append that failed in transit may or may not have been stored: resend
# the same bytes and the answer is either a fresh write or the duplicate
# (docs/api.md §4, "Retry with the same bytes after ...").
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def send_spooled(append_bytes, path, attempts=4):
    """Send the AppendRequest exactly as spooled: the same bytes every time.
    Returns the response and whether it answers a resend."""
    with open(path, "rb") as f:
        request = f.read()
    for attempt in range(attempts):
        try:
            return append_bytes(request, timeout=RPC_TIMEOUT_SECONDS), attempt > 0
        except grpc.RpcError as e:
            if e.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)


def payroll_run(channel, s, today, spool):
    run_id, lines, signed = build_payroll_run(s, today)
    print(f"-- payroll run {run_id}: {len(signed)} payments signed by {s.payroll.org_id}, one atomic batch", flush=True)

    # Keep the signed request until every event has a result: a retry must
    # resend these bytes, never a rebuilt request (docs/api.md §2, §4).
    path = os.path.join(spool, f"{run_id}.append.bin")
    with open(path, "wb") as f:
        f.write(pb.AppendRequest(events=signed, atomic=True).SerializeToString())
        f.flush()
        os.fsync(f.fileno())
    # A raw-bytes Append (no request serializer): what goes on the wire is
    # the spooled file, byte for byte.
    append_bytes = channel.unary_unary(SERVICE + "Append", request_serializer=None,
                                       response_deserializer=pb.AppendResponse.FromString)

    reply, resent = send_spooled(append_bytes, path)
    first = check_written(reply.results, signed, "the payroll run", resent)
    flags = [f for r in first for f in r.flags]

    # As after a lost connection: send it again. Every event must be answered
    # as a duplicate with its original receipt, and nothing written twice.
    again = send_spooled(append_bytes, path)[0].results
    require(len(again) == len(first), "retry: wrong number of results")
    for i, (a, b) in enumerate(zip(first, again)):
        require(b.error.code == 0 and b.duplicate, f"retry: event {i} not a duplicate: {b.error.code} {b.error.message}")
        require((b.sequence, b.entry_hash, b.tree_size) == (a.sequence, a.entry_hash, a.tree_size),
                f"retry: event {i}: receipt differs from the original")
    os.remove(path)  # every event has its final result
    return run_id, lines, first, flags


def expect_refused(code, what, call):
    try:
        call()
    except grpc.RpcError as e:
        require(e.code() == code, f"{what}: {e.code().name} ({e.details()}), expected {code.name}")
        return
    raise Failed(f"{what}: accepted, expected {code.name}")


def read_back(stub, s, lines):
    """GetBalance and GetCarePlan as the payroll provider, with signed call
    metadata; every figure must follow from what was sent, to the penny."""
    p = s.payroll
    request = pb.GetBalanceRequest(budget_id=s.budget_id)
    metadata = p.read_metadata("GetBalance")
    balance = stub.GetBalance(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS).balance
    # A read signature is single-use: the same metadata again, as an
    # eavesdropper or a careless retry would send it, is refused.
    expect_refused(grpc.StatusCode.UNAUTHENTICATED, "the same read metadata sent twice",
                   lambda: stub.GetBalance(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS))
    # The commissioner may read this budget, but not over the payroll
    # provider's connection: the client certificate binds it to one
    # organisation, whatever key signs the metadata.
    expect_refused(grpc.StatusCode.PERMISSION_DENIED, "a read as another organisation over this connection",
                   lambda: stub.GetBalance(request, metadata=s.commissioner.read_metadata("GetBalance"),
                                           timeout=RPC_TIMEOUT_SECONDS))
    wages = sum((v for _, _, v, kind in lines if kind == "wages"), Decimal("0"))
    oncosts = sum((v for _, _, v, kind in lines if kind == "on-cost"), Decimal("0"))
    spent = wages + oncosts
    expected = {"allocated": s.allocation, "paid_in": s.disbursed, "spent": spent,
                "held": s.disbursed - spent, "available": s.allocation - spent}
    for field, want in expected.items():
        got = pounds(getattr(balance, field))
        require(got == want, f"balance.{field} is {got}, expected {want}")
    require(pounds(balance.held) == pounds(balance.paid_in) - pounds(balance.spent), "held != paid_in - spent")
    require(pounds(balance.available) == pounds(balance.allocated) - pounds(balance.spent), "available != allocated - spent")
    require((balance.funds_holder_id, balance.payroll_provider_id) == (s.account.org_id, p.org_id),
            "the budget names other organisations")

    plan = stub.GetCarePlan(pb.GetCarePlanRequest(budget_id=s.budget_id),
                            metadata=p.read_metadata("GetCarePlan"), timeout=RPC_TIMEOUT_SECONDS)
    by_line = {line.line_id: line for line in plan.lines}
    for line_id, annual, used in (("pa", s.pa_line, wages), ("oncost", s.tax_line, oncosts)):
        line = by_line[line_id]
        require(pounds(line.annual_amount) == annual, f"plan line {line_id}: annual {line.annual_amount}")
        require(pounds(line.spent) == used, f"plan line {line_id}: spent {line.spent}, expected {used}")
        require(pounds(line.remaining) == annual - used, f"plan line {line_id}: remaining {line.remaining}")
    require(pounds(plan.contingency_used) == Decimal("0.00"), f"contingency used: {plan.contingency_used}")
    require(pounds(plan.total) == s.pa_line + s.tax_line + s.contingency, f"plan total {plan.total}")
    return balance, plan, wages, oncosts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="host:port of phb-ledger serve")
    parser.add_argument("--ledger-id", required=True, help="the server's ledger id (from the operator)")
    parser.add_argument("--root-key", required=True, help="the root key's hex seed (setup only)")
    parser.add_argument("--tls-dir", required=True,
                        help="ca.pem (the operator's CA) and client-ORG.pem/.key per organisation")
    parser.add_argument("--run", required=True,
                        help="the ids' suffix: the organisations the certificates in --tls-dir name")
    parser.add_argument("--spool", default=".", help="where signed requests wait for their results")
    args = parser.parse_args()

    self_test()
    with open(args.root_key) as f:
        root = Signer("root", SigningKey(bytes.fromhex(f.read().strip())))
    today = datetime.datetime.now(datetime.timezone.utc).date()
    s = Scenario(args.ledger_id, today, args.run)

    def channel(org):
        return open_channel(args.server, args.tls_dir, org.org_id)

    with channel(root) as as_root, channel(s.commissioner) as as_commissioner, channel(s.payroll) as as_payroll:
        setup(pb_grpc.LedgerServiceStub(as_root), pb_grpc.LedgerServiceStub(as_commissioner), root, s)
        run_id, lines, results, flags = payroll_run(as_payroll, s, today, args.spool)
        balance, plan, wages, oncosts = read_back(pb_grpc.LedgerServiceStub(as_payroll), s, lines)

    print()
    print(f"Payroll run {run_id} for budget {s.budget_id}, paid by {s.payroll.org_id}")
    for (payee, what, value, _), r in zip(lines, results):
        print(f"  seq {r.sequence:>4}  {payee:<22} {what:<42} {gbp(value):>10}")
    print(f"  {'':<9} {'wages':<22} {'':<42} {gbp(wages):>10}")
    print(f"  {'':<9} {'employer on-costs':<22} {'':<42} {gbp(oncosts):>10}")
    print(f"  {'':<9} {'total, one atomic batch':<22} {'':<42} {gbp(wages + oncosts):>10}")
    print(f"Receipts: sequences {results[0].sequence}-{results[-1].sequence}, "
          f"last entry hash {results[-1].entry_hash.hex()}")
    print(f"Retry of the same {len(results)} signed events: all duplicates, nothing written twice")
    print("Read signatures: a replayed one refused (UNAUTHENTICATED); another organisation's read over "
          "this connection refused (PERMISSION_DENIED)")
    print(f"Balance: allocated {gbp(pounds(balance.allocated))}, paid in {gbp(pounds(balance.paid_in))}, "
          f"spent {gbp(pounds(balance.spent))}, held {gbp(pounds(balance.held))}, "
          f"available {gbp(pounds(balance.available))} (all checked to the penny)")
    for line in plan.lines:
        print(f"Care plan line {line.line_id} ({line.category}): {gbp(pounds(line.spent))} of "
              f"{gbp(pounds(line.annual_amount))} spent, {gbp(pounds(line.remaining))} left")
    for flag in flags:
        print(f"Flag raised: {flag.flag_id}: {flag.explanation}")
    print("payroll run: OK")


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"payroll run FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as e:
        print(f"payroll run FAILED: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
