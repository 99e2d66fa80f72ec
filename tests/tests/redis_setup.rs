//! Constructing a Redis or Redlock backend: `connect` checks the server within its
//! timeouts and the lazy forms do not, errors of the right kind for servers that cannot
//! be used (refused, silent, an ACL user without `+select`, a read-only replica), errors
//! that say each cause once, and `rediss://` in a build without TLS.

use std::time::{Duration, Instant};

use lock_core::{BackendErrorKind, LockBackend, LockError, LockManager};
use lock_redis::RedisBackend;
use lock_redlock::RedlockBackend;
use lock_tests::harness::{closed_port, error_chain, RedisServer};

/// The connect timeout under test, and the scheduling margin allowed on top of a bound
/// (a busy 2-core machine).
const CONNECT: Duration = Duration::from_millis(300);
const IO: Duration = Duration::from_millis(300);
const MARGIN: Duration = Duration::from_millis(700);

fn builder(url: &str) -> lock_redis::RedisBackendBuilder {
    RedisBackend::builder(url)
        .connect_timeout(CONNECT)
        .read_timeout(IO)
        .write_timeout(IO)
        // Longer than the others: a failed connection must end the wait, not this.
        .checkout_timeout(Duration::from_secs(5))
}

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

#[test]
fn connect_to_a_closed_port_fails_within_the_connect_timeout_and_lazy_does_not_connect() {
    let url = format!("redis://127.0.0.1:{}/", closed_port());
    let start = Instant::now();
    let err = builder(&url).connect().unwrap_err();
    let took = start.elapsed();
    // Not a setup mistake: the server is unavailable.
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io), "{err}");
    assert!(took <= CONNECT + MARGIN, "connect took {took:?}: {err}");
    assert!(
        error_chain(&err).contains("refused"),
        "{}",
        error_chain(&err)
    );

    let lazy = builder(&url).build().unwrap();
    assert!(RedisBackend::connect_lazy(&url).is_ok());
    // Its calls fail as fast: the refused connection ends the checkout wait.
    let start = Instant::now();
    let err = LockManager::new(lazy).try_lock(fresh()).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io), "{err}");
    // The acquire, then the manager's cleanup release: two connection attempts.
    assert!(
        took <= 2 * CONNECT + MARGIN,
        "try_lock took {took:?}: {err}"
    );
}

#[test]
fn connect_to_a_silent_server_fails_within_the_connect_timeout() {
    let server = RedisServer::start();
    server.pause();
    let start = Instant::now();
    let err = builder(&server.url()).connect().unwrap_err();
    let took = start.elapsed();
    server.resume();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Timeout), "{err}");
    assert!(took <= CONNECT + MARGIN, "connect took {took:?}: {err}");
    builder(&server.url()).connect().unwrap();
}

#[test]
fn redlock_connect_needs_a_quorum_and_connect_lazy_needs_nothing() {
    let server = RedisServer::start();
    let other = RedisServer::start();
    let closed = format!("redis://127.0.0.1:{}/", closed_port());
    let two_of_three = [server.url(), other.url(), closed.clone()];
    RedlockBackend::connect(&two_of_three).unwrap();
    let one_of_three = [
        server.url(),
        closed.clone(),
        format!("redis://127.0.0.1:{}/", closed_port()),
    ];
    let start = Instant::now();
    let err = RedlockBackend::builder(&one_of_three)
        .connect_timeout(CONNECT)
        .connect()
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Quorum), "{err}");
    assert!(
        error_chain(&err).contains("1 of 3 nodes answered"),
        "{}",
        error_chain(&err)
    );
    let bound = CONNECT + lock_redlock::DEFAULT_NODE_TIMEOUT + MARGIN;
    assert!(took <= bound, "redlock connect took {took:?}");
    RedlockBackend::connect_lazy(&one_of_three).unwrap();
}

#[test]
fn a_bad_url_says_its_cause_once() {
    let err = RedisBackend::connect("redis://127.0.0.1/notadb").unwrap_err();
    let shown = error_chain(&err);
    let source = std::error::Error::source(&err).expect("a source");
    let cause = std::error::Error::source(source).expect("the url parser's error");
    let cause = cause.to_string();
    assert_eq!(shown.matches(cause.as_str()).count(), 1, "{shown}");
}

/// Defect: a refused connection printed `Connection refused (os error 111)` twice in its
/// chain (the `redis` crate's error says its I/O cause and also returns it as source).
#[test]
fn a_refused_connection_says_its_cause_once() {
    let url = format!("redis://127.0.0.1:{}/", closed_port());
    let err = builder(&url).connect().unwrap_err();
    let shown = error_chain(&err);
    assert_eq!(shown.matches("refused").count(), 1, "{shown}");
    // Each level says something its cause does not.
    let mut level: &(dyn std::error::Error + 'static) = &err;
    while let Some(cause) = level.source() {
        assert!(
            !level.to_string().contains(&cause.to_string()),
            "{level} repeats its cause {cause}"
        );
        level = cause;
    }
}

#[cfg(not(feature = "tls"))]
#[test]
fn a_rediss_url_without_the_tls_feature_is_an_error_that_names_the_feature() {
    for url in ["rediss://127.0.0.1/", "REDISS://127.0.0.1:6380/0"] {
        let err = RedisBackend::builder(url).build().unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
        let shown = error_chain(&err);
        assert!(shown.contains("`tls` cargo feature"), "{shown}");
    }
    let err = RedlockBackend::connect_lazy(&["rediss://127.0.0.1/"]).unwrap_err();
    assert!(error_chain(&err).contains("`tls` cargo feature"), "{err}");
}

/// Defect: an ACL user without `+select` and a URL with `/1` made every call wait the
/// whole checkout timeout and fail as `Io`.
#[test]
fn an_acl_user_without_select_on_db_1_is_a_permission_error_within_the_connect_timeout() {
    let server = RedisServer::start();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER", "noselect", "on", ">pw", "~*", "&*", "+@all", "-select",
        ])
        .query::<()>(&mut server.raw_connection())
        .unwrap();
    let url = format!("redis://noselect:pw@{}/1", server.addr());
    let start = Instant::now();
    let err = builder(&url).connect().unwrap_err();
    let took = start.elapsed();
    let shown = error_chain(&err);
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Permission),
        "{shown}"
    );
    assert!(shown.contains("+select"), "{shown}");
    assert!(!shown.contains("pw@"), "{shown}");
    assert!(took <= CONNECT + MARGIN, "connect took {took:?}: {shown}");
    // A lazy backend's calls too: no waiting out the checkout timeout.
    let mgr = LockManager::new(builder(&url).build().unwrap());
    let start = Instant::now();
    let err = mgr.try_lock(fresh()).unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Permission),
        "{err}"
    );
    assert!(
        took <= 2 * CONNECT + MARGIN,
        "try_lock took {took:?}: {err}"
    );
    // Database 0 needs no SELECT.
    let url0 = format!("redis://noselect:pw@{}/0", server.addr());
    builder(&url0).connect().unwrap();
}

/// Defect: a backend on a read-only replica got errors of kind `Other`, and its health
/// check passed.
#[test]
fn a_read_only_replica_is_a_clear_error_and_fails_the_health_check() {
    let master = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
    let lazy = builder(&replica.url()).build().unwrap();
    let err = lazy.health_check().unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Config, "{err}");
    assert!(err.to_string().contains("read-only replica"), "{err}");
    let err = LockManager::new(lazy).try_lock(fresh()).unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
    assert!(
        error_chain(&err).contains("read-only replica"),
        "{}",
        error_chain(&err)
    );
    let err = builder(&replica.url()).connect().unwrap_err();
    assert!(
        error_chain(&err).contains("read-only replica"),
        "{}",
        error_chain(&err)
    );
    // The master passes.
    builder(&master.url())
        .connect()
        .unwrap()
        .health_check()
        .unwrap();
}
