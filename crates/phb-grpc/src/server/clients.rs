//! Per-client rate and concurrency limits: one client (an organisation
//! when its connection is bound to one by its TLS certificate, else an IP
//! address) may start at most `client_requests_per_second` calls a second
//! (with a burst of twice that) and have at most
//! `client_concurrent_requests` in progress. A call over either limit is
//! refused `RESOURCE_EXHAUSTED` before its body is read, so one noisy or
//! hostile client cannot take the writer or the workers from the others.
//! The client table is bounded (`MAX_CLIENTS`; idle entries are dropped
//! first); a client is keyed only by what the transport authenticated, never
//! by what a request claims (an `x-phb-org` header is the caller's say-so
//! until its signature is checked, so it cannot be the key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The most clients tracked at once.
pub const MAX_CLIENTS: usize = 100_000;

#[derive(Debug)]
struct Client {
    /// Tokens in thousandths (integer arithmetic, no float).
    milli_tokens: u64,
    refilled: Instant,
    in_flight: usize,
}

/// The table of clients and their buckets.
#[derive(Debug)]
pub(crate) struct Clients {
    per_second: u64,
    concurrent: usize,
    table: Mutex<HashMap<String, Client>>,
}

/// Holds one call's place in its client's concurrency count.
#[derive(Debug)]
pub(crate) struct Slot {
    clients: Arc<Clients>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.clients.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = t.get_mut(&self.key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

impl Clients {
    /// Limits of `per_second` calls a second (0: none) and `concurrent`
    /// calls at once (0: none) per client.
    pub(crate) fn new(per_second: u64, concurrent: usize) -> Clients {
        Clients {
            per_second,
            concurrent,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a call for `key`, or says which limit it is over.
    pub(crate) fn admit(self: &Arc<Self>, key: &str) -> Result<Option<Slot>, String> {
        if self.per_second == 0 && self.concurrent == 0 {
            return Ok(None);
        }
        let now = Instant::now();
        let burst = self.per_second.saturating_mul(2).saturating_mul(1000);
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !t.contains_key(key) && t.len() >= MAX_CLIENTS {
            // Drop clients with nothing in flight (their buckets refill to
            // full anyway); if none can go, refuse rather than grow.
            t.retain(|_, c| c.in_flight > 0);
            if t.len() >= MAX_CLIENTS {
                return Err(format!(
                    "the server is tracking {MAX_CLIENTS} clients with calls in progress; retry with back-off"
                ));
            }
        }
        let c = t.entry(key.to_string()).or_insert(Client {
            milli_tokens: burst,
            refilled: now,
            in_flight: 0,
        });
        if self.per_second > 0 {
            let ms = now.duration_since(c.refilled).as_millis() as u64;
            c.milli_tokens = c
                .milli_tokens
                .saturating_add(ms.saturating_mul(self.per_second))
                .min(burst);
            c.refilled = now;
            if c.milli_tokens < 1000 {
                return Err(format!(
                    "this client ({key}) is over its limit of {} calls a second; retry with back-off",
                    self.per_second
                ));
            }
        }
        if self.concurrent > 0 && c.in_flight >= self.concurrent {
            return Err(format!(
                "this client ({key}) already has {} calls in progress, its limit; wait for some to finish",
                self.concurrent
            ));
        }
        if self.per_second > 0 {
            c.milli_tokens -= 1000;
        }
        c.in_flight += 1;
        Ok(Some(Slot {
            clients: self.clone(),
            key: key.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_burst_and_concurrency_are_per_client() {
        let c = Arc::new(Clients::new(5, 3));
        // A burst of twice the rate, at most three at once.
        let held: Vec<_> = (0..3).map(|_| c.admit("a").unwrap()).collect();
        assert!(c.admit("a").unwrap_err().contains("calls in progress"));
        assert!(c.admit("b").is_ok(), "another client is not affected");
        drop(held);
        for _ in 0..7 {
            c.admit("a").unwrap();
        }
        assert!(c.admit("a").unwrap_err().contains("calls a second"));
        std::thread::sleep(std::time::Duration::from_millis(450));
        assert!(c.admit("a").is_ok(), "two tokens came back in 0.4 s");
        let off = Arc::new(Clients::new(0, 0));
        for _ in 0..10_000 {
            assert!(off.admit("x").unwrap().is_none());
        }
    }
}
