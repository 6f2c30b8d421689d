//! Authentication of read calls: `x-phb-org`, `x-phb-timestamp` and
//! `x-phb-signature` = base64(ed25519("{method path}\n{timestamp}")).

use base64::Engine as _;
use phb_domain::error::quote;
use phb_engine::Engine;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Status};

/// How far a read call's timestamp may be from the server clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

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
pub fn authenticate<T>(engine: &Engine, req: &Request<T>, method: &str) -> Result<String, Status> {
    let org = header(req, "x-phb-org")?;
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
    let message = format!("{method}\n{ts_text}");
    if !phb_domain::chain::verify_signature(&key, message.as_bytes(), &sig) {
        return Err(Status::unauthenticated(format!(
            "x-phb-signature does not verify for {org:?} over \"{method}\\n{ts_text}\""
        )));
    }
    Ok(org.to_string())
}
