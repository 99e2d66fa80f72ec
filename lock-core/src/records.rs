//! The current thread's records of what it holds, so that asking again for a held lock
//! fails at once (or nests, when asked) instead of waiting on itself.
//!
//! A record points at its hold weakly: it never keeps a hold, its manager or its backend
//! alive, and a record whose hold is gone, lost or expired (a guard that was
//! `mem::forget`-ten, say) is dropped when met instead of blocking the thread.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use crate::hold::Hold;
use crate::loss::LossReason;
use crate::name::Key;

struct Record {
    hold: Weak<Hold>,
    /// How many guards of this thread share the hold (1 + nested guards).
    depth: usize,
}

thread_local! {
    /// What this thread holds. A thread holds few locks at once, so a short vector
    /// searched by (manager id, key) beats a hash map: no key copies, no hashing.
    static HELD: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
}

/// What the records say about a request for `key` through manager `mgr`.
pub(crate) enum Found {
    /// This thread does not hold it (or its record was stale and is gone now).
    Nothing,
    /// This thread holds it and asked to nest: the hold, its depth already counted.
    Nested(Arc<Hold>),
    /// This thread holds it and did not ask to nest.
    WouldDeadlock,
    /// This thread held it, but the hold is lost or expired; the record is gone now.
    Lost(LossReason),
}

/// Looks `key` up, dropping stale records on the way.
pub(crate) fn find(mgr: u64, key: &Key, reentrant: bool) -> Found {
    HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if held.is_empty() {
            return Found::Nothing;
        }
        let mut found = Found::Nothing;
        let mut stale = Vec::new();
        held.retain_mut(|rec| {
            let Some(hold) = rec.hold.upgrade() else {
                return false;
            };
            if hold.ctx.id != mgr || hold.key() != key.as_bytes() {
                return true;
            }
            let keep = match hold.check() {
                Err(reason) => {
                    if reentrant {
                        found = Found::Lost(reason);
                    }
                    false
                }
                Ok(()) if reentrant => {
                    rec.depth += 1;
                    hold.add_guard();
                    found = Found::Nested(hold.clone());
                    true
                }
                Ok(()) => {
                    found = Found::WouldDeadlock;
                    true
                }
            };
            // Dropped after the borrow ends: a hold's drop may run arbitrary code.
            stale.push(hold);
            keep
        });
        drop(held);
        drop(stale);
        found
    })
    .unwrap_or(Found::Nothing)
}

/// Records a new hold of this thread.
#[inline]
pub(crate) fn push(hold: &Arc<Hold>) {
    let _ = HELD.try_with(|held| {
        held.borrow_mut().push(Record {
            hold: Arc::downgrade(hold),
            depth: 1,
        })
    });
}

/// A guard of `hold` leaves this thread (dropped, released, or made `Send`): the record
/// goes with the thread's last guard of the hold.
#[inline]
pub(crate) fn leave(hold: &Arc<Hold>) {
    let _ = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        let Some(i) = held
            .iter()
            .position(|r| std::ptr::eq(r.hold.as_ptr(), Arc::as_ptr(hold)))
        else {
            return;
        };
        held[i].depth -= 1;
        if held[i].depth == 0 {
            held.swap_remove(i);
        }
    });
}
