//! The ledger's shared log on PostgreSQL: `phb_store::SharedLog` over a
//! PostgreSQL cluster with synchronous streaming replication (failover by
//! Patroni), so that several `phb-ledger serve` instances share one log and
//! a failure of any one machine loses nothing acknowledged.
//! docs/high-availability.md is the operator's account; this is the how.
//!
//! Two tables (created if missing):
//!
//! * `phb_log`: one row per entry — `sequence` (primary key), `entry` (the
//!   record payload of docs/log-format.md §2, byte for byte what the local
//!   log holds), `prev_hash`, `hash`, `signer_id`, `event_id` (unique with
//!   the signer: the idempotency key, enforced by the database too).
//! * `phb_head`: one row — the ledger id, the last `sequence` and its
//!   `hash`, `confirmed` (everything up to it is known durable), the writer
//!   `epoch`, and the address the writer advertises.
//!
//! **One writer**: the role is a session advisory lock
//! (`pg_try_advisory_lock(LOCK_CLASS, LOCK_OBJECT)`), and taking it bumps
//! the epoch in a synchronously replicated commit. Every group is one
//! transaction: the head row is moved from the writer's last (sequence,
//! hash) under its epoch — a compare-and-swap, so a writer that lost the
//! role (its session died, another took the lock after a failover) cannot
//! extend the log — and the rows are inserted with one multi-row insert.
//! The group is acknowledged only when COMMIT returns, which with
//! `synchronous_commit = on` and Patroni's `synchronous_mode_strict` is after
//! the synchronous standby has the WAL.
//!
//! **Readers copy only what is confirmed.** A transaction is visible on the
//! primary before the standby confirms it, and a commit whose wait is
//! cancelled (a timeout, a dropped connection) stays visible on the primary
//! although it was never replicated — it is lost at failover (Patroni's
//! replication-modes docs). So readers never copy up to `sequence`: they
//! copy up to `confirmed`, which the writer moves to the end of its
//! previous group inside the next group's transaction (that group's commit
//! had returned), or on its own when idle, and which a new writer sets when
//! it takes the role (its own replicated commit covers all earlier WAL).
//!
//! **Timeouts are ours, on the client.** PostgreSQL's `statement_timeout`
//! is set to 0 for the session (a cancelled commit wait is the loss case
//! above). Each call here is bounded on the client instead: a primary that
//! is stopped (SIGSTOP) answers nothing, and its TCP keepalives still look
//! alive. A call that times out drops the connection; for a commit the
//! outcome is then unknown and the caller treats it so (answers
//! UNAVAILABLE, gives up the role, and learns the outcome by reading).
#![deny(missing_docs)]

mod tls;

use phb_chain::{Hash, LogEntry, GENESIS_HASH};
use phb_store::logfile::{decode_payload, encode_payload};
use phb_store::{Append, Confirmed, Lead, SharedLog, SharedLogError};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls, Socket};

/// The writer role's advisory lock: the two-key form, so `pg_locks` shows
/// it as (classid, objid) = ("phb-" "ledg" in ASCII).
pub const LOCK_CLASS: i32 = 0x7068_622d;
/// See `LOCK_CLASS`.
pub const LOCK_OBJECT: i32 = 0x6c65_6467;

/// How long one call may take before the connection is dropped. Long
/// enough for a synchronous commit under load, short enough that a stopped
/// primary is left behind well within Patroni's minimum lock TTL.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A session idle this long is ended by the server: how a frozen writer
/// loses the writer role (PostgreSQL 14 or later).
pub const SESSION_IDLE_LIMIT: Duration = Duration::from_secs(10);
/// How long connecting may take (each host of a multi-host string).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS phb_log (
    sequence  bigint PRIMARY KEY CHECK (sequence > 0),
    entry     bytea  NOT NULL,
    prev_hash bytea  NOT NULL CHECK (length(prev_hash) = 32),
    hash      bytea  NOT NULL CHECK (length(hash) = 32),
    signer_id text   NOT NULL,
    event_id  text   NOT NULL,
    UNIQUE (signer_id, event_id)
);
CREATE TABLE IF NOT EXISTS phb_head (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    ledger_id text    NOT NULL,
    sequence  bigint  NOT NULL CHECK (sequence >= 0),
    hash      bytea   NOT NULL CHECK (length(hash) = 32),
    confirmed bigint  NOT NULL CHECK (confirmed >= 0 AND confirmed <= sequence),
    epoch     bigint  NOT NULL CHECK (epoch >= 0),
    writer    text    NOT NULL
);";

/// The writer role as this instance holds it.
struct Held {
    epoch: u64,
    sequence: u64,
    hash: Hash,
    /// The sequence readers may copy up to, as last written.
    confirmed: u64,
}

/// The shared log on a PostgreSQL cluster.
pub struct PgLog {
    config: Config,
    ledger_id: String,
    rt: tokio::runtime::Runtime,
    /// TLS to the database, when a CA is configured (`require_tls`).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    client: Option<Client>,
    /// The task driving `client`'s connection (on `rt`, which runs only
    /// inside our calls).
    connection: Option<tokio::task::JoinHandle<()>>,
    held: Option<Held>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SharedLogError {
    SharedLogError::Unavailable(format!("{what}: {e}"))
}

/// An error with its causes (`connecting: error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer`): tokio-postgres's own message
/// names only the step that failed.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn to_i64(v: u64) -> i64 {
    // Sequences are below 2^63 (the Merkle tree's bound, asserted by the store).
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64, SharedLogError> {
    u64::try_from(v).map_err(|_| SharedLogError::Corrupt(format!("negative value {v}")))
}

fn to_hash(v: &[u8]) -> Result<Hash, SharedLogError> {
    v.try_into()
        .map_err(|_| SharedLogError::Corrupt(format!("a hash of {} bytes", v.len())))
}

impl PgLog {
    /// A shared log at `url` (a libpq-style connection string or URL; give
    /// every host of the cluster and `target_session_attrs=read-write`) for
    /// the ledger `ledger_id`. Connects lazily: an unreachable database is
    /// reported by the calls, which the engine retries.
    pub fn new(url: &str, ledger_id: &str) -> Result<PgLog, String> {
        let mut config = Config::from_str(url).map_err(|e| format!("the PostgreSQL URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("phb-ledger");
        // Our side of the same: a server that vanished is noticed even
        // between calls.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the PostgreSQL client's runtime: {e}"))?;
        Ok(PgLog {
            config,
            ledger_id: ledger_id.to_string(),
            rt,
            tls: None,
            client: None,
            connection: None,
            held: None,
        })
    }

    /// Runs `f` on the connection (connecting first if needed) within
    /// `CALL_TIMEOUT`; any failure drops the connection (and with it the
    /// writer role's lock).
    fn call<T>(
        &mut self,
        what: &str,
        f: impl for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, SharedLogError>> + 'c>,
        >,
    ) -> Result<T, SharedLogError> {
        if self.client.is_none() {
            self.held = None;
            let client = self.connect()?;
            self.client = Some(client);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(unavailable(what, "not connected"));
        };
        let outcome = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f(client)).await });
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(unavailable(
                what,
                format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            )),
        };
        if let Err(e) = &result {
            if !matches!(e, SharedLogError::Corrupt(_)) {
                self.disconnect();
            }
        }
        result
    }

    /// Connects over TLS only, trusting the CA certificates in `ca_file`
    /// (PEM): the server's certificate must chain to one of them and name
    /// the host it was reached at (libpq's `sslmode=verify-full`).
    pub fn require_tls(&mut self, ca_file: &std::path::Path) -> Result<(), String> {
        if self.config.get_ssl_mode() == SslMode::Disable {
            return Err(
                "the PostgreSQL URL says sslmode=disable, but a CA file for TLS is configured: remove one of the two".into(),
            );
        }
        self.tls = Some(tls::client_config(ca_file)?);
        self.config.ssl_mode(SslMode::Require);
        Ok(())
    }

    fn connect(&mut self) -> Result<Client, SharedLogError> {
        let (client, task) = match self.tls.clone() {
            None => open(&self.rt, &self.config, NoTls)?,
            Some(config) => open(&self.rt, &self.config, tls::MakeRustls(config))?,
        };
        let ledger_id = self.ledger_id.clone();
        let rt = &self.rt;
        self.connection = Some(task);
        let prepared = rt.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, async {
                // Never cancel a commit's wait for the standby (see the crate
                // docs); our own timeouts bound each call instead.
                // A writer that stops answering must lose the writer lock
                // (and the head row's lock, if it stopped mid-transaction)
                // so another instance can take over:
                // - its machine vanished: TCP keepalives (idle 5 s, then 3
                //   probes 2 s apart) end the session in about 11 s, where
                //   the system default is hours;
                // - its process is frozen (SIGSTOP, a stuck VM): the kernel
                //   still answers keepalives, so the server ends a session
                //   idle for SESSION_IDLE_LIMIT instead. A live instance is
                //   never that idle: a writer checks its session every
                //   second, a reader polls every 20 ms. A transaction is
                //   idle only between its statements, microseconds apart;
                //   one ended there rolls back, never acknowledged. Neither
                //   limit cancels a COMMIT waiting for the standby (that
                //   session is active, not idle).
                client
                    .batch_execute(&format!(
                        "SET statement_timeout = 0; SET lock_timeout = 0; \
                         SET synchronous_commit = on; \
                         SET idle_session_timeout = '{idle}s'; \
                         SET idle_in_transaction_session_timeout = '{idle}s'; \
                         SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; \
                         SET tcp_keepalives_count = 3",
                        idle = SESSION_IDLE_LIMIT.as_secs()
                    ))
                    .await?;
                client.batch_execute(SCHEMA).await?;
                client
                    .execute(
                        "INSERT INTO phb_head (ledger_id, sequence, hash, confirmed, epoch, writer) \
                         VALUES ($1, 0, $2, 0, 0, '') ON CONFLICT DO NOTHING",
                        &[&ledger_id, &GENESIS_HASH.as_slice()],
                    )
                    .await?;
                let row = client
                    .query_one("SELECT ledger_id FROM phb_head", &[])
                    .await?;
                Ok::<String, tokio_postgres::Error>(row.get(0))
            })
            .await
        });
        match prepared {
            Ok(Ok(id)) if id == ledger_id => Ok(client),
            Ok(Ok(id)) => Err(SharedLogError::Corrupt(format!(
                "the database holds the log of ledger {id:?}, not {ledger_id:?}: point --postgres-url at this ledger's database"
            ))),
            Ok(Err(e)) => Err(unavailable("preparing the PostgreSQL log tables", e)),
            Err(_) => Err(unavailable("preparing the PostgreSQL log tables", "timed out")),
        }
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.held = None;
        // Without its client the connection task says goodbye and ends the
        // session, which releases the writer lock — but only while the
        // runtime runs, which is only inside our calls: run it now. A
        // server that answers nothing (stopped) is left behind after a
        // second; closing the socket then ends the session on its side.
        if let Some(mut task) = self.connection.take() {
            self.rt.block_on(async {
                if tokio::time::timeout(Duration::from_secs(1), &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                    let _ = task.await;
                }
            });
        }
    }
}

/// Connects with `tls` and drives the connection on `rt`.
fn open<T>(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    tls: T,
) -> Result<(Client, tokio::task::JoinHandle<()>), SharedLogError>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let connected =
        rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT * 2, config.connect(tls)).await });
    let (client, connection) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(unavailable("connecting to PostgreSQL", with_causes(&e))),
        Err(_) => return Err(unavailable("connecting to PostgreSQL", "timed out")),
    };
    let task = rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> SharedLogError {
    move |e| unavailable(what, with_causes(&e))
}

impl SharedLog for PgLog {
    fn try_lead(&mut self, advertise: &str) -> Result<Option<Lead>, SharedLogError> {
        if let Some(h) = &self.held {
            return Ok(Some(Lead {
                sequence: h.sequence,
                hash: h.hash,
                epoch: h.epoch,
            }));
        }
        let advertise = advertise.to_string();
        let taken = self.call("taking the writer role", move |c| {
            Box::pin(async move {
                let got: bool = c
                    .query_one(
                        "SELECT pg_try_advisory_lock($1, $2)",
                        &[&LOCK_CLASS, &LOCK_OBJECT],
                    )
                    .await
                    .map_err(db("taking the writer lock"))?
                    .get(0);
                if !got {
                    return Ok(None);
                }
                // Bumping the epoch fences the previous writer; the commit
                // is synchronous, so everything before it is replicated
                // and `confirmed` may move to the head.
                let tx = c
                    .transaction()
                    .await
                    .map_err(db("taking the writer role"))?;
                let row = tx
                    .query_one(
                        "UPDATE phb_head SET epoch = epoch + 1, confirmed = sequence, writer = $1 \
                         RETURNING sequence, hash, epoch",
                        &[&advertise],
                    )
                    .await
                    .map_err(db("taking the writer role"))?;
                tx.commit().await.map_err(db("taking the writer role"))?;
                let sequence = to_u64(row.get(0))?;
                let hash = to_hash(row.get(1))?;
                let epoch = to_u64(row.get(2))?;
                Ok(Some(Held {
                    epoch,
                    sequence,
                    hash,
                    confirmed: sequence,
                }))
            })
        })?;
        Ok(taken.map(|h| {
            let lead = Lead {
                sequence: h.sequence,
                hash: h.hash,
                epoch: h.epoch,
            };
            self.held = Some(h);
            lead
        }))
    }

    fn commit(&mut self, group: &[Append<'_>]) -> Result<(), SharedLogError> {
        let Some(held) = self.held.as_ref() else {
            return Err(SharedLogError::Fenced {
                epoch: 0,
                detail: "the writer role is not held (the connection holding it was lost)".into(),
            });
        };
        let (epoch, from_seq, from_hash, confirm) =
            (held.epoch, held.sequence, held.hash, held.sequence);
        let Some(last) = group.last() else {
            return Ok(());
        };
        let (to_seq, to_hash_) = (last.entry.sequence, last.entry.hash);
        let mut sequences = Vec::with_capacity(group.len());
        let mut entries = Vec::with_capacity(group.len());
        let mut prevs = Vec::with_capacity(group.len());
        let mut hashes = Vec::with_capacity(group.len());
        let mut signers = Vec::with_capacity(group.len());
        let mut ids = Vec::with_capacity(group.len());
        for (i, a) in group.iter().enumerate() {
            assert_eq!(
                a.entry.sequence,
                from_seq + 1 + i as u64,
                "a group continues the shared log without gaps"
            );
            sequences.push(to_i64(a.entry.sequence));
            entries.push(encode_payload(a.entry));
            prevs.push(a.entry.prev_hash.to_vec());
            hashes.push(a.entry.hash.to_vec());
            signers.push(a.entry.signed.signer_id.clone());
            ids.push(a.event_id.to_string());
        }
        self.call("committing a group", move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(db("committing a group"))?;
                // The compare-and-swap first: it takes the head row's lock,
                // so a fenced writer inserts nothing.
                let moved = tx
                    .execute(
                        "UPDATE phb_head SET sequence = $1, hash = $2, confirmed = $3 \
                         WHERE epoch = $4 AND sequence = $5 AND hash = $6",
                        &[
                            &to_i64(to_seq),
                            &to_hash_.as_slice(),
                            &to_i64(confirm),
                            &to_i64(epoch),
                            &to_i64(from_seq),
                            &from_hash.as_slice(),
                        ],
                    )
                    .await
                    .map_err(db("committing a group"))?;
                if moved != 1 {
                    let _ = tx.rollback().await;
                    return Err(SharedLogError::Fenced {
                        epoch,
                        detail: format!(
                            "the head is no longer at sequence {from_seq} under epoch {epoch}"
                        ),
                    });
                }
                tx.execute(
                    "INSERT INTO phb_log (sequence, entry, prev_hash, hash, signer_id, event_id) \
                     SELECT * FROM unnest($1::int8[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[], $6::text[])",
                    &[&sequences, &entries, &prevs, &hashes, &signers, &ids],
                )
                .await
                .map_err(db("committing a group"))?;
                tx.commit().await.map_err(db("committing a group (outcome unknown)"))?;
                Ok(())
            })
        })?;
        if let Some(h) = self.held.as_mut() {
            h.sequence = to_seq;
            h.hash = to_hash_;
            h.confirmed = confirm;
        }
        Ok(())
    }

    fn confirm(&mut self) -> Result<(), SharedLogError> {
        let Some(h) = self.held.as_ref() else {
            return Ok(());
        };
        if h.confirmed == h.sequence {
            return Ok(());
        }
        let (epoch, sequence) = (h.epoch, h.sequence);
        self.call("confirming", move |c| {
            Box::pin(async move {
                // The groups were confirmed when their commits returned; this
                // only tells readers, so it need not wait for the standby
                // (lost at a failover, the new writer confirms the head).
                let tx = c.transaction().await.map_err(db("confirming"))?;
                tx.batch_execute("SET LOCAL synchronous_commit = local")
                    .await
                    .map_err(db("confirming"))?;
                let n = tx
                    .execute(
                        "UPDATE phb_head SET confirmed = $1 WHERE epoch = $2 AND sequence = $1",
                        &[&to_i64(sequence), &to_i64(epoch)],
                    )
                    .await
                    .map_err(db("confirming"))?;
                tx.commit().await.map_err(db("confirming"))?;
                if n != 1 {
                    return Err(SharedLogError::Fenced {
                        epoch,
                        detail: "another writer moved the head".into(),
                    });
                }
                Ok(())
            })
        })?;
        if let Some(h) = self.held.as_mut() {
            h.confirmed = sequence;
        }
        Ok(())
    }

    fn resign(&mut self) {
        self.disconnect();
    }

    fn confirmed(&mut self) -> Result<Confirmed, SharedLogError> {
        self.call("reading the head", |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT h.confirmed, h.writer, EXISTS (SELECT 1 FROM pg_locks l \
                           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                             AND l.classid::int8 = $1 AND l.objid::int8 = $2) \
                         FROM phb_head h",
                        &[&i64::from(LOCK_CLASS), &i64::from(LOCK_OBJECT)],
                    )
                    .await
                    .map_err(db("reading the head"))?;
                let writer: String = row.get(1);
                let held: bool = row.get(2);
                Ok(Confirmed {
                    sequence: to_u64(row.get(0))?,
                    writer: (held && !writer.is_empty()).then_some(writer),
                })
            })
        })
    }

    fn read(
        &mut self,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<LogEntry>, SharedLogError> {
        if through <= after || max == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.call("reading the log", move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT sequence, entry FROM phb_log WHERE sequence > $1 AND sequence <= $2 \
                     ORDER BY sequence LIMIT $3",
                    &[&to_i64(after), &to_i64(through), &limit],
                )
                .await
                .map_err(db("reading the log"))
            })
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let expected = after + 1 + i as u64;
            let sequence = to_u64(row.get(0))?;
            let bytes: &[u8] = row.get(1);
            let entry = decode_payload(bytes)
                .filter(|e| e.sequence == sequence && sequence == expected)
                .ok_or_else(|| {
                    SharedLogError::Corrupt(format!(
                        "the row for sequence {expected} is missing or does not decode to that entry"
                    ))
                })?;
            out.push(entry);
        }
        Ok(out)
    }
}
