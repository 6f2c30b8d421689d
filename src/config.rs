//! `serve`'s settings: one list, read from a TOML file (`--config`), the
//! environment (`PHB_LEDGER_…`) and the command line, in that order of
//! precedence from lowest to highest, over defaults that work out of the
//! box. docs/configuration.md lists every setting; `phb-ledger config
//! check FILE` reads a file as `serve` would and names a bad key and its
//! line. Unknown keys are errors: a misspelt setting must never be
//! silently replaced by its default.

use anyhow::{anyhow, bail, Context, Result};
use phb_grpc::{limits, ServerLimits};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default data directory.
pub const DEFAULT_DATA: &str = "./phb-data";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default address of the metrics and probes HTTP port.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// The default checkpoint interval (entries).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
const MIB: usize = 1024 * 1024;

/// Environment names of earlier releases, still read (when the new name is
/// not set) so existing unit files and scripts keep working.
const OLD_ENV: &[(&str, &str)] = &[
    ("PHB_DATA", "PHB_LEDGER_DATA"),
    ("PHB_LISTEN", "PHB_LEDGER_LISTEN"),
    ("PHB_ROOT_PUBLIC_KEY", "PHB_LEDGER_ROOT_PUBLIC_KEY"),
    ("PHB_ALLOW_INDEX_REBUILD", "PHB_LEDGER_ALLOW_INDEX_REBUILD"),
    ("PHB_CHECKPOINT_EVERY", "PHB_LEDGER_CHECKPOINT_EVERY"),
    ("PHB_SNAPSHOT_EVERY", "PHB_LEDGER_SNAPSHOT_EVERY"),
    ("PHB_VERIFY_FULL", "PHB_LEDGER_VERIFY_FULL"),
    ("PHB_MAX_CONNECTIONS", "PHB_LEDGER_MAX_CONNECTIONS"),
    (
        "PHB_MAX_CONCURRENT_STREAMS",
        "PHB_LEDGER_MAX_CONCURRENT_STREAMS",
    ),
    ("PHB_REQUEST_BUFFER_MIB", "PHB_LEDGER_REQUEST_BUFFER_MIB"),
    (
        "PHB_CONNECTION_BUFFER_MIB",
        "PHB_LEDGER_CONNECTION_BUFFER_MIB",
    ),
    (
        "PHB_REQUEST_BODY_TIMEOUT",
        "PHB_LEDGER_REQUEST_BODY_TIMEOUT",
    ),
    ("PHB_HANDSHAKE_TIMEOUT", "PHB_LEDGER_HANDSHAKE_TIMEOUT"),
    ("PHB_IDLE_TIMEOUT", "PHB_LEDGER_IDLE_TIMEOUT"),
    (
        "PHB_HTTP2_KEEPALIVE_INTERVAL",
        "PHB_LEDGER_HTTP2_KEEPALIVE_INTERVAL",
    ),
    (
        "PHB_HTTP2_KEEPALIVE_TIMEOUT",
        "PHB_LEDGER_HTTP2_KEEPALIVE_TIMEOUT",
    ),
    ("PHB_TCP_KEEPALIVE", "PHB_LEDGER_TCP_KEEPALIVE"),
];

/// Copies each old environment name's value to its new name where only the
/// old one is set. Called first thing, before any thread starts.
pub fn adopt_old_env_names() {
    for (old, new) in OLD_ENV {
        if std::env::var_os(new).is_none() {
            if let Some(v) = std::env::var_os(old) {
                std::env::set_var(new, v);
            }
        }
    }
}

/// A duration setting: a number with a unit (`ms`, `s`, `m`, `h`), or a
/// bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 5m"))?;
        let ms = match unit {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
        };
        ms.map(|ms| Span(Duration::from_millis(ms)))
            .ok_or_else(|| format!("{text:?} is too long"))
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if ms.is_multiple_of(60_000) && ms > 0 => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `serve`'s settings on the command line. Each has an environment name
/// and (but the one-off operator switches) a key in the file; a flag or
/// variable given wins over the file, the file over the default.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML configuration file (docs/configuration.md).
    #[arg(long, env = "PHB_LEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (log, index, keys) [storage.data; default ./phb-data].
    #[arg(long, env = "PHB_LEDGER_DATA")]
    pub data: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [server.listen;
    /// default 127.0.0.1:50051].
    #[arg(long, env = "PHB_LEDGER_LISTEN")]
    pub listen: Option<String>,
    /// This ledger's id; every event must name it. Fixed at first start
    /// [ledger.id; default phb-local].
    #[arg(long, env = "PHB_LEDGER_ID")]
    pub ledger_id: Option<String>,
    /// The root public key (64 hex characters). If omitted, a root key is
    /// generated into the data directory on first start
    /// [ledger.root_public_key].
    #[arg(long, env = "PHB_LEDGER_ROOT_PUBLIC_KEY")]
    pub root_public_key: Option<String>,
    /// Issue a signed checkpoint after the group commit that takes the log
    /// this many entries past the latest one (also every minute the log has
    /// grown, and on demand) [ledger.checkpoint_every; default 1000].
    #[arg(long, env = "PHB_LEDGER_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<u64>,
    /// Take a snapshot of the projections in the background after the group
    /// commit that takes the log this many entries past the latest one (and
    /// at a clean stop) [storage.snapshot_every; default 100000].
    #[arg(long, env = "PHB_LEDGER_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// One-off: rebuild the index even though it records more entries than
    /// the log holds (evidence of lost or removed entries). Only after
    /// investigating: docs/operations.md, "The log is shorter than its index".
    #[arg(long, env = "PHB_LEDGER_ALLOW_INDEX_REBUILD")]
    pub allow_index_rebuild: bool,
    /// One-off: ignore the snapshots at this start; read and verify the
    /// whole log and rebuild every projection from it.
    #[arg(long, env = "PHB_LEDGER_VERIFY_FULL")]
    pub verify_full: bool,
    /// Most client connections open at once, lowered to fit the descriptor
    /// limit [limits.max_connections; default 4096].
    #[arg(long, env = "PHB_LEDGER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// HTTP/2 streams (calls) one connection may have open at once
    /// [limits.max_concurrent_streams; default 128].
    #[arg(long, env = "PHB_LEDGER_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// MiB of unfinished request bodies buffered across all connections
    /// [limits.request_buffer_mib; default 256].
    #[arg(long, env = "PHB_LEDGER_REQUEST_BUFFER_MIB")]
    pub request_buffer_mib: Option<usize>,
    /// MiB of unfinished request bodies buffered on one connection
    /// [limits.connection_buffer_mib; default 16].
    #[arg(long, env = "PHB_LEDGER_CONNECTION_BUFFER_MIB")]
    pub connection_buffer_mib: Option<usize>,
    /// Time a request has to deliver its body, e.g. 30s, 500ms, 2m
    /// [limits.request_body_timeout; default 30s].
    #[arg(long, env = "PHB_LEDGER_REQUEST_BODY_TIMEOUT")]
    pub request_body_timeout: Option<Span>,
    /// Time a new connection has to complete the HTTP/2 handshake
    /// [limits.handshake_timeout; default 10s].
    #[arg(long, env = "PHB_LEDGER_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<Span>,
    /// Time a connection may stay open with no request in progress
    /// [limits.idle_timeout; default 5m].
    #[arg(long, env = "PHB_LEDGER_IDLE_TIMEOUT")]
    pub idle_timeout: Option<Span>,
    /// Interval between the server's HTTP/2 keepalive PINGs
    /// [limits.http2_keepalive_interval; default 1m].
    #[arg(long, env = "PHB_LEDGER_HTTP2_KEEPALIVE_INTERVAL")]
    pub http2_keepalive_interval: Option<Span>,
    /// Time a peer has to acknowledge a keepalive PING
    /// [limits.http2_keepalive_timeout; default 20s].
    #[arg(long, env = "PHB_LEDGER_HTTP2_KEEPALIVE_TIMEOUT")]
    pub http2_keepalive_timeout: Option<Span>,
    /// Idle time before TCP keepalive probes start
    /// [limits.tcp_keepalive; default 1m].
    #[arg(long, env = "PHB_LEDGER_TCP_KEEPALIVE")]
    pub tcp_keepalive: Option<Span>,
    /// Calls one client may start a second (burst twice that); a client is
    /// its TLS certificate's organisation, else its IP address; 0: no limit
    /// [limits.client_requests_per_second; default 0].
    #[arg(long, env = "PHB_LEDGER_CLIENT_REQUESTS_PER_SECOND")]
    pub client_requests_per_second: Option<u64>,
    /// Calls one client may have in progress at once; 0: no limit
    /// [limits.client_concurrent_requests; default 0].
    #[arg(long, env = "PHB_LEDGER_CLIENT_CONCURRENT_REQUESTS")]
    pub client_concurrent_requests: Option<usize>,
    /// Address of the HTTP port for Prometheus metrics (/metrics) and the
    /// probes (/livez, /readyz); empty turns it off [metrics.listen;
    /// default 127.0.0.1:9464].
    #[arg(long, env = "PHB_LEDGER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log format on stderr: human or json [log.format; default human].
    #[arg(long, env = "PHB_LEDGER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// The server's TLS certificate chain (PEM); with --tls-key, the gRPC
    /// port speaks TLS only [tls.cert].
    #[arg(long, env = "PHB_LEDGER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM) [tls.key].
    #[arg(long, env = "PHB_LEDGER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates that chain to this CA (PEM): mutual TLS
    /// [tls.client_ca].
    #[arg(long, env = "PHB_LEDGER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// A client certificate's subject common name is an organisation id,
    /// and its connection may read and sign only as that organisation
    /// [tls.bind_organisation; default false].
    #[arg(long, env = "PHB_LEDGER_TLS_BIND_ORGANISATION")]
    pub tls_bind_organisation: Option<bool>,
    /// Refuse read calls without x-phb-nonce (single-use read signatures)
    /// [auth.require_read_nonce; default false].
    #[arg(long, env = "PHB_LEDGER_REQUIRE_READ_NONCE")]
    pub require_read_nonce: Option<bool>,
    /// Where the log is kept: `file` (the embedded log in the data
    /// directory) or `postgres` (a log shared by several instances on a
    /// PostgreSQL cluster, docs/high-availability.md) [log.backend;
    /// default file].
    #[arg(long, env = "PHB_LEDGER_LOG_BACKEND")]
    pub log_backend: Option<LogBackend>,
    /// With the postgres backend: the cluster's connection string, every
    /// host and `target_session_attrs=read-write` [log.postgres_url].
    #[arg(long, env = "PHB_LEDGER_LOG_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// With the postgres backend: connect over TLS only, trusting the CA
    /// certificates in this PEM file (the server's certificate must chain
    /// to one and name the host) [log.postgres_ca].
    #[arg(long, env = "PHB_LEDGER_LOG_POSTGRES_CA")]
    pub postgres_ca: Option<PathBuf>,
    /// With the postgres backend: the gRPC address this instance gives
    /// readers to send appends to while it is the writer [log.advertise;
    /// default the listen address].
    #[arg(long, env = "PHB_LEDGER_LOG_ADVERTISE")]
    pub advertise: Option<String>,
}

/// Where the log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// The embedded log file in the data directory (one instance).
    #[default]
    File,
    /// A log shared by several instances on PostgreSQL.
    Postgres,
}

/// The shared log's settings (the postgres backend).
#[derive(Debug, Clone)]
pub struct SharedLogSettings {
    /// The connection string.
    pub postgres_url: String,
    /// TLS to the database: the CA file to trust.
    pub postgres_ca: Option<PathBuf>,
    /// The address given to readers while this instance writes.
    pub advertise: String,
}

/// The TLS files `serve` reads at start.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Client CA (PEM): mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Bind connections to their certificate's organisation.
    pub bind_organisation: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (colour only at a terminal).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The file's layout (docs/configuration.md). Every table and key is
/// optional; unknown ones are refused with their line.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    server: ServerTable,
    storage: StorageTable,
    ledger: LedgerTable,
    limits: LimitsTable,
    metrics: MetricsTable,
    log: LogTable,
    tls: TlsTable,
    auth: AuthTable,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct TlsTable {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    bind_organisation: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct AuthTable {
    require_read_nonce: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct MetricsTable {
    listen: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct LogTable {
    format: Option<LogFormat>,
    backend: Option<LogBackend>,
    postgres_url: Option<String>,
    postgres_ca: Option<PathBuf>,
    advertise: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct ServerTable {
    listen: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct StorageTable {
    data: Option<PathBuf>,
    snapshot_every: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct LedgerTable {
    id: Option<String>,
    root_public_key: Option<String>,
    checkpoint_every: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct LimitsTable {
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
    request_buffer_mib: Option<usize>,
    connection_buffer_mib: Option<usize>,
    request_body_timeout: Option<Span>,
    handshake_timeout: Option<Span>,
    idle_timeout: Option<Span>,
    http2_keepalive_interval: Option<Span>,
    http2_keepalive_timeout: Option<Span>,
    tcp_keepalive: Option<Span>,
    client_requests_per_second: Option<u64>,
    client_concurrent_requests: Option<usize>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file.
    File,
    /// A command-line flag or environment variable.
    CommandLine,
}

/// Everything `serve` runs with, resolved.
#[derive(Debug)]
pub struct Settings {
    /// The data directory.
    pub data: PathBuf,
    /// The listen address.
    pub listen: String,
    /// The ledger id, if given (else the directory's, or `phb-local`).
    pub ledger_id: Option<String>,
    /// The root public key, if given (hex).
    pub root_public_key: Option<String>,
    /// Checkpoint interval.
    pub checkpoint_every: u64,
    /// Snapshot interval.
    pub snapshot_every: u64,
    /// One-off: rebuild an index that is ahead of the log.
    pub allow_index_rebuild: bool,
    /// One-off: ignore snapshots.
    pub verify_full: bool,
    /// Transport limits.
    pub limits: ServerLimits,
    /// The metrics and probes address (`None`: off), and whether it was
    /// asked for (then failing to bind it refuses the start).
    pub metrics_listen: Option<(String, bool)>,
    /// Log format.
    pub log_format: LogFormat,
    /// TLS on the gRPC port, if configured.
    pub tls: Option<TlsFiles>,
    /// Refuse read calls without a nonce.
    pub require_read_nonce: bool,
    /// The shared log, with the postgres backend; `None`: the embedded log.
    pub shared_log: Option<SharedLogSettings>,
    /// Each setting's key, value and source, for `config check`.
    pub report: Vec<(&'static str, String, Source)>,
}

/// Reads and checks a configuration file: syntax, unknown tables and keys
/// (named, with their line), and every value's type.
fn read_file(path: &Path) -> Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration file {}", path.display()))?;
    toml::from_str::<File>(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(" line {l}:")).unwrap_or_default();
        anyhow!(
            "{}:{at} {} (docs/configuration.md lists every setting)",
            path.display(),
            e.message()
        )
    })
}

fn pick<T: Clone>(cli: &Option<T>, file: &Option<T>, default: T) -> (T, Source) {
    match (cli, file) {
        (Some(v), _) => (v.clone(), Source::CommandLine),
        (None, Some(v)) => (v.clone(), Source::File),
        (None, None) => (default, Source::Default),
    }
}

fn in_range(name: &str, v: u64, lo: u64, hi: u64) -> Result<u64> {
    if !(lo..=hi).contains(&v) {
        bail!("{name} = {v} is out of range: it must be from {lo} to {hi}");
    }
    Ok(v)
}

impl ServeArgs {
    /// The settings: the file's (if `--config`), under the command line
    /// and environment, over the defaults; every value checked.
    pub fn resolve(&self) -> Result<Settings> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => File::default(),
        };
        // A relative path in the file is relative to the file's directory,
        // so the file means the same wherever `serve` is started from.
        let base = self
            .config
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let rel = |d: &PathBuf| {
            if d.is_relative() {
                base.join(d)
            } else {
                d.clone()
            }
        };
        let file_data = file.storage.data.as_ref().map(rel);
        let mut report = Vec::new();
        let mut note = |key: &'static str, value: String, source: Source| {
            report.push((key, value, source));
        };
        let (data, s) = pick(&self.data, &file_data, PathBuf::from(DEFAULT_DATA));
        note("storage.data", data.display().to_string(), s);
        let (listen, s) = pick(&self.listen, &file.server.listen, DEFAULT_LISTEN.into());
        note("server.listen", listen.clone(), s);
        let (ledger_id, s) = match (&self.ledger_id, &file.ledger.id) {
            (Some(v), _) => (Some(v.clone()), Source::CommandLine),
            (None, Some(v)) => (Some(v.clone()), Source::File),
            (None, None) => (None, Source::Default),
        };
        note(
            "ledger.id",
            ledger_id
                .clone()
                .unwrap_or_else(|| "(the data directory's, else phb-local)".into()),
            s,
        );
        if let Some(k) = self
            .root_public_key
            .as_ref()
            .or(file.ledger.root_public_key.as_ref())
        {
            let valid = hex::decode(k.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|b| phb_chain::parse_public_key(&b));
            if valid.is_none() {
                bail!("ledger.root_public_key is not a valid ed25519 public key: 64 hex characters of a key made by `phb-ledger keygen` (docs/configuration.md)");
            }
        }
        let (root_public_key, s) = match (&self.root_public_key, &file.ledger.root_public_key) {
            (Some(v), _) => (Some(v.clone()), Source::CommandLine),
            (None, Some(v)) => (Some(v.clone()), Source::File),
            (None, None) => (None, Source::Default),
        };
        note(
            "ledger.root_public_key",
            root_public_key
                .clone()
                .unwrap_or_else(|| "(root.pub in the data directory, else generated)".into()),
            s,
        );
        let (checkpoint_every, s) = pick(
            &self.checkpoint_every,
            &file.ledger.checkpoint_every,
            DEFAULT_CHECKPOINT_EVERY,
        );
        let checkpoint_every = in_range("ledger.checkpoint_every", checkpoint_every, 1, 1_000_000)?;
        note("ledger.checkpoint_every", checkpoint_every.to_string(), s);
        let (snapshot_every, s) = pick(
            &self.snapshot_every,
            &file.storage.snapshot_every,
            phb_engine::DEFAULT_SNAPSHOT_EVERY,
        );
        let snapshot_every = in_range("storage.snapshot_every", snapshot_every, 1000, 100_000_000)?;
        note("storage.snapshot_every", snapshot_every.to_string(), s);

        let l = &file.limits;
        let (max_connections, s) = pick(
            &self.max_connections,
            &l.max_connections,
            limits::DEFAULT_MAX_CONNECTIONS,
        );
        note("limits.max_connections", max_connections.to_string(), s);
        let (max_concurrent_streams, s) = pick(
            &self.max_concurrent_streams,
            &l.max_concurrent_streams,
            limits::DEFAULT_MAX_CONCURRENT_STREAMS,
        );
        note(
            "limits.max_concurrent_streams",
            max_concurrent_streams.to_string(),
            s,
        );
        let mib = |name: &str, n: usize| {
            n.checked_mul(MIB)
                .ok_or_else(|| anyhow!("{name} = {n} is too large"))
        };
        let (request_buffer_mib, s) = pick(
            &self.request_buffer_mib,
            &l.request_buffer_mib,
            limits::DEFAULT_REQUEST_BUFFER_BYTES / MIB,
        );
        note(
            "limits.request_buffer_mib",
            request_buffer_mib.to_string(),
            s,
        );
        let (connection_buffer_mib, s) = pick(
            &self.connection_buffer_mib,
            &l.connection_buffer_mib,
            limits::DEFAULT_CONNECTION_BUFFER_BYTES / MIB,
        );
        note(
            "limits.connection_buffer_mib",
            connection_buffer_mib.to_string(),
            s,
        );
        let mut span = |key: &'static str, cli: &Option<Span>, file: &Option<Span>, d: Duration| {
            let (v, s) = pick(cli, file, Span(d));
            note(key, v.to_string(), s);
            v.0
        };
        let request_body_timeout = span(
            "limits.request_body_timeout",
            &self.request_body_timeout,
            &l.request_body_timeout,
            limits::DEFAULT_REQUEST_BODY_TIMEOUT,
        );
        let handshake_timeout = span(
            "limits.handshake_timeout",
            &self.handshake_timeout,
            &l.handshake_timeout,
            limits::DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let idle_timeout = span(
            "limits.idle_timeout",
            &self.idle_timeout,
            &l.idle_timeout,
            limits::DEFAULT_IDLE_TIMEOUT,
        );
        let http2_keepalive_interval = span(
            "limits.http2_keepalive_interval",
            &self.http2_keepalive_interval,
            &l.http2_keepalive_interval,
            limits::DEFAULT_HTTP2_KEEPALIVE_INTERVAL,
        );
        let http2_keepalive_timeout = span(
            "limits.http2_keepalive_timeout",
            &self.http2_keepalive_timeout,
            &l.http2_keepalive_timeout,
            limits::DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
        );
        let tcp_keepalive = span(
            "limits.tcp_keepalive",
            &self.tcp_keepalive,
            &l.tcp_keepalive,
            limits::DEFAULT_TCP_KEEPALIVE,
        );
        let (client_requests_per_second, s) = pick(
            &self.client_requests_per_second,
            &l.client_requests_per_second,
            limits::DEFAULT_CLIENT_REQUESTS_PER_SECOND,
        );
        note(
            "limits.client_requests_per_second",
            client_requests_per_second.to_string(),
            s,
        );
        let (client_concurrent_requests, s) = pick(
            &self.client_concurrent_requests,
            &l.client_concurrent_requests,
            limits::DEFAULT_CLIENT_CONCURRENT_REQUESTS,
        );
        note(
            "limits.client_concurrent_requests",
            client_concurrent_requests.to_string(),
            s,
        );
        let limits = ServerLimits {
            client_requests_per_second,
            client_concurrent_requests,
            max_connections,
            max_concurrent_streams,
            request_buffer_bytes: mib("limits.request_buffer_mib", request_buffer_mib)?,
            connection_buffer_bytes: mib("limits.connection_buffer_mib", connection_buffer_mib)?,
            request_body_timeout,
            handshake_timeout,
            idle_timeout,
            http2_keepalive_interval,
            http2_keepalive_timeout,
            tcp_keepalive,
        };
        limits.validate()?;
        let (metrics, s) = pick(
            &self.metrics_listen,
            &file.metrics.listen,
            DEFAULT_METRICS_LISTEN.into(),
        );
        note(
            "metrics.listen",
            if metrics.is_empty() {
                "(off)".into()
            } else {
                metrics.clone()
            },
            s,
        );
        let metrics_listen = (!metrics.trim().is_empty()).then(|| (metrics, s != Source::Default));
        let (log_format, s) = pick(&self.log_format, &file.log.format, LogFormat::Human);
        note("log.format", format!("{log_format:?}").to_lowercase(), s);
        let t = &file.tls;
        let path = |cli: &Option<PathBuf>, f: &Option<PathBuf>| match cli {
            Some(p) => Some(p.clone()),
            None => f.as_ref().map(rel),
        };
        let cert = path(&self.tls_cert, &t.cert);
        let key = path(&self.tls_key, &t.key);
        let client_ca = path(&self.tls_client_ca, &t.client_ca);
        let (bind_organisation, bs) =
            pick(&self.tls_bind_organisation, &t.bind_organisation, false);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
                bind_organisation,
            }),
            (None, None) => {
                if client_ca.is_some() || bind_organisation {
                    bail!("tls.client_ca and tls.bind_organisation need tls.cert and tls.key (the server's own certificate)");
                }
                None
            }
            _ => bail!("tls.cert and tls.key go together: give both, or neither for plaintext"),
        };
        if let Some(t) = &tls {
            if t.bind_organisation && t.client_ca.is_none() {
                bail!("tls.bind_organisation needs tls.client_ca: organisations are named by client certificates");
            }
            note("tls.cert", t.cert.display().to_string(), Source::File);
            note("tls.key", t.key.display().to_string(), Source::File);
            note(
                "tls.client_ca",
                t.client_ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(none: no client certificates)".into()),
                Source::File,
            );
        } else {
            note("tls", "(off: plaintext gRPC)".into(), Source::Default);
        }
        note("tls.bind_organisation", bind_organisation.to_string(), bs);
        let (require_read_nonce, s) = pick(
            &self.require_read_nonce,
            &file.auth.require_read_nonce,
            false,
        );
        note("auth.require_read_nonce", require_read_nonce.to_string(), s);
        let (backend, s) = pick(&self.log_backend, &file.log.backend, LogBackend::File);
        note("log.backend", format!("{backend:?}").to_lowercase(), s);
        let url = self
            .postgres_url
            .as_ref()
            .or(file.log.postgres_url.as_ref());
        let advertise = self.advertise.as_ref().or(file.log.advertise.as_ref());
        let postgres_ca = match &self.postgres_ca {
            Some(p) => Some(p.clone()),
            None => file.log.postgres_ca.as_ref().map(rel),
        };
        let shared_log = match backend {
            LogBackend::File => {
                if url.is_some() || advertise.is_some() || postgres_ca.is_some() {
                    bail!("log.postgres_url, log.postgres_ca and log.advertise are settings of the postgres backend; set log.backend = \"postgres\" too, or remove them");
                }
                None
            }
            LogBackend::Postgres => {
                let Some(url) = url else {
                    bail!("log.backend = \"postgres\" needs log.postgres_url: the cluster's connection string, e.g. postgresql://phb@db1:5432,db2:5432,db3:5432/phb?target_session_attrs=read-write (docs/high-availability.md)");
                };
                // Checked now, so a typo is named at start, not on first use.
                let mut check = phb_pglog::PgLog::new(url, "check")
                    .map_err(|e| anyhow!("log.postgres_url: {e}"))?;
                if let Some(ca) = &postgres_ca {
                    check
                        .require_tls(ca)
                        .map_err(|e| anyhow!("log.postgres_ca: {e}"))?;
                }
                let advertise = match advertise {
                    Some(a) => a.clone(),
                    None if listen.ends_with(":0") => bail!("log.advertise is needed when server.listen picks a free port ({listen}): the address readers give clients for the writer"),
                    None => listen.clone(),
                };
                // The URL may hold a password: report only that it is set.
                note("log.postgres_url", "(set)".into(), Source::CommandLine);
                note(
                    "log.postgres_ca",
                    postgres_ca
                        .as_ref()
                        .map(|p| {
                            format!("{} (TLS only; certificate and host checked)", p.display())
                        })
                        .unwrap_or_else(|| {
                            "(none: plaintext to the database; set it for TLS)".into()
                        }),
                    Source::CommandLine,
                );
                note("log.advertise", advertise.clone(), Source::CommandLine);
                Some(SharedLogSettings {
                    postgres_url: url.clone(),
                    postgres_ca,
                    advertise,
                })
            }
        };
        Ok(Settings {
            data,
            listen,
            ledger_id,
            root_public_key,
            checkpoint_every,
            snapshot_every,
            allow_index_rebuild: self.allow_index_rebuild,
            verify_full: self.verify_full,
            limits,
            metrics_listen,
            log_format,
            tls,
            require_read_nonce,
            shared_log,
            report,
        })
    }
}

/// `phb-ledger config check FILE`: reads the file as `serve --config FILE`
/// would (with this environment and no flags) and prints every setting,
/// its value and where it came from.
pub fn check(file: &Path) -> Result<()> {
    let args = ServeArgs {
        config: Some(file.to_path_buf()),
        ..ServeArgs::from_env()
    };
    let settings = args.resolve()?;
    // Written with errors ignored: `config check FILE | head` must not
    // panic on the closed pipe.
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: OK", file.display());
    for (key, value, source) in &settings.report {
        let from = match source {
            Source::Default => "default",
            Source::File => "file",
            Source::CommandLine => "environment",
        };
        let _ = writeln!(out, "  {key:<34} = {value}  ({from})");
    }
    Ok(())
}

impl ServeArgs {
    /// The settings the environment gives (as clap would read them with no
    /// flags), for `config check`.
    fn from_env() -> ServeArgs {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        use clap::Parser as _;
        Only::try_parse_from(["phb-ledger"])
            .map(|o| o.args)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phb-ledger.toml");
        std::fs::write(&path, text).unwrap();
        ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
    }

    #[test]
    fn the_file_sets_values_and_flags_win() {
        let s = resolve(
            "[server]\nlisten = \"0.0.0.0:6000\"\n[limits]\nidle_timeout = \"90s\"\nmax_connections = 10\n",
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:6000");
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(90));
        assert_eq!(s.limits.max_connections, 10);
        assert_eq!(s.checkpoint_every, DEFAULT_CHECKPOINT_EVERY);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"0.0.0.0:6000\"\n[storage]\ndata = \"d\"\n",
        )
        .unwrap();
        let s = ServeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:7".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:7");
        // Relative to the file, not to where serve runs.
        assert_eq!(s.data, dir.path().join("d"));
    }

    #[test]
    fn the_shared_log_settings_are_checked_together() {
        let url = "postgresql://phb@db1:5432,db2:5432/phb?target_session_attrs=read-write";
        let s = resolve(&format!(
            "[server]\nlisten = \"10.0.0.5:50051\"\n[log]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n"
        ))
        .unwrap();
        let shared = s.shared_log.expect("the postgres backend");
        assert_eq!(shared.postgres_url, url);
        assert_eq!(
            shared.advertise, "10.0.0.5:50051",
            "the listen address by default"
        );
        assert!(shared.postgres_ca.is_none());
        // Settings of the backend without the backend, no URL, a free
        // port with nothing to advertise, a CA file that is not there.
        for (text, says) in [
            (format!("[log]\npostgres_url = \"{url}\"\n"), "set log.backend"),
            ("[log]\nbackend = \"postgres\"\n".to_string(), "needs log.postgres_url"),
            (
                format!("[server]\nlisten = \"127.0.0.1:0\"\n[log]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n"),
                "log.advertise is needed",
            ),
            (
                format!("[log]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_ca = \"missing.pem\"\n"),
                "log.postgres_ca",
            ),
            (
                "[log]\nbackend = \"postgres\"\npostgres_url = \"not a url at all=\"\n".to_string(),
                "log.postgres_url",
            ),
        ] {
            let e = resolve(&text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = resolve("[server]\nlisten = \"127.0.0.1:1\"\n\n[limits]\nidle_timout = \"3s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("idle_timout"), "{e}");
        assert!(e.contains("idle_timeout"), "the valid keys are listed: {e}");
        let e = resolve("[sever]\nlisten = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("sever"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let e = resolve("[limits]\nidle_timeout = \"3 weeks\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("3 weeks"), "{e}");
        let e = resolve("[ledger]\ncheckpoint_every = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ledger.checkpoint_every = 0 is out of range"),
            "{e}"
        );
        let e = resolve("[storage]\nsnapshot_every = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
