// What a phb-ledger client needs, written from proto/phb/ledger/v1/ledger.proto
// and docs/ alone: the connection, encoding and signing events (docs/api.md
// §2), signed read-call metadata (§8), mutual TLS, exact money, the entry hash
// (docs/log-format.md §2-3), C2SP checkpoints and RFC 9162 inclusion proofs
// (docs/audit.md). Node 20's built-in crypto does ed25519 and SHA-256.

import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protobuf from "protobufjs";

export const SERVICE = "/phb.ledger.v1.LedgerService/";
const RPC_TIMEOUT_MS = 30_000;

export class Failed extends Error {}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Failed(message);
}

// ---------------------------------------------------------------------------
// The proto, loaded at run time

export interface Proto {
  root: protobuf.Root;
  type(name: string): protobuf.Type;
}

export function loadProto(protoDir: string): Proto {
  const root = new protobuf.Root();
  // Imports resolve under proto/; google/protobuf/timestamp.proto is bundled
  // with protobufjs. keepCase: the proto's own field names, as in the docs.
  root.resolvePath = (_origin, target) => path.join(protoDir, target);
  root.loadSync("phb/ledger/v1/ledger.proto", { keepCase: true });
  root.resolveAll();
  return { root, type: (name) => root.lookupType(`phb.ledger.v1.${name}`) };
}

// proto3 leaves default values (0, "", false, empty lists) out of the bytes,
// and the server refuses an Event whose bytes are not exactly what a
// canonical encoder writes (docs/api.md §6). protobufjs writes any property
// that is present, even a default one, so defaults are removed before
// encoding. Messages stay, even empty ones: a set oneof member is encoded.
function withoutDefaults(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutDefaults);
  if (value instanceof Uint8Array || value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (v === undefined || v === null || v === "" || v === 0 || v === false) continue;
    if (Array.isArray(v) && v.length === 0) continue;
    out[k] = withoutDefaults(v);
  }
  return out;
}

/** Encodes an Event (a plain object with the proto's field names; enums by
 * name) to its protobuf bytes. These bytes are what is signed and sent. */
export function encodeEvent(proto: Proto, event: Record<string, unknown>): Uint8Array {
  const Event = proto.type("Event");
  const plain = withoutDefaults(event) as Record<string, unknown>;
  const message = Event.fromObject(plain);
  const problem = Event.verify(message);
  check(problem === null, `Event: ${problem}`);
  return Event.encode(message).finish();
}

// ---------------------------------------------------------------------------
// Keys and signatures (RFC 8032 pure Ed25519 through node:crypto)

const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");

export class Signer {
  readonly publicKey: Buffer;
  private constructor(readonly orgId: string, private readonly key: crypto.KeyObject) {
    const spki = crypto.createPublicKey(key).export({ format: "der", type: "spki" });
    this.publicKey = Buffer.from(spki.subarray(SPKI_ED25519.length));
  }

  /** From a 32-byte secret seed (the `phb-ledger keygen` file holds it as hex). */
  static fromSeed(orgId: string, seed: Buffer): Signer {
    check(seed.length === 32, `an ed25519 seed is 32 bytes, not ${seed.length}`);
    const key = crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: "der", type: "pkcs8" });
    return new Signer(orgId, key);
  }

  static generate(orgId: string): Signer {
    return new Signer(orgId, crypto.generateKeyPairSync("ed25519").privateKey);
  }

  sign(data: Uint8Array): Buffer {
    return crypto.sign(null, data, this.key);
  }

  /** SignedEvent over exactly `eventBytes` (docs/api.md §2). Keep the result
   * until it has an answer: a retry resends it unchanged. */
  signEvent(eventBytes: Uint8Array): SignedEvent {
    return { event: eventBytes, signer_id: this.orgId, signature: this.sign(eventBytes) };
  }

  /** x-phb-org, x-phb-timestamp, x-phb-nonce, x-phb-signature: ed25519 over
   * "{full method path}\n{unix seconds}\n{nonce}", base64 with padding
   * (docs/api.md "Authentication metadata"). For ONE call: the server
   * accepts each (organisation, nonce) once, so sign every call afresh. */
  readMetadata(method: string): grpc.Metadata {
    const timestamp = String(Math.floor(Date.now() / 1000));
    const nonce = crypto.randomBytes(24).toString("base64url"); // 32 characters of A-Z a-z 0-9 - _
    const signature = this.sign(Buffer.from(`${SERVICE}${method}\n${timestamp}\n${nonce}`, "ascii"));
    const md = new grpc.Metadata();
    md.set("x-phb-org", this.orgId);
    md.set("x-phb-timestamp", timestamp);
    md.set("x-phb-nonce", nonce);
    md.set("x-phb-signature", signature.toString("base64"));
    return md;
  }
}

export function ed25519Verify(publicKey: Buffer, message: Uint8Array, signature: Uint8Array): boolean {
  const key = crypto.createPublicKey({ key: Buffer.concat([SPKI_ED25519, publicKey]), format: "der", type: "spki" });
  return crypto.verify(null, message, key, signature);
}

export const sha256 = (...parts: Uint8Array[]): Buffer => {
  const h = crypto.createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};

// ---------------------------------------------------------------------------
// Money: decimal strings of pounds, computed in integer pence (BigInt)

/** "25.80" -> 2580n. Server figures always have exactly two decimals. */
export function pence(amount: string): bigint {
  const m = /^(-?)([0-9]+)\.([0-9]{2})$/.exec(amount);
  check(m !== null, `${JSON.stringify(amount)} is not a two-decimal amount`);
  const value = BigInt(m[2]) * 100n + BigInt(m[3]);
  return m[1] === "-" ? -value : value;
}

export function pounds(p: bigint): string {
  const sign = p < 0n ? "-" : "";
  const abs = p < 0n ? -p : p;
  return `${sign}${abs / 100n}.${String(abs % 100n).padStart(2, "0")}`;
}

// ---------------------------------------------------------------------------
// Messages as this client reads them (proto field names; uint64 as bigint)

export interface SignedEvent {
  event: Uint8Array;
  signer_id: string;
  signature: Uint8Array;
}

export interface AppendResult {
  sequence: bigint;
  duplicate: boolean;
  event_id: string;
  error: { code: number; message: string; field: string } | null;
  entry_hash: Uint8Array;
  refusal_sequence: bigint;
  flags: { flag_id: string; explanation: string }[];
  tree_size: bigint;
}

export interface Balance {
  budget_id: string;
  allocated: string;
  paid_in: string;
  spent: string;
  held: string;
  available: string;
  funds_holder_id: string;
  last_sequence: bigint;
}

export interface LogEntry {
  sequence: bigint;
  recorded_at: { seconds: bigint; nanos: number } | null;
  prev_hash: Uint8Array;
  hash: Uint8Array;
  signed_event: SignedEvent | null;
  refusal: { code: number; in_atomic_batch: boolean; message: string; first_in_batch: boolean } | null;
}

export interface Checkpoint {
  checkpoint: string;
  tree_size: bigint;
  root_hash: Uint8Array;
  verifier_key: string;
}

export interface InclusionProof {
  leaf_index: bigint;
  tree_size: bigint;
  entry_hash: Uint8Array;
  hashes: Uint8Array[];
  root_hash: Uint8Array;
}

// ---------------------------------------------------------------------------
// The connection: the one place that knows how the server is reached

/** PEM files: the operator's CA, and this organisation's client key and
 * certificate (subject CN = the organisation id). */
export interface Tls {
  ca: Buffer;
  key: Buffer;
  cert: Buffer;
}

/** ca.pem and client-ORG.key / client-ORG.pem from one directory. */
export function tlsFiles(dir: string, orgId: string): Tls {
  const read = (name: string) => fs.readFileSync(path.join(dir, name));
  return { ca: read("ca.pem"), key: read(`client-${orgId}.key`), cert: read(`client-${orgId}.pem`) };
}

/** One connection, acting as one organisation. Over mutual TLS with
 * tls.bind_organisation the server lets a connection read and sign only as
 * the organisation its client certificate names (docs/operations.md
 * "Transport security"): open one Ledger per organisation. The host in
 * `address` must match the server certificate's subject alternative name. */
export class Ledger {
  private readonly client: grpc.Client;

  constructor(private readonly proto: Proto, address: string, tls: Tls) {
    this.client = new grpc.Client(address, grpc.credentials.createSsl(tls.ca, tls.key, tls.cert));
  }

  close(): void {
    this.client.close();
  }

  private codec(requestType: string, responseType: string) {
    const Req = this.proto.type(requestType);
    const Res = this.proto.type(responseType);
    return {
      serialize: (value: object) => Buffer.from(Req.encode(Req.fromObject(value)).finish()),
      // Every field present (defaults filled), uint64 as bigint, bytes as Buffer.
      deserialize: (bytes: Buffer) =>
        Res.toObject(Res.decode(bytes), { longs: BigInt, enums: String, defaults: true, arrays: true }),
    };
  }

  unary<T>(method: string, requestType: string, responseType: string, request: object, metadata?: grpc.Metadata): Promise<T> {
    const { serialize, deserialize } = this.codec(requestType, responseType);
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        SERVICE + method, serialize, deserialize, request, metadata ?? new grpc.Metadata(),
        { deadline: Date.now() + RPC_TIMEOUT_MS },
        (err, value) => (err ? reject(err) : resolve(value as T)),
      );
    });
  }

  async append(events: SignedEvent[], atomic: boolean): Promise<AppendResult[]> {
    const reply = await this.unary<{ results: AppendResult[] }>(
      "Append", "AppendRequest", "AppendResponse", { events, atomic });
    return reply.results;
  }

  /** ReadLog without follow: every entry from `from` to the head. Auditors and root only. */
  readLog(signer: Signer, from: bigint): Promise<LogEntry[]> {
    const { serialize, deserialize } = this.codec("ReadLogRequest", "ReadLogResponse");
    return new Promise((resolve, reject) => {
      const entries: LogEntry[] = [];
      const stream = this.client.makeServerStreamRequest(
        SERVICE + "ReadLog", serialize, deserialize, { from_sequence: from.toString(), follow: false },
        signer.readMetadata("ReadLog"), { deadline: Date.now() + RPC_TIMEOUT_MS });
      stream.on("data", (r: { entry: LogEntry }) => entries.push(r.entry));
      stream.on("error", reject);
      stream.on("end", () => resolve(entries));
    });
  }
}

// ---------------------------------------------------------------------------
// The entry hash (docs/log-format.md §2, from a LogEntry as §3 says)

const u32be = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
const lp = (b: Uint8Array) => Buffer.concat([u32be(b.length), b]);

export function entryHash(e: LogEntry): Buffer {
  check(e.recorded_at !== null && e.signed_event !== null, `entry ${e.sequence}: recorded_at or signed_event missing`);
  const { seconds, nanos } = e.recorded_at;
  // The server writes whole microseconds; anything else did not come from it.
  check(nanos % 1000 === 0 && nanos >= 0 && nanos < 1e9, `entry ${e.sequence}: recorded_at nanos ${nanos}`);
  const micros = seconds * 1_000_000n + BigInt(nanos / 1000);
  const head = Buffer.alloc(16);
  head.writeBigUInt64BE(e.sequence, 0);
  head.writeBigInt64BE(micros, 8);
  const se = e.signed_event;
  const parts: Uint8Array[] = [e.prev_hash, head, lp(Buffer.from(se.signer_id, "utf8")), lp(se.signature), lp(se.event)];
  if (e.refusal !== null) {
    const r = e.refusal;
    const flags = (r.in_atomic_batch ? 1 : 0) | (r.first_in_batch ? 2 : 0);
    parts.push(Buffer.from([0x52]), u32be(r.code), Buffer.from([flags]), lp(Buffer.from(r.message, "utf8")));
  }
  return sha256(...parts);
}

// ---------------------------------------------------------------------------
// Checkpoints (docs/audit.md "Checkpoints": a C2SP signed note)

export interface VerifiedCheckpoint {
  origin: string;
  size: bigint;
  root: Buffer;
}

function keyHash(name: string, publicKey: Buffer): Buffer {
  return sha256(Buffer.from(name, "utf8"), Buffer.from([0x0a, 0x01]), publicKey).subarray(0, 4);
}

export function verifierKey(name: string, publicKey: Buffer): string {
  return `${name}+${keyHash(name, publicKey).toString("hex")}+${Buffer.concat([Buffer.from([0x01]), publicKey]).toString("base64")}`;
}

/** Verifies the note with the ledger key (from the operator, out of band)
 * and returns what it states. Nothing else in the answer is trusted. */
export function verifyCheckpoint(note: string, ledgerId: string, ledgerKey: Buffer): VerifiedCheckpoint {
  const origin = `phb-ledger/${ledgerId}`;
  const split = note.indexOf("\n\n");
  check(split > 0, "checkpoint: no blank line");
  const text = note.slice(0, split + 1); // the signed bytes: every body line with its newline
  const body = text.slice(0, -1).split("\n");
  check(body.length === 3, `checkpoint: ${body.length} body lines, expected 3 (no extensions)`);
  check(body[0] === origin, `checkpoint origin ${JSON.stringify(body[0])}, expected ${origin}`);
  check(/^(0|[1-9][0-9]*)$/.test(body[1]), `checkpoint size ${JSON.stringify(body[1])}`);
  const root = Buffer.from(body[2], "base64");
  check(root.length === 32 && root.toString("base64") === body[2], "checkpoint root is not 32 bytes of base64");

  const want = keyHash(origin, ledgerKey);
  const signatures = note.slice(split + 2).split("\n");
  check(signatures.pop() === "", "checkpoint: the last signature line has no newline");
  let verified = false;
  for (const line of signatures) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    check(m !== null, `checkpoint: malformed signature line ${JSON.stringify(line)}`);
    const blob = Buffer.from(m[2], "base64");
    if (m[1] !== origin || blob.length !== 68 || !blob.subarray(0, 4).equals(want)) continue;
    verified = ed25519Verify(ledgerKey, Buffer.from(text, "utf8"), blob.subarray(4));
    check(verified, "checkpoint: the signature by the ledger key does not verify");
  }
  check(verified, "checkpoint: no signature by the ledger key");
  return { origin, size: BigInt(body[1]), root };
}

// ---------------------------------------------------------------------------
// RFC 9162 §2.1.3.2: verifying an inclusion proof, every node

export const leafHash = (entryHash: Uint8Array) => sha256(Buffer.from([0x00]), entryHash);
const nodeHash = (left: Uint8Array, right: Uint8Array) => sha256(Buffer.from([0x01]), left, right);

export function verifyInclusion(leafIndex: bigint, treeSize: bigint, leaf: Buffer, proof: Uint8Array[], root: Buffer): boolean {
  if (leafIndex >= treeSize) return false;
  let fn = leafIndex;
  let sn = treeSize - 1n;
  let r = leaf;
  for (const p of proof) {
    if (p.length !== 32 || sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && r.equals(root);
}
