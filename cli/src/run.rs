//! What every `veil` command does the same way: its async runtime, and its answer (a
//! report as JSON or rendered for people, or an error naming the command).

use std::fmt::Display;
use std::process::ExitCode;

use serde::Serialize;

/// A runtime for `veil COMMAND`; `None` (after saying why) when none can be started.
pub fn runtime(command: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("veil {command}: starting the async runtime: {e}");
            None
        }
    }
}

/// Runs `work` on a fresh runtime; an error (or no runtime) is printed as
/// `veil COMMAND: ERROR` and gives `None`.
pub fn block_on<T, E: Display, F: std::future::Future<Output = Result<T, E>>>(
    command: &str,
    work: F,
) -> Option<T> {
    let rt = runtime(command)?;
    match rt.block_on(work) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("veil {command}: {e:#}");
            None
        }
    }
}

/// Prints `report` as JSON (`json`) or as `render` makes it, or the error; the exit code
/// says which.
pub fn print_report<T: Serialize, E: Display>(
    command: &str,
    result: Result<T, E>,
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> ExitCode {
    match result {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("veil {command}: encoding the report as JSON: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(report) => {
            print!("{}", render(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("veil {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
