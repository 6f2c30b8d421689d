//! What a careless operator (or a second copy of the service) can do to a
//! data directory, through the real binary (issue 6: defects 1, 9, 10 and
//! the log-colour point of 12): one writer per directory, the root key bound
//! to the directory, private files whatever the umask, a warning for a
//! readable secret key, and no terminal colour codes in a piped log.

mod common;

use common::*;
use phb_client::{kinds, Signer};
use phb_proto::v1 as pb;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");
const REFUSE_WITHIN: Duration = Duration::from_secs(30);

/// `sh -c 'umask 022; exec "$@"'`: the server runs under the umask most
/// systems give a login shell.
fn umask_022() -> Vec<OsString> {
    ["sh", "-c", "umask 022; exec \"$@\"", "sh"]
        .iter()
        .map(OsString::from)
        .collect()
}

/// `phb-ledger serve` started by hand (the harness always passes
/// `--root-public-key`; these tests need to leave it out), under umask 022.
struct Raw {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve --data data --listen 127.0.0.1:0 extra...`. `Err` carries
/// the exit status and stderr if it exited instead of listening.
fn serve_raw(data: &Path, extra: &[&str], stderr: &Path) -> Result<Raw, (ExitStatus, String)> {
    let mut child = Command::new("sh")
        .args(["-c", "umask 022; exec \"$@\"", "sh", BIN, "serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("PHB_DATA")
        .env_remove("PHB_LEDGER_DATA")
        .env_remove("PHB_LEDGER_CONFIG")
        .env_remove("PHB_LISTEN")
        .env_remove("PHB_LEDGER_LISTEN")
        .env_remove("PHB_LEDGER_ID")
        .env_remove("PHB_ROOT_PUBLIC_KEY")
        .env_remove("PHB_LEDGER_ROOT_PUBLIC_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("spawning phb-ledger serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(" listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => {
            let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
            Ok(Raw {
                child,
                addr,
                stderr: stderr.to_path_buf(),
            })
        }
        Err(_) => {
            let status = child.wait().unwrap();
            Err((status, std::fs::read_to_string(stderr).unwrap_or_default()))
        }
    }
}

impl Raw {
    async fn client(&self) -> Client {
        Client::connect(format!("http://{}", self.addr))
            .await
            .expect("connecting")
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Every path below `dir` (relative) with its inode, directories included.
fn inodes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), m.ino());
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Every path below `dir` with its permission bits.
fn modes(dir: &Path) -> BTreeMap<PathBuf, u32> {
    inodes(dir)
        .into_keys()
        .map(|p| {
            let m = std::fs::symlink_metadata(dir.join(&p)).unwrap();
            (p, m.permissions().mode() & 0o7777)
        })
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_private(data: &Path, must_hold: &[&str]) {
    assert_eq!(mode(data), 0o700, "the data directory is 0700");
    let modes = modes(data);
    for f in must_hold {
        assert!(
            modes.contains_key(Path::new(f)),
            "{f} is in the data directory: {modes:?}"
        );
    }
    let open: Vec<_> = modes.iter().filter(|(_, m)| **m & 0o077 != 0).collect();
    assert!(
        open.is_empty(),
        "nothing in the data directory is open to group or others: {open:?}"
    );
}

// ---------------------------------------------------------------------------
// Defect 1: one writer per data directory
// ---------------------------------------------------------------------------

/// A second server on a data directory in use refuses to start, naming the
/// directory and the PID that holds it, and changes nothing: the first keeps
/// serving with its index untouched, and the second can start once the
/// first has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_refuses_and_names_the_holder() {
    let w = World::new().await;
    w.open_notional("lock-b").await;
    w.fund("lock-b", "100.00", None).await;
    let data = w.server.data_dir();
    let a_pid = w.server.pid().expect("A's pid");
    let before_files = inodes(&data);
    let before_log = w.log().await;
    let log_len = std::fs::metadata(logfile::log_path(&data)).unwrap().len();

    let mut b = Server::prepare(ServerOptions {
        data_dir: Some(data.clone()),
        root: Some(w.server.root.clone()),
        ..Default::default()
    });
    let f = b.expect_start_failure(REFUSE_WITHIN);
    eprintln!("second start:\n{}", f.stderr);
    assert!(f.status.is_some_and(|s| !s.success()), "{:?}", f.status);
    assert!(
        f.stderr.contains(&data.display().to_string()),
        "the refusal names the data directory {}:\n{}",
        data.display(),
        f.stderr
    );
    assert!(
        f.stderr.contains(&format!("PID {a_pid}")),
        "the refusal names the holder's PID {a_pid}:\n{}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("rebuild"),
        "B did not touch the index:\n{}",
        f.stderr
    );
    // Nothing was created, deleted or replaced (a rebuilt index is a new
    // directory with new files), the log did not grow, and the lock file
    // still names A.
    assert_eq!(inodes(&data), before_files, "B changed the data directory");
    assert_eq!(
        std::fs::metadata(logfile::log_path(&data)).unwrap().len(),
        log_len
    );
    assert_eq!(
        std::fs::read_to_string(data.join("lock")).unwrap().trim(),
        a_pid.to_string()
    );

    // A keeps serving, with everything it had.
    assert_eq!(w.log().await, before_log);
    let seq = w
        .ok(
            &w.commissioner.clone(),
            "lock-b",
            kinds::allocate("5.00", pb::AllocationBasis::NeedsBased),
        )
        .await;
    assert_eq!(seq, before_log.len() as u64 + 1);
    let after = w.log().await;
    audit_log(&after, &w.server.root.public_key());
    assert!(
        !w.server.stderr().contains("rebuild"),
        "A's index was never rebuilt:\n{}",
        w.server.stderr()
    );

    // Once A has stopped, B starts on the same directory and sees it all.
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    b.try_start_again()
        .unwrap_or_else(|f| panic!("B did not start after A stopped: {f:?}"));
    let client = b.client().await;
    assert_eq!(read_log(&client, &w.auditor, 1).await, after);
    let b_stderr = b.stderr();
    assert!(
        !b_stderr.contains("rebuild"),
        "the index A left is used as it is:\n{b_stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("lock")).unwrap().trim(),
        b.pid().unwrap().to_string(),
        "the lock file names its new holder"
    );
}

// ---------------------------------------------------------------------------
// Defect 9: the root key is bound to the data directory
// ---------------------------------------------------------------------------

/// A directory started with `--root-public-key` keeps that key: a restart
/// without it uses the recorded key (no new root secret), a restart with
/// another key is refused naming both, and a directory whose root.pub was
/// lost refuses to invent one; giving the right key records it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_is_bound_to_the_data_directory() {
    let w = World::new().await;
    let data = w.server.data_dir();
    let root = w.server.root.clone();
    let root_hex = root.public_key_hex();
    let before = w.log().await;
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let scratch = tempfile::tempdir().unwrap();
    let err = |n: &str| scratch.path().join(format!("stderr-{n}.log"));

    // Restarted without --root-public-key: the recorded key, no new secret.
    {
        let s = serve_raw(&data, &[], &err("no-key"))
            .unwrap_or_else(|(st, e)| panic!("restart without the key failed ({st}):\n{e}"));
        assert!(
            !data.join("root.key").exists(),
            "no root secret was generated"
        );
        let client = s.client().await;
        assert_eq!(read_log(&client, &w.auditor, 1).await, before);
        // The root key still signs for this ledger.
        let extra = Signer::generate("extra-org");
        let reg = w.sign(
            &root,
            "",
            kinds::register(
                &extra.id,
                &[pb::Role::Auditor],
                &extra.public_key().to_bytes(),
            ),
        );
        let r = append_events(&client, vec![reg], false).await;
        assert_written(&r[0]);
        assert!(!s.stderr().contains("does not verify"), "{}", s.stderr());
    }
    assert_eq!(
        std::fs::read_to_string(data.join("root.pub"))
            .unwrap()
            .trim(),
        root_hex,
        "root.pub records the key given at first start"
    );

    // Restarted with another key: refused, naming both keys and root.pub.
    let other = Signer::generate("root").public_key_hex();
    let (st, e) = serve_raw(&data, &["--root-public-key", &other], &err("other"))
        .err()
        .expect("a start with another root key must be refused");
    eprintln!("another key:\n{e}");
    assert!(!st.success());
    assert!(
        e.contains(&root_hex) && e.contains(&other),
        "names both keys:\n{e}"
    );
    assert!(
        e.contains(&data.join("root.pub").display().to_string()),
        "names root.pub:\n{e}"
    );
    assert!(!e.contains("does not verify"), "{e}");
    assert_eq!(
        std::fs::read_to_string(data.join("root.pub"))
            .unwrap()
            .trim(),
        root_hex
    );

    // root.pub lost from a directory with a log: no new root key.
    std::fs::remove_file(data.join("root.pub")).unwrap();
    let (st, e) = serve_raw(&data, &[], &err("missing"))
        .err()
        .expect("a start without root.pub must be refused");
    eprintln!("root.pub missing:\n{e}");
    assert!(!st.success());
    assert!(
        e.contains(&data.join("root.pub").display().to_string()) && e.contains("missing"),
        "says root.pub is missing:\n{e}"
    );
    assert!(e.contains("--root-public-key"), "says how to recover:\n{e}");
    assert!(!data.join("root.key").exists(), "no root secret generated");
    assert!(!data.join("root.pub").exists());

    // A wrong key is not recorded: the log does not verify under it.
    let (_, e) = serve_raw(&data, &["--root-public-key", &other], &err("wrong"))
        .err()
        .expect("the log does not verify under another key");
    assert!(!data.join("root.pub").exists(), "wrong key recorded:\n{e}");

    // The key the log was started with: starts, and is recorded again.
    {
        let s = serve_raw(&data, &["--root-public-key", &root_hex], &err("recover"))
            .unwrap_or_else(|(st, e)| panic!("recovery start failed ({st}):\n{e}"));
        let client = s.client().await;
        assert_eq!(
            read_log(&client, &w.auditor, 1).await.len(),
            before.len() + 1
        );
    }
    assert_eq!(
        std::fs::read_to_string(data.join("root.pub"))
            .unwrap()
            .trim(),
        root_hex,
        "root.pub recorded again"
    );
}

// ---------------------------------------------------------------------------
// Defect 10: private data whatever the umask
// ---------------------------------------------------------------------------

/// Under umask 022 the data directory is 0700 and nothing in it is open to
/// group or others: the log, the index, ledger-id, root.pub, root.key, lock.
/// An existing directory left open is closed at start, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_private_whatever_the_umask() {
    // Given a root key (the harness's way), with the index written out.
    let w = World::with_server(Server::start_with(ServerOptions {
        wrapper: umask_022(),
        ..Default::default()
    }))
    .await;
    w.open_notional("private").await;
    let data = w.server.data_dir();
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_private(
        &data,
        &[
            "log",
            "log/ledger.log",
            "index",
            "index/db",
            "index/conf",
            "ledger-id",
            "root.pub",
            "lock",
        ],
    );

    // A generated root key, in a directory that already existed as 0755.
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("open-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = serve_raw(&data, &[], &scratch.path().join("stderr.log"))
        .unwrap_or_else(|(st, e)| panic!("start failed ({st}):\n{e}"));
    let client = s.client().await;
    let root_secret = std::fs::read_to_string(data.join("root.key")).unwrap();
    let root = Signer::from_secret_hex("root", &root_secret).unwrap();
    let org = Signer::generate("org-private");
    let reg = root.sign(&phb_client::event(
        "phb-local",
        "reg-private",
        "",
        kinds::register(&org.id, &[pb::Role::Auditor], &org.public_key().to_bytes()),
    ));
    let r = append_events(&client, vec![reg], false).await;
    assert_written(&r[0]);
    let stderr = s.stderr();
    assert!(
        stderr.contains("now 0700"),
        "the start says it closed the directory:\n{stderr}"
    );
    drop(s);
    assert_private(
        &data,
        &[
            "log/ledger.log",
            "index/db",
            "ledger-id",
            "root.pub",
            "root.key",
            "lock",
        ],
    );
}

/// Every command that loads a secret key warns when the key file is open
/// to group or others, naming the file and the fix; a 0600 file is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_warns_about_a_readable_secret_key() {
    let server = Server::start();
    let key = server.scratch_dir().join("root key.hex");
    std::fs::write(&key, format!("{}\n", server.root.secret_hex())).unwrap();
    let url = format!("http://{}", server.addr);
    let balance = |key: &Path| {
        let out = Command::new(BIN)
            .args(["balance", "--server", &url, "--signer", "root", "--key"])
            .arg(key)
            .output()
            .expect("running phb-ledger balance");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "balance failed:\n{stderr}");
        stderr
    };

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = balance(&key);
    eprintln!("0644 key:\n{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains(&key.display().to_string()),
        "warns naming the key file:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("chmod 600 {}", key.display())),
        "says how to fix it:\n{stderr}"
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = balance(&key);
    assert!(
        !stderr.contains("warning"),
        "no warning for a 0600 key:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Defect 12 (last point): no colour codes in a piped log
// ---------------------------------------------------------------------------

/// The harness sends the server's stderr to a file: no terminal escape
/// sequences may appear in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_log_has_no_colour_codes_when_not_on_a_terminal() {
    let w = World::new().await;
    // A refusal and a clean stop, so warnings and info lines are both there.
    let r = w
        .append(
            &w.commissioner.clone(),
            "no-such-budget",
            kinds::allocate("1.00", pb::AllocationBasis::NeedsBased),
        )
        .await;
    assert_ne!(result_code(&r), 0, "refused: {r:?}");
    let status = w.server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let stderr = w.server.stderr();
    assert!(
        stderr.contains("log verified and replayed") && stderr.contains("stopped"),
        "the log has lines to check:\n{stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "terminal escape sequences in a log that is not a terminal:\n{stderr:?}"
    );
}
