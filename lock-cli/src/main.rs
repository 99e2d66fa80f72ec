//! `distlock`: run a command under a distributed lock, from the shell.
//!
//! Like `flock(1)`, but the lock lives in Redis (one server) or in Redlock (several
//! independent masters), so it holds across machines:
//!
//! ```text
//! distlock --url redis://127.0.0.1:6379/ run nightly-report -- ./report.sh
//! DISTLOCK_URL=redis://a:6379/,redis://b:6379/,redis://c:6379/ distlock run -n job -- ./job
//! distlock status nightly-report
//! distlock wait nightly-report --wait 5m
//! distlock unlock --force nightly-report
//! ```
//!
//! `run` takes the lock (waiting as long as it takes, or `--wait`, or `--no-wait`), runs
//! the command with `DISTLOCK_NAME` and `DISTLOCK_FENCING_TOKEN` in its environment,
//! renews the lock every third of `--ttl`, releases it when the command exits, and exits
//! with the command's status. If the lock is lost meanwhile, the command gets SIGTERM, then
//! SIGKILL after `--kill-after`, and `distlock` exits with 75. `distlock --help` lists every
//! option and exit code.
//!
//! Built on the public API of `lock-core`, `lock-redis` and `lock-redlock` only.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backend;
mod cli;
mod commands;
mod exit;
mod run;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = match &cli.command {
        Command::Run(args) => run::run(args, &cli.backend),
        Command::Status(args) => commands::status(args, &cli.backend),
        Command::Wait(args) => commands::wait(args, &cli.backend),
        Command::Unlock(args) => commands::unlock(args, &cli.backend),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// `--help` and `--version` print and succeed; anything else clap rejects is one line on
/// stderr and [`exit::USAGE`].
fn usage_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(exit::USAGE)
        }
        _ => {
            eprintln!(
                "{}",
                exit::Failure::usage(one_line(&e.render().to_string()))
            );
            ExitCode::from(exit::USAGE)
        }
    }
}

/// clap's message without its usage block, on one line.
fn one_line(rendered: &str) -> String {
    let mut line = String::new();
    for part in rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
    {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line.push_str(" (see distlock --help)");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let e = Cli::try_parse_from(["distlock", "run", "--bogus", "x", "y"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'));
        assert!(line.starts_with("unexpected argument '--bogus'"), "{line}");
        let e = Cli::try_parse_from(["distlock", "run"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(line.contains("<NAME>"), "{line}");
    }
}
