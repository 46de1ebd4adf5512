//! Scraping a daemon's `/metrics` over plain HTTP and reading the OpenMetrics
//! text back into samples, strictly: a line that does not parse fails the
//! test, so a malformed exposition cannot pass unnoticed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

/// One sample: its name (with `_total`, `_bucket`... as written), its labels
/// and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name as written.
    pub name: String,
    /// Its labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The value of the series `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    /// The sum over every series named `name`, whatever their labels; 0 when none.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Whether any series is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

/// `GET path` on a plain-HTTP server at `addr` (`IP:PORT`): the status code
/// and the body. Every step has a deadline.
pub fn http_get(addr: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    // The server sends a length, never chunks, for these small answers.
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked answer"
    );
    Ok((status, body.to_owned()))
}

/// Scrapes `url` (`http://IP:PORT`, as the listening line prints it).
pub fn scrape(url: &str) -> anyhow::Result<Samples> {
    let addr = url.strip_prefix("http://").context("not an http:// URL")?;
    let (status, body) = http_get(addr, "GET", "/metrics")?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    parse(&body)
}

/// Reads OpenMetrics text: `# HELP`/`# TYPE` lines, samples, and the final
/// `# EOF`.
pub fn parse(text: &str) -> anyhow::Result<Samples> {
    anyhow::ensure!(
        text.trim_end().ends_with("# EOF"),
        "no # EOF at the end: {text}"
    );
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or("");
            anyhow::ensure!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment line: {line}"
            );
            continue;
        }
        samples.push(sample(line).with_context(|| format!("bad sample line: {line}"))?);
    }
    Ok(Samples(samples))
}

fn sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value after the name")?;
    let name = &line[..name_end];
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad name {name:?}"
    );
    let (labels, rest) = if line[name_end..].starts_with('{') {
        labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest
        .split_whitespace()
        .next()
        .context("no value")?
        .parse::<f64>()?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",...}` and what follows the closing brace.
fn labels(mut rest: &str) -> anyhow::Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = rest.split_once("=\"").context("no key=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("label value ends in a backslash"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => bail!("label value not closed"),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_text_is_read_strictly() -> anyhow::Result<()> {
        let text = "# HELP a_things Things.\n# TYPE a_things counter\n\
                    a_things_total{route=\"lesson\",status=\"200\"} 3\n\
                    b_gauge 1.5\nc{x=\"q\\\"uote\"} 2\n# EOF\n";
        let s = parse(text)?;
        assert_eq!(
            s.value("a_things_total", &[("status", "200"), ("route", "lesson")]),
            Some(3.0)
        );
        assert_eq!(s.value("a_things_total", &[("route", "lesson")]), None);
        assert_eq!(s.value("b_gauge", &[]), Some(1.5));
        assert_eq!(s.value("c", &[("x", "q\"uote")]), Some(2.0));
        assert!(parse("a 1\n").is_err(), "no EOF");
        assert!(parse("a{x=\"1\" 1\n# EOF\n").is_err(), "unclosed labels");
        assert!(parse("a one\n# EOF\n").is_err(), "not a number");
        Ok(())
    }
}
