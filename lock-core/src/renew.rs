//! Automatic renewal: one thread per manager extends every renewing hold at a third of its
//! TTL, and marks a hold lost when the backend says it is gone or its validity runs out.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::{Extend, LockBackend};
use crate::clock::Clock;
use crate::guard::{Hold, LossReason};
use crate::stats::{bump, Stats};

/// How long a transient renewal failure waits before the next try.
fn retry_step(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

/// How often a renewal thread on a clock that only tests move looks at the clock.
const MANUAL_CLOCK_POLL: Duration = Duration::from_millis(1);

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
    shutdown: bool,
}

impl Renewer {
    /// Starts the manager's renewal thread. It renews through `backend` (a dedicated
    /// handle where the backend offers one).
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
        self.shared.queue.lock().holds.push(Arc::downgrade(hold));
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
        loop {
            let due = {
                let mut q = self.queue.lock();
                if q.shutdown {
                    return;
                }
                q.holds
                    .retain(|w| w.upgrade().is_some_and(|h| h.state.lock().renewing()));
                let now = self.clock.now();
                let mut due = Vec::new();
                let mut next: Option<Instant> = None;
                for hold in q.holds.iter().filter_map(Weak::upgrade) {
                    let at = hold.state.lock().next_renewal;
                    if at <= now {
                        due.push(hold);
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                if due.is_empty() {
                    if !self.clock.is_real() {
                        self.wake.wait_for(&mut q, MANUAL_CLOCK_POLL);
                    } else if let Some(next) = next {
                        self.wake.wait_until(&mut q, next);
                    } else {
                        self.wake.wait(&mut q);
                    }
                    continue;
                }
                due
            };
            for hold in due {
                self.renew(&hold);
            }
        }
    }

    fn renew(&self, hold: &Arc<Hold>) {
        let now = self.clock.now();
        {
            let mut st = hold.state.lock();
            if !st.renewing() {
                return;
            }
            if hold.max_hold_until.is_some_and(|cap| now >= cap) {
                st.cap_reached = true;
                log::debug!(
                    "lock {} reached its hold cap; renewal stops and it expires by its TTL",
                    hold.name()
                );
                return;
            }
        }
        match self
            .backend
            .extend(hold.key(), &hold.token, Extend::To(hold.ttl))
        {
            Ok(Some(validity)) => {
                bump(&self.stats.renewals);
                let mut st = hold.state.lock();
                st.valid_until = now.checked_add(validity).unwrap_or(now);
                st.next_renewal = now.checked_add(hold.ttl / 3).unwrap_or(now);
            }
            Ok(None) => hold.mark_lost(LossReason::TakenOver),
            Err(e) => {
                let after = self.clock.now();
                let mut st = hold.state.lock();
                if after >= st.valid_until {
                    drop(st);
                    log::warn!("renewing lock {} failed until it expired: {e}", hold.name());
                    hold.mark_lost(LossReason::RenewalFailed);
                } else {
                    log::warn!("renewing lock {} failed, will retry: {e}", hold.name());
                    st.next_renewal = after.checked_add(retry_step(hold.ttl)).unwrap_or(after);
                }
            }
        }
    }
}
