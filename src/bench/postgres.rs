//! The peer: the ledger users would otherwise build, a table of balances
//! and a table of payments in PostgreSQL, one balance-checked UPDATE and
//! one INSERT per payment in a transaction, committed synchronously —
//! with no signatures, no hash chain and no rules beyond the balance.
//! Driven by pgbench on a temporary cluster the bench creates and deletes.

use super::load::{Latencies, Summary};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The server's programs.
pub struct Tools {
    bin: PathBuf,
    pub version: String,
}

/// Finds PostgreSQL's server programs, installing Debian's package if they
/// are missing and we may.
pub fn find_or_install() -> Result<Tools> {
    if let Some(t) = find()? {
        return Ok(t);
    }
    if !is_root() {
        bail!("--peer postgres: PostgreSQL's server programs (initdb, pg_ctl, pgbench) were not found in /usr/lib/postgresql/*/bin or on PATH, and installing them needs root: install Debian's postgresql package (apt-get install postgresql) or run without --peer");
    }
    if which("apt-get").is_none() {
        bail!("--peer postgres: PostgreSQL was not found and there is no apt-get to install it with; install PostgreSQL (initdb, pg_ctl, pgbench) or run without --peer");
    }
    eprintln!("PostgreSQL not found: installing Debian's package (apt-get install -y postgresql)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "postgresql"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
    };
    let ok = install().map(|s| s.success()).unwrap_or(false);
    if !ok {
        // A fresh machine has no package lists yet.
        eprintln!("apt-get install failed: running apt-get update, then installing again");
        let updated = Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !updated || !install().map(|s| s.success()).unwrap_or(false) {
            bail!(
                "--peer postgres: installing PostgreSQL with apt-get failed (see its output above)"
            );
        }
    }
    find()?.ok_or_else(|| anyhow!("--peer postgres: PostgreSQL was installed but initdb, pg_ctl and pgbench were not found under /usr/lib/postgresql/*/bin"))
}

fn find() -> Result<Option<Tools>> {
    let mut dirs: Vec<(u32, PathBuf)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let major = e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
            dirs.push((major, e.path().join("bin")));
        }
    }
    // The newest installed version first, then whatever PATH has.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut candidates: Vec<PathBuf> = dirs.into_iter().map(|(_, d)| d).collect();
    if let Some(initdb) = which("initdb") {
        if let Some(d) = initdb.parent() {
            candidates.push(d.to_path_buf());
        }
    }
    for bin in candidates {
        if ["initdb", "pg_ctl", "pgbench", "psql", "postgres"]
            .iter()
            .all(|p| bin.join(p).is_file())
        {
            let out = Command::new(bin.join("postgres")).arg("--version").output();
            let version = match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
                Err(e) => return Err(e).context("running postgres --version"),
            };
            return Ok(Some(Tools { bin, version }));
        }
    }
    Ok(None)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid only reads the process's effective user id.
    unsafe { libc::geteuid() == 0 }
}

/// A running temporary cluster; stopped and deleted on `stop` (or drop).
pub struct Cluster {
    tools: Tools,
    dir: tempfile::TempDir,
    port: u16,
    /// Who the server runs as: PostgreSQL refuses to run as root.
    run_as: Option<String>,
    running: bool,
    pub settings: String,
}

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

impl Cluster {
    /// initdb a cluster in a new temporary directory, start it on a free
    /// port with durable commits, and create the ledger's tables with
    /// `budgets` well-funded budgets.
    pub fn start(tools: Tools, budgets: usize) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("phb-bench-pg")
            .tempdir()
            .context("creating a directory for the PostgreSQL cluster")?;
        let run_as = if is_root() {
            // Debian's package creates the postgres user.
            let user = "postgres".to_string();
            let (uid, gid) = user_ids(&user).ok_or_else(|| {
                anyhow!("--peer postgres: running as root, and there is no user \"postgres\" to run the PostgreSQL server as (PostgreSQL refuses to run as root)")
            })?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("giving the cluster's directory to the postgres user")?;
            Some(user)
        } else {
            None
        };
        let port = free_port()?;
        let mut c = Cluster {
            tools,
            dir,
            port,
            run_as,
            running: false,
            settings: String::new(),
        };
        let data = c.data();
        c.server_cmd("initdb", |cmd| {
            cmd.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]);
        })?;
        let sockets = c.dir.path().to_path_buf();
        let log = c.dir.path().join("server.log");
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c synchronous_commit=on -c max_connections=200",
            sockets.display()
        );
        c.server_cmd("pg_ctl", |cmd| {
            cmd.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "120", "-o", &options, "start"]);
        })
        .with_context(|| {
            format!(
                "starting PostgreSQL; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        c.running = true;
        c.psql(&format!(
            "CREATE TABLE balances (budget_id text PRIMARY KEY, balance numeric NOT NULL CHECK (balance >= 0));
             CREATE TABLE ledger (seq bigserial PRIMARY KEY, budget_id text NOT NULL, event_id text NOT NULL UNIQUE, amount numeric NOT NULL, at timestamptz NOT NULL DEFAULT now());
             INSERT INTO balances SELECT 'b' || g, 100000000.00 FROM generate_series(1, {budgets}) g;"
        ))?;
        c.psql("VACUUM ANALYZE balances")?;
        c.settings = c
            .psql("SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes', 'shared_buffers')")?
            .trim()
            .to_string();
        Ok(c)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs as the server's user.
    fn server_cmd(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<Output> {
        let path = self.tools.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        args(&mut cmd);
        // The server's own directory, not ours: the postgres user may not
        // be able to enter the directory the bench was started in.
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{program} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.tools.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

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

    /// Stops the server and deletes the cluster.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data();
        self.server_cmd("pg_ctl", |cmd| {
            cmd.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
        })?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warning: stopping the PostgreSQL cluster: {e:#}");
        }
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

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we
    // read two integers from it at once, before any other getpw* call.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// A port nothing listens on now (the kernel's pick, released at once).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
