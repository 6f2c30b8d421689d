//! How the client commands reach a server: the one place the address is
//! read (`--server`, `PHB_LEDGER_SERVER`, with or without `http://`), the
//! connection made with bounded timeouts, and a refused or unreachable
//! server reported as a person can act on.

use phb_proto::v1::ledger_service_client::LedgerServiceClient;
use std::time::Duration;

/// A connected client.
pub type Client = LedgerServiceClient<tonic::transport::Channel>;

/// The longest a connection attempt waits.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer accepted by default (a page of log entries is at
/// most about 70 MiB; a balance page far less).
pub const MAX_ANSWER_BYTES: usize = 128 * 1024 * 1024;

/// Why the server could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the ledger at {url}: {reason}. Is `phb-ledger serve` running there? (Give the address with --server or PHB_LEDGER_SERVER.)")]
pub struct Unreachable {
    /// The URL tried.
    pub url: String,
    /// The innermost reason (refused, no route, bad address).
    pub reason: String,
}

/// `--server` as a URL: `127.0.0.1:50051` and `localhost:50051` mean
/// `http://…`; a URL with a scheme is kept as given.
pub fn server_url(server: &str) -> String {
    let s = server.trim();
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// The transport error's own text is only "transport error": the reason
/// (refused, no route, bad URL) is in its sources. Their distinct texts,
/// joined.
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let part = s.to_string();
        if parts.last() != Some(&part) && part != "transport error" {
            parts.push(part);
        }
        source = s.source();
    }
    if parts.is_empty() {
        "transport error".into()
    } else {
        parts.join(": ")
    }
}

/// TLS for an `https://` server: the CA to trust (`PHB_LEDGER_TLS_CA`,
/// else the system's roots are not used: a private CA is the norm for a
/// ledger's partners) and, for mutual TLS, the organisation's certificate
/// and key (`PHB_LEDGER_TLS_CERT`, `PHB_LEDGER_TLS_KEY`).
fn client_tls() -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |var: &str| -> Result<Option<Vec<u8>>, String> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(p) => std::fs::read(&p)
                .map(Some)
                .map_err(|e| format!("{var}={}: {e}", std::path::Path::new(&p).display())),
        }
    };
    let mut tls = tonic::transport::ClientTlsConfig::new();
    match read("PHB_LEDGER_TLS_CA")? {
        Some(ca) => tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        None => {
            return Err(
                "an https:// server needs the CA that signed its certificate: set PHB_LEDGER_TLS_CA to its PEM file".into(),
            )
        }
    }
    match (read("PHB_LEDGER_TLS_CERT")?, read("PHB_LEDGER_TLS_KEY")?) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => return Err("PHB_LEDGER_TLS_CERT and PHB_LEDGER_TLS_KEY go together".into()),
    }
    Ok(tls)
}

/// Connects to `server`, each call bounded by `call_timeout` if given and
/// each answer by `max_answer` bytes.
pub async fn connect(
    server: &str,
    call_timeout: Option<Duration>,
    max_answer: usize,
) -> Result<Client, Unreachable> {
    let url = server_url(server);
    let unreachable = |e: &(dyn std::error::Error + 'static)| Unreachable {
        url: url.clone(),
        reason: reason(e),
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| unreachable(&e))?
        .connect_timeout(CONNECT_TIMEOUT);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(client_tls().map_err(|reason| Unreachable {
                url: url.clone(),
                reason,
            })?)
            .map_err(|e| unreachable(&e))?;
    }
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    Ok(Client::new(channel).max_decoding_message_size(max_answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_scheme_are_http() {
        assert_eq!(server_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(server_url(" localhost:9 "), "http://localhost:9");
        assert_eq!(
            server_url("https://ledger.example:443"),
            "https://ledger.example:443"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_says_what_to_check() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = connect(&format!("127.0.0.1:{port}"), None, MAX_ANSWER_BYTES)
            .await
            .expect_err("nothing listens there");
        let text = e.to_string();
        assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
        assert!(
            text.contains("Is `phb-ledger serve` running there?"),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
