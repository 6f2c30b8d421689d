//! `phb-ledger dashboard` on a real port, against a real server seeded by
//! `phb-ledger demo`, spoken to with raw HTTP/1.1 over a TcpStream (and TLS
//! for a non-loopback address): the access token, the session cookie, the
//! Host check, CSRF and origin checks on POSTs, the security headers, and
//! the refusal to serve off loopback without TLS. The pages themselves are
//! checked in a real browser by tests/dashboard/run.sh.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `args` in `dir` and waits for a stdout line containing `marker`.
fn start(dir: &Path, args: &[&str], marker: &'static str) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("PHB_LEDGER_SERVER")
        .env_remove("PHB_LEDGER_DATA")
        .env_remove("PHB_LEDGER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning phb-ledger");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(marker) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{args:?} printed no line with {marker:?}"));
    (Proc(child), line)
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// One request on its own connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connecting to the dashboard");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

/// The value of `name="…" value="…"` in a form.
fn form_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in the form: {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// A served, seeded ledger: (server, its address, keys directory, demo.json).
fn seeded(dir: &Path) -> (Proc, String, serde_json::Value) {
    let (server, line) = start(
        dir,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "listening on",
    );
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["demo", "--server", &addr, "--root-key", "phb-data/root.key"])
        .args(["--keys-out", "keys"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys/demo.json")).unwrap())
            .unwrap();
    (server, addr, demo)
}

#[test]
fn token_cookie_host_and_csrf_on_a_real_port() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, server, demo) = seeded(dir);
    let icb = demo["organisations"]["commissioner"].as_str().unwrap();
    let key = format!("keys/{icb}.key");
    let (_dash, line) = start(
        dir,
        &[
            "dashboard",
            "--server",
            &server,
            "--org",
            icb,
            "--key",
            &key,
            "--listen",
            "127.0.0.1:0",
            "--allow-review",
        ],
        "/login?token=",
    );
    let url = line.rsplit(' ').next().unwrap();
    let rest = url.strip_prefix("http://").expect("plain http on loopback");
    let (addr, login) = rest.split_at(rest.find('/').unwrap());
    let token = login.strip_prefix("/login?token=").unwrap();
    assert_eq!(token.len(), 64, "a 256-bit token: {token}");

    // No session: every page is refused, and says how to get one.
    for path in ["/", "/flags", "/budgets", "/holdings", "/return", "/events"] {
        let a = http(addr, "GET", path, &[], "");
        assert_eq!(a.status, 401, "{path}");
        assert!(!a.body.contains(icb), "{path} shows nothing of the ledger");
    }
    let wrong = http(
        addr,
        "GET",
        &format!("/login?token={}", "0".repeat(64)),
        &[],
        "",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    // The token opens a session: an HttpOnly, SameSite=Strict cookie.
    let a = http(addr, "GET", login, &[], "");
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/"));
    let set = a
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain http on loopback: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = vec![("Cookie", cookie.as_str())];
        h.extend_from_slice(extra);
        h
    };

    // With it, pages load, under a strict CSP.
    let page = http(addr, "GET", "/", &with(&[]), "");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(icb));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    // A rebound name (Host: attacker.example) is refused even with the cookie.
    let rebound = http(
        addr,
        "GET",
        "/",
        &with(&[("Host", "attacker.example:80")]),
        "",
    );
    assert_eq!(rebound.status, 421);

    // The review form carries the session's CSRF token.
    let flag = format!(
        "EXTERNAL_MATCH%3A{}%3A",
        demo["budgets"][1].as_str().unwrap()
    );
    let flags = http(addr, "GET", "/flags", &with(&[]), "");
    let start_at = flags.body.find(&flag).expect("the demo's data-match flag");
    let href_end = flags.body[start_at..].find('"').unwrap();
    let review = flags.body[flags.body[..start_at].rfind('"').unwrap() + 1..start_at + href_end]
        .replace("&amp;", "&");
    let form = http(addr, "GET", &review, &with(&[]), "");
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form_value(&form.body, "csrf");
    let flag_id = form_value(&form.body, "flag_id");
    let budget_id = form_value(&form.body, "budget_id");
    let body = |csrf: &str| {
        format!(
            "csrf={csrf}&step=preview&flag_id={}&budget_id={budget_id}&outcome=DISMISSED&note=checked",
            flag_id.replace(':', "%3A")
        )
    };
    let own = format!("http://{addr}");

    // POSTs: no session, a wrong token, another origin, another site: 401/403.
    let no_session = http(addr, "POST", "/flags/review", &[], &body(&csrf));
    assert_eq!(no_session.status, 401);
    let wrong = http(addr, "POST", "/flags/review", &with(&[]), &body("guess"));
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let missing = http(addr, "POST", "/flags/review", &with(&[]), &body(""));
    assert_eq!(missing.status, 403);
    let other_origin = http(
        addr,
        "POST",
        "/flags/review",
        &with(&[("Origin", "http://evil.example")]),
        &body(&csrf),
    );
    assert_eq!(other_origin.status, 403);
    let other_site = http(
        addr,
        "POST",
        "/flags/review",
        &with(&[("Sec-Fetch-Site", "cross-site")]),
        &body(&csrf),
    );
    assert_eq!(other_site.status, 403);

    // Our own origin with the token: the confirmation step, nothing signed yet.
    let own_h: Vec<(&str, &str)> = vec![
        ("Cookie", cookie.as_str()),
        ("Origin", own.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let ok = http(addr, "POST", "/flags/review", &own_h, &body(&csrf));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Confirm the review"), "{}", ok.body);
    assert!(ok.body.contains("name=\"step\" value=\"sign\""));

    // Live counts: server-sent events, the first as soon as the stream opens.
    let mut sse = TcpStream::connect(addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        sse,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"open_flags\":") {
        let n = sse.read(&mut buf).expect("the first counts event");
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("event: counts"), "{text}");
    drop(sse);

    // A refused or failed read is a page naming the gRPC status, not a crash.
    let missing = http(addr, "GET", "/budget/no-such-budget", &with(&[]), "");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(missing.body.contains("NOT_FOUND"), "{}", missing.body);
    let not_holder = http(addr, "GET", "/holdings?org=no-such-org", &with(&[]), "");
    assert!(not_holder.body.contains("<h1>"), "{}", not_holder.body);

    // CSV: a table as text/csv, an attachment.
    let csv = http(
        addr,
        "GET",
        "/return?format=csv&table=return",
        &with(&[]),
        "",
    );
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(csv.body.starts_with(
        "dimension,value,people_year_to_date,people_active_at_quarter_end,spend_year_to_date\r\n"
    ));
}

#[test]
fn off_loopback_needs_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args([
            "dashboard",
            "--server",
            "127.0.0.1:9",
            "--org",
            "icb",
            "--key",
        ])
        .arg(&key)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--tls-cert"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_over_https_with_a_secure_cookie() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (_server, server, demo) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || seeded(&dir)
    })
    .await
    .unwrap();
    // A self-signed certificate for localhost.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("dash.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("dash.key"), cert.key_pair.serialize_pem()).unwrap();
    let icb = demo["organisations"]["commissioner"]
        .as_str()
        .unwrap()
        .to_string();
    let (_dash, line) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let key = format!("keys/{icb}.key");
            start(
                &dir,
                &[
                    "dashboard",
                    "--server",
                    &server,
                    "--org",
                    &icb,
                    "--key",
                    &key,
                    "--listen",
                    "0.0.0.0:0",
                    "--tls-cert",
                    "dash.pem",
                    "--tls-key",
                    "dash.key",
                ],
                "/login?token=",
            )
        }
    })
    .await
    .unwrap();
    let url = line.rsplit(' ').next().unwrap();
    let rest = url.strip_prefix("https://").expect("https off loopback");
    let (addr, login) = rest.split_at(rest.find('/').unwrap());
    let port = addr.rsplit(':').next().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let req =
        format!("GET {login} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let a = parse(&raw);
    assert_eq!(a.status, 303, "{}", a.head);
    let set = a.header("set-cookie").unwrap();
    assert!(set.ends_with("; Secure"), "{set}");

    // Plain HTTP to the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    plain
        .write_all(
            format!("GET {login} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).contains("Set-Cookie"));
}
