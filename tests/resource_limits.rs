//! Transport limits under attack, through the real binary: what an
//! unauthenticated peer can make the server hold (memory, descriptors, CPU)
//! by opening connections and sending partial requests, and that ordinary
//! calls still get through while it does (docs/reliability.md, threat model).
//!
//! Limits are shortened through `PHB_...` environment variables rather than
//! flags, so that the attacks also run against a binary without the limits.

mod common;

use bytes::Bytes;
use common::*;
use phb_client::{kinds, methods};
use phb_proto::v1 as pb;
use std::ffi::OsString;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tonic::Code;

const MIB: u64 = 1024 * 1024;
/// The server's request limit (docs/api.md).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line:?}"));
    kib * 1024
}

fn rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS")
}

/// User plus system CPU time the process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

// ---------------------------------------------------------------------------
// Raw HTTP/2 gRPC calls (the `h2` crate), for bodies no client would send
// ---------------------------------------------------------------------------

async fn h2_open(
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn grpc_post(addr: std::net::SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// A gRPC frame header: no compression, `len` bytes of message.
fn frame_header(len: u32) -> Bytes {
    let mut h = vec![0u8];
    h.extend(len.to_be_bytes());
    Bytes::from(h)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

/// The gRPC status a call ended with (from a trailers-only answer or the
/// trailers), or why there was none.
async fn grpc_outcome(resp: h2::client::ResponseFuture) -> Result<(i32, String), String> {
    let resp = resp.await.map_err(|e| format!("no response: {e}"))?;
    if let Some(s) = status_of(resp.headers()) {
        return Ok(s);
    }
    let mut body = resp.into_body();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| format!("response body: {e}"))?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?
        .ok_or("no trailers")?;
    status_of(&trailers).ok_or_else(|| "no grpc-status in the trailers".into())
}

/// Sends `body` as a whole request body to `path` on a new connection.
async fn raw_call(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> (i32, String) {
    let (send, conn) = h2_open(addr).await;
    let mut send = send.ready().await.expect("connection ready");
    let (resp, mut stream) = send
        .send_request(grpc_post(addr, path), false)
        .expect("sending headers");
    stream
        .send_data(Bytes::from(body), true)
        .expect("sending the body");
    let outcome = tokio::time::timeout(Duration::from_secs(30), grpc_outcome(resp))
        .await
        .expect("the server must answer within 30 s")
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    conn.abort();
    outcome
}

/// A signed Append of one new budget, as a partner would send it.
fn legit_append(w: &World, budget_id: &str) -> pb::AppendRequest {
    let open = kinds::open(
        &format!("holder-{budget_id}"),
        &w.commissioner.id,
        pb::Management::Notional,
        "",
        "",
    );
    pb::AppendRequest {
        events: vec![w.sign(&w.commissioner, budget_id, open)],
        atomic: false,
    }
}

// ---------------------------------------------------------------------------
// 1. Slow-loris Appends: memory is bounded and comes back
// ---------------------------------------------------------------------------

/// Connections and streams per connection of the attack: 64 streams of
/// almost 8 MiB, 512 MiB if the server buffered them all.
const ATTACK_CONNECTIONS: usize = 16;
const ATTACK_STREAMS: usize = 4;
/// The request buffer budget (the default).
const BUDGET_MIB: u64 = 256;
/// How close to its baseline the server's RSS must come after the attack.
const RETURN_MIB: u64 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_appends_are_cut_off_and_their_memory_returns() {
    let server = Server::start_with(ServerOptions {
        env: env(&[("PHB_REQUEST_BODY_TIMEOUT", "2s")]),
        ..Default::default()
    });
    let pid = server.pid().expect("server pid");
    let addr = server.addr;
    let w = World::with_server(server).await;
    w.open_direct("warm-up").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss(pid);

    // Every stream declares a message just under the request limit and
    // sends all of it but the last KiB, then waits.
    let declared = (MAX_REQUEST_BYTES - 16) as u32;
    let payload = Bytes::from(vec![0x0a_u8; declared as usize - 1024]);
    let (exhausted_tx, mut exhausted_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut conns = Vec::new();
    let mut streams = JoinSet::new();
    for _ in 0..ATTACK_CONNECTIONS {
        let (send, conn) = h2_open(addr).await;
        conns.push(conn);
        for _ in 0..ATTACK_STREAMS {
            let send = send.clone();
            let payload = payload.clone();
            let exhausted = exhausted_tx.clone();
            streams.spawn(async move {
                let mut send = send.ready().await.map_err(|e| format!("not ready: {e}"))?;
                let (resp, mut body) = send
                    .send_request(grpc_post(addr, methods::APPEND), false)
                    .map_err(|e| format!("headers: {e}"))?;
                body.send_data(frame_header(declared), false)
                    .map_err(|e| format!("data: {e}"))?;
                body.send_data(payload, false)
                    .map_err(|e| format!("data: {e}"))?;
                let outcome = tokio::time::timeout(Duration::from_secs(60), grpc_outcome(resp))
                    .await
                    .map_err(|_| {
                        "the stream was neither failed nor answered within 60 s".to_string()
                    })??;
                if outcome.0 == Code::ResourceExhausted as i32 {
                    let _ = exhausted.try_send(());
                }
                drop(body);
                Ok::<_, String>(outcome)
            });
        }
    }
    drop(exhausted_tx);

    // Once the budget has been hit, an ordinary Append on another
    // connection must still be written.
    let hit = tokio::time::timeout(Duration::from_secs(30), exhausted_rx.recv()).await;
    let during = rss(pid);
    let legit = tokio::time::timeout(
        Duration::from_secs(20),
        w.client.clone().append(legit_append(&w, "during-attack")),
    )
    .await
    .expect("a legitimate Append must be answered within 20 s during the attack")
    .expect("a legitimate Append must succeed during the attack")
    .into_inner();
    assert_written(&legit.results[0]);
    assert!(
        hit.is_ok_and(|h| h.is_some()),
        "no attack stream was refused RESOURCE_EXHAUSTED within 30 s (RSS {:.0} MiB over a baseline of {:.0} MiB)",
        mib(during.saturating_sub(baseline)),
        mib(baseline)
    );

    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
    while let Some(joined) = streams.join_next().await {
        let outcome = joined.expect("attack task");
        let (code, message) = outcome.unwrap_or_else(|e| panic!("attack stream: {e}"));
        assert!(
            code == Code::ResourceExhausted as i32 || code == Code::DeadlineExceeded as i32,
            "an attack stream ended with code {code} ({message}); expected RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED"
        );
        *codes.entry(code).or_default() += 1;
    }
    assert!(
        codes.contains_key(&(Code::DeadlineExceeded as i32)),
        "no stalled stream was cut off by the body timeout: {codes:?}"
    );
    let peak = proc_status_bytes(pid, "VmHWM");
    let bound = baseline + (BUDGET_MIB + 96) * MIB;
    assert!(
        peak < bound,
        "peak RSS {:.0} MiB: more than the baseline {:.0} MiB + the {BUDGET_MIB} MiB budget + 96 MiB (codes {codes:?})",
        mib(peak),
        mib(baseline)
    );

    // The attackers go away: the memory must come back.
    for c in conns {
        c.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = rss(pid);
    while now > baseline + RETURN_MIB * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = rss(pid);
    }
    assert!(
        now <= baseline + RETURN_MIB * MIB,
        "RSS {:.0} MiB 30 s after the attack ended; baseline {:.0} MiB, peak {:.0} MiB",
        mib(now),
        mib(baseline),
        mib(peak)
    );
    w.ok(
        &w.commissioner.clone(),
        "after-attack",
        kinds::open(
            "holder-after",
            &w.commissioner.id,
            pb::Management::Notional,
            "",
            "",
        ),
    )
    .await;
    eprintln!(
        "baseline {:.0} MiB, peak {:.0} MiB, after {:.0} MiB; stream outcomes {codes:?}",
        mib(baseline),
        mib(peak),
        mib(now)
    );
}

// ---------------------------------------------------------------------------
// 2. Idle connections under a descriptor limit
// ---------------------------------------------------------------------------

/// `prlimit`, or None (the test is then skipped: util-linux is missing).
fn prlimit() -> Option<OsString> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prlimit"))
        .find(|p| p.is_file())
        .map(OsString::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_lock_out_callers_nor_spin_the_accept_loop() {
    let Some(prlimit) = prlimit() else {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    };
    let server = Server::start_with(ServerOptions {
        wrapper: vec![prlimit, "--nofile=128".into(), "--".into()],
        env: env(&[("PHB_HANDSHAKE_TIMEOUT", "2s"), ("PHB_IDLE_TIMEOUT", "3s")]),
        ..Default::default()
    });
    // prlimit execs the server: the pid is the server's.
    let pid = server.pid().expect("server pid");
    let addr = server.addr;
    let w = World::with_server(server).await;

    // More idle connections than the process has descriptors.
    let mut idle = Vec::new();
    for _ in 0..140 {
        idle.push(
            tokio::net::TcpStream::connect(addr)
                .await
                .expect("connecting (the kernel completes it from the backlog)"),
        );
    }
    let attack_started = Instant::now();
    let cpu_before = cpu_seconds(pid);

    // A partner connecting now must still be served, within its deadline.
    let req = legit_append(&w, "past-idle-peers");
    let legit = tokio::spawn(async move {
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(25), async move {
            let mut client =
                pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{addr}"))
                    .await
                    .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
            let mut req = tonic::Request::new(req);
            req.set_timeout(Duration::from_secs(25));
            client.append(req).await
        })
        .await;
        (answer, started.elapsed())
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let window = attack_started.elapsed();
    assert!(
        cpu < 0.3,
        "the server used {cpu:.2} s of CPU in {window:?} with idle connections open: the accept loop is spinning"
    );

    let (answer, took) = legit.await.expect("legit task");
    let answer = answer
        .unwrap_or_else(|_| {
            panic!("a legitimate Append got no answer within 25 s while idle connections were open")
        })
        .unwrap_or_else(|s| {
            panic!("a legitimate Append failed while idle connections were open: {s:?}")
        })
        .into_inner();
    assert_written(&answer.results[0]);

    // Every idle connection is closed by the server: the handshake timeout
    // (2 s here) applies to each from when it is accepted. (The server's
    // own SETTINGS frame arrives first.)
    let deadline = attack_started + Duration::from_secs(30);
    for (i, s) in idle.iter_mut().enumerate() {
        let closed = async {
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, closed).await.is_err() {
            panic!(
                "idle connection {i} of 140 was still open {:?} after the attack began",
                attack_started.elapsed()
            );
        }
    }
    eprintln!(
        "CPU {cpu:.2} s in {window:?}; legitimate Append answered in {took:?}; all idle connections closed after {:?}",
        attack_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_requests_is_closed_when_idle_but_a_streaming_one_is_not() {
    use futures::StreamExt;
    let server = Server::start_with(ServerOptions {
        env: env(&[("PHB_HANDSHAKE_TIMEOUT", "2s"), ("PHB_IDLE_TIMEOUT", "3s")]),
        ..Default::default()
    });
    let addr = server.addr;
    let w = World::with_server(server).await;

    // An auditor follows the log on its own connection: a request in
    // progress the whole time, so the connection is not idle.
    let follow = w.auditor.request(
        methods::READ_LOG,
        pb::ReadLogRequest {
            from_sequence: 1,
            follow: true,
        },
    );
    let mut follower = w.server.client().await;
    let mut stream = follower
        .read_log(follow)
        .await
        .expect("ReadLog")
        .into_inner();

    // A connection that completes the handshake and then sends nothing.
    let opened = Instant::now();
    let (send, conn) = h2_open(addr).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), conn).await;
    let lived = opened.elapsed();
    drop(send);
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection was still open after 20 s"
    );
    assert!(
        lived >= Duration::from_millis(2500),
        "an idle HTTP/2 connection was closed after {lived:?}, before its 3 s idle timeout"
    );

    // The follower, idle on the wire for longer than the idle timeout, still
    // gets the next entry.
    let mut seen = 0u64;
    let drain = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(e) = stream.next().await {
            seen = e.expect("ReadLog entry").entry.expect("entry").sequence;
        }
    })
    .await;
    assert!(
        drain.is_err(),
        "the follow stream ended while idle: it must stay open"
    );
    let seq = w
        .ok(
            &w.commissioner.clone(),
            "while-following",
            kinds::open(
                "holder-f",
                &w.commissioner.id,
                pb::Management::Notional,
                "",
                "",
            ),
        )
        .await;
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the follow stream must deliver the new entry within 10 s")
        .expect("the follow stream ended")
        .expect("ReadLog entry");
    assert!(seen < seq);
    assert_eq!(next.entry.expect("entry").sequence, seq);
}

// ---------------------------------------------------------------------------
// 3. Undecodable request bodies are the caller's fault
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_request_bodies_answer_invalid_argument() {
    let server = Server::start();
    let addr = server.addr;
    let frame = |msg: &[u8]| {
        let mut v = frame_header(msg.len() as u32).to_vec();
        v.extend_from_slice(msg);
        v
    };
    let mut truncated = frame_header(100).to_vec();
    truncated.extend_from_slice(b"0123456789");
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "garbage bytes as the AppendRequest",
            methods::APPEND,
            frame(&[0xff; 32]),
            "AppendRequest",
        ),
        (
            "garbage bytes as a GetBalanceRequest",
            methods::GET_BALANCE,
            frame(&[0xff; 16]),
            "GetBalanceRequest",
        ),
        (
            "frame declares 100 bytes, carries 10",
            methods::APPEND,
            truncated,
            "declared 100 bytes",
        ),
        (
            "half a frame header",
            methods::APPEND,
            vec![0, 0, 0],
            "frame header",
        ),
        (
            "empty request body",
            methods::APPEND,
            Vec::new(),
            "no message",
        ),
    ];
    for (name, path, body, mentions) in cases {
        let (code, message) = raw_call(addr, path, body).await;
        assert_eq!(
            code,
            Code::InvalidArgument as i32,
            "{name}: code {code} ({message}); expected INVALID_ARGUMENT"
        );
        assert!(
            message.contains(mentions),
            "{name}: the message {message:?} should mention {mentions:?}"
        );
    }
}

/// Per-client limits (issue 11): with a rate of 5 calls a second (a burst
/// of 10), a burst of calls from one client is cut at 10 with
/// RESOURCE_EXHAUSTED naming the limit, and the client is served again
/// once its bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_refused_then_served_again() {
    let server = Server::start_with(ServerOptions {
        env: env(&[("PHB_LEDGER_CLIENT_REQUESTS_PER_SECOND", "5")]),
        ..ServerOptions::default()
    });
    let root = server.root.clone();
    let client = server.client().await;
    let call = || {
        let mut c = client.clone();
        let req = root.request(methods::LIST_BALANCES, pb::ListBalancesRequest::default());
        async move { c.list_balances(req).await }
    };
    let mut served = 0;
    let mut refused = None;
    for _ in 0..30 {
        match call().await {
            Ok(_) => served += 1,
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let refused = refused.expect("a burst past the limit is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("5 calls a second"),
        "{refused:?}"
    );
    assert!(
        (9..=11).contains(&served),
        "a burst of twice the rate: {served}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        call().await.is_ok(),
        "served again after the bucket refills"
    );
}
