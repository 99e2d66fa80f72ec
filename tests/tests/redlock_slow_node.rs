//! Defect 2: Redlock waited for the slowest node. With one of three nodes 30 ms away,
//! every acquire and release took 31 ms instead of 0.15 ms. The target: with 1 of 3 nodes
//! +30 ms, the p50 of acquire and of release within 2× that of three fast nodes.
//!
//! The regression test bounds every call by a fraction of the slow node's round trip (a
//! bound the configuration sets, far from the fast nodes' tens of microseconds, so it holds
//! on a busy machine) and checks that the slow node's late answers are still acted on: no
//! key is left on it. The 2× ratio itself is a measurement, ignored by default (two
//! medians of tens of microseconds are too noisy to assert under load). Run it in release
//! mode:
//!
//! ```text
//! cargo test --release -p lock-tests --test redlock_slow_node -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use lock_core::{LockBackend, Token};
use lock_redlock::RedlockBackend;
use lock_tests::harness::{cluster, RedisServer};
use lock_tests::proxy::{Mode, Proxy};

const PAIRS: usize = 300;

/// p50 of acquire and of release over `PAIRS` pairs on `urls`.
fn p50s(urls: &[String]) -> (Duration, Duration) {
    let backend = RedlockBackend::builder(urls)
        .node_timeout(Duration::from_millis(200))
        .connect()
        .unwrap();
    let (mut acquires, mut releases) = (Vec::new(), Vec::new());
    for i in 0..PAIRS + 20 {
        let key = format!("lock:{}", lock_core::conformance::fresh_name());
        let token = Token::generate();
        let start = Instant::now();
        let got = backend
            .try_acquire(key.as_bytes(), &token, Duration::from_secs(10))
            .unwrap();
        let acquired = start.elapsed();
        assert!(got.is_some());
        let start = Instant::now();
        assert!(backend.release(key.as_bytes(), &token).unwrap());
        let released = start.elapsed();
        if i >= 20 {
            acquires.push(acquired);
            releases.push(released);
        }
    }
    acquires.sort();
    releases.sort();
    (acquires[PAIRS / 2], releases[PAIRS / 2])
}

#[test]
#[ignore = "measurement; run in release mode on a quiet machine"]
fn one_slow_node_of_three_costs_at_most_twice_three_fast_nodes() {
    let nodes: Vec<RedisServer> = cluster(3);
    let fast: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let proxy = Proxy::start(&nodes[2].addr()).unwrap();
    proxy.set_mode(Mode::Latency {
        base: Duration::from_millis(15),
        jitter: Duration::ZERO,
    });
    let slow = vec![fast[0].clone(), fast[1].clone(), proxy.url()];
    let (fast_acquire, fast_release) = p50s(&fast);
    let (slow_acquire, slow_release) = p50s(&slow);
    eprintln!(
        "p50 acquire: {fast_acquire:?} on 3 fast nodes, {slow_acquire:?} with one +30 ms; \
         release: {fast_release:?}, {slow_release:?}"
    );
    assert!(slow_acquire <= 2 * fast_acquire, "acquire");
    assert!(slow_release <= 2 * fast_release, "release");
}

/// The slow node's round trip: 100 ms each way.
const SLOW_WAY: Duration = Duration::from_millis(100);
/// Calls measured after the warm-up.
const CALLS: usize = 2 * 30;
/// A call that waited for the slow node's reply takes a good part of its round trip; one
/// that did not, tens of microseconds. A quarter of the round trip tells them apart even
/// on a busy machine.
const WAITED: Duration = Duration::from_millis(50);
/// The least a call waits for a node it has stopped waiting for when it waits at all:
/// the 2 ms grace a decided call gives a node whose queue is full. Before the fix every
/// call paid at least this to the slow node (the median was 8 ms: the grace, and the
/// next call's wait behind the reply the grace cut off); now the median is a fraction of
/// a millisecond.
const GRACE: Duration = Duration::from_millis(2);

/// Once a quorum of fast nodes has decided a call, the call returns: it neither waits
/// for the slow node's reply nor, on the next call, behind that reply on the node's
/// connection. The late replies are still acted on behind the calls: every lock the slow
/// node granted is released there too.
#[test]
fn a_slow_node_holds_up_no_decided_call_and_keeps_no_key() {
    let nodes: Vec<RedisServer> = cluster(3);
    let proxy = Proxy::start(&nodes[2].addr()).unwrap();
    proxy.set_mode(Mode::Latency {
        base: SLOW_WAY,
        jitter: Duration::ZERO,
    });
    let urls = vec![nodes[0].url(), nodes[1].url(), proxy.url()];
    let backend = RedlockBackend::builder(&urls)
        // The slow node is healthy, well within its timeout: it takes part.
        .node_timeout(Duration::from_secs(2))
        .connect()
        .unwrap();
    let mut keys = Vec::new();
    let mut took = Vec::new();
    // The first call learns which node is slow (it waits for it once).
    for i in 0..2 + CALLS / 2 {
        let key = format!("lock:{}", lock_core::conformance::fresh_name());
        let token = Token::generate();
        let start = Instant::now();
        let got = backend
            .try_acquire(key.as_bytes(), &token, Duration::from_secs(30))
            .unwrap();
        let acquired = start.elapsed();
        assert!(got.is_some());
        let start = Instant::now();
        assert!(backend.release(key.as_bytes(), &token).unwrap());
        if i >= 2 {
            took.push(acquired);
            took.push(start.elapsed());
        }
        keys.push(key);
    }
    let waited = took.iter().filter(|t| **t >= WAITED).count();
    took.sort();
    let median = took[CALLS / 2];
    eprintln!(
        "{waited} of {CALLS} calls took {WAITED:?} or more; median {median:?}, slowest {:?}",
        took[CALLS - 1]
    );
    assert!(
        median < GRACE,
        "the median call took {median:?}: calls wait for the slow node"
    );
    // A stray scheduling stall on a busy machine is allowed; waiting for the node is not.
    assert!(
        waited <= CALLS / 10,
        "{waited} of {CALLS} calls waited for the slow node"
    );
    // Whatever the slow node granted, late, is released behind it.
    let mut conn = nodes[2].raw_connection();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<&String> = keys
            .iter()
            .filter(|k| {
                redis::cmd("EXISTS")
                    .arg(k.as_str())
                    .query::<i64>(&mut conn)
                    .unwrap()
                    == 1
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "{} keys left on the slow node: {left:?}",
            left.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
