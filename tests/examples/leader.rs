//! Leader election: candidates wait for one long-lived lock; whoever holds it leads. The
//! lock renews itself (`auto_renew`) while the leader lives; the leader calls `check()`
//! before each step of its work and steps down as soon as the lock is lost. Each step
//! writes to the store with the lock's fencing token, so a leader that has not noticed its
//! loss yet cannot overwrite its successor's work. When a leader dies (or is killed) without
//! releasing, a standby takes over once the lock's TTL runs out.
//!
//! ```text
//! cargo run -p lock-tests --example leader       # memory: two candidates, the leader cut off
//! # Redis: one candidate per process; start two, kill the leader, watch the other take over
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p lock-tests --example leader
//! ```
//!
//! `LEADER_GROUP` names the election (default `demo`), `LEADER_TTL` the lock's TTL in
//! milliseconds (default 3000), `LEADER_FOR` how long each candidate runs in seconds
//! (default 10).

mod common;

use std::time::{Duration, Instant};

use common::{env_or, setup, Result, Store};
use lock_core::{LockError, LockManager, LockOptions};

/// Campaigns until `until`: leads whenever it holds the lock, steps down when it loses it.
/// Returns the terms it led and how many of its writes the store refused as stale.
fn candidate(
    id: &str,
    mgr: &LockManager,
    store: &Store,
    group: &str,
    ttl: Duration,
    until: Instant,
) -> Result<(Vec<u64>, usize)> {
    let (mut terms, mut refused) = (Vec::new(), 0);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let opts = LockOptions::new()
            .ttl(ttl)
            .wait(Some(left))
            .auto_renew(true);
        let guard = match mgr.lock_with(format!("leader:{group}"), opts) {
            Ok(guard) => guard,
            Err(LockError::Timeout { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        let term = guard.fencing_token();
        terms.push(term);
        println!("{id} leads (term {term})");
        loop {
            if let Err(e) = guard.check() {
                println!("{id} steps down: {e}");
                break;
            }
            if Instant::now() >= until {
                guard.release()?;
                println!("{id} steps down: its time is up");
                return Ok((terms, refused));
            }
            // One step of the leader's work, fenced by its term.
            if !store.write_fenced(&format!("leader:{group}:work"), term, id)? {
                refused += 1;
                println!("{id} (term {term}): write refused, a newer leader has written");
            }
            std::thread::sleep(ttl / 20);
        }
    }
    Ok((terms, refused))
}

fn main() -> Result<()> {
    let (mgr, store) = setup()?;
    let group = env_or("LEADER_GROUP", "demo");
    let ttl = Duration::from_millis(env_or("LEADER_TTL", "3000").parse()?);
    let until = Instant::now() + Duration::from_secs(env_or("LEADER_FOR", "10").parse()?);
    let pid = std::process::id();

    if let Store::Redis(_) = store {
        // One candidate per process: start another copy, kill this one, and watch.
        candidate(
            &format!("candidate {pid}"),
            &mgr,
            &store,
            &group,
            ttl,
            until,
        )?;
        return Ok(());
    }

    // In memory: two candidates in threads. After a second the leader's lock vanishes (as
    // when a server fails over and forgets it); the leader notices at its next renewal and
    // steps down, and the standby, waiting, takes over.
    let until = Instant::now() + Duration::from_secs(5);
    let ids = ["candidate a", "candidate b"];
    let results = std::thread::scope(|s| {
        let threads = ids.map(|id| {
            let (mgr, store, group) = (mgr.clone(), store.clone(), &group);
            s.spawn(move || candidate(id, &mgr, &store, group, ttl, until))
        });
        let lock = format!("leader:{group}");
        let vanished = (|| -> std::result::Result<bool, LockError> {
            while !mgr.is_locked(&lock)? {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_secs(1));
            mgr.force_unlock(&lock)
        })();
        println!("(the leader's lock vanished)");
        threads
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a candidate panicked".into()))
            })
            .into_iter()
            .chain([vanished.map(|_| (Vec::new(), 0)).map_err(Into::into)])
            .collect::<Result<Vec<_>>>()
    })?;
    let mut terms: Vec<(u64, &str)> = Vec::new();
    for (id, (led, _)) in ids.iter().zip(&results) {
        terms.extend(led.iter().map(|t| (*t, *id)));
    }
    terms.sort_unstable();
    let refused: usize = results.iter().map(|(_, r)| r).sum();
    let story: Vec<String> = terms
        .iter()
        .map(|(t, id)| format!("{id} term {t}"))
        .collect();
    println!(
        "{} terms, one leader each: {}; the store refused {refused} stale write(s)",
        terms.len(),
        story.join(", then ")
    );
    if terms.len() < 2 || terms[0].1 == terms[1].1 {
        return Err("the standby did not take over".into());
    }
    Ok(())
}
