//! What only the Redis backend has: wire behaviour, credentials, timeouts and faults, on
//! real `redis-server` processes.

use std::time::{Duration, Instant};

use lock_core::{BackendErrorKind, LockError, LockManager, LockOptions};
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;

const SECRET: &str = "hunter2-very-secret";

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

fn short_timeouts(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .connect_timeout(Duration::from_millis(200))
        .read_timeout(Duration::from_millis(200))
        .write_timeout(Duration::from_millis(200))
        .checkout_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[test]
fn keys_hold_the_token_and_the_fencing_counter() {
    let server = RedisServer::shared();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let name = fresh();
    let g = mgr.lock(&name).unwrap();
    let mut conn = server.raw_connection();
    let token: String = redis::cmd("GET")
        .arg(format!("lock:{name}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let fence: u64 = redis::cmd("GET")
        .arg(format!("fence:lock:{name}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(fence, g.fencing_token());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("lock:{name}"))
        .query(&mut conn)
        .unwrap();
    assert!(pttl > 9_000 && pttl <= 10_000, "{pttl}");
}

#[test]
fn scripts_run_by_sha_with_no_extra_round_trips() {
    let server = RedisServer::start();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let mut conn = server.raw_connection();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut conn)
        .unwrap();
    for _ in 0..20 {
        mgr.lock(fresh()).unwrap().release().unwrap();
    }
    let calls = |cmd: &str| server.command_calls(cmd);
    // 20 acquires + 20 releases; each script loaded once after its first NOSCRIPT.
    // (Commands called inside scripts are counted too, so GET/SET counts say nothing.)
    assert_eq!(calls("evalsha"), 40 + 2);
    assert_eq!(calls("script|load"), 2);
    assert_eq!(calls("eval"), 0);
    // The one connection the pool opened was opened (its setup ended by one PING) by
    // `connect`, before the counters were reset; no PING per checkout.
    assert_eq!(calls("ping"), 0, "a ping per checkout");
}

#[test]
fn password_in_url_works_and_never_shows() {
    let server = RedisServer::start_with(&["--requirepass", SECRET]);
    let url = format!("redis://:{SECRET}@{}/", server.addr());
    let backend = RedisBackend::connect(&url).unwrap();
    let mgr = LockManager::new(backend.clone());
    let g = mgr.lock(fresh()).unwrap();
    for shown in [
        format!("{backend:?}"),
        format!("{mgr:?}"),
        format!("{g:?}"),
        backend.addr().to_owned(),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    g.release().unwrap();
}

#[test]
fn acl_user_in_url_works() {
    let server = RedisServer::start_with(&["--user", "locker on >lockerpw ~lock:* ~fence:* +@all"]);
    let url = format!("redis://locker:lockerpw@{}/", server.addr());
    let mgr = LockManager::new(RedisBackend::connect(&url).unwrap());
    mgr.lock(fresh()).unwrap().release().unwrap();
}

#[test]
fn wrong_password_is_an_auth_error_without_the_password() {
    let server = RedisServer::start_with(&["--requirepass", SECRET]);
    let wrong = "not-the-password-xyz";
    let url = format!("redis://:{wrong}@{}/", server.addr());
    let mgr = LockManager::new(short_timeouts(&url));
    let err = mgr.lock(fresh()).unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Auth), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong) && !text.contains(SECRET), "{text}");
}

#[test]
fn forbidden_key_is_a_permission_error() {
    let server = RedisServer::start_with(&["--user", "narrow on >pw ~lock:* +@all"]);
    let url = format!("redis://narrow:pw@{}/", server.addr());
    let mgr = LockManager::new(RedisBackend::connect(&url).unwrap());
    let name = fresh();
    let err = mgr.try_lock(&name).unwrap_err();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Permission),
        "{err}"
    );
}

#[test]
fn unreachable_server_is_a_clear_error_within_the_timeouts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mgr = LockManager::new(short_timeouts(&format!("redis://127.0.0.1:{port}/")));
    let start = Instant::now();
    let err = mgr.lock(fresh()).unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn paused_server_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let backend = short_timeouts(&server.url());
    let mgr = LockManager::new(backend.clone());
    backend.ping().unwrap();
    server.pause();
    let start = Instant::now();
    let err = mgr
        .lock_with(
            fresh(),
            LockOptions::new().wait(Some(Duration::from_secs(10))),
        )
        .unwrap_err();
    let took = start.elapsed();
    server.resume();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Timeout), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn a_restarted_server_is_used_again_without_an_error() {
    let mut server = RedisServer::start();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    mgr.lock(fresh()).unwrap().release().unwrap();
    server.kill();
    server.restart();
    // The pooled connection broke while idle; the retry on a fresh one hides it.
    mgr.lock(fresh()).unwrap().release().unwrap();
}

#[test]
fn bad_urls_are_setup_errors() {
    for url in [
        "",
        "http://127.0.0.1/",
        "redis://127.0.0.1/notadb",
        "redis://:pw@/",
    ] {
        let err = RedisBackend::connect(url).unwrap_err();
        assert!(matches!(err, LockError::Setup { .. }), "{url}: {err}");
        assert!(!format!("{err:#}").contains("pw@"), "{err}");
    }
    assert!(RedisBackend::builder("redis://127.0.0.1/")
        .pool_size(0)
        .build()
        .is_err());
}

/// The two halves Redlock uses: a reply cut off at the deadline leaves the operation in
/// flight; the release sent behind it on the same connection runs after it once the server
/// is back, so nothing is left behind, and the connection's next users get their own
/// answers (the late reply is skipped, never taken for a later one).
#[test]
fn a_late_acquire_is_undone_behind_itself_and_its_reply_never_answers_anything_else() {
    use lock_core::{LockBackend, Token};
    use lock_redis::seam::{Finish, Outcome};
    let server = RedisServer::start();
    let b = one_connection(&server, Duration::from_secs(2));
    // Loads the scripts: a late EVALSHA the server did not know would never take effect.
    warm_up(&b);
    let key = format!("lock:{}", fresh());
    let token = Token::generate();
    let idle = b.idle().expect("the warm-up left an idle connection");
    assert!(b.idle().is_none(), "a pool of one has nothing else idle");
    server.pause();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(100);
    let late = match idle
        .acquire(key.as_bytes(), &token, Duration::from_secs(30))
        .finish(Some(deadline))
    {
        Outcome::Late(late) => late,
        Outcome::Answered(r) => panic!("a paused server answered: {r:?}"),
    };
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    // The deadline is kept to a tenth of the read timeout, plus scheduling.
    assert!(waited < Duration::from_millis(400), "{waited:?}");
    assert_eq!(late.error().kind(), BackendErrorKind::Timeout);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            server.resume();
        });
        // Runs after the acquire: it finds our key and deletes it.
        assert!(late.release(key.as_bytes(), &token).unwrap());
    });
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query(&mut server.raw_connection())
        .unwrap();
    assert_eq!(exists, 0, "the late acquire left its key");
    // The one pooled connection carried the late reply; its next users see their own.
    b.ping().unwrap();
    let other = Token::generate();
    assert!(b
        .try_acquire(key.as_bytes(), &other, Duration::from_secs(30))
        .unwrap()
        .is_some());
    assert!(b.inspect(key.as_bytes(), Some(&token)).unwrap().is_none());
    assert!(b.inspect(key.as_bytes(), Some(&other)).unwrap().is_some());
    assert!(b.release(key.as_bytes(), &other).unwrap());
}

/// A late reply on a connection that goes straight back to the pool is skipped too.
#[test]
fn a_dropped_late_operation_leaves_its_connection_in_step() {
    use lock_core::{LockBackend, Token};
    use lock_redis::seam::{Finish, Outcome};
    let server = RedisServer::start();
    let b = one_connection(&server, lock_redis::DEFAULT_IO_TIMEOUT);
    warm_up(&b);
    let key = format!("lock:{}", fresh());
    let token = Token::generate();
    server.pause();
    let flight = b
        .idle()
        .unwrap()
        .acquire(key.as_bytes(), &token, Duration::from_secs(30));
    let outcome = flight.finish(Some(Instant::now() + Duration::from_millis(50)));
    assert!(matches!(outcome, Outcome::Late(_)), "{outcome:?}");
    drop(outcome);
    server.resume();
    // The same (only) connection: the late acquire's fencing counter is not a PONG.
    b.ping().unwrap();
    assert!(b.inspect(key.as_bytes(), Some(&token)).unwrap().is_some());
}

/// A backend with one pooled connection (so a test knows which one each call uses).
fn one_connection(server: &RedisServer, read_timeout: Duration) -> RedisBackend {
    RedisBackend::builder(&server.url())
        .pool_size(1)
        .read_timeout(read_timeout)
        .wake_ups(false)
        .build()
        .unwrap()
}

/// One lock and release, so the connection is open and the scripts are loaded.
fn warm_up(b: &RedisBackend) {
    use lock_core::{LockBackend, Token};
    let (key, token) = (format!("lock:{}", fresh()), Token::generate());
    b.try_acquire(key.as_bytes(), &token, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    assert!(b.release(key.as_bytes(), &token).unwrap());
}

/// Nothing reached a server that refuses connections, so there is nothing to undo: the
/// failed acquire costs one refused connection, not the checkout timeout, and no second
/// one for a cleanup release.
#[test]
fn an_acquire_that_never_left_costs_one_refused_connection() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let mgr = LockManager::new(short_timeouts(&url));
    let start = Instant::now();
    let err = mgr.try_lock(fresh()).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io), "{err}");
    // The refused connection ends the wait for one (the checkout timeout is 500 ms).
    assert!(took < Duration::from_millis(400), "{took:?}");
}

/// `InFlight`'s docs promise that dropping it unread discards the reply; the connection
/// goes back to the pool, and its next user must get its own answer, not the dropped one.
#[test]
fn an_in_flight_operation_dropped_unread_never_answers_the_next_caller() {
    use lock_core::{LockBackend, Token};
    let server = RedisServer::start();
    let b = one_connection(&server, lock_redis::DEFAULT_IO_TIMEOUT);
    warm_up(&b);
    let key = format!("lock:{}", fresh());
    let token = Token::generate();
    let flight = b
        .idle()
        .unwrap()
        .acquire(key.as_bytes(), &token, Duration::from_secs(30));
    drop(flight);
    // Let the reply (the fencing counter, an integer) arrive on the pooled connection.
    std::thread::sleep(Duration::from_millis(50));
    let absent = format!("lock:{}", fresh());
    // PTTL of a key that does not exist is -2 (None); the acquire's counter would read
    // as a TTL.
    assert_eq!(b.inspect(absent.as_bytes(), None).unwrap(), None);
    // With no reply yet (a paused server), the drop costs one shortest read, and the reply
    // that comes later is still skipped.
    server.pause();
    let flight = b
        .idle()
        .unwrap()
        .acquire(absent.as_bytes(), &token, Duration::from_secs(30));
    let start = Instant::now();
    drop(flight);
    let took = start.elapsed();
    server.resume();
    assert!(took < Duration::from_millis(100), "{took:?}");
    b.ping().unwrap();
    assert_eq!(b.inspect(fresh().as_bytes(), None).unwrap(), None);
}

/// `finish` keeps its deadline (give or take a tenth of the read timeout) even when the
/// connection it reads turns out to be reset and the command goes out again on a new
/// one to an address that accepts but never answers: `redis`'s connection setup waits
/// for each of its replies with the whole time left, so the new connection takes twice
/// the time given to it.
#[test]
fn finish_keeps_its_deadline_when_the_resend_meets_a_silent_server() {
    use lock_core::Token;
    use lock_redis::seam::{Finish, Outcome};
    let server = RedisServer::start();
    let b = one_connection(&server, Duration::from_millis(50));
    warm_up(&b);
    let (key, token) = (format!("lock:{}", fresh()), Token::generate());
    server.pause();
    let late = b
        .idle()
        .unwrap()
        .acquire(key.as_bytes(), &token, Duration::from_secs(30))
        .finish(Some(Instant::now() + Duration::from_millis(20)));
    assert!(matches!(late, Outcome::Late(_)), "{late:?}");
    drop(late);
    // Killed with that command unread: the idle connection is reset.
    let status = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Its port, taken over by a listener that accepts and never answers.
    let until = Instant::now() + Duration::from_secs(5);
    let _silent = loop {
        match std::net::TcpListener::bind(("127.0.0.1", server.port())) {
            Ok(l) => break l,
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the killed server's port stays taken: {e}"),
        }
    };
    std::thread::sleep(Duration::from_millis(20));
    let flight = b.idle().unwrap().release(key.as_bytes(), &token);
    let start = Instant::now();
    let outcome = flight.finish(Some(start + Duration::from_millis(50)));
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(80),
        "{outcome:?} after {took:?}"
    );
}
