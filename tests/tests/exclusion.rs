//! Mutual exclusion under contention on a real server: a non-atomic read-modify-write of a
//! counter stored in Redis must come out exact, and no two holds may overlap.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockManager, LockOptions};
use lock_redis::RedisBackend;
use lock_tests::harness::RedisServer;

const THREADS: usize = 8;
const ROUNDS: usize = 500;

fn get(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<i64>>(conn)
        .unwrap()
        .unwrap_or(0)
}

#[test]
fn eight_threads_read_modify_write_under_the_lock_exactly() {
    let server = RedisServer::shared();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).unwrap());
    let name = lock_core::conformance::fresh_name();
    let counter = format!("{name}:counter");
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (mgr, name, counter) = (mgr.clone(), name.clone(), counter.clone());
            let (inside, max_inside) = (inside.clone(), max_inside.clone());
            let mut conn = server.raw_connection();
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let g = mgr
                        .lock_with(
                            &name,
                            LockOptions::new().wait(Some(Duration::from_secs(60))),
                        )
                        .unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(now, Ordering::SeqCst);
                    let v = get(&mut conn, &counter);
                    std::thread::sleep(Duration::from_micros(50));
                    redis::cmd("SET")
                        .arg(&counter)
                        .arg(v + 1)
                        .query::<()>(&mut conn)
                        .unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    g.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut conn = server.raw_connection();
    assert_eq!(get(&mut conn, &counter), (THREADS * ROUNDS) as i64);
    assert_eq!(
        max_inside.load(Ordering::SeqCst),
        1,
        "two holders overlapped"
    );
    assert!(!mgr.is_locked(&name).unwrap());
}

#[test]
fn three_processes_read_modify_write_under_the_lock_exactly() {
    const PROCS: usize = 3;
    const PER_PROC: usize = 500;
    let server = RedisServer::shared();
    let name = lock_core::conformance::fresh_name();
    let counter = format!("{name}:counter");
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_exclusion-worker"))
                .args([&server.url(), &name, &counter, &PER_PROC.to_string()])
                .output_async()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "overlaps=0");
    }
    let mut conn = server.raw_connection();
    assert_eq!(get(&mut conn, &counter), (PROCS * PER_PROC) as i64);
    assert_eq!(get(&mut conn, &format!("{counter}:inside")), 0);
}

trait SpawnPiped {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
