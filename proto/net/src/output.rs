//! What the command-line tools print on standard output, and how they end.
//!
//! `println!` panics when its reader has gone, so `cartable-node add LESSON |
//! head -1` printed a panic and a backtrace once `head` had its line. Here a
//! reader gone ends the command quietly and successfully, as for other Unix
//! tools: what it did is done, only its report found nobody to read it. Any
//! other failure to print is an error like any other.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

/// Standard output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub struct PrintFailed(#[source] io::Error);

/// Writes `text` to standard output at once (the lines of a command that
/// stops halfway are not lost in a buffer). Use [`say!`](crate::say).
pub fn print(text: fmt::Arguments<'_>) -> Result<(), PrintFailed> {
    let mut out = io::stdout().lock();
    out.write_fmt(text)
        .and_then(|()| out.flush())
        .map_err(PrintFailed)
}

/// Like `println!`, returning [`PrintFailed`] instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// The exit of a command: success, success when its reader went away, or the
/// error's one line on standard error and failure.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as `{:#}` prints them, but a cause
/// its error already ends with is not said twice (`data/x: Permission denied
/// (os error 13)`, not that and the reason again).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn reader_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<PrintFailed>()
        .is_some_and(|PrintFailed(e)| e.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reader_gone_from_standard_output_is_a_quiet_success() {
        let gone = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(exit_code(Ok(())), ExitCode::SUCCESS);
        let printing = anyhow::Error::new(PrintFailed(gone())).context("listing bundles");
        assert_eq!(exit_code(Err(printing)), ExitCode::SUCCESS);
        let full = PrintFailed(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(exit_code(Err(full.into())), ExitCode::FAILURE);
        // A broken pipe elsewhere (a daemon's socket) is a failure.
        assert_eq!(exit_code(Err(gone().into())), ExitCode::FAILURE);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("data/x: {source}")]
    struct AtPath {
        source: io::Error,
    }

    #[test]
    fn a_reason_is_said_once() {
        let denied = || io::Error::from(io::ErrorKind::PermissionDenied);
        let e = anyhow::Error::new(AtPath { source: denied() }).context("adding lesson");
        assert_eq!(one_line(&e), format!("adding lesson: data/x: {}", denied()));
        let e = anyhow::Error::new(denied()).context("reading data/x");
        assert_eq!(one_line(&e), format!("reading data/x: {}", denied()));
    }
}
