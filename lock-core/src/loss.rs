//! Why a hold ends without its owner releasing it, and the callback told about it.

use std::fmt;
use std::sync::Arc;

use crate::name::LockName;

/// Why a hold is no longer valid, as reported by [`LockGuard::check`](crate::LockGuard::check)
/// and the lost-lock callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// Its validity ran out without being renewed.
    Expired,
    /// The backend said the key is gone or holds another token.
    TakenOver,
    /// Renewal kept failing (the backend did not answer) until the validity ran out.
    RenewalFailed,
    /// Renewal stopped at the hold cap (`max_hold`) and the TTL then ran out.
    HoldCapReached,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::Expired => "its validity ran out",
            LossReason::TakenOver => "it expired or was taken over on the backend",
            LossReason::RenewalFailed => "renewal failed until its validity ran out",
            LossReason::HoldCapReached => "renewal stopped at the hold cap and its TTL ran out",
        })
    }
}

/// The lost-lock callback ([`LockOptions::on_lost`](crate::LockOptions::on_lost),
/// [`LockManagerBuilder::on_lost`](crate::LockManagerBuilder::on_lost)).
///
/// **The rule:** it runs once per *renewed* hold that is lost before it is released,
/// always on the manager's renewal thread, whoever found the loss (the renewal thread
/// itself, or a call of the owner such as [`LockGuard::is_held`](crate::LockGuard::is_held)
/// or [`LockGuard::check`](crate::LockGuard::check), which also report it through their
/// result). It never runs on a caller's thread, so a callback may take a lock that the
/// owner holds while it calls the guard: it then waits for the owner, it does not
/// deadlock. Holds without renewal have no thread watching them; their owner learns of a
/// loss from the guard's calls alone, and the callback is not called.
///
/// A panic in the callback is caught and logged; renewal of other locks goes on. Keep it
/// short: while it runs, other locks of the manager are not renewed.
#[derive(Clone)]
pub struct LostCallback(pub(crate) Arc<LostFn>);

type LostFn = dyn Fn(&LockName, LossReason) + Send + Sync;

impl LostCallback {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&LockName, LossReason) + Send + Sync + 'static) -> Self {
        LostCallback(Arc::new(f))
    }
}

impl fmt::Debug for LostCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LostCallback")
    }
}
