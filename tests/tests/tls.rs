//! TLS (`rediss://`) on real TLS-only `redis-server` processes, with throwaway
//! certificates that the harness makes with `openssl`: the conformance suite over TLS,
//! mutual TLS, every handshake failure we can provoke (each a clear error of the right
//! kind, within its timeouts), the insecure opt-in, the builder's checks, and Redlock.

#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lock_core::conformance::Harness;
use lock_core::{BackendErrorKind, LockError, LockManager};
use lock_redis::{RedisBackend, RedisBackendBuilder, TlsConfig};
use lock_redlock::RedlockBackend;
use lock_tests::harness::{cluster_tls, error_chain, RedisServer, TestPki, TlsSetup};

/// Timeouts of the backends here, and the slack allowed on top of them. A debug build
/// takes about 30 ms per TLS connection (most of it loading the system's trust store,
/// which the `redis` crate does for every connection), more with the tests running side
/// by side on two cores, so the timeouts leave room for whole attempts to fail.
const CONNECT: Duration = Duration::from_millis(1000);
const IO: Duration = Duration::from_millis(500);
const CHECKOUT: Duration = Duration::from_millis(1000);
const SLACK: Duration = Duration::from_millis(250);

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

fn builder(url: &str) -> RedisBackendBuilder {
    RedisBackend::builder(url)
        .connect_timeout(CONNECT)
        .read_timeout(IO)
        .write_timeout(IO)
        .checkout_timeout(CHECKOUT)
}

/// A backend on `url` (one of `server`'s) that trusts `server`'s CA.
fn trusting(server: &RedisServer, url: &str) -> RedisBackend {
    builder(url).tls_root_ca(&server.pki().ca).build().unwrap()
}

/// Takes and releases a lock, and checks that the server held it meanwhile.
fn lock_and_release(server: &RedisServer, backend: RedisBackend) {
    let mgr = LockManager::new(backend);
    let name = fresh();
    let g = mgr.lock(&name).unwrap();
    let held: Option<String> = redis::cmd("GET")
        .arg(format!("lock:{name}"))
        .query(&mut server.raw_connection())
        .unwrap();
    assert_eq!(
        held.map(|t| t.len()),
        Some(32),
        "the server does not hold {name}"
    );
    g.release().unwrap();
    assert!(!mgr.is_locked(&name).unwrap());
}

/// Checks how `backend` fails: one operation (a `ping`) within one checkout timeout
/// (+ slack), and a `try_lock` (contention would be `Ok(None)`), each with a backend
/// error of `kind` that says every one of `says`. (`try_lock` takes up to twice as long:
/// after a failed acquire the manager tries to release, and waits for a connection again.)
fn assert_fails(backend: RedisBackend, kind: BackendErrorKind, says: &[&str]) {
    let start = Instant::now();
    let ping = backend.ping().unwrap_err();
    let took = start.elapsed();
    eprintln!("{kind} after {took:?}: {ping}");
    assert_eq!(ping.kind(), kind, "{ping}");
    let bound = CHECKOUT + SLACK;
    assert!(took <= bound, "{ping}: after {took:?}, more than {bound:?}");
    let err = match LockManager::new(backend).try_lock(fresh()) {
        Err(e) => e,
        Ok(g) => panic!("expected a {kind} error, got {g:?}"),
    };
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert_eq!(err.backend_kind(), Some(kind), "{err}");
    // What a user reads: each error with its causes (the cause is the source's to say).
    for shown in [error_chain(&ping), error_chain(&err)] {
        for s in says {
            assert!(shown.contains(s), "{s:?} not in: {shown}");
        }
    }
}

/// A TLS server whose certificate names only `localhost`, not `127.0.0.1`.
fn localhost_only() -> RedisServer {
    let setup = TlsSetup {
        server_names: "DNS:localhost".into(),
        ..TlsSetup::default()
    };
    RedisServer::start_tls(&setup, &[])
}

fn setup_error(b: RedisBackendBuilder) -> String {
    let err = b.build().unwrap_err();
    assert!(matches!(err, LockError::Setup { .. }), "{err}");
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
    format!("{err:#}")
}

// ---- it works ------------------------------------------------------------------------------

lock_core::conformance_suite!(redis_tls, || {
    let server = RedisServer::shared_tls();
    let backend = RedisBackend::builder(&server.url())
        .tls_root_ca(&server.pki().ca)
        .build()
        .unwrap();
    Harness::new(backend).keep_alive(server)
});

#[test]
fn lock_and_release_over_tls_with_the_custom_ca() {
    let server = RedisServer::shared_tls();
    let port: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query(&mut server.raw_connection())
        .unwrap();
    assert_eq!(port, ["port", "0"], "the server has a plaintext port");
    lock_and_release(&server, trusting(&server, &server.url()));
    // The host name works as well as the IP address: the certificate names both.
    let by_name = format!("rediss://localhost:{}/", server.port());
    lock_and_release(&server, trusting(&server, &by_name));
}

#[test]
fn mutual_tls_works_with_the_client_cert_and_fails_clearly_without() {
    let server = RedisServer::start_tls(&TlsSetup::mutual(), &[]);
    let pki = server.pki();
    let with_cert = builder(&server.url())
        .tls_root_ca(&pki.ca)
        .tls_client_cert(&pki.client_cert, &pki.client_key)
        .build()
        .unwrap();
    lock_and_release(&server, with_cert);

    assert_fails(
        trusting(&server, &server.url()),
        BackendErrorKind::Tls,
        &["CertificateRequired", "client certificate"],
    );

    let other = TestPki::unrelated();
    let foreign_cert = builder(&server.url())
        .tls_root_ca(&pki.ca)
        .tls_client_cert(&other.client_cert, &other.client_key)
        .build()
        .unwrap();
    assert_fails(
        foreign_cert,
        BackendErrorKind::Tls,
        &["received fatal alert: UnknownCA", "not trust ours"],
    );
}

// ---- handshake failures --------------------------------------------------------------------

#[test]
fn unknown_ca_is_a_tls_error_that_says_so() {
    let server = RedisServer::shared_tls();
    let other = TestPki::unrelated();
    let wrong_ca = builder(&server.url())
        .tls_root_ca(&other.ca)
        .build()
        .unwrap();
    let says = [
        "tls handshake failed",
        "UnknownIssuer",
        "not signed by a trusted ca",
    ];
    assert_fails(wrong_ca, BackendErrorKind::Tls, &says);
    // The system's trust store does not know the test CA either.
    assert_fails(
        builder(&server.url()).build().unwrap(),
        BackendErrorKind::Tls,
        &says,
    );
}

#[test]
fn a_certificate_for_another_host_name_is_a_tls_error() {
    let server = localhost_only();
    let by_name = format!("rediss://localhost:{}/", server.port());
    lock_and_release(&server, trusting(&server, &by_name));
    // The same server by IP address: its certificate does not name 127.0.0.1.
    let by_ip = format!("rediss://{}/", server.addr());
    assert_fails(
        trusting(&server, &by_ip),
        BackendErrorKind::Tls,
        &[
            "certificate not valid for name \"127.0.0.1\"",
            "not issued for this host name",
        ],
    );
}

#[test]
fn plaintext_to_a_tls_port_fails_clearly_within_the_timeouts() {
    // The server drops what is not a TLS handshake: our setup commands.
    let server = RedisServer::shared_tls();
    let plain = format!("redis://{}/", server.addr());
    assert_fails(
        builder(&plain).build().unwrap(),
        BackendErrorKind::Io,
        &["a tls port? then use rediss://"],
    );
}

#[test]
fn tls_to_a_plaintext_port_fails_clearly_within_the_timeouts() {
    // Redis reads the handshake as an inline command, which ends at the first newline
    // byte, if its random bytes hold one: then the error reply is no TLS record. Without
    // one (most of the time) it waits for the rest of the line, and the handshake times
    // out. Either must say what is wrong.
    let server = RedisServer::shared();
    let tls_url = format!("rediss://{}/", server.addr());
    let tries: Vec<(Duration, lock_core::BackendError)> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let backend = builder(&tls_url)
                        .connect_timeout(Duration::from_millis(300))
                        .build()
                        .unwrap();
                    let start = Instant::now();
                    let err = backend.ping().unwrap_err();
                    (start.elapsed(), err)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (took, err) in tries {
        eprintln!("tls to plaintext after {took:?}: {err}");
        let shown = format!("{err:#}");
        match err.kind() {
            BackendErrorKind::Tls => {
                assert!(shown.contains("does not speak tls on this port"), "{shown}")
            }
            BackendErrorKind::Timeout => {
                assert!(shown.contains("no answer to the tls handshake"), "{shown}")
            }
            other => panic!("a {other} error: {shown}"),
        }
        assert!(took <= CHECKOUT + SLACK, "{shown}: after {took:?}");
    }
}

#[test]
fn a_tls_handshake_that_gets_no_answer_ends_within_the_connect_timeout() {
    // Accepts connections and never says a word: the handshake waits for the server.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!("rediss://{}/", silent.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let held = thread::spawn(move || {
        let mut conns = Vec::new();
        while !stopped.load(Ordering::SeqCst) {
            if let Ok((c, _)) = silent.accept() {
                conns.push(c);
            }
            thread::sleep(Duration::from_millis(5));
        }
        conns.len()
    });
    // Reads could wait 10 s; only the connect timeout can end the handshake in time, and
    // r2d2 names the last attempt's error only once an attempt has ended.
    let backend = builder(&url)
        .connect_timeout(Duration::from_millis(200))
        .read_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_fails(
        backend,
        BackendErrorKind::Timeout,
        &["no answer to the tls handshake in time: is this a tls port?"],
    );
    stop.store(true, Ordering::SeqCst);
    assert!(
        held.join().unwrap() >= 1,
        "the handshake never reached the server"
    );
}

// ---- the insecure opt-in -------------------------------------------------------------------

#[test]
fn insecure_opt_in_connects_to_an_untrusted_server_and_nothing_else_does() {
    // Untrusted, and by IP address also the wrong name: it fails every check there is.
    let server = localhost_only();
    let url = format!("rediss://{}/", server.addr());
    assert_fails(
        builder(&url).build().unwrap(),
        BackendErrorKind::Tls,
        &["UnknownIssuer"],
    );

    lock_and_release(
        &server,
        builder(&url)
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap(),
    );
    // The URL fragment that means the same is refused without the opt-in...
    let fragment = format!("{url}#insecure");
    let shown = setup_error(builder(&fragment));
    assert!(
        shown.contains("danger_accept_invalid_certs(true)"),
        "{shown}"
    );
    assert!(!shown.contains(&server.addr()), "the url shown: {shown}");
    // ...and works with it.
    lock_and_release(
        &server,
        builder(&fragment)
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap(),
    );
    // An explicit `false` is the default.
    assert_fails(
        builder(&url)
            .danger_accept_invalid_certs(false)
            .build()
            .unwrap(),
        BackendErrorKind::Tls,
        &["UnknownIssuer"],
    );
}

// ---- the builder's checks ------------------------------------------------------------------

#[test]
fn tls_options_are_checked_by_build() {
    let pki = TestPki::unrelated();
    let other = TestPki::unrelated();
    let tls = "rediss://127.0.0.1:1/";
    let plain = "redis://127.0.0.1:1/";

    for b in [
        builder(plain).tls_root_ca(&pki.ca),
        builder(plain).tls_client_cert(&pki.client_cert, &pki.client_key),
        builder(plain).danger_accept_invalid_certs(true),
    ] {
        assert!(setup_error(b).contains("need a rediss:// url"));
    }
    let cases: [(RedisBackendBuilder, &str); 9] = [
        (builder(tls).tls_root_ca(b""), "no pem certificate"),
        (builder(tls).tls_root_ca(b"not a pem"), "no pem certificate"),
        (
            builder(tls).tls_root_ca(&pki.client_key),
            "no pem certificate",
        ),
        (
            builder(tls)
                .tls_root_ca(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            "tls root ca: unreadable pem",
        ),
        (
            builder(tls)
                .tls_root_ca(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "tls root ca: not a usable ca certificate",
        ),
        (
            builder(tls).tls_client_cert(&pki.client_cert, b"no key"),
            "tls client key: no readable pem private key",
        ),
        (
            builder(tls).tls_client_cert(&pki.client_key, &pki.client_key),
            "tls client certificate: no pem certificate",
        ),
        (
            builder(tls).tls_client_cert(&pki.client_cert, &other.client_key),
            "tls client certificate and key",
        ),
        (
            builder(tls)
                .tls_root_ca(&pki.ca)
                .danger_accept_invalid_certs(true),
            "tls_root_ca has no effect",
        ),
    ];
    for (b, expected) in cases {
        let shown = setup_error(b);
        assert!(shown.contains(expected), "{expected:?} not in {shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
    // A bundle of several CAs, and a client chain, are fine.
    let bundle = [pki.ca.clone(), other.ca.clone()].concat();
    builder(tls)
        .tls_root_ca(&bundle)
        .tls_client_cert(
            [pki.client_cert.clone(), pki.ca.clone()].concat(),
            &pki.client_key,
        )
        .build()
        .unwrap();
}

#[test]
fn builder_debug_shows_which_tls_options_are_set_and_no_pem() {
    let pki = TestPki::unrelated();
    let b = RedisBackend::builder("rediss://:pw-in-url@127.0.0.1:1/")
        .tls_root_ca(&pki.ca)
        .tls_client_cert(&pki.client_cert, &pki.client_key);
    let shown = format!("{b:?}");
    assert!(shown.contains("tls_url: true"), "{shown}");
    assert!(shown.contains("root_ca: true"), "{shown}");
    assert!(shown.contains("client_cert: true"), "{shown}");
    assert!(
        shown.contains("danger_accept_invalid_certs: false"),
        "{shown}"
    );
    for pem in [&pki.ca, &pki.client_cert, &pki.client_key] {
        let body = String::from_utf8_lossy(pem);
        let line = body.lines().nth(1).unwrap();
        assert!(!shown.contains(line), "pem shown: {shown}");
    }
    assert!(!shown.contains("pw-in-url"), "{shown}");
    let plain = format!("{:?}", RedisBackend::builder("redis://127.0.0.1:1/"));
    assert!(
        plain.contains("tls_url: false") && plain.contains("root_ca: false"),
        "{plain}"
    );
}

// ---- Redlock -------------------------------------------------------------------------------

#[test]
fn redlock_over_three_tls_nodes_acquires_and_releases() {
    let nodes = cluster_tls(3);
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    // Each node has a CA of its own: one bundle trusts them all.
    let bundle: Vec<u8> = nodes.iter().flat_map(|n| n.pki().ca.clone()).collect();
    // The default 50 ms per node is too short for a debug build's first handshakes.
    let backend = RedlockBackend::builder(&urls)
        .tls(TlsConfig::new().root_ca(&bundle))
        .node_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mgr = LockManager::new(backend);
    let name = fresh();
    let g = mgr.lock(&name).unwrap();
    // A quorum granted it; the third node may answer later (its first handshake can be
    // slow on a busy machine) and sets the key all the same.
    for n in &nodes {
        let until = Instant::now() + 2 * Duration::from_millis(500) + SLACK;
        loop {
            let held: Option<String> = redis::cmd("GET")
                .arg(format!("lock:{name}"))
                .query(&mut n.raw_connection())
                .unwrap();
            if held.is_some() {
                break;
            }
            assert!(
                Instant::now() < until,
                "node {} does not hold the lock",
                n.addr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    g.release().unwrap();
    assert!(!mgr.is_locked(&name).unwrap());

    // Without the bundle no node is trusted: no quorum. (Each node's pool gives up on
    // its handshakes when the node timeout runs out, so the nodes' outcomes are timeouts.)
    let untrusted = RedlockBackend::builder(&urls)
        .node_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = LockManager::new(untrusted).try_lock(fresh()).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Quorum), "{err}");
    // The acquire, then the manager's release after a failed acquire.
    let bound = 2 * Duration::from_millis(300) + SLACK;
    assert!(
        took <= bound,
        "untrusted nodes: {took:?}, more than {bound:?}"
    );
}

#[test]
fn redlock_tls_options_are_checked_per_node() {
    let pki = TestPki::unrelated();
    let err = RedlockBackend::builder(&["rediss://127.0.0.1:1/", "redis://127.0.0.1:2/"])
        .tls(TlsConfig::new().root_ca(&pki.ca))
        .build()
        .unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
    let shown = format!("{err:#}");
    assert!(
        shown.contains("node 2 of the list") && shown.contains("rediss://"),
        "{shown}"
    );
    let err = RedlockBackend::builder(&["rediss://127.0.0.1:1/#insecure"])
        .build()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("danger_accept_invalid_certs"),
        "{err}"
    );
    RedlockBackend::builder(&["rediss://127.0.0.1:1/#insecure"])
        .tls(
            TlsConfig::new()
                .danger_accept_invalid_certs(true)
                .client_cert(&pki.client_cert, &pki.client_key),
        )
        .build()
        .unwrap();
    let shown = format!(
        "{:?}",
        RedlockBackend::builder(&["rediss://127.0.0.1:1/"])
            .tls(TlsConfig::new().client_cert(&pki.client_cert, &pki.client_key))
    );
    assert!(shown.contains("client_cert: true"), "{shown}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
}
