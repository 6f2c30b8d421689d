//! Bounded logging of refusals. Anyone can send events that are refused,
//! so the lines they cause must not be theirs to shape or to multiply:
//! client strings are escaped and cut (`phb_domain::error::quote`), and at
//! most `MAX_REFUSAL_LINES_PER_SEC` refusal lines are written a second; the
//! rest are counted and the count is reported with the next line written.

use std::sync::Mutex;
use std::time::Instant;

/// Refusal lines written per second at most.
pub const MAX_REFUSAL_LINES_PER_SEC: u32 = 20;

/// A one-second window counter.
pub struct LogLimiter {
    state: Mutex<Window>,
}

struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            state: Mutex::new(Window {
                started: Instant::now(),
                written: 0,
                suppressed: 0,
            }),
        }
    }
}

impl LogLimiter {
    /// `Some(n)` if a line may be written now, `n` being the lines
    /// suppressed since the last one written; `None` to suppress this one.
    pub fn admit(&self) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.started.elapsed().as_secs() >= 1 {
            w.started = Instant::now();
            w.written = 0;
        }
        if w.written >= MAX_REFUSAL_LINES_PER_SEC {
            w.suppressed += 1;
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_per_window_then_reports_what_it_dropped() {
        let l = LogLimiter::default();
        let allowed = (0..1000).filter(|_| l.admit().is_some()).count();
        assert_eq!(allowed, MAX_REFUSAL_LINES_PER_SEC as usize);
        l.state.lock().unwrap().started -= std::time::Duration::from_secs(1);
        assert_eq!(l.admit(), Some(1000 - MAX_REFUSAL_LINES_PER_SEC as u64));
        assert_eq!(l.admit(), Some(0));
    }
}
