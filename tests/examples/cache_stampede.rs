//! Cache stampede: many threads miss one cache key at once; one recomputes the value under
//! the lock, the others wait for it (`wait_unlocked`) and read what it wrote, or serve the
//! stale value while it works. It counts the recomputations in the store and prints them.
//!
//! ```text
//! cargo run -p lock-tests --example cache_stampede
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p lock-tests --example cache_stampede
//! ```

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{run_id, setup, Result, Store};
use lock_core::LockManager;

const THREADS: usize = 16;
/// How long computing the value takes: long enough for every thread to miss.
const COMPUTE: Duration = Duration::from_millis(300);

/// How a thread got its value.
#[derive(Clone, Copy)]
enum Served {
    Computed,
    Fresh,
    Stale,
}

/// Reads `key` through the cache; on a miss, one caller recomputes under the lock.
fn get(mgr: &LockManager, store: &Store, key: &str) -> Result<(String, Served)> {
    let (fresh, stale) = (format!("{key}:fresh"), format!("{key}:stale"));
    loop {
        if let Some(v) = store.read(&fresh)? {
            return Ok((v, Served::Fresh));
        }
        match mgr.try_lock(format!("{key}:recompute"))? {
            Some(guard) => {
                // Somebody may have finished between our miss and our lock.
                if let Some(v) = store.read(&fresh)? {
                    return Ok((v, Served::Fresh));
                }
                let n = store.incr(&format!("{key}:recomputations"))?;
                std::thread::sleep(COMPUTE);
                let value = format!("report #{n}");
                store.write(&fresh, &value)?;
                store.write(&stale, &value)?;
                guard.release()?;
                return Ok((value, Served::Computed));
            }
            None => {
                if let Some(v) = store.read(&stale)? {
                    return Ok((v, Served::Stale));
                }
                // Nothing to serve yet: wait for the one who computes, then read again.
                mgr.wait_unlocked(format!("{key}:recompute"), Some(Duration::from_secs(30)))?;
            }
        }
    }
}

/// `THREADS` threads ask for `key` at once; returns how each was served.
fn stampede(mgr: &LockManager, store: &Store, key: &str) -> Result<[usize; 3]> {
    let counts = [(); 3].map(|_| AtomicUsize::new(0));
    std::thread::scope(|s| -> Result<()> {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let (_, served) = get(mgr, store, key)?;
                    counts[served as usize].fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().unwrap_or_else(|_| Err("a thread panicked".into())))
    })?;
    Ok(counts.map(AtomicUsize::into_inner))
}

fn main() -> Result<()> {
    let (mgr, store) = setup()?;
    let key = format!("cache:{}:daily-report", run_id());

    // A cold cache: nothing to serve, so everybody but the one computing waits.
    let [computed, fresh, stale] = stampede(&mgr, &store, &key)?;
    let recomputed = store.count(&format!("{key}:recomputations"))?;
    println!(
        "cold cache: {THREADS} threads missed; {recomputed} recomputation(s); \
         {fresh} read the new value (waiting for it), {stale} served a stale one"
    );
    if recomputed != 1 || computed != 1 {
        return Err(format!("expected one recomputation, saw {recomputed}").into());
    }

    // The value expires; its stale copy stays: one recomputes, the rest serve the copy.
    store.delete(&format!("{key}:fresh"))?;
    let [computed, fresh, stale] = stampede(&mgr, &store, &key)?;
    let recomputed = store.count(&format!("{key}:recomputations"))? - 1;
    println!(
        "expired value: {THREADS} threads missed; {recomputed} recomputation(s); \
         {stale} served the stale value meanwhile, {fresh} read the new one"
    );
    if recomputed != 1 || computed != 1 {
        return Err(format!("expected one recomputation, saw {recomputed}").into());
    }
    Ok(())
}
