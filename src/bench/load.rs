//! The load: clients sending pre-built Append requests over shared HTTP/2
//! connections, and readers sending signed GetBalance calls while they do.

use anyhow::{Context, Result};
use pb::ledger_service_client::LedgerServiceClient;
use phb_client::{methods, Signer};
use phb_proto::v1 as pb;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = LedgerServiceClient<Channel>;

/// Opens `n` HTTP/2 connections to `url` (each `Channel` is one).
pub async fn connect(url: &str, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        out.push(channel);
    }
    Ok(out)
}

/// Latencies of one kind of call.
#[derive(Default)]
pub struct Latencies(Vec<Duration>);

/// Percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latencies {
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Nearest-rank percentiles.
    pub fn summary(mut self) -> Summary {
        self.0.sort_unstable();
        let n = self.0.len();
        if n == 0 {
            return Summary::default();
        }
        let at = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            self.0[rank - 1].as_secs_f64() * 1e3
        };
        Summary {
            count: n,
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }
}

/// What one timed Append run saw.
pub struct AppendRun {
    pub elapsed: Duration,
    pub requests: Latencies,
    /// Events written (new entries).
    pub accepted: u64,
    /// Events not written: refused, duplicates, or in a failed call.
    pub refused: u64,
    /// The first few reasons, for the report.
    pub reasons: Vec<String>,
}

struct ClientResult {
    latencies: Latencies,
    accepted: u64,
    refused: u64,
    reasons: Vec<String>,
}

/// Splits `events` into `clients` contiguous shares of requests of `batch`.
pub fn requests(
    events: Vec<pb::SignedEvent>,
    clients: usize,
    batch: usize,
) -> Vec<Vec<pb::AppendRequest>> {
    let per = events.len().div_ceil(clients.max(1)).max(1);
    let mut shares: Vec<Vec<pb::AppendRequest>> = Vec::with_capacity(clients);
    let mut it = events.into_iter().peekable();
    for _ in 0..clients {
        let mut share = Vec::new();
        let mut left = per;
        while left > 0 && it.peek().is_some() {
            let n = left.min(batch);
            let events: Vec<_> = it.by_ref().take(n).collect();
            left -= events.len();
            share.push(pb::AppendRequest {
                events,
                atomic: false,
            });
        }
        shares.push(share);
    }
    shares
}

/// Runs every client's requests concurrently, client `i` on connection
/// `i % connections`, each waiting for its answer before sending the next.
pub async fn run_appends(
    channels: &[Channel],
    shares: Vec<Vec<pb::AppendRequest>>,
) -> Result<AppendRun> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(shares.len());
    for (i, share) in shares.into_iter().enumerate() {
        let client =
            Client::new(channels[i % channels.len()].clone()).max_decoding_message_size(64 << 20);
        tasks.push(tokio::spawn(append_client(client, share)));
    }
    let mut run = AppendRun {
        elapsed: Duration::ZERO,
        requests: Latencies::default(),
        accepted: 0,
        refused: 0,
        reasons: Vec::new(),
    };
    for t in tasks {
        let r = t.await.context("an append client failed")?;
        run.requests.extend(r.latencies);
        run.accepted += r.accepted;
        run.refused += r.refused;
        for reason in r.reasons {
            if run.reasons.len() < 5 {
                run.reasons.push(reason);
            }
        }
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

async fn append_client(mut client: Client, share: Vec<pb::AppendRequest>) -> ClientResult {
    let mut out = ClientResult {
        latencies: Latencies(Vec::with_capacity(share.len())),
        accepted: 0,
        refused: 0,
        reasons: Vec::new(),
    };
    for request in share {
        let n = request.events.len() as u64;
        let t = Instant::now();
        let answer = client.append(request).await;
        out.latencies.push(t.elapsed());
        match answer {
            Ok(resp) => {
                let results = resp.into_inner().results;
                let mut answered = 0u64;
                for r in &results {
                    answered += 1;
                    let code = r.error.as_ref().map(|e| e.code).unwrap_or(0);
                    if code == 0 && !r.duplicate && r.sequence > 0 {
                        out.accepted += 1;
                    } else {
                        out.refused += 1;
                        if out.reasons.len() < 5 {
                            let why = match &r.error {
                                Some(e) if e.code != 0 => format!(
                                    "{}: {:?}: {}",
                                    r.event_id,
                                    tonic::Code::from_i32(e.code),
                                    e.message
                                ),
                                _ => format!("{}: answered as a duplicate", r.event_id),
                            };
                            out.reasons.push(why);
                        }
                    }
                }
                // An answer missing results refuses the rest.
                if answered < n {
                    out.refused += n - answered;
                    out.reasons
                        .push(format!("{} results for {n} events", results.len()));
                }
            }
            Err(s) => {
                out.refused += n;
                if out.reasons.len() < 5 {
                    out.reasons
                        .push(format!("Append failed: {:?}: {}", s.code(), s.message()));
                }
            }
        }
    }
    out
}

/// A reader: who signs, and which budgets it may read.
pub struct Reader {
    pub signer: Signer,
    pub budgets: Vec<String>,
}

/// What the readers saw.
pub struct ReadRun {
    pub latencies: Latencies,
    pub errors: u64,
    pub reasons: Vec<String>,
}

/// Starts `n` readers, each sending GetBalance as one of `readers` (in
/// turn) on a budget of its own picked at random, until `stop` is set:
/// `rate` calls a second between them all, or back to back if 0.
///
/// The readers run on a thread and runtime of their own, each on its own
/// HTTP/2 connection: a commissioner's dashboard is another process on
/// another connection than a payroll provider's submissions, so its calls
/// must not wait behind the append clients' frames on a shared connection
/// or behind their tasks in the load generator's own scheduler. What the
/// latency then measures is the server's.
pub fn spawn_readers(
    url: &str,
    readers: Arc<Vec<Reader>>,
    n: usize,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<Vec<ReadRun>>>> {
    // Each reader's share of the rate, as the time between its calls.
    let every = (rate > 0).then(|| Duration::from_secs_f64(n as f64 / f64::from(rate)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the readers' runtime")?;
    let url = url.to_string();
    let thread = std::thread::Builder::new()
        .name("bench-readers".into())
        .spawn(move || {
            runtime.block_on(async move {
                let channels = connect(&url, n).await?;
                let tasks: Vec<_> = channels
                    .into_iter()
                    .enumerate()
                    .map(|(i, channel)| {
                        let readers = readers.clone();
                        let stop = stop.clone();
                        tokio::spawn(read_loop(Client::new(channel), readers, i, every, stop))
                    })
                    .collect();
                let mut out = Vec::with_capacity(tasks.len());
                for t in tasks {
                    out.push(t.await.context("a reader failed")?);
                }
                Ok(out)
            })
        })
        .context("starting the readers' thread")?;
    Ok(thread)
}

async fn read_loop(
    mut client: Client,
    readers: Arc<Vec<Reader>>,
    i: usize,
    every: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> ReadRun {
    let mut tick = every.map(|d| {
        let mut t = tokio::time::interval(d);
        // A reader that fell behind (a slow answer) does not then burst
        // to catch up: the calls stay spread out, as a dashboard's are.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let reader = &readers[i % readers.len()];
    let mut rng = super::workload::Rng::new(i as u64 + 1);
    let mut out = ReadRun {
        latencies: Latencies::default(),
        errors: 0,
        reasons: Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let b = &reader.budgets[rng.below(reader.budgets.len() as u64) as usize];
        let mut req = tonic::Request::new(pb::GetBalanceRequest {
            budget_id: b.clone(),
        });
        // Each call signed afresh, with its own nonce: a signed read call
        // is single-use (docs/api.md), as a real client's is.
        reader
            .signer
            .authorize_at(&mut req, methods::GET_BALANCE, phb_client::unix_now());
        let t = Instant::now();
        let answer = client.get_balance(req).await;
        let took = t.elapsed();
        match answer {
            Ok(r) if r.get_ref().balance.is_some() => out.latencies.push(took),
            Ok(_) => {
                out.errors += 1;
                if out.reasons.len() < 3 {
                    out.reasons.push(format!("GetBalance {b}: no balance"));
                }
            }
            Err(s) => {
                out.errors += 1;
                if out.reasons.len() < 3 {
                    out.reasons
                        .push(format!("GetBalance {b}: {:?}: {}", s.code(), s.message()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut l = Latencies::default();
        for ms in (1..=1000).rev() {
            l.push(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert_eq!((s.p50, s.p99, s.p999, s.max), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(Latencies::default().summary().count, 0);
    }

    #[test]
    fn requests_split_events_into_shares_of_batches_in_order() {
        let events: Vec<pb::SignedEvent> = (0..10)
            .map(|i| pb::SignedEvent {
                signer_id: i.to_string(),
                ..Default::default()
            })
            .collect();
        let shares = requests(events, 3, 3);
        let ids: Vec<Vec<Vec<&str>>> = shares
            .iter()
            .map(|share| {
                share
                    .iter()
                    .map(|r| {
                        assert!(!r.atomic);
                        r.events.iter().map(|e| e.signer_id.as_str()).collect()
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                vec![vec!["0", "1", "2"], vec!["3"]],
                vec![vec!["4", "5", "6"], vec!["7"]],
                vec![vec!["8", "9"]],
            ]
        );
    }
}
