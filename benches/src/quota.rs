//! Holding a process to a fraction of one core with a cgroup CPU quota, so that
//! one generator core can offer several times what the process can serve: a
//! request costs an HTTPS client about what it costs the server.
//!
//! The quota is counted over short periods: 1 ms of CPU (the kernel's smallest
//! quota) per `1 ms / share`, so a held process waits at most a few
//! milliseconds, not the tens of the default 100 ms period. Needs root and the
//! `cpu` controller (cgroup v1 or v2).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The CPU time a held process gets per period, in microseconds: the smallest
/// quota the kernel takes.
const QUOTA_US: u64 = 1000;

/// A process held to part of a core until this is dropped.
#[derive(Debug)]
pub struct CpuQuota {
    group: PathBuf,
    /// The `cgroup.procs` of the group the process came from.
    home_procs: PathBuf,
}

impl CpuQuota {
    /// Moves `pid` (all its threads) into a new cgroup allowed `share` of one core.
    pub fn hold(pid: u32, share: f64) -> Result<Self> {
        if !(0.05..=1.0).contains(&share) {
            bail!("a CPU share must be between 0.05 and 1, not {share}");
        }
        let period_us = (QUOTA_US as f64 / share).round() as u64;
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let name = format!("cartable-bench-{}", std::process::id());
        let (parent, v1) = if v1.join("cpu.cfs_quota_us").exists() {
            (v1, true)
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            (v2, false)
        } else {
            bail!(
                "no cgroup cpu controller at /sys/fs/cgroup: cannot hold the node to part of a core"
            );
        };
        let home = parent.join(home_of(pid, v1)?);
        let group = parent.join(name);
        fs::create_dir(&group).with_context(|| {
            format!(
                "creating {} (needs root and a writable cgroup cpu controller)",
                group.display()
            )
        })?;
        // From here on, dropping this removes the group again.
        let held = Self {
            group,
            home_procs: home.join("cgroup.procs"),
        };
        if v1 {
            write(
                &held.group.join("cpu.cfs_period_us"),
                &period_us.to_string(),
            )?;
            write(&held.group.join("cpu.cfs_quota_us"), &QUOTA_US.to_string())?;
        } else {
            write(
                &held.group.join("cpu.max"),
                &format!("{QUOTA_US} {period_us}"),
            )?;
        }
        write(&held.group.join("cgroup.procs"), &pid.to_string())?;
        Ok(held)
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // Only what is in the group goes home (a process that exited has
        // left by itself), so no other process is ever moved.
        let procs = fs::read_to_string(self.group.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = fs::write(&self.home_procs, pid);
        }
        let _ = fs::remove_dir(&self.group);
    }
}

/// The cgroup `pid` is in now, relative to the hierarchy's root: the `cpu`
/// hierarchy's line of `/proc/PID/cgroup` on v1, the unified (`0::`) one on v2.
fn home_of(pid: u32, v1: bool) -> Result<PathBuf> {
    let lines = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    lines
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let wanted = if v1 {
                controllers.split(',').any(|c| c == "cpu")
            } else {
                controllers.is_empty()
            };
            wanted.then(|| PathBuf::from(path.trim_start_matches('/')))
        })
        .with_context(|| format!("no cpu cgroup for process {pid}"))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}
