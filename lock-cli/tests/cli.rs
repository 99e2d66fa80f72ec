//! `distlock` end to end, against real `redis-server` processes started by the harness.
//!
//! Every time bound is the configuration under test (TTL, renewal interval, grace) plus
//! [`MARGIN`], a generous allowance for a busy machine, never a guess at its speed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lock_tests::harness::{self, RedisServer};

/// Scheduling allowance on top of every bound the configuration sets.
const MARGIN: Duration = Duration::from_secs(10);
/// No single `distlock` in these tests should take longer than this, whatever happens.
const HANG: Duration = Duration::from_secs(120);

const USAGE: i32 = 64;
const UNAVAILABLE: i32 = 69;
const LOST: i32 = 75;
const DENIED: i32 = 77;

fn distlock() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distlock"));
    cmd.env_remove("DISTLOCK_URL").stdin(Stdio::null());
    cmd
}

/// A lock name no other test uses.
fn fresh(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "cli-{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(fresh(what));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` for at most `bound`, killing it and failing the test past that.
fn finish(mut child: Child, bound: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "distlock still ran after {bound:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn output(cmd: &mut Command) -> Output {
    finish(spawn(cmd), HANG)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| panic!("killed: {status}"))
}

fn lock_ttl_ms(server: &RedisServer, name: &str) -> i64 {
    server.pttl(&format!("lock:{name}"))
}

/// Waits until `cond` holds, for at most `bound`.
fn eventually(bound: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < bound, "not within {bound:?}: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_file(path: &Path, bound: Duration) -> String {
    let mut text = String::new();
    eventually(bound, &format!("{} written", path.display()), || {
        text = fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    });
    text
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Each child appends `start <ns>` and `end <ns>` (CLOCK_REALTIME) around a pause.
const STAMPED: &str = "echo \"start $(date +%s%N) $DISTLOCK_FENCING_TOKEN\" >> \"$1\"; \
                       sleep 0.3; echo \"end $(date +%s%N)\" >> \"$1\"";

/// The `[start, end]` intervals of the runs that wrote `file`, and their fencing tokens.
fn intervals(file: &Path) -> Vec<(u128, u128, u64)> {
    let text = fs::read_to_string(file).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    lines
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair[0][0], "start", "{text}");
            assert_eq!(pair[1][0], "end", "interleaved runs: {text}");
            (
                pair[0][1].parse().unwrap(),
                pair[1][1].parse().unwrap(),
                pair[0][2].parse().unwrap(),
            )
        })
        .collect()
}

/// What a backend promises of fencing tokens: one Redis mints them strictly increasing;
/// Redlock does not promise it (a node's counter can fall behind the others').
#[derive(Clone, Copy, PartialEq)]
enum Fencing {
    Strict,
    NotPromised,
}

fn concurrent_runs_do_not_overlap(urls: &str, extra: &[&str], fencing: Fencing) {
    const RUNS: usize = 3;
    let scratch = Scratch::new("overlap");
    let file = scratch.path("stamps");
    let name = fresh("overlap");
    let children: Vec<Child> = (0..RUNS)
        .map(|_| {
            spawn(
                distlock()
                    .args(["--url", urls])
                    .args(extra)
                    .args([
                        "run", "--ttl", "10s", &name, "--", "sh", "-c", STAMPED, "sh",
                    ])
                    .arg(&file),
            )
        })
        .collect();
    for child in children {
        let out = finish(child, HANG);
        assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    }
    let mut runs = intervals(&file);
    assert_eq!(runs.len(), RUNS, "every run ran once");
    runs.sort();
    for pair in runs.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "runs overlapped: {pair:?} (start, end ns, fencing token)"
        );
        if fencing == Fencing::Strict {
            assert!(pair[0].2 < pair[1].2, "fencing tokens grow: {pair:?}");
        }
    }
}

#[test]
fn two_runs_of_one_name_at_once_run_one_after_the_other() {
    let server = RedisServer::shared();
    concurrent_runs_do_not_overlap(&server.url(), &[], Fencing::Strict);
}

#[test]
fn redlock_over_three_servers_runs_one_after_the_other_and_survives_one_down() {
    let mut servers = harness::cluster(3);
    let urls = servers
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let timeout = ["--node-timeout", "500ms"];
    concurrent_runs_do_not_overlap(&urls, &timeout, Fencing::NotPromised);

    // With one node down, a majority still locks; the key is on the two that are up.
    servers[2].kill();
    let name = fresh("redlock");
    let out = output(distlock().args(["--url", &urls]).args(timeout).args([
        "run",
        &name,
        "--",
        "sh",
        "-c",
        "echo $DISTLOCK_NAME",
    ]));
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    assert_eq!(stdout(&out).trim(), name);

    // With two down there is no quorum: unavailable, saying which nodes failed.
    servers[1].kill();
    let out = output(
        distlock()
            .args(["--url", &urls])
            .args(timeout)
            .args(["run", "-n", &name, "--", "true"]),
    );
    assert_eq!(code(out.status), UNAVAILABLE, "{}", stderr(&out));
    assert!(stderr(&out).contains("quorum"), "{}", stderr(&out));
}

#[test]
fn no_wait_and_wait_exit_with_the_conflict_code_while_the_lock_is_held() {
    let server = RedisServer::shared();
    let scratch = Scratch::new("conflict");
    let ready = scratch.path("ready");
    let name = fresh("conflict");
    let holder = spawn(
        distlock()
            .args(["--url", &server.url(), "run", &name, "--"])
            .args([
                "sh",
                "-c",
                "echo up > \"$1\"; exec sleep 60",
                "sh",
                ready.to_str().unwrap(),
            ]),
    );
    wait_for_file(&ready, MARGIN);

    let out = output(distlock().args(["--url", &server.url(), "run", "--no-wait", &name, "true"]));
    assert_eq!(code(out.status), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&name) && err.contains("held by someone else"),
        "{err}"
    );

    let out = output(distlock().args(["-u", &server.url(), "run", "-n", "-E", "9", &name, "true"]));
    assert_eq!(code(out.status), 9, "{}", stderr(&out));

    let start = Instant::now();
    let out =
        output(distlock().args(["-u", &server.url(), "run", "--wait", "300ms", &name, "true"]));
    assert_eq!(code(out.status), 1, "{}", stderr(&out));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(stderr(&out).contains("gave up after"), "{}", stderr(&out));

    signal(holder.id(), "TERM");
    let out = finish(holder, MARGIN);
    assert_eq!(code(out.status), 128 + 15, "{}", stderr(&out));
}

#[test]
fn the_commands_exit_status_and_environment_come_back() {
    let server = RedisServer::shared();
    let url = server.url();
    let name = fresh("status");
    let out = output(distlock().args(["-u", &url, "run", &name, "--", "sh", "-c", "exit 7"]));
    assert_eq!(code(out.status), 7);
    assert_eq!(
        lock_ttl_ms(&server, &name),
        -2,
        "released after the command"
    );

    let out =
        output(distlock().args(["-u", &url, "run", &name, "--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(code(out.status), 128 + 9, "as a shell reports a signal");
    assert_eq!(lock_ttl_ms(&server, &name), -2);

    let show = "echo \"$DISTLOCK_NAME $DISTLOCK_FENCING_TOKEN\"";
    let tokens: Vec<u64> = (0..2)
        .map(|_| {
            let out = output(distlock().args(["-u", &url, "run", &name, "--", "sh", "-c", show]));
            assert!(out.status.success());
            let text = stdout(&out);
            let (shown, token) = text.trim().split_once(' ').unwrap();
            assert_eq!(shown, name);
            token.parse().unwrap()
        })
        .collect();
    assert!(tokens[0] < tokens[1], "fencing tokens grow: {tokens:?}");

    let out = output(distlock().args(["-u", &url, "run", &name, "--", "/no/such/command"]));
    assert_eq!(code(out.status), 127);
    assert!(stderr(&out).contains("/no/such/command"));
    assert_eq!(
        lock_ttl_ms(&server, &name),
        -2,
        "released when the command cannot run"
    );
}

#[test]
fn a_lock_deleted_behind_its_back_terminates_the_command_within_a_renewal_interval() {
    const TTL: Duration = Duration::from_secs(3);
    let server = RedisServer::shared();
    let scratch = Scratch::new("lost");
    let pid_file = scratch.path("pid");
    let name = fresh("lost");
    let child = spawn(
        distlock()
            .args(["-u", &server.url(), "run", "--ttl", "3s", &name, "--"])
            .args(["sh", "-c", "echo $$ > \"$1\"; exec sleep 60", "sh"])
            .arg(&pid_file),
    );
    let command_pid: u32 = wait_for_file(&pid_file, MARGIN).trim().parse().unwrap();
    assert!(lock_ttl_ms(&server, &name) > 0);

    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("lock:{name}"))
        .query(&mut server.raw_connection())
        .unwrap();
    assert_eq!(deleted, 1);
    let at = Instant::now();
    let out = finish(child, TTL / 3 + MARGIN);
    let took = at.elapsed();
    assert_eq!(code(out.status), LOST, "{}", stderr(&out));
    assert!(
        took <= TTL / 3 + MARGIN,
        "took {took:?}, renewal every {:?}",
        TTL / 3
    );
    let err = stderr(&out);
    assert!(
        err.contains("lost lock") && err.contains("SIGTERM"),
        "{err}"
    );
    assert!(!process_exists(command_pid), "the command still runs");
    assert_eq!(lock_ttl_ms(&server, &name), -2, "nothing re-created");
}

#[test]
fn a_command_that_ignores_sigterm_gets_sigkill_after_the_grace() {
    const KILL_AFTER: Duration = Duration::from_secs(1);
    let server = RedisServer::shared();
    let scratch = Scratch::new("stubborn");
    let pid_file = scratch.path("pid");
    let name = fresh("stubborn");
    let script = "trap '' TERM; echo $$ > \"$1\"; while :; do sleep 0.1; done";
    let child = spawn(
        distlock()
            .args([
                "-u",
                &server.url(),
                "run",
                "--ttl",
                "3s",
                "--kill-after",
                "1s",
                &name,
            ])
            .args(["--", "sh", "-c", script, "sh"])
            .arg(&pid_file),
    );
    let command_pid: u32 = wait_for_file(&pid_file, MARGIN).trim().parse().unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("lock:{name}"))
        .query(&mut server.raw_connection())
        .unwrap();
    let at = Instant::now();
    let out = finish(child, Duration::from_secs(1) + KILL_AFTER + MARGIN);
    assert_eq!(code(out.status), LOST, "{}", stderr(&out));
    assert!(at.elapsed() >= KILL_AFTER, "SIGKILL came before the grace");
    let err = stderr(&out);
    assert!(err.contains("SIGKILL"), "{err}");
    assert!(!process_exists(command_pid), "the command still runs");
}

#[test]
fn sigterm_to_distlock_reaches_the_command_and_the_lock_is_released() {
    signal_to_distlock_reaches_the_command_and_the_lock_is_released("TERM");
}

#[test]
fn sigint_to_distlock_reaches_the_command_and_the_lock_is_released() {
    signal_to_distlock_reaches_the_command_and_the_lock_is_released("INT");
}

fn signal_to_distlock_reaches_the_command_and_the_lock_is_released(sig: &str) {
    let server = RedisServer::shared();
    let scratch = Scratch::new("signal");
    let (ready, got) = (scratch.path("ready"), scratch.path("got"));
    let name = fresh("signal");
    let script = format!(
        "trap 'echo {sig} > \"$2\"; exit 5' {sig}; echo up > \"$1\"; \
         while :; do sleep 0.1; done"
    );
    let child = spawn(
        distlock()
            .args(["-u", &server.url(), "run", "--ttl", "30s", &name, "--"])
            .args(["sh", "-c", &script, "sh"])
            .args([&ready, &got]),
    );
    wait_for_file(&ready, MARGIN);
    assert!(lock_ttl_ms(&server, &name) > 0);
    signal(child.id(), sig);
    let out = finish(child, MARGIN);
    assert_eq!(
        code(out.status),
        5,
        "the command's own status: {}",
        stderr(&out)
    );
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), sig);
    // Released, not left to its 30 s TTL.
    assert_eq!(lock_ttl_ms(&server, &name), -2);
}

/// Runs `distlock` with `args` and checks that it failed with `expected`, on one line of
/// stderr, without a panic or the password.
fn rejects(args: &[&str], expected: i32, says: &str) {
    let out = output(distlock().args(args));
    let err = stderr(&out);
    assert_eq!(code(out.status), expected, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("distlock: "), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {says:?} not in {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        !err.contains("hunter2") && !stdout(&out).contains("hunter2"),
        "{err}"
    );
}

#[test]
fn bad_input_is_one_line_and_a_distinct_exit_code() {
    let server = RedisServer::start_with(&["--requirepass", "right-password"]);
    let port = server.port();
    let good = format!("redis://:right-password@127.0.0.1:{port}/");
    let wrong = format!("redis://:hunter2@127.0.0.1:{port}/");
    // A port nobody listens on: bound, then freed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = format!("redis://:hunter2@127.0.0.1:{closed}/");
    let bad_url = format!("redis://:hunter2@127.0.0.1:{port}:x/");

    rejects(
        &["-u", &good, "run", "--bogus", "job", "true"],
        USAGE,
        "--bogus",
    );
    rejects(
        &["-u", &good, "run", "--ttl", "10", "job", "true"],
        USAGE,
        "duration",
    );
    rejects(
        &["-u", &good, "run", "--wait", "soon", "job", "true"],
        USAGE,
        "--wait",
    );
    rejects(
        &["-u", &good, "run", "--ttl", "0s", "job", "true"],
        USAGE,
        "--ttl",
    );
    rejects(&["-u", &good, "run", "job"], USAGE, "<COMMAND>");
    rejects(&["run", "job", "true"], USAGE, "DISTLOCK_URL");
    rejects(
        &["-u", &bad_url, "run", "job", "true"],
        USAGE,
        "--url redis://***@",
    );
    rejects(&["-u", "http://x/", "status", "job"], USAGE, "--url");
    rejects(&["-u", &good, "run", "", "true"], USAGE, "name");
    rejects(
        &["-u", &unreachable, "run", "job", "true"],
        UNAVAILABLE,
        "refused",
    );
    rejects(
        &["-u", &wrong, "run", "job", "true"],
        DENIED,
        "authentication",
    );
    rejects(&["-u", &wrong, "status", "job"], DENIED, "authentication");
    // The URL from the environment, too.
    let out = output(
        distlock()
            .env("DISTLOCK_URL", &wrong)
            .args(["status", "job"]),
    );
    assert_eq!(code(out.status), DENIED);
    assert!(!stderr(&out).contains("hunter2"));

    // And the right password works.
    let out = output(distlock().args(["-u", &good, "run", "job", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // --help shows the environment variable's name, never its value.
    let out = output(
        distlock()
            .env("DISTLOCK_URL", &wrong)
            .args(["run", "--help"]),
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("EXIT STATUS"));
    assert!(!stdout(&out).contains("hunter2"));
}

#[test]
fn status_wait_and_unlock_force() {
    let server = RedisServer::shared();
    let url = server.url();
    let scratch = Scratch::new("admin");
    let ready = scratch.path("ready");
    let name = fresh("admin");

    let out = output(distlock().args(["-u", &url, "status", &name]));
    assert_eq!(code(out.status), 1);
    assert!(stdout(&out).contains("is free"), "{}", stdout(&out));

    let holder = spawn(
        distlock()
            .args(["-u", &url, "run", "--ttl", "30s", &name, "--"])
            .args([
                "sh",
                "-c",
                "echo up > \"$1\"; exec sleep 60",
                "sh",
                ready.to_str().unwrap(),
            ]),
    );
    wait_for_file(&ready, MARGIN);

    let out = output(distlock().args(["-u", &url, "status", &name]));
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("is held, for"), "{}", stdout(&out));

    let out = output(distlock().args(["-u", &url, "wait", "--wait", "300ms", &name]));
    assert_eq!(code(out.status), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("still held"), "{}", stderr(&out));

    let waiter = spawn(distlock().args(["-u", &url, "wait", &name]));
    let out = output(distlock().args(["-u", &url, "unlock", &name]));
    assert_eq!(code(out.status), USAGE);
    assert!(stderr(&out).contains("--force"));
    assert!(
        lock_ttl_ms(&server, &name) > 0,
        "unlock without --force did nothing"
    );

    let out = output(distlock().args(["-u", &url, "unlock", "--force", &name]));
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    assert_eq!(lock_ttl_ms(&server, &name), -2);

    // The waiter sees it free and returns, taking nothing.
    let out = finish(waiter, MARGIN);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));

    let out = output(distlock().args(["-u", &url, "unlock", "--force", &name]));
    assert_eq!(code(out.status), 1);
    assert!(stdout(&out).contains("was not locked"));

    // The holder's renewal finds its lock gone: the command is stopped.
    let out = finish(holder, Duration::from_secs(10) + MARGIN);
    assert_eq!(code(out.status), LOST, "{}", stderr(&out));
}

#[test]
fn a_server_that_dies_while_the_command_runs_ends_it_when_the_validity_runs_out() {
    const TTL: Duration = Duration::from_secs(3);
    let mut server = RedisServer::start();
    let scratch = Scratch::new("died");
    let ready = scratch.path("ready");
    let name = fresh("died");
    let child = spawn(
        distlock()
            .args(["-u", &server.url(), "run", "--ttl", "3s", &name, "--"])
            .args(["sh", "-c", "echo up > \"$1\"; exec sleep 60", "sh"])
            .arg(&ready),
    );
    wait_for_file(&ready, MARGIN);
    server.kill();
    let at = Instant::now();
    // Renewal keeps failing; the lock is lost when its validity (at most a TTL) runs out.
    let out = finish(child, TTL + MARGIN);
    assert_eq!(code(out.status), LOST, "{}", stderr(&out));
    assert!(at.elapsed() <= TTL + MARGIN);
    assert!(stderr(&out).contains("lost lock"), "{}", stderr(&out));
}

#[cfg(not(feature = "tls"))]
#[test]
fn a_rediss_url_without_the_tls_feature_is_bad_usage_naming_the_feature() {
    rejects(
        &["-u", "rediss://:hunter2@127.0.0.1:1/", "status", "x"],
        USAGE,
        "`tls`",
    );
}

#[cfg(feature = "tls")]
#[test]
fn tls_options_reach_the_server() {
    let server = RedisServer::start_tls(&harness::TlsSetup::mutual(), &[]);
    let pki = server.pki();
    let scratch = Scratch::new("tls");
    let (ca, cert, key) = (
        scratch.path("ca.crt"),
        scratch.path("client.crt"),
        scratch.path("client.key"),
    );
    fs::write(&ca, &pki.ca).unwrap();
    fs::write(&cert, &pki.client_cert).unwrap();
    fs::write(&key, &pki.client_key).unwrap();
    let name = fresh("tls");
    let out = output(
        distlock()
            .args(["-u", &server.url(), "--tls-ca"])
            .arg(&ca)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args([
                "run",
                &name,
                "--",
                "sh",
                "-c",
                "echo $DISTLOCK_FENCING_TOKEN",
            ]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1");

    // The system's trust store does not know the throwaway CA: refused, one line.
    let out = output(distlock().args(["-u", &server.url(), "status", &name]));
    assert_eq!(code(out.status), DENIED, "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // A certificate without its key is bad usage.
    let out = output(
        distlock()
            .args(["-u", &server.url(), "--tls-cert"])
            .arg(&cert)
            .args(["status", &name]),
    );
    assert_eq!(code(out.status), USAGE, "{}", stderr(&out));
}
