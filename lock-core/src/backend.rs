//! The backend trait: one-shot primitives, nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::CancelHandle;
use crate::error::BackendError;
use crate::name::Token;

/// A successful acquisition, as reported by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The fencing token: strictly greater than every earlier one for this key (see the
    /// backend's docs for exactly what it guarantees).
    pub fencing_token: u64,
    /// How long the lock is guaranteed to stay ours, measured from the moment the call
    /// started. A single server reports the TTL; a quorum backend subtracts its elapsed
    /// time and clock drift.
    pub validity: Duration,
}

/// How [`LockBackend::extend`] changes a lock's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    /// Adds this much to the time the lock has left.
    By(Duration),
    /// Sets the time the lock has left to exactly this.
    To(Duration),
}

/// The primitive, one-shot operations a lock store offers.
///
/// Every method is one attempt: it does not wait, retry or sleep (except
/// [`wait_for_release`](LockBackend::wait_for_release), whose whole job is to wait).
/// Waiting, deadlines, backoff, re-entrancy and bookkeeping live once, in
/// [`LockManager`](crate::LockManager).
///
/// Contention is never an error: a held key is `Ok(None)` / `Ok(false)`. An `Err` means
/// the backend could not answer, so the caller does not know the key's state.
///
/// Keys arrive with the manager's prefix already applied and are arbitrary bytes;
/// implementations must treat them as opaque data (never splice them into code).
/// The trait is object-safe: `Box<dyn LockBackend>` is a backend too.
pub trait LockBackend: Send + Sync + 'static {
    /// Takes `key` for `ttl` with `token` if nobody holds it.
    ///
    /// Returns `Ok(None)` if another token holds the key. If `token` itself already holds
    /// it (a retry after a lost reply), implementations should report success again
    /// rather than contention.
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError>;

    /// Deletes `key` if and only if it is held by `token`, atomically. `Ok(false)` means
    /// it had expired or is held by another token, which is left untouched.
    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError>;

    /// [`try_acquire`](LockBackend::try_acquire) from a caller that has just read the
    /// system monotonic clock: `now` is an [`Instant::now`] reading taken before this
    /// call. A backend whose TTLs run on that same clock may count from `now` instead of
    /// reading the clock again (an in-process store: a clock read is a large part of its
    /// cost); counting from a reading taken before the call never lengthens a lock. The
    /// default ignores `now`. The manager calls this instead of `try_acquire` when its
    /// own clock is [`SystemClock`](crate::SystemClock).
    fn try_acquire_at(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        now: Instant,
    ) -> Result<Option<Acquired>, BackendError> {
        let _ = now;
        self.try_acquire(key, token, ttl)
    }

    /// [`release`](LockBackend::release) from a caller that has just read the system
    /// monotonic clock, as for [`try_acquire_at`](LockBackend::try_acquire_at): a backend
    /// on that clock may judge expiry at `now`. The default ignores `now`.
    fn release_at(&self, key: &[u8], token: &Token, now: Instant) -> Result<bool, BackendError> {
        let _ = now;
        self.release(key, token)
    }

    /// Changes the time to live of `key` if and only if it is held by `token`,
    /// atomically. Returns the new validity measured from the start of the call, or
    /// `Ok(None)` if the key expired or is held by another token; an expired key is
    /// never re-created.
    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError>;

    /// The time `key` has left if it is held (by `token`, when one is given; by anybody
    /// otherwise), `None` if it is not. A key held without an expiry (only possible if
    /// something outside this library wrote it) reports [`Duration::MAX`].
    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError>;

    /// Deletes `key` whoever holds it. Only for administrators clearing a lock whose holder
    /// is known to be gone: the holder is not told and may still be working. `Ok(false)`
    /// if the key did not exist.
    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError>;

    /// Checks that the backend answers (for example a `PING` on every node).
    fn health_check(&self) -> Result<(), BackendError>;

    /// A handle on the same store with connections of its own, for the manager's renewal
    /// thread, so renewals never queue behind callers for a pooled connection. `None`
    /// (the default) means `self` is fine to share.
    fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
        None
    }

    /// Blocks for at most `timeout`, returning early if the backend learns that `key`
    /// was released. The manager calls it between attempts; the default just sleeps.
    /// A backend that can be woken (an in-process condition variable, a pub/sub
    /// channel) makes hand-off faster without polling harder.
    fn wait_for_release(&self, key: &[u8], timeout: Duration) {
        let _ = key;
        std::thread::sleep(timeout)
    }

    /// [`wait_for_release`](LockBackend::wait_for_release) for a wait that can be
    /// cancelled: it must also return as soon as `cancel` is cancelled. The manager calls
    /// it instead of `wait_for_release` when the caller passed a
    /// [`CancelHandle`]. The default sleeps on the handle (so it wakes at once on
    /// cancel, but not on a release); a backend that can be woken by a release overrides
    /// it to keep that, registering a waker with [`CancelHandle::on_cancel`].
    fn wait_for_release_cancellable(&self, key: &[u8], timeout: Duration, cancel: &CancelHandle) {
        let _ = key;
        cancel.sleep(timeout);
    }
}

macro_rules! forward_backend {
    ($($ty:ty),*) => {$(
        #[warn(clippy::missing_trait_methods)]
        impl<B: LockBackend + ?Sized> LockBackend for $ty {
            fn try_acquire(
                &self,
                key: &[u8],
                token: &Token,
                ttl: Duration,
            ) -> Result<Option<Acquired>, BackendError> {
                (**self).try_acquire(key, token, ttl)
            }
            fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
                (**self).release(key, token)
            }
            fn try_acquire_at(
                &self,
                key: &[u8],
                token: &Token,
                ttl: Duration,
                now: Instant,
            ) -> Result<Option<Acquired>, BackendError> {
                (**self).try_acquire_at(key, token, ttl, now)
            }
            fn release_at(
                &self,
                key: &[u8],
                token: &Token,
                now: Instant,
            ) -> Result<bool, BackendError> {
                (**self).release_at(key, token, now)
            }
            fn extend(
                &self,
                key: &[u8],
                token: &Token,
                how: Extend,
            ) -> Result<Option<Duration>, BackendError> {
                (**self).extend(key, token, how)
            }
            fn inspect(
                &self,
                key: &[u8],
                token: Option<&Token>,
            ) -> Result<Option<Duration>, BackendError> {
                (**self).inspect(key, token)
            }
            fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
                (**self).force_release(key)
            }
            fn health_check(&self) -> Result<(), BackendError> {
                (**self).health_check()
            }
            fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
                (**self).dedicated()
            }
            fn wait_for_release(&self, key: &[u8], timeout: Duration) {
                (**self).wait_for_release(key, timeout)
            }
            fn wait_for_release_cancellable(
                &self,
                key: &[u8],
                timeout: Duration,
                cancel: &CancelHandle,
            ) {
                (**self).wait_for_release_cancellable(key, timeout, cancel)
            }
        }
    )*};
}

forward_backend!(Arc<B>, Box<B>, &'static B);
