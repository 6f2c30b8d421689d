//! The request layer: every request body is counted against its
//! connection's and the server's buffer budgets while it is held, must
//! arrive within the body timeout, and must be whole gRPC frames.
//!
//! tonic's decoder buffers a whole message before decoding it, so HTTP/2
//! flow control does not bound memory: a peer that sends all but the last
//! bytes of many large requests held all of them until it went away.
//! Counting here, where tonic reads the body, bounds what it can buffer.

use super::conn::{ConnInfo, RequestGuard};
use super::limits::SMALL_REQUEST_BYTES;
use super::Shared;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Sleep;
use tonic::Status;

/// Length of a gRPC message frame header: a flag byte and a u32 length.
const GRPC_HEADER: usize = 5;

/// Request-body bytes held across the server, and the part of them beyond
/// the first [`SMALL_REQUEST_BYTES`] of each body.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    pub(crate) total: AtomicUsize,
    large: AtomicUsize,
    /// Highest `total` since memory was last given back to the system.
    pub(crate) peak: AtomicUsize,
}

/// Takes `n` from `counter` unless that would pass `limit`.
fn charge(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    let after = counter.fetch_add(n, Ordering::Relaxed).saturating_add(n);
    if after > limit {
        counter.fetch_sub(n, Ordering::Relaxed);
        return false;
    }
    true
}

fn release(counter: &AtomicUsize, n: usize) {
    if n > 0 {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The tower layer that applies the limits to every request.
#[derive(Clone)]
pub(crate) struct LimitLayer {
    pub(crate) shared: Arc<Shared>,
    /// Put the client certificate's organisation in each request.
    pub(crate) bind_organisation: bool,
}

impl<S> tower_layer::Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            shared: self.shared.clone(),
            bind_organisation: self.bind_organisation,
        }
    }
}

/// See [`LimitLayer`].
#[derive(Clone)]
pub(crate) struct LimitService<S> {
    inner: S,
    shared: Arc<Shared>,
    bind_organisation: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ResBody> tower_service::Service<http::Request<tonic::body::Body>> for LimitService<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<GuardedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // Over TLS tonic wraps our connect info in its own.
        let tls = req
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
            .cloned();
        let conn = req
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .or_else(|| tls.as_ref().map(|t| t.get_ref().clone()));
        let mut bound = None;
        if self.bind_organisation {
            let org = tls
                .as_ref()
                .and_then(|t| t.peer_certs())
                .and_then(|certs| certs.first().and_then(|c| certificate_org(c.as_ref())));
            bound = org.clone();
            req.extensions_mut().insert(super::CertOrganisation(org));
        }
        // The client, as the transport authenticated it: the certificate's
        // organisation, else the peer's IP address.
        let client = bound.map(|o| format!("org:{o}")).or_else(|| {
            conn.as_ref()
                .and_then(|c| c.tcp.remote_addr)
                .map(|a| format!("ip:{}", a.ip()))
        });
        let (slot, refused) = match client.map(|k| self.shared.clients.admit(&k)) {
            Some(Ok(slot)) => (slot, None),
            Some(Err(why)) => (None, Some(Status::resource_exhausted(why))),
            None => (None, None),
        };
        let guard = conn.map(|c| {
            // `Request::remote_addr` looks for tonic's own type.
            req.extensions_mut().insert(c.tcp);
            Arc::new(RequestGuard::new(c.state))
        });
        // Every LedgerService method takes exactly one request message
        // (health and reflection have streaming requests).
        let one_message = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(phb_proto::SERVICE_NAME))
            .is_some_and(|rest| rest.starts_with('/'));
        let shared = self.shared.clone();
        let req_guard = guard.clone();
        let req = req.map(move |body| {
            let mut b = LimitedBody::new(body, shared, req_guard, one_message);
            b.refused = refused;
            tonic::body::Body::new(b)
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _guard: guard,
                _slot: slot,
            }))
        })
    }
}

/// The organisation a client certificate names: its subject's common name,
/// if that is a well-formed organisation id.
fn certificate_org(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    phb_domain::event::check_id("organisation_id", cn, phb_domain::event::MAX_ID_LEN)
        .ok()
        .map(|()| cn.to_string())
}

/// A response body that keeps its request counted as open until the
/// response has been sent (a ReadLog stream is a request in progress).
pub(crate) struct GuardedBody<B> {
    inner: B,
    _guard: Option<Arc<RequestGuard>>,
    /// The call's place in its client's concurrency count.
    _slot: Option<super::clients::Slot>,
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where the body is in the gRPC framing (5-byte header, then the message).
#[derive(Debug, Default)]
struct Framing {
    header: [u8; GRPC_HEADER],
    header_len: usize,
    /// Message bytes still to come in the current frame.
    remaining: usize,
    /// Whole messages seen.
    messages: u64,
}

impl Framing {
    /// Follows `data`; returns how many messages it completed.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.messages;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let take = (GRPC_HEADER - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == GRPC_HEADER {
                let h = self.header;
                self.remaining = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                self.header_len = 0;
                if self.remaining == 0 {
                    self.messages += 1;
                }
            }
        }
        self.messages - before
    }

    /// Why a body that ends here is not whole gRPC frames, if it is not.
    fn incomplete(&self) -> Option<String> {
        if self.header_len > 0 {
            return Some(format!(
                "the request body ended inside a gRPC frame header ({} of {GRPC_HEADER} bytes)",
                self.header_len
            ));
        }
        if self.remaining > 0 {
            let declared = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            return Some(format!(
                "the request body ended inside a gRPC message: its frame header declared {declared} bytes and {} of them did not arrive",
                self.remaining
            ));
        }
        None
    }
}

/// A request body under the limits.
pub(crate) struct LimitedBody {
    inner: tonic::body::Body,
    shared: Arc<Shared>,
    guard: Option<Arc<RequestGuard>>,
    /// Bytes this body has charged to the budgets and not yet released.
    held: usize,
    framing: Framing,
    one_message: bool,
    deadline: Pin<Box<Sleep>>,
    done: bool,
    /// The call is over its client's limits: the body is this error.
    refused: Option<Status>,
}

impl LimitedBody {
    fn new(
        inner: tonic::body::Body,
        shared: Arc<Shared>,
        guard: Option<Arc<RequestGuard>>,
        one_message: bool,
    ) -> Self {
        let deadline = Box::pin(tokio::time::sleep(shared.limits.request_body_timeout));
        LimitedBody {
            inner,
            shared,
            guard,
            held: 0,
            framing: Framing::default(),
            one_message,
            deadline,
            done: false,
            refused: None,
        }
    }

    /// Charges `n` more bytes to the budgets, or says which one is spent.
    fn charge(&mut self, n: usize) -> Result<(), Status> {
        let limits = &self.shared.limits;
        let budget = &self.shared.budget;
        if let Some(g) = &self.guard {
            if !charge(&g.conn().buffered, n, limits.connection_buffer_bytes) {
                return Err(Status::resource_exhausted(format!(
                    "this connection already has {} bytes of unfinished request bodies in flight, \
                     the most one connection may have; finish or cancel those calls, or use \
                     another connection",
                    limits.connection_buffer_bytes
                )));
            }
        }
        let server_full = || {
            Status::resource_exhausted(format!(
                "the server is holding as many unfinished request bodies as it allows ({} bytes); \
                 retry with back-off",
                limits.request_buffer_bytes
            ))
        };
        if !charge(&budget.total, n, limits.request_buffer_bytes) {
            self.uncharge_conn(n);
            return Err(server_full());
        }
        let beyond = |held: usize| held.saturating_sub(SMALL_REQUEST_BYTES);
        let large = beyond(self.held + n) - beyond(self.held);
        if large > 0 && !charge(&budget.large, large, limits.large_request_buffer_bytes()) {
            self.uncharge_conn(n);
            release(&budget.total, n);
            return Err(server_full());
        }
        self.held += n;
        budget
            .peak
            .fetch_max(budget.total.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    fn uncharge_conn(&self, n: usize) {
        if let Some(g) = &self.guard {
            release(&g.conn().buffered, n);
        }
    }

    /// Gives back everything this body holds.
    fn release_all(&mut self) {
        let n = std::mem::take(&mut self.held);
        self.uncharge_conn(n);
        release(&self.shared.budget.total, n);
        release(
            &self.shared.budget.large,
            n.saturating_sub(SMALL_REQUEST_BYTES),
        );
    }

    /// Ends the body with `status` (tonic answers the call with it).
    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.release_all();
        self.done = true;
        Poll::Ready(Some(Err(status)))
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(s) = this.refused.take() {
            this.done = true;
            return Poll::Ready(Some(Err(s)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if let Err(s) = this.charge(data.len()) {
                            return this.fail(s);
                        }
                        if this.framing.feed(&data) > 0 {
                            // Each message restarts the clock, so a
                            // long-lived stream of requests is not cut off.
                            let next = tokio::time::Instant::now()
                                + this.shared.limits.request_body_timeout;
                            this.deadline.as_mut().reset(next);
                        }
                        Frame::data(data)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(why) = this.framing.incomplete() {
                    return this.fail(Status::invalid_argument(format!(
                        "{why}; send the whole length-prefixed message"
                    )));
                }
                if this.one_message && this.framing.messages == 0 {
                    return this.fail(Status::invalid_argument(
                        "the request body holds no message; this call takes exactly one \
                         length-prefixed protobuf message",
                    ));
                }
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let timeout = this.shared.limits.request_body_timeout;
                    return this.fail(Status::deadline_exceeded(format!(
                        "the request body did not arrive within {timeout:?}; the server does not \
                         hold unfinished requests longer, so send each request whole and promptly"
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend(len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn framing_counts_whole_messages_across_chunks() {
        let mut f = Framing::default();
        let mut bytes = frame(10);
        bytes.extend(frame(0));
        bytes.extend(frame(3));
        let mut total = 0;
        for b in &bytes {
            total += f.feed(std::slice::from_ref(b));
        }
        assert_eq!(total, 3);
        assert_eq!(f.incomplete(), None);
    }

    #[test]
    fn framing_names_a_truncated_body() {
        let mut f = Framing::default();
        f.feed(&frame(100)[..15]);
        let why = f.incomplete().unwrap_or_default();
        assert!(why.contains("declared 100 bytes"), "{why}");
        let mut f = Framing::default();
        f.feed(&[0, 0, 0]);
        assert!(f.incomplete().unwrap_or_default().contains("3 of 5"));
    }
}
