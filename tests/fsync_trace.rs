//! Durability evidence from the kernel's side: the real server runs under
//! `strace`, many clients append at once, and every acknowledgement is
//! matched against the system calls the server made.
//!
//! For every acknowledged sequence the test finds, in the trace:
//!
//! 1. the `pwrite64` of the log file (the fd `openat` returned for
//!    `log/ledger.log`) whose byte range covers that entry's record (the
//!    record's place in the file is read from the file afterwards), and
//! 2. an `fdatasync`/`fsync` of the same fd that was called after that
//!    write returned and that itself returned 0 **before the client received
//!    the acknowledgement**.
//!
//! Both clocks are CLOCK_REALTIME in microseconds: strace's `-ttt` stamps
//! (a call returns at its stamp plus its `-T` duration; strace takes both
//! while the thread is stopped, so the thread cannot answer anyone before
//! then) and the test's own `SystemTime::now()` when each answer arrived.
//!
//! It prints the group-commit figures (acknowledgements per fdatasync) and
//! checks that the log never relies on `sync_file_range` (what sled's flush
//! uses, sled #1452).

mod common;

use common::*;
use phb_client::kinds;
use phb_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Concurrent clients in the burst, and appends each makes one after another.
const CLIENTS: usize = 24;
const APPENDS_PER_CLIENT: usize = 10;

fn strace_binary() -> PathBuf {
    for p in ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "strace is required for the fsync evidence test and was not found: apt-get install strace"
    );
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// One traced system call.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    /// The file the fd referred to at the time (from openat/close).
    path: Option<String>,
    /// Entry and return, microseconds since the epoch.
    start: i64,
    end: i64,
    ret: i64,
    /// pwrite64: (count, offset).
    count: Option<u64>,
    offset: Option<u64>,
    /// The whole call (both halves joined), for messages.
    line: String,
}

fn micros_of(stamp: &str) -> Option<i64> {
    let (s, us) = stamp.split_once('.')?;
    Some(s.parse::<i64>().ok()? * 1_000_000 + us.parse::<i64>().ok()?)
}

/// `<0.000123>` at the end of a line, in microseconds (rounded up).
fn duration_of(line: &str) -> Option<i64> {
    let open = line.rfind('<')?;
    let close = line.rfind('>')?;
    let secs: f64 = line.get(open + 1..close)?.parse().ok()?;
    Some((secs * 1e6).ceil() as i64)
}

/// `...)    = 123 <...>` → 123 (−1 for errors like `= -1 EROFS (...)`;
/// strace pads short calls with spaces before the `=`).
fn return_of(line: &str) -> Option<i64> {
    let eq = line.rfind(" = ")?;
    line[eq + 3..].split_whitespace().next()?.parse().ok()
}

/// Parses an `strace -f -ttt -T` file, joining `<unfinished ...>` and
/// `<... resumed>` halves, and resolving fds to paths through openat/close.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: HashMap<(u32, String), (i64, String)> = HashMap::new();
    let mut fds: HashMap<i32, String> = HashMap::new();
    let mut calls = Vec::new();
    for raw in text.lines() {
        // "TID STAMP CALL": strace pads the tid column with spaces.
        let Some((tid, rest)) = raw.trim_start().split_once(' ') else {
            continue;
        };
        let Some((stamp, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let (Ok(tid), Some(at)) = (tid.parse::<u32>(), micros_of(stamp)) else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        // Complete the call: (name, text from the name on, start, end).
        let (name, full, start, end) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            let Some((start, head)) = pending.remove(&(tid, name.to_string())) else {
                continue;
            };
            let dur = duration_of(tail).unwrap_or(0);
            // Conservative: the later of entry + duration and the stamp of
            // the resumed line.
            let end = (start + dur).max(at);
            (name.to_string(), format!("{head}{tail}"), start, end)
        } else {
            let Some(paren) = rest.find('(') else {
                continue;
            };
            let name = rest[..paren].to_string();
            if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
                pending.insert((tid, name), (at, head.to_string()));
                continue;
            }
            let dur = duration_of(rest).unwrap_or(0);
            (name, rest.to_string(), at, at + dur)
        };
        let Some(ret) = return_of(&full) else {
            continue;
        };
        let args = full
            .find('(')
            .map(|p| &full[p + 1..])
            .unwrap_or_default()
            .to_string();
        let first_arg = args.split([',', ')']).next().unwrap_or("").trim();
        let fd = first_arg.parse::<i32>().ok();
        let mut call = Call {
            name: name.clone(),
            path: fd.and_then(|fd| fds.get(&fd).cloned()),
            start,
            end,
            ret,
            count: None,
            offset: None,
            line: format!("{tid} {start} {full}"),
        };
        match name.as_str() {
            "openat" if ret >= 0 => {
                // openat(AT_FDCWD, "/path", FLAGS, ...) = fd
                if let Some(path) = args.split('"').nth(1) {
                    let flags = args.split('"').nth(2).unwrap_or("");
                    let writable = flags.contains("O_RDWR") || flags.contains("O_WRONLY");
                    let tag = if writable { "w" } else { "r" };
                    fds.insert(ret as i32, format!("{tag}:{path}"));
                }
            }
            "close" => {
                if let Some(fd) = fd {
                    fds.remove(&fd);
                }
            }
            "pwrite64" => {
                // pwrite64(fd, "..."..., count, offset) = n
                let tail = args.rsplit_once(')').map(|t| t.0).unwrap_or("");
                let nums: Vec<u64> = tail
                    .rsplit(',')
                    .take(2)
                    .filter_map(|n| n.trim().parse().ok())
                    .collect();
                if let [offset, count] = nums[..] {
                    call.count = Some(count);
                    call.offset = Some(offset);
                }
            }
            _ => {}
        }
        calls.push(call);
    }
    calls
}

/// The pid of the traced server: strace's only child, or else the process
/// that made the first traced call.
fn tracee_of(strace_pid: u32, trace_file: &Path) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
            .unwrap_or_default();
    if let Some(pid) = children.split_whitespace().next() {
        return pid.parse().ok();
    }
    let trace = std::fs::read_to_string(trace_file).ok()?;
    trace.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledgement_follows_a_completed_fdatasync_of_its_write() {
    let strace = strace_binary();
    let scratch = tempfile::Builder::new()
        .prefix("phb-fsync-trace")
        .tempdir()
        .unwrap();
    let trace_file = scratch.path().join("strace.txt");
    let data = scratch.path().join("data");
    let log_path = common::logfile::log_path(&data);
    let mut wrapper: Vec<OsString> = vec![strace.into_os_string()];
    for a in [
        "-f",
        "-ttt",
        "-T",
        "-qq",
        "-s",
        "0",
        "--seccomp-bpf",
        "-e",
        "trace=openat,close,write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range",
        "-o",
    ] {
        wrapper.push(a.into());
    }
    wrapper.push(trace_file.clone().into_os_string());
    wrapper.push("--".into());
    let w = World::with_server(Server::start_with(ServerOptions {
        data_dir: Some(data.clone()),
        wrapper,
        ..Default::default()
    }))
    .await;
    let b = "trace-1";
    w.open_notional(b).await;
    w.fund(b, "1000000.00", None).await;

    // The burst: every client appends one event at a time, as fast as it is
    // answered; the writer groups whatever is waiting.
    let w = Arc::new(w);
    let burst_start = now_micros();
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let w = w.clone();
        let client = w.server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut acks = Vec::new();
            for i in 0..APPENDS_PER_CLIENT {
                let e = w.sign(
                    &w.commissioner,
                    b,
                    kinds::buy(
                        "0.01",
                        "equipment",
                        &format!("s-{t}"),
                        &format!("item {t}/{i}"),
                    ),
                );
                let resp = tokio::time::timeout(
                    Duration::from_secs(60),
                    client.append(pb::AppendRequest {
                        events: vec![e],
                        atomic: false,
                    }),
                )
                .await
                .expect("Append answered within 60 s")
                .expect("Append RPC");
                let arrived = now_micros();
                let r = resp.into_inner().results.remove(0);
                acks.push((assert_written(&r), arrived));
            }
            acks
        }));
    }
    let mut acks: Vec<(u64, i64)> = Vec::new();
    for t in tasks {
        acks.extend(t.await.expect("client task"));
    }
    let w = Arc::try_unwrap(w).ok().expect("tasks let go of the world");

    // Stop the server cleanly (SIGTERM to the tracee, so strace writes out
    // the whole trace and exits with it).
    let strace_pid = w.server.pid().expect("server running");
    let tracee = tracee_of(strace_pid, &trace_file).expect("the server runs as strace's child");
    // SAFETY: sending a signal to a process id; no memory involved.
    unsafe {
        libc::kill(tracee as i32, libc::SIGTERM);
    }
    let status = w.server.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "server and strace did not stop within 30 s of SIGTERM"
    );

    let bytes = std::fs::read(&log_path).expect("reading the log file");
    let spans: BTreeMap<u64, common::logfile::Span> = common::logfile::spans(&bytes)
        .into_iter()
        .map(|s| (s.sequence, s))
        .collect();
    let text = std::fs::read_to_string(&trace_file).expect("reading the strace output");
    if let Some(keep) = std::env::var_os("PHB_KEEP_TRACE") {
        std::fs::write(&keep, &text).expect("writing PHB_KEEP_TRACE");
        eprintln!("trace kept in {}", Path::new(&keep).display());
    }
    let calls = parse_trace(&text);
    let log_w = format!("w:{}", log_path.display());
    let on_log = |c: &Call| c.path.as_deref() == Some(log_w.as_str());
    let opened: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "openat" && c.line.contains(&*log_path.to_string_lossy()))
        .collect();
    assert!(
        opened
            .iter()
            .any(|c| c.line.contains("O_RDWR") && c.ret >= 0),
        "the trace shows the log opened for writing: {opened:#?}"
    );
    let writes: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "pwrite64" && on_log(c) && c.ret > 0)
        .collect();
    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| (c.name == "fdatasync" || c.name == "fsync") && on_log(c))
        .collect();
    assert!(!writes.is_empty(), "no pwrite64 of {log_w} in the trace");
    assert!(!syncs.is_empty(), "no fdatasync of {log_w} in the trace");

    // The log never relies on sync_file_range; sled may.
    let sfr: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "sync_file_range")
        .collect();
    for c in &sfr {
        assert!(
            !on_log(c),
            "sync_file_range on the log file, which is not durable: {}",
            c.line
        );
    }

    // Every acknowledgement: covering write, then a completed sync, then
    // the answer.
    let mut per_sync: BTreeMap<usize, usize> = BTreeMap::new();
    let mut margins = Vec::new();
    acks.sort();
    for (seq, arrived) in &acks {
        let span = spans
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged sequence {seq} is not in the log file"));
        let write = writes
            .iter()
            .find(|c| {
                let (Some(off), true) = (c.offset, c.ret > 0) else {
                    return false;
                };
                off <= span.offset && off + c.ret as u64 >= span.end()
            })
            .unwrap_or_else(|| {
                panic!(
                    "acknowledged sequence {seq} (bytes {}..{}): no pwrite64 of the log covers it",
                    span.offset,
                    span.end()
                )
            });
        let sync = syncs
            .iter()
            .enumerate()
            .find(|(_, s)| s.ret == 0 && s.start >= write.end)
            .unwrap_or_else(|| {
                panic!(
                    "acknowledged sequence {seq}: its write returned at {} and no successful fdatasync of the log was called after it\n{}",
                    write.end, write.line
                )
            });
        assert!(
            sync.1.end <= *arrived,
            "acknowledged sequence {seq}: the acknowledgement arrived at {arrived} but the fdatasync covering its write returned only at {}\n  write: {}\n  sync:  {}",
            sync.1.end,
            write.line,
            sync.1.line
        );
        *per_sync.entry(sync.0).or_default() += 1;
        margins.push(arrived - sync.1.end);
    }

    // Group commit: fdatasyncs of the log during the burst, acks per sync.
    let burst_syncs = syncs.iter().filter(|s| s.start >= burst_start).count();
    let acks_n = acks.len();
    let max = per_sync.values().copied().max().unwrap_or(0);
    let mean = acks_n as f64 / per_sync.len().max(1) as f64;
    margins.sort();
    let sfr_files: BTreeMap<String, usize> = sfr.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(
            c.path
                .clone()
                .map(|p| p[2..].to_string())
                .unwrap_or_else(|| "?".into()),
        )
        .or_default() += 1;
        m
    });
    eprintln!(
        "fsync evidence: {acks_n} acknowledgements from {CLIENTS} concurrent clients; \
         {} fdatasyncs of the log in the burst ({} covering acknowledgements); \
         acknowledgements per fdatasync: mean {mean:.2}, max {max}; \
         pwrite64 calls on the log: {}; \
         ack arrived after its fdatasync returned by: min {} us, median {} us; \
         sync_file_range calls: {} (none on the log; by file: {sfr_files:?})",
        burst_syncs,
        per_sync.len(),
        writes.len(),
        margins.first().unwrap_or(&0),
        margins.get(margins.len() / 2).unwrap_or(&0),
        sfr.len(),
    );
    assert_eq!(acks_n, CLIENTS * APPENDS_PER_CLIENT);
    assert!(
        per_sync.len() < acks_n,
        "no fdatasync covered more than one acknowledgement: no group commit under {CLIENTS} concurrent clients"
    );
}
