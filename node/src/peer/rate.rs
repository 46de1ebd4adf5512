//! A token bucket capping the bandwidth of background copying, shared by every
//! stream of a fetch. [`RateLimit::take`] blocks (for blocking threads);
//! [`RateLimit::reserve`] says how long to wait instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `bytes_per_sec` on average, with bursts of one second's worth
/// unless told otherwise.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: f64,
    burst: f64,
    /// Tokens available and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A cap of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self::with_burst(bytes_per_sec, bytes_per_sec)
    }

    /// A cap of `bytes_per_sec` (at least 1) whose bursts are at most
    /// `burst` bytes.
    pub fn with_burst(bytes_per_sec: u64, burst: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            burst: burst as f64,
            bucket: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// Takes `bytes` tokens, sleeping until they are there.
    pub fn take(&self, bytes: u64) {
        std::thread::sleep(self.reserve(bytes));
    }

    /// Takes `bytes` tokens and says how long to wait until they are there,
    /// for callers on the async workers, which must not block.
    pub fn reserve(&self, bytes: u64) -> Duration {
        let mut bucket = self.refilled();
        bucket.0 -= bytes as f64;
        if bucket.0 < 0.0 {
            Duration::from_secs_f64(-bucket.0 / self.bytes_per_sec)
        } else {
            Duration::ZERO
        }
    }

    /// Takes `n` tokens if they are all there now; otherwise takes none, and
    /// no debt is left for others to wait out.
    pub fn try_take(&self, n: u64) -> bool {
        let mut bucket = self.refilled();
        let there = bucket.0 >= n as f64;
        if there {
            bucket.0 -= n as f64;
        }
        there
    }

    /// The bucket, with the tokens come since it was last counted.
    fn refilled(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * self.bytes_per_sec;
        bucket.0 = (bucket.0 + refill).min(self.burst);
        bucket.1 = now;
        bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_on_average() {
        let limit = RateLimit::new(1 << 20);
        let start = Instant::now();
        for _ in 0..12 {
            limit.take(256 << 10);
        }
        // 3 MiB at 1 MiB/s with a 1 MiB burst: about 2 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1800), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
}
