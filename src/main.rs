//! `phb-ledger`: the ledger service and its operator tools.
//!
//! `serve` runs the service; `keygen`, `submit`, `balance`, `holdings`,
//! `statement`, `plan`, `report` and `demo` are clients of a running server. The binary is a thin shell: all rules live in
//! `phb-domain`, storage in `phb-store`, the write path in `phb-engine` and
//! the gRPC surface in `phb-grpc`.

mod audit_export;
mod backup;
mod bench;
mod config;
mod connect;
mod dashboard;
mod demo;
mod json_event;
mod metrics_http;
mod report;
mod witness;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use phb_client::Signer;
use phb_proto::v1 as pb;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "phb-ledger",
    version,
    about = "Ledger for NHS personal health budgets and direct payments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ledger service.
    Serve(Box<config::ServeArgs>),
    /// Copy a (running) server's ledger to a new directory, consistently,
    /// and verify the copy (docs/operations.md, "Backups").
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory, after verifying it.
    Restore(backup::RestoreArgs),
    /// Configuration files (docs/configuration.md).
    Config {
        #[command(subcommand)]
        config: ConfigCommand,
    },
    /// Generate an ed25519 key: writes the secret (hex) to a file, prints the public key.
    Keygen {
        /// Where to write the secret key (created with mode 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an event given as JSON and submit it (see docs/cli.md for the JSON form).
    Submit {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The signer id ("root" or an organisation id).
        #[arg(long)]
        signer: String,
        /// File holding the signer's secret key (hex).
        #[arg(long)]
        key: PathBuf,
        /// The ledger id to put in events that do not name one.
        #[arg(long, default_value = "phb-local", env = "PHB_LEDGER_ID")]
        ledger_id: String,
        /// Apply all events atomically.
        #[arg(long)]
        atomic: bool,
        /// A JSON event or array of events, or @FILE, or - for standard input.
        event: String,
    },
    /// Print a budget's balance (or all visible balances) as the signer sees it.
    Balance {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The reading organisation id ("root" allowed).
        #[arg(long)]
        signer: String,
        /// File holding the reader's secret key (hex).
        #[arg(long)]
        key: PathBuf,
        /// The budget; omit to list every visible budget.
        budget_id: Option<String>,
    },
    /// Print what a funds holder holds: a totals line, then one line per budget.
    Holdings {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The reading organisation id ("root" allowed).
        #[arg(long)]
        signer: String,
        /// File holding the reader's secret key (hex).
        #[arg(long)]
        key: PathBuf,
        /// The funds holder (a third party or account provider).
        organisation_id: String,
    },
    /// Print a budget's statement: one line per entry, with running figures.
    Statement {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The reading organisation id ("root" allowed).
        #[arg(long)]
        signer: String,
        /// File holding the reader's secret key (hex).
        #[arg(long)]
        key: PathBuf,
        /// The budget.
        budget_id: String,
    },
    /// Print the care plan in force on a budget, with per-line spent and remaining, as JSON.
    Plan {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The reading organisation id ("root" allowed).
        #[arg(long)]
        signer: String,
        /// File holding the reader's secret key (hex).
        #[arg(long)]
        key: PathBuf,
        /// The budget.
        budget_id: String,
    },
    /// Print the flags the signer may see (docs/flags.md), one JSON line each.
    Flags {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The reading organisation id (a commissioner, an auditor or "root").
        #[arg(long)]
        signer: String,
        /// File holding the reader's secret key (hex).
        #[arg(long)]
        key: PathBuf,
        /// Only this budget's flags.
        #[arg(long)]
        budget: Option<String>,
        /// Only flags with this status: OPEN, CONFIRMED or DISMISSED.
        #[arg(long)]
        status: Option<String>,
    },
    /// Print a commissioner's report (docs/reports.md).
    Report {
        #[command(subcommand)]
        report: report::Report,
    },
    /// Write a portable copy of the ledger (every log entry and checkpoint),
    /// from a data directory or a running server, for `audit verify` (docs/audit.md).
    Export(audit_export::ExportArgs),
    /// Check the verifiable log: proofs, witnessing, and exports verified offline (docs/audit.md).
    Audit {
        #[command(subcommand)]
        audit: Audit,
    },
    /// Measure the ledger from outside: start a server, drive it over gRPC
    /// with pre-signed events, print events/s, latency, CPU and memory
    /// (BENCHMARKS.md; docs/cli.md).
    Bench(bench::BenchArgs),
    /// Drive a running server through a realistic scenario and print the balances.
    Demo {
        /// Server URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "PHB_LEDGER_SERVER"
        )]
        server: String,
        /// The root secret key file (generated by `serve` on first start).
        #[arg(long, default_value = "./phb-data/root.key")]
        root_key: PathBuf,
        /// The server's ledger id.
        #[arg(long, default_value = "phb-local", env = "PHB_LEDGER_ID")]
        ledger_id: String,
        /// Write the organisations' secret keys and demo.json (their ids and
        /// the budgets') to this directory, to read as them later (e.g. with
        /// `dashboard`).
        #[arg(long)]
        keys_out: Option<PathBuf>,
    },
    /// The commissioners' dashboard: a local web page over the signed API,
    /// reading as one organisation with its key (docs/dashboard.md).
    Dashboard(dashboard::DashboardArgs),
}

/// The auditors' and partners' commands (docs/audit.md): proofs and the
/// witness against a running server (src/witness.rs), and `verify` offline.
#[derive(Subcommand)]
enum Audit {
    /// Prove an entry is in a checkpoint signed by the ledger key (the latest,
    /// or one you kept), and optionally that it is the entry you kept a receipt for.
    Prove(witness::ProveArgs),
    /// Prove the latest checkpoint extends one you kept (nothing removed or rewritten).
    Consistency(witness::ConsistencyArgs),
    /// Keep the last checkpoint accepted and refuse any later one that does
    /// not extend it (a fork or rollback): run by any partner.
    Witness(witness::WitnessArgs),
    /// Verify an export from scratch: chain, signatures, every rule replayed,
    /// checkpoints, projections; optionally against a live server and receipts.
    Verify(audit_export::VerifyArgs),
}

/// `phb-ledger config …`.
#[derive(Subcommand)]
enum ConfigCommand {
    /// Read FILE as `serve --config FILE` would (with this environment):
    /// name a bad key and its line, or print every setting and its source.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

const DEFAULT_LEDGER_ID: &str = "phb-local";

/// Runs the command; an error is printed as one line, its causes joined
/// (`error: connecting: …: connection refused`), and the exit status is 1.
/// Never a backtrace, even with `RUST_BACKTRACE` set: every error here is
/// something for the person at the terminal to act on, and a bug panics.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    use std::io::IsTerminal;
    config::adopt_old_env_names();
    tune_allocator();
    let cli = Cli::parse();
    // `serve`'s settings first: they say how to log.
    let (command, settings) = match cli.command {
        Command::Serve(args) => (None, Some(args.resolve()?)),
        other => (Some(other), None),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = settings
        .as_ref()
        .is_some_and(|s| s.log_format == config::LogFormat::Json);
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal: in a journal, a
            // file or a pipe they are noise that hides the text.
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(settings) = settings {
        return rt.block_on(serve(settings));
    }
    let Some(command) = command else {
        return Ok(());
    };
    rt.block_on(async move {
        match command {
            Command::Serve(_) => Ok(()),
            Command::Config {
                config: ConfigCommand::Check { file },
            } => config::check(&file),
            Command::Backup(args) => {
                tokio::task::spawn_blocking(move || backup::backup(args)).await?
            }
            Command::Restore(args) => {
                tokio::task::spawn_blocking(move || backup::restore(args)).await?
            }
            Command::Keygen { out } => keygen(&out),
            Command::Submit {
                server,
                signer,
                key,
                ledger_id,
                atomic,
                event,
            } => {
                submit(
                    server,
                    load_signer(&signer, &key)?,
                    ledger_id,
                    atomic,
                    event,
                )
                .await
            }
            Command::Balance {
                server,
                signer,
                key,
                budget_id,
            } => balance(server, load_signer(&signer, &key)?, budget_id).await,
            Command::Holdings {
                server,
                signer,
                key,
                organisation_id,
            } => holdings(server, load_signer(&signer, &key)?, organisation_id).await,
            Command::Statement {
                server,
                signer,
                key,
                budget_id,
            } => statement(server, load_signer(&signer, &key)?, budget_id).await,
            Command::Plan {
                server,
                signer,
                key,
                budget_id,
            } => plan(server, load_signer(&signer, &key)?, budget_id).await,
            Command::Flags {
                server,
                signer,
                key,
                budget,
                status,
            } => flags(server, load_signer(&signer, &key)?, budget, status).await,
            Command::Report { report } => report::run(report).await,
            Command::Audit { audit } => match audit {
                Audit::Prove(args) => witness::prove(args).await,
                Audit::Consistency(args) => witness::consistency(args).await,
                Audit::Witness(args) => witness::witness(args).await,
                Audit::Verify(args) => audit_export::verify(args).await,
            },
            Command::Export(args) => audit_export::export(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Demo {
                server,
                root_key,
                ledger_id,
                keys_out,
            } => {
                demo::run(
                    &server,
                    load_signer("root", &root_key)?,
                    &ledger_id,
                    keys_out.as_deref(),
                )
                .await
            }
            Command::Dashboard(args) => dashboard::run(args).await,
        }
    })
}

fn load_signer(id: &str, key: &Path) -> Result<Signer> {
    warn_if_exposed(key);
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("reading secret key {}", key.display()))?;
    Ok(Signer::from_secret_hex(id, &text)?)
}

/// A secret key others can read is a key others may have copied: say so
/// (a warning, not a refusal — the operator may be mid-migration).
fn warn_if_exposed(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(key) else {
        return; // reading it reports the problem
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: secret key file {} is readable by group or others (mode {mode:04o}); restrict it with: chmod 600 {}",
            key.display(),
            key.display()
        );
    }
}

/// Makes a new or renamed entry in `dir` durable (the entry, not the file's
/// contents: fsync the file for those).
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// The directory a path is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes a small file so that after a crash it holds either nothing (it
/// does not exist) or all of `contents`: write a temporary file, fsync it,
/// rename it into place, fsync the directory. A plain `fs::write` can leave
/// an empty file behind when the machine or the filesystem stops right
/// after it (seen with `ledger-id` when storage went read-only mid-run).
fn write_durably(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let ctx = || format!("writing {}", path.display());
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(ctx)?
    };
    f.write_all(contents.as_bytes()).with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(ctx)?;
    sync_dir(parent_dir(path))
}

fn write_secret(path: &Path, secret_hex: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{secret_hex}")?;
    f.sync_all()?;
    sync_dir(parent_dir(path))
}

fn keygen(out: &Path) -> Result<()> {
    let s = Signer::generate("new");
    write_secret(out, &s.secret_hex())?;
    println!("{}", s.public_key_hex());
    eprintln!("secret key written to {}", out.display());
    Ok(())
}

/// The ledger id is fixed at first start and kept in the data directory, so
/// a restart with a different id fails loudly instead of refusing every event.
fn resolve_ledger_id(data: &Path, given: Option<String>) -> Result<String> {
    let file = data.join("ledger-id");
    let stored = match std::fs::read_to_string(&file) {
        // An empty file is a first start that was cut short before the id
        // reached the disk (versions before write_durably). The log cannot
        // hold events yet that name another id without failing replay, so
        // take the id as unset and write it again.
        Ok(s) if s.trim().is_empty() => {
            tracing::warn!(file = %file.display(), "the ledger-id file is empty; writing it again");
            None
        }
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    match (stored, given) {
        (Some(s), Some(g)) if s != g => bail!(
            "data directory {} belongs to ledger {s:?}, not {g:?}; use --ledger-id {s} or another --data",
            data.display()
        ),
        (Some(s), _) => Ok(s),
        (None, g) => {
            let id = g.unwrap_or_else(|| DEFAULT_LEDGER_ID.to_string());
            phb_domain::event::check_id("--ledger-id", &id, phb_domain::event::MAX_ID_LEN)
                .map_err(|r| anyhow!(r.message))?;
            write_durably(&file, &format!("{id}\n"))?;
            Ok(id)
        }
    }
}

/// True if the data directory already holds a ledger: a log with entries,
/// or a ledger id fixed by an earlier start. Its root key is then the one
/// the log was started with, never a new one.
fn holds_a_ledger(data: &Path) -> Result<bool> {
    let id_file = data.join("ledger-id");
    match std::fs::read_to_string(&id_file) {
        // Empty: a first start cut short before the id reached the disk.
        Ok(s) if !s.trim().is_empty() => return Ok(true),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", id_file.display())),
    }
    let log = data.join("log").join("ledger.log");
    match std::fs::metadata(&log) {
        Ok(m) => Ok(m.len() > phb_store::logfile::HEADER_LEN),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", log.display())),
    }
}

/// The root public key, and whether `root.pub` must still be written once
/// the log has been replayed under it.
struct RootKey {
    key: ed25519_dalek::VerifyingKey,
    record_after_replay: bool,
}

/// The root key is bound to the data directory by `root.pub`, written at
/// first start like the ledger id: a restart without `--root-public-key`
/// uses it, and a different key is refused here rather than surfacing as a
/// signature failure at sequence 1 (or, worse, a new root secret generated
/// into a directory whose log was started with another key).
fn resolve_root_key(data: &Path, given: Option<String>) -> Result<RootKey> {
    let pub_file = data.join("root.pub");
    // Checked before anything is recorded: a weak key written to root.pub
    // would make the directory refuse every later, correct key.
    let strong = |key: ed25519_dalek::VerifyingKey| {
        if phb_domain::chain::parse_public_key(key.as_bytes()).is_none() {
            bail!("the root public key is not one an ed25519 key generator produces (weak, mixed-order or non-canonical); generate a new one with `phb-ledger keygen`");
        }
        Ok(key)
    };
    let given = given
        .map(|hex| strong(phb_client::parse_public_key_hex(&hex).context("--root-public-key")?))
        .transpose()?;
    let recorded = match std::fs::read_to_string(&pub_file) {
        Ok(hex) => Some(strong(
            phb_client::parse_public_key_hex(&hex)
                .with_context(|| format!("reading {}", pub_file.display()))?,
        )?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", pub_file.display())),
    };
    let root = match (recorded, given) {
        (Some(r), Some(g)) if r != g => bail!(
            "data directory {} belongs to root public key {} (recorded in {}), but --root-public-key gives {}; start without --root-public-key to use the recorded key, or use another --data",
            data.display(),
            hex::encode(r.as_bytes()),
            pub_file.display(),
            hex::encode(g.as_bytes())
        ),
        (Some(r), _) => RootKey {
            key: r,
            record_after_replay: false,
        },
        (None, given) if holds_a_ledger(data)? => match given {
            // Recorded only once the whole log has verified under it, so a
            // wrong guess leaves nothing behind.
            Some(g) => RootKey {
                key: g,
                record_after_replay: true,
            },
            None => bail!(
                "{} is missing, but data directory {} already holds a ledger; refusing to generate a new root key for it. Restore root.pub from a backup, or start once with --root-public-key (or PHB_ROOT_PUBLIC_KEY) set to the root public key this ledger was started with; it is then recorded in {}",
                pub_file.display(),
                data.display(),
                pub_file.display()
            ),
        },
        (None, Some(g)) => {
            write_durably(&pub_file, &format!("{}\n", hex::encode(g.as_bytes())))?;
            RootKey {
                key: g,
                record_after_replay: false,
            }
        }
        (None, None) => {
            let root = Signer::generate("root");
            let secret = data.join("root.key");
            write_secret(&secret, &root.secret_hex())?;
            write_durably(&pub_file, &format!("{}\n", root.public_key_hex()))?;
            println!(
                "generated the ledger's root key: secret {} (keep it offline), public {}",
                secret.display(),
                root.public_key_hex()
            );
            RootKey {
                key: root.public_key(),
                record_after_replay: false,
            }
        }
    };
    Ok(root)
}

/// The checkpoints' origin line and key name for ledger `ledger_id`.
fn checkpoint_origin(ledger_id: &str) -> String {
    format!("phb-ledger/{ledger_id}")
}

/// The ledger key, which signs checkpoints: `ledger.key` in the data
/// directory (0600), generated at first start. Unlike the root key it must
/// stay online; it can sign nothing but checkpoints.
fn resolve_ledger_key(data: &Path) -> Result<ed25519_dalek::SigningKey> {
    let path = data.join("ledger.key");
    let secret_hex = match std::fs::read_to_string(&path) {
        Ok(text) => {
            warn_if_exposed(&path);
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = Signer::generate("ledger");
            write_secret(&path, &s.secret_hex())?;
            println!(
                "generated the ledger key (signs checkpoints): secret {}, public {}",
                path.display(),
                s.public_key_hex()
            );
            s.secret_hex()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let seed = phb_client::parse_hex32(&secret_hex)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Files this process creates get no group or other bits, whatever umask
/// it was started under: sled creates the index files itself, with modes we
/// cannot pass it.
fn private_umask() {
    // SAFETY: umask(2) only replaces the process's file-creation mask; it
    // cannot fail and touches no memory. Set at start-up, before any other
    // thread of ours creates files.
    unsafe {
        libc::umask(0o077);
    }
}

/// A data directory created by an older version (or by hand) may be open
/// to others; close it. Everything below it is then unreachable to them,
/// whatever the files' own modes.
fn make_private(data: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(data) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) => {
            tracing::warn!(dir = %data.display(), error = %e, "cannot read the data directory's mode");
            return;
        }
    };
    if mode & 0o077 == 0 {
        return;
    }
    // A warning, not a refusal, if it fails (say, a directory owned by
    // another user): refusing would stop the service over a mode it cannot
    // change, and the files created from now on are private anyway.
    match std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => tracing::warn!(
            dir = %data.display(),
            was = %format!("{mode:04o}"),
            "the data directory was open to group or others; its mode is now 0700"
        ),
        Err(e) => tracing::warn!(
            dir = %data.display(),
            mode = %format!("{mode:04o}"),
            error = %e,
            "the data directory is open to group or others and its mode could not be changed to 0700"
        ),
    }
}

/// A write past RLIMIT_FSIZE (`ulimit -f`, systemd `LimitFSIZE=`) raises
/// SIGXFSZ, whose default action kills the process: a full file would then
/// crash the ledger instead of refusing the write. Ignored, the write fails
/// with EFBIG, which the writer answers UNAVAILABLE like any other failed write.
fn ignore_sigxfsz() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler
    // code and touches no memory; it is done once, at start-up.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// glibc raises its mmap threshold after the first large buffer is freed
/// (up to 32 MiB), so later request buffers come from the heap, and a heap
/// rarely shrinks: after a burst of large requests the process kept its
/// peak size. A fixed threshold keeps every buffer above 128 KiB in its own
/// mapping, returned to the system when freed. (phb-grpc trims the heap
/// after a burst for the smaller buffers.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters. It is
    // called once, first thing in `main`, before any other thread exists
    // (glibc documents it as unsafe to race with allocation in other threads).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

async fn serve(settings: config::Settings) -> Result<()> {
    let config::Settings {
        data,
        listen,
        ledger_id,
        root_public_key,
        checkpoint_every,
        snapshot_every,
        allow_index_rebuild,
        verify_full,
        limits,
        metrics_listen,
        log_format: _,
        tls,
        require_read_nonce,
        shared_log,
        report: _,
    } = settings;
    let tls = match tls {
        None => None,
        Some(t) => {
            let read = |p: &Path| {
                std::fs::read(p).with_context(|| format!("reading TLS file {}", p.display()))
            };
            Some(phb_grpc::TlsSettings {
                cert_pem: read(&t.cert)?,
                key_pem: read(&t.key)?,
                client_ca_pem: t.client_ca.as_deref().map(read).transpose()?,
                bind_organisation: t.bind_organisation,
            })
        }
    };
    let tls_mode = match &tls {
        None => "plaintext",
        Some(t) if t.client_ca_pem.is_some() => "mutual TLS",
        Some(_) => "TLS",
    };
    private_umask();
    ignore_sigxfsz();
    // Before anything in the directory is read or written: a second server
    // on it must stop here, having changed nothing. The engine keeps this
    // one lock for the life of the process (taking a second one in this
    // process would conflict with it: flock is per open file description).
    let lock = phb_store::DataDirLock::acquire(&data)
        .with_context(|| format!("locking data directory {}", data.display()))?;
    make_private(&data);
    // The root key before the ledger id: whether the directory already
    // holds a ledger is judged by what an earlier start left (ledger-id, log
    // entries), so it must be asked before this start writes ledger-id.
    let root = resolve_root_key(&data, root_public_key)?;
    let ledger_id = resolve_ledger_id(&data, ledger_id)?;
    let ledger_key = resolve_ledger_key(&data)?;
    let started = std::time::Instant::now();
    let engine_config = phb_engine::EngineConfig {
        data_dir: data.clone(),
        ledger_id: ledger_id.clone(),
        root_key: root.key,
        allow_index_rebuild,
        ledger_key,
        checkpoint_origin: checkpoint_origin(&ledger_id),
        checkpoint_every,
        snapshot_every,
        verify_full,
    };
    let opened = match shared_log {
        None => phb_engine::Engine::open_locked(engine_config, lock),
        Some(shared) => {
            // The local log is a verified copy of the shared one; the
            // instance starts as a reader (docs/high-availability.md).
            let mut log = phb_pglog::PgLog::new(&shared.postgres_url, &ledger_id)
                .map_err(|e| anyhow!("log.postgres_url: {e}"))?;
            if let Some(ca) = &shared.postgres_ca {
                log.require_tls(ca)
                    .map_err(|e| anyhow!("log.postgres_ca: {e}"))?;
            }
            tracing::info!(advertise = %shared.advertise, "log shared on PostgreSQL; starting as a reader");
            phb_engine::Engine::open_shared(engine_config, lock, Box::new(log), shared.advertise)
        }
    };
    let (engine, report) =
        opened.with_context(|| format!("opening the ledger in {}", data.display()))?;
    if root.record_after_replay {
        let pub_file = data.join("root.pub");
        write_durably(
            &pub_file,
            &format!("{}\n", hex::encode(root.key.as_bytes())),
        )?;
        tracing::warn!(file = %pub_file.display(), "root.pub was missing; the log verified under --root-public-key, which is now recorded");
    }
    tracing::info!(
        entries = report.entries,
        truncated_bytes = report.truncated_bytes,
        reindexed = report.reindexed,
        index_rebuilt = report.index_rebuilt,
        resumed_at_snapshot = report.resumed_at.unwrap_or(0),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "log verified and replayed"
    );
    // Checkpoints on a schedule: once a minute, if the log has grown.
    {
        let engine = engine.clone();
        tokio::spawn(async move {
            let minute = std::time::Duration::from_secs(60);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + minute, minute);
            loop {
                tick.tick().await;
                let grown = {
                    let v = engine.verifiable();
                    v.size() > v.latest_size()
                };
                if grown {
                    let e = engine.clone();
                    match tokio::task::spawn_blocking(move || e.latest_checkpoint()).await {
                        Ok(Err(err)) => {
                            tracing::error!(error = %err, "scheduled checkpoint failed")
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "scheduled checkpoint task failed")
                        }
                        Ok(Ok(_)) => {}
                    }
                }
            }
        });
    }
    if let Some((addr, asked)) = metrics_listen {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => {
                let at = l.local_addr().map(|a| a.to_string()).unwrap_or(addr);
                tracing::info!(address = %at, "metrics and probes on http://{at}/metrics, /livez, /readyz");
                tokio::spawn(metrics_http::serve(l, engine.clone()));
            }
            // The default port may be taken (a second server on the
            // machine): the ledger runs without it. One asked for must work.
            Err(e) if !asked => {
                tracing::warn!(address = %addr, error = %e, "the metrics port is not available; running without /metrics (set metrics.listen)")
            }
            Err(e) => return Err(e).with_context(|| format!("listening for metrics on {addr}")),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    // Take over SIGTERM and SIGINT before anyone can know the address: a
    // handler installed only when the shutdown future is first polled left
    // a window in which SIGTERM killed the process outright instead of
    // stopping it cleanly (seen in tests/storage_faults.rs under load).
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    // Tests and scripts read this line to find the port.
    // Before the listening line: whoever waits for it may read the log.
    tracing::info!(transport = tls_mode, require_read_nonce, "gRPC transport");
    println!("phb-ledger {ledger_id} listening on {addr}");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    };
    let flusher = engine.clone();
    phb_grpc::serve(
        engine,
        listener,
        limits,
        phb_grpc::ServeOptions {
            tls,
            require_read_nonce,
        },
        shutdown,
    )
    .await?;
    // Every answered write is durable in the log already; leave the derived
    // index complete too, so that it vouches for the last entries next time.
    flusher.flush_index().await;
    // And a snapshot at the head, so the next start loads it instead of
    // replaying the log since the last background one.
    let snapshotter = flusher.clone();
    match tokio::task::spawn_blocking(move || snapshotter.snapshot()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no snapshot at stop; the next start replays more of the log")
        }
        Err(e) => tracing::warn!(error = %e, "the snapshot at stop failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn connect(server: &str) -> Result<connect::Client> {
    Ok(connect::connect(server, None, connect::MAX_ANSWER_BYTES).await?)
}

async fn submit(
    server: String,
    signer: Signer,
    ledger_id: String,
    atomic: bool,
    input: String,
) -> Result<()> {
    let text = match input.as_str() {
        "-" => std::io::read_to_string(std::io::stdin())?,
        s if s.starts_with('@') => {
            std::fs::read_to_string(&s[1..]).with_context(|| format!("reading {}", &s[1..]))?
        }
        s => s.to_string(),
    };
    let events = json_event::parse_events(&text, &ledger_id)?;
    let signed = events.iter().map(|e| signer.sign(e)).collect();
    let mut client = connect(&server).await?;
    let resp = client
        .append(pb::AppendRequest {
            events: signed,
            atomic,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut failed = false;
    for r in resp.results {
        let code = r.error.as_ref().map(|e| e.code).unwrap_or(0);
        failed |= code != 0;
        println!("{}", json_event::result_json(&r));
    }
    if failed {
        bail!("one or more events were refused");
    }
    Ok(())
}

/// A refused call as the CLI reports it: the gRPC code and the server's
/// message, which says what to change.
fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow!(
        "{}: {}",
        json_event::code_name(s.code() as i32),
        s.message()
    )
}

async fn balance(server: String, signer: Signer, budget_id: Option<String>) -> Result<()> {
    let mut client = connect(&server).await?;
    let balances = match budget_id {
        Some(id) => {
            let req = signer.request(
                phb_client::methods::GET_BALANCE,
                pb::GetBalanceRequest { budget_id: id },
            );
            let b = client
                .get_balance(req)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .balance;
            b.into_iter().collect()
        }
        None => demo::list_all(&mut client, &signer).await?,
    };
    for b in &balances {
        println!("{}", json_event::balance_json(b));
    }
    Ok(())
}

async fn holdings(server: String, signer: Signer, organisation_id: String) -> Result<()> {
    let mut client = connect(&server).await?;
    let req = signer.request(
        phb_client::methods::GET_HOLDINGS,
        pb::GetHoldingsRequest { organisation_id },
    );
    let h = client
        .get_holdings(req)
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", json_event::holdings_total_json(&h));
    for row in &h.holdings {
        println!("{}", json_event::holding_json(row));
    }
    Ok(())
}

async fn plan(server: String, signer: Signer, budget_id: String) -> Result<()> {
    let mut client = connect(&server).await?;
    let req = signer.request(
        phb_client::methods::GET_CARE_PLAN,
        pb::GetCarePlanRequest { budget_id },
    );
    let p = client
        .get_care_plan(req)
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", json_event::care_plan_json(&p));
    Ok(())
}

async fn statement(server: String, signer: Signer, budget_id: String) -> Result<()> {
    let mut client = connect(&server).await?;
    let mut token = String::new();
    loop {
        let req = signer.request(
            phb_client::methods::GET_BUDGET_STATEMENT,
            pb::GetBudgetStatementRequest {
                budget_id: budget_id.clone(),
                page_size: 1000,
                page_token: token,
            },
        );
        let page = client
            .get_budget_statement(req)
            .await
            .map_err(rpc_error)?
            .into_inner();
        for row in &page.rows {
            println!("{}", json_event::statement_row_json(row));
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

async fn flags(
    server: String,
    signer: Signer,
    budget: Option<String>,
    status: Option<String>,
) -> Result<()> {
    let status = match status {
        None => pb::FlagStatus::Unspecified,
        Some(s) => {
            let name = s.to_uppercase();
            let name = name
                .strip_prefix("FLAG_STATUS_")
                .unwrap_or(&name)
                .to_string();
            pb::FlagStatus::from_str_name(&format!("FLAG_STATUS_{name}"))
                .filter(|s| *s != pb::FlagStatus::Unspecified)
                .ok_or_else(|| anyhow!("--status {s}: give OPEN, CONFIRMED or DISMISSED"))?
        }
    };
    let mut client = connect(&server).await?;
    let mut token = String::new();
    loop {
        let req = signer.request(
            phb_client::methods::LIST_FLAGS,
            pb::ListFlagsRequest {
                budget_id: budget.clone().unwrap_or_default(),
                status: status as i32,
                page_size: 500,
                page_token: token,
                ..Default::default()
            },
        );
        let page = client
            .list_flags(req)
            .await
            .map_err(rpc_error)?
            .into_inner();
        for f in &page.flags {
            println!("{}", json_event::flag_json(f, page.head_sequence));
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}
