//! Redlock's arithmetic: quorum, clock drift, validity, and how a tally of node answers
//! turns into a verdict. Pure functions over counts and [`Duration`]s, no I/O.

use std::time::Duration;

/// The fixed part of the clock-drift allowance: 2 ms (the Redlock specification's
/// allowance for the resolution of the servers' expiry timers).
pub const DRIFT_CONSTANT: Duration = Duration::from_millis(2);

/// The number of nodes that must agree among `n`: a strict majority, `n / 2 + 1`.
///
/// Any two sets of `quorum(n)` nodes share at least one node, which is what makes two
/// holders at once impossible. An even `n` tolerates no more failed nodes than `n - 1`
/// does, so an odd number of nodes is the sensible choice.
///
/// ```
/// use lock_redlock::quorum;
/// assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
/// ```
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The clock-drift allowance for a lock of `ttl`: `ttl * factor + 2 ms`
/// ([`DRIFT_CONSTANT`]), rounded up to the nanosecond so it is never understated.
///
/// A `factor` that is negative or not finite counts as zero; the result saturates
/// instead of overflowing, so it never panics.
///
/// ```
/// use lock_redlock::drift;
/// use std::time::Duration;
/// assert_eq!(drift(Duration::from_secs(10), 0.01), Duration::from_millis(102));
/// ```
pub fn drift(ttl: Duration, factor: f64) -> Duration {
    let scaled = if factor.is_finite() && factor > 0.0 {
        // Exact below 2^53 ns (104 days); `as` saturates above, and maps NaN to 0.
        Duration::from_nanos((ttl.as_nanos() as f64 * factor).ceil() as u64)
    } else {
        Duration::ZERO
    };
    scaled.saturating_add(DRIFT_CONSTANT)
}

/// How long a lock taken with `ttl` is still ours after `elapsed` (the time the
/// acquisition took, measured on the monotonic clock from before the first request was
/// sent), with `drift` set aside: `ttl - elapsed - drift`, or `None` if that is not
/// positive, in which case the lock must be refused. Checked arithmetic: never panics.
///
/// ```
/// use lock_redlock::validity;
/// use std::time::Duration;
/// let ms = Duration::from_millis;
/// assert_eq!(validity(ms(100), ms(10), ms(3)), Some(ms(87)));
/// assert_eq!(validity(ms(100), ms(97), ms(3)), None);
/// ```
pub fn validity(ttl: Duration, elapsed: Duration, drift: Duration) -> Option<Duration> {
    ttl.checked_sub(elapsed)?
        .checked_sub(drift)
        .filter(|v| !v.is_zero())
}

/// How long a state that needs `need` nodes lasts, given the time each node that is in
/// that state has left: it ends when fewer than `need` remain, that is when the
/// `need`-th longest runs out. `None` if fewer than `need` nodes are in the state.
pub(crate) fn quorum_remaining(mut left: Vec<Duration>, need: usize) -> Option<Duration> {
    if need == 0 || left.len() < need {
        return None;
    }
    left.sort_unstable();
    left.get(left.len() - need).copied()
}

/// Node answers to one fan-out so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Nodes that said yes (acquired, extended, deleted, hold it).
    pub(crate) yes: usize,
    /// Nodes that said no (held by another, not ours, not there).
    pub(crate) no: usize,
    /// Nodes that failed: an error or no answer in time. Their state is unknown.
    pub(crate) failed: usize,
    /// Nodes that have not answered yet.
    pub(crate) pending: usize,
}

/// What a fan-out amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// At least `need` nodes said yes.
    Yes,
    /// Not enough yes, and the nodes that answered decide it: too many said no, or so few
    /// failed that the rest of the nodes could have formed a quorum (so the failures are
    /// not what stood in the way).
    No,
    /// Not enough yes because too many nodes failed to answer; the state is unknown.
    Failed,
}

impl Tally {
    fn n(&self) -> usize {
        self.yes + self.no + self.failed + self.pending
    }

    /// The verdict if it is already certain, whatever the pending nodes answer; `None`
    /// while it still depends on them. With `need` yes required, `n - need` nodes can be
    /// spared: more than that saying no is a no, more than that failing is a failure
    /// (unless the no's alone already decide it).
    pub(crate) fn verdict(&self, need: usize) -> Option<Verdict> {
        let spare = self.n().saturating_sub(need);
        if self.yes >= need {
            Some(Verdict::Yes)
        } else if self.no > spare {
            Some(Verdict::No)
        } else if self.failed > spare && self.no + self.pending <= spare {
            Some(Verdict::Failed)
        } else if self.yes + self.pending < need && self.failed + self.pending <= spare {
            Some(Verdict::No)
        } else {
            None
        }
    }

    /// The verdict once waiting is over: pending nodes count as failed.
    pub(crate) fn settle(&self, need: usize) -> Verdict {
        // With nothing pending one of the rules always applies (see the tests).
        self.closed().verdict(need).unwrap_or(Verdict::Failed)
    }

    /// The verdict of an ownership check (release, extend, is-held), where "no" means "not
    /// our key" and a node that failed may still hold our key: held if `need` nodes say
    /// so, certainly not held only if too many say no for all the others to make up a
    /// quorum, and otherwise, once nothing is pending, unknown (`Failed`). Unlike
    /// [`verdict`](Tally::verdict), failures never turn into a "no".
    pub(crate) fn owned(&self, need: usize) -> Option<Verdict> {
        let spare = self.n().saturating_sub(need);
        if self.yes >= need {
            Some(Verdict::Yes)
        } else if self.no > spare {
            Some(Verdict::No)
        } else if self.pending == 0 {
            Some(Verdict::Failed)
        } else {
            None
        }
    }

    /// [`owned`](Tally::owned) once waiting is over: pending nodes count as failed.
    pub(crate) fn settle_owned(&self, need: usize) -> Verdict {
        self.closed().owned(need).unwrap_or(Verdict::Failed)
    }

    fn closed(&self) -> Tally {
        Tally {
            failed: self.failed + self.pending,
            pending: 0,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    const MS: Duration = Duration::from_millis(1);

    fn ttls() -> Vec<Duration> {
        [
            1, 2, 3, 5, 10, 50, 100, 250, 1_000, 10_000, 60_000, 3_600_000, 86_400_000,
        ]
        .into_iter()
        .map(Duration::from_millis)
        .collect()
    }

    /// The drift computed independently, in integer nanoseconds, for factor 0.01.
    fn expected_drift(ttl: Duration) -> Duration {
        Duration::from_nanos((ttl.as_nanos().div_ceil(100)) as u64) + DRIFT_CONSTANT
    }

    #[test]
    fn quorum_table() {
        let expected = [
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (5, 3),
            (6, 4),
            (7, 4),
            (8, 5),
            (9, 5),
        ];
        for (n, q) in expected {
            assert_eq!(quorum(n), q, "n = {n}");
        }
    }

    #[test]
    fn drift_table() {
        for ttl in ttls() {
            let d = drift(ttl, 0.01);
            let want = expected_drift(ttl);
            assert!(
                d >= want && d - want <= Duration::from_nanos(1),
                "{ttl:?}: {d:?}"
            );
            assert_eq!(drift(ttl, 0.0), DRIFT_CONSTANT);
        }
        assert_eq!(drift(Duration::from_secs(10), 0.01), 102 * MS);
        assert_eq!(
            drift(Duration::from_secs(86_400), 0.01),
            Duration::from_secs(864) + 2 * MS
        );
        // Hostile factors and TTLs saturate or count as zero; nothing panics.
        assert_eq!(
            drift(Duration::MAX, 0.5),
            Duration::from_nanos(u64::MAX) + 2 * MS
        );
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            assert_eq!(drift(Duration::from_secs(1), f), DRIFT_CONSTANT);
        }
    }

    #[test]
    fn validity_table_over_ttls_and_node_counts() {
        for n in 1..=9usize {
            for ttl in ttls() {
                let d = drift(ttl, 0.01);
                // A round trip per node, as a slow sequential client would spend it.
                for elapsed in [
                    Duration::ZERO,
                    MS * n as u32,
                    ttl / 2,
                    ttl,
                    ttl + MS,
                    Duration::MAX,
                ] {
                    let v = validity(ttl, elapsed, d);
                    let want =
                        ttl.as_nanos() as i128 - elapsed.as_nanos() as i128 - d.as_nanos() as i128;
                    match v {
                        Some(v) => {
                            assert!(want > 0, "{ttl:?} {elapsed:?}");
                            assert_eq!(v.as_nanos() as i128, want);
                            assert!(v < ttl);
                        }
                        None => assert!(want <= 0, "{ttl:?} {elapsed:?} refused a valid lock"),
                    }
                }
            }
        }
        // The drift alone eats TTLs up to about 2 ms: such locks are always refused.
        assert_eq!(validity(MS, Duration::ZERO, drift(MS, 0.01)), None);
        assert_eq!(validity(2 * MS, Duration::ZERO, drift(2 * MS, 0.01)), None);
        assert!(validity(3 * MS, Duration::ZERO, drift(3 * MS, 0.01)).is_some());
        assert_eq!(validity(10 * MS, 10 * MS, Duration::ZERO), None);
    }

    #[test]
    fn property_validity_never_exceeds_ttl_and_quorum_is_a_strict_majority() {
        let mut rng = rand::rng();
        for _ in 0..100_000 {
            let ttl = Duration::from_nanos(rng.random_range(1_000_000..=2_592_000_000_000_000));
            let elapsed = match rng.random_range(0..4) {
                0 => Duration::ZERO,
                1 => Duration::MAX,
                _ => Duration::from_nanos(rng.random_range(0..=ttl.as_nanos() as u64 * 2)),
            };
            let factor = rng.random_range(0.0..1.0);
            let d = drift(ttl, factor);
            assert!(d >= DRIFT_CONSTANT);
            if let Some(v) = validity(ttl, elapsed, d) {
                assert!(v <= ttl && v > Duration::ZERO);
                assert!(v + elapsed + d == ttl);
            } else {
                assert!(elapsed.saturating_add(d) >= ttl);
            }
            let n = rng.random_range(1..=1_000usize);
            let q = quorum(n);
            assert!(2 * q > n, "{n}: {q} is not a majority");
            assert!(2 * (q - 1) <= n, "{n}: {q} is more than the least majority");
        }
    }

    #[test]
    fn quorum_remaining_is_the_time_until_too_few_nodes_remain() {
        let l = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(quorum_remaining(l(&[5, 1, 3, 4, 2]), 3), Some(3 * MS));
        assert_eq!(quorum_remaining(l(&[5, 1, 3]), 3), Some(MS));
        assert_eq!(quorum_remaining(l(&[5, 1]), 3), None);
        assert_eq!(quorum_remaining(l(&[7]), 1), Some(7 * MS));
        assert_eq!(
            quorum_remaining(vec![Duration::MAX; 3], 2),
            Some(Duration::MAX)
        );
        assert_eq!(quorum_remaining(vec![], 0), None);
    }

    /// Every tally of up to 9 nodes: an early verdict never contradicts any way the
    /// pending nodes could still answer, and a complete tally always has one.
    #[test]
    fn early_verdicts_are_certain_and_complete_tallies_decide() {
        check_verdicts(Tally::verdict, Tally::settle);
    }

    /// The same for ownership checks.
    #[test]
    fn early_ownership_verdicts_are_certain_and_complete_tallies_decide() {
        check_verdicts(Tally::owned, Tally::settle_owned);
    }

    fn check_verdicts(
        verdict: impl Fn(&Tally, usize) -> Option<Verdict>,
        settle: impl Fn(&Tally, usize) -> Verdict,
    ) {
        for n in 1..=9 {
            for need in 1..=n {
                for yes in 0..=n {
                    for no in 0..=n - yes {
                        for failed in 0..=n - yes - no {
                            let pending = n - yes - no - failed;
                            let t = Tally {
                                yes,
                                no,
                                failed,
                                pending,
                            };
                            let early = verdict(&t, need);
                            if pending == 0 {
                                assert!(early.is_some(), "{t:?} need {need} undecided");
                            }
                            let Some(v) = early else { continue };
                            for y in 0..=pending {
                                for f in 0..=pending - y {
                                    let done = Tally {
                                        yes: yes + y,
                                        failed: failed + f,
                                        no: no + pending - y - f,
                                        pending: 0,
                                    };
                                    assert_eq!(verdict(&done, need), Some(v), "{t:?} -> {done:?}");
                                }
                            }
                            assert_eq!(settle(&t, need), v);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn verdict_examples_on_five_nodes() {
        let t = |yes, no, failed, pending| Tally {
            yes,
            no,
            failed,
            pending,
        };
        assert_eq!(t(3, 0, 0, 2).verdict(3), Some(Verdict::Yes));
        // Held elsewhere on three: contention, whatever the rest say.
        assert_eq!(t(0, 3, 0, 2).verdict(3), Some(Verdict::No));
        // A split vote with two dead nodes is contention: the live nodes could have
        // formed a quorum, another client holds part of it.
        assert_eq!(t(2, 1, 2, 0).verdict(3), Some(Verdict::No));
        // Three nodes down: nobody can lock, that is a failure.
        assert_eq!(t(2, 0, 3, 0).verdict(3), Some(Verdict::Failed));
        assert_eq!(t(1, 1, 3, 0).verdict(3), Some(Verdict::Failed));
        // Still open: the two pending nodes decide.
        assert_eq!(t(2, 1, 0, 2).verdict(3), None);
        assert_eq!(t(1, 1, 1, 2).verdict(3), None);
    }

    #[test]
    fn a_failed_node_may_still_hold_our_key() {
        let t = |yes, no, failed, pending| Tally {
            yes,
            no,
            failed,
            pending,
        };
        // Granted by three, two never had our key, one of the three does not answer: it
        // may hold our key, so the release can tell neither "deleted" nor "not ours".
        assert_eq!(t(2, 2, 1, 0).verdict(3), Some(Verdict::No));
        assert_eq!(t(2, 2, 1, 0).owned(3), Some(Verdict::Failed));
        assert_eq!(t(3, 2, 0, 0).owned(3), Some(Verdict::Yes));
        // Three say "not ours": whatever the others hold, no quorum of ours is left.
        assert_eq!(t(0, 3, 2, 0).owned(3), Some(Verdict::No));
        assert_eq!(t(1, 3, 0, 1).owned(3), Some(Verdict::No));
        assert_eq!(t(2, 2, 0, 1).owned(3), None);
    }
}
