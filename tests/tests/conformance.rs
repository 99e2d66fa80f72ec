//! The conformance suite on every backend: memory (manual and real clocks) and one real
//! `redis-server` started by the harness.

use lock_core::conformance::Harness;
use lock_core::ManualClock;
use lock_memory::MemoryBackend;
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;

lock_core::conformance_suite!(memory, || {
    let clock = ManualClock::new();
    Harness::new(MemoryBackend::with_clock(clock.clone())).with_clock(clock)
});

lock_core::conformance_suite!(redis, || {
    let server = RedisServer::shared();
    Harness::new(RedisBackend::connect(&server.url()).unwrap()).keep_alive(server)
});
