//! Test doubles for any backend, re-exported from [`lock_core::testing`]: [`Faulty`]
//! wraps a backend (a [`MemoryBackend`](crate::MemoryBackend), say) and adds latency,
//! failures, lost replies, panics, or deliberate contract breaches.

pub use lock_core::testing::*;
