//! The fan-out driver: an operation sent to every node (directly on an idle connection, or
//! through the node's workers), its replies read until they decide the call, and the
//! late ones handled behind it.

use super::*;

impl Inner {
    pub(crate) fn n(&self) -> usize {
        self.nodes.len()
    }

    /// Sends `op` to the nodes in `targets` as their part of `call`: a node we connected
    /// to ourselves that has an idle connection gets the command written by this thread
    /// at once (returned, to be read with [`read_all`](Self::read_all)); any other node
    /// (or one whose connections are all busy, or not open yet) gets a job on its workers.
    /// A node that refuses (overloaded, or down when `gated`) fails at once, having been
    /// sent nothing.
    pub(crate) fn dispatch<T: Send + 'static>(
        &self,
        call: &Arc<Call<T>>,
        targets: impl IntoIterator<Item = usize>,
        (skip, gated): (Skip, bool),
        op: &Op<T>,
        direct: Direct<'_, T>,
    ) -> Flights<T> {
        let mut flights = Vec::new();
        for i in targets {
            let Some(node) = self.nodes.get(i) else {
                continue;
            };
            if gated {
                if let Err(e) = node.admit() {
                    call.refuse(i, e);
                    continue;
                }
            }
            if let Some(idle) = node.redis.as_ref().and_then(|r| r.idle()) {
                call.sent_directly(i);
                flights.push((i, direct(idle)));
                continue;
            }
            let (c, op) = (call.clone(), op.clone());
            let job: Job = Box::new(move |worker| {
                if c.start(i, skip).is_ok() {
                    let answer = op(worker.backend);
                    worker.record(&answer);
                    c.finish(i, answer);
                }
            });
            if let Err(e) = node.submit(job, false) {
                call.refuse(i, e);
            }
        }
        flights
    }

    /// Reads the replies of `flights` into `call`, in order, each until `late` at most,
    /// until `decided` says the answers settle it. Returns the operations whose replies
    /// did not come in time (they may still take effect on their nodes) and the flights
    /// not read yet.
    pub(crate) fn read_until<T>(
        &self,
        call: &Call<T>,
        flights: Flights<T>,
        (start, late): (Instant, Instant),
        decided: impl Fn(&CallState<T>) -> bool,
    ) -> (Lates, Flights<T>)
    where
        InFlight<T>: Finish<T>,
    {
        let mut lates = Vec::new();
        let mut flights = flights;
        flights.sort_by_cached_key(|(i, _)| self.nodes.get(*i).map(Node::rank));
        let mut flights = flights.into_iter();
        for (i, flight) in flights.by_ref() {
            self.read_one(call, (i, flight), (start, late, late), &mut lates);
            if decided(&call.lock()) {
                break;
            }
        }
        (lates, flights.collect())
    }

    /// Reads the replies of `rest` after a decision: they have usually arrived together
    /// with the deciding ones. A node that is down or was more than [`GRACE`] slower than
    /// this call's decision last time must not hold up a decided call: its reply is
    /// handed to one of its workers (the job `behind` makes), which reads it until `late`
    /// and acts on it (a granted acquisition the call gave up on is released behind it,
    /// and so on).
    /// The caller never leaves a reply unread on a connection it gives back, so the
    /// node's next operation does not wait behind it. Only if the node's queue is full
    /// does the caller read it itself, for [`GRACE`] at most; a reply cut off then is
    /// late (see `Lates`).
    pub(crate) fn read_rest<T: Send + 'static>(
        &self,
        call: &Call<T>,
        rest: Flights<T>,
        (start, late): (Instant, Instant),
        lates: &mut Lates,
        behind: Behind<'_, T>,
    ) where
        InFlight<T>: Finish<T>,
    {
        let now = Instant::now();
        let grace = late.min(deadline(now, GRACE));
        let waited = now.saturating_duration_since(start);
        for (i, flight) in rest {
            let Some(node) = self.nodes.get(i) else {
                continue;
            };
            // A node that took at most GRACE longer last time than this call has waited so
            // far has most likely answered already (the last node read always took a
            // little longer): it is read here, without cutting its socket's timeout (two
            // system calls saved), rather than woken a worker for.
            let (down, latency) = node.rank();
            if !down && latency <= waited.saturating_add(GRACE) {
                self.read_one(call, (i, flight), (start, late, late), lates);
                continue;
            }
            let handed: Handed<T> = Arc::new(Mutex::new(Some(flight)));
            if node.submit(behind(i, handed.clone()), false).is_err() {
                if let Some(flight) = handed.lock().take() {
                    self.read_one(call, (i, flight), (start, late, grace), lates);
                }
            }
        }
    }

    /// Reads one reply into `call`, for no longer than `until` (`late` is the whole wait:
    /// only a node that used it up counts as failing).
    pub(crate) fn read_one<T>(
        &self,
        call: &Call<T>,
        (i, flight): (usize, InFlight<T>),
        (start, late, until): (Instant, Instant, Instant),
        lates: &mut Lates,
    ) where
        InFlight<T>: Finish<T>,
    {
        let Some(node) = self.nodes.get(i) else {
            return;
        };
        match flight.finish(Some(until)) {
            Outcome::Answered(answer) => {
                node.record(answer.is_ok());
                node.record_latency(start.elapsed());
                call.finish(i, answer);
            }
            Outcome::Late(l) => {
                node.record_latency(start.elapsed());
                // Only a node that used up the whole wait counts as failing; one cut short
                // after the decision is merely slower than the others.
                if until >= late {
                    node.record(false);
                }
                call.late(i, until.saturating_duration_since(start));
                lates.push((i, l));
            }
        }
    }

    /// Reads every reply of `flights` into `call`: until `decided`, then as
    /// [`read_rest`](Self::read_rest) does, with `behind`. Late replies are skipped by
    /// their connections; nothing else needs doing about them.
    pub(crate) fn read_all<T: Send + 'static>(
        &self,
        call: &Call<T>,
        flights: Flights<T>,
        times: (Instant, Instant),
        decided: impl Fn(&CallState<T>) -> bool,
        behind: Behind<'_, T>,
    ) where
        InFlight<T>: Finish<T>,
    {
        let (mut lates, rest) = self.read_until(call, flights, times, decided);
        self.read_rest(call, rest, times, &mut lates, behind);
    }

    /// Sends `op` to every node, waits until `decided` or the node timeout, and hands the
    /// answers to `then` with whether the wait timed out and how long it took.
    pub(crate) fn fan_out<T: Send + 'static, R>(
        &self,
        (op, direct): (Op<T>, Direct<'_, T>),
        skip: Skip,
        gated: bool,
        decided: impl Fn(&CallState<T>) -> bool,
        then: impl FnOnce(&CallState<T>, Option<Duration>, Duration) -> R,
    ) -> R
    where
        InFlight<T>: Finish<T>,
    {
        let start = Instant::now();
        let call = Arc::new(Call::new(self.n()));
        let flights = self.dispatch(&call, 0..self.n(), (skip, gated), &op, direct);
        let late = deadline(start, self.node_timeout);
        let behind = |i, handed: Handed<T>| -> Job {
            let c = call.clone();
            Box::new(move |w| {
                if let Some(outcome) = read_handed(&handed, (start, late), w) {
                    c.finish(i, outcome.into_result());
                }
            })
        };
        self.read_all(&call, flights, (start, late), &decided, &behind);
        let settled = call.settle(start, self.node_timeout, decided);
        then(&settled.state, settled.timed_out, start.elapsed())
    }

    /// Sends the release `op` to the nodes in `targets` as their part of `release`; each
    /// is retried for `window` if the node fails it (see [`release_with_retries`]). With
    /// `wait`, the nodes we talk to directly are read here until the answers decide the
    /// release (or `wait` runs out); without, their replies are left to their workers.
    pub(crate) fn release_on(
        &self,
        release: &Arc<Call<bool>>,
        targets: impl IntoIterator<Item = usize>,
        hold: &Arc<Hold>,
        wait: Option<(Instant, Duration)>,
    ) {
        let window = cleanup_window(hold.ttl);
        let op = hold.release_op();
        let mut flights = Vec::new();
        for i in targets {
            let Some(node) = self.nodes.get(i) else {
                continue;
            };
            if wait.is_some() {
                let late = {
                    let mut lates = hold.lates.lock();
                    let at = lates.iter().position(|(n, _)| *n == i);
                    at.map(|at| lates.swap_remove(at).1)
                };
                let flight = match late {
                    Some(late) => Some(late.start_release(&hold.key, &hold.token)),
                    None => node
                        .redis
                        .as_ref()
                        .and_then(|r| r.idle())
                        .map(|idle| idle.release(&hold.key, &hold.token)),
                };
                if let Some(flight) = flight {
                    release.sent_directly(i);
                    flights.push((i, flight));
                    continue;
                }
            }
            let (c, op) = (release.clone(), op.clone());
            let job: Job = Box::new(move |worker| {
                if c.start(i, Skip::Never).is_ok() {
                    let answer = release_with_retries(&op, worker, window);
                    c.finish(i, answer);
                }
            });
            if let Err(e) = node.submit(job, false) {
                log::warn!("redlock release not sent, the key expires by its ttl: {e}");
                release.refuse(i, e);
            }
        }
        let Some((start, wait)) = wait else {
            return;
        };
        let q = self.quorum;
        let decided = |st: &CallState<bool>| st.tally(|d| *d).owned(q).is_some();
        let direct: Vec<usize> = flights.iter().map(|(i, _)| *i).collect();
        let late = deadline(start, wait);
        // A reply read behind the call that failed is retried like the others below.
        let behind = |i, handed: Handed<bool>| -> Job {
            let (c, op) = (release.clone(), op.clone());
            Box::new(move |w| {
                if let Some(outcome) = read_handed(&handed, (start, late), w) {
                    let answer = outcome.into_result();
                    if answer.is_err() {
                        retry_release(op, w, 0, deadline(Instant::now(), window));
                    }
                    c.finish(i, answer);
                }
            })
        };
        self.read_all(release, flights, (start, late), decided, &behind);
        // A node that failed to answer may still hold our key: its workers ask again.
        let failed: Vec<usize> = {
            let st = release.lock();
            direct
                .into_iter()
                .filter(|&i| match st.slots.get(i) {
                    Some(Slot::Done(Err(_))) => true,
                    // Cut off after the decision, the node was only slower: its release
                    // is on the wire and needs no retry.
                    Some(Slot::Late(waited)) => *waited >= wait,
                    _ => false,
                })
                .collect()
        };
        for i in failed {
            self.retry_later(i, op.clone(), window);
        }
    }

    /// Has node `i`'s workers retry the release `op`, which failed once, for `window`.
    pub(crate) fn retry_later(&self, i: usize, op: Op<bool>, window: Duration) {
        let give_up = deadline(Instant::now(), window);
        let job: Job = Box::new(move |worker| retry_release(op, worker, 0, give_up));
        if let Err(e) = self.nodes[i].submit(job, false) {
            log::warn!("redlock release not retried, the key expires by its ttl: {e}");
        }
    }

    /// After a failed attempt, releases on each node in `lates` on the connection its
    /// acquisition went out on, so the node runs the release after it; on the node's
    /// workers, as part of `release`.
    pub(crate) fn release_behind(&self, release: &Arc<Call<bool>>, lates: Lates, hold: &Arc<Hold>) {
        let window = cleanup_window(hold.ttl);
        for (i, late) in lates {
            let (c, h) = (release.clone(), hold.clone());
            let job: Job = Box::new(move |worker| {
                c.finish(i, release_late(&h, late, worker, window));
            });
            if let Err(e) = self.nodes[i].submit(job, false) {
                log::warn!("redlock release not sent, the key expires by its ttl: {e}");
                release.refuse(i, e);
            }
        }
    }

    /// An error naming every node's outcome.
    pub(crate) fn failure<T>(
        &self,
        what: &str,
        st: &CallState<T>,
        yes: usize,
        need: usize,
        timed_out: Option<Duration>,
        label: impl Fn(&T) -> &'static str,
    ) -> BackendError {
        quorum_error(format!(
            "{what}: {yes} of {} nodes, {need} needed: {}",
            self.n(),
            st.report(&self.nodes, timed_out, label)
        ))
    }
}

/// On a node's worker: reads a reply handed over after the decision (see
/// [`Inner::read_rest`]) until `late`, noting how the node did. `None` if the caller
/// took it back.
pub(crate) fn read_handed<T>(
    handed: &Handed<T>,
    (start, late): (Instant, Instant),
    worker: &Worker<'_>,
) -> Option<Outcome<T>>
where
    InFlight<T>: Finish<T>,
{
    let flight = handed.lock().take()?;
    let outcome = flight.finish(Some(late));
    worker.record_latency(start.elapsed());
    // The worker waits the whole wait: a reply late for it counts as failing.
    worker.record_answered(matches!(outcome, Outcome::Answered(Ok(_))));
    Some(outcome)
}
