//! Test support for the lock workspace: real redis-server processes on free loopback ports.

pub mod harness;
pub mod proxy;
