//! Exit codes, and the one-line failures that end `distlock` with them.

use std::fmt;

use lock_core::{BackendErrorKind, LockError};

/// The lock is held by somebody else: the default of `--conflict-exit-code`, as `flock -E`.
pub const CONFLICT: u8 = 1;
/// `status`: the lock is free. `unlock`: there was no lock to delete.
pub const FREE: u8 = 1;
/// Bad usage: unknown option, bad duration, URL or name, unreadable file (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// The backend is unavailable: unreachable, timed out, no quorum (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// Something that cannot happen did (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// The lock was lost while the command ran (`EX_TEMPFAIL`: try again later).
pub const LOST: u8 = 75;
/// The backend refused us: wrong password, no permission, TLS refused (`EX_NOPERM`).
pub const DENIED: u8 = 77;
/// The command was found but could not be run, as shells say.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found, as shells say.
pub const NOT_FOUND: u8 = 127;

/// Why `distlock` stops on its own account: an exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong, one line, never a password.
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A usage failure.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the message carries.
        let line = self.message.replace(['\n', '\r'], " ");
        write!(f, "distlock: {line}")
    }
}

/// The exit code for a library error met outside of contention.
pub fn code_of(e: &LockError) -> u8 {
    match e {
        LockError::InvalidArgument { .. } => USAGE,
        LockError::NotHeld { .. } | LockError::Lost { .. } => LOST,
        LockError::Setup { source }
        | LockError::Unavailable { source }
        | LockError::Backend { source, .. } => match source.kind() {
            BackendErrorKind::Config => USAGE,
            BackendErrorKind::Auth | BackendErrorKind::Permission | BackendErrorKind::Tls => DENIED,
            _ => UNAVAILABLE,
        },
        _ => SOFTWARE,
    }
}

impl From<LockError> for Failure {
    fn from(e: LockError) -> Self {
        Failure::new(code_of(&e), format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::BackendError;

    #[test]
    fn codes_are_distinct() {
        let mut codes = [
            CONFLICT,
            USAGE,
            UNAVAILABLE,
            SOFTWARE,
            LOST,
            DENIED,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ];
        codes.sort_unstable();
        let n = codes.len();
        let mut unique = codes.to_vec();
        unique.dedup();
        assert_eq!(unique.len(), n);
    }

    #[test]
    fn backend_kinds_map_to_their_codes() {
        let backend = |kind| LockError::Backend {
            name: lock_core::LockName::new("x"),
            source: BackendError::new(kind, "m"),
        };
        assert_eq!(code_of(&backend(BackendErrorKind::Io)), UNAVAILABLE);
        assert_eq!(code_of(&backend(BackendErrorKind::Quorum)), UNAVAILABLE);
        assert_eq!(code_of(&backend(BackendErrorKind::Auth)), DENIED);
        assert_eq!(code_of(&backend(BackendErrorKind::Config)), USAGE);
    }

    #[test]
    fn a_failure_is_one_line() {
        let f = Failure::usage("a\nb");
        assert_eq!(f.to_string(), "distlock: a b");
    }
}
