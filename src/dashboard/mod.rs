//! `phb-ledger dashboard`: a small local web server for commissioners, PHB
//! teams, finance and counter-fraud staff, reading the ledger through the
//! public gRPC API with one organisation's key (docs/dashboard.md).
//!
//! The key stays in this process: the browser gets HTML, never a
//! signature. Server-rendered pages (they work with JavaScript off), charts
//! as inline SVG, everything embedded in the binary, a strict CSP.
//! `render`, `svg`, `pages` and `auth` are pure; this module does the IO.

mod api;
mod auth;
mod pages;
mod render;
mod svg;

use anyhow::{bail, Context, Result};
use api::{Api, ApiError};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use pages::{Chrome, Page};
use phb_proto::v1 as pb;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// Nothing from elsewhere: our stylesheet and script only, no inline
/// script or style, forms only to ourselves, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `phb-ledger dashboard`.
#[derive(clap::Args)]
pub struct DashboardArgs {
    /// The ledger's gRPC address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "PHB_LEDGER_SERVER"
    )]
    server: String,
    /// The organisation the dashboard reads as (its id; "root" allowed).
    #[arg(long)]
    org: String,
    /// File holding that organisation's secret key (hex). It never leaves
    /// this process.
    #[arg(long)]
    key: PathBuf,
    /// Where to listen. A non-loopback address needs --tls-cert and --tls-key.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Let the page confirm or dismiss flags: it signs `FlagReviewed` with
    /// the organisation's key, after an explicit confirmation step.
    #[arg(long)]
    allow_review: bool,
    /// The server's ledger id (for the events a review signs).
    #[arg(long, default_value = "phb-local", env = "PHB_LEDGER_ID")]
    ledger_id: String,
    /// PEM certificate chain for the dashboard's own HTTPS (required off loopback).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

struct State {
    api: Api,
    auth: auth::Auth,
    allow_review: bool,
    /// The Host header values we answer (the address we listen on; and
    /// `localhost:PORT` on loopback).
    /// `None` off loopback: there the page is reached by whatever name its
    /// certificate carries, and TLS's name check is what stops a rebound
    /// name (the certificate cannot match it).
    hosts: Option<Vec<String>>,
    secure: bool,
}

/// The Host header values a dashboard listening on `addr` answers: on
/// loopback its address and `localhost:PORT`; off loopback (always HTTPS)
/// any.
fn own_hosts(addr: SocketAddr) -> Option<Vec<String>> {
    addr.ip()
        .is_loopback()
        .then(|| vec![addr.to_string(), format!("localhost:{}", addr.port())])
}

/// The only origin a POST may come from: this page's own, as the browser
/// reached it.
fn own_origin(host: &str, secure: bool) -> String {
    format!("{}://{host}", if secure { "https" } else { "http" })
}

/// Runs the dashboard until interrupted.
pub async fn run(args: DashboardArgs) -> Result<()> {
    let signer = crate::load_signer(&args.org, &args.key)?;
    let addr: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {}: give an IP address and port, such as 127.0.0.1:8080",
            args.listen
        )
    })?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::config(c, k)?),
        _ => None,
    };
    if !addr.ip().is_loopback() && tls.is_none() {
        bail!(
            "--listen {addr} is not a loopback address: the dashboard carries the organisation's view of the ledger and its session cookie, so off this machine it must be served over HTTPS; give --tls-cert and --tls-key, or listen on 127.0.0.1"
        );
    }
    let client = crate::connect::connect(
        &args.server,
        Some(Duration::from_secs(30)),
        crate::connect::MAX_ANSWER_BYTES,
    )
    .await?;
    let api = Api {
        client,
        signer: Arc::new(signer),
        ledger_id: args.ledger_id,
    };
    // Read once as the organisation before offering the page: a wrong key
    // or organisation is an error here, not on every page.
    api.flags(pb::ListFlagsRequest::default())
        .await
        .map(|_| ())
        .or_else(|e| {
            if e.code == "PERMISSION_DENIED" {
                // Not everyone may list flags (a third party); the pages say so.
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "reading the ledger as {}: {}: {}",
                api.org(),
                e.code,
                e.message
            )
        })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    let secure = tls.is_some();
    let hosts = own_hosts(local);
    let state = Arc::new(State {
        api,
        auth: auth::Auth::new(auth::random_token()),
        allow_review: args.allow_review,
        hosts,
        secure,
    });
    // Scripts and tests read this line; the token is the only way in.
    println!(
        "dashboard for {} on {}://{local}/login?token={}",
        state.api.org(),
        if secure { "https" } else { "http" },
        state.auth.access_token()
    );
    let app = {
        let state = state.clone();
        axum::Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { handle(state, req).await }
        })
    };
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving the dashboard")?,
        Some(cfg) => tls::serve(listener, cfg, app, shutdown).await?,
    }
    Ok(())
}

mod tls {
    //! The dashboard's own HTTPS, for a non-loopback address.
    use anyhow::{Context, Result};
    use std::path::Path;
    use std::sync::Arc;
    use tokio_rustls::rustls;

    pub fn config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading --tls-cert {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading --tls-cert {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading --tls-key {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("--tls-cert and --tls-key do not make a certificate and its key")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Accepts TLS connections and serves `app` over HTTP/1.1 on each.
    pub async fn serve(
        listener: tokio::net::TcpListener,
        cfg: Arc<rustls::ServerConfig>,
        app: axum::Router,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        tokio::pin!(shutdown);
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a dashboard connection");
                        continue;
                    }
                },
                _ = &mut shutdown => return Ok(()),
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        async move {
                            use tower_service::Service;
                            let mut app = app;
                            app.call(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// A response with the security headers every answer carries.
fn respond(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not no-referrer: with it Chromium sends `Origin: null` on our own
    // form posts, and the origin check could not tell them from a forgery.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", body)
}

/// A bare page for a refused request (no navigation: nothing to see).
fn refusal(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    html(
        status,
        format!(
            "<!doctype html>\n<html lang=\"en-GB\"><head><meta charset=\"utf-8\"><title>{t}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body><main id=\"main\" class=\"width\"><h1>{t}</h1><p>{x}</p></main></body></html>\n",
            t = render::esc(title),
            x = render::esc(text)
        ),
    )
}

fn header_str(req: &Request<Body>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(state: Arc<State>, req: Request<Body>) -> Response<Body> {
    // A page of another site that resolves its own name to 127.0.0.1 (DNS
    // rebinding) sends its own Host: refuse it before anything else.
    let host = header_str(&req, header::HOST).unwrap_or("").to_string();
    if let Some(hosts) = &state.hosts {
        if !hosts.contains(&host) {
            return refusal(
                StatusCode::MISDIRECTED_REQUEST,
                "Wrong address",
                "This dashboard answers only at the address it printed when it started.",
            );
        }
    }
    let path = req.uri().path().to_string();
    let query = render::parse_query(req.uri().query().unwrap_or(""));
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/assets/style.css") => {
            return respond(StatusCode::OK, "text/css; charset=utf-8", STYLE)
        }
        (&Method::GET, "/assets/app.js") => {
            return respond(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
        }
        (&Method::GET, "/login") => {
            return match state.auth.login(&q("token").unwrap_or_default()) {
                Some((session, _)) => {
                    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", "");
                    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&session, state.secure)) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    r.headers_mut()
                        .insert(header::LOCATION, HeaderValue::from_static("/"));
                    r
                }
                None => refusal(
                    StatusCode::UNAUTHORIZED,
                    "Wrong or missing access token",
                    "Open the address phb-ledger dashboard printed when it started: it carries this start's access token.",
                ),
            };
        }
        _ => {}
    }
    let Some(csrf) = state.auth.session(header_str(&req, header::COOKIE)) else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "Sign in with the printed address",
            "This page needs a session: open the address phb-ledger dashboard printed when it started (it carries a per-start access token).",
        );
    };
    let chrome_for = |active: &'static str| Chrome {
        org: state.api.org(),
        active,
        allow_review: state.allow_review,
    };
    let result: Result<(Chrome, Page), (Chrome, String, ApiError)> = match (&method, path.as_str()) {
        (&Method::GET, "/") => overview(&state, q("commissioner"))
            .await
            .map(|p| (chrome_for("/"), p))
            .map_err(|e| (chrome_for("/"), "Reading the overview failed".into(), e)),
        (&Method::GET, "/budgets") => budgets(&state, q("management"))
            .await
            .map(|p| (chrome_for("/budgets"), p))
            .map_err(|e| (chrome_for("/budgets"), "Reading the budgets failed".into(), e)),
        (&Method::GET, "/flags") => flags(&state, q("status"), q("code"))
            .await
            .map(|p| (chrome_for("/flags"), p))
            .map_err(|e| (chrome_for("/flags"), "Reading the flags failed".into(), e)),
        (&Method::GET, "/holdings") => holdings(&state, q("org"))
            .await
            .map(|p| (chrome_for("/holdings"), p))
            .map_err(|e| (chrome_for("/holdings"), "Reading the holdings failed".into(), e)),
        (&Method::GET, "/return") => quarterly(&state, q("commissioner"), q("quarter"))
            .await
            .map(|p| (chrome_for("/return"), p))
            .map_err(|e| (chrome_for("/return"), "Reading the quarterly return failed".into(), e)),
        (&Method::GET, "/events") => return live(state.clone()),
        (&Method::GET, "/flags/review") | (&Method::POST, "/flags/review") if !state.allow_review => {
            return refusal(
                StatusCode::FORBIDDEN,
                "Reviewing is off",
                "Start the dashboard with --allow-review to confirm or dismiss flags from the page.",
            )
        }
        (&Method::GET, "/flags/review") => {
            let flag_id = q("flag_id").unwrap_or_default();
            let budget_id = q("budget_id").unwrap_or_default();
            find_flag(&state, &flag_id, &budget_id)
                .await
                .map(|f| (chrome_for("/flags"), pages::review_form(&f, &csrf)))
                .map_err(|e| (chrome_for("/flags"), "Reading the flag failed".into(), e))
        }
        (&Method::POST, "/flags/review") => {
            let origin = header_str(&req, header::ORIGIN).map(str::to_string);
            let site = req
                .headers()
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
                Ok(b) => b,
                Err(_) => {
                    return refusal(StatusCode::PAYLOAD_TOO_LARGE, "Form too large", "At most 64 KiB.")
                }
            };
            let form = auth::form(&body);
            if let Err(why) = auth::check_post(
                origin.as_deref(),
                site.as_deref(),
                &[own_origin(&host, state.secure)],
                form.get("csrf").map(String::as_str),
                &csrf,
            ) {
                return refusal(StatusCode::FORBIDDEN, "Refused", why);
            }
            review_post(&state, &form, &csrf)
                .await
                .map(|p| (chrome_for("/flags"), p))
                .map_err(|e| (chrome_for("/flags"), "Recording the review failed".into(), e))
        }
        (&Method::GET, p) if p.starts_with("/budget/") => {
            let id = percent_encoding::percent_decode_str(&p["/budget/".len()..])
                .decode_utf8_lossy()
                .into_owned();
            budget(&state, &id)
                .await
                .map(|p| (chrome_for("/budgets"), p))
                .map_err(|e| (chrome_for("/budgets"), format!("Reading budget {id} failed"), e))
        }
        (&Method::GET, _) => {
            return refusal(StatusCode::NOT_FOUND, "Page not found", "There is no such page.")
        }
        _ => {
            return refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "Only GET, and POST to forms.",
            )
        }
    };
    match result {
        Ok((chrome, mut page)) => render_page(&state, &chrome, &mut page, &query).await,
        Err((chrome, what, e)) => {
            let status = match e.code {
                "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
                "NOT_FOUND" => StatusCode::NOT_FOUND,
                "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            let body = pages::error_body(&what, e.code, &e.message);
            html(
                status,
                pages::layout(&chrome, "Something went wrong", &body, None),
            )
        }
    }
}

/// Sorts by `?sort=`, answers `?format=csv&table=ID` with that table, or
/// renders the page in its frame.
async fn render_page(
    state: &State,
    chrome: &Chrome<'_>,
    page: &mut Page,
    query: &[(String, String)],
) -> Response<Body> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sorted = get("sort").and_then(render::parse_sort);
    if let Some((t, c, desc)) = sorted {
        if let Some(table) = page.table_mut(t) {
            table.sort(c, desc);
        }
    }
    if get("format") == Some("csv") {
        let id = get("table").unwrap_or("");
        return match page.table_mut(id) {
            Some(t) => {
                let mut r = respond(StatusCode::OK, "text/csv; charset=utf-8", t.csv());
                if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.csv\""))
                {
                    r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                r
            }
            None => refusal(
                StatusCode::NOT_FOUND,
                "No such table",
                "This page has no table of that name.",
            ),
        };
    }
    let keep = render::query_without(query, &["sort", "format", "table"]);
    let mut body = String::new();
    for b in &page.blocks {
        match b {
            pages::Block::Html(h) => body.push_str(h),
            pages::Block::Table(t) => {
                let s = sorted.and_then(|(tid, c, d)| (tid == t.id).then_some((c, d)));
                body.push_str(&t.html(&keep, s));
            }
        }
    }
    let counts = counts(&state.api).await.ok();
    html(
        StatusCode::OK,
        pages::layout(chrome, &page.title, &body, counts),
    )
}

/// Today's date (UTC) as (year, month, "YYYY-MM-DD").
fn today() -> (i64, u8, String) {
    let d =
        phb_domain::event::Date::from_unix_micros(phb_client::unix_now().saturating_mul(1_000_000));
    (i64::from(d.year), d.month, d.to_string())
}

/// The financial year (April to March) a date is in: its first year.
fn fy_start_year(year: i64, month: u8) -> i64 {
    if month >= 4 {
        year
    } else {
        year - 1
    }
}

/// The quarter of the NHS financial year a date is in, as "YYYYQn".
fn quarter_of(year: i64, month: u8) -> String {
    let q = match month {
        4..=6 => 1,
        7..=9 => 2,
        10..=12 => 3,
        _ => 4,
    };
    format!("{}Q{q}", fy_start_year(year, month))
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The commissioners among `balances`, and the one to show: asked for, or
/// the organisation itself, or the first.
fn choose_commissioner(
    org: &str,
    balances: &[pb::Balance],
    asked: Option<String>,
) -> (Vec<String>, Option<String>) {
    let all: Vec<String> = balances
        .iter()
        .map(|b| b.commissioner_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let chosen = asked
        .filter(|a| !a.is_empty())
        .or_else(|| all.iter().find(|c| *c == org).cloned())
        .or_else(|| all.first().cloned());
    (all, chosen)
}

async fn overview(state: &State, commissioner: Option<String>) -> api::Result<Page> {
    let api = &state.api;
    let balances = api.balances("").await?;
    let (all, chosen) = choose_commissioner(api.org(), &balances, commissioner);
    let view = match chosen {
        None => Err((
            "NOT_FOUND".to_string(),
            "no budgets visible to this organisation".to_string(),
        )),
        Some(c) => commissioner_view(api, &c)
            .await
            .map_err(|e| (e.code.to_string(), e.message)),
    };
    Ok(pages::overview(&balances, &all, view))
}

async fn commissioner_view(api: &Api, c: &str) -> api::Result<pages::CommissionerView> {
    let (year, month, date) = today();
    let fy = fy_start_year(year, month);
    let from = format!("{fy}-04-01");
    let year_summary = api.summary(c, &from, &date).await?;
    // One summary per month of the financial year so far.
    let mut months = Vec::new();
    let (mut y, mut m) = (fy, 4u8);
    loop {
        let first = format!("{y:04}-{m:02}-01");
        let last = if (y, m) == (year, month) {
            date.clone()
        } else {
            format!("{y:04}-{m:02}-{:02}", days_in_month(y, m))
        };
        let summary = api.summary(c, &first, &last).await?;
        const NAMES: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        months.push(pages::Month {
            label: format!("{} {}", NAMES[usize::from(m - 1) % 12], y % 100),
            summary,
        });
        if (y, m) == (year, month) || months.len() >= 12 {
            break;
        }
        if m == 12 {
            y += 1;
            m = 1;
        } else {
            m += 1;
        }
    }
    let quarterly = api.quarterly(c, &quarter_of(year, month)).await?;
    Ok(pages::CommissionerView {
        commissioner_id: c.to_string(),
        year: year_summary,
        months,
        quarterly,
    })
}

async fn budgets(state: &State, management: Option<String>) -> api::Result<Page> {
    let mut balances = state.api.balances("").await?;
    if let Some(m) = management.as_deref().filter(|m| !m.is_empty()) {
        balances.retain(|b| pages::management_name(b.management) == m);
    }
    let mut p = Page::new("Budgets");
    let [a, pi, s, h] = pages::totals(&balances);
    p.html(format!(
        "<p>{} budgets{}: allocated <span data-figure=\"allocated\">{}</span>, paid in <span data-figure=\"paid_in\">{}</span>, spent <span data-figure=\"spent\">{}</span>, held <span data-figure=\"held\">{}</span>. Every figure links to the budget's statement.</p>",
        balances.len(),
        management
            .as_deref()
            .map(|m| format!(" managed as {}", render::esc(m)))
            .unwrap_or_default(),
        a,
        pi,
        s,
        h
    ));
    p.table(pages::budgets_table(&balances));
    Ok(p)
}

fn parse_status(s: &str) -> pb::FlagStatus {
    match s {
        "all" => pb::FlagStatus::Unspecified,
        "confirmed" => pb::FlagStatus::Confirmed,
        "dismissed" => pb::FlagStatus::Dismissed,
        _ => pb::FlagStatus::Open,
    }
}

async fn flags(state: &State, status: Option<String>, code: Option<String>) -> api::Result<Page> {
    let showing = status.unwrap_or_else(|| "open".into());
    let code = code
        .as_deref()
        .and_then(|c| pb::FlagCode::from_str_name(&format!("FLAG_CODE_{c}")))
        .unwrap_or(pb::FlagCode::Unspecified);
    let (flags, head) = state
        .api
        .flags(pb::ListFlagsRequest {
            status: parse_status(&showing) as i32,
            code: code as i32,
            ..Default::default()
        })
        .await?;
    Ok(pages::flags_page(
        &flags,
        head,
        &showing,
        state.allow_review,
    ))
}

async fn find_flag(state: &State, flag_id: &str, budget_id: &str) -> api::Result<pb::Flag> {
    let (flags, _) = state
        .api
        .flags(pb::ListFlagsRequest {
            budget_id: budget_id.to_string(),
            ..Default::default()
        })
        .await?;
    flags
        .into_iter()
        .find(|f| f.flag_id == flag_id)
        .ok_or_else(|| ApiError {
            code: "NOT_FOUND",
            message: format!("no flag {flag_id} on budget {budget_id}"),
        })
}

async fn review_post(
    state: &State,
    form: &HashMap<String, String>,
    csrf: &str,
) -> api::Result<Page> {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (flag_id, budget_id, outcome, note) = (
        get("flag_id"),
        get("budget_id"),
        get("outcome"),
        get("note"),
    );
    let flag = find_flag(state, &flag_id, &budget_id).await?;
    let parsed = match outcome.as_str() {
        "DISMISSED" => pb::FlagOutcome::Dismissed,
        "CONFIRMED" => pb::FlagOutcome::Confirmed,
        _ => {
            return Err(ApiError {
                code: "INVALID_ARGUMENT",
                message: "choose an outcome: dismiss or confirm".into(),
            })
        }
    };
    match get("step").as_str() {
        "preview" => {
            // The event id is fixed now, so the confirmation is idempotent.
            let event_id = format!("dashboard-review-{}", &auth::random_token()[..24]);
            Ok(pages::review_confirm(
                &flag,
                state.api.org(),
                &outcome,
                &note,
                &event_id,
                csrf,
            ))
        }
        "sign" => {
            let event_id = get("event_id");
            if !event_id.starts_with("dashboard-review-") {
                return Err(ApiError {
                    code: "INVALID_ARGUMENT",
                    message: "the confirmation form is incomplete; start the review again".into(),
                });
            }
            let r = state
                .api
                .append(
                    &event_id,
                    &flag.budget_id,
                    phb_client::kinds::flag_reviewed(&flag.flag_id, parsed, &note),
                )
                .await?;
            tracing::info!(flag = %flag.flag_id, sequence = r.sequence, "flag reviewed from the dashboard");
            Ok(pages::review_done(&flag.flag_id, &flag.budget_id, &r))
        }
        _ => Err(ApiError {
            code: "INVALID_ARGUMENT",
            message: "unknown step".into(),
        }),
    }
}

async fn budget(state: &State, id: &str) -> api::Result<Page> {
    let api = &state.api;
    let b = api.balance(id).await?;
    let plan = api.care_plan(id).await?;
    let rows = api.statement(id).await?;
    let flags = match api
        .flags(pb::ListFlagsRequest {
            budget_id: id.to_string(),
            ..Default::default()
        })
        .await
    {
        Ok((f, _)) => f,
        // Funds holders may read the budget but not its flags.
        Err(e) if e.code == "PERMISSION_DENIED" => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(pages::budget_page(
        &b,
        plan.as_ref(),
        &rows,
        &flags,
        state.allow_review,
    ))
}

async fn holdings(state: &State, org: Option<String>) -> api::Result<Page> {
    let api = &state.api;
    // Funds holders named on visible budgets, to choose from.
    let holders: Vec<String> = match api.balances("").await {
        Ok(bs) => bs
            .iter()
            .map(|b| b.funds_holder_id.clone())
            .filter(|h| !h.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    };
    let org = org
        .filter(|o| !o.is_empty())
        .or_else(|| holders.iter().find(|h| *h == api.org()).cloned())
        .or_else(|| holders.first().cloned())
        .unwrap_or_else(|| api.org().to_string());
    let h = api.holdings(&org).await?;
    Ok(pages::holdings_page(&h, &holders))
}

async fn quarterly(
    state: &State,
    commissioner: Option<String>,
    quarter: Option<String>,
) -> api::Result<Page> {
    let api = &state.api;
    let balances = api.balances("").await?;
    let (all, chosen) = choose_commissioner(api.org(), &balances, commissioner);
    let c = chosen.unwrap_or_else(|| api.org().to_string());
    let (year, month, _) = today();
    let quarter = quarter
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| quarter_of(year, month));
    let r = api.quarterly(&c, &quarter).await?;
    Ok(pages::return_page(&r, &all))
}

/// The open-flag count and head, as the header shows them.
async fn counts(api: &Api) -> api::Result<(usize, u64)> {
    let (flags, head) = api
        .flags(pb::ListFlagsRequest {
            status: pb::FlagStatus::Open as i32,
            ..Default::default()
        })
        .await?;
    Ok((flags.len(), head))
}

/// Server-sent events: `counts` with `{"open_flags":N,"head":S}` whenever
/// they change. Woken by `ReadLog(follow)` where the organisation may read
/// the log (auditors, root); otherwise the counts are polled.
fn live(state: Arc<State>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(async move {
        let api = &state.api;
        let mut last: Option<(usize, u64)> = None;
        let mut log: Option<tonic::Streaming<pb::ReadLogResponse>> = None;
        let mut tried_follow = false;
        loop {
            match counts(api).await {
                Ok(c) => {
                    if last != Some(c) {
                        last = Some(c);
                        let msg = format!(
                            "event: counts\ndata: {{\"open_flags\":{},\"head\":{}}}\n\n",
                            c.0, c.1
                        );
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    if !tried_follow {
                        tried_follow = true;
                        log = api.follow(c.1 + 1).await.ok();
                    }
                }
                Err(e) => {
                    let msg = format!("event: error\ndata: {{\"code\":\"{}\"}}\n\n", e.code);
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    if e.code == "PERMISSION_DENIED" {
                        // This organisation may not list flags (a funds
                        // holder): asking again changes nothing. Keep the
                        // stream open, so the browser does not reconnect.
                        loop {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            if tx.send(": keep-alive\n\n".to_string()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            // Wait for the next committed entry, or poll; a comment line
            // keeps the connection open and finds a closed tab.
            let woke = match log.as_mut() {
                Some(stream) => {
                    match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
                        Ok(Ok(Some(_))) => true,
                        Ok(_) => {
                            log = None;
                            false
                        }
                        Err(_) => false,
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    false
                }
            };
            if !woke && tx.send(": keep-alive\n\n".to_string()).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|s| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(s)));
    let mut r = respond(
        StatusCode::OK,
        "text/event-stream",
        Body::from_stream(stream),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

use tokio_stream::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarters_and_financial_years() {
        assert_eq!(quarter_of(2026, 12), "2026Q3");
        assert_eq!(quarter_of(2027, 1), "2026Q4");
        assert_eq!(quarter_of(2026, 4), "2026Q1");
        assert_eq!(fy_start_year(2027, 3), 2026);
        assert_eq!(days_in_month(2028, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
    }

    #[test]
    fn loopback_answers_localhost_too_and_origins_follow_the_scheme() {
        let hosts = own_hosts("127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            hosts,
            Some(vec!["127.0.0.1:8080".into(), "localhost:8080".into()])
        );
        assert_eq!(own_hosts("0.0.0.0:443".parse().unwrap()), None);
        assert_eq!(own_origin("127.0.0.1:8080", false), "http://127.0.0.1:8080");
        assert_eq!(
            own_origin("dash.icb.example", true),
            "https://dash.icb.example"
        );
    }
}
