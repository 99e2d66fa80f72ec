//! Secrets never leak: a run that fails in every way we can provoke (wrong password,
//! refused connection, timeout, ACL permission errors, lost locks, failed releases on drop,
//! bad URLs, TLS handshakes that fail and TLS options that are refused), with every log
//! record captured and every value formatted with `{}` and `{:?}`, must show neither a
//! password, nor a line of a TLS client key, nor a whole lock token anywhere.
//!
//! One test only: the logger is global to this binary.

use std::error::Error as _;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::{BackendErrorKind, LockError, LockGuard, LockManager, LockOptions};
use lock_redis::{RedisBackend, RedisBackendBuilder};
use lock_tests::harness::RedisServer;
#[cfg(feature = "tls")]
use lock_tests::harness::{TestPki, TlsSetup};
use lock_tests::proxy::{Mode, Proxy};

/// The password of the servers and users here (URL-safe as it is).
const SECRET: &str = "Pw-8d1c6f0e2b7a-secret";
/// A password with characters that must be percent-encoded in a URL.
const SPECIAL: &str = "s3cr:t@/p%w+x";
const SPECIAL_ENCODED: &str = "s3cr%3At%40%2Fp%25w%2Bx";
/// A wrong password, which must not show either.
const WRONG: &str = "wrong-Pw-3e9a77c1";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

// ---- capturing everything -----------------------------------------------------------------

/// Every log record, formatted.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "{} {} {}:{} {}",
            record.level(),
            record.target(),
            record.file().unwrap_or("?"),
            record.line().unwrap_or(0),
            record.args()
        );
        LOG.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Everything formatted during the run, and the full tokens seen on servers.
#[derive(Default)]
struct Seen {
    shown: Vec<String>,
    tokens: Vec<String>,
}

impl Seen {
    fn debug(&mut self, v: &impl Debug) {
        self.shown.push(format!("{v:?}"));
        self.shown.push(format!("{v:#?}"));
    }

    /// An error with `{}` and `{:?}`, and every error in its `source()` chain.
    fn error(&mut self, e: &LockError) {
        self.shown.push(format!("{e:#}"));
        self.debug(e);
        let mut source = e.source();
        while let Some(s) = source {
            self.shown.push(s.to_string());
            self.shown.push(format!("{s:?}"));
            source = s.source();
        }
    }

    /// Records `r`'s error (if any) and returns it.
    fn fail<T: Debug>(&mut self, what: &str, r: Result<T, LockError>) -> LockError {
        match r {
            Ok(v) => panic!("{what}: expected an error, got {v:?}"),
            Err(e) => {
                self.error(&e);
                e
            }
        }
    }

    /// Reads the full token of `guard` from the server (over `conn`) and records it.
    fn token_of(&mut self, conn: &mut redis::Connection, guard: &LockGuard) {
        let key = [b"lock:".as_slice(), guard.name().as_bytes()].concat();
        let token: String = redis::cmd("GET").arg(key).query(conn).unwrap();
        assert_eq!(token.len(), 32);
        self.debug(guard);
        self.tokens.push(token);
    }
}

fn backend(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .connect_timeout(ms(200))
        .read_timeout(ms(200))
        .write_timeout(ms(200))
        .checkout_timeout(ms(300))
        .build()
        .unwrap()
}

fn authed(server: &RedisServer, user: &str, password: &str) -> redis::Connection {
    let url = format!("redis://{user}:{password}@{}/", server.addr());
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(ms(2000))
        .unwrap()
}

/// Every operation of a manager, each expected to fail.
fn fail_everything(seen: &mut Seen, mgr: &LockManager) {
    let name = fresh();
    seen.fail(
        "lock",
        mgr.lock_with(&name, LockOptions::new().wait(Some(ms(100)))),
    );
    seen.fail("try_lock", mgr.try_lock(&name));
    seen.fail("is_locked", mgr.is_locked(&name));
    seen.fail("ttl", mgr.ttl(&name));
    seen.fail("force_unlock", mgr.force_unlock(&name));
    seen.fail("wait_unlocked", mgr.wait_unlocked(&name, Some(ms(100))));
    seen.fail("lock_all", mgr.lock_all([fresh(), fresh()]));
    seen.fail("with_lock", mgr.with_lock(&name, || ()));
    seen.fail("health_check", mgr.health_check());
    seen.debug(mgr);
    seen.debug(&mgr.stats());
}

// ---- the run ------------------------------------------------------------------------------

#[test]
fn no_password_or_whole_token_in_any_log_line_or_formatted_value() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let mut seen = Seen::default();

    let server = RedisServer::start_with(&[
        "--requirepass",
        SECRET,
        "--user",
        &format!("special on >{SPECIAL} ~* &* +@all"),
        // Everything the library needs, but no wake-ups: its subscriber is refused.
        "--user",
        &format!(
            "nowake on >{SECRET} ~lock:* ~fence:* -@all +evalsha +script|load +pttl +ping \
             +set +get +incr +pexpire +del"
        ),
        // No right to the fencing counters: every acquire is refused.
        "--user",
        &format!("narrow on >{SECRET} ~lock:* -@all +evalsha +script|load +pttl +ping"),
    ]);
    let mut admin = authed(&server, "default", SECRET);
    let good_url = format!("redis://:{SECRET}@{}/", server.addr());

    // Success first: the tokens to look for, and the debug lines of acquire and release.
    {
        let builder = RedisBackend::builder(&good_url);
        seen.debug(&builder);
        let backend = builder.build().unwrap();
        seen.debug(&backend);
        seen.shown.push(backend.addr().to_owned());
        let mgr_builder = LockManager::builder(backend.clone()).auto_renew(true);
        seen.debug(&mgr_builder);
        let mgr = mgr_builder.build().unwrap();
        seen.debug(&mgr);
        let g = mgr.lock(fresh()).unwrap();
        seen.token_of(&mut admin, &g);
        g.extend(ms(1000)).unwrap();
        g.release().unwrap();
        let both = mgr.lock_all([fresh(), fresh()]).unwrap();
        for g in both.guards() {
            seen.token_of(&mut admin, g);
        }
        seen.debug(&both);
        drop(both);

        // A password that needs percent-encoding.
        let special_url = format!("redis://special:{SPECIAL_ENCODED}@{}/", server.addr());
        let special = LockManager::new(backend_for_debug(&mut seen, &special_url));
        let g = special.lock(fresh()).unwrap();
        seen.token_of(&mut admin, &g);
        drop(g);
    }

    // A lock lost behind its holder's back: renewal finds it gone and warns.
    {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let mgr = LockManager::builder(backend(&good_url))
            .auto_renew(true)
            .on_lost(move |_, _| flag.store(true, Ordering::SeqCst))
            .build()
            .unwrap();
        let name = fresh();
        let g = mgr
            .lock_with(&name, LockOptions::new().ttl(ms(300)))
            .unwrap();
        seen.token_of(&mut admin, &g);
        assert!(mgr.force_unlock(&name).unwrap());
        wait_for(ms(2000), "the loss is detected", || {
            lost.load(Ordering::SeqCst)
        });
        seen.fail("check", g.check());
        seen.fail("extend", g.extend(ms(100)));
        seen.fail("release", g.release());
    }

    // Timeouts: a blackhole between client and server, with locks held across it, so
    // renewal fails and dropping a guard fails to release.
    {
        let proxy = Proxy::start(&server.addr()).unwrap();
        let url = format!("redis://:{SECRET}@{}/", proxy.addr());
        let mgr = LockManager::builder(backend_for_debug(&mut seen, &url))
            .auto_renew(true)
            .build()
            .unwrap();
        let renewed = mgr
            .lock_with(fresh(), LockOptions::new().ttl(ms(400)))
            .unwrap();
        seen.token_of(&mut admin, &renewed);
        let dropped = mgr
            .lock_with(fresh(), LockOptions::new().auto_renew(false))
            .unwrap();
        seen.token_of(&mut admin, &dropped);
        proxy.set_mode(Mode::Blackhole);
        fail_everything(&mut seen, &mgr);
        seen.fail("extend", dropped.extend(ms(100)));
        seen.fail("is_held", dropped.is_held());
        drop(dropped); // logs a failed release
        wait_for(ms(3000), "renewal gives up", || renewed.check().is_err());
        seen.fail("check", renewed.check());
        seen.debug(&renewed);
        drop(renewed);
        drop(mgr);
    }

    // Permission errors, and a waiter whose wake-up subscriber is refused.
    {
        let narrow = format!("redis://narrow:{SECRET}@{}/", server.addr());
        let mgr = LockManager::new(backend_for_debug(&mut seen, &narrow));
        for what in ["lock", "try_lock"] {
            let err = seen.fail(what, mgr.try_lock(fresh()));
            assert_eq!(
                err.backend_kind(),
                Some(lock_core::BackendErrorKind::Permission),
                "{err}"
            );
        }
        seen.fail("lock_all", mgr.lock_all([fresh(), fresh()]));

        let nowake = format!("redis://nowake:{SECRET}@{}/", server.addr());
        let holder = LockManager::new(backend(&nowake));
        let waiter = LockManager::new(backend_for_debug(&mut seen, &nowake));
        let name = fresh();
        let g = holder.lock(&name).unwrap();
        seen.token_of(&mut admin, &g);
        let start = Instant::now();
        let err = seen.fail(
            "lock",
            waiter.lock_with(&name, LockOptions::new().wait(Some(ms(400)))),
        );
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(start.elapsed() >= ms(400));
        g.release().unwrap();
    }

    // TLS (with the `tls` feature): success, the builder's refusals, and the handshake
    // failures to run side by side below; and the client keys that must never be shown.
    let (tls_failures, client_keys, _tls_server) = tls_cases(&mut seen, &server, &good_url);
    // Wrong passwords, an unknown user, a refused connection, and bad URLs with a
    // password in them: each URL either fails to build, or every operation on it fails.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let urls = [
        format!("redis://:{WRONG}@{}/", server.addr()),
        format!("redis://nowake:{WRONG}@{}/", server.addr()),
        format!("redis://nobody:{SECRET}@{}/", server.addr()),
        format!("redis://:{SECRET}@127.0.0.1:{closed_port}/"),
        format!("redis://:{SECRET}@127.0.0.1:{closed_port}/notadb"),
        format!("redis://user:{SECRET}@127.0.0.1:notaport/"),
        format!("http://:{SECRET}@127.0.0.1:{closed_port}/"),
        format!("redis://:{SECRET}@[::1/"),
        format!("redis://:{SECRET}@127.0.0.1:{closed_port}/0?protocol=resp9"),
        format!("rediss://:{SECRET}@127.0.0.1:{closed_port}/"),
        format!("rediss://:{SECRET}@127.0.0.1:{closed_port}/#insecure"),
        format!("rediss://:{SECRET}@127.0.0.1:{closed_port}/#{SECRET}"),
        format!("redis+unix:///nonexistent/redis.sock?pass={SECRET}"),
        format!("redis://:{SPECIAL}@127.0.0.1:{closed_port}/"),
        SECRET.to_owned(),
    ];
    let mut usable = Vec::new();
    for url in urls {
        let builder = RedisBackend::builder(&url);
        seen.debug(&builder);
        match builder.build() {
            Err(e) => seen.error(&e),
            Ok(_) => usable.push(url),
        }
    }
    assert!(
        usable.len() >= 4,
        "the wrong-password and refused URLs build"
    );
    // All the failing backends run side by side, as each call waits out its timeouts.
    let results: Vec<Seen> = thread::scope(|s| {
        let plain = usable.iter().map(|url| {
            s.spawn(move || {
                let mut seen = Seen::default();
                let mgr = LockManager::new(backend_for_debug(&mut seen, url));
                fail_everything(&mut seen, &mgr);
                seen
            })
        });
        let tls = tls_failures.into_iter().map(|(b, kind)| {
            s.spawn(move || {
                let mut seen = Seen::default();
                let mgr = LockManager::new(build_for_debug(&mut seen, tls_timeouts(b)));
                let err = seen.fail("try_lock", mgr.try_lock(fresh()));
                let got = err.backend_kind();
                // TLS to a plaintext port may also time out (see tests/tests/tls.rs).
                let timed_out = kind == BackendErrorKind::Tls
                    && got == Some(BackendErrorKind::Timeout)
                    && format!("{err:#}").contains("tls handshake");
                assert!(got == Some(kind) || timed_out, "expected {kind}: {err:#}");
                fail_everything(&mut seen, &mgr);
                seen
            })
        });
        let handles: Vec<_> = plain.chain(tls).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        seen.shown.extend(r.shown);
    }

    // ---- the verdict ----
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The run did go through the failure paths that log.
    for expected in [
        "acquired lock",
        "released lock",
        "lost lock",
        "releasing on drop failed",
        "wake-up subscriber",
        #[cfg(feature = "tls")]
        "tls certificate checks are off",
    ] {
        assert!(
            log.iter().any(|l| l.contains(expected)),
            "no log line contains {expected:?}; captured {} lines",
            log.len()
        );
    }
    assert!(seen.tokens.len() >= 8);
    let secrets = [SECRET, SPECIAL, SPECIAL_ENCODED, WRONG];
    // Every line of the client keys' PEM but the BEGIN and END lines.
    let key_lines: Vec<String> = client_keys
        .iter()
        .flat_map(|pem| {
            String::from_utf8_lossy(pem)
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(key_lines.len() >= 4 || cfg!(not(feature = "tls")));
    for line in log.iter().chain(&seen.shown) {
        for secret in secrets {
            assert!(!line.contains(secret), "{secret:?} shown in: {line}");
        }
        for key_line in &key_lines {
            assert!(
                !line.contains(key_line.as_str()),
                "a client key line in: {line}"
            );
        }
        for token in &seen.tokens {
            assert!(!line.contains(token.as_str()), "a whole token in: {line}");
        }
    }
    eprintln!(
        "checked {} log lines and {} formatted values against {} passwords, {} key lines \
         and {} tokens",
        log.len(),
        seen.shown.len(),
        secrets.len(),
        key_lines.len(),
        seen.tokens.len()
    );
}

/// Handshake failures with the kind each must have, the client keys in play, and the TLS
/// server they run against.
type TlsCases = (
    Vec<(RedisBackendBuilder, BackendErrorKind)>,
    Vec<Vec<u8>>,
    Option<RedisServer>,
);

/// The TLS part of the check above: a mutual-TLS server with the password. Success first
/// (also with the certificate checks off), then the builder's refusals; returns the
/// handshake failures to run (with the kind each must have) and the client keys in play.
#[cfg(feature = "tls")]
fn tls_cases(seen: &mut Seen, server: &RedisServer, good_url: &str) -> TlsCases {
    // A mutual-TLS server with the password. Success first (also with the
    // certificate checks off), then every handshake failure, side by side.
    let tls_server = RedisServer::start_tls(&TlsSetup::mutual(), &["--requirepass", SECRET]);
    let pki = tls_server.pki().clone();
    let unrelated = TestPki::unrelated();
    let mut tls_admin = tls_server.raw_connection();
    redis::cmd("AUTH")
        .arg(SECRET)
        .query::<()>(&mut tls_admin)
        .unwrap();
    let tls_url = format!("rediss://:{SECRET}@{}/", tls_server.addr());
    let with_cert = |b: RedisBackendBuilder| b.tls_client_cert(&pki.client_cert, &pki.client_key);
    for b in [
        with_cert(RedisBackend::builder(&tls_url).tls_root_ca(&pki.ca)),
        with_cert(RedisBackend::builder(&tls_url).danger_accept_invalid_certs(true)),
    ] {
        let mgr = LockManager::new(build_for_debug(seen, tls_timeouts(b)));
        let g = mgr.lock(fresh()).unwrap();
        seen.token_of(&mut tls_admin, &g);
        drop(g);
    }
    for b in [
        RedisBackend::builder(&format!("{tls_url}#insecure")),
        RedisBackend::builder(&tls_url).tls_root_ca(b"-----BEGIN CERTIFICATE-----\n!\n"),
        RedisBackend::builder(&tls_url).tls_client_cert(&pki.client_cert, SECRET),
        RedisBackend::builder(&tls_url).tls_client_cert(&pki.client_cert, &unrelated.client_key),
        RedisBackend::builder(good_url).tls_root_ca(&pki.ca),
    ] {
        seen.debug(&b);
        let err = b.build().unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
        seen.error(&err);
    }
    let wrong_tls_url = format!("rediss://:{WRONG}@{}/", tls_server.addr());
    let tls_failures = vec![
        // Unknown CA (the system's trust store).
        (
            with_cert(RedisBackend::builder(&tls_url)),
            BackendErrorKind::Tls,
        ),
        // No client certificate.
        (
            RedisBackend::builder(&tls_url).tls_root_ca(&pki.ca),
            BackendErrorKind::Tls,
        ),
        // A client certificate the server does not trust.
        (
            RedisBackend::builder(&tls_url)
                .tls_root_ca(&pki.ca)
                .tls_client_cert(&unrelated.client_cert, &unrelated.client_key),
            BackendErrorKind::Tls,
        ),
        // A wrong password over a good TLS connection.
        (
            with_cert(RedisBackend::builder(&wrong_tls_url).tls_root_ca(&pki.ca)),
            BackendErrorKind::Auth,
        ),
        // Plaintext, with the password in it, to the TLS port.
        (
            RedisBackend::builder(&format!("redis://:{SECRET}@{}/", tls_server.addr())),
            BackendErrorKind::Io,
        ),
        // TLS to a plaintext port: no TLS answer, or none in time.
        (
            RedisBackend::builder(&format!("rediss://:{SECRET}@{}/", server.addr())),
            BackendErrorKind::Tls,
        ),
    ];
    // The server is handed back to run until the failures above have connected to it.
    (
        tls_failures,
        vec![pki.client_key, unrelated.client_key],
        Some(tls_server),
    )
}

#[cfg(not(feature = "tls"))]
fn tls_cases(_: &mut Seen, _: &RedisServer, _: &str) -> TlsCases {
    (Vec::new(), Vec::new(), None)
}

/// A backend for `url` with short timeouts, its builder and itself recorded with `{:?}`.
fn backend_for_debug(seen: &mut Seen, url: &str) -> RedisBackend {
    let builder = RedisBackend::builder(url)
        .connect_timeout(ms(100))
        .read_timeout(ms(150))
        .write_timeout(ms(150))
        .checkout_timeout(ms(150));
    build_for_debug(seen, builder)
}

/// Timeouts that leave a TLS connection's setup (a few ms on an idle machine, hundreds
/// on a busy one, with the threads here side by side) the time to fail for its own
/// reason, and a handshake that gets no answer the time to end (one connect timeout)
/// well within the checkout timeout, so its cause is reported.
fn tls_timeouts(b: RedisBackendBuilder) -> RedisBackendBuilder {
    b.connect_timeout(ms(500))
        .read_timeout(ms(500))
        .write_timeout(ms(500))
        .checkout_timeout(ms(1500))
}

/// `builder`'s backend, both recorded with `{:?}`.
fn build_for_debug(seen: &mut Seen, builder: RedisBackendBuilder) -> RedisBackend {
    seen.debug(&builder);
    let backend = builder.build().unwrap();
    seen.debug(&backend);
    seen.shown.push(backend.addr().to_owned());
    backend
}

fn wait_for(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        thread::sleep(ms(5));
    }
}
