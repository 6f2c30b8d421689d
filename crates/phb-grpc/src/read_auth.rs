//! Authentication of read calls: `x-phb-org`, `x-phb-timestamp`,
//! optionally `x-phb-nonce`, and `x-phb-signature` =
//! base64(ed25519("{method path}\n{timestamp}")) or, with a nonce,
//! base64(ed25519("{method path}\n{timestamp}\n{nonce}")).
//!
//! A signature with a nonce is single-use: the server remembers every
//! (organisation, nonce) it accepted for twice the clock window, and
//! refuses it again, so a captured read call cannot be replayed. Without
//! a nonce a signature can be replayed within the ±300 s window; servers
//! that set `auth.require_read_nonce` refuse such calls
//! (docs/api.md, "Authentication metadata").

use base64::Engine as _;
use phb_domain::error::quote;
use phb_engine::Engine;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Status};

/// How far a read call's timestamp may be from the server clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// The most (organisation, nonce) pairs remembered at once; past it,
/// calls with a nonce are refused UNAVAILABLE until old ones expire (the
/// server never forgets one early: that would reopen its replay).
pub const MAX_REMEMBERED_NONCES: usize = 2_000_000;
/// A nonce: 16 to 64 letters, digits, `-` or `_`.
const NONCE_MIN: usize = 16;
const NONCE_MAX: usize = 64;

/// The nonces accepted within the last two clock windows.
#[derive(Default)]
struct Seen {
    set: HashSet<(String, String)>,
    order: VecDeque<(Instant, (String, String))>,
}

/// What read authentication needs: the engine (signers' keys), the nonces
/// seen, and whether a nonce is required.
pub struct ReadAuth {
    pub(crate) engine: Engine,
    seen: Mutex<Seen>,
    require_nonce: bool,
}

impl ReadAuth {
    /// Read authentication over `engine`.
    pub fn new(engine: Engine, require_nonce: bool) -> ReadAuth {
        ReadAuth {
            engine,
            seen: Mutex::default(),
            require_nonce,
        }
    }

    /// Remembers a nonce; false if it was seen within the window.
    fn first_use(&self, org: &str, nonce: &str) -> Result<bool, Status> {
        let keep = Duration::from_secs(2 * MAX_CLOCK_SKEW_SECS as u64);
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, _)) = seen.order.front() {
            if now.duration_since(*at) < keep {
                break;
            }
            if let Some((_, key)) = seen.order.pop_front() {
                seen.set.remove(&key);
            }
        }
        let key = (org.to_string(), nonce.to_string());
        if seen.set.contains(&key) {
            return Ok(false);
        }
        if seen.set.len() >= MAX_REMEMBERED_NONCES {
            return Err(Status::unavailable(
                "too many read calls to remember their nonces; retry in a few seconds",
            ));
        }
        seen.set.insert(key.clone());
        seen.order.push_back((now, key));
        Ok(true)
    }
}

fn header<'a, T>(req: &'a Request<T>, key: &str) -> Result<&'a str, Status> {
    let v = req.metadata().get(key).ok_or_else(|| {
        Status::unauthenticated(format!(
            "missing metadata {key}; read calls carry x-phb-org, x-phb-timestamp and x-phb-signature (docs/api.md)"
        ))
    })?;
    v.to_str()
        .map_err(|_| Status::unauthenticated(format!("metadata {key} is not ASCII")))
}

/// Checks the read metadata for `method`; returns the caller's id.
pub fn authenticate<T>(auth: &ReadAuth, req: &Request<T>, method: &str) -> Result<String, Status> {
    let engine = &auth.engine;
    let org = header(req, "x-phb-org")?;
    if let Some(bound) = req.extensions().get::<crate::CertOrganisation>() {
        if bound.0.as_deref() != Some(org) {
            return Err(Status::permission_denied(format!(
                "this connection's client certificate is for {}, not for x-phb-org {}: read as the organisation the certificate names",
                bound.0.as_deref().map(quote).unwrap_or_else(|| "no organisation".into()),
                quote(org)
            )));
        }
    }
    let nonce = match req.metadata().get("x-phb-nonce") {
        None if auth.require_nonce => {
            return Err(Status::unauthenticated(
                "missing metadata x-phb-nonce: this server requires a fresh random nonce (16 to 64 letters, digits, - or _) in every read call, covered by the signature (docs/api.md)",
            ))
        }
        None => None,
        Some(v) => {
            let n = v.to_str().ok().filter(|n| {
                (NONCE_MIN..=NONCE_MAX).contains(&n.len())
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
            Some(n.ok_or_else(|| {
                Status::unauthenticated(
                    "x-phb-nonce must be 16 to 64 letters, digits, - or _",
                )
            })?)
        }
    };
    let ts_text = header(req, "x-phb-timestamp")?;
    let sig_text = header(req, "x-phb-signature")?;
    // Plain ASCII digits only: `i64::from_str` would also take a sign.
    let ts: i64 = Some(ts_text)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "x-phb-timestamp {} is not unix seconds as plain decimal digits (no sign, spaces or exponent)",
                quote(ts_text)
            ))
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now.abs_diff(ts) > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
        return Err(Status::unauthenticated(format!(
            "x-phb-timestamp {ts} is more than {MAX_CLOCK_SKEW_SECS} s from the server clock ({now}); sign each call with the current time"
        )));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig_text)
        .map_err(|_| Status::unauthenticated("x-phb-signature is not standard base64"))?;
    let key = engine.view().signer_key(org).copied().ok_or_else(|| {
        Status::unauthenticated(format!(
            "x-phb-org {} is not a registered organisation",
            quote(org)
        ))
    })?;
    let message = match nonce {
        Some(n) => format!("{method}\n{ts_text}\n{n}"),
        None => format!("{method}\n{ts_text}"),
    };
    if !phb_domain::chain::verify_signature(&key, message.as_bytes(), &sig) {
        return Err(Status::unauthenticated(format!(
            "x-phb-signature does not verify for {org:?} over {:?}",
            message
        )));
    }
    if let Some(n) = nonce {
        if !auth.first_use(org, n)? {
            return Err(Status::unauthenticated(
                "this read call's nonce was already used: a signed read call is single-use; sign each call with a new nonce",
            ));
        }
    }
    Ok(org.to_string())
}
