//! Where the CLI finds the coordinator, its certificate and the admin token:
//! a flag, else an environment variable, else the config file
//! (`$XDG_CONFIG_HOME/cartable/config.toml` or `~/.config/cartable/config.toml`,
//! read only if it exists, or the file `--config` names).
//!
//! ```toml
//! coordinator = "https://coordinator.example:8444"
//! token_file = "admin-token"   # or: token = "..."; relative to this file
//! ca_cert = "coordinator.pem"  # the coordinator's certificate, pinned
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Environment variable for the coordinator URL.
pub const ENV_COORDINATOR: &str = "CARTABLE_COORDINATOR";
/// Environment variable for the admin token.
pub const ENV_TOKEN: &str = "CARTABLE_TOKEN";
/// Environment variable for the coordinator's certificate file.
pub const ENV_CA_CERT: &str = "CARTABLE_CA_CERT";

/// The global flags, as given on the command line.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The coordinator's admin API, e.g. `https://coordinator.example:8444` [env: CARTABLE_COORDINATOR]
    #[arg(long, global = true, value_name = "URL")]
    pub coordinator: Option<String>,
    /// The admin token (visible to other local users in `ps`: prefer the env or token_file) [env: CARTABLE_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// PEM of the coordinator's HTTPS certificate, the only one trusted [env: CARTABLE_CA_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Config file [default: ~/.config/cartable/config.toml, if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The config file. Every field is optional; flags and the environment win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// The coordinator's admin API URL.
    coordinator: Option<String>,
    /// The admin token itself.
    token: Option<String>,
    /// A file holding the admin token, readable by its owner only.
    token_file: Option<PathBuf>,
    /// The coordinator's certificate (PEM).
    ca_cert: Option<PathBuf>,
}

/// What the CLI needs to reach the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The admin API base URL, without a trailing `/`.
    pub coordinator: String,
    /// The admin token.
    pub token: String,
    /// The coordinator's certificate file, if one was given.
    pub ca_cert: Option<PathBuf>,
}

impl Settings {
    /// Resolves each setting as flag, else environment (`env` looks a variable
    /// up; empty counts as unset), else the config file.
    pub fn resolve(
        args: &GlobalArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let (file, dir) = match &args.config {
            Some(path) => (read_file(path)?, parent(path)),
            None => match default_path(&env) {
                Some(path) if path.exists() => (read_file(&path)?, parent(&path)),
                _ => (ConfigFile::default(), PathBuf::new()),
            },
        };
        let where_ = || match &args.config {
            Some(path) => path.display().to_string(),
            None => "~/.config/cartable/config.toml".to_owned(),
        };
        let coordinator = args
            .coordinator
            .clone()
            .or_else(|| env(ENV_COORDINATOR))
            .or(file.coordinator)
            .with_context(|| {
                format!(
                    "no coordinator: pass --coordinator URL, set {ENV_COORDINATOR} or add coordinator = \"https://...\" to {}",
                    where_()
                )
            })?;
        let token = match args.token.clone().or_else(|| env(ENV_TOKEN)) {
            Some(token) => token,
            None => file_token(file.token, file.token_file.map(|p| dir.join(p)))?
                .with_context(|| {
                    format!(
                        "no admin token: pass --token, set {ENV_TOKEN} or add token_file = \"...\" to {}",
                        where_()
                    )
                })?,
        };
        let ca_cert = args
            .ca_cert
            .clone()
            .or_else(|| env(ENV_CA_CERT).map(PathBuf::from))
            .or_else(|| file.ca_cert.map(|p| dir.join(p)));
        Ok(Self {
            coordinator: coordinator.trim_end_matches('/').to_owned(),
            token,
            ca_cert,
        })
    }
}

/// `$XDG_CONFIG_HOME/cartable/config.toml`, else `$HOME/.config/cartable/config.toml`.
fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("cartable").join("config.toml"))
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_owned).unwrap_or_default()
}

fn read_file(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

/// The token from the config file, read from `token_file` if that is how it is given.
fn file_token(
    token: Option<String>,
    token_file: Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
    match (token, token_file) {
        (Some(_), Some(_)) => anyhow::bail!("config: give token or token_file, not both"),
        (Some(token), None) => Ok(Some(token)),
        (None, Some(path)) => {
            let text = cartable_net::secret_file::read(&path)
                .with_context(|| format!("token_file {}", path.display()))?;
            Ok(Some(text.trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn write_config(dir: &Path, text: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join("cartable").join("config.toml");
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, text)?;
        Ok(path)
    }

    #[test]
    fn flag_beats_env_beats_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        write_config(
            dir.path(),
            "coordinator = \"https://file:1/\"\ntoken = \"file-token\"\nca_cert = \"c.pem\"\n",
        )?;
        let xdg = dir.path().to_str().unwrap();
        let file_only =
            Settings::resolve(&GlobalArgs::default(), &env_of(&[("XDG_CONFIG_HOME", xdg)]))?;
        assert_eq!(file_only.coordinator, "https://file:1");
        assert_eq!(file_only.token, "file-token");
        assert_eq!(file_only.ca_cert, Some(dir.path().join("cartable/c.pem")));

        let pairs = [
            ("XDG_CONFIG_HOME", xdg),
            (ENV_COORDINATOR, "https://env:2"),
            (ENV_TOKEN, "env-token"),
            (ENV_CA_CERT, "/env.pem"),
        ];
        let env = env_of(&pairs);
        let from_env = Settings::resolve(&GlobalArgs::default(), &env)?;
        assert_eq!(from_env.coordinator, "https://env:2");
        assert_eq!(from_env.token, "env-token");
        assert_eq!(from_env.ca_cert, Some(PathBuf::from("/env.pem")));

        let flags = GlobalArgs {
            coordinator: Some("https://flag:3".into()),
            token: Some("flag-token".into()),
            ca_cert: Some("/flag.pem".into()),
            config: None,
        };
        let from_flags = Settings::resolve(&flags, &env)?;
        assert_eq!(from_flags.coordinator, "https://flag:3");
        assert_eq!(from_flags.token, "flag-token");
        assert_eq!(from_flags.ca_cert, Some(PathBuf::from("/flag.pem")));
        Ok(())
    }

    #[test]
    fn token_file_is_relative_to_the_config_and_must_be_private() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let config = write_config(
            dir.path(),
            "coordinator = \"https://c\"\ntoken_file = \"tok\"\n",
        )?;
        let token = dir.path().join("cartable/tok");
        cartable_net::secret_file::create(&token, "secret\n")?;
        let args = GlobalArgs {
            config: Some(config),
            ..GlobalArgs::default()
        };
        assert_eq!(Settings::resolve(&args, &env_of(&[]))?.token, "secret");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644))?;
        let err = Settings::resolve(&args, &env_of(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
        Ok(())
    }

    #[test]
    fn missing_settings_and_unknown_fields_say_what_to_do() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let pairs = [("HOME", dir.path().to_str().unwrap())];
        let home = env_of(&pairs);
        let err = Settings::resolve(&GlobalArgs::default(), &home).unwrap_err();
        assert!(err.to_string().contains("--coordinator"), "{err}");
        let pairs = [(ENV_COORDINATOR, "https://c"), (ENV_TOKEN, "")];
        let env = env_of(&pairs);
        let err = Settings::resolve(&GlobalArgs::default(), &env).unwrap_err();
        assert!(err.to_string().contains("no admin token"), "{err}");

        let config = write_config(dir.path(), "coordinater = \"https://typo\"\n")?;
        let args = GlobalArgs {
            config: Some(config),
            ..GlobalArgs::default()
        };
        let err = Settings::resolve(&args, &env_of(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        Ok(())
    }
}
