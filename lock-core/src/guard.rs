//! The RAII guard and the current thread's records of what it holds.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::{Acquired, Extend};
use crate::error::LockError;
use crate::manager::Inner;
use crate::name::{Key, LockName, Token};
use crate::options::check_ttl;
use crate::stats::bump;

/// One acquisition, shared by its outer guard and any nested (re-entrant) guards.
pub(crate) struct Hold {
    pub(crate) mgr: Arc<Inner>,
    pub(crate) key: Key,
    /// Made on first use: most holds never show their name.
    name: OnceLock<LockName>,
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) fencing_token: u64,
    pub(crate) acquired_at: Instant,
    /// Renewal stops here (`max_hold`); `None` without a cap or without renewal.
    pub(crate) max_hold_until: Option<Instant>,
    pub(crate) on_lost: Option<LostCallback>,
    /// Whether the hold was handed to the renewal thread; without it nobody else looks
    /// at `state`, and releasing skips its lock.
    shared: bool,
    pub(crate) state: Mutex<HoldState>,
}

pub(crate) struct HoldState {
    /// Until when the backend vouched for the lock, on the manager's clock.
    pub(crate) valid_until: Instant,
    /// Why the lock is known to be lost, once it is.
    pub(crate) lost: Option<LossReason>,
    /// Whether the renewal thread keeps this hold alive.
    pub(crate) renew: bool,
    pub(crate) next_renewal: Instant,
    pub(crate) cap_reached: bool,
    pub(crate) released: bool,
}

impl HoldState {
    pub(crate) fn renewing(&self) -> bool {
        self.renew && !self.released && self.lost.is_none() && !self.cap_reached
    }
}

impl Hold {
    pub(crate) fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }

    pub(crate) fn name(&self) -> &LockName {
        self.name.get_or_init(|| self.key.name())
    }

    /// Records that the lock is gone; the first report counts, logs and calls back.
    pub(crate) fn mark_lost(&self, reason: LossReason) {
        {
            let mut st = self.state.lock();
            if st.released || st.lost.is_some() {
                return;
            }
            st.lost = Some(reason);
        }
        bump(&self.mgr.stats.lost);
        log::warn!(
            "lost lock {} (token {}…): {reason}",
            self.name(),
            self.token.short()
        );
        if let Some(cb) = &self.on_lost {
            (cb.0)(self.name(), reason);
        }
    }

    fn check(&self) -> Result<(), LockError> {
        let st = self.state.lock();
        let reason = match st.lost {
            Some(reason) => reason,
            None if self.mgr.clock.now() >= st.valid_until => {
                if st.cap_reached {
                    LossReason::HoldCapReached
                } else {
                    LossReason::Expired
                }
            }
            None => return Ok(()),
        };
        Err(LockError::Lost {
            name: self.name().clone(),
            reason,
        })
    }
}

/// Why a hold is no longer valid, as reported by [`LockGuard::check`] and the lost-lock
/// callback.
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

/// A callback run (on the renewal thread) when renewal finds a lock lost. It must not
/// block for long: it delays the renewal of other locks.
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

/// How a new hold is to be kept.
pub(crate) struct HoldPlan {
    pub(crate) renew: bool,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) on_lost: Option<LostCallback>,
}

struct Record {
    hold: Arc<Hold>,
    depth: usize,
}

impl Record {
    fn is(&self, mgr_id: u64, key: &[u8]) -> bool {
        self.hold.mgr.id == mgr_id && self.hold.key() == key
    }
}

thread_local! {
    /// What this thread holds. A thread holds few locks at once, so a short vector
    /// searched by (manager id, key) beats a hash map: no key copies, no hashing.
    static HELD: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
}

/// If this thread already holds `key` through `mgr`: a nested guard when `reentrant`,
/// otherwise [`LockError::WouldDeadlock`]. `Ok(None)` if it does not hold it.
pub(crate) fn held_by_this_thread(
    mgr: &Arc<Inner>,
    key: &Key,
    reentrant: bool,
) -> Result<Option<LockGuard>, LockError> {
    let found = HELD
        .try_with(|held| {
            let mut held = held.borrow_mut();
            let rec = held.iter_mut().find(|r| r.is(mgr.id, key.as_bytes()))?;
            if reentrant {
                rec.depth += 1;
                Some(Ok(rec.hold.clone()))
            } else {
                Some(Err(()))
            }
        })
        .ok()
        .flatten();
    match found {
        None => Ok(None),
        Some(Ok(hold)) => Ok(Some(LockGuard::from_hold(hold))),
        Some(Err(())) => Err(LockError::WouldDeadlock { name: key.name() }),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn new_hold(
    mgr: Arc<Inner>,
    key: Key,
    token: Token,
    ttl: Duration,
    acquired: Acquired,
    attempt_start: Instant,
    plan: HoldPlan,
) -> LockGuard {
    let valid_until = attempt_start
        .checked_add(acquired.validity)
        .unwrap_or(attempt_start);
    let max_hold_until = plan
        .max_hold
        .filter(|_| plan.renew)
        .and_then(|d| attempt_start.checked_add(d));
    let hold = Arc::new(Hold {
        mgr,
        key,
        name: OnceLock::new(),
        token,
        ttl,
        fencing_token: acquired.fencing_token,
        acquired_at: attempt_start,
        max_hold_until,
        on_lost: plan.on_lost,
        shared: plan.renew,
        state: Mutex::new(HoldState {
            valid_until,
            lost: None,
            renew: plan.renew,
            next_renewal: match plan.renew {
                true => attempt_start.checked_add(ttl / 3).unwrap_or(attempt_start),
                false => attempt_start,
            },
            cap_reached: false,
            released: false,
        }),
    });
    if plan.renew {
        if let Err(e) = hold.mgr.renew(&hold) {
            // Without a renewal thread the lock still works; it just is not renewed.
            log::warn!("cannot renew lock {}: {e}", hold.name());
            hold.state.lock().renew = false;
        }
    }
    log::debug!(
        "acquired lock {} (token {}…, fencing token {}, valid {:?})",
        hold.name(),
        hold.token.short(),
        hold.fencing_token,
        acquired.validity
    );
    let _ = HELD.try_with(|held| {
        held.borrow_mut().push(Record {
            hold: hold.clone(),
            depth: 1,
        });
    });
    LockGuard::from_hold(hold)
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
/// [`std::sync::MutexGuard`], the guard stays on the thread that took it (it is neither
/// `Send` nor `Sync`). Share the manager between threads, not the guard.
///
/// ```compile_fail
/// # use lock_core::LockManager;
/// # use lock_memory::MemoryBackend;
/// let mgr = LockManager::new(MemoryBackend::new());
/// let guard = mgr.lock("x").unwrap();
/// std::thread::spawn(move || drop(guard)); // error: `LockGuard` cannot be sent between threads
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    hold: Arc<Hold>,
    done: bool,
    _not_send: PhantomData<*const ()>,
}

impl LockGuard {
    fn from_hold(hold: Arc<Hold>) -> Self {
        LockGuard {
            hold,
            done: false,
            _not_send: PhantomData,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &LockName {
        self.hold.name()
    }

    /// The fencing token of this acquisition: strictly greater than that of every earlier
    /// acquisition of this name on the same backend. Pass it to the resource you protect
    /// and have it reject writes carrying a smaller token than it has seen, so a holder
    /// that stalled past its TTL cannot overwrite its successor's work.
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token
    }

    /// The TTL this lock was taken with (what [`renew`](LockGuard::renew) restores).
    pub fn ttl(&self) -> Duration {
        self.hold.ttl
    }

    /// How long the lock is still guaranteed to be ours, by the manager's monotonic clock,
    /// counted conservatively from before the acquiring (or extending) request was sent.
    /// Zero once it has passed. Asks nothing of the backend.
    pub fn remaining(&self) -> Duration {
        let until = self.hold.state.lock().valid_until;
        until.saturating_duration_since(self.hold.mgr.clock.now())
    }

    /// `Ok(())` while the lock is still valid as far as this process knows; an error once
    /// it is known lost or its validity has passed. Asks nothing of the backend, so it is
    /// cheap enough to call between every step of long work:
    ///
    /// ```
    /// # use lock_core::{LockManager, LockOptions, LockError};
    /// # use lock_memory::MemoryBackend;
    /// # fn main() -> Result<(), LockError> {
    /// # let mgr = LockManager::new(MemoryBackend::new());
    /// let guard = mgr.lock_with("import", LockOptions::new().auto_renew(true))?;
    /// for batch in 0..3 {
    ///     guard.check()?;          // stop as soon as the lock is lost
    ///     let _ = batch;           // ... work ...
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Detection is cooperative: nothing stops code that does not check. For writes that
    /// must never come from a stale holder, pass the [fencing token](LockGuard::fencing_token)
    /// to the resource as well.
    ///
    /// # Errors
    /// [`LockError::Lost`] with the [`LossReason`].
    pub fn check(&self) -> Result<(), LockError> {
        self.hold.check()
    }

    /// Whether [`check`](LockGuard::check) would fail.
    pub fn is_lost(&self) -> bool {
        self.hold.check().is_err()
    }

    /// Whether the manager's renewal thread is keeping this lock alive right now.
    pub fn is_renewing(&self) -> bool {
        self.hold.state.lock().renewing()
    }

    /// Asks the backend whether the lock is still held with this guard's token.
    ///
    /// # Errors
    /// [`LockError::Backend`] if the backend could not answer.
    pub fn is_held(&self) -> Result<bool, LockError> {
        let h = &self.hold;
        let held = h
            .mgr
            .backend
            .inspect(h.key(), Some(&h.token))
            .map_err(|source| LockError::Backend {
                name: h.name().clone(),
                source,
            })?;
        if held.is_none() {
            h.mark_lost(LossReason::TakenOver);
        }
        Ok(held.is_some())
    }

    /// Adds `by` to the time the lock has left, if it is still ours.
    ///
    /// # Errors
    /// [`LockError::NotHeld`] if it expired or was taken over (nothing is re-created),
    /// [`LockError::InvalidArgument`] for `by` out of the TTL range, [`LockError::Backend`]
    /// if the backend could not answer.
    pub fn extend(&self, by: Duration) -> Result<(), LockError> {
        let by = check_ttl(Some(&self.hold.key), by)?;
        self.change_ttl(Extend::By(by))
    }

    /// Sets the time the lock has left to exactly `ttl`, if it is still ours.
    ///
    /// # Errors
    /// As [`extend`](LockGuard::extend).
    pub fn set_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        let ttl = check_ttl(Some(&self.hold.key), ttl)?;
        self.change_ttl(Extend::To(ttl))
    }

    /// Resets the time the lock has left to the TTL it was taken with, if it is still ours.
    ///
    /// # Errors
    /// As [`extend`](LockGuard::extend).
    pub fn renew(&self) -> Result<(), LockError> {
        self.change_ttl(Extend::To(self.hold.ttl))
    }

    fn change_ttl(&self, how: Extend) -> Result<(), LockError> {
        let h = &self.hold;
        let start = h.mgr.clock.now();
        match h.mgr.backend.extend(h.key(), &h.token, how) {
            Ok(Some(validity)) => {
                let mut st = h.state.lock();
                st.valid_until = start.checked_add(validity).unwrap_or(start);
                Ok(())
            }
            Ok(None) => {
                h.state.lock().valid_until = start;
                h.mark_lost(LossReason::TakenOver);
                Err(LockError::NotHeld {
                    name: h.name().clone(),
                })
            }
            Err(source) => Err(LockError::Backend {
                name: h.name().clone(),
                source,
            }),
        }
    }

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
        let h = &self.hold;
        let last = HELD
            .try_with(|held| {
                let mut held = held.borrow_mut();
                match held.iter().position(|r| Arc::ptr_eq(&r.hold, h)) {
                    Some(i) => {
                        held[i].depth -= 1;
                        if held[i].depth == 0 {
                            held.swap_remove(i);
                            true
                        } else {
                            false
                        }
                    }
                    // No record (the thread's storage is being torn down): release.
                    _ => true,
                }
            })
            .unwrap_or(true);
        if !last {
            return Ok(());
        }
        if h.shared {
            // Stop renewal before deleting, so it cannot report the deletion as a loss.
            h.state.lock().released = true;
        }
        let stats = &h.mgr.stats;
        stats.add_hold(h.mgr.clock.now().saturating_duration_since(h.acquired_at));
        let result = match h.mgr.backend.release(h.key(), &h.token) {
            Ok(true) => {
                log::debug!("released lock {} (token {}…)", h.name(), h.token.short());
                return Ok(());
            }
            Ok(false) => LockError::NotHeld {
                name: h.name().clone(),
            },
            Err(source) => LockError::Backend {
                name: h.name().clone(),
                source,
            },
        };
        bump(&stats.failed_releases);
        Err(result)
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

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.hold;
        let (lost, until) = {
            let st = h.state.lock();
            (st.lost, st.valid_until)
        };
        f.debug_struct("LockGuard")
            .field("name", h.name())
            .field("token", &h.token)
            .field("fencing_token", &h.fencing_token)
            .field(
                "remaining",
                &until.saturating_duration_since(h.mgr.clock.now()),
            )
            .field("lost", &lost)
            .finish()
    }
}
