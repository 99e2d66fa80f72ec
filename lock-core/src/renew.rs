//! Automatic renewal: one thread per manager extends every renewing hold at a third of
//! its TTL. What to do with each hold, and when renewal stops, is the hold's state
//! machine's answer ([`Hold::next_step`]); this module only runs the thread.
//!
//! Nothing is dropped, and no callback runs, under the queue's lock: the queue holds
//! weak references only, and the thread takes them out of the queue before it upgrades
//! any, so the last reference to a hold (and with it the manager's state, whose drop
//! stops this thread through the same lock) is always dropped with the lock free.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::{Extend, LockBackend};
use crate::clock::Clock;
use crate::hold::{Hold, Step};
use crate::stats::{bump, Stats};

/// How often a renewal thread on a clock that only tests move looks at the clock.
const MANUAL_CLOCK_POLL: Duration = Duration::from_millis(1);

/// The handle on a manager's renewal thread; the thread stops when the last handle (the
/// manager's, or a renewed hold's) goes.
pub(crate) struct Renewer {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    backend: Arc<dyn LockBackend>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Queue {
    holds: Vec<Weak<Hold>>,
    /// A hold was added since the thread last looked.
    added: bool,
    shutdown: bool,
}

impl Renewer {
    /// Starts a renewal thread. It renews through `backend` (a dedicated handle where
    /// the backend offers one).
    pub(crate) fn start(
        backend: Arc<dyn LockBackend>,
        clock: Arc<dyn Clock>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            backend,
            clock,
            stats,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("lock-renewal".into())
            .spawn(move || worker.run())?;
        Ok(Renewer { shared })
    }

    pub(crate) fn add(&self, hold: &Arc<Hold>) {
        let mut q = self.shared.queue.lock();
        q.holds.push(Arc::downgrade(hold));
        q.added = true;
        drop(q);
        self.shared.wake.notify_one();
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn run(&self) {
        let mut next: Option<Instant> = None;
        loop {
            let batch = {
                let mut q = self.queue.lock();
                if q.shutdown {
                    return;
                }
                if !std::mem::take(&mut q.added) {
                    if !self.clock.is_real() {
                        self.wake.wait_for(&mut q, MANUAL_CLOCK_POLL);
                    } else if let Some(next) = next {
                        self.wake.wait_until(&mut q, next);
                    } else {
                        self.wake.wait(&mut q);
                    }
                    if q.shutdown {
                        return;
                    }
                    q.added = false;
                }
                std::mem::take(&mut q.holds)
            };
            // The lock is free from here on: holds are upgraded, renewed, reported and
            // dropped outside it.
            let (keep, wake_at) = self.pass(batch);
            next = wake_at;
            self.queue.lock().holds.extend(keep);
        }
    }

    /// One look at every hold: renews the due ones, reports losses, forgets finished
    /// ones. Returns the holds to keep and when the next one is due.
    fn pass(&self, batch: Vec<Weak<Hold>>) -> (Vec<Weak<Hold>>, Option<Instant>) {
        let mut keep = Vec::with_capacity(batch.len());
        let mut next: Option<Instant> = None;
        for weak in batch {
            let Some(hold) = weak.upgrade() else {
                continue;
            };
            #[cfg(test)]
            tests::pause_holding_a_hold();
            loop {
                let now = self.clock.now();
                match hold.next_step(now) {
                    Step::WaitUntil(at) => {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        keep.push(weak);
                        break;
                    }
                    Step::Renew => self.renew(&hold, now),
                    Step::Report(reason) => {
                        hold.report(reason);
                        break;
                    }
                    Step::Forget => break,
                }
            }
        }
        (keep, next)
    }

    fn renew(&self, hold: &Hold, start: Instant) {
        match self
            .backend
            .extend(hold.key(), &hold.token, Extend::To(hold.ttl))
        {
            Ok(Some(validity)) => {
                bump(&self.stats.renewals);
                hold.renewed(start, self.clock.now(), validity);
            }
            Ok(None) => hold.lose(crate::loss::LossReason::TakenOver),
            Err(e) => hold.renewal_failed(self.clock.now(), &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::{
        Acquired, BackendError, Extend, LockBackend, LockManager, LockOptions, ManualClock, Token,
    };

    /// How long the renewal thread pauses while it holds a hold (test hook).
    static PAUSE_MS: AtomicU64 = AtomicU64::new(0);

    pub(super) fn pause_holding_a_hold() {
        let ms = PAUSE_MS.load(Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// Grants everything; says when it is dropped.
    struct Granting(Arc<AtomicBool>);

    impl Drop for Granting {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl LockBackend for Granting {
        fn try_acquire(
            &self,
            _: &[u8],
            _: &Token,
            ttl: Duration,
        ) -> Result<Option<Acquired>, BackendError> {
            Ok(Some(Acquired {
                fencing_token: 1,
                validity: ttl,
            }))
        }
        fn release(&self, _: &[u8], _: &Token) -> Result<bool, BackendError> {
            Ok(true)
        }
        fn extend(
            &self,
            _: &[u8],
            _: &Token,
            how: Extend,
        ) -> Result<Option<Duration>, BackendError> {
            Ok(Some(match how {
                Extend::By(d) | Extend::To(d) => d,
            }))
        }
        fn inspect(&self, _: &[u8], _: Option<&Token>) -> Result<Option<Duration>, BackendError> {
            Ok(None)
        }
        fn force_release(&self, _: &[u8]) -> Result<bool, BackendError> {
            Ok(false)
        }
        fn health_check(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    /// Defect 4: the renewal thread, holding the last reference to a hold when its guard
    /// and its manager go, must drop it (and with it the manager's state) without
    /// deadlocking on its own queue: it then exits and lets the backend go.
    #[test]
    fn the_renewal_thread_dropping_the_last_hold_exits_instead_of_deadlocking() {
        let dropped = Arc::new(AtomicBool::new(false));
        let clock = ManualClock::new();
        let mgr = LockManager::builder(Granting(dropped.clone()))
            .clock(clock)
            .auto_renew(true)
            .build()
            .unwrap();
        let g = mgr
            .lock_with("x", LockOptions::new().ttl(Duration::from_secs(30)))
            .unwrap();
        PAUSE_MS.store(300, Ordering::SeqCst);
        // The renewal thread (polling the manual clock every millisecond) is now paused
        // with the hold in hand; the guard and the manager go meanwhile.
        std::thread::sleep(Duration::from_millis(100));
        drop(mgr);
        drop(g);
        PAUSE_MS.store(0, Ordering::SeqCst);
        let start = Instant::now();
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the renewal thread deadlocked dropping the last hold"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
