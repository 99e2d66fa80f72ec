//! Network faults between the client and a real `redis-server`, injected by the loopback
//! proxy of `lock_tests::proxy`: latency and jitter, a blackhole, resets, lost replies, and
//! a holder paused past its TTL.
//!
//! Every server check goes over a raw connection straight to the server, never through the
//! proxy, so it sees the truth whatever the proxy is doing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::{BackendErrorKind, LockError, LockGuard, LockManager, LockOptions};
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;
use lock_tests::proxy::{Mode, Proxy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fresh() -> String {
    lock_core::conformance::fresh_name()
}

/// The client's timeouts in these tests.
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    io: Duration,
    checkout: Duration,
}

/// Short enough to keep the faults quick, long enough that a call that must succeed
/// (a retry after a lost reply, a cleanup on a fresh connection, the proxy passing bytes
/// on) is not cut off by a busy machine: a few ms of work may be scheduled hundreds of
/// ms late on two loaded cores.
const QUICK: Timeouts = Timeouts {
    connect: Duration::from_millis(500),
    io: Duration::from_millis(500),
    checkout: Duration::from_millis(1000),
};

impl Timeouts {
    /// The longest one failed operation may take: waiting for a connection (whose
    /// attempts are each bounded by the connect timeout), then one read or write.
    fn one_call(self) -> Duration {
        self.checkout + self.io
    }

    /// The longest a failed acquire may take: the attempt, then the manager's best-effort
    /// release with the same token, each one call; plus scheduling slack.
    fn failed_acquire(self) -> Duration {
        2 * self.one_call() + ms(300)
    }
}

fn backend(url: &str, t: Timeouts) -> RedisBackend {
    RedisBackend::builder(url)
        .connect_timeout(t.connect)
        .read_timeout(t.io)
        .write_timeout(t.io)
        .checkout_timeout(t.checkout)
        .build()
        .unwrap()
}

/// A manager through `proxy`, with one warm pooled connection and both the acquire and
/// the release scripts loaded, so that a fault hits a lock command and not the setup.
fn warm_manager(proxy: &Proxy, t: Timeouts) -> LockManager {
    let mgr = LockManager::new(backend(&proxy.url(), t));
    lock_and_release(&mgr, &fresh());
    mgr
}

/// The shared server, a proxy in front of it, and a warm manager through the proxy.
fn through_proxy(t: Timeouts) -> (Arc<RedisServer>, Proxy, LockManager) {
    let server = RedisServer::shared();
    let proxy = Proxy::start(&server.addr()).unwrap();
    let mgr = warm_manager(&proxy, t);
    (server, proxy, mgr)
}

/// Takes the free lock `name` at once and releases it, or panics.
fn lock_and_release(mgr: &LockManager, name: &str) {
    mgr.try_lock(name)
        .unwrap()
        .expect("free")
        .release()
        .unwrap();
}

fn key(name: &str) -> String {
    format!("lock:{name}")
}

fn raw_get(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.raw_connection())
        .unwrap()
}

fn raw_pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.raw_connection())
        .unwrap()
}

/// The 8 hex digits a guard shows of its token in `Debug`.
fn token_prefix(g: &LockGuard) -> String {
    let shown = format!("{g:?}");
    let start = shown.find("Token(").expect("token in Debug") + "Token(".len();
    shown[start..start + 8].to_owned()
}

/// Polls until `cond` holds; panics after `limit`.
fn eventually(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        thread::sleep(ms(5));
    }
}

fn backend_kind(r: Result<Option<LockGuard>, LockError>) -> (BackendErrorKind, LockError) {
    match r {
        Ok(Some(_)) => panic!("got a guard"),
        Ok(None) => panic!("reported contention instead of an error"),
        Err(e @ LockError::Backend { .. }) => (e.backend_kind().unwrap(), e),
        Err(e) => panic!("expected a backend error, got {e:?}"),
    }
}

// ---- latency and jitter -------------------------------------------------------------------

#[test]
fn locks_work_under_latency_and_jitter_below_the_read_timeout() {
    let t = Timeouts {
        io: ms(1000),
        ..QUICK
    };
    let (server, proxy, mgr) = through_proxy(t);
    // 15-25 ms each way: a round trip of 30-50 ms, far below the 1 s read timeout.
    let base = ms(15);
    proxy.set_mode(Mode::Latency {
        base,
        jitter: ms(10),
    });
    for _ in 0..3 {
        let name = fresh();
        let start = Instant::now();
        let g = mgr.lock(&name).unwrap();
        assert!(start.elapsed() >= 2 * base, "latency not applied");
        assert!(mgr.is_locked(&name).unwrap());
        g.extend(ms(500)).unwrap();
        g.renew().unwrap();
        assert!(g.is_held().unwrap());
        g.release().unwrap();
        assert_eq!(raw_get(&server, &key(&name)), None);
    }
    mgr.health_check().unwrap();
}

#[test]
fn latency_past_the_read_timeout_is_a_timeout_error_and_leaves_no_lock_behind() {
    let t = Timeouts {
        io: ms(100),
        ..QUICK
    };
    let (server, proxy, mgr) = through_proxy(t);
    // 150 ms each way: every reply comes 300 ms after its request, past the 100 ms timeout.
    proxy.set_mode(Mode::Latency {
        base: ms(150),
        jitter: ms(10),
    });
    let name = fresh();
    let start = Instant::now();
    let (kind, err) = backend_kind(mgr.try_lock(&name));
    let took = start.elapsed();
    assert_eq!(kind, BackendErrorKind::Timeout, "{err}");
    // The attempt and the manager's cleanup release, each one read timeout.
    assert!(took <= t.failed_acquire(), "{took:?}");
    assert!(format!("{err:#}").contains("timed out"), "{err}");
    eprintln!("latency past the read timeout: {err} after {took:?}");

    // Both commands were sent on the one pooled connection, so the server runs the late
    // acquire first and the cleanup release after it: nothing is left for the TTL.
    proxy.set_mode(Mode::PassThrough);
    assert!(proxy.wait_idle(ms(2000)));
    eventually(ms(2000), "the late acquire cleaned up", || {
        raw_get(&server, &key(&name)).is_none()
    });
    // The late replies must not be taken for the answers to later commands.
    let other = fresh();
    let g = mgr.try_lock(&other).unwrap().expect("free");
    assert_eq!(g.fencing_token(), 1);
    let stored = raw_get(&server, &key(&other)).expect("locked");
    assert_eq!(stored[..8], token_prefix(&g));
    assert!(mgr.is_locked(&other).unwrap());
    g.release().unwrap();
    assert!(!mgr.is_locked(&other).unwrap());
}

// ---- blackhole ----------------------------------------------------------------------------

#[test]
fn blackhole_is_a_timeout_error_within_the_configured_timeouts() {
    let (server, proxy, warm) = through_proxy(QUICK);
    proxy.set_mode(Mode::Blackhole);

    // A warm connection: the command is sent and no reply ever comes.
    let start = Instant::now();
    let name = fresh();
    let (kind, err) = backend_kind(
        warm.lock_with(&name, LockOptions::new().wait(Some(ms(5000))))
            .map(Some),
    );
    let took = start.elapsed();
    assert_eq!(kind, BackendErrorKind::Timeout, "{err}");
    assert!(took <= QUICK.failed_acquire(), "warm: {took:?}");
    eprintln!("blackhole, warm connection: {err} after {took:?}");

    // A cold backend: connecting hangs in the handshake until the connect timeout, and
    // the pool gives up at the checkout timeout.
    let cold = LockManager::new(backend(&proxy.url(), QUICK));
    let start = Instant::now();
    let (kind, err) = backend_kind(cold.try_lock(fresh()));
    let took = start.elapsed();
    assert_eq!(kind, BackendErrorKind::Timeout, "{err}");
    assert!(took <= QUICK.failed_acquire(), "cold: {took:?}");
    eprintln!("blackhole, new connection: {err} after {took:?}");

    // Other operations are bounded the same way.
    let start = Instant::now();
    assert!(warm.is_locked(fresh()).is_err());
    assert!(warm.health_check().is_err());
    assert!(start.elapsed() <= 2 * QUICK.one_call() + ms(300));

    // When the partition heals the held commands run in order (the late acquire, then
    // its cleanup release) and the backend works again.
    proxy.set_mode(Mode::PassThrough);
    eventually(ms(3000), "the backend answers again", || {
        warm.health_check().is_ok()
    });
    eventually(ms(2000), "the late acquire cleaned up", || {
        raw_get(&server, &key(&name)).is_none()
    });
    lock_and_release(&warm, &fresh());
    lock_and_release(&cold, &fresh());
}

// ---- reset --------------------------------------------------------------------------------

#[test]
fn reset_is_an_io_error_and_the_backend_recovers_when_connections_work_again() {
    let (_server, proxy, mgr) = through_proxy(QUICK);
    let held = fresh();
    let g = mgr.lock(&held).unwrap();
    proxy.set_mode(Mode::Reset);

    let start = Instant::now();
    let (kind, err) = backend_kind(mgr.try_lock(fresh()));
    let took = start.elapsed();
    assert_eq!(kind, BackendErrorKind::Io, "{err}");
    assert!(took <= QUICK.failed_acquire(), "{took:?}");
    eprintln!("reset: {err} after {took:?}");
    let err = g.extend(ms(1000)).unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io), "{err}");

    proxy.set_mode(Mode::PassThrough);
    // The broken pooled connection is replaced; the lock taken before is still ours.
    assert!(g.is_held().unwrap());
    g.release().unwrap();
    lock_and_release(&mgr, &fresh());
}

// ---- lost replies -------------------------------------------------------------------------

#[test]
fn an_acquire_whose_reply_is_lost_once_is_retried_with_the_same_token() {
    let (server, proxy, mgr) = through_proxy(QUICK);
    let name = fresh();
    proxy.drop_next_replies_to(1, b"EVALSHA");
    let g = mgr
        .try_lock(&name)
        .unwrap()
        .expect("the retry must get the lock");
    assert_eq!(proxy.dropped_replies(), 1);
    // One key with our token, and the fencing counter minted once, not twice.
    let stored = raw_get(&server, &key(&name)).expect("locked");
    assert_eq!(stored[..8], token_prefix(&g));
    assert_eq!(g.fencing_token(), 1);
    assert_eq!(
        raw_get(&server, &format!("fence:{}", key(&name))).as_deref(),
        Some("1")
    );
    g.release().unwrap();
    assert_eq!(raw_get(&server, &key(&name)), None);
}

#[test]
fn an_acquire_whose_replies_are_lost_is_an_error_and_cleaned_up_at_once() {
    let (server, proxy, mgr) = through_proxy(QUICK);
    let name = fresh();
    // The attempt's reply and its retry's: both reached the server and set the key.
    proxy.drop_next_replies_to(2, b"EVALSHA");
    let start = Instant::now();
    let (kind, err) = backend_kind(mgr.try_lock(&name));
    assert_eq!(kind, BackendErrorKind::Io, "{err}");
    assert!(start.elapsed() <= QUICK.failed_acquire());
    assert_eq!(proxy.dropped_replies(), 2);
    // Right after the failed call, not a TTL later: the manager's release with the same
    // token got through on a fresh connection.
    assert_eq!(raw_get(&server, &key(&name)), None, "orphaned lock");
    let g = mgr.try_lock(&name).unwrap().expect("free at once");
    g.release().unwrap();
}

#[test]
fn an_acquire_cut_off_from_the_server_leaves_the_key_for_its_ttl_at_most() {
    let (server, proxy, mgr) = through_proxy(QUICK);
    let name = fresh();
    // Longer than the failed call (the attempt, then the retry and the cleanup each waiting
    // out the checkout timeout), so the orphan can be seen.
    let ttl = 3 * QUICK.one_call() + ms(500);
    // Every reply is cut, including new connections' handshakes: the acquire reaches the
    // server, but neither the retry nor the cleanup release can get through. The library
    // cannot know the key was set; the TTL is what bounds the orphan.
    proxy.set_mode(Mode::DropReplies);
    let (kind, err) = backend_kind(
        mgr.lock_with(
            &name,
            LockOptions::new().ttl(ttl).wait(Some(Duration::ZERO)),
        )
        .map(Some),
    );
    assert!(
        matches!(kind, BackendErrorKind::Io | BackendErrorKind::Timeout),
        "{err}"
    );
    let stored = raw_get(&server, &key(&name));
    let pttl = raw_pttl(&server, &key(&name));
    assert!(
        stored.is_some_and(|t| t.len() == 32),
        "the acquire reached the server"
    );
    assert!(pttl > 0 && pttl <= ttl.as_millis() as i64, "{pttl}");
    proxy.set_mode(Mode::PassThrough);
    assert!(mgr.try_lock(&name).unwrap().is_none(), "held by the orphan");
    eventually(ttl + ms(1000), "the orphan expires by its TTL", || {
        raw_get(&server, &key(&name)).is_none()
    });
    lock_and_release(&mgr, &name);
}

/// Our lock expires, somebody else takes it, and our release's reply is lost and retried:
/// neither the release nor its retry may touch the new holder's key.
#[test]
fn a_retried_release_never_deletes_another_holders_key() {
    let (server, proxy, ours) = through_proxy(QUICK);
    let theirs = LockManager::new(backend(&server.url(), QUICK));
    for lost_replies in [1, 2] {
        let name = fresh();
        let g = ours
            .lock_with(&name, LockOptions::new().ttl(ms(100)))
            .unwrap();
        thread::sleep(ms(200));
        let other = theirs.try_lock(&name).unwrap().expect("expired");
        let their_token = raw_get(&server, &key(&name)).expect("theirs");
        proxy.drop_next_replies_to(lost_replies, b"EVALSHA");
        let err = g.release().unwrap_err();
        // After a lost reply the retry cannot tell "we released it" from "it had
        // expired", so it reports the ambiguity instead of claiming NotHeld.
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io), "{err}");
        assert!(proxy.dropped_replies() >= lost_replies);
        assert_eq!(raw_get(&server, &key(&name)), Some(their_token));
        assert!(other.is_held().unwrap());
        other.release().unwrap();
    }
}

/// Pins a false report: the release reached the server and deleted our own, valid lock;
/// its reply was lost, the retry found the key gone and the guard reports `NotHeld` ("it
/// expired or was taken over"), which is untrue, and `with_lock` then throws away the
/// result of work that did run exclusively.
#[test]
fn a_release_whose_reply_is_lost_is_not_reported_as_not_held() {
    let (server, proxy, mgr) = through_proxy(QUICK);
    let name = fresh();
    let g = mgr.lock(&name).unwrap();
    proxy.drop_next_replies_to(1, b"EVALSHA");
    let result = g.release();
    assert_eq!(proxy.dropped_replies(), 1);
    assert_eq!(raw_get(&server, &key(&name)), None, "the release ran");
    // Ok, or an honest "unknown" backend error; not "it expired or was taken over".
    assert!(
        !matches!(result, Err(LockError::NotHeld { .. })),
        "{result:?}"
    );
}

// ---- a holder paused past its TTL -----------------------------------------------------------

/// The protected resource: it remembers the highest fencing token it has seen and refuses
/// writes carrying a lower one.
#[derive(Default)]
struct FencedResource {
    highest: Mutex<u64>,
    accepted: AtomicUsize,
    rejected: AtomicUsize,
}

impl FencedResource {
    fn write(&self, fencing_token: u64) -> bool {
        let mut highest = self.highest.lock().unwrap();
        if fencing_token < *highest {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        *highest = fencing_token;
        self.accepted.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[test]
fn a_holder_paused_past_its_ttl_is_not_held_and_its_stale_writes_are_all_fenced_off() {
    const ROUNDS: usize = 20;
    let server = RedisServer::shared();
    let mgr = LockManager::new(backend(&server.url(), QUICK));
    let ttl = ms(200);
    let stale_rejected = AtomicU64::new(0);
    let not_held = AtomicU64::new(0);
    // The rounds run side by side, each on its own name and resource.
    let start = Barrier::new(ROUNDS);
    thread::scope(|s| {
        for _ in 0..ROUNDS {
            let (mgr, start) = (&mgr, &start);
            let (stale_rejected, not_held) = (&stale_rejected, &not_held);
            s.spawn(move || {
                let name = fresh();
                let resource = Arc::new(FencedResource::default());
                start.wait();
                let g = mgr.lock_with(&name, LockOptions::new().ttl(ttl)).unwrap();
                let stale_token = g.fencing_token();
                assert!(resource.write(stale_token));
                // The successor waits for the lock, takes it when our TTL runs out, writes.
                let successor = {
                    let (mgr, name, resource) = (mgr.clone(), name.clone(), resource.clone());
                    thread::spawn(move || {
                        let g = mgr
                            .lock_with(&name, LockOptions::new().wait(Some(ms(5000))))
                            .unwrap();
                        assert!(resource.write(g.fencing_token()));
                        g.fencing_token()
                    })
                };
                // The pause: twice the TTL inside the critical section.
                thread::sleep(2 * ttl);
                let successor_token = successor.join().unwrap();
                assert!(successor_token > stale_token);
                if !resource.write(stale_token) {
                    stale_rejected.fetch_add(1, Ordering::SeqCst);
                }
                match g.release() {
                    Err(LockError::NotHeld { .. }) => {
                        not_held.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("a release after the TTL gave {other:?}"),
                }
            });
        }
    });
    assert_eq!(stale_rejected.load(Ordering::SeqCst), ROUNDS as u64);
    assert_eq!(not_held.load(Ordering::SeqCst), ROUNDS as u64);
}

#[test]
fn a_holder_paused_past_its_ttl_gets_not_held_even_if_nobody_took_the_lock() {
    let server = RedisServer::shared();
    let mgr = LockManager::new(backend(&server.url(), QUICK));
    let name = fresh();
    let g = mgr
        .lock_with(&name, LockOptions::new().ttl(ms(200)))
        .unwrap();
    thread::sleep(ms(400));
    assert!(g.check().is_err());
    assert!(matches!(g.release(), Err(LockError::NotHeld { .. })));
    assert_eq!(raw_get(&server, &key(&name)), None);
}
