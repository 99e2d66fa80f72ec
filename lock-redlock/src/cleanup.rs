//! Cleanup: releases that undo a failed acquisition or follow a late one, retried on the
//! node workers with backoff within a window.

use super::*;

/// The longest a release that a node could not take is retried: 1 minute.
pub(crate) const MAX_CLEANUP_WINDOW: Duration = Duration::from_secs(60);
/// The first pause before a release is retried (doubling up to 1 s).
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(50);

/// Node `i`'s part of an acquisition, on one of its workers. If a release was asked for
/// while the command ran, it follows at once on the same worker.
pub(crate) fn acquire_on(hold: &Arc<Hold>, i: usize, late: Instant, worker: &Worker<'_>) {
    if let Err(release) = hold.acquire.start(i, Skip::IfLate(late)) {
        if let Some(release) = release {
            release.finish(i, Ok(false));
        }
        return;
    }
    let answer = worker.backend.try_acquire(&hold.key, &hold.token, hold.ttl);
    worker.record(&answer);
    let may_hold = !matches!(answer, Ok(None));
    if let Some(release) = hold.acquire.finish(i, answer) {
        let released = if may_hold {
            release_with_retries(&hold.release_op(), worker, cleanup_window(hold.ttl))
        } else {
            Ok(false)
        };
        release.finish(i, released);
    }
}

/// Node `i`'s acquisition reply, handed to one of its workers after the call was decided
/// (see [`Inner::read_rest`]). Answered, it lands in its slot like a worker's answer
/// (see [`acquire_on`]): if a release was asked for meanwhile, it follows at once; the
/// command has run, so a release on any connection comes after it. Late, the
/// acquisition may still run, so its release must go out behind it on its connection:
/// at once if one was asked for, otherwise with the lock's release (see `Hold::lates`).
pub(crate) fn acquire_behind(
    hold: &Arc<Hold>,
    i: usize,
    handed: &Handed<Option<Acquired>>,
    times: (Instant, Instant),
    worker: &Worker<'_>,
) {
    let Some(outcome) = read_handed(handed, times, worker) else {
        return;
    };
    let window = cleanup_window(hold.ttl);
    match outcome {
        Outcome::Answered(answer) => {
            let may_hold = !matches!(answer, Ok(None));
            if let Some(release) = hold.acquire.finish(i, answer) {
                let released = if may_hold {
                    release_with_retries(&hold.release_op(), worker, window)
                } else {
                    Ok(false)
                };
                release.finish(i, released);
            }
        }
        Outcome::Late(late) => {
            // Under the acquisition's lock, so a release asked for meanwhile either is
            // seen here or finds this connection in `hold.lates`.
            let mut st = hold.acquire.lock();
            match st.then_release.clone() {
                Some(release) => {
                    drop(st);
                    release.finish(i, release_late(hold, late, worker, window));
                }
                None => {
                    if let Some(slot @ Slot::Running) = st.slots.get_mut(i) {
                        *slot = Slot::Late(times.1.saturating_duration_since(times.0));
                    }
                    hold.lates.lock().push((i, late));
                }
            }
        }
    }
}

/// Releases `hold` behind the `late` command on its connection, so the node runs the
/// release after it; retried (on any connection) for `window` if the node fails it.
pub(crate) fn release_late(
    hold: &Arc<Hold>,
    late: Box<Late>,
    worker: &Worker<'_>,
    window: Duration,
) -> Result<bool, BackendError> {
    let answer = late.release(&hold.key, &hold.token);
    worker.record(&answer);
    if answer.is_err() {
        let give_up = deadline(Instant::now(), window);
        retry_release(hold.release_op(), worker, 0, give_up);
    }
    answer
}

/// How long a release that a node could not take is retried: while our key may still be
/// there to remove, i.e. for the TTL, but at most a minute. A node that stays unreachable
/// longer than that is left to expire the key by itself.
pub(crate) fn cleanup_window(ttl: Duration) -> Duration {
    ttl.min(MAX_CLEANUP_WINDOW)
}

/// Runs a release on the node; if the node fails it, runs it again later (backing off)
/// for up to `window`, so a node that was paused or unreachable while our acquisition
/// reached it still has our key removed once it answers again. Returns the first result.
pub(crate) fn release_with_retries(
    op: &Op<bool>,
    worker: &Worker<'_>,
    window: Duration,
) -> Result<bool, BackendError> {
    let first = op(worker.backend);
    worker.record(&first);
    if first.is_err() {
        let give_up = deadline(Instant::now(), window);
        retry_release(op.clone(), worker, 0, give_up);
    }
    first
}

pub(crate) fn retry_release(op: Op<bool>, worker: &Worker<'_>, attempt: u32, give_up: Instant) {
    let delay = node::MAX_BACKOFF.min(RETRY_FIRST.saturating_mul(1 << attempt.min(10)));
    if Instant::now() + delay > give_up {
        log::warn!(
            "redlock node {}: gave up releasing a key after {} attempts; it expires by its ttl",
            worker.addr(),
            attempt + 1
        );
        return;
    }
    worker.retry_later(
        delay,
        Box::new(move |w| {
            let r = op(w.backend);
            w.record(&r);
            if r.is_err() {
                retry_release(op, w, attempt + 1, give_up);
            }
        }),
    );
}

/// Starts releasing an acquisition: returns the release's fan-out and the nodes to send
/// it to now. A node that answered that another token holds the key needs nothing (it
/// counts as not deleted). A node still running the acquisition, or (for a granted lock)
/// yet to run it, releases right after it on the same worker (see [`acquire_on`]), so a
/// release never overtakes the acquisition it undoes.
pub(crate) fn begin_release(st: &mut CallState<Option<Acquired>>) -> (Arc<Call<bool>>, Vec<usize>) {
    let release = Arc::new(Call::new(st.slots.len()));
    let mut now = Vec::new();
    {
        let mut rs = release.lock();
        for (i, (slot, rslot)) in st.slots.iter_mut().zip(rs.slots.iter_mut()).enumerate() {
            match slot {
                Slot::Queued if st.won => *rslot = Slot::Running,
                Slot::Refused(_) => *rslot = Slot::Done(Ok(false)),
                Slot::Queued | Slot::Skipped => {
                    *slot = Slot::Skipped;
                    *rslot = Slot::Done(Ok(false));
                }
                Slot::Done(Ok(None)) => *rslot = Slot::Done(Ok(false)),
                Slot::Done(_) => now.push(i),
                // A granted lock's late node may hold the key: release it with the rest.
                // A failed attempt's caller releases behind the late command itself.
                Slot::Late(_) if st.won => now.push(i),
                Slot::Running | Slot::Late(_) => *rslot = Slot::Running,
            }
        }
    }
    st.then_release = Some(release.clone());
    (release, now)
}
