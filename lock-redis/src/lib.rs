//! A [`LockBackend`] on one Redis server (or a Redis-protocol server such as Valkey),
//! through an `r2d2` pool of `redis` connections.
//!
//! ```no_run
//! use lock_core::LockManager;
//! use lock_redis::RedisBackend;
//!
//! # fn main() -> Result<(), lock_core::LockError> {
//! let mgr = LockManager::new(RedisBackend::connect("redis://127.0.0.1/")?);
//! let _g = mgr.lock("job:1")?;   // bounded wait, released on drop
//! # Ok(()) }
//! ```
//!
//! # On the wire
//! Each operation is one round trip on a pooled connection: acquire is `SET key token NX
//! PX ttl` and the fencing-counter `INCR` in one Lua script; release and extend are
//! compare-and-act scripts on the token; all scripts are loaded once per server and run by
//! SHA (`EVALSHA`, with a `SCRIPT LOAD` only after `NOSCRIPT`). Lock names only ever travel
//! as script keys, never spliced into Lua.
//!
//! Every operation comes in two halves (write the command; read the reply, waiting no
//! longer than a deadline), so that Redlock can have one operation in flight on each of
//! its nodes at once; that seam is internal to the two crates (hidden, outside semver).
//! The [`LockBackend`] methods run both halves back to back.
//!
//! Keys: the lock itself at `<prefix><name>` (the manager's prefix, `lock:` by default)
//! and its fencing counter at `<fencing prefix><prefix><name>` (`fence:lock:<name>` by
//! default). Counters are kept after release so fencing tokens only grow; they cost one
//! small integer key per name ever locked.
//!
//! # Wake-ups: fast hand-off without polling harder
//! A waiter does not have to poll its way to a released lock. Three mechanisms, all on by
//! default ([`RedisBackendBuilder::wake_ups`]):
//!
//! - **Local hand-off.** Threads of one process that wait through the same backend (or
//!   its clones) queue per key; a release through this backend hands the key to the first
//!   of them at once, and reserves it for that thread for a few milliseconds so the
//!   releasing thread cannot barge back in ahead of it.
//! - **Release messages.** The release script (and `force_release`) also `PUBLISH`es on
//!   the wake channel ([`DEFAULT_WAKE_CHANNEL`], `lock:released`, unless configured) a
//!   message made of a 16-byte id of the releasing backend followed by the full key. The
//!   first wait starts one subscriber thread per backend (one extra connection, outside
//!   the pool) that wakes the local waiters of the released key. It reconnects with
//!   backoff if the server goes away, and disconnects after 30 s without waiters or when
//!   the backend is dropped. A `from_pool` backend publishes but does not subscribe.
//! - **A short memory of held keys.** A key this backend took, or saw held by somebody
//!   else while subscribed, is answered as contended from memory for at most
//!   [`contention_cache`](RedisBackendBuilder::contention_cache) (50 ms by default), so
//!   waiters that wake up to poll do not send a command each time. A release is always
//!   seen (locally, or as a message) and clears the memory at once.
//!
//! Polling stays as the fallback: a lost message (subscriber reconnecting, a releaser that
//! cannot publish) costs at most the memory's lifetime plus one retry interval of the
//! manager, and a lock whose holder vanished is still found free by polling after its TTL.
//!
//! Every subscribed process receives every release on the channel; give unrelated
//! applications on one server their own channel ([`RedisBackendBuilder::wake_channel`]).
//!
//! **ACL.** Redis checks the commands a script calls too. A user restricted to what this
//! backend needs: `ACL SETUSER locker on >pw ~lock:* ~fence:* &lock:released +evalsha
//! +script|load +set +get +del +incr +pexpire +pttl +publish +subscribe` (keys and
//! channel as configured), plus `+select` when the URL names a database other than 0 (the
//! connection setup sends `SELECT`; without it, `connect` and every call fail at once with
//! kind `Permission`, naming `+select`), and `+ping` only for [`RedisBackend::ping`]. The
//! health check runs a script, which a read-only replica refuses. Wake-ups are what need `+publish`, `+subscribe` and the channel
//! (`&lock:released`); without them the lock still works: the release script ignores a
//! refused `PUBLISH` (`redis.pcall`), the subscriber logs one warning and retries every
//! 30 s, and waiting falls back to polling.
//!
//! # Timeouts
//! Nothing blocks without a bound: a connection attempt gives up after the connect timeout
//! (its TLS handshake and setup commands included), a command after the read/write
//! timeout, and waiting for a free pooled connection after the checkout timeout. A dead or
//! hung server is an error within those, never a hang.
//!
//! An acquisition whose reply does not come in time may still run on the server (a
//! stalled server runs what it has read). Its connection is kept for the release that
//! undoes it (the manager sends one after a failed acquire), which goes out behind it on
//! the same connection, so the server can never run the release first and leave the key
//! behind for a whole TTL.
//!
//! # Credentials
//! `redis://user:password@host:port/db` works (`AUTH user password` on connect). The
//! password never appears in `Debug`, in errors or in logs.
//!
//! # TLS (cargo feature `tls`, off by default)
//! With the `tls` feature, `rediss://host:port/db` connects over TLS, through the `redis`
//! crate's `rustls` support with the *ring* crypto provider (installed as the process
//! default on the first TLS build, unless the application installed a provider first,
//! which is then used). Without it, a `rediss://` URL is a configuration error that names
//! the feature, and neither rustls nor ring is built. The one configuration value is
//! `TlsConfig` (trusted CAs, a client certificate for mutual TLS, and the dangerous
//! opt-out of certificate checks), given to `RedisBackendBuilder::tls` or to the Redlock
//! builder; the server's certificate must chain to a trusted CA (the system's trust
//! store, or the given CAs) and name the URL's host.
//!
//! `build` checks the PEM it is given (and that the key matches its certificate) before
//! any I/O. A handshake that fails is an error of kind
//! [`Tls`](lock_core::BackendErrorKind::Tls) that names the cause: an unknown CA, a
//! certificate for another host name, a client certificate missing or refused, a server
//! that does not speak TLS. A server that does not answer the handshake at all is a
//! [`Timeout`](lock_core::BackendErrorKind::Timeout) within the connect timeout.
//! Certificate checks are turned off only by `TlsConfig::danger_accept_invalid_certs(true)`,
//! never by a URL alone: the `#insecure` fragment that the `redis` crate understands is
//! refused without that opt-in.
//!
//! A new TLS connection costs a few milliseconds (the `redis` crate also loads the system's
//! trust store for each one, even when a root CA is given); the pool keeps connections
//! open, so that is paid once per pooled connection, not per lock.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod lates;
mod scripts;
mod subscriber;
mod tls;
mod wake;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::{Acquired, BackendError, Extend, LockBackend, LockError, Token};
use parking_lot::Mutex;
use redis::{ConnectionLike, IntoConnectionInfo, RedisResult};
use scheduled_thread_pool::{OnPoolDropBehavior, ScheduledThreadPool};

#[cfg(feature = "tls")]
pub use tls::TlsConfig;
/// The split-I/O seam that lock-redlock drives: an operation written on an idle pooled
/// connection ([`RedisBackend::idle`]) and its reply read later, until a deadline.
/// **Not part of the public API**: hidden from the docs and outside semver; it may change
/// in any release. Use the [`LockBackend`] methods.
#[doc(hidden)]
pub mod seam {
    pub use crate::wire::{Finish, Idle, InFlight, Late, Outcome};
}

use wire::Outcome;

/// Default number of pooled connections: 16.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// Default TCP connect timeout: 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default read and write timeouts of a command: 1 s each.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Default wait for a free pooled connection: 2 s.
pub const DEFAULT_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default prefix of fencing-counter keys: `fence:`.
pub const DEFAULT_FENCING_PREFIX: &str = "fence:";
/// Default channel on which releases are published to wake waiters: `lock:released`.
pub const DEFAULT_WAKE_CHANNEL: &str = "lock:released";
/// Default time a key seen held is answered as contended from memory: 50 ms.
pub const DEFAULT_CONTENTION_CACHE: Duration = Duration::from_millis(50);

/// A lock store on one Redis server. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    fencing_prefix: Vec<u8>,
    /// `host:port/db`, for messages: never the password.
    addr: String,
    /// Wake-ups and the memory of held keys; `None` when turned off.
    wake: Option<Arc<wake::Wake>>,
    /// Acquisitions that timed out, with their connections, for the release behind them.
    lates: lates::LateAcquires,
}

enum Pool {
    /// Ours, with the connector kept to open a dedicated pool for renewals.
    Own(r2d2::Pool<Connector>, Box<Connector>),
    Given(r2d2::Pool<redis::Client>),
}

fn own_pool(
    connector: &Connector,
    size: u32,
    checkout_timeout: Duration,
) -> Result<Pool, BackendError> {
    let pool = r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        // A PING per checkout would double the round trips; broken connections are
        // noticed on use instead (see `RedisBackend::run`).
        .test_on_check_out(false)
        .connection_timeout(checkout_timeout)
        // No reaper: its job, scheduled 30 s ahead, kept the pool's threads alive that long
        // after the pool was dropped. Connections stay open until the backend is dropped.
        .idle_timeout(None)
        .max_lifetime(None)
        .thread_pool(helper_thread()?)
        .build_unchecked(connector.clone());
    Ok(Pool::Own(pool, Box::new(connector.clone())))
}

/// The helper thread of one pool, on which r2d2 opens its connections. One, not r2d2's
/// three: connections to one server need no more. Not shared between pools: an attempt on
/// a silent server holds its thread for up to the connect timeout, which must not stall
/// the pools of other servers (Redlock's healthy nodes). It ends when the pool is dropped
/// (no job is left scheduled: the pool has no reaper), within one connect timeout if it
/// is connecting then. A thread that cannot be started is an error (the thread pool
/// itself would panic).
fn helper_thread() -> Result<Arc<ScheduledThreadPool>, BackendError> {
    std::panic::catch_unwind(|| {
        ScheduledThreadPool::builder()
            .num_threads(1)
            .thread_name_pattern("lock-redis-pool")
            .on_drop_behavior(OnPoolDropBehavior::DiscardPendingScheduled)
            .build()
    })
    .map(Arc::new)
    .map_err(|_| {
        BackendError::new(
            lock_core::BackendErrorKind::Other,
            "cannot start the connection pool's helper thread",
        )
    })
}

/// Opens connections with a connect timeout and sets read/write timeouts on them (the
/// `redis` crate's own r2d2 manager connects without a timeout). The last failure to
/// connect is kept, classified where the whole `redis` error is still at hand (r2d2 keeps
/// only its text), so a checkout can report it at once.
#[derive(Clone)]
pub(crate) struct Connector {
    client: redis::Client,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    write_timeout: Duration,
    last_failure: Arc<Mutex<Option<(Instant, error::ConnectFailure)>>>,
}

impl Connector {
    /// A new connection, outside the pool, giving up after `timeout` (at most the
    /// connect timeout).
    ///
    /// A `PING` within the same time ends the setup: it completes a TLS handshake (which
    /// `rustls` otherwise leaves to the first command, outside the connect timeout) and
    /// tells a server that hangs up at once (plaintext to a TLS port) from one that
    /// answers.
    pub(crate) fn connect_within(
        &self,
        timeout: Duration,
    ) -> Result<redis::Connection, error::ConnectFailure> {
        self.try_connect(timeout)
            .map_err(|error| error::ConnectFailure {
                hint: tls::connect_failure_hint(&self.client, &error),
                error,
            })
    }

    fn try_connect(&self, timeout: Duration) -> RedisResult<redis::Connection> {
        let timeout = timeout.min(self.connect_timeout);
        let start = Instant::now();
        let mut conn = self.client.get_connection_with_timeout(timeout)?;
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        conn.set_read_timeout(Some(left))?;
        conn.set_write_timeout(Some(left))?;
        // Any reply will do (a server that refuses PING still answered); only a failure to
        // get one fails the setup.
        conn.req_command(&redis::cmd("PING"))?;
        conn.set_read_timeout(Some(self.read_timeout))?;
        conn.set_write_timeout(Some(self.write_timeout))?;
        Ok(conn)
    }

    /// The failure of the last connection attempt, if it failed.
    pub(crate) fn last_failure(&self) -> Option<error::ConnectFailure> {
        self.last_failure.lock().as_ref().map(|(_, f)| f.clone())
    }

    /// The last failure to connect, if it happened at or after `since` and was not a
    /// timeout: a definite answer (refused, wrong password, missing right, bad
    /// certificate) that trying again within the checkout timeout would only repeat. A
    /// connection attempt that timed out may succeed on the next try, which the pool
    /// makes while the checkout waits.
    pub(crate) fn refused_since(&self, since: Instant) -> Option<error::ConnectFailure> {
        match &*self.last_failure.lock() {
            Some((at, failure)) if *at >= since && !failure.error.is_timeout() => {
                Some(failure.clone())
            }
            _ => None,
        }
    }
}

impl r2d2::ManageConnection for Connector {
    type Connection = redis::Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> RedisResult<redis::Connection> {
        self.connect_within(self.connect_timeout)
            .map_err(|failure| {
                let error = failure.error.clone();
                *self.last_failure.lock() = Some((Instant::now(), failure));
                error
            })
    }

    fn is_valid(&self, conn: &mut redis::Connection) -> RedisResult<()> {
        redis::cmd("PING").query::<()>(conn)
    }

    fn has_broken(&self, conn: &mut redis::Connection) -> bool {
        !conn.is_open()
    }
}

impl RedisBackend {
    /// A backend on the server at `url` (`redis://[user:password@]host[:port][/db]`, or
    /// `rediss://…` for TLS: see the crate docs) with the defaults of
    /// [`RedisBackendBuilder`], after checking that the server answers: as
    /// [`RedisBackendBuilder::connect`]. For a program that may start before its Redis,
    /// [`connect_lazy`](RedisBackend::connect_lazy) makes no connection.
    ///
    /// # Errors
    /// [`LockError::Setup`] for an invalid URL, [`LockError::Unavailable`] for a server
    /// that does not answer or refuses us: see [`RedisBackendBuilder::connect`].
    pub fn connect(url: &str) -> Result<Self, LockError> {
        Self::builder(url).connect()
    }

    /// As [`connect`](RedisBackend::connect), but makes no connection: the first
    /// operation connects, and reports an unreachable server or bad credentials (call
    /// [`health_check`](LockBackend::health_check) to check later). As
    /// [`RedisBackendBuilder::build`].
    ///
    /// # Errors
    /// [`LockError::Setup`] if the URL is not a valid Redis URL.
    pub fn connect_lazy(url: &str) -> Result<Self, LockError> {
        Self::builder(url).build()
    }

    /// A builder for the server at `url`.
    pub fn builder(url: &str) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_IO_TIMEOUT,
            write_timeout: DEFAULT_IO_TIMEOUT,
            checkout_timeout: DEFAULT_CHECKOUT_TIMEOUT,
            fencing_prefix: DEFAULT_FENCING_PREFIX.as_bytes().to_vec(),
            wake_ups: true,
            wake_channel: DEFAULT_WAKE_CHANNEL.as_bytes().to_vec(),
            contention_cache: DEFAULT_CONTENTION_CACHE,
            #[cfg(feature = "tls")]
            tls: TlsConfig::default(),
        }
    }

    /// A backend on an existing pool built with the `redis` crate's r2d2 support. Its
    /// timeouts are the pool's own: configure them on the pool (and set read/write
    /// timeouts on its connections) or a hung server can block a call. The fencing prefix,
    /// wake channel and contention cache are the defaults. Releases are published and
    /// waiters of this process are handed the lock directly, but there is no subscriber
    /// (the pool's connection settings are not ours to copy), so releases by other
    /// processes are found by polling.
    pub fn from_pool(pool: r2d2::Pool<redis::Client>) -> Self {
        let addr = "(given pool)".to_owned();
        RedisBackend {
            inner: Arc::new(Inner {
                pool: Pool::Given(pool),
                fencing_prefix: DEFAULT_FENCING_PREFIX.as_bytes().to_vec(),
                wake: Some(Arc::new(wake::Wake::new(
                    DEFAULT_WAKE_CHANNEL.as_bytes().to_vec(),
                    DEFAULT_CONTENTION_CACHE,
                    None,
                    addr.clone(),
                ))),
                addr,
                lates: lates::LateAcquires::default(),
            }),
        }
    }

    /// A handle on the same server (sharing the wake-ups and the memory of held keys)
    /// with a pool of one connection of its own, so its calls never queue behind other
    /// callers for a connection: what [`LockBackend::dedicated`] gives the manager's
    /// renewal thread. `None` for a backend made by [`from_pool`](RedisBackend::from_pool).
    pub fn dedicated_pool(&self) -> Option<RedisBackend> {
        let Pool::Own(pool, connector) = &self.inner.pool else {
            return None;
        };
        Some(RedisBackend {
            inner: Arc::new(Inner {
                pool: own_pool(connector, 1, pool.connection_timeout()).ok()?,
                fencing_prefix: self.inner.fencing_prefix.clone(),
                addr: self.inner.addr.clone(),
                wake: self.inner.wake.clone(),
                lates: lates::LateAcquires::default(),
            }),
        })
    }

    /// The server's address as `host:port/db`, without credentials.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Checks that the server answers (`PING` on a pooled connection).
    ///
    /// # Errors
    /// The [`BackendError`] met: unreachable, timed out, authentication failed, …
    pub fn ping(&self) -> Result<(), BackendError> {
        self.start_ping(None).wait()
    }

    /// Sends [`scripts::WRITABLE`] on a pooled connection (checked out until `deadline`
    /// at most): an answer means a server that takes writes.
    fn check_writable(&self, deadline: Option<Instant>) -> Result<(), BackendError> {
        let mut conn = self.checkout(deadline)?;
        match scripts::WRITABLE.invoke::<String>(conn.get()) {
            Ok(reply) if reply == "writable" => Ok(()),
            Ok(_) => Err(BackendError::new(
                lock_core::BackendErrorKind::Protocol,
                format!(
                    "redis at {}: the health check script got an answer it never gives",
                    self.inner.addr
                ),
            )),
            // Older than Redis 7: no flags line, no check of the role here.
            Err(e) if e.to_string().contains("compiling script") => Ok(()),
            Err(e) => Err(error::to_backend_error(&self.inner.addr, &e)),
        }
    }

    fn fence_key(&self, key: &[u8]) -> Vec<u8> {
        [self.inner.fencing_prefix.as_slice(), key].concat()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.inner.addr)
            .field(
                "fencing_prefix",
                &String::from_utf8_lossy(&self.inner.fencing_prefix),
            )
            .field(
                "wake_channel",
                &self
                    .inner
                    .wake
                    .as_ref()
                    .map(|w| String::from_utf8_lossy(&w.channel)),
            )
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl LockBackend for RedisBackend {
    fn try_acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Option<Acquired>, BackendError> {
        match self.start_acquire(None, key, token, ttl).wait_outcome() {
            Outcome::Answered(result) => result,
            // The server may still run it: its undoing release must go out behind it.
            Outcome::Late(late) => {
                let error = wire::timeout(self);
                self.inner.lates.keep(key, token, late.into_conn(), ttl);
                Err(error)
            }
        }
    }

    /// Releases on the connection of a late acquisition of `key` by `token`, if there is
    /// one (see the crate docs on timeouts), so the server runs the release after it.
    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        let conn = self.inner.lates.take(key, token);
        self.start_release(conn, key, token).wait()
    }

    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError> {
        self.start_extend(None, key, token, how).wait()
    }

    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        self.start_inspect(None, key, token).wait()
    }

    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        self.start_force_release(None, key).wait()
    }

    /// Passes if the server answers and takes writes: a read-only replica fails it, with
    /// an error of kind [`Config`](lock_core::BackendErrorKind::Config) that says so.
    fn health_check(&self) -> Result<(), BackendError> {
        self.check_writable(None)
    }

    fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
        self.dedicated_pool()
            .map(|b| Box::new(b) as Box<dyn LockBackend>)
    }

    /// Blocks until `key` is released (by this process, or by anybody while the wake-up
    /// subscriber is connected) or `timeout` passes. See the crate docs on wake-ups.
    fn wait_for_release(&self, key: &[u8], timeout: Duration) {
        match &self.inner.wake {
            Some(w) => w.wait(key, timeout),
            None => std::thread::sleep(timeout),
        }
    }
}

/// Configures a [`RedisBackend`]. Every setter says its default.
pub struct RedisBackendBuilder {
    url: String,
    pool_size: u32,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    checkout_timeout: Duration,
    fencing_prefix: Vec<u8>,
    wake_ups: bool,
    wake_channel: Vec<u8>,
    contention_cache: Duration,
    #[cfg(feature = "tls")]
    tls: TlsConfig,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisBackendBuilder");
        d.field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("wake_ups", &self.wake_ups)
            .field("wake_channel", &String::from_utf8_lossy(&self.wake_channel))
            .field("contention_cache", &self.contention_cache)
            .field("tls_url", &tls::is_tls_url(&self.url));
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    /// The most connections the pool opens. Defaults to 16.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// How long opening a TCP connection (and the handshake) may take. Defaults to 1 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a command waits for the server's reply. Defaults to 1 s.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// How long writing a command to the socket may block. Defaults to 1 s.
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// How long an operation waits for a free pooled connection (including opening a new
    /// one). Defaults to 2 s.
    pub fn checkout_timeout(mut self, d: Duration) -> Self {
        self.checkout_timeout = d;
        self
    }

    /// The prefix of fencing-counter keys, put before the lock's full key. Defaults to
    /// `fence:`. The manager's key prefix must not start with it.
    pub fn fencing_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.fencing_prefix = prefix.as_ref().to_vec();
        self
    }

    /// Whether waiters are woken by releases (see the crate docs on wake-ups): releases
    /// publish on the wake channel, the first wait starts a subscriber connection, and a
    /// key seen held is answered as contended from memory for a short while. Defaults to
    /// `true`; `false` makes waiting plain polling at the manager's retry interval.
    pub fn wake_ups(mut self, on: bool) -> Self {
        self.wake_ups = on;
        self
    }

    /// The channel releases are published on and the subscriber listens to. Defaults to
    /// `lock:released`; every backend that shares locks must use the same channel to wake
    /// each other, and unrelated applications on one server can use their own.
    pub fn wake_channel(mut self, channel: impl AsRef<[u8]>) -> Self {
        self.wake_channel = channel.as_ref().to_vec();
        self
    }

    /// How long a key this backend took, or saw held by somebody else while its
    /// subscriber was connected, is answered as contended without asking the server. This
    /// is what keeps waiters from sending a command every time they wake up to poll; a
    /// release seen here or heard from the channel clears it at once, so it only delays
    /// the discovery of releases that are never announced (an expired holder, a releaser
    /// that cannot publish). Defaults to 50 ms; `Duration::ZERO` turns it off.
    pub fn contention_cache(mut self, d: Duration) -> Self {
        self.contention_cache = d;
        self
    }

    /// The TLS configuration of `rediss://` connections (see [`TlsConfig`]); replaces any
    /// set before. Defaults to [`TlsConfig::new`]. Only with the `tls` feature.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: TlsConfig) -> Self {
        self.tls = config;
        self
    }

    /// Shorthand for [`TlsConfig::root_ca`] on this builder's TLS configuration.
    #[cfg(feature = "tls")]
    pub fn tls_root_ca(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls = self.tls.root_ca(pem);
        self
    }

    /// Shorthand for [`TlsConfig::client_cert`] on this builder's TLS configuration.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls = self.tls.client_cert(cert_pem, key_pem);
        self
    }

    /// **Dangerous.** Shorthand for [`TlsConfig::danger_accept_invalid_certs`] on this
    /// builder's TLS configuration: read its warning.
    #[cfg(feature = "tls")]
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.tls = self.tls.danger_accept_invalid_certs(accept);
        self
    }

    /// Builds the backend (as [`build`](RedisBackendBuilder::build), which is the lazy
    /// alternative for a program that may start before its Redis), then checks that the
    /// server can be used: one pooled connection opened (its setup: TCP, TLS handshake,
    /// `AUTH`, `SELECT`, one `PING`) within the connect timeout, and one command on it
    /// that a read-only replica refuses, answered within the read timeout. An unreachable
    /// server is therefore an error within the connect timeout, and `connect` returns
    /// within `connect timeout + read timeout` in every case. The connection stays in the
    /// pool.
    ///
    /// # Errors
    /// [`LockError::Setup`] as [`build`](RedisBackendBuilder::build); otherwise the
    /// [`BackendError`] met, converted as `From<BackendError>` does: a server that cannot
    /// be used as configured (`Tls`, or `Config` for a read-only replica) is
    /// [`LockError::Setup`], and one that does not answer or refuses us
    /// ([`Io`](lock_core::BackendErrorKind::Io) when refused, `Timeout`, `Auth`,
    /// `Permission` for an ACL user without a right it needs, such as `+select` for a
    /// database other than 0) is [`LockError::Unavailable`].
    pub fn connect(self) -> Result<RedisBackend, LockError> {
        let within = self.connect_timeout;
        let backend = self.build()?;
        backend.check_writable(Some(Instant::now() + within))?;
        Ok(backend)
    }

    /// Validates the options and builds the backend. Makes no connection: the first
    /// operation connects (see [`connect`](RedisBackendBuilder::connect) to check at once).
    ///
    /// # Errors
    /// [`LockError::Setup`] for an invalid URL, a zero pool size or timeout, an empty
    /// fencing prefix, an empty wake channel, a `rediss://` URL without the `tls` feature,
    /// or TLS options that are unreadable or do not fit the URL (see `TlsConfig`).
    pub fn build(self) -> Result<RedisBackend, LockError> {
        let config = |msg: &str| {
            LockError::from(BackendError::new(
                lock_core::BackendErrorKind::Config,
                msg.to_owned(),
            ))
        };
        #[cfg(not(feature = "tls"))]
        if tls::is_tls_url(&self.url) {
            return Err(LockError::from(tls::no_tls_feature()));
        }
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| LockError::from(error::to_backend_error("(url)", &e)))?;
        if self.pool_size == 0 {
            return Err(config("pool size must be at least 1"));
        }
        for d in [
            self.connect_timeout,
            self.read_timeout,
            self.write_timeout,
            self.checkout_timeout,
        ] {
            if d.is_zero() {
                return Err(config("timeouts must be greater than zero"));
            }
        }
        if self.fencing_prefix.is_empty() {
            return Err(config("fencing prefix must not be empty"));
        }
        if self.wake_channel.is_empty() {
            return Err(config("wake channel must not be empty"));
        }
        let addr = format!("{}/{}", info.addr(), info.redis_settings().db());
        // No `CLIENT SETINFO` on connect (two replies the setup would wait for, each with
        // the whole time left): the connector ends the setup with one `PING` instead.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        #[cfg(feature = "tls")]
        let client = tls::client(info, &self.tls, &addr)?;
        #[cfg(not(feature = "tls"))]
        let client = redis::Client::open(info).map_err(|e| error::to_backend_error(&addr, &e))?;
        let connector = Connector {
            client,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            last_failure: Arc::default(),
        };
        let wake = self.wake_ups.then(|| {
            Arc::new(wake::Wake::new(
                self.wake_channel,
                self.contention_cache,
                Some(connector.clone()),
                addr.clone(),
            ))
        });
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                pool: own_pool(&connector, self.pool_size, self.checkout_timeout)?,
                fencing_prefix: self.fencing_prefix,
                addr,
                wake,
                lates: lates::LateAcquires::default(),
            }),
        })
    }
}
