//! Cron once: the same crontab entry fires on several machines at the same minute, and
//! the job runs on one of them. Each takes the lock for this period's slot with
//! `try_lock` semantics (one attempt) and a TTL as long as the period, and never releases
//! it: the lock itself is the record that this slot's job started, and it expires by
//! itself when the period is over. Here several threads stand for the machines.
//!
//! ```text
//! cargo run -p lock-tests --example cron_once
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p lock-tests --example cron_once  # twice at once
//! ```
//!
//! `CRON_JOB` names the job (default `nightly-report`), `CRON_PERIOD` its period (default
//! `60` seconds).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{env_or, setup, Result};
use lock_core::LockOptions;

const MACHINES: usize = 4;

fn main() -> Result<()> {
    let (mgr, store) = setup()?;
    let job = env_or("CRON_JOB", "nightly-report");
    let period = Duration::from_secs(env_or("CRON_PERIOD", "60").parse()?);
    // The slot is the same on every machine whose clock agrees to within the period.
    let slot = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() / period.as_secs().max(1);
    let name = format!("cron:{job}:{slot}");

    let ran_here = std::thread::scope(|s| -> Result<usize> {
        let machines: Vec<_> = (0..MACHINES)
            .map(|machine| {
                let (mgr, store, name, job) = (mgr.clone(), store.clone(), &name, &job);
                s.spawn(move || -> Result<usize> {
                    // One attempt, a TTL of one period.
                    let once = LockOptions::new().ttl(period).wait(Some(Duration::ZERO));
                    let guard = match mgr.lock_with(name, once) {
                        Ok(guard) => guard,
                        Err(lock_core::LockError::Timeout { .. }) => return Ok(0),
                        Err(e) => return Err(e.into()),
                    };
                    store.incr(&format!("{name}:runs"))?; // the job's work
                    println!(
                        "machine {machine} (pid {}) runs {job} for slot {slot} (fencing token {})",
                        std::process::id(),
                        guard.fencing_token()
                    );
                    // No release: the lock keeps this slot taken until its TTL ends.
                    std::mem::forget(guard);
                    Ok(1)
                })
            })
            .collect();
        machines
            .into_iter()
            .map(|m| {
                m.join()
                    .unwrap_or_else(|_| Err("a machine panicked".into()))
            })
            .sum()
    })?;

    // Another process may hold the slot and not have counted its run yet: so far, the
    // slot has run at most once, and exactly once if it ran here.
    let runs = store.count(&format!("{name}:runs"))?;
    println!(
        "{MACHINES} machines here started {job} for slot {slot}: {ran_here} ran it; \
         the store counts {runs} run(s) of this slot so far"
    );
    if runs > 1 || runs < ran_here as i64 {
        return Err(format!("slot {slot} ran {runs} times, not once").into());
    }
    Ok(())
}
