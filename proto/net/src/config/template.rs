//! The commented configuration files `init` writes, and the lines of a TOML
//! file read back for what they set.
//!
//! A template shows every setting: `#key = value` is the default, commented out
//! (uncomment it to change it); `# key = value`, with a space, is an example of a
//! setting that has no default; other comments are prose. Table headers are
//! live, so that an uncommented key lands in its table; the headers of arrays of
//! tables are examples (`# [[regions]]`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// How a key is written on its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A live setting: `key = value`.
    Live,
    /// A default, commented out: `#key = value`.
    Default,
    /// An example of a setting without a default: `# key = value`.
    Example,
}

/// A key of a TOML text, as a dotted path from the top (`https.listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    /// The dotted path: the table's name, then the key.
    pub key: String,
    /// The line it is on, from 1.
    pub line: usize,
    /// How it is written.
    pub written: Written,
}

/// Every key line of `text`, live or commented, in order.
pub fn key_lines(text: &str) -> Vec<KeyLine> {
    let mut table = String::new();
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (body, written) = match line.trim_start().strip_prefix('#') {
            None => (line.trim_start(), Written::Live),
            Some(rest) if rest.starts_with(' ') => (rest.trim_start(), Written::Example),
            Some(rest) => (rest, Written::Default),
        };
        if let Some(name) = header(body) {
            table = name.to_owned();
        } else if let Some(name) = assigned(body) {
            let key = if table.is_empty() {
                name.to_owned()
            } else {
                format!("{table}.{name}")
            };
            keys.push(KeyLine {
                key,
                line: i + 1,
                written,
            });
        }
    }
    keys
}

/// The table a `[name]` or `[[name]]` header opens.
fn header(body: &str) -> Option<&str> {
    let body = body.split(" #").next().unwrap_or(body).trim_end();
    let inner = body.strip_prefix("[[").and_then(|b| b.strip_suffix("]]"));
    let inner = inner.or_else(|| body.strip_prefix('[').and_then(|b| b.strip_suffix(']')))?;
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        .then_some(inner.trim())
}

/// The key a `key = value` line sets.
fn assigned(body: &str) -> Option<&str> {
    let (name, _) = body.split_once('=')?;
    let name = name.trim_end();
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    bare.then_some(name)
}

/// `template` with its defaults uncommented: what the file would be if every
/// default were written out. It must mean the same as the template.
pub fn uncomment_defaults(template: &str) -> String {
    let defaults: Vec<usize> = key_lines(template)
        .into_iter()
        .filter(|k| k.written == Written::Default)
        .map(|k| k.line)
        .collect();
    let mut out = String::with_capacity(template.len());
    for (i, line) in template.lines().enumerate() {
        let line = if defaults.contains(&(i + 1)) {
            line.replacen('#', "", 1)
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Writes `template` to `path`, with `data_dir` as its live `data_dir` if
/// given (`init --data-dir`); an existing file is kept unless `force`.
/// Returns what was written, in one line for the user.
pub fn write_template(
    path: &Path,
    template: &str,
    data_dir: Option<&Path>,
    force: bool,
) -> anyhow::Result<String> {
    let (template, set) = match data_dir {
        Some(dir) => {
            let (template, live) = with_data_dir(template, dir)?;
            (template, format!(", but data_dir, set to {live}"))
        }
        None => (template.to_owned(), String::new()),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} already exists: init keeps it (--force replaces it with the defaults)",
            path.display()
        ),
        other => other.with_context(|| format!("creating {}", path.display()))?,
    };
    file.write_all(template.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "wrote {}: every setting, commented out at its default{set}",
        path.display()
    ))
}

/// `template` with its commented-out `data_dir` line made live with `dir`
/// (made absolute): the folder given to `init --data-dir` is the one a later
/// `--config FILE serve` uses, wherever it runs from, not the default. Also
/// that folder, as written.
fn with_data_dir(template: &str, dir: &Path) -> anyhow::Result<(String, String)> {
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let dir = dir
        .to_str()
        .with_context(|| format!("{}: not UTF-8", dir.display()))?;
    let live = format!("data_dir = {}", toml::Value::String(dir.to_owned()));
    let mut found = false;
    let lines: Vec<&str> = template
        .lines()
        .map(|line| {
            if !found && line.starts_with("#data_dir = ") {
                found = true;
                live.as_str()
            } else {
                line
            }
        })
        .collect();
    anyhow::ensure!(found, "the template has no data_dir line");
    Ok((lines.join("\n") + "\n", dir.to_owned()))
}

/// `doc` with the text between `<!-- begin NAME -->` and `<!-- end NAME -->`
/// replaced by `text` in a TOML code block: how the reference embeds a template.
pub fn embed(doc: &str, name: &str, text: &str) -> anyhow::Result<String> {
    let begin = format!("<!-- begin {name} -->\n");
    let end = format!("<!-- end {name} -->");
    let start = doc.find(&begin).with_context(|| format!("no {begin:?}"))? + begin.len();
    let stop = doc[start..]
        .find(&end)
        .with_context(|| format!("no {end:?}"))?
        + start;
    Ok(format!(
        "{}```toml\n{}\n```\n{}",
        &doc[..start],
        text.trim(),
        &doc[stop..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Prose = not a key.\n#top = 1\n[https]\n#listen = \"a\"\n\
                          # public_url = \"https://x\"\nlive = 2\n# [[regions]]\n# cidr = \"c\"\n";

    #[test]
    fn a_data_dir_given_to_init_is_written_live_and_absolute() -> anyhow::Result<()> {
        let template = "# Where.\n#data_dir = \"./data\"\n[https]\n#data_dir = \"x\"\n";
        let (written, live) = with_data_dir(template, Path::new("école \"A\""))?;
        let table: toml::Table = written.parse()?;
        let dir = std::env::current_dir()?.join("école \"A\"");
        assert_eq!(table["data_dir"].as_str(), dir.to_str());
        assert_eq!(Some(live.as_str()), dir.to_str());
        assert!(
            written.contains("[https]\n#data_dir = \"x\"\n"),
            "{written}"
        );
        assert!(with_data_dir("#other = 1\n", Path::new("d")).is_err());
        Ok(())
    }

    #[test]
    fn keys_are_read_with_their_table_and_line() {
        let keys: Vec<(String, usize, Written)> = key_lines(SAMPLE)
            .into_iter()
            .map(|k| (k.key, k.line, k.written))
            .collect();
        assert_eq!(
            keys,
            [
                ("top".into(), 2, Written::Default),
                ("https.listen".into(), 4, Written::Default),
                ("https.public_url".into(), 5, Written::Example),
                ("https.live".into(), 6, Written::Live),
                ("regions.cidr".into(), 8, Written::Example),
            ]
        );
    }

    #[test]
    fn only_defaults_are_uncommented() {
        let live = uncomment_defaults(SAMPLE);
        assert!(live.contains("\ntop = 1\n"), "{live}");
        assert!(live.contains("\nlisten = \"a\"\n"));
        assert!(live.contains("\n# public_url"));
        assert!(live.starts_with("# Prose"));
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        write_template(&path, "a = 1\n", None, false)?;
        let e = write_template(&path, "a = 2\n", None, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&path)?, "a = 1\n");
        write_template(&path, "a = 2\n", None, true)?;
        assert_eq!(std::fs::read_to_string(&path)?, "a = 2\n");
        Ok(())
    }

    #[test]
    fn embedding_replaces_the_marked_block() -> anyhow::Result<()> {
        let doc = "intro\n<!-- begin x -->\nold\n<!-- end x -->\nafter\n";
        let new = embed(doc, "x", "a = 1\n")?;
        assert_eq!(
            new,
            "intro\n<!-- begin x -->\n```toml\na = 1\n```\n<!-- end x -->\nafter\n"
        );
        assert_eq!(embed(&new, "x", "a = 1")?, new);
        Ok(())
    }
}
