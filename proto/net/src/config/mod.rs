//! What both daemons' configuration files share: reading the TOML file, the
//! check of a public base URL, the commented templates `init` writes
//! ([`template`]), and, for tests, the keys a config struct accepts ([`fields`]).

#[cfg(feature = "fields")]
pub mod fields;
pub mod template;

use std::path::Path;

use anyhow::Context;

/// The TOML file at `path`, or the defaults when there is none.
pub fn read_toml<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
) -> anyhow::Result<T> {
    load(path, Ok)
}

/// Reads the TOML file at `path` (the defaults when there is none) and checks
/// it with `check`; an error names the file, the line and the key it is about.
pub fn load<T: serde::de::DeserializeOwned + Default, C>(
    path: Option<&Path>,
    check: impl FnOnce(T) -> anyhow::Result<C>,
) -> anyhow::Result<C> {
    let Some(path) = path else {
        return check(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    check_text(&text, check).with_context(|| format!("config {}", path.display()))
}

/// Parses `text` and checks it with `check`; an error starts with the line and
/// the key at fault when it is known: `line 4: https.listen = "x": ...`.
pub fn check_text<T: serde::de::DeserializeOwned, C>(
    text: &str,
    check: impl FnOnce(T) -> anyhow::Result<C>,
) -> anyhow::Result<C> {
    let file = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
    check(file).map_err(|e| {
        let message = format!("{e:#}");
        match key_named(text, &message) {
            Some(key) => anyhow::anyhow!("line {}: {message}", key.line),
            None => anyhow::anyhow!(message),
        }
    })
}

/// A TOML or type error, said with its line, its key, and what is allowed.
fn parse_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{}", e.message());
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let key = template::key_lines(text)
        .into_iter()
        .find(|k| k.line == line && k.written == template::Written::Live);
    let written = text.lines().nth(line - 1).unwrap_or("").trim();
    let what = match key {
        Some(k) => format!("{} (`{written}`)", k.key),
        None => format!("`{written}`"),
    };
    anyhow::anyhow!(
        "line {line}: {what}: {}{}",
        e.message().trim(),
        allowed(e.message())
    )
}

/// What a value of the kind serde expected may look like, when its own words
/// do not say it.
fn allowed(message: &str) -> &'static str {
    if message.contains("socket address") {
        "; expected IP:PORT, e.g. \"127.0.0.1:8443\" or \"[::]:8443\""
    } else if [
        "expected u8",
        "expected u16",
        "expected u32",
        "expected u64",
        "expected usize",
    ]
    .iter()
    .any(|k| message.contains(k))
    {
        " (a whole number, 0 or more)"
    } else if message.contains("expected f64") {
        " (a number such as 0.5)"
    } else {
        ""
    }
}

/// The live key of `text` that `message` names first.
fn key_named(text: &str, message: &str) -> Option<template::KeyLine> {
    template::key_lines(text)
        .into_iter()
        .filter(|k| k.written == template::Written::Live)
        .filter_map(|k| names(message, &k.key).map(|at| (at, k)))
        .min_by_key(|(at, k)| (*at, usize::MAX - k.key.len()))
        .map(|(_, k)| k)
}

/// Where `message` names `key` as a whole word.
fn names(message: &str, key: &str) -> Option<usize> {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    message.match_indices(key).map(|(at, _)| at).find(|&at| {
        let before = message[..at].chars().next_back();
        let after = message[at + key.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(|c| part(c) && c != '.')
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde only
    struct Sample {
        #[serde(default)]
        https: SampleHttps,
        heartbeat_ms: Option<u64>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde only
    struct SampleHttps {
        listen: Option<std::net::SocketAddr>,
        max: Option<u64>,
    }

    fn error(text: &str) -> String {
        let checked = check_text(text, |s: Sample| {
            anyhow::ensure!(s.https.max.unwrap_or(1) > 0, "https.max must be positive");
            Ok(s)
        });
        format!("{:#}", checked.unwrap_err())
    }

    #[test]
    fn errors_name_the_line_the_key_and_what_is_allowed() {
        let e = error("heartbeat_ms = 1\n[https]\nlisten = \"nowhere\"\n");
        assert!(
            e.starts_with("line 3: https.listen (`listen = \"nowhere\"`): "),
            "{e}"
        );
        assert!(e.contains("expected IP:PORT"), "{e}");
        let e = error("heartbeat_ms = \"5s\"\n");
        assert!(e.starts_with("line 1: heartbeat_ms"), "{e}");
        assert!(e.contains("a whole number"), "{e}");
        let e = error("\n[https]\nlisen = 1\n");
        assert!(e.starts_with("line 3: https.lisen"), "{e}");
        assert!(
            e.contains("unknown field `lisen`, expected `listen` or `max`"),
            "{e}"
        );
        let e = error("[https]\n\nmax = 0\n");
        assert_eq!(e, "line 3: https.max must be positive");
    }
}
