//! The command line: what `distlock` accepts, and its `--help`.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit;

const AFTER_HELP: &str = "\
Run 'distlock help <COMMAND>' or 'distlock <COMMAND> --help' for a command's options.";

const AFTER_LONG_HELP: &str = "\
BACKENDS:
    One --url is one Redis server (redis://, or rediss:// for TLS). Several --url
    (repeated, or one comma-separated list) are independent Redis masters, locked
    together by the Redlock algorithm: a lock needs a majority of them. A URL may carry
    a user and password (redis://user:password@host:6379/0); distlock never prints it.

ENVIRONMENT:
    DISTLOCK_URL    the backend when no --url is given (a comma-separated list for Redlock)

    The command run by 'distlock run' gets, besides distlock's own environment:
    DISTLOCK_NAME             the lock's name
    DISTLOCK_FENCING_TOKEN    this acquisition's fencing token: a number greater than that
                              of every earlier acquisition of the name. Hand it to the
                              resource you protect, so it can refuse a stale holder.

EXIT STATUS:
    run       the command's own exit status; 128+N if it died of signal N
    status    0 if the lock is held, 1 if it is free
    wait      0 once the lock is free
    unlock    0 if a lock was deleted, 1 if there was none
    and, from distlock itself:
      1     the lock is held by someone else (after --no-wait or --wait);
            change it with --conflict-exit-code
     64     bad usage: unknown option, bad duration, bad URL, bad lock name, unreadable file
     69     the backend is unavailable: unreachable, timed out, no quorum of Redlock nodes
     75     the lock was lost while the command ran (the command was signalled)
     77     the backend refused us: wrong password, no permission, TLS handshake refused
    126     the command was found but could not be run
    127     the command was not found";

/// `distlock`: locks that hold across processes and machines, from the shell.
#[derive(Debug, Parser)]
#[command(
    name = "distlock",
    version,
    about = "Run a command under a distributed lock on Redis, like flock(1) across machines",
    long_about = "Run a command under a distributed lock on Redis or Redlock, like flock(1) \
                  across machines.\n\n\
                  'distlock run NAME -- COMMAND' takes the lock NAME, runs COMMAND, renews the \
                  lock every third of its TTL while COMMAND runs and releases it when COMMAND \
                  exits. Two 'distlock run' of one name, on any machines that share the \
                  backend, never run their commands at the same time. If the lock is lost \
                  while COMMAND runs, COMMAND is terminated (SIGTERM, then SIGKILL after \
                  --kill-after) and distlock exits with status 75.",
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub backend: BackendArgs,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a lock, run a command under it, release it when the command exits.
    #[command(
        long_about = "Take the lock NAME, run COMMAND as a child process while renewing the \
                      lock every third of --ttl, release the lock when COMMAND exits, and exit \
                      with COMMAND's status.\n\n\
                      Waits for the lock as long as it takes unless --wait or --no-wait say \
                      otherwise; a lock it could not get exits with the conflict code (1).\n\n\
                      If the lock is lost while COMMAND runs (renewal finds it deleted or taken \
                      over, or its validity runs out because the backend stopped answering), \
                      distlock sends COMMAND SIGTERM, then SIGKILL after --kill-after, and \
                      exits with 75. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent \
                      to distlock are passed on to COMMAND (Ctrl-C at the terminal reaches \
                      COMMAND directly, once); the lock is released once COMMAND has exited. A distlock killed by SIGKILL cannot release: the lock then \
                      expires after its TTL, and COMMAND is not stopped.",
        after_long_help = AFTER_LONG_HELP
    )]
    Run(RunArgs),
    /// Say whether a lock is held, and for how long yet.
    #[command(after_long_help = AFTER_LONG_HELP)]
    Status(NameArgs),
    /// Wait until a lock is free, without taking it.
    #[command(after_long_help = AFTER_LONG_HELP)]
    Wait(WaitArgs),
    /// Delete a lock whoever holds it (administrators only: unsafe).
    #[command(
        long_about = "Delete the lock NAME whoever holds it. UNSAFE: the holder is not told and \
                      may still be working, and the next taker then runs at the same time as \
                      it. Only for a lock whose holder is known to be dead, when its TTL is too \
                      long to wait out. Needs --force.",
        after_long_help = AFTER_LONG_HELP
    )]
    Unlock(UnlockArgs),
}

/// Where the locks live, shared by every command.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Redis URL of the backend; repeat it, or give a comma-separated list, for Redlock
    /// over several masters
    #[arg(
        short,
        long = "url",
        value_name = "URL",
        env = "DISTLOCK_URL",
        hide_env_values = true,
        value_delimiter = ',',
        global = true
    )]
    pub urls: Vec<String>,

    /// Prefix of the keys the locks are stored at
    #[arg(long, value_name = "PREFIX", default_value = lock_core::DEFAULT_PREFIX, global = true)]
    pub prefix: String,

    /// How long connecting to a server may take
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = positive_duration,
        global = true
    )]
    pub connect_timeout: Duration,

    /// Redlock only: how long each operation waits for each node's answer
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "50ms",
        value_parser = positive_duration,
        global = true
    )]
    pub node_timeout: Duration,

    #[cfg(feature = "tls")]
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS options for `rediss://` URLs, as the library's builders take them.
#[cfg(feature = "tls")]
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Trust the CA certificates in this PEM file (instead of the system's) for rediss:// URLs
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Present this client certificate (PEM) to servers that ask for one; needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert", global = true)]
    pub tls_key: Option<std::path::PathBuf>,

    /// DANGEROUS: accept any server certificate (anyone on the path can pose as the server)
    #[arg(long, global = true)]
    pub danger_accept_invalid_certs: bool,
}

/// A lock name, for `status`.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The lock's name
    pub name: String,
}

/// `distlock run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How long the lock lives without renewal; it is renewed every third of it
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub ttl: Duration,

    #[command(flatten)]
    pub wait: Waiting,

    /// Exit status when the lock is held by someone else (like flock -E)
    #[arg(
        short = 'E',
        long,
        value_name = "N",
        default_value_t = exit::CONFLICT,
        value_parser = clap::value_parser!(u8)
    )]
    pub conflict_exit_code: u8,

    /// After a lost lock, how long COMMAND has to exit after SIGTERM before SIGKILL
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub kill_after: Duration,

    /// The lock's name
    pub name: String,

    /// The command to run, and its arguments
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// How long to wait for a lock.
#[derive(Debug, Args)]
pub struct Waiting {
    /// Wait at most this long for the lock (default: as long as it takes)
    #[arg(short, long, value_name = "DURATION", value_parser = duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,

    /// Make one attempt; don't wait if the lock is held
    #[arg(short, long)]
    pub no_wait: bool,
}

impl Waiting {
    /// The wait for the library: `None` is forever, zero is one attempt.
    pub fn bound(&self) -> Option<Duration> {
        match self.no_wait {
            true => Some(Duration::ZERO),
            false => self.wait,
        }
    }
}

/// `distlock wait`'s options.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up after this long (default: as long as it takes)
    #[arg(short, long, value_name = "DURATION", value_parser = duration)]
    pub wait: Option<Duration>,

    /// Exit status when the lock is still held at the end of --wait
    #[arg(
        short = 'E',
        long,
        value_name = "N",
        default_value_t = exit::CONFLICT,
        value_parser = clap::value_parser!(u8)
    )]
    pub conflict_exit_code: u8,

    /// The lock's name
    pub name: String,
}

/// `distlock unlock`'s options.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Confirm that the holder may still be working and that this is unsafe
    #[arg(long)]
    pub force: bool,

    /// The lock's name
    pub name: String,
}

/// A duration such as `30s`, `2m`, `500ms` or `1h 30m`.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (a duration is a number with a unit, like 30s, 2m or 500ms)"))
}

/// A duration of at least a millisecond.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("10").unwrap_err().contains("like 30s"));
        assert!(duration("soon").is_err());
        assert!(positive_duration("0s").is_err());
    }

    #[test]
    fn run_takes_the_command_after_the_name_with_or_without_dashes() {
        let cli = Cli::try_parse_from([
            "distlock", "run", "--ttl", "3s", "job", "--", "ls", "-l", "--ttl",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.name, "job");
        assert_eq!(run.ttl, Duration::from_secs(3));
        assert_eq!(run.command, ["ls", "-l", "--ttl"]);
        let cli = Cli::try_parse_from(["distlock", "run", "-n", "job", "sleep", "1"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.wait.bound(), Some(Duration::ZERO));
        assert_eq!(run.command, ["sleep", "1"]);
    }

    #[test]
    fn urls_repeat_or_come_as_a_list() {
        let cli = Cli::try_parse_from([
            "distlock",
            "status",
            "-u",
            "redis://a/,redis://b/",
            "job",
            "--url",
            "redis://c/",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Status(_)));
        assert_eq!(cli.backend.urls, ["redis://a/", "redis://b/", "redis://c/"]);
    }
}
