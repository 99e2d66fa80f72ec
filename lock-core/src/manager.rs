//! The manager: waiting, backoff, deadlines and bookkeeping, written once for every backend.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::backend::LockBackend;
use crate::clock::{Clock, SystemClock};
use crate::error::LockError;
use crate::guard::{self, LockGuard};
use crate::name::{LockName, Token};
use crate::options::*;

static NEXT_MANAGER_ID: AtomicU64 = AtomicU64::new(1);

/// Takes, waits for and releases named locks on a [`LockBackend`].
///
/// Cheap to clone (an `Arc` inside); clones share configuration and the current thread's
/// hold records, so a thread that holds a lock through one clone cannot silently wait on
/// itself through another. `Send + Sync`: share it between threads freely.
///
/// ```
/// use lock_core::{LockManager, LockError};
/// # use lock_memory::MemoryBackend;
///
/// # fn main() -> Result<(), LockError> {
/// let mgr = LockManager::new(MemoryBackend::new());
/// let guard = mgr.lock("report:daily")?;          // waits up to 30 s by default
/// assert!(mgr.is_locked("report:daily")?);
/// guard.release()?;                               // or just let it drop
/// assert!(mgr.try_lock("report:daily")?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) backend: Box<dyn LockBackend>,
    pub(crate) ttl: Duration,
    pub(crate) wait: Option<Duration>,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) prefix: Vec<u8>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Inner {
    pub(crate) fn key(&self, name: &LockName) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + name.as_bytes().len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(name.as_bytes());
        key
    }
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("LockManager")
            .field("prefix", &String::from_utf8_lossy(&i.prefix))
            .field("ttl", &i.ttl)
            .field("wait", &i.wait)
            .field("retry_min", &i.retry_min)
            .field("retry_max", &i.retry_max)
            .finish_non_exhaustive()
    }
}

impl LockManager {
    /// A manager over `backend` with every default: TTL 10 s, `lock()` waits up to 30 s,
    /// retries jittered from 1 ms doubling to 100 ms, key prefix `lock:`, system clock.
    pub fn new(backend: impl LockBackend) -> Self {
        match Self::builder(backend).build() {
            Ok(m) => m,
            // The defaults are valid constants; the builder cannot reject them.
            Err(_) => unreachable!("default manager configuration is valid"),
        }
    }

    /// A builder over `backend`, starting from the defaults of [`LockManager::new`].
    pub fn builder(backend: impl LockBackend) -> LockManagerBuilder {
        LockManagerBuilder {
            backend: Box::new(backend),
            ttl: DEFAULT_TTL,
            wait: Some(DEFAULT_WAIT),
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Takes `name`, waiting up to the manager's default wait.
    ///
    /// # Errors
    /// [`LockError::Timeout`] if it stayed held for the whole wait,
    /// [`LockError::WouldDeadlock`] if this thread already holds it through this manager,
    /// [`LockError::InvalidArgument`] for a bad name, [`LockError::Backend`] if the backend
    /// could not answer.
    pub fn lock(&self, name: impl AsRef<[u8]>) -> Result<LockGuard, LockError> {
        self.lock_with(name, LockOptions::new())
    }

    /// Makes exactly one attempt to take `name`: `Ok(None)` if somebody else holds it.
    ///
    /// # Errors
    /// As [`lock`](LockManager::lock), except that contention is `Ok(None)`, not a timeout.
    pub fn try_lock(&self, name: impl AsRef<[u8]>) -> Result<Option<LockGuard>, LockError> {
        let name = check_name(name.as_ref())?;
        let ttl = self.inner.ttl;
        self.acquire(name, ttl, Some(Duration::ZERO), false)
    }

    /// Takes `name` with per-call options (TTL, wait, re-entrancy).
    ///
    /// # Errors
    /// As [`lock`](LockManager::lock), plus [`LockError::InvalidArgument`] for a TTL or
    /// wait out of range.
    pub fn lock_with(
        &self,
        name: impl AsRef<[u8]>,
        options: LockOptions,
    ) -> Result<LockGuard, LockError> {
        let name = check_name(name.as_ref())?;
        let ttl = check_ttl(Some(&name), options.ttl.unwrap_or(self.inner.ttl))?;
        let wait = check_wait(Some(&name), options.wait.unwrap_or(self.inner.wait))?;
        let started = self.inner.clock.now();
        match self.acquire(name.clone(), ttl, wait, options.reentrant)? {
            Some(g) => Ok(g),
            None => Err(LockError::Timeout {
                name,
                waited: self.inner.clock.now().saturating_duration_since(started),
            }),
        }
    }

    /// Runs `f` while holding `name` (taken as by [`lock`](LockManager::lock)) and returns
    /// its value. The lock is released when `f` returns or panics.
    ///
    /// # Errors
    /// Any error of [`lock`](LockManager::lock); and [`LockError::NotHeld`] if the lock
    /// had expired or been taken over by the time `f` returned — then `f` did not run
    /// exclusively, and its value is dropped so the caller cannot mistake it for work
    /// done under the lock.
    pub fn with_lock<T>(
        &self,
        name: impl AsRef<[u8]>,
        f: impl FnOnce() -> T,
    ) -> Result<T, LockError> {
        let guard = self.lock(name)?;
        let value = f();
        guard.release()?;
        Ok(value)
    }

    /// Whether anybody (any process, any token) holds `name` right now.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] for a bad name, [`LockError::Backend`] if the backend
    /// could not answer.
    pub fn is_locked(&self, name: impl AsRef<[u8]>) -> Result<bool, LockError> {
        Ok(self.ttl(name)?.is_some())
    }

    /// The time `name` has left if anybody holds it, `None` if it is free.
    ///
    /// # Errors
    /// As [`is_locked`](LockManager::is_locked).
    pub fn ttl(&self, name: impl AsRef<[u8]>) -> Result<Option<Duration>, LockError> {
        let name = check_name(name.as_ref())?;
        let key = self.inner.key(&name);
        self.inner
            .backend
            .inspect(&key, None)
            .map_err(|source| LockError::Backend { name, source })
    }

    /// The manager's default TTL.
    pub fn default_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The manager's default wait (`None` = forever).
    pub fn default_wait(&self) -> Option<Duration> {
        self.inner.wait
    }

    /// The one acquisition loop: an attempt, then jittered exponential backoff bounded by
    /// the deadline, with a last attempt at the deadline. `Ok(None)` means contention until
    /// the deadline; `wait == None` waits forever.
    fn acquire(
        &self,
        name: LockName,
        ttl: Duration,
        wait: Option<Duration>,
        reentrant: bool,
    ) -> Result<Option<LockGuard>, LockError> {
        let inner = &self.inner;
        let key = inner.key(&name);
        if let Some(g) = guard::held_by_this_thread(inner, &name, &key, reentrant)? {
            return Ok(Some(g));
        }
        let clock = &inner.clock;
        let start = clock.now();
        let deadline: Option<Instant> = wait.and_then(|w| start.checked_add(w));
        let token = Token::generate();
        let mut interval = inner.retry_min;
        loop {
            let attempt_start = clock.now();
            match inner.backend.try_acquire(&key, &token, ttl) {
                Ok(Some(acquired)) => {
                    log::debug!(
                        "acquired lock {name} (token {}…, fencing token {}, valid {:?})",
                        token.short(),
                        acquired.fencing_token,
                        acquired.validity
                    );
                    return Ok(Some(guard::new_hold(
                        self.inner.clone(),
                        name,
                        key,
                        token,
                        ttl,
                        acquired,
                        attempt_start,
                    )));
                }
                Ok(None) => {}
                Err(source) => {
                    // The command may have reached the server before the failure (a lost
                    // reply); take back anything our token may have set rather than leave
                    // it for a whole TTL. Best effort: the backend is already failing.
                    let _ = inner.backend.release(&key, &token);
                    return Err(LockError::Backend { name, source });
                }
            }
            let now = clock.now();
            let mut pause = jitter(interval);
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Ok(None);
                }
                pause = pause.min(deadline - now);
            }
            inner.backend.wait_for_release(&key, pause);
            interval = (interval * 2).min(inner.retry_max);
        }
    }
}

/// A pause drawn uniformly from `[d/2, d]`, so waiters that started together spread out.
fn jitter(d: Duration) -> Duration {
    let nanos = d.as_nanos().min(u64::MAX as u128) as u64;
    if nanos < 2 {
        return d;
    }
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
}

/// Configures a [`LockManager`]; [`build`](LockManagerBuilder::build) validates.
pub struct LockManagerBuilder {
    backend: Box<dyn LockBackend>,
    ttl: Duration,
    wait: Option<Duration>,
    retry_min: Duration,
    retry_max: Duration,
    prefix: Vec<u8>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for LockManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManagerBuilder")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("ttl", &self.ttl)
            .field("wait", &self.wait)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .finish_non_exhaustive()
    }
}

impl LockManagerBuilder {
    /// The default time to live of a lock. Defaults to 10 s; must lie in
    /// [`MIN_TTL`]..=[`MAX_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long [`LockManager::lock`] waits for a held lock: `Some(d)`, or `None` to wait
    /// forever. Defaults to `Some(30 s)`; at most [`MAX_WAIT`].
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self
    }

    /// The retry interval while waiting: it starts at `min`, doubles after every failed
    /// attempt up to `max`, and each pause is drawn at random from `[interval/2, interval]`.
    /// A pause never runs past the caller's deadline, and the last attempt is made at the
    /// deadline. Defaults to 1 ms and 100 ms.
    pub fn retry_interval(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max;
        self
    }

    /// The prefix put before every lock name to form the backend key, so locks do not
    /// collide with the application's other keys. Defaults to `lock:`; must be non-empty
    /// and at most [`MAX_PREFIX_LEN`] bytes.
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = prefix.as_ref().to_vec();
        self
    }

    /// The clock used for waits and validity. Defaults to [`SystemClock`]; tests pass the
    /// same [`ManualClock`](crate::ManualClock) as their memory backend.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Validates the configuration and builds the manager.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] naming the first bad option.
    pub fn build(self) -> Result<LockManager, LockError> {
        let ttl = check_ttl(None, self.ttl)?;
        let wait = check_wait(None, self.wait)?;
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return Err(LockError::invalid(
                None,
                "retry interval must satisfy 0 < min <= max",
            ));
        }
        if self.retry_max > MAX_WAIT {
            return Err(LockError::invalid(
                None,
                format!("retry interval max is longer than {MAX_WAIT:?}"),
            ));
        }
        if self.prefix.is_empty() || self.prefix.len() > MAX_PREFIX_LEN {
            return Err(LockError::invalid(
                None,
                format!("key prefix must be 1 to {MAX_PREFIX_LEN} bytes"),
            ));
        }
        Ok(LockManager {
            inner: Arc::new(Inner {
                id: NEXT_MANAGER_ID.fetch_add(1, Ordering::Relaxed),
                backend: self.backend,
                ttl,
                wait,
                retry_min: self.retry_min,
                retry_max: self.retry_max,
                prefix: self.prefix,
                clock: self.clock,
            }),
        })
    }
}
