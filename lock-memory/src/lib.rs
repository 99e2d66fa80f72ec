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
//! Waiters are woken by a release (a condition variable), not by polling at the retry cap,
//! and a cancelled wait ([`CancelHandle`]) wakes at once.
//!
//! A free name costs no memory: a released name is removed at once, an expired one when
//! it is next touched or by a sweep that runs after as many inserts as the store holds. Fencing tokens come from one
//! counter per store, so they stay strictly increasing for every name without keeping
//! anything per name.
//!
//! [`testing`] holds test doubles that wrap any backend to add latency, failures, lost
//! replies or panics.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::any::TypeId;
use std::collections::hash_map::Entry as Entry_;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::{
    Acquired, BackendError, CancelHandle, Clock, Extend, LockBackend, SystemClock, Token,
};
use parking_lot::{Condvar, Mutex};

pub mod testing;

/// An in-process lock store. `Clone` shares the store: clones see the same locks.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    released: Condvar,
    clock: Arc<dyn Clock>,
    /// Whether `clock` is the [`SystemClock`]: then a caller's `Instant::now()` reading
    /// (`try_acquire_at`, `release_at`) is a reading of our clock, and we skip our own.
    system_clock: bool,
}

/// The smallest store size at which expired entries are swept.
const MIN_SWEEP: usize = 1024;

/// The hasher of the store's map: foldhash, seeded per store with 64 secret bits.
///
/// Hashing the key twice per lock+release was a fifth of the pair's cost with std's
/// SipHash-1-3; foldhash does it in a tenth of the instructions. It is not a keyed PRF,
/// only "minimally DoS-resistant", which is enough here: the seed is drawn per store
/// from std's `RandomState` (seeded from the operating system), never shown, and no hash
/// value leaves the store, so an attacker who controls lock names cannot aim collisions
/// at it; and only names held right now are stored, so a collision chain can be no
/// longer than the number of locks the attacker holds at once. This backend is for tests
/// and single processes; a store that must face adversarial names at scale is a server.
type KeyHasher = foldhash::fast::FixedState;

fn key_hasher() -> KeyHasher {
    foldhash::fast::FixedState::with_seed(RandomState::new().hash_one(0u8))
}

/// Only held names are stored; a free name costs nothing.
struct State {
    held: HashMap<Vec<u8>, Entry, KeyHasher>,
    /// The last fencing token handed out, for any name: strictly increasing per name
    /// because it is strictly increasing overall.
    fence: u64,
    /// Names inserted since the last sweep of expired entries.
    inserted: usize,
    /// Key buffers of released names, reused by the next inserts so the hot path does
    /// not allocate; at most [`SPARE_KEYS`] of them, so free names still cost nothing
    /// that grows with their number.
    spare: Vec<Vec<u8>>,
}

/// How many key buffers of released names are kept for reuse.
const SPARE_KEYS: usize = 8;
/// Only buffers up to this size are kept (a lock name and a prefix fit).
const SPARE_KEY_MAX: usize = 1536;

struct Entry {
    token: Token,
    expires: Instant,
    fencing_token: u64,
}

impl State {
    /// The live holder of `key`, dropping an expired one.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        if self.held.get(key).is_some_and(|e| e.expires <= now) {
            self.held.remove(key);
            return None;
        }
        self.held.get_mut(key)
    }

    /// Drops every expired entry once as many names were inserted since the last sweep
    /// as the store holds (and at least [`MIN_SWEEP`]), so names that expired without
    /// being touched again do not pile up; each sweep is paid for by the inserts before
    /// it (amortised O(1)).
    fn sweep_if_due(&mut self, now: Instant) {
        self.inserted += 1;
        if self.inserted < self.held.len().max(MIN_SWEEP) {
            return;
        }
        self.inserted = 0;
        self.held.retain(|_, e| e.expires > now);
        self.held.shrink_to_fit();
    }
}

impl MemoryBackend {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store whose TTLs run on `clock` (for example a
    /// [`ManualClock`](lock_core::ManualClock) shared with the manager).
    pub fn with_clock<C: Clock>(clock: C) -> Self {
        let system_clock = TypeId::of::<C>() == TypeId::of::<SystemClock>();
        MemoryBackend {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    held: HashMap::with_hasher(key_hasher()),
                    fence: 0,
                    inserted: 0,
                    spare: Vec::new(),
                }),
                released: Condvar::new(),
                clock: Arc::new(clock),
                system_clock,
            }),
        }
    }

    /// How many locks are held right now (expired ones are not counted).
    pub fn len(&self) -> usize {
        let now = self.shared.clock.now();
        self.shared
            .state
            .lock()
            .held
            .values()
            .filter(|e| e.expires > now)
            .count()
    }

    /// Whether no lock is held right now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Our clock's reading: the caller's, when it read the same clock just before.
    fn now(&self, caller: Option<Instant>) -> Instant {
        match caller {
            Some(now) if self.shared.system_clock => now,
            _ => self.shared.clock.now(),
        }
    }

    fn deadline(now: Instant, ttl: Duration) -> Instant {
        now.checked_add(ttl).unwrap_or(now)
    }

    /// Blocks until `key` is free, `timeout` has passed or `cancel` is cancelled.
    fn wait(&self, key: &[u8], timeout: Duration, cancel: Option<&CancelHandle>) {
        let shared = &self.shared;
        let clock = &shared.clock;
        if !clock.is_real() {
            // Nothing can be released "meanwhile" on a clock only the test moves.
            if !cancel.is_some_and(CancelHandle::is_cancelled) {
                clock.sleep(timeout);
            }
            return;
        }
        let _registration = cancel.map(|c| {
            let waker = Arc::downgrade(shared);
            c.on_cancel(move || {
                if let Some(shared) = waker.upgrade() {
                    // Under the lock the waiter checks the handle with: no lost wake-up.
                    let _st = shared.state.lock();
                    shared.released.notify_all();
                }
            })
        });
        let deadline = Instant::now().checked_add(timeout);
        let mut st = shared.state.lock();
        loop {
            if cancel.is_some_and(CancelHandle::is_cancelled) {
                return;
            }
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
            shared.released.wait_until(&mut st, until);
        }
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

impl MemoryBackend {
    /// `try_acquire`, at the caller's reading of our clock if it passed one.
    fn acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        caller_now: Option<Instant>,
    ) -> Result<Option<Acquired>, BackendError> {
        let now = self.now(caller_now);
        let expires = Self::deadline(now, ttl);
        let mut st = self.shared.state.lock();
        let st = &mut *st;
        let fresh = |fence: u64| Entry {
            token: token.clone(),
            expires,
            fencing_token: fence,
        };
        // One hash on the hot path (a free name), and a reused key buffer.
        let owned = match st.spare.pop() {
            Some(mut buf) => {
                buf.clear();
                buf.extend_from_slice(key);
                buf
            }
            None => key.to_vec(),
        };
        match st.held.entry(owned) {
            Entry_::Occupied(mut held) => {
                let e = held.get_mut();
                if e.expires > now {
                    if e.token != *token {
                        return Ok(None);
                    }
                    // A retry by the holder itself: refresh, keep the fencing token.
                    e.expires = expires;
                    return Ok(Some(Acquired {
                        fencing_token: e.fencing_token,
                        validity: ttl,
                    }));
                }
                st.fence += 1;
                *e = fresh(st.fence);
            }
            Entry_::Vacant(free) => {
                st.fence += 1;
                free.insert(fresh(st.fence));
                st.sweep_if_due(now);
            }
        }
        Ok(Some(Acquired {
            fencing_token: st.fence,
            validity: ttl,
        }))
    }

    /// `release`, at the caller's reading of our clock if it passed one.
    fn release_(
        &self,
        key: &[u8],
        token: &Token,
        caller_now: Option<Instant>,
    ) -> Result<bool, BackendError> {
        let now = self.now(caller_now);
        let mut st = self.shared.state.lock();
        // One hash on the hot path (our own live lock); a mismatch puts the entry back.
        let Some((k, e)) = st.held.remove_entry(key) else {
            return Ok(false);
        };
        let live = e.expires > now;
        if e.token != *token && live {
            st.held.insert(k, e);
            return Ok(false);
        }
        // Ours (live or expired), or expired: either way the name is free now.
        if st.spare.len() < SPARE_KEYS && k.capacity() <= SPARE_KEY_MAX {
            st.spare.push(k);
        }
        drop(st);
        if live {
            self.shared.released.notify_all();
        }
        Ok(live)
    }
}

impl LockBackend for MemoryBackend {
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError> {
        self.acquire(key, token, ttl, None)
    }

    fn try_acquire_at(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        now: Instant,
    ) -> Result<Option<Acquired>, BackendError> {
        self.acquire(key, token, ttl, Some(now))
    }

    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        self.release_(key, token, None)
    }

    fn release_at(&self, key: &[u8], token: &Token, now: Instant) -> Result<bool, BackendError> {
        self.release_(key, token, Some(now))
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
        let existed = st.held.remove(key).is_some_and(|e| e.expires > now);
        drop(st);
        self.shared.released.notify_all();
        Ok(existed)
    }

    fn health_check(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
        None
    }

    fn wait_for_release(&self, key: &[u8], timeout: Duration) {
        self.wait(key, timeout, None)
    }

    fn wait_for_release_cancellable(&self, key: &[u8], timeout: Duration, cancel: &CancelHandle) {
        self.wait(key, timeout, Some(cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::ManualClock;

    use lock_core::conformance::{run_all, Harness};
    use lock_core::testing::{Fault, Faulty, Op};

    fn manual() -> Harness<MemoryBackend> {
        let clock = ManualClock::new();
        let store = MemoryBackend::with_clock(clock.clone());
        Harness::from_factory(move || store.clone()).with_clock(clock)
    }

    lock_core::conformance_suite!(memory_manual_clock, manual, through_dyn);

    lock_core::conformance_suite!(memory_real_clock, || {
        let store = MemoryBackend::new();
        Harness::from_factory(move || store.clone())
    });

    /// The test double changes nothing until a fault is set: the whole suite passes
    /// through it.
    #[test]
    fn the_suite_passes_through_the_faulty_wrapper_without_faults() {
        let clock = ManualClock::new();
        let store = MemoryBackend::with_clock(clock.clone());
        let h = Harness::from_factory(move || Faulty::new(store.clone())).with_clock(clock);
        let failed: Vec<_> = run_all(&h)
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
    }

    /// A backend that breaks the contract fails the suite: a release that ignores the
    /// token, and an acquire that ignores contention.
    #[test]
    fn a_backend_that_breaks_the_contract_fails_the_suite() {
        for (op, fault) in [
            (Op::Release, Fault::IgnoreToken),
            (Op::TryAcquire, Fault::IgnoreContention),
        ] {
            let clock = ManualClock::new();
            let store = MemoryBackend::with_clock(clock.clone());
            let h = Harness::from_factory(move || Faulty::new(store.clone()).with(op, fault))
                .with_clock(clock);
            let failed: Vec<_> = run_all(&h)
                .into_iter()
                .filter(|(_, r)| r.is_err())
                .map(|(name, _)| name)
                .collect();
            assert!(!failed.is_empty(), "{fault:?} passed the whole suite");
            eprintln!("{fault:?} fails: {failed:?}");
        }
    }

    /// A caller's reading is only taken for the system clock's: a store on another clock
    /// judges expiry by its own, whatever instant the caller passes.
    #[test]
    fn a_store_on_another_clock_ignores_the_callers_reading() {
        let clock = ManualClock::new();
        let b = MemoryBackend::with_clock(clock.clone());
        let ttl = Duration::from_secs(10);
        let later = clock.now() + Duration::from_secs(60);
        let held = Token::generate();
        assert!(b.try_acquire(b"k", &held, ttl).unwrap().is_some());
        let other = Token::generate();
        assert!(b
            .try_acquire_at(b"k", &other, ttl, later)
            .unwrap()
            .is_none());
        assert!(b.release_at(b"k", &held, later).unwrap());
    }

    /// On the system clock the caller's reading is used, and it is never later than the
    /// call: a lock taken at a reading expires one TTL after it.
    #[test]
    fn a_store_on_the_system_clock_counts_from_the_callers_reading() {
        let b = MemoryBackend::new();
        let ttl = Duration::from_secs(10);
        let then = Instant::now();
        let t = Token::generate();
        assert!(b.try_acquire_at(b"k", &t, ttl, then).unwrap().is_some());
        let passed = then.elapsed();
        let left = b.inspect(b"k", None).unwrap().unwrap();
        assert!(left <= ttl.saturating_sub(passed));
        assert!(
            !b.release_at(b"k", &t, then + ttl).unwrap(),
            "expired at its reading"
        );
    }

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

#[cfg(test)]
mod reclaim_tests {
    use super::*;
    use lock_core::ManualClock;

    fn stored(b: &MemoryBackend) -> usize {
        b.shared.state.lock().held.len()
    }

    /// Defect 8: a name that is free (released, or expired) costs no memory, and fencing
    /// tokens still only grow for a name that comes back.
    #[test]
    fn free_names_cost_no_memory_and_fencing_still_grows() {
        let clock = ManualClock::new();
        let b = MemoryBackend::with_clock(clock.clone());
        let ttl = Duration::from_secs(10);
        let mut last = 0;
        for i in 0..10_000u32 {
            let key = format!("lock:n{i}").into_bytes();
            let t = Token::generate();
            let a = b.try_acquire(&key, &t, ttl).unwrap().unwrap();
            assert!(a.fencing_token > last);
            last = a.fencing_token;
            assert!(b.release(&key, &t).unwrap());
        }
        assert_eq!(stored(&b), 0, "released names are still stored");
        for i in 0..10_000u32 {
            let key = format!("lock:e{i}").into_bytes();
            b.try_acquire(&key, &Token::generate(), ttl)
                .unwrap()
                .unwrap();
        }
        clock.advance(ttl);
        // Expired names go too, amortised over later calls.
        for i in 0..10_000u32 {
            let key = format!("lock:m{i}").into_bytes();
            let t = Token::generate();
            b.try_acquire(&key, &t, ttl).unwrap().unwrap();
            assert!(b.release(&key, &t).unwrap());
        }
        assert!(
            stored(&b) < 1_000,
            "{} expired names still stored",
            stored(&b)
        );
        let t = Token::generate();
        let again = b.try_acquire(b"lock:n0", &t, ttl).unwrap().unwrap();
        assert!(again.fencing_token > last);
    }
}
