//! Blocking distributed locks with pluggable backends.
//!
//! `lock-core` holds what every backend shares: the small [`LockBackend`] trait, the
//! [`LockManager`] that waits, retries and keeps books, the RAII [`LockGuard`], and the one
//! error type [`LockError`]. Pick a backend crate: `lock-memory` for tests and single
//! processes, `lock-redis` for one Redis server.
//!
//! ```
//! use lock_core::{LockError, LockManager, LockOptions};
//! use lock_memory::MemoryBackend;
//! use std::time::Duration;
//!
//! fn main() -> Result<(), LockError> {
//!     let mgr = LockManager::new(MemoryBackend::new());
//!
//!     // Waits (30 s at most by default) and returns a guard that releases on drop.
//!     let guard = mgr.lock("job:1")?;
//!     assert!(mgr.is_locked("job:1")?);
//!
//!     // Another taker gets nothing while it is held...
//!     let other = mgr.clone();
//!     let attempt = std::thread::spawn(move || other.try_lock("job:1").map(|g| g.is_some()));
//!     assert!(!attempt.join().unwrap()?);
//!
//!     // ...and the same thread asking again is told at once instead of deadlocking.
//!     assert!(matches!(mgr.try_lock("job:1"), Err(LockError::WouldDeadlock { .. })));
//!
//!     guard.extend(Duration::from_secs(5))?;
//!     guard.release()?;
//!
//!     // Per-call options, and a closure form.
//!     let opts = LockOptions::new().ttl(Duration::from_secs(60)).wait(None);
//!     let _g = mgr.lock_with("job:2", opts)?;
//!     let answer = mgr.with_lock("job:3", || 6 * 7)?;
//!     assert_eq!(answer, 42);
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees and limits
//!
//! - **Mutual exclusion holds only while the TTL runs.** A lock is a lease: if the work
//!   outlives the TTL (a long GC-like pause, a stalled disk, a slow job), the lock expires
//!   and somebody else may take it while the first holder still runs. Choose a TTL well
//!   above the work's worst case, or extend/renew it, and check
//!   [`LockGuard::remaining`] before acting.
//! - **Clocks.** Validity is measured on the local monotonic clock, starting before the
//!   acquiring request was sent, so it is never overstated by network delay. The server's
//!   TTL runs on the server's clock; a server clock that runs fast shortens the real lease.
//! - **Fencing tokens** ([`LockGuard::fencing_token`]) make a stale holder harmless where the
//!   protected resource can check them: it remembers the largest token it has accepted and
//!   refuses writes with a smaller one.
//! - **Tokens** are 128 random bits per acquisition; release and extend compare them
//!   atomically on the backend, so nobody releases or extends a lock that is not theirs.
//! - **Same-thread safety.** The manager remembers what each thread holds; a second
//!   request for the same name fails with [`LockError::WouldDeadlock`] unless the caller
//!   asks for a re-entrant hold ([`LockOptions::reentrant`]).
//! - **A hold's life** is one state machine (held, cap reached, lost, released): a guard
//!   is never handed out for a hold that is expired or known lost, and once a hold is
//!   reported lost it stays lost. The lost-lock callback runs on the renewal thread only
//!   (see [`LostCallback`]).
//! - **Cancellable waits.** A [`CancelHandle`] passed through [`LockOptions::cancel`]
//!   stops a blocked wait from another thread at once ([`LockError::Cancelled`]).
//! - **Guards that move.** [`LockGuard`] stays on its thread; [`LockGuard::into_send`]
//!   makes a [`SendGuard`] that can be released, extended or renewed on another.
//! - **Backend authors** run the `conformance` suite (feature `conformance`) and use the
//!   [`testing`] doubles.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backend;
mod cancel;
mod clock;
mod deadline;
mod error;
mod guard;
mod hold;
mod loss;
mod manager;
mod name;
mod options;
mod records;
mod renew;
mod stats;
pub mod testing;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backend::{Acquired, Extend, LockBackend};
pub use cancel::{CancelHandle, CancelRegistration};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BackendError, BackendErrorKind, LockError};
pub use guard::{LockGuard, SendGuard};
pub use loss::{LossReason, LostCallback};
pub use manager::{LockManager, LockManagerBuilder, MultiGuard};
pub use name::{LockName, Token, MAX_NAME_LEN};
pub use options::{
    LockOptions, DEFAULT_PREFIX, DEFAULT_RETRY_MAX, DEFAULT_RETRY_MIN, DEFAULT_TTL, DEFAULT_WAIT,
    MAX_PREFIX_LEN, MAX_TTL, MAX_WAIT, MIN_TTL,
};
pub use stats::LockStats;
