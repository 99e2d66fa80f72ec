//! Monotonic time, injectable so time-dependent logic can be tested without sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A monotonic clock. The manager measures waits and validity with one, and
/// [`MemoryBackend`](https://docs.rs/lock-memory) measures TTLs with one.
///
/// [`SystemClock`] is the real one; [`ManualClock`] only moves when told to.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Lets `d` pass: the system clock sleeps, a manual clock advances by `d`.
    fn sleep(&self, d: Duration);
    /// Whether this clock follows real time (so real blocking waits are meaningful).
    fn is_real(&self) -> bool {
        true
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn sleep(&self, d: Duration) {
        (**self).sleep(d)
    }
    fn is_real(&self) -> bool {
        (**self).is_real()
    }
}

/// The real monotonic clock ([`Instant::now`] and [`std::thread::sleep`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// Whether `C` is the [`SystemClock`], whose readings are plain [`Instant::now`] ones
/// (what [`LockBackend::try_acquire_at`](crate::LockBackend::try_acquire_at) takes). By
/// type, so a clock cannot claim it by mistake; a wrapped `SystemClock` answers `false`,
/// which only costs a clock read.
pub(crate) fn is_system_clock<C: Clock>() -> bool {
    std::any::TypeId::of::<C>() == std::any::TypeId::of::<SystemClock>()
}

/// A clock that stands still until [`advance`](ManualClock::advance)d; `sleep(d)` advances
/// it by `d` at once. Clones share the same time.
///
/// ```
/// use lock_core::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now() - t0, Duration::from_secs(60));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A manual clock starting at the current real instant.
    pub fn new() -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                base: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            }),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut off = self.inner.offset.lock();
        *off = off.saturating_add(d);
    }

    /// How far the clock has been advanced in total.
    pub fn elapsed(&self) -> Duration {
        *self.inner.offset.lock()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let off = *self.inner.offset.lock();
        self.inner.base.checked_add(off).unwrap_or(self.inner.base)
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
    fn is_real(&self) -> bool {
        false
    }
}
