//! Every operation on the wire, in two halves: the first checks out a pooled connection
//! and writes the command ([`RedisBackend::idle`] and [`Idle`] offer it publicly, on an
//! idle connection); [`Finish::finish`] reads the reply, at most until a deadline. The [`LockBackend`](lock_core::LockBackend)
//! methods run both halves back to back; Redlock writes to every node first and then
//! reads, so one lock costs one round trip whatever the number of nodes.
//!
//! The two recoveries live here once: a script the server does not know (`NOSCRIPT`, after
//! a restart or `SCRIPT FLUSH`) is loaded and the command sent again, and a pooled
//! connection that broke while idle is replaced and an idempotent command sent again.

use std::time::{Duration, Instant};

use lock_core::{Acquired, BackendError, BackendErrorKind, Extend, Token};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::{error, millis, scripts, wake, Pool, RedisBackend};

/// The shortest read timeout a socket takes; a read cut at a deadline waits at least this.
const MIN_READ: Duration = Duration::from_millis(1);

/// A pooled connection from either kind of pool, or one opened outside our pool for a
/// single command.
pub(crate) enum Conn {
    Own(r2d2::PooledConnection<crate::Connector>),
    Given(r2d2::PooledConnection<redis::Client>),
    Single(Box<redis::Connection>),
}

impl Conn {
    pub(crate) fn get(&mut self) -> &mut redis::Connection {
        match self {
            Conn::Own(c) => c,
            Conn::Given(c) => c,
            Conn::Single(c) => c,
        }
    }
}

/// A command written to a connection whose reply is still to be read.
struct Sent {
    conn: Conn,
    packed: Vec<u8>,
    /// The script the command runs, to load it on `NOSCRIPT`.
    script: Option<&'static Script>,
    /// Whether sending it twice is harmless (a lost reply, a connection found broken).
    idempotent: bool,
    /// How many times the command was sent on a fresh connection.
    tries: u32,
    /// The caller's idle connection was found broken by the write: the read half sends
    /// the command again, within its deadline (opening a connection can take the whole
    /// connect timeout, which the write half must not spend).
    unsent: bool,
}

enum Read {
    Reply(Value),
    Failed(RedisError),
    /// The deadline passed first. The reply will come later; `redis` skips it on the
    /// connection's next read, so the connection stays usable.
    Late,
}

impl RedisBackend {
    /// A pooled connection, waiting for one (or connecting) for at most the checkout
    /// timeout, and not past `deadline`. A connection attempt of our own pool that is
    /// refused while we wait ends the wait with its error (the pool would only try again
    /// until the checkout timeout): a closed port, a wrong password, a missing right or a
    /// bad certificate is reported within one connect timeout (at most the checkout
    /// timeout).
    pub(crate) fn checkout(&self, deadline: Option<Instant>) -> Result<Conn, BackendError> {
        let addr = &self.inner.addr;
        let start = Instant::now();
        let wait = |configured: Duration| match deadline {
            Some(d) => configured.min(d.saturating_duration_since(start).max(MIN_READ)),
            None => configured,
        };
        match &self.inner.pool {
            Pool::Given(p) => p
                .get_timeout(wait(p.connection_timeout()))
                .map(Conn::Given)
                .map_err(|e| error::pool_error(addr, e)),
            Pool::Own(p, connector) => {
                if let Some(c) = p.try_get() {
                    return Ok(Conn::Own(c));
                }
                self.inner.lates.prune();
                let waited = wait(p.connection_timeout());
                let end = start + waited;
                // Each wait of the pool may start one more connection attempt (r2d2 adds
                // one per waiter), so the waits are as long as one attempt may take: a
                // refusal is seen within one connect timeout, with no more than one
                // attempt per connect timeout started for it.
                loop {
                    let now = Instant::now();
                    let slice = end
                        .saturating_duration_since(now)
                        .min(connector.connect_timeout);
                    if let Ok(c) = p.get_timeout(slice.max(MIN_READ)) {
                        return Ok(Conn::Own(c));
                    }
                    if let Some(failure) = connector.refused_since(start) {
                        return Err(failure.to_backend_error(addr).unsent());
                    }
                    if Instant::now() >= end {
                        // The last attempt's failure, if the last attempt failed, says
                        // more than the timeout (a handshake that fails slowly).
                        return Err(match connector.last_failure() {
                            Some(failure) => failure.to_backend_error(addr).unsent(),
                            None => error::checkout_timeout(addr, waited),
                        });
                    }
                }
            }
        }
    }

    /// An idle connection from the pool if one is ready now, to start an operation on
    /// without waiting for a connection or opening one; `None` otherwise (the caller can
    /// then run the operation where waiting does not hold anybody up). Redlock starts
    /// its fan-out this way. Part of the hidden seam: outside semver.
    #[doc(hidden)]
    pub fn idle(&self) -> Option<Idle<'_>> {
        let conn = match &self.inner.pool {
            Pool::Own(p, _) => Conn::Own(p.try_get()?),
            Pool::Given(p) => Conn::Given(p.try_get()?),
        };
        Some(Idle {
            backend: self,
            conn,
        })
    }

    /// The latest a call that starts now ends: after the checkout timeout and one read
    /// timeout (a resend, a script load and a cut-off read all fit in it). `None` for a
    /// given pool, whose timeouts are its own.
    pub(crate) fn call_deadline(&self) -> Option<Instant> {
        match &self.inner.pool {
            Pool::Own(p, connector) => {
                Some(Instant::now() + p.connection_timeout() + connector.read_timeout)
            }
            Pool::Given(_) => None,
        }
    }

    /// The read timeout our own connections are set up with; `None` for a given pool,
    /// whose connections keep theirs.
    fn read_timeout(&self) -> Option<Duration> {
        match &self.inner.pool {
            Pool::Own(_, connector) => Some(connector.read_timeout),
            Pool::Given(_) => None,
        }
    }

    fn failure(&self, e: &RedisError) -> BackendError {
        error::to_backend_error(&self.inner.addr, e)
    }

    /// Writes `cmd` on `conn` (or a pooled connection); an idempotent command whose pooled
    /// connection turns out to be broken is written again on a fresh one.
    fn send(
        &self,
        cmd: &redis::Cmd,
        script: Option<&'static Script>,
        idempotent: bool,
        conn: Option<Conn>,
    ) -> Result<Sent, BackendError> {
        let given = conn.is_some();
        let mut sent = Sent {
            conn: match conn {
                Some(c) => c,
                None => self.checkout(None)?,
            },
            packed: cmd.get_packed_command(),
            script,
            idempotent,
            tries: 1,
            unsent: false,
        };
        match sent.conn.get().send_packed_command(&sent.packed) {
            Ok(()) => Ok(sent),
            Err(e) if e.is_connection_dropped() && idempotent && given => {
                sent.unsent = true;
                Ok(sent)
            }
            Err(e) if e.is_connection_dropped() && idempotent => {
                sent.resend(self, None).map_err(|e| self.failure(&e))?;
                Ok(sent)
            }
            Err(e) => Err(self.failure(&e)),
        }
    }

    /// Reads one reply on `conn`; with a deadline, for no longer than until then, give or
    /// take a tenth of the configured read timeout (or [`MIN_READ`] if it has passed: a
    /// read that times out is what tells `redis` to skip the reply when it comes).
    fn read(&self, conn: &mut redis::Connection, deadline: Option<Instant>) -> Read {
        let mut restore = None;
        if let (Some(deadline), Some(configured)) = (deadline, self.read_timeout()) {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_READ);
            // Within a tenth of the usual timeout, save the two system calls: reading the
            // next node right after the last one answered is the common case.
            let slack = (configured / 10).max(MIN_READ);
            if left + slack < configured && conn.set_read_timeout(Some(left)).is_ok() {
                restore = Some(configured);
            }
        }
        let result = conn.recv_response();
        if let Some(configured) = restore {
            let _ = conn.set_read_timeout(Some(configured));
        }
        match result {
            Ok(v) => Read::Reply(v),
            Err(e) if e.is_timeout() => Read::Late,
            Err(e) => Read::Failed(e),
        }
    }
}

impl Sent {
    /// Writes the command again on a fresh connection opened for it alone: the other idle
    /// connections in the pool may have broken the same way (a server restart), and a
    /// server that refuses connections fails it at once (the pool would keep trying until
    /// its checkout timeout).
    fn resend(
        &mut self,
        backend: &RedisBackend,
        deadline: Option<Instant>,
    ) -> redis::RedisResult<()> {
        self.tries += 1;
        self.conn = match &backend.inner.pool {
            Pool::Own(_, connector) => {
                let wait = deadline.map_or(connector.connect_timeout, |d| {
                    d.saturating_duration_since(Instant::now()).max(MIN_READ)
                });
                Conn::Single(Box::new(
                    connector.connect_within(wait).map_err(|f| f.error)?,
                ))
            }
            Pool::Given(_) => backend.checkout(deadline).map_err(|e| {
                RedisError::from((ErrorKind::Io, "no fresh connection", e.to_string()))
            })?,
        };
        self.conn.get().send_packed_command(&self.packed)
    }

    /// The reply to the command, after the recoveries. `Err(None)` means late.
    fn reply(
        &mut self,
        backend: &RedisBackend,
        deadline: Option<Instant>,
    ) -> Result<Value, Option<RedisError>> {
        let mut loaded = false;
        if std::mem::take(&mut self.unsent) {
            self.resend(backend, deadline).map_err(Some)?;
        }
        loop {
            match backend.read(self.conn.get(), deadline) {
                Read::Reply(v) => match v.extract_error() {
                    Err(e)
                        if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) && !loaded =>
                    {
                        let Some(script) = self.script else {
                            return Err(Some(e));
                        };
                        loaded = true;
                        let conn = self.conn.get();
                        script.load(conn).map_err(Some)?;
                        conn.send_packed_command(&self.packed).map_err(Some)?;
                    }
                    other => return other.map_err(Some),
                },
                Read::Failed(e)
                    if e.is_connection_dropped() && self.idempotent && self.tries < 2 =>
                {
                    self.resend(backend, deadline).map_err(Some)?;
                }
                Read::Failed(e) => return Err(Some(e)),
                Read::Late => return Err(None),
            }
        }
    }
}

/// An operation written to the server whose reply has not been read yet, from the
/// methods of [`Idle`]. Read it with
/// [`finish`](InFlight::finish); dropping it unread discards the reply (the connection
/// skips it) but not the operation, which the server runs anyway. Dropping it reads for
/// the reply once with the shortest timeout, which is what tells the connection to skip
/// it (a backend made by [`RedisBackend::from_pool`] waits with its pool's timeouts).
///
/// This is what lets one thread have an operation in flight on several servers at once.
#[must_use = "the reply is only read by `finish`"]
pub struct InFlight<T> {
    backend: RedisBackend,
    stage: Stage<T>,
    after: After,
    /// When [`wait`](InFlight::wait) gives up: the whole-call bound, counted from before
    /// the checkout (see the crate docs on timeouts).
    deadline: Option<Instant>,
}

// Kept inline: boxing the connection would add an allocation to every lock operation.
#[allow(clippy::large_enum_variant)]
enum Stage<T> {
    /// Decided without a reply: from memory, or the command could not be sent.
    Ready(Result<T, BackendError>),
    Sent(Sent),
    /// `finish` took it.
    Read,
}

/// What the reply means, and what the backend's memory learns from it.
enum After {
    Acquire {
        key: Vec<u8>,
        token: Token,
        ttl: Duration,
        attempt: Option<wake::Attempt>,
    },
    Release {
        key: Vec<u8>,
        token: Token,
    },
    Extend {
        key: Vec<u8>,
        token: Token,
        start: Instant,
    },
    Inspect,
    ForceRelease {
        key: Vec<u8>,
    },
    /// Nothing to learn: a ping, or an answer decided without a command.
    Nothing,
}

/// How an [`InFlight`] operation ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The server answered, or the operation failed.
    Answered(Result<T, BackendError>),
    /// The deadline passed before the reply came: the operation may still take effect.
    Late(Box<Late>),
}

impl<T> Outcome<T> {
    /// Hands `f` the answer as the memory of held keys learns from it: a late operation
    /// is a timeout.
    fn seen(&self, f: impl FnOnce(&Result<T, BackendError>)) {
        match self {
            Outcome::Answered(r) => f(r),
            Outcome::Late(l) => f(&Err(l.timeout())),
        }
    }

    /// The answer; a late operation is a [`BackendErrorKind::Timeout`] error.
    pub fn into_result(self) -> Result<T, BackendError> {
        match self {
            Outcome::Answered(r) => r,
            Outcome::Late(late) => Err(late.error),
        }
    }
}

/// An operation whose reply did not come by the deadline, with the connection it went
/// out on. The server may still run it (a slow or paused server runs what it has read);
/// [`release`](Late::release) undoes an acquisition on the same connection, which the
/// server runs after it. Dropping it returns the connection to the pool, which skips the
/// late reply.
pub struct Late {
    backend: RedisBackend,
    conn: Conn,
    error: BackendError,
}

impl std::fmt::Debug for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Late")
            .field("addr", &self.backend.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Late {
    /// The connection the late operation went out on.
    pub(crate) fn into_conn(self) -> Conn {
        self.conn
    }

    /// The timeout error that stands for the missing answer.
    pub fn error(&self) -> &BackendError {
        &self.error
    }

    fn timeout(&self) -> BackendError {
        timeout(&self.backend)
    }

    /// Releases `key` held by `token` on the connection the late operation went out on, so
    /// the server runs the release after it whatever it was; waits with the connection's
    /// own timeouts. As [`LockBackend::release`](lock_core::LockBackend::release).
    ///
    /// # Errors
    /// The [`BackendError`] met, as for a release.
    pub fn release(self: Box<Self>, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        self.start_release(key, token).wait()
    }

    /// [`release`](Late::release) in two halves: writes the release behind the late
    /// operation and returns without reading its reply (see [`InFlight`]).
    pub fn start_release(self: Box<Self>, key: &[u8], token: &Token) -> InFlight<bool> {
        let Late { backend, conn, .. } = *self;
        backend.start_release(Some(conn), key, token)
    }
}

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        let stage = std::mem::replace(&mut self.stage, Stage::Read);
        if let Stage::Read = stage {
            return;
        }
        // Dropped unread. `redis` only skips a reply it timed out waiting for; returned to
        // the pool without that, the connection would hand this reply to its next user.
        if let Stage::Sent(mut sent) = stage {
            let _ = self.backend.read(sent.conn.get(), Some(Instant::now()));
        }
        // The memory of held keys learns what a late answer teaches: nothing certain.
        let Some(wake) = &self.backend.inner.wake else {
            return;
        };
        match std::mem::replace(&mut self.after, After::Nothing) {
            After::Acquire {
                key,
                token,
                attempt: Some(attempt),
                ..
            } => wake.after_acquire(&key, &token, attempt, &Err(timeout(&self.backend))),
            After::Release { key, token } => wake.released(&key, Some(&token), None),
            After::ForceRelease { key } => wake.released(&key, None, None),
            After::Extend { key, token, start } => {
                wake.extended(&key, &token, start, &Err(timeout(&self.backend)))
            }
            _ => {}
        }
    }
}

impl<T> InFlight<T> {
    fn ready(backend: &RedisBackend, result: Result<T, BackendError>, after: After) -> Self {
        InFlight {
            backend: backend.clone(),
            stage: Stage::Ready(result),
            after,
            deadline: None,
        }
    }

    /// Reads the reply: `Ok` with it and how many times the command was sent,
    /// `Err(Answered(..))` if it failed, `Err(Late)` if it did not come by `deadline`.
    fn reply(&mut self, deadline: Option<Instant>) -> Result<(Value, u32), Outcome<T>> {
        let mut sent = match std::mem::replace(&mut self.stage, Stage::Read) {
            Stage::Ready(r) => return Err(Outcome::Answered(r)),
            Stage::Read => return Err(Outcome::Answered(Err(already_read()))),
            Stage::Sent(s) => s,
        };
        match sent.reply(&self.backend, deadline) {
            Ok(v) => Ok((v, sent.tries)),
            Err(Some(e)) => Err(Outcome::Answered(Err(self.backend.failure(&e)))),
            Err(None) => Err(Outcome::Late(Box::new(Late {
                error: timeout(&self.backend),
                backend: self.backend.clone(),
                conn: sent.conn,
            }))),
        }
    }

    /// Waits for the outcome until the whole-call deadline.
    pub(crate) fn wait_outcome(self) -> Outcome<T>
    where
        Self: Finish<T>,
    {
        let deadline = self.deadline;
        self.finish(deadline)
    }

    /// Waits for the answer until the whole-call deadline.
    pub(crate) fn wait(self) -> Result<T, BackendError>
    where
        Self: Finish<T>,
    {
        let deadline = self.deadline;
        self.finish(deadline).into_result()
    }
}

pub(crate) fn timeout(backend: &RedisBackend) -> BackendError {
    BackendError::new(
        BackendErrorKind::Timeout,
        format!("redis at {}: no answer in time", backend.inner.addr),
    )
}

fn already_read() -> BackendError {
    BackendError::new(BackendErrorKind::Other, "operation already read")
}

fn convert<T: redis::FromRedisValue>(backend: &RedisBackend, v: Value) -> Result<T, BackendError> {
    redis::from_redis_value(v).map_err(|e| backend.failure(&RedisError::from(e)))
}

/// Reading an [`InFlight`] operation's reply; implemented for each kind of operation.
pub trait Finish<T> {
    /// Reads the reply, waiting until `deadline` at most, give or take a tenth of the
    /// read timeout (`None`: the connection's own read timeout). A backend made by
    /// [`RedisBackend::from_pool`] keeps its pool's timeouts and ignores the deadline.
    fn finish(self, deadline: Option<Instant>) -> Outcome<T>;
}

impl Finish<Option<Acquired>> for InFlight<Option<Acquired>> {
    fn finish(mut self, deadline: Option<Instant>) -> Outcome<Option<Acquired>> {
        let outcome = match self.reply(deadline) {
            Ok((v, _)) => Outcome::Answered(convert::<Option<u64>>(&self.backend, v).map(|f| {
                f.map(|fencing_token| Acquired {
                    fencing_token,
                    validity: match &self.after {
                        After::Acquire { ttl, .. } => *ttl,
                        _ => Duration::ZERO,
                    },
                })
            })),
            Err(outcome) => outcome,
        };
        if let (
            After::Acquire {
                key,
                token,
                attempt: Some(attempt),
                ..
            },
            Some(wake),
        ) = (
            std::mem::replace(&mut self.after, After::Nothing),
            &self.backend.inner.wake,
        ) {
            outcome.seen(|seen| wake.after_acquire(&key, &token, attempt, seen));
        }
        outcome
    }
}

impl Finish<bool> for InFlight<bool> {
    fn finish(mut self, deadline: Option<Instant>) -> Outcome<bool> {
        let outcome = match self.reply(deadline) {
            // The first try's connection dropped after it may have deleted our key, so a
            // retry finding nothing cannot tell "released by us" from "expired".
            Ok((v, tries)) => Outcome::Answered(match convert::<i64>(&self.backend, v) {
                Ok(0) if tries > 1 && matches!(self.after, After::Release { .. }) => {
                    Err(BackendError::new(
                        BackendErrorKind::Io,
                        format!(
                            "redis at {}: the reply to a release was lost; the lock was \
                             released by it or had already expired",
                            self.backend.inner.addr
                        ),
                    ))
                }
                other => other.map(|deleted| deleted == 1),
            }),
            Err(outcome) => outcome,
        };
        if let Some(wake) = &self.backend.inner.wake {
            let freed = match &outcome {
                Outcome::Answered(r) => r.as_ref().ok().copied(),
                Outcome::Late(_) => None,
            };
            match &self.after {
                After::Release { key, token } => wake.released(key, Some(token), freed),
                After::ForceRelease { key } => wake.released(key, None, freed),
                _ => {}
            }
        }
        outcome
    }
}

impl Finish<Option<Duration>> for InFlight<Option<Duration>> {
    fn finish(mut self, deadline: Option<Instant>) -> Outcome<Option<Duration>> {
        let outcome = match self.reply(deadline) {
            Ok((v, _)) => Outcome::Answered(match &self.after {
                After::Inspect => convert::<i64>(&self.backend, v).map(|pttl| match pttl {
                    -1 => Some(Duration::MAX),
                    p if p >= 0 => Some(Duration::from_millis(p as u64)),
                    _ => None,
                }),
                _ => convert::<Option<u64>>(&self.backend, v)
                    .map(|ttl| ttl.map(Duration::from_millis)),
            }),
            Err(outcome) => outcome,
        };
        if let (After::Extend { key, token, start }, Some(wake)) =
            (&self.after, &self.backend.inner.wake)
        {
            outcome.seen(|seen| wake.extended(key, token, *start, seen));
        }
        outcome
    }
}

impl Finish<()> for InFlight<()> {
    fn finish(mut self, deadline: Option<Instant>) -> Outcome<()> {
        match self.reply(deadline) {
            Ok((v, _)) => Outcome::Answered(match convert::<String>(&self.backend, v) {
                Ok(pong) if pong == "PONG" => Ok(()),
                Ok(_) | Err(_) => Err(BackendError::new(
                    BackendErrorKind::Protocol,
                    format!(
                        "redis at {}: PING was not answered with PONG",
                        self.backend.inner.addr
                    ),
                )),
            }),
            Err(outcome) => outcome,
        }
    }
}

impl RedisBackend {
    fn start<T>(
        &self,
        cmd: &redis::Cmd,
        script: Option<&'static Script>,
        idempotent: bool,
        conn: Option<Conn>,
        after: After,
    ) -> InFlight<T> {
        let deadline = self.call_deadline();
        let stage = match self.send(cmd, script, idempotent, conn) {
            Ok(sent) => Stage::Sent(sent),
            Err(e) => Stage::Ready(Err(e)),
        };
        InFlight {
            backend: self.clone(),
            stage,
            after,
            deadline,
        }
    }

    pub(crate) fn start_acquire(
        &self,
        conn: Option<Conn>,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> InFlight<Option<Acquired>> {
        let attempt = match &self.inner.wake {
            Some(w) => match w.before_acquire(key, token) {
                Some(a) => Some(a),
                None => {
                    return InFlight::ready(self, Ok(None), After::Nothing);
                }
            },
            None => None,
        };
        let mut cmd = scripts::evalsha(&scripts::ACQUIRE, &[key, &self.fence_key(key)]);
        cmd.arg(token.as_bytes()).arg(millis(ttl));
        self.start(
            &cmd,
            Some(&scripts::ACQUIRE),
            true,
            conn,
            After::Acquire {
                key: key.to_vec(),
                token: token.clone(),
                ttl,
                attempt,
            },
        )
    }

    /// With wake-ups, the arguments that make a release script publish the release: the
    /// channel and this backend's origin id.
    fn announce(&self, cmd: &mut redis::Cmd) {
        if let Some(w) = &self.inner.wake {
            cmd.arg(w.channel.as_slice()).arg(w.origin.as_slice());
        }
    }

    pub(crate) fn start_release(
        &self,
        conn: Option<Conn>,
        key: &[u8],
        token: &Token,
    ) -> InFlight<bool> {
        let mut cmd = scripts::evalsha(&scripts::RELEASE, &[key]);
        cmd.arg(token.as_bytes());
        self.announce(&mut cmd);
        self.start(
            &cmd,
            Some(&scripts::RELEASE),
            true,
            conn,
            After::Release {
                key: key.to_vec(),
                token: token.clone(),
            },
        )
    }

    pub(crate) fn start_extend(
        &self,
        conn: Option<Conn>,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> InFlight<Option<Duration>> {
        let (ms, add, idempotent) = match how {
            Extend::By(d) => (millis(d), 1, false),
            Extend::To(d) => (millis(d), 0, true),
        };
        let start = Instant::now();
        let mut cmd = scripts::evalsha(&scripts::EXTEND, &[key]);
        cmd.arg(token.as_bytes()).arg(ms).arg(add);
        self.start(
            &cmd,
            Some(&scripts::EXTEND),
            idempotent,
            conn,
            After::Extend {
                key: key.to_vec(),
                token: token.clone(),
                start,
            },
        )
    }

    pub(crate) fn start_inspect(
        &self,
        conn: Option<Conn>,
        key: &[u8],
        token: Option<&Token>,
    ) -> InFlight<Option<Duration>> {
        match token {
            None => {
                let mut cmd = redis::cmd("PTTL");
                cmd.arg(key);
                self.start(&cmd, None, true, conn, After::Inspect)
            }
            Some(t) => {
                let mut cmd = scripts::evalsha(&scripts::INSPECT, &[key]);
                cmd.arg(t.as_bytes());
                self.start(&cmd, Some(&scripts::INSPECT), true, conn, After::Inspect)
            }
        }
    }

    pub(crate) fn start_force_release(&self, conn: Option<Conn>, key: &[u8]) -> InFlight<bool> {
        let mut cmd = scripts::evalsha(&scripts::FORCE_RELEASE, &[key]);
        self.announce(&mut cmd);
        self.start(
            &cmd,
            Some(&scripts::FORCE_RELEASE),
            true,
            conn,
            After::ForceRelease { key: key.to_vec() },
        )
    }

    pub(crate) fn start_ping(&self, conn: Option<Conn>) -> InFlight<()> {
        self.start(&redis::cmd("PING"), None, true, conn, After::Nothing)
    }
}

/// An idle pooled connection, from [`RedisBackend::idle`], to start one operation on:
/// each method writes the command and returns without reading the reply (see
/// [`InFlight`]); if the connection turns out to be broken, `finish` sends the command
/// again on a fresh one, within its deadline. They are the [`LockBackend`](lock_core::LockBackend) operations of the
/// backend, in two halves, with the same wake-up bookkeeping.
pub struct Idle<'a> {
    backend: &'a RedisBackend,
    conn: Conn,
}

impl std::fmt::Debug for Idle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("addr", &self.backend.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Idle<'_> {
    /// Starts [`try_acquire`](lock_core::LockBackend::try_acquire). A key the backend
    /// knows to be held (see the crate docs on wake-ups) is answered at once, without a
    /// command, and the connection goes back to the pool unused.
    pub fn acquire(self, key: &[u8], token: &Token, ttl: Duration) -> InFlight<Option<Acquired>> {
        self.backend.start_acquire(Some(self.conn), key, token, ttl)
    }

    /// Starts [`release`](lock_core::LockBackend::release).
    pub fn release(self, key: &[u8], token: &Token) -> InFlight<bool> {
        self.backend.start_release(Some(self.conn), key, token)
    }

    /// Starts [`extend`](lock_core::LockBackend::extend).
    pub fn extend(self, key: &[u8], token: &Token, how: Extend) -> InFlight<Option<Duration>> {
        self.backend.start_extend(Some(self.conn), key, token, how)
    }

    /// Starts [`inspect`](lock_core::LockBackend::inspect).
    pub fn inspect(self, key: &[u8], token: Option<&Token>) -> InFlight<Option<Duration>> {
        self.backend.start_inspect(Some(self.conn), key, token)
    }

    /// Starts [`force_release`](lock_core::LockBackend::force_release).
    pub fn force_release(self, key: &[u8]) -> InFlight<bool> {
        self.backend.start_force_release(Some(self.conn), key)
    }

    /// Starts a `PING`.
    pub fn ping(self) -> InFlight<()> {
        self.backend.start_ping(Some(self.conn))
    }
}
