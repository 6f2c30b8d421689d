//! Who may use the dashboard: the access token printed at start is
//! exchanged for a session cookie (HttpOnly, SameSite=Strict); every POST
//! carries the session's CSRF token and must come from our own origin; the
//! Host header must name the address we listen on (so a DNS-rebinding page
//! cannot read it). Pure logic over header values, unit-tested here.

use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "phb_dashboard";
/// Sessions kept at most; the oldest half is dropped beyond it (a browser
/// that loses its session logs in again with the printed URL).
const MAX_SESSIONS: usize = 256;

/// 32 random bytes as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// Equal without revealing where they differ through timing.
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The access token and the sessions it opened (session id → CSRF token).
pub struct Auth {
    access_token: String,
    sessions: Mutex<Vec<(String, String)>>,
}

impl Auth {
    pub fn new(access_token: String) -> Auth {
        Auth {
            access_token,
            sessions: Mutex::new(Vec::new()),
        }
    }

    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// A new session if `token` is the access token: (session id, CSRF).
    pub fn login(&self, token: &str) -> Option<(String, String)> {
        if !ct_eq(token, &self.access_token) {
            return None;
        }
        let session = (random_token(), random_token());
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= MAX_SESSIONS {
            s.drain(..MAX_SESSIONS / 2);
        }
        s.push(session.clone());
        Some(session)
    }

    /// The CSRF token of the session named by the `Cookie` header, if any.
    pub fn session(&self, cookie_header: Option<&str>) -> Option<String> {
        let id = cookie_value(cookie_header?, COOKIE)?;
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .find(|(sid, _)| ct_eq(sid, id))
            .map(|(_, csrf)| csrf.clone())
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value for a new session. `Secure` when served over TLS.
pub fn set_cookie(session: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Why a POST is refused, if it is: it must come from our own origin (the
/// browser's `Origin` and `Sec-Fetch-Site` say where a request comes from)
/// and carry the session's CSRF token.
pub fn check_post(
    origin: Option<&str>,
    fetch_site: Option<&str>,
    own_origins: &[String],
    form_csrf: Option<&str>,
    session_csrf: &str,
) -> Result<(), &'static str> {
    if let Some(site) = fetch_site {
        if site != "same-origin" && site != "none" {
            return Err("the request came from another site");
        }
    }
    if let Some(o) = origin {
        if !own_origins.iter().any(|own| own == o) {
            return Err("the request came from another origin");
        }
    }
    match form_csrf {
        Some(t) if ct_eq(t, session_csrf) => Ok(()),
        _ => Err("the form's CSRF token is missing or wrong (reload the page and try again)"),
    }
}

/// A parsed `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    super::render::parse_query(&String::from_utf8_lossy(body))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_access_token_opens_a_session() {
        let a = Auth::new("t0ken".into());
        assert!(a.login("t0keN").is_none());
        assert!(a.login("").is_none());
        let (sid, csrf) = a.login("t0ken").expect("the right token");
        assert_eq!(sid.len(), 64);
        assert_ne!(sid, csrf);
        let header = format!("other=1; {COOKIE}={sid}; x=y");
        assert_eq!(a.session(Some(&header)), Some(csrf));
        assert_eq!(a.session(Some(&format!("{COOKIE}=forged"))), None);
        assert_eq!(a.session(None), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let c = set_cookie("abc", false);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(!c.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
    }

    #[test]
    fn posts_need_our_origin_and_the_session_csrf_token() {
        let own = vec!["http://127.0.0.1:8080".to_string()];
        let ok = check_post(
            Some("http://127.0.0.1:8080"),
            Some("same-origin"),
            &own,
            Some("c"),
            "c",
        );
        assert_eq!(ok, Ok(()));
        // A form on another site posting here.
        assert!(check_post(Some("http://evil.example"), None, &own, Some("c"), "c").is_err());
        assert!(check_post(None, Some("cross-site"), &own, Some("c"), "c").is_err());
        assert!(check_post(None, Some("same-site"), &own, Some("c"), "c").is_err());
        // Our origin, but no or a wrong token.
        assert!(check_post(None, None, &own, None, "c").is_err());
        assert!(check_post(None, None, &own, Some("d"), "c").is_err());
    }

    #[test]
    fn forms_decode() {
        let f = form(b"note=hours+do+not%20overlap&csrf=abc");
        assert_eq!(
            f.get("note").map(String::as_str),
            Some("hours do not overlap")
        );
        assert_eq!(f.get("csrf").map(String::as_str), Some("abc"));
    }
}
