//! Limits, defaults and per-call options.

use std::time::Duration;

use crate::cancel::CancelHandle;
use crate::error::LockError;
use crate::loss::{LossReason, LostCallback};
use crate::name::{Key, LockName, MAX_NAME_LEN};

/// Default time to live of a lock: 10 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default wait of [`LockManager::lock`](crate::LockManager::lock): 30 s, three default
/// TTLs, so a waiter outlasts a holder that crashed without releasing.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Default first retry interval: 1 ms (jittered, doubling up to the cap).
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(1);
/// Default cap on the retry interval: 100 ms.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_millis(100);
/// Default key prefix: `lock:`.
pub const DEFAULT_PREFIX: &str = "lock:";

/// The shortest accepted TTL: 1 ms, the resolution of Redis's `PX`.
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest accepted TTL: 30 days. Longer is almost certainly a bug, and it keeps all
/// arithmetic on TTLs far from overflow on every backend.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest accepted finite wait: 30 days. Use `None` to wait forever.
pub const MAX_WAIT: Duration = MAX_TTL;
/// The longest accepted key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;

/// Options for one acquisition, for [`LockManager::lock_with`](crate::LockManager::lock_with).
/// Anything left unset takes the manager's default.
///
/// ```
/// use lock_core::LockOptions;
/// use std::time::Duration;
///
/// let opts = LockOptions::new()
///     .ttl(Duration::from_secs(30))
///     .wait(Some(Duration::from_secs(5)))
///     .reentrant(true);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) wait: Option<Option<Duration>>,
    pub(crate) reentrant: bool,
    pub(crate) auto_renew: Option<bool>,
    pub(crate) max_hold: Option<Option<Duration>>,
    pub(crate) on_lost: Option<LostCallback>,
    pub(crate) cancel: Option<CancelHandle>,
}

impl LockOptions {
    /// Options that take every default of the manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lock's time to live. Defaults to the manager's TTL (10 s unless configured).
    /// Must be between [`MIN_TTL`] and [`MAX_TTL`]; sub-millisecond parts are dropped.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for a held lock: `Some(d)` waits up to `d` (`Duration::ZERO` is
    /// one attempt), `None` waits forever. Defaults to the manager's wait (30 s unless
    /// configured).
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Whether asking again for a lock this thread already holds through the same
    /// manager nests (`true`) or fails at once with
    /// [`LockError::WouldDeadlock`] (`false`, the default). A nested hold shares the
    /// outer hold's token and TTL; the lock is released when the last guard goes.
    pub fn reentrant(mut self, reentrant: bool) -> Self {
        self.reentrant = reentrant;
        self
    }

    /// Whether the manager's renewal thread keeps this lock alive while its guard lives,
    /// extending it to its full TTL every third of it. Defaults to the manager's setting
    /// (off unless [`LockManagerBuilder::auto_renew`](crate::LockManagerBuilder::auto_renew)).
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = Some(on);
        self
    }

    /// Caps the total hold time under renewal: past `cap` renewal stops and the lock
    /// expires by its TTL; `None` renews for as long as the guard lives. Defaults to the
    /// manager's setting (no cap).
    pub fn max_hold(mut self, cap: Option<Duration>) -> Self {
        self.max_hold = Some(cap);
        self
    }

    /// Called once, on the manager's renewal thread, if this lock is renewed and gets
    /// lost before it is released (see [`LostCallback`] for the rule). Defaults to the
    /// manager's callback, if any.
    pub fn on_lost(mut self, f: impl Fn(&LockName, LossReason) + Send + Sync + 'static) -> Self {
        self.on_lost = Some(LostCallback::new(f));
        self
    }

    /// Lets another thread stop this call's wait: when `cancel` is
    /// [cancelled](CancelHandle::cancel), the wait ends at once with
    /// [`LockError::Cancelled`]. Applies to waiting calls (`lock_with`, `lock_all_with`,
    /// `wait_unlocked_with`). Defaults to none.
    pub fn cancel(mut self, cancel: &CancelHandle) -> Self {
        self.cancel = Some(cancel.clone());
        self
    }
}

/// Validates a name and makes its backend key, `prefix + name`.
#[inline]
pub(crate) fn check_name(prefix: &[u8], name: &[u8]) -> Result<Key, LockError> {
    if name.is_empty() {
        return Err(LockError::invalid(None, "lock name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        let shown = LockName::new(&name[..64]);
        return Err(LockError::invalid(
            Some(&shown),
            format!(
                "lock name is {} bytes, longer than the maximum of {MAX_NAME_LEN} (shown truncated)",
                name.len()
            ),
        ));
    }
    Ok(Key::new(prefix, name))
}

/// Validates a TTL and drops its sub-millisecond part.
pub(crate) fn check_ttl(key: Option<&Key>, ttl: Duration) -> Result<Duration, LockError> {
    let name = || key.map(Key::name);
    if ttl < MIN_TTL {
        return Err(LockError::invalid(
            name().as_ref(),
            format!("ttl {ttl:?} is shorter than the minimum of {MIN_TTL:?}"),
        ));
    }
    if ttl > MAX_TTL {
        return Err(LockError::invalid(
            name().as_ref(),
            format!("ttl {ttl:?} is longer than the maximum of {MAX_TTL:?}"),
        ));
    }
    Ok(Duration::from_millis(ttl.as_millis() as u64))
}

pub(crate) fn check_wait(
    key: Option<&Key>,
    wait: Option<Duration>,
) -> Result<Option<Duration>, LockError> {
    match wait {
        Some(w) if w > MAX_WAIT => Err(LockError::invalid(
            key.map(Key::name).as_ref(),
            format!(
                "wait {w:?} is longer than the maximum of {MAX_WAIT:?}; use None to wait forever"
            ),
        )),
        other => Ok(other),
    }
}
