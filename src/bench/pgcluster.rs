//! A temporary PostgreSQL cluster: Debian's server programs found (or
//! installed, as root), `initdb` in a new directory as the `postgres` user
//! (PostgreSQL refuses to run as root), started on a free loopback port,
//! stopped and deleted on drop. Used by the benchmark's peer and, through
//! `#[path]`, by the tests of the PostgreSQL log backend
//! (tests/postgres_log.rs), so both start PostgreSQL the same way.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The server's programs.
pub struct Tools {
    pub bin: PathBuf,
    pub version: String,
}

/// Finds PostgreSQL's server programs, installing Debian's package if they
/// are missing and we may.
pub fn find_or_install(who: &str) -> Result<Tools> {
    if let Some(t) = find()? {
        return Ok(t);
    }
    if !is_root() {
        bail!("{who}: PostgreSQL's server programs (initdb, pg_ctl, pgbench) were not found in /usr/lib/postgresql/*/bin or on PATH, and installing them needs root: install Debian's postgresql package (apt-get install postgresql) or run without --peer");
    }
    if which("apt-get").is_none() {
        bail!("{who}: PostgreSQL was not found and there is no apt-get to install it with; install PostgreSQL (initdb, pg_ctl, pgbench) or run without --peer");
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
            bail!("{who}: installing PostgreSQL with apt-get failed (see its output above)");
        }
    }
    find()?.ok_or_else(|| anyhow!("{who}: PostgreSQL was installed but initdb, pg_ctl and pgbench were not found under /usr/lib/postgresql/*/bin"))
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
    pub tools: Tools,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Who the server runs as: PostgreSQL refuses to run as root.
    run_as: Option<String>,
    running: bool,
    pub settings: String,
}

impl Cluster {
    /// initdb a cluster in a new temporary directory and start it on a
    /// free loopback port with durable commits (trust authentication for
    /// the `postgres` user on loopback only).
    pub fn start(tools: Tools) -> Result<Cluster> {
        Cluster::start_with(tools, None)
    }

    /// As `start`, with TLS on (`ssl=on`) when given a server certificate
    /// chain and its private key (PEM), for the tests of TLS to PostgreSQL.
    pub fn start_with(tools: Tools, tls: Option<(&str, &str)>) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("phb-bench-pg")
            .tempdir()
            .context("creating a directory for the PostgreSQL cluster")?;
        let run_as = if is_root() {
            // Debian's package creates the postgres user.
            let user = "postgres".to_string();
            let (uid, gid) = user_ids(&user).ok_or_else(|| {
                anyhow!("PostgreSQL: running as root, and there is no user \"postgres\" to run the PostgreSQL server as (PostgreSQL refuses to run as root)")
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
        let mut options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c synchronous_commit=on -c max_connections=200",
            sockets.display()
        );
        if let Some((cert, key)) = tls {
            let (cert_file, key_file) = (
                c.dir.path().join("server.crt"),
                c.dir.path().join("server.key"),
            );
            std::fs::write(&cert_file, cert).context("writing the server certificate")?;
            std::fs::write(&key_file, key).context("writing the server key")?;
            // PostgreSQL refuses a key others can read, or one it does not own.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
            if let Some(user) = &c.run_as {
                if let Some((uid, gid)) = user_ids(user) {
                    for f in [&cert_file, &key_file] {
                        std::os::unix::fs::chown(f, Some(uid), Some(gid))?;
                    }
                }
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_file.display(),
                key_file.display()
            ));
        }
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
    pub fn server_cmd(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<Output> {
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

    pub fn psql(&self, sql: &str) -> Result<String> {
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

    /// A connection string for the `postgres` user's database.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
            self.port
        )
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
