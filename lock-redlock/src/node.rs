//! One node: its backend, and the persistent worker threads that run operations on it so
//! a blocking caller can talk to every node at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use lock_core::{BackendError, BackendErrorKind, LockBackend};
use parking_lot::Mutex;

/// Work for one node, run on one of its workers.
pub(crate) type Job = Box<dyn FnOnce(&dyn LockBackend) + Send>;

/// A node and the queue of its workers. Dropping the last handle closes the queue; the
/// workers finish what is queued (cleanup releases among it) and exit.
pub(crate) struct Node {
    /// `host:port/db` or the label the caller gave; never a password.
    pub(crate) addr: String,
    pub(crate) backend: Arc<dyn LockBackend>,
    queue: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl Node {
    /// Starts `workers` threads for `backend`.
    pub(crate) fn start(
        index: usize,
        addr: String,
        backend: Arc<dyn LockBackend>,
        workers: usize,
        max_queued: usize,
    ) -> Result<Node, BackendError> {
        let (queue, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        for w in 0..workers.max(1) {
            let (rx, queued, backend) = (rx.clone(), queued.clone(), backend.clone());
            thread::Builder::new()
                .name(format!("redlock-n{index}-w{w}"))
                .spawn(move || work(&rx, &queued, &*backend))
                .map_err(|e| {
                    BackendError::new(
                        BackendErrorKind::Other,
                        format!("cannot start a worker thread for node {addr}: {e}"),
                    )
                    .with_source(e)
                })?;
        }
        Ok(Node {
            addr,
            backend,
            queue,
            queued,
            max_queued,
        })
    }

    /// Queues `job`. Refuses it if the node is overloaded (so many operations queued
    /// that a new one could not run within any sensible timeout) or its workers are gone;
    /// the caller then counts the node as failed, knowing nothing was sent to it.
    pub(crate) fn submit(&self, job: Job) -> Result<(), BackendError> {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let msg = format!(
                "node {} is overloaded: {} operations already queued",
                self.addr, self.max_queued
            );
            return Err(BackendError::new(BackendErrorKind::Timeout, msg));
        }
        self.queue.send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let msg = format!("node {}: worker threads have stopped", self.addr);
            BackendError::new(BackendErrorKind::Other, msg)
        })
    }
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>, queued: &AtomicUsize, backend: &dyn LockBackend) {
    loop {
        // The lock is only held while waiting for the next job, never while running one.
        let next = rx.lock().recv();
        let Ok(job) = next else { return };
        queued.fetch_sub(1, Ordering::SeqCst);
        // A panicking backend must not take the worker with it; the caller of the lost job
        // sees no answer and counts the node as timed out.
        if catch_unwind(AssertUnwindSafe(|| job(backend))).is_err() {
            log::error!("a redlock node operation panicked; the node counts as timed out");
        }
    }
}
