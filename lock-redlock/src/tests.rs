//! Redlock over in-memory nodes with injected delays and failures: the fan-out, the
//! verdicts and the cleanup, without any server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use lock_core::conformance::Harness;
use lock_core::{
    Acquired, BackendError, BackendErrorKind, Extend, LockBackend, LockError, LockManager, Token,
};
use lock_memory::MemoryBackend;

use crate::RedlockBackend;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A memory node that can be made slow (every call sleeps first, like a command that
/// reaches the server late), fail before doing anything, lose its replies (do the work,
/// then report an error), or panic.
#[derive(Clone, Default)]
struct Faulty {
    store: MemoryBackend,
    delay_ms: Arc<AtomicU64>,
    release_delay_ms: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
    lose_reply: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
}

impl Faulty {
    fn slow(self, d: Duration) -> Self {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
        self
    }
    fn losing_replies(self) -> Self {
        self.lose_reply.store(true, Ordering::SeqCst);
        self
    }
    fn heal(&self) {
        self.delay_ms.store(0, Ordering::SeqCst);
        self.fail.store(false, Ordering::SeqCst);
        self.lose_reply.store(false, Ordering::SeqCst);
    }
    /// Whether `token` holds `key` on this node, asked of the store directly (no fault
    /// applies).
    fn holds(&self, key: &[u8], token: &Token) -> bool {
        self.store.inspect(key, Some(token)).unwrap().is_some()
    }
    /// Whether anybody holds `key` on this node. The tokens Redlock puts on the wire are
    /// its own (fresh per attempt), so tests recognise our keys as "held, and not by the
    /// foreign token".
    fn held(&self, key: &[u8]) -> bool {
        self.store.inspect(key, None).unwrap().is_some()
    }
    fn run<T>(
        &self,
        f: impl FnOnce(&MemoryBackend) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let d = self.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            sleep(ms(d));
        }
        if self.panic.load(Ordering::SeqCst) {
            panic!("injected panic");
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::new(BackendErrorKind::Io, "injected failure"));
        }
        let r = f(&self.store);
        if self.lose_reply.load(Ordering::SeqCst) {
            return Err(BackendError::new(
                BackendErrorKind::Io,
                "injected lost reply",
            ));
        }
        r
    }
}

impl LockBackend for Faulty {
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError> {
        self.run(|s| s.try_acquire(key, token, ttl))
    }
    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        sleep(ms(self.release_delay_ms.load(Ordering::SeqCst)));
        self.run(|s| s.release(key, token))
    }
    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError> {
        self.run(|s| s.extend(key, token, how))
    }
    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        self.run(|s| s.inspect(key, token))
    }
    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        self.run(|s| s.force_release(key))
    }
    fn health_check(&self) -> Result<(), BackendError> {
        self.run(|_| Ok(()))
    }
}

fn nodes(n: usize) -> Vec<Faulty> {
    (0..n).map(|_| Faulty::default()).collect()
}

/// Redlock over `nodes` with a node timeout of 1 s: unit tests run many at once on a
/// small machine, and only the tests about timeouts want the default 50 ms.
fn redlock(nodes: &[Faulty]) -> RedlockBackend {
    redlock_with(nodes, Duration::from_secs(1))
}

fn redlock_with(nodes: &[Faulty], node_timeout: Duration) -> RedlockBackend {
    RedlockBackend::builder_from_backends(
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("mem{i}"), n.clone())),
    )
    .node_timeout(node_timeout)
    .build()
    .unwrap()
}

fn key() -> Vec<u8> {
    format!("lock:{}", lock_core::conformance::fresh_name()).into_bytes()
}

/// Polls `cond` for up to a second: cleanup runs on the node workers after the call.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(1);
    while !cond() {
        assert!(Instant::now() < until, "never happened: {what}");
        sleep(ms(2));
    }
}

lock_core::conformance_suite!(memory_nodes_3, || {
    let n = nodes(3);
    Harness::new(redlock(&n))
});

#[test]
fn bounds() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    check::<RedlockBackend>();
    let _: Box<dyn LockBackend> = Box::new(redlock(&nodes(1)));
}

#[test]
fn one_node_is_plain_locking() {
    let n = nodes(1);
    let b = redlock(&n);
    assert_eq!(b.quorum(), 1);
    let (k, t) = (key(), Token::generate());
    let a = b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    assert_eq!(a.fencing_token, 1);
    assert!(b
        .try_acquire(&k, &Token::generate(), ms(1000))
        .unwrap()
        .is_none());
    assert!(b.release(&k, &t).unwrap());
}

#[test]
fn fan_out_is_parallel() {
    let n: Vec<_> = nodes(5).into_iter().map(|n| n.slow(ms(30))).collect();
    let b = RedlockBackend::builder_from_backends(
        n.iter()
            .enumerate()
            .map(|(i, n)| (format!("mem{i}"), n.clone())),
    )
    .node_timeout(ms(500))
    .build()
    .unwrap();
    let (k, t) = (key(), Token::generate());
    let start = Instant::now();
    assert!(b.try_acquire(&k, &t, ms(5000)).unwrap().is_some());
    let took = start.elapsed();
    // Sequential would be 90 ms to a quorum of three; parallel is one delay.
    assert!(took < ms(75), "{took:?}");
}

#[test]
fn quorum_matrix_on_memory_nodes() {
    for n in [3usize, 5] {
        for pattern in 0u32..(1 << n) {
            let ns = nodes(n);
            let b = redlock(&ns);
            let (k, t, foreign) = (key(), Token::generate(), Token::generate());
            for (i, node) in ns.iter().enumerate() {
                if pattern & (1 << i) != 0 {
                    node.store.try_acquire(&k, &foreign, ms(10_000)).unwrap();
                }
            }
            let free = n - pattern.count_ones() as usize;
            let got = b.try_acquire(&k, &t, ms(10_000)).unwrap();
            assert_eq!(got.is_some(), free > n / 2, "n {n} pattern {pattern:b}");
            let ours = || {
                ns.iter()
                    .filter(|x| x.held(&k) && !x.holds(&k, &foreign))
                    .count()
            };
            if got.is_some() {
                assert!(ours() >= crate::quorum(n));
                assert!(b.release(&k, &t).unwrap());
            }
            eventually("no key with our token", || ours() == 0);
            for (i, node) in ns.iter().enumerate() {
                let occupied = pattern & (1 << i) != 0;
                assert_eq!(
                    node.holds(&k, &foreign),
                    occupied,
                    "the foreign key was touched"
                );
            }
        }
    }
}

#[test]
fn contention_with_a_minority_failed_is_not_an_error() {
    let ns = nodes(5);
    ns[3].fail.store(true, Ordering::SeqCst);
    ns[4].fail.store(true, Ordering::SeqCst);
    let b = redlock(&ns);
    let (k, other) = (key(), Token::generate());
    // A split vote: another client holds one of the three live nodes.
    ns[0].store.try_acquire(&k, &other, ms(10_000)).unwrap();
    assert_eq!(
        b.try_acquire(&k, &Token::generate(), ms(10_000)).unwrap(),
        None
    );
}

#[test]
fn majority_failed_is_a_quorum_error_naming_every_node() {
    let ns = nodes(3);
    ns[1].fail.store(true, Ordering::SeqCst);
    ns[2].delay_ms.store(200, Ordering::SeqCst);
    let b = redlock_with(&ns, ms(50));
    let (k, t) = (key(), Token::generate());
    let start = Instant::now();
    let err = b.try_acquire(&k, &t, ms(10_000)).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind(), BackendErrorKind::Quorum, "{err}");
    let text = format!("{err:#}");
    for want in [
        "1 of 3 nodes, 2 needed",
        "mem0: acquired",
        "mem1: error (i/o error: injected failure)",
        "mem2: timeout (no answer within 50ms)",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    assert!(took >= ms(50) && took < ms(150), "{took:?}");
    eventually("cleanup on the node that acquired", || !ns[0].held(&k));
    // The slow node acquires at 200 ms and, every call taking it 200 ms, releases at 400.
    sleep(ms(300));
    assert!(
        ns[2].held(&k),
        "the slow node never acted: the test proves nothing"
    );
    sleep(ms(200));
    assert!(
        ns.iter().all(|n| !n.held(&k)),
        "the late acquire left a key"
    );
}

#[test]
fn a_lost_reply_is_cleaned_up() {
    let ns = nodes(3);
    let ns = vec![
        ns[0].clone(),
        ns[1].clone().losing_replies(),
        ns[2].clone().losing_replies(),
    ];
    let b = redlock(&ns);
    let (k, t) = (key(), Token::generate());
    let err = b.try_acquire(&k, &t, ms(10_000)).unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Quorum);
    // Errored nodes did set the key; their cleanup is issued although they errored.
    ns[1].heal();
    ns[2].heal();
    eventually("keys set behind lost replies are released", || {
        ns.iter().all(|n| !n.held(&k))
    });
}

#[test]
fn late_replies_change_nothing_and_are_cleaned_up_after_success() {
    let ns = nodes(3);
    ns[2].delay_ms.store(100, Ordering::SeqCst);
    let b = redlock(&ns);
    let (k, t) = (key(), Token::generate());
    let start = Instant::now();
    assert!(b.try_acquire(&k, &t, ms(10_000)).unwrap().is_some());
    assert!(start.elapsed() < ms(50), "waited for the slow node");
    // Released while the slow node is still acquiring: it releases right after (every
    // call takes it 100 ms: acquired at 100, released at 200).
    assert!(b.release(&k, &t).unwrap());
    sleep(ms(150));
    assert!(
        ns[2].held(&k),
        "the slow node never acted: the test proves nothing"
    );
    sleep(ms(150));
    assert!(
        ns.iter().all(|n| !n.held(&k)),
        "the late acquire left a key"
    );
}

#[test]
fn an_acquire_slower_than_the_ttl_fails_and_cleans_up() {
    let ns = nodes(3);
    ns[1].delay_ms.store(30, Ordering::SeqCst);
    ns[2].delay_ms.store(30, Ordering::SeqCst);
    let b = redlock(&ns);
    let (k, t) = (key(), Token::generate());
    let start = Instant::now();
    // 20 ms ttl: validity budget 20 - 2.2 = 17.8 ms, less than the nodes take.
    let r = b.try_acquire(&k, &t, ms(20));
    let took = start.elapsed();
    let err = r.err().unwrap_or_else(|| panic!("a lock after {took:?}"));
    assert_eq!(err.kind(), BackendErrorKind::Quorum, "{err}");
    assert!(took < ms(30), "waited past the ttl's validity: {took:?}");
    eventually("cleanup", || ns.iter().all(|n| !n.held(&k)));
    sleep(ms(60));
    assert!(ns.iter().all(|n| !n.held(&k)));
    // And a TTL the drift alone eats is refused before any I/O.
    let err = b.try_acquire(&k, &t, ms(2)).unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Config, "{err}");
}

#[test]
fn validity_is_ttl_minus_drift_from_the_start_of_the_call() {
    let ns: Vec<_> = nodes(3).into_iter().map(|n| n.slow(ms(20))).collect();
    let b = redlock(&ns);
    let mgr = LockManager::new(b);
    let before = Instant::now();
    let g = mgr
        .lock_with("v", lock_core::LockOptions::new().ttl(ms(1000)))
        .unwrap();
    // ttl 1000 - drift 12 = 988 ms from the start, of which ~20 ms are gone.
    let left = g.remaining();
    assert!(
        left <= ms(988).saturating_sub(before.elapsed()) + ms(1),
        "{left:?}"
    );
    assert!(left > ms(900), "{left:?}");
}

#[test]
fn manager_error_path_returns_at_once() {
    let ns = nodes(3);
    ns[1].fail.store(true, Ordering::SeqCst);
    ns[2].fail.store(true, Ordering::SeqCst);
    let mgr = LockManager::new(redlock(&ns));
    let start = Instant::now();
    let err = mgr.try_lock("x").unwrap_err();
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Quorum));
    assert!(start.elapsed() < ms(40), "{:?}", start.elapsed());
}

#[test]
fn extend_needs_a_quorum() {
    let ns = nodes(3);
    let b = redlock(&ns);
    let (k, t) = (key(), Token::generate());
    b.try_acquire(&k, &t, ms(10_000)).unwrap().unwrap();
    // The third node may answer after the quorum; let it, so the test knows the state.
    eventually("every node holds it", || ns.iter().all(|n| n.held(&k)));
    let v = b.extend(&k, &t, Extend::To(ms(20_000))).unwrap().unwrap();
    eventually("every node extended", || {
        ns.iter()
            .all(|n| n.store.inspect(&k, None).unwrap().unwrap() > ms(15_000))
    });
    assert!(v <= ms(20_000 - 202) && v > ms(19_000), "{v:?}");
    // Lost on two nodes (expired there, say): the lock is lost.
    ns[0].store.force_release(&k).unwrap();
    ns[1].store.force_release(&k).unwrap();
    assert_eq!(b.extend(&k, &t, Extend::By(ms(1000))).unwrap(), None);
    assert_eq!(b.inspect(&k, Some(&t)).unwrap(), None);
    // One node still holds it, which no longer makes the key locked for others.
    assert_eq!(b.inspect(&k, None).unwrap(), None);
    assert!(!b.release(&k, &t).unwrap());
}

#[test]
fn inspect_without_a_token_means_an_acquire_would_fail() {
    let ns = nodes(5);
    let b = redlock(&ns);
    let k = key();
    ns[0]
        .store
        .try_acquire(&k, &Token::generate(), ms(1000))
        .unwrap();
    ns[1]
        .store
        .try_acquire(&k, &Token::generate(), ms(3000))
        .unwrap();
    assert_eq!(b.inspect(&k, None).unwrap(), None, "three of five free");
    ns[2]
        .store
        .try_acquire(&k, &Token::generate(), ms(5000))
        .unwrap();
    let left = b.inspect(&k, None).unwrap().unwrap();
    // Free again for a quorum once the shortest of the three runs out.
    assert!(left <= ms(1000) && left > ms(900), "{left:?}");
}

#[test]
fn fencing_token_is_the_largest_counted_counter() {
    let ns = nodes(3);
    let b = redlock(&ns);
    let k = key();
    // Node 2 has minted more tokens for this key than the others.
    for _ in 0..5 {
        let t = Token::generate();
        ns[2].store.try_acquire(&k, &t, ms(10)).unwrap();
        ns[2].store.release(&k, &t).unwrap();
    }
    // Nodes 0 and 1 answer late, so node 2 is in the first quorum to answer.
    ns[0].delay_ms.store(20, Ordering::SeqCst);
    ns[1].delay_ms.store(20, Ordering::SeqCst);
    let t = Token::generate();
    let a = b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    assert_eq!(a.fencing_token, 6);
    b.release(&k, &t).unwrap();
}

#[test]
fn a_panicking_node_counts_as_timed_out_and_keeps_its_worker() {
    let ns = nodes(3);
    ns[2].panic.store(true, Ordering::SeqCst);
    let b = RedlockBackend::builder_from_backends(
        ns.iter()
            .enumerate()
            .map(|(i, n)| (format!("mem{i}"), n.clone())),
    )
    .pool_size(1)
    // Printing the panic's backtrace can take long on a busy machine.
    .node_timeout(Duration::from_secs(2))
    .build()
    .unwrap();
    let (k, t) = (key(), Token::generate());
    assert!(b.try_acquire(&k, &t, ms(1000)).unwrap().is_some());
    assert!(b.release(&k, &t).unwrap());
    ns[2].panic.store(false, Ordering::SeqCst);
    b.health_check().unwrap();
    // Node 2's one worker survived: with node 0 down the lock needs it.
    ns[0].fail.store(true, Ordering::SeqCst);
    let t2 = Token::generate();
    b.try_acquire(&k, &t2, ms(1000)).unwrap().unwrap();
    assert!(ns[2].held(&k));
}

#[test]
fn health_check_and_force_release_tolerate_a_minority() {
    let ns = nodes(3);
    let b = redlock(&ns);
    let k = key();
    b.health_check().unwrap();
    ns[0]
        .store
        .try_acquire(&k, &Token::generate(), ms(10_000))
        .unwrap();
    ns[1].fail.store(true, Ordering::SeqCst);
    b.health_check().unwrap();
    assert!(b.force_release(&k).unwrap());
    assert!(!b.force_release(&k).unwrap());
    ns[2].fail.store(true, Ordering::SeqCst);
    assert_eq!(
        b.health_check().unwrap_err().kind(),
        BackendErrorKind::Quorum
    );
    assert_eq!(
        b.force_release(&k).unwrap_err().kind(),
        BackendErrorKind::Quorum
    );
}

#[test]
fn dedicated_handle_works_on_the_same_nodes() {
    let ns = nodes(3);
    let b = redlock(&ns);
    let d = b.dedicated().unwrap();
    let (k, t) = (key(), Token::generate());
    b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    assert!(d.extend(&k, &t, Extend::To(ms(5000))).unwrap().is_some());
    assert!(d.inspect(&k, Some(&t)).unwrap().unwrap() > ms(4000));
    assert!(b.release(&k, &t).unwrap());
}

#[test]
fn builder_rejects_bad_configuration() {
    let setup = |r: Result<RedlockBackend, LockError>| match r {
        Err(LockError::Setup { source }) => source.to_string(),
        other => panic!("expected a setup error, got {other:?}"),
    };
    let none: [&str; 0] = [];
    assert!(setup(RedlockBackend::connect(&none)).contains("at least one node"));
    let u = ["redis://127.0.0.1:1/", "redis://127.0.0.1:2/"];
    let dup = ["redis://127.0.0.1:1/", "redis://:pw@127.0.0.1:1/0"];
    assert!(setup(RedlockBackend::connect(&dup)).contains("listed twice"));
    let bad = ["redis://127.0.0.1:1/", "http://:hunter2@127.0.0.1:2/"];
    let msg = setup(RedlockBackend::connect(&bad));
    assert!(msg.contains("node 2") && !msg.contains("hunter2"), "{msg}");
    for b in [
        RedlockBackend::builder(&u).node_timeout(Duration::ZERO),
        RedlockBackend::builder(&u).connect_timeout(Duration::ZERO),
        RedlockBackend::builder(&u).drift_factor(-0.1),
        RedlockBackend::builder(&u).drift_factor(1.0),
        RedlockBackend::builder(&u).drift_factor(f64::NAN),
        RedlockBackend::builder(&u).pool_size(0),
        RedlockBackend::builder(&u).pool_size(10_000),
    ] {
        setup(b.build());
    }
    let ok = RedlockBackend::builder(&u)
        .drift_factor(0.0)
        .build()
        .unwrap();
    assert_eq!(ok.addrs(), ["127.0.0.1:1/0", "127.0.0.1:2/0"]);
}

#[test]
fn passwords_never_show() {
    let urls = [
        "redis://:hunter2@127.0.0.1:1/",
        "redis://u:hunter2@127.0.0.1:2/",
        "redis://:hunter2@127.0.0.1:3/",
    ];
    let b = RedlockBackend::builder(&urls)
        .node_timeout(ms(20))
        .build()
        .unwrap();
    let err = b
        .try_acquire(&key(), &Token::generate(), ms(1000))
        .unwrap_err();
    let shown = format!("{b:?} {err} {err:?} {:?}", RedlockBackend::builder(&urls));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("127.0.0.1:3/0"), "{shown}");
}

#[test]
fn a_failing_node_is_left_alone_until_it_answers_a_ping() {
    let ns = nodes(3);
    // A node found failing is left alone for the node timeout (here 200 ms) at first.
    let b = redlock_with(&ns, ms(200));
    ns[2].delay_ms.store(100, Ordering::SeqCst);
    ns[2].fail.store(true, Ordering::SeqCst);
    let k = key();
    // The first attempt sends to node 2 and learns, after its delay, that it fails.
    let first = Instant::now();
    let t = Token::generate();
    b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    b.release(&k, &t).unwrap();
    // The chained release there fails too, at about 200 ms.
    sleep(ms(250).saturating_sub(first.elapsed()));
    // Now it is down (until about 400 ms): a call that needs it does not wait for it.
    ns[1].fail.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let err = b.try_acquire(&k, &Token::generate(), ms(1000)).unwrap_err();
    assert!(start.elapsed() < ms(60), "{:?}", start.elapsed());
    assert!(
        format!("{err:#}").contains("mem2: not sent (i/o error: node mem2 is down"),
        "{err}"
    );
    // Healed, it is used again once it answers: a health check asks every node at once.
    ns[1].heal();
    ns[2].heal();
    b.health_check().unwrap();
    let t = Token::generate();
    b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    eventually("node 2 takes part again", || ns[2].held(&k));
    b.release(&k, &t).unwrap();
    // (Node 2's answer to that release, still to come, would count as it being up.)
    eventually("node 2 released it", || !ns[2].held(&k));
    sleep(ms(20));
    // Without one, its workers' pings find out: failing again (a health check waits for
    // every node's answer), it is down at once...
    ns[2].fail.store(true, Ordering::SeqCst);
    b.health_check().unwrap();
    ns[2].heal();
    let t = Token::generate();
    b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    assert!(!ns[2].held(&k), "a node that is down was sent an acquire");
    b.release(&k, &t).unwrap();
    // ...and back within a ping or two (the first after 200 ms), with no caller asking.
    eventually("node 2 is pinged back in", || {
        let t = Token::generate();
        b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
        let back = ns[2].held(&k);
        b.release(&k, &t).unwrap();
        back
    });
}

/// The manager retries with the same token. An earlier attempt's cleanup that is still
/// under way on a slow node must not delete what a later attempt of the same token set
/// (pinned: it once did, and two holders overlapped).
#[test]
fn a_late_cleanup_never_removes_a_later_attempts_key() {
    let ns = nodes(5);
    let b = redlock(&ns);
    let (k, t, foreign) = (key(), Token::generate(), Token::generate());
    for n in &ns[2..] {
        n.store.try_acquire(&k, &foreign, ms(10_000)).unwrap();
    }
    ns[0].release_delay_ms.store(100, Ordering::SeqCst);
    ns[1].release_delay_ms.store(100, Ordering::SeqCst);
    // Nodes 0 and 1 grant, the rest are held: contention, cleanup slow on 0 and 1.
    assert_eq!(b.try_acquire(&k, &t, ms(10_000)).unwrap(), None);
    ns[2].store.release(&k, &foreign).unwrap();
    // Retry with the same token until it is granted (once the cleanup is through), with
    // a jittered, growing pause as the manager's: retries at a fixed 5 ms could keep
    // re-taking node 0 or 1 for one failed attempt after another, each then held by its
    // own 100 ms cleanup, for as long as a busy machine keeps their timing in step.
    let until = Instant::now() + Duration::from_secs(10);
    let mut pause = ms(5);
    while b.try_acquire(&k, &t, ms(10_000)).unwrap().is_none() {
        assert!(Instant::now() < until, "never granted");
        let half = pause.as_millis() as u64 / 2;
        sleep(ms(half + rand::random::<u64>() % (half + 1)));
        pause = (pause * 2).min(ms(400));
    }
    sleep(ms(250));
    let ours = ns
        .iter()
        .filter(|n| n.held(&k) && !n.holds(&k, &foreign))
        .count();
    assert!(ours >= 3, "the lock is held on {ours} nodes only");
    assert!(b.inspect(&k, Some(&t)).unwrap().is_some());
    assert!(b.release(&k, &t).unwrap());
}

/// A node whose ping panics is still pinged again (and so taken back once it answers),
/// not left down until somebody calls `health_check`.
#[test]
fn a_node_whose_ping_panicked_is_pinged_again() {
    let ns = nodes(3);
    let b = redlock_with(&ns, ms(100));
    ns[2].panic.store(true, Ordering::SeqCst);
    let (k, t) = (key(), Token::generate());
    b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
    b.release(&k, &t).unwrap();
    // Down since the panic: the first ping (after 100 ms) panics too.
    sleep(ms(400));
    ns[2].panic.store(false, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let t = Token::generate();
        b.try_acquire(&k, &t, ms(1000)).unwrap().unwrap();
        let back = ns[2].held(&k);
        b.release(&k, &t).unwrap();
        if back {
            break;
        }
        assert!(Instant::now() < until, "node 2 is never pinged back in");
        sleep(ms(20));
    }
}
