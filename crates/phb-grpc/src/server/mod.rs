//! The transport: how the service is put on a TCP listener, and the limits
//! that keep anonymous peers from exhausting memory, descriptors or CPU
//! (docs/operations.md, "Limits"; docs/reliability.md, threat model).

mod body;
mod clients;
mod conn;
pub mod limits;
mod observe;

use body::{Budget, LimitLayer};
use limits::ServerLimits;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What the accept loop, every connection and every request share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limits: ServerLimits,
    pub(crate) budget: Budget,
    /// Connections are TLS (their bytes cannot be inspected).
    pub(crate) tls: bool,
    /// Per-client rate and concurrency limits.
    pub(crate) clients: Arc<clients::Clients>,
}

/// Transport security for `serve`: the server's certificate chain and key
/// (PEM), and, for mutual TLS, the CA that client certificates must chain
/// to. With `bind_organisation`, a client certificate's subject common name
/// is an organisation id, and the connection may act only as that
/// organisation (docs/operations.md, "Transport security").
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// The server's private key (PEM).
    pub key_pem: Vec<u8>,
    /// Client certificates are required and must chain to this CA (PEM).
    pub client_ca_pem: Option<Vec<u8>>,
    /// A client certificate's subject CN names the only organisation the
    /// connection may sign reads and events as.
    pub bind_organisation: bool,
}

/// The organisation a client certificate binds its connection to (in the
/// request extensions when `bind_organisation` is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOrganisation(pub Option<String>);

/// After the request buffers held at least this much, and then gave most of
/// it back, the allocator is asked to return free memory to the system.
const TRIM_AFTER_PEAK_BYTES: usize = 32 * 1024 * 1024;
/// How often the request buffers are looked at for that.
const TRIM_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The limits are unusable.
    #[error("invalid server limits: {0}")]
    Limits(#[from] limits::LimitsError),
    /// Reflection could not be set up from the descriptor sets.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The HTTP/2 server failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `routes` on `listener` under `limits` until `shutdown` resolves.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    tls: Option<TlsSettings>,
    routes: tonic::service::Routes,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    limits.validate()?;
    let descriptors = limits::descriptor_limit();
    let cap = limits.effective_max_connections(descriptors);
    tracing::info!(
        max_connections = cap,
        descriptor_limit = descriptors,
        max_concurrent_streams = limits.max_concurrent_streams,
        request_buffer_bytes = limits.request_buffer_bytes,
        connection_buffer_bytes = limits.connection_buffer_bytes,
        request_body_timeout = ?limits.request_body_timeout,
        handshake_timeout = ?limits.handshake_timeout,
        idle_timeout = ?limits.idle_timeout,
        "transport limits"
    );
    let (per_second, concurrent) = (
        limits.client_requests_per_second,
        limits.client_concurrent_requests,
    );
    let shared = Arc::new(Shared {
        limits,
        budget: Budget::default(),
        tls: tls.is_some(),
        clients: Arc::new(clients::Clients::new(per_second, concurrent)),
    });
    let l = &shared.limits;
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(l.max_concurrent_streams)
        .http2_keepalive_interval(Some(l.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(l.http2_keepalive_timeout))
        .initial_stream_window_size(limits::FLOW_CONTROL_WINDOW_BYTES)
        .initial_connection_window_size(limits::FLOW_CONTROL_WINDOW_BYTES)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .layer(observe::ObserveLayer)
        .layer(LimitLayer {
            shared: shared.clone(),
            bind_organisation: tls.as_ref().is_some_and(|t| t.bind_organisation),
        });
    let router = match &tls {
        None => router,
        Some(t) => {
            let mut config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    &t.cert_pem,
                    &t.key_pem,
                ))
                .timeout(l.handshake_timeout);
            if let Some(ca) = &t.client_ca_pem {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            router.tls_config(config)?
        }
    }
    .add_routes(routes);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let accept = tokio::spawn(conn::accept_loop(listener, shared.clone(), cap, tx));
    let trim = tokio::spawn(give_back_memory(shared.clone()));
    let served = router
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
        .await;
    trim.abort();
    accept.abort();
    served?;
    Ok(())
}

/// Under glibc's malloc, large request bodies are freed back to its heap,
/// which keeps the memory (RSS stays at the peak after an attack ends).
/// Once the buffers have held a lot and have mostly drained, `malloc_trim`
/// returns the free pages. (The `phb-ledger` binary allocates with
/// jemalloc, whose background thread returns freed pages by itself —
/// `src/allocator.rs`; this then trims only what glibc itself holds.)
async fn give_back_memory(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TRIM_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let budget = &shared.budget;
        let now = budget.total.load(Ordering::Relaxed);
        let peak = budget.peak.load(Ordering::Relaxed);
        if peak >= TRIM_AFTER_PEAK_BYTES && now <= peak / 4 {
            budget.peak.store(now, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(trim_heap).await;
            tracing::debug!(peak, elapsed = ?started.elapsed(), "returned freed request buffers to the system");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free
    // lists under its locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
