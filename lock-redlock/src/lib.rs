//! A [`LockBackend`] over N independent Redis masters: the Redlock algorithm from the
//! Redis documentation on distributed locks, for when one Redis is not enough.
//!
//! The same [`LockManager`](lock_core::LockManager) runs on it with no change to the
//! caller's code:
//!
//! ```no_run
//! use lock_core::LockManager;
//! use lock_redlock::RedlockBackend;
//!
//! # fn main() -> Result<(), lock_core::LockError> {
//! let mgr = LockManager::new(RedlockBackend::connect(&[
//!     "redis://10.0.0.1/",
//!     "redis://10.0.0.2/",
//!     "redis://10.0.0.3/",
//! ])?);
//! let guard = mgr.lock("job:1")?;         // a quorum of the nodes agreed
//! println!("valid for {:?}", guard.remaining());
//! guard.release()?;                       // released on every node
//! # Ok(()) }
//! ```
//!
//! # How it works
//! Every node is a [`RedisBackend`](lock_redis::RedisBackend) (its pool, its Lua scripts,
//! its timeouts); Redlock adds the quorum on top. The calling thread writes the command
//! to every node first, on an idle pooled connection of each, and only then reads the
//! replies (lock-redis's internal split-I/O seam), so one lock costs
//! about one round trip whatever N, with no hand-off between threads. It reads the nodes
//! that answered quickest last time first and a node that is down last. Once the
//! answers decide the call it returns: the replies of a node that is down or was more
//! than 2 ms slower than the decision last time are handed, unread, to one of the node's
//! workers, which reads them and acts on them behind the call (a lock it granted that the
//! call gave up on, or that was released meanwhile, is released; an acquisition still
//! unanswered at the node timeout is released behind it on its connection). So a slow
//! node costs a decided call nothing, and its next operation does not wait behind its
//! unread replies. A node whose connections
//! are all busy or not open yet, and nodes given as backends
//! ([`RedlockBackend::builder_from_backends`]), are run by the node's worker threads
//! instead, which also carry out everything the caller leaves behind: cleanups after a
//! failed acquire and retried releases.
//!
//! - **A node that freezes** costs the calls already waiting on it at most one node
//!   timeout; it then counts as down and is read last (or skipped) until it answers again.
//!
//! - **Acquire** succeeds once a quorum (`N/2 + 1`, see [`quorum`]) has set the key,
//!   provided time is left: the validity is `ttl - elapsed - drift` (see [`validity`] and
//!   [`drift`]), measured on the monotonic clock from before the first command was sent,
//!   and the lock is refused if it is not positive. The guard's
//!   [`remaining`](lock_core::LockGuard::remaining) counts down from `ttl - drift` after
//!   the start of the call (the moment the first node's key may expire), so it is never
//!   overstated. A node that has not answered within the node timeout (50 ms by default,
//!   and never longer than the TTL leaves validity for) counts as failed; its late answer
//!   changes nothing. A failed acquire therefore returns within
//!   `min(node timeout, ttl - drift)`. A healthy node that is merely slower than the
//!   quorum still sets the key (and is released with the rest).
//! - **A failed acquire cleans up on every node that may hold our key**, including nodes
//!   that errored or timed out (the command may have reached them). The cleanup runs on
//!   the node workers after the call has returned. A node still busy with our acquire
//!   releases right after it (a worker's command, on the same worker; the caller's, on
//!   the same connection, which the server runs in order), so the release never
//!   overtakes it; a node that fails the release is asked again, backing off, for up to
//!   the TTL (at most a minute).
//! - **Every attempt puts a fresh token on the wire.** The manager retries with one token;
//!   the backend maps it to the token of the attempt that was granted, so the cleanup of
//!   an earlier attempt can never delete what a later one set. Release, extend and
//!   `is_held` must therefore go through the backend that acquired (or a clone, or its
//!   [`dedicated`](LockBackend::dedicated) handle), as the manager always does; to any
//!   other instance the token is unknown (release `false`, extend lost).
//! - Contention is not an error: the acquire returns `Ok(None)` when the nodes that
//!   answered could have formed a quorum but another holder has part of it. It is an
//!   error of kind [`Quorum`](lock_core::BackendErrorKind::Quorum) when more nodes
//!   failed than a quorum can spare (so nobody can lock), or when the quorum came too
//!   late for the TTL. The message names every node's address (never a password) and its
//!   outcome: acquired, held by another, error (with the node's error), timeout, not sent.
//! - **A failing node is left alone until it answers again**: after an error or a
//!   timeout, acquire, extend and inspect fail on it at once instead of waiting out its
//!   timeout again, and one of its workers pings it (after the node timeout, then
//!   doubling up to 1 s), so no caller pays for the probing. Its first answer (to a ping,
//!   a release, or [`health_check`](LockBackend::health_check), which asks every node)
//!   brings it back. Releases always go out.
//! - **Release** goes to every node that may hold the key and reports `true` when a
//!   quorum deleted it, i.e. the lock was still ours by the Redlock rule; `false` when it
//!   had expired or been taken over (too many nodes say the key is not ours for the rest
//!   to make a quorum); an error when too many nodes failed to tell. A node whose reply to
//!   the acquire came too late keeps that connection for the lock, and its release goes
//!   out behind the acquire on it, so it cannot overtake it.
//! - **Extend** succeeds only if a quorum extends the key and validity is left after the
//!   call (`shortest new ttl - elapsed - drift`); otherwise the lock is reported lost (or
//!   the error says which nodes failed).
//! - **Inspect** with a token (the guard's `is_held`): held if a quorum holds our key;
//!   the time left is until fewer than a quorum would still hold it. Without a token (the
//!   manager's `is_locked`/`ttl`): locked if fewer than a quorum of nodes are free, i.e.
//!   an acquire now would fail; the time left is until a quorum will be free. "Not held"
//!   returns as soon as it is certain; "held" waits for every node (up to the node
//!   timeout), and with nodes that did not answer the time left is a lower bound.
//! - **`force_release`** deletes the key on every node and succeeds if no more nodes
//!   failed than a quorum can spare; **`health_check`** passes if a quorum answers
//!   `PING` (failing nodes are logged at `warn`); **`dedicated`** gives the renewal thread
//!   a handle with one connection and one worker per node of its own.
//!
//! # Fencing tokens: what they do and do not guarantee
//! Each node mints its own counter atomically with its `SET NX`; the lock's fencing token
//! is the **largest** counter among the nodes whose grants decided the acquisition (the
//! first quorum to answer). There is no quorum-safe monotonic counter across independent
//! masters, so:
//!
//! - **Guaranteed:** a later acquisition's token is greater than an earlier one's
//!   whenever the node that minted the earlier token is among the nodes that decided the
//!   later acquisition and kept its data in between (its counter only grows).
//! - **Not guaranteed:** the counters of different nodes diverge: an attempt that fails
//!   still increments the nodes it reached, a node that was down or slow missed
//!   increments, a node restarted without persistence starts again at 1. A later holder
//!   whose deciding quorum does not include the node with the largest counter can get a
//!   **smaller** token than its predecessor. A resource that rejects smaller tokens then
//!   refuses a legitimate holder (safe, but unavailable); it never accepts a stale holder
//!   whose token is below the largest it has seen.
//!
//! In a healthy cluster without contention every node takes part in every acquisition,
//! the counters stay in step and tokens do increase (the conformance suite checks it on 3
//! and 5 nodes), but that is an observation, not a promise. Where fencing must be strict,
//! mint tokens in one linearizable store.
//!
//! # Assumptions (the Redlock model)
//! - **Clocks do not jump.** Expiry runs on each server's clock; a server whose clock is
//!   stepped forward expires keys early and can hand the lock to a second client. Run
//!   the servers with slewing time sync (no steps), and keep the drift factor above their
//!   worst relative rate error (the default allows 1% plus 2 ms).
//! - **Restarted nodes stay out for longer than the longest TTL**, or persist every write
//!   with `appendfsync always`. A node that restarts empty at once can grant the lock to a
//!   second client while the first still holds it on the other nodes of its quorum.
//! - **Independent nodes, odd in number.** Masters without replicas between them (a
//!   failover to a replica that missed the write has the same effect as an empty
//!   restart). N = 1 works and is exactly one Redis; an even N is allowed but wasteful:
//!   4 nodes need 3 and tolerate one failure, like 3 nodes do.
//! - **Node timeouts small against the TTL.** A node costs at most its timeout; the lock
//!   is only worth its validity, which is what is left of the TTL after the slowest
//!   needed answer and the drift. Choose TTLs well above the node timeout; a TTL the
//!   drift alone eats (about 2 ms and less) is refused before any I/O.
//! - **The work fits in the validity.** As with every lease: check
//!   [`remaining`](lock_core::LockGuard::remaining), extend or renew, and use fencing
//!   where the resource can check it.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod builder;
mod cleanup;
mod dispatch;
mod fanout;
mod math;
mod node;
mod registry;
mod report;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::{Acquired, BackendError, BackendErrorKind, Extend, LockBackend, LockError, Token};
use parking_lot::Mutex;

pub use builder::RedlockBuilder;
pub use math::{drift, quorum, validity, DRIFT_CONSTANT};

use cleanup::{
    acquire_behind, acquire_on, begin_release, cleanup_window, release_late, release_with_retries,
    retry_release,
};
use dispatch::read_handed;
use fanout::{Call, CallState, Skip, Slot};
use lock_redis::seam::{Finish, Idle, InFlight, Late, Outcome};
use math::{quorum_remaining, Verdict};
use node::{Job, Node, Worker};
use registry::{Hold, Holds};
use report::acquired_label;

/// Default timeout of each node's answer: 50 ms.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default clock-drift factor: 0.01 (drift = `ttl * 0.01 + 2 ms`).
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;
/// Default connections per node (and worker threads per node given as a backend): 8.
pub const DEFAULT_POOL_SIZE: u32 = 8;
/// The largest accepted pool size per node: 256.
pub const MAX_POOL_SIZE: u32 = 256;
/// Default timeout for opening a connection to a node: 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = lock_redis::DEFAULT_CONNECT_TIMEOUT;

/// How long the caller still waits for a node that has not answered (down, or slower
/// than the others) once the answers of the others have decided the operation, if the
/// node's workers cannot take its reply (their queue is full): it is not worth the whole
/// node timeout.
const GRACE: Duration = Duration::from_millis(2);

/// A lock store over N independent Redis masters with the Redlock algorithm. See the
/// [crate docs](crate) for the behaviour, the guarantees and the assumptions.
///
/// Cheap to clone: clones share the nodes, their connections and worker threads. The
/// workers stop once the last clone (and the last [`dedicated`](LockBackend::dedicated)
/// handle) is dropped and the queued cleanups are done.
#[derive(Clone)]
pub struct RedlockBackend {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    quorum: usize,
    node_timeout: Duration,
    drift_factor: f64,
    workers: usize,
    /// Acquisitions by key and the manager's token: granted ones (their wire token, and
    /// nodes still running them that the release must wait for), and failed ones whose
    /// cleanup is already under way. Shared with dedicated handles.
    holds: Arc<Mutex<Holds>>,
}

impl RedlockBackend {
    /// A backend over the Redis masters at `urls` (`redis://[user:password@]host[:port][/db]`
    /// each), with the defaults of [`RedlockBuilder`], once a quorum of them answers: as
    /// [`RedlockBuilder::connect`]. [`connect_lazy`](RedlockBackend::connect_lazy) makes
    /// no connection.
    ///
    /// # Errors
    /// [`LockError::Setup`] as [`RedlockBuilder::connect`].
    pub fn connect<S: AsRef<str>>(urls: &[S]) -> Result<Self, LockError> {
        Self::builder(urls).connect()
    }

    /// As [`connect`](RedlockBackend::connect), but makes no connection (for a program
    /// that may start before its Redis nodes): as [`RedlockBuilder::build`].
    ///
    /// # Errors
    /// [`LockError::Setup`] as [`RedlockBuilder::build`].
    pub fn connect_lazy<S: AsRef<str>>(urls: &[S]) -> Result<Self, LockError> {
        Self::builder(urls).build()
    }

    /// A builder over the Redis masters at `urls`.
    pub fn builder<S: AsRef<str>>(urls: &[S]) -> RedlockBuilder {
        RedlockBuilder::from_urls(urls)
    }

    /// A builder over nodes that are backends already, each with a label for messages
    /// (which must not contain credentials): for example
    /// [`RedisBackend`](lock_redis::RedisBackend)s configured beyond what the URL builder
    /// offers (an existing pool, a fencing prefix). Each must be an independent store, and
    /// should bound its own calls in time: the caller never waits for a node longer than
    /// the node timeout, but a node's worker does.
    pub fn builder_from_backends<B: LockBackend>(
        nodes: impl IntoIterator<Item = (String, B)>,
    ) -> RedlockBuilder {
        RedlockBuilder::from_backends(nodes)
    }

    pub(crate) fn from_parts(
        nodes: Vec<Node>,
        node_timeout: Duration,
        drift_factor: f64,
        workers: usize,
    ) -> Self {
        RedlockBackend {
            inner: Arc::new(Inner {
                quorum: quorum(nodes.len()),
                nodes,
                node_timeout,
                drift_factor,
                workers,
                holds: Arc::default(),
            }),
        }
    }

    /// The nodes' addresses (`host:port/db`, or the labels given), without credentials.
    pub fn addrs(&self) -> Vec<&str> {
        self.inner.nodes.iter().map(|n| n.addr.as_str()).collect()
    }

    /// How many nodes must agree: `N/2 + 1`.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// The timeout of each node's answer.
    pub fn node_timeout(&self) -> Duration {
        self.inner.node_timeout
    }

    /// The clock-drift factor.
    pub fn drift_factor(&self) -> f64 {
        self.inner.drift_factor
    }
}

impl fmt::Debug for RedlockBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockBackend")
            .field("nodes", &self.addrs())
            .field("quorum", &self.inner.quorum)
            .field("node_timeout", &self.inner.node_timeout)
            .field("drift_factor", &self.inner.drift_factor)
            .field("workers_per_node", &self.inner.workers)
            .finish()
    }
}

type Op<T> = Arc<dyn Fn(&dyn LockBackend) -> Result<T, BackendError> + Send + Sync>;
/// How the caller starts an operation on an idle connection of a node it talks to
/// directly.
type Direct<'a, T> = &'a dyn Fn(Idle<'_>) -> InFlight<T>;
/// Operations the caller has sent directly, by node.
type Flights<T> = Vec<(usize, InFlight<T>)>;
/// Operations whose replies did not come in time, by node.
type Lates = Vec<(usize, Box<Late>)>;
/// A reply handed to a node's worker after the call was decided (see
/// [`Inner::read_rest`]); the caller takes it back if the worker cannot take the job.
type Handed<T> = Arc<Mutex<Option<InFlight<T>>>>;
/// Makes the job that reads node `i`'s handed-over reply and acts on it.
type Behind<'a, T> = &'a dyn Fn(usize, Handed<T>) -> Job;

fn quorum_error(message: String) -> BackendError {
    BackendError::new(BackendErrorKind::Quorum, message)
}

fn deadline(start: Instant, d: Duration) -> Instant {
    start.checked_add(d).unwrap_or(start)
}

impl LockBackend for RedlockBackend {
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError> {
        let inner = &*self.inner;
        let start = Instant::now();
        let drift = drift(ttl, inner.drift_factor);
        let Some(budget) = validity(ttl, Duration::ZERO, drift) else {
            return Err(BackendError::new(
                BackendErrorKind::Config,
                format!(
                    "ttl {ttl:?} is not longer than the clock-drift allowance {drift:?}: \
                     Redlock cannot vouch for such a lock"
                ),
            ));
        };
        // The manager retries with the same token; a fresh one per attempt on the wire
        // keeps an earlier attempt's cleanup (still under way on some node) from deleting
        // what a later attempt set. A retry of a granted acquisition keeps its token, so
        // it refreshes the lock rather than contending with itself.
        let granted = inner.holds.lock().granted(key, token);
        let retry = granted.is_some();
        let wire = granted.unwrap_or_else(Token::generate);
        let hold = Arc::new(Hold {
            key: key.to_vec(),
            token: wire,
            ttl,
            acquire: Call::new(inner.n()),
            lates: Mutex::default(),
            forget_after: Mutex::new(deadline(start, ttl.saturating_add(inner.node_timeout))),
        });
        // Past the budget no answer could leave validity: stop waiting there.
        let wait = inner.node_timeout.min(budget);
        let late = deadline(start, wait);
        let mut flights = Vec::new();
        for (i, node) in inner.nodes.iter().enumerate() {
            if let Err(e) = node.admit() {
                hold.acquire.refuse(i, e);
                continue;
            }
            if let Some(idle) = node.redis.as_ref().and_then(|r| r.idle()) {
                hold.acquire.sent_directly(i);
                flights.push((i, idle.acquire(&hold.key, &hold.token, ttl)));
                continue;
            }
            let h = hold.clone();
            if let Err(e) = node.submit(Box::new(move |w| acquire_on(&h, i, late, w)), false) {
                hold.acquire.refuse(i, e);
            }
        }
        let q = inner.quorum;
        let decided =
            |st: &CallState<Option<Acquired>>| st.tally(Option::is_some).verdict(q).is_some();
        // The answers read before the decision decide it (and its fencing token); the rest
        // are read once the outcome is fixed.
        let (mut lates, rest) = inner.read_until(&hold.acquire, flights, (start, late), decided);
        let mut settled = hold.acquire.settle(start, wait, decided);
        let elapsed = start.elapsed();
        let st = &mut settled.state;
        let tally = st.tally(Option::is_some);
        let outcome = match tally.settle(q) {
            Verdict::Yes => match validity(ttl, elapsed, drift) {
                Some(left) => {
                    let fencing_token = st.values().map(|a| a.fencing_token).max().unwrap_or(0);
                    // Measured from the start of the call, as the manager counts it:
                    // ttl - drift, the moment the first node's key may expire.
                    Ok(Some(Acquired {
                        fencing_token,
                        validity: left.saturating_add(elapsed),
                    }))
                }
                None => Err(inner.failure(
                    &format!(
                        "acquire reached a quorum only after {elapsed:?}, leaving no validity \
                         of the {ttl:?} ttl after the {drift:?} drift allowance"
                    ),
                    st,
                    tally.yes,
                    q,
                    settled.timed_out,
                    acquired_label,
                )),
            },
            Verdict::No => Ok(None),
            Verdict::Failed => Err(inner.failure(
                "acquire",
                st,
                tally.yes,
                q,
                settled.timed_out,
                acquired_label,
            )),
        };
        let won = matches!(outcome, Ok(Some(_)));
        st.won = won;
        drop(settled);
        // Late answers change nothing decided; a node that granted one holds our key and is
        // released with the rest.
        let behind = |i, handed: Handed<Option<Acquired>>| -> Job {
            let h = hold.clone();
            Box::new(move |w| acquire_behind(&h, i, &handed, (start, late), w))
        };
        inner.read_rest(&hold.acquire, rest, (start, late), &mut lates, &behind);
        if won {
            // The release goes to these nodes too, behind the acquire.
            hold.lates.lock().extend(lates);
        } else {
            let (release, targets) = begin_release(&mut hold.acquire.lock());
            // A worker may have found a handed-over reply late before the release was
            // asked for; from now on it sees the release (see `acquire_behind`).
            lates.extend(hold.lates.lock().drain(..));
            inner.release_on(&release, targets, &hold, None);
            inner.release_behind(&release, lates, &hold);
        }
        // Contention needs no follow-up; success waits for its release, and a failure for
        // the release the manager sends after an error (answered at once: see `release`).
        // A failed retry of a granted acquisition replaces it: its cleanup used the same
        // token, so the lock is no longer ours.
        if retry || !matches!(outcome, Ok(None)) {
            inner.holds.lock().insert(key, token, hold);
        }
        outcome
    }

    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        let inner = &*self.inner;
        let start = Instant::now();
        let hold = inner
            .holds
            .lock()
            .map
            .remove(&(key.to_vec(), token.clone()));
        // Unknown: never granted through this backend, released already, or expired long
        // ago. Nothing of it can be on the nodes.
        let Some(hold) = hold else {
            return Ok(false);
        };
        let mut st = hold.acquire.lock();
        if st.then_release.is_some() {
            // A failed acquisition: its cleanup is already under way.
            return Ok(false);
        }
        let (release, targets) = begin_release(&mut st);
        drop(st);
        inner.release_on(&release, targets, &hold, Some((start, inner.node_timeout)));
        let q = inner.quorum;
        let settled = release.settle(start, inner.node_timeout, |st| {
            st.tally(|d| *d).owned(q).is_some()
        });
        let tally = settled.state.tally(|d| *d);
        match tally.settle_owned(q) {
            Verdict::Yes => Ok(true),
            Verdict::No => Ok(false),
            Verdict::Failed => Err(inner.failure(
                "release",
                &settled.state,
                tally.yes,
                q,
                settled.timed_out,
                |d| if *d { "deleted" } else { "not ours" },
            )),
        }
    }

    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError> {
        let inner = &*self.inner;
        let start = Instant::now();
        let Some(wire) = inner.holds.lock().granted(key, token) else {
            return Ok(None);
        };
        let (k, t) = (key.to_vec(), wire.clone());
        let q = inner.quorum;
        let label = |d: &Option<Duration>| if d.is_some() { "extended" } else { "not ours" };
        inner.fan_out(
            (Arc::new(move |b| b.extend(&k, &t, how)), &|idle| {
                idle.extend(key, &wire, how)
            }),
            Skip::IfLate(deadline(start, inner.node_timeout)),
            true,
            |st| st.tally(Option::is_some).owned(q).is_some(),
            |st, timed_out, elapsed| {
                let tally = st.tally(Option::is_some);
                match tally.settle_owned(q) {
                    Verdict::Yes => {
                        // The lock lasts as long as its shortest-lived quorum node.
                        let shortest = st.values().min().unwrap_or(Duration::ZERO);
                        let drift = drift(shortest, inner.drift_factor);
                        let Some(left) = validity(shortest, elapsed, drift) else {
                            return Err(inner.failure(
                                &format!(
                                    "extend reached a quorum only after {elapsed:?}, leaving no \
                                     validity of the {shortest:?} ttl after the {drift:?} drift \
                                     allowance"
                                ),
                                st,
                                tally.yes,
                                q,
                                timed_out,
                                label,
                            ));
                        };
                        let holds = inner.holds.lock();
                        if let Some(h) = holds.map.get(&(key.to_vec(), token.clone())) {
                            let until =
                                deadline(start, shortest.saturating_add(inner.node_timeout));
                            let mut f = h.forget_after.lock();
                            *f = (*f).max(until);
                        }
                        Ok(Some(left.saturating_add(elapsed)))
                    }
                    Verdict::No => Ok(None),
                    Verdict::Failed => {
                        Err(inner.failure("extend", st, tally.yes, q, timed_out, label))
                    }
                }
            },
        )
    }

    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        let inner = &*self.inner;
        // Held by us: a quorum holds our token. Locked by anybody: too few nodes are free
        // for a quorum, i.e. more than N - quorum nodes hold the key.
        let (need, wire) = match token {
            Some(t) => match inner.holds.lock().granted(key, t) {
                Some(wire) => (inner.quorum, Some(wire)),
                None => return Ok(None),
            },
            None => (inner.n() - inner.quorum + 1, None),
        };
        // Whether our token holds: a node that failed may still hold it (see
        // `Tally::owned`). Whether anybody holds it is advisory ("an acquire now would
        // fail"), so there contention-style verdicts do.
        let owned = wire.is_some();
        let verdict = move |t: &math::Tally| {
            if owned {
                t.owned(need)
            } else {
                t.verdict(need)
            }
        };
        let settle = move |t: &math::Tally| {
            if owned {
                t.settle_owned(need)
            } else {
                t.settle(need)
            }
        };
        let (k, t) = (key.to_vec(), wire.clone());
        inner.fan_out(
            (Arc::new(move |b| b.inspect(&k, t.as_ref())), &|idle| {
                idle.inspect(key, wire.as_ref())
            }),
            Skip::IfClosed,
            true,
            // "Not held" is final as soon as it is certain; "held" waits for every node
            // (up to the timeout), since how long it lasts depends on all their TTLs.
            |st| {
                let tally = st.tally(Option::is_some);
                tally.pending == 0 || matches!(verdict(&tally), Some(Verdict::No | Verdict::Failed))
            },
            |st, timed_out, _| {
                let tally = st.tally(Option::is_some);
                match settle(&tally) {
                    Verdict::Yes => {
                        let left = st.values().collect();
                        Ok(quorum_remaining(left, need))
                    }
                    Verdict::No => Ok(None),
                    Verdict::Failed => Err(inner.failure(
                        "inspect",
                        st,
                        tally.yes,
                        need,
                        timed_out,
                        |d| if d.is_some() { "held" } else { "free" },
                    )),
                }
            },
        )
    }

    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        let inner = &*self.inner;
        let k = key.to_vec();
        let spare = inner.n() - inner.quorum;
        inner.fan_out(
            (Arc::new(move |b| b.force_release(&k)), &|idle| {
                idle.force_release(key)
            }),
            Skip::Never,
            false,
            |st| st.tally(|d| *d).pending == 0,
            |st, timed_out, _| {
                let tally = st.tally(|d| *d);
                if tally.failed + tally.pending > spare {
                    return Err(inner.failure(
                        "force release",
                        st,
                        tally.yes + tally.no,
                        inner.quorum,
                        timed_out,
                        |d| if *d { "deleted" } else { "absent" },
                    ));
                }
                Ok(tally.yes > 0)
            },
        )
    }

    fn health_check(&self) -> Result<(), BackendError> {
        let inner = &*self.inner;
        inner.fan_out(
            (Arc::new(|b| b.health_check()), &|idle| idle.ping()),
            Skip::IfClosed,
            false,
            |st| st.tally(|_| true).pending == 0,
            |st, timed_out, _| {
                let tally = st.tally(|_| true);
                if tally.yes < inner.quorum {
                    return Err(inner.failure(
                        "health check",
                        st,
                        tally.yes,
                        inner.quorum,
                        timed_out,
                        |_| "ok",
                    ));
                }
                if tally.yes < inner.n() {
                    log::warn!(
                        "redlock health check passed on a quorum only: {}",
                        st.report(&inner.nodes, timed_out, |_| "ok")
                    );
                }
                Ok(())
            },
        )
    }

    fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
        let inner = &*self.inner;
        let nodes = inner
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (backend, redis): (Arc<dyn LockBackend>, _) = match &n.redis {
                    Some(r) => {
                        let own = r.dedicated_pool().unwrap_or_else(|| r.clone());
                        (Arc::new(own.clone()), Some(own))
                    }
                    None => match n.backend.dedicated() {
                        Some(own) => (Arc::from(own), None),
                        None => (n.backend.clone(), None),
                    },
                };
                Node::start(
                    i,
                    n.addr.clone(),
                    backend,
                    redis,
                    1,
                    builder::MAX_QUEUED_PER_NODE,
                    inner.node_timeout,
                )
            })
            .collect::<Result<Vec<_>, _>>();
        match nodes {
            Ok(nodes) => Some(Box::new(RedlockBackend {
                inner: Arc::new(Inner {
                    quorum: inner.quorum,
                    nodes,
                    node_timeout: inner.node_timeout,
                    drift_factor: inner.drift_factor,
                    workers: 1,
                    holds: inner.holds.clone(),
                }),
            })),
            Err(e) => {
                log::warn!("no dedicated redlock handle, sharing the nodes' pools: {e}");
                None
            }
        }
    }
}
