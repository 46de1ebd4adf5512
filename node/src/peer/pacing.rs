//! Copies this node serves to its peers give way to its browsers. Their
//! threads already yield the core (`SCHED_IDLE`, see `background.rs`), but not
//! the kernel's work of sending their datagrams, nor the caches they fill: at
//! full speed beside browsers, copies of 1 GiB took the browsers' p99 from
//! 0.6 to 1.3 ms at 0.3 of capacity. So while browsers are being served (a
//! request came in the last [`BROWSERS_GONE_AFTER`]), all copies together
//! send at most [`BESIDE_BROWSERS`]; otherwise as fast as the link and the
//! peer allow.

use std::sync::Arc;
use std::time::Duration;

use cartable_net::https::shed::Pressure;

use super::rate::RateLimit;

/// What copies served to peers send, all together, while browsers are being
/// served: 512 Mbit/s, more than most schools' uplinks, so a repair over the
/// internet is not slowed; on a fast LAN it is, while pupils are reading.
pub const BESIDE_BROWSERS: u64 = 64 << 20;

/// What a paced copy sends at once: about a millisecond's worth of
/// [`BESIDE_BROWSERS`], the timer's granularity.
pub const PACED_SLICE: usize = 64 * 1024;

/// What copies may send at once beside browsers, beyond the pace: a few
/// slices, so that copies starting beside browsers get no second's worth.
const BURST: u64 = 4 * PACED_SLICE as u64;

/// Quiet after which browsers count as gone. Requests in flight at one
/// instant are a poor sign at low load: most instants fall between requests.
pub const BROWSERS_GONE_AFTER: Duration = Duration::from_millis(200);

/// The pace of copies served to peers, set by this node's browsers.
#[derive(Debug)]
pub struct BrowsersFirst {
    browsers: Arc<Pressure>,
    beside_browsers: RateLimit,
}

impl BrowsersFirst {
    /// Copies paced by the requests waiting in `browsers`.
    pub fn new(browsers: Arc<Pressure>) -> Self {
        Self {
            browsers,
            beside_browsers: RateLimit::with_burst(BESIDE_BROWSERS, BURST),
        }
    }

    /// How long a copy waits before sending `bytes` more. Browsers that come
    /// back find at most [`BURST`] saved up, however long copies ran alone.
    pub fn delay(&self, bytes: u64) -> Duration {
        if !self.browsers_served() {
            return Duration::ZERO;
        }
        self.beside_browsers.reserve(bytes)
    }

    /// Whether a browser's request came in the last [`BROWSERS_GONE_AFTER`].
    pub fn browsers_served(&self) -> bool {
        self.browsers.since_last_request() < BROWSERS_GONE_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_wait_only_while_browsers_are_being_served() {
        let browsers = Pressure::new(16);
        let pacing = BrowsersFirst::new(browsers.clone());
        let piece = BESIDE_BROWSERS / 4;
        std::thread::sleep(BROWSERS_GONE_AFTER);
        // Alone, copies send as fast as they can.
        for _ in 0..8 {
            assert_eq!(pacing.delay(piece), Duration::ZERO);
        }
        drop(browsers.enter().expect("room for one request"));
        // Beside browsers, even after their request was answered: the cap,
        // with nothing saved up from sending alone.
        let waited = pacing.delay(piece);
        assert!(waited >= Duration::from_millis(240), "{waited:?}");
        std::thread::sleep(BROWSERS_GONE_AFTER);
        assert_eq!(pacing.delay(piece), Duration::ZERO);
    }
}
