//! Rate limits for log lines that can repeat once per request (a read error, a failed upload
//! at close): a busy mount must not bury its log under one line per request.
//!
//! Each call site of [`warn_limited!`] or [`error_limited!`] logs its first [`BURST`] lines of
//! every [`PERIOD`]; the lines it drops are counted and the count is logged with the next line
//! it lets through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may log per period.
pub const BURST: u32 = 10;
/// The period over which [`BURST`] applies.
pub const PERIOD: Duration = Duration::from_secs(60);

/// The state of one call site.
pub struct LogLimit {
    state: Mutex<State>,
}

struct State {
    period_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimit {
    pub const fn new() -> Self {
        LogLimit {
            state: Mutex::new(State {
                period_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(dropped)` if a line may be logged now (`dropped`: lines suppressed since the last
    /// one logged), `None` if it is to be dropped.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.period_start
            .is_none_or(|t| now.duration_since(t) >= PERIOD)
        {
            s.period_start = Some(now);
            s.logged = 0;
        }
        if s.logged >= BURST {
            s.suppressed += 1;
            return None;
        }
        s.logged += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

/// `tracing::$level!` behind a per-call-site [`LogLimit`].
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::lograte::LogLimit = $crate::lograte::LogLimit::new();
        if let Some(dropped) = LIMIT.admit(::std::time::Instant::now()) {
            if dropped > 0 {
                ::tracing::$level!("{dropped} similar lines suppressed (rate limit)");
            }
            ::tracing::$level!($($arg)+);
        }
    }};
}

/// `tracing::warn!`, rate limited per call site (see [`crate::lograte`]).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(warn, $($arg)+) };
}

/// `tracing::error!`, rate limited per call site (see [`crate::lograte`]).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!(error, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_counts_what_it_drops() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit(t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(limit.admit(t0 + Duration::from_secs(1)), None);
        }
        // A new period: the first line carries the count of the dropped ones.
        assert_eq!(limit.admit(t0 + PERIOD), Some(25));
        assert_eq!(limit.admit(t0 + PERIOD), Some(0));
    }
}
