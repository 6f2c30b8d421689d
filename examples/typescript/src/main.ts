// A phb-ledger client on Node 20, written from proto/ and docs/ alone.
//
// As the operator (root) it registers a commissioner and a third-party
// organisation; as the commissioner it opens a third-party budget, funds it
// and approves a care plan; as the third party it buys equipment the plan
// covers. Then it checks its receipt without trusting the server: the entry
// hash recomputed from the bytes (docs/log-format.md §2), the entry's
// inclusion in a checkpoint signed by the ledger key (docs/audit.md, RFC
// 9162), and the balance to the penny.
//
// The server speaks mutual TLS: each organisation connects with its own
// client certificate (subject CN = its organisation id) and reads and signs
// only as it; every read signature carries a nonce and is single-use.
//
// usage: node dist/main.js --server HOST:PORT --ledger-id ID --root-key FILE
//                          --ledger-key HEX --tls-dir DIR --run SUFFIX [--proto DIR]
//   --tls-dir: ca.pem (the operator's CA) and client-ORG.pem/.key for root,
//   icb-ts-SUFFIX and care-trust-SUFFIX (the organisations this run creates)

import * as fs from "node:fs";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import {
  AppendResult, Balance, Checkpoint, Failed, InclusionProof, Ledger, LogEntry, Proto, SERVICE, SignedEvent, Signer,
  check, encodeEvent, entryHash, leafHash, loadProto, pence, pounds, tlsFiles, verifierKey, verifyCheckpoint,
  verifyInclusion,
} from "./ledger";

const CODE_NAMES: Record<number, string> = {
  0: "OK", 3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
  9: "FAILED_PRECONDITION", 10: "ABORTED", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED",
};

function args(): Record<string, string> {
  const out: Record<string, string> = { proto: path.resolve(__dirname, "../../../proto") };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const m = /^--([a-z-]+)$/.exec(argv[i]);
    check(m !== null && i + 1 < argv.length,
      "usage: main.js --server HOST:PORT --ledger-id ID --root-key FILE --ledger-key HEX --tls-dir DIR --run SUFFIX [--proto DIR]");
    out[m[1]] = argv[i + 1];
  }
  for (const need of ["server", "ledger-id", "root-key", "ledger-key", "tls-dir", "run"]) {
    check(need in out, `--${need} is required`);
  }
  return out;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const isoDate = (d: Date) => d.toISOString().slice(0, 10);
const daysFrom = (d: Date, n: number) => new Date(d.getTime() + n * 86_400_000);

/** The test vectors of docs/api.md §10 and §8 and docs/log-format.md §4:
 * this client encodes, signs and hashes as the documents say. */
function selfTest(proto: Proto): void {
  const key1 = Signer.fromSeed("root", Buffer.from("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", "hex"));
  check(hex(key1.publicKey) === "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "RFC 8032 key 1: public key");
  const bytes = encodeEvent(proto, {
    event_id: "e-1", ledger_id: "phb-local", budget_id: "b-1", occurred_at: { seconds: 1764000000 },
    allocation: { amount: "4800.00", basis: "ALLOCATION_BASIS_NEEDS_BASED" },
  });
  check(hex(bytes) === "0a03652d3112097068622d6c6f63616c1a03622d31220608808292c9066a0b0a07343830302e30301002",
    `the test vector Event encodes differently here: ${hex(bytes)}`);
  check(hex(key1.sign(bytes)) ===
    "99df92e8101151703f4b94c3de1c32726aaae3c167e55cd8bfc3ffdb9cacf7e45e255d54c8854f05ea6e041bbf5fc21715c09932f77cbc8bf3c6f47752c90602",
    "the test vector Event signs differently here");
  check(key1.sign(Buffer.from(`${SERVICE}GetBalance\n1764050000`, "ascii")).toString("base64") ===
    "kKkuWMooGJvsP3GwvGXJOn2GfhAh+X5Wrhs382ANnKli1OXtQVezjp11isZoY1rrmJEX+cABAYDUw+ApOP14Aw==",
    "the read-call test vector signs differently here");
  const worked: LogEntry = {
    sequence: 1n, recorded_at: { seconds: 1764000000n, nanos: 0 }, prev_hash: Buffer.alloc(32), hash: Buffer.alloc(0),
    signed_event: { signer_id: "root", signature: Buffer.alloc(64, 1), event: Buffer.from("0a03652d31", "hex") },
    refusal: null,
  };
  check(hex(entryHash(worked)) === "bdb53223c3b721470481a23fd93eab490d4a717baac36bc56ba39f024ac1e86e",
    "the worked example's entry hash differs here");
}

/** Appends and insists every event was written (docs/api.md §3: a refused
 * event is a result, not an RPC error). */
async function appendAll(ledger: Ledger, signed: SignedEvent[], atomic: boolean, what: string): Promise<AppendResult[]> {
  const results = await ledger.append(signed, atomic);
  check(results.length === signed.length, `${what}: ${results.length} results for ${signed.length} events`);
  results.forEach((r, i) => {
    const code = r.error?.code ?? 0;
    check(code === 0, `${what}: event ${i} (${r.event_id}) refused: ${CODE_NAMES[code] ?? code} ` +
      `field ${JSON.stringify(r.error?.field)}: ${r.error?.message}` +
      (r.refusal_sequence > 0n ? ` (recorded at sequence ${r.refusal_sequence}: final)` : ""));
    check(!r.duplicate && r.sequence > 0n && r.entry_hash.length === 32, `${what}: event ${i}: no fresh receipt`);
    check(r.tree_size === r.sequence, `${what}: event ${i}: tree_size ${r.tree_size} for sequence ${r.sequence}`);
  });
  return results;
}

async function main(): Promise<void> {
  const a = args();
  const proto = loadProto(a.proto);
  selfTest(proto);

  const ledgerId = a["ledger-id"];
  const ledgerKey = Buffer.from(a["ledger-key"], "hex");
  check(ledgerKey.length === 32, "--ledger-key: 64 hex characters (the ledger's public key, from the operator)");
  const root = Signer.fromSeed("root", Buffer.from(fs.readFileSync(a["root-key"], "ascii").trim(), "hex"));
  // Ids are forever: a fresh suffix per run, chosen by run.sh because the
  // client certificates name the organisations.
  const run = a.run;
  const commissioner = Signer.generate(`icb-ts-${run}`);
  const thirdParty = Signer.generate(`care-trust-${run}`);
  const budgetId = `tp-${run}`;
  const today = new Date();
  const start = daysFrom(today, -30);
  const now = () => ({ seconds: Math.floor(Date.now() / 1000) });
  const event = (eventId: string, budget: string, kind: Record<string, unknown>) =>
    ({ event_id: eventId, ledger_id: ledgerId, budget_id: budget, occurred_at: now(), ...kind });

  const connect = (org: Signer) => new Ledger(proto, a.server, tlsFiles(a["tls-dir"], org.orgId));
  const asRoot = connect(root);
  const asCommissioner = connect(commissioner);
  const asThirdParty = connect(thirdParty);
  try {
    // 1. The operator registers both organisations (root signs).
    console.log(`-- root registers ${commissioner.orgId} and ${thirdParty.orgId}`);
    const roles: [Signer, string][] = [[commissioner, "ROLE_COMMISSIONER"], [thirdParty, "ROLE_THIRD_PARTY"]];
    await appendAll(asRoot, roles.map(([org, role]) => root.signEvent(encodeEvent(proto, event(`register-${org.orgId}`, "", {
      organisation_registered: { organisation_id: org.orgId, roles: [role], public_key: org.publicKey },
    })))), true, "registrations");

    // 2. The commissioner opens, funds and plans the budget, atomically.
    const allocated = pence("3000.00");
    const paidIn = pence("1500.00");
    console.log(`-- ${commissioner.orgId} opens third-party budget ${budgetId}, funds it and approves its plan`);
    const setup = await appendAll(asCommissioner, [
      event(`${budgetId}-open`, budgetId, { budget_opened: {
        holder_ref: `holder-${run}`, commissioner_id: commissioner.orgId,
        period_start: isoDate(start), period_end: isoDate(daysFrom(start, 364)),
        management: "MANAGEMENT_THIRD_PARTY", funds_holder_id: thirdParty.orgId, age_band: "AGE_BAND_ADULT" } }),
      event(`${budgetId}-allocate`, budgetId, { allocation: { amount: pounds(allocated), basis: "ALLOCATION_BASIS_NEEDS_BASED" } }),
      event(`${budgetId}-disburse`, budgetId, { disbursement: { amount: pounds(paidIn) } }),
      event(`${budgetId}-plan`, budgetId, { care_plan_approved: {
        plan_id: `plan-${run}`,
        lines: [
          { line_id: "aids", category: "equipment", annual_amount: "800.00", description: "equipment and aids" },
          { line_id: "swim", category: "exercise_wellbeing", annual_amount: "400.00" },
        ],
        contingency_amount: "50.00", valid_from: isoDate(start), valid_to: isoDate(daysFrom(start, 364)),
        review_due: isoDate(daysFrom(start, 180)) } }),
    ].map((e) => commissioner.signEvent(encodeEvent(proto, e))), true, "the commissioner's setup");

    // 3. The third party buys equipment. These bytes are encoded here, once,
    //    and signed; the server stores them verbatim.
    const spent = pence("129.99");
    const purchaseBytes = encodeEvent(proto, event(`${budgetId}-purchase-1`, budgetId, { purchase: {
      amount: pounds(spent), category: "equipment", supplier_ref: `supplier-${run}`,
      description: "shower chair", receipt_ref: "INV-20417", supplier_sector: "SECTOR_INDEPENDENT" } }));
    const purchase = thirdParty.signEvent(purchaseBytes);
    console.log(`-- ${thirdParty.orgId} buys equipment: ${purchaseBytes.length} event bytes, signed`);
    const [receipt] = await appendAll(asThirdParty, [purchase], false, "the purchase");
    const seq = receipt.sequence;

    // The same signed event again, as after a lost connection: a duplicate
    // with the original receipt.
    const [again] = await asThirdParty.append([purchase], false);
    check((again.error?.code ?? 0) === 0 && again.duplicate && again.sequence === seq &&
      hex(again.entry_hash) === hex(receipt.entry_hash), "a resent event is not answered as its duplicate");

    // 4. The entry hash, recomputed. AppendResult carries the hash but not
    //    recorded_at or prev_hash, so this needs ReadLog (auditors and root):
    //    here as root. The previous entry is read too, to check the link.
    const entries = await asRoot.readLog(root, seq - 1n);
    const [prev, mine] = entries;
    check(prev?.sequence === seq - 1n && mine?.sequence === seq, `ReadLog from ${seq - 1n} did not start there`);
    check(mine.signed_event !== null && hex(mine.signed_event.event) === hex(purchaseBytes) &&
      mine.signed_event.signer_id === thirdParty.orgId && hex(mine.signed_event.signature) === hex(purchase.signature),
      "the log does not hold the signed event exactly as sent");
    check(mine.refusal === null, "the purchase is recorded as a refusal");
    const prevHash = entryHash(prev);
    check(hex(prevHash) === hex(prev.hash), `entry ${prev.sequence}: hash does not recompute`);
    const setupReceipt = setup[setup.length - 1];
    if (setupReceipt.sequence === prev.sequence) {
      check(hex(prevHash) === hex(setupReceipt.entry_hash), "the plan's receipt differs from the log");
    }
    check(hex(mine.prev_hash) === hex(prevHash), `entry ${seq}: prev_hash is not entry ${seq - 1n}'s hash`);
    const recomputed = entryHash(mine);
    check(hex(recomputed) === hex(mine.hash) && hex(recomputed) === hex(receipt.entry_hash),
      `entry ${seq}: recomputed hash ${hex(recomputed)}, log ${hex(mine.hash)}, receipt ${hex(receipt.entry_hash)}`);

    // 5. Inclusion in a checkpoint signed by the ledger key (docs/audit.md
    //    "Receipts"), asked for as the third party.
    const cp = await asThirdParty.unary<Checkpoint>("GetCheckpoint", "GetCheckpointRequest", "GetCheckpointResponse",
      {}, thirdParty.readMetadata("GetCheckpoint"));
    const verified = verifyCheckpoint(cp.checkpoint, ledgerId, ledgerKey);
    check(verified.size >= receipt.tree_size, `checkpoint ${verified.size} is older than the receipt's tree ${receipt.tree_size}`);
    check(cp.tree_size === verified.size && hex(cp.root_hash) === hex(verified.root), "GetCheckpoint's fields contradict its note");
    check(cp.verifier_key === verifierKey(verified.origin, ledgerKey), `verifier_key ${cp.verifier_key} is not the ledger key`);
    const proof = await asThirdParty.unary<InclusionProof>("GetInclusionProof", "GetInclusionProofRequest",
      "GetInclusionProofResponse", { sequence: seq.toString(), tree_size: verified.size.toString() },
      thirdParty.readMetadata("GetInclusionProof"));
    check(proof.leaf_index === seq - 1n && proof.tree_size === verified.size, "the proof is for another leaf or tree");
    check(hex(proof.entry_hash) === hex(receipt.entry_hash), "the proved entry is not the one in the receipt");
    const leaf = leafHash(receipt.entry_hash);
    // Against the signed root, never the root_hash sent beside the proof.
    check(verifyInclusion(seq - 1n, verified.size, leaf, proof.hashes, verified.root),
      `the inclusion proof of entry ${seq} does not verify against checkpoint ${verified.size}`);
    // A verifier that accepts anything proves nothing: tampered proofs must fail.
    const flipped = proof.hashes.map((h, i) => (i === 0 ? Buffer.from(h.map((b, j) => (j === 0 ? b ^ 1 : b))) : h));
    check(proof.hashes.length > 0 && !verifyInclusion(seq - 1n, verified.size, leaf, flipped, verified.root), "a tampered proof verified");
    check(!verifyInclusion(seq - 2n, verified.size, leaf, proof.hashes, verified.root), "a proof for another index verified");
    check(!verifyInclusion(seq - 1n, verified.size, leaf, proof.hashes.slice(1), verified.root), "a shortened proof verified");

    // 6. The balance, read with signed metadata, to the penny.
    const balanceMetadata = thirdParty.readMetadata("GetBalance");
    const getBalance = () => asThirdParty.unary<{ balance: Balance }>("GetBalance", "GetBalanceRequest", "GetBalanceResponse",
      { budget_id: budgetId }, balanceMetadata);
    const { balance } = await getBalance();
    const want: Record<string, bigint> = { allocated, paid_in: paidIn, spent, held: paidIn - spent, available: allocated - spent };
    for (const [field, value] of Object.entries(want)) {
      const got = pence((balance as unknown as Record<string, string>)[field]);
      check(got === value, `balance.${field} is ${pounds(got)}, expected ${pounds(value)}`);
    }
    check(balance.last_sequence === seq, `balance.last_sequence ${balance.last_sequence}, expected ${seq}`);
    // A read signature is single-use: the same metadata again, as an
    // eavesdropper or a careless retry would send it, must be refused.
    const replay = await getBalance().then(() => null, (e: { code?: number; details?: string }) => e);
    check(replay !== null, "the same read metadata was accepted twice");
    check(replay.code === grpc.status.UNAUTHENTICATED,
      `the same read metadata sent twice: ${CODE_NAMES[replay.code ?? -1] ?? replay.code} (${replay.details}), ` +
      "expected UNAUTHENTICATED");

    console.log();
    console.log(`Purchase ${pounds(spent)} on ${budgetId} by ${thirdParty.orgId}: written at sequence ${seq}`);
    console.log(`  entry hash ${hex(receipt.entry_hash)}: recomputed from the bytes, linked to entry ${seq - 1n}`);
    console.log(`  resent unchanged: duplicate of sequence ${again.sequence}`);
    console.log(`  in checkpoint ${verified.size} of ${verified.origin} (signed by the ledger key): ` +
      `inclusion proof of ${proof.hashes.length} nodes verified`);
    console.log("  read over mutual TLS as the third party; the same read signature replayed: UNAUTHENTICATED");
    console.log(`Balance: allocated ${balance.allocated}, paid in ${balance.paid_in}, spent ${balance.spent}, ` +
      `held ${balance.held}, available ${balance.available} (checked to the penny)`);
    for (const f of receipt.flags) console.log(`Flag raised: ${f.flag_id}: ${f.explanation}`);
    console.log("typescript client: OK");
  } finally {
    for (const l of [asRoot, asCommissioner, asThirdParty]) l.close();
  }
}

main().catch((e: unknown) => {
  const grpcError = e as { code?: number; details?: string };
  if (e instanceof Failed) console.error(`typescript client FAILED: ${e.message}`);
  else if (typeof grpcError.code === "number") {
    console.error(`typescript client FAILED: ${CODE_NAMES[grpcError.code] ?? grpcError.code}: ${grpcError.details}`);
  } else console.error("typescript client FAILED:", e);
  process.exit(1);
});
