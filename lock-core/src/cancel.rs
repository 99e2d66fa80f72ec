//! Cancelling a blocked wait from another thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

type Waker = Arc<dyn Fn() + Send + Sync>;

/// Stops blocked waits from another thread, for shutdown of a worker pool.
///
/// Pass a clone to [`LockOptions::cancel`](crate::LockOptions::cancel); calling
/// [`cancel`](CancelHandle::cancel) wakes every wait that uses it at once (not at its
/// next poll), and they return [`LockError::Cancelled`](crate::LockError::Cancelled).
/// A wait that starts after the cancel returns at once. Clones share the state;
/// cancelling is final.
///
/// ```
/// use lock_core::{CancelHandle, LockError, LockManager, LockOptions};
/// # use lock_memory::MemoryBackend;
/// # fn main() -> Result<(), LockError> {
/// let mgr = LockManager::new(MemoryBackend::new());
/// let _held = mgr.lock("queue")?;
/// let stop = CancelHandle::new();
/// let waiter = {
///     let (mgr, stop) = (mgr.clone(), stop.clone());
///     std::thread::spawn(move || {
///         mgr.lock_with("queue", LockOptions::new().wait(None).cancel(&stop)).map(|_| ())
///     })
/// };
/// stop.cancel(); // shutdown: the waiter returns now
/// assert!(matches!(waiter.join().unwrap(), Err(LockError::Cancelled { .. })));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct CancelHandle {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    sleepers: Mutex<Vec<(u64, Waker)>>,
    woken: Condvar,
    next_id: AtomicU64,
}

impl CancelHandle {
    /// A handle that has not been cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every wait that uses this handle (and its clones), now and later.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        // Take the wakers out first: a waker may take a backend's lock, and nothing may
        // run under ours.
        let wakers: Vec<Waker> = {
            let sleepers = self.inner.sleepers.lock();
            sleepers.iter().map(|(_, w)| w.clone()).collect()
        };
        for w in wakers {
            w();
        }
        let _guard = self.inner.sleepers.lock();
        self.inner.woken.notify_all();
    }

    /// Whether [`cancel`](CancelHandle::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Blocks for at most `timeout`, returning at once when cancelled. Returns whether it
    /// was cancelled. For backends' [`wait_for_release_cancellable`](crate::LockBackend::wait_for_release_cancellable).
    pub fn sleep(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut guard = self.inner.sleepers.lock();
        while !self.is_cancelled() {
            match until {
                Some(until) => {
                    if self.inner.woken.wait_until(&mut guard, until).timed_out() {
                        break;
                    }
                }
                None => self.inner.woken.wait(&mut guard),
            }
        }
        self.is_cancelled()
    }

    /// Calls `wake` when the handle is cancelled, for as long as the returned
    /// registration lives: a backend that blocks on its own condition variable registers
    /// a waker that notifies it (taking the lock its waiters check the handle under, so
    /// no wake-up is lost), and checks [`is_cancelled`](CancelHandle::is_cancelled)
    /// before every wait.
    pub fn on_cancel(&self, wake: impl Fn() + Send + Sync + 'static) -> CancelRegistration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.sleepers.lock().push((id, Arc::new(wake)));
        CancelRegistration {
            handle: self.clone(),
            id,
        }
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A waker registered by [`CancelHandle::on_cancel`]; dropping it unregisters it.
#[must_use = "the waker is unregistered when this is dropped"]
pub struct CancelRegistration {
    handle: CancelHandle,
    id: u64,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        // Dropped outside the lock: a waker's captures may be arbitrary.
        let removed = {
            let mut sleepers = self.handle.inner.sleepers.lock();
            sleepers
                .iter()
                .position(|(id, _)| *id == self.id)
                .map(|i| sleepers.swap_remove(i))
        };
        drop(removed);
    }
}

impl fmt::Debug for CancelRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CancelRegistration")
    }
}
