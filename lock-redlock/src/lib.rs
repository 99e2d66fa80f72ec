//! Redlock backend (in progress).
