//! Whether a folder is on ext4 without a journal, where every new file checks
//! the inodes freed in the last minutes one by one: small-file benchmarks
//! there measure that, and warn.

use std::fs;
use std::path::Path;

/// The ext4 device holding `dir`, when that filesystem has no journal
/// (`/sys/fs/ext4/DEV/journal_task` reads `<none>`).
pub fn ext4_without_journal(dir: &Path) -> Option<String> {
    let dir = fs::canonicalize(dir).ok()?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mount_of(&mounts, &dir)?;
    // ext4 names a device by its kernel name (`dm-0`, `sda1`), which the
    // source may not spell (`/dev/mapper/vg-root`, `/dev/root`).
    let kernel_name = fs::read_link(format!("/sys/dev/block/{}", mount.number))
        .ok()
        .and_then(|link| Some(link.file_name()?.to_str()?.to_owned()));
    let device = match kernel_name {
        Some(name) => name,
        None => Path::new(mount.source).file_name()?.to_str()?.to_owned(),
    };
    let task = fs::read_to_string(format!("/sys/fs/ext4/{device}/journal_task")).ok()?;
    (mount.fstype == "ext4" && task.trim() == "<none>").then_some(device)
}

/// One line of `/proc/self/mountinfo`, as far as it is needed here.
#[derive(Debug, PartialEq, Eq)]
struct Mount<'a> {
    /// `MAJOR:MINOR` of the device.
    number: &'a str,
    fstype: &'a str,
    source: &'a str,
}

/// The deepest mount holding `dir`. Fields: the device number is the third;
/// the mount point the fifth; after " - ", the type and the source.
fn mount_of<'a>(mountinfo: &'a str, dir: &Path) -> Option<Mount<'a>> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let number = left.nth(2)?;
            let point = Path::new(left.nth(1)?);
            let mut right = right.split(' ');
            let (fstype, source) = (right.next()?, right.next()?);
            let mount = Mount {
                number,
                fstype,
                source,
            };
            dir.starts_with(point).then_some((point, mount))
        })
        .max_by_key(|(point, _)| point.components().count())
        .map(|(_, mount)| mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 252:0 / / rw,relatime - ext4 /dev/mapper/vg-root rw
31 27 8:1 / /srv/data rw,relatime shared:1 - ext4 /dev/sda1 rw
40 31 0:40 / /srv/data/tmp rw - tmpfs tmpfs rw";

    #[test]
    fn the_deepest_mount_holding_a_folder_is_found_by_its_device_number() {
        let mount = |dir: &str| mount_of(MOUNTINFO, Path::new(dir));
        assert_eq!(
            mount("/home/school"),
            Some(Mount {
                number: "252:0",
                fstype: "ext4",
                source: "/dev/mapper/vg-root"
            })
        );
        assert_eq!(mount("/srv/data/lessons").map(|m| m.number), Some("8:1"));
        assert_eq!(mount("/srv/data/tmp/x").map(|m| m.fstype), Some("tmpfs"));
        assert_eq!(mount("/srv/database").map(|m| m.number), Some("252:0"));
    }
}
