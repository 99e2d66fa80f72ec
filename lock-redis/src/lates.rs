//! Acquisitions whose reply did not come in time, each kept with the connection it went
//! out on, so that the release that undoes it (the manager's cleanup after a failed
//! acquire) is written behind it on that connection. Redis runs one connection's commands
//! in order, so the release can never run before the late acquire and leave its key for a
//! whole TTL; on another pooled connection it could (after a server stall, both wait in
//! the server's buffers and either may run first).

use std::time::{Duration, Instant};

use lock_core::Token;
use parking_lot::Mutex;

use crate::wire::Conn;

/// At most this many late acquisitions are kept; beyond, the oldest gives its connection
/// back to the pool (a caller that never releases must not hold the pool's connections).
const MAX_KEPT: usize = 32;

#[derive(Default)]
pub(crate) struct LateAcquires {
    kept: Mutex<Vec<Kept>>,
}

struct Kept {
    key: Vec<u8>,
    token: Token,
    conn: Conn,
    /// After this, nobody is expected to undo it any more: the connection goes back.
    until: Instant,
}

impl LateAcquires {
    /// Keeps `conn`, on which the acquisition of `key` by `token` for `ttl` is late, for
    /// the release that undoes it; for at most `ttl` (the manager releases right away).
    pub(crate) fn keep(&self, key: &[u8], token: &Token, conn: Conn, ttl: Duration) {
        let now = Instant::now();
        let mut kept = self.kept.lock();
        kept.retain(|k| k.until > now);
        if kept.len() >= MAX_KEPT {
            kept.remove(0);
        }
        kept.push(Kept {
            key: key.to_vec(),
            token: token.clone(),
            conn,
            until: now + ttl,
        });
    }

    /// Gives back the connections whose time is up.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let mut kept = self.kept.lock();
        if !kept.is_empty() {
            kept.retain(|k| k.until > now);
        }
    }

    /// The connection of a late acquisition of `key` by `token`, if one is kept.
    pub(crate) fn take(&self, key: &[u8], token: &Token) -> Option<Conn> {
        let mut kept = self.kept.lock();
        let i = kept
            .iter()
            .position(|k| k.key == key && k.token == *token)?;
        Some(kept.swap_remove(i).conn)
    }
}
