//! `phb-ledger export` and `phb-ledger audit verify`: the shell around
//! `phb_audit` (the file format, the verification, the comparison), which
//! does the IO and the gRPC calls (docs/audit.md, "Export files" and
//! "Verifying an export").

use anyhow::{anyhow, bail, Context, Result};
use phb_audit::export::ExportWriter;
use phb_audit::{against, datadir, jsonl, receipts, VerifyOptions};
use phb_client::{methods, Signer};
use phb_proto::v1 as pb;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

type Client = pb::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>;

/// The largest receipts file read.
const MAX_RECEIPTS_BYTES: u64 = 256 * 1024 * 1024;

/// What an export is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The export file `audit verify` reads (docs/audit.md, "Export files").
    Binary,
    /// One JSON object per entry, for people and spreadsheets.
    Jsonl,
}

/// `export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Export from this data directory (of a stopped server; nothing in it
    /// is written or locked).
    #[arg(long, conflicts_with_all = ["server", "signer", "key"], required_unless_present = "server")]
    data: Option<PathBuf>,
    /// Export from this running server: ReadLog as an auditor (or root),
    /// up to the latest checkpoint, which GetCheckpoint issues at the head.
    #[arg(long, requires_all = ["signer", "key"])]
    server: Option<String>,
    /// The reading organisation id (an auditor, or "root").
    #[arg(long)]
    signer: Option<String>,
    /// File holding the reader's secret key (hex).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where to write the export ("-" for standard output).
    #[arg(long)]
    out: PathBuf,
    /// binary: the export file `audit verify` reads; jsonl: one JSON object per entry.
    #[arg(long, value_enum, default_value_t = Format::Binary)]
    format: Format,
    /// The ledger id, for a server whose log is empty (otherwise it is read
    /// from the checkpoint or the data directory).
    #[arg(long)]
    ledger_id: Option<String>,
}

/// `audit verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The export file (`phb-ledger export`).
    file: PathBuf,
    /// The ledger's root public key (64 hex characters), from the operator out of band.
    #[arg(long)]
    root_key: String,
    /// The ledger key that signs checkpoints, from the operator out of band:
    /// a C2SP verifier key (`phb-ledger/ID+KEYHASH+BASE64`) or 64 hex characters.
    #[arg(long)]
    ledger_key: String,
    /// The ledger id (default: the verifier key's name, else the export's header).
    #[arg(long)]
    ledger_id: Option<String>,
    /// Compare the recomputed balances and flags with this running server's answers.
    #[arg(long, requires_all = ["signer", "key"])]
    against: Option<String>,
    /// The organisation that reads the server for --against (an auditor, or "root").
    #[arg(long)]
    signer: Option<String>,
    /// File holding that organisation's secret key (hex).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Receipts a partner kept (JSON lines of sequence, entry_hash, tree_size):
    /// each must be in the export with that hash.
    #[arg(long)]
    receipts: Option<PathBuf>,
    /// The date the time-based flags are derived for, YYYY-MM-DD (default:
    /// the date of the last entry).
    #[arg(long)]
    as_of: Option<String>,
    /// Print the summary (or the failure) as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Writes to a file through a temporary name, renamed into place once
/// complete and synced; or to standard output.
enum Out {
    File {
        tmp: PathBuf,
        path: PathBuf,
        w: BufWriter<std::fs::File>,
    },
    Stdout(BufWriter<std::io::Stdout>),
}

impl Out {
    fn create(path: &Path) -> Result<Out> {
        if path == Path::new("-") {
            return Ok(Out::Stdout(BufWriter::new(std::io::stdout())));
        }
        let mut name = path
            .file_name()
            .ok_or_else(|| anyhow!("--out {} names no file", path.display()))?
            .to_os_string();
        name.push(".partial");
        let tmp = path.with_file_name(name);
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Out::File {
            tmp,
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 20, file),
        })
    }

    fn finish(self) -> Result<()> {
        match self {
            Out::Stdout(mut w) => Ok(w.flush()?),
            Out::File { tmp, path, w } => {
                let file = w.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
                Ok(())
            }
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Stdout(w) => w.write(buf),
            Out::File { w, .. } => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(w) => w.flush(),
            Out::File { w, .. } => w.flush(),
        }
    }
}

/// The export being written, in either format.
enum Sink {
    Binary(ExportWriter<Out>),
    Jsonl(Out, u64),
}

impl Sink {
    fn new(out: Out, format: Format, ledger_id: &str) -> Result<Sink> {
        Ok(match format {
            Format::Binary => Sink::Binary(ExportWriter::new(out, ledger_id)?),
            Format::Jsonl => Sink::Jsonl(out, 0),
        })
    }

    fn entry(&mut self, e: &pb::LogEntry) -> Result<()> {
        match self {
            Sink::Binary(w) => w.entry_pb(e)?,
            Sink::Jsonl(out, n) => {
                out.write_all(jsonl::entry_line(e).as_bytes())?;
                out.write_all(b"\n")?;
                *n += 1;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self, note: &str) -> Result<()> {
        if let Sink::Binary(w) = self {
            w.checkpoint(note)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<u64> {
        match self {
            Sink::Binary(w) => {
                let n = w.entries();
                w.finish()?.finish()?;
                Ok(n)
            }
            Sink::Jsonl(out, n) => {
                out.finish()?;
                Ok(n)
            }
        }
    }
}

/// Runs `export`.
pub async fn export(args: ExportArgs) -> Result<()> {
    let (entries, checkpoints) = match (&args.data, &args.server) {
        (Some(dir), _) => {
            let dir = dir.clone();
            let (out, format) = (args.out.clone(), args.format);
            tokio::task::spawn_blocking(move || export_data(&dir, &out, format)).await??
        }
        (None, Some(server)) => {
            let signer = crate::load_signer(
                args.signer.as_deref().unwrap_or_default(),
                args.key.as_deref().unwrap_or(Path::new("")),
            )?;
            export_server(server, &signer, &args).await?
        }
        (None, None) => bail!("give --data DIR or --server URL"),
    };
    if args.out != Path::new("-") {
        eprintln!(
            "exported {entries} entries{} to {}",
            if args.format == Format::Binary {
                format!(" and {checkpoints} checkpoints")
            } else {
                String::new()
            },
            args.out.display()
        );
    }
    Ok(())
}

/// A binary export of a data directory (for `backup`'s verification).
pub fn export_dir(dir: &Path, out: &Path) -> Result<(u64, usize)> {
    export_data(dir, out, Format::Binary)
}

fn export_data(dir: &Path, out: &Path, format: Format) -> Result<(u64, usize)> {
    let ledger_id = datadir::ledger_id(dir)?;
    let mut sink = Sink::new(Out::create(out)?, format, &ledger_id)?;
    let torn = datadir::read_log(dir, |e| {
        sink.entry(&phb_audit::export::entry_pb(&e))
            .map_err(|err| datadir::DataDirError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::other(err.to_string()),
            })
    })?;
    if torn > 0 {
        eprintln!(
            "warning: the log ends in {torn} bytes that are not a whole record (an unacknowledged write, which the server cuts off at start); not exported"
        );
    }
    let (notes, torn_notes) = datadir::read_checkpoints(dir)?;
    if torn_notes > 0 {
        eprintln!("warning: checkpoints.notes ends in {torn_notes} bytes that are not a whole note; not exported");
    }
    for n in &notes {
        sink.checkpoint(n)?;
    }
    Ok((sink.finish()?, notes.len()))
}

async fn connect(server: &str) -> Result<Client> {
    Ok(crate::connect::connect(server, None, crate::connect::MAX_ANSWER_BYTES).await?)
}

async fn export_server(server: &str, signer: &Signer, args: &ExportArgs) -> Result<(u64, usize)> {
    let mut client = connect(server).await?;
    // The latest checkpoint first (issued at the head if the latest is
    // older): the export ends exactly at it, so it covers every entry.
    let cp = client
        .get_checkpoint(signer.request(
            methods::GET_CHECKPOINT,
            pb::GetCheckpointRequest { tree_size: 0 },
        ))
        .await;
    let (size, note) = match cp {
        Ok(r) => {
            let r = r.into_inner();
            (r.tree_size, Some(r.checkpoint))
        }
        Err(s) if s.code() == tonic::Code::NotFound => (0, None),
        Err(s) => return Err(crate::rpc_error(s)).context("GetCheckpoint"),
    };
    let ledger_id = match (&args.ledger_id, &note) {
        (Some(id), _) => id.clone(),
        (None, Some(n)) => n
            .split('\n')
            .next()
            .and_then(|o| o.strip_prefix(phb_audit::ORIGIN_PREFIX))
            .ok_or_else(|| {
                anyhow!("the checkpoint's origin is not phb-ledger/ID; give --ledger-id")
            })?
            .to_string(),
        (None, None) => bail!("the server's log is empty; give --ledger-id to export it anyway"),
    };
    let mut sink = Sink::new(Out::create(&args.out)?, args.format, &ledger_id)?;
    if size > 0 {
        let mut stream = client
            .read_log(signer.request(
                methods::READ_LOG,
                pb::ReadLogRequest {
                    from_sequence: 1,
                    follow: false,
                },
            ))
            .await
            .map_err(crate::rpc_error)
            .context("ReadLog")?
            .into_inner();
        let mut next = 1u64;
        while next <= size {
            let Some(item) = stream
                .message()
                .await
                .map_err(crate::rpc_error)
                .context("ReadLog")?
            else {
                break;
            };
            let e = item
                .entry
                .ok_or_else(|| anyhow!("ReadLog sent an item without an entry"))?;
            // Written as sent: the verification, not the export, judges it.
            sink.entry(&e)?;
            next += 1;
        }
        if next <= size {
            bail!(
                "the server's checkpoint is for {size} entries but ReadLog sent only {}",
                next - 1
            );
        }
    }
    if let Some(n) = &note {
        sink.checkpoint(n)?;
    }
    Ok((sink.finish()?, usize::from(note.is_some())))
}

fn parse_date(text: &str) -> Result<phb_domain::event::Date> {
    phb_domain::event::parse_date("--as-of", text).map_err(|r| anyhow!("{}", r.message))
}

/// Runs `audit verify`.
pub async fn verify(args: VerifyArgs) -> Result<()> {
    let root_key =
        phb_audit::parse_public_key_hex(&args.root_key).map_err(|e| anyhow!("--root-key: {e}"))?;
    let ledger_key =
        phb_audit::parse_ledger_key(&args.ledger_key).map_err(|e| anyhow!("--ledger-key: {e}"))?;
    let mut opts = VerifyOptions::new(root_key, ledger_key);
    opts.ledger_id = args.ledger_id.clone();
    if let Some(d) = &args.as_of {
        opts.as_of = Some(parse_date(d)?);
    }
    if let Some(path) = &args.receipts {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len > MAX_RECEIPTS_BYTES {
            bail!(
                "{} is {len} bytes; at most 256 MiB of receipts are read",
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        opts.receipts = receipts::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    let signer = match (&args.against, &args.signer, &args.key) {
        (Some(_), Some(id), Some(key)) => Some(crate::load_signer(id, key)?),
        _ => None,
    };
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let verified = tokio::task::spawn_blocking(move || {
        phb_audit::verify(std::io::BufReader::with_capacity(1 << 20, file), &opts)
    })
    .await?;
    let verified = match verified {
        Ok(v) => v,
        Err(f) => failed(&f, args.json),
    };
    let compared = match (&args.against, &signer) {
        (Some(server), Some(signer)) => {
            let live = fetch_live(server, signer, verified.summary.as_of).await?;
            match against::compare(&verified, &live) {
                Ok(c) => Some(c),
                Err(f) => failed(&f, args.json),
            }
        }
        _ => None,
    };
    if args.json {
        let mut v = verified.summary.to_json();
        v["warnings"] = serde_json::json!(verified.warnings);
        if let Some(c) = &compared {
            v["against"] = serde_json::json!({
                "server_head": c.server_head,
                "budgets": c.budgets,
                "changed_since": c.changed_since,
                "flags": c.flags,
                "exact": c.exact,
            });
        }
        println!("{v}");
    } else {
        println!("{}", verified.summary);
        if let Some(c) = &compared {
            println!(
                "server         head {}: {} budgets and {} flags equal{}",
                c.server_head,
                c.budgets,
                c.flags,
                if c.exact {
                    String::new()
                } else {
                    format!(
                        " ({} budgets changed since the export; time-based flags and reviews not compared)",
                        c.changed_since
                    )
                }
            );
        }
        for w in &verified.warnings {
            println!("warning: {w}");
        }
        println!("verified: OK");
    }
    Ok(())
}

/// Reports a failed verification (with --json, also as a JSON line on
/// standard output) and exits with status 1: a finding, not a crash, so
/// no error chain or backtrace.
fn failed(f: &phb_audit::Failure, json: bool) -> ! {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": false,
                "failure": {
                    "location": f.location.to_string(),
                    "sequence": f.sequence(),
                    "reason": f.reason,
                }
            })
        );
    }
    eprintln!("verification FAILED: {f}");
    std::process::exit(1)
}

/// Every balance and flag the server answers, with its head.
async fn fetch_live(
    server: &str,
    signer: &Signer,
    as_of: phb_domain::event::Date,
) -> Result<against::Live> {
    let mut client = connect(server).await?;
    let (head_before, flags) = all_flags(&mut client, signer, as_of).await?;
    let mut balances = Vec::new();
    let mut token = String::new();
    for _ in 0..1_000_000 {
        let page = client
            .list_balances(signer.request(
                methods::LIST_BALANCES,
                pb::ListBalancesRequest {
                    commissioner_id: String::new(),
                    page_size: 1000,
                    page_token: token.clone(),
                },
            ))
            .await
            .map_err(crate::rpc_error)
            .context("ListBalances")?
            .into_inner();
        balances.extend(page.balances);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Entries may have been appended meanwhile: then the heads differ and
    // only what they cannot have changed is compared.
    let head_after = flags_page(&mut client, signer, as_of, String::new())
        .await?
        .head_sequence;
    Ok(against::Live {
        head: head_before.max(head_after),
        balances,
        flags,
    })
}

async fn flags_page(
    client: &mut Client,
    signer: &Signer,
    as_of: phb_domain::event::Date,
    page_token: String,
) -> Result<pb::ListFlagsResponse> {
    Ok(client
        .list_flags(signer.request(
            methods::LIST_FLAGS,
            pb::ListFlagsRequest {
                as_of: Some(against::as_of_timestamp(as_of)),
                page_size: 500,
                page_token,
                ..Default::default()
            },
        ))
        .await
        .map_err(crate::rpc_error)
        .context("ListFlags")?
        .into_inner())
}

async fn all_flags(
    client: &mut Client,
    signer: &Signer,
    as_of: phb_domain::event::Date,
) -> Result<(u64, Vec<pb::Flag>)> {
    let mut flags = Vec::new();
    let mut token = String::new();
    let mut head = None;
    for _ in 0..1_000_000 {
        let page = flags_page(client, signer, as_of, token).await?;
        let h = *head.get_or_insert(page.head_sequence);
        if page.head_sequence != h {
            // The log grew between pages: the largest head counts.
            head = Some(h.max(page.head_sequence));
        }
        flags.extend(page.flags);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok((head.unwrap_or(0), flags))
}
