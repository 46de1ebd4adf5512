//! The Debian packages as a school's IT person meets them (`scripts/package.sh`):
//! installed with dpkg into a scratch root, the unit checked by systemd's own
//! tools, then upgraded with the configuration edited and data in place, then
//! purged. Maintainer scripts run as dpkg runs them for such a root
//! (`DPKG_ROOT`, no chroot), so nothing touches this machine's own system.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail, ensure};

use cartable_tests::node::{binary, without_cargo_env};
use cartable_tests::workspace_root;

/// One package, and what a test knows it must install.
struct Package {
    name: &'static str,
    config: &'static str,
    binaries: &'static [&'static str],
}

const PACKAGES: [Package; 2] = [
    Package {
        name: "cartable-node",
        config: "node.toml",
        binaries: &["cartable-node"],
    },
    Package {
        name: "cartable-coordinator",
        config: "coordinator.toml",
        binaries: &["cartable-coordinator", "cartable"],
    },
];

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Builds both packages at `version` into `out`; returns the .deb of each, in
/// the order of [`PACKAGES`].
fn build(version: &str, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    binary("cartable-node"); // every binary, built the way the tests build them
    let mut script = Command::new("bash");
    script
        .current_dir(workspace_root())
        .arg("scripts/package.sh")
        .args(["--no-build", "--fast", "--version", version, "--out"])
        .arg(out)
        .args([
            "--profile",
            if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            },
        ]);
    without_cargo_env(&mut script);
    let printed = String::from_utf8(run(&mut script)?.stdout)?;
    let debs: Vec<PathBuf> = printed.lines().map(PathBuf::from).collect();
    ensure!(
        debs.len() == PACKAGES.len(),
        "package.sh printed {printed:?}"
    );
    Ok(debs)
}

/// dpkg acting on the scratch root `root`, as a Debian server's would.
fn dpkg(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("dpkg");
    if !rustix::process::geteuid().is_root() {
        command = Command::new("fakeroot");
        command.arg("dpkg");
    }
    command
        .arg(format!("--root={}", root.display()))
        // The scratch root has no libc6 or systemd package of its own: the
        // maintainer scripts use this machine's tools on it.
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args);
    let out = run(&mut command)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An empty root with a dpkg database and this machine's systemd units (what
/// `systemd-analyze --root` needs to load a unit: sysinit.target and the rest).
fn scratch_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info"))?;
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates"))?;
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units)?;
    for entry in std::fs::read_dir("/lib/systemd/system")? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), units.join(entry.file_name()))?;
        }
    }
    Ok(root)
}

/// The uid and gid of `user` in the root's /etc/passwd.
fn user_ids(root: &Path, user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&user) && fields.len() == 7 {
            ensure!(fields[6].ends_with("nologin"), "{user} can log in: {line}");
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    bail!("no user {user} in {passwd}")
}

/// `data_dir` of the installed configuration, read by the daemon's own loader.
fn configured_data_dir(package: &Package, file: &Path) -> anyhow::Result<PathBuf> {
    Ok(match package.name {
        "cartable-node" => {
            cartable_node::config::NodeConfig::load(Some(file), Default::default())?.data_dir
        }
        _ => {
            cartable_coordinator::config::CoordinatorConfig::load(Some(file), Default::default())?
                .data_dir
        }
    })
}

fn check_install(root: &Path, package: &Package) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let name = package.name;
    for bin in package.binaries {
        let out = run(Command::new(root.join("usr/bin").join(bin)).arg("--version"))?;
        ensure!(
            String::from_utf8(out.stdout)?.contains("0.1.0"),
            "{bin} --version"
        );
    }
    let (uid, gid) = user_ids(root, name)?;
    let data = std::fs::metadata(root.join("var/lib").join(name))?;
    ensure!(
        data.is_dir() && data.uid() == uid && data.gid() == gid,
        "data folder owner"
    );
    ensure!(
        data.mode() & 0o7777 == 0o750,
        "data folder mode {:o}",
        data.mode()
    );
    let config = root.join("etc/cartable").join(package.config);
    let meta = std::fs::metadata(&config)?;
    ensure!(meta.uid() == 0 && meta.gid() == gid, "config owner");
    ensure!(
        meta.mode() & 0o7777 == 0o640,
        "config mode {:o}",
        meta.mode()
    );
    ensure!(
        configured_data_dir(package, &config)? == Path::new("/var/lib").join(name),
        "the shipped config points elsewhere than the unit's data folder"
    );

    // The socket buffers the endpoint asks for are granted at boot.
    let sysctl = std::fs::read_to_string(root.join(format!("usr/lib/sysctl.d/10-{name}.conf")))?;
    for line in ["net.core.rmem_max = 4194304", "net.core.wmem_max = 4194304"] {
        ensure!(
            sysctl.lines().any(|l| l == line),
            "10-{name}.conf lacks {line}"
        );
    }

    let unit = format!("{name}.service");
    let root_arg = format!("--root={}", root.display());
    let verify = run(Command::new("systemd-analyze").args(["verify", &root_arg, &unit]))?;
    ensure!(
        verify.stderr.is_empty(),
        "systemd-analyze verify warns: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Exposure 2.0 at most (systemd counts tenths): the sandboxing holds.
    run(Command::new("systemd-analyze").args([
        "security",
        "--offline=yes",
        "--threshold=20",
        &root_arg,
        &unit,
    ]))?;
    let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(&unit))?;
    for line in [
        &format!("User={name}") as &str,
        "ProtectSystem=strict",
        &format!("ReadWritePaths=/var/lib/{name}"),
        "Restart=on-failure",
        "LimitNOFILE=",
        &format!("--config /etc/cartable/{} serve", package.config),
    ] {
        ensure!(text.contains(line), "{unit} lacks {line}");
    }
    Ok(())
}

#[test]
fn packages_install_upgrade_keeping_config_and_data_and_purge_keeping_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = build("0.1.0-1", &dir.path().join("v1"))?;
    let second = build("0.1.0-2", &dir.path().join("v2"))?;
    let root = scratch_root(dir.path())?;

    for (i, package) in PACKAGES.iter().enumerate() {
        let name = package.name;
        let deb = first[i].to_str().context("path")?;
        let conffiles = run(Command::new("dpkg-deb").args(["--info", deb, "conffiles"]))?;
        ensure!(
            String::from_utf8(conffiles.stdout)?.trim()
                == format!("/etc/cartable/{}", package.config),
            "the config is not a conffile: an upgrade would overwrite it"
        );
        let depends = run(Command::new("dpkg-deb").args(["--field", deb, "Depends"]))?;
        ensure!(String::from_utf8(depends.stdout)?.contains("libc6 (>= 2."));

        dpkg(&root, &["--install", deb])?;
        check_install(&root, package)?;
        let ids = user_ids(&root, name)?;

        // The operator's edit and the node's data survive an upgrade.
        let config = root.join("etc/cartable").join(package.config);
        let edited = format!(
            "{}# edited by the school\n",
            std::fs::read_to_string(&config)?
        );
        std::fs::write(&config, &edited)?;
        let data = root.join("var/lib").join(name).join("kept");
        std::fs::write(&data, "lessons")?;
        dpkg(
            &root,
            &["--force-confold", "--install", second[i].to_str().unwrap()],
        )?;
        let status = dpkg(&root, &["--status", name])?;
        ensure!(
            status.contains("Version: 0.1.0-2"),
            "not upgraded: {status}"
        );
        ensure!(
            std::fs::read_to_string(&config)? == edited,
            "upgrade lost the edit"
        );
        ensure!(
            std::fs::read_to_string(&data)? == "lessons",
            "upgrade lost data"
        );
        ensure!(user_ids(&root, name)? == ids, "upgrade changed the user");
        check_install(&root, package)?;

        // A purge removes the program and its config, never the lessons or keys.
        let said = dpkg(&root, &["--purge", name])?;
        ensure!(said.contains(&format!("kept /var/lib/{name}")), "{said}");
        ensure!(!config.exists(), "purge left the config");
        ensure!(!root.join("usr/bin").join(package.binaries[0]).exists());
        ensure!(
            std::fs::read_to_string(&data)? == "lessons",
            "purge lost data"
        );
    }
    Ok(())
}
