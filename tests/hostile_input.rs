//! The hostile input catalogue: malformed, oversized, forged, replayed and
//! out-of-role input sent to the real server over real gRPC.
//!
//! Every case is a row of one table, driven by one loop. For each row the
//! loop checks the exact status code (per event in `AppendResult.error`, or
//! the call's `tonic::Status`), that the ledger is unchanged (log length, head
//! hash and every balance as the auditor sees them) and that the server is
//! still running. Some rows also check that the message names the offending
//! field or value, so a partner can act on it.

mod common;

use common::*;
use pb::{AllocationBasis as Basis, Management, PayeeKind, Role};
use phb_client::{kinds, methods, unix_now, Kind, Signer};
use phb_proto::v1 as pb;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

const APPEND: &str = methods::APPEND;
/// The server's request limit (docs/api.md §9).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// The largest serialized Event (docs/api.md §6).
const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The longest refusal message accepted from the server: messages quote
/// client input, but at most 64 characters of it.
const MAX_MESSAGE_BYTES: usize = 2048;

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// A call whose outcome is a `Status`; `Ok` carries a description of the
/// unexpected success for the failure message.
type Call = Pin<Box<dyn Future<Output = Result<String, Status>> + Send>>;

enum Attack {
    /// An Append through the generated client.
    Append(pb::AppendRequest),
    /// Anything else: read calls, raw HTTP/2 bodies, oversized requests.
    Call(Call),
}

enum Expect {
    /// Append answers OK and refuses the only event with this code; the
    /// `field` of the error, if given, must match exactly.
    Event(Code, Option<&'static str>),
    /// Append answers OK and every event is refused with these codes.
    Batch(Vec<Code>),
    /// Append answers OK: the event is a duplicate of `sequence`.
    Duplicate(u64),
    /// The call fails with this status code.
    Status(Code),
    /// The call succeeds, harmlessly, with this description of its answer.
    Answer(&'static str),
}

struct Case {
    name: String,
    attack: Attack,
    expect: Expect,
    /// Substrings the refusal message must contain (actionable messages).
    mentions: Vec<String>,
}

#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    fn add(&mut self, name: impl Into<String>, attack: Attack, expect: Expect) -> &mut Case {
        self.0.push(Case {
            name: name.into(),
            attack,
            expect,
            mentions: Vec::new(),
        });
        self.0.last_mut().expect("just pushed")
    }

    /// One signed event, appended alone (not atomic).
    fn event(
        &mut self,
        name: impl Into<String>,
        e: pb::SignedEvent,
        code: Code,
        field: Option<&'static str>,
    ) -> &mut Case {
        self.add(name, Attack::Append(one(e)), Expect::Event(code, field))
    }

    fn call(&mut self, name: impl Into<String>, call: Call, code: Code) -> &mut Case {
        self.add(name, Attack::Call(call), Expect::Status(code))
    }
}

impl Case {
    fn mentions(&mut self, s: impl Into<String>) -> &mut Case {
        self.mentions.push(s.into());
        self
    }
}

fn one(e: pb::SignedEvent) -> pb::AppendRequest {
    pb::AppendRequest {
        events: vec![e],
        atomic: false,
    }
}

/// What must not change: (log length, head hash, every balance).
#[derive(Debug, PartialEq)]
struct Snapshot {
    log_len: u64,
    head: Vec<u8>,
    balances: Vec<pb::Balance>,
    /// Entries that apply their event (not recorded refusals).
    applied: usize,
}

async fn snapshot(w: &World) -> Snapshot {
    let log = w.log().await;
    Snapshot {
        log_len: log.last().map(|e| e.sequence).unwrap_or(0),
        head: log.last().map(|e| e.hash.clone()).unwrap_or_default(),
        balances: w.all_balances().await,
        applied: log.iter().filter(|e| e.refusal.is_none()).count(),
    }
}

// ---------------------------------------------------------------------------
// Byte-level helpers
// ---------------------------------------------------------------------------

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A length-delimited field (wire type 2).
fn len_field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(number << 3 | 2);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// A varint field (wire type 0).
fn varint_field(number: u64, v: u64) -> Vec<u8> {
    let mut out = varint(number << 3);
    out.extend(varint(v));
    out
}

/// Standard base64 with padding (the read-signature encoding).
fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The read-call signature of `signer` over `"{method}\n{ts_text}"`.
fn read_sig(signer: &Signer, method: &str, ts_text: &str) -> String {
    b64(&signer
        .sign_bytes(format!("{method}\n{ts_text}").into_bytes())
        .signature)
}

/// A read request with exactly these metadata values (`None` leaves a key out).
fn read_req<T>(
    msg: T,
    org: Option<&[u8]>,
    ts: Option<&str>,
    sig: Option<&str>,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    if let Some(org) = org {
        md.insert(
            "x-phb-org",
            MetadataValue::try_from(org).expect("x-phb-org value"),
        );
    }
    if let Some(ts) = ts {
        md.insert(
            "x-phb-timestamp",
            MetadataValue::try_from(ts).expect("timestamp value"),
        );
    }
    if let Some(sig) = sig {
        md.insert(
            "x-phb-signature",
            MetadataValue::try_from(sig).expect("signature value"),
        );
    }
    r
}

/// Flips the ed25519 group order onto S (the same point, S not reduced).
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s[i]) + u16::from(L[i]) + carry;
        s[i] = v as u8;
        carry = v >> 8;
    }
}

// ---------------------------------------------------------------------------
// Raw gRPC: a codec that sends and receives bytes, and hand-made HTTP/2 bodies
// ---------------------------------------------------------------------------

/// Sends the given bytes as the message, unframed by protobuf: tonic adds
/// only the 5-byte gRPC frame header.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// A unary call to `path` carrying `messages` (each framed as one gRPC
/// message, bytes as given), with `req`'s metadata.
fn raw_call(channel: &Channel, path: &'static str, req: tonic::Request<Vec<Vec<u8>>>) -> Call {
    let channel = channel.clone();
    Box::pin(async move {
        let answer = raw_unary(channel, path, req).await?;
        Ok(format!("{} response bytes", answer.len()))
    })
}

/// Sends `req`'s messages as the body of a unary call; returns the answer's bytes.
async fn raw_unary(
    channel: Channel,
    path: &'static str,
    req: tonic::Request<Vec<Vec<u8>>>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
    let req = req.map(tokio_stream::iter);
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc
        .client_streaming(req, path, RawCodec)
        .await?
        .into_inner())
}

/// Raw bytes as an Append request; a successful answer is described by
/// its result codes, e.g. "1 results, codes [3]".
fn raw_append_answer(channel: &Channel, messages: Vec<Vec<u8>>) -> Call {
    let channel = channel.clone();
    Box::pin(async move {
        let bytes = raw_unary(channel, APPEND, tonic::Request::new(messages)).await?;
        let resp = pb::AppendResponse::decode(bytes.as_slice())
            .map_err(|e| Status::unknown(format!("answer is not an AppendResponse: {e}")))?;
        let codes: Vec<i32> = resp.results.iter().map(result_code).collect();
        Ok(format!("{} results, codes {codes:?}", codes.len()))
    })
}

/// Raw bytes as an Append request (no metadata).
fn raw_append(channel: &Channel, messages: Vec<Vec<u8>>) -> Call {
    raw_call(channel, APPEND, tonic::Request::new(messages))
}

/// A hand-made HTTP/2 gRPC request: `body` is sent verbatim as the request
/// body (gRPC frame headers included), so frames can be truncated or lie.
/// The body is a `String` because that is the byte body tonic accepts
/// without extra crates; every byte used here is below 0x80.
fn http2_call(channel: &Channel, path: &'static str, body: String, encoding: Option<&str>) -> Call {
    use tonic::codegen::{Body as _, Service as _};
    let mut channel = channel.clone();
    let encoding = encoding.map(str::to_string);
    Box::pin(async move {
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
        let mut req = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(enc) = encoding {
            req = req.header("grpc-encoding", enc);
        }
        let req = req
            .body(tonic::body::Body::new(body))
            .map_err(|e| Status::unknown(format!("building the request: {e}")))?;
        let resp = channel
            .call(req)
            .await
            .map_err(|e| Status::unknown(format!("transport: {e}")))?;
        if let Some(s) = Status::from_header_map(resp.headers()) {
            // A trailers-only answer.
            return if s.code() == Code::Ok {
                Ok("trailers-only OK".into())
            } else {
                Err(s)
            };
        }
        let mut body = resp.into_body();
        let mut data = 0usize;
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                None => return Err(Status::unknown("response ended without trailers")),
                Some(Err(s)) => return Err(s),
                Some(Ok(frame)) => match frame.into_trailers() {
                    Ok(trailers) => {
                        let s = Status::from_header_map(&trailers)
                            .unwrap_or_else(|| Status::unknown("trailers without grpc-status"));
                        return if s.code() == Code::Ok {
                            Ok(format!("OK after {data} data bytes"))
                        } else {
                            Err(s)
                        };
                    }
                    Err(frame) => {
                        if let Ok(d) = frame.into_data() {
                            data += d.len();
                        }
                    }
                },
            }
        }
    })
}

/// A gRPC frame header: compression flag and a declared length.
fn frame_header(flag: u8, len: u32) -> String {
    let mut s = String::new();
    s.push(char::from(flag));
    for b in len.to_be_bytes() {
        assert!(b < 0x80, "frame header byte {b:#x} is not ASCII");
        s.push(char::from(b));
    }
    s
}

// ---------------------------------------------------------------------------
// The catalogue
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_catalogue() {
    let started = Instant::now();
    let w = World::new().await;
    let (c, c2, acct, tp, payroll, auditor) = (
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.account.clone(),
        w.third_party.clone(),
        w.payroll.clone(),
        w.auditor.clone(),
    );
    let root = w.server.root.clone();
    let client = w.client.clone();
    let channel = Channel::from_shared(format!("http://{}", w.server.addr))
        .expect("server url")
        .connect()
        .await
        .expect("raw channel");

    // --- A small ledger to attack ------------------------------------------
    let dp = "hx-direct"; // direct payment: account provider holds, payroll pays PAs
    let tpb = "hx-third"; // third party holds
    let nt = "hx-notional"; // the commissioner keeps the money
    let south = "hx-south"; // commissioner2's budget
    let stopped = "hx-stopped";
    w.open_direct(dp).await;
    w.fund(dp, "1000.00", Some("600.00")).await;
    w.open_third_party(tpb).await;
    w.fund(tpb, "500.00", Some("500.00")).await;
    w.open_notional(nt).await;
    w.fund(nt, "300.00", None).await;
    let k = kinds::open("holder-s", &c2.id, Management::Notional, "", "");
    w.ok(&c2, south, k).await;
    w.ok(&c2, south, kinds::allocate("100.00", Basis::OneOff))
        .await;
    w.open_notional(stopped).await;
    w.fund(stopped, "10.00", None).await;
    w.ok(&c, stopped, kinds::stop("moved out of area")).await;
    // One committed event kept as the attacker would capture it.
    let captured = w.sign(
        &acct,
        dp,
        kinds::buy("12.50", "equipment", "shop-1", "chair"),
    );
    let captured_seq = assert_written(&w.append_signed(captured.clone()).await);
    let captured_id = pb::Event::decode(captured.event.as_slice())
        .expect("own event decodes")
        .event_id;

    let baseline = snapshot(&w).await;
    assert_eq!(baseline.log_len, captured_seq);
    assert_eq!(baseline.balances.len(), 5, "{:?}", baseline.balances);

    // A valid purchase on the direct budget by its funds holder, with `f`
    // applied to the event before signing: anything refused below is
    // refused for exactly the mutation.
    let buy = |f: &dyn Fn(&mut pb::Event)| -> pb::SignedEvent {
        let mut e = w.event(dp, kinds::buy("1.00", "equipment", "shop-1", "a chair"));
        f(&mut e);
        acct.sign(&e)
    };
    let set_kind = |k: Kind| move |e: &mut pb::Event| e.kind = Some(k.clone());
    let purchase = |e: &pb::Event| -> pb::Purchase {
        match &e.kind {
            Some(Kind::Purchase(p)) => p.clone(),
            other => panic!("not a purchase: {other:?}"),
        }
    };
    let inv = Code::InvalidArgument;
    let unauth = Code::Unauthenticated;
    let denied = Code::PermissionDenied;

    let mut t = Table::default();

    // === 1. Bytes that are not an Event ====================================
    t.event(
        "garbage bytes as event",
        acct.sign_bytes(vec![0xff; 16]),
        inv,
        Some("event"),
    )
    .mentions("not a valid phb.ledger.v1.Event");
    t.event(
        "SQL as event",
        acct.sign_bytes(b"'; DROP TABLE budgets; --".to_vec()),
        inv,
        Some("event"),
    );
    t.event(
        "empty event bytes",
        acct.sign_bytes(Vec::new()),
        inv,
        Some("event"),
    )
    .mentions("empty");
    {
        let mut bytes = buy(&|_| {}).event;
        bytes.pop();
        t.event(
            "truncated protobuf (last byte cut)",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        );
        let bytes = buy(&|_| {}).event[..3].to_vec();
        t.event(
            "truncated protobuf (inside event_id)",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        );
    }
    {
        let mut bytes = buy(&|_| {}).event;
        bytes.extend(varint_field(99, 1));
        t.event(
            "unknown top-level field 99",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        )
        .mentions("does not know");
    }
    {
        let mut e = w.event(dp, kinds::buy("1.00", "equipment", "shop-1", "a chair"));
        let mut p = purchase(&e).encode_to_vec();
        p.extend(varint_field(15, 7));
        e.kind = None;
        let mut bytes = e.encode_to_vec();
        bytes.extend(len_field(16, &p));
        t.event(
            "unknown field inside Purchase",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        );
    }
    {
        let mut bytes = buy(&|_| {}).event;
        bytes.extend(len_field(1, b"ev-smuggled"));
        t.event(
            "event_id field repeated",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        );
    }
    {
        let mut bytes = buy(&|_| {}).event;
        let alloc = pb::Allocation {
            amount: "1.00".into(),
            basis: Basis::OneOff as i32,
        };
        bytes.extend(len_field(13, &alloc.encode_to_vec()));
        t.event("two kinds set", acct.sign_bytes(bytes), inv, Some("event"));
    }
    {
        let mut e = w.event(dp, kinds::buy("1.00", "equipment", "shop-1", "a chair"));
        e.event_id = String::new();
        let mut bytes = len_field(1, &[0xc3, 0x28]);
        bytes.extend(e.encode_to_vec());
        t.event(
            "invalid UTF-8 in event_id",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        );
    }
    {
        let bytes = buy(&|_| {}).event;
        assert_eq!(bytes[0], 0x0a, "event_id is field 1");
        let mut long = vec![0x8a, 0x00];
        long.extend_from_slice(&bytes[1..]);
        t.event(
            "non-minimal varint tag",
            acct.sign_bytes(long),
            inv,
            Some("event"),
        );
    }
    {
        let mut bytes = buy(&|_| {}).event;
        bytes.extend(varint(99 << 3 | 3)); // start group, never ended
        t.event(
            "unterminated group",
            acct.sign_bytes(bytes),
            inv,
            Some("event"),
        );
        let mut bytes = buy(&|_| {}).event;
        bytes.push(0x00);
        t.event("field number 0", acct.sign_bytes(bytes), inv, Some("event"));
    }
    {
        let mut e = w.event(dp, kinds::buy("1.00", "equipment", "shop-1", "x"));
        let mut p = purchase(&e);
        p.description = "x".repeat(70 * 1024);
        e.kind = Some(Kind::Purchase(p));
        t.event("event over 64 KiB", acct.sign(&e), inv, Some("event"))
            .mentions("65536");
    }
    {
        // Exactly 65,536 bytes passes the size check (and fails on the
        // description); 65,537 does not.
        let sized = |target: usize| -> pb::Event {
            let mut e = w.event(dp, kinds::buy("1.00", "equipment", "shop-1", ""));
            let base = e.encoded_len();
            let mut p = purchase(&e);
            let mut n = target - base - 4;
            loop {
                p.description = "d".repeat(n);
                e.kind = Some(Kind::Purchase(p.clone()));
                match e.encoded_len().cmp(&target) {
                    std::cmp::Ordering::Equal => return e,
                    std::cmp::Ordering::Less => n += 1,
                    std::cmp::Ordering::Greater => n -= 1,
                }
            }
        };
        t.event(
            "event of exactly 65536 bytes (size ok, description too long)",
            acct.sign(&sized(MAX_EVENT_BYTES)),
            inv,
            Some("kind.purchase.description"),
        );
        t.event(
            "event of 65537 bytes",
            acct.sign(&sized(MAX_EVENT_BYTES + 1)),
            inv,
            Some("event"),
        );
    }

    // === 2. Ledger id: replays from other ledgers ==========================
    for (name, ledger) in [
        ("event signed for another ledger (replay)", "phb-prod"),
        ("ledger id in upper case", "PHB-TEST"),
        ("ledger id with trailing NUL", "phb-test\0"),
        ("ledger id with trailing space", "phb-test "),
        ("empty ledger id", ""),
    ] {
        let ledger = ledger.to_string();
        t.event(
            name,
            buy(&|e| e.ledger_id = ledger.clone()),
            inv,
            Some("ledger_id"),
        )
        .mentions("ledger_id");
    }

    // === 3. Signatures and signers =========================================
    {
        let sig = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut s = buy(&|_| {});
            f(&mut s.signature);
            s
        };
        t.event("empty signature", sig(&|s| s.clear()), unauth, None)
            .mentions("64 bytes");
        t.event("63-byte signature", sig(&|s| s.truncate(63)), unauth, None)
            .mentions("got 63");
        t.event("65-byte signature", sig(&|s| s.push(0)), unauth, None);
        t.event("all-zero signature", sig(&|s| s.fill(0)), unauth, None);
        t.event("all-0xff signature", sig(&|s| s.fill(0xff)), unauth, None);
        t.event(
            "non-canonical signature (S + L)",
            sig(&|s| add_group_order(&mut s[32..])),
            unauth,
            None,
        );
        t.event("one bit flipped in R", sig(&|s| s[0] ^= 1), unauth, None);
    }
    {
        // Signed correctly, then the amount changed: the bytes decode but
        // the signature covers other bytes.
        let mut s = buy(&|_| {});
        let pos = s
            .event
            .windows(4)
            .position(|x| x == b"1.00")
            .expect("amount in bytes");
        s.event[pos] = b'9';
        t.event("event altered after signing", s, unauth, None);
    }
    {
        let e = w.event(dp, kinds::allocate("5.00", Basis::OneOff));
        let mut s = c2.sign(&e);
        s.signer_id = c.id.clone();
        t.event(
            "signer_id icb-north, signed with icb-south's key",
            s,
            unauth,
            None,
        )
        .mentions("does not verify");
        let impostor = Signer::generate(acct.id.clone());
        t.event(
            "funds holder impostor (fresh key)",
            impostor.sign(&w.event(dp, kinds::buy("1.00", "equipment", "shop-1", "x"))),
            unauth,
            None,
        );
    }
    for (name, signer_id) in [
        ("unknown signer", "nobody".to_string()),
        ("empty signer_id", String::new()),
        ("signer_id ROOT in upper case", "ROOT".to_string()),
        (
            "signer_id with trailing space",
            "dp-account-bank ".to_string(),
        ),
        ("signer_id with newline", "dp-account-bank\n".to_string()),
        ("signer_id with NUL", "dp-account-bank\0".to_string()),
        // Cyrillic 'а' (U+0430) in place of the Latin 'a'.
        ("look-alike signer_id", "dp-\u{430}ccount-bank".to_string()),
        ("signer_id of 64 KiB", "a".repeat(64 * 1024)),
    ] {
        let mut s = buy(&|_| {});
        s.signer_id = signer_id;
        t.event(name, s, unauth, None)
            .mentions("not a registered organisation");
    }
    {
        let fake_root = Signer::generate("root");
        let k = kinds::register(
            "evil-org",
            &[Role::Auditor],
            &fake_root.public_key().to_bytes(),
        );
        t.event(
            "root impostor registers an organisation",
            w.sign(&fake_root, "", k),
            unauth,
            None,
        );
    }
    {
        // The captured event's id with a garbage signature: authentication
        // comes first, so the attacker learns nothing about the id.
        let mut s = captured.clone();
        s.signature = vec![7; 64];
        t.event("captured event, signature replaced", s, unauth, None);
        let mut s = captured.clone();
        s.signer_id = tp.id.clone();
        t.event("captured event, signer_id replaced", s, unauth, None);
        t.add(
            "exact replay of a committed event",
            Attack::Append(one(captured.clone())),
            Expect::Duplicate(captured_seq),
        );
        let mut e = w.event(dp, kinds::buy("99.00", "equipment", "shop-1", "x"));
        e.event_id = captured_id.clone();
        t.event(
            "committed event_id reused for other bytes",
            acct.sign(&e),
            Code::AlreadyExists,
            None,
        )
        .mentions(format!("sequence {captured_seq}"));
    }

    // === 4. Role escalation and other people's budgets ======================
    {
        let key = Signer::generate("x").public_key().to_bytes();
        let reg = kinds::register("payroll-shadow", &[Role::Commissioner], &key);
        t.event(
            "payroll provider registers an organisation",
            w.sign(&payroll, "", reg.clone()),
            denied,
            None,
        )
        .mentions("root");
        t.event(
            "auditor registers an organisation",
            w.sign(&auditor, "", reg),
            denied,
            None,
        );
        t.event(
            "commissioner rotates its own key",
            w.sign(&c, "", kinds::rotate(&c.id, &key)),
            denied,
            None,
        );
        let own = kinds::open("h-esc", &payroll.id, Management::Notional, "", "");
        t.event(
            "payroll provider opens a budget as commissioner",
            w.sign(&payroll, "hx-esc-1", own),
            denied,
            None,
        );
        let theirs = kinds::open("h-esc", &c.id, Management::Notional, "", "");
        t.event(
            "payroll provider opens a budget for the commissioner",
            w.sign(&payroll, "hx-esc-2", theirs.clone()),
            denied,
            None,
        );
        let aud = kinds::open("h-esc", &auditor.id, Management::Notional, "", "");
        t.event(
            "auditor opens a budget",
            w.sign(&auditor, "hx-esc-3", aud),
            denied,
            None,
        );
        t.event(
            "commissioner opens a budget for another commissioner",
            w.sign(
                &c,
                "hx-esc-4",
                kinds::open("h", &c2.id, Management::Notional, "", ""),
            ),
            denied,
            None,
        );
        t.event(
            "auditor allocates",
            w.sign(&auditor, dp, kinds::allocate("1.00", Basis::OneOff)),
            denied,
            None,
        );
        t.event(
            "auditor buys",
            w.sign(&auditor, nt, kinds::buy("1.00", "equipment", "s", "x")),
            denied,
            None,
        );
        t.event(
            "root allocates",
            w.sign(&root, dp, kinds::allocate("1.00", Basis::OneOff)),
            denied,
            None,
        );
        t.event(
            "other commissioner allocates on our budget",
            w.sign(&c2, dp, kinds::allocate("1.00", Basis::OneOff)),
            denied,
            None,
        );
        t.event(
            "other commissioner buys on our notional budget",
            w.sign(&c2, nt, kinds::buy("1.00", "equipment", "s", "x")),
            denied,
            None,
        );
        t.event(
            "commissioner buys on another commissioner's budget",
            w.sign(&c, south, kinds::buy("1.00", "equipment", "s", "x")),
            denied,
            None,
        );
        t.event(
            "payroll provider stops a budget",
            w.sign(&payroll, dp, kinds::stop("taking over")),
            denied,
            None,
        );
        t.event(
            "payroll provider pays a provider",
            w.sign(
                &payroll,
                dp,
                kinds::pay(
                    "1.00",
                    PayeeKind::Provider,
                    "agency-1",
                    "personal_assistant",
                ),
            ),
            denied,
            None,
        )
        .mentions("personal assistants only");
        t.event(
            "third party spends on a budget it does not hold",
            w.sign(&tp, dp, kinds::buy("1.00", "equipment", "s", "x")),
            denied,
            None,
        );
        t.event(
            "account provider spends on the third party's budget",
            w.sign(&acct, tpb, kinds::buy("1.00", "equipment", "s", "x")),
            denied,
            None,
        );
        t.event(
            "commissioner spends on a direct-payment budget",
            w.sign(
                &c,
                dp,
                kinds::pay("1.00", PayeeKind::Provider, "agency-1", "therapy"),
            ),
            denied,
            None,
        );
        t.event(
            "payroll provider pays on a budget that does not name it",
            w.sign(
                &payroll,
                tpb,
                kinds::pay(
                    "1.00",
                    PayeeKind::PersonalAssistant,
                    "pa-1",
                    "personal_assistant",
                ),
            ),
            denied,
            None,
        );
    }

    // === 5. Amounts =========================================================
    for amount in [
        "1e9",
        "0.001",
        "-5",
        "NaN",
        "inf",
        "\u{661}\u{662}", // Arabic-Indic "١٢"
        "\u{ff15}",       // fullwidth "５"
        "\u{2212}5",      // minus sign
        "+5",
        " 5",
        "5 ",
        "5.",
        ".5",
        "1,000.00",
        "1_000",
        "0x10",
        "--1",
        "1.2.3",
        "5\0",
        "",
        "0",
        "0.00",
        "-0",
        "99999999999999999999999999999",
        "1000000000.01",
        "00000000001",
    ] {
        let bad = amount.to_string();
        let case = t.event(
            format!("purchase amount {amount:?}"),
            buy(&|e| {
                let mut p = purchase(e);
                p.amount = bad.clone();
                e.kind = Some(Kind::Purchase(p));
            }),
            inv,
            Some("kind.purchase.amount"),
        );
        if amount == "1e9" || amount == "0.001" {
            case.mentions(amount);
        }
    }
    for delta in ["0", "-0.00", "1e2"] {
        t.event(
            format!("review delta {delta:?}"),
            w.sign(&c, dp, kinds::review(delta, "annual review")),
            inv,
            Some("kind.review_adjustment.delta"),
        );
    }
    t.event(
        "allocation above the largest amount",
        w.sign(&c, nt, kinds::allocate("1000000000.01", Basis::OneOff)),
        inv,
        Some("kind.allocation.amount"),
    );

    // === 6. Ids and text ===================================================
    for (name, id) in [
        ("empty event_id", String::new()),
        ("event_id with newline", "ev-1\n".to_string()),
        ("event_id with NUL", "ev\0-1".to_string()),
        ("event_id with DEL", "ev-\u{7f}".to_string()),
        ("event_id of 129 characters", "e".repeat(129)),
        ("event_id of 60 KiB", "e".repeat(60 * 1024)),
        // Cyrillic 'е' (U+0435).
        ("look-alike event_id", "\u{435}v-1".to_string()),
        ("event_id with zero-width space", "ev-\u{200b}1".to_string()),
        ("event_id with slash", "ev/../1".to_string()),
    ] {
        t.event(
            name,
            buy(&|e| e.event_id = id.clone()),
            inv,
            Some("event_id"),
        )
        .mentions("event_id");
    }
    for (name, id) in [
        ("empty budget_id", String::new()),
        ("budget_id with newline", format!("{dp}\n")),
        ("budget_id path traversal", "../../etc/passwd".to_string()),
        ("budget_id of 129 characters", "b".repeat(129)),
        // Cyrillic 'х' (U+0445) in "hx-direct".
        ("look-alike budget_id", "h\u{445}-direct".to_string()),
    ] {
        t.event(
            name,
            buy(&|e| e.budget_id = id.clone()),
            inv,
            Some("budget_id"),
        );
    }
    {
        let key = Signer::generate("x").public_key().to_bytes();
        t.event(
            "budget_id on an organisation event",
            w.sign(
                &root,
                dp,
                kinds::register("org-with-budget", &[Role::Auditor], &key),
            ),
            inv,
            Some("budget_id"),
        );
        t.event(
            "register \"root\" as an organisation",
            w.sign(&root, "", kinds::register("root", &[Role::Auditor], &key)),
            inv,
            Some("kind.organisation_registered.organisation_id"),
        );
        t.event(
            "register a look-alike of icb-north",
            w.sign(
                &root,
                "",
                kinds::register("icb-n\u{43e}rth", &[Role::Auditor], &key),
            ),
            inv,
            Some("kind.organisation_registered.organisation_id"),
        );
        t.event(
            "open with a look-alike commissioner_id",
            w.sign(
                &c,
                "hx-lookalike",
                kinds::open("h-1", "icb-n\u{43e}rth", Management::Notional, "", ""),
            ),
            inv,
            Some("kind.budget_opened.commissioner_id"),
        );
        t.event(
            "holder_ref is a name",
            w.sign(
                &c,
                "hx-named",
                kinds::open("Jane Doe", &c.id, Management::Notional, "", ""),
            ),
            inv,
            Some("kind.budget_opened.holder_ref"),
        );
    }
    for (name, f, field) in [
        (
            "payee_ref with NUL",
            kinds::pay("1.00", PayeeKind::Provider, "agency\0", "therapy"),
            "kind.payment.payee_ref",
        ),
        (
            "payment reference of 129 characters",
            Kind::Payment(pb::Payment {
                amount: "1.00".into(),
                payee_kind: PayeeKind::Provider as i32,
                payee_ref: "agency-1".into(),
                category: "therapy".into(),
                reference: "r".repeat(129),
                ..Default::default()
            }),
            "kind.payment.reference",
        ),
        (
            "category with a capital letter",
            kinds::buy("1.00", "Equipment", "shop-1", "x"),
            "kind.purchase.category",
        ),
        (
            "description with an ANSI escape",
            kinds::buy("1.00", "equipment", "shop-1", "chair\u{1b}[2J"),
            "kind.purchase.description",
        ),
        (
            "description with a right-to-left override",
            kinds::buy("1.00", "equipment", "shop-1", "chair \u{202e}00.001"),
            "kind.purchase.description",
        ),
        (
            "description with a line separator",
            kinds::buy("1.00", "equipment", "shop-1", "chair\u{2028}forged line"),
            "kind.purchase.description",
        ),
    ] {
        t.event(name, w.sign(&acct, dp, f), inv, Some(field));
    }
    t.event(
        "stop reason with carriage return",
        w.sign(&c, dp, kinds::stop("moved\rout")),
        inv,
        Some("kind.budget_stopped.reason"),
    );

    // === 7. occurred_at ====================================================
    let ts = |seconds: i64, nanos: i32| {
        move |e: &mut pb::Event| e.occurred_at = Some(prost_types::Timestamp { seconds, nanos })
    };
    for (name, f) in [
        ("occurred_at in year 9999", ts(253_402_300_799, 0)),
        ("occurred_at at negative seconds", ts(-1, 0)),
        ("occurred_at at i64::MIN seconds", ts(i64::MIN, 0)),
        ("occurred_at at i64::MAX seconds", ts(i64::MAX, 0)),
        ("occurred_at at the epoch", ts(0, 0)),
        (
            "occurred_at one second before 2000",
            ts(946_684_799, 999_999_999),
        ),
        ("occurred_at 25 hours ahead", ts(unix_now() + 25 * 3600, 0)),
        ("occurred_at nanos -1", ts(unix_now(), -1)),
        ("occurred_at nanos 1e9", ts(unix_now(), 1_000_000_000)),
        ("occurred_at nanos i32::MAX", ts(unix_now(), i32::MAX)),
    ] {
        t.event(name, buy(&f), inv, Some("occurred_at"))
            .mentions("occurred_at");
    }
    t.event(
        "occurred_at missing",
        buy(&|e| e.occurred_at = None),
        inv,
        Some("occurred_at"),
    )
    .mentions("required");

    // === 8. Kinds and enums ================================================
    t.event("no kind set", buy(&|e| e.kind = None), inv, Some("kind"));
    let open_with = |f: &dyn Fn(&mut pb::BudgetOpened)| {
        let mut o = pb::BudgetOpened {
            holder_ref: "h-enum".into(),
            commissioner_id: c.id.clone(),
            period_start: "2026-04-01".into(),
            period_end: "2027-03-31".into(),
            management: Management::Notional as i32,
            funds_holder_id: String::new(),
            payroll_provider_id: String::new(),
            plan_facilitator_id: String::new(),
            ..Default::default()
        };
        f(&mut o);
        Kind::BudgetOpened(o)
    };
    for (name, kind, field) in [
        (
            "unknown management 99",
            open_with(&|o| o.management = 99),
            "kind.budget_opened.management",
        ),
        (
            "negative management -1",
            open_with(&|o| o.management = -1),
            "kind.budget_opened.management",
        ),
        (
            "management unspecified",
            open_with(&|o| o.management = 0),
            "kind.budget_opened.management",
        ),
        (
            "unknown cohort 10",
            open_with(&|o| o.cohort = 10),
            "kind.budget_opened.cohort",
        ),
        (
            "unknown age band 3",
            open_with(&|o| o.age_band = 3),
            "kind.budget_opened.age_band",
        ),
        (
            "period_start 29 February in a common year",
            open_with(&|o| o.period_start = "2027-02-29".into()),
            "kind.budget_opened.period_start",
        ),
        (
            "period_start in fullwidth digits",
            open_with(&|o| o.period_start = "\u{ff12}026-04-01".into()),
            "kind.budget_opened.period_start",
        ),
        (
            "period_end before period_start",
            open_with(&|o| o.period_end = "2026-03-31".into()),
            "kind.budget_opened.period_end",
        ),
    ] {
        t.event(name, w.sign(&c, "hx-enum", kind), inv, Some(field));
    }
    t.event(
        "unknown allocation basis 42",
        w.sign(
            &c,
            nt,
            Kind::Allocation(pb::Allocation {
                amount: "1.00".into(),
                basis: 42,
            }),
        ),
        inv,
        Some("kind.allocation.basis"),
    );
    t.event(
        "unknown payee kind 7",
        w.sign(
            &acct,
            dp,
            Kind::Payment(pb::Payment {
                amount: "1.00".into(),
                payee_kind: 7,
                payee_ref: "agency-1".into(),
                category: "therapy".into(),
                reference: String::new(),
                ..Default::default()
            }),
        ),
        inv,
        Some("kind.payment.payee_kind"),
    );
    {
        let key = Signer::generate("x").public_key().to_bytes();
        let reg = |roles: Vec<i32>, key: Vec<u8>| {
            Kind::OrganisationRegistered(pb::OrganisationRegistered {
                organisation_id: "new-org".into(),
                roles,
                public_key: key,
            })
        };
        let roles = "kind.organisation_registered.roles";
        let pk = "kind.organisation_registered.public_key";
        for (name, kind, field) in [
            ("unknown role 99", reg(vec![99], key.to_vec()), roles),
            ("no roles", reg(vec![], key.to_vec()), roles),
            ("repeated role", reg(vec![5, 5], key.to_vec()), roles),
            ("31-byte public key", reg(vec![5], key[..31].to_vec()), pk),
            ("empty public key", reg(vec![5], Vec::new()), pk),
            (
                "weak (identity) public key",
                reg(vec![5], weak_key().to_vec()),
                pk,
            ),
        ] {
            t.event(name, w.sign(&root, "", kind), inv, Some(field));
        }
        t.event(
            "rotation to a weak key",
            w.sign(&root, "", kinds::rotate(&c.id, &weak_key())),
            inv,
            Some("kind.key_rotated.new_public_key"),
        );
        t.event(
            "rotation of an unknown organisation",
            w.sign(&root, "", kinds::rotate("nobody", &key)),
            Code::NotFound,
            None,
        );
        t.event(
            "rotation to the same key",
            w.sign(&root, "", kinds::rotate(&c.id, &c.public_key().to_bytes())),
            Code::FailedPrecondition,
            None,
        );
        t.event(
            "register an organisation twice",
            w.sign(&root, "", kinds::register(&c.id, &[Role::Auditor], &key)),
            Code::AlreadyExists,
            None,
        );
    }

    // === 9. Ledger state ===================================================
    t.event(
        "overspend",
        w.sign(&acct, dp, kinds::buy("587.51", "equipment", "s", "x")),
        Code::FailedPrecondition,
        None,
    )
    .mentions("only 587.50 is held");
    t.event(
        "disburse beyond the allocation",
        w.sign(&c, dp, kinds::disburse("400.01")),
        Code::FailedPrecondition,
        None,
    );
    t.event(
        "spend on a stopped budget",
        w.sign(&c, stopped, kinds::buy("1.00", "equipment", "s", "x")),
        Code::FailedPrecondition,
        None,
    );
    t.event(
        "spend on a budget that does not exist",
        w.sign(
            &acct,
            "hx-nowhere",
            kinds::buy("1.00", "equipment", "s", "x"),
        ),
        Code::NotFound,
        None,
    );
    t.event(
        "open a budget that exists",
        w.sign(
            &c,
            nt,
            kinds::open("h", &c.id, Management::Notional, "", ""),
        ),
        Code::AlreadyExists,
        None,
    );

    // === 10. Batches =======================================================
    t.add(
        "atomic batch: valid event then invalid amount",
        Attack::Append(pb::AppendRequest {
            events: vec![
                buy(&|_| {}),
                buy(&|e| e.kind = Some(kinds::buy("1e9", "equipment", "s", "x"))),
            ],
            atomic: true,
        }),
        Expect::Batch(vec![Code::Aborted, inv]),
    );
    {
        let a = w.event(dp, kinds::buy("1.00", "equipment", "s", "x"));
        let mut b = a.clone();
        b.kind = Some(kinds::buy("2.00", "equipment", "s", "x"));
        t.add(
            "atomic batch: one event_id for two different events",
            Attack::Append(pb::AppendRequest {
                events: vec![acct.sign(&a), acct.sign(&b)],
                atomic: true,
            }),
            Expect::Batch(vec![Code::Aborted, Code::AlreadyExists]),
        );
    }
    {
        let mut events: Vec<_> = (0..999)
            .map(|_| buy(&set_kind(kinds::buy("0.01", "equipment", "s", "x"))))
            .collect();
        // 587.50 is held; after 9.99 the last event asks for more than is left.
        events.push(buy(&set_kind(kinds::buy("600.00", "equipment", "s", "x"))));
        let mut codes = vec![Code::Aborted; 999];
        codes.push(Code::FailedPrecondition);
        t.add(
            "atomic batch of 1000 whose last event overspends",
            Attack::Append(pb::AppendRequest {
                events,
                atomic: true,
            }),
            Expect::Batch(codes),
        );
    }
    {
        let mut bad_sig = buy(&|_| {});
        bad_sig.signature = vec![0; 64];
        t.add(
            "non-atomic batch of only bad events",
            Attack::Append(pb::AppendRequest {
                events: vec![
                    acct.sign_bytes(vec![0xff; 4]),
                    bad_sig,
                    buy(&|e| e.ledger_id = "elsewhere".into()),
                    w.sign(&auditor, dp, kinds::allocate("1.00", Basis::OneOff)),
                ],
                atomic: false,
            }),
            Expect::Batch(vec![inv, unauth, inv, denied]),
        );
    }
    {
        // Refusal messages quote what was sent; they must stay small even
        // when what was sent is large and escapes badly (each U+0001 prints
        // as six characters), or the answer outgrows the response limit.
        let events: Vec<_> = (0..60)
            .map(|_| buy(&|e| e.ledger_id = "\u{1}".repeat(60 * 1024)))
            .collect();
        t.add(
            "60 events each quoting 60 KiB of control characters",
            Attack::Append(pb::AppendRequest {
                events,
                atomic: false,
            }),
            Expect::Batch(vec![inv; 60]),
        );
        let mut s = buy(&|_| {});
        s.signer_id = "\u{1}".repeat(2 * 1024 * 1024);
        t.event("signer_id of 2 MiB of control characters", s, unauth, None);
    }
    t.call(
        "Append with no events",
        {
            let mut cl = client.clone();
            Box::pin(async move {
                let r = cl.append(pb::AppendRequest::default()).await?;
                Ok(format!("{:?}", r.into_inner()))
            })
        },
        inv,
    )
    .mentions("events");
    {
        let events = vec![buy(&|_| {}); 1001];
        let mut cl = client.clone();
        t.call(
            "Append with 1001 events",
            Box::pin(async move {
                let r = cl
                    .append(pb::AppendRequest {
                        events,
                        atomic: false,
                    })
                    .await?;
                Ok(format!("{} results", r.into_inner().results.len()))
            }),
            inv,
        )
        .mentions("1000");
    }

    // === 11. Request size ==================================================
    {
        // A request of exactly the limit is read (its one event is refused
        // for size); one byte more is refused by the framework.
        let sized = |target: usize| -> pb::AppendRequest {
            let mut r = one(acct.sign_bytes(vec![0x0a; target]));
            while r.encoded_len() != target {
                let diff = r.encoded_len() as i64 - target as i64;
                let n = r.events[0].event.len() as i64 - diff;
                r.events[0].event = vec![0x0a; n as usize];
            }
            let event = r.events[0].event.clone();
            r.events[0] = acct.sign_bytes(event);
            assert_eq!(r.encoded_len(), target);
            r
        };
        t.add(
            "Append of exactly 8 MiB (one oversized event)",
            Attack::Append(sized(MAX_REQUEST_BYTES)),
            Expect::Event(inv, Some("event")),
        );
        let over = sized(MAX_REQUEST_BYTES + 1);
        let mut cl = client.clone();
        t.call(
            "Append of 8 MiB + 1 byte",
            Box::pin(async move {
                let r = cl.append(over).await?;
                Ok(format!("{:?}", r.into_inner().results.len()))
            }),
            Code::OutOfRange,
        )
        .mentions("8388608");
        let events = vec![buy(&|_| {}); 1];
        let mut big = pb::AppendRequest {
            events,
            atomic: false,
        };
        let filler = {
            let mut e = w.event(dp, kinds::buy("1.00", "equipment", "s", "x"));
            let mut p = purchase(&e);
            p.description = "f".repeat(63 * 1024);
            e.kind = Some(Kind::Purchase(p));
            acct.sign(&e)
        };
        while big.encoded_len() <= 9 * 1024 * 1024 {
            big.events.push(filler.clone());
        }
        let mut cl = client.clone();
        t.call(
            "Append of 9 MiB in 63 KiB events",
            Box::pin(async move {
                let r = cl.append(big).await?;
                Ok(format!("{:?}", r.into_inner().results.len()))
            }),
            Code::OutOfRange,
        );
    }

    // === 12. Raw gRPC bodies ===============================================
    {
        let valid_req = one(buy(&|_| {})).encode_to_vec();
        t.call(
            "garbage bytes as the AppendRequest",
            raw_append(&channel, vec![vec![0xff; 32]]),
            Code::InvalidArgument,
        );
        t.call(
            "truncated AppendRequest",
            raw_append(&channel, vec![valid_req[..valid_req.len() / 2].to_vec()]),
            Code::InvalidArgument,
        );
        let mut garbage_event = len_field(1, &[0xff; 8]);
        garbage_event.extend(varint_field(2, 1));
        t.call(
            "AppendRequest whose SignedEvent is garbage",
            raw_append(&channel, vec![garbage_event]),
            Code::InvalidArgument,
        );
        t.call(
            "AppendRequest with events as a varint",
            raw_append(&channel, vec![varint_field(1, 5)]),
            Code::InvalidArgument,
        );
        t.call(
            "valid AppendRequest followed by a garbage message",
            raw_append(&channel, vec![valid_req.clone(), vec![0xff; 8]]),
            Code::InvalidArgument,
        );
        // tonic reads a unary request to its end: a second message that
        // decodes is dropped unread (only the first is answered), one that
        // does not decode fails the call before the handler runs.
        let refused_req = one(buy(&|e| e.ledger_id = "elsewhere".into())).encode_to_vec();
        t.add(
            "refused AppendRequest followed by a valid one",
            Attack::Call(raw_append_answer(
                &channel,
                vec![refused_req, valid_req.clone()],
            )),
            Expect::Answer("1 results, codes [3]"),
        );
        let sig = read_sig(&auditor, methods::GET_BALANCE, &unix_now().to_string());
        let req = read_req(
            vec![vec![0xff; 16]],
            Some(auditor.id.as_bytes()),
            Some(&unix_now().to_string()),
            Some(&sig),
        );
        t.call(
            "garbage bytes as an authenticated GetBalanceRequest",
            raw_call(&channel, methods::GET_BALANCE, req),
            Code::InvalidArgument,
        );
        t.call(
            "unknown method",
            raw_call(
                &channel,
                "/phb.ledger.v1.LedgerService/DeleteBudget",
                tonic::Request::new(vec![Vec::new()]),
            ),
            Code::Unimplemented,
        );
        t.call(
            "frame declares 100 bytes, carries 10",
            http2_call(&channel, APPEND, frame_header(0, 100) + "0123456789", None),
            Code::InvalidArgument,
        );
        t.call(
            "frame declares 16 MiB",
            http2_call(&channel, APPEND, frame_header(0, 1 << 24), None),
            Code::OutOfRange,
        );
        // gRPC's compression spec requires INTERNAL for a compressed flag
        // the call's headers do not back; every other malformed body is the
        // caller's to fix: INVALID_ARGUMENT.
        t.call(
            "compressed flag without grpc-encoding",
            http2_call(&channel, APPEND, frame_header(1, 2) + "\u{8}\u{1}", None),
            Code::Internal,
        );
        t.call(
            "compression flag 7",
            http2_call(&channel, APPEND, frame_header(7, 0), None),
            Code::Internal,
        );
        t.call(
            "grpc-encoding gzip (not enabled)",
            http2_call(
                &channel,
                APPEND,
                frame_header(1, 2) + "\u{8}\u{1}",
                Some("gzip"),
            ),
            Code::Unimplemented,
        );
        t.call(
            "empty request body",
            http2_call(&channel, APPEND, String::new(), None),
            Code::InvalidArgument,
        );
        t.call(
            "half a frame header",
            http2_call(&channel, APPEND, "\0\0\0".into(), None),
            Code::InvalidArgument,
        );
    }

    // === 13. Read-call authentication ======================================
    {
        let get = |r: tonic::Request<pb::GetBalanceRequest>| -> Call {
            let mut cl = client.clone();
            Box::pin(async move {
                let b = cl.get_balance(r).await?;
                Ok(format!("{:?}", b.into_inner()))
            })
        };
        let gb = || pb::GetBalanceRequest {
            budget_id: dp.into(),
        };
        let now = unix_now();
        let org = Some(auditor.id.as_bytes());
        let signed = |ts: &str| read_sig(&auditor, methods::GET_BALANCE, ts);
        let cases: Vec<(&str, tonic::Request<pb::GetBalanceRequest>)> = vec![
            ("read with no metadata", read_req(gb(), None, None, None)),
            (
                "read without x-phb-signature",
                read_req(gb(), org, Some(&now.to_string()), None),
            ),
            (
                "read without x-phb-org",
                read_req(
                    gb(),
                    None,
                    Some(&now.to_string()),
                    Some(&signed(&now.to_string())),
                ),
            ),
            (
                "read signed 400 s ago",
                read_req(
                    gb(),
                    org,
                    Some(&(now - 400).to_string()),
                    Some(&signed(&(now - 400).to_string())),
                ),
            ),
            (
                "read signed 400 s in the future",
                read_req(
                    gb(),
                    org,
                    Some(&(now + 400).to_string()),
                    Some(&signed(&(now + 400).to_string())),
                ),
            ),
            (
                "read signed at i64::MIN",
                read_req(
                    gb(),
                    org,
                    Some(&i64::MIN.to_string()),
                    Some(&signed(&i64::MIN.to_string())),
                ),
            ),
            (
                "non-numeric timestamp (signed as sent)",
                read_req(gb(), org, Some("soon"), Some(&signed("soon"))),
            ),
            (
                "timestamp in exponent form (signed as sent)",
                read_req(gb(), org, Some("1.7e9"), Some(&signed("1.7e9"))),
            ),
            (
                "timestamp beyond i64 (signed as sent)",
                read_req(
                    gb(),
                    org,
                    Some("99999999999999999999"),
                    Some(&signed("99999999999999999999")),
                ),
            ),
            (
                "timestamp with a plus sign (signed as sent)",
                read_req(
                    gb(),
                    org,
                    Some(&format!("+{now}")),
                    Some(&signed(&format!("+{now}"))),
                ),
            ),
            (
                "forged signature (another organisation's key)",
                read_req(
                    gb(),
                    org,
                    Some(&now.to_string()),
                    Some(&read_sig(&c2, methods::GET_BALANCE, &now.to_string())),
                ),
            ),
            (
                "signature over the wrong method path",
                read_req(
                    gb(),
                    org,
                    Some(&now.to_string()),
                    Some(&read_sig(
                        &auditor,
                        methods::LIST_BALANCES,
                        &now.to_string(),
                    )),
                ),
            ),
            (
                "signature over the Append path",
                read_req(
                    gb(),
                    org,
                    Some(&now.to_string()),
                    Some(&read_sig(&auditor, APPEND, &now.to_string())),
                ),
            ),
            (
                "signature over a trailing newline",
                read_req(
                    gb(),
                    org,
                    Some(&now.to_string()),
                    Some(&b64(&auditor
                        .sign_bytes(format!("{}\n{now}\n", methods::GET_BALANCE).into_bytes())
                        .signature)),
                ),
            ),
            (
                "signature without base64 padding",
                read_req(
                    gb(),
                    org,
                    Some(&now.to_string()),
                    Some(signed(&now.to_string()).trim_end_matches('=')),
                ),
            ),
            (
                "signature not base64",
                read_req(gb(), org, Some(&now.to_string()), Some("%%%%")),
            ),
            (
                "63-byte signature",
                read_req(gb(), org, Some(&now.to_string()), Some(&b64(&[1; 63]))),
            ),
            (
                "all-zero signature",
                read_req(gb(), org, Some(&now.to_string()), Some(&b64(&[0; 64]))),
            ),
            (
                "unknown x-phb-org",
                read_req(
                    gb(),
                    Some(b"nobody"),
                    Some(&now.to_string()),
                    Some(&signed(&now.to_string())),
                ),
            ),
            (
                "x-phb-org root with the auditor's signature",
                read_req(
                    gb(),
                    Some(b"root"),
                    Some(&now.to_string()),
                    Some(&signed(&now.to_string())),
                ),
            ),
            (
                "x-phb-timestamp of 8 KiB of digits",
                read_req(
                    gb(),
                    org,
                    Some(&"9".repeat(8 * 1024)),
                    Some(&signed(&now.to_string())),
                ),
            ),
            (
                "x-phb-org of 12 KiB",
                read_req(
                    gb(),
                    Some("o".repeat(12 * 1024).as_bytes()),
                    Some(&now.to_string()),
                    Some(&signed(&now.to_string())),
                ),
            ),
            (
                "x-phb-org not ASCII",
                read_req(
                    gb(),
                    Some("audit-\u{f6}ffice".as_bytes()),
                    Some(&now.to_string()),
                    Some(&signed(&now.to_string())),
                ),
            ),
        ];
        for (name, r) in cases {
            t.call(name, get(r), unauth);
        }
        // Beyond the HTTP/2 header list limit (16 KiB) the server refuses
        // the headers with HTTP 431 before gRPC sees them; a gRPC client
        // maps an HTTP status without grpc-status to UNKNOWN.
        let r = read_req(
            gb(),
            Some("o".repeat(32 * 1024).as_bytes()),
            Some(&now.to_string()),
            Some(&signed(&now.to_string())),
        );
        t.call("x-phb-org of 32 KiB", get(r), Code::Unknown)
            .mentions("431");
        let r = read_req(
            gb(),
            org,
            Some(&(now - 10_000).to_string()),
            Some(&signed(&(now - 10_000).to_string())),
        );
        t.call(
            "read signed 10000 s ago names x-phb-timestamp",
            get(r),
            unauth,
        )
        .mentions("x-phb-timestamp");
        let r = read_req(gb(), org, Some(&now.to_string()), Some("%%%%"));
        t.call("bad base64 names x-phb-signature", get(r), unauth)
            .mentions("x-phb-signature");

        // Scope and arguments.
        let as_auditor = |budget_id: &str| {
            auditor.request(
                methods::GET_BALANCE,
                pb::GetBalanceRequest {
                    budget_id: budget_id.into(),
                },
            )
        };
        t.call(
            "GetBalance of a budget_id with NUL",
            get(as_auditor("hx-direct\0")),
            inv,
        )
        .mentions("budget_id");
        t.call(
            "GetBalance of a look-alike budget_id",
            get(as_auditor("h\u{445}-direct")),
            inv,
        );
        t.call(
            "GetBalance of an unknown budget",
            get(as_auditor("hx-nowhere")),
            Code::NotFound,
        );
        t.call(
            "third party reads a budget it is not named on",
            get(tp.request(methods::GET_BALANCE, gb())),
            denied,
        );

        let list = |signer: &Signer, commissioner_id: &str, page_token: &str| -> Call {
            let r = signer.request(
                methods::LIST_BALANCES,
                pb::ListBalancesRequest {
                    commissioner_id: commissioner_id.into(),
                    page_size: 2,
                    page_token: page_token.into(),
                },
            );
            let mut cl = client.clone();
            Box::pin(async move {
                let p = cl.list_balances(r).await?;
                Ok(format!("{:?}", p.into_inner()))
            })
        };
        for (name, token) in [
            ("page_token garbage", "garbage".to_string()),
            ("page_token prefix only", "after:".to_string()),
            ("page_token with newline", "after:hx-direct\n".to_string()),
            (
                "page_token of 64 KiB",
                format!("after:{}", "z".repeat(64 * 1024)),
            ),
            (
                "page_token with look-alike",
                "after:h\u{445}-direct".to_string(),
            ),
            ("page_token base64 of a real one", b64(b"after:hx-direct")),
        ] {
            t.call(name, list(&auditor, "", &token), inv)
                .mentions("page_token");
        }
        t.call(
            "commissioner lists another commissioner's budgets",
            list(&c, &c2.id, ""),
            denied,
        );
        let mut r = tonic::Request::new(pb::ListBalancesRequest::default());
        c.authorize_at(&mut r, methods::GET_BALANCE, unix_now());
        let mut cl = client.clone();
        t.call(
            "ListBalances with a GetBalance signature",
            Box::pin(async move {
                let p = cl.list_balances(r).await?;
                Ok(format!("{:?}", p.into_inner()))
            }),
            unauth,
        );

        let read_log = |r: tonic::Request<pb::ReadLogRequest>| -> Call {
            let mut cl = client.clone();
            Box::pin(async move {
                cl.read_log(r).await?;
                Ok("stream opened".into())
            })
        };
        let mut cl = client.clone();
        let r = auditor.request(
            methods::READ_LOG,
            pb::ReadLogRequest {
                from_sequence: u64::MAX,
                follow: false,
            },
        );
        t.add(
            "ReadLog from sequence u64::MAX",
            Attack::Call(Box::pin(async move {
                use futures::StreamExt;
                let stream = cl.read_log(r).await?.into_inner();
                let items: Vec<_> = stream.collect().await;
                Ok(format!("{} entries", items.len()))
            })),
            Expect::Answer("0 entries"),
        );
        let mut cl = client.clone();
        let r = auditor.request(
            methods::LIST_BALANCES,
            pb::ListBalancesRequest {
                commissioner_id: String::new(),
                page_size: u32::MAX,
                page_token: String::new(),
            },
        );
        t.add(
            "ListBalances page_size u32::MAX",
            Attack::Call(Box::pin(async move {
                let p = cl.list_balances(r).await?.into_inner();
                Ok(format!(
                    "{} balances, next {:?}",
                    p.balances.len(),
                    p.next_page_token
                ))
            })),
            Expect::Answer("5 balances, next \"\""),
        );
        t.call(
            "commissioner reads the whole log",
            read_log(c.request(methods::READ_LOG, pb::ReadLogRequest::default())),
            denied,
        );
        t.call(
            "ReadLog with no metadata",
            read_log(tonic::Request::new(pb::ReadLogRequest {
                from_sequence: 0,
                follow: true,
            })),
            unauth,
        );
        let ts = (unix_now() + 1000).to_string();
        t.call(
            "ReadLog signed in the future",
            read_log(read_req(
                pb::ReadLogRequest::default(),
                Some(auditor.id.as_bytes()),
                Some(&ts),
                Some(&read_sig(&auditor, methods::READ_LOG, &ts)),
            )),
            unauth,
        );
    }

    // --- Run every row -------------------------------------------------------
    // Every row runs even if an earlier one fails, so one run shows the
    // whole damage; the test fails at the end if any row did.
    let total = t.0.len();
    let mut ran = 0usize;
    let mut failures = Vec::new();
    let mut expected = baseline;
    for case in t.0 {
        let name = case.name.clone();
        if let Err(why) = run_case(&client, case).await {
            failures.push(format!("[{name}] {why}"));
        }
        ran += 1;
        if !w.server.is_running() {
            panic!(
                "[{name}] the server died; failures so far: {failures:#?}\nstderr:\n{}",
                w.server.stderr()
            );
        }
        let now = snapshot(&w).await;
        // A refusal by the rules is recorded (the log grows by entries that
        // apply nothing); nothing else may change.
        let changed = now.balances != expected.balances || now.applied != expected.applied;
        if changed {
            failures.push(format!(
                "[{name}] changed the ledger: log {} -> {}, balances {:?} -> {:?}",
                expected.log_len, now.log_len, expected.balances, now.balances
            ));
        }
        expected = now;
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} hostile cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(ran, total);
    assert!(ran >= 30, "only {ran} hostile cases ran");

    // The server is still healthy: it did not panic, still accepts a valid
    // event, and replays its log after a restart to the same balances.
    let stderr = w.server.stderr();
    assert!(!stderr.contains("panicked"), "server panicked:\n{stderr}");
    let seq = w
        .ok(
            &acct,
            dp,
            kinds::buy("1.00", "equipment", "shop-1", "after"),
        )
        .await;
    assert_eq!(seq, expected.log_len + 1);
    let mut w = w;
    let before = snapshot(&w).await;
    w.server.restart();
    w.reconnect().await;
    assert_eq!(
        snapshot(&w).await,
        before,
        "restart replays the same ledger"
    );
    eprintln!(
        "hostile input catalogue: {ran} cases in {:.1?}",
        started.elapsed()
    );
}

/// Runs one row; `Err` says how the answer differed from the expectation.
async fn run_case(client: &Client, case: Case) -> Result<(), String> {
    let message = match (case.attack, case.expect) {
        (Attack::Append(req), expect) => {
            let n = req.events.len();
            let results = match client.clone().append(req).await {
                Ok(r) => r.into_inner().results,
                Err(s) => return Err(format!("Append failed at call level: {s:?}")),
            };
            if results.len() != n {
                return Err(format!("{} results for {n} events", results.len()));
            }
            match expect {
                Expect::Event(code, field) => {
                    let r = &results[0];
                    check_refused(r, code)?;
                    let e = r.error.clone().unwrap_or_default();
                    if let Some(field) = field {
                        if e.field != field {
                            return Err(format!("field {:?}, expected {field:?}: {r:?}", e.field));
                        }
                    }
                    e.message
                }
                Expect::Batch(codes) => {
                    if codes.len() != n {
                        return Err(format!("table error: {} codes for {n} events", codes.len()));
                    }
                    for (i, (r, code)) in results.iter().zip(codes).enumerate() {
                        check_refused(r, code).map_err(|e| format!("event {i}: {e}"))?;
                        let len = r.error.as_ref().map(|e| e.message.len()).unwrap_or(0);
                        if len > MAX_MESSAGE_BYTES {
                            return Err(format!("event {i}: refusal message of {len} bytes"));
                        }
                    }
                    // Each message was bounded above; mentions look at the first.
                    results[0].error.clone().unwrap_or_default().message
                }
                Expect::Duplicate(seq) => {
                    let r = &results[0];
                    if result_code(r) != 0 || !r.duplicate || r.sequence != seq {
                        return Err(format!("expected a duplicate of sequence {seq}: {r:?}"));
                    }
                    String::new()
                }
                Expect::Status(_) | Expect::Answer(_) => {
                    return Err("table error: an Append row expects per-event results".into())
                }
            }
        }
        (Attack::Call(call), Expect::Status(code)) => {
            let result = tokio::time::timeout(Duration::from_secs(60), call)
                .await
                .map_err(|_| "the call did not finish in 60 s".to_string())?;
            match result {
                Ok(ok) => return Err(format!("expected {code:?}, the call succeeded: {ok}")),
                Err(s) if s.code() != code => {
                    return Err(format!(
                        "expected {code:?}, got {:?}: {:?}",
                        s.code(),
                        s.message()
                    ))
                }
                // tonic answers an unknown path with a bare UNIMPLEMENTED;
                // every status of ours says what to fix.
                Err(s) if s.message().is_empty() && code != Code::Unimplemented => {
                    return Err(format!("{code:?} without a message"))
                }
                Err(s) => s.message().to_string(),
            }
        }
        (Attack::Call(call), Expect::Answer(want)) => {
            let result = tokio::time::timeout(Duration::from_secs(60), call)
                .await
                .map_err(|_| "the call did not finish in 60 s".to_string())?;
            match result {
                Ok(got) if got == want => String::new(),
                Ok(got) => return Err(format!("answered {got:?}, expected {want:?}")),
                Err(s) => return Err(format!("expected {want:?}, failed: {s:?}")),
            }
        }
        (Attack::Call(_), _) => return Err("table error: calls expect a status or answer".into()),
    };
    // Refusals quote what was sent, but never all of it.
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(format!("a message of {} bytes", message.len()));
    }
    for m in &case.mentions {
        if !message.contains(m.as_str()) {
            return Err(format!("message should mention {m:?}: {message:?}"));
        }
    }
    Ok(())
}

/// Like `assert_refused`, as a `Result`.
fn check_refused(r: &pb::AppendResult, c: Code) -> Result<(), String> {
    let got = result_code(r);
    if got != code(c) {
        return Err(format!("expected {c:?} ({}), got {got}: {r:?}", code(c)));
    }
    let recorded = r.refusal_sequence != 0;
    if r.sequence != 0 || r.duplicate || r.entry_hash.len() != if recorded { 32 } else { 0 } {
        return Err(format!(
            "a refused event has no sequence or duplicate flag, and an entry hash only if its refusal is recorded: {r:?}"
        ));
    }
    if recorded && !(is_decision(c) || c == Code::Aborted) {
        return Err(format!("only refusals by the rules are recorded: {r:?}"));
    }
    if r.error.as_ref().is_none_or(|e| e.message.is_empty()) {
        return Err(format!("a refusal must say why: {r:?}"));
    }
    Ok(())
}

/// The encoding of the identity point: a valid but small-order ("weak") key.
fn weak_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = 1;
    k
}

/// Issue 6, defect 11: a required reason made only of invisible characters
/// passed as "not blank", and a description could carry hidden text in tag
/// characters. Invisible characters never count as content; tag characters
/// are refused; visible text keeps the ignorables that belong to it (docs/api.md,
/// "Text fields").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_text_is_not_content_and_tag_characters_are_refused() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let dp = "inv-direct";
    w.open_direct(dp).await;
    w.fund(dp, "100.00", Some("100.00")).await;
    let inv = Code::InvalidArgument;
    let refusal = |r: &pb::AppendResult| r.error.clone().expect("a refusal has an error");

    for blank in ["\u{200B}", "\u{3164}", "\u{2060}", "\u{FEFF}"] {
        let cases = [
            (
                kinds::review("1.00", blank),
                "kind.review_adjustment.reason",
            ),
            (kinds::stop(blank), "kind.budget_stopped.reason"),
        ];
        for (kind, field) in cases {
            let e = refusal(&w.refused(&c, dp, kind, inv).await);
            let code_point = format!("U+{:04X}", u32::from(blank.chars().next().unwrap()));
            assert_eq!(e.field, field, "{code_point}: {e:?}");
            assert!(e.message.starts_with(field), "{code_point}: {e:?}");
            assert!(
                e.message.contains("no visible character"),
                "{code_point}: {e:?}"
            );
        }
        // An optional field may be empty, but not filled with nothing visible.
        let e = refusal(
            &w.refused(
                &acct,
                dp,
                kinds::buy("1.00", "equipment", "shop-1", blank),
                inv,
            )
            .await,
        );
        assert_eq!(e.field, "kind.purchase.description", "{e:?}");
    }

    // "chair" followed by "PAY ME" spelled in tag characters: displays as "chair".
    let hidden: String = "chair"
        .chars()
        .chain(
            "PAY ME"
                .chars()
                .map(|c| char::from_u32(0xE0000 + u32::from(c)).unwrap()),
        )
        .collect();
    let e = refusal(
        &w.refused(
            &acct,
            dp,
            kinds::buy("1.00", "equipment", "shop-1", &hidden),
            inv,
        )
        .await,
    );
    assert_eq!(e.field, "kind.purchase.description", "{e:?}");
    assert!(e.message.contains("U+E0050"), "names the code point: {e:?}");
    assert!(
        !e.message.contains('\u{E0050}'),
        "does not echo the text: {e:?}"
    );
    let receipt = Kind::Purchase(pb::Purchase {
        amount: "1.00".into(),
        category: "equipment".into(),
        supplier_ref: "shop-1".into(),
        description: "chair".into(),
        receipt_ref: format!("r-1{}", '\u{E0041}'),
        ..Default::default()
    });
    let e = refusal(&w.refused(&acct, dp, receipt, inv).await);
    assert_eq!(e.field, "kind.purchase.receipt_ref", "{e:?}");
    assert!(e.message.contains("U+E0041"), "{e:?}");
    // Variation selectors smuggled after an emoji, one per hidden byte.
    let smuggled = "\u{1F600}\u{FE01}\u{FE02}\u{FE03}\u{FE04}";
    let e = refusal(
        &w.refused(
            &acct,
            dp,
            kinds::buy("1.00", "equipment", "shop-1", smuggled),
            inv,
        )
        .await,
    );
    assert!(e.message.contains("in a row"), "{e:?}");

    // Legitimate text is accepted and stored exactly as sent.
    let accepted = [
        "Zo\u{EB} S\u{E9}verine's shower chair",
        "\u{1F469}\u{200D}\u{1F4BB} laptop for the PA",
        "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308} \u{2764}\u{FE0F}\u{200D}\u{1F525}",
        "\u{FEFF}pasted with a byte-order mark",
    ];
    for text in accepted {
        let seq = w
            .ok(&acct, dp, kinds::buy("1.00", "equipment", "shop-1", text))
            .await;
        let log = w.log().await;
        let entry = log
            .iter()
            .find(|e| e.sequence == seq)
            .expect("written entry");
        let signed = entry.signed_event.as_ref().expect("signed event");
        let ev = pb::Event::decode(signed.event.as_slice()).expect("stored event decodes");
        match ev.kind {
            Some(Kind::Purchase(p)) => assert_eq!(p.description, text),
            other => panic!("not a purchase: {other:?}"),
        }
    }
    // A required reason with visible words may carry a stray invisible one.
    w.ok(&c, dp, kinds::review("1.00", "\u{200B}annual review"))
        .await;
}
