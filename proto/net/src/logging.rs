//! Both daemons' logs, set up in one place: `--log-format text|json` and
//! `--log-level LEVEL`, written to stderr.
//!
//! Which filter applies, first match wins:
//!
//! 1. `--log-level LEVEL` (`error`, `warn`, `info`, `debug`, `trace`, `off`);
//! 2. the `CARTABLE_LOG` environment variable, a `tracing` filter that may
//!    name targets (`info,cartable_node::peer=debug`);
//! 3. `info`.
//!
//! Text is what a person reads: colours only when stderr is a terminal. When
//! stderr is the journal (systemd sets `JOURNAL_STREAM` to the device and
//! inode of the stream it gave us), no timestamp, since the journal stamps
//! every line itself, and a `<N>` syslog priority before each line, which the
//! journal reads as the entry's priority. JSON is one object per line, with `timestamp`, `level`, `message`,
//! the event's fields and `target`, for log shippers.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable holding a `tracing` filter.
pub const ENV_FILTER: &str = "CARTABLE_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people and the journal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The most detailed level logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Failures only.
    Error,
    /// Failures and what may become one.
    Warn,
    /// What the daemon does, at the pace of an operator.
    Info,
    /// Each request and decision.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// The logging flags both daemons take (global: before or after the command).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Most detailed level logged; wins over the CARTABLE_LOG filter [default: info]
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
}

impl LogArgs {
    /// Installs the process's subscriber; call once, first thing in `main`.
    pub fn init(&self) {
        let (filter, refused) = filter(self.log_level, std::env::var(ENV_FILTER).ok());
        let builder = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter);
        match self.log_format {
            LogFormat::Json => builder.json().flatten_event(true).init(),
            LogFormat::Text if stderr_is_journal() => {
                let format = tracing_subscriber::fmt::format().without_time();
                builder
                    .with_ansi(false)
                    .event_format(OneLine {
                        format,
                        priority: true,
                    })
                    .init();
            }
            LogFormat::Text if std::io::stderr().is_terminal() => builder.init(),
            LogFormat::Text => builder
                .with_ansi(false)
                .event_format(OneLine {
                    format: tracing_subscriber::fmt::format(),
                    priority: false,
                })
                .init(),
        }
        if let Some(error) = refused {
            tracing::warn!(
                variable = ENV_FILTER,
                error,
                "ignoring an unreadable log filter; logging at info"
            );
        }
    }
}

/// The filter, by the precedence in the module doc, and why the environment's
/// was refused when it was.
fn filter(level: Option<LogLevel>, env: Option<String>) -> (EnvFilter, Option<String>) {
    if let Some(level) = level {
        return (EnvFilter::new(level.directive()), None);
    }
    match env.filter(|v| !v.trim().is_empty()) {
        None => (EnvFilter::new("info"), None),
        Some(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{text:?}: {e}"))),
        },
    }
}

/// One event, one line of text: a newline or carriage return inside an event
/// (from a peer's error message, a request path) is written escaped, so text
/// read from a stranger cannot start a forged line in a log file or the
/// journal. For the journal, each line starts with its syslog priority (`<3>`
/// error … `<7>` debug), which the journal reads as the entry's priority, so
/// that `journalctl -p warning` shows warnings and errors.
struct OneLine<F> {
    format: F,
    priority: bool,
}

impl<S, N, F> FormatEvent<S, N> for OneLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if self.priority {
            write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        }
        let mut line = String::new();
        self.format
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{}", body.replace('\n', "\\n").replace('\r', "\\r"))
    }
}

/// The syslog priority of a level: err, warning, info, debug.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether stderr is the stream systemd connected to the journal: a child
/// process that inherited `JOURNAL_STREAM` but writes elsewhere keeps its stamps.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    is_stream(&stream.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names this file.
fn is_stream(variable: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = variable.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_environment() {
        let (f, refused) = filter(Some(LogLevel::Debug), Some("warn".into()));
        assert_eq!(f.to_string(), "debug");
        assert!(refused.is_none());
        let (f, _) = filter(None, Some("warn,cartable_node=trace".into()));
        assert_eq!(f.to_string(), "cartable_node=trace,warn");
        let (f, _) = filter(None, None);
        assert_eq!(f.to_string(), "info");
    }

    #[test]
    fn an_unreadable_environment_filter_falls_back_to_info_and_says_so() {
        let (f, refused) = filter(None, Some("info,[".into()));
        assert_eq!(f.to_string(), "info");
        assert!(refused.is_some_and(|why| why.contains("info,[")));
    }

    #[test]
    fn a_newline_in_an_event_cannot_start_a_forged_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Capture::default();
        let writer = out.clone();
        let format = tracing_subscriber::fmt::format().without_time();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(OneLine {
                format,
                priority: true,
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let peer_says = "refused\n<0>forged\r\nline";
            tracing::warn!(error = %peer_says, "check failed");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("<4>") && text.contains("refused\\n<0>forged\\r\\nline"));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::TRACE), 7);
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(is_stream("2049:123", 2049, 123));
        assert!(!is_stream("2049:124", 2049, 123));
        assert!(!is_stream("garbage", 2049, 123));
        assert!(!is_stream("", 0, 0));
    }
}
