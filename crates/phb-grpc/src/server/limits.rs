//! What one server lets its clients hold: connections, streams, buffered
//! request bytes and time. Every client of the listening port is
//! unauthenticated until its request has been decoded and checked, so each of
//! these is what an anonymous peer can make the process spend.

use crate::MAX_REQUEST_BYTES;
use std::time::Duration;

/// Default cap on open client connections (lowered further to fit the
/// descriptor limit, see [`ServerLimits::effective_max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Descriptors kept out of the connection cap for everything else the
/// process opens: the log, sled's files, the listener, epoll, standard
/// streams. At least this many, or an eighth of the limit if that is more.
pub const DESCRIPTOR_RESERVE: u64 = 64;
/// Default HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Default budget for request-body bytes buffered across all connections.
pub const DEFAULT_REQUEST_BUFFER_BYTES: usize = 256 * 1024 * 1024;
/// Default budget for request-body bytes buffered on one connection: two
/// requests of the largest size in flight at once.
pub const DEFAULT_CONNECTION_BUFFER_BYTES: usize = 2 * MAX_REQUEST_BYTES;
/// Bytes of each request body that count only against the whole budget.
/// What a body holds beyond this, all bodies together may hold for at most
/// three quarters of the budget: stalled big uploads cannot take the last
/// quarter, which keeps room for ordinary calls (a few KiB each).
pub const SMALL_REQUEST_BYTES: usize = 64 * 1024;
/// Default time a request has to deliver its whole body (for a stream of
/// requests: each message, counted from the previous one).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a new connection has to complete the HTTP/2 handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may stay open with no request in progress.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default interval between HTTP/2 PINGs the server sends to find dead peers.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// Default time a peer has to answer a keepalive PING before it is dropped.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default idle time before the kernel starts TCP keepalive probes.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Calls one client may start a second by default: no limit. Keyed by IP
/// address, a limit would throttle every partner behind one gateway
/// together; set one with mutual TLS, where a client is an organisation
/// (docs/configuration.md).
pub const DEFAULT_CLIENT_REQUESTS_PER_SECOND: u64 = 0;
/// Calls one client may have in progress at once, by default: no limit
/// (the connection and stream caps still bound every peer).
pub const DEFAULT_CLIENT_CONCURRENT_REQUESTS: usize = 0;
/// Largest header block (metadata) accepted per request.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 flow-control window per stream and per connection: what a peer
/// may send before the server has read it.
pub const FLOW_CONTROL_WINDOW_BYTES: u32 = 1024 * 1024;

/// The transport limits of one server. `Default` gives the production
/// values; docs/operations.md lists them with the command-line flags that
/// change them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Most client connections open at once. While at the cap the server
    /// stops accepting, leaving new connections in the kernel's listen
    /// backlog. Lowered at start to fit under `RLIMIT_NOFILE`.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Request-body bytes buffered, not yet decoded, across all connections.
    pub request_buffer_bytes: usize,
    /// Request-body bytes buffered on one connection.
    pub connection_buffer_bytes: usize,
    /// Time a request has to deliver its body.
    pub request_body_timeout: Duration,
    /// Time a new connection has to complete the HTTP/2 handshake.
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Interval between the server's HTTP/2 keepalive PINGs.
    pub http2_keepalive_interval: Duration,
    /// Time a peer has to acknowledge a keepalive PING.
    pub http2_keepalive_timeout: Duration,
    /// Idle time before TCP keepalive probes start.
    pub tcp_keepalive: Duration,
    /// Calls one client may start a second (burst twice that); 0: no limit.
    /// A client is its TLS certificate's organisation, else its IP address.
    pub client_requests_per_second: u64,
    /// Calls one client may have in progress; 0: no limit.
    pub client_concurrent_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            request_buffer_bytes: DEFAULT_REQUEST_BUFFER_BYTES,
            connection_buffer_bytes: DEFAULT_CONNECTION_BUFFER_BYTES,
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            http2_keepalive_interval: DEFAULT_HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
            tcp_keepalive: DEFAULT_TCP_KEEPALIVE,
            client_requests_per_second: DEFAULT_CLIENT_REQUESTS_PER_SECOND,
            client_concurrent_requests: DEFAULT_CLIENT_CONCURRENT_REQUESTS,
        }
    }
}

/// Limits that would stop the server doing its job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    /// A limit is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A buffer budget cannot hold one request of the largest size.
    #[error(
        "{name} is {bytes} bytes; it must hold at least one request of the largest size \
         ({needed} bytes)"
    )]
    TooSmall {
        /// The limit's name.
        name: &'static str,
        /// Its value.
        bytes: usize,
        /// The least it may be.
        needed: usize,
    },
}

/// The buffered bytes one largest request needs: its message and the gRPC
/// frame header in front of it.
const LARGEST_BODY: usize = MAX_REQUEST_BYTES + 5;

impl ServerLimits {
    /// Checks that every limit leaves the service usable.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let zero = [
            ("max_connections", self.max_connections == 0),
            ("max_concurrent_streams", self.max_concurrent_streams == 0),
            ("request_body_timeout", self.request_body_timeout.is_zero()),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("idle_timeout", self.idle_timeout.is_zero()),
            (
                "http2_keepalive_interval",
                self.http2_keepalive_interval.is_zero(),
            ),
            (
                "http2_keepalive_timeout",
                self.http2_keepalive_timeout.is_zero(),
            ),
            ("tcp_keepalive", self.tcp_keepalive.is_zero()),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(LimitsError::Zero(name));
        }
        if self.connection_buffer_bytes < LARGEST_BODY {
            return Err(LimitsError::TooSmall {
                name: "connection_buffer_bytes",
                bytes: self.connection_buffer_bytes,
                needed: LARGEST_BODY,
            });
        }
        // Bytes past the first SMALL_REQUEST_BYTES of a body get three
        // quarters of the budget.
        let needed = (LARGEST_BODY - SMALL_REQUEST_BYTES).div_ceil(3) * 4;
        if self.request_buffer_bytes < needed {
            return Err(LimitsError::TooSmall {
                name: "request_buffer_bytes",
                bytes: self.request_buffer_bytes,
                needed,
            });
        }
        Ok(())
    }

    /// The connection cap actually used: `max_connections`, lowered so that
    /// connections can never take the descriptors the process needs for
    /// its own files (`descriptor_limit` is the soft `RLIMIT_NOFILE`).
    /// Running out of descriptors would fail log and index writes, and
    /// accept would fail with EMFILE, so the cap is what must bind first.
    pub fn effective_max_connections(&self, descriptor_limit: Option<u64>) -> usize {
        let Some(limit) = descriptor_limit else {
            return self.max_connections;
        };
        let reserve = DESCRIPTOR_RESERVE.max(limit / 8);
        let fit = if limit > reserve + 16 {
            limit - reserve
        } else {
            // Too few descriptors to keep a proper reserve: keep a quarter
            // for connections and hope the rest suffices.
            (limit / 4).max(1)
        };
        self.max_connections
            .min(usize::try_from(fit).unwrap_or(usize::MAX))
    }

    /// The part of `request_buffer_bytes` that bytes beyond
    /// [`SMALL_REQUEST_BYTES`] of each body may hold together.
    pub(crate) fn large_request_buffer_bytes(&self) -> usize {
        self.request_buffer_bytes / 4 * 3
    }
}

/// The soft `RLIMIT_NOFILE` of this process, if it has a finite one.
pub fn descriptor_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives on
    // this stack frame for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(rl.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServerLimits::default().validate(), Ok(()));
    }

    #[test]
    fn budgets_must_hold_one_largest_request() {
        let l = ServerLimits {
            connection_buffer_bytes: MAX_REQUEST_BYTES,
            ..ServerLimits::default()
        };
        assert!(matches!(l.validate(), Err(LimitsError::TooSmall { .. })));
        let l = ServerLimits {
            request_buffer_bytes: MAX_REQUEST_BYTES + 5,
            ..ServerLimits::default()
        };
        assert!(matches!(l.validate(), Err(LimitsError::TooSmall { .. })));
        let l = ServerLimits {
            idle_timeout: Duration::ZERO,
            ..ServerLimits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::Zero("idle_timeout")));
    }

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_rest() {
        let l = ServerLimits::default();
        assert_eq!(l.effective_max_connections(None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(l.effective_max_connections(Some(128)), 64);
        assert_eq!(l.effective_max_connections(Some(1024)), 1024 - 128);
        assert_eq!(
            l.effective_max_connections(Some(1 << 20)),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(l.effective_max_connections(Some(40)), 10);
    }
}
