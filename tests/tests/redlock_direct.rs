//! Redlock on real servers: the caller's direct reads and writes (bounded waits, the
//! order of a release behind the acquisition it undoes).

use std::thread;
use std::time::Duration;

use lock_core::{LockBackend, Token};
use lock_redlock::RedlockBackend;
use lock_tests::harness::RedisServer;
use lock_tests::proxy::{Mode, Proxy};

/// Short against the latencies injected here (400 ms), long enough that live nodes on a
/// busy two-core machine answer within it.
const NODE_TIMEOUT: Duration = Duration::from_millis(200);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The caller never waits for a node longer than the node timeout (plus a little): not
/// even when the idle connection it writes to turns out to be broken (reset by the peer)
/// and the node's address accepts a new connection but says nothing on it.
#[test]
fn a_release_on_a_reset_idle_connection_waits_no_longer_than_the_node_timeout() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let backend = RedlockBackend::builder(&urls)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    for _ in 0..3 {
        let key = format!("lock:{}", lock_core::conformance::fresh_name());
        let t = Token::generate();
        backend
            .try_acquire(key.as_bytes(), &t, ms(5_000))
            .unwrap()
            .unwrap();
        backend.release(key.as_bytes(), &t).unwrap();
    }
    let key = format!("lock:{}", lock_core::conformance::fresh_name());
    let token = Token::generate();
    // Node 2 is stopped: its part of the acquire is late and stays unread in its socket.
    servers[2].pause();
    backend
        .try_acquire(key.as_bytes(), &token, Duration::from_secs(30))
        .unwrap()
        .unwrap();
    // It dies with that command unread, so the kernel resets the idle connection; a
    // listener that never answers takes its port (a hung process, a proxy).
    let port = servers[2].port();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &servers[2].pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    thread::sleep(ms(5));
    let _silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    thread::sleep(ms(5));
    let start = std::time::Instant::now();
    let released = backend.release(key.as_bytes(), &token);
    let took = start.elapsed();
    assert!(released.unwrap());
    // Not the connect or read timeout (1 s each): the node timeout, and scheduling margin.
    assert!(
        took < NODE_TIMEOUT + ms(300),
        "release took {took:?} with a {NODE_TIMEOUT:?} node timeout"
    );
}

/// A granted lock whose third node was late (its acquire still on the way, on one pooled
/// connection) is released while that connection is busy: the release goes out on another
/// connection, the node answers it at once ("not ours": the acquire has not arrived), and
/// the acquire lands afterwards, leaving our key on the node for the whole TTL.
#[test]
fn a_granted_locks_release_never_overtakes_a_late_acquire_on_its_node() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let proxy = Proxy::start(&servers[2].addr()).unwrap();
    let urls = vec![servers[0].url(), servers[1].url(), proxy.url()];
    let backend = RedlockBackend::builder(&urls)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap();
    // Open several connections to every node (concurrent callers), and load the scripts.
    // Only the connections matter here: on a busy machine a call may miss the node
    // timeout and fail, which is no fault of this warm-up.
    thread::scope(|s| {
        for _ in 0..6 {
            let b = backend.clone();
            s.spawn(move || {
                for _ in 0..30 {
                    let key = format!("lock:{}", lock_core::conformance::fresh_name());
                    let t = Token::generate();
                    if let Ok(Some(_)) = b.try_acquire(key.as_bytes(), &t, ms(5_000)) {
                        let _ = b.release(key.as_bytes(), &t);
                    }
                    let _ = b.health_check();
                }
            });
        }
    });
    backend.health_check().unwrap();
    assert!(
        proxy.open_connections() >= 2,
        "{}",
        proxy.open_connections()
    );

    let mut leaked = Vec::new();
    for round in 0..5 {
        let key = format!("lock:{}", lock_core::conformance::fresh_name());
        let token = Token::generate();
        // Node 2's copy of the acquire is held back (as by a retransmission) ...
        proxy.set_mode(Mode::Latency {
            base: ms(400),
            jitter: ms(0),
        });
        let got = backend
            .try_acquire(key.as_bytes(), &token, Duration::from_secs(30))
            .unwrap();
        assert!(got.is_some(), "nodes 0 and 1 grant it");
        // ... while the node answers everything else at once.
        proxy.set_mode(Mode::PassThrough);
        thread::scope(|s| {
            // Something else uses the connection the late acquire went out on.
            let b = backend.clone();
            s.spawn(move || {
                let _ = b.health_check();
            });
            thread::sleep(ms(10));
            assert!(backend.release(key.as_bytes(), &token).unwrap());
        });
        // The held-back acquire arrives.
        thread::sleep(ms(700));
        assert!(proxy.wait_idle(Duration::from_secs(2)));
        let pttl = servers[2].pttl(&key);
        if pttl > 0 {
            leaked.push((round, pttl));
        }
        // Let the node count as up again before the next round.
        while backend.health_check().is_err() {
            thread::sleep(ms(50));
        }
        thread::sleep(ms(200));
    }
    assert!(
        leaked.is_empty(),
        "released locks left their key on node 2 (round, pttl ms): {leaked:?}"
    );
}
