//! Renewal, loss detection and multi-key locks on a real `redis-server`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::{LockError, LockManager, LockOptions, LossReason};
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;
use rand::seq::SliceRandom;

/// Scheduling margin on top of a bound that the configuration gives, for a busy
/// two-core machine.
const SLACK: Duration = Duration::from_millis(300);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

fn quick_backend(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .connect_timeout(ms(100))
        .read_timeout(ms(100))
        .write_timeout(ms(100))
        .checkout_timeout(ms(200))
        .build()
        .unwrap()
}

/// Polls `cond` every millisecond; returns how long it took, or panics after `limit`.
fn time_until(limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(ms(1));
    }
    start.elapsed()
}

#[test]
fn a_renewed_one_second_lock_held_five_seconds_is_never_lost_or_taken() {
    let server = RedisServer::shared();
    let mgr = LockManager::builder(RedisBackend::connect(&server.url()).unwrap())
        .auto_renew(true)
        .build()
        .unwrap();
    let name = fresh();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(1)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stolen = Arc::new(AtomicUsize::new(0));
    let waiter = {
        let (mgr, name, stop, stolen) = (
            LockManager::new(RedisBackend::connect(&server.url()).unwrap()),
            name.clone(),
            stop.clone(),
            stolen.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if mgr.try_lock(&name).unwrap().is_some() {
                    stolen.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(ms(20));
            }
        })
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        g.check().unwrap();
        std::thread::sleep(ms(50));
    }
    stop.store(true, Ordering::SeqCst);
    waiter.join().unwrap();
    assert_eq!(stolen.load(Ordering::SeqCst), 0);
    assert!(g.is_held().unwrap());
    let renewals = mgr.stats().renewals;
    // One renewal per third of the TTL: about 15 in 5 s, never more than 16; fewer when
    // a busy machine runs the renewal thread late (each renewal is timed from the last).
    assert!((8..=16).contains(&renewals), "{renewals} renewals");
    g.release().unwrap();
    assert_eq!(mgr.stats().lost, 0);
}

#[test]
fn a_key_deleted_behind_our_back_is_detected_within_one_renewal_interval() {
    let server = RedisServer::shared();
    let mgr = LockManager::builder(RedisBackend::connect(&server.url()).unwrap())
        .auto_renew(true)
        .build()
        .unwrap();
    let name = fresh();
    let ttl = ms(600);
    let g = mgr.lock_with(&name, LockOptions::new().ttl(ttl)).unwrap();
    let mut conn = server.raw_connection();
    redis::cmd("DEL")
        .arg(format!("lock:{name}"))
        .query::<()>(&mut conn)
        .unwrap();
    let took = time_until(ttl, || g.is_lost());
    println!(
        "deleted key detected after {took:?} (renewal interval {:?})",
        ttl / 3
    );
    assert!(took <= ttl / 3 + SLACK, "{took:?}");
    assert!(matches!(
        g.check(),
        Err(LockError::Lost {
            reason: LossReason::TakenOver,
            ..
        })
    ));
}

#[test]
fn a_server_paused_past_the_validity_makes_check_fail_in_time() {
    let server = RedisServer::start();
    let mgr = LockManager::builder(quick_backend(&server.url()))
        .auto_renew(true)
        .build()
        .unwrap();
    let ttl = ms(600);
    let g = mgr.lock_with(fresh(), LockOptions::new().ttl(ttl)).unwrap();
    let acquired = Instant::now();
    server.pause();
    let took = time_until(Duration::from_secs(3), || g.check().is_err());
    let since_acquire = acquired.elapsed();
    server.resume();
    println!(
        "paused server: check() failed {took:?} after the pause ({since_acquire:?} after acquire)"
    );
    // The validity ends at most one TTL after the last renewal; check() fails then, not later.
    assert!(took <= ttl + SLACK, "{took:?}");
    assert!(g.is_lost());
}

#[test]
fn lock_all_in_random_orders_never_deadlocks_and_counts_exactly() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 500;
    let server = RedisServer::shared();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let base = fresh();
    let names: Vec<String> = (0..4).map(|i| format!("{base}:{i}")).collect();
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let expected: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (mgr, names, counters, expected) = (
                mgr.clone(),
                names.clone(),
                counters.clone(),
                expected.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = rand::rng();
                let mut idx: Vec<usize> = (0..4).collect();
                for _ in 0..ROUNDS {
                    idx.shuffle(&mut rng);
                    let pair = [idx[0], idx[1]];
                    let all = mgr
                        .lock_all_with(
                            pair.map(|i| names[i].as_str()),
                            LockOptions::new().wait(Some(Duration::from_secs(30))),
                        )
                        .unwrap();
                    for i in pair {
                        // Non-atomic read-modify-write: only exact under the lock.
                        let v = counters[i].load(Ordering::SeqCst);
                        std::hint::spin_loop();
                        counters[i].store(v + 1, Ordering::SeqCst);
                        expected[i].fetch_add(1, Ordering::SeqCst);
                    }
                    all.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..4 {
        assert_eq!(
            counters[i].load(Ordering::SeqCst),
            expected[i].load(Ordering::SeqCst)
        );
        assert!(!mgr.is_locked(&names[i]).unwrap());
    }
    let total: u64 = expected.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(total, (THREADS * ROUNDS * 2) as u64);
    let stats = mgr.stats();
    assert_eq!(stats.acquired, total);
    assert_eq!(stats.timeouts, 0);
    assert_eq!(stats.failed_releases, 0);
}

/// Issue 11, defect 3 on Redis: a lost-lock callback that panics does not stop the
/// manager's renewal thread; later locks are still renewed past many TTLs.
#[test]
fn a_panicking_on_lost_callback_does_not_stop_renewal_on_redis() {
    let server = RedisServer::shared();
    // Renewed every third of it: a busy machine may run a renewal a few hundred ms late.
    let ttl = ms(1000);
    let mgr = LockManager::builder(RedisBackend::connect(&server.url()).unwrap())
        .auto_renew(true)
        .on_lost(|_, _| panic!("a callback that panics"))
        .build()
        .unwrap();
    let admin = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let (a, b) = (fresh(), fresh());
    let doomed = mgr.lock_with(&a, LockOptions::new().ttl(ttl)).unwrap();
    assert!(admin.force_unlock(&a).unwrap());
    // Seen at the next renewal (a third of the TTL), with generous scheduling margin.
    time_until(ttl * 20, || doomed.is_lost());
    time_until(ttl * 20, || mgr.stats().lost == 1);
    let kept = mgr.lock_with(&b, LockOptions::new().ttl(ttl)).unwrap();
    let renewed = mgr.stats().renewals;
    std::thread::sleep(ttl * 3);
    assert!(mgr.stats().renewals > renewed, "renewal stopped");
    kept.check().unwrap();
    assert!(kept.is_held().unwrap());
    assert!(kept.is_renewing());
}

/// Issue 11, defect 5 on Redis: the callback runs once, on the renewal thread, even when
/// the owner's own call found the loss first.
#[test]
fn on_lost_runs_once_on_the_renewal_thread_on_redis() {
    let server = RedisServer::shared();
    let ttl = ms(600);
    let seen: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let mgr = LockManager::builder(RedisBackend::connect(&server.url()).unwrap())
        .auto_renew(true)
        .on_lost(move |_, reason| {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            record.lock().push(format!("{thread} {reason:?}"));
        })
        .build()
        .unwrap();
    let admin = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let name = fresh();
    let g = mgr.lock_with(&name, LockOptions::new().ttl(ttl)).unwrap();
    assert!(admin.force_unlock(&name).unwrap());
    assert!(!g.is_held().unwrap());
    time_until(ttl * 20, || !seen.lock().is_empty());
    std::thread::sleep(ttl);
    assert_eq!(*seen.lock(), ["lock-renewal TakenOver"]);
}

/// Issue 11, the `Send` guard on Redis: a renewed lock taken on one thread is kept alive
/// past several TTLs and released on another.
#[test]
fn a_send_guard_is_renewed_and_released_on_another_thread_on_redis() {
    let server = RedisServer::shared();
    // Renewed every third of it: a busy machine may run a renewal a few hundred ms late.
    let ttl = ms(1000);
    let mgr = LockManager::builder(RedisBackend::connect(&server.url()).unwrap())
        .auto_renew(true)
        .build()
        .unwrap();
    let name = fresh();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ttl))
        .unwrap()
        .into_send();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(ttl * 3);
        g.check()?;
        assert!(g.is_held()?);
        g.release()
    });
    worker.join().unwrap().unwrap();
    assert!(!mgr.is_locked(&name).unwrap());
}
