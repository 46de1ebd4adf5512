//! Progress of a long copy for a person: one line redrawn in place on a
//! terminal (bytes, rate, time left), plain lines at each tenth otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cartable_proto::units::human_bytes;

/// Redraws at most this often on a terminal.
const REDRAW: Duration = Duration::from_millis(100);

/// A progress display on standard error.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    terminal: bool,
    /// When the line was last drawn, and the last tenth printed.
    last: Mutex<(Instant, u64)>,
}

impl Progress {
    /// Starts timing now.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            terminal: std::io::stderr().is_terminal(),
            last: Mutex::new((now - REDRAW, 0)),
        }
    }

    /// Reports `done` of `total` bytes.
    pub fn update(&self, done: u64, total: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let tenth = (done * 10).checked_div(total).unwrap_or(10);
        let now = Instant::now();
        let line = if self.terminal && (now - last.0 >= REDRAW || done == total) {
            format!("\r{}\x1b[K", self.describe(done, total))
        } else if !self.terminal && tenth > last.1 {
            format!("{}\n", self.describe(done, total))
        } else {
            return;
        };
        *last = (now, tenth);
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        if self.terminal && done == total {
            let _ = err.write_all(b"\n");
        }
    }

    fn describe(&self, done: u64, total: u64) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0}s", (total - done.min(total)) as f64 / rate)
        } else {
            "?".to_owned()
        };
        format!(
            "{} / {}, {:.1} MiB/s, {eta} left",
            human_bytes(done),
            human_bytes(total),
            rate / f64::from(1 << 20)
        )
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
