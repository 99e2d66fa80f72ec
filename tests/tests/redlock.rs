//! Redlock on real `redis-server` processes: the conformance suite on 3 and 5 nodes, every
//! pattern of occupied nodes, and node faults (kill, SIGSTOP, CLIENT PAUSE) during use.
//!
//! `LOCK_SOAK=1` runs the minority-killed exclusion check with more acquisitions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::conformance::{fresh_name, Harness};
use lock_core::{BackendErrorKind, LockError, LockManager, LockOptions};
use lock_redlock::{quorum, RedlockBackend};
use lock_tests::harness::{cluster, RedisServer};

const FOREIGN: &str = "foreign";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn urls(nodes: &[RedisServer]) -> Vec<String> {
    nodes.iter().map(RedisServer::url).collect()
}

/// The node timeout of the backends here. The default (50 ms) is right for servers on
/// their own machines; here five servers, the test threads and whatever else runs share
/// two cores, and a live node can miss 50 ms when the machine is busy. Tests whose claim
/// is a bound take it from this value plus [`SLACK`].
const NODE_TIMEOUT: Duration = Duration::from_millis(500);

/// Scheduling margin on top of a configured bound, for a busy two-core machine.
const SLACK: Duration = Duration::from_millis(300);

fn redlock(nodes: &[RedisServer]) -> RedlockBackend {
    RedlockBackend::builder(&urls(nodes))
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap()
}

/// A cluster of `n` shared by the conformance cases of this binary that run at the same
/// time (every case uses fresh names); it stops when the last of them is done.
fn shared_cluster(n: usize) -> Arc<Vec<RedisServer>> {
    static SHARED: Mutex<Vec<(usize, Weak<Vec<RedisServer>>)>> = Mutex::new(Vec::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot
        .iter()
        .find(|(k, _)| *k == n)
        .and_then(|(_, w)| w.upgrade())
    {
        return c;
    }
    let c = Arc::new(cluster(n));
    slot.retain(|(k, _)| *k != n);
    slot.push((n, Arc::downgrade(&c)));
    c
}

lock_core::conformance_suite!(redlock3, || {
    let nodes = shared_cluster(3);
    Harness::new(redlock(&nodes)).keep_alive(nodes)
});

lock_core::conformance_suite!(redlock5, || {
    let nodes = shared_cluster(5);
    Harness::new(redlock(&nodes)).keep_alive(nodes)
});

/// Pauses nodes with SIGSTOP and resumes them when dropped, even if the test panics.
struct Paused<'a>(Vec<&'a RedisServer>);

impl<'a> Paused<'a> {
    fn new(nodes: impl IntoIterator<Item = &'a RedisServer>) -> Self {
        let nodes: Vec<_> = nodes.into_iter().collect();
        for n in &nodes {
            n.pause();
        }
        Paused(nodes)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        for n in &self.0 {
            n.resume();
        }
    }
}

fn get(node: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut node.raw_connection())
        .unwrap()
}

fn occupy(node: &RedisServer, key: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(FOREIGN)
        .arg("PX")
        .arg(10_000)
        .query::<()>(&mut node.raw_connection())
        .unwrap();
}

/// Nodes whose key holds a token that is not the foreign one: ours (the test cannot see
/// our token, but nobody else writes these keys).
fn ours(nodes: &[&RedisServer], key: &str) -> usize {
    nodes
        .iter()
        .filter(|n| get(n, key).is_some_and(|v| v != FOREIGN))
        .count()
}

/// How many keys `node` has let expire (`INFO stats`), to tell a deleted key from one
/// that expired.
fn expired_keys(node: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut node.raw_connection())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("expired_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("expired_keys in INFO stats")
}

/// Polls `cond` for up to 2 s: cleanup runs on the node workers after the call returned.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(Instant::now() < until, "never happened: {what}");
        thread::sleep(ms(5));
    }
}

fn quorum_matrix(n: usize) {
    let nodes = cluster(n);
    let all: Vec<&RedisServer> = nodes.iter().collect();
    let mgr = LockManager::new(redlock(&nodes));
    let q = quorum(n);
    for pattern in 0u32..(1 << n) {
        let name = fresh_name();
        let key = format!("lock:{name}");
        for (i, node) in nodes.iter().enumerate() {
            if pattern & (1 << i) != 0 {
                occupy(node, &key);
            }
        }
        let free = n - pattern.count_ones() as usize;
        let guard = mgr.try_lock(&name).unwrap();
        assert_eq!(guard.is_some(), free >= q, "n {n}, occupied {pattern:0n$b}");
        if let Some(g) = guard {
            assert!(ours(&all, &key) >= q, "n {n}, occupied {pattern:0n$b}");
            g.release().unwrap();
        }
        // No key with our token is left anywhere; the foreign keys are untouched.
        eventually("no key of ours left", || ours(&all, &key) == 0);
        for (i, node) in nodes.iter().enumerate() {
            let foreign = get(node, &key).as_deref() == Some(FOREIGN);
            assert_eq!(foreign, pattern & (1 << i) != 0, "node {i}, {pattern:0n$b}");
        }
    }
}

#[test]
fn quorum_matrix_3() {
    quorum_matrix(3);
}

#[test]
fn quorum_matrix_5() {
    quorum_matrix(5);
}

#[test]
fn minority_killed_mid_run_keeps_exclusion() {
    const THREADS: usize = 8;
    let per_thread: usize = if std::env::var_os("LOCK_SOAK").is_some() {
        2_000
    } else {
        300
    };
    let total = THREADS * per_thread;
    let mut nodes = cluster(5);
    let mgr = LockManager::builder(redlock(&nodes))
        .wait(Some(Duration::from_secs(10)))
        .retry_interval(ms(1), ms(10))
        .build()
        .unwrap();
    let name = fresh_name();
    // Kept in this process, not on the nodes being killed; updated non-atomically.
    let counter = AtomicU64::new(0);
    let (inside, max_inside) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (done, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..per_thread {
                    let guard = loop {
                        match mgr.lock(&name) {
                            Ok(g) => break g,
                            Err(e) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                                eprintln!("acquire failed (retrying): {e}");
                            }
                        }
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(now, Ordering::SeqCst);
                    let v = counter.load(Ordering::SeqCst);
                    thread::yield_now();
                    counter.store(v + 1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    if let Err(e) = guard.release() {
                        failures.fetch_add(1, Ordering::SeqCst);
                        eprintln!("release failed: {e}");
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for (victim, at) in [(3, 0.3), (4, 0.6)] {
            while (done.load(Ordering::SeqCst) as f64) < total as f64 * at {
                thread::sleep(ms(1));
            }
            nodes[victim].kill();
            eprintln!(
                "killed node {victim} after {} acquisitions, {:?}",
                done.load(Ordering::SeqCst),
                started.elapsed()
            );
        }
    });
    let failures = failures.load(Ordering::SeqCst);
    eprintln!(
        "{total} acquisitions in {:?}, {failures} failed calls",
        started.elapsed()
    );
    assert_eq!(
        max_inside.load(Ordering::SeqCst),
        1,
        "two holders overlapped"
    );
    assert_eq!(counter.load(Ordering::SeqCst), total as u64);
    assert!(
        failures * 100 <= total,
        "{failures} failures in {total} acquisitions: more than 1%"
    );
}

/// Every acquire on a cluster that lost its majority is a quorum error, never a guard,
/// within the node timeout plus slack; several threads at once, none hangs.
fn assert_quorum_errors(mgr: &LockManager, bound: Duration, what: &str) {
    let all = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    let start = Instant::now();
                    let r = mgr.lock_with(fresh_name(), LockOptions::new().wait(Some(ms(2000))));
                    let took = start.elapsed();
                    all.lock().unwrap().push(took);
                    let err = r.expect_err("a guard without a quorum");
                    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Quorum), "{err}");
                    assert!(
                        format!("{err:#}").contains("need")
                            || format!("{err:#}").contains("needed"),
                        "{err}"
                    );
                    assert!(
                        took <= bound,
                        "a failed acquire took {took:?} (bound {bound:?})"
                    );
                }
            });
        }
    });
    let mut all = all.into_inner().unwrap();
    all.sort();
    eprintln!(
        "failed acquires with {what}: p50 {:?}, slowest {:?}",
        all[all.len() / 2],
        all[all.len() - 1]
    );
}

/// The bound on a failed acquire: the node timeout plus slack.
const FAILED_ACQUIRE_BOUND: Duration = NODE_TIMEOUT.saturating_add(SLACK);

#[test]
fn majority_killed_every_acquire_is_a_quorum_error_in_bounded_time() {
    let mut nodes = cluster(5);
    let mgr = LockManager::new(redlock(&nodes));
    mgr.lock(fresh_name()).unwrap().release().unwrap();
    for victim in &mut nodes[..3] {
        victim.kill();
    }
    // The first call meets the failures; later ones know the nodes are down and do not
    // send to them (their workers ping them instead).
    let start = Instant::now();
    let first = mgr.try_lock(fresh_name()).unwrap_err();
    eprintln!(
        "first failed acquire with 3 of 5 nodes killed: {:?}",
        start.elapsed()
    );
    assert_names_outcomes(
        &format!("{first:#}"),
        &nodes,
        &[": error", ": timeout", ": not sent"],
    );
    assert_quorum_errors(&mgr, FAILED_ACQUIRE_BOUND, "3 of 5 nodes killed");
    let later = mgr.try_lock(fresh_name()).unwrap_err();
    assert_names_outcomes(
        &format!("{later:#}"),
        &nodes,
        &[": not sent", ": error", ": timeout"],
    );
    assert!(format!("{later:#}").contains("is down"), "{later}");
}

/// `text` names every node, and the first three with one of `outcomes`.
fn assert_names_outcomes(text: &str, nodes: &[RedisServer], outcomes: &[&str]) {
    for (i, node) in nodes.iter().enumerate() {
        let addr = format!("{}/0", node.addr());
        assert!(text.contains(&addr), "{addr} not named: {text}");
        if i < 3 {
            assert!(
                outcomes
                    .iter()
                    .any(|o| text.contains(&format!("{addr}{o}"))),
                "{addr}: none of {outcomes:?} in {text}"
            );
        }
    }
}

#[test]
fn majority_paused_every_acquire_is_a_quorum_error_and_leaves_nothing() {
    let nodes = cluster(5);
    let all: Vec<&RedisServer> = nodes.iter().collect();
    let mgr = LockManager::new(redlock(&nodes));
    mgr.lock(fresh_name()).unwrap().release().unwrap();
    let name = fresh_name();
    let paused = Paused::new(&nodes[..3]);
    let start = Instant::now();
    let err = mgr.try_lock(&name).unwrap_err();
    let took = start.elapsed();
    eprintln!("first failed acquire with 3 of 5 nodes paused: {took:?}");
    assert!(took <= FAILED_ACQUIRE_BOUND, "{took:?}");
    // A paused node either times out, or fails to give a pooled connection in time.
    let timed_out = format!(": timeout (no answer within {NODE_TIMEOUT:?})");
    assert_names_outcomes(
        &format!("{err:#}"),
        &nodes,
        &[&timed_out, ": error (timed out"],
    );
    assert_quorum_errors(&mgr, FAILED_ACQUIRE_BOUND, "3 of 5 nodes paused");
    drop(paused);
    // The paused nodes now run the acquisitions they had received, then the releases
    // queued behind them: nothing of ours survives, and the lock is free.
    let key = format!("lock:{name}");
    eventually("no key of ours left", || ours(&all, &key) == 0);
    assert!(!mgr.is_locked(&name).unwrap());
    mgr.lock(&name).unwrap().release().unwrap();
}

#[test]
fn paused_minority_costs_nothing_and_late_replies_change_nothing() {
    let nodes = cluster(5);
    let all: Vec<&RedisServer> = nodes.iter().collect();
    let backend = redlock(&nodes);
    let timeout = backend.node_timeout();
    let mgr = LockManager::new(backend);
    let names: Vec<String> = (0..4).map(|_| fresh_name()).collect();
    for n in &names {
        mgr.lock(n).unwrap().release().unwrap();
    }
    let paused = Paused::new(&nodes[..2]);
    let took_all = Mutex::new(Vec::new());
    thread::scope(|s| {
        for name in &names {
            let (mgr, took_all) = (&mgr, &took_all);
            s.spawn(move || {
                for _ in 0..50 {
                    let start = Instant::now();
                    let g = mgr.try_lock(name).unwrap().expect("a quorum is up");
                    let took = start.elapsed();
                    took_all.lock().unwrap().push(took);
                    assert!(took <= timeout + SLACK, "acquire took {took:?}");
                    assert!(g.remaining() > Duration::from_secs(9));
                    g.release().unwrap();
                }
            });
        }
    });
    drop(paused);
    let mut took = took_all.into_inner().unwrap();
    took.sort();
    // A node that freezes costs the calls already waiting on it at most one node timeout
    // (acquire, and the release after it); from then on it is read last, or not at all
    // while it is down, so it costs nothing more.
    let slow = took.iter().filter(|t| **t > timeout / 2).count();
    eprintln!(
        "acquires with two of five nodes paused: p50 {:?}, slowest {:?}, {slow} of {} over \
         half the node timeout",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
    assert!(slow <= 2 * names.len(), "{slow} slow acquires");
    // Whatever the paused nodes received runs now; it must leave no lock behind.
    for name in &names {
        let key = format!("lock:{name}");
        eventually("no key of ours left", || ours(&all, &key) == 0);
        assert!(!mgr.is_locked(name).unwrap());
    }
    // And every node takes part again (a health check re-admits nodes at once; without
    // it, the next ping would, within a second).
    mgr.health_check().unwrap();
    let g = mgr.lock(&names[0]).unwrap();
    let key = format!("lock:{}", names[0]);
    eventually("every node holds the new lock", || ours(&all, &key) == 5);
    g.release().unwrap();
}

#[test]
fn an_acquire_slower_than_the_ttl_fails_and_cleans_up() {
    let nodes = cluster(3);
    let backend = RedlockBackend::builder(&urls(&nodes))
        .node_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mgr = LockManager::new(backend);
    mgr.lock(fresh_name()).unwrap().release().unwrap();
    let name = fresh_name();
    let key = format!("lock:{name}");
    // Node 0 answers at once, node 1 only after 300 ms, node 2 not until resumed: a
    // quorum needs node 1, later than the 200 ms TTL allows (validity 196 ms).
    let expired_before = expired_keys(&nodes[1]);
    let expired_before_2 = expired_keys(&nodes[2]);
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .query::<()>(&mut nodes[1].raw_connection())
        .unwrap();
    let paused = Paused::new(&nodes[2..]);
    let start = Instant::now();
    let result = mgr.lock_with(&name, LockOptions::new().ttl(ms(200)).wait(Some(ms(0))));
    let took = start.elapsed();
    {
        let err = result.expect_err("a lock without validity");
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Quorum), "{err}");
        // It gave up at the TTL's validity (196 ms), not at the 1 s node timeout.
        assert!(took >= ms(190) && took < ms(196) + SLACK, "{took:?}");
        // Node 0 is cleaned up at once.
        eventually("node 0 released", || get(&nodes[0], &key).is_none());
        // Node 1 runs our SET at 300 ms (its fencing counter moves) with a 200 ms TTL, and
        // the release queued right behind it: the key is deleted, not left to expire.
        let fence = || -> Option<u64> {
            redis::cmd("GET")
                .arg(format!("fence:{key}"))
                .query(&mut nodes[1].raw_connection())
                .unwrap()
        };
        eventually("node 1 ran the acquire", || fence() == Some(1));
        eventually("node 1 released our key", || get(&nodes[1], &key).is_none());
        assert_eq!(
            expired_keys(&nodes[1]),
            expired_before,
            "node 1 kept our key until it expired"
        );
    }
    drop(paused);
    // Node 2 runs the SET on resume, then the release behind it.
    let fence = || -> Option<u64> {
        redis::cmd("GET")
            .arg(format!("fence:{key}"))
            .query(&mut nodes[2].raw_connection())
            .unwrap()
    };
    eventually("node 2 ran the acquire", || fence() == Some(1));
    eventually("node 2 released our key", || get(&nodes[2], &key).is_none());
    assert_eq!(
        expired_keys(&nodes[2]),
        expired_before_2,
        "node 2 kept our key until it expired"
    );
    // A TTL that the drift alone eats is refused before any I/O.
    let err = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(2)))
        .unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
}

#[test]
fn errors_name_nodes_but_never_passwords() {
    const SECRET: &str = "redlock-secret-pw";
    let mut nodes: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_with(&["--requirepass", SECRET]))
        .collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("redis://:{SECRET}@{}/", n.addr()))
        .collect();
    let backend = RedlockBackend::connect(&urls).unwrap();
    let mgr = LockManager::new(backend.clone());
    let g = mgr.lock(fresh_name()).unwrap();
    nodes[1].kill();
    nodes[2].kill();
    let err = mgr.try_lock(fresh_name()).unwrap_err();
    let shown = format!("{err} {err:?} {backend:?} {mgr:?} {g:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    for node in &nodes {
        assert!(shown.contains(&node.addr()), "{shown}");
    }
    // The live node's answer may come before or after the two refusals decide the call.
    let live = format!("{}/0: ", nodes[0].addr());
    assert!(
        [": acquired", ": not awaited"]
            .iter()
            .any(|outcome| shown.contains(&format!("{live}{}", &outcome[2..]))),
        "{shown}"
    );
    // The held lock lost its quorum: its release cannot be confirmed.
    let err = g.release().unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Quorum), "{err}");
    assert!(!format!("{err:#}").contains(SECRET));
}

#[test]
fn a_restarted_node_is_used_again() {
    let mut nodes = cluster(3);
    let mgr = LockManager::new(redlock(&nodes));
    mgr.lock(fresh_name()).unwrap().release().unwrap();
    nodes[0].restart();
    nodes[1].restart();
    // An operation that met a broken connection may have counted a node as down; a
    // health check re-admits every node that answers.
    mgr.health_check().unwrap();
    let name = fresh_name();
    let g = mgr.lock(&name).unwrap();
    let all: Vec<&RedisServer> = nodes.iter().collect();
    let key = format!("lock:{name}");
    eventually("every node holds it", || ours(&all, &key) == 3);
    g.release().unwrap();
}

#[test]
fn auto_renewal_keeps_a_redlock_lock_past_its_ttl() {
    let nodes = shared_cluster(3);
    let mgr = LockManager::builder(redlock(&nodes))
        .auto_renew(true)
        .build()
        .unwrap();
    let name = fresh_name();
    // Renewed every 400 ms: the lock outlives its TTL twice over only through renewal.
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(1200)))
        .unwrap();
    thread::sleep(ms(2400));
    assert!(
        g.is_held().unwrap(),
        "renewal (through the dedicated handle) lost it"
    );
    assert!(g.remaining() > Duration::ZERO);
    assert!(LockManager::new(redlock(&nodes))
        .try_lock(&name)
        .unwrap()
        .is_none());
    g.release().unwrap();
    assert!(!mgr.is_locked(&name).unwrap());
}

#[test]
fn renewal_continues_with_one_node_killed() {
    let mut nodes = cluster(3);
    let mgr = LockManager::builder(redlock(&nodes))
        .auto_renew(true)
        .build()
        .unwrap();
    let name = fresh_name();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(600)))
        .unwrap();
    nodes[0].kill();
    let renewals = mgr.stats().renewals;
    // Three TTLs with a minority gone: every renewal still reaches a quorum.
    let start = Instant::now();
    while start.elapsed() < ms(1800) {
        g.check().unwrap();
        thread::sleep(ms(20));
    }
    assert!(mgr.stats().renewals >= renewals + 6, "{:?}", mgr.stats());
    assert!(g.is_held().unwrap());
    assert_eq!(mgr.stats().lost, 0);
    g.release().unwrap();
}

#[test]
fn renewal_stops_and_reports_loss_when_a_majority_is_gone() {
    let mut nodes = cluster(3);
    let lost = Arc::new(AtomicUsize::new(0));
    let seen = lost.clone();
    let mgr = LockManager::builder(redlock(&nodes))
        .auto_renew(true)
        .on_lost(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let ttl = ms(600);
    let g = mgr
        .lock_with(fresh_name(), LockOptions::new().ttl(ttl))
        .unwrap();
    let killed = Instant::now();
    nodes[0].kill();
    nodes[1].kill();
    eventually("the loss to be reported", || g.is_lost());
    let took = killed.elapsed();
    println!("redlock majority gone: loss reported after {took:?} (ttl {ttl:?})");
    // Renewal retries until the validity (TTL − drift from the last renewal) runs out.
    assert!(took <= ttl + SLACK, "{took:?}");
    assert!(matches!(g.check(), Err(LockError::Lost { .. })));
    eventually("the callback", || lost.load(Ordering::SeqCst) == 1);
    assert!(!g.is_renewing());
}
