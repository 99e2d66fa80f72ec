//! A hold's life, in one place: one acquisition from the backend's grant to its release,
//! as a state machine that renewal, release, `check()`, re-entrancy and the lost-lock
//! callback all go through.
//!
//! ```text
//!              renewal due and        now >= valid_until
//!   Held ───── past the cap ─────> Capped ───────────────┐
//!    │  ^ renewed                                         │
//!    │  └──────┘                                          v
//!    ├── backend says gone / renewal failed to the end / expired ──> Lost { reason }
//!    │                                                                  │
//!    └── owner releases (from any phase) ──> Released <─────────────────┘
//! ```
//!
//! - **When does renewal stop?** When the phase leaves `Held`: the owner released
//!   (`Released`), the hold cap was reached (`Capped`, the lock then runs out with its
//!   TTL), or the hold is `Lost`. A hold renews only if it was taken with renewal on.
//! - **Lost is final.** Once this process has said a hold is lost it never says it is
//!   held again: `check()` keeps failing even if a later `extend` finds the key.
//! - **The callback** runs once per renewed hold that gets lost, on the renewal thread
//!   (see [`LostCallback`](crate::LostCallback)): a loss is recorded here as not yet
//!   reported, and the renewal thread reports it.
//! - **No guard for a dead hold:** re-entrancy asks [`Hold::check`] first.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::{Acquired, Extend, LockBackend};
use crate::clock::Clock;
use crate::error::{BackendError, LockError};
use crate::loss::{LossReason, LostCallback};
use crate::name::{Key, LockName, Token};
use crate::options::MAX_TTL;
use crate::stats::{bump, Stats};

/// What every hold of one manager shares: the backend, the clock, the counters.
pub(crate) struct Ctx {
    /// Tells managers apart in the thread-local records.
    pub(crate) id: u64,
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Whether `clock` is the [`SystemClock`](crate::SystemClock), so its readings can be
    /// handed to the backend (`try_acquire_at`, `release_at`) instead of it reading again.
    pub(crate) system_clock: bool,
    pub(crate) stats: Arc<Stats>,
}

impl Ctx {
    /// Asks the backend for `key`, for an attempt that started at `now` (a reading of
    /// this context's clock).
    pub(crate) fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        now: Instant,
    ) -> Result<Option<Acquired>, BackendError> {
        match self.system_clock {
            true => self.backend.try_acquire_at(key, token, ttl, now),
            false => self.backend.try_acquire(key, token, ttl),
        }
    }

    /// Releases `key` on the backend, from a release that started at `now`.
    fn release(&self, key: &[u8], token: &Token, now: Instant) -> Result<bool, BackendError> {
        match self.system_clock {
            true => self.backend.release_at(key, token, now),
            false => self.backend.release(key, token),
        }
    }
}

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Held; the renewal thread renews it at `renew_at` (`None`: it is not renewed).
    Held { renew_at: Option<Instant> },
    /// Renewal stopped at the hold cap; the lock runs out with its TTL.
    Capped,
    /// Known lost. `reported` once the renewal thread has called back (or has nothing
    /// to call back).
    Lost { reason: LossReason, reported: bool },
    /// Released by its owner.
    Released,
}

struct State {
    phase: Phase,
    /// Until when the backend vouched for the lock, on the manager's clock: the lower
    /// bound that `remaining()` and `check()` use.
    valid_until: Instant,
    /// Until when the store keeps the key at most (the TTL asked for, counted from when
    /// the store set it, up to the latency of the acquiring request): the upper bound
    /// that keeps `extend` within `MAX_TTL` on the store.
    store_until: Instant,
}

/// How a new hold is to be kept.
pub(crate) struct Plan {
    /// Renewed by this renewal thread (kept alive by the hold), or not renewed.
    pub(crate) renewer: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) on_lost: Option<LostCallback>,
}

/// One acquisition, shared by its guard(s) and, when renewed, the renewal thread.
pub(crate) struct Hold {
    pub(crate) ctx: Arc<Ctx>,
    key: Key,
    /// Made on first use: most holds never show their name.
    name: OnceLock<LockName>,
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) fencing_token: u64,
    acquired_at: Instant,
    /// Renewal stops here (`max_hold`); `None` without a cap or without renewal.
    cap: Option<Instant>,
    on_lost: Option<LostCallback>,
    /// How many guards share the hold (nested re-entrant guards, on any thread); the lock
    /// is released by the last.
    guards: AtomicUsize,
    /// Keeps the renewal thread running while a renewed hold lives.
    _renewer: Option<Arc<dyn Any + Send + Sync>>,
    state: Mutex<State>,
}

/// What the renewal thread is to do with a hold next.
pub(crate) enum Step {
    /// Nothing before this instant.
    WaitUntil(Instant),
    /// Extend it now.
    Renew,
    /// Call the lost-lock callback with this reason (once), then forget it.
    Report(LossReason),
    /// Not the renewal thread's business any more.
    Forget,
}

/// How often renewal runs: every third of the TTL, so two renewals can fail before the
/// lock runs out.
fn renewal_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// How long a transient renewal failure waits before the next try.
fn retry_step(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

impl Hold {
    /// A hold granted by the backend for an attempt that started at `attempt_start`,
    /// built straight into its `Arc` (built on the stack and moved, it cost a copy of the
    /// whole hold per lock).
    pub(crate) fn new_arc(
        ctx: Arc<Ctx>,
        key: Key,
        token: Token,
        ttl: Duration,
        acquired: Acquired,
        attempt_start: Instant,
        plan: Plan,
    ) -> Arc<Self> {
        let renewed = plan.renewer.is_some();
        let store_until = add(attempt_start, ttl);
        // Validity is never above the TTL we asked for, whatever a backend says.
        let valid_until = match acquired.validity >= ttl {
            true => store_until,
            false => add(attempt_start, acquired.validity),
        };
        Arc::new(Hold {
            ctx,
            key,
            name: OnceLock::new(),
            token,
            ttl,
            fencing_token: acquired.fencing_token,
            acquired_at: attempt_start,
            cap: plan
                .max_hold
                .filter(|_| renewed)
                .and_then(|d| attempt_start.checked_add(d)),
            on_lost: plan.on_lost,
            guards: AtomicUsize::new(1),
            _renewer: plan.renewer,
            state: Mutex::new(State {
                phase: Phase::Held {
                    renew_at: renewed.then(|| add(attempt_start, renewal_interval(ttl))),
                },
                valid_until,
                store_until,
            }),
        })
    }

    pub(crate) fn lock_key(&self) -> &Key {
        &self.key
    }

    /// One more guard shares the hold (a nested re-entrant one).
    pub(crate) fn add_guard(&self) {
        self.guards.fetch_add(1, Ordering::Relaxed);
    }

    /// A guard goes: the last one releases the lock.
    pub(crate) fn drop_guard(&self) -> Result<(), LockError> {
        // The common case, one guard, without a read-modify-write: when the count is 1
        // nobody can add a guard any more (nested guards come from the records of a
        // thread that holds a guard of the hold), so this guard is the last.
        if self.guards.load(Ordering::Acquire) != 1
            && self.guards.fetch_sub(1, Ordering::AcqRel) != 1
        {
            return Ok(());
        }
        self.release()
    }

    pub(crate) fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }

    pub(crate) fn name(&self) -> &LockName {
        self.name.get_or_init(|| self.key.name())
    }

    pub(crate) fn phase(&self) -> Phase {
        self.state.lock().phase
    }

    pub(crate) fn is_renewing(&self) -> bool {
        matches!(self.phase(), Phase::Held { renew_at: Some(_) })
    }

    /// How long the lock is still guaranteed to be ours, by the manager's clock.
    pub(crate) fn remaining(&self) -> Duration {
        let until = self.state.lock().valid_until;
        until.saturating_duration_since(self.ctx.clock.now())
    }

    /// `Ok` while the hold is valid as far as this process knows. A hold whose validity
    /// has passed becomes `Lost` here.
    pub(crate) fn check(&self) -> Result<(), LossReason> {
        let now = self.ctx.clock.now();
        let mut st = self.state.lock();
        let reason = match st.phase {
            Phase::Lost { reason, .. } => return Err(reason),
            // Only a guard can ask, and a released hold has none left; say it is gone.
            Phase::Released => return Err(LossReason::Expired),
            _ if now < st.valid_until => return Ok(()),
            Phase::Capped => LossReason::HoldCapReached,
            Phase::Held { .. } => LossReason::Expired,
        };
        self.lose_locked(&mut st, reason);
        Err(reason)
    }

    /// [`check`](Hold::check) as the public error.
    pub(crate) fn check_err(&self) -> Result<(), LockError> {
        self.check().map_err(|reason| LockError::Lost {
            name: self.name().clone(),
            reason,
        })
    }

    /// Records that the lock is gone (once: the first report counts and logs). The
    /// renewal thread reports it to the callback later; nothing is called here.
    pub(crate) fn lose(&self, reason: LossReason) {
        let mut st = self.state.lock();
        self.lose_locked(&mut st, reason);
    }

    fn lose_locked(&self, st: &mut State, reason: LossReason) {
        if !matches!(st.phase, Phase::Held { .. } | Phase::Capped) {
            return;
        }
        st.phase = Phase::Lost {
            reason,
            // Only the renewal thread reports, and only holds it renews.
            reported: self._renewer.is_none() || self.on_lost.is_none(),
        };
        bump(&self.ctx.stats.lost);
        log::warn!(
            "lost lock {} (token {}…): {reason}",
            self.name(),
            self.token.short()
        );
    }

    /// The renewal thread's question: what now?
    pub(crate) fn next_step(&self, now: Instant) -> Step {
        let mut st = self.state.lock();
        match st.phase {
            Phase::Released | Phase::Held { renew_at: None } => Step::Forget,
            Phase::Lost { .. } => self.next_step_after_loss(&mut st),
            Phase::Capped if now >= st.valid_until => {
                self.lose_locked(&mut st, LossReason::HoldCapReached);
                self.next_step_after_loss(&mut st)
            }
            Phase::Capped => Step::WaitUntil(st.valid_until),
            Phase::Held { renew_at: Some(at) } if now < at => Step::WaitUntil(at),
            Phase::Held { .. } if now >= st.valid_until => {
                self.lose_locked(&mut st, LossReason::Expired);
                self.next_step_after_loss(&mut st)
            }
            Phase::Held { .. } if self.cap.is_some_and(|cap| now >= cap) => {
                st.phase = Phase::Capped;
                log::debug!(
                    "lock {} reached its hold cap; renewal stops and it expires by its TTL",
                    self.name()
                );
                Step::WaitUntil(st.valid_until)
            }
            Phase::Held { .. } => Step::Renew,
        }
    }

    fn next_step_after_loss(&self, st: &mut State) -> Step {
        match st.phase {
            Phase::Lost {
                reason,
                reported: false,
            } => {
                st.phase = Phase::Lost {
                    reason,
                    reported: true,
                };
                Step::Report(reason)
            }
            _ => Step::Forget,
        }
    }

    /// Renewal extended the lock to its TTL: by `validity` from `start`, and answered at
    /// `replied`.
    pub(crate) fn renewed(&self, start: Instant, replied: Instant, validity: Duration) {
        let mut st = self.state.lock();
        if let Phase::Held { renew_at: Some(_) } = st.phase {
            st.valid_until = add(start, validity.min(self.ttl));
            st.store_until = add(replied, self.ttl);
            st.phase = Phase::Held {
                renew_at: Some(add(start, renewal_interval(self.ttl))),
            };
        }
    }

    /// Renewal could not reach the backend at `after`: retry soon, or give up once the
    /// validity has passed.
    pub(crate) fn renewal_failed(&self, after: Instant, error: &dyn std::fmt::Display) {
        let mut st = self.state.lock();
        if !matches!(st.phase, Phase::Held { renew_at: Some(_) }) {
            return;
        }
        if after >= st.valid_until {
            log::warn!(
                "renewing lock {} failed until it expired: {error}",
                self.name()
            );
            self.lose_locked(&mut st, LossReason::RenewalFailed);
        } else {
            log::warn!("renewing lock {} failed, will retry: {error}", self.name());
            st.phase = Phase::Held {
                renew_at: Some(add(after, retry_step(self.ttl))),
            };
        }
    }

    /// Calls the lost-lock callback, on the renewal thread; a panic in it is caught.
    pub(crate) fn report(&self, reason: LossReason) {
        let Some(cb) = &self.on_lost else { return };
        let call = std::panic::AssertUnwindSafe(|| (cb.0)(self.name(), reason));
        if std::panic::catch_unwind(call).is_err() {
            log::error!(
                "the lost-lock callback of lock {} panicked; renewal goes on",
                self.name()
            );
        }
    }

    /// Asks the backend whether the lock is still held with this hold's token.
    pub(crate) fn is_held(&self) -> Result<bool, LockError> {
        let held = self
            .ctx
            .backend
            .inspect(self.key(), Some(&self.token))
            .map_err(|source| LockError::Backend {
                name: self.name().clone(),
                source,
            })?;
        if held.is_none() {
            self.lose(LossReason::TakenOver);
        }
        Ok(held.is_some())
    }

    /// Extends or replaces the lock's time to live, owner-checked by the backend. The
    /// time the store keeps the key never passes [`MAX_TTL`].
    pub(crate) fn change_ttl(&self, how: Extend) -> Result<(), LockError> {
        let start = self.ctx.clock.now();
        if let Extend::By(by) = how {
            let left = self
                .state
                .lock()
                .store_until
                .saturating_duration_since(start);
            if left.saturating_add(by) > MAX_TTL {
                return Err(LockError::invalid(
                    Some(self.name()),
                    format!(
                        "extending by {by:?} would leave the lock {:?}, more than the maximum of {MAX_TTL:?}",
                        left.saturating_add(by)
                    ),
                ));
            }
        }
        match self.ctx.backend.extend(self.key(), &self.token, how) {
            Ok(Some(validity)) => {
                let replied = self.ctx.clock.now();
                let mut st = self.state.lock();
                st.store_until = match how {
                    Extend::By(by) => add(st.store_until.max(replied), by),
                    Extend::To(ttl) => add(replied, ttl),
                };
                if let Phase::Lost { reason, .. } = st.phase {
                    // Lost is final: the caller was told, or could have been.
                    return Err(LockError::Lost {
                        name: self.name().clone(),
                        reason,
                    });
                }
                st.valid_until = add(start, validity.min(MAX_TTL));
                Ok(())
            }
            Ok(None) => {
                {
                    let mut st = self.state.lock();
                    st.valid_until = st.valid_until.min(start);
                    self.lose_locked(&mut st, LossReason::TakenOver);
                }
                Err(LockError::NotHeld {
                    name: self.name().clone(),
                })
            }
            Err(source) => Err(LockError::Backend {
                name: self.name().clone(),
                source,
            }),
        }
    }

    /// Releases the lock on the backend; renewal stops first, so it cannot report the
    /// deletion as a loss.
    fn release(&self) -> Result<(), LockError> {
        let now = self.ctx.clock.now();
        if self._renewer.is_some() {
            // Only the renewal thread looks at a hold once its last guard is going.
            self.state.lock().phase = Phase::Released;
        }
        let stats = &self.ctx.stats;
        stats.add_hold(now.saturating_duration_since(self.acquired_at));
        let error = match self.ctx.release(self.key(), &self.token, now) {
            Ok(true) => {
                log::debug!(
                    "released lock {} (token {}…)",
                    self.name(),
                    self.token.short()
                );
                return Ok(());
            }
            Ok(false) => LockError::NotHeld {
                name: self.name().clone(),
            },
            Err(source) => LockError::Backend {
                name: self.name().clone(),
                source,
            },
        };
        bump(&stats.failed_releases);
        Err(error)
    }

    /// For `Debug`: whether it is known lost, and the time left.
    pub(crate) fn debug_state(&self) -> (Option<LossReason>, Duration) {
        let (phase, until) = {
            let st = self.state.lock();
            (st.phase, st.valid_until)
        };
        let lost = match phase {
            Phase::Lost { reason, .. } => Some(reason),
            _ => None,
        };
        (lost, until.saturating_duration_since(self.ctx.clock.now()))
    }
}
