//! The service's metrics: a fixed set of counters, gauges and histograms,
//! updated with atomics on the hot paths and rendered in the Prometheus
//! text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Small on purpose: no dependencies, no IO, no clock (callers measure
//! durations). Labels are bounded by construction: a method name comes
//! from the service's fixed list, a code from the gRPC codes, a flag code
//! from the flag vocabulary; never an id, a reference or any request data,
//! so the number of series is bounded and no personal data can reach it.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The most label sets one family keeps; more are counted under `other`.
pub const MAX_SERIES: usize = 256;

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets it.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, then the +Inf bucket.
    buckets: Vec<AtomicU64>,
    /// The sum, in millionths of the unit.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these bucket upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = if v.is_finite() && v > 0.0 {
            (v * 1e6) as u64
        } else {
            0
        };
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Seconds: 100 µs to 10 s.
pub const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Sizes: powers of two to 4096.
pub const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// One metric with labels: a series per label values.
#[derive(Debug)]
pub struct Family<T> {
    labels: &'static [&'static str],
    make: fn() -> T,
    series: Mutex<BTreeMap<Vec<String>, Arc<T>>>,
}

impl<T> Family<T> {
    fn new(labels: &'static [&'static str], make: fn() -> T) -> Family<T> {
        Family {
            labels,
            make,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The series for these label values (as many as the family's labels).
    pub fn with(&self, values: &[&str]) -> Arc<T> {
        debug_assert_eq!(values.len(), self.labels.len());
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let key: Vec<String> = if series.len() >= MAX_SERIES
            && !series.contains_key(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>())
        {
            values.iter().map(|_| "other".to_string()).collect()
        } else {
            values.iter().map(|v| v.to_string()).collect()
        };
        series
            .entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    fn snapshot(&self) -> Vec<(Vec<String>, Arc<T>)> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Every metric the service exports (docs/operations.md, "Metrics").
#[derive(Debug)]
pub struct Metrics {
    /// Events answered by Append, by result code (OK includes duplicates).
    pub append_events: Family<Counter>,
    /// Calls by method and gRPC status code.
    pub requests: Family<Counter>,
    /// Call latency by method, to the response headers.
    pub request_seconds: Family<Histogram>,
    /// Entries per group commit.
    pub group_commit_entries: Histogram,
    /// Time to write and fdatasync one group.
    pub log_sync_seconds: Histogram,
    /// Entries in the log.
    pub log_entries: Gauge,
    /// Bytes in the log file.
    pub log_bytes: Gauge,
    /// Requests waiting for the writer when it took its last group.
    pub writer_queue_depth: Gauge,
    /// Client connections open.
    pub connections: Gauge,
    /// Flags raised by appended events, by flag code.
    pub flags_raised: Family<Counter>,
    /// Snapshots of the projections kept.
    pub snapshots: Counter,
    /// Statement rows held in memory: those not yet stored in the index
    /// (the rest are read from it), so a few groups' worth.
    pub statement_rows_resident: Gauge,
    /// Signed checkpoints issued.
    pub checkpoints: Counter,
    /// 1 while the ledger accepts writes, 0 once storage refuses them.
    pub writable: Gauge,
    /// 1 while this instance takes appends (alone, or the writer of a
    /// shared log), 0 while it only reads.
    pub writer_role: Gauge,
    /// The last sequence a reader of a shared log knows confirmed there
    /// (its copy is `log_entries`; the difference is its lag).
    pub shared_confirmed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            append_events: Family::new(&["code"], Counter::default),
            requests: Family::new(&["method", "code"], Counter::default),
            request_seconds: Family::new(&["method"], || Histogram::new(SECONDS)),
            group_commit_entries: Histogram::new(SIZES),
            log_sync_seconds: Histogram::new(SECONDS),
            log_entries: Gauge::default(),
            log_bytes: Gauge::default(),
            writer_queue_depth: Gauge::default(),
            connections: Gauge::default(),
            flags_raised: Family::new(&["code"], Counter::default),
            snapshots: Counter::default(),
            statement_rows_resident: Gauge::default(),
            checkpoints: Counter::default(),
            writable: Gauge::default(),
            writer_role: Gauge::default(),
            shared_confirmed: Gauge::default(),
        }
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, names: &[&str], values: &[String], h: &Histogram) {
    let mut cumulative = 0u64;
    for (i, b) in h.buckets.iter().enumerate() {
        cumulative += b.load(Ordering::Relaxed);
        let le = match h.bounds.get(i) {
            Some(bound) => format!("{bound}"),
            None => "+Inf".into(),
        };
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            labels(names, values, Some(("le", &le)))
        );
    }
    let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{} {sum}", labels(names, values, None));
    let _ = writeln!(
        out,
        "{name}_count{} {}",
        labels(names, values, None),
        h.count()
    );
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let counters = |out: &mut String, name: &str, help: &str, f: &Family<Counter>| {
            head(out, name, "counter", help);
            for (values, c) in f.snapshot() {
                let _ = writeln!(out, "{name}{} {}", labels(f.labels, &values, None), c.get());
            }
        };
        counters(
            &mut out,
            "phb_append_events_total",
            "Events answered by Append, by result code (OK includes duplicates).",
            &self.append_events,
        );
        counters(
            &mut out,
            "phb_requests_total",
            "Calls by method and gRPC status code.",
            &self.requests,
        );
        head(
            &mut out,
            "phb_request_duration_seconds",
            "histogram",
            "Call latency by method, to the response headers.",
        );
        for (values, h) in self.request_seconds.snapshot() {
            histogram(
                &mut out,
                "phb_request_duration_seconds",
                self.request_seconds.labels,
                &values,
                &h,
            );
        }
        head(
            &mut out,
            "phb_group_commit_entries",
            "histogram",
            "Entries written per group commit (one write and one fdatasync).",
        );
        histogram(
            &mut out,
            "phb_group_commit_entries",
            &[],
            &[],
            &self.group_commit_entries,
        );
        head(
            &mut out,
            "phb_log_sync_seconds",
            "histogram",
            "Time to write and fdatasync one group commit.",
        );
        histogram(
            &mut out,
            "phb_log_sync_seconds",
            &[],
            &[],
            &self.log_sync_seconds,
        );
        let gauges: [(&str, &str, &Gauge); 8] = [
            ("phb_log_entries", "Entries in the log.", &self.log_entries),
            (
                "phb_statement_rows_resident",
                "Statement rows held in memory, not yet stored in the index.",
                &self.statement_rows_resident,
            ),
            ("phb_log_bytes", "Bytes in the log file.", &self.log_bytes),
            (
                "phb_writer_queue_depth",
                "Requests waiting for the writer when it took its last group.",
                &self.writer_queue_depth,
            ),
            (
                "phb_connections",
                "Client connections open.",
                &self.connections,
            ),
            (
                "phb_writable",
                "1 while the ledger accepts writes; 0 once storage refuses them until a restart.",
                &self.writable,
            ),
            (
                "phb_writer_role",
                "1 while this instance takes appends (alone, or the writer of a shared log); 0 while it only reads.",
                &self.writer_role,
            ),
            (
                "phb_shared_confirmed",
                "A reader of a shared log: the last sequence confirmed there (phb_log_entries is its copy).",
                &self.shared_confirmed,
            ),
        ];
        for (name, help, g) in gauges {
            head(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", g.get());
        }
        counters(
            &mut out,
            "phb_flags_raised_total",
            "Flags raised by appended events, by flag code.",
            &self.flags_raised,
        );
        for (name, help, c) in [
            (
                "phb_snapshots_total",
                "Snapshots of the projections kept.",
                &self.snapshots,
            ),
            (
                "phb_checkpoints_total",
                "Signed checkpoints issued.",
                &self.checkpoints,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", c.get());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::default();
        m.append_events.with(&["OK"]).add(3);
        m.append_events.with(&["FAILED_PRECONDITION"]).inc();
        m.requests.with(&["Append", "OK"]).add(2);
        m.request_seconds.with(&["Append"]).observe(0.003);
        m.request_seconds.with(&["Append"]).observe(20.0);
        m.group_commit_entries.observe(30.0);
        m.log_entries.set(42);
        let text = m.render();
        assert!(
            text.contains("phb_append_events_total{code=\"OK\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("phb_append_events_total{code=\"FAILED_PRECONDITION\"} 1\n"));
        assert!(text.contains("phb_requests_total{method=\"Append\",code=\"OK\"} 2\n"));
        assert!(text
            .contains("phb_request_duration_seconds_bucket{method=\"Append\",le=\"0.0025\"} 0\n"));
        assert!(text
            .contains("phb_request_duration_seconds_bucket{method=\"Append\",le=\"0.005\"} 1\n"));
        assert!(
            text.contains("phb_request_duration_seconds_bucket{method=\"Append\",le=\"+Inf\"} 2\n")
        );
        assert!(text.contains("phb_request_duration_seconds_count{method=\"Append\"} 2\n"));
        assert!(
            text.contains("phb_group_commit_entries_bucket{le=\"32\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("phb_log_entries 42\n"));
        assert!(text.contains("# TYPE phb_log_sync_seconds histogram\n"));
    }

    #[test]
    fn series_are_bounded() {
        let m = Metrics::default();
        for i in 0..(MAX_SERIES + 50) {
            m.flags_raised.with(&[&format!("C{i}")]).inc();
        }
        assert_eq!(m.flags_raised.snapshot().len(), MAX_SERIES + 1);
        assert_eq!(m.flags_raised.with(&["other"]).get(), 50);
    }
}
