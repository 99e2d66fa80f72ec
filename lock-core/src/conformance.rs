//! The backend conformance suite: a specification of what the manager needs from a
//! [`LockBackend`], written as one documented function per case, and
//! [`conformance_suite!`](crate::conformance_suite) to stamp out one `#[test]` per case.
//!
//! # Running it on your backend
//!
//! ```text
//! lock_core::conformance_suite!(my_backend, || {
//!     // One new backend instance per call: participants that stand for different
//!     // processes each get their own, so every case exercises the store itself.
//!     lock_core::conformance::Harness::from_factory(|| MyBackend::connect(URL).unwrap())
//! });
//! ```
//!
//! The macro makes a module `my_backend` with one test per case; with a third argument,
//! `conformance_suite!(my_backend, || …, through_dyn)`, also a module
//! `my_backend::through_dyn` running the same cases through `Arc<dyn LockBackend>`.
//! [`run_all`] runs every case in-process and reports which ones failed (used to prove
//! that a backend breaking the contract fails the suite).
//!
//! Every case works on fresh random names, so backends can share a server between
//! concurrently running tests. Cases that need time to pass call [`Harness::sleep`]: on a
//! [`ManualClock`](crate::ManualClock) that is instant, on the system clock it really
//! sleeps (for TTLs of tens of milliseconds), and real-clock time bounds allow the
//! harness's slack (250 ms) for scheduling and network.
//!
//! # Capabilities
//!
//! Where backends legitimately differ, the harness carries [`Capabilities`] (as
//! object_store passes flags to its shared tests); a case relaxes only what the flag
//! names. The default is the strict behaviour.
//!
//! # Stability
//!
//! Cases may be added in any release (a new requirement is announced in the changelog
//! first); what an existing case requires only changes in a major release. Case names
//! are stable.
//!
//! Library code; panics are how a test reports a failed case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::testing::{Faulty, Op};
use crate::{
    CancelHandle, Clock, Extend, LockBackend, LockError, LockManager, LockManagerBuilder,
    LockOptions, SystemClock, Token, MAX_NAME_LEN, MAX_TTL,
};

/// What a backend promises beyond the baseline every backend must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Fencing tokens of successive acquisitions of one name are strictly increasing.
    /// Single-store backends promise it; Redlock does not (a minority of nodes can
    /// answer with older counters after failures), so its cases only check that tokens
    /// are handed out.
    pub strict_fencing: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            strict_fencing: true,
        }
    }
}

impl Capabilities {
    /// Every capability: the strict behaviour.
    pub fn all() -> Self {
        Self::default()
    }

    /// Sets [`strict_fencing`](Capabilities::strict_fencing).
    pub fn strict_fencing(mut self, on: bool) -> Self {
        self.strict_fencing = on;
        self
    }
}

type Factory<B> = Arc<dyn Fn() -> B + Send + Sync>;

/// What a case needs: a way to make backend instances, the clock their TTLs run on, and
/// the backend's [`Capabilities`].
pub struct Harness<B> {
    factory: Factory<B>,
    clock: Arc<dyn Clock>,
    /// Slack for real clocks: how late an answer may come (network, scheduling).
    slack: Duration,
    caps: Capabilities,
    /// Whatever must outlive the case, such as the server process under the backend.
    keep: Vec<Box<dyn std::any::Any>>,
}

impl<B: LockBackend> Harness<B> {
    /// A harness that calls `factory` for every participant: each call must return a new
    /// instance on the same store (for a network backend, a new client with its own
    /// connections), standing for another process.
    pub fn from_factory(factory: impl Fn() -> B + Send + Sync + 'static) -> Self {
        Harness {
            factory: Arc::new(factory),
            clock: Arc::new(SystemClock),
            slack: Duration::from_millis(250),
            caps: Capabilities::default(),
            keep: Vec::new(),
        }
    }

    /// A harness whose participants all share clones of `backend`. Prefer
    /// [`from_factory`](Harness::from_factory) when clones share connections or
    /// in-process state that could answer instead of the store.
    pub fn new(backend: B) -> Self
    where
        B: Clone,
    {
        Self::from_factory(move || backend.clone())
    }

    /// Keeps `value` (for example the server under the backend) alive until the case ends.
    pub fn keep_alive(mut self, value: impl std::any::Any) -> Self {
        self.keep.push(Box::new(value));
        self
    }

    /// Uses `clock` for the managers and for [`Harness::sleep`]; pass the clock the
    /// backend's TTLs run on.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        if !clock.is_real() {
            self.slack = Duration::ZERO;
        }
        self.clock = Arc::new(clock);
        self
    }

    /// Declares what the backend promises beyond the baseline.
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// A new backend instance (another process's).
    pub fn backend(&self) -> B {
        (self.factory)()
    }

    /// A manager builder over a new backend instance and the harness clock, with a short
    /// default wait.
    pub fn builder(&self) -> LockManagerBuilder {
        self.builder_over(self.backend())
    }

    fn builder_over(&self, backend: impl LockBackend) -> LockManagerBuilder {
        LockManager::builder(backend)
            .clock(self.clock.clone())
            .wait(Some(Duration::from_secs(2)))
    }

    /// A manager over a new backend instance: another process.
    pub fn manager(&self) -> LockManager {
        self.builder().build().unwrap()
    }

    /// Lets `d` pass on the harness clock.
    pub fn sleep(&self, d: Duration) {
        self.clock.sleep(d)
    }

    /// The same harness, its instances seen through `Arc<dyn LockBackend>`.
    pub fn erased(self) -> Harness<Arc<dyn LockBackend>> {
        let factory = self.factory;
        Harness {
            factory: Arc::new(move || Arc::new(factory()) as Arc<dyn LockBackend>),
            clock: self.clock,
            slack: self.slack,
            caps: self.caps,
            keep: self.keep,
        }
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

/// Runs every case on `harness` in this thread, catching failures: each case's name and
/// its failure message, if it failed.
pub fn run_all<B: LockBackend>(harness: &Harness<B>) -> Vec<(&'static str, Result<(), String>)> {
    cases::<B>()
        .into_iter()
        .map(|(name, case)| {
            let run = std::panic::AssertUnwindSafe(|| case(harness));
            let outcome = std::panic::catch_unwind(run).map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".to_owned())
            });
            (name, outcome)
        })
        .collect()
}

/// A conformance case: what it requires, as a function over a harness.
pub type Case<B> = fn(&Harness<B>);

/// Every case, by name.
pub fn cases<B: LockBackend>() -> Vec<(&'static str, Case<B>)> {
    crate::__conformance_cases!(@list B)
}

fn key(name: &str) -> Vec<u8> {
    format!("{}{name}", crate::DEFAULT_PREFIX).into_bytes()
}

/// The TTL of the cases that let a lock expire: long enough for a quorum of Redlock
/// nodes to answer (and the next call to be made) on a busy machine, short enough to
/// wait out in real time.
const SHORT_TTL: Duration = Duration::from_millis(300);

/// How long those cases wait for it to pass: the TTL and a margin.
const PAST_SHORT_TTL: Duration = Duration::from_millis(400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Stamps out one `#[test]` per conformance case in a module named `$module`, each
/// calling `$harness` (an expression that evaluates to a closure returning a
/// [`Harness`](crate::conformance::Harness)) for a fresh harness. With a third argument
/// `through_dyn`, the same cases also run through `Arc<dyn LockBackend>` in
/// `$module::through_dyn` (the forwarding impls and object safety under test).
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $harness:expr) => {
        #[allow(non_snake_case)]
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_cases!(@stamp ($harness));
        }
    };
    ($module:ident, $harness:expr, through_dyn) => {
        #[allow(non_snake_case)]
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_cases!(@stamp ($harness));

            /// The same cases, through `Arc<dyn LockBackend>`.
            mod through_dyn {
                #[allow(unused_imports)]
                use super::super::*;
                $crate::__conformance_cases!(@stamp_dyn ($harness));
            }
        }
    };
}

/// The list of cases, in one place, handed to [`__conformance_each`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($($how:tt)*) => {
        $crate::__conformance_each! {($($how)*)
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
            extend_is_capped_at_max_ttl,
            ttl_frees_a_lock_whose_holder_vanished,
            independent_names_do_not_block,
            same_thread_relock_errors_at_once,
            reentrant_mode_nests,
            reentrant_request_on_an_expired_hold_is_lost,
            forgotten_expired_guard_does_not_block_its_thread,
            fencing_tokens_strictly_increase,
            retry_with_the_same_token_is_not_contention,
            is_locked_and_ttl_report_the_state,
            inspect_reports_any_holder_or_the_given_token,
            is_held_reflects_ownership,
            remaining_counts_down,
            validity_never_exceeds_the_ttl,
            with_lock_runs_the_closure_under_the_lock,
            bad_input_is_rejected_before_any_backend_call,
            binary_names_are_distinct_keys,
            force_release_deletes_whoever_holds,
            health_check_answers,
            dedicated_handle_reaches_the_same_store,
            wait_for_release_returns_by_its_timeout,
            cancelled_wait_returns_at_once,
            send_guard_works_on_another_thread
        }
    };
}

/// Expands the case list one way: as tests, as tests through `dyn`, or as a list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each {
    ((@stamp ($harness:expr)) $($case:ident),*) => {$(
        #[test]
        fn $case() {
            let harness = ($harness)();
            $crate::conformance::$case(&harness);
        }
    )*};
    ((@stamp_dyn ($harness:expr)) $($case:ident),*) => {$(
        #[test]
        fn $case() {
            let harness = ($harness)().erased();
            $crate::conformance::$case(&harness);
        }
    )*};
    ((@list $b:ident) $($case:ident),*) => {
        vec![$((
            stringify!($case),
            $crate::conformance::$case::<$b> as $crate::conformance::Case<$b>,
        )),*]
    };
}

/// A free name can be taken and released; while held, `inspect(key, None)` sees it, and
/// after the release it is free.
pub fn acquire_release<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr.lock(&name).unwrap();
    assert!(mgr.is_locked(&name).unwrap());
    assert_eq!(g.name().as_bytes(), name.as_bytes());
    g.release().unwrap();
    assert!(!mgr.is_locked(&name).unwrap());
}

/// `try_acquire` by another instance (another process) gets nothing while the name is
/// held, and gets it once the holder released it.
pub fn try_lock_fails_while_held_and_succeeds_after_release<B: LockBackend>(h: &Harness<B>) {
    let (a, b) = (h.manager(), h.manager());
    let name = fresh_name();
    let g = a.try_lock(&name).unwrap().expect("free lock");
    assert!(b.try_lock(&name).unwrap().is_none());
    g.release().unwrap();
    let g2 = b.try_lock(&name).unwrap().expect("released lock");
    g2.release().unwrap();
}

/// Contention is an answer, not an error: a second token's `try_acquire`, `release`,
/// `extend` and `inspect(key, Some(token))` on a held key return `Ok(None)` / `Ok(false)`
/// and change nothing (an acquire that ignores contention fails here).
pub fn contention_is_not_an_error<B: LockBackend>(h: &Harness<B>) {
    let k = key(&fresh_name());
    let (t1, t2) = (Token::generate(), Token::generate());
    let b = &h.backend();
    assert!(b.try_acquire(&k, &t1, ms(5000)).unwrap().is_some());
    assert!(b.try_acquire(&k, &t2, ms(5000)).unwrap().is_none());
    assert!(!b.release(&k, &t2).unwrap());
    assert!(b.extend(&k, &t2, Extend::By(ms(1000))).unwrap().is_none());
    assert!(b.inspect(&k, Some(&t2)).unwrap().is_none());
    assert!(b.release(&k, &t1).unwrap());
}

/// A bounded wait on a held name makes its first attempt, pauses no later than the
/// deadline, makes one last attempt at the deadline, and times out no earlier than the
/// wait and no later than the wait plus slack. Requires `wait_for_release` to return by
/// its timeout.
pub fn wait_is_honoured_with_one_last_attempt_at_the_deadline<B: LockBackend>(h: &Harness<B>) {
    let name = fresh_name();
    let holder = h.manager();
    let _held = holder.lock(&name).unwrap();
    let counting = Faulty::new(h.backend());
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
    assert_eq!(counting.calls(Op::TryAcquire), 2);
    assert!(elapsed >= wait, "returned before the deadline: {elapsed:?}");
    assert!(elapsed <= wait + h.slack, "overslept: {elapsed:?}");
    if let LockError::Timeout { waited, .. } = err {
        assert!(waited >= wait);
    }
}

/// A waiter on another instance gets the name once its holder releases it (real clock) or
/// its TTL runs out (manual clock).
pub fn waiter_gets_the_lock_after_release<B: LockBackend>(h: &Harness<B>) {
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

/// Dropping a guard releases the name on the store.
pub fn drop_releases<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    {
        let _g = mgr.lock(&name).unwrap();
        assert!(mgr.is_locked(&name).unwrap());
    }
    assert!(!mgr.is_locked(&name).unwrap());
    assert!(h.manager().try_lock(&name).unwrap().is_some());
}

/// Releasing after the TTL ran out reports that the lock was no longer held (`Ok(false)`
/// from the backend), and leaves the name free.
pub fn release_after_expiry_is_not_held<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(SHORT_TTL))
        .unwrap();
    h.sleep(PAST_SHORT_TTL);
    assert_eq!(g.remaining(), Duration::ZERO);
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
    assert!(!mgr.is_locked(&name).unwrap());
}

/// After a takeover, the old holder's `extend` and `release` fail and leave the new
/// holder's key and TTL untouched (a release that ignores the token fails here); with
/// strict fencing the new holder's token is greater.
pub fn release_after_takeover_is_not_held_and_leaves_the_new_holder<B: LockBackend>(
    h: &Harness<B>,
) {
    let (a, b) = (h.manager(), h.manager());
    let name = fresh_name();
    let old = a
        .lock_with(&name, LockOptions::new().ttl(SHORT_TTL))
        .unwrap();
    h.sleep(PAST_SHORT_TTL);
    let new = b
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
        .unwrap();
    if h.capabilities().strict_fencing {
        assert!(new.fencing_token() > old.fencing_token());
    }
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

/// `release` is compare-and-delete on the token: a second release, or a release with a
/// stale token after somebody else took the key, returns `Ok(false)` and leaves the key
/// alone.
pub fn release_twice_is_harmless<B: LockBackend>(h: &Harness<B>) {
    let b = &h.backend();
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

/// `Extend::By` adds to the time left: the store's TTL and the guard's `remaining` grow.
pub fn extend_adds_time<B: LockBackend>(h: &Harness<B>) {
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

/// `Extend::To` replaces the time left with exactly the given TTL.
pub fn set_ttl_replaces_time<B: LockBackend>(h: &Harness<B>) {
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

/// `renew` sets the time left back to the TTL the lock was taken with.
pub fn renew_resets_to_the_original_ttl<B: LockBackend>(h: &Harness<B>) {
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

/// Extending an expired lock fails (`Ok(None)`) and never re-creates the key.
pub fn extend_after_expiry_fails_and_recreates_nothing<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(SHORT_TTL))
        .unwrap();
    h.sleep(PAST_SHORT_TTL);
    assert!(matches!(g.extend(ms(5000)), Err(LockError::NotHeld { .. })));
    assert!(matches!(
        g.set_ttl(ms(5000)),
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(g.renew(), Err(LockError::NotHeld { .. })));
    assert!(!g.is_held().unwrap());
    assert!(!mgr.is_locked(&name).unwrap());
}

/// A lock whose holder vanished without releasing is free once its TTL has run out.
pub fn ttl_frees_a_lock_whose_holder_vanished<B: LockBackend>(h: &Harness<B>) {
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

/// Different names are independent locks.
pub fn independent_names_do_not_block<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let (n1, n2) = (fresh_name(), fresh_name());
    let _g1 = mgr.lock(&n1).unwrap();
    let g2 = h.manager().try_lock(&n2).unwrap();
    assert!(g2.is_some());
}

/// The same thread asking again for a name it holds gets `WouldDeadlock` at once (manager
/// logic; no backend call may block it).
pub fn same_thread_relock_errors_at_once<B: LockBackend>(h: &Harness<B>) {
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

/// A re-entrant request nests: same fencing token, the lock stays held until the outer
/// guard goes, then is free.
pub fn reentrant_mode_nests<B: LockBackend>(h: &Harness<B>) {
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

/// Fencing tokens of successive acquisitions of a name strictly increase, whether the
/// previous holder released or let the lock expire (with
/// [`Capabilities::strict_fencing`]; otherwise tokens are only handed out).
pub fn fencing_tokens_strictly_increase<B: LockBackend>(h: &Harness<B>) {
    let name = fresh_name();
    let mut last = 0;
    for i in 0..5 {
        let mgr = h.manager();
        let g = mgr.lock(&name).unwrap();
        if h.capabilities().strict_fencing {
            assert!(g.fencing_token() > last, "round {i}");
        }
        last = g.fencing_token();
        if i % 2 == 0 {
            g.release().unwrap();
        } else {
            // Expiry instead of release must not reset the counter either.
            drop(g);
        }
    }
}

/// A retried `try_acquire` with the token that already holds the key (a lost reply)
/// succeeds again with the same fencing token.
pub fn retry_with_the_same_token_is_not_contention<B: LockBackend>(h: &Harness<B>) {
    let b = &h.backend();
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

/// `inspect(key, None)` reports a free name as `None` and a held one with its time left,
/// at most the TTL.
pub fn is_locked_and_ttl_report_the_state<B: LockBackend>(h: &Harness<B>) {
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

/// `is_held` asks the store: true while ours, false once another process took over after
/// expiry.
pub fn is_held_reflects_ownership<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(SHORT_TTL))
        .unwrap();
    assert!(g.is_held().unwrap());
    h.sleep(PAST_SHORT_TTL);
    let _other = h.manager().lock(&name).unwrap();
    assert!(!g.is_held().unwrap());
}

/// The guard's `remaining` starts at most at the TTL and falls as time passes.
pub fn remaining_counts_down<B: LockBackend>(h: &Harness<B>) {
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

/// `with_lock` runs the closure while the name is held and releases it after.
pub fn with_lock_runs_the_closure_under_the_lock<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let seen = mgr
        .with_lock(&name, || mgr.is_locked(&name).unwrap())
        .unwrap();
    assert!(seen);
    assert!(!mgr.is_locked(&name).unwrap());
}

/// Empty or oversized names, and TTLs or waits out of range, are rejected before any
/// backend call.
pub fn bad_input_is_rejected_before_any_backend_call<B: LockBackend>(h: &Harness<B>) {
    let counting = Faulty::new(h.backend());
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
    assert_eq!(
        counting.total_calls(),
        0,
        "invalid input reached the backend"
    );
    for bad in [
        LockManager::builder(h.backend())
            .ttl(Duration::ZERO)
            .build(),
        LockManager::builder(h.backend()).prefix("").build(),
        LockManager::builder(h.backend())
            .retry_interval(ms(10), ms(1))
            .build(),
        LockManager::builder(h.backend())
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

/// Names are opaque bytes: NULs, CR/LF, glob and script characters, invalid UTF-8 and
/// emoji are all distinct keys, never code.
pub fn binary_names_are_distinct_keys<B: LockBackend>(h: &Harness<B>) {
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

/// `force_release` deletes the key whoever holds it and reports whether there was one;
/// the old holder's release then reports `false`, and the name is free for anybody.
pub fn force_release_deletes_whoever_holds<B: LockBackend>(h: &Harness<B>) {
    let (b, admin) = (h.backend(), h.backend());
    let k = key(&fresh_name());
    let t = Token::generate();
    assert!(b.try_acquire(&k, &t, ms(10_000)).unwrap().is_some());
    assert!(
        admin.force_release(&k).unwrap(),
        "there was a lock to delete"
    );
    // On a quorum backend the acquire may still be on its way to a node that was not
    // needed for the quorum, and land after the first force release: a second one
    // deletes that straggler, and then nothing is left.
    let mut left = admin.force_release(&k).unwrap();
    if left {
        left = admin.force_release(&k).unwrap();
    }
    assert!(!left, "nothing left to delete");
    assert!(b.inspect(&k, None).unwrap().is_none());
    assert!(!b.release(&k, &t).unwrap());
    let t2 = Token::generate();
    assert!(admin.try_acquire(&k, &t2, ms(10_000)).unwrap().is_some());
    assert!(admin.release(&k, &t2).unwrap());
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr.lock(&name).unwrap();
    assert!(h.manager().force_unlock(&name).unwrap());
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
}

/// `health_check` answers `Ok` on a working backend, directly and through the manager.
pub fn health_check_answers<B: LockBackend>(h: &Harness<B>) {
    h.backend().health_check().unwrap();
    h.manager().health_check().unwrap();
}

/// A `dedicated` handle, if the backend offers one, works on the same store: it sees,
/// extends and releases what the main handle took. (`None` is allowed: then the main
/// handle is shared.)
pub fn dedicated_handle_reaches_the_same_store<B: LockBackend>(h: &Harness<B>) {
    let b = h.backend();
    let Some(d) = b.dedicated() else { return };
    let k = key(&fresh_name());
    let t = Token::generate();
    assert!(b.try_acquire(&k, &t, ms(10_000)).unwrap().is_some());
    assert!(d.inspect(&k, Some(&t)).unwrap().is_some());
    let extended = d.extend(&k, &t, Extend::To(ms(5_000))).unwrap();
    assert!(extended.is_some_and(|v| v <= ms(5_000)));
    assert!(d.release(&k, &t).unwrap());
    assert!(b.inspect(&k, None).unwrap().is_none());
}

/// `wait_for_release` on a key that stays held returns by its timeout (plus slack), and
/// `wait_for_release_cancellable` returns at once for a cancelled handle.
pub fn wait_for_release_returns_by_its_timeout<B: LockBackend>(h: &Harness<B>) {
    let b = h.backend();
    let k = key(&fresh_name());
    let t = Token::generate();
    assert!(b.try_acquire(&k, &t, ms(10_000)).unwrap().is_some());
    let timeout = ms(200);
    let start = h.now();
    b.wait_for_release(&k, timeout);
    let elapsed = h.now() - start;
    assert!(elapsed <= timeout + h.slack, "waited {elapsed:?}");
    let cancel = CancelHandle::new();
    cancel.cancel();
    let start = Instant::now();
    b.wait_for_release_cancellable(&k, ms(10_000), &cancel);
    assert!(
        start.elapsed() < ms(5_000),
        "a cancelled wait slept {:?}",
        start.elapsed()
    );
    assert!(b.release(&k, &t).unwrap());
}

/// A blocked wait ends with `Cancelled` as soon as its handle is cancelled from another
/// thread, long before its next poll; a wait whose handle was cancelled before it began
/// returns at once.
pub fn cancelled_wait_returns_at_once<B: LockBackend>(h: &Harness<B>) {
    let name = fresh_name();
    let _held = h.manager().lock(&name).unwrap();
    let cancel = CancelHandle::new();
    if h.is_real() {
        // Polls 10 s apart: returning well before that proves the cancel woke it.
        let poll = Duration::from_secs(10);
        let waiter = h.builder().retry_interval(poll, poll).build().unwrap();
        let watch = waiter.clone();
        let opts = LockOptions::new().wait(None).cancel(&cancel);
        let n = name.clone();
        let t = std::thread::spawn(move || {
            let r = waiter.lock_with(&n, opts.clone()).map(|_| ());
            let w = waiter.wait_unlocked_with(&n, opts).map(|_| ());
            (r, w)
        });
        // Cancel once the waiter has tried and is waiting for its next poll (its first
        // attempt may need a new connection, slow on a busy machine).
        let until = Instant::now() + poll / 2;
        while watch.stats().contended == 0 {
            assert!(Instant::now() < until, "the waiter never tried");
            std::thread::sleep(ms(5));
        }
        std::thread::sleep(ms(20));
        let cancelled = Instant::now();
        cancel.cancel();
        let (r, w) = t.join().unwrap();
        assert!(matches!(r, Err(LockError::Cancelled { .. })), "{r:?}");
        assert!(matches!(w, Err(LockError::Cancelled { .. })), "{w:?}");
        assert!(
            cancelled.elapsed() < poll / 2,
            "woke {:?} after the cancel",
            cancelled.elapsed()
        );
    } else {
        cancel.cancel();
    }
    let r = h
        .manager()
        .lock_with(&name, LockOptions::new().wait(None).cancel(&cancel));
    assert!(matches!(r, Err(LockError::Cancelled { .. })), "{r:?}");
}

/// A guard turned into a `SendGuard` leaves its thread's records and works on another
/// thread: `check`, `extend` and `release` there; the first thread then sees plain
/// contention, not `WouldDeadlock`.
pub fn send_guard_works_on_another_thread<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
        .unwrap()
        .into_send();
    let token = g.fencing_token();
    assert!(matches!(mgr.try_lock(&name), Ok(None)));
    let worker = std::thread::spawn(move || {
        g.check()?;
        g.extend(Duration::from_secs(5))?;
        assert!(g.is_held()?);
        let fencing = g.fencing_token();
        g.release().map(|()| fencing)
    });
    assert_eq!(worker.join().unwrap().unwrap(), token);
    assert!(!mgr.is_locked(&name).unwrap());
    assert!(mgr.try_lock(&name).unwrap().is_some());
}

/// Nobody can push a lock's time left past `MAX_TTL` through the manager: `extend` beyond
/// it is an invalid argument, and the store's TTL stays within it.
pub fn extend_is_capped_at_max_ttl<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
        .unwrap();
    assert!(matches!(
        g.extend(MAX_TTL),
        Err(LockError::InvalidArgument { .. })
    ));
    g.set_ttl(MAX_TTL).unwrap();
    assert!(matches!(
        g.extend(Duration::from_secs(1)),
        Err(LockError::InvalidArgument { .. })
    ));
    assert!(mgr.ttl(&name).unwrap().unwrap() <= MAX_TTL);
    assert!(g.remaining() <= MAX_TTL);
    g.release().unwrap();
}

/// A re-entrant request on a hold that expired (and was taken by another process) gets
/// `Lost`, never a guard for the dead hold.
pub fn reentrant_request_on_an_expired_hold_is_lost<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    // Long enough for a quorum of Redlock nodes to answer on a busy machine.
    let outer = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(300)).reentrant(true))
        .unwrap();
    h.sleep(ms(400));
    let _theirs = h.manager().lock(&name).unwrap();
    let nested = mgr.lock_with(&name, LockOptions::new().reentrant(true));
    assert!(matches!(nested, Err(LockError::Lost { .. })), "{nested:?}");
    assert!(matches!(outer.release(), Err(LockError::NotHeld { .. })));
}

/// A `mem::forget`-ten guard stops blocking its thread once its TTL has passed: the
/// thread can take the name again.
pub fn forgotten_expired_guard_does_not_block_its_thread<B: LockBackend>(h: &Harness<B>) {
    let mgr = h.manager();
    let name = fresh_name();
    std::mem::forget(
        mgr.lock_with(&name, LockOptions::new().ttl(SHORT_TTL))
            .unwrap(),
    );
    h.sleep(PAST_SHORT_TTL);
    let again = mgr.try_lock(&name).unwrap();
    assert!(
        again.is_some(),
        "a forgotten, expired guard blocks its thread"
    );
}

/// `inspect(key, None)` sees any holder, from any instance; `inspect(key, Some(token))`
/// on the acquiring instance sees only that token's hold.
pub fn inspect_reports_any_holder_or_the_given_token<B: LockBackend>(h: &Harness<B>) {
    let (b, other) = (h.backend(), h.backend());
    let k = key(&fresh_name());
    let (t1, t2) = (Token::generate(), Token::generate());
    assert!(other.inspect(&k, None).unwrap().is_none());
    assert!(b.try_acquire(&k, &t1, ms(5_000)).unwrap().is_some());
    let any = other.inspect(&k, None).unwrap().expect("held by somebody");
    assert!(any <= ms(5_000) && any > Duration::ZERO);
    // Token operations belong to the instance that acquired (Redlock keeps per-node
    // tokens in the acquiring instance).
    assert!(b.inspect(&k, Some(&t1)).unwrap().is_some());
    assert!(b.inspect(&k, Some(&t2)).unwrap().is_none());
    assert!(other.inspect(&k, Some(&t2)).unwrap().is_none());
    assert!(b.release(&k, &t1).unwrap());
    assert!(other.inspect(&k, None).unwrap().is_none());
}

/// `Acquired::validity` is positive and never above the TTL asked for, and `extend`'s
/// answer never above what was asked.
pub fn validity_never_exceeds_the_ttl<B: LockBackend>(h: &Harness<B>) {
    let b = h.backend();
    let k = key(&fresh_name());
    let t = Token::generate();
    let ttl = ms(5_000);
    let a = b.try_acquire(&k, &t, ttl).unwrap().unwrap();
    assert!(a.validity > Duration::ZERO && a.validity <= ttl, "{a:?}");
    let to = b.extend(&k, &t, Extend::To(ms(3_000))).unwrap().unwrap();
    assert!(to > Duration::ZERO && to <= ms(3_000), "{to:?}");
    let by = b.extend(&k, &t, Extend::By(ms(1_000))).unwrap().unwrap();
    assert!(by > Duration::ZERO && by <= ms(4_000), "{by:?}");
    assert!(b.release(&k, &t).unwrap());
    let mgr = h.manager();
    let g = mgr
        .lock_with(fresh_name(), LockOptions::new().ttl(ttl))
        .unwrap();
    assert!(g.remaining() <= ttl);
}
