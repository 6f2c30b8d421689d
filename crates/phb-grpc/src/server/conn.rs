//! Our own accept loop and connection type. tonic's `TcpIncoming` retries a
//! failed accept at once, so at the descriptor limit (EMFILE) it spun a core
//! while idle peers held every descriptor; and it has no way to close a
//! connection that never sends a request. Here the loop stops accepting at
//! the connection cap, backs off on accept errors, and every connection
//! carries a timer that closes it if it does not complete the HTTP/2
//! handshake in time or stays without a request for too long.

use super::Shared;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// First wait after a failed accept; doubled on each failure in a row.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest wait between accept attempts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Least time between two "connection cap reached" warnings.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What one connection shares with the request layer (through the request
/// extensions): open requests, when that last changed, buffered bytes.
#[derive(Debug)]
pub(crate) struct ConnState {
    opened: Instant,
    open_requests: AtomicUsize,
    /// Milliseconds after `opened` at which `open_requests` last changed.
    last_change_ms: AtomicU64,
    /// Request-body bytes buffered on this connection.
    pub(crate) buffered: AtomicUsize,
    /// A request has arrived: over TLS, where the HTTP/2 preface cannot be
    /// seen in the bytes, this ends the handshake period.
    served: std::sync::atomic::AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            opened: Instant::now(),
            open_requests: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            buffered: AtomicUsize::new(0),
            served: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    fn last_change(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_change_ms.load(Ordering::Relaxed))
    }
}

/// Counts one request as open on its connection from creation to drop.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    pub(crate) fn new(state: Arc<ConnState>) -> Self {
        state.open_requests.fetch_add(1, Ordering::Relaxed);
        state.served.store(true, Ordering::Relaxed);
        state.touch();
        RequestGuard(state)
    }

    pub(crate) fn conn(&self) -> &ConnState {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Touch first: the connection's timer must not see zero open
        // requests with the previous change time.
        self.0.touch();
        self.0.open_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connect info tonic puts in every request's extensions: the usual
/// TCP addresses plus the connection's shared state.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) tcp: TcpConnectInfo,
    pub(crate) state: Arc<ConnState>,
}

/// Recognises the end of the client's HTTP/2 handshake in the bytes it
/// sends: the 24-byte preface, then a SETTINGS frame (9-byte header and
/// the payload length it declares). Hyper checks the bytes themselves.
#[derive(Debug)]
struct Handshake {
    seen: usize,
    head: [u8; 33],
    needed: Option<usize>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            seen: 0,
            head: [0; 33],
            needed: None,
        }
    }
}

impl Handshake {
    fn done(&self) -> bool {
        matches!(self.needed, Some(n) if self.seen >= n)
    }

    fn saw(&mut self, bytes: &[u8]) {
        if self.done() {
            return;
        }
        if self.seen < self.head.len() {
            let take = bytes.len().min(self.head.len() - self.seen);
            self.head[self.seen..self.seen + take].copy_from_slice(&bytes[..take]);
        }
        self.seen = self.seen.saturating_add(bytes.len());
        if self.needed.is_none() && self.seen >= self.head.len() {
            let len = u32::from_be_bytes([0, self.head[24], self.head[25], self.head[26]]);
            self.needed = Some(self.head.len() + len as usize);
        }
    }
}

/// An accepted TCP connection with its limits.
pub(crate) struct Conn {
    stream: TcpStream,
    info: ConnInfo,
    shared: Arc<Shared>,
    handshake: Handshake,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(stream: TcpStream, shared: Arc<Shared>, slot: OwnedSemaphorePermit) -> Self {
        let tcp = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
        };
        let state = Arc::new(ConnState::new());
        phb_metrics::global().connections.add(1);
        let timer = Box::pin(tokio::time::sleep_until(
            state.opened + shared.limits.handshake_timeout,
        ));
        Conn {
            stream,
            info: ConnInfo { tcp, state },
            shared,
            handshake: Handshake::default(),
            timer,
            _slot: slot,
        }
    }

    /// Polls the connection's timer. `Ready` carries the error that closes
    /// the connection; `Pending` means it may stay (and a wake-up is set
    /// for the next time it must be checked).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limits = &self.shared.limits;
        let state = &self.info.state;
        loop {
            // Over TLS the bytes are encrypted: the handshake (TLS, then
            // HTTP/2) ends with the first request instead.
            let handshaken = if self.shared.tls {
                state.served.load(Ordering::Relaxed)
            } else {
                self.handshake.done()
            };
            let (deadline, why) = if handshaken {
                (
                    state.last_change() + limits.idle_timeout,
                    "was idle (no request in progress) for longer than the idle timeout",
                )
            } else {
                (
                    state.opened + limits.handshake_timeout,
                    "did not complete the HTTP/2 handshake within the handshake timeout",
                )
            };
            let busy = handshaken && state.open_requests.load(Ordering::Relaxed) > 0;
            if !busy && deadline <= Instant::now() {
                tracing::debug!(peer = ?self.info.tcp.remote_addr, "closing a connection that {why}");
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the connection {why}"),
                ));
            }
            // A busy connection is looked at again an idle timeout later;
            // resetting only when the timer has run out keeps this cheap on
            // every read.
            let now = Instant::now();
            if busy {
                if self.timer.deadline() <= now {
                    self.timer.as_mut().reset(now + limits.idle_timeout);
                }
            } else if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.handshake.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Hyper keeps a read pending on every connection it serves, so
            // this is where the timer is checked and re-armed.
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accept errors that belong to one connection (it went away before we
/// took it): the next accept may well succeed, and each one consumed a
/// backlog entry, so retrying at once cannot spin.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// Sets what every accepted socket needs; failures are logged, not fatal.
fn configure(stream: &TcpStream, keepalive: Duration) {
    // Without TCP_NODELAY Nagle's algorithm holds a response's second small
    // write (data after headers, trailers after data) until the client's
    // delayed ACK, about 40 ms per call.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive / 4)
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        phb_metrics::global().connections.add(-1);
    }
}

/// Accepts connections from `listener` into `tx` until the receiver (tonic's
/// serve loop) goes away. At most `cap` connections are open at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cap: usize,
    tx: mpsc::Sender<Result<Conn, Infallible>>,
) {
    let slots = Arc::new(Semaphore::new(cap));
    let mut backoff: Option<Duration> = None;
    let mut failures: u64 = 0;
    let mut cap_warned: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0
            && cap_warned.is_none_or(|t| t.elapsed() >= CAP_WARNING_INTERVAL)
        {
            tracing::warn!(
                max_connections = cap,
                "connection cap reached; new connections wait in the listen backlog until one closes"
            );
            cap_warned = Some(Instant::now());
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        let stream = loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    if failures > 0 {
                        tracing::info!(failures, "accepting connections again");
                    }
                    backoff = None;
                    failures = 0;
                    break stream;
                }
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: nothing changes by
                    // retrying at once. The pending connection stays in
                    // the backlog for a later attempt.
                    let wait =
                        backoff.map_or(ACCEPT_BACKOFF_START, |b| (b * 2).min(ACCEPT_BACKOFF_MAX));
                    if failures == 0 {
                        tracing::warn!(error = %e, "accept failed; retrying with back-off up to {ACCEPT_BACKOFF_MAX:?}");
                    }
                    failures += 1;
                    backoff = Some(wait);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        };
        configure(&stream, shared.limits.tcp_keepalive);
        if tx
            .send(Ok(Conn::new(stream, shared.clone(), slot)))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_ends_after_the_preface_and_first_settings_frame() {
        let mut h = Handshake::default();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend([0, 0, 12, 4, 0, 0, 0, 0, 0]);
        bytes.extend([0u8; 12]);
        for b in &bytes[..bytes.len() - 1] {
            h.saw(std::slice::from_ref(b));
            assert!(!h.done());
        }
        h.saw(&bytes[bytes.len() - 1..]);
        assert!(h.done());
        let mut h = Handshake::default();
        h.saw(&bytes);
        assert!(h.done());
    }
}
