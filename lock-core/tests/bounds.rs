//! The thread-safety and trait bounds the public types promise.

use lock_core::{BackendError, LockBackend, LockError, LockManager, ManualClock};
use lock_memory::MemoryBackend;

fn send_sync<T: Send + Sync + 'static>() {}
fn clone<T: Clone>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn bounds() {
    send_sync::<LockManager>();
    clone::<LockManager>();
    send_sync::<MemoryBackend>();
    clone::<MemoryBackend>();
    send_sync::<ManualClock>();
    error::<LockError>();
    error::<BackendError>();
    // The trait is object-safe, and boxed, shared and borrowed backends are backends.
    let boxed: Box<dyn LockBackend> = Box::new(MemoryBackend::new());
    let _ = LockManager::new(boxed);
    let _ = LockManager::new(std::sync::Arc::new(MemoryBackend::new()));
    static STATIC: std::sync::LazyLock<MemoryBackend> =
        std::sync::LazyLock::new(MemoryBackend::new);
    let _ = LockManager::new(&*STATIC);
}
