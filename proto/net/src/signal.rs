//! Stopping a daemon: both daemons end their serving loops on the same
//! signals, and exit within the same bound.
//!
//! On Ctrl-C or SIGTERM a daemon stops accepting connections, lets requests
//! in flight finish for at most [`crate::https::DRAIN_TIMEOUT`] (10 s) — idle
//! keep-alive connections are closed at once —, stops its background tasks,
//! then persists its state ([`persist`], at most [`PERSIST_TIMEOUT`]).
//! Whatever still hangs, the process exits [`STOP_DEADLINE`] (15 s) after the
//! signal, with status [`DEADLINE_EXIT_CODE`]: a service manager waiting
//! longer than that (systemd's `TimeoutStopSec`, 90 s by default) never has to
//! kill it, and a write it had acknowledged was made durable before the
//! acknowledgement, so the deadline loses none.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;

/// The longest a daemon takes from a stop signal to its exit.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// The longest persisting the state may take once serving has stopped.
pub const PERSIST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long tasks still running at the end get before the runtime drops them.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// The exit status when [`STOP_DEADLINE`] passed before a clean stop.
pub const DEADLINE_EXIT_CODE: i32 = 3;

/// Completes on Ctrl-C or SIGTERM, and from then on holds the process to
/// [`STOP_DEADLINE`]. The handlers are installed by this call, not when the
/// future is first polled: call it before printing the listening line, so
/// that a signal sent as soon as the daemon says it listens stops it cleanly
/// instead of killing it.
pub fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = signal(SignalKind::terminate()).and_then(|term| {
        let int = signal(SignalKind::interrupt())?;
        Ok((term, int))
    });
    async move {
        let (mut term, mut int) = match handlers {
            Ok(handlers) => handlers,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!(deadline = ?STOP_DEADLINE, "stopping");
        arm_exit_deadline(STOP_DEADLINE);
    }
}

/// Exits the process `after` from now unless it has exited by then. A thread,
/// not a task: a runtime stuck in a blocking call would never poll a task.
fn arm_exit_deadline(after: Duration) {
    let armed = std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(deadline = ?after, "still not stopped; exiting now");
            std::process::exit(DEADLINE_EXIT_CODE);
        });
    if let Err(e) = armed {
        tracing::warn!(error = %e, "cannot arm the stop deadline");
    }
}

/// Runs a blocking step that makes state durable (a database flush) off the
/// runtime, waiting at most [`PERSIST_TIMEOUT`] for it.
pub async fn persist<F>(what: &'static str, step: F) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    persist_within(PERSIST_TIMEOUT, what, step).await
}

async fn persist_within<F>(limit: Duration, what: &'static str, step: F) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(step)).await {
        Ok(Ok(done)) => done.with_context(|| format!("persisting {what}")),
        Ok(Err(e)) => Err(anyhow::anyhow!("persisting {what}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "persisting {what}: not done within {limit:?}"
        )),
    }
}

/// Runs a daemon's `serve` on a new runtime; tasks still running once it
/// returns get [`LEFTOVER_GRACE`] (dropping a runtime would wait for blocking
/// tasks without end).
pub fn block_on_daemon(serve: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let result = runtime.block_on(serve);
    runtime.shutdown_timeout(LEFTOVER_GRACE);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_persist_step_that_hangs_is_given_up_on() {
        let hung = persist_within(Duration::from_millis(20), "a test step", || {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        });
        let err = hung.await.unwrap_err();
        assert!(err.to_string().contains("not done within"), "{err}");
    }

    #[tokio::test]
    async fn a_persist_step_reports_its_failure() {
        let err = persist("the state", || anyhow::bail!("disk full"))
            .await
            .unwrap_err();
        assert_eq!(format!("{err:#}"), "persisting the state: disk full");
    }
}
