//! How much resident memory 1 000 000 distinct names cost once locked and released:
//! `cargo run --release -p lock-memory --example rss`. Free names should cost nothing.

use lock_core::{LockError, LockManager};
use lock_memory::MemoryBackend;

/// Resident set size in bytes, from `/proc/self/statm` (Linux); 0 elsewhere.
fn rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> Result<(), LockError> {
    let mgr = LockManager::new(MemoryBackend::new());
    let before = rss();
    for i in 0..1_000_000u32 {
        mgr.lock(format!("job:{i}"))?.release()?;
    }
    let after = rss();
    println!(
        "RSS growth for 1 000 000 distinct names locked and released: {:.1} MB ({before} -> {after} bytes)",
        (after.saturating_sub(before)) as f64 / 1e6
    );
    Ok(())
}
