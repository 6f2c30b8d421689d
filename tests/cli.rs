//! The README's five-minute tour, walked through the real binary: `serve` on
//! a fresh data directory (generating the root key), then every command of
//! the tour's `sh` block, parsed out of README.md itself and run in order
//! (so the test fails if the README's tour breaks): `demo` (twice, back to
//! back), `balance`, `keygen`, `submit` (single and atomic) and a retry of
//! the same submission, a care plan and `plan`, an excluded purchase refused
//! and retried. Then `statement`, `holdings` and refusals the tour mentions.

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
        .env_remove("PHB_LEDGER_DATA")
        .env_remove("PHB_LEDGER_CONFIG")
        .env_remove("PHB_LISTEN")
        .env_remove("PHB_LEDGER_LISTEN")
        .env_remove("PHB_LEDGER_ID")
        .env_remove("PHB_ROOT_PUBLIC_KEY")
        .env_remove("PHB_LEDGER_ROOT_PUBLIC_KEY")
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

const README: &str = include_str!("../README.md");

/// The commands of the README tour's `sh` block, as argument lists after
/// `cargo run --release --`: a small shell reader for what the tour uses
/// (words, single quotes, backslash-newline, `#` comments).
fn tour_commands() -> Vec<Vec<String>> {
    let from = README
        .find("## A five-minute tour")
        .expect("README has the tour");
    let block = &README[from..];
    let block = &block[block.find("```sh\n").expect("tour has an sh block") + 6..];
    let block = &block[..block.find("```").expect("sh block ends")];
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = block.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '#' if word.is_none() => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        break;
                    }
                }
                words.extend(word.take());
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            '\n' => {
                words.extend(word.take());
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word.take());
    if !words.is_empty() {
        commands.push(words);
    }
    commands
        .into_iter()
        .map(|c| {
            assert_eq!(
                &c[..4],
                &["cargo", "run", "--release", "--"],
                "every tour command runs the binary: {c:?}"
            );
            c[4..].to_vec()
        })
        .collect()
}

/// A tour command pointed at the test server (the README relies on the
/// default `--server`), with the key printed by `keygen` filled in.
fn tour_args(cmd: &[String], url: &str, public: &str) -> Vec<String> {
    let mut args: Vec<String> = cmd
        .iter()
        .map(|a| a.replace("<hex printed above>", public))
        .collect();
    if args[0] != "keygen" {
        args.splice(1..1, ["--server".to_string(), url.to_string()]);
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The demo's care-plan table: (line, category, annual, spent, remaining).
fn demo_plan_rows(out: &str) -> Vec<Vec<String>> {
    let table = &out[out
        .find("\nCare plan ")
        .unwrap_or_else(|| panic!("no care plan in demo output:\n{out}"))..];
    table
        .lines()
        .skip(3)
        .map(|l| l.split_whitespace().take(5).map(str::to_string).collect())
        .collect()
}

#[test]
fn readme_tour() {
    // The first screen: exactly two set-up commands.
    assert!(README.contains("```sh\ncargo run --release -- serve\n```"));
    assert!(README.contains("```sh\ncargo test --workspace\n```"));
    let tour = tour_commands();
    let names: Vec<&str> = tour.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "demo", "balance", "keygen", "submit", "submit", "balance", "submit", "submit", "plan",
            "submit"
        ],
        "the tour's commands, in order: {tour:?}"
    );

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve(dir);
    let url = server.url.as_str();
    assert!(dir.join("phb-data/root.key").exists(), "root key generated");
    let step = |i: usize, public: &str| tour_args(&tour[i], url, public);

    // 1. The demo, twice back to back: each run uses fresh ids.
    for _ in 0..2 {
        let out = ok(dir, &strs(&step(0, "")));
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
                "2936.28",
                "1863.72",
                "1863.72",
                "false"
            ],
            "the Northamptonshire plan by June: everything but the personal assistants' later weeks spent: {dp}"
        );
        assert!(
            out.contains("FAILED_PRECONDITION"),
            "overspend refused:\n{out}"
        );
        assert!(
            out.contains("PERMISSION_DENIED"),
            "wrong role refused:\n{out}"
        );
        // The plan facilitator approved the plan; more than 15 % above the
        // allocation was refused to it.
        assert!(
            out.lines()
                .any(|l| l.contains("refused a 5520.01 plan") && l.contains("PERMISSION_DENIED")),
            "15 % rule:\n{out}"
        );
        assert!(
            out.lines().any(
                |l| l.starts_with("  #") && l.contains("care plan approved by the facilitator")
            ),
            "plan approved:\n{out}"
        );
        // The payroll run: three wage payments and the pension contribution
        // written; hours over an agreement's weekly limit refused.
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("  #") && l.contains("wages "))
                .count(),
            3,
            "payroll run:\n{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("  #") && l.contains("employer pension 10.08")),
            "pension in the payroll run:\n{out}"
        );
        assert!(
            out.lines().any(|l| l.contains("refused 10 hours for pa-8a")
                && l.contains("exceed the agreement's 1 a week")),
            "weekly limit:\n{out}"
        );
        // A provider invoice naming no agreement is refused.
        assert!(
            out.lines()
                .any(|l| l.contains("refused a CMHT invoice naming no agreement")
                    && l.contains("needs a service agreement")),
            "agreement required:\n{out}"
        );
        // The excluded purchase: refused, recorded, and the retry of the
        // same bytes gets the same refusal at the same sequence.
        let alcohol = out
            .lines()
            .position(|l| l.contains("refused a 12.50 alcohol purchase"))
            .unwrap_or_else(|| panic!("no alcohol refusal:\n{out}"));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[alcohol].contains("FAILED_PRECONDITION"),
            "{}",
            lines[alcohol]
        );
        assert!(lines[alcohol].contains("alcohol"), "{}", lines[alcohol]);
        let seq = |l: &str| {
            l.split("refusal_sequence ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no refusal_sequence in {l:?}"))
        };
        let recorded = seq(lines[alcohol + 1]);
        assert!(recorded > 0);
        assert!(
            lines[alcohol + 2].contains("retry of the same bytes: duplicate, FAILED_PRECONDITION")
        );
        assert_eq!(seq(lines[alcohol + 2]), recorded);
        // The card payment at a betting shop: declined (merchant category
        // 7995 is blocked), recorded and final like any decision.
        let card = out
            .lines()
            .position(|l| l.contains("refused a 25.00 card payment at a betting shop"))
            .unwrap_or_else(|| panic!("no card refusal:\n{out}"));
        assert!(lines[card].contains("FAILED_PRECONDITION") && lines[card].contains("7995"));
        assert!(seq(lines[card + 1]) > 0);
        assert!(lines[card + 2].contains("retry of the same bytes: duplicate, FAILED_PRECONDITION"));
        // The service agreement: paid at its rate, not above it.
        assert!(
            out.contains("service agreement: respite at 120.00 a day"),
            "{out}"
        );
        assert!(
            out.contains("3 days of respite under the agreement"),
            "{out}"
        );
        let over = out
            .lines()
            .find(|l| l.contains("refused 400.00 for the same 3 days"))
            .unwrap_or_else(|| panic!("no rate refusal:\n{out}"));
        assert!(over.contains("rate 120.00"), "{over}");
        // GetCarePlan at the end: every line but the personal assistants'
        // fully spent (8 weeks of 52 paid), contingency unused.
        let rows = demo_plan_rows(&out);
        let want = [
            ["cmht", "clinical_service", "808.16", "808.16", "0.00"],
            ["psych", "clinical_service", "202.04", "202.04", "0.00"],
            ["pa", "personal_assistant", "2184.00", "346.08", "1837.92"],
            ["respite", "respite", "500.00", "500.00", "0.00"],
            ["gym", "exercise_wellbeing", "580.00", "580.00", "0.00"],
            ["computer", "it_equipment", "500.00", "500.00", "0.00"],
        ];
        for (row, want) in rows.iter().zip(want) {
            assert_eq!(row, &want, "care plan row:\n{out}");
        }
        assert_eq!(rows[6], ["contingency", "25.80", "0.00"], "{out}");
        assert_eq!(rows[7], ["total", "4800.00"], "{out}");
    }

    // 2. Every balance as root: the two demo runs' three budgets each.
    let all = json_lines(&ok(dir, &strs(&step(1, ""))));
    assert_eq!(all.len(), 6, "{all:?}");

    // 3. keygen, then a registration signed by root.
    let public = ok(dir, &strs(&step(2, "")));
    let public = public.trim().to_string();
    assert_eq!(public.len(), 64, "public key hex: {public:?}");
    // keygen never overwrites a secret.
    assert!(!run(dir, &strs(&step(2, ""))).status.success());
    let r = json_lines(&ok(dir, &strs(&step(3, &public))));
    assert_eq!(r[0]["code"], "OK", "{r:?}");

    // 4. Open and fund a budget atomically.
    let submit = step(4, &public);
    assert!(submit.iter().any(|a| a == "--atomic"), "{submit:?}");
    let first = json_lines(&ok(dir, &strs(&submit)));
    assert_eq!(first.len(), 2);
    for r in &first {
        assert_eq!(r["code"], "OK", "{r}");
        assert_eq!(r["duplicate"], false, "{r}");
    }
    let b1 = json_lines(&ok(dir, &strs(&step(5, &public))));
    assert_eq!(b1[0]["allocated"], "3602.00");
    assert_eq!(b1[0]["available"], "3602.00");
    assert_eq!(b1[0]["management"], "MANAGEMENT_NOTIONAL");

    // 5. The same submission again: duplicates at the same sequences.
    let again = json_lines(&ok(dir, &strs(&submit)));
    for (a, f) in again.iter().zip(&first) {
        assert_eq!(a["duplicate"], true, "{a}");
        assert_eq!(a["sequence"], f["sequence"], "{a}");
        assert_eq!(a["entry_hash"], f["entry_hash"], "{a}");
    }

    // 6. A care plan, a service agreement and a payment under both (one
    // atomic request), and the plan read back.
    for (i, n) in [(6, 1), (7, 2)] {
        let r = json_lines(&ok(dir, &strs(&step(i, &public))));
        assert_eq!(r.len(), n, "{r:?}");
        for r in &r {
            assert_eq!(r["code"], "OK", "{r:?}");
        }
    }
    let plan = json_lines(&ok(dir, &strs(&step(8, &public))));
    let plan = &plan[0];
    assert_eq!(plan["budget_id"], "b1", "{plan}");
    assert_eq!(plan["plan_id"], "b1-plan-2026", "{plan}");
    assert_eq!(plan["approved_by"], "my-icb", "{plan}");
    assert_eq!(plan["total"], "3602.00", "{plan}");
    assert_eq!(plan["contingency_used"], "0.00", "{plan}");
    let lines = plan["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 2, "{plan}");
    assert_eq!(lines[0]["spent"], "0.00", "{plan}");
    assert_eq!(lines[0]["remaining"], "2184.00", "{plan}");
    assert_eq!(lines[1]["category"], "therapy", "{plan}");
    assert_eq!(lines[1]["spent"], "202.04", "{plan}");
    assert_eq!(lines[1]["remaining"], "997.96", "{plan}");

    // 7. Alcohol refused, recorded, final; the same again: the same refusal.
    let wine = run(dir, &strs(&step(9, &public)));
    assert!(!wine.status.success(), "{wine:?}");
    let w = json_lines(&String::from_utf8_lossy(&wine.stdout));
    assert_eq!(w[0]["code"], "FAILED_PRECONDITION", "{w:?}");
    assert!(
        w[0]["message"].as_str().unwrap().contains("alcohol"),
        "{w:?}"
    );
    let refusal = w[0]["refusal_sequence"].as_u64().expect("refusal_sequence");
    assert!(refusal > 0, "{w:?}");
    let wine2 = run(dir, &strs(&step(9, &public)));
    assert!(!wine2.status.success());
    let w2 = json_lines(&String::from_utf8_lossy(&wine2.stdout));
    assert_eq!(w2[0]["duplicate"], true, "{w2:?}");
    assert_eq!(w2[0]["code"], w[0]["code"]);
    assert_eq!(w2[0]["message"], w[0]["message"]);
    assert_eq!(w2[0]["refusal_sequence"], w[0]["refusal_sequence"]);
    assert_eq!(w2[0]["entry_hash"], w[0]["entry_hash"]);

    // A refused submission exits non-zero and says why: spending more than
    // the allocation (and so more than the plan's therapy line and
    // contingency; a purchase, which needs no service agreement).
    let over = run(
        dir,
        &signed(
            "submit",
            url,
            "my-icb",
            "my-org.key",
            &[
                r#"{"event_id":"b1-over","budget_id":"b1","occurred_at":1775001600,"purchase":{"amount":"3602.01","category":"therapy","supplier_ref":"p-1","description":"a year of therapy"}}"#,
            ],
        ),
    );
    assert!(!over.status.success());
    let r = json_lines(&String::from_utf8_lossy(&over.stdout));
    assert_eq!(r[0]["code"], "FAILED_PRECONDITION", "{r:?}");
    assert!(
        r[0]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds care plan"),
        "{r:?}"
    );
    // The statement: the opening, the allocation, the plan, the agreement,
    // the payment, and the two recorded refusals.
    let st = json_lines(&ok(
        dir,
        &signed("statement", url, "my-icb", "my-org.key", &["b1"]),
    ));
    assert_eq!(st.len(), 7, "{st:?}");
    assert_eq!(st[1]["kind"], "allocation");
    assert_eq!(st[1]["amount"], "3602.00");
    assert_eq!(st[3]["kind"], "service_agreement_approved", "{st:?}");
    assert_eq!(st[4]["kind"], "payment", "{st:?}");
    assert_eq!(st[4]["spent"], "202.04", "{st:?}");
    assert_eq!(st[5]["refused"], true, "{st:?}");
    assert_eq!(st[5]["amount"], "-12.50", "{st:?}");
    assert_eq!(st[5]["sequence"].as_u64(), Some(refusal), "{st:?}");
    assert_eq!(st[5]["refusal_code"], 9);
    assert_eq!(st[6]["refused"], true, "{st:?}");
    assert_eq!(st[6]["amount"], "-3602.01");
    assert_eq!(st[6]["allocated"], "3602.00");
    assert_eq!(st[6]["refusal_code"], 9);
    // Output to a reader that has gone (`| head -1`): the command ends
    // quietly with success, no panic.
    {
        use std::io::Read as _;
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .args(signed("statement", url, "my-icb", "my-org.key", &["b1"]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running phb-ledger");
        drop(child.stdout.take());
        let status = child.wait().expect("waiting for phb-ledger");
        let mut stderr = String::new();
        let _ = child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut stderr));
        assert!(status.success(), "{status}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Holdings: a commissioner holds no funds (FAILED_PRECONDITION, exit 1).
    let h = run(
        dir,
        &signed("holdings", url, "root", "phb-data/root.key", &["my-icb"]),
    );
    assert!(!h.status.success());
    assert!(
        String::from_utf8_lossy(&h.stderr).contains("FAILED_PRECONDITION"),
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

/// The mistakes a new user makes (issue 11), each with the message that
/// says what to do: a misspelt key or event kind is named with the nearest
/// valid one instead of being dropped; a server that is not there is named
/// with the question to ask; `--server` without a scheme and the
/// `PHB_LEDGER_SERVER` / `PHB_LEDGER_ID` variables work; result codes print
/// as the docs spell them; `balance` prints the funds holder, payroll
/// provider and period; a refusal never prints a backtrace.
#[test]
fn mistakes_a_new_user_makes_get_messages_that_say_what_to_do() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let server = serve(dir);
    let addr = server.url.trim_start_matches("http://").to_string();
    let key = "phb-data/root.key";
    let submit = |server: &str, event: &str| -> Output {
        Command::new(BIN)
            .current_dir(dir)
            .args([
                "submit", "--server", server, "--signer", "root", "--key", key, event,
            ])
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("running phb-ledger")
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // A misspelt key: refused before anything is sent, naming it.
    let typo = submit(
        &addr,
        r#"{"event_id":"t-1","occured_at":1775001600,"organisation_registered":{"organisation_id":"x","roles":["AUDITOR"],"public_key":"00"}}"#,
    );
    assert!(!typo.status.success());
    let text = stderr(&typo);
    assert!(text.contains(r#"unknown key "occured_at""#), "{text}");
    assert!(text.contains(r#"did you mean "occurred_at"?"#), "{text}");
    // A misspelt key inside the event kind, and a misspelt kind.
    let inner = stderr(&submit(
        &addr,
        r#"{"event_id":"t-2","organisation_registered":{"organisation":"x","roles":["AUDITOR"]}}"#,
    ));
    assert!(
        inner.contains(r#"unknown key "organisation" in "organisation_registered""#),
        "{inner}"
    );
    assert!(
        inner.contains(r#"did you mean "organisation_id"?"#),
        "{inner}"
    );
    let kind = stderr(&submit(
        &addr,
        r#"{"event_id":"t-3","alocation":{"amount":"1.00"}}"#,
    ));
    assert!(kind.contains(r#"unknown key "alocation""#), "{kind}");
    assert!(kind.contains(r#"did you mean "allocation"?"#), "{kind}");
    for text in [&text, &inner, &kind] {
        assert!(!text.to_lowercase().contains("backtrace"), "{text}");
    }

    // No server there: the address, the reason, and the question to ask.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = submit(
        &format!("127.0.0.1:{port}"),
        r#"{"event_id":"t-4","budget_resumed":{}}"#,
    );
    assert!(!gone.status.success());
    let text = stderr(&gone);
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    assert!(
        text.contains("Is `phb-ledger serve` running there?"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.to_lowercase().contains("backtrace"), "{text}");
    assert_eq!(
        text.lines().count(),
        1,
        "one line, not a cause chain: {text}"
    );

    // `--server` without a scheme reaches the server; a reused event id
    // with other content is refused and printed as the docs spell it.
    let public = ok(dir, &["keygen", "--out", "new-org.key"]);
    let public = public.split_whitespace().last().unwrap().to_string();
    let reg = format!(
        r#"{{"event_id":"reg-new","organisation_registered":{{"organisation_id":"new-icb","roles":["COMMISSIONER","ACCOUNT_PROVIDER","PAYROLL_PROVIDER"],"public_key":"{public}"}}}}"#
    );
    let first = submit(&addr, &reg);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = submit(&addr, &reg.replace("\"COMMISSIONER\",", ""));
    assert!(!again.status.success());
    let r = json_lines(&String::from_utf8_lossy(&again.stdout));
    assert_eq!(r[0]["code"], "ALREADY_EXISTS", "{r:?}");
    assert!(!stderr(&again).to_lowercase().contains("backtrace"));

    // PHB_LEDGER_SERVER and PHB_LEDGER_ID stand in for the flags; balance
    // prints who holds the money, who runs payroll, and the period.
    let open = r#"{"event_id":"open-env","budget_id":"env-1","budget_opened":{"holder_ref":"h-env","commissioner_id":"new-icb","period_start":"2026-04-01","period_end":"2027-03-31","management":"DIRECT_PAYMENT","funds_holder_id":"new-icb","payroll_provider_id":"new-icb"}}"#;
    let opened = Command::new(BIN)
        .current_dir(dir)
        .args([
            "submit",
            "--signer",
            "new-icb",
            "--key",
            "new-org.key",
            open,
        ])
        .env("PHB_LEDGER_SERVER", &addr)
        .env("PHB_LEDGER_ID", "phb-local")
        .output()
        .unwrap();
    let r = json_lines(&String::from_utf8_lossy(&opened.stdout));
    assert_eq!(r.len(), 1, "{}", stderr(&opened));
    assert_eq!(r[0]["code"], "OK", "{r:?}");
    let balance = Command::new(BIN)
        .current_dir(dir)
        .args(["balance", "--signer", "root", "--key", key])
        .env("PHB_LEDGER_SERVER", &addr)
        .output()
        .unwrap();
    assert!(balance.status.success(), "{}", stderr(&balance));
    let rows = json_lines(&String::from_utf8_lossy(&balance.stdout));
    let row = rows
        .iter()
        .find(|b| b["budget_id"] == "env-1")
        .expect("the opened budget is listed");
    assert_eq!(row["funds_holder_id"], "new-icb", "{row}");
    assert_eq!(row["payroll_provider_id"], "new-icb", "{row}");
    assert_eq!(row["period_start"], "2026-04-01", "{row}");
    assert_eq!(row["period_end"], "2027-03-31", "{row}");
    drop(server);
}

/// `serve --config FILE` runs with the file's settings, and `config check`
/// names a misspelt key with its line; the example file in deploy/ checks.
#[test]
fn serve_runs_from_a_config_file_and_config_check_names_bad_keys() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let config = dir.join("phb-ledger.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata = \"ledger-data\"\n[ledger]\nid = \"from-file\"\n[limits]\nidle_timeout = \"90s\"\n",
    )
    .unwrap();
    let checked = ok(dir, &["config", "check", config.to_str().unwrap()]);
    assert!(checked.contains(": OK"), "{checked}");
    assert!(
        checked.contains("limits.idle_timeout") && checked.contains("= 90s  (file)"),
        "{checked}"
    );
    assert!(
        checked.contains("limits.handshake_timeout") && checked.contains("(default)"),
        "{checked}"
    );

    // serve from the file: its ledger id, its data directory (relative to
    // the file), its idle timeout.
    let mut child = Command::new(BIN)
        .current_dir("/")
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("PHB_LEDGER_ID")
        .env_remove("PHB_LEDGER_DATA")
        .env_remove("PHB_DATA")
        .env_remove("PHB_LEDGER_LISTEN")
        .env_remove("PHB_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("listening on") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    // The transport limits are logged as the server starts serving.
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for l in BufReader::new(err).lines() {
            let Ok(l) = l else { break };
            seen.push_str(&l);
            seen.push('\n');
            if l.contains("transport limits") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let stderr = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("phb-ledger from-file listening on 127.0.0.1:"),
        "{line}\n{stderr}"
    );
    assert!(dir.join("ledger-data").join("ledger-id").is_file());
    assert!(stderr.contains("idle_timeout=90s"), "{stderr}");

    // A misspelt key: named, with its line, and the valid keys.
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[limits]\nidle_timout = \"3s\"\n",
    )
    .unwrap();
    let bad = run(dir, &["config", "check", config.to_str().unwrap()]);
    assert!(!bad.status.success());
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("line 5") && text.contains("idle_timout"),
        "{text}"
    );
    assert!(text.contains("idle_timeout"), "{text}");
    // serve refuses the same file before touching anything.
    let refused = run(dir, &["serve", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("idle_timout"));

    // The example in deploy/ is a valid file.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/phb-ledger.toml");
    let out = ok(dir, &["config", "check", example]);
    assert!(out.contains(": OK"), "{out}");
}
