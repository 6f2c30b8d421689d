//! `phb-ledger backup` and `restore` (docs/operations.md, "Backups").
//!
//! A backup is taken **online**, while the server writes, without its lock
//! and without stopping it: the log is append-only and a record, once
//! written, never changes, so any prefix of it that ends at a record
//! boundary is a ledger state the server passed through. The backup copies
//! the kept checkpoints first (each names entries already in the log) and
//! then the log up to its length at that moment, cuts the copy to its last
//! whole record, and copies the keys and ids. The index and the snapshots
//! are derived data and are not copied: the first start on a restore
//! rebuilds them by a full replay. Then the copy is verified as an auditor
//! would (every record, the chain, every signature and rule, every
//! checkpoint) before the command says it succeeded, naming the recovery
//! point: the last sequence and its entry hash.

use anyhow::{bail, Context, Result};
use phb_audit::datadir;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The files of a data directory a backup holds (the log apart).
const SMALL_FILES: &[&str] = &["ledger-id", "root.pub", "ledger.key"];

/// `backup` arguments.
#[derive(clap::Args)]
pub struct BackupArgs {
    /// The data directory of the (running or stopped) server.
    #[arg(long, env = "PHB_LEDGER_DATA", default_value = "./phb-data")]
    data: PathBuf,
    /// A new (or empty) directory to write the backup to.
    #[arg(long)]
    to: PathBuf,
}

/// `restore` arguments.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup directory (from `backup --to`).
    #[arg(long)]
    from: PathBuf,
    /// A new (or empty) data directory to restore into.
    #[arg(long)]
    data: PathBuf,
}

fn empty_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: a backup or restore never writes over existing files; give a new directory",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Writes `bytes` to a new private file and fsyncs it.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads at most `len` bytes of `path` from its start.
fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::with_capacity(len as usize);
    f.take(len)
        .read_to_end(&mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(out)
}

/// Copies a data directory's ledger into `to` (which must be new or empty)
/// and cuts the copies to whole records; returns what was copied.
fn copy_ledger(from: &Path, to: &Path) -> Result<()> {
    // Checkpoints before the log: each kept note names entries that were
    // already durable in the log when it was written.
    let notes = from.join("checkpoints.notes");
    let notes_bytes = match std::fs::read(&notes) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", notes.display())),
    };
    let log = from.join("log").join("ledger.log");
    let len = std::fs::metadata(&log)
        .with_context(|| format!("reading {}", log.display()))?
        .len();
    let log_bytes = read_prefix(&log, len)?;
    for name in SMALL_FILES {
        let src = from.join(name);
        let bytes = std::fs::read(&src).with_context(|| {
            format!(
                "reading {}: is {} a phb-ledger data directory?",
                src.display(),
                from.display()
            )
        })?;
        write_new(&to.join(name), &bytes)?;
    }
    if from.join("root.key").exists() {
        eprintln!(
            "note: {} holds the root secret key; it is NOT copied into the backup (keep it offline, apart from backups)",
            from.display()
        );
    }
    std::fs::create_dir(to.join("log")).context("creating the backup's log directory")?;
    write_new(&to.join("log").join("ledger.log"), &log_bytes)?;
    // A write in progress when the log was read leaves a partial record at
    // the end of the copy: cut it (it was not acknowledged yet).
    let torn = datadir::read_log(to, |_| Ok(()))?;
    if torn > 0 {
        let f = OpenOptions::new()
            .write(true)
            .open(to.join("log").join("ledger.log"))?;
        f.set_len(log_bytes.len() as u64 - torn)?;
        f.sync_all()?;
    }
    if let Some(bytes) = notes_bytes {
        write_new(&to.join("checkpoints.notes"), &bytes)?;
        let (_, torn_notes) = datadir::read_checkpoints(to)?;
        if torn_notes > 0 {
            let f = OpenOptions::new()
                .write(true)
                .open(to.join("checkpoints.notes"))?;
            f.set_len(bytes.len() as u64 - torn_notes)?;
            f.sync_all()?;
        }
    }
    sync_dir(&to.join("log"))?;
    sync_dir(to)?;
    Ok(())
}

/// Verifies a backup (or data) directory as an auditor would; returns the
/// summary.
fn verify_dir(dir: &Path) -> Result<phb_audit::Summary> {
    let root_hex = std::fs::read_to_string(dir.join("root.pub"))
        .with_context(|| format!("reading {}", dir.join("root.pub").display()))?;
    let root = phb_audit::parse_public_key_hex(root_hex.trim())
        .map_err(|e| anyhow::anyhow!("root.pub: {e}"))?;
    let ledger_secret = std::fs::read_to_string(dir.join("ledger.key"))
        .with_context(|| format!("reading {}", dir.join("ledger.key").display()))?;
    let ledger = phb_client::Signer::from_secret_hex("ledger", ledger_secret.trim())
        .map_err(|e| anyhow::anyhow!("ledger.key: {e}"))?;
    let ledger_key = phb_audit::parse_ledger_key(&ledger.public_key_hex())
        .map_err(|e| anyhow::anyhow!("ledger.key: {e}"))?;
    let export = tempfile_in(dir)?;
    crate::audit_export::export_dir(dir, &export)?;
    let opts = phb_audit::VerifyOptions::new(root, ledger_key);
    let file = File::open(&export).with_context(|| format!("opening {}", export.display()))?;
    let verified = phb_audit::verify(std::io::BufReader::with_capacity(1 << 20, file), &opts);
    let _ = std::fs::remove_file(&export);
    match verified {
        Ok(v) => Ok(v.summary),
        Err(f) => bail!("the copy does not verify: {f}"),
    }
}

fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    Ok(dir.join(format!(".verify-{}.phbx", std::process::id())))
}

fn report(what: &str, dir: &Path, s: &phb_audit::Summary) {
    println!(
        "{what} {}: {} entries of ledger {}, recovery point sequence {} (entry hash {}), {} checkpoints; verified: every record, the chain, every signature and rule, every checkpoint",
        dir.display(),
        s.entries,
        s.ledger_id,
        s.entries,
        hex::encode(s.head_hash),
        s.checkpoints
    );
}

/// `phb-ledger backup`.
pub fn backup(args: BackupArgs) -> Result<()> {
    empty_dir(&args.to)?;
    copy_ledger(&args.data, &args.to)?;
    let summary = verify_dir(&args.to)?;
    report("backup", &args.to, &summary);
    Ok(())
}

/// `phb-ledger restore`.
pub fn restore(args: RestoreArgs) -> Result<()> {
    let summary = verify_dir(&args.from)
        .with_context(|| format!("verifying the backup {}", args.from.display()))?;
    empty_dir(&args.data)?;
    copy_ledger(&args.from, &args.data)?;
    report("restored", &args.data, &summary);
    println!(
        "start it with: phb-ledger serve --data {} (the first start rebuilds the index and snapshots from the log)",
        args.data.display()
    );
    Ok(())
}
