//! One node: its backend, the persistent worker threads that run operations on it so a
//! blocking caller can talk to every node at once, delayed retries of cleanups the node
//! could not take, and what the node's last answers say about its health.
//!
//! A node that is a Redis server this backend connected itself needs no worker for the
//! common case: the caller writes the command to it and reads the reply directly (see
//! [`Node::redis`]); its workers then only finish what the caller left (cleanups behind a
//! command that timed out, retries).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lock_core::{BackendError, BackendErrorKind, LockBackend};
use lock_redis::RedisBackend;
use parking_lot::{Condvar, Mutex};

/// The longest pause between two pings of a node that is down, and between two retries
/// of a cleanup: 1 s.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Most cleanups waiting for a retry on one node; beyond, their keys are left to expire.
const MAX_RETRIES: usize = 4096;

/// Work for one node, run on one of its workers.
pub(crate) type Job = Box<dyn FnOnce(&Worker<'_>) + Send>;

/// What a job runs with: the node's backend, and the node's state.
pub(crate) struct Worker<'a> {
    pub(crate) backend: &'a dyn LockBackend,
    shared: &'a Shared,
}

impl Worker<'_> {
    /// Notes how the node answered. Call it before publishing the answer, so a caller
    /// that sees the answer also sees the node's health it implies.
    pub(crate) fn record<T>(&self, answer: &Result<T, BackendError>) {
        self.shared.record(answer.is_ok());
    }

    /// Runs the cleanup `job` on this node again after `delay`, even once the node is no
    /// longer in use.
    pub(crate) fn retry_later(&self, delay: Duration, job: Job) {
        if !self.shared.run_later(delay, job, true) {
            log::warn!(
                "redlock node {}: too many cleanups waiting for a retry; this key is left \
                 to expire by its ttl",
                self.shared.addr
            );
        }
    }

    /// Notes whether the node answered in time.
    pub(crate) fn record_answered(&self, answered: bool) {
        self.shared.record(answered);
    }

    /// Notes how long the node took to answer (or how long it was waited for).
    pub(crate) fn record_latency(&self, took: Duration) {
        self.shared.health.lock().latency = took;
    }

    /// The node's address, for messages.
    pub(crate) fn addr(&self) -> &str {
        &self.shared.addr
    }
}

/// A node and its workers. Dropping it closes the queue; the workers finish what is
/// queued and the cleanups still being retried (each retries for a bounded time), then
/// exit.
pub(crate) struct Node {
    /// `host:port/db` or the label the caller gave; never a password.
    pub(crate) addr: String,
    pub(crate) backend: Arc<dyn LockBackend>,
    /// The same server as `backend`, when it is one we connected to ourselves (so its
    /// reads honour a deadline): the caller talks to it directly instead of through a
    /// worker.
    pub(crate) redis: Option<RedisBackend>,
    shared: Arc<Shared>,
    max_queued: usize,
}

/// What the node's workers share with its handle.
struct Shared {
    addr: String,
    queue: Mutex<Queue>,
    ready: Condvar,
    health: Mutex<Health>,
    first_backoff: Duration,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Cleanups to run again once due (a few at most, unless the node is failing).
    retries: Vec<(Instant, Job)>,
    closed: bool,
}

impl Queue {
    /// The next job to run now, or how long to wait for one (`None`: until woken).
    fn next(&mut self, now: Instant) -> Result<Job, Option<Duration>> {
        if let Some(job) = self.jobs.pop_front() {
            return Ok(job);
        }
        let earliest = self
            .retries
            .iter()
            .enumerate()
            .min_by_key(|(_, (due, _))| *due)
            .map(|(i, (due, _))| (i, *due));
        match earliest {
            Some((i, due)) if due <= now => Ok(self.retries.swap_remove(i).1),
            Some((_, due)) => Err(Some(due - now)),
            None => Err(None),
        }
    }
}

/// A node that failed is "down": new operations that can do without it (acquire, extend,
/// inspect) fail at once instead of waiting out its timeouts. Meanwhile one of its workers
/// pings it, after the first backoff and then doubling it up to 1 s, so no caller pays
/// for finding out; the first answer (to a ping, a release or a health check) brings it
/// back.
#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    /// Which time the node went down: the one chain of pings started then carries it, and
    /// a chain from an earlier time stops (so a node that answers once and fails again
    /// while a ping is out is still pinged by one chain).
    episode: u64,
    backoff: Duration,
    /// How long its last direct answer took: the caller reads the quickest nodes first.
    latency: Duration,
}

impl Shared {
    fn record(&self, answered: bool) {
        let mut h = self.health.lock();
        if answered {
            if let Some(since) = h.down_since.take() {
                log::info!(
                    "redlock node {} answers again after {:?}",
                    self.addr,
                    since.elapsed()
                );
            }
            return;
        }
        if h.down_since.is_some() {
            return;
        }
        log::warn!(
            "redlock node {} failed; counting it as down until it answers a ping",
            self.addr
        );
        h.down_since = Some(Instant::now());
        h.episode += 1;
        h.backoff = self.first_backoff;
        let episode = h.episode;
        drop(h);
        self.ping_later(self.first_backoff, episode);
    }

    /// Pings the node from a worker after `delay`, and again (backing off) until it
    /// answers, while it is down (since `episode`) and the node is in use.
    fn ping_later(&self, delay: Duration, episode: u64) {
        let job: Job = Box::new(move |worker| {
            let shared = worker.shared;
            let current = |h: &Health| h.down_since.is_some() && h.episode == episode;
            if !current(&shared.health.lock()) {
                return;
            }
            let answer = worker.backend.health_check();
            shared.record(answer.is_ok());
            if answer.is_err() {
                let backoff = {
                    let mut h = shared.health.lock();
                    if !current(&h) {
                        // It answered something else meanwhile: a later chain took over.
                        return;
                    }
                    h.backoff = h.backoff.saturating_mul(2).min(MAX_BACKOFF);
                    h.backoff
                };
                shared.ping_later(backoff, episode);
            }
        });
        self.run_later(delay, job, false);
    }

    /// A job panicked: it counts as a failure. If the node was down already the job may
    /// have been its ping, whose chain then ended: a fresh chain starts (one that is still
    /// running stops at its next turn).
    fn record_panic(&self) {
        let mut h = self.health.lock();
        if h.down_since.is_none() {
            drop(h);
            self.record(false);
            return;
        }
        h.episode += 1;
        let (episode, delay) = (h.episode, h.backoff);
        drop(h);
        self.ping_later(delay, episode);
    }

    /// Queues `job` to run after `delay`. A `cleanup` still runs once the node is no
    /// longer in use, but only so many wait at once; a ping (one at a time per node) is
    /// not limited, and only runs while the node is in use. `false` if it was not queued.
    fn run_later(&self, delay: Duration, job: Job, cleanup: bool) -> bool {
        let mut q = self.queue.lock();
        let refused = match cleanup {
            true => q.retries.len() >= MAX_RETRIES,
            false => q.closed,
        };
        if refused {
            return false;
        }
        let due = Instant::now()
            .checked_add(delay)
            .unwrap_or_else(Instant::now);
        q.retries.push((due, job));
        drop(q);
        self.ready.notify_one();
        true
    }
}

impl Node {
    /// Starts `workers` threads for `backend`. A node that fails is pinged after
    /// `first_backoff`, then backing off (doubling up to 1 s) until it answers.
    pub(crate) fn start(
        index: usize,
        addr: String,
        backend: Arc<dyn LockBackend>,
        redis: Option<RedisBackend>,
        workers: usize,
        max_queued: usize,
        first_backoff: Duration,
    ) -> Result<Node, BackendError> {
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            health: Mutex::new(Health::default()),
            first_backoff,
        });
        let node = Node {
            addr,
            backend,
            redis,
            shared,
            max_queued,
        };
        for w in 0..workers.max(1) {
            let (shared, backend) = (node.shared.clone(), node.backend.clone());
            // On failure `node` is dropped, which stops the workers already started.
            thread::Builder::new()
                .name(format!("redlock-n{index}-w{w}"))
                .spawn(move || work(&shared, &*backend))
                .map_err(|e| {
                    BackendError::new(
                        BackendErrorKind::Other,
                        format!("cannot start a worker thread for node {}: {e}", node.addr),
                    )
                    .with_source(e)
                })?;
        }
        Ok(node)
    }

    /// Queues `job`. Refuses it, having sent nothing, if the node is overloaded (so many
    /// operations queued that a new one could not run within any sensible timeout), or
    /// (when `gated`) the node is down.
    pub(crate) fn submit(&self, job: Job, gated: bool) -> Result<(), BackendError> {
        if gated {
            self.admit()?;
        }
        let mut q = self.shared.queue.lock();
        if q.jobs.len() >= self.max_queued {
            let msg = format!(
                "node {} is overloaded: {} operations already queued",
                self.addr, self.max_queued
            );
            return Err(BackendError::new(BackendErrorKind::Timeout, msg));
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl Node {
    /// The health gate: `Err` if the node is down, so an operation that can do without
    /// it fails at once (its workers ping it until it answers).
    pub(crate) fn admit(&self) -> Result<(), BackendError> {
        let h = self.shared.health.lock();
        match h.down_since {
            Some(since) => Err(BackendError::new(
                BackendErrorKind::Io,
                format!(
                    "node {} is down (failing for {:?}; pinged every {:?} until it answers)",
                    self.addr,
                    since.elapsed(),
                    h.backoff
                ),
            )),
            None => Ok(()),
        }
    }

    /// Notes whether the node answered an operation the caller ran directly.
    pub(crate) fn record(&self, answered: bool) {
        self.shared.record(answered);
    }

    /// Notes how long the node took to answer an operation the caller ran directly (or,
    /// if it did not answer in time, how long the caller waited).
    pub(crate) fn record_latency(&self, took: Duration) {
        self.shared.health.lock().latency = took;
    }

    /// Where the node goes in the caller's reading order: nodes that are up before nodes
    /// that are down, and quick ones first, so a slow or failing node is read once the
    /// others have decided the outcome.
    pub(crate) fn rank(&self) -> (bool, Duration) {
        let h = self.shared.health.lock();
        (h.down_since.is_some(), h.latency)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

fn work(shared: &Shared, backend: &dyn LockBackend) {
    let worker = Worker { backend, shared };
    loop {
        let job = {
            let mut q = shared.queue.lock();
            loop {
                match q.next(Instant::now()) {
                    Ok(job) => break job,
                    Err(None) if q.closed => return,
                    Err(None) => shared.ready.wait(&mut q),
                    Err(Some(wait)) => {
                        let _ = shared.ready.wait_for(&mut q, wait);
                    }
                }
            }
        };
        // A panicking backend must not take the worker with it; the caller of the lost job
        // sees no answer and counts the node as timed out.
        if catch_unwind(AssertUnwindSafe(|| job(&worker))).is_err() {
            log::error!(
                "a redlock operation on node {} panicked; it counts as failed",
                shared.addr
            );
            shared.record_panic();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use lock_core::{Acquired, Extend, Token};

    use super::*;

    /// A node that fails every ping; the first one blocks until the test lets it go.
    struct Unreachable {
        pings: AtomicUsize,
        first: Mutex<Option<mpsc::Receiver<()>>>,
    }

    fn down() -> BackendError {
        BackendError::new(BackendErrorKind::Io, "down")
    }

    impl LockBackend for Unreachable {
        fn try_acquire(
            &self,
            _: &[u8],
            _: &Token,
            _: Duration,
        ) -> Result<Option<Acquired>, BackendError> {
            Err(down())
        }
        fn release(&self, _: &[u8], _: &Token) -> Result<bool, BackendError> {
            Err(down())
        }
        fn extend(&self, _: &[u8], _: &Token, _: Extend) -> Result<Option<Duration>, BackendError> {
            Err(down())
        }
        fn inspect(&self, _: &[u8], _: Option<&Token>) -> Result<Option<Duration>, BackendError> {
            Err(down())
        }
        fn force_release(&self, _: &[u8]) -> Result<bool, BackendError> {
            Err(down())
        }
        fn health_check(&self) -> Result<(), BackendError> {
            self.pings.fetch_add(1, Ordering::SeqCst);
            if let Some(rx) = self.first.lock().take() {
                let _ = rx.recv();
            }
            Err(down())
        }
    }

    /// A node that answers once (a release, say) while its ping is on the wire and then
    /// fails again is still pinged by one chain of pings, not one more per such flap.
    #[test]
    fn a_node_that_flaps_during_a_ping_is_pinged_by_one_chain() {
        let (tx, rx) = mpsc::channel();
        let backend = Arc::new(Unreachable {
            pings: AtomicUsize::new(0),
            first: Mutex::new(Some(rx)),
        });
        let node = Node::start(
            0,
            "n0".into(),
            backend.clone(),
            None,
            1,
            16,
            Duration::from_millis(5),
        )
        .unwrap();
        node.record(false);
        let start = Instant::now();
        while backend.pings.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(2), "never pinged");
            thread::sleep(Duration::from_millis(1));
        }
        // While the first ping waits for its answer, the node answers something else and
        // then fails something else again.
        node.record(true);
        node.record(false);
        tx.send(()).unwrap();
        // Both chains back off to 1 s; count the pings waiting in the queue meanwhile.
        let mut most = 0;
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            most = most.max(node.shared.queue.lock().retries.len());
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(most, 1, "pings queued at once for one node that is down");
    }
}
