//! Redlock on real servers: the caller's direct reads and writes (bounded waits, the
//! order of a release behind the acquisition it undoes).

use std::thread;
use std::time::Duration;

use lock_core::{LockBackend, Token};
use lock_redlock::RedlockBackend;
use lock_tests::harness::RedisServer;

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
        .node_timeout(ms(50))
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
    assert!(
        took < ms(250),
        "release took {took:?} with a 50 ms node timeout"
    );
}
