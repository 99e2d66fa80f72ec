//! Wake-ups on real `redis-server` processes: a release wakes the waiters of its key long
//! before their retry interval, through this process and through the wake channel, and
//! keeps doing so after the server restarts.
//!
//! Waiters here poll only every second (`retry_interval(1 s, 1 s)` or longer), so being
//! served within 200 ms of a release can only be a wake-up. These are behavioural checks
//! with generous bounds, not timing benchmarks (see `src/bin/bench.rs` for that).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use lock_core::conformance::fresh_name;
use lock_core::testing::{Faulty, Op};
use lock_core::{LockBackend, LockManager, LockOptions};
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;

/// Far below the 1 s retry interval: only a wake-up is this fast.
const WOKEN_WITHIN: Duration = Duration::from_millis(200);

fn slow_poller(backend: impl LockBackend) -> LockManager {
    LockManager::builder(backend)
        .retry_interval(Duration::from_secs(1), Duration::from_secs(1))
        .wait(Some(Duration::from_secs(20)))
        .build()
        .unwrap()
}

/// A backend on its own wake channel, so concurrent tests on the shared server neither
/// wake each other nor count in each other's subscriber numbers.
fn backend_on(server: &RedisServer, channel: &str) -> RedisBackend {
    RedisBackend::builder(&server.url())
        .wake_channel(channel)
        .build()
        .unwrap()
}

fn subscribers(server: &RedisServer, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.raw_connection())
        .unwrap();
    n
}

fn wait_for_subscribers(server: &RedisServer, channel: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(server, channel) != n {
        assert!(
            Instant::now() < deadline,
            "{channel} never reached {n} subscribers"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a thread that takes `name` through `mgr` and reports when it got it.
fn waiter(mgr: &LockManager, name: &str) -> (mpsc::Receiver<()>, thread::JoinHandle<Instant>) {
    let (mgr, name) = (mgr.clone(), name.to_owned());
    let (started, ready) = mpsc::channel();
    let handle = thread::spawn(move || {
        started.send(()).unwrap();
        let g = mgr.lock(&name).unwrap();
        let at = Instant::now();
        g.release().unwrap();
        at
    });
    (ready, handle)
}

/// Lets a freshly started waiter make its first attempt and block in its wait.
fn settle(ready: &mpsc::Receiver<()>) {
    ready.recv().unwrap();
    thread::sleep(Duration::from_millis(100));
}

fn assert_woken(released_at: Instant, acquired_at: Instant) {
    let took = acquired_at.saturating_duration_since(released_at);
    assert!(
        took < WOKEN_WITHIN,
        "waiter got the lock {took:?} after the release: it polled instead of being woken"
    );
}

#[test]
fn a_release_in_this_process_wakes_a_waiter_at_once() {
    let server = RedisServer::shared();
    let backend = RedisBackend::connect(&server.url()).unwrap();
    let holder = LockManager::new(backend.clone());
    let name = fresh_name();
    let g = holder.lock(&name).unwrap();
    let (ready, w) = waiter(&slow_poller(backend), &name);
    settle(&ready);
    let released_at = Instant::now();
    g.release().unwrap();
    assert_woken(released_at, w.join().unwrap());
}

#[test]
fn a_release_by_another_process_wakes_a_waiter_through_the_channel() {
    let server = RedisServer::shared();
    let channel = format!("wake:{}", fresh_name());
    // Two backends with their own pools and ids: as far as Redis is concerned, two
    // processes.
    let here = backend_on(&server, &channel);
    let there = LockManager::new(backend_on(&server, &channel));
    let name = fresh_name();
    let g = there.lock(&name).unwrap();
    let (ready, w) = waiter(&slow_poller(here), &name);
    settle(&ready);
    wait_for_subscribers(&server, &channel, 1);
    let released_at = Instant::now();
    g.release().unwrap();
    assert_woken(released_at, w.join().unwrap());
}

#[test]
fn force_unlock_elsewhere_wakes_a_waiter() {
    let server = RedisServer::shared();
    let channel = format!("wake:{}", fresh_name());
    let name = fresh_name();
    let holder = LockManager::new(backend_on(&server, &channel));
    std::mem::forget(holder.lock(&name).unwrap());
    let (ready, w) = waiter(&slow_poller(backend_on(&server, &channel)), &name);
    settle(&ready);
    wait_for_subscribers(&server, &channel, 1);
    let admin = LockManager::new(backend_on(&server, &channel));
    let released_at = Instant::now();
    assert!(admin.force_unlock(&name).unwrap());
    assert_woken(released_at, w.join().unwrap());
}

#[test]
fn wait_unlocked_is_woken_by_a_release() {
    let server = RedisServer::shared();
    let backend = RedisBackend::connect(&server.url()).unwrap();
    let name = fresh_name();
    let g = LockManager::new(backend.clone()).lock(&name).unwrap();
    let watcher = slow_poller(backend);
    let n = name.clone();
    let (started, ready) = mpsc::channel();
    let w = thread::spawn(move || {
        started.send(()).unwrap();
        watcher
            .wait_unlocked(&n, Some(Duration::from_secs(20)))
            .unwrap();
        Instant::now()
    });
    settle(&ready);
    let released_at = Instant::now();
    g.release().unwrap();
    assert_woken(released_at, w.join().unwrap());
}

#[test]
fn releases_of_other_keys_do_not_wake_a_waiter() {
    let server = RedisServer::shared();
    let channel = format!("wake:{}", fresh_name());
    let here = backend_on(&server, &channel);
    let counting = Faulty::new(here.clone());
    // Polls at most once in the first second (the first pause is drawn from 1..2 s).
    let waiting = LockManager::builder(counting.clone())
        .retry_interval(Duration::from_secs(2), Duration::from_secs(2))
        .wait(Some(Duration::from_secs(20)))
        .build()
        .unwrap();
    let there = LockManager::new(backend_on(&server, &channel));
    let local = LockManager::new(here);
    let name = fresh_name();
    let g = there.lock(&name).unwrap();
    let (ready, w) = waiter(&waiting, &name);
    settle(&ready);
    wait_for_subscribers(&server, &channel, 1);
    for _ in 0..20 {
        // Other keys released in another process and in this one.
        there.lock(fresh_name()).unwrap().release().unwrap();
        local.lock(fresh_name()).unwrap().release().unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    let released_at = Instant::now();
    g.release().unwrap();
    assert_woken(released_at, w.join().unwrap());
    assert_eq!(
        counting.calls(Op::TryAcquire),
        2,
        "the waiter tried more than its first attempt and the one after its own key's release"
    );
}

#[test]
fn wake_ups_survive_a_server_restart() {
    let mut server = RedisServer::start();
    let channel = lock_redis::DEFAULT_WAKE_CHANNEL;
    let here = RedisBackend::connect(&server.url()).unwrap();
    let there = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let waiting = slow_poller(here.clone());

    // A first wait starts the subscriber.
    let name = fresh_name();
    let g = there.lock(&name).unwrap();
    let short = LockOptions::new().wait(Some(Duration::from_millis(20)));
    assert!(LockManager::new(here).lock_with(&name, short).is_err());
    wait_for_subscribers(&server, channel, 1);
    drop(g);

    server.restart();
    wait_for_subscribers(&server, channel, 1);

    let name = fresh_name();
    let g = there.lock(&name).unwrap();
    let (ready, w) = waiter(&waiting, &name);
    settle(&ready);
    let released_at = Instant::now();
    g.release().unwrap();
    assert_woken(released_at, w.join().unwrap());
}

#[test]
fn the_subscriber_disconnects_when_its_backend_is_dropped() {
    let server = RedisServer::shared();
    let channel = format!("wake:{}", fresh_name());
    let backend = backend_on(&server, &channel);
    let name = fresh_name();
    let holder = LockManager::new(backend.clone());
    let g = holder.lock(&name).unwrap();
    let short = LockOptions::new().wait(Some(Duration::from_millis(20)));
    let waiting = LockManager::new(backend.clone());
    let other = thread::spawn(move || waiting.lock_with(&name, short).is_err());
    assert!(other.join().unwrap());
    wait_for_subscribers(&server, &channel, 1);
    drop(g);
    drop((holder, backend));
    wait_for_subscribers(&server, &channel, 0);
}

#[test]
fn without_the_channel_permission_locks_still_work_and_waiters_poll() {
    let server = RedisServer::start_with(&["--user", "nochan on >pw ~lock:* ~fence:* +@all"]);
    let url = format!("redis://nochan:pw@{}/", server.addr());
    let there = LockManager::new(RedisBackend::connect(&url).unwrap());
    let here = LockManager::builder(RedisBackend::connect(&url).unwrap())
        .retry_interval(Duration::from_millis(50), Duration::from_millis(50))
        .build()
        .unwrap();
    let name = fresh_name();
    let g = there.lock(&name).unwrap();
    let (ready, w) = waiter(&here, &name);
    settle(&ready);
    let released_at = Instant::now();
    g.release().unwrap();
    // Found by polling: 50 ms interval plus at most the 50 ms memory of the held key.
    let took = w.join().unwrap().saturating_duration_since(released_at);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(subscribers(&server, lock_redis::DEFAULT_WAKE_CHANNEL), 0);
}

#[test]
fn the_documented_acl_line_is_enough_to_lock_and_be_woken() {
    // The line in lock-redis's crate docs.
    let server = RedisServer::start_with(&[
        "--user",
        "waker on >pw ~lock:* ~fence:* &lock:released +evalsha +script|load +set +get +del \
         +incr +pexpire +pttl +ping +publish +subscribe",
    ]);
    let url = format!("redis://waker:pw@{}/", server.addr());
    let there = LockManager::new(RedisBackend::connect(&url).unwrap());
    let here = slow_poller(RedisBackend::connect(&url).unwrap());
    let name = fresh_name();
    let g = there.lock(&name).unwrap();
    let (ready, w) = waiter(&here, &name);
    settle(&ready);
    wait_for_subscribers(&server, lock_redis::DEFAULT_WAKE_CHANNEL, 1);
    let released_at = Instant::now();
    g.release().unwrap();
    assert_woken(released_at, w.join().unwrap());
    let admin = LockManager::new(RedisBackend::connect(&url).unwrap());
    let g = admin.lock(&name).unwrap();
    g.extend(Duration::from_secs(1)).unwrap();
    assert!(g.is_held().unwrap() && admin.is_locked(&name).unwrap());
    assert!(admin.force_unlock(&name).unwrap());
    admin.health_check().unwrap();
}

#[test]
fn an_expired_holder_elsewhere_is_found_by_polling() {
    let server = RedisServer::shared();
    let channel = format!("wake:{}", fresh_name());
    let there = LockManager::new(backend_on(&server, &channel));
    let here = LockManager::new(backend_on(&server, &channel));
    let name = fresh_name();
    std::mem::forget(
        there
            .lock_with(&name, LockOptions::new().ttl(Duration::from_millis(300)))
            .unwrap(),
    );
    let start = Instant::now();
    let g = here.lock(&name).unwrap();
    let took = start.elapsed();
    // TTL, plus at most the memory of the held key and one 100 ms retry interval, plus
    // scheduling margin for a busy machine.
    assert!(
        took < Duration::from_millis(300 + 50 + 100 + 500),
        "{took:?}"
    );
    g.release().unwrap();
}

#[test]
fn eight_waiters_are_all_served_without_polling_storms() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).unwrap();
    // Slower still than `slow_poller`: a waiter that polls pauses 2.5 s at least, far
    // longer than seven other holds take even on a busy machine.
    let mgr = LockManager::builder(backend)
        .retry_interval(Duration::from_secs(5), Duration::from_secs(5))
        .wait(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let name = fresh_name();
    let mut conn = server.raw_connection();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut conn)
        .unwrap();
    let rounds = 50;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (mgr, name) = (mgr.clone(), name.clone());
            thread::spawn(move || {
                let mut longest = Duration::ZERO;
                for _ in 0..rounds {
                    let asked = Instant::now();
                    let g = mgr.lock(&name).unwrap();
                    longest = longest.max(asked.elapsed());
                    thread::sleep(Duration::from_micros(100));
                    g.release().unwrap();
                }
                longest
            })
        })
        .collect();
    let longest = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap();
    // A waiter that had to poll waited at least 2.5 s (its first pause is drawn from
    // 2.5..5 s): every one of the 400 holds was handed over by a wake-up.
    assert!(longest < Duration::from_millis(2500), "{longest:?}");
    let evalsha = server.command_calls("evalsha");
    // One acquire and one release per hold, a few failed attempts at most: waiters are
    // answered from memory while a thread of this process holds the lock.
    let holds = 8 * rounds;
    assert!(evalsha >= 2 * holds, "{evalsha} scripts for {holds} holds");
    assert!(evalsha < 3 * holds, "{evalsha} scripts for {holds} holds");
}
