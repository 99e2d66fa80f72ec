//! The conformance suite on every backend: memory (manual clock), one real `redis-server`
//! and Redlock over three, all started by the harness. Each participant that stands for
//! another process gets its own backend instance (the harness's factory), so on Redis
//! every contended case is answered by the server, not by one client's memory. Every
//! case runs a second time through `Arc<dyn LockBackend>` (`…::through_dyn`).

use lock_core::conformance::{Capabilities, Harness};
use lock_core::ManualClock;
use lock_memory::MemoryBackend;
use lock_redis::RedisBackend;
use lock_redlock::RedlockBackend;
use lock_tests::harness::{cluster, RedisServer};
use std::sync::{Arc, Mutex, Weak};

lock_core::conformance_suite!(
    memory,
    || {
        let clock = ManualClock::new();
        let store = MemoryBackend::with_clock(clock.clone());
        Harness::from_factory(move || store.clone()).with_clock(clock)
    },
    through_dyn
);

lock_core::conformance_suite!(
    redis,
    || {
        let server = RedisServer::shared();
        let url = server.url();
        Harness::from_factory(move || RedisBackend::connect(&url).unwrap()).keep_alive(server)
    },
    through_dyn
);

/// Three Redis masters shared by the Redlock cases of this binary that run at the same
/// time (every case uses fresh names); they stop when the last case is done.
fn shared_nodes() -> Arc<Vec<RedisServer>> {
    static SHARED: Mutex<Weak<Vec<RedisServer>>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(nodes) = slot.upgrade() {
        return nodes;
    }
    let nodes = Arc::new(cluster(3));
    *slot = Arc::downgrade(&nodes);
    nodes
}

lock_core::conformance_suite!(
    redlock3,
    || {
        let nodes = shared_nodes();
        let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
        // The default node timeout (50 ms) is for servers on machines of their own; here
        // three servers and the tests share two cores.
        Harness::from_factory(move || {
            RedlockBackend::builder(&urls)
                .node_timeout(std::time::Duration::from_millis(500))
                .build()
                .unwrap()
        })
        .with_capabilities(Capabilities::all().strict_fencing(false))
        .keep_alive(nodes)
    },
    through_dyn
);
