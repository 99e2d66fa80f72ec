//! Jobs that run exactly once, across threads and processes.
//!
//! Every worker walks the same list of jobs. For each, it takes the job's lock, looks in
//! the store whether the job already ran, and if not runs it and writes the record of it,
//! with the lock's fencing token, before releasing. The record lives in the store, not in
//! this process, so any number of copies of this program (on any machines that share the
//! backend) run each job once in total. At the end it counts, in the store, how often each
//! job ran, and says so.
//!
//! ```text
//! cargo run -p lock-tests --example jobs                                   # memory
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p lock-tests --example jobs  # run it twice at once
//! REDIS_URL=redis://h1/,redis://h2/,redis://h3/ cargo run -p lock-tests --example jobs  # Redlock
//! ```
//!
//! `JOBS_BATCH` names the batch (default `demo`): a batch runs once, so a second run of the
//! same batch finds every job done. Give a new name to run the jobs again.

mod common;

use std::time::Duration;

use common::{env_or, setup, Result};

const WORKERS: usize = 3;
const JOBS: [&str; 3] = ["invoices", "reports", "cleanup"];
const ROUNDS: usize = 3;

fn main() -> Result<()> {
    let (mgr, store) = setup()?;
    let batch = env_or("JOBS_BATCH", "demo");
    let jobs: Vec<String> = (0..ROUNDS)
        .flat_map(|round| JOBS.map(|job| format!("jobs:{batch}:{job}:round-{round}")))
        .collect();
    let pid = std::process::id();
    let ran_here = std::thread::scope(|s| -> Result<usize> {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (mgr, store, jobs) = (mgr.clone(), store.clone(), &jobs);
                s.spawn(move || -> Result<usize> {
                    let mut ran = 0;
                    // Each worker starts at another job, so they contend in every order.
                    for job in jobs.iter().cycle().skip(worker).take(jobs.len()) {
                        let guard = mgr.lock(job)?;
                        if store.read(&format!("{job}:done"))?.is_some() {
                            continue; // somebody (here or elsewhere) already ran it
                        }
                        let token = guard.fencing_token();
                        // The job's work: here, counting that it ran.
                        store.incr(&format!("{job}:runs"))?;
                        std::thread::sleep(Duration::from_millis(100));
                        // The record, refused if a newer holder has written since (our lock
                        // expired mid-job): the token keeps a stale holder from writing.
                        let by = format!("process {pid} worker {worker}, fencing token {token}");
                        if !store.write_fenced(&format!("{job}:done"), token, &by)? {
                            println!("{job}: record refused, a newer holder wrote first");
                        }
                        guard.release()?;
                        println!("{job} ran in {by}");
                        ran += 1;
                    }
                    Ok(ran)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .sum()
    })?;
    println!(
        "this process ran {ran_here} of {} jobs; {} were done by another process",
        jobs.len(),
        jobs.len() - ran_here
    );

    // The claim, checked in the store: every job ran, and none more than once.
    let mut wrong = Vec::new();
    for job in &jobs {
        let runs = store.count(&format!("{job}:runs"))?;
        if runs != 1 {
            wrong.push(format!("{job} ran {runs} times"));
        }
    }
    if !wrong.is_empty() {
        return Err(format!("not exactly once: {}", wrong.join(", ")).into());
    }
    println!(
        "the store shows each of the {} jobs of batch {batch} ran exactly once",
        jobs.len()
    );
    Ok(())
}
