//! The RAII guards: [`LockGuard`], which stays on its thread, and [`SendGuard`], which
//! can be handed to another. Both are thin handles on a hold (see `hold.rs`).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Extend;
use crate::error::LockError;
use crate::hold::Hold;
use crate::name::LockName;
use crate::options::check_ttl;
use crate::records;

/// The methods both guards share, with their docs, written once.
macro_rules! guard_methods {
    () => {
        /// The lock's name.
        pub fn name(&self) -> &LockName {
            self.hold.name()
        }

        /// The fencing token of this acquisition: strictly greater than that of every
        /// earlier acquisition of this name on the same backend (see the backend's docs
        /// for exactly what it promises). Pass it to the resource you protect and have it
        /// reject writes carrying a smaller token than it has seen, so a holder that
        /// stalled past its TTL cannot overwrite its successor's work.
        pub fn fencing_token(&self) -> u64 {
            self.hold.fencing_token
        }

        /// The TTL this lock was taken with (what `renew` restores).
        pub fn ttl(&self) -> Duration {
            self.hold.ttl
        }

        /// How long the lock is still guaranteed to be ours, by the manager's monotonic
        /// clock, counted conservatively from before the acquiring (or extending) request
        /// was sent. Zero once it has passed. Asks nothing of the backend.
        pub fn remaining(&self) -> Duration {
            self.hold.remaining()
        }

        /// `Ok(())` while the lock is still valid as far as this process knows; an error
        /// once it is known lost or its validity has passed (and from then on: lost is
        /// final). Asks nothing of the backend, so it is cheap enough to call between
        /// every step of long work.
        ///
        /// Detection is cooperative: nothing stops code that does not check. For writes
        /// that must never come from a stale holder, pass the fencing token to the
        /// resource as well.
        ///
        /// # Errors
        /// [`LockError::Lost`] with the [`LossReason`](crate::LossReason).
        pub fn check(&self) -> Result<(), LockError> {
            self.hold.check_err()
        }

        /// Whether `check` would fail.
        pub fn is_lost(&self) -> bool {
            self.hold.check().is_err()
        }

        /// Whether the manager's renewal thread is keeping this lock alive right now.
        pub fn is_renewing(&self) -> bool {
            self.hold.is_renewing()
        }

        /// Asks the backend whether the lock is still held with this guard's token. A
        /// `false` marks the hold lost.
        ///
        /// # Errors
        /// [`LockError::Backend`] if the backend could not answer.
        pub fn is_held(&self) -> Result<bool, LockError> {
            self.hold.is_held()
        }

        /// Adds `by` to the time the lock has left, if it is still ours. The time left
        /// may not pass [`MAX_TTL`](crate::MAX_TTL).
        ///
        /// # Errors
        /// [`LockError::NotHeld`] if it expired or was taken over (nothing is
        /// re-created), [`LockError::Lost`] if this hold was already found lost,
        /// [`LockError::InvalidArgument`] for `by` out of the TTL range or a result past
        /// `MAX_TTL`, [`LockError::Backend`] if the backend could not answer.
        pub fn extend(&self, by: Duration) -> Result<(), LockError> {
            let by = check_ttl(Some(self.hold.lock_key()), by)?;
            self.hold.change_ttl(Extend::By(by))
        }

        /// Sets the time the lock has left to exactly `ttl`, if it is still ours.
        ///
        /// # Errors
        /// As `extend`.
        pub fn set_ttl(&self, ttl: Duration) -> Result<(), LockError> {
            let ttl = check_ttl(Some(self.hold.lock_key()), ttl)?;
            self.hold.change_ttl(Extend::To(ttl))
        }

        /// Resets the time the lock has left to the TTL it was taken with, if it is
        /// still ours.
        ///
        /// # Errors
        /// As `extend`.
        pub fn renew(&self) -> Result<(), LockError> {
            self.hold.change_ttl(Extend::To(self.hold.ttl))
        }
    };
}

/// Proof that this thread holds a named lock; releases it when dropped.
///
/// Dropping the guard releases the lock with one bounded backend call (the backend's own
/// timeouts apply); it never panics, and a failed release is logged at `warn` and left to
/// the TTL. Call [`release`](LockGuard::release) instead to learn whether the lock was
/// still ours.
///
/// # Why the guard is not `Send`
/// The manager records, per thread, which locks the thread holds, so that asking again
/// for a held lock fails at once instead of waiting on itself (and so re-entrant holds
/// can nest). A guard moved to another thread would leave that record behind, so, like
/// [`std::sync::MutexGuard`], the guard stays on the thread that took it. To hand a held
/// lock to another thread (a pool, `spawn_blocking`), turn it into a [`SendGuard`] with
/// [`into_send`](LockGuard::into_send).
///
/// ```compile_fail
/// # use lock_core::LockManager;
/// # use lock_memory::MemoryBackend;
/// let mgr = LockManager::new(MemoryBackend::new());
/// let guard = mgr.lock("x").unwrap();
/// std::thread::spawn(move || drop(guard)); // error: `LockGuard` cannot be sent between threads
/// ```
///
/// # Forgetting a guard
/// As with [`std::mem::forget`] of a `MutexGuard`, forgetting a guard (or leaking it in a
/// cycle) never releases the lock: it stays taken until its TTL runs out, and the
/// forgotten guard's share of the hold (its handle on the backend) is leaked. It does not
/// block its thread beyond that: once the hold's validity has passed, the thread's record
/// of it is dropped the next time it is met, and the thread can take the name again.
/// **With renewal on**, the renewal thread keeps a forgotten hold alive like any other:
/// the lock stays taken for as long as the process runs (or until the hold cap,
/// [`LockOptions::max_hold`](crate::LockOptions::max_hold), stops renewal), just as a
/// forgotten `MutexGuard` leaves its mutex locked forever; meanwhile its thread gets
/// [`LockError::WouldDeadlock`] for the name, which is the truth.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    hold: Arc<Hold>,
    done: bool,
    _not_send: PhantomData<*const ()>,
}

impl LockGuard {
    pub(crate) fn new(hold: Arc<Hold>) -> Self {
        LockGuard {
            hold,
            done: false,
            _not_send: PhantomData,
        }
    }

    guard_methods!();

    /// Releases the lock now and reports whether it was still ours.
    ///
    /// For a nested (re-entrant) guard this only ends the nesting; the lock is released
    /// by the last guard of the hold.
    ///
    /// # Errors
    /// [`LockError::NotHeld`] if the lock had expired or been taken over (the other
    /// holder's key is left untouched), [`LockError::Backend`] if the backend could not
    /// answer (the lock then expires by its TTL).
    pub fn release(mut self) -> Result<(), LockError> {
        self.done = true;
        self.release_inner()
    }

    fn release_inner(&self) -> Result<(), LockError> {
        records::leave(&self.hold);
        self.hold.drop_guard()
    }

    /// Turns this guard into a [`SendGuard`] that can be moved to, and released, extended
    /// or renewed on, another thread. It leaves this thread's records: this thread asking
    /// for the name again then waits like any other taker (no
    /// [`LockError::WouldDeadlock`], no nesting). Everything else (renewal, `check()`,
    /// fencing, release on drop) works the same.
    ///
    /// If nested (re-entrant) guards of this thread share the hold, they keep the record,
    /// and the lock is released when the last guard of the hold goes, on whichever thread.
    pub fn into_send(mut self) -> SendGuard {
        records::leave(&self.hold);
        self.done = true;
        SendGuard {
            hold: self.hold.clone(),
            done: false,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = self.release_inner() {
            log::warn!("releasing on drop failed: {e}");
        }
    }
}

fn debug_hold(what: &str, hold: &Hold, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let (lost, remaining) = hold.debug_state();
    f.debug_struct(what)
        .field("name", hold.name())
        .field("token", &hold.token)
        .field("fencing_token", &hold.fencing_token)
        .field("remaining", &remaining)
        .field("lost", &lost)
        .finish()
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_hold("LockGuard", &self.hold, f)
    }
}

/// A held lock that can move between threads, from [`LockGuard::into_send`].
///
/// It is `Send` and `Sync` and works like a [`LockGuard`] (renewal, `check()`, fencing,
/// extend, release on drop), on whichever thread has it; it is in no thread's records, so
/// it has no re-entrancy and no [`LockError::WouldDeadlock`] detection.
///
/// ```
/// # use lock_core::{LockError, LockManager};
/// # use lock_memory::MemoryBackend;
/// # fn main() -> Result<(), LockError> {
/// let mgr = LockManager::new(MemoryBackend::new());
/// let guard = mgr.lock("upload")?.into_send();
/// let worker = std::thread::spawn(move || {
///     guard.check()?;       // ... work under the lock on the worker ...
///     guard.release()       // released here, on the worker
/// });
/// worker.join().unwrap()?;
/// assert!(!mgr.is_locked("upload")?);
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct SendGuard {
    hold: Arc<Hold>,
    done: bool,
}

impl SendGuard {
    guard_methods!();

    /// Releases the lock now and reports whether it was still ours (if nested guards
    /// still share the hold, this only gives up this guard's share).
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    pub fn release(mut self) -> Result<(), LockError> {
        self.done = true;
        self.hold.drop_guard()
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = self.hold.drop_guard() {
            log::warn!("releasing on drop failed: {e}");
        }
    }
}

impl fmt::Debug for SendGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_hold("SendGuard", &self.hold, f)
    }
}
