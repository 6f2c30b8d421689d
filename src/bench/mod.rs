//! `phb-ledger bench`: the ledger measured from outside, as partners use
//! it (modelled on `tigerbeetle benchmark`).
//!
//! It starts `phb-ledger serve` from this same binary on a fresh data
//! directory (or drives `--server`), registers organisations and opens and
//! funds budgets with care plans and service agreements, signs every timed
//! event ahead of time, then drives the server over gRPC with concurrent
//! clients sharing a few HTTP/2 connections, and prints events/s, request
//! latency, and the server's CPU and memory from /proc. Modes: `append`,
//! `mixed` (GetBalance readers under the append load), `restart` (time to
//! SERVING on the log just written), `verify` (`export`, then `audit
//! verify`). `--peer postgres` runs the ledger table users would otherwise
//! build, on a temporary PostgreSQL cluster, in the same run, and prints
//! the ratio. Every timed event must be accepted: a refusal fails the run,
//! so the figure counts only real appends.

mod load;
mod pgcluster;
mod postgres;
mod report;
mod server;
mod workload;

use anyhow::{anyhow, bail, Context, Result};
use phb_client::{methods, Signer};
use phb_proto::v1 as pb;
use report::{
    Machine, PeerFigures, ReadFigures, Report, RestartFigures, RunFigures, VerifyFigures,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use workload::{Cast, Workload};

type Client = pb::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Unary Append from concurrent clients.
    Append,
    /// The append load with GetBalance readers alongside.
    Mixed,
    /// An append run, then stop and start the server: time to SERVING.
    Restart,
    /// An append run, then export the data directory and time `audit verify`.
    Verify,
    /// append, mixed, restart and verify, in that order, on one ledger.
    All,
}

/// A peer run in the same session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// A balances table and a payments table in PostgreSQL, driven by pgbench.
    Postgres,
}

/// `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Drive this running server (URL) instead of starting one (then only
    /// append and mixed, and no server CPU or memory figures).
    #[arg(long, requires = "root_key")]
    server: Option<String>,
    /// With --server: the root secret key file, to register the bench's organisations.
    #[arg(long, requires = "server")]
    root_key: Option<PathBuf>,
    /// With --server: its ledger id (default phb-local).
    #[arg(long, requires = "server")]
    ledger_id: Option<String>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Append)]
    mode: Mode,
    /// Concurrent clients; a list (1,64) runs append once per count.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    clients: Vec<usize>,
    /// HTTP/2 connections the clients share round-robin (default: clients, at most 8).
    #[arg(long)]
    connections: Option<usize>,
    /// Events per Append request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Events per timed run (default 100000; 300 with --smoke).
    #[arg(long)]
    events: Option<usize>,
    /// Budgets the events are spread over (default 1000; 20 with --smoke).
    #[arg(long)]
    budgets: Option<usize>,
    /// GetBalance readers in mixed mode (each a commissioner reading its own budgets).
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// GetBalance calls a second in mixed mode, between all readers (0: back to back).
    #[arg(long, default_value_t = 1000)]
    read_rate: u32,
    /// Run the equivalent workload against a peer too, and print the ratio.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// The server's log: `file` (embedded) or `postgres` (the shared log of
    /// docs/high-availability.md, on a temporary single PostgreSQL server
    /// the bench starts: synchronous commit, no standby).
    #[arg(long, value_enum, default_value_t = crate::config::LogBackend::File)]
    log_backend: crate::config::LogBackend,
    /// Seconds per peer run (default 10; 2 with --smoke).
    #[arg(long)]
    peer_seconds: Option<u64>,
    /// Tiny counts, to prove every mode works (CI), not to measure.
    #[arg(long)]
    smoke: bool,
    /// Also print the figures as one JSON object (the last line of stdout).
    #[arg(long)]
    json: bool,
}

/// The bench's ledger id when it runs its own server.
const OWN_LEDGER_ID: &str = "phb-bench";
/// Most events in one setup request (the server takes at most 1000).
const SETUP_REQUEST_EVENTS: usize = 1000;

/// The arguments, checked, with the smoke mode's defaults applied.
struct Settings {
    events: usize,
    budgets: usize,
    peer_seconds: u64,
    appends: bool,
    mixed: bool,
    restart: bool,
    verify: bool,
}

impl Settings {
    fn of(args: &BenchArgs) -> Result<Settings> {
        let events = args
            .events
            .unwrap_or(if args.smoke { 300 } else { 100_000 });
        let budgets = args.budgets.unwrap_or(if args.smoke { 20 } else { 1000 });
        let peer_seconds = args.peer_seconds.unwrap_or(if args.smoke { 2 } else { 10 });
        if events == 0 || budgets == 0 {
            bail!("--events and --budgets must be at least 1");
        }
        if !(1..=1000).contains(&args.batch) {
            bail!("--batch must be 1 to 1000 (the server takes at most 1000 events per Append)");
        }
        if args.clients.iter().any(|&c| c == 0 || c > 100_000) {
            bail!("--clients must be 1 to 100000");
        }
        if args.connections == Some(0) {
            bail!("--connections must be at least 1");
        }
        if peer_seconds == 0 {
            bail!("--peer-seconds must be at least 1");
        }
        let (appends, mixed, restart, verify) = match args.mode {
            Mode::Append => (true, false, false, false),
            Mode::Mixed => (false, true, false, false),
            Mode::Restart => (true, false, true, false),
            Mode::Verify => (true, false, false, true),
            Mode::All => (true, true, true, true),
        };
        if args.server.is_some() && (restart || verify) {
            bail!(
                "--mode {:?} stops and starts the server and reads its data directory: run it without --server",
                args.mode
            );
        }
        Ok(Settings {
            events,
            budgets,
            peer_seconds,
            appends,
            mixed,
            restart,
            verify,
        })
    }
}

/// One timed run's events, signed.
struct TimedSet {
    mode: &'static str,
    clients: usize,
    events: Vec<pb::SignedEvent>,
    /// What they spend, in pence.
    pence: i64,
}

/// Everything made and signed before the server starts.
struct Prepared {
    cast: Cast,
    workload: Workload,
    registrations: Vec<pb::SignedEvent>,
    /// The budgets' setup, whole budgets per request.
    setup: Vec<Vec<pb::SignedEvent>>,
    sets: Vec<TimedSet>,
    mix: BTreeMap<workload::Sort, usize>,
}

impl Prepared {
    fn setup_events(&self) -> usize {
        self.registrations.len() + self.setup.iter().map(Vec::len).sum::<usize>()
    }
}

/// Runs `bench`.
pub async fn run(args: BenchArgs) -> Result<()> {
    let settings = Settings::of(&args)?;
    let machine = Machine::read();
    println!("phb-ledger bench {}", machine.line());
    let started_at = report::utc_now();
    let load_at_start = server::load_average();
    println!(
        "started {started_at}; load average {}",
        load_at_start.as_deref().unwrap_or("unknown")
    );

    // The peer's programs first: a missing PostgreSQL fails the run before
    // anything is measured, and an install is not inside any measurement.
    let pg_tools = match args.peer {
        Some(Peer::Postgres) => Some(postgres::find_or_install()?),
        None => None,
    };
    let shared_log = match args.log_backend {
        crate::config::LogBackend::File => None,
        crate::config::LogBackend::Postgres => {
            if args.server.is_some() {
                bail!("--log-backend is for the bench's own server: without --server");
            }
            let tools = pgcluster::find_or_install("--log-backend postgres")?;
            eprintln!(
                "log: starting a temporary PostgreSQL server for the shared log ({})",
                tools.version
            );
            let cluster = pgcluster::Cluster::start(tools)?;
            println!(
                "log backend: postgres, one server, no standby ({})",
                cluster.settings
            );
            Some(cluster)
        }
    };

    let signing = Instant::now();
    let mut prepared = prepare(&args, &settings)?;
    let timed_total: usize = prepared.sets.iter().map(|s| s.events.len()).sum();
    eprintln!(
        "signed {} setup and {timed_total} timed events in {:.1} s (not timed)",
        prepared.setup_events(),
        signing.elapsed().as_secs_f64()
    );
    report::print_workload(&prepared.workload, &prepared.mix, timed_total);

    // The server: ours, unless one was given. Declared after `scratch`,
    // so it is stopped (killed, on an error) before its directory goes.
    let scratch = tempfile::Builder::new()
        .prefix("phb-bench")
        .tempdir()
        .context("creating the bench's temporary directory")?;
    let mut own = match &args.server {
        Some(_) => None,
        None => {
            let mut s = server::Server::new(
                scratch.path().join("data"),
                scratch.path(),
                OWN_LEDGER_ID,
                &prepared.cast.root.public_key_hex(),
            )?;
            if let Some(pg) = &shared_log {
                s.env = vec![
                    ("PHB_LEDGER_LOG_BACKEND".into(), "postgres".into()),
                    ("PHB_LEDGER_LOG_POSTGRES_URL".into(), pg.url()),
                    ("PHB_LEDGER_LOG_ADVERTISE".into(), "bench-server:0".into()),
                ];
            }
            s.start().await?;
            eprintln!(
                "server pid {} on {} (data {})",
                s.pid,
                s.addr,
                s.data.display()
            );
            Some(s)
        }
    };
    let url = match (&args.server, &own) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => format!("http://{}", s.addr),
        (None, None) => bail!("no server to drive"),
    };

    let setup_started = Instant::now();
    let setup_events = prepared.setup_events();
    let organisations = prepared.registrations.len();
    let mut client = Client::new(load::connect(&url, 1).await?.remove(0));
    send_setup(&mut client, &mut prepared).await?;
    eprintln!(
        "setup: {setup_events} events ({organisations} organisations; {} budgets opened, funded, with plans and agreements) in {:.1} s (not timed)",
        settings.budgets,
        setup_started.elapsed().as_secs_f64()
    );

    // The timed runs, one after the other on the same ledger.
    let readers = Arc::new(readers_of(&prepared.cast, &prepared.workload));
    let pid = own.as_ref().map(|s| s.pid);
    let mut report = Report::default();
    let mut spent_pence = 0i64;
    for set in std::mem::take(&mut prepared.sets) {
        let pence = set.pence;
        let f = timed_run(&url, pid, &args, set, &readers).await?;
        let refused = f.run.refused > 0;
        if !refused {
            spent_pence += pence;
        }
        report.runs.push(f);
        if refused {
            break;
        }
    }
    let refused: u64 = report.runs.iter().map(|f| f.run.refused).sum();
    let accepted: u64 = report.runs.iter().map(|f| f.run.accepted).sum();
    if refused == 0 && !report.runs.is_empty() {
        check_spent(&mut client, &prepared, spent_pence)
            .await
            .context("after the timed runs")?;
    }
    drop(client);

    if let (true, Some(s), 0) = (settings.restart, own.as_mut(), refused) {
        let log_len = setup_events as u64 + accepted;
        report.restart = Some(restart(s, &prepared, spent_pence, log_len).await?);
    }
    if let Some(s) = own.as_mut() {
        s.stop().await?;
        if settings.verify && refused == 0 {
            report.verify = Some(verify(s, scratch.path(), &prepared.cast).await?);
        }
    }
    report.print();
    println!(
        "load average at the end: {}",
        server::load_average().as_deref().unwrap_or("unknown")
    );

    // The peer last, with the machine to itself.
    if let (Some(tools), 0) = (pg_tools, refused) {
        report.peer = Some(peer(tools, &report, &settings)?);
        report.print_peer();
    }
    if args.json {
        let head = json!({
            "machine": machine.json(),
            "started": started_at,
            "load_average_at_start": load_at_start,
            "log_backend": format!("{:?}", args.log_backend).to_lowercase(),
            "workload": {
                "budgets": settings.budgets,
                "events_per_run": settings.events,
                "batch": args.batch,
                "mix": prepared.mix.iter().map(|(s, n)| (s.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            },
        });
        println!("{}", report.json(head));
    }
    verdict(&report)
}

/// Plans the timed runs, derives the setup that funds them, and signs it all.
fn prepare(args: &BenchArgs, s: &Settings) -> Result<Prepared> {
    // Ids carry a tag of this run, so a bench can run twice on one server.
    let run_tag = format!(
        "{:x}{:04x}",
        phb_client::unix_now(),
        rand_core::RngCore::next_u32(&mut rand_core::OsRng) & 0xffff
    );
    let (root, ledger_id) = match (&args.server, &args.root_key) {
        (Some(_), Some(key)) => (
            crate::load_signer("root", key)?,
            args.ledger_id
                .clone()
                .unwrap_or_else(|| crate::DEFAULT_LEDGER_ID.to_string()),
        ),
        _ => (Signer::generate("root"), OWN_LEDGER_ID.to_string()),
    };
    let cast = Cast::new(root, &run_tag);
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros();
    let today = phb_domain::event::Date::from_unix_micros(i64::try_from(now_micros)?);
    let mut w = Workload::new(&ledger_id, &run_tag, s.budgets, today);
    let mut plans = Vec::new();
    if s.appends {
        for &c in &args.clients {
            let set = plans.len();
            plans.push(("append", c, w.timed(set, s.events)));
        }
    }
    if s.mixed {
        let c = args.clients.iter().copied().max().unwrap_or(64);
        let set = plans.len();
        plans.push(("mixed", c, w.timed(set, s.events)));
    }
    let registrations = w.registrations(&cast);
    let budgets = w.setup(&cast);
    let sizes: Vec<usize> = budgets.iter().map(Vec::len).collect();
    let mut signed =
        workload::sign_all(&cast, budgets.into_iter().flatten().collect())?.into_iter();
    let mut setup: Vec<Vec<pb::SignedEvent>> = vec![Vec::new()];
    for size in sizes {
        if setup.last().map_or(0, Vec::len) + size > SETUP_REQUEST_EVENTS {
            setup.push(Vec::new());
        }
        if let Some(request) = setup.last_mut() {
            request.extend(signed.by_ref().take(size));
        }
    }
    let mut sets = Vec::with_capacity(plans.len());
    let mut mix = BTreeMap::new();
    for (mode, clients, t) in plans {
        for (sort, n) in &t.mix {
            *mix.entry(*sort).or_insert(0usize) += n;
        }
        sets.push(TimedSet {
            mode,
            clients,
            pence: t.pence,
            events: workload::sign_all(&cast, t.events)?,
        });
    }
    Ok(Prepared {
        cast,
        workload: w,
        registrations,
        setup,
        sets,
        mix,
    })
}

/// The setup, untimed: the registrations in one atomic request, then the
/// budgets' openings, funding, plans and agreements.
async fn send_setup(client: &mut Client, p: &mut Prepared) -> Result<()> {
    let registrations = std::mem::take(&mut p.registrations);
    append_all_accepted(client, registrations, true, "registering the organisations").await?;
    for request in std::mem::take(&mut p.setup) {
        if !request.is_empty() {
            append_all_accepted(client, request, false, "opening budgets").await?;
        }
    }
    Ok(())
}

/// One timed run: its clients' requests over its connections (and in mixed
/// mode the readers alongside), with the server's CPU and memory around it.
async fn timed_run(
    url: &str,
    server_pid: Option<u32>,
    args: &BenchArgs,
    set: TimedSet,
    readers: &Arc<Vec<load::Reader>>,
) -> Result<RunFigures> {
    let TimedSet {
        mode,
        clients,
        events,
        ..
    } = set;
    let connections = args.connections.unwrap_or(clients.min(8));
    let channels = load::connect(url, connections).await?;
    let shares = load::requests(events, clients, args.batch);
    let with_readers = mode == "mixed" && args.readers > 0 && !readers.is_empty();
    eprintln!(
        "{mode}: {clients} clients on {connections} connections, batch {}{}",
        args.batch,
        match (with_readers, args.read_rate) {
            (false, _) => String::new(),
            (true, 0) => format!(", {} GetBalance readers back to back", args.readers),
            (true, r) => format!(
                ", {} GetBalance readers at {r} calls/s in all",
                args.readers
            ),
        }
    );
    let cpu_before = server_pid.map(server::cpu_seconds).transpose()?;
    let client_before = server::cpu_seconds(std::process::id()).ok();
    let machine_before = server::machine_busy_seconds().ok();
    let threads_before = server_pid.map(server::thread_cpu_seconds).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader_tasks = if with_readers {
        Some(load::spawn_readers(
            url,
            readers.clone(),
            args.readers,
            args.read_rate,
            stop.clone(),
        )?)
    } else {
        None
    };
    let mut run = load::run_appends(&channels, shares).await?;
    stop.store(true, Ordering::Relaxed);
    let cpu_after = server_pid.map(server::cpu_seconds).transpose()?;
    let client_after = server::cpu_seconds(std::process::id()).ok();
    let machine_after = server::machine_busy_seconds().ok();
    let threads_after = server_pid.map(server::thread_cpu_seconds).transpose()?;
    let rss_kib = server_pid.map(server::memory_kib).transpose()?;
    let mut reads = None;
    if with_readers {
        let mut latencies = load::Latencies::default();
        let (mut errors, mut reasons) = (0, Vec::new());
        let runs = match reader_tasks {
            Some(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("waiting for the readers")?
                .map_err(|_| anyhow::anyhow!("the readers' thread panicked"))??,
            None => Vec::new(),
        };
        for r in runs {
            latencies.extend(r.latencies);
            errors += r.errors;
            reasons.extend(r.reasons);
        }
        reads = Some(ReadFigures {
            readers: args.readers,
            latency: latencies.summary(),
            errors,
            reasons,
        });
    }
    let latency = std::mem::take(&mut run.requests).summary();
    let server_cpu_s = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let client_cpu_s = client_before.zip(client_after).map(|(a, b)| b - a);
    let other_cpu_s = others(machine_before, machine_after, &[server_cpu_s, client_cpu_s]);
    let mut threads: Vec<(String, f64)> = match (threads_before, threads_after) {
        (Some(before), Some(after)) => after
            .into_iter()
            .map(|(name, cpu)| {
                let used = cpu - before.get(&name).copied().unwrap_or(0.0);
                (name, used)
            })
            .filter(|(_, used)| *used > 0.0)
            .collect(),
        _ => Vec::new(),
    };
    // CPU of threads that ended during the run (sled's IO pool starts and
    // ends threads) is in the process's total but in no thread's.
    let listed: f64 = threads.iter().map(|(_, used)| used).sum();
    if let Some(ended) = server_cpu_s.map(|total| total - listed) {
        if ended > 0.01 {
            threads.push(("(threads that ended)".to_string(), ended));
        }
    }
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let f = RunFigures {
        mode,
        clients,
        connections,
        batch: args.batch,
        run,
        latency,
        server_cpu_s,
        client_cpu_s,
        other_cpu_s,
        threads,
        rss_kib,
        reads,
    };
    eprintln!(
        "{mode}: {} events in {:.2} s: {:.0} events/s, p99 {:.2} ms",
        f.run.accepted,
        f.run.elapsed.as_secs_f64(),
        f.events_per_s(),
        f.latency.p99
    );
    Ok(f)
}

/// Stops the server cleanly and starts it on the same directory: the time
/// to SERVING, and the figures it then serves must be the same.
async fn restart(
    s: &mut server::Server,
    p: &Prepared,
    spent_pence: i64,
    log_len: u64,
) -> Result<RestartFigures> {
    let stop = s.stop().await?;
    let busy_before = server::machine_busy_seconds().ok();
    let ours_before = server::cpu_seconds(std::process::id()).ok();
    let to_serving = s.start().await?;
    // The new server's whole life so far is its start.
    let server_cpu_s = server::cpu_seconds(s.pid).ok();
    let other_cpu_s = others(
        busy_before,
        server::machine_busy_seconds().ok(),
        &[
            server_cpu_s,
            ours_before
                .zip(server::cpu_seconds(std::process::id()).ok())
                .map(|(a, b)| b - a),
        ],
    );
    let rss_kib = server::memory_kib(s.pid).ok();
    let (entries, replay_ms) = s.replay_report().ok_or_else(|| {
        anyhow!(
            "the restarted server did not report its replay; its stderr:\n{}",
            s.stderr()
        )
    })?;
    if entries != log_len {
        bail!("the restarted server replayed {entries} entries; the bench wrote {log_len}");
    }
    let mut client = Client::new(
        load::connect(&format!("http://{}", s.addr), 1)
            .await?
            .remove(0),
    );
    check_spent(&mut client, p, spent_pence)
        .await
        .context("after the restart")?;
    eprintln!(
        "restart: {entries} entries in the log, SERVING {:.2} s after start",
        to_serving.as_secs_f64()
    );
    Ok(RestartFigures {
        entries,
        to_serving,
        replay_ms: Some(replay_ms),
        server_cpu_s,
        other_cpu_s,
        stop,
        rss_kib,
    })
}

/// CPU the rest of the machine used between two readings of its busy
/// time: the busy time less what `ours` (each known or not) used.
fn others(before: Option<f64>, after: Option<f64>, ours: &[Option<f64>]) -> Option<f64> {
    let busy = after? - before?;
    let ours: f64 = ours.iter().map(|c| c.unwrap_or(0.0)).sum();
    Some((busy - ours).max(0.0))
}

/// Runs pgbench at each client count of the append runs.
fn peer(tools: postgres::Tools, report: &Report, s: &Settings) -> Result<PeerFigures> {
    let version = tools.version.clone();
    eprintln!("peer: starting a temporary PostgreSQL cluster ({version})");
    let cluster = postgres::start(tools, s.budgets)?;
    let mut counts: Vec<usize> = report
        .runs
        .iter()
        .filter(|f| f.mode == "append")
        .map(|f| f.clients)
        .collect();
    if counts.is_empty() {
        counts = report.runs.iter().map(|f| f.clients).collect();
    }
    counts.dedup();
    let mut runs = Vec::new();
    for (i, &c) in counts.iter().enumerate() {
        eprintln!("peer: pgbench, {c} clients, {} s", s.peer_seconds);
        runs.push(cluster.pgbench(c, s.peer_seconds, s.budgets, i + 1)?);
    }
    let settings = cluster.settings.clone();
    cluster.stop()?;
    Ok(PeerFigures {
        version,
        settings,
        runs,
    })
}

/// Fails the command if any figure does not count.
fn verdict(report: &Report) -> Result<()> {
    let refused: u64 = report.runs.iter().map(|f| f.run.refused).sum();
    if refused > 0 {
        let reasons: Vec<&str> = report
            .runs
            .iter()
            .flat_map(|f| f.run.reasons.iter().map(String::as_str))
            .collect();
        bail!(
            "{refused} timed events were not accepted, so the figures do not count; first reasons:\n  {}",
            reasons.join("\n  ")
        );
    }
    let read_errors: u64 = report
        .runs
        .iter()
        .filter_map(|f| f.reads.as_ref().map(|r| r.errors))
        .sum();
    if read_errors > 0 {
        bail!("{read_errors} GetBalance calls failed");
    }
    if let Some(p) = &report.peer {
        let refused: u64 = p.runs.iter().map(|r| r.refused).sum();
        if refused > 0 {
            bail!("{refused} PostgreSQL payments were rolled back or failed; the peer's figures do not count");
        }
    }
    Ok(())
}

/// Appends `events` in one request; every one must be written.
async fn append_all_accepted(
    client: &mut Client,
    events: Vec<pb::SignedEvent>,
    atomic: bool,
    what: &str,
) -> Result<()> {
    let n = events.len();
    let results = client
        .append(pb::AppendRequest { events, atomic })
        .await
        .map_err(|s| anyhow!("{what}: Append failed: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .results;
    if results.len() != n {
        bail!("{what}: {} results for {n} events", results.len());
    }
    for r in results {
        match r.error {
            Some(e) if e.code != 0 => bail!(
                "{what}: event {} refused: {:?}: {}",
                r.event_id,
                tonic::Code::from_i32(e.code),
                e.message
            ),
            _ if r.duplicate => bail!("{what}: event {} answered as a duplicate", r.event_id),
            _ => {}
        }
    }
    Ok(())
}

/// The mixed mode's readers: each commissioner reading its own budgets.
fn readers_of(cast: &Cast, w: &Workload) -> Vec<load::Reader> {
    cast.commissioners
        .iter()
        .enumerate()
        .map(|(i, c)| load::Reader {
            signer: c.clone(),
            budgets: w
                .budgets
                .iter()
                .filter(|b| b.commissioner == i)
                .map(|b| b.id.clone())
                .collect(),
        })
        .filter(|r| !r.budgets.is_empty())
        .collect()
}

/// Checks the server's figures: the bench's budgets together have spent
/// exactly what the accepted timed events spent (read by the auditor).
async fn check_spent(client: &mut Client, p: &Prepared, expected_pence: i64) -> Result<()> {
    let (auditor, w) = (&p.cast.auditor, &p.workload);
    let prefix = format!("b-{}-", w.run);
    let mut spent = 0i64;
    let mut seen = 0usize;
    let mut token = String::new();
    loop {
        let req = auditor.request(
            methods::LIST_BALANCES,
            pb::ListBalancesRequest {
                commissioner_id: String::new(),
                page_size: 1000,
                page_token: token,
            },
        );
        let page = client
            .list_balances(req)
            .await
            .map_err(|s| anyhow!("ListBalances: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        for b in page
            .balances
            .iter()
            .filter(|b| b.budget_id.starts_with(&prefix))
        {
            spent += pence(&b.spent).ok_or_else(|| {
                anyhow!(
                    "budget {}: spent {:?} is not an amount",
                    b.budget_id,
                    b.spent
                )
            })?;
            seen += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if seen != w.budgets.len() || spent != expected_pence {
        bail!(
            "the server shows {seen} of the bench's {} budgets with {} spent; the accepted events spent {}",
            w.budgets.len(),
            workload::pounds(spent),
            workload::pounds(expected_pence)
        );
    }
    Ok(())
}

/// Pence from the server's "123.45".
fn pence(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.')?;
    if frac.len() != 2
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    int.parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac.parse().ok()?)
}

/// `export` the stopped server's data directory, then time `audit verify`
/// on it, both as the separate commands an auditor runs.
async fn verify(s: &server::Server, scratch: &Path, cast: &Cast) -> Result<VerifyFigures> {
    let exe = std::env::current_exe()?;
    let file = scratch.join("ledger.export");
    let started = Instant::now();
    let out = tokio::process::Command::new(&exe)
        .arg("export")
        .arg("--data")
        .arg(&s.data)
        .arg("--out")
        .arg(&file)
        .output()
        .await
        .context("running phb-ledger export")?;
    if !out.status.success() {
        bail!(
            "export failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let export = started.elapsed();
    // The ledger key's public half, from the secret the server keeps.
    let secret = std::fs::read_to_string(s.data.join("ledger.key"))
        .with_context(|| format!("reading {}", s.data.join("ledger.key").display()))?;
    let seed = phb_client::parse_hex32(&secret).context("reading ledger.key")?;
    let ledger_key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
    );
    let busy_before = server::machine_busy_seconds().ok();
    let ours_before = server::cpu_seconds(std::process::id()).ok();
    let children_before = server::children_cpu_seconds();
    let started = Instant::now();
    let out = tokio::process::Command::new(&exe)
        .args(["audit", "verify"])
        .arg(&file)
        .arg("--root-key")
        .arg(cast.root.public_key_hex())
        .arg("--ledger-key")
        .arg(&ledger_key)
        .arg("--json")
        .output()
        .await
        .context("running phb-ledger audit verify")?;
    let verify = started.elapsed();
    // Waited for, so its CPU is in our children's.
    let verify_cpu_s = children_before
        .zip(server::children_cpu_seconds())
        .map(|(a, b)| b - a);
    let other_cpu_s = others(
        busy_before,
        server::machine_busy_seconds().ok(),
        &[
            verify_cpu_s,
            ours_before
                .zip(server::cpu_seconds(std::process::id()).ok())
                .map(|(a, b)| b - a),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "audit verify failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("audit verify printed no JSON summary: {stdout}"))?;
    let entries = summary["entries"]
        .as_u64()
        .ok_or_else(|| anyhow!("audit verify's summary has no entries: {summary}"))?;
    eprintln!(
        "verify: {entries} entries verified in {:.2} s",
        verify.as_secs_f64()
    );
    Ok(VerifyFigures {
        entries,
        export,
        verify,
        verifier_rate: summary["entries_per_second"].as_f64(),
        verify_cpu_s,
        other_cpu_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pence_reads_only_the_servers_two_decimal_amounts() {
        assert_eq!(pence("0.00"), Some(0));
        assert_eq!(pence("12.34"), Some(1234));
        assert_eq!(pence("1000000000.00"), Some(100_000_000_000));
        for bad in ["12", "12.3", "12.345", "-1.00", "1,000.00", ".50", "a.bc"] {
            assert_eq!(pence(bad), None, "{bad}");
        }
    }
}
