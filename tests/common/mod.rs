//! Shared harness for the integration tests: runs the real `phb-ledger`
//! binary as a child process on a temporary data directory and a free port,
//! and talks to it over real gRPC with real ed25519 signatures.
#![allow(dead_code)]

pub mod logfile;

use phb_client::{event, kinds, methods, Kind, Signer};
use phb_proto::v1 as pb;
use phb_proto::v1::ledger_service_client::LedgerServiceClient;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

pub type Client = LedgerServiceClient<Channel>;

/// The ledger id every test server runs with.
pub const LEDGER_ID: &str = "phb-test";
/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The date `days` from today (UTC), as YYYY-MM-DD.
pub fn day(days: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    phb_domain::event::Date::from_unix_micros(now + days * 86_400_000_000).to_string()
}

/// Appends signed events through `client`; the RPC must succeed and answer
/// every event, in request order.
pub async fn append_events(
    client: &Client,
    events: Vec<pb::SignedEvent>,
    atomic: bool,
) -> Vec<pb::AppendResult> {
    let n = events.len();
    let ids: Vec<String> = events
        .iter()
        .map(|e| {
            <pb::Event as prost::Message>::decode(e.event.as_slice())
                .map(|e| e.event_id)
                .unwrap_or_default()
        })
        .collect();
    let resp = client
        .clone()
        .append(pb::AppendRequest { events, atomic })
        .await
        .expect("Append RPC failed")
        .into_inner();
    assert_eq!(resp.results.len(), n, "one result per event");
    for (r, id) in resp.results.iter().zip(ids) {
        assert_eq!(r.event_id, id, "results echo event ids in request order");
    }
    resp.results
}

/// The gRPC code number of `c`, as carried in `AppendResult.error.code`.
pub fn code(c: Code) -> i32 {
    c as i32
}

/// How to start a server. `ServerOptions::default()` is what `Server::start`
/// does: a fresh temporary data directory, a new root key, no wrapper.
#[derive(Default)]
pub struct ServerOptions {
    /// Run on this data directory (e.g. a mount point) instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// A command line the server runs under, e.g. `["strace", "-f", ...]` or
    /// `["prlimit", "--fsize=1000000", "--"]`; the server's own command line
    /// is appended to it.
    pub wrapper: Vec<OsString>,
    /// The root signer (default: a new key).
    pub root: Option<Signer>,
    /// Extra environment for the server, e.g. `PHB_IDLE_TIMEOUT=3s`. Limits
    /// go here rather than as flags, so a binary without them still starts.
    pub env: Vec<(OsString, OsString)>,
}

/// Why `phb-ledger serve` did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// What it wrote to stderr.
    pub stderr: String,
    /// What the harness saw (exited, timed out).
    pub reason: String,
}

/// A running `phb-ledger serve` child process.
pub struct Server {
    /// The ledger's root signer (its public key is passed on the command line).
    pub root: Signer,
    /// Where the server listens now (changes on restart: port 0).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    data: PathBuf,
    wrapper: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    child: Mutex<Option<Child>>,
    starts: u32,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    /// Starts a server as `options` say; panics if it does not come up.
    pub fn start_with(options: ServerOptions) -> Server {
        let mut s = Server::prepare(options);
        s.spawn();
        s
    }

    /// A server that is not started yet: call `start_again`,
    /// `try_start_again` or `expect_start_failure`.
    pub fn prepare(options: ServerOptions) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("phb-ledger-test")
            .tempdir()
            .expect("creating a temp dir");
        let data = options.data_dir.unwrap_or_else(|| dir.path().join("data"));
        Server {
            root: options.root.unwrap_or_else(|| Signer::generate("root")),
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            data,
            wrapper: options.wrapper,
            env: options.env,
            child: Mutex::new(None),
            starts: 0,
        }
    }

    /// Sets (or replaces) an environment variable for the next starts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Removes an environment variable for the next starts.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// The data directory the server runs on.
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// The wrapper command for the next start (empty: none).
    pub fn set_wrapper(&mut self, wrapper: Vec<OsString>) {
        self.wrapper = wrapper;
    }

    /// A scratch directory that lives as long as the server (not the data dir).
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join(format!("stderr-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        if let Err(f) = self.try_spawn() {
            panic!(
                "phb-ledger did not start: {}; exit status {:?}; stderr:\n{}",
                f.reason, f.status, f.stderr
            );
        }
    }

    /// Starts the server (after `prepare`, `kill` or `terminate`) and
    /// reports, rather than panics, if it does not come up.
    pub fn try_start_again(&mut self) -> Result<(), StartFailure> {
        self.try_spawn()
    }

    /// Starts the server expecting it to refuse: it must exit within
    /// `within` without listening. Panics if it comes up.
    pub fn expect_start_failure(&mut self, within: Duration) -> StartFailure {
        let started = std::time::Instant::now();
        match self.try_spawn() {
            Ok(()) => {
                let stderr = self.stderr();
                self.kill();
                panic!(
                    "phb-ledger was expected to refuse to start but is listening on {}; stderr:\n{stderr}",
                    self.addr
                );
            }
            Err(f) => {
                assert!(
                    f.status.is_some(),
                    "phb-ledger neither started nor exited ({}); stderr:\n{}",
                    f.reason,
                    f.stderr
                );
                assert!(
                    started.elapsed() <= within,
                    "phb-ledger took {:?} to refuse to start (limit {within:?})",
                    started.elapsed()
                );
                f
            }
        }
    }

    /// The process id of the child (the wrapper's, if there is one).
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.id())
    }

    /// Waits up to `timeout` for the server to exit by itself; returns its
    /// status, or `None` if it is still running (it keeps running).
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            {
                let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
                match guard.as_mut().map(|c| c.try_wait()) {
                    None => return None,
                    Some(Ok(Some(status))) => {
                        guard.take();
                        return Some(status);
                    }
                    Some(_) => {}
                }
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_spawn(&mut self) -> Result<(), StartFailure> {
        assert!(
            self.child.get_mut().unwrap().is_none(),
            "server already running"
        );
        self.starts += 1;
        let stderr_path = self.stderr_path();
        let stderr = std::fs::File::create(&stderr_path).expect("creating stderr log");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_phb-ledger"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_phb-ledger")),
        };
        // Its own process group, so `kill` also reaches a wrapper's child.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .arg("serve")
            .arg("--data")
            .arg(self.data_dir())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ledger-id")
            .arg(LEDGER_ID)
            .arg("--root-public-key")
            .arg(self.root.public_key_hex())
            .env("RUST_LOG", "info")
            .env_remove("PHB_DATA")
            .env_remove("PHB_LEDGER_DATA")
            .env_remove("PHB_LEDGER_CONFIG")
            .env_remove("PHB_LISTEN")
            .env_remove("PHB_LEDGER_LISTEN")
            .env_remove("PHB_LEDGER_ID")
            .env_remove("PHB_ROOT_PUBLIC_KEY")
            .env_remove("PHB_LEDGER_ROOT_PUBLIC_KEY")
            // Many test servers run at once: no metrics port unless a test
            // asks for one.
            .env("PHB_LEDGER_METRICS_LISTEN", "")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning phb-ledger (wrapper {:?}): {e}", self.wrapper));
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Keep draining stdout for the life of the child; hand over the
        // listening line when it appears.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(&format!("phb-ledger {LEDGER_ID} listening on ")) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        *self.child.get_mut().unwrap() = Some(child);
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                // Stdout closed (the process is exiting) or the start timed
                // out: give it a moment to exit, then collect what it said.
                let status = self.wait_exit(Duration::from_secs(10));
                self.kill();
                return Err(StartFailure {
                    status,
                    stderr: read_to_string_lossy(&stderr_path),
                    reason: format!("no listening line ({e})"),
                });
            }
        };
        let addr = line
            .rsplit(' ')
            .next()
            .expect("address on the listening line");
        self.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"));
        assert_ne!(self.addr.port(), 0, "server reported port 0");
        Ok(())
    }

    /// A new gRPC connection to the server.
    pub async fn client(&self) -> Client {
        let url = format!("http://{}", self.addr);
        let mut last = None;
        for _ in 0..50 {
            match LedgerServiceClient::connect(url.clone()).await {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not connect to {url}: {last:?}");
    }

    /// SIGKILLs the server and waits for it to die. Takes `&self` so a test
    /// can pull the plug while other tasks are using the server. The whole
    /// process group goes: a wrapper's child (strace's tracee) too.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.kill(); // SIGKILL on unix
            let _ = child.wait();
            wait_group_gone(child.id(), Duration::from_secs(10));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the server to exit.
    /// Returns the exit status, or `None` if it was still running (it is
    /// then SIGKILLed).
    pub fn terminate(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = guard.take()?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("running kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed", child.id());
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // A wrapper may exit before what it runs: wait for the rest.
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                return wait_group_gone(child.id(), left).then_some(status);
            }
            if std::time::Instant::now() >= deadline {
                signal_group(child.id(), libc::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                wait_group_gone(child.id(), Duration::from_secs(10));
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again after `kill` or `terminate`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// True while the child is running.
    pub fn is_running(&self) -> bool {
        match self.child.lock().unwrap().as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Kills the server (if running) and starts it again on the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server's stderr so far (for diagnostics).
    pub fn stderr(&self) -> String {
        read_to_string_lossy(&self.stderr_path())
    }

    /// How many times the server was started (1 after `start`).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// What the `n`-th start (from 1) wrote to stderr.
    pub fn stderr_of_start(&self, n: u32) -> String {
        read_to_string_lossy(&self.dir.path().join(format!("stderr-{n}.log")))
    }

    /// The gRPC health status of `phb.ledger.v1.LedgerService`
    /// (`tonic_health::pb::health_check_response::ServingStatus` as i32).
    pub async fn health(&self) -> Result<i32, tonic::Status> {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("server url")
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "phb.ledger.v1.LedgerService".into(),
            })
            .await?;
        Ok(resp.into_inner().status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to every process in the group `pgid` (each server runs in
/// its own group, led by the spawned child).
fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory
    // is involved.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

/// Waits until no process of group `pgid` is left, SIGKILLing stragglers
/// once `timeout` has passed. True if the group was gone in time.
fn wait_group_gone(pgid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: signal 0 only checks whether the group exists.
        if unsafe { libc::kill(-(pgid as i32), 0) } != 0 {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            signal_group(pgid, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_to_string_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// The code of one append result (0 = written or duplicate).
pub fn result_code(r: &pb::AppendResult) -> i32 {
    r.error.as_ref().map(|e| e.code).unwrap_or(0)
}

/// Asserts a result is OK and freshly written; returns its sequence.
#[track_caller]
pub fn assert_written(r: &pb::AppendResult) -> u64 {
    assert_eq!(result_code(r), 0, "expected OK, got {r:?}");
    assert!(!r.duplicate, "expected a new entry, got a duplicate: {r:?}");
    assert!(r.sequence > 0, "written event without a sequence: {r:?}");
    assert_eq!(r.entry_hash.len(), 32, "entry hash must be 32 bytes: {r:?}");
    r.sequence
}

/// Asserts a result is a fresh refusal with `c`: nothing applied. A refusal
/// by the ledger's rules is recorded (`refusal_sequence` and the recording
/// entry's hash are set); any other refusal records nothing.
#[track_caller]
pub fn assert_refused(r: &pb::AppendResult, c: Code) {
    assert_eq!(
        result_code(r),
        code(c),
        "expected {c:?} ({}), got {r:?}",
        code(c)
    );
    assert_eq!(
        r.sequence, 0,
        "a refused event must not have a sequence: {r:?}"
    );
    assert!(!r.duplicate, "a fresh refusal is not a duplicate: {r:?}");
    if r.refusal_sequence == 0 {
        assert!(
            r.entry_hash.is_empty(),
            "an unrecorded refusal has no entry hash: {r:?}"
        );
    } else {
        assert!(
            is_decision(c) || c == Code::Aborted,
            "only decisions of the rules are recorded: {r:?}"
        );
        assert_eq!(
            r.entry_hash.len(),
            32,
            "a recorded refusal's entry hash: {r:?}"
        );
    }
    let msg = &r.error.as_ref().unwrap().message;
    assert!(!msg.is_empty(), "a refusal must say why: {r:?}");
}

/// The refusals the ledger's rules make about an authenticated, well-formed
/// event: final, and recorded in the log (docs/api.md).
pub fn is_decision(c: Code) -> bool {
    matches!(
        c,
        Code::PermissionDenied | Code::FailedPrecondition | Code::NotFound | Code::AlreadyExists
    )
}

/// Asserts a gRPC call failed with `c`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, c: Code) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected {c:?}, call succeeded with {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), c, "expected {c:?}, got {s:?}");
            s
        }
    }
}

// ---------------------------------------------------------------------------
// The world: a server with registered organisations
// ---------------------------------------------------------------------------

/// Money as exact pence, parsed from the server's two-decimal strings.
pub fn pence(s: &str) -> i64 {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let (int, frac) = digits
        .split_once('.')
        .unwrap_or_else(|| panic!("amount {s:?} has no decimal point"));
    assert_eq!(frac.len(), 2, "amount {s:?} must have exactly two decimals");
    let v: i64 = int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
    if neg {
        -v
    } else {
        v
    }
}

/// Pence as a decimal string of pounds.
pub fn pounds(p: i64) -> String {
    let sign = if p < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", p.abs() / 100, p.abs() % 100)
}

/// Every spending category the ledger allows (docs/api.md, "Spending
/// categories"): the standing plan has a line for each.
pub use phb_domain::categories::ALLOWED as ALLOWED_CATEGORIES;

/// The standing care plan the `open_*` helpers approve: a line of
/// 100,000.00 for every allowed category and no contingency, in force over
/// the budget period. Spending needs a plan in force with a line for its
/// category; tests that are not about plans spend under this one.
pub fn standing_plan() -> Kind {
    let lines: Vec<(String, &str)> = ALLOWED_CATEGORIES
        .iter()
        .map(|c| (format!("line-{c}"), *c))
        .collect();
    let lines: Vec<(&str, &str, &str, &str)> = lines
        .iter()
        .map(|(id, c)| (id.as_str(), *c, "100000.00", "standing line"))
        .collect();
    kinds::plan("standing-plan", &lines, "0.00")
}

/// The id of the harness agreement with `payee_ref` for `category`
/// (`World::agree`).
pub fn agreement_for(payee_ref: &str, category: &str) -> String {
    format!("agr-{payee_ref}-{category}")
}

/// A Payment to `payee_ref` under its harness agreement for `category`
/// (`World::agree`: 1.00 a unit, so the units are the amount), for a
/// service on the first day of the budget period, long ended.
pub fn pay(amount: &str, payee_kind: pb::PayeeKind, payee_ref: &str, category: &str) -> Kind {
    let mut k = kinds::pay(amount, payee_kind, payee_ref, category);
    if let Kind::Payment(p) = &mut k {
        p.agreement_id = agreement_for(payee_ref, category);
        p.units = amount.to_string();
        p.service_from = "2026-04-01".into();
        p.service_to = "2026-04-01".into();
    }
    k
}

/// A running server with a commissioner (two, in fact), payroll provider,
/// third party, account provider and auditor, all registered by root-signed events.
pub struct World {
    pub server: Server,
    pub client: Client,
    pub commissioner: Signer,
    pub commissioner2: Signer,
    pub payroll: Signer,
    pub third_party: Signer,
    pub account: Signer,
    pub auditor: Signer,
    next_id: AtomicU64,
    /// (budget, agreement id) of the harness agreements `pay` approved.
    agreed: Mutex<std::collections::HashSet<(String, String)>>,
}

impl World {
    /// Starts a server and registers the organisations.
    pub async fn new() -> World {
        World::with_server(Server::start()).await
    }

    /// Registers the organisations on a running server with an empty log
    /// (e.g. one started with `Server::start_with`).
    pub async fn with_server(server: Server) -> World {
        let client = server.client().await;
        let w = World {
            client,
            commissioner: Signer::generate("icb-north"),
            commissioner2: Signer::generate("icb-south"),
            payroll: Signer::generate("payroll-co"),
            third_party: Signer::generate("thirdparty-trust"),
            account: Signer::generate("dp-account-bank"),
            auditor: Signer::generate("audit-office"),
            server,
            next_id: AtomicU64::new(1),
            agreed: Mutex::default(),
        };
        use pb::Role;
        let regs = [
            (&w.commissioner, vec![Role::Commissioner]),
            (&w.commissioner2, vec![Role::Commissioner]),
            (&w.payroll, vec![Role::PayrollProvider]),
            (&w.third_party, vec![Role::ThirdParty]),
            (&w.account, vec![Role::AccountProvider]),
            (&w.auditor, vec![Role::Auditor]),
        ];
        let events: Vec<_> = regs
            .iter()
            .map(|(s, roles)| {
                let key = s.public_key().to_bytes();
                w.sign(&w.server.root, "", kinds::register(&s.id, roles, &key))
            })
            .collect();
        let results = w.append_batch(events, true).await;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(assert_written(r), i as u64 + 1, "registration {i}");
        }
        w
    }

    /// A world on `server`, whose ledger already holds `other`'s
    /// organisations (a restored copy of its data directory, say): the same
    /// signers, nothing registered again. New event ids do not repeat
    /// `other`'s.
    pub async fn attach(server: Server, other: &World) -> World {
        let client = server.client().await;
        World {
            client,
            commissioner: other.commissioner.clone(),
            commissioner2: other.commissioner2.clone(),
            payroll: other.payroll.clone(),
            third_party: other.third_party.clone(),
            account: other.account.clone(),
            auditor: other.auditor.clone(),
            server,
            next_id: AtomicU64::new(other.next_id.load(Ordering::Relaxed) + 1_000_000),
            agreed: Mutex::new(other.agreed.lock().unwrap().clone()),
        }
    }

    /// A fresh event id.
    pub fn new_id(&self, tag: &str) -> String {
        format!("{tag}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// An event with a fresh id.
    pub fn event(&self, budget_id: &str, kind: Kind) -> pb::Event {
        event(LEDGER_ID, &self.new_id("ev"), budget_id, kind)
    }

    /// A signed event with a fresh id.
    pub fn sign(&self, signer: &Signer, budget_id: &str, kind: Kind) -> pb::SignedEvent {
        signer.sign(&self.event(budget_id, kind))
    }

    /// Appends signed events; the RPC must succeed and answer every event.
    pub async fn append_batch(
        &self,
        events: Vec<pb::SignedEvent>,
        atomic: bool,
    ) -> Vec<pb::AppendResult> {
        append_events(&self.client, events, atomic).await
    }

    /// Appends one signed event.
    pub async fn append_signed(&self, e: pb::SignedEvent) -> pb::AppendResult {
        self.append_batch(vec![e], false).await.remove(0)
    }

    /// Signs and appends one event of `kind` on `budget_id` by `signer`.
    pub async fn append(&self, signer: &Signer, budget_id: &str, kind: Kind) -> pb::AppendResult {
        let e = self.sign(signer, budget_id, kind);
        self.append_signed(e).await
    }

    /// Appends and asserts it was written; returns the sequence.
    pub async fn ok(&self, signer: &Signer, budget_id: &str, kind: Kind) -> u64 {
        let r = self.append(signer, budget_id, kind).await;
        assert_written(&r)
    }

    /// Appends and asserts it was refused with `c` and that nothing was written.
    pub async fn refused(
        &self,
        signer: &Signer,
        budget_id: &str,
        kind: Kind,
        c: Code,
    ) -> pb::AppendResult {
        let before = self.log_len().await;
        let balances = self.all_balances().await;
        let r = self.append(signer, budget_id, kind).await;
        assert_refused(&r, c);
        if matches!(
            c,
            Code::PermissionDenied | Code::FailedPrecondition | Code::NotFound
        ) {
            assert_eq!(
                r.refusal_sequence,
                before + 1,
                "a signed event refused by the rules is recorded as the next entry: {r:?}"
            );
        }
        let recorded = u64::from(r.refusal_sequence != 0);
        assert_eq!(
            self.log_len().await,
            before + recorded,
            "a refused event is at most recorded, never applied: {r:?}"
        );
        if recorded == 1 {
            let log = self.log().await;
            let entry = &log[(r.refusal_sequence - 1) as usize];
            let refusal = entry.refusal.as_ref().expect("the entry records a refusal");
            assert_eq!(refusal.code as i32, code(c), "{entry:?}");
            assert_eq!(entry.hash, r.entry_hash);
        }
        assert_eq!(
            self.all_balances().await,
            balances,
            "a refused event changes no balance: {r:?}"
        );
        r
    }

    /// Registers a plan facilitator, `facilitator-{budget_id}`, and the
    /// commissioner appoints it on the budget.
    pub async fn appoint_facilitator(&self, budget_id: &str) -> Signer {
        let f = Signer::generate(format!("facilitator-{budget_id}"));
        let root = self.server.root.clone();
        self.ok(
            &root,
            "",
            kinds::register(
                &f.id,
                &[pb::Role::PlanFacilitator],
                &f.public_key().to_bytes(),
            ),
        )
        .await;
        self.ok(
            &self.commissioner.clone(),
            budget_id,
            kinds::appoint_facilitator(&f.id),
        )
        .await;
        f
    }

    /// Opens a budget of `management` (direct payment: the account
    /// provider and payroll provider; third party: the third party) with
    /// no care plan; returns the opening's sequence.
    pub async fn open_without_plan(&self, budget_id: &str, management: pb::Management) -> u64 {
        let (holder, payroll) = match management {
            pb::Management::DirectPayment => (self.account.id.as_str(), self.payroll.id.as_str()),
            pb::Management::ThirdParty => (self.third_party.id.as_str(), ""),
            _ => ("", ""),
        };
        let k = kinds::open(
            &format!("holder-{budget_id}"),
            &self.commissioner.id,
            management,
            holder,
            payroll,
        );
        self.ok(&self.commissioner.clone(), budget_id, k).await
    }

    /// Opens a budget of `management` and approves the standing plan
    /// (`standing_plan`); returns the opening's sequence (the plan's is the
    /// next).
    async fn open_with_plan(&self, budget_id: &str, management: pb::Management) -> u64 {
        let opened = self.open_without_plan(budget_id, management).await;
        self.ok(&self.commissioner.clone(), budget_id, standing_plan())
            .await;
        opened
    }

    /// Opens a direct-payment budget with the account provider and payroll
    /// provider, under the standing plan.
    pub async fn open_direct(&self, budget_id: &str) -> u64 {
        self.open_with_plan(budget_id, pb::Management::DirectPayment)
            .await
    }

    /// Opens a third-party budget held by the third party, under the
    /// standing plan.
    pub async fn open_third_party(&self, budget_id: &str) -> u64 {
        self.open_with_plan(budget_id, pb::Management::ThirdParty)
            .await
    }

    /// Opens a notional budget, under the standing plan.
    pub async fn open_notional(&self, budget_id: &str) -> u64 {
        self.open_with_plan(budget_id, pb::Management::Notional)
            .await
    }

    /// The commissioner approves the harness agreement with `payee_ref`
    /// for `category` on `budget_id` (id `agreement_for`): 1.00 a unit, no
    /// weekly limit, in force over the budget period; returns its sequence.
    pub async fn agree(
        &self,
        budget_id: &str,
        payee_kind: pb::PayeeKind,
        payee_ref: &str,
        category: &str,
    ) -> u64 {
        let mut k = kinds::agreement(
            &agreement_for(payee_ref, category),
            payee_ref,
            category,
            "1.00",
            0,
        );
        if let Kind::ServiceAgreementApproved(a) = &mut k {
            a.payee_kind = payee_kind as i32;
            if payee_kind == pb::PayeeKind::Provider {
                a.payee_sector = pb::Sector::Independent as i32;
                a.unit = pb::Unit::Item as i32;
            }
        }
        let sequence = self.ok(&self.commissioner.clone(), budget_id, k).await;
        let key = (budget_id.to_string(), agreement_for(payee_ref, category));
        self.agreed.lock().unwrap().insert(key);
        sequence
    }

    /// Pays `payee_ref` under its harness agreement for `category`,
    /// approving the agreement first if this budget has none yet; returns
    /// the payment's sequence.
    #[allow(clippy::too_many_arguments)]
    pub async fn pay(
        &self,
        signer: &Signer,
        budget_id: &str,
        amount: &str,
        payee_kind: pb::PayeeKind,
        payee_ref: &str,
        category: &str,
    ) -> u64 {
        let key = (budget_id.to_string(), agreement_for(payee_ref, category));
        let agreed = self.agreed.lock().unwrap().contains(&key);
        if !agreed {
            self.agree(budget_id, payee_kind, payee_ref, category).await;
        }
        self.ok(
            signer,
            budget_id,
            pay(amount, payee_kind, payee_ref, category),
        )
        .await
    }

    /// Allocates (and, unless notional, disburses) money into a budget.
    pub async fn fund(&self, budget_id: &str, allocate: &str, disburse: Option<&str>) {
        let c = self.commissioner.clone();
        self.ok(
            &c,
            budget_id,
            kinds::allocate(allocate, pb::AllocationBasis::NeedsBased),
        )
        .await;
        if let Some(d) = disburse {
            self.ok(&c, budget_id, kinds::disburse(d)).await;
        }
    }

    /// A budget's balance as `reader` sees it (must be allowed).
    pub async fn balance_as(&self, reader: &Signer, budget_id: &str) -> pb::Balance {
        get_balance(&self.client, reader, budget_id)
            .await
            .unwrap_or_else(|s| panic!("GetBalance {budget_id} as {}: {s:?}", reader.id))
    }

    /// A budget's balance as the auditor sees it.
    pub async fn balance(&self, budget_id: &str) -> pb::Balance {
        let a = self.auditor.clone();
        self.balance_as(&a, budget_id).await
    }

    /// The whole log, read by the auditor.
    pub async fn log(&self) -> Vec<pb::LogEntry> {
        read_log(&self.client, &self.auditor, 1).await
    }

    /// The number of entries in the log.
    pub async fn log_len(&self) -> u64 {
        let log = self.log().await;
        log.last().map(|e| e.sequence).unwrap_or(0)
    }

    /// Every balance the auditor can see (all of them), across pages.
    pub async fn all_balances(&self) -> Vec<pb::Balance> {
        list_all(&self.client, &self.auditor, "", 3).await
    }

    /// Reconnects after a server restart.
    pub async fn reconnect(&mut self) {
        self.client = self.server.client().await;
    }
}

/// GetBalance signed by `reader`.
pub async fn get_balance(
    client: &Client,
    reader: &Signer,
    budget_id: &str,
) -> Result<pb::Balance, tonic::Status> {
    let req = reader.request(
        methods::GET_BALANCE,
        pb::GetBalanceRequest {
            budget_id: budget_id.into(),
        },
    );
    let b = client.clone().get_balance(req).await?.into_inner().balance;
    Ok(b.expect("GetBalance answered without a balance"))
}

/// One ListBalances page.
pub async fn list_page(
    client: &Client,
    reader: &Signer,
    commissioner_id: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListBalancesResponse, tonic::Status> {
    let req = reader.request(
        methods::LIST_BALANCES,
        pb::ListBalancesRequest {
            commissioner_id: commissioner_id.into(),
            page_size,
            page_token: page_token.into(),
        },
    );
    Ok(client.clone().list_balances(req).await?.into_inner())
}

/// Every page of ListBalances.
pub async fn list_all(
    client: &Client,
    reader: &Signer,
    commissioner_id: &str,
    page_size: u32,
) -> Vec<pb::Balance> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = list_page(client, reader, commissioner_id, page_size, &token)
            .await
            .expect("ListBalances");
        out.extend(page.balances);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
    panic!("ListBalances never ended");
}

/// ReadLog from `from` to the committed end (follow = false).
pub async fn read_log(client: &Client, reader: &Signer, from: u64) -> Vec<pb::LogEntry> {
    use futures::StreamExt;
    let req = reader.request(
        methods::READ_LOG,
        pb::ReadLogRequest {
            from_sequence: from,
            follow: false,
        },
    );
    let mut stream = client
        .clone()
        .read_log(req)
        .await
        .expect("ReadLog")
        .into_inner();
    let mut out = Vec::new();
    let next = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = stream.next().await {
            out.push(
                item.expect("ReadLog item")
                    .entry
                    .expect("ReadLog item without entry"),
            );
        }
    })
    .await;
    next.expect("ReadLog without follow must end");
    out
}

/// Checks the log as an independent auditor would: contiguous sequences from
/// `first`, each prev_hash the previous hash, each hash recomputed, recorded_at
/// never decreasing, and every signature verified under the signer's key at
/// that point (tracking registrations and rotations from the log itself).
/// Requires the log from sequence 1. Returns the event decoded at each entry,
/// and which entries record a refusal rather than apply their event.
pub fn audit_log(entries: &[pb::LogEntry], root: &ed25519_dalek::VerifyingKey) -> Audited {
    use prost::Message;
    let mut keys: HashMap<String, ed25519_dalek::VerifyingKey> = HashMap::new();
    keys.insert("root".into(), *root);
    let mut prev = [0u8; 32];
    let mut prev_micros = i64::MIN;
    let mut events = Vec::new();
    let mut refused = Vec::new();
    // A failed atomic batch's run of refusal entries is re-run against the
    // keys the batch saw: its registrations and rotations count until the
    // run ends (docs/log-format.md §6), then are undone.
    let mut run: Option<Vec<(String, Option<ed25519_dalek::VerifyingKey>)>> = None;
    for (i, e) in entries.iter().enumerate() {
        let continues = e
            .refusal
            .as_ref()
            .is_some_and(|r| r.in_atomic_batch && !r.first_in_batch);
        if !continues {
            for (org, key) in run.take().unwrap_or_default().into_iter().rev() {
                match key {
                    Some(k) => keys.insert(org, k),
                    None => keys.remove(&org),
                };
            }
        }
        if e.refusal.as_ref().is_some_and(|r| r.first_in_batch) {
            run = Some(Vec::new());
        }
        assert_eq!(e.sequence, i as u64 + 1, "sequences are contiguous from 1");
        assert_eq!(
            e.prev_hash,
            prev.to_vec(),
            "prev_hash of {} is the hash of {}",
            e.sequence,
            i
        );
        let ts = e.recorded_at.as_ref().expect("recorded_at");
        assert_eq!(ts.nanos % 1000, 0, "recorded_at is whole microseconds");
        let micros = ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000);
        assert!(
            micros >= prev_micros,
            "recorded_at goes backwards at {}",
            e.sequence
        );
        let se = e.signed_event.as_ref().expect("signed_event");
        let signed = phb_domain::SignedEvent {
            event: se.event.clone(),
            signer_id: se.signer_id.clone(),
            signature: se.signature.clone(),
        };
        let refusal = e.refusal.as_ref().map(|r| phb_domain::Refusal {
            code: r.code,
            in_atomic_batch: r.in_atomic_batch,
            first_in_batch: r.first_in_batch,
            message: r.message.clone(),
        });
        let h = phb_domain::chain::entry_hash_with(
            &prev,
            e.sequence,
            micros,
            &signed,
            refusal.as_ref(),
        );
        assert_eq!(
            e.hash,
            h.to_vec(),
            "recomputed hash of entry {}",
            e.sequence
        );
        let key = keys
            .get(&se.signer_id)
            .unwrap_or_else(|| panic!("entry {} signed by unknown {:?}", e.sequence, se.signer_id));
        let sig = ed25519_dalek::Signature::from_slice(&se.signature).expect("64-byte signature");
        key.verify_strict(&se.event, &sig).unwrap_or_else(|err| {
            panic!("signature of entry {} does not verify: {err}", e.sequence)
        });
        let ev = pb::Event::decode(se.event.as_slice()).expect("stored event decodes");
        assert_eq!(ev.ledger_id, LEDGER_ID);
        prev = h;
        prev_micros = micros;
        refused.push(refusal.is_some());
        let speculative = refusal
            .as_ref()
            .is_some_and(|r| r.in_atomic_batch && r.code == Code::Aborted as u32);
        if refusal.is_some() && !speculative {
            // Recorded, not applied: it changes no key and no figure.
            events.push(ev);
            continue;
        }
        let org_id = match &ev.kind {
            Some(Kind::OrganisationRegistered(o)) => Some(o.organisation_id.clone()),
            Some(Kind::KeyRotated(o)) => Some(o.organisation_id.clone()),
            _ => None,
        };
        if let (true, Some(org), Some(run)) = (speculative, &org_id, run.as_mut()) {
            run.push((org.clone(), keys.get(org).copied()));
        }
        match &ev.kind {
            Some(Kind::OrganisationRegistered(o)) => {
                assert_eq!(se.signer_id, "root");
                let k: [u8; 32] = o.public_key.as_slice().try_into().unwrap();
                keys.insert(
                    o.organisation_id.clone(),
                    ed25519_dalek::VerifyingKey::from_bytes(&k).unwrap(),
                );
            }
            Some(Kind::KeyRotated(o)) => {
                assert_eq!(se.signer_id, "root");
                let k: [u8; 32] = o.new_public_key.as_slice().try_into().unwrap();
                keys.insert(
                    o.organisation_id.clone(),
                    ed25519_dalek::VerifyingKey::from_bytes(&k).unwrap(),
                );
            }
            _ => {}
        }
        events.push(ev);
    }
    Audited { events, refused }
}

/// What `audit_log` read: the event at each entry (index = sequence - 1),
/// and whether that entry records a refusal.
pub struct Audited {
    pub events: Vec<pb::Event>,
    pub refused: Vec<bool>,
}

impl std::ops::Deref for Audited {
    type Target = [pb::Event];
    fn deref(&self) -> &[pb::Event] {
        &self.events
    }
}

impl IntoIterator for Audited {
    type Item = pb::Event;
    type IntoIter = std::vec::IntoIter<pb::Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

impl<'a> IntoIterator for &'a Audited {
    type Item = &'a pb::Event;
    type IntoIter = std::slice::Iter<'a, pb::Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

impl Audited {
    /// The applied events, in log order.
    pub fn applied(&self) -> impl Iterator<Item = &pb::Event> {
        self.events
            .iter()
            .zip(&self.refused)
            .filter(|(_, r)| !**r)
            .map(|(e, _)| e)
    }
}

/// Recomputes every budget's figures from the log (in pence): (allocated, paid_in, spent, stopped).
pub fn replay_figures(audited: &Audited) -> HashMap<String, (i64, i64, i64, bool)> {
    let mut m: HashMap<String, (i64, i64, i64, bool)> = HashMap::new();
    for e in audited.applied() {
        let b = m.entry(e.budget_id.clone()).or_default();
        match &e.kind {
            Some(Kind::Allocation(a)) => b.0 += pence_in(&a.amount),
            Some(Kind::ReviewAdjustment(r)) => b.0 += pence_in(&r.delta),
            Some(Kind::Disbursement(d)) => b.1 += pence_in(&d.amount),
            Some(Kind::Payment(p)) => b.2 += pence_in(&p.amount),
            Some(Kind::Purchase(p)) => b.2 += pence_in(&p.amount),
            Some(Kind::BudgetStopped(_)) => b.3 = true,
            _ => {}
        }
    }
    m.remove("");
    m
}

/// Pence from an amount as a client wrote it (0-2 decimals, optional '-').
pub fn pence_in(s: &str) -> i64 {
    let (neg, d) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let (int, frac) = d.split_once('.').unwrap_or((d, ""));
    let frac = format!("{frac:0<2}");
    let v = int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
    if neg {
        -v
    } else {
        v
    }
}

/// GetHoldings signed by `reader`.
pub async fn get_holdings(
    client: &Client,
    reader: &Signer,
    organisation_id: &str,
) -> Result<pb::GetHoldingsResponse, tonic::Status> {
    let req = reader.request(
        methods::GET_HOLDINGS,
        pb::GetHoldingsRequest {
            organisation_id: organisation_id.into(),
        },
    );
    Ok(client.clone().get_holdings(req).await?.into_inner())
}

/// One GetBudgetStatement page signed by `reader`.
pub async fn statement_page(
    client: &Client,
    reader: &Signer,
    budget_id: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::GetBudgetStatementResponse, tonic::Status> {
    let req = reader.request(
        methods::GET_BUDGET_STATEMENT,
        pb::GetBudgetStatementRequest {
            budget_id: budget_id.into(),
            page_size,
            page_token: page_token.into(),
        },
    );
    Ok(client.clone().get_budget_statement(req).await?.into_inner())
}

/// Every row of a budget's statement, across pages of `page_size`.
pub async fn statement_all(
    client: &Client,
    reader: &Signer,
    budget_id: &str,
    page_size: u32,
) -> Result<Vec<pb::StatementRow>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..100_000 {
        let page = statement_page(client, reader, budget_id, page_size, &token).await?;
        assert_eq!(page.budget_id, budget_id);
        out.extend(page.rows);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
    panic!("GetBudgetStatement never ended");
}

/// One ListFlags page signed by `reader`.
pub async fn list_flags(
    client: &Client,
    reader: &Signer,
    req: pb::ListFlagsRequest,
) -> Result<pb::ListFlagsResponse, tonic::Status> {
    let req = reader.request(methods::LIST_FLAGS, req);
    Ok(client.clone().list_flags(req).await?.into_inner())
}

/// Every flag `filter` selects, as `reader` sees them, page by page (pages
/// of 2, so paging is exercised too).
pub async fn all_flags(
    client: &Client,
    reader: &Signer,
    filter: pb::ListFlagsRequest,
) -> Vec<pb::Flag> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_flags(
            client,
            reader,
            pb::ListFlagsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..filter.clone()
            },
        )
        .await
        .unwrap_or_else(|s| panic!("ListFlags as {}: {s:?}", reader.id));
        assert!(page.flags.len() <= 2);
        out.extend(page.flags);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The codes of `flags`, as their proto names without FLAG_CODE_.
pub fn flag_codes(flags: &[pb::Flag]) -> Vec<String> {
    flags
        .iter()
        .map(|f| {
            pb::FlagCode::try_from(f.code)
                .map(|c| c.as_str_name().trim_start_matches("FLAG_CODE_").to_string())
                .unwrap_or_else(|_| format!("?{}", f.code))
        })
        .collect()
}

/// What an auditor derives on its own machine: the log as read over
/// ReadLog, replayed with the domain crate's `Ledger::replay` (every rule
/// re-decided) and folded into a fresh `ReadModel` — the same fold the
/// server makes, run without trusting the server.
pub fn auditor_read_model(
    entries: &[pb::LogEntry],
    root: &ed25519_dalek::VerifyingKey,
) -> phb_domain::ReadModel {
    use phb_domain::Projection;
    let mut ledger = phb_domain::Ledger::new(LEDGER_ID, *root);
    let mut read = phb_domain::ReadModel::new(LEDGER_ID, *root);
    for e in entries {
        let entry = logfile::entry_from_pb(e);
        let event = ledger
            .replay(&entry)
            .unwrap_or_else(|err| panic!("entry {} does not replay: {err}", e.sequence));
        read.apply(&phb_domain::Committed::of(&entry, &event));
    }
    ledger.finish_replay();
    read
}
