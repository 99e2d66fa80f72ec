//! Regression tests for the defects of issue 11, one per defect, named after what they
//! pin. All run on the memory backend and a manual clock: no test waits for a real TTL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lock_core::{LockBackend, LockError, LockManager, LockOptions, ManualClock, MAX_TTL};
use lock_memory::MemoryBackend;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn setup() -> (ManualClock, MemoryBackend, LockManager) {
    let clock = ManualClock::new();
    let backend = MemoryBackend::with_clock(clock.clone());
    let mgr = manager(&clock, &backend);
    (clock, backend, mgr)
}

/// Another manager (standing for another process) over the same store and clock.
fn manager(clock: &ManualClock, backend: &MemoryBackend) -> LockManager {
    LockManager::builder(backend.clone())
        .clock(clock.clone())
        .wait(Some(secs(1)))
        .build()
        .unwrap()
}

/// Waits (bounded by a generous real-time margin) for the renewal thread, which reacts
/// to the manual clock within milliseconds, to have done what the test expects.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < secs(10), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Defect 1: a re-entrant request on an expired or lost hold must not get a guard.
#[test]
fn a_reentrant_request_on_an_expired_hold_is_told_it_was_lost() {
    let (clock, backend, mgr) = setup();
    let outer = mgr
        .lock_with("x", LockOptions::new().ttl(secs(1)).reentrant(true))
        .unwrap();
    clock.advance(secs(2));
    let thief = manager(&clock, &backend);
    let theirs = thief.lock("x").unwrap();
    let nested = mgr.lock_with("x", LockOptions::new().reentrant(true));
    assert!(
        matches!(nested, Err(LockError::Lost { .. })),
        "a dead hold handed out a guard: {nested:?}"
    );
    // The stale record is gone: asking again waits for the thief like anybody else.
    assert!(mgr.try_lock("x").unwrap().is_none());
    drop(theirs);
    assert!(matches!(outer.release(), Err(LockError::NotHeld { .. })));
}

/// Defect 1, the "known lost" half: a hold that a call found taken over.
#[test]
fn a_reentrant_request_on_a_lost_hold_is_told_it_was_lost() {
    let (clock, backend, mgr) = setup();
    let outer = mgr
        .lock_with("y", LockOptions::new().ttl(secs(10)))
        .unwrap();
    assert!(backend.force_release(b"lock:y").unwrap());
    let thief = manager(&clock, &backend);
    let _theirs = thief.lock("y").unwrap();
    assert!(!outer.is_held().unwrap());
    let nested = mgr.lock_with("y", LockOptions::new().reentrant(true));
    assert!(matches!(nested, Err(LockError::Lost { .. })), "{nested:?}");
}

/// Defect 2: a forgotten guard's record must stop blocking once its hold is gone.
#[test]
fn a_forgotten_guard_stops_blocking_its_thread_once_its_ttl_passed() {
    let (clock, backend, mgr) = setup();
    std::mem::forget(mgr.lock_with("f", LockOptions::new().ttl(secs(1))).unwrap());
    assert!(matches!(
        mgr.try_lock("f"),
        Err(LockError::WouldDeadlock { .. })
    ));
    clock.advance(secs(2));
    let other = manager(&clock, &backend);
    other.lock("f").unwrap().release().unwrap();
    let again = mgr.try_lock("f");
    assert!(
        matches!(again, Ok(Some(_))),
        "a forgotten, expired guard still blocks its thread: {again:?}"
    );
}

/// Defect 3: a panicking lost-lock callback must not kill the renewal thread.
#[test]
fn a_panicking_on_lost_callback_does_not_stop_renewal() {
    let (clock, backend, _) = setup();
    let mgr = LockManager::builder(backend.clone())
        .clock(clock.clone())
        .auto_renew(true)
        .on_lost(|_, _| panic!("a callback that panics"))
        .build()
        .unwrap();
    let doomed = mgr.lock_with("a", LockOptions::new().ttl(secs(3))).unwrap();
    assert!(backend.force_release(b"lock:a").unwrap());
    clock.advance(secs(1));
    eventually("the loss to be seen", || doomed.is_lost());
    eventually("the callback to have run", || mgr.stats().lost == 1);
    let kept = mgr.lock_with("b", LockOptions::new().ttl(secs(3))).unwrap();
    let before = mgr.stats().renewals;
    for i in 1..=6 {
        clock.advance(secs(1));
        eventually("renewal after a panicking callback", || {
            mgr.stats().renewals >= before + i
        });
    }
    kept.check().unwrap();
    assert!(kept.is_renewing());
}

/// Defect 5: the lost-lock callback runs on the renewal thread only, never on the thread
/// of a call that finds the loss, and never with renewal off.
#[test]
fn on_lost_never_runs_on_a_callers_thread() {
    let (clock, backend, _) = setup();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mgr = LockManager::builder(backend.clone())
        .clock(clock.clone())
        .on_lost(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let g = mgr.lock_with("c", LockOptions::new().ttl(secs(1))).unwrap();
    clock.advance(secs(2));
    let _theirs = manager(&clock, &backend).lock("c").unwrap();
    assert!(!g.is_held().unwrap());
    assert!(g.extend(secs(1)).is_err());
    assert!(g.set_ttl(secs(1)).is_err());
    assert!(g.renew().is_err());
    assert!(g.check().is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "on_lost ran on the caller's thread"
    );
}

/// Defect 5, the deadlock it caused: a callback that takes a lock the caller holds while
/// the caller finds the loss itself.
#[test]
fn a_lost_callback_that_takes_a_lock_the_caller_holds_does_not_deadlock() {
    let (clock, backend, _) = setup();
    let shared = Arc::new(parking_lot::Mutex::new(0u32));
    let in_callback = shared.clone();
    let mgr = LockManager::builder(backend.clone())
        .clock(clock.clone())
        .auto_renew(true)
        .on_lost(move |_, _| *in_callback.lock() += 1)
        .build()
        .unwrap();
    let (done, finished) = mpsc::channel();
    let (go, release) = mpsc::channel::<()>();
    let caller = {
        let (mgr, backend, shared) = (mgr.clone(), backend.clone(), shared.clone());
        std::thread::spawn(move || {
            let g = mgr.lock_with("d", LockOptions::new().ttl(secs(3))).unwrap();
            let mut state = shared.lock();
            assert!(backend.force_release(b"lock:d").unwrap());
            let held = g.is_held();
            *state += 10;
            drop(state);
            done.send(held.map_err(|e| e.to_string())).unwrap();
            let _ = release.recv();
            drop(g);
        })
    };
    let held = finished
        .recv_timeout(secs(30))
        .expect("the caller deadlocked on its own callback");
    assert_eq!(held, Ok(false));
    clock.advance(secs(1));
    eventually("the callback on the renewal thread", || {
        *shared.lock() == 11
    });
    go.send(()).unwrap();
    caller.join().unwrap();
}

/// Defect 6: `extend` must not push a lock's time to live past [`MAX_TTL`].
#[test]
fn extend_never_pushes_a_ttl_past_max_ttl() {
    let (_clock, _backend, mgr) = setup();
    let g = mgr.lock_with("e", LockOptions::new().ttl(MAX_TTL)).unwrap();
    for _ in 0..3 {
        let _ = g.extend(MAX_TTL);
    }
    let ttl = mgr.ttl("e").unwrap().unwrap();
    assert!(ttl <= MAX_TTL, "the lock lives {ttl:?}, past MAX_TTL");
    assert!(g.remaining() <= MAX_TTL);
    assert!(matches!(
        g.extend(secs(1)),
        Err(LockError::InvalidArgument { .. })
    ));
}

/// Defect 7: `lock_all`'s timeout reports the whole call's wait, not the last key's.
#[test]
fn lock_all_timeout_reports_the_whole_wait() {
    let (clock, backend, mgr) = setup();
    let holder = manager(&clock, &backend);
    std::thread::spawn(move || {
        std::mem::forget(
            holder
                .lock_with("a", LockOptions::new().ttl(secs(2)))
                .unwrap(),
        );
        std::mem::forget(
            holder
                .lock_with("b", LockOptions::new().ttl(secs(60)))
                .unwrap(),
        );
    })
    .join()
    .unwrap();
    let err = mgr
        .lock_all_with(["a", "b"], LockOptions::new().wait(Some(secs(5))))
        .unwrap_err();
    match err {
        LockError::Timeout { waited, .. } => {
            assert!(
                waited >= secs(5),
                "waited {waited:?} reported for a 5 s wait"
            )
        }
        other => panic!("expected a timeout, got {other}"),
    }
}
