//! The peer: the ledger users would otherwise build, a table of balances
//! and a table of payments in PostgreSQL, one balance-checked UPDATE and
//! one INSERT per payment in a transaction, committed synchronously —
//! with no signatures, no hash chain and no rules beyond the balance.
//! Driven by pgbench on a temporary cluster the bench creates and deletes.

use super::load::{Latencies, Summary};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

pub use super::pgcluster::{Cluster, Tools};
use std::time::Duration;

/// One pgbench run.
pub struct PeerRun {
    pub clients: usize,
    pub seconds: u64,
    pub transactions: u64,
    pub tps: f64,
    pub latency: Summary,
    /// Transactions that found no balance to spend (rolled back), or failed.
    pub refused: u64,
}

/// Finds PostgreSQL's server programs for the peer, installing Debian's
/// package if they are missing and we may.
pub fn find_or_install() -> Result<Tools> {
    super::pgcluster::find_or_install("--peer postgres")
}

/// Starts a temporary cluster with the peer's tables and `budgets`
/// well-funded budgets.
pub fn start(tools: Tools, budgets: usize) -> Result<Cluster> {
    let c = Cluster::start(tools)?;
    c.psql(&format!(
            "CREATE TABLE balances (budget_id text PRIMARY KEY, balance numeric NOT NULL CHECK (balance >= 0));
         CREATE TABLE ledger (seq bigserial PRIMARY KEY, budget_id text NOT NULL, event_id text NOT NULL UNIQUE, amount numeric NOT NULL, at timestamptz NOT NULL DEFAULT now());
         INSERT INTO balances SELECT 'b' || g, 100000000.00 FROM generate_series(1, {budgets}) g;"
        ))?;
    c.psql("VACUUM ANALYZE balances")?;
    Ok(c)
}

impl Cluster {
    fn ledger_rows(&self) -> Result<u64> {
        let text = self.psql("SELECT count(*) FROM ledger")?;
        text.trim()
            .parse()
            .with_context(|| format!("counting ledger rows: {text:?}"))
    }

    /// pgbench with `clients` connections for `seconds`, every
    /// transaction's latency logged. `run` keeps event ids unique across runs.
    pub fn pgbench(
        &self,
        clients: usize,
        seconds: u64,
        budgets: usize,
        run: usize,
    ) -> Result<PeerRun> {
        let script = self.dir.path().join("payment.sql");
        // The check and the refusal are the application's, as a DIY ledger
        // would write them: the UPDATE spends only what is there; if it
        // found nothing to spend, roll back instead of inserting. Four
        // round trips, like an application's BEGIN, UPDATE, INSERT, COMMIT.
        std::fs::write(
            &script,
            "\\set b random(1, :budgets)\n\
             \\set amt random(1, 5000)\n\
             \\set n :n + 1\n\
             BEGIN;\n\
             WITH u AS (UPDATE balances SET balance = balance - CAST(:amt AS numeric) / 100 WHERE budget_id = 'b' || CAST(:b AS text) AND balance >= CAST(:amt AS numeric) / 100 RETURNING 1) SELECT count(*) AS hit FROM u \\gset\n\
             \\if :hit\n\
             INSERT INTO ledger (budget_id, event_id, amount) VALUES ('b' || CAST(:b AS text), CAST(:run AS text) || '-' || CAST(:client_id AS text) || '-' || CAST(:n AS text), CAST(:amt AS numeric) / 100);\n\
             COMMIT;\n\
             \\else\n\
             ROLLBACK;\n\
             \\endif\n",
        )
        .context("writing the pgbench script")?;
        let logs = self.dir.path().join(format!("log-{run}"));
        std::fs::create_dir_all(&logs)?;
        let before = self.ledger_rows()?;
        let threads = clients.min(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        );
        let out = Command::new(self.tools.bin.join("pgbench"))
            .args([
                "-n",
                "-M",
                "prepared",
                "-l",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-f")
            .arg(&script)
            .arg("-c")
            .arg(clients.to_string())
            .arg("-j")
            .arg(threads.to_string())
            .arg("-T")
            .arg(seconds.to_string())
            .arg("-D")
            .arg(format!("budgets={budgets}"))
            .arg("-D")
            .arg(format!("run={run}"))
            .arg("-D")
            .arg("n=0")
            .arg(format!("--log-prefix={}", logs.join("pgbench").display()))
            .arg("postgres")
            .stdin(Stdio::null())
            .output()
            .context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "pgbench failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let number = |prefix: &str| -> Result<f64> {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("pgbench printed no {prefix:?}:\n{stdout}"))
        };
        let transactions = number("number of transactions actually processed:")? as u64;
        let tps = number("tps =")?;
        let failed = number("number of failed transactions:").unwrap_or(0.0) as u64;
        let inserted = self.ledger_rows()?.saturating_sub(before);
        let latency = read_latency_logs(&logs)?;
        Ok(PeerRun {
            clients,
            seconds,
            transactions,
            tps,
            latency,
            refused: transactions.saturating_sub(inserted) + failed,
        })
    }
}

/// pgbench's per-transaction logs: `client transaction latency_us script
/// epoch_s epoch_us`, "failed" or "skipped" in place of a latency.
fn read_latency_logs(dir: &Path) -> Result<Summary> {
    let mut lat = Latencies::default();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|f| f.parse::<u64>().ok())
            {
                lat.push(Duration::from_micros(us));
            }
        }
    }
    Ok(lat.summary())
}
