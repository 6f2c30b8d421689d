//! Storage faults, through the real binary on a real data directory: a
//! read-only data directory at start-up, storage turning read-only under a
//! running server, a full disk, a torn tail after a crash, a corrupted entry
//! in the middle of the log, and a damaged sled index.
//!
//! The invariant behind every case: **no acknowledgement without the event
//! being stored**, a refusal the client can act on (UNAVAILABLE = retry the
//! same signed event later), health that tells operators when only a restart
//! helps, and after a restart on healthy storage every acknowledged event is
//! there exactly once, the chain verifies and the balances equal a replay.
//!
//! Fault sources. The mount-based ones need CAP_SYS_ADMIN (root here and in
//! CI); when `mount` is refused for lack of privilege (or with
//! `PHB_FAULTS_UNPRIVILEGED=1`) each case falls back to a source that needs
//! none, and every case prints which mechanism it used:
//!
//! | case | privileged | unprivileged fallback |
//! | --- | --- | --- |
//! | read-only at start | tmpfs remounted `ro` | strace injects EROFS into `openat` of the data files |
//! | read-only while running | ext4 image on a loop device, `remount,abort` (the kernel refuses a plain `remount,ro` while the log is open for writing: EBUSY) | strace injects EROFS into the log's `pwrite64`/`ftruncate` |
//! | disk full | tmpfs with `size=2m`, then a ballast file | `prlimit --fsize` (EFBIG; the server ignores SIGXFSZ) |
//!
//! One allowance, for the kernel and only for the ext4 abort: while ext4
//! aborts its journal (tens of milliseconds), fdatasync can return 0 for data
//! that is then lost, and the server's check after it (an empty write) only
//! fails once the abort is complete. An acknowledgement that *arrived* after
//! the abort began may therefore be lost; the test prints it and retries the
//! event. Everything acknowledged before the abort began must survive.

mod common;

use common::logfile::{self, Span};
use common::*;
use phb_client::kinds;
use phb_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

/// gRPC UNAVAILABLE as carried in `AppendResult.error.code`.
const UNAVAILABLE: i32 = 14;
/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;
/// How long a server may take to refuse to start.
const REFUSE_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Fault sources
// ---------------------------------------------------------------------------

/// A mount made by the test; unmounted when dropped, also when the test
/// fails, so nothing is left mounted. Declare it after the directory it is
/// mounted on and before the server that uses it (drop order is reverse).
struct Mount {
    path: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            let done = Command::new("umount")
                .arg(&self.path)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy: detach it so it disappears once the last user goes.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Why a mount could not be made.
#[derive(Debug)]
enum MountError {
    /// No privilege (EPERM): use the unprivileged fallback.
    NotPermitted(String),
    /// Anything else is a test failure.
    Failed(String),
}

fn forced_unprivileged() -> bool {
    std::env::var_os("PHB_FAULTS_UNPRIVILEGED").is_some_and(|v| v == "1")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}): {}", out.status, text.trim()))
    }
}

fn mount(args: &[&str], at: &Path) -> Result<Mount, MountError> {
    if forced_unprivileged() {
        return Err(MountError::NotPermitted("PHB_FAULTS_UNPRIVILEGED=1".into()));
    }
    std::fs::create_dir_all(at).expect("creating a mount point");
    match run(Command::new("mount").args(args).arg(at)) {
        Ok(_) => Ok(Mount {
            path: at.to_path_buf(),
        }),
        Err(e) => {
            let l = e.to_lowercase();
            if [
                "permission denied",
                "not permitted",
                "must be superuser",
                "only root",
            ]
            .iter()
            .any(|p| l.contains(p))
            {
                Err(MountError::NotPermitted(e))
            } else {
                Err(MountError::Failed(e))
            }
        }
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Result<Mount, MountError> {
    let opts = format!("size={size},mode=0700");
    mount(&["-t", "tmpfs", "-o", &opts, "tmpfs"], at)
}

/// A fresh ext4 filesystem in an image file, mounted on a loop device.
/// No loop devices or no e2fsprogs count as "not permitted here": the
/// caller falls back (and says so).
fn mount_ext4_image(image: &Path, at: &Path) -> Result<Mount, MountError> {
    if forced_unprivileged() {
        return Err(MountError::NotPermitted("PHB_FAULTS_UNPRIVILEGED=1".into()));
    }
    if find_tool("mkfs.ext4").is_none() || find_tool("e2fsck").is_none() {
        return Err(MountError::NotPermitted(
            "mkfs.ext4/e2fsck not installed (apt-get install e2fsprogs)".into(),
        ));
    }
    std::fs::File::create(image)
        .and_then(|f| f.set_len(48 * 1024 * 1024))
        .expect("creating the image file");
    run(Command::new(need("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F"])
        .arg(image))
    .map_err(MountError::Failed)?;
    let img = image.to_string_lossy().to_string();
    match mount(&["-t", "ext4", "-o", "loop", &img], at) {
        Err(MountError::Failed(e)) if e.contains("loop") => Err(MountError::NotPermitted(e)),
        other => other,
    }
}

fn remount(at: &Path, options: &str) -> Result<String, String> {
    run(Command::new("mount")
        .arg("-o")
        .arg(format!("remount,{options}"))
        .arg(at))
}

/// The mount options of `at` in /proc/self/mounts.
fn mount_options(at: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    let at = at.to_string_lossy();
    mounts
        .lines()
        .rfind(|l| l.split(' ').nth(1) == Some(&*at))
        .and_then(|l| l.split(' ').nth(3))
        .unwrap_or("")
        .to_string()
}

fn find_tool(tool: &str) -> Option<OsString> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
        .map(PathBuf::into_os_string)
}

fn need(tool: &str, package: &str) -> OsString {
    find_tool(tool).unwrap_or_else(|| {
        panic!("{tool} is needed for this test's fault source: apt-get install {package}")
    })
}

/// `strace` tracing `syscalls` that touch `paths` and tampering with them as
/// `injects` say (`-e inject=...` specs, e.g. `openat:error=EROFS`). Needs no
/// privilege beyond tracing one's own child.
fn strace_inject(paths: &[PathBuf], syscalls: &str, injects: &[&str]) -> Vec<OsString> {
    let mut w: Vec<OsString> = vec![
        need("strace", "strace"),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    for p in paths {
        w.push("-P".into());
        w.push(p.clone().into_os_string());
    }
    w.push("-e".into());
    w.push(format!("trace={syscalls}").into());
    for i in injects {
        w.push("-e".into());
        w.push(format!("inject={i}").into());
    }
    w.push("--".into());
    w
}

// ---------------------------------------------------------------------------
// Bookkeeping: what the clients were told
// ---------------------------------------------------------------------------

/// Every answer the test received during a fault.
#[derive(Default)]
struct Book {
    /// Acknowledged: event id -> (sequence, entry hash, the signed event).
    acked: HashMap<String, (u64, Vec<u8>, pb::SignedEvent)>,
    /// Answered UNAVAILABLE: not acknowledged, perhaps stored; retried later.
    unavailable: Vec<pb::SignedEvent>,
    /// The first UNAVAILABLE message.
    first_refusal: Option<String>,
    /// When each acknowledgement arrived (event id -> µs since the epoch).
    ack_arrived: HashMap<String, i64>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

impl Book {
    fn highest_acked(&self) -> u64 {
        self.acked.values().map(|a| a.0).max().unwrap_or(0)
    }
}

fn event_id(e: &pb::SignedEvent) -> String {
    <pb::Event as prost::Message>::decode(e.event.as_slice())
        .expect("event decodes")
        .event_id
}

/// Appends `events`; every result must be written (booked as acked) or
/// UNAVAILABLE (booked as unavailable). A call-level UNAVAILABLE counts for
/// every event. Returns how many were refused.
async fn append_booked(client: &Client, events: Vec<pb::SignedEvent>, book: &mut Book) -> usize {
    let mut client = client.clone();
    let call = client.append(pb::AppendRequest {
        events: events.clone(),
        atomic: false,
    });
    let results = match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(Ok(resp)) => {
            let arrived = now_micros();
            let results = resp.into_inner().results;
            for r in &results {
                if result_code(r) == 0 {
                    book.ack_arrived.insert(r.event_id.clone(), arrived);
                }
            }
            results
        }
        Ok(Err(s)) if s.code() == Code::Unavailable => {
            book.first_refusal.get_or_insert(s.message().to_string());
            book.unavailable.extend(events.iter().cloned());
            return events.len();
        }
        Ok(Err(s)) => panic!("Append failed with {s:?}, expected per-event results"),
        Err(_) => panic!("Append did not answer within 30 s"),
    };
    assert_eq!(results.len(), events.len(), "one result per event");
    let mut refused = 0;
    for (r, e) in results.iter().zip(events) {
        assert_eq!(r.event_id, event_id(&e), "results in request order");
        match result_code(r) {
            0 => {
                assert!(!r.duplicate, "a new event answered as duplicate: {r:?}");
                assert_written(r);
                let old = book
                    .acked
                    .insert(r.event_id.clone(), (r.sequence, r.entry_hash.clone(), e));
                assert!(old.is_none(), "{} acknowledged twice", r.event_id);
            }
            UNAVAILABLE => {
                assert_refused(r, Code::Unavailable);
                let msg = &r.error.as_ref().unwrap().message;
                book.first_refusal.get_or_insert(msg.clone());
                book.unavailable.push(e);
                refused += 1;
            }
            other => panic!("a storage fault must answer UNAVAILABLE (14), got {other}: {r:?}"),
        }
    }
    refused
}

/// A purchase of 0.01 on a notional budget (the commissioner signs), with a
/// long description so records are about half a kilobyte.
fn purchase(w: &World, budget: &str, n: usize) -> pb::SignedEvent {
    let c = w.commissioner.clone();
    let description = format!("item {n:07} {}", "x".repeat(230));
    w.sign(
        &c,
        budget,
        kinds::buy(
            "0.01",
            "equipment",
            &format!("supplier-{}", n % 7),
            &description,
        ),
    )
}

/// A notional budget with plenty of money for 0.01 purchases.
async fn open_spending_budget(w: &World, b: &str) {
    w.open_notional(b).await;
    w.fund(b, "1000000.00", None).await;
}

/// Polls health until it is `want` (or 10 s pass); returns what it saw last.
async fn wait_health(server: &Server, want: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = server.health().await.expect("health check");
        if h == want || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a restart on healthy storage: the chain verifies, every
/// acknowledged event is there exactly once at its sequence with its hash,
/// no event id appears twice, and every balance equals a replay of the log.
async fn check_survivors(w: &World, book: &Book) -> Vec<pb::LogEntry> {
    let log = w.log().await;
    let events = audit_log(&log, &w.server.root.public_key());
    let mut ids = HashSet::new();
    for e in &events {
        assert!(
            ids.insert(e.event_id.clone()),
            "{} stored twice",
            e.event_id
        );
    }
    for (id, (seq, hash, signed)) in &book.acked {
        let entry = log.get((*seq - 1) as usize).unwrap_or_else(|| {
            panic!(
                "acknowledged {id} at sequence {seq} is lost: the log ends at {}",
                log.len()
            )
        });
        assert_eq!(&entry.hash, hash, "acknowledged entry {seq} changed");
        assert_eq!(entry.signed_event.as_ref(), Some(signed), "entry {seq}");
    }
    let figures = replay_figures(&events);
    let balances = w.all_balances().await;
    assert_eq!(balances.len(), figures.len(), "one balance per budget");
    for b in &balances {
        let f = figures
            .get(&b.budget_id)
            .unwrap_or_else(|| panic!("balance for {} not in the log", b.budget_id));
        assert_eq!(
            (
                pence(&b.allocated),
                pence(&b.paid_in),
                pence(&b.spent),
                b.stopped
            ),
            *f,
            "balance of {} equals a replay of the log",
            b.budget_id
        );
    }
    log
}

/// Retries every event that was answered UNAVAILABLE: each must now be
/// written or answered as a duplicate (if it reached the disk after all).
async fn retry_unavailable(w: &World, book: &mut Book) -> (usize, usize) {
    let (mut written, mut duplicates) = (0, 0);
    let retry = std::mem::take(&mut book.unavailable);
    for chunk in retry.chunks(500) {
        let results = w.append_batch(chunk.to_vec(), false).await;
        for (r, e) in results.iter().zip(chunk) {
            assert_eq!(result_code(r), 0, "retry after recovery: {r:?}");
            if r.duplicate {
                duplicates += 1;
            } else {
                written += 1;
            }
            book.acked.insert(
                r.event_id.clone(),
                (r.sequence, r.entry_hash.clone(), e.clone()),
            );
        }
    }
    (written, duplicates)
}

/// The log file as it is on disk must be whole records only, ending at `head`.
fn assert_log_file_clean(data: &Path, head: u64) -> Vec<Span> {
    let bytes = std::fs::read(logfile::log_path(data)).expect("reading the log file");
    let spans = logfile::spans(&bytes);
    assert_eq!(
        spans.last().map(|s| s.sequence).unwrap_or(0),
        head,
        "the log file ends at the acknowledged head"
    );
    assert_eq!(
        spans.last().map(|s| s.end()).unwrap_or(16),
        bytes.len() as u64,
        "no partial record left behind in the log file"
    );
    spans
}

/// The server's WARN and ERROR lines (at most `max`), for the test output.
fn warnings(stderr: &str, max: usize) -> String {
    stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(max)
        .map(|l| format!("    {}", l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes ANSI colour codes from the server's log output.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Read-only data directory at start-up
// ---------------------------------------------------------------------------

/// A data directory on read-only storage: the server refuses to start, with
/// a non-zero exit and an error naming the directory and the problem; once
/// the storage is writable again everything is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_data_dir_at_startup_is_a_clear_error() {
    let scratch = tempfile::Builder::new()
        .prefix("phb-ro-start")
        .tempdir()
        .unwrap();
    let mnt = scratch.path().join("mnt");
    let mount_guard = match mount_tmpfs(&mnt, "16m") {
        Ok(m) => Some(m),
        Err(MountError::NotPermitted(e)) => {
            eprintln!("mount not permitted ({e}); using strace EROFS injection");
            std::fs::create_dir_all(&mnt).unwrap();
            None
        }
        Err(MountError::Failed(e)) => panic!("mounting a tmpfs: {e}"),
    };
    let data = mnt.join("data");
    let fresh = mnt.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let mut w = World::with_server(Server::start_with(ServerOptions {
        data_dir: Some(data.clone()),
        ..Default::default()
    }))
    .await;
    open_spending_budget(&w, "ro-start").await;
    for i in 0..5 {
        let e = purchase(&w, "ro-start", i);
        assert_written(&w.append_signed(e).await);
    }
    let before = w.log().await;
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop: {status:?}"
    );

    let mechanism = if mount_guard.is_some() {
        remount(&mnt, "ro").expect("remounting the tmpfs read-only");
        assert!(
            mount_options(&mnt).split(',').any(|o| o == "ro"),
            "{} is read-only now",
            mnt.display()
        );
        "tmpfs remounted ro"
    } else {
        w.server.set_wrapper(strace_inject(
            &[logfile::log_path(&data)],
            "openat",
            &["openat:error=EROFS"],
        ));
        "strace: openat of the log fails EROFS"
    };
    eprintln!("read-only at start-up via {mechanism}");

    // An existing ledger on read-only storage.
    let f = w.server.expect_start_failure(REFUSE_WITHIN);
    let stderr = plain(&f.stderr);
    eprintln!("refusal (existing ledger):\n{stderr}");
    assert!(
        f.status.is_some_and(|s| !s.success()),
        "non-zero exit: {:?}",
        f.status
    );
    assert!(
        stderr.contains(&data.display().to_string()),
        "the error names the data directory {}:\n{stderr}",
        data.display()
    );
    assert!(
        stderr.contains("Read-only file system"),
        "the error says the storage is read-only:\n{stderr}"
    );

    // A new, empty data directory on read-only storage.
    let mut empty = Server::prepare(ServerOptions {
        data_dir: Some(fresh.clone()),
        wrapper: if mount_guard.is_some() {
            Vec::new()
        } else {
            strace_inject(
                &[fresh.join("ledger-id")],
                "openat",
                &["openat:error=EROFS"],
            )
        },
        ..Default::default()
    });
    let f = empty.expect_start_failure(REFUSE_WITHIN);
    let stderr = plain(&f.stderr);
    eprintln!("refusal (new ledger):\n{stderr}");
    assert!(f.status.is_some_and(|s| !s.success()), "{:?}", f.status);
    assert!(
        stderr.contains(&fresh.display().to_string()) && stderr.contains("Read-only file system"),
        "the error names {} and the read-only storage:\n{stderr}",
        fresh.display()
    );

    // Writable again: the same ledger, and it takes writes.
    if mount_guard.is_some() {
        remount(&mnt, "rw").expect("remounting read-write");
    } else {
        w.server.set_wrapper(Vec::new());
    }
    w.server.start_again();
    w.reconnect().await;
    assert_eq!(w.log().await, before, "the ledger is intact");
    let e = purchase(&w, "ro-start", 99);
    assert_eq!(
        assert_written(&w.append_signed(e).await),
        before.len() as u64 + 1
    );
    w.server.kill();
}

// ---------------------------------------------------------------------------
// Storage turning read-only under a running server
// ---------------------------------------------------------------------------

/// The filesystem holding the log turns read-only while clients are
/// writing: every write from then on is answered UNAVAILABLE, nothing is
/// acknowledged that is not stored, reads keep working, health goes
/// NOT_SERVING; after a restart on writable storage every acknowledged event
/// is there exactly once and the refused ones can be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_turning_read_only_while_running() {
    let scratch = tempfile::Builder::new()
        .prefix("phb-ro-live")
        .tempdir()
        .unwrap();
    let mnt = scratch.path().join("mnt");
    let image = scratch.path().join("ext4.img");
    let mut mount_guard = None;
    match mount_ext4_image(&image, &mnt) {
        Ok(m) => mount_guard = Some(m),
        Err(MountError::NotPermitted(e)) => {
            eprintln!("no ext4 loop mount here ({e}); using strace EROFS injection")
        }
        Err(MountError::Failed(e)) => panic!("mounting an ext4 image on a loop device: {e}"),
    }
    let data = mnt.join("data");
    let setup_writes = 8usize;
    let mut options = ServerOptions {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    if mount_guard.is_none() {
        std::fs::create_dir_all(&mnt).unwrap();
        // Groups written before the fault: the registrations, the budget,
        // its funding and `setup_writes` purchases, one group each, and each
        // group is two pwrite64 calls (the records, then the empty write
        // that checks the fdatasync). Every pwrite64 of the log after them
        // fails EROFS, and so does cutting the failed write back
        // (ftruncate), as on a read-only filesystem.
        let from = 2 * (3 + setup_writes) + 1;
        options.wrapper = strace_inject(
            &[logfile::log_path(&data)],
            "pwrite64,ftruncate",
            &[
                &format!("pwrite64:error=EROFS:when={from}+"),
                // Only the failure path cuts the log back: fail it always.
                "ftruncate:error=EROFS",
            ],
        );
    }
    let mechanism = if mount_guard.is_some() {
        "ext4 on a loop device, remount,abort"
    } else {
        "strace: pwrite64/ftruncate of the log fail EROFS"
    };
    let w = World::with_server(Server::start_with(options)).await;
    let b = "ro-live";
    open_spending_budget(&w, b).await;
    let mut book = Book::default();
    for i in 0..setup_writes {
        let refused = append_booked(&w.client, vec![purchase(&w, b, i)], &mut book).await;
        assert_eq!(refused, 0, "before the fault every write is stored");
    }
    assert_eq!(w.server.health().await.unwrap(), SERVING);

    // Writers keep appending; the fault strikes while they do.
    let w = std::sync::Arc::new(w);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let w = w.clone();
            tokio::spawn(async move {
                let client = w.server.client().await;
                let mut book = Book::default();
                let mut refusals = 0;
                let started = Instant::now();
                for i in 0.. {
                    let e = purchase(&w, "ro-live", 1000 * (t + 1) + i);
                    refusals += append_booked(&client, vec![e], &mut book).await;
                    if refusals >= 3 || started.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                }
                book
            })
        })
        .collect();
    // When the filesystem was being aborted (µs since the epoch).
    let mut abort_window = (i64::MAX, i64::MAX);
    if mount_guard.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // What an operator would try first. Linux refuses it while files
        // are open for writing; if it ever succeeds, it is the fault.
        match remount(&mnt, "ro") {
            Ok(_) => eprintln!("remount,ro succeeded under the running server"),
            Err(e) => {
                eprintln!("remount,ro refused as expected while the log is open for writing: {e}");
                abort_window.0 = now_micros();
                remount(&mnt, "abort").expect("remount,abort");
                abort_window.1 = now_micros();
            }
        }
        // ext4 marks an aborted filesystem `emergency_ro` (writes fail EROFS).
        let opts = mount_options(&mnt);
        assert!(
            opts.split(',').any(|o| o == "ro" || o == "emergency_ro"),
            "{} should be read-only now: {opts}",
            mnt.display()
        );
    }
    eprintln!("read-only while running via {mechanism}");
    for t in writers {
        let b2 = t.await.expect("writer task");
        assert!(
            !b2.unavailable.is_empty(),
            "a writer never saw the fault (acked {})",
            b2.acked.len()
        );
        book.first_refusal = book.first_refusal.take().or(b2.first_refusal);
        book.unavailable.extend(b2.unavailable);
        book.ack_arrived.extend(b2.ack_arrived);
        for (k, v) in b2.acked {
            assert!(book.acked.insert(k, v).is_none());
        }
    }
    let mut w = std::sync::Arc::try_unwrap(w)
        .ok()
        .expect("writers let go of the world");
    eprintln!(
        "acknowledged {} (through sequence {}), refused {}; first refusal: {:?}",
        book.acked.len(),
        book.highest_acked(),
        book.unavailable.len(),
        book.first_refusal
    );

    // From now on every write is refused, health says a restart is needed,
    // reads still work and show exactly what was acknowledged.
    let e = purchase(&w, b, 999_999);
    let r = w.append_signed(e.clone()).await;
    assert_refused(&r, Code::Unavailable);
    assert!(
        r.error.as_ref().unwrap().message.contains("restart"),
        "the refusal says a restart is needed: {r:?}"
    );
    book.unavailable.push(e);
    assert_eq!(
        wait_health(&w.server, NOT_SERVING).await,
        NOT_SERVING,
        "health goes NOT_SERVING when storage refuses writes"
    );
    let live = w.log().await;
    let head = live.last().unwrap().sequence;
    assert_eq!(
        head,
        book.highest_acked(),
        "readers see exactly the acknowledged entries, nothing unacknowledged"
    );
    assert_eq!(
        pence(&w.balance(b).await.spent),
        replay_figures(&audit_log(&live, &w.server.root.public_key()))[b].2
    );
    // An aborted ext4 fails fdatasync with EIO and later writes with EROFS.
    let stderr = plain(&w.server.stderr());
    assert!(
        stderr.contains("Read-only file system") || stderr.contains("Input/output error"),
        "the cause is logged:\n{stderr}"
    );
    eprintln!("server:\n{}", warnings(&stderr, 4));

    // Restart on writable storage.
    w.server.kill();
    if let Some(m) = mount_guard.take() {
        drop(m);
        // The journal was aborted: what an operator runs before mounting
        // again. 0 = clean, 1 = errors corrected.
        let st = Command::new(need("e2fsck", "e2fsprogs"))
            .args(["-f", "-y"])
            .arg(&image)
            .output()
            .expect("e2fsck");
        assert!(matches!(st.status.code(), Some(0 | 1)), "e2fsck: {st:?}");
        eprintln!(
            "e2fsck ({}): {}",
            st.status,
            String::from_utf8_lossy(&st.stdout)
                .trim()
                .replace('\n', "; ")
        );
        let img = image.to_string_lossy().to_string();
        mount_guard = Some(
            mount(&["-t", "ext4", "-o", "loop", &img], &mnt)
                .expect("mounting the image again read-write"),
        );
    } else {
        w.server.set_wrapper(Vec::new());
    }
    w.server.start_again();
    w.reconnect().await;
    eprintln!(
        "restarted on writable storage:\n{}",
        warnings(&plain(&w.server.stderr()), 6)
    );
    // The kernel's window. While ext4 aborts its journal, fdatasync can
    // return 0 for data that is then lost, and writes still succeed until the
    // abort is complete (seen about once in 25 runs: a group made "durable"
    // by fdatasync and the check after it, 18 ms into the 30 ms abort, was
    // not on disk afterwards). No check by the application can tell; so an
    // acknowledgement that *arrived* after the abort began may be lost, and
    // is then retried. Everything acknowledged before it began must be there.
    let head = w.log_len().await;
    let mut lost: Vec<(u64, String)> = book
        .acked
        .iter()
        .filter(|(_, a)| a.0 > head)
        .map(|(id, a)| (a.0, id.clone()))
        .collect();
    lost.sort();
    for (seq, id) in &lost {
        let arrived = book.ack_arrived[id];
        assert!(
            arrived >= abort_window.0,
            "{id}, acknowledged at sequence {seq} before the filesystem began to fail ({} µs before), is lost",
            abort_window.0 - arrived
        );
        let (_, _, e) = book.acked.remove(id).unwrap();
        book.unavailable.push(e);
    }
    if !lost.is_empty() {
        eprintln!(
            "lost in the kernel's abort window (acknowledged after the abort began; it ran {} µs): sequences {:?}",
            abort_window.1 - abort_window.0,
            lost.iter().map(|l| l.0).collect::<Vec<_>>()
        );
    }
    let log = check_survivors(&w, &book).await;
    eprintln!(
        "after restart the log ends at {} ({} acknowledged)",
        log.len(),
        book.acked.len()
    );
    let (written, dup) = retry_unavailable(&w, &mut book).await;
    eprintln!("retried the refused events: {written} written, {dup} already stored");
    check_survivors(&w, &book).await;
    assert_eq!(w.server.health().await.unwrap(), SERVING);
    w.server.kill();
    drop(mount_guard);
}

// ---------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------

/// With room on the disk again, a write is written, unless the storage
/// failed in a way only a restart mends (sled's IO errors are sticky and
/// surface at the next index operation): then the refusal says so and health
/// is NOT_SERVING. Returns whether it was written.
async fn write_with_room(w: &World, e: pb::SignedEvent, book: &mut Book) -> bool {
    let r = w.append_signed(e.clone()).await;
    if result_code(&r) == 0 {
        let seq = assert_written(&r);
        book.acked
            .insert(r.event_id.clone(), (seq, r.entry_hash.clone(), e));
        return true;
    }
    assert_refused(&r, Code::Unavailable);
    let msg = &r.error.as_ref().unwrap().message;
    assert!(
        msg.contains("restart"),
        "with room again, a refusal must say a restart is needed: {msg}"
    );
    assert_eq!(
        w.server.health().await.unwrap(),
        NOT_SERVING,
        "a refusal that needs a restart comes with health NOT_SERVING"
    );
    book.unavailable.push(e);
    false
}

/// Appends batches until storage refuses; returns the number of rounds.
async fn fill_until_refused(w: &World, b: &str, book: &mut Book, next: &mut usize) -> usize {
    for round in 0..2000 {
        let events: Vec<_> = (0..50).map(|k| purchase(w, b, *next + k)).collect();
        *next += 50;
        if append_booked(&w.client, events, book).await > 0 {
            return round + 1;
        }
    }
    panic!(
        "storage never filled up: {} events acknowledged",
        book.acked.len()
    );
}

/// A full disk: appends are answered UNAVAILABLE, never falsely
/// acknowledged; readers see only acknowledged entries; the file holds no
/// partial record; after a restart with room again everything acknowledged
/// is there exactly once, the chain verifies, balances equal a replay, and
/// writes work. With a tmpfs, also: the log's own write hitting ENOSPC is cut
/// back, and writes resume without a restart once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_refused_and_nothing_false_is_acknowledged() {
    let scratch = tempfile::Builder::new()
        .prefix("phb-full")
        .tempdir()
        .unwrap();
    let mnt = scratch.path().join("mnt");
    const FSIZE: u64 = 1024 * 1024;
    let (mut mount_guard, wrapper, mechanism) = match mount_tmpfs(&mnt, "2m") {
        Ok(m) => (Some(m), Vec::new(), "tmpfs size=2m".to_string()),
        Err(MountError::NotPermitted(e)) => {
            eprintln!("mount not permitted ({e}); using RLIMIT_FSIZE");
            std::fs::create_dir_all(&mnt).unwrap();
            let w = vec![
                need("prlimit", "util-linux"),
                format!("--fsize={FSIZE}").into(),
                "--".into(),
            ];
            (None, w, format!("prlimit --fsize={FSIZE} (EFBIG)"))
        }
        Err(MountError::Failed(e)) => panic!("mounting a tmpfs: {e}"),
    };
    eprintln!("disk full via {mechanism}");
    let data = mnt.join("data");
    let mut w = World::with_server(Server::start_with(ServerOptions {
        data_dir: Some(data.clone()),
        wrapper,
        ..Default::default()
    }))
    .await;
    let b = "full-1";
    open_spending_budget(&w, b).await;
    let mut book = Book::default();
    let mut next = 0usize;

    // Phase 1: fill with appends until storage refuses.
    let rounds = fill_until_refused(&w, b, &mut book, &mut next).await;
    for _ in 0..3 {
        let e = purchase(&w, b, next);
        next += 1;
        append_booked(&w.client, vec![e], &mut book).await;
    }
    let health = w.server.health().await.expect("health");
    let stderr = plain(&w.server.stderr());
    eprintln!(
        "full after {rounds} rounds: {} acknowledged (through sequence {}), {} refused, health {health}; first refusal: {:?}\nserver:\n{}",
        book.acked.len(),
        book.highest_acked(),
        book.unavailable.len(),
        book.first_refusal,
        warnings(&stderr, 8)
    );
    assert!(
        stderr.contains("No space left on device") || stderr.contains("File too large"),
        "the cause is logged:\n{}",
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // Readers see exactly what was acknowledged.
    let live = w.log().await;
    assert_eq!(
        live.last().unwrap().sequence,
        book.highest_acked(),
        "readers see exactly the acknowledged entries"
    );
    // Health says whether only a restart helps, and that is the truth.
    assert!(
        health == SERVING || health == NOT_SERVING,
        "health {health}"
    );
    if let Some(m) = &mount_guard {
        remount(&m.path, "size=64m").expect("growing the tmpfs");
        let e = purchase(&w, b, next);
        next += 1;
        let written = if health == NOT_SERVING {
            let r = w.append_signed(e.clone()).await;
            assert_refused(&r, Code::Unavailable);
            book.unavailable.push(e);
            false
        } else {
            write_with_room(&w, e, &mut book).await
        };
        eprintln!(
            "with room again and health {health}: the next write is {}",
            if written {
                "written"
            } else {
                "refused until restart"
            }
        );
    }
    w.server.kill();
    assert_log_file_clean(&data, book.highest_acked());
    if mount_guard.is_none() {
        w.server.set_wrapper(Vec::new());
    }
    w.server.start_again();
    w.reconnect().await;
    check_survivors(&w, &book).await;
    let (written, dup) = retry_unavailable(&w, &mut book).await;
    eprintln!("retried the refused events: {written} written, {dup} already stored");
    check_survivors(&w, &book).await;

    // Phase 2 (tmpfs): the log's own write hits ENOSPC. Let the index settle,
    // then fill the rest of the filesystem with a ballast file.
    if let Some(m) = &mount_guard {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ballast = m.path.join("ballast");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&ballast).expect("ballast");
            let chunk = vec![0x5a; 64 * 1024];
            loop {
                match f.write(&chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("writing ballast: {e}"),
                }
            }
            // Any sub-chunk space too.
            while f.write(&[0x5a; 512]).is_ok_and(|n| n > 0) {}
        }
        let mut phase2 = Book::default();
        fill_until_refused(&w, b, &mut phase2, &mut next).await;
        let msg = phase2.first_refusal.clone().unwrap_or_default();
        eprintln!("ballast: first refusal {msg:?}");
        let log_enospc = msg.contains("ledger.log") && msg.contains("No space left on device");
        assert!(
            log_enospc || msg.contains("restart"),
            "refused for a full disk: {msg}"
        );
        // The same new event twice in one request, and by two callers at
        // once: the second copy is a "duplicate" of an entry in the same
        // group, which was never stored. Neither copy may be acknowledged.
        // (49 fresh events ride along so the group is larger than whatever
        // slack is left in the log file's last page.)
        let mut fresh = |n: usize| -> Vec<pb::SignedEvent> {
            let v = (0..n).map(|k| purchase(&w, b, next + k)).collect();
            next += n;
            v
        };
        let twice = fresh(1).remove(0);
        let mut batch = fresh(48);
        batch.extend([twice.clone(), twice.clone()]);
        let rs = w.append_batch(batch.clone(), false).await;
        for r in &rs {
            assert_refused(r, Code::Unavailable);
            assert!(!r.duplicate, "a duplicate of an unstored event: {r:?}");
        }
        let racing = fresh(1).remove(0);
        let (mut b1, mut b2) = (fresh(49), fresh(49));
        b1.push(racing.clone());
        b2.push(racing.clone());
        let (r1, r2) = tokio::join!(
            w.append_batch(b1.clone(), false),
            w.append_batch(b2.clone(), false)
        );
        for r in r1.iter().chain(&r2) {
            assert_refused(r, Code::Unavailable);
        }
        phase2.unavailable.extend(batch);
        phase2.unavailable.extend(b1);
        phase2.unavailable.extend(b2);
        let head = phase2.highest_acked().max(book.highest_acked());
        if log_enospc {
            // The failed group was cut back: the file is whole records up to
            // the acknowledged head, while the server runs.
            assert_log_file_clean(&data, head);
        }
        std::fs::remove_file(&ballast).unwrap();
        let e = purchase(&w, b, next);
        next += 1;
        let resumed = write_with_room(&w, e, &mut phase2).await;
        if resumed {
            assert_eq!(
                phase2.highest_acked(),
                head + 1,
                "writes resume without a gap"
            );
        }
        eprintln!(
            "ballast removed: {}",
            if resumed {
                "writes resumed without a restart"
            } else {
                "the index failed while the disk was full; restart needed"
            }
        );
        book.acked.extend(phase2.acked);
        book.unavailable.extend(phase2.unavailable);
        // sled may have failed in the background while the disk was full; its
        // error is sticky and surfaces at some later index operation (health
        // then turns NOT_SERVING). A restart re-checks the index against the
        // log, so the retries below do not depend on that timing.
        w.server.restart();
        w.reconnect().await;
        check_survivors(&w, &book).await;
        retry_unavailable(&w, &mut book).await;
        w.server.restart();
        w.reconnect().await;
        check_survivors(&w, &book).await;
    }
    if mount_guard.is_some() {
        // The log's own ENOSPC (not only sled's) was met and cut back.
        let all: String = (1..=w.server.starts())
            .map(|n| w.server.stderr_of_start(n))
            .collect();
        assert!(
            plain(&all).contains("ledger.log: No space left on device"),
            "the log's own write never hit ENOSPC"
        );
    }
    let r = w.append_signed(purchase(&w, b, next + 1)).await;
    assert_written(&r);
    w.server.kill();
    drop(mount_guard.take());
}

// ---------------------------------------------------------------------------
// Torn tail after a crash
// ---------------------------------------------------------------------------

/// A crash in the middle of writing a group leaves part of a record at the
/// end of the log. Cut at any byte of that record, the server starts, says
/// what it cut, and has every earlier entry; the same record whole is a
/// complete (if never acknowledged) write and is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_at_any_offset_and_reported() {
    let mut w = World::new().await;
    let b = "torn";
    open_spending_budget(&w, b).await;
    for i in 0..5 {
        assert_written(&w.append_signed(purchase(&w, b, i)).await);
    }
    let before = w.log().await;
    let n = before.len() as u64;
    // The next entry, built as the writer would: a real signed event chained
    // on the head. It is never acknowledged to anyone.
    let unacked = purchase(&w, b, 777);
    let last = logfile::entry_from_pb(before.last().unwrap());
    let entry = phb_domain::LogEntry::next(
        last.hash,
        n + 1,
        last.recorded_at_micros + 1,
        phb_domain::SignedEvent {
            event: unacked.event.clone(),
            signer_id: unacked.signer_id.clone(),
            signature: unacked.signature.clone(),
        },
    );
    let record = logfile::encode_record(&entry);
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    let path = logfile::log_path(&w.server.data_dir());
    let pristine = std::fs::read(&path).unwrap();
    // The test's encoder (from docs/log-format.md) writes the server's bytes.
    assert_eq!(logfile::crc32c(b"123456789"), 0xE306_9283);
    let spans = logfile::spans(&pristine);
    assert_eq!(spans.len(), before.len());
    for (s, e) in spans.iter().zip(&before) {
        assert_eq!(
            &pristine[s.offset as usize..s.end() as usize],
            &logfile::encode_record(&logfile::entry_from_pb(e))[..],
            "record {} as docs/log-format.md describes it",
            e.sequence
        );
    }

    let len = record.len();
    for cut in [1, 4, 7, 8, 9, 24, 90, len / 2, len - 1] {
        let mut torn = pristine.clone();
        torn.extend_from_slice(&record[..cut]);
        std::fs::write(&path, &torn).unwrap();
        w.server.start_again();
        w.reconnect().await;
        let stderr = plain(&w.server.stderr());
        assert!(
            stderr.contains("cutting off a torn, unacknowledged tail")
                && stderr.contains(&format!("offset={}", pristine.len()))
                && stderr.contains(&format!("bytes={cut}"))
                && stderr.contains(&format!("truncated_bytes={cut}")),
            "the server reports the {cut} bytes it cut at offset {}:\n{stderr}",
            pristine.len()
        );
        assert_eq!(w.log().await, before, "every earlier entry, cut at {cut}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            pristine.len() as u64,
            "the tail is gone from the file"
        );
        let status = w.server.terminate(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        eprintln!("cut {cut} of {len} bytes: recovered");
    }

    // The whole record reached the disk: a valid entry, kept. The client
    // that never heard back retries and is told it is stored.
    let mut whole = pristine.clone();
    whole.extend_from_slice(&record);
    std::fs::write(&path, &whole).unwrap();
    w.server.start_again();
    w.reconnect().await;
    let log = w.log().await;
    assert_eq!(log.len() as u64, n + 1);
    assert_eq!(log[..before.len()], before[..]);
    assert_eq!(log[n as usize].hash, entry.hash.to_vec());
    let r = w.append_signed(unacked).await;
    assert!(
        r.duplicate && r.sequence == n + 1,
        "the retry is a duplicate: {r:?}"
    );
    assert_eq!(
        assert_written(&w.append_signed(purchase(&w, b, 778)).await),
        n + 2
    );
    audit_log(&w.log().await, &w.server.root.public_key());

    // Cutting into a record the index says was committed is not a torn
    // write but lost data: refused, naming the sequence, file untouched.
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let full = std::fs::read(&path).unwrap();
    let last_span = *logfile::spans(&full).last().unwrap();
    let cut_at = (last_span.offset + last_span.len / 2) as usize;
    std::fs::write(&path, &full[..cut_at]).unwrap();
    let f = w.server.expect_start_failure(REFUSE_WITHIN);
    let stderr = plain(&f.stderr);
    assert!(f.status.is_some_and(|s| !s.success()));
    assert!(
        stderr.contains(&format!("sequence {}", last_span.sequence)),
        "names sequence {}:\n{stderr}",
        last_span.sequence
    );
    assert_eq!(std::fs::read(&path).unwrap(), &full[..cut_at], "untouched");
}

// ---------------------------------------------------------------------------
// Corrupted entry in the middle of the log
// ---------------------------------------------------------------------------

/// A damaged record in the middle of the log (bit rot, tampering) is not a
/// torn tail: the server refuses to start, exits non-zero, names the
/// sequence, and leaves the file as it found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_middle_entry_refuses_start_naming_the_sequence() {
    let mut w = World::new().await;
    let b = "rot";
    open_spending_budget(&w, b).await;
    for i in 0..8 {
        assert_written(&w.append_signed(purchase(&w, b, i)).await);
    }
    let before = w.log().await;
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let data = w.server.data_dir();
    let path = logfile::log_path(&data);
    let pristine = std::fs::read(&path).unwrap();
    let spans = logfile::spans(&pristine);
    let victim = spans[spans.len() / 2];
    let k = victim.sequence;
    let at = |rel: u64| (victim.offset + rel) as usize;

    // (what, byte offset, xor mask, recompute the CRC afterwards)
    let cases: Vec<(&str, usize, u8, bool)> = vec![
        ("length field, high bit", at(0), 0x80, false),
        ("length field, low bit", at(3), 0x01, false),
        ("CRC field", at(5), 0x10, false),
        ("sequence number", at(8 + 7), 0x02, false),
        ("recorded_at", at(8 + 8 + 6), 0x40, false),
        ("prev_hash", at(8 + 16 + 3), 0x01, false),
        ("signature", at(victim.len - 40), 0x04, false),
        ("event bytes", at(victim.len - 5), 0x20, false),
        (
            "event bytes, CRC recomputed (tampering)",
            at(victim.len - 5),
            0x20,
            true,
        ),
        (
            "signature, CRC recomputed (tampering)",
            at(victim.len - 100),
            0x01,
            true,
        ),
    ];
    for (what, offset, mask, fix_crc) in cases {
        let mut damaged = pristine.clone();
        damaged[offset] ^= mask;
        if fix_crc {
            let payload = &damaged[at(8)..at(victim.len)];
            let crc = logfile::crc32c(payload);
            damaged[at(4)..at(8)].copy_from_slice(&crc.to_be_bytes());
        }
        std::fs::write(&path, &damaged).unwrap();
        let f = w.server.expect_start_failure(REFUSE_WITHIN);
        let stderr = plain(&f.stderr);
        assert!(
            f.status.is_some_and(|s| !s.success()),
            "{what}: non-zero exit, got {:?}",
            f.status
        );
        assert!(
            stderr.contains(&format!("sequence {k}")),
            "{what}: the refusal names sequence {k}:\n{stderr}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            damaged,
            "{what}: a refused start changes nothing on disk"
        );
        eprintln!(
            "{what}: refused — {}",
            stderr
                .lines()
                .find(|l| l.contains(&format!("sequence {k}")))
                .unwrap_or("")
                .trim()
        );
    }

    // Without the index to vouch for it, damage followed by data is still
    // corruption, not a torn tail.
    let mut damaged = pristine.clone();
    damaged[at(8 + 40)] ^= 0x08;
    std::fs::write(&path, &damaged).unwrap();
    std::fs::remove_dir_all(data.join("index")).unwrap();
    let f = w.server.expect_start_failure(REFUSE_WITHIN);
    assert!(
        plain(&f.stderr).contains(&format!("sequence {k}")),
        "without an index: {}",
        f.stderr
    );
    assert_eq!(std::fs::read(&path).unwrap(), damaged);

    // The restored file starts, with everything.
    std::fs::write(&path, &pristine).unwrap();
    w.server.start_again();
    w.reconnect().await;
    assert_eq!(w.log().await, before);
    assert_written(&w.append_signed(purchase(&w, b, 100)).await);
    w.server.kill();
}

// ---------------------------------------------------------------------------
// Damaged index
// ---------------------------------------------------------------------------

/// The sled index is derived data: deleted, overwritten with garbage,
/// truncated or bit-flipped, it is rebuilt from the log on start. Event-id
/// deduplication (resubmitting an old event is a duplicate) and ReadLog from
/// the middle both work afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_is_rebuilt_from_the_log() {
    let mut w = World::new().await;
    let b = "idx";
    open_spending_budget(&w, b).await;
    let mut old = Vec::new();
    for i in 0..12 {
        let e = purchase(&w, b, i);
        let seq = assert_written(&w.append_signed(e.clone()).await);
        old.push((seq, e));
    }
    let before = w.log().await;
    let index = w.server.data_dir().join("index");

    type Damage = fn(&Path);
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
    let cases: Vec<(&str, Damage)> = vec![
        ("deleted", |d| std::fs::remove_dir_all(d).unwrap()),
        ("every file overwritten with garbage", |d| {
            for f in files(d) {
                let len = std::fs::metadata(&f).unwrap().len().max(64);
                let garbage: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
                std::fs::write(&f, garbage).unwrap();
            }
        }),
        ("db truncated to a third", |d| {
            let db = d.join("db");
            let len = std::fs::metadata(&db).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .unwrap()
                .set_len(len / 3)
                .unwrap();
        }),
        ("db bytes flipped throughout", |d| {
            let db = d.join("db");
            let mut bytes = std::fs::read(&db).unwrap();
            for i in (0..bytes.len()).step_by(97) {
                bytes[i] ^= 0x5a;
            }
            std::fs::write(&db, bytes).unwrap();
        }),
        ("conf replaced", |d| {
            std::fs::write(d.join("conf"), b"segment_size: banana\n").unwrap()
        }),
    ];
    for (what, damage) in cases {
        let status = w.server.terminate(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{what}: {status:?}");
        damage(&index);
        if let Err(f) = w.server.try_start_again() {
            panic!(
                "{what}: the server did not start: {} {:?}\n{}",
                f.reason,
                f.status,
                plain(&f.stderr)
            );
        }
        w.reconnect().await;
        let stderr = plain(&w.server.stderr());
        let report = stderr
            .lines()
            .find(|l| l.contains("log verified and replayed"))
            .unwrap_or("")
            .to_string();
        eprintln!("index {what}: {}", report.trim());
        assert_eq!(w.log().await, before, "{what}: the log is intact");
        // Deduplication works: every old event is answered as a duplicate.
        let resubmit: Vec<_> = old.iter().map(|(_, e)| e.clone()).collect();
        let results = w.append_batch(resubmit, false).await;
        for (r, (seq, _)) in results.iter().zip(&old) {
            assert!(
                result_code(r) == 0 && r.duplicate && r.sequence == *seq,
                "{what}: resubmitting the event at {seq} must be a duplicate: {r:?}"
            );
        }
        // Offsets work: ReadLog from the middle.
        let mid = before.len() as u64 / 2;
        let tail = read_log(&w.client, &w.auditor, mid).await;
        assert_eq!(
            tail[..],
            before[(mid - 1) as usize..],
            "{what}: ReadLog from {mid}"
        );
        assert_eq!(w.server.health().await.unwrap(), SERVING);
    }
    // And it takes writes, which survive another restart.
    let seq = assert_written(&w.append_signed(purchase(&w, b, 50)).await);
    assert_eq!(seq, before.len() as u64 + 1);
    w.server.restart();
    w.reconnect().await;
    assert_eq!(w.log_len().await, seq);
    w.server.kill();
}
