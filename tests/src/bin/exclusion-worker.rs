//! One process of the multi-process exclusion test: takes a lock `rounds` times and, under
//! it, does a non-atomic read-modify-write of a counter in Redis, while an atomic
//! in-section counter catches any overlap with the other processes.
//!
//! Usage: `exclusion-worker <redis-url> <lock-name> <counter-key> <rounds>`; prints
//! `overlaps=<n>` and exits 0 if every round completed.

use std::time::Duration;

use lock_core::{LockManager, LockOptions};
use lock_redis::RedisBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, name, counter, rounds] = args.as_slice() else {
        return Err(
            "usage: exclusion-worker <redis-url> <lock-name> <counter-key> <rounds>".into(),
        );
    };
    let rounds: usize = rounds.parse()?;
    let mgr = LockManager::new(RedisBackend::connect(url)?);
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let inside_key = format!("{counter}:inside");
    let mut overlaps = 0u64;
    for _ in 0..rounds {
        let guard = mgr.lock_with(name, LockOptions::new().wait(Some(Duration::from_secs(60))))?;
        let inside: i64 = redis::cmd("INCR").arg(&inside_key).query(&mut conn)?;
        if inside != 1 {
            overlaps += 1;
        }
        let value: i64 = redis::cmd("GET")
            .arg(counter)
            .query::<Option<i64>>(&mut conn)?
            .unwrap_or(0);
        std::thread::sleep(Duration::from_micros(50));
        redis::cmd("SET")
            .arg(counter)
            .arg(value + 1)
            .query::<()>(&mut conn)?;
        redis::cmd("DECR").arg(&inside_key).query::<()>(&mut conn)?;
        guard.release()?;
    }
    println!("overlaps={overlaps}");
    Ok(())
}
