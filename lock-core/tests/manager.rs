//! The manager's own logic — renewal, the hold cap, loss detection, multi-key locks,
//! waiting for a free lock, counters — on the memory backend and a manual clock, so no
//! test waits for real TTLs to pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::testing::{Fault, Faulty, Op};
use lock_core::{
    BackendErrorKind, Clock, LockBackend, LockError, LockManager, LockOptions, LossReason,
    ManualClock,
};
use lock_memory::MemoryBackend;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn setup() -> (ManualClock, MemoryBackend, LockManager) {
    let clock = ManualClock::new();
    let backend = MemoryBackend::with_clock(clock.clone());
    let mgr = LockManager::builder(backend.clone())
        .clock(clock.clone())
        .wait(Some(secs(1)))
        .build()
        .unwrap();
    (clock, backend, mgr)
}

/// The renewal thread reacts to the manual clock within milliseconds of real time; wait
/// (bounded) for it to have done what the test expects.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < secs(5), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn renewal_keeps_a_lock_alive_past_many_ttls() {
    let (clock, _backend, mgr) = setup();
    let other = mgr.clone();
    let g = mgr
        .lock_with("long", LockOptions::new().ttl(secs(3)).auto_renew(true))
        .unwrap();
    assert!(g.is_renewing());
    // 30 s = 10 TTLs, one renewal interval (TTL/3 = 1 s) at a time.
    for i in 1..=30 {
        clock.advance(secs(1));
        eventually("a renewal", || mgr.stats().renewals >= i);
        g.check().unwrap();
    }
    let waiter = std::thread::spawn(move || other.try_lock("long").map(|g| g.is_some()));
    assert!(
        !waiter.join().unwrap().unwrap(),
        "a waiter took a renewed lock"
    );
    assert!(g.remaining() > secs(2));
    assert_eq!(mgr.stats().lost, 0);
    g.release().unwrap();
}

#[test]
fn renewal_stops_when_the_guard_goes() {
    let (clock, _backend, mgr) = setup();
    let g = mgr
        .lock_with("short", LockOptions::new().ttl(secs(3)).auto_renew(true))
        .unwrap();
    clock.advance(secs(1));
    eventually("a renewal", || mgr.stats().renewals == 1);
    drop(g);
    for _ in 0..5 {
        clock.advance(secs(1));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mgr.stats().renewals, 1);
    assert_eq!(mgr.stats().lost, 0, "a release is not a loss");
    assert!(!mgr.is_locked("short").unwrap());
}

#[test]
fn the_hold_cap_stops_renewal_and_says_why() {
    let (clock, _backend, mgr) = setup();
    let g = mgr
        .lock_with(
            "capped",
            LockOptions::new()
                .ttl(secs(3))
                .auto_renew(true)
                .max_hold(Some(secs(5))),
        )
        .unwrap();
    for i in 1..=4 {
        clock.advance(secs(1));
        eventually("a renewal", || mgr.stats().renewals >= i);
    }
    clock.advance(secs(1)); // 5 s: the cap
    eventually("renewal to stop", || !g.is_renewing());
    g.check().unwrap(); // still valid: the last renewal at 4 s runs to 7 s
    clock.advance(secs(2));
    let err = g.check().unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Lost {
                reason: LossReason::HoldCapReached,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(mgr.stats().renewals, 4);
    assert!(!mgr.is_locked("capped").unwrap());
}

#[test]
fn a_stolen_key_is_detected_at_the_next_renewal_and_the_callback_fires_once() {
    let (clock, backend, _) = setup();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mgr = LockManager::builder(backend.clone())
        .clock(clock.clone())
        .auto_renew(true)
        .on_lost(move |name, reason| {
            assert_eq!(name.as_bytes(), b"stolen");
            assert_eq!(reason, LossReason::TakenOver);
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let g = mgr
        .lock_with("stolen", LockOptions::new().ttl(secs(3)))
        .unwrap();
    // Somebody deletes the key behind our back and takes the name.
    assert!(backend.force_release(b"lock:stolen").unwrap());
    let thief = LockManager::builder(backend.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let t = std::thread::spawn(move || {
        let g = thief.lock("stolen").unwrap();
        std::mem::forget(g);
    });
    t.join().unwrap();
    g.check().unwrap(); // nothing can know before the next renewal
    clock.advance(secs(1));
    eventually("the loss to be seen", || g.is_lost());
    let err = g.check().unwrap_err();
    assert!(matches!(
        err,
        LockError::Lost {
            reason: LossReason::TakenOver,
            ..
        }
    ));
    for _ in 0..5 {
        clock.advance(secs(1));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(mgr.stats().lost, 1);
    // Our release must not delete the thief's key.
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
    assert!(mgr.is_locked("stolen").unwrap());
}

#[test]
fn without_renewal_check_fails_once_the_validity_passes() {
    let (clock, _backend, mgr) = setup();
    let g = mgr
        .lock_with("plain", LockOptions::new().ttl(secs(2)))
        .unwrap();
    clock.advance(Duration::from_millis(1999));
    g.check().unwrap();
    clock.advance(Duration::from_millis(1));
    assert!(matches!(
        g.check(),
        Err(LockError::Lost {
            reason: LossReason::Expired,
            ..
        })
    ));
}

#[test]
fn lock_all_takes_every_name_or_none() {
    let (_clock, _backend, mgr) = setup();
    let other = mgr.clone();
    let blocker = std::thread::spawn(move || {
        let g = other.lock("b").unwrap();
        std::mem::forget(g); // held until its TTL
    });
    blocker.join().unwrap();
    let err = mgr
        .lock_all_with(["c", "a", "b", "a"], LockOptions::new().wait(Some(secs(1))))
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    assert!(
        !mgr.is_locked("a").unwrap(),
        "a was taken and not given back"
    );
    assert!(!mgr.is_locked("c").unwrap());
    let all = mgr.lock_all(["z", "x", "y", "x"]).unwrap();
    let names: Vec<_> = all.guards().iter().map(|g| g.name().to_string()).collect();
    assert_eq!(names, ["`x`", "`y`", "`z`"]);
    all.check().unwrap();
    all.release().unwrap();
    for n in ["x", "y", "z"] {
        assert!(!mgr.is_locked(n).unwrap());
    }
    assert!(matches!(
        mgr.lock_all(Vec::<&str>::new()),
        Err(LockError::InvalidArgument { .. })
    ));
}

#[test]
fn wait_unlocked_returns_when_the_lock_frees_or_times_out() {
    let (clock, _backend, mgr) = setup();
    let holder = mgr.clone();
    std::thread::spawn(move || {
        std::mem::forget(
            holder
                .lock_with("busy", LockOptions::new().ttl(secs(3)))
                .unwrap(),
        )
    })
    .join()
    .unwrap();
    let t0 = clock.now();
    let err = mgr.wait_unlocked("busy", Some(secs(1))).unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }));
    assert_eq!(clock.now() - t0, secs(1));
    mgr.wait_unlocked("busy", Some(secs(10))).unwrap();
    assert!(clock.now() - t0 >= secs(3));
    assert!(clock.now() - t0 < secs(4));
    assert!(
        mgr.try_lock("busy").unwrap().is_some(),
        "it was not held any more"
    );
}

#[test]
fn force_unlock_and_health_check() {
    let (_clock, _backend, mgr) = setup();
    let g = mgr.lock("admin").unwrap();
    assert!(mgr.force_unlock("admin").unwrap());
    assert!(!mgr.force_unlock("admin").unwrap());
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
    mgr.health_check().unwrap();
}

#[test]
fn counters_match_what_happened() {
    let (clock, _backend, mgr) = setup();
    let g = mgr.lock("counted").unwrap(); // acquired 1
    let other = mgr.clone();
    let t = std::thread::spawn(move || {
        assert!(other.try_lock("counted").unwrap().is_none()); // contended 1
                                                               // retry interval starts at 1 ms: a 1 s wait on the manual clock makes several
                                                               // attempts, each contended, then a timeout.
        let err = other
            .lock_with("counted", LockOptions::new().wait(Some(secs(1))))
            .unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }));
    });
    t.join().unwrap();
    clock.advance(Duration::from_millis(500));
    g.release().unwrap();
    let g2 = mgr
        .lock_with("counted", LockOptions::new().ttl(secs(1)))
        .unwrap(); // acquired 2
    clock.advance(secs(2));
    assert!(g2.release().is_err()); // failed release 1
    let s = mgr.stats();
    assert_eq!(s.acquired, 2);
    assert_eq!(s.timeouts, 1);
    assert!(s.contended >= 3, "{s:?}");
    assert_eq!(s.failed_releases, 1);
    assert_eq!(s.lost, 0);
    // The 1 s wait ran on the manual clock, in full.
    assert!(s.wait_time >= secs(1), "{s:?}");
    // The first hold spanned the waiter's 1 s wait and 0.5 s more; the second, 2 s.
    assert_eq!(s.hold_time, secs(1) + Duration::from_millis(500) + secs(2));
}

/// An acquire that fails with an error that may have reached the store (a lost reply:
/// the manager then releases with the same token, best effort), or with one marked
/// unsent (it cannot have taken effect: no release, so the caller hears of it after one
/// failure).
#[test]
fn a_failed_acquire_is_released_unless_it_never_left() {
    for (fault, releases) in [
        (Fault::LoseReply, 1),
        (Fault::Fail(BackendErrorKind::Io), 0),
    ] {
        let backend = Faulty::new(MemoryBackend::new()).with(Op::TryAcquire, fault);
        let mgr = LockManager::new(backend.clone());
        let err = mgr.try_lock("x").unwrap_err();
        assert!(matches!(err, LockError::Backend { .. }), "{err}");
        assert_eq!(backend.calls(Op::Release), releases, "{fault:?}");
        assert!(
            !mgr.is_locked("x").unwrap(),
            "{fault:?} left the lock behind"
        );
    }
}

#[test]
fn a_send_guard_from_a_nested_hold_releases_with_the_last_guard() {
    let (_clock, _backend, mgr) = setup();
    let outer = mgr.lock("n").unwrap();
    let inner = mgr
        .lock_with("n", LockOptions::new().reentrant(true))
        .unwrap();
    let sent = outer.into_send();
    // This thread still holds the name through `inner`.
    assert!(matches!(
        mgr.try_lock("n"),
        Err(LockError::WouldDeadlock { .. })
    ));
    std::thread::spawn(move || sent.release())
        .join()
        .unwrap()
        .unwrap();
    assert!(
        mgr.is_locked("n").unwrap(),
        "released while a guard remained"
    );
    inner.release().unwrap();
    assert!(!mgr.is_locked("n").unwrap());
    assert!(mgr.try_lock("n").unwrap().is_some());
}
