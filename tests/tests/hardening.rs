//! Hostile input, bad input, servers that answer nonsense, token quality, and a
//! least-privilege Redis ACL user, on real `redis-server` processes.
//!
//! # The least-privilege ACL user
//!
//! Found by experiment on Redis 7.0 (`acl_every_listed_command_is_needed` removes each in
//! turn and sees the lifecycle fail):
//!
//! ```text
//! ACL SETUSER locker on >password ~lock:* ~fence:* -@all
//!     +evalsha +script|load +pttl +ping
//!     +set +get +incr +pexpire +del
//! ```
//!
//! - `evalsha` runs every lock operation; `script|load` loads a script after `NOSCRIPT`
//!   (once per server); `pttl` is `is_locked`/`ttl`/`wait_unlocked`; `ping` is
//!   `health_check` (and the wake-up subscriber's keep-alive).
//! - `set get incr pexpire del` are called inside the Lua scripts, and Redis checks a
//!   script's calls against the user's ACL too (`pttl` is also called there).
//! - `eval` is not needed (scripts run by SHA only).
//! - Wake-ups on release (optional, the lock works without them) add
//!   `+publish +subscribe &lock:released`; without them releases are found by polling.
//! - Keys: `~lock:*` for the locks (the manager's prefix) and `~fence:*` for the fencing
//!   counters (`fence:` + the lock key). A different prefix needs its own patterns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lock_core::testing::Faulty;
use lock_core::{
    BackendErrorKind, LockError, LockGuard, LockManager, LockOptions, ManualClock, Token,
    MAX_NAME_LEN, MAX_TTL, MAX_WAIT,
};
use lock_memory::MemoryBackend;
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

const CONNECT: Duration = Duration::from_millis(200);
const IO: Duration = Duration::from_millis(200);
const CHECKOUT: Duration = Duration::from_millis(400);

/// The longest a failed acquire may take: the attempt and the manager's cleanup release,
/// each at most a checkout (connection attempts bounded by the connect timeout) and one
/// read; plus scheduling slack.
const FAILED_ACQUIRE: Duration = Duration::from_millis(2 * (400 + 200) + 300);

fn backend(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .connect_timeout(CONNECT)
        .read_timeout(IO)
        .write_timeout(IO)
        .checkout_timeout(CHECKOUT)
        .build()
        .unwrap()
}

/// The 8 hex digits a guard shows of its token in `Debug`.
fn token_prefix(g: &LockGuard) -> String {
    let shown = format!("{g:?}");
    let start = shown.find("Token(").expect("token in Debug") + "Token(".len();
    shown[start..start + 8].to_owned()
}

fn lock_key(name: &[u8]) -> Vec<u8> {
    [b"lock:".as_slice(), name].concat()
}

fn fence_key(name: &[u8]) -> Vec<u8> {
    [b"fence:lock:".as_slice(), name].concat()
}

/// Every key of the server with its string value (all keys here are strings).
fn snapshot(conn: &mut redis::Connection) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
    keys.into_iter()
        .map(|k| {
            let v: Vec<u8> = redis::cmd("GET").arg(&k).query(conn).unwrap();
            (k, v)
        })
        .collect()
}

fn dbsize(conn: &mut redis::Connection) -> usize {
    redis::cmd("DBSIZE").query(conn).unwrap()
}

// ---- hostile names ------------------------------------------------------------------------

fn hostile_names() -> Vec<(&'static str, Vec<u8>)> {
    let mut long: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    long[0] = b'*';
    vec![
        ("glob characters", b"a*b?c[d]e{f}g".to_vec()),
        ("a lone star", b"*".to_vec()),
        ("a lone question mark", b"?".to_vec()),
        ("spaces", b"  a name with spaces  ".to_vec()),
        ("CR/LF", b"line1\r\nline2\r\n*3\r\n$3\r\nDEL\r\n".to_vec()),
        ("NUL", b"nul\0byte\0".to_vec()),
        ("4-byte UTF-8", "emoji 😀 and 𝄞 clef".as_bytes().to_vec()),
        (
            "Lua injection",
            b"') return redis.call('flushall') --".to_vec(),
        ),
        (
            "Lua injection 2",
            b"]] redis.call('flushall') --[[".to_vec(),
        ),
        ("invalid UTF-8", b"\xff\xfe\x80\xc0".to_vec()),
        ("1000 bytes", long),
        ("the maximum length", vec![b'k'; MAX_NAME_LEN]),
    ]
}

#[test]
fn hostile_names_lock_exactly_their_own_key_and_touch_nothing_else() {
    let server = RedisServer::start();
    let mut conn = server.raw_connection();
    // Bystanders: an unrelated key, somebody else's lock and its counter.
    redis::cmd("SET")
        .arg("app:data")
        .arg("keep")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg("lock:someone-else")
        .arg("their-token")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg("fence:lock:someone-else")
        .arg("41")
        .query::<()>(&mut conn)
        .unwrap();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).unwrap());

    for (what, name) in hostile_names() {
        let before = snapshot(&mut conn);
        let size_before = dbsize(&mut conn);

        let g = mgr.lock(&name).unwrap_or_else(|e| panic!("{what}: {e}"));
        let during = snapshot(&mut conn);
        let added: BTreeSet<Vec<u8>> = during
            .keys()
            .filter(|k| !before.contains_key(*k))
            .cloned()
            .collect();
        let expected = BTreeSet::from([lock_key(&name), fence_key(&name)]);
        assert_eq!(added, expected, "{what}: keys added");
        for (k, v) in &before {
            assert_eq!(during.get(k), Some(v), "{what}: {k:?} changed");
        }
        let token = &during[&lock_key(&name)];
        assert_eq!(token.len(), 32, "{what}");
        assert_eq!(token[..8], *token_prefix(&g).as_bytes(), "{what}");
        assert_eq!(during[&fence_key(&name)], b"1", "{what}");
        assert_eq!(g.fencing_token(), 1, "{what}");
        assert_eq!(dbsize(&mut conn), size_before + 2, "{what}");
        let exists: u8 = redis::cmd("EXISTS")
            .arg(lock_key(&name))
            .query(&mut conn)
            .unwrap();
        assert_eq!(exists, 1, "{what}");

        assert!(mgr.is_locked(&name).unwrap(), "{what}");
        assert!(
            mgr.try_lock(&name).is_err(),
            "{what}: same thread, WouldDeadlock"
        );
        g.extend(ms(1000)).unwrap();
        assert!(g.is_held().unwrap(), "{what}");
        g.release().unwrap();

        // Released: only the fencing counter stays, and it keeps counting.
        let after = snapshot(&mut conn);
        let mut expected = before.clone();
        expected.insert(fence_key(&name), b"1".to_vec());
        assert_eq!(after, expected, "{what}: after release");
        let g = mgr.lock(&name).unwrap();
        assert_eq!(g.fencing_token(), 2, "{what}");
        assert!(mgr.force_unlock(&name).unwrap(), "{what}");
        assert!(
            matches!(g.release(), Err(LockError::NotHeld { .. })),
            "{what}"
        );
        assert_eq!(dbsize(&mut conn), size_before + 1, "{what}");
    }
    let survivors: Option<String> = redis::cmd("GET").arg("app:data").query(&mut conn).unwrap();
    assert_eq!(survivors.as_deref(), Some("keep"));
}

// ---- bad input, rejected before any I/O ---------------------------------------------------

/// A manager on a backend where any I/O would fail (nothing listens on its port) and
/// every backend call is counted.
fn no_io_manager() -> (LockManager, Faulty<RedisBackend>) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let counting = Faulty::new(backend(&format!("redis://127.0.0.1:{port}/")));
    (LockManager::new(counting.clone()), counting)
}

fn assert_invalid<T: std::fmt::Debug>(what: &str, r: Result<T, LockError>) {
    match r {
        Err(LockError::InvalidArgument { .. }) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_input_is_invalid_argument_before_any_io() {
    let (mgr, calls) = no_io_manager();
    let too_long = vec![b'x'; MAX_NAME_LEN + 1];
    let huge = vec![b'x'; 1 << 20];
    let bad_names: [(&str, &[u8]); 3] = [
        ("empty name", b""),
        ("name over the maximum", &too_long),
        ("1 MiB name", &huge),
    ];
    let start = Instant::now();
    for (what, name) in bad_names {
        assert_invalid(what, mgr.lock(name));
        assert_invalid(what, mgr.try_lock(name));
        assert_invalid(what, mgr.lock_with(name, LockOptions::new()));
        assert_invalid(what, mgr.is_locked(name));
        assert_invalid(what, mgr.ttl(name));
        assert_invalid(what, mgr.force_unlock(name));
        assert_invalid(what, mgr.wait_unlocked(name, Some(ms(10))));
        assert_invalid(what, mgr.lock_all([b"fine".as_slice(), name]));
        assert_invalid(what, mgr.with_lock(name, || ()));
        if name.len() > MAX_NAME_LEN {
            // The error shows the name truncated, not the whole megabyte.
            let shown = format!("{:#}", mgr.lock(name).unwrap_err());
            assert!(shown.len() < 512, "{} bytes", shown.len());
        }
    }
    assert_invalid("no names", mgr.lock_all(Vec::<&str>::new()));
    let bad_ttls = [
        ("TTL 0", Duration::ZERO),
        ("TTL 1 µs", Duration::from_micros(1)),
        ("TTL 999 µs", Duration::from_micros(999)),
        ("TTL over the maximum", MAX_TTL + ms(1)),
        ("TTL Duration::MAX", Duration::MAX),
    ];
    for (what, ttl) in bad_ttls {
        assert_invalid(what, mgr.lock_with("n", LockOptions::new().ttl(ttl)));
        assert_invalid(
            what,
            mgr.lock_all_with(["a", "b"], LockOptions::new().ttl(ttl)),
        );
        assert_invalid(
            what,
            LockManager::builder(MemoryBackend::new()).ttl(ttl).build(),
        );
    }
    let bad_waits = [
        ("wait over the maximum", MAX_WAIT + ms(1)),
        ("wait Duration::MAX", Duration::MAX),
    ];
    for (what, wait) in bad_waits {
        assert_invalid(
            what,
            mgr.lock_with("n", LockOptions::new().wait(Some(wait))),
        );
        assert_invalid(what, mgr.wait_unlocked("n", Some(wait)));
        assert_invalid(
            what,
            mgr.lock_with("n", LockOptions::new().max_hold(Some(wait))),
        );
        assert_invalid(
            what,
            LockManager::builder(MemoryBackend::new())
                .wait(Some(wait))
                .build(),
        );
    }
    assert_invalid(
        "zero retry interval",
        LockManager::builder(MemoryBackend::new())
            .retry_interval(Duration::ZERO, ms(1))
            .build(),
    );
    assert_invalid(
        "retry interval Duration::MAX",
        LockManager::builder(MemoryBackend::new())
            .retry_interval(ms(1), Duration::MAX)
            .build(),
    );
    assert_invalid(
        "empty prefix",
        LockManager::builder(MemoryBackend::new())
            .prefix("")
            .build(),
    );
    assert_eq!(calls.total_calls(), 0, "a bad input reached the backend");
    assert!(start.elapsed() < ms(500), "{:?}", start.elapsed());

    // The control: a valid call does reach the backend, and fails there.
    let err = mgr.try_lock("valid").unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert!(calls.total_calls() > 0);
}

#[test]
fn bad_durations_on_a_guard_are_invalid_argument_before_any_io() {
    let counting = Faulty::new(MemoryBackend::new());
    let mgr = LockManager::new(counting.clone());
    let g = mgr.lock("held").unwrap();
    let before = counting.total_calls();
    for d in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_TTL + ms(1),
        Duration::MAX,
    ] {
        assert_invalid("extend", g.extend(d));
        assert_invalid("set_ttl", g.set_ttl(d));
    }
    assert_eq!(counting.total_calls(), before);
    assert!(g.is_held().unwrap());
    g.release().unwrap();
}

// ---- a property test over names and options -----------------------------------------------

const CASES: usize = 20_000;

fn edge_durations() -> [Duration; 9] {
    [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(1),
        Duration::from_micros(999),
        ms(1),
        Duration::from_micros(1001),
        MAX_TTL,
        MAX_TTL + ms(1),
        Duration::MAX,
    ]
}

fn random_duration(rng: &mut StdRng) -> Duration {
    let edges = edge_durations();
    match rng.random_range(0..4) {
        0 | 1 => edges[rng.random_range(0..edges.len())],
        2 => Duration::from_nanos(rng.random_range(0..10_000_000)),
        _ => Duration::new(
            rng.random_range(0..2 * MAX_TTL.as_secs()),
            rng.random_range(0..1_000_000_000),
        ),
    }
}

fn random_name(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => [0, 1, MAX_NAME_LEN, MAX_NAME_LEN + 1][rng.random_range(0..4)],
        1..=4 => rng.random_range(0..16),
        _ => rng.random_range(0..1100),
    };
    let mut name = vec![0u8; len];
    rng.fill_bytes(&mut name);
    name
}

#[test]
fn random_names_and_options_never_panic_and_are_ok_exactly_when_valid() {
    let seed: u64 = std::env::var("HARDENING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    // A manual clock that never moves: nothing expires, so a valid call must succeed.
    let clock = ManualClock::new();
    let mgr = LockManager::builder(MemoryBackend::with_clock(clock.clone()))
        .clock(clock)
        .build()
        .unwrap();
    let name_ok = |n: &[u8]| !n.is_empty() && n.len() <= MAX_NAME_LEN;
    let ttl_ok = |d: Duration| d >= ms(1) && d <= MAX_TTL;
    let wait_ok = |w: Option<Duration>| w.is_none_or(|w| w <= MAX_WAIT);
    let mut tally: HashMap<&str, (usize, usize)> = HashMap::new();

    for case in 0..CASES {
        let name = random_name(&mut rng);
        let ttl = random_duration(&mut rng);
        let wait = rng.random_bool(0.8).then(|| random_duration(&mut rng));
        let other = random_duration(&mut rng);
        let op = rng.random_range(0..7);
        let described = format!(
            "case {case} (seed {seed}): op {op}, name of {} bytes, ttl {ttl:?}, wait {wait:?}, other {other:?}",
            name.len()
        );
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let opts = LockOptions::new().ttl(ttl).wait(wait);
            match op {
                0 => (
                    "lock_with",
                    name_ok(&name) && ttl_ok(ttl) && wait_ok(wait),
                    mgr.lock_with(&name, opts).and_then(LockGuard::release),
                ),
                1 => (
                    "try_lock",
                    name_ok(&name),
                    mgr.try_lock(&name)
                        .map(|g| g.expect("free"))
                        .and_then(LockGuard::release),
                ),
                2 => (
                    "is_locked",
                    name_ok(&name),
                    mgr.is_locked(&name).map(|held| assert!(!held)),
                ),
                3 => (
                    "wait_unlocked",
                    name_ok(&name) && wait_ok(wait),
                    mgr.wait_unlocked(&name, wait),
                ),
                4 => {
                    let second = [name.as_slice(), b"/2"].concat();
                    (
                        "lock_all_with",
                        name_ok(&name) && name_ok(&second) && ttl_ok(ttl) && wait_ok(wait),
                        mgr.lock_all_with([&name, &second], opts)
                            .and_then(|g| g.release()),
                    )
                }
                5 => (
                    "extend",
                    // The manual clock stands still: the lock has its whole default TTL
                    // left, and extend may not take it past MAX_TTL.
                    name_ok(&name)
                        && ttl_ok(other)
                        && ms(other.as_millis() as u64).saturating_add(mgr.default_ttl())
                            <= MAX_TTL,
                    mgr.lock(&name)
                        .and_then(|g| g.extend(other).and_then(|()| g.release())),
                ),
                _ => (
                    "max_hold",
                    name_ok(&name) && wait_ok(Some(other)),
                    mgr.lock_with(&name, LockOptions::new().max_hold(Some(other)))
                        .and_then(LockGuard::release),
                ),
            }
        }));
        let (op_name, valid, result) = outcome.unwrap_or_else(|_| panic!("panicked: {described}"));
        match (valid, &result) {
            (true, Ok(())) | (false, Err(LockError::InvalidArgument { .. })) => {}
            _ => panic!("{described}: valid = {valid}, got {result:?}"),
        }
        let entry = tally.entry(op_name).or_default();
        if valid {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    // Both outcomes were exercised for every operation.
    for (op, (ok, invalid)) in &tally {
        assert!(
            *ok > 100 && *invalid > 100,
            "{op}: {ok} valid, {invalid} invalid"
        );
    }
}

// ---- servers that answer nonsense ---------------------------------------------------------

/// A fake server on loopback that answers every read with the same bytes.
struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(reply: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let stop = stop2.clone();
                        conns.push(thread::spawn(move || answer(s, reply, &stop)));
                    }
                    Err(_) => thread::sleep(ms(2)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// Answers every command of the client (RESP arrays of bulk strings, possibly pipelined)
/// with `reply`; an empty `reply` closes the connection at the first command.
fn answer(mut s: TcpStream, reply: &[u8], stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(ms(10)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        while let Some(used) = command_len(&pending) {
            pending.drain(..used);
            if reply.is_empty() || s.write_all(reply).is_err() {
                return;
            }
        }
    }
}

/// The length of the first complete command in `buf`, if there is one.
fn command_len(buf: &[u8]) -> Option<usize> {
    fn line(buf: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
        if *buf.get(at)? != marker {
            return None;
        }
        let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    }
    let (args, mut at) = line(buf, 0, b'*')?;
    for _ in 0..args {
        let (len, start) = line(buf, at, b'$')?;
        at = start + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes a lock on a server that answers every command with `reply`; the error met, or a
/// panic naming `what` if it was a guard or contention. Checks the time bound and that
/// other operations fail too.
fn nonsense_error(what: &str, reply: &'static [u8]) -> LockError {
    let fake = FakeServer::start(reply);
    let mgr = LockManager::new(backend(&fake.url()));
    let start = Instant::now();
    let result = mgr.try_lock(fresh());
    let took = start.elapsed();
    let err = match result {
        Ok(Some(_)) => panic!("{what}: got a guard"),
        Ok(None) => panic!("{what}: reported contention"),
        Err(e) => e,
    };
    assert!(matches!(err, LockError::Backend { .. }), "{what}: {err:?}");
    assert!(took <= FAILED_ACQUIRE, "{what}: {took:?}");
    assert!(mgr.is_locked("x").is_err(), "{what}");
    assert!(mgr.force_unlock("x").is_err(), "{what}");
    eprintln!("{what}: after {took:?}: {err}");
    err
}

#[test]
fn a_server_answering_nonsense_is_a_clear_backend_error_never_a_guard() {
    use BackendErrorKind::*;
    let cases: [(&str, &'static [u8], &[BackendErrorKind]); 7] = [
        ("an error reply", b"-ERR something\r\n", &[Other]),
        ("a wrong type", b"+OK\r\n", &[Protocol]),
        ("a string for a number", b"$3\r\nfoo\r\n", &[Protocol]),
        // Any kind will do for these: the point is an error, in bounded time, no panic.
        ("an absurd bulk length", b"$99999999999999999999\r\n", &[]),
        ("an array for a number", b"*2\r\n:1\r\n:2\r\n", &[Protocol]),
        ("a RESP3 map", b"%1\r\n+a\r\n+b\r\n", &[Protocol]),
        ("a closed connection", b"", &[]),
    ];
    for (what, reply, kinds) in cases {
        let err = nonsense_error(what, reply);
        let kind = err.backend_kind().unwrap();
        assert!(
            kinds.is_empty() || kinds.contains(&kind),
            "{what}: {kind:?}: {err}"
        );
    }
}

/// Pins a misclassification: when the connection handshake fails, r2d2 keeps retrying
/// until the checkout timeout and reports its last error as text only, and lock-redis's
/// `pool_error` maps any text it does not recognise to `Timeout`: a parse error ("Parse
/// error at 1") and a server that hangs up ("unexpected end of file") both come out as
/// `Timeout`.
#[test]
fn a_server_answering_garbage_to_the_handshake_is_a_protocol_error() {
    use BackendErrorKind::*;
    let cases: [(&str, &'static [u8], &[BackendErrorKind]); 4] = [
        ("garbage bytes", b"\x00\xffgarbage\r\n", &[Protocol, Other]),
        (
            "not RESP",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            &[Protocol, Other],
        ),
        (
            "an absurd bulk length",
            b"$99999999999999999999\r\n",
            &[Protocol, Other],
        ),
        ("a closed connection", b"", &[Io]),
    ];
    for (what, reply, kinds) in cases {
        let err = nonsense_error(what, reply);
        let kind = err.backend_kind().unwrap();
        assert!(kinds.contains(&kind), "{what}: {kind:?}: {err}");
    }
}

/// Pins a gap: `health_check` sends `PING` and accepts any non-error reply, so a server
/// that answers `+OK` (or any string) to everything passes for a healthy Redis.
#[test]
fn a_health_check_fails_on_a_server_that_does_not_answer_pong() {
    for reply in [&b"+OK\r\n"[..], b"$3\r\nfoo\r\n", b":1\r\n"] {
        let fake = FakeServer::start(reply);
        let mgr = LockManager::new(backend(&fake.url()));
        let result = mgr.health_check();
        assert!(
            result.is_err(),
            "{}: {result:?}",
            String::from_utf8_lossy(reply)
        );
    }
}

// ---- tokens -------------------------------------------------------------------------------

#[test]
fn a_million_tokens_are_unique_random_hex_with_no_time_pid_or_host_in_them() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250_000;
    const N: usize = THREADS * PER_THREAD;
    // Generated on several threads at once: each thread's generator must be its own.
    let batches: Vec<Vec<u128>> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    (0..PER_THREAD)
                        .map(|_| {
                            let t = Token::generate();
                            let text = t.as_str();
                            assert_eq!(text.len(), 32, "{text}");
                            assert!(
                                text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                                "{text}"
                            );
                            u128::from_str_radix(text, 16).unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<u128> = batches.concat();
    let unique: HashSet<u128> = all.iter().copied().collect();
    assert_eq!(unique.len(), N, "duplicate tokens");

    // Every hex digit position is uniform. An embedded PID, host id, timestamp or counter
    // would pin some positions to a few values; here each of the 32 positions must show
    // each digit 1/16 of the time, within 5 % (about 13 standard deviations).
    let mut counts = [[0u32; 16]; 32];
    for t in &all {
        for (pos, row) in counts.iter_mut().enumerate() {
            row[((t >> (4 * (31 - pos))) & 0xf) as usize] += 1;
        }
    }
    let expected = (N / 16) as f64;
    for (pos, row) in counts.iter().enumerate() {
        for (digit, &c) in row.iter().enumerate() {
            let off = (c as f64 - expected).abs() / expected;
            assert!(off < 0.05, "position {pos}, digit {digit:x}: {c} of {N}");
        }
    }

    // Not monotonic (as a time- or counter-based token would be), with no shared prefix:
    // consecutive tokens of a thread increase about half the time and share about 1/15 of
    // a hex digit of prefix on average.
    for batch in &batches {
        let rising = batch.windows(2).filter(|w| w[1] > w[0]).count();
        let share = rising as f64 / (batch.len() - 1) as f64;
        assert!((0.49..0.51).contains(&share), "{share}");
        let shared_prefix: u32 = batch
            .windows(2)
            .map(|w| (w[0] ^ w[1]).leading_zeros() / 4)
            .sum();
        let mean = shared_prefix as f64 / (batch.len() - 1) as f64;
        assert!(mean < 0.1, "mean shared prefix {mean} hex digits");
    }

    // And, concretely: the PID, the current unix time and the host name do not show up
    // more often than chance would put them there.
    let texts: Vec<String> = all.iter().map(|t| format!("{t:032x}")).collect();
    let occurrences = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    // Chance of a given k-digit string somewhere in 32 random hex digits: (33 - k) / 16^k.
    let chance = |needle: &str| {
        let k = needle.len() as i32;
        N as f64 * (33 - k) as f64 / 16f64.powi(k)
    };
    let pid = std::process::id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host_hex: String = host
        .trim()
        .bytes()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut needles = vec![
        format!("{pid:x}"),
        format!("{pid:08x}"),
        pid.to_string(),
        format!("{now:x}")[..6].to_owned(),
        now.to_string()[..7].to_owned(),
        format!("{:x}", now * 1000)[..7].to_owned(),
    ];
    if host_hex.len() >= 6 {
        needles.push(host_hex);
    }
    for needle in needles {
        let seen = occurrences(&needle);
        let limit = 3.0 * chance(&needle) + 10.0;
        assert!(
            (seen as f64) <= limit,
            "{needle:?} appears in {seen} tokens, chance alone gives {:.1}",
            chance(&needle)
        );
    }
}

// ---- a least-privilege ACL user -----------------------------------------------------------

/// The commands the library needs, as found by experiment: see the top of this file.
const ACL_COMMANDS: [&str; 8] = [
    "evalsha",
    "script|load",
    "pttl",
    "set",
    "get",
    "incr",
    "pexpire",
    "del",
];
/// What wake-ups on release add (optional).
const ACL_WAKE_UPS: [&str; 2] = ["publish", "subscribe"];
const ACL_PASSWORD: &str = "locker-pw";

/// (Re)defines the user `locker` with exactly these key patterns, channels and commands.
fn set_acl_user(admin: &mut redis::Connection, keys: &[&str], channels: &[&str], cmds: &[&str]) {
    let mut c = redis::cmd("ACL");
    c.arg("SETUSER")
        .arg("locker")
        .arg("reset")
        .arg("on")
        .arg(format!(">{ACL_PASSWORD}"));
    for k in keys {
        c.arg(format!("~{k}"));
    }
    for ch in channels {
        c.arg(format!("&{ch}"));
    }
    c.arg("-@all");
    for cmd in cmds {
        c.arg(format!("+{cmd}"));
    }
    c.query::<()>(admin).unwrap();
    // Forget the loaded scripts, so every run needs SCRIPT LOAD again.
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(admin)
        .unwrap();
}

fn locker_url(server: &RedisServer) -> String {
    format!("redis://locker:{ACL_PASSWORD}@{}/", server.addr())
}

/// Every operation of the library once, on fresh managers (so fresh connections).
fn lifecycle(url: &str) -> Result<(), LockError> {
    let mgr = LockManager::new(backend(url));
    let other = LockManager::new(backend(url));
    mgr.health_check()?;
    let name = fresh();
    let g = mgr.lock(&name)?;
    assert!(mgr.is_locked(&name)?);
    assert!(mgr.ttl(&name)?.is_some());
    // Contention is an answer, not an error.
    assert!(other.try_lock(&name)?.is_none());
    let err = other
        .lock_with(&name, LockOptions::new().wait(Some(ms(50))))
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    g.extend(ms(1000))?;
    g.set_ttl(ms(5000))?;
    g.renew()?;
    assert!(g.is_held()?);
    g.release()?;
    mgr.wait_unlocked(&name, Some(ms(1000)))?;
    let g = other.lock(&name)?;
    assert!(mgr.force_unlock(&name)?);
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
    mgr.lock_all([fresh(), fresh()])?.release()?;
    mgr.with_lock(&name, || ())?;
    Ok(())
}

#[test]
fn acl_least_privilege_user_runs_the_whole_lifecycle() {
    let server = RedisServer::start();
    let mut admin = server.raw_connection();
    set_acl_user(&mut admin, &["lock:*", "fence:*"], &[], &ACL_COMMANDS);
    lifecycle(&locker_url(&server)).unwrap();
}

#[test]
fn acl_every_listed_command_is_needed() {
    let server = RedisServer::start();
    let mut admin = server.raw_connection();
    let url = locker_url(&server);
    for missing in ACL_COMMANDS {
        let cmds: Vec<&str> = ACL_COMMANDS.into_iter().filter(|c| *c != missing).collect();
        set_acl_user(&mut admin, &["lock:*", "fence:*"], &[], &cmds);
        let err = lifecycle(&url).expect_err(missing);
        assert!(err.backend_kind().is_some(), "without {missing}: {err}");
    }
}

#[test]
fn acl_wake_ups_subscribe_and_publish_with_their_commands_and_channel() {
    let server = RedisServer::start();
    let mut admin = server.raw_connection();
    let cmds = [&ACL_COMMANDS[..], &ACL_WAKE_UPS[..]].concat();
    set_acl_user(
        &mut admin,
        &["lock:*", "fence:*"],
        &["lock:released"],
        &cmds,
    );
    let url = locker_url(&server);
    lifecycle(&url).unwrap();

    // Somebody listens on the wake channel as admin.
    let mut listener = server.raw_connection();
    let mut pubsub = listener.as_pubsub();
    pubsub.subscribe("lock:released").unwrap();
    pubsub.set_read_timeout(Some(ms(2000))).unwrap();

    let holder = LockManager::new(backend(&url));
    let waiter = LockManager::new(backend(&url));
    let name = fresh();
    let g = holder.lock(&name).unwrap();
    let waiting = {
        let name = name.clone();
        thread::spawn(move || {
            waiter
                .lock_with(&name, LockOptions::new().wait(Some(ms(5000))))
                .and_then(LockGuard::release)
        })
    };
    // The waiter's subscriber connection subscribes as the ACL user.
    let start = Instant::now();
    loop {
        let subs: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("lock:released")
            .query(&mut admin)
            .unwrap();
        if subs.1 >= 2 {
            break;
        }
        assert!(
            start.elapsed() < ms(3000),
            "the subscriber never subscribed"
        );
        thread::sleep(ms(10));
    }
    g.release().unwrap();
    // The release script published the key.
    let msg = pubsub.get_message().unwrap();
    let payload = msg.get_payload_bytes();
    assert!(payload.ends_with(&lock_key(name.as_bytes())), "{payload:?}");
    waiting.join().unwrap().unwrap();
}

#[test]
fn acl_refusals_and_wrong_passwords_are_told_apart_from_contention() {
    let server = RedisServer::start();
    let mut admin = server.raw_connection();
    let url = locker_url(&server);
    let name = fresh();
    // Somebody holds `name` (as admin, with every right).
    let admin_mgr = LockManager::new(backend(&server.url()));
    let _held = admin_mgr.lock(&name).unwrap();

    // Allowed: contention is an answer (None / Timeout), not an error.
    set_acl_user(&mut admin, &["lock:*", "fence:*"], &[], &ACL_COMMANDS);
    let mgr = LockManager::new(backend(&url));
    assert!(mgr.try_lock(&name).unwrap().is_none());
    let err = mgr
        .lock_with(&name, LockOptions::new().wait(Some(ms(50))))
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");

    // No right to the fencing counters: a permission error, even on a held lock.
    set_acl_user(&mut admin, &["lock:*"], &[], &ACL_COMMANDS);
    for n in [name.as_str(), &fresh()] {
        let err = mgr.try_lock(n).unwrap_err();
        assert_eq!(
            err.backend_kind(),
            Some(BackendErrorKind::Permission),
            "{err}"
        );
    }
    // No right to the lock keys at all.
    set_acl_user(&mut admin, &["other:*"], &[], &ACL_COMMANDS);
    let err = mgr.is_locked(&name).unwrap_err();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Permission),
        "{err}"
    );
    // No right to the command.
    let without_evalsha: Vec<&str> = ACL_COMMANDS[1..].to_vec();
    set_acl_user(&mut admin, &["lock:*", "fence:*"], &[], &without_evalsha);
    let err = mgr.try_lock(&name).unwrap_err();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Permission),
        "{err}"
    );

    // A wrong password.
    set_acl_user(&mut admin, &["lock:*", "fence:*"], &[], &ACL_COMMANDS);
    let wrong = format!("redis://locker:not-{ACL_PASSWORD}@{}/", server.addr());
    let wrong_mgr = LockManager::new(backend(&wrong));
    for err in [
        wrong_mgr.try_lock(&name).map(|_| ()).unwrap_err(),
        wrong_mgr.lock(&name).map(|_| ()).unwrap_err(),
        wrong_mgr.health_check().unwrap_err(),
    ] {
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Auth), "{err}");
    }
    // An unknown user.
    let nobody = format!("redis://nobody:pw@{}/", server.addr());
    let err = LockManager::new(backend(&nobody))
        .try_lock(&name)
        .unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Auth), "{err}");
}

/// Pins a misclassification: Redis checks the commands a script calls against the user's
/// ACL, and refuses them with an `ERR The user executing the script can't run this
/// command ...` reply (not `NOPERM`), which lock-redis reports as `Other`.
#[test]
fn acl_a_command_refused_inside_a_script_is_a_permission_error() {
    let server = RedisServer::start();
    let mut admin = server.raw_connection();
    let without_incr: Vec<&str> = ACL_COMMANDS.into_iter().filter(|c| *c != "incr").collect();
    set_acl_user(&mut admin, &["lock:*", "fence:*"], &[], &without_incr);
    let mgr = LockManager::new(backend(&locker_url(&server)));
    let err = mgr.try_lock(fresh()).unwrap_err();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Permission),
        "{err}"
    );
}
