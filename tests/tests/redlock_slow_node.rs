//! Defect 2: Redlock waited for the slowest node. With one of three nodes 30 ms away,
//! every acquire and release took 31 ms instead of 0.15 ms. The target: with 1 of 3 nodes
//! +30 ms, the p50 of acquire and of release within 2× that of three fast nodes.
//!
//! A measurement with the target as its assertion; ignored by default because the target
//! is NOT met yet (see NOTES-issue-12-README.md). Run it in release mode:
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
#[ignore = "measurement; the 2x target is not met yet"]
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
