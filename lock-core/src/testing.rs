//! Test doubles for any [`LockBackend`]: one wrapper, [`Faulty`], that forwards every
//! trait method to the backend it wraps and can add latency, fail calls, lose replies
//! (the call takes effect, the caller hears an error), panic, or break the backend's
//! contract on purpose (to prove that the conformance suite catches it). Re-exported as
//! `lock_memory::testing`.
//!
//! ```
//! use lock_core::{LockError, LockManager};
//! use lock_core::testing::{Fault, Faulty, Op};
//! use lock_memory::MemoryBackend;
//!
//! # fn main() -> Result<(), LockError> {
//! let store = MemoryBackend::new();
//! let faulty = Faulty::new(store.clone());
//! let mgr = LockManager::new(faulty.clone());
//! faulty.set(Op::Release, Fault::LoseReply);      // released, but the caller hears an error
//! let guard = mgr.lock("job")?;
//! assert!(guard.release().is_err());
//! assert!(!mgr.is_locked("job")?);
//! faulty.clear();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Acquired, BackendError, BackendErrorKind, CancelHandle, Extend, LockBackend, Token};
use parking_lot::Mutex;

/// A trait method of [`LockBackend`], to aim a fault at or count calls of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`LockBackend::try_acquire`].
    TryAcquire,
    /// [`LockBackend::release`].
    Release,
    /// [`LockBackend::extend`].
    Extend,
    /// [`LockBackend::inspect`].
    Inspect,
    /// [`LockBackend::force_release`].
    ForceRelease,
    /// [`LockBackend::health_check`].
    HealthCheck,
    /// [`LockBackend::dedicated`].
    Dedicated,
    /// [`LockBackend::wait_for_release`] and
    /// [`LockBackend::wait_for_release_cancellable`].
    Wait,
}

/// What [`Faulty`] does to the calls of one [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Sleeps this long, then forwards the call.
    Latency(Duration),
    /// Fails at once with this kind, without forwarding (the call never reached the store).
    Fail(BackendErrorKind),
    /// Forwards the call (it takes effect), then reports an I/O error: a lost reply.
    LoseReply,
    /// Panics, as a buggy backend would (the only panic in this crate outside tests, and
    /// only when asked for).
    Panic,
    /// Breaks the contract: `release` deletes the key whatever token holds it.
    IgnoreToken,
    /// Breaks the contract: `try_acquire` grants the key even while another token holds it.
    IgnoreContention,
}

/// A backend wrapper that injects [`Fault`]s per [`Op`] and counts calls. Clones share
/// the faults and the counters. Every trait method is forwarded (the clippy lint
/// `missing_trait_methods` checks it), so wrapping changes nothing until a fault is set.
pub struct Faulty<B> {
    inner: Arc<B>,
    shared: Arc<Shared>,
}

impl<B> Clone for Faulty<B> {
    fn clone(&self) -> Self {
        Faulty {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

#[derive(Default)]
struct Shared {
    faults: Mutex<HashMap<Op, Fault>>,
    calls: Mutex<HashMap<Op, usize>>,
    total: AtomicUsize,
}

impl<B: LockBackend> Faulty<B> {
    /// Wraps `inner`, with no fault set.
    pub fn new(inner: B) -> Self {
        Faulty {
            inner: Arc::new(inner),
            shared: Arc::new(Shared::default()),
        }
    }

    /// Sets the fault for `op`'s calls from now on, replacing any earlier one.
    pub fn set(&self, op: Op, fault: Fault) {
        self.shared.faults.lock().insert(op, fault);
    }

    /// The same wrapper with a fault set, for building.
    pub fn with(self, op: Op, fault: Fault) -> Self {
        self.set(op, fault);
        self
    }

    /// Fails every call that can fail (all but `dedicated` and the waits) with `kind`.
    pub fn fail_all(&self, kind: BackendErrorKind) {
        for op in [
            Op::TryAcquire,
            Op::Release,
            Op::Extend,
            Op::Inspect,
            Op::ForceRelease,
            Op::HealthCheck,
        ] {
            self.set(op, Fault::Fail(kind));
        }
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.shared.faults.lock().clear();
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: Op) -> usize {
        self.shared.calls.lock().get(&op).copied().unwrap_or(0)
    }

    /// How many calls were made in all.
    pub fn total_calls(&self) -> usize {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Counts the call and returns the fault to apply to it, after any latency.
    fn enter(&self, op: Op) -> Option<Fault> {
        *self.shared.calls.lock().entry(op).or_default() += 1;
        self.shared.total.fetch_add(1, Ordering::SeqCst);
        let fault = self.shared.faults.lock().get(&op).copied();
        match fault {
            Some(Fault::Latency(d)) => {
                std::thread::sleep(d);
                None
            }
            Some(Fault::Panic) => panic!("test double: {op:?} panics as asked"),
            other => other,
        }
    }

    /// Runs `call` under the fault for `op`.
    fn run<T>(
        &self,
        op: Op,
        call: impl FnOnce() -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        match self.enter(op) {
            Some(Fault::Fail(kind)) => {
                Err(BackendError::new(kind, format!("injected failure of {op:?}")).unsent())
            }
            Some(Fault::LoseReply) => {
                let _ = call();
                Err(BackendError::new(
                    BackendErrorKind::Io,
                    format!("injected lost reply of {op:?}"),
                ))
            }
            _ => call(),
        }
    }
}

impl<B: LockBackend> Faulty<B> {
    /// `try_acquire`, or `try_acquire_at` when the caller passed its reading, under the
    /// faults.
    fn acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        now: Option<Instant>,
    ) -> Result<Option<Acquired>, BackendError> {
        let forward = || match now {
            Some(now) => self.inner.try_acquire_at(key, token, ttl, now),
            None => self.inner.try_acquire(key, token, ttl),
        };
        if self.shared.faults.lock().get(&Op::TryAcquire) == Some(&Fault::IgnoreContention) {
            self.enter(Op::TryAcquire);
            let _ = self.inner.force_release(key);
            return forward();
        }
        self.run(Op::TryAcquire, forward)
    }

    /// `release`, or `release_at` when the caller passed its reading, under the faults.
    fn release_(
        &self,
        key: &[u8],
        token: &Token,
        now: Option<Instant>,
    ) -> Result<bool, BackendError> {
        if self.shared.faults.lock().get(&Op::Release) == Some(&Fault::IgnoreToken) {
            self.enter(Op::Release);
            return self.inner.force_release(key);
        }
        self.run(Op::Release, || match now {
            Some(now) => self.inner.release_at(key, token, now),
            None => self.inner.release(key, token),
        })
    }
}

impl<B> fmt::Debug for Faulty<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("faults", &*self.shared.faults.lock())
            .finish_non_exhaustive()
    }
}

#[warn(clippy::missing_trait_methods)]
impl<B: LockBackend> LockBackend for Faulty<B> {
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
        self.run(Op::Extend, || self.inner.extend(key, token, how))
    }

    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        self.run(Op::Inspect, || self.inner.inspect(key, token))
    }

    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        self.run(Op::ForceRelease, || self.inner.force_release(key))
    }

    fn health_check(&self) -> Result<(), BackendError> {
        self.run(Op::HealthCheck, || self.inner.health_check())
    }

    fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
        // A dedicated handle of a faulty backend is just as faulty.
        self.enter(Op::Dedicated);
        let inner = self.inner.dedicated()?;
        Some(Box::new(Faulty {
            inner: Arc::new(inner),
            shared: self.shared.clone(),
        }))
    }

    fn wait_for_release(&self, key: &[u8], timeout: Duration) {
        self.enter(Op::Wait);
        self.inner.wait_for_release(key, timeout)
    }

    fn wait_for_release_cancellable(&self, key: &[u8], timeout: Duration, cancel: &CancelHandle) {
        self.enter(Op::Wait);
        self.inner
            .wait_for_release_cancellable(key, timeout, cancel)
    }
}
