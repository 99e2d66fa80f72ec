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
//! Keys: the lock itself at `<prefix><name>` (the manager's prefix, `lock:` by default)
//! and its fencing counter at `<fencing prefix><prefix><name>` (`fence:lock:<name>` by
//! default). Counters are kept after release so fencing tokens only grow; they cost one
//! small integer key per name ever locked.
//!
//! # Timeouts
//! Nothing blocks without a bound: a connection attempt gives up after the connect timeout,
//! a command after the read/write timeout, and waiting for a free pooled connection after
//! the checkout timeout. A dead or hung server is an error within those, never a hang.
//!
//! # Credentials
//! `redis://user:password@host:port/db` works (`AUTH user password` on connect). The
//! password never appears in `Debug`, in errors or in logs.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{Acquired, BackendError, Extend, LockBackend, LockError, Token};
use redis::{ConnectionLike, IntoConnectionInfo, RedisResult};

pub use error::to_backend_error;

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
}

enum Pool {
    /// Ours, with the connector kept to open a dedicated pool for renewals.
    Own(r2d2::Pool<Connector>, Box<Connector>),
    Given(r2d2::Pool<redis::Client>),
}

fn own_pool(connector: &Connector, size: u32, checkout_timeout: Duration) -> Pool {
    let pool = r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        // A PING per checkout would double the round trips; broken connections are
        // noticed on use instead (see `RedisBackend::run`).
        .test_on_check_out(false)
        .connection_timeout(checkout_timeout)
        .build_unchecked(connector.clone());
    Pool::Own(pool, Box::new(connector.clone()))
}

/// Opens connections with a connect timeout and sets read/write timeouts on them (the
/// `redis` crate's own r2d2 manager connects without a timeout).
#[derive(Clone)]
struct Connector {
    client: redis::Client,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl r2d2::ManageConnection for Connector {
    type Connection = redis::Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> RedisResult<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.read_timeout))?;
        conn.set_write_timeout(Some(self.write_timeout))?;
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut redis::Connection) -> RedisResult<()> {
        redis::cmd("PING").query::<()>(conn)
    }

    fn has_broken(&self, conn: &mut redis::Connection) -> bool {
        !conn.is_open()
    }
}

impl RedisBackend {
    /// A backend on the server at `url` (`redis://[user:password@]host[:port][/db]`) with
    /// the defaults of [`RedisBackendBuilder`]. No connection is made yet: the first lock
    /// operation connects (and reports an unreachable server or bad credentials); call
    /// [`ping`](RedisBackend::ping) to check early.
    ///
    /// # Errors
    /// [`LockError::Setup`] if the URL is not a valid Redis URL.
    pub fn connect(url: &str) -> Result<Self, LockError> {
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
        }
    }

    /// A backend on an existing pool built with the `redis` crate's r2d2 support. Its
    /// timeouts are the pool's own: configure them on the pool (and set read/write
    /// timeouts on its connections) or a hung server can block a call. The fencing prefix
    /// is the default.
    pub fn from_pool(pool: r2d2::Pool<redis::Client>) -> Self {
        RedisBackend {
            inner: Arc::new(Inner {
                pool: Pool::Given(pool),
                fencing_prefix: DEFAULT_FENCING_PREFIX.as_bytes().to_vec(),
                addr: "(given pool)".to_owned(),
            }),
        }
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
        self.run(true, |c| redis::cmd("PING").query::<()>(c))
    }

    /// Runs `f` on a pooled connection. A connection that broke while idle in the pool
    /// (the server restarted, say) fails on first use; `retry` (for idempotent operations)
    /// runs `f` once more on a fresh connection in that case.
    fn run<T>(
        &self,
        retry: bool,
        f: impl Fn(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Result<T, BackendError> {
        let attempts = if retry { 2 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let result = match &self.inner.pool {
                Pool::Own(p, _) => p
                    .get()
                    .map_err(|e| error::pool_error(&self.inner.addr, &e))
                    .and_then(|mut c| f(&mut *c).map_err(|e| self.err(&e))),
                Pool::Given(p) => p
                    .get()
                    .map_err(|e| error::pool_error(&self.inner.addr, &e))
                    .and_then(|mut c| f(&mut *c).map_err(|e| self.err(&e))),
            };
            match result {
                Err(e) if e.dropped => last = Some(e.error),
                other => return other.map_err(|e| e.error),
            }
        }
        Err(last.unwrap_or_else(|| {
            BackendError::new(lock_core::BackendErrorKind::Io, "connection dropped")
        }))
    }

    fn err(&self, e: &redis::RedisError) -> error::Failed {
        error::Failed {
            dropped: e.is_connection_dropped(),
            error: to_backend_error(&self.inner.addr, e),
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
        let fence_key = self.fence_key(key);
        let fence: Option<u64> = self.run(true, |c| {
            scripts::ACQUIRE
                .key(key)
                .key(fence_key.as_slice())
                .arg(token.as_bytes())
                .arg(millis(ttl))
                .invoke(c)
        })?;
        Ok(fence.map(|fencing_token| Acquired {
            fencing_token,
            validity: ttl,
        }))
    }

    fn release(&self, key: &[u8], token: &Token) -> Result<bool, BackendError> {
        let deleted: i64 = self.run(true, |c| {
            scripts::RELEASE.key(key).arg(token.as_bytes()).invoke(c)
        })?;
        Ok(deleted == 1)
    }

    fn extend(
        &self,
        key: &[u8],
        token: &Token,
        how: Extend,
    ) -> Result<Option<Duration>, BackendError> {
        let (ms, add, idempotent) = match how {
            Extend::By(d) => (millis(d), 1, false),
            Extend::To(d) => (millis(d), 0, true),
        };
        let ttl: Option<u64> = self.run(idempotent, |c| {
            scripts::EXTEND
                .key(key)
                .arg(token.as_bytes())
                .arg(ms)
                .arg(add)
                .invoke(c)
        })?;
        Ok(ttl.map(Duration::from_millis))
    }

    fn inspect(&self, key: &[u8], token: Option<&Token>) -> Result<Option<Duration>, BackendError> {
        let pttl: i64 = self.run(true, |c| match token {
            None => redis::cmd("PTTL").arg(key).query(c),
            Some(t) => scripts::INSPECT.key(key).arg(t.as_bytes()).invoke(c),
        })?;
        Ok(match pttl {
            -1 => Some(Duration::MAX),
            p if p >= 0 => Some(Duration::from_millis(p as u64)),
            _ => None,
        })
    }

    fn force_release(&self, key: &[u8]) -> Result<bool, BackendError> {
        let deleted: i64 = self.run(true, |c| redis::cmd("DEL").arg(key).query(c))?;
        Ok(deleted == 1)
    }

    fn health_check(&self) -> Result<(), BackendError> {
        self.ping()
    }

    fn dedicated(&self) -> Option<Box<dyn LockBackend>> {
        let Pool::Own(pool, connector) = &self.inner.pool else {
            return None;
        };
        Some(Box::new(RedisBackend {
            inner: Arc::new(Inner {
                pool: own_pool(connector, 1, pool.connection_timeout()),
                fencing_prefix: self.inner.fencing_prefix.clone(),
                addr: self.inner.addr.clone(),
            }),
        }))
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
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .finish_non_exhaustive()
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

    /// Validates the options and builds the backend. Makes no connection.
    ///
    /// # Errors
    /// [`LockError::Setup`] for an invalid URL, a zero pool size or timeout, or an empty
    /// fencing prefix.
    pub fn build(self) -> Result<RedisBackend, LockError> {
        let config = |msg: &str| {
            LockError::from(BackendError::new(
                lock_core::BackendErrorKind::Config,
                msg.to_owned(),
            ))
        };
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| LockError::from(to_backend_error("(url)", &e)))?;
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
        let addr = format!("{}/{}", info.addr(), info.redis_settings().db());
        let client = redis::Client::open(info).map_err(|e| to_backend_error(&addr, &e))?;
        let connector = Connector {
            client,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
        };
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                pool: own_pool(&connector, self.pool_size, self.checkout_timeout),
                fencing_prefix: self.fencing_prefix,
                addr,
            }),
        })
    }
}
