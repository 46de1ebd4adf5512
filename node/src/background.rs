//! The runtime for answering peers' copies, whose threads the kernel runs
//! only when the browsers' threads leave it a core.
//!
//! A node that is the source of repairs spends its CPU on reading, verifying,
//! encrypting and sending groups to peers. That can wait; a pupil's page
//! cannot. So the connections peers open to this node are accepted and served
//! here, on threads under Linux's `SCHED_IDLE` policy: a browser's request
//! that wakes a worker takes the core from a copy at once, where a nicer value
//! would still let the copy finish its time slice (`benches/README.md`,
//! "Repair while serving", measures both). When browsers are quiet the copies
//! take the whole machine; under a surge that fills every core they slow to a
//! crawl (a weight of 3 against 1024), and their fetchers' progress deadlines
//! send them to other holders.
//!
//! Only that: the connections this node opens (the member's heartbeats and
//! its replication agent, fetch-through, the admin socket's fetches) go out
//! of a second endpoint on the daemon's runtime. They hold the store's write
//! lock across syncs and sled's batch lock, which browsers' requests wait on,
//! and a thread that the kernel may leave off the CPU for long must not hold
//! them (no priority inheritance on futexes). What runs here only opens,
//! reads, verifies and sends files: the store's index, its memory of manifests
//! and its damage marks take locks too, and are asked on a thread of the
//! daemon's priority ([`crate::peer::asks`]; [`debug_assert_may_hold`] checks
//! it in debug builds).
//!
//! Under systemd (or any session of its own, with autogroup) the node is its
//! own group: `SCHED_IDLE` yields to the node's browsers' threads, while the
//! node as a whole keeps its fair share against other processes.

use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

/// How long leftover copy tasks get at a stop, after the daemon has returned.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// The copies' runtime; dropped after the daemon's own, outside any task.
pub struct Background {
    runtime: Option<Runtime>,
}

impl Background {
    /// Starts the runtime; its worker and blocking threads each put themselves
    /// under `SCHED_IDLE` as they start.
    pub fn start() -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .thread_name("cartable-copies")
            .enable_all()
            .on_thread_start(idle_this_thread)
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Where to spawn copy work, and what to enter to bind the peers' endpoint.
    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("only taken when dropped")
            .handle()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(LEFTOVER_GRACE);
        }
    }
}

/// Linux keeps a scheduling policy per thread: this changes the calling
/// thread's only. Lowering it needs no privilege; failing (a seccomp filter)
/// leaves the thread as it was, which costs browsers' latency, not
/// correctness, so it is logged, not fatal.
pub(crate) fn idle_this_thread() {
    if let Err(e) = set_idle_policy() {
        tracing::warn!(error = %e, "background thread keeps the daemon's priority");
    }
}

/// Checks, in debug builds, that the calling thread may take `lock`, one that
/// browsers' threads wait on. A `SCHED_IDLE` thread may not: the kernel may
/// leave it off the CPU while it holds the lock for as long as browsers keep
/// the cores busy, and (no priority inheritance on futexes) they would wait
/// that long behind it. The policy is asked of the kernel, not remembered: a
/// thread started by an idle one is idle too, whichever runtime it serves.
/// The process aborts: a panic would end only the task, which a test whose
/// copy goes on from another peer would not see. A process run idle as a whole
/// (`chrt --idle`) has no thread to stall, and is let be.
pub(crate) fn debug_assert_may_hold(lock: &str) {
    if cfg!(debug_assertions)
        && my_policy() == libc::SCHED_IDLE
        && policy_of(std::process::id()) != libc::SCHED_IDLE
    {
        eprintln!("{lock} taken on a SCHED_IDLE thread");
        std::process::abort();
    }
}

/// `sched_setscheduler(0, SCHED_IDLE)`, which neither rustix nor std wraps.
#[allow(unsafe_code)]
fn set_idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is initialised and outlives the call, which only reads
    // it; pid 0 is the calling thread.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The calling thread's policy.
pub(crate) fn my_policy() -> i32 {
    policy_of(0)
}

/// The policy of thread `tid` (0: the calling one; the process's id: its main
/// thread).
#[allow(unsafe_code)]
fn policy_of(tid: u32) -> i32 {
    // SAFETY: takes no pointer.
    unsafe { libc::sched_getscheduler(tid as libc::pid_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_and_blocking_threads_run_under_sched_idle() {
        let daemon = my_policy();
        assert_eq!(daemon, libc::SCHED_OTHER);
        let background = Background::start().unwrap();
        let (worker, blocking) = background.handle().block_on(async {
            let worker = tokio::spawn(async { my_policy() }).await.unwrap();
            let blocking = tokio::task::spawn_blocking(my_policy).await.unwrap();
            (worker, blocking)
        });
        assert_eq!((worker, blocking), (libc::SCHED_IDLE, libc::SCHED_IDLE));
        // The caller's own thread, which only entered the runtime, is untouched.
        assert_eq!(my_policy(), daemon);
    }
}
