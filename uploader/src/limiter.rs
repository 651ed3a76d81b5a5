//! Pacing and measuring uploads: the `--upload-limit` bandwidth cap and the upload rate.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A bandwidth cap shared by the uploader threads: each upload books its bytes on a virtual
/// clock that advances `bytes / rate` seconds and waits until its slot starts; at most one
/// second of idle time is carried over as burst.
pub struct UploadLimiter {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl UploadLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        UploadLimiter {
            bytes_per_sec,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may be sent.
    pub fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 || bytes == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
    }
}

/// Samples of a growing total (bytes uploaded), one a second at most, kept for about
/// [`RateWindow::WINDOW`]: the rate is the growth since the oldest sample.
#[derive(Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub fn sample(&mut self, now: Instant, total: u64) {
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= Duration::from_millis(900))
        {
            self.samples.push_back((now, total));
        }
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Units per second since the oldest sample (0 until it is half a second old).
    pub fn rate(&self, now: Instant, total: u64) -> f64 {
        let Some((t0, v0)) = self.samples.front() else {
            return 0.0;
        };
        let dt = now.saturating_duration_since(*t0).as_secs_f64();
        if dt < 0.5 {
            return 0.0;
        }
        total.saturating_sub(*v0) as f64 / dt
    }
}

#[cfg(test)]
mod tests {
    use super::{RateWindow, UploadLimiter};
    use std::time::{Duration, Instant};

    #[test]
    fn upload_limiter_paces_to_its_rate() {
        // 1 MB/s with a one-second burst: 2.5 MB take about 1.5 s.
        let limiter = UploadLimiter::new(1_000_000);
        let t = Instant::now();
        for _ in 0..5 {
            limiter.acquire(500_000);
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1300), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        // No cap: no wait.
        let free = UploadLimiter::new(0);
        let t = Instant::now();
        free.acquire(u64::MAX);
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn upload_rate_over_the_last_seconds() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RateWindow::default();
        assert_eq!(w.rate(t0, 0), 0.0, "no samples");
        w.sample(at(0), 0);
        assert_eq!(w.rate(at(100), 1000), 0.0, "too little history");
        // 1000 bytes a second for 20 s, sampled each second.
        for s in 1..=20 {
            w.sample(at(s * 1000), s * 1000);
        }
        let r = w.rate(at(20_000), 20_000);
        assert!((r - 1000.0).abs() < 1e-6, "{r}");
        // The window forgets: after 12 idle seconds the rate is 0.
        for s in 21..=32 {
            w.sample(at(s * 1000), 20_000);
        }
        assert_eq!(w.rate(at(32_000), 20_000), 0.0);
        // Samples closer than 0.9 s are not kept.
        let n = w.samples.len();
        w.sample(at(32_500), 20_000);
        assert_eq!(w.samples.len(), n);
    }
}
