//! Partition churn for Redlock (issue #6): five real `redis-server`s, each behind a
//! fault-injecting proxy; a seeded chaos schedule blackholes a random minority or majority
//! of the proxies for 1–5 s, 1–3 s after the last partition healed, with 0–50 ms of latency
//! on every proxy that is not blackholed; meanwhile 16 threads contend for one name with a
//! 1 s TTL.
//!
//! Checked on every run:
//! - **Exclusion.** No two holds overlap while both are valid: an atomic in-section counter,
//!   a non-atomic read-modify-write counter that must equal the number of writes, and the
//!   recorded interval of every hold (see [`Hold`] for what "overlap" means under leases);
//!   and no guard is ever returned while fewer than a majority of the nodes was reachable.
//! - **Liveness.** At least one acquisition in every 5 s window in which a majority of the
//!   nodes was usable throughout (see [`GRACE`] for "usable").
//! - **Clear, bounded errors.** Every `lock()` returns a guard, a timeout or a quorum error
//!   naming every node, within [`lock_call_bound`]; every `release()` returns within
//!   [`RELEASE_CALL_BOUND`]; a release never says "not held" of a lock that was still valid
//!   (a bug the churn found, pinned by
//!   `a_release_that_cannot_reach_a_granting_node_is_not_reported_as_not_held`).
//! - **Nothing left behind.** Once the partitions heal, every node's key is gone or expires
//!   within the TTL; no thread panicked.
//!
//! Runs 30 s by default. `CHURN_SECS=N` runs N seconds (at least 10), `LOCK_SOAK=1` 300 s;
//! `CHURN_SEED=S` replays the chaos schedule of a run (every run prints its seed; only the
//! schedule replays, not the threads' timing); `CHURN_LOG=path` writes the library's
//! warnings, every call and every hold to a file, for a failure to be read against;
//! `CHURN_RETRY_MAX_MS=N` caps the managers' backoff at N ms instead of [`RETRY_MAX`].
//!
//! ```text
//! CHURN_SEED=42 CHURN_SECS=90 cargo test -p lock-tests --test redlock_churn -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::conformance::fresh_name;
use lock_core::{BackendErrorKind, LockError, LockGuard, LockManager};
use lock_redlock::RedlockBackend;
use lock_tests::harness::{cluster, RedisServer};
use lock_tests::proxy::{Mode, Proxy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 5;
const MAJORITY: usize = NODES / 2 + 1;
const ALL: u8 = (1 << NODES) - 1;
/// Four "processes" of four threads: each group has its own backend (its own connections,
/// node workers and view of which nodes are down, as separate processes would) and one
/// manager shared by its threads (the normal way to use it within a process).
const GROUPS: usize = 4;
const THREADS_PER_GROUP: usize = 4;
const THREADS: usize = GROUPS * THREADS_PER_GROUP;
const TTL: Duration = Duration::from_secs(1);
/// Each node's answer, and the read, write and checkout timeout of its connections. A
/// reachable node is at most 2 × 50 ms of proxy latency away; 250 ms leaves 150 ms for a
/// busy two-core machine before a reachable node counts as failed (and is skipped for its
/// backoff), and a lock taken at the last moment still has 1 s − 250 ms − 12 ms of drift
/// = 738 ms of validity, hundreds of times the critical section.
const NODE_TIMEOUT: Duration = Duration::from_millis(250);
/// A new connection's handshake costs one or two round trips (≤ 200 ms through the
/// latency); a node worker stuck connecting to a blackholed proxy gives up after this,
/// well within the TTL, instead of the 1 s default.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections and workers per node and group: one per thread of the group.
const POOL_SIZE: u32 = THREADS_PER_GROUP as u32;
/// How long `lock()` waits for the contended name before it times out.
const WAIT: Duration = Duration::from_secs(3);
/// The cap of the manager's jittered backoff between attempts (the default is 100 ms).
/// Every failed attempt occupies the nodes it reached until its cleanup lands, about a
/// round trip (up to 100 ms here) later; 16 contenders retrying at most 100 ms apart keep
/// a bare quorum (3 of 5 reachable, all needed) occupied by failed attempts almost all the
/// time: measured with 2 of 5 nodes partitioned for 20 s, no acquisition for over 6 s at
/// 100 ms, under 3 s at 500 ms. `CHURN_RETRY_MAX_MS=100` runs with the default.
const RETRY_MAX: Duration = Duration::from_millis(500);
/// Scheduling slack on top of the library's own bounds, for a noisy two-core machine.
const SLACK: Duration = Duration::from_millis(750);
/// A release is one fan-out: answered, or given up at the node timeout.
const RELEASE_CALL_BOUND: Duration = NODE_TIMEOUT.saturating_add(SLACK);
/// The critical section (under a millisecond) only starts with at least this much validity
/// left; a guard with less is released unused, as careful callers do.
const ENTRY_MARGIN: Duration = Duration::from_millis(250);
/// What a worker waits after a failed `lock()` before trying again, as an application
/// would; without it the threads would spin on the instant errors of a cluster that has
/// lost its majority.
const ERROR_PAUSE_MS: std::ops::RangeInclusive<u64> = 10..=30;
const WINDOW: Duration = Duration::from_secs(5);
/// How long a node must have been reachable to count as usable. After a partition heals a
/// node may still be skipped as down (its workers ping it, backing off up to 1 s, and the
/// first answer brings it back), and it may hold keys for up to the TTL: commands held in
/// the blackhole are delivered on healing, so acquisitions that had been given up run
/// then, and the releases of holders that gave up while it was unreachable stopped being
/// retried after a TTL. Both run out 1 s after healing; the rest is a ping's round trip and
/// slack.
/// A window counts only if a majority was usable throughout it.
const GRACE: Duration = Duration::from_secs(2);
const DEFAULT_SECS: u64 = 30;
const SOAK_SECS: u64 = 300;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The longest `lock()` may take: the wait, then the last attempt at its deadline (one
/// node timeout; the cleanup after a failed attempt is answered at once), plus slack.
fn lock_call_bound() -> Duration {
    WAIT + NODE_TIMEOUT + SLACK
}

fn env_secs() -> u64 {
    match std::env::var("CHURN_SECS") {
        Ok(s) => {
            let secs: u64 = s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("CHURN_SECS={s:?} is not a number of seconds"));
            assert!(secs >= 10, "CHURN_SECS={secs}: at least 10 s");
            secs
        }
        Err(_) if std::env::var_os("LOCK_SOAK").is_some() => SOAK_SECS,
        Err(_) => DEFAULT_SECS,
    }
}

fn env_retry_max() -> Duration {
    match std::env::var("CHURN_RETRY_MAX_MS") {
        Ok(s) => ms(s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHURN_RETRY_MAX_MS={s:?} is not a number"))),
        Err(_) => RETRY_MAX,
    }
}

fn env_seed() -> u64 {
    match std::env::var("CHURN_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHURN_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

fn nodes_of(mask: u8) -> String {
    let list: Vec<String> = (0..NODES)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect();
    format!("{{{}}}", list.join(","))
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

// ---- the library's log ---------------------------------------------------------------------

/// The library's warnings (a node counted as down or back, a release given up), with their
/// time since the start, and with `CHURN_LOG` every failed call's message too.
struct Journal {
    t0: OnceLock<Instant>,
    lines: Mutex<Vec<(Duration, String)>>,
}

/// More than any run needs; a flood past it is not worth keeping.
const MAX_JOURNAL: usize = 200_000;

impl Journal {
    fn note(&self, line: String) {
        let at = self.t0.get().map_or(Duration::ZERO, Instant::elapsed);
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() < MAX_JOURNAL {
            lines.push((at, line));
        }
    }

    fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl log::Log for Journal {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.note(format!("{} {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static JOURNAL: Journal = Journal {
    t0: OnceLock::new(),
    lines: Mutex::new(Vec::new()),
};

fn verbose() -> bool {
    std::env::var_os("CHURN_LOG").is_some()
}

// ---- the chaos schedule -------------------------------------------------------------------

/// One state of the proxies, from `at` (after the start) until the next phase.
#[derive(Debug, Clone)]
struct Phase {
    at: Duration,
    blackholed: u8,
    /// Every other proxy: a fixed delay and a random extra per chunk, 50 ms at most.
    latency: [(Duration, Duration); NODES],
}

/// Calm phases (every node reachable) of 1–3 s, each followed by a partition of 1–5 s:
/// a minority (1–2 nodes) or, with even odds, a majority (3–5). A majority partition only
/// comes once a window and a grace have passed since the last one healed, so every run
/// has windows to check liveness in; the first partition that may be a majority is one,
/// so every run of 15 s or more loses its majority at least once. Generated from the
/// seed alone, so it replays.
fn schedule(seed: u64, run: Duration) -> Vec<Phase> {
    let mut rng = StdRng::seed_from_u64(seed);
    let latency = |rng: &mut StdRng| {
        std::array::from_fn(|_| (ms(rng.random_range(0..=40)), ms(rng.random_range(0..=10))))
    };
    let mut phases = vec![Phase {
        at: Duration::ZERO,
        blackholed: 0,
        latency: latency(&mut rng),
    }];
    let mut t = Duration::ZERO;
    let mut last_majority_healed = Duration::ZERO;
    let mut majorities = 0;
    loop {
        t += ms(rng.random_range(1000..=3000));
        if t >= run {
            return phases;
        }
        let may_take_majority = t >= last_majority_healed + WINDOW + GRACE;
        let majority = may_take_majority && (majorities == 0 || rng.random_bool(0.5));
        majorities += usize::from(majority);
        let k = if majority {
            rng.random_range(MAJORITY..=NODES)
        } else {
            rng.random_range(1..MAJORITY)
        };
        let blackholed = rand::seq::index::sample(&mut rng, NODES, k)
            .iter()
            .fold(0u8, |m, i| m | 1 << i);
        phases.push(Phase {
            at: t,
            blackholed,
            latency: latency(&mut rng),
        });
        t += ms(rng.random_range(1000..=5000));
        if majority {
            last_majority_healed = t;
        }
        if t >= run {
            return phases;
        }
        phases.push(Phase {
            at: t,
            blackholed: 0,
            latency: latency(&mut rng),
        });
    }
}

/// Which nodes were reachable, from when: `(time since the start, reachable mask)`.
/// Recorded conservatively: a node counts as unreachable from just before its proxy is
/// blackholed until just after it is switched back.
type Timeline = Vec<(Duration, u8)>;

/// Runs the phases against the proxies until `end`, then switches every proxy back to
/// pass-through.
fn run_chaos(proxies: &[Proxy], phases: &[Phase], t0: Instant, end: Instant) -> Timeline {
    let mut timeline = vec![(Duration::ZERO, ALL)];
    let mut reachable = ALL;
    for phase in phases {
        let at = t0 + phase.at;
        if at >= end {
            break;
        }
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let next = ALL & !phase.blackholed;
        timeline.push((t0.elapsed(), reachable & next));
        for (i, proxy) in proxies.iter().enumerate() {
            proxy.set_mode(if phase.blackholed & (1 << i) != 0 {
                Mode::Blackhole
            } else {
                let (base, jitter) = phase.latency[i];
                Mode::Latency { base, jitter }
            });
        }
        timeline.push((t0.elapsed(), next));
        reachable = next;
    }
    thread::sleep(end.saturating_duration_since(Instant::now()));
    for proxy in proxies {
        proxy.set_mode(Mode::PassThrough);
    }
    timeline.push((t0.elapsed(), ALL));
    timeline
}

/// Sets the flag when dropped, so the workers stop even if the chaos thread panics (the
/// scope would otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---- the workers --------------------------------------------------------------------------

/// What the workers share: the name, the stop flag and the two exclusion checks.
struct Shared {
    name: String,
    stop: AtomicBool,
    /// Threads inside a critical section right now.
    inside: AtomicUsize,
    /// Entries that found another thread inside.
    collisions: AtomicUsize,
    /// Read and written in two separate steps: updates are lost if two holders overlap.
    counter: Mutex<u64>,
    /// The proxies' addresses as the backend names its nodes (`host:port/db`).
    node_names: Vec<String>,
}

/// One hold that entered its critical section, in time since the start.
///
/// A lease is only a lock while it is valid, so a hold counts from `enter` until `exit` or
/// `valid_until` (the end of its validity by the guard's own clock), whichever comes
/// first. Two holds **overlap** if those intervals intersect: both were inside at once,
/// and both were still valid. `enter` is read before the in-section counter goes up and
/// `exit` after it goes down; the guard is taken before the one and released after the
/// other, so the interval lies within the library's hold and an overlap is the library's.
/// The worker also checks the guard before its write and skips the write if the lease has
/// run out, so a worker that stalls past its lease cannot take the blame for the library;
/// one that stalls between the check and the write is counted (a late write), and only
/// such writes may be lost without an overlap.
#[derive(Debug, Clone, Copy)]
struct Hold {
    thread: usize,
    enter: Duration,
    exit: Duration,
    valid_until: Duration,
    wrote: Option<Duration>,
}

impl Hold {
    fn valid_end(&self) -> Duration {
        self.exit.min(self.valid_until)
    }

    fn overran(&self) -> bool {
        self.exit > self.valid_until
    }

    fn late_write(&self) -> bool {
        self.wrote.is_some_and(|w| w > self.valid_until)
    }
}

/// How one `lock()` call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Guard,
    /// The nodes answered, but the name stayed held for the whole wait.
    Timeout,
    /// Too many nodes failed (or were skipped as down) for a quorum.
    Quorum,
}

#[derive(Default)]
struct WorkerLog {
    holds: Vec<Hold>,
    /// Every `lock()` call: when it returned, from which group, how.
    calls: Vec<(Duration, usize, Outcome)>,
    /// Guards released unused: less than the entry margin left.
    skipped: usize,
    /// Critical sections that found the lease run out before their write.
    aborted: usize,
    lock_errors: BTreeMap<&'static str, usize>,
    releases: BTreeMap<&'static str, usize>,
    /// Releases that said "not held" of a lock with more than a node timeout left.
    wrong_not_held: Vec<String>,
    /// Anything that is not a guard, a timeout or a well-formed quorum error, and calls
    /// past their bound.
    problems: Vec<String>,
    max_lock_call: Duration,
    max_release_call: Duration,
}

/// Contends for the name until told to stop.
fn work(thread: usize, mgr: &LockManager, shared: &Shared, t0: Instant) -> WorkerLog {
    let mut log = WorkerLog::default();
    let mut rng = rand::rng();
    let group = thread / THREADS_PER_GROUP;
    while !shared.stop.load(Ordering::SeqCst) {
        let called = Instant::now();
        let result = mgr.lock(&shared.name);
        let took = called.elapsed();
        log.max_lock_call = log.max_lock_call.max(took);
        if took > lock_call_bound() {
            log.problems.push(format!(
                "lock() took {took:?} (bound {:?}) at {}: {result:?}",
                lock_call_bound(),
                secs(t0.elapsed())
            ));
        }
        match result {
            Ok(guard) => {
                log.calls.push((t0.elapsed(), group, Outcome::Guard));
                log.critical_section(thread, &guard, shared, t0, &mut rng);
                log.release(guard, t0);
            }
            Err(e) => {
                let outcome = log.lock_error(&e, shared);
                log.calls.push((t0.elapsed(), group, outcome));
                thread::sleep(ms(rng.random_range(ERROR_PAUSE_MS)));
            }
        }
    }
    log
}

impl WorkerLog {
    fn critical_section(
        &mut self,
        thread: usize,
        guard: &LockGuard,
        shared: &Shared,
        t0: Instant,
        rng: &mut impl Rng,
    ) {
        // The clock first: `remaining()` reads it again, later, so the end of validity
        // computed here is never later than the guard's own.
        let enter = t0.elapsed();
        let remaining = guard.remaining();
        if remaining < ENTRY_MARGIN {
            self.skipped += 1;
            return;
        }
        if shared.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            shared.collisions.fetch_add(1, Ordering::SeqCst);
        }
        let read = *shared.counter.lock().unwrap();
        thread::sleep(Duration::from_micros(rng.random_range(100..=800)));
        let wrote = if guard.check().is_ok() {
            *shared.counter.lock().unwrap() = read + 1;
            Some(t0.elapsed())
        } else {
            self.aborted += 1;
            None
        };
        shared.inside.fetch_sub(1, Ordering::SeqCst);
        self.holds.push(Hold {
            thread,
            enter,
            exit: t0.elapsed(),
            valid_until: enter + remaining,
            wrote,
        });
    }

    fn release(&mut self, guard: LockGuard, t0: Instant) {
        let remaining = guard.remaining();
        let called = Instant::now();
        let result = guard.release();
        let took = called.elapsed();
        self.max_release_call = self.max_release_call.max(took);
        if took > RELEASE_CALL_BOUND {
            self.problems.push(format!(
                "release() took {took:?} (bound {RELEASE_CALL_BOUND:?}) at {}: {result:?}",
                secs(t0.elapsed())
            ));
        }
        let kind = match &result {
            Ok(()) => "ok",
            // With more than a node timeout of validity left, every node that set our key
            // keeps it until after the release's answers are in: "it expired or was taken
            // over" cannot be true.
            Err(e @ LockError::NotHeld { .. }) => {
                if remaining > NODE_TIMEOUT {
                    self.wrong_not_held.push(format!(
                        "release() at {} with {remaining:?} of validity left: {e}",
                        secs(t0.elapsed())
                    ));
                }
                "not held"
            }
            Err(e) if e.backend_kind() == Some(BackendErrorKind::Quorum) => "quorum",
            Err(e) => {
                self.problems
                    .push(format!("release() failed unexpectedly: {e:?}"));
                "unexpected"
            }
        };
        *self.releases.entry(kind).or_default() += 1;
    }

    fn lock_error(&mut self, e: &LockError, shared: &Shared) -> Outcome {
        let (kind, outcome) = match e {
            LockError::Timeout { .. } => ("timeout", Outcome::Timeout),
            LockError::Backend { source, .. } if source.kind() == BackendErrorKind::Quorum => {
                let text = format!("{e:#}");
                let unnamed: Vec<&String> = shared
                    .node_names
                    .iter()
                    .filter(|n| !text.contains(n.as_str()))
                    .collect();
                if !text.contains("needed") || !unnamed.is_empty() {
                    self.problems.push(format!(
                        "a quorum error that does not say what was needed or does not name \
                         {unnamed:?}: {text}"
                    ));
                }
                if verbose() {
                    JOURNAL.note(format!("lock() {text}"));
                }
                ("quorum", Outcome::Quorum)
            }
            other => {
                self.problems
                    .push(format!("lock() failed unexpectedly: {other:?}"));
                ("unexpected", Outcome::Quorum)
            }
        };
        *self.lock_errors.entry(kind).or_default() += 1;
        outcome
    }

    fn merge(&mut self, other: WorkerLog) {
        self.holds.extend(other.holds);
        self.calls.extend(other.calls);
        self.skipped += other.skipped;
        self.aborted += other.aborted;
        for (k, n) in other.lock_errors {
            *self.lock_errors.entry(k).or_default() += n;
        }
        for (k, n) in other.releases {
            *self.releases.entry(k).or_default() += n;
        }
        self.wrong_not_held.extend(other.wrong_not_held);
        self.problems.extend(other.problems);
        self.max_lock_call = self.max_lock_call.max(other.max_lock_call);
        self.max_release_call = self.max_release_call.max(other.max_release_call);
    }

    fn acquired(&self) -> Vec<Duration> {
        self.calls
            .iter()
            .filter(|c| c.2 == Outcome::Guard)
            .map(|c| c.0)
            .collect()
    }
}

// ---- the analysis -------------------------------------------------------------------------

/// Pairs of holds that overlapped while both were valid (see [`Hold`]), as messages.
fn overlaps(holds: &[Hold]) -> Vec<String> {
    let mut sorted = holds.to_vec();
    sorted.sort_by_key(|h| h.enter);
    let mut found = Vec::new();
    let mut latest: Option<Hold> = None;
    for h in sorted {
        if let Some(prev) = latest {
            if h.enter < prev.valid_end() {
                found.push(format!(
                    "thread {} held [{}, {}) valid until {}, thread {} entered at {} \
                     (valid until {})",
                    prev.thread,
                    secs(prev.enter),
                    secs(prev.exit),
                    secs(prev.valid_until),
                    h.thread,
                    secs(h.enter),
                    secs(h.valid_until)
                ));
            }
        }
        if latest.is_none_or(|p| h.valid_end() > p.valid_end()) {
            latest = Some(h);
        }
    }
    found
}

/// The maximal stretches of `[0, end)` in which at least a majority of the nodes was
/// usable: reachable throughout the [`GRACE`] before. A node unreachable over `[a, b)` is
/// unusable over `[a, b + GRACE)`.
fn usable_stretches(timeline: &Timeline, end: Duration) -> Vec<(Duration, Duration)> {
    let mut unusable: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); NODES];
    for (node, spans) in unusable.iter_mut().enumerate() {
        let mut down_since = None;
        for &(t, reachable) in timeline {
            let up = reachable & (1 << node) != 0;
            match (up, down_since) {
                (false, None) => down_since = Some(t),
                (true, Some(a)) => {
                    spans.push((a, t + GRACE));
                    down_since = None;
                }
                _ => {}
            }
        }
        if let Some(a) = down_since {
            spans.push((a, end + GRACE));
        }
    }
    let mut cuts: Vec<Duration> = vec![Duration::ZERO, end];
    for &(a, b) in unusable.iter().flatten() {
        cuts.extend([a.min(end), b.min(end)]);
    }
    cuts.sort();
    cuts.dedup();
    let mut stretches: Vec<(Duration, Duration)> = Vec::new();
    for pair in cuts.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        let mid = from + (to - from) / 2;
        let usable = unusable
            .iter()
            .filter(|spans| !spans.iter().any(|&(a, b)| a <= mid && mid < b))
            .count();
        if usable < MAJORITY {
            continue;
        }
        match stretches.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => stretches.push((from, to)),
        }
    }
    stretches
}

/// Liveness over the usable stretches: the longest gap without an acquisition inside any
/// stretch of at least a window (every window within it has an acquisition iff the gap is
/// shorter than a window), and the number of acquisitions in each whole window laid end to
/// end from the start of each stretch.
struct Liveness {
    stretches: Vec<(Duration, Duration)>,
    windows: Vec<usize>,
    worst_gap: Option<(Duration, Duration, Duration)>,
}

fn liveness(stretches: Vec<(Duration, Duration)>, acquired: &[Duration]) -> Liveness {
    let mut acquired = acquired.to_vec();
    acquired.sort();
    let mut windows = Vec::new();
    let mut worst_gap: Option<(Duration, Duration, Duration)> = None;
    for &(from, to) in &stretches {
        if to - from < WINDOW {
            continue;
        }
        let inside: Vec<Duration> = acquired
            .iter()
            .copied()
            .filter(|&t| from <= t && t < to)
            .collect();
        let points = std::iter::once(from).chain(inside.iter().copied());
        for (a, b) in points.zip(inside.iter().copied().chain(std::iter::once(to))) {
            if worst_gap.is_none_or(|(gap, _, _)| b - a > gap) {
                worst_gap = Some((b - a, a, b));
            }
        }
        let mut start = from;
        while start + WINDOW <= to {
            let end = start + WINDOW;
            windows.push(inside.iter().filter(|&&t| start <= t && t < end).count());
            start = end;
        }
    }
    Liveness {
        stretches,
        windows,
        worst_gap,
    }
}

/// The longest a group (a "process") got nothing but quorum errors while a majority was
/// usable: from its first such error to its next guard or timeout, or to the end of the
/// stretch. As `(how long, group, from)`.
fn longest_lockout(
    calls: &[(Duration, usize, Outcome)],
    stretches: &[(Duration, Duration)],
) -> Option<(Duration, usize, Duration)> {
    let mut calls = calls.to_vec();
    calls.sort_by_key(|c| c.0);
    let mut worst: Option<(Duration, usize, Duration)> = None;
    let mut consider = |span: Duration, group: usize, from: Duration| {
        if worst.is_none_or(|(w, _, _)| span > w) {
            worst = Some((span, group, from));
        }
    };
    for &(from, to) in stretches {
        for group in 0..GROUPS {
            let mut since = None;
            for &(t, _, outcome) in calls
                .iter()
                .filter(|c| c.1 == group && from <= c.0 && c.0 < to)
            {
                match (outcome, since) {
                    (Outcome::Quorum, None) => since = Some(t),
                    (Outcome::Quorum, Some(_)) => {}
                    (_, Some(s)) => {
                        consider(t - s, group, s);
                        since = None;
                    }
                    (_, None) => {}
                }
            }
            if let Some(s) = since {
                consider(to - s, group, s);
            }
        }
    }
    worst
}

/// The nodes reachable at some moment of `[from, to]`.
fn reachable_during(timeline: &Timeline, from: Duration, to: Duration) -> u8 {
    let at_from = timeline
        .iter()
        .rev()
        .find(|e| e.0 <= from)
        .map_or(ALL, |e| e.1);
    timeline
        .iter()
        .filter(|e| from < e.0 && e.0 <= to)
        .fold(at_from, |m, e| m | e.1)
}

fn timeline_text(timeline: &Timeline) -> String {
    let parts: Vec<String> = timeline
        .iter()
        .map(|&(t, m)| format!("{} {}", secs(t), nodes_of(m)))
        .collect();
    parts.join("; ")
}

fn count_by_kind(map: &BTreeMap<&'static str, usize>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn backend(proxies: &[Proxy]) -> RedlockBackend {
    let urls: Vec<String> = proxies.iter().map(Proxy::url).collect();
    RedlockBackend::builder(&urls)
        .node_timeout(NODE_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_size(POOL_SIZE)
        .build()
        .unwrap()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(not a string)".into())
}

/// Writes the journal, the timeline, every call and every hold to `path`, by time.
fn write_log(path: &str, timeline: &Timeline, log: &WorkerLog) {
    let mut lines: Vec<(Duration, String)> = JOURNAL.lines.lock().unwrap().clone();
    lines.extend(
        timeline
            .iter()
            .map(|&(t, m)| (t, format!("reachable {}", nodes_of(m)))),
    );
    lines.extend(
        log.calls
            .iter()
            .map(|&(t, g, o)| (t, format!("group {g}: lock() -> {o:?}"))),
    );
    lines.extend(log.holds.iter().map(|h| {
        (
            h.enter,
            format!(
                "thread {} holds until {} (valid until {}, wrote {})",
                h.thread,
                secs(h.exit),
                secs(h.valid_until),
                h.wrote.map_or("nothing".into(), secs)
            ),
        )
    }));
    lines.sort_by_key(|l| l.0);
    let mut out = String::new();
    for (t, line) in lines {
        let _ = writeln!(out, "{} {line}", secs(t));
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
}

#[test]
fn redlock_under_partition_churn_keeps_exclusion_and_liveness() {
    if log::set_logger(&JOURNAL).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let seed = env_seed();
    let run = Duration::from_secs(env_secs());
    let phases = schedule(seed, run);
    let partitions = phases.iter().filter(|p| p.blackholed != 0).count();
    let majorities = phases
        .iter()
        .filter(|p| p.blackholed.count_ones() as usize >= MAJORITY)
        .count();
    eprintln!(
        "redlock churn: seed {seed} (replay: CHURN_SEED={seed}), {run:?}, {partitions} \
         partitions ({majorities} of a majority), retry cap {:?}",
        env_retry_max()
    );
    for (i, p) in phases.iter().enumerate().filter(|(_, p)| p.blackholed != 0) {
        let until = phases.get(i + 1).map_or(run, |n| n.at);
        eprintln!(
            "  {} – {}: nodes {} blackholed",
            secs(p.at),
            secs(until),
            nodes_of(p.blackholed)
        );
    }

    let servers = cluster(NODES);
    let proxies: Vec<Proxy> = servers
        .iter()
        .map(|s| Proxy::start(&s.addr()).unwrap())
        .collect();
    let managers: Vec<LockManager> = (0..GROUPS)
        .map(|_| {
            LockManager::builder(backend(&proxies))
                .ttl(TTL)
                .wait(Some(WAIT))
                .retry_interval(ms(1), env_retry_max())
                .build()
                .unwrap()
        })
        .collect();
    for mgr in &managers {
        mgr.health_check().unwrap();
    }
    let shared = Shared {
        name: fresh_name(),
        stop: AtomicBool::new(false),
        inside: AtomicUsize::new(0),
        collisions: AtomicUsize::new(0),
        counter: Mutex::new(0),
        node_names: proxies.iter().map(|p| format!("{}/0", p.addr())).collect(),
    };
    let (warmed, go) = (Barrier::new(THREADS + 1), Barrier::new(THREADS + 1));

    let mut log = WorkerLog::default();
    let mut panics = Vec::new();
    let mut timeline = Timeline::new();
    thread::scope(|s| {
        let stop = StopOnDrop(&shared.stop);
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let mgr = &managers[thread / THREADS_PER_GROUP];
                let (shared, warmed, go) = (&shared, &warmed, &go);
                s.spawn(move || {
                    // Open the pooled connections and load the scripts before the clock
                    // starts, each thread on a name of its own.
                    let warm = format!("{}:warm:{thread}", shared.name);
                    for _ in 0..3 {
                        mgr.lock(&warm).unwrap().release().unwrap();
                    }
                    warmed.wait();
                    go.wait();
                    work(thread, mgr, shared, *JOURNAL.t0.get().unwrap())
                })
            })
            .collect();
        warmed.wait();
        let t0 = *JOURNAL.t0.get_or_init(Instant::now);
        go.wait();
        timeline = run_chaos(&proxies, &phases, t0, t0 + run);
        drop(stop);
        for h in handles {
            match h.join() {
                Ok(worker) => log.merge(worker),
                Err(panic) => panics.push(panic_message(&*panic)),
            }
        }
    });

    // Every node's key is gone, or expires within the TTL: straight to the servers, once
    // what the blackholes held has been delivered.
    let key = format!("lock:{}", shared.name);
    for p in &proxies {
        assert!(p.wait_idle(ms(2000)), "{p:?} still forwarding");
    }
    let healed = Instant::now();
    loop {
        let pttls: Vec<i64> = servers.iter().map(|s| s.pttl(&key)).collect();
        for (i, &pttl) in pttls.iter().enumerate() {
            assert!(
                pttl == -2 || (0..=TTL.as_millis() as i64).contains(&pttl),
                "node {i} keeps {key} with pttl {pttl} ms (seed {seed})"
            );
        }
        if pttls.iter().all(|&p| p == -2) {
            break;
        }
        assert!(
            healed.elapsed() <= TTL + SLACK,
            "{key} still on the nodes {:?} after the run (pttl per node {pttls:?}, seed {seed})",
            healed.elapsed()
        );
        thread::sleep(ms(20));
    }

    let acquired = log.acquired();
    let written = log.holds.iter().filter(|h| h.wrote.is_some()).count() as u64;
    let late_writes = log.holds.iter().filter(|h| h.late_write()).count() as u64;
    let overran = log.holds.iter().filter(|h| h.overran()).count();
    let counter = *shared.counter.lock().unwrap();
    let collisions = shared.collisions.load(Ordering::SeqCst);
    let overlapping = overlaps(&log.holds);
    let lost_updates = written.saturating_sub(counter);
    let live = liveness(usable_stretches(&timeline, run), &acquired);
    let lockout = longest_lockout(&log.calls, &live.stretches);
    // A node can only have granted a lock returned at `t` if the attempt (started at most
    // a node timeout before it decided) reached it, and its answer came back, before its
    // proxy went dark: it was reachable at some moment of that span (plus slack for a
    // reply the proxy was still delaying, and for scheduling).
    let without_quorum: Vec<Duration> = acquired
        .iter()
        .copied()
        .filter(|&t| {
            let from = t.saturating_sub(NODE_TIMEOUT + ms(100));
            (reachable_during(&timeline, from, t).count_ones() as usize) < MAJORITY
        })
        .collect();
    let usable_quorum_errors = log
        .calls
        .iter()
        .filter(|&&(t, _, o)| {
            o == Outcome::Quorum && live.stretches.iter().any(|&(a, b)| a <= t && t < b)
        })
        .count();
    eprintln!(
        "redlock churn summary: seed {seed}, {}, {partitions} partitions ({majorities} of a \
         majority); holds {} (written {written}, aborted {}, skipped {}); lock errors {}; \
         releases {}; violations {} (overlaps {}, collisions {collisions}, lost updates \
         {lost_updates}, guards without a reachable majority {}), late writes {late_writes}, overran {overran}; windows checked {} \
         in {} usable stretches, min acquisitions per window {}, longest gap {}; quorum \
         errors while a majority was usable {usable_quorum_errors}, longest lockout of one \
         group {}; slowest lock() {:?} (bound {:?}), slowest release() {:?} (bound \
         {RELEASE_CALL_BOUND:?}); releases wrongly \"not held\" {}; library log lines {}; \
         panics {}",
        secs(run),
        acquired.len(),
        log.aborted,
        log.skipped,
        count_by_kind(&log.lock_errors),
        count_by_kind(&log.releases),
        overlapping.len() + collisions + lost_updates as usize + without_quorum.len(),
        overlapping.len(),
        without_quorum.len(),
        live.windows.len(),
        live.stretches.len(),
        live.windows
            .iter()
            .min()
            .map_or("-".into(), |n| n.to_string()),
        live.worst_gap.map_or("-".into(), |(g, from, to)| format!(
            "{} (from {} to {})",
            secs(g),
            secs(from),
            secs(to)
        )),
        lockout.map_or("-".into(), |(d, g, from)| format!(
            "{} (group {g} from {})",
            secs(d),
            secs(from)
        )),
        log.max_lock_call,
        lock_call_bound(),
        log.max_release_call,
        log.wrong_not_held.len(),
        JOURNAL.len(),
        panics.len(),
    );
    if let Ok(path) = std::env::var("CHURN_LOG") {
        write_log(&path, &timeline, &log);
    }
    let retry = match env_retry_max() {
        RETRY_MAX => String::new(),
        other => format!("CHURN_RETRY_MAX_MS={} ", other.as_millis()),
    };
    let replay = format!(
        "replay: CHURN_SEED={seed} CHURN_SECS={} {retry}cargo test -p lock-tests --test \
         redlock_churn -- --nocapture",
        run.as_secs()
    );

    assert!(panics.is_empty(), "threads panicked: {panics:?}; {replay}");
    assert!(
        log.problems.is_empty(),
        "{} problems, the first ones: {:#?}; {replay}",
        log.problems.len(),
        &log.problems[..log.problems.len().min(10)]
    );
    assert!(
        overlapping.is_empty(),
        "{} holds overlapped while both were valid, the first ones: {:#?}; {replay}",
        overlapping.len(),
        &overlapping[..overlapping.len().min(10)]
    );
    assert!(
        without_quorum.is_empty(),
        "guards returned while fewer than {MAJORITY} nodes were reachable, at {:?}; reachable \
         from: {}; {replay}",
        without_quorum,
        timeline_text(&timeline)
    );
    // With no overlap of valid holds, two threads can only have been inside together if
    // one had outlived its lease, and an update can only have been lost to a write made
    // after the writer's lease (see `Hold`).
    assert!(
        collisions == 0 || overran > 0,
        "{collisions} entries found another holder inside; {replay}"
    );
    assert!(
        counter <= written && counter + late_writes >= written,
        "the read-modify-write counter is {counter} after {written} writes ({late_writes} \
         late); {replay}"
    );
    assert!(
        written > 0,
        "nothing was ever written under the lock; {replay}"
    );
    // The schedule leaves a window and a grace between majority partitions, so every run
    // has windows to check.
    assert!(
        !live.windows.is_empty(),
        "no window in which a majority was usable: {:?}; {replay}",
        live.stretches
    );
    if let Some((gap, from, to)) = live.worst_gap {
        assert!(
            gap < WINDOW,
            "no acquisition from {} to {} although a majority was usable throughout; \
             reachable from: {}; {replay}",
            secs(from),
            secs(to),
            timeline_text(&timeline)
        );
    }
    assert!(
        log.wrong_not_held.is_empty(),
        "releases said \"not held\" of valid locks: {:#?}; {replay}",
        log.wrong_not_held
    );
}

// ---- what the churn found -----------------------------------------------------------------

/// The churn's release check, reduced to one release: a lock granted by nodes 0–2 while
/// nodes 3 and 4 are held by somebody else, then node 1 stops answering. The release
/// deletes our key on nodes 0 and 2; node 1 still holds it, so the lock was ours until
/// then and the answer is "released" or unknown, not "it expired or was taken over". (In
/// the churn the two other nodes were held by a contender's split vote, or skipped as
/// down, when the lock was granted, and a partition then cut off two of the three that
/// granted it.)
#[test]
fn a_release_that_cannot_reach_a_granting_node_is_not_reported_as_not_held() {
    let nodes = cluster(NODES);
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let backend = RedlockBackend::builder(&urls)
        .node_timeout(ms(100))
        .build()
        .unwrap();
    let mgr = LockManager::builder(backend).ttl(TTL).build().unwrap();
    let name = fresh_name();
    let key = format!("lock:{name}");
    for node in &nodes[3..] {
        redis::cmd("SET")
            .arg(&key)
            .arg("foreign")
            .arg("PX")
            .arg(10_000)
            .query::<()>(&mut node.raw_connection())
            .unwrap();
    }
    let guard = mgr.try_lock(&name).unwrap().expect("nodes 0-2 are free");
    nodes[1].pause();
    let remaining = guard.remaining();
    let result = guard.release();
    nodes[1].resume();
    assert!(remaining > ms(500), "{remaining:?}");
    assert!(
        !matches!(result, Err(LockError::NotHeld { .. })),
        "a lock valid for {remaining:?} more, still on node 1, was reported as expired or \
         taken over: {result:?}"
    );
}
