//! Counters of what a manager did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a manager's counters, from [`LockManager::stats`](crate::LockManager::stats).
/// All clones of a manager share one set of counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStats {
    /// Successful acquisitions (a nested re-entrant hold counts too).
    pub acquired: u64,
    /// Attempts that found the lock held by somebody else.
    pub contended: u64,
    /// Calls that gave up because their wait ran out.
    pub timeouts: u64,
    /// Holds found lost: taken over, expired under renewal, or renewal gave up.
    pub lost: u64,
    /// Releases that failed: the lock was no longer ours, or the backend did not answer.
    pub failed_releases: u64,
    /// Successful automatic renewals.
    pub renewals: u64,
    /// Total time spent waiting in acquisition calls (successful or not).
    pub wait_time: Duration,
    /// Total time between acquisition and release, over released holds.
    pub hold_time: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) acquired: AtomicU64,
    pub(crate) contended: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) failed_releases: AtomicU64,
    pub(crate) renewals: AtomicU64,
    wait_nanos: AtomicU64,
    hold_nanos: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl Stats {
    pub(crate) fn add_wait(&self, d: Duration) {
        self.wait_nanos.fetch_add(nanos(d), Ordering::Relaxed);
    }

    pub(crate) fn add_hold(&self, d: Duration) {
        self.hold_nanos.fetch_add(nanos(d), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LockStats {
            acquired: get(&self.acquired),
            contended: get(&self.contended),
            timeouts: get(&self.timeouts),
            lost: get(&self.lost),
            failed_releases: get(&self.failed_releases),
            renewals: get(&self.renewals),
            wait_time: Duration::from_nanos(get(&self.wait_nanos)),
            hold_time: Duration::from_nanos(get(&self.hold_nanos)),
        }
    }
}
