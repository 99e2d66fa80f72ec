//! One operation sent to every node at once: each node's answer lands in its slot, and
//! the caller waits until the answers decide the outcome or its deadline passes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::BackendError;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::math::Tally;
use crate::node::Node;

/// Where one node stands in one fan-out.
pub(crate) enum Slot<T> {
    /// Waiting for a worker.
    Queued,
    /// A worker is running it: the command may be on the wire.
    Running,
    /// The node answered (or failed).
    Done(Result<T, BackendError>),
    /// Never sent: the outcome was decided before a worker got to it.
    Skipped,
    /// Never sent: the node refused it (down, or overloaded). Counts as failed.
    Refused(BackendError),
    /// Sent by the caller, who stopped waiting for the reply after this long (the node
    /// timeout, or the grace after a decision). Counts as failed; the operation may still
    /// take effect on the node.
    Late(Duration),
}

/// When a worker may drop a node's part instead of sending it.
#[derive(Clone, Copy)]
pub(crate) enum Skip {
    /// Always send it (releases: cleanup must be issued).
    Never,
    /// Once the caller has decided (reads: nobody wants the answer).
    IfClosed,
    /// Once it could no longer answer within the node timeout, i.e. it sat in the queue
    /// of a node that is slow or not answering. Before that it is sent even if the caller
    /// has decided, so a healthy node that was merely a little slower still takes part
    /// (holds the lock too, keeps its fencing counter in step).
    IfLate(Instant),
}

/// A fan-out's shared state, between the caller and the node workers.
pub(crate) struct Call<T> {
    state: Mutex<CallState<T>>,
    answered: Condvar,
}

pub(crate) struct CallState<T> {
    pub(crate) slots: Vec<Slot<T>>,
    /// The caller has decided; answers from now on are late and change no outcome.
    pub(crate) closed: bool,
    /// For acquisitions only: the release that follows. Once set, a worker that finishes
    /// this node's acquisition releases on the node right away, so a release never
    /// overtakes the acquisition it undoes.
    pub(crate) then_release: Option<Arc<Call<bool>>>,
    /// For acquisitions only: the lock was granted. Its release then still sends a
    /// queued acquisition (and the release after it), so a healthy node that was merely
    /// slower than the quorum takes part in every acquisition and its fencing counter
    /// stays in step; after a failed attempt a queued acquisition is simply dropped.
    pub(crate) won: bool,
}

/// The state once the caller stopped waiting, still locked.
pub(crate) struct Settled<'a, T> {
    pub(crate) state: MutexGuard<'a, CallState<T>>,
    /// The wait, if it ran out before the answers decided it; pending nodes then count
    /// as timed out.
    pub(crate) timed_out: Option<Duration>,
}

impl<T> Call<T> {
    pub(crate) fn new(n: usize) -> Self {
        Call {
            state: Mutex::new(CallState {
                slots: (0..n).map(|_| Slot::Queued).collect(),
                closed: false,
                then_release: None,
                won: false,
            }),
            answered: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, CallState<T>> {
        self.state.lock()
    }

    /// A worker is about to run node `i`'s part: `Ok` to send it. `Err` means drop it (a
    /// failed acquisition's release has taken its place, or `skip` says it is no longer
    /// worth sending), with the release that then must be told this node deleted nothing.
    pub(crate) fn start(&self, i: usize, skip: Skip) -> Result<(), Option<Arc<Call<bool>>>> {
        let mut st = self.state.lock();
        let drop_it = (st.then_release.is_some() && !st.won)
            || match skip {
                Skip::Never => false,
                Skip::IfClosed => st.closed,
                Skip::IfLate(at) => Instant::now() >= at,
            };
        match st.slots.get_mut(i) {
            Some(slot @ Slot::Queued) if drop_it => {
                *slot = Slot::Skipped;
                Err(st.then_release.clone())
            }
            Some(slot @ Slot::Queued) => {
                *slot = Slot::Running;
                Ok(())
            }
            _ => Err(None),
        }
    }

    /// Marks node `i`'s part as sent by the caller itself (no worker runs it).
    pub(crate) fn sent_directly(&self, i: usize) {
        if let Some(slot @ Slot::Queued) = self.state.lock().slots.get_mut(i) {
            *slot = Slot::Running;
        }
    }

    /// Records that the caller stopped waiting for node `i` after `waited`.
    pub(crate) fn late(&self, i: usize, waited: Duration) {
        if let Some(slot @ Slot::Running) = self.state.lock().slots.get_mut(i) {
            *slot = Slot::Late(waited);
        }
    }

    /// Records that node `i` refused its part without sending anything.
    pub(crate) fn refuse(&self, i: usize, error: BackendError) {
        let mut st = self.state.lock();
        if let Some(slot @ Slot::Queued) = st.slots.get_mut(i) {
            *slot = Slot::Refused(error);
        }
        drop(st);
        self.answered.notify_all();
    }

    /// Records node `i`'s answer and wakes the caller. Returns the release that must
    /// follow on this node, if one was asked for meanwhile.
    pub(crate) fn finish(
        &self,
        i: usize,
        answer: Result<T, BackendError>,
    ) -> Option<Arc<Call<bool>>> {
        let mut st = self.state.lock();
        if let Some(slot) = st.slots.get_mut(i) {
            *slot = Slot::Done(answer);
        }
        let then = st.then_release.clone();
        drop(st);
        self.answered.notify_all();
        then
    }

    /// Waits until `decided` says the answers so far settle it, or until `wait` after
    /// `start` has passed; then closes the call, so later answers are ignored.
    pub(crate) fn settle(
        &self,
        start: Instant,
        wait: Duration,
        decided: impl Fn(&CallState<T>) -> bool,
    ) -> Settled<'_, T> {
        let deadline = start.checked_add(wait).unwrap_or(start);
        let mut state = self.state.lock();
        let mut timed_out = None;
        while !decided(&state) {
            if self.answered.wait_until(&mut state, deadline).timed_out() {
                timed_out = (!decided(&state)).then_some(wait);
                break;
            }
        }
        state.closed = true;
        Settled { state, timed_out }
    }
}

impl<U: Copy> CallState<Option<U>> {
    /// The answers that carried a value (acquired, extended, held).
    pub(crate) fn values(&self) -> impl Iterator<Item = U> + '_ {
        self.slots.iter().filter_map(|s| match s {
            Slot::Done(Ok(Some(v))) => Some(*v),
            _ => None,
        })
    }
}

impl<T> CallState<T> {
    /// Counts the answers: `yes` says which successful answers count for the quorum.
    pub(crate) fn tally(&self, yes: impl Fn(&T) -> bool) -> Tally {
        let mut t = Tally::default();
        for slot in &self.slots {
            match slot {
                Slot::Done(Ok(v)) if yes(v) => t.yes += 1,
                Slot::Done(Ok(_)) => t.no += 1,
                // Never sent, so no answer: a job dropped as late counts as timed out.
                Slot::Done(Err(_)) | Slot::Refused(_) | Slot::Skipped | Slot::Late(_) => {
                    t.failed += 1
                }
                Slot::Queued | Slot::Running => t.pending += 1,
            }
        }
        t
    }

    /// Every node's outcome for an error message: `node: outcome; ...`. Addresses carry
    /// no credentials.
    /// `timed_out` is the wait, if it ran out before the answers decided it: pending
    /// nodes then show as timed out, otherwise as not awaited.
    pub(crate) fn report(
        &self,
        nodes: &[Node],
        timed_out: Option<Duration>,
        label: impl Fn(&T) -> &'static str,
    ) -> String {
        let mut out = String::new();
        for (i, (node, slot)) in nodes.iter().zip(&self.slots).enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let _ = match slot {
                Slot::Done(Ok(v)) => write!(out, "{}: {}", node.addr, label(v)),
                Slot::Done(Err(e)) => {
                    write!(out, "{}: error ({})", node.addr, crate::report::chain(e))
                }
                Slot::Queued | Slot::Running => match timed_out {
                    Some(waited) => {
                        write!(out, "{}: timeout (no answer within {waited:?})", node.addr)
                    }
                    None => write!(out, "{}: not awaited", node.addr),
                },
                Slot::Skipped => write!(out, "{}: timeout (still queued)", node.addr),
                Slot::Late(waited) => {
                    write!(out, "{}: timeout (no answer within {waited:?})", node.addr)
                }
                Slot::Refused(e) => {
                    write!(out, "{}: not sent ({})", node.addr, crate::report::chain(e))
                }
            };
        }
        out
    }
}
