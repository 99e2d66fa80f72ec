//! The backend conformance suite: one function per case, generic over [`LockBackend`],
//! and [`conformance_suite!`](crate::conformance_suite) to stamp out one `#[test]` per case.
//!
//! Every case works on fresh random names, so backends can share a server between
//! concurrently running tests. A third-party backend runs the whole suite with:
//!
//! ```text
//! lock_core::conformance_suite!(my_backend, || {
//!     lock_core::conformance::Harness::new(MyBackend::new())
//! });
//! ```
//!
//! Cases that need time to pass call [`Harness::sleep`]: on a
//! [`ManualClock`](crate::ManualClock) that is instant, on the system clock it really
//! sleeps (for TTLs of tens of milliseconds).
//! Library code; panics are how a test reports a failed case.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::{
    Acquired, BackendError, Clock, Extend, LockBackend, LockError, LockManager, LockManagerBuilder,
    LockOptions, SystemClock, Token, MAX_NAME_LEN, MAX_TTL,
};

/// What a case needs: the backend under test and the clock its TTLs run on.
pub struct Harness<B> {
    backend: B,
    clock: Arc<dyn Clock>,
    /// Slack for real backends: how late an answer may come (network, scheduling).
    slack: Duration,
    /// Whatever must outlive the case, such as the server process under the backend.
    _keep: Vec<Box<dyn std::any::Any>>,
}

impl<B: LockBackend + Clone> Harness<B> {
    /// A harness over `backend` on the system clock.
    pub fn new(backend: B) -> Self {
        Harness {
            backend,
            clock: Arc::new(SystemClock),
            slack: Duration::from_millis(250),
            _keep: Vec::new(),
        }
    }

    /// Keeps `value` (for example the server under the backend) alive until the case ends.
    pub fn keep_alive(mut self, value: impl std::any::Any) -> Self {
        self._keep.push(Box::new(value));
        self
    }

    /// Uses `clock` for the manager and for [`Harness::sleep`]; pass the clock the
    /// backend's TTLs run on.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.slack = if clock.is_real() {
            self.slack
        } else {
            Duration::ZERO
        };
        self.clock = Arc::new(clock);
        self
    }

    /// The backend under test.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A manager builder over the backend and clock, with a short default wait.
    pub fn builder(&self) -> LockManagerBuilder {
        self.builder_over(self.backend.clone())
    }

    fn builder_over(&self, backend: impl LockBackend) -> LockManagerBuilder {
        LockManager::builder(backend)
            .clock(self.clock.clone())
            .wait(Some(Duration::from_secs(2)))
    }

    /// A manager over the backend and clock.
    pub fn manager(&self) -> LockManager {
        self.builder().build().unwrap()
    }

    /// Lets `d` pass on the harness clock.
    pub fn sleep(&self, d: Duration) {
        self.clock.sleep(d)
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn is_real(&self) -> bool {
        self.clock.is_real()
    }
}

/// A fresh random lock name.
pub fn fresh_name() -> String {
    format!("conformance:{:016x}", rand::rng().next_u64())
}

/// A backend wrapper that counts calls, to prove how many attempts were made and that
/// invalid input never reaches the backend.
#[derive(Clone)]
pub struct Counting<B> {
    inner: B,
    calls: Arc<[AtomicUsize; 7]>,
}

impl<B> Counting<B> {
    pub fn new(inner: B) -> Self {
        Counting {
            inner,
            calls: Arc::new(Default::default()),
        }
    }
    pub fn acquires(&self) -> usize {
        self.calls[0].load(Ordering::SeqCst)
    }
    pub fn total(&self) -> usize {
        self.calls.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }
}

impl<B: LockBackend> LockBackend for Counting<B> {
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError> {
        self.calls[0].fetch_add(1, Ordering::SeqCst);
        self.inner.try_acquire(key, token, ttl)
    }
    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        self.calls[1].fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, token)
    }
    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError> {
        self.calls[2].fetch_add(1, Ordering::SeqCst);
        self.inner.extend(key, token, how)
    }
    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        self.calls[3].fetch_add(1, Ordering::SeqCst);
        self.inner.inspect(key, token)
    }
    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        self.calls[5].fetch_add(1, Ordering::SeqCst);
        self.inner.force_release(key)
    }
    fn health_check(&self) -> Result<(), BackendError> {
        self.calls[6].fetch_add(1, Ordering::SeqCst);
        self.inner.health_check()
    }
    fn wait_for_release(&self, key: &[u8], timeout: Duration) {
        self.calls[4].fetch_add(1, Ordering::SeqCst);
        self.inner.wait_for_release(key, timeout)
    }
}

fn key(name: &str) -> Vec<u8> {
    format!("{}{name}", crate::DEFAULT_PREFIX).into_bytes()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Stamps out one `#[test]` per conformance case in a module named `$module`, each
/// calling `$harness` (an expression that evaluates to a closure returning a
/// [`Harness`](crate::conformance::Harness)) for a fresh harness.
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $harness:expr) => {
        $crate::conformance_suite!(@cases $module, $harness,
            acquire_release,
            try_lock_fails_while_held_and_succeeds_after_release,
            contention_is_not_an_error,
            wait_is_honoured_with_one_last_attempt_at_the_deadline,
            waiter_gets_the_lock_after_release,
            drop_releases,
            release_after_expiry_is_not_held,
            release_after_takeover_is_not_held_and_leaves_the_new_holder,
            release_twice_is_harmless,
            extend_adds_time,
            set_ttl_replaces_time,
            renew_resets_to_the_original_ttl,
            extend_after_expiry_fails_and_recreates_nothing,
            ttl_frees_a_lock_whose_holder_vanished,
            independent_names_do_not_block,
            same_thread_relock_errors_at_once,
            reentrant_mode_nests,
            fencing_tokens_strictly_increase,
            retry_with_the_same_token_is_not_contention,
            is_locked_and_ttl_report_the_state,
            is_held_reflects_ownership,
            remaining_counts_down,
            with_lock_runs_the_closure_under_the_lock,
            bad_input_is_rejected_before_any_backend_call,
            binary_names_are_distinct_keys
        );
    };
    (@cases $module:ident, $harness:expr, $($case:ident),*) => {
        #[allow(non_snake_case)]
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    let harness = ($harness)();
                    $crate::conformance::$case(&harness);
                }
            )*
        }
    };
}

pub fn acquire_release<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr.lock(&name).unwrap();
    assert!(mgr.is_locked(&name).unwrap());
    assert_eq!(g.name().as_bytes(), name.as_bytes());
    g.release().unwrap();
    assert!(!mgr.is_locked(&name).unwrap());
}

pub fn try_lock_fails_while_held_and_succeeds_after_release<B: LockBackend + Clone>(
    h: &Harness<B>,
) {
    let (a, b) = (h.manager(), h.manager());
    let name = fresh_name();
    let g = a.try_lock(&name).unwrap().expect("free lock");
    assert!(b.try_lock(&name).unwrap().is_none());
    g.release().unwrap();
    let g2 = b.try_lock(&name).unwrap().expect("released lock");
    g2.release().unwrap();
}

pub fn contention_is_not_an_error<B: LockBackend + Clone>(h: &Harness<B>) {
    let k = key(&fresh_name());
    let (t1, t2) = (Token::generate(), Token::generate());
    let b = h.backend();
    assert!(b.try_acquire(&k, &t1, ms(5000)).unwrap().is_some());
    assert!(b.try_acquire(&k, &t2, ms(5000)).unwrap().is_none());
    assert!(!b.release(&k, &t2).unwrap());
    assert!(b.extend(&k, &t2, Extend::By(ms(1000))).unwrap().is_none());
    assert!(b.inspect(&k, Some(&t2)).unwrap().is_none());
    assert!(b.release(&k, &t1).unwrap());
}

pub fn wait_is_honoured_with_one_last_attempt_at_the_deadline<B: LockBackend + Clone>(
    h: &Harness<B>,
) {
    let name = fresh_name();
    let holder = h.manager();
    let _held = holder.lock(&name).unwrap();
    let counting = Counting::new(h.backend().clone());
    let waiter = h
        .builder_over(counting.clone())
        .retry_interval(Duration::from_secs(5), Duration::from_secs(5))
        .build()
        .unwrap();
    let wait = ms(300);
    let start = h.now();
    let err = waiter
        .lock_with(&name, LockOptions::new().wait(Some(wait)))
        .unwrap_err();
    let elapsed = h.now() - start;
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    // The first attempt, then one pause cut to the deadline, then the last attempt.
    assert_eq!(counting.acquires(), 2);
    assert!(elapsed >= wait, "returned before the deadline: {elapsed:?}");
    assert!(elapsed <= wait + h.slack, "overslept: {elapsed:?}");
    if let LockError::Timeout { waited, .. } = err {
        assert!(waited >= wait);
    }
}

pub fn waiter_gets_the_lock_after_release<B: LockBackend + Clone>(h: &Harness<B>) {
    let name = fresh_name();
    let mgr = h.manager();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(100)))
        .unwrap();
    let m2 = h.manager();
    let n2 = name.clone();
    // Waiting through the holder's TTL: the waiter gets it once the lock expires.
    let waiter = std::thread::spawn(move || {
        m2.lock_with(&n2, LockOptions::new().wait(Some(Duration::from_secs(5))))
            .map(|g| g.fencing_token())
    });
    if h.is_real() {
        std::thread::sleep(ms(20));
        drop(g);
    } else {
        std::mem::forget(g);
    }
    assert!(waiter.join().unwrap().is_ok());
}

pub fn drop_releases<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    {
        let _g = mgr.lock(&name).unwrap();
        assert!(mgr.is_locked(&name).unwrap());
    }
    assert!(!mgr.is_locked(&name).unwrap());
    assert!(h.manager().try_lock(&name).unwrap().is_some());
}

pub fn release_after_expiry_is_not_held<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(50)))
        .unwrap();
    h.sleep(ms(120));
    assert_eq!(g.remaining(), Duration::ZERO);
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
    assert!(!mgr.is_locked(&name).unwrap());
}

pub fn release_after_takeover_is_not_held_and_leaves_the_new_holder<B: LockBackend + Clone>(
    h: &Harness<B>,
) {
    let (a, b) = (h.manager(), h.manager());
    let name = fresh_name();
    let old = a.lock_with(&name, LockOptions::new().ttl(ms(50))).unwrap();
    h.sleep(ms(120));
    let new = b
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
        .unwrap();
    assert!(new.fencing_token() > old.fencing_token());
    let before = b.ttl(&name).unwrap().unwrap();
    assert!(matches!(
        old.extend(ms(5000)),
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(old.release(), Err(LockError::NotHeld { .. })));
    let after = b.ttl(&name).unwrap().expect("new holder's key survives");
    assert!(after <= before, "the old holder changed the new TTL");
    assert!(after > Duration::from_secs(9));
    assert!(new.is_held().unwrap());
    new.release().unwrap();
}

pub fn release_twice_is_harmless<B: LockBackend + Clone>(h: &Harness<B>) {
    let b = h.backend();
    let k = key(&fresh_name());
    let (t1, t2) = (Token::generate(), Token::generate());
    assert!(b.try_acquire(&k, &t1, ms(5000)).unwrap().is_some());
    assert!(b.release(&k, &t1).unwrap());
    assert!(!b.release(&k, &t1).unwrap());
    assert!(b.try_acquire(&k, &t2, ms(5000)).unwrap().is_some());
    assert!(!b.release(&k, &t1).unwrap());
    assert!(b.inspect(&k, Some(&t2)).unwrap().is_some());
    assert!(b.release(&k, &t2).unwrap());
}

pub fn extend_adds_time<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
        .unwrap();
    g.extend(Duration::from_secs(10)).unwrap();
    let ttl = mgr.ttl(&name).unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(16) && ttl <= Duration::from_secs(20),
        "{ttl:?}"
    );
    assert!(g.remaining() > Duration::from_secs(16));
}

pub fn set_ttl_replaces_time<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(30)))
        .unwrap();
    g.set_ttl(Duration::from_secs(10)).unwrap();
    let ttl = mgr.ttl(&name).unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(8) && ttl <= Duration::from_secs(10),
        "{ttl:?}"
    );
    assert!(g.remaining() <= Duration::from_secs(10));
}

pub fn renew_resets_to_the_original_ttl<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
        .unwrap();
    g.set_ttl(Duration::from_secs(1)).unwrap();
    assert!(mgr.ttl(&name).unwrap().unwrap() <= Duration::from_secs(1));
    g.renew().unwrap();
    let ttl = mgr.ttl(&name).unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(8) && ttl <= Duration::from_secs(10),
        "{ttl:?}"
    );
    assert_eq!(g.ttl(), Duration::from_secs(10));
}

pub fn extend_after_expiry_fails_and_recreates_nothing<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(50)))
        .unwrap();
    h.sleep(ms(120));
    assert!(matches!(g.extend(ms(5000)), Err(LockError::NotHeld { .. })));
    assert!(matches!(
        g.set_ttl(ms(5000)),
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(g.renew(), Err(LockError::NotHeld { .. })));
    assert!(!g.is_held().unwrap());
    assert!(!mgr.is_locked(&name).unwrap());
}

pub fn ttl_frees_a_lock_whose_holder_vanished<B: LockBackend + Clone>(h: &Harness<B>) {
    let name = fresh_name();
    let vanished = h.manager();
    std::mem::forget(
        vanished
            .lock_with(&name, LockOptions::new().ttl(ms(100)))
            .unwrap(),
    );
    let other = h.manager();
    assert!(other.try_lock(&name).unwrap().is_none());
    h.sleep(ms(150));
    assert!(other.try_lock(&name).unwrap().is_some());
}

pub fn independent_names_do_not_block<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let (n1, n2) = (fresh_name(), fresh_name());
    let _g1 = mgr.lock(&n1).unwrap();
    let g2 = h.manager().try_lock(&n2).unwrap();
    assert!(g2.is_some());
}

pub fn same_thread_relock_errors_at_once<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let _g = mgr.lock(&name).unwrap();
    let start = Instant::now();
    let err = mgr.lock(&name).unwrap_err();
    assert!(matches!(err, LockError::WouldDeadlock { .. }), "{err}");
    assert!(matches!(
        mgr.clone().try_lock(&name),
        Err(LockError::WouldDeadlock { .. })
    ));
    assert!(start.elapsed() < ms(100));
}

pub fn reentrant_mode_nests<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let outer = mgr.lock(&name).unwrap();
    let inner = mgr
        .lock_with(&name, LockOptions::new().reentrant(true))
        .unwrap();
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    inner.release().unwrap();
    assert!(
        mgr.is_locked(&name).unwrap(),
        "inner release freed the lock"
    );
    assert!(h.manager().try_lock(&name).unwrap().is_none());
    drop(outer);
    assert!(!mgr.is_locked(&name).unwrap());
}

pub fn fencing_tokens_strictly_increase<B: LockBackend + Clone>(h: &Harness<B>) {
    let name = fresh_name();
    let mut last = 0;
    for i in 0..5 {
        let mgr = h.manager();
        let g = mgr.lock(&name).unwrap();
        assert!(g.fencing_token() > last, "round {i}");
        last = g.fencing_token();
        if i % 2 == 0 {
            g.release().unwrap();
        } else {
            // Expiry instead of release must not reset the counter either.
            drop(g);
        }
    }
}

pub fn retry_with_the_same_token_is_not_contention<B: LockBackend + Clone>(h: &Harness<B>) {
    let b = h.backend();
    let k = key(&fresh_name());
    let t = Token::generate();
    let first = b.try_acquire(&k, &t, ms(5000)).unwrap().unwrap();
    let again = b
        .try_acquire(&k, &t, ms(5000))
        .unwrap()
        .expect("same token");
    assert_eq!(first.fencing_token, again.fencing_token);
    assert!(b.release(&k, &t).unwrap());
}

pub fn is_locked_and_ttl_report_the_state<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    assert!(!mgr.is_locked(&name).unwrap());
    assert_eq!(mgr.ttl(&name).unwrap(), None);
    let _g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(5)))
        .unwrap();
    let ttl = mgr.ttl(&name).unwrap().unwrap();
    assert!(ttl > Duration::from_secs(4) && ttl <= Duration::from_secs(5));
}

pub fn is_held_reflects_ownership<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(50)))
        .unwrap();
    assert!(g.is_held().unwrap());
    h.sleep(ms(120));
    let _other = h.manager().lock(&name).unwrap();
    assert!(!g.is_held().unwrap());
}

pub fn remaining_counts_down<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(5)))
        .unwrap();
    let r0 = g.remaining();
    assert!(r0 <= Duration::from_secs(5) && r0 > Duration::from_secs(4));
    h.sleep(ms(100));
    let r1 = g.remaining();
    assert!(r1 <= r0 - ms(100), "{r0:?} -> {r1:?}");
}

pub fn with_lock_runs_the_closure_under_the_lock<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let seen = mgr
        .with_lock(&name, || mgr.is_locked(&name).unwrap())
        .unwrap();
    assert!(seen);
    assert!(!mgr.is_locked(&name).unwrap());
}

pub fn bad_input_is_rejected_before_any_backend_call<B: LockBackend + Clone>(h: &Harness<B>) {
    let counting = Counting::new(h.backend().clone());
    let mgr = h.builder_over(counting.clone()).build().unwrap();
    let invalid = |r: Result<_, LockError>| matches!(r, Err(LockError::InvalidArgument { .. }));
    let name = fresh_name();
    assert!(invalid(mgr.lock("").map(|_| ())));
    assert!(invalid(mgr.try_lock(b"").map(|_| ())));
    assert!(invalid(mgr.is_locked("").map(|_| ())));
    let long = vec![b'x'; MAX_NAME_LEN + 1];
    assert!(invalid(mgr.lock(&long).map(|_| ())));
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_TTL + ms(1),
        Duration::MAX,
    ] {
        assert!(invalid(
            mgr.lock_with(&name, LockOptions::new().ttl(ttl))
                .map(|_| ())
        ));
    }
    assert!(invalid(
        mgr.lock_with(&name, LockOptions::new().wait(Some(Duration::MAX)))
            .map(|_| ())
    ));
    assert_eq!(counting.total(), 0, "invalid input reached the backend");
    for bad in [
        LockManager::builder(h.backend().clone())
            .ttl(Duration::ZERO)
            .build(),
        LockManager::builder(h.backend().clone()).prefix("").build(),
        LockManager::builder(h.backend().clone())
            .retry_interval(ms(10), ms(1))
            .build(),
        LockManager::builder(h.backend().clone())
            .wait(Some(Duration::MAX))
            .build(),
    ] {
        assert!(matches!(bad, Err(LockError::InvalidArgument { .. })));
    }
    // The longest valid name works; guard calls reject bad durations too.
    let max = vec![b'y'; MAX_NAME_LEN];
    let g = h.manager().lock(&max).unwrap();
    assert!(matches!(
        g.extend(Duration::ZERO),
        Err(LockError::InvalidArgument { .. })
    ));
    assert!(matches!(
        g.set_ttl(Duration::MAX),
        Err(LockError::InvalidArgument { .. })
    ));
}

pub fn binary_names_are_distinct_keys<B: LockBackend + Clone>(h: &Harness<B>) {
    let mgr = h.manager();
    let base = fresh_name();
    let names: Vec<Vec<u8>> = vec![
        format!("{base}\0").into_bytes(),
        format!("{base}\r\n").into_bytes(),
        format!("{base}*").into_bytes(),
        format!("{base}') return redis.call('flushall') --").into_bytes(),
        [base.as_bytes(), &[0xff, 0xfe]].concat(),
        format!("{base}🔒").into_bytes(),
    ];
    let guards: Vec<_> = names.iter().map(|n| mgr.lock(n).unwrap()).collect();
    for n in &names {
        assert!(mgr.is_locked(n).unwrap());
    }
    assert!(!mgr.is_locked(&base).unwrap());
    drop(guards);
    for n in &names {
        assert!(!mgr.is_locked(n).unwrap());
    }
}
