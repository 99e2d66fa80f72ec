//! The one public error type and the backend error it wraps.
//!
//! As the Rust API guidelines and `anyhow` expect, each level's `Display` describes that
//! level only; the cause is reached through `source()`, so a printed chain shows every
//! cause once.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::loss::LossReason;
use crate::name::LockName;

/// Everything that can go wrong when taking, holding or releasing a lock.
///
/// Contention is not an error: [`LockManager::try_lock`](crate::LockManager::try_lock)
/// returns `Ok(None)` when somebody else holds the lock. Every variant names the lock it
/// concerns (escaped for display, never a secret). `Display` says what went wrong at this
/// level only; a backend's failure is the [`source`](std::error::Error::source). The
/// alternate form (`{:#}`) appends the whole chain of causes, as `anyhow` does:
/// `backend failed for lock `job`: i/o error: cannot reach …: connection refused`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock stayed held by somebody else for the whole wait.
    Timeout {
        /// The lock that was asked for.
        name: LockName,
        /// How long the call waited before giving up.
        waited: Duration,
    },
    /// The lock had expired or been taken over by another holder when we tried to release,
    /// extend or check it. Nothing of the other holder's was touched.
    NotHeld {
        /// The lock that was lost.
        name: LockName,
    },
    /// The lock is known lost (renewal found it gone, or its validity passed): work done
    /// under it from now on is not exclusive.
    Lost {
        /// The lock that was lost.
        name: LockName,
        /// Why.
        reason: LossReason,
    },
    /// The wait was cancelled through a [`CancelHandle`](crate::CancelHandle) before the
    /// lock could be taken (or freed).
    Cancelled {
        /// The lock that was waited for.
        name: LockName,
    },
    /// The current thread already holds this lock through this manager, and the call did
    /// not ask for re-entrancy; waiting would only wait on ourselves.
    WouldDeadlock {
        /// The lock that is already held.
        name: LockName,
    },
    /// A name, TTL, wait or option was rejected before any I/O.
    InvalidArgument {
        /// The lock the argument was for, when there is one.
        name: Option<LockName>,
        /// What was wrong with it.
        reason: String,
    },
    /// A backend could not be set up (for example an invalid URL, option or certificate).
    /// Not about any one lock.
    Setup {
        /// What the backend reported.
        #[source]
        source: BackendError,
    },
    /// The backend did not answer a call that concerns no one lock: a failed
    /// [`health_check`](crate::LockManager::health_check) or ping. Not a setup failure:
    /// the configuration may be fine and the server merely down.
    Unavailable {
        /// What the backend reported.
        #[source]
        source: BackendError,
    },
    /// The backend could not answer; the lock's state is unknown to this call.
    Backend {
        /// The lock the call was for.
        name: LockName,
        /// What the backend reported; its own cause is kept in its `source()`.
        #[source]
        source: BackendError,
    },
}

impl From<BackendError> for LockError {
    /// A backend error met outside any one lock's call (what `?` does in a backend's
    /// constructor or on its ping): a [`Config`](BackendErrorKind::Config) or
    /// [`Tls`](BackendErrorKind::Tls) error is a [`LockError::Setup`] failure; any other
    /// kind means the backend did not answer, [`LockError::Unavailable`].
    fn from(source: BackendError) -> Self {
        match source.kind() {
            BackendErrorKind::Config | BackendErrorKind::Tls => LockError::Setup { source },
            _ => LockError::Unavailable { source },
        }
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Timeout { name, waited } => {
                write!(f, "timed out after {waited:?} waiting for lock {name}")
            }
            LockError::NotHeld { name } => write!(
                f,
                "lock {name} is no longer held by this guard (it expired or was taken over)"
            ),
            LockError::Lost { name, reason } => write!(f, "lock {name} was lost: {reason}"),
            LockError::Cancelled { name } => write!(f, "waiting for lock {name} was cancelled"),
            LockError::WouldDeadlock { name } => write!(
                f,
                "lock {name} is already held by this thread; waiting would deadlock (ask for a re-entrant lock to nest)"
            ),
            LockError::InvalidArgument { name, reason } => match name {
                Some(n) => write!(f, "invalid argument for lock {n}: {reason}"),
                None => write!(f, "invalid argument: {reason}"),
            },
            LockError::Setup { .. } => f.write_str("backend setup failed"),
            LockError::Unavailable { .. } => f.write_str("backend unavailable"),
            LockError::Backend { name, .. } => write!(f, "backend failed for lock {name}"),
        }?;
        if f.alternate() {
            let mut cause = StdError::source(self);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl LockError {
    /// The lock this error is about, if it concerns one.
    pub fn name(&self) -> Option<&LockName> {
        match self {
            LockError::Timeout { name, .. }
            | LockError::NotHeld { name }
            | LockError::Lost { name, .. }
            | LockError::WouldDeadlock { name }
            | LockError::Cancelled { name }
            | LockError::Backend { name, .. } => Some(name),
            LockError::InvalidArgument { name, .. } => name.as_ref(),
            LockError::Setup { .. } | LockError::Unavailable { .. } => None,
        }
    }

    /// The backend failure's kind, when this is a [`LockError::Backend`],
    /// [`LockError::Setup`] or [`LockError::Unavailable`].
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            LockError::Backend { source, .. }
            | LockError::Setup { source }
            | LockError::Unavailable { source } => Some(source.kind()),
            _ => None,
        }
    }

    pub(crate) fn invalid(name: Option<&LockName>, reason: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            name: name.cloned(),
            reason: reason.into(),
        }
    }
}

/// What kind of failure a backend met. Lets callers tell "retry later" from "fix your
/// configuration" without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The server could not be reached, or the connection broke.
    Io,
    /// The server did not answer within the configured timeout.
    Timeout,
    /// The server refused our credentials.
    Auth,
    /// The credentials were accepted but lack permission for a key or command.
    Permission,
    /// The server answered something the backend did not expect.
    Protocol,
    /// The backend's configuration (for example a URL) is invalid.
    Config,
    /// A TLS connection could not be set up: the server's certificate was not trusted
    /// (unknown CA, expired, issued for another host name), the server refused our client
    /// certificate or asked for one we did not send, or the other side does not speak TLS.
    /// Retrying does not help; the certificates or trust settings need fixing.
    Tls,
    /// A multi-node backend could not reach a quorum because of node failures.
    Quorum,
    /// Anything else.
    Other,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Io => "i/o error",
            BackendErrorKind::Timeout => "timed out",
            BackendErrorKind::Auth => "authentication failed",
            BackendErrorKind::Permission => "permission denied",
            BackendErrorKind::Protocol => "unexpected reply",
            BackendErrorKind::Config => "invalid configuration",
            BackendErrorKind::Tls => "tls handshake failed",
            BackendErrorKind::Quorum => "quorum not reached",
            BackendErrorKind::Other => "backend error",
        })
    }
}

/// A failure reported by a [`LockBackend`](crate::LockBackend): a kind, a message that
/// never contains a secret, and the underlying error kept as `source()`.
///
/// `Display` shows the kind and the message only; the message should describe this level
/// (for example which server or node) and leave the underlying error to `source()`.
#[derive(Debug)]
pub struct BackendError {
    kind: BackendErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    unsent: bool,
}

impl BackendError {
    /// A new error of `kind` with a message. The message must not contain credentials.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
            source: None,
            unsent: false,
        }
    }

    /// Marks the error as met before anything reached the store (no connection could be
    /// had, say), so the operation cannot have taken effect. The manager then skips the
    /// cleanup it otherwise sends after a failed acquire, and the caller hears of the
    /// failure after one timeout instead of two.
    pub fn unsent(mut self) -> Self {
        self.unsent = true;
        self
    }

    /// Whether the operation may have reached the store before it failed: `true` unless
    /// the backend marked the error [`unsent`](BackendError::unsent).
    pub fn may_have_taken_effect(&self) -> bool {
        !self.unsent
    }

    /// Keeps `source` as the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
