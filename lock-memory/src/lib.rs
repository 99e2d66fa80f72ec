//! An in-process [`LockBackend`]: the same semantics as the Redis backends (TTLs, tokens,
//! fencing counters), in a `parking_lot` mutex.
//!
//! Use it in unit tests — swap the backend, change nothing else — and for locks that only
//! need to exclude threads of one process. With [`MemoryBackend::with_clock`] and a
//! [`ManualClock`](lock_core::ManualClock), expiry is tested without sleeping.
//!
//! ```
//! use lock_core::{Clock, LockManager, ManualClock, LockOptions};
//! use lock_memory::MemoryBackend;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), lock_core::LockError> {
//! let clock = ManualClock::new();
//! let backend = MemoryBackend::with_clock(clock.clone());
//! let mgr = LockManager::builder(backend).clock(clock.clone()).build()?;
//!
//! let guard = mgr.lock_with("job", LockOptions::new().ttl(Duration::from_secs(10)))?;
//! clock.advance(Duration::from_secs(11));      // no real time passes
//! assert!(!mgr.is_locked("job")?);             // the TTL freed it
//! assert!(guard.release().is_err());           // and the old holder is told so
//! # Ok(()) }
//! ```
//!
//! Waiters are woken by a release (a condition variable), not by polling at the retry cap.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::{Acquired, BackendError, Clock, Extend, LockBackend, SystemClock, Token};
use parking_lot::{Condvar, Mutex};

/// An in-process lock store. `Clone` shares the store: clones see the same locks.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    released: Condvar,
    clock: Arc<dyn Clock>,
}

/// One slot per key ever locked: kept after release, like Redis's fencing counter, so
/// fencing tokens only grow and a re-lock costs no allocation.
#[derive(Default)]
struct State {
    slots: HashMap<Vec<u8>, Slot>,
}

#[derive(Default)]
struct Slot {
    holder: Option<Entry>,
    /// The last fencing token handed out for this key.
    fence: u64,
}

struct Entry {
    token: Token,
    expires: Instant,
}

impl Slot {
    /// The live holder, dropping it first if it has expired.
    fn live(&mut self, now: Instant) -> Option<&mut Entry> {
        if self.holder.as_ref().is_some_and(|e| e.expires <= now) {
            self.holder = None;
        }
        self.holder.as_mut()
    }
}

impl State {
    /// The live holder of `key`, if any.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        self.slots.get_mut(key)?.live(now)
    }

    /// Removes the holder of `key` (live or not); whether a live one was removed.
    fn clear(&mut self, key: &[u8], now: Instant) -> bool {
        self.slots
            .get_mut(key)
            .is_some_and(|slot| slot.live(now).is_some() && slot.holder.take().is_some())
    }
}

impl MemoryBackend {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store whose TTLs run on `clock` (for example a
    /// [`ManualClock`](lock_core::ManualClock) shared with the manager).
    pub fn with_clock(clock: impl Clock) -> Self {
        MemoryBackend {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                released: Condvar::new(),
                clock: Arc::new(clock),
            }),
        }
    }

    /// How many locks are held right now (expired ones are not counted).
    pub fn len(&self) -> usize {
        let now = self.shared.clock.now();
        self.shared
            .state
            .lock()
            .slots
            .values()
            .filter(|s| s.holder.as_ref().is_some_and(|e| e.expires > now))
            .count()
    }

    /// Whether no lock is held right now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn deadline(now: Instant, ttl: Duration) -> Instant {
        now.checked_add(ttl).unwrap_or(now)
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("held", &self.len())
            .field("clock", &self.shared.clock)
            .finish()
    }
}

impl LockBackend for MemoryBackend {
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError> {
        let now = self.shared.clock.now();
        let expires = Self::deadline(now, ttl);
        let mut st = self.shared.state.lock();
        let slot = match st.slots.get_mut(key) {
            Some(slot) => slot,
            None => st.slots.entry(key.to_vec()).or_default(),
        };
        let fencing_token = match slot.live(now) {
            Some(e) if e.token != *token => return Ok(None),
            Some(e) => {
                // A retry by the holder itself: refresh, keep the fencing token.
                e.expires = expires;
                slot.fence
            }
            None => {
                slot.fence += 1;
                slot.holder = Some(Entry {
                    token: token.clone(),
                    expires,
                });
                slot.fence
            }
        };
        Ok(Some(Acquired {
            fencing_token,
            validity: ttl,
        }))
    }

    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        let now = self.shared.clock.now();
        let mut st = self.shared.state.lock();
        let Some(slot) = st.slots.get_mut(key) else {
            return Ok(false);
        };
        let ours = slot.live(now).is_some_and(|e| e.token == *token);
        if ours {
            slot.holder = None;
            drop(st);
            self.shared.released.notify_all();
        }
        Ok(ours)
    }

    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError> {
        let now = self.shared.clock.now();
        let mut st = self.shared.state.lock();
        match st.live(key, now) {
            Some(e) if e.token == *token => {
                let ttl = match how {
                    Extend::By(d) => e.expires.saturating_duration_since(now).saturating_add(d),
                    Extend::To(d) => d,
                };
                e.expires = Self::deadline(now, ttl);
                Ok(Some(ttl))
            }
            _ => Ok(None),
        }
    }

    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        let now = self.shared.clock.now();
        let mut st = self.shared.state.lock();
        Ok(st
            .live(key, now)
            .filter(|e| token.is_none_or(|t| e.token == *t))
            .map(|e| e.expires.saturating_duration_since(now)))
    }

    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        let now = self.shared.clock.now();
        let mut st = self.shared.state.lock();
        let existed = st.clear(key, now);
        drop(st);
        self.shared.released.notify_all();
        Ok(existed)
    }

    fn health_check(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn wait_for_release(&self, key: &[u8], timeout: Duration) {
        let clock = &self.shared.clock;
        if !clock.is_real() {
            // Nothing can be released "meanwhile" on a clock only the test moves.
            clock.sleep(timeout);
            return;
        }
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.shared.state.lock();
        loop {
            let now = clock.now();
            // Wake at the deadline or when the holder's TTL runs out, whichever is first.
            let expires = match st.live(key, now) {
                None => return,
                Some(e) => e.expires,
            };
            let until = deadline.map_or(expires, |d| d.min(expires));
            if now >= until {
                return;
            }
            self.shared.released.wait_until(&mut st, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::ManualClock;

    lock_core::conformance_suite!(memory_manual_clock, || {
        let clock = ManualClock::new();
        lock_core::conformance::Harness::new(MemoryBackend::with_clock(clock.clone()))
            .with_clock(clock)
    });

    lock_core::conformance_suite!(memory_real_clock, || {
        lock_core::conformance::Harness::new(MemoryBackend::new())
    });

    #[test]
    fn expiry_is_lazy_and_exact_on_the_manual_clock() {
        let clock = ManualClock::new();
        let b = MemoryBackend::with_clock(clock.clone());
        let t = Token::generate();
        assert!(b
            .try_acquire(b"k", &t, Duration::from_millis(10))
            .unwrap()
            .is_some());
        clock.advance(Duration::from_millis(9));
        assert_eq!(
            b.inspect(b"k", None).unwrap(),
            Some(Duration::from_millis(1))
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.inspect(b"k", None).unwrap(), None);
        assert!(b.is_empty());
    }
}
