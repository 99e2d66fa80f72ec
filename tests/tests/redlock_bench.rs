//! A quick measurement, not a test: Redlock ×3 and ×5 lock+release pairs per second
//! against the same commands fanned out by hand on persistent connections (write to all
//! N connections, then read every reply). Run it in release mode:
//!
//! ```text
//! cargo test --release -p lock-tests --test redlock_bench -- --ignored --nocapture
//! ```
//!
//! The workspace benchmark program (`tests/src/bin/bench.rs`) is the reference; this is
//! the Redlock crate's own quick check.

use std::time::{Duration, Instant};

use lock_core::LockManager;
use lock_redlock::RedlockBackend;
use lock_tests::harness::{cluster, RedisServer};

const RUN: Duration = Duration::from_secs(2);

/// SET NX PX and the fencing INCR in one script, as the acquire on every node.
const ACQUIRE: &str = r"
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('incr', KEYS[2])
end
return false
";
/// Compare-and-delete, as the release on every node.
const RELEASE: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
";

/// Pairs per second and the median pair, running `pair` for `RUN` after a warm-up.
fn measure(mut pair: impl FnMut()) -> (f64, Duration) {
    for _ in 0..200 {
        pair();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < RUN {
        let t = Instant::now();
        pair();
        times.push(t.elapsed());
    }
    let rate = times.len() as f64 / start.elapsed().as_secs_f64();
    times.sort_unstable();
    (rate, times[times.len() / 2])
}

/// The floor: both commands written to all N persistent connections, then every reply
/// read, acquire then release.
fn by_hand(nodes: &[RedisServer]) -> (f64, Duration) {
    let mut conns: Vec<redis::Connection> = nodes.iter().map(|n| n.raw_connection()).collect();
    let (acq, rel) = (redis::Script::new(ACQUIRE), redis::Script::new(RELEASE));
    for c in &mut conns {
        let _: redis::Value = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(ACQUIRE)
            .query(c)
            .unwrap();
        let _: redis::Value = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RELEASE)
            .query(c)
            .unwrap();
    }
    let token = "0123456789abcdef0123456789abcdef";
    let lock = redis::cmd("EVALSHA")
        .arg(acq.get_hash())
        .arg(2)
        .arg("lock:bench:hand")
        .arg("fence:lock:bench:hand")
        .arg(token)
        .arg(10_000)
        .get_packed_command();
    let unlock = redis::cmd("EVALSHA")
        .arg(rel.get_hash())
        .arg(1)
        .arg("lock:bench:hand")
        .arg(token)
        .get_packed_command();
    measure(|| {
        for packed in [&lock, &unlock] {
            for c in conns.iter_mut() {
                c.send_packed_command(packed).unwrap();
            }
            for c in conns.iter_mut() {
                let v = c.recv_response().unwrap();
                assert!(
                    !matches!(v, redis::Value::Nil),
                    "the floor lost its own lock"
                );
            }
        }
    })
}

fn library(nodes: &[RedisServer]) -> (f64, Duration) {
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let mgr = LockManager::new(RedlockBackend::connect(&urls).unwrap());
    measure(|| mgr.lock("bench:redlock").unwrap().release().unwrap())
}

#[test]
#[ignore = "a measurement; run with --release -- --ignored --nocapture"]
fn redlock_pairs_per_second_against_the_hand_fanned_floor() {
    println!("| nodes | library pairs/s | median pair | by hand pairs/s | median pair | ratio |");
    println!("|---|---|---|---|---|---|");
    for n in [3, 5] {
        let nodes = cluster(n);
        let (lib, lib_p50) = library(&nodes);
        let (floor, floor_p50) = by_hand(&nodes);
        println!(
            "| {n} | {lib:.0} | {lib_p50:?} | {floor:.0} | {floor_p50:?} | {:.2} |",
            lib / floor
        );
    }
}
