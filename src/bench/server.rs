//! The server under test: `phb-ledger serve` run from this same binary on
//! a data directory of the bench's own, its start and stop, and what
//! /proc says about its CPU and memory.

use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a start may take: a restart replays the whole log (about 50 µs
/// an entry before snapshots), so a few million entries take minutes.
const START_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a clean stop may take (it writes the index out).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// A `phb-ledger serve` child process on a data directory.
pub struct Server {
    exe: PathBuf,
    pub data: PathBuf,
    logs: PathBuf,
    ledger_id: String,
    root_public_hex: String,
    child: Option<Child>,
    /// Extra environment (the log backend's settings).
    pub env: Vec<(String, String)>,
    pub pid: u32,
    pub addr: SocketAddr,
    starts: u32,
}

impl Server {
    /// A server that is not started yet. `scratch` holds its stderr logs.
    pub fn new(
        data: PathBuf,
        scratch: &Path,
        ledger_id: &str,
        root_public_hex: &str,
    ) -> Result<Server> {
        Ok(Server {
            exe: std::env::current_exe().context("finding this program's path")?,
            data,
            logs: scratch.to_path_buf(),
            ledger_id: ledger_id.to_string(),
            root_public_hex: root_public_hex.to_string(),
            child: None,
            env: Vec::new(),
            pid: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            starts: 0,
        })
    }

    fn stderr_path(&self) -> PathBuf {
        self.logs.join(format!("server-stderr-{}.log", self.starts))
    }

    /// What the current (or last) start wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read(self.stderr_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Starts the server on a free port and waits until its health service
    /// says SERVING; returns the time from spawn to SERVING.
    pub async fn start(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("the server is already running");
        }
        self.starts += 1;
        let stderr = std::fs::File::create(self.stderr_path())
            .with_context(|| format!("creating {}", self.stderr_path().display()))?;
        let started = Instant::now();
        let mut child = Command::new(&self.exe)
            .arg("serve")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ledger-id")
            .arg(&self.ledger_id)
            .arg("--root-public-key")
            .arg(&self.root_public_hex)
            // Info is what an operator runs at; the replay line is read from it.
            .env("RUST_LOG", "info")
            .env_remove("PHB_DATA")
            .env_remove("PHB_LISTEN")
            .env_remove("PHB_LEDGER_ID")
            .env_remove("PHB_ROOT_PUBLIC_KEY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // If the bench fails or is interrupted, the server goes too.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", self.exe.display()))?;
        self.pid = child
            .id()
            .ok_or_else(|| anyhow!("the server exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the server"))?;
        self.child = Some(child);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let prefix = format!("phb-ledger {} listening on ", self.ledger_id);
        // Keep draining stdout for the life of the child (a full pipe
        // would block it); hand over the listening line.
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(&prefix) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                }
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                let status = self.reap(Duration::from_secs(10)).await;
                bail!(
                    "the server did not start (exit status {status:?}); its stderr:\n{}",
                    self.stderr()
                );
            }
            Err(_) => {
                self.kill().await;
                bail!(
                    "the server did not start within {START_TIMEOUT:?}; its stderr:\n{}",
                    self.stderr()
                );
            }
        };
        self.addr = addr
            .trim()
            .parse()
            .with_context(|| format!("the server's address {addr:?}"))?;
        wait_serving(self.addr, started + START_TIMEOUT).await?;
        Ok(started.elapsed())
    }

    /// SIGTERM, then waits for a clean exit; returns how long it took.
    pub async fn stop(&mut self) -> Result<Duration> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                if !status.success() {
                    bail!(
                        "the server exited with {status} on SIGTERM; its stderr:\n{}",
                        self.stderr()
                    );
                }
                Ok(started.elapsed())
            }
            Ok(Err(e)) => Err(e).context("waiting for the server to stop"),
            Err(_) => {
                self.kill().await;
                bail!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn reap(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        match tokio::time::timeout(within, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = child.kill().await;
                None
            }
        }
    }

    /// What the last start's replay reported: (entries, milliseconds).
    pub fn replay_report(&self) -> Option<(u64, u64)> {
        let text = self.stderr();
        let line = text
            .lines()
            .find(|l| l.contains("log verified and replayed"))?;
        let field = |name: &str| -> Option<u64> {
            let rest = line.split(&format!("{name}=")).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        Some((field("entries")?, field("elapsed_ms")?))
    }
}

/// Polls the gRPC health service until LedgerService is SERVING.
pub async fn wait_serving(addr: SocketAddr, deadline: Instant) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let url = format!("http://{addr}");
    let mut last = String::new();
    while Instant::now() < deadline {
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
        match endpoint.connect().await {
            Ok(channel) => {
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        // The writer service: SERVING once appends are
                        // taken (at once alone; with a shared log, once
                        // this instance holds the writer role).
                        service: phb_grpc::WRITER_HEALTH_SERVICE.into(),
                    })
                    .await;
                match answer {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
                    Ok(r) => last = format!("status {}", r.get_ref().status),
                    Err(s) => last = format!("{:?}: {}", s.code(), s.message()),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{addr} did not report SERVING in time (last answer: {last})")
}

/// CPU time a process has used, user and system, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from after its closing one.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .ok_or_else(|| anyhow!("{path}: too few fields"))?
            .parse()
            .with_context(|| format!("{path}: field {i}"))
    };
    let ticks = tick(14)? + tick(15)?;
    Ok(ticks as f64 / clock_ticks())
}

/// CPU time the whole machine has spent busy (every core, every process:
/// user, nice, system, irq, softirq, steal), in seconds.
pub fn machine_busy_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat: no cpu line"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("/proc/stat: a cpu field"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>();
    Ok(busy as f64 / clock_ticks())
}

/// CPU time used by this process's children that have been waited for
/// (user and system), in seconds.
pub fn children_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes one rusage struct, which we own and which
    // is zeroed beforehand, so every field is initialised.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) != 0 {
            return None;
        }
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let parts: Vec<&str> = text.split_whitespace().take(3).collect();
    (parts.len() == 3).then(|| parts.join(" "))
}

/// CPU seconds used so far by each thread name of a process (threads of
/// one name summed: tokio's workers, sled's IO threads).
pub fn thread_cpu_seconds(pid: u32) -> Result<std::collections::BTreeMap<String, f64>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(task) = task else { continue };
        let stat = task.path().join("stat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&stat) else {
            continue;
        };
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            continue;
        };
        let name = text[open + 1..close].to_string();
        let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let tick = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (tick(14), tick(15)) {
            *out.entry(name).or_insert(0.0) += (u + s) as f64 / clock_ticks();
        }
    }
    Ok(out)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident memory now and at its peak (VmRSS, VmHWM), in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("{path}: no {name}"))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
