//! The command line as the README's five-minute tour uses it: `serve` on a
//! fresh data directory (generating the root key), `demo` (twice, back to
//! back), `balance`, `statement`, `holdings`, `keygen`, `submit` (single
//! and atomic) and a retry of the same submission. If this test passes, the tour's commands work.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");

/// `phb-ledger serve` with its defaults except the port, killed on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Serve {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("PHB_DATA")
        .env_remove("PHB_LISTEN")
        .env_remove("PHB_LEDGER_ID")
        .env_remove("PHB_ROOT_PUBLIC_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning phb-ledger serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.push(line.clone());
            if line.starts_with("phb-ledger phb-local listening on ") {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve printed its listening line");
    // First start: the root key was generated and its path printed.
    assert!(
        lines.iter().any(|l| l.contains("root.key")),
        "first start prints where the root key went: {lines:?}"
    );
    let addr = lines
        .last()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    Serve {
        child,
        url: format!("http://{addr}"),
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running phb-ledger")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "phb-ledger {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `phb-ledger CMD --server URL --signer ID --key FILE REST...`: how every
/// signed client command of the tour is spelled.
fn signed<'a>(
    cmd: &'a str,
    url: &'a str,
    signer: &'a str,
    key: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![cmd, "--server", url, "--signer", signer, "--key", key];
    args.extend_from_slice(rest);
    args
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON {l:?}: {e}")))
        .collect()
}

#[test]
fn readme_tour() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve(dir);
    let url = server.url.as_str();
    assert!(dir.join("phb-data/root.key").exists(), "root key generated");

    // 1. The demo, twice back to back: each run uses fresh ids.
    for _ in 0..2 {
        let out = ok(dir, &["demo", "--server", url]);
        let dp = out
            .lines()
            .find(|l| l.trim_start().starts_with("phb-dp-"))
            .unwrap_or_else(|| panic!("no direct-payment line in demo output:\n{out}"));
        let cols: Vec<&str> = dp.split_whitespace().collect();
        // budget management allocated paid_in spent held available stopped
        assert_eq!(
            &cols[1..],
            &[
                "DIRECT_PAYMENT",
                "4800.00",
                "4800.00",
                "4774.20",
                "25.80",
                "25.80",
                "false"
            ],
            "the Northamptonshire plan leaves £25.80: {dp}"
        );
        assert!(
            out.contains("FailedPrecondition"),
            "overspend refused:\n{out}"
        );
        assert!(
            out.contains("PermissionDenied"),
            "wrong role refused:\n{out}"
        );
    }

    // 2. Every balance as root: the two demo runs' three budgets each.
    let all = json_lines(&ok(
        dir,
        &signed("balance", url, "root", "phb-data/root.key", &[]),
    ));
    assert_eq!(all.len(), 6, "{all:?}");

    // 3. keygen, then a registration signed by root.
    let public = ok(dir, &["keygen", "--out", "my-org.key"]);
    let public = public.trim();
    assert_eq!(public.len(), 64, "public key hex: {public:?}");
    // keygen never overwrites a secret.
    assert!(!run(dir, &["keygen", "--out", "my-org.key"])
        .status
        .success());
    let reg = format!(
        r#"{{"event_id":"reg-my-icb","organisation_registered":{{"organisation_id":"my-icb","roles":["COMMISSIONER"],"public_key":"{public}"}}}}"#
    );
    let r = json_lines(&ok(
        dir,
        &signed("submit", url, "root", "phb-data/root.key", &[&reg]),
    ));
    assert_eq!(r[0]["code"], "Ok", "{r:?}");

    // 4. Open and fund a budget atomically, exactly as the README writes it.
    let batch = r#"[
  {"event_id":"b1-open","budget_id":"b1","occurred_at":1775001600,"budget_opened":{"holder_ref":"holder-0001",
   "commissioner_id":"my-icb","period_start":"2026-04-01","period_end":"2027-03-31","management":"NOTIONAL"}},
  {"event_id":"b1-alloc","budget_id":"b1","occurred_at":1775001600,"allocation":{"amount":"3602.00","basis":"NEEDS_BASED"}}]"#;
    let submit = signed("submit", url, "my-icb", "my-org.key", &["--atomic", batch]);
    let first = json_lines(&ok(dir, &submit));
    assert_eq!(first.len(), 2);
    for r in &first {
        assert_eq!(r["code"], "Ok", "{r}");
        assert_eq!(r["duplicate"], false, "{r}");
    }
    let b1 = json_lines(&ok(
        dir,
        &signed("balance", url, "my-icb", "my-org.key", &["b1"]),
    ));
    assert_eq!(b1[0]["allocated"], "3602.00");
    assert_eq!(b1[0]["available"], "3602.00");
    assert_eq!(b1[0]["management"], "MANAGEMENT_NOTIONAL");

    // 5. The same submission again: duplicates at the same sequences.
    let again = json_lines(&ok(dir, &submit));
    for (a, f) in again.iter().zip(&first) {
        assert_eq!(a["duplicate"], true, "{a}");
        assert_eq!(a["sequence"], f["sequence"], "{a}");
        assert_eq!(a["entry_hash"], f["entry_hash"], "{a}");
    }

    // A refused submission exits non-zero and says why.
    let over = run(
        dir,
        &signed(
            "submit",
            url,
            "my-icb",
            "my-org.key",
            &[
                r#"{"event_id":"b1-pay","budget_id":"b1","payment":{"amount":"3602.01","payee_kind":"PROVIDER","payee_ref":"p-1","category":"therapy"}}"#,
            ],
        ),
    );
    assert!(!over.status.success());
    let r = json_lines(&String::from_utf8_lossy(&over.stdout));
    assert_eq!(r[0]["code"], "FailedPrecondition", "{r:?}");
    // The statement: the opening, the allocation and the recorded refusal.
    let st = json_lines(&ok(
        dir,
        &signed("statement", url, "my-icb", "my-org.key", &["b1"]),
    ));
    assert_eq!(st.len(), 3, "{st:?}");
    assert_eq!(st[1]["kind"], "allocation");
    assert_eq!(st[1]["amount"], "3602.00");
    assert_eq!(st[2]["refused"], true, "{st:?}");
    assert_eq!(st[2]["amount"], "-3602.01");
    assert_eq!(st[2]["allocated"], "3602.00");
    assert_eq!(st[2]["refusal_code"], 9);
    // Holdings: a commissioner holds no funds (FAILED_PRECONDITION, exit 1).
    let h = run(
        dir,
        &signed("holdings", url, "root", "phb-data/root.key", &["my-icb"]),
    );
    assert!(!h.status.success());
    assert!(
        String::from_utf8_lossy(&h.stderr).contains("FailedPrecondition"),
        "{h:?}"
    );
    // A JSON number as an amount never reaches the server.
    let float = run(
        dir,
        &signed(
            "submit",
            url,
            "my-icb",
            "my-org.key",
            &[
                r#"{"event_id":"b1-pay2","budget_id":"b1","payment":{"amount":1.5,"payee_kind":"PROVIDER","payee_ref":"p-1","category":"therapy"}}"#,
            ],
        ),
    );
    assert!(!float.status.success());
    assert!(String::from_utf8_lossy(&float.stderr).contains("JSON string"));
    drop(server);
}
