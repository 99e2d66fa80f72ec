//! `distlock run`: take the lock, run the command as a child, renew, watch, release.

use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use lock_core::{LockError, LockGuard, LockOptions, LossReason};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

use crate::cli::{BackendArgs, RunArgs};
use crate::exit::{self, Failure};

/// Signals sent to `distlock` that it passes on to the command.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];
/// The longest the loop sleeps without looking at the child and the lock: a backstop,
/// since SIGCHLD and the renewal thread's report wake it up at once.
const BACKSTOP: Duration = Duration::from_millis(500);

enum Event {
    /// A signal to `distlock` that the command should get too.
    Forward(i32),
    /// A signal that needs no passing on: SIGCHLD, or one the kernel sent to the whole
    /// foreground process group (Ctrl-C at the terminal), which the command got already.
    Wake,
    /// The renewal thread found the lock lost.
    Lost(LossReason),
}

/// Where the child is in being stopped after the lock was lost.
enum Stopping {
    /// Not being stopped.
    No,
    /// Sent SIGTERM; SIGKILL at this instant.
    Terminated { kill_at: Instant },
    /// Sent SIGKILL.
    Killed,
}

/// Runs `distlock run` and returns the exit code.
///
/// # Errors
/// A [`Failure`] for everything that ends it before the command could run: bad input,
/// the backend, contention.
pub fn run(args: &RunArgs, backend: &BackendArgs) -> Result<u8, Failure> {
    let (events, inbox) = mpsc::channel::<Event>();
    let on_lost = events.clone();
    let mgr = crate::backend::plain_manager(backend)?;
    let options = LockOptions::new()
        .ttl(args.ttl)
        .wait(args.wait.bound())
        .auto_renew(true)
        .on_lost(move |_, reason| {
            let _ = on_lost.send(Event::Lost(reason));
        });
    let Some((command, command_args)) = args.command.split_first() else {
        return Err(Failure::usage("no command to run"));
    };
    let program = command.to_string_lossy().into_owned();
    let guard = match mgr.lock_with(&args.name, options) {
        Ok(guard) => guard,
        Err(LockError::Timeout { name, waited }) => {
            let how = match args.wait.no_wait {
                true => "--no-wait".to_owned(),
                false => format!(
                    "gave up after {}",
                    humantime::format_duration(round(waited))
                ),
            };
            return Err(Failure::new(
                args.conflict_exit_code,
                format!(
                    "pid {} could not get lock {name} to run `{program}`: \
                     it is held by someone else ({how})",
                    std::process::id()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };

    // Signals are caught from here on (before, the default action ends distlock, which
    // holds nothing yet): any that arrive before the child exists are passed on to it.
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED.iter().copied().chain([SIGCHLD]))
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot catch signals: {e}")))?;
    let signal_handle = signals.handle();
    let signal_thread = {
        let events = events.clone();
        std::thread::Builder::new()
            .name("distlock-signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let event = match (origin.signal, origin.cause) {
                        (SIGCHLD, _) | (_, Cause::Kernel) => Event::Wake,
                        (signal, _) => Event::Forward(signal),
                    };
                    if events.send(event).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot start a thread: {e}")))?
    };

    let spawned = Command::new(command)
        .args(command_args)
        .env("DISTLOCK_NAME", &args.name)
        .env("DISTLOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .spawn();
    let result = match spawned {
        Ok(child) => supervise(child, &guard, &inbox, args, &program),
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
            Err(Failure::new(code, format!("cannot run `{program}`: {e}")))
        }
    };
    signal_handle.close();
    let _ = signal_thread.join();

    match result {
        Ok(Ended::Exited(status)) => finish(guard, status, &program),
        Ok(Ended::Lost) => Ok(exit::LOST),
        Err(failure) => {
            drop(guard);
            Err(failure)
        }
    }
}

/// How the child's run ended.
enum Ended {
    /// It exited with the lock held throughout, as far as renewal could tell.
    Exited(ExitStatus),
    /// The lock was lost, the child was stopped, and it has been said on stderr.
    Lost,
}

/// Waits for the child, passing signals on, and stops it if the lock is lost.
fn supervise(
    mut child: Child,
    guard: &LockGuard,
    inbox: &mpsc::Receiver<Event>,
    args: &RunArgs,
    program: &str,
) -> Result<Ended, Failure> {
    let pid = child.id();
    let mut lost: Option<String> = None;
    let mut stopping = Stopping::No;
    loop {
        // The child is reaped only here, so every signal below reaches our own child,
        // never a process that has since taken its pid.
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(reason) = lost {
                    eprintln!(
                        "distlock: `{program}` (pid {pid}) {} after the lock was lost ({reason}); \
                         exiting with {}",
                        describe(status),
                        exit::LOST
                    );
                    return Ok(Ended::Lost);
                }
                return Ok(Ended::Exited(status));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::new(
                    exit::SOFTWARE,
                    format!("cannot wait for `{program}` (pid {pid}): {e}"),
                ));
            }
        }
        if lost.is_none() {
            if let Err(LockError::Lost { reason, .. }) = guard.check() {
                lost = Some(reason.to_string());
            }
        }
        if let (Some(reason), Stopping::No) = (&lost, &stopping) {
            eprintln!(
                "distlock: lost lock {} while `{program}` (pid {pid}) ran: {reason}; \
                 sending it SIGTERM",
                guard.name()
            );
            send(pid, SIGTERM);
            stopping = Stopping::Terminated {
                kill_at: Instant::now() + args.kill_after,
            };
        }
        let now = Instant::now();
        let timeout = match stopping {
            Stopping::No => guard.remaining().min(BACKSTOP),
            Stopping::Terminated { kill_at } if kill_at <= now => {
                eprintln!(
                    "distlock: `{program}` (pid {pid}) still runs {} after SIGTERM; sending it SIGKILL",
                    humantime::format_duration(args.kill_after)
                );
                let _ = child.kill();
                stopping = Stopping::Killed;
                BACKSTOP
            }
            Stopping::Terminated { kill_at } => (kill_at - now).min(BACKSTOP),
            Stopping::Killed => BACKSTOP,
        };
        match inbox.recv_timeout(timeout.max(Duration::from_millis(1))) {
            Ok(Event::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::Forward(signal)) => send(pid, signal),
            Ok(Event::Lost(reason)) => {
                lost.get_or_insert_with(|| reason.to_string());
            }
            // We hold a sender ourselves, so the channel cannot close.
            Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

/// Releases the lock after the child exited, and picks the exit code.
fn finish(guard: LockGuard, status: ExitStatus, program: &str) -> Result<u8, Failure> {
    let code = status_code(status);
    let name = guard.name().clone();
    match guard.release() {
        Ok(()) => Ok(code),
        Err(LockError::NotHeld { .. }) => {
            eprintln!(
                "distlock: lock {name} had expired or been taken over when `{program}` {}: \
                 it did not run under the lock throughout; exiting with {}",
                describe(status),
                exit::LOST
            );
            Ok(exit::LOST)
        }
        Err(e) => {
            eprintln!("distlock: could not release: {e:#}; the lock expires after its TTL");
            Ok(code)
        }
    }
}

/// The exit code a shell would report for `status`.
fn status_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => exit::SOFTWARE,
    }
}

/// "exited with 3", "was killed by signal 15 (SIGTERM)".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("was killed by signal {signal} ({s})"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}

/// Sends `signal` to the child `pid`, which has not been reaped yet.
fn send(pid: u32, signal: i32) {
    let (Ok(pid), Ok(signal)) = (i32::try_from(pid), Signal::try_from(signal)) else {
        return;
    };
    // It may have exited already (a zombie until reaped): nothing to do then.
    let _ = kill(Pid::from_raw(pid), signal);
}

/// `d` to the millisecond, for messages.
fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_shells_read_them() {
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(SIGTERM)), 143);
        assert_eq!(
            describe(ExitStatus::from_raw(SIGTERM)),
            "was killed by signal 15 (SIGTERM)"
        );
        assert_eq!(describe(ExitStatus::from_raw(0)), "exited with 0");
    }
}
