//! The recipes in `tests/examples/` run, and what they print holds: on the memory backend,
//! on one real `redis-server`, on Redlock over three, and as several processes at once.
//!
//! The examples are built by `cargo build -p lock-tests --examples` from the first test
//! that needs them (cargo skips it when they are up to date), into this test's own target
//! directory and profile.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use lock_tests::harness::{self, RedisServer};

/// Scheduling allowance on top of every bound the configuration sets.
const MARGIN: Duration = Duration::from_secs(10);
/// No recipe in these tests should take longer than this.
const HANG: Duration = Duration::from_secs(180);

/// The built example `name`, built first if needed.
fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    // target/<profile>/deps/recipes-<hash> → target/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let profile = if profile == "debug" { "dev" } else { profile };
        let mut build = Command::new(&cargo);
        // What cargo sets for this test process describes this package, not the build's
        // configuration; left in, build scripts that watch it (ring's) would rerun.
        for (var, _) in std::env::vars_os() {
            let var = var.to_string_lossy();
            if var.starts_with("CARGO_PKG_")
                || var.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&var.as_ref())
            {
                build.env_remove(var.as_ref());
            }
        }
        let out = build
            .args(["build", "--quiet", "-p", "lock-tests", "--examples"])
            .args(["--profile", profile, "--target-dir"])
            .arg(profile_dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo} to build the examples: {e}"));
        assert!(
            out.status.success(),
            "building the examples failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        *built = true;
    }
    profile_dir.join("examples").join(name)
}

fn recipe(name: &str, redis_url: Option<&str>) -> Command {
    let mut cmd = Command::new(example(name));
    cmd.env_remove("REDIS_URL").stdin(Stdio::null());
    if let Some(url) = redis_url {
        cmd.env("REDIS_URL", url);
    }
    cmd
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` for at most [`HANG`], and checks that it succeeded.
fn succeeded(mut child: Child) -> String {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > HANG {
            let _ = child.kill();
            panic!("recipe still ran after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(status.success(), "{status}: {stdout}\n{stderr}");
    stdout
}

fn fresh(what: &str) -> String {
    format!("{what}-{}-{:x}", std::process::id(), rand::random::<u64>())
}

/// The number after `prefix` on the first line that has it.
fn number_after(text: &str, prefix: &str) -> u64 {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in {text}"));
    text[at + prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?} in {text}"))
}

/// Two copies of `jobs` at once on `url`: every job runs once in total, and the store,
/// read here directly, agrees.
fn two_jobs_processes_run_every_job_once(url: &str, store: &RedisServer) {
    let batch = fresh("batch");
    let both: Vec<Child> = (0..2)
        .map(|_| spawn(recipe("jobs", Some(url)).env("JOBS_BATCH", &batch)))
        .collect();
    let outputs: Vec<String> = both.into_iter().map(succeeded).collect();
    let ran: u64 = outputs
        .iter()
        .map(|out| number_after(out, "this process ran "))
        .sum();
    assert_eq!(ran, 9, "{outputs:#?}");
    for out in &outputs {
        assert!(out.contains("ran exactly once"), "{out}");
    }
    let mut conn = store.raw_connection();
    for job in ["invoices", "reports", "cleanup"] {
        for round in 0..3 {
            let runs: Option<i64> = redis::cmd("HGET")
                .arg(format!("jobs:{batch}:{job}:round-{round}:runs"))
                .arg("value")
                .query(&mut conn)
                .unwrap();
            assert_eq!(runs, Some(1), "{job} round {round}: {outputs:#?}");
        }
    }
}

#[test]
fn jobs_on_memory_runs_each_job_once() {
    let out = succeeded(spawn(&mut recipe("jobs", None)));
    assert!(out.contains("this process ran 9 of 9 jobs"), "{out}");
    assert!(out.contains("ran exactly once"), "{out}");
}

#[test]
fn jobs_two_processes_at_once_on_one_redis_run_every_job_once_in_total() {
    let server = RedisServer::shared();
    two_jobs_processes_run_every_job_once(&server.url(), &server);
}

#[test]
fn jobs_two_processes_at_once_on_redlock_run_every_job_once_in_total() {
    let servers = harness::cluster(3);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    // The recipes keep their store on the first node.
    two_jobs_processes_run_every_job_once(&urls.join(","), &servers[0]);
}

#[test]
fn cache_stampede_recomputes_once_on_memory_and_on_redis() {
    let server = RedisServer::shared();
    for url in [None, Some(server.url())] {
        let out = succeeded(spawn(&mut recipe("cache_stampede", url.as_deref())));
        assert!(
            out.contains(
                "cold cache: 16 threads missed; 1 recomputation(s); 15 read the new value"
            ),
            "{out}"
        );
        assert!(
            out.contains("expired value: 16 threads missed; 1 recomputation(s)"),
            "{out}"
        );
    }
}

#[test]
fn cron_once_started_by_two_processes_at_once_runs_once_per_slot() {
    let server = RedisServer::shared();
    let job = fresh("cron");
    let both: Vec<Child> = (0..2)
        .map(|_| {
            spawn(
                recipe("cron_once", Some(&server.url()))
                    .env("CRON_JOB", &job)
                    .env("CRON_PERIOD", "3600"),
            )
        })
        .collect();
    // Started a moment apart, the two may straddle a slot boundary: count per slot.
    let mut ran_per_slot: HashMap<u64, u64> = HashMap::new();
    for out in both.into_iter().map(succeeded) {
        let slot = number_after(&out, "for slot ");
        *ran_per_slot.entry(slot).or_default() += number_after(&out, &format!("slot {slot}: "));
    }
    assert!(ran_per_slot.values().all(|&n| n == 1), "{ran_per_slot:?}");
    // Started again once both are done: the slot stays taken, and the store counts the one
    // run (a new slot, if the hour just turned, runs once and counts one).
    let again = succeeded(spawn(
        recipe("cron_once", Some(&server.url()))
            .env("CRON_JOB", &job)
            .env("CRON_PERIOD", "3600"),
    ));
    let slot = number_after(&again, "for slot ");
    let expected = if ran_per_slot.contains_key(&slot) {
        0
    } else {
        1
    };
    assert_eq!(
        number_after(&again, &format!("slot {slot}: ")),
        expected,
        "{again}"
    );
    assert!(
        again.contains("the store counts 1 run(s) of this slot"),
        "{again}"
    );
}

#[test]
fn leader_on_memory_hands_over_to_the_standby() {
    let out = succeeded(spawn(&mut recipe("leader", None)));
    // The recipe itself fails unless the standby took over from the first leader.
    assert!(out.contains("terms, one leader each: candidate"), "{out}");
    assert!(out.contains("(the leader's lock vanished)"), "{out}");
    assert!(out.contains(" steps down: lock "), "{out}");
}

/// Lines of a child's stdout as they come, with the instant each arrived.
fn lines(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the line containing `what`, for at most `bound`.
fn expect_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    what: &str,
    bound: Duration,
) -> (Instant, String) {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) if line.contains(what) => return (at, line),
            Ok(_) => {}
            Err(e) => panic!("no line with {what:?} within {bound:?}: {e}"),
        }
    }
}

#[test]
fn leader_killed_is_replaced_by_the_standby_within_a_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let server = RedisServer::shared();
    let group = fresh("group");
    let candidate = || {
        let mut cmd = recipe("leader", Some(&server.url()));
        cmd.env("LEADER_GROUP", &group)
            .env("LEADER_TTL", TTL.as_millis().to_string())
            .env("LEADER_FOR", "120")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd.spawn().unwrap()
    };
    let mut leader = candidate();
    let leader_lines = lines(&mut leader);
    let (_, first) = expect_line(&leader_lines, "leads (term", HANG);
    let mut standby = candidate();
    let standby_lines = lines(&mut standby);
    // The standby is up (it printed its backend) and waits for the lock.
    expect_line(&standby_lines, "backend:", HANG);

    leader.kill().unwrap(); // SIGKILL: no release, the lock runs out by its TTL
    let killed = Instant::now();
    leader.wait().unwrap();
    let (at, second) = expect_line(&standby_lines, "leads (term", TTL + MARGIN);
    assert!(at.duration_since(killed) <= TTL + MARGIN);
    let term = |line: &str| number_after(line, "(term ");
    assert!(term(&second) > term(&first), "{first} / {second}");
    standby.kill().unwrap();
    standby.wait().unwrap();
}
