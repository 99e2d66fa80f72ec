//! Defect 4: each pool kept 3 helper threads (r2d2's own thread pool) that lived about
//! 30 s after the backend was dropped (1 000 backends created and dropped: 6 004 threads).
//! Each pool now has one helper thread, which ends with the pool: a dropped backend
//! leaves no thread behind within a second. Alone in its binary, so the thread count is its own.
//! Before the fix: `threads: 12 before, 612 a second after 200 backends were dropped`.

use std::thread;
use std::time::{Duration, Instant};

use lock_core::LockManager;
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn dropped_backends_leave_no_threads_behind() {
    let server = RedisServer::start();
    LockManager::new(RedisBackend::connect(&server.url()).unwrap())
        .lock(lock_core::conformance::fresh_name())
        .unwrap()
        .release()
        .unwrap();
    let before = threads();
    for _ in 0..200 {
        let backend = RedisBackend::builder(&server.url())
            .wake_ups(false)
            .connect()
            .unwrap();
        let mgr = LockManager::new(backend);
        mgr.lock(lock_core::conformance::fresh_name())
            .unwrap()
            .release()
            .unwrap();
    }
    let start = Instant::now();
    let mut after = threads();
    while after > before && start.elapsed() < Duration::from_secs(1) {
        thread::sleep(Duration::from_millis(20));
        after = threads();
    }
    assert!(
        after <= before,
        "threads: {before} before, {after} a second after 200 backends were dropped"
    );
}
