//! Several worker threads contend for a few named jobs; each job runs once per round,
//! under its lock, by whichever worker gets it first.
//!
//! ```text
//! cargo run -p lock-redis --example jobs                          # memory backend
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p lock-redis --example jobs
//! ```

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockManager};
use lock_memory::MemoryBackend;
use lock_redis::RedisBackend;

const WORKERS: usize = 4;
const JOBS: [&str; 3] = ["job:invoices", "job:reports", "job:cleanup"];
const ROUNDS: usize = 3;

fn main() -> Result<(), LockError> {
    let mgr = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let backend = RedisBackend::connect(&url)?;
            println!("backend: redis at {}", backend.addr());
            LockManager::new(backend)
        }
        Err(_) => {
            println!("backend: memory (set REDIS_URL to use Redis)");
            LockManager::new(MemoryBackend::new())
        }
    };
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (mgr, ran) = (mgr.clone(), ran.clone());
                s.spawn(move || -> Result<(), LockError> {
                    for round in 0..ROUNDS {
                        for job in JOBS {
                            let name = format!("{job}:round-{round}");
                            // One attempt: if somebody else has this job, move on to the next.
                            let Some(guard) = mgr.try_lock(&name)? else {
                                continue;
                            };
                            if ran.lock().map(|r| r.contains(&name)).unwrap_or(true) {
                                continue; // already done this round
                            }
                            println!(
                                "worker {worker} runs {name} (fencing token {})",
                                guard.fencing_token()
                            );
                            std::thread::sleep(Duration::from_millis(20));
                            if let Ok(mut r) = ran.lock() {
                                r.push(name);
                            }
                            guard.release()?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or(Ok(())))
    })?;
    let ran = ran.lock().map(|r| r.len()).unwrap_or(0);
    println!("{ran} job runs, each exactly once");
    Ok(())
}
