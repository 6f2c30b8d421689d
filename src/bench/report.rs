//! What the bench prints: a table like `tigerbeetle benchmark`'s, the
//! read, restart and verify lines, the peer's table with the ratio, and the
//! same figures as one JSON object.

use super::load::{AppendRun, Summary};
use super::postgres::PeerRun;
use super::workload::{Management, Sort, Workload};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// One timed append run's figures.
pub struct RunFigures {
    pub mode: &'static str,
    pub clients: usize,
    pub connections: usize,
    pub batch: usize,
    pub run: AppendRun,
    /// Per Append request.
    pub latency: Summary,
    pub server_cpu_s: Option<f64>,
    pub client_cpu_s: Option<f64>,
    /// CPU the rest of the machine used meanwhile (other work on a shared
    /// machine competes with the server for its cores).
    pub other_cpu_s: Option<f64>,
    /// The server's CPU by thread name (threads of one name summed),
    /// busiest first.
    pub threads: Vec<(String, f64)>,
    /// The server's VmRSS and VmHWM at the end of the run.
    pub rss_kib: Option<(u64, u64)>,
    pub reads: Option<ReadFigures>,
}

/// GetBalance calls made during a run.
pub struct ReadFigures {
    pub readers: usize,
    pub latency: Summary,
    pub errors: u64,
    pub reasons: Vec<String>,
}

pub struct RestartFigures {
    pub entries: u64,
    pub to_serving: Duration,
    /// The new server's CPU from spawn to SERVING.
    pub server_cpu_s: Option<f64>,
    /// Every other process's CPU meanwhile.
    pub other_cpu_s: Option<f64>,
    pub replay_ms: Option<u64>,
    pub stop: Duration,
    pub rss_kib: Option<(u64, u64)>,
}

pub struct VerifyFigures {
    pub entries: u64,
    pub export: Duration,
    pub verify: Duration,
    /// `audit verify`'s own CPU (it checks signatures on a second thread).
    pub verify_cpu_s: Option<f64>,
    /// Every other process's CPU meanwhile.
    pub other_cpu_s: Option<f64>,
    /// What `audit verify` itself reports (its own clock, without start-up).
    pub verifier_rate: Option<f64>,
}

pub struct PeerFigures {
    pub version: String,
    pub settings: String,
    pub runs: Vec<PeerRun>,
}

/// Everything one bench run measured.
#[derive(Default)]
pub struct Report {
    pub runs: Vec<RunFigures>,
    pub restart: Option<RestartFigures>,
    pub verify: Option<VerifyFigures>,
    pub peer: Option<PeerFigures>,
}

impl RunFigures {
    pub fn events_per_s(&self) -> f64 {
        self.run.accepted as f64 / self.run.elapsed.as_secs_f64()
    }

    fn percent_of_core(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.map(|c| 100.0 * c / self.run.elapsed.as_secs_f64())
    }

    fn json(&self) -> serde_json::Value {
        let secs = self.run.elapsed.as_secs_f64();
        json!({
            "mode": self.mode,
            "clients": self.clients,
            "connections": self.connections,
            "batch": self.batch,
            "events": self.run.accepted,
            "refused": self.run.refused,
            "requests": self.latency.count,
            "seconds": secs,
            "events_per_second": self.events_per_s(),
            "latency_ms": summary_json(&self.latency),
            "server_cpu_seconds": self.server_cpu_s,
            "server_cpu_percent_of_one_core": self.percent_of_core(self.server_cpu_s),
            "client_cpu_seconds": self.client_cpu_s,
            "other_cpu_seconds": self.other_cpu_s,
            "server_threads_cpu_seconds": self.threads.iter().map(|(n, c)| (n.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "server_rss_kib": self.rss_kib.map(|r| r.0),
            "server_hwm_kib": self.rss_kib.map(|r| r.1),
            "reads": self.reads.as_ref().map(|r| json!({
                "readers": r.readers,
                "calls": r.latency.count,
                "calls_per_second": r.latency.count as f64 / secs,
                "errors": r.errors,
                "latency_ms": summary_json(&r.latency),
            })),
        })
    }
}

fn summary_json(s: &Summary) -> serde_json::Value {
    json!({"p50": s.p50, "p99": s.p99, "p999": s.p999, "max": s.max})
}

impl Report {
    /// phb-ledger's events/s over the peer's transactions/s at the same
    /// number of clients.
    fn ratio(&self, peer: &PeerRun) -> Option<f64> {
        self.runs
            .iter()
            .find(|f| f.mode == "append" && f.clients == peer.clients && f.batch == 1)
            .map(|f| f.events_per_s() / peer.tps)
    }

    /// The table of timed runs, then the reads, restart and verify lines.
    pub fn print(&self) {
        println!();
        println!(
            "{:<7} {:>7} {:>5} {:>5} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>6} {:>6} {:>7} {:>7}",
            "mode", "clients", "conns", "batch", "events", "events/s", "p50 ms", "p99 ms",
            "p999 ms", "max ms", "srv cpu", "srv %", "cli %", "oth %", "RSS MiB", "HWM MiB"
        );
        let opt = |v: Option<f64>, digits: usize, unit: &str| {
            v.map(|x| format!("{x:.digits$}{unit}"))
                .unwrap_or_else(|| "n/a".into())
        };
        for f in &self.runs {
            println!(
                "{:<7} {:>7} {:>5} {:>5} {:>8} {:>10.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8} {:>6} {:>6} {:>6} {:>7} {:>7}",
                f.mode,
                f.clients,
                f.connections,
                f.batch,
                f.run.accepted,
                f.events_per_s(),
                f.latency.p50,
                f.latency.p99,
                f.latency.p999,
                f.latency.max,
                opt(f.server_cpu_s, 1, " s"),
                opt(f.percent_of_core(f.server_cpu_s), 0, ""),
                opt(f.percent_of_core(f.client_cpu_s), 0, ""),
                opt(f.percent_of_core(f.other_cpu_s), 0, ""),
                opt(f.rss_kib.map(|r| r.0 as f64 / 1024.0), 0, ""),
                opt(f.rss_kib.map(|r| r.1 as f64 / 1024.0), 0, ""),
            );
        }
        println!("(latency per Append request; srv %, cli %, oth %: CPU of the server, of this load generator and of every other process on the machine, as % of one core)");
        for f in self.runs.iter().filter(|f| !f.threads.is_empty()) {
            let busiest: Vec<String> = f
                .threads
                .iter()
                .take(5)
                .map(|(name, cpu)| {
                    format!("{name} {:.0} %", 100.0 * cpu / f.run.elapsed.as_secs_f64())
                })
                .collect();
            println!(
                "server threads, {} {} clients batch {}: {}",
                f.mode,
                f.clients,
                f.batch,
                busiest.join(", ")
            );
        }
        for f in &self.runs {
            let Some(r) = &f.reads else { continue };
            println!(
                "GetBalance during the {}-client {} run: {} readers, {} calls ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms{}",
                f.clients,
                f.mode,
                r.readers,
                r.latency.count,
                r.latency.count as f64 / f.run.elapsed.as_secs_f64(),
                r.latency.p50,
                r.latency.p99,
                r.latency.p999,
                r.latency.max,
                if r.errors > 0 {
                    format!(", {} FAILED: {}", r.errors, r.reasons.join("; "))
                } else {
                    String::new()
                }
            );
        }
        let share = |cpu: Option<f64>, over: Duration| {
            cpu.map(|c| format!("{:.0} %", 100.0 * c / over.as_secs_f64()))
                .unwrap_or_else(|| "n/a".into())
        };
        if let Some(r) = &self.restart {
            println!(
                "restart: {} entries in the log; SERVING {:.2} s after start (the server's own verify + replay: {}; its CPU {} of one core, other processes' {}); RSS then {}; the clean stop before it took {:.2} s",
                r.entries,
                r.to_serving.as_secs_f64(),
                r.replay_ms
                    .map(|ms| format!("{:.2} s", ms as f64 / 1e3))
                    .unwrap_or_else(|| "not reported".into()),
                share(r.server_cpu_s, r.to_serving),
                share(r.other_cpu_s, r.to_serving),
                r.rss_kib
                    .map(|(rss, _)| format!("{} MiB", rss / 1024))
                    .unwrap_or_else(|| "n/a".into()),
                r.stop.as_secs_f64()
            );
        }
        if let Some(v) = &self.verify {
            println!(
                "verify: export {:.2} s; audit verify {} entries in {:.2} s: {:.0} entries/s (its own figure, without start-up: {}; its CPU {} of one core, other processes' {})",
                v.export.as_secs_f64(),
                v.entries,
                v.verify.as_secs_f64(),
                v.entries as f64 / v.verify.as_secs_f64(),
                v.verifier_rate
                    .map(|r| format!("{r:.0}/s"))
                    .unwrap_or_else(|| "none".into()),
                share(v.verify_cpu_s, v.verify),
                share(v.other_cpu_s, v.verify),
            );
        }
    }

    /// The peer's table, with the ratio.
    pub fn print_peer(&self) {
        let Some(p) = &self.peer else { return };
        println!(
            "\npeer: {}, a balances table and a ledger table: one balance-checked UPDATE and one INSERT per payment in a transaction, no signatures; {}; pgbench over loopback TCP",
            p.version, p.settings
        );
        println!(
            "{:<9} {:>7} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7}  phb-ledger events/s ÷ peer tx/s",
            "peer", "clients", "tx", "tx/s", "p50 ms", "p99 ms", "p999 ms", "max ms",
        );
        for r in &p.runs {
            println!(
                "{:<9} {:>7} {:>8} {:>10.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2}  {}",
                "postgres",
                r.clients,
                r.transactions,
                r.tps,
                r.latency.p50,
                r.latency.p99,
                r.latency.p999,
                r.latency.max,
                self.ratio(r)
                    .map(|x| format!("{x:.2}×"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
    }

    pub fn json(&self, head: serde_json::Value) -> serde_json::Value {
        let mut v = head;
        v["runs"] = self.runs.iter().map(RunFigures::json).collect();
        v["restart"] = json!(self.restart.as_ref().map(|r| json!({
            "entries": r.entries,
            "seconds_to_serving": r.to_serving.as_secs_f64(),
            "server_replay_ms": r.replay_ms,
            "server_cpu_seconds": r.server_cpu_s,
            "other_cpu_seconds": r.other_cpu_s,
            "rss_kib": r.rss_kib.map(|m| m.0),
            "stop_seconds": r.stop.as_secs_f64(),
        })));
        v["verify"] = json!(self.verify.as_ref().map(|f| json!({
            "entries": f.entries,
            "export_seconds": f.export.as_secs_f64(),
            "verify_seconds": f.verify.as_secs_f64(),
            "entries_per_second": f.entries as f64 / f.verify.as_secs_f64(),
            "verifier_entries_per_second": f.verifier_rate,
            "verify_cpu_seconds": f.verify_cpu_s,
            "other_cpu_seconds": f.other_cpu_s,
        })));
        v["peer"] = json!(self.peer.as_ref().map(|p| json!({
            "name": "postgres",
            "version": p.version,
            "settings": p.settings,
            "runs": p.runs.iter().map(|r| json!({
                "clients": r.clients,
                "seconds": r.seconds,
                "transactions": r.transactions,
                "tps": r.tps,
                "refused": r.refused,
                "latency_ms": summary_json(&r.latency),
                "ratio": self.ratio(r),
            })).collect::<Vec<_>>(),
        })));
        v
    }
}

/// The workload's description, before any run.
pub fn print_workload(w: &Workload, mix: &BTreeMap<Sort, usize>, total: usize) {
    let count = |m| w.budgets.iter().filter(|b| b.management == m).count();
    println!(
        "workload: {} budgets ({} direct payment, {} third party, {} notional) under 3 commissioners, each opened, funded, with an approved care plan and service agreements (setup, not timed)",
        w.budgets.len(),
        count(Management::Direct),
        count(Management::ThirdParty),
        count(Management::Notional),
    );
    let parts: Vec<String> = mix
        .iter()
        .map(|(s, n)| {
            format!(
                "{:.0} % {}",
                100.0 * *n as f64 / total.max(1) as f64,
                s.name()
            )
        })
        .collect();
    println!(
        "timed events: {total}, signed before the clock starts: {}",
        parts.join(", ")
    );
}

/// What the figures were measured on.
pub struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
    memory_gib: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            model,
            kernel,
            memory_gib: memory_kib / (1024.0 * 1024.0),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{}: {} CPUs ({}), {:.1} GiB memory, Linux {}",
            env!("CARGO_PKG_VERSION"),
            self.cpus,
            self.model,
            self.memory_gib,
            self.kernel
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "cpus": self.cpus,
            "cpu_model": self.model,
            "memory_gib": self.memory_gib,
            "kernel": self.kernel,
        })
    }
}

/// Now, as an ISO 8601 UTC time to the second.
pub fn utc_now() -> String {
    let secs = phb_client::unix_now();
    let date = phb_domain::event::Date::from_unix_micros(secs.saturating_mul(1_000_000));
    let t = secs.rem_euclid(86_400);
    format!("{date}T{:02}:{:02}:{:02}Z", t / 3600, t / 60 % 60, t % 60)
}
