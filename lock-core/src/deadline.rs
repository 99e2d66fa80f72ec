//! When a wait started and when it must end.

use std::time::{Duration, Instant};

/// A wait's start and its end (`None` = no end), on the manager's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    start: Instant,
    end: Option<Instant>,
}

impl Deadline {
    /// A wait of `wait` (`None` = forever) starting at `start`.
    pub(crate) fn after(start: Instant, wait: Option<Duration>) -> Self {
        Deadline {
            start,
            // Waits are at most MAX_WAIT, far from overflowing an Instant; if one did,
            // waiting forever is the closest honest answer.
            end: wait.and_then(|w| start.checked_add(w)),
        }
    }

    /// One attempt at `now`, no waiting.
    pub(crate) fn once(now: Instant) -> Self {
        Deadline {
            start: now,
            end: Some(now),
        }
    }

    /// How long the wait has lasted at `now`.
    pub(crate) fn waited(&self, now: Instant) -> Duration {
        // Taken at the first attempt (the hot path): `now` is the start itself, and a
        // comparison is far cheaper than a subtraction of two readings.
        if now <= self.start {
            return Duration::ZERO;
        }
        now.duration_since(self.start)
    }

    /// What is left of the wait at `now`: `None` for a wait without end, `Some(ZERO)`
    /// once it has passed.
    pub(crate) fn remaining(&self, now: Instant) -> Option<Duration> {
        self.end.map(|end| end.saturating_duration_since(now))
    }
}
