//! What both daemons' configuration files share: reading the TOML file, and the
//! check of a public base URL.

use std::path::Path;

use anyhow::Context;

/// The TOML file at `path`, or the defaults when there is none.
pub fn read_toml<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

/// A base URL given as `name`: checked to be HTTPS, without a trailing slash.
pub fn public_url(name: &str, url: Option<String>) -> anyhow::Result<Option<String>> {
    let Some(url) = url else { return Ok(None) };
    let url = url.trim_end_matches('/').to_owned();
    anyhow::ensure!(
        url.starts_with("https://") && url.len() > 8,
        "{name} must start with https://"
    );
    Ok(Some(url))
}
