//! The manager: waiting, backoff, deadlines and bookkeeping, written once for every backend.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use crate::backend::LockBackend;
use crate::cancel::CancelHandle;
use crate::clock::{is_system_clock, Clock, SystemClock};
use crate::deadline::Deadline;
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::hold::{Ctx, Hold, Plan};
use crate::loss::{LossReason, LostCallback};
use crate::name::{Key, LockName, Token};
use crate::options::*;
use crate::records::{self, Found};
use crate::renew::Renewer;
use crate::stats::{bump, LockStats, Stats};

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
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<Ctx>,
    ttl: Duration,
    wait: Option<Duration>,
    retry_min: Duration,
    retry_max: Duration,
    prefix: Vec<u8>,
    auto_renew: bool,
    max_hold: Option<Duration>,
    on_lost: Option<LostCallback>,
    /// Started on the first renewing hold; stops when the manager and every renewed
    /// hold are gone.
    renewer: Mutex<Option<Arc<Renewer>>>,
}

/// What one acquisition came to.
enum Acquire {
    /// Taken: the guard.
    Taken(LockGuard),
    /// Still held by somebody else when the wait ran out; the key is given back.
    StillHeld(Key),
}

impl Inner {
    /// The manager's renewal thread, started if needed.
    fn renewer(&self) -> std::io::Result<Arc<Renewer>> {
        let mut renewer = self.renewer.lock();
        if let Some(r) = renewer.as_ref() {
            return Ok(r.clone());
        }
        let ctx = &self.ctx;
        let backend = ctx
            .backend
            .dedicated()
            .map_or_else(|| ctx.backend.clone(), Arc::from);
        let r = Arc::new(Renewer::start(
            backend,
            ctx.clock.clone(),
            ctx.stats.clone(),
        )?);
        *renewer = Some(r.clone());
        Ok(r)
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
    /// retries jittered from 1 ms doubling to 100 ms, key prefix `lock:`, system clock, no
    /// automatic renewal.
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
            backend: Arc::new(backend),
            ttl: DEFAULT_TTL,
            wait: Some(DEFAULT_WAIT),
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            clock: Arc::new(SystemClock),
            system_clock: true,
            auto_renew: false,
            max_hold: None,
            on_lost: None,
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
        let key = check_name(&self.inner.prefix, name.as_ref())?;
        let now = self.inner.ctx.clock.now();
        let options = LockOptions::new();
        Ok(
            match self.acquire(key, self.inner.ttl, Deadline::once(now), now, &options)? {
                Acquire::Taken(guard) => Some(guard),
                Acquire::StillHeld(_) => None,
            },
        )
    }

    /// Takes `name` with per-call options (TTL, wait, re-entrancy, renewal, cancel).
    ///
    /// # Errors
    /// As [`lock`](LockManager::lock), plus [`LockError::InvalidArgument`] for a TTL or
    /// wait out of range, [`LockError::Cancelled`] if the options' cancel handle was
    /// cancelled during the wait, and [`LockError::Lost`] for a re-entrant request on a
    /// hold of this thread that is already lost or expired: the caller's outer section
    /// is no longer exclusive and should hear so, rather than get a guard for a dead
    /// hold. The thread's record of that hold is dropped, so asking again takes the lock
    /// anew.
    pub fn lock_with(
        &self,
        name: impl AsRef<[u8]>,
        options: LockOptions,
    ) -> Result<LockGuard, LockError> {
        let key = check_name(&self.inner.prefix, name.as_ref())?;
        let (ttl, wait) = self.resolve(&key, &options)?;
        let start = self.inner.ctx.clock.now();
        let deadline = Deadline::after(start, wait);
        self.acquire_or_time_out(key, ttl, deadline, start, &options)
    }

    /// Takes every lock in `names` or none: in sorted order (duplicates removed), so two
    /// callers asking for overlapping sets in any order cannot deadlock, all within one
    /// overall wait (the manager's default). What was taken is released if the rest
    /// cannot be.
    ///
    /// ```
    /// # use lock_core::{LockManager, LockError};
    /// # use lock_memory::MemoryBackend;
    /// # fn main() -> Result<(), LockError> {
    /// let mgr = LockManager::new(MemoryBackend::new());
    /// let both = mgr.lock_all(["account:2", "account:1"])?;   // takes account:1 first
    /// assert!(mgr.is_locked("account:1")? && mgr.is_locked("account:2")?);
    /// both.release()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](LockManager::lock), for the first name that could not be taken;
    /// [`LockError::InvalidArgument`] if `names` is empty.
    pub fn lock_all<N: AsRef<[u8]>>(
        &self,
        names: impl IntoIterator<Item = N>,
    ) -> Result<MultiGuard, LockError> {
        self.lock_all_with(names, LockOptions::new())
    }

    /// [`lock_all`](LockManager::lock_all) with per-call options, applied to every name;
    /// the wait bounds the whole call.
    ///
    /// # Errors
    /// As [`lock_all`](LockManager::lock_all).
    pub fn lock_all_with<N: AsRef<[u8]>>(
        &self,
        names: impl IntoIterator<Item = N>,
        options: LockOptions,
    ) -> Result<MultiGuard, LockError> {
        let mut checked = names
            .into_iter()
            .map(|n| check_name(&self.inner.prefix, n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        checked.sort();
        checked.dedup();
        let Some(first) = checked.first() else {
            return Err(LockError::invalid(None, "lock_all needs at least one name"));
        };
        let (ttl, wait) = self.resolve(first, &options)?;
        let start = self.inner.ctx.clock.now();
        // One deadline for the whole call: a timeout reports the whole wait.
        let deadline = Deadline::after(start, wait);
        let mut guards = Vec::with_capacity(checked.len());
        for key in checked {
            // Each lock's validity counts from its own first attempt.
            let now = match guards.is_empty() {
                true => start,
                false => self.inner.ctx.clock.now(),
            };
            // On error the guards taken so far drop here, releasing them.
            guards.push(self.acquire_or_time_out(key, ttl, deadline, now, &options)?);
        }
        Ok(MultiGuard { guards })
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

    /// Waits until nobody holds `name`, without taking it, for at most `timeout` (`None`
    /// = forever). Returns at once if it is free. By the time the caller acts, somebody
    /// may have taken it again.
    ///
    /// # Errors
    /// [`LockError::Timeout`] if it stayed held, [`LockError::InvalidArgument`] for a bad
    /// name or wait, [`LockError::Backend`] if the backend could not answer.
    pub fn wait_unlocked(
        &self,
        name: impl AsRef<[u8]>,
        timeout: Option<Duration>,
    ) -> Result<(), LockError> {
        self.wait_unlocked_with(name, LockOptions::new().wait(timeout))
    }

    /// [`wait_unlocked`](LockManager::wait_unlocked) with options: the wait (the
    /// manager's default wait if unset) and a [cancel handle](LockOptions::cancel); the
    /// other options do not apply.
    ///
    /// # Errors
    /// As [`wait_unlocked`](LockManager::wait_unlocked), and [`LockError::Cancelled`]
    /// if the wait was cancelled.
    pub fn wait_unlocked_with(
        &self,
        name: impl AsRef<[u8]>,
        options: LockOptions,
    ) -> Result<(), LockError> {
        let key = check_name(&self.inner.prefix, name.as_ref())?;
        let wait = check_wait(Some(&key), options.wait.unwrap_or(self.inner.wait))?;
        let ctx = &self.inner.ctx;
        let deadline = Deadline::after(ctx.clock.now(), wait);
        let free = self.poll(&key, deadline, options.cancel.as_ref(), || {
            match ctx.backend.inspect(key.as_bytes(), None) {
                Ok(None) => Ok(Some(())),
                Ok(Some(_)) => Ok(None),
                Err(source) => Err(LockError::Backend {
                    name: key.name(),
                    source,
                }),
            }
        })?;
        free.ok_or_else(|| LockError::Timeout {
            waited: deadline.waited(ctx.clock.now()),
            name: key.name(),
        })
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
        let key = check_name(&self.inner.prefix, name.as_ref())?;
        self.inner
            .ctx
            .backend
            .inspect(key.as_bytes(), None)
            .map_err(|source| LockError::Backend {
                name: key.name(),
                source,
            })
    }

    /// Deletes `name` whoever holds it. **Unsafe for the holder**: it is not told, may
    /// still be working, and its successor will then run at the same time. Only for
    /// clearing a lock whose holder is known to be dead, when its TTL is too long to wait
    /// out. Returns whether there was a lock to delete.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] for a bad name, [`LockError::Backend`] if the backend
    /// could not answer.
    pub fn force_unlock(&self, name: impl AsRef<[u8]>) -> Result<bool, LockError> {
        let key = check_name(&self.inner.prefix, name.as_ref())?;
        log::warn!("force-unlocking lock {}", key.name());
        self.inner
            .ctx
            .backend
            .force_release(key.as_bytes())
            .map_err(|source| LockError::Backend {
                name: key.name(),
                source,
            })
    }

    /// Checks that the backend answers.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] carrying the backend's error if it does not (not a
    /// setup failure: the configuration may be fine and the server merely down).
    pub fn health_check(&self) -> Result<(), LockError> {
        self.inner
            .ctx
            .backend
            .health_check()
            .map_err(|source| LockError::Unavailable { source })
    }

    /// A snapshot of this manager's counters (shared by its clones).
    pub fn stats(&self) -> LockStats {
        self.inner.ctx.stats.snapshot()
    }

    /// The manager's default TTL.
    pub fn default_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The manager's default wait (`None` = forever).
    pub fn default_wait(&self) -> Option<Duration> {
        self.inner.wait
    }

    #[inline]
    fn resolve(
        &self,
        key: &Key,
        options: &LockOptions,
    ) -> Result<(Duration, Option<Duration>), LockError> {
        // The manager's defaults were checked by `build`.
        let ttl = match options.ttl {
            None => self.inner.ttl,
            Some(ttl) => check_ttl(Some(key), ttl)?,
        };
        let wait = match options.wait {
            None => self.inner.wait,
            Some(wait) => check_wait(Some(key), wait)?,
        };
        if let Some(Some(cap)) = options.max_hold {
            check_wait(Some(key), Some(cap))?;
        }
        Ok((ttl, wait))
    }

    /// [`acquire`](Self::acquire), with running out of wait reported as a timeout.
    #[inline]
    fn acquire_or_time_out(
        &self,
        key: Key,
        ttl: Duration,
        deadline: Deadline,
        first_attempt: Instant,
        options: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        match self.acquire(key, ttl, deadline, first_attempt, options)? {
            Acquire::Taken(guard) => Ok(guard),
            Acquire::StillHeld(key) => {
                let ctx = &self.inner.ctx;
                bump(&ctx.stats.timeouts);
                Err(LockError::Timeout {
                    name: key.name(),
                    waited: deadline.waited(ctx.clock.now()),
                })
            }
        }
    }

    /// Takes `key` by the one polling loop. `first_attempt` is the caller's reading of
    /// the clock (so the hot path reads it once), when the first attempt starts.
    fn acquire(
        &self,
        key: Key,
        ttl: Duration,
        deadline: Deadline,
        first_attempt: Instant,
        options: &LockOptions,
    ) -> Result<Acquire, LockError> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        match records::find(ctx.id, &key, options.reentrant) {
            Found::Nothing => {}
            Found::Nested(hold) => {
                bump(&ctx.stats.acquired);
                return Ok(Acquire::Taken(LockGuard::new(hold)));
            }
            Found::WouldDeadlock => return Err(LockError::WouldDeadlock { name: key.name() }),
            Found::Lost(reason) => {
                return Err(LockError::Lost {
                    name: key.name(),
                    reason,
                })
            }
        }
        let token = Token::generate();
        let mut attempt_start = Some(first_attempt);
        let result = self.poll(&key, deadline, options.cancel.as_ref(), || {
            // The first attempt starts at the caller's reading; later ones read again.
            let start = attempt_start.take().unwrap_or_else(|| ctx.clock.now());
            match ctx.try_acquire(key.as_bytes(), &token, ttl, start) {
                Ok(Some(acquired)) => Ok(Some((acquired, start))),
                Ok(None) => {
                    bump(&ctx.stats.contended);
                    Ok(None)
                }
                Err(source) => {
                    // The command may have reached the server before the failure (a lost
                    // reply); take back anything our token may have set rather than leave
                    // it for a whole TTL. Best effort: the backend is already failing.
                    if source.may_have_taken_effect() {
                        let _ = ctx.backend.release(key.as_bytes(), &token);
                    }
                    Err(LockError::Backend {
                        name: key.name(),
                        source,
                    })
                }
            }
        });
        let waited = match &result {
            Ok(Some((_, start))) => deadline.waited(*start),
            _ => deadline.waited(ctx.clock.now()),
        };
        if !waited.is_zero() {
            ctx.stats.add_wait(waited);
        }
        let Some((acquired, start)) = result? else {
            return Ok(Acquire::StillHeld(key));
        };
        bump(&ctx.stats.acquired);
        let renew = options.auto_renew.unwrap_or(inner.auto_renew);
        let renewer = match renew {
            false => None,
            true => match inner.renewer() {
                Ok(r) => Some(r),
                Err(e) => {
                    // Without a renewal thread the lock still works; it just is not renewed.
                    log::warn!("cannot renew lock {}: {e}", key.name());
                    None
                }
            },
        };
        let plan = Plan {
            renewer: renewer
                .clone()
                .map(|r| r as Arc<dyn std::any::Any + Send + Sync>),
            max_hold: options.max_hold.unwrap_or(inner.max_hold),
            on_lost: options.on_lost.clone().or_else(|| inner.on_lost.clone()),
        };
        let hold = Hold::new_arc(ctx.clone(), key, token, ttl, acquired, start, plan);
        if let Some(r) = renewer {
            r.add(&hold);
        }
        log::debug!(
            "acquired lock {} (token {}…, fencing token {}, valid {:?})",
            hold.name(),
            hold.token.short(),
            hold.fencing_token,
            acquired.validity
        );
        records::push(&hold);
        Ok(Acquire::Taken(LockGuard::new(hold)))
    }

    /// The one waiting loop: an attempt, then jittered exponential backoff bounded by
    /// the deadline, with a last attempt at the deadline. `Ok(None)` means the attempt
    /// kept saying "not yet" until the deadline. A cancel ends the wait at once.
    fn poll<T>(
        &self,
        key: &Key,
        deadline: Deadline,
        cancel: Option<&CancelHandle>,
        mut attempt: impl FnMut() -> Result<Option<T>, LockError>,
    ) -> Result<Option<T>, LockError> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        let cancelled = || LockError::Cancelled { name: key.name() };
        let mut interval = inner.retry_min;
        loop {
            if cancel.is_some_and(CancelHandle::is_cancelled) {
                return Err(cancelled());
            }
            if let Some(done) = attempt()? {
                return Ok(Some(done));
            }
            let now = ctx.clock.now();
            let mut pause = jitter(interval);
            if let Some(left) = deadline.remaining(now) {
                if left.is_zero() {
                    return Ok(None);
                }
                pause = pause.min(left);
            }
            match cancel {
                Some(c) => ctx
                    .backend
                    .wait_for_release_cancellable(key.as_bytes(), pause, c),
                None => ctx.backend.wait_for_release(key.as_bytes(), pause),
            }
            interval = (interval * 2).min(inner.retry_max);
        }
    }
}

/// Several locks taken together by [`LockManager::lock_all`]; releases them all when
/// dropped. Not `Send`, like [`LockGuard`].
#[must_use = "the locks are released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct MultiGuard {
    guards: Vec<LockGuard>,
}

impl MultiGuard {
    /// The guards, in the (sorted) order they were taken.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// `Ok(())` while every lock is still valid; see [`LockGuard::check`].
    ///
    /// # Errors
    /// The first lost lock's [`LockError::Lost`].
    pub fn check(&self) -> Result<(), LockError> {
        self.guards.iter().try_for_each(LockGuard::check)
    }

    /// Releases every lock (in reverse order) and reports the first failure, after
    /// trying them all.
    ///
    /// # Errors
    /// As [`LockGuard::release`], for the first lock that failed.
    pub fn release(self) -> Result<(), LockError> {
        let mut first = Ok(());
        for g in self.guards.into_iter().rev() {
            let r = g.release();
            if first.is_ok() {
                first = r;
            }
        }
        first
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
    backend: Arc<dyn LockBackend>,
    ttl: Duration,
    wait: Option<Duration>,
    retry_min: Duration,
    retry_max: Duration,
    prefix: Vec<u8>,
    clock: Arc<dyn Clock>,
    system_clock: bool,
    auto_renew: bool,
    max_hold: Option<Duration>,
    on_lost: Option<LostCallback>,
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
    pub fn clock<C: Clock>(mut self, clock: C) -> Self {
        self.system_clock = is_system_clock::<C>();
        self.clock = Arc::new(clock);
        self
    }

    /// Whether every lock is renewed automatically while its guard lives (one renewal
    /// thread per manager extends each lock to its full TTL every third of it). Per-lock
    /// [`LockOptions::auto_renew`] overrides it. Defaults to `false`.
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = on;
        self
    }

    /// The longest a renewed lock is kept alive: past it renewal stops and the lock
    /// expires by its TTL ([`LossReason::HoldCapReached`](crate::LossReason)). `None`
    /// (the default) renews for as long as the guard lives.
    pub fn max_hold(mut self, cap: Option<Duration>) -> Self {
        self.max_hold = cap;
        self
    }

    /// Called once, on the renewal thread, when a renewed lock gets lost before it is
    /// released (see [`LostCallback`] for the rule). Per-lock [`LockOptions::on_lost`]
    /// overrides it. Defaults to none.
    pub fn on_lost(mut self, f: impl Fn(&LockName, LossReason) + Send + Sync + 'static) -> Self {
        self.on_lost = Some(LostCallback::new(f));
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
        check_wait(None, self.max_hold)?;
        Ok(LockManager {
            inner: Arc::new(Inner {
                ctx: Arc::new(Ctx {
                    id: NEXT_MANAGER_ID.fetch_add(1, Ordering::Relaxed),
                    backend: self.backend,
                    clock: self.clock,
                    system_clock: self.system_clock,
                    stats: Arc::new(Stats::default()),
                }),
                ttl,
                wait,
                retry_min: self.retry_min,
                retry_max: self.retry_max,
                prefix: self.prefix,
                auto_renew: self.auto_renew,
                max_hold: self.max_hold,
                on_lost: self.on_lost,
                renewer: Mutex::new(None),
            }),
        })
    }
}
