//! The benchmark: every figure beside its floor, measured in the same run.
//!
//! ```text
//! cargo run --release -p lock-tests --bin bench              # full run, about a minute
//! cargo run --release -p lock-tests --bin bench -- --quick   # tiny run for CI (seconds)
//! cargo run --release -p lock-tests --bin bench -- --rounds 9
//! ```
//!
//! `LOCK_BENCH_QUICK=1` does the same as `--quick`; `--only single|redlock|memory|handoff|pool`
//! runs one section. The program starts its own
//! `redis-server` processes on free loopback ports (through `lock_tests::harness`) and
//! never touches a server it did not start.
//!
//! Floors are the same Redis commands sent by hand on persistent connections: `SET key
//! token NX PX ttl`, then the compare-and-delete script by `EVALSHA`. Each figure is
//! measured over several rounds, alternating library and floor inside each round; the
//! table shows medians over rounds and the median of the per-round ratios (the machine
//! is noisy, so only same-round ratios mean much).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::{LockBackend, LockManager, LockOptions, Token};
use lock_memory::MemoryBackend;
use lock_redis::RedisBackend;
use lock_redlock::RedlockBackend;
use lock_tests::harness::{self, RedisServer};
use redis::Connection;

/// The compare-and-delete script of the floor: what a hand-written client would send.
const CAD: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                   return redis.call('del', KEYS[1]) end return 0";
const TTL_MS: u64 = 10_000;
const THREADS: usize = 8;
const CRITICAL_SECTION: Duration = Duration::from_micros(100);

struct Size {
    rounds: usize,
    /// Lock+release pairs per round for the single-node and Redlock figures.
    pairs: usize,
    memory_pairs: usize,
    /// How long each timed multi-thread run lasts.
    run: Duration,
    /// Run only this section.
    only: Option<String>,
}

impl Size {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("LOCK_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut size = if quick {
            Size {
                rounds: 1,
                pairs: 200,
                memory_pairs: 20_000,
                run: Duration::from_millis(200),
                only: None,
            }
        } else {
            Size {
                rounds: 5,
                pairs: 5_000,
                memory_pairs: 300_000,
                run: Duration::from_millis(1_500),
                only: None,
            }
        };
        let usage = || -> ! {
            eprintln!(
                "usage: bench [--quick] [--rounds N] [--only single|redlock|memory|handoff|pool]"
            );
            std::process::exit(2)
        };
        if let Some(i) = args.iter().position(|a| a == "--rounds") {
            match args.get(i + 1).and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => size.rounds = n,
                _ => usage(),
            }
        }
        if let Some(i) = args.iter().position(|a| a == "--only") {
            match args.get(i + 1) {
                Some(s) if SECTIONS.contains(&s.as_str()) => size.only = Some(s.clone()),
                _ => usage(),
            }
        }
        size
    }

    fn runs(&self, section: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == section)
    }
}

const SECTIONS: [&str; 5] = ["single", "redlock", "memory", "handoff", "pool"];

fn main() {
    let size = Size::from_args();
    print_machine();
    let mut table = Table::default();
    if size.runs("single") {
        single_redis(&size, &mut table);
    }
    if size.runs("redlock") {
        redlock(&size, &mut table, 3);
        redlock(&size, &mut table, 5);
    }
    if size.runs("memory") {
        memory(&size, &mut table);
    }
    if size.runs("handoff") {
        handoff(&size, &mut table);
    }
    if size.runs("pool") {
        pool(&size, &mut table);
    }
    table.print(size.rounds);
}

// ---------------------------------------------------------------------------------------
// Reporting

/// One line of the final table.
struct Row {
    figure: String,
    library: String,
    floor: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(
        &mut self,
        figure: impl Into<String>,
        library: impl Into<String>,
        floor: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        let row = Row {
            figure: figure.into(),
            library: library.into(),
            floor: floor.into(),
            ratio,
            target: target.into(),
            met,
        };
        println!(
            "  {:<44} {:>14}  floor {:>14}  ratio {:>6}  target {:<14} {}",
            row.figure,
            row.library,
            row.floor,
            row.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            row.target,
            verdict(row.met)
        );
        self.rows.push(row);
    }

    fn print(&self, rounds: usize) {
        println!("\n## Summary (medians of {rounds} rounds)\n");
        println!("| figure | library | floor | ratio | target | met |");
        println!("|---|---:|---:|---:|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.figure,
                r.library,
                r.floor,
                r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
                r.target,
                verdict(r.met)
            );
        }
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "",
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1);
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn fmt_us(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} ms", x / 1000.0)
    } else {
        format!("{x:.0} µs")
    }
}

fn fmt_rate(x: f64) -> String {
    format!("{x:.0}/s")
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "redis-server not found".into());
    println!("# lock benchmark");
    println!("machine: {cpu}, {cores} cores; {redis}");
    println!("servers: redis-server on 127.0.0.1, started by this program, no persistence\n");
}

/// Timings of a batch of lock+release pairs.
struct Batch {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Latencies of lock+release pairs, gathered over one or more stretches of time.
#[derive(Default)]
struct Timed {
    lat: Vec<Duration>,
    total: Duration,
}

impl Timed {
    /// Times `n` calls of `pair` one by one.
    fn run(&mut self, n: usize, mut pair: impl FnMut()) {
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            pair();
            self.lat.push(t.elapsed());
        }
        self.total += start.elapsed();
    }

    fn finish(mut self) -> Batch {
        self.lat.sort_unstable();
        Batch {
            per_sec: self.lat.len() as f64 / self.total.as_secs_f64(),
            p50: percentile(&self.lat, 50.0),
            p99: percentile(&self.lat, 99.0),
        }
    }
}

/// Times `n` calls of `pair` one by one.
fn batch(n: usize, pair: impl FnMut()) -> Batch {
    let mut t = Timed::default();
    t.run(n, pair);
    t.finish()
}

/// How many alternating stretches a round of library-against-floor is cut into, so both
/// sides see the same state of a noisy machine (this one's loopback round trip flips
/// between about 20 and 55 µs as virtual CPUs idle and wake).
const STRETCHES: usize = 10;

/// Medians over rounds of a library batch and a floor batch, and of their ratios.
#[derive(Default)]
struct Versus {
    lib: Vec<Batch>,
    floor: Vec<Batch>,
}

impl Versus {
    fn med(&self, f: impl Fn(&Batch) -> f64) -> (f64, f64, f64) {
        let lib = median(self.lib.iter().map(&f).collect());
        let floor = median(self.floor.iter().map(&f).collect());
        let ratio = median(
            self.lib
                .iter()
                .zip(&self.floor)
                .map(|(l, fl)| f(l) / f(fl))
                .collect(),
        );
        (lib, floor, ratio)
    }
}

// ---------------------------------------------------------------------------------------
// Raw Redis: the floors

/// One hand-driven connection with the compare-and-delete script loaded.
struct Raw {
    conn: Connection,
    sha: String,
    token: String,
}

impl Raw {
    fn new(server: &RedisServer) -> Self {
        let mut conn = server.raw_connection();
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CAD)
            .query(&mut conn)
            .expect("SCRIPT LOAD");
        Raw {
            conn,
            sha,
            token: Token::generate().as_str().to_owned(),
        }
    }

    fn set_cmd(&self, key: &str) -> redis::Cmd {
        let mut c = redis::cmd("SET");
        c.arg(key).arg(&self.token).arg("NX").arg("PX").arg(TTL_MS);
        c
    }

    fn del_cmd(&self, key: &str) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(1).arg(key).arg(&self.token);
        c
    }

    /// The floor of one lock+release: two round trips.
    fn pair(&mut self, key: &str) {
        let set: Option<String> = self.set_cmd(key).query(&mut self.conn).expect("SET");
        assert!(set.is_some(), "floor key {key} was held");
        let del: i64 = self.del_cmd(key).query(&mut self.conn).expect("EVALSHA");
        assert_eq!(del, 1);
    }

    /// The floor of a fencing lock: the same work as the library (the lock, the fencing
    /// counter's `INCR`, compare-and-delete) still in two round trips, with `SET` and
    /// `INCR` pipelined instead of in a script.
    fn fenced_pair(&mut self, key: &str) {
        let mut p = redis::pipe();
        p.add_command(self.set_cmd(key))
            .cmd("INCR")
            .arg(format!("fence:{key}"));
        let (set, _fence): (Option<String>, u64) = p.query(&mut self.conn).expect("SET+INCR");
        assert!(set.is_some(), "floor key {key} was held");
        let del: i64 = self.del_cmd(key).query(&mut self.conn).expect("EVALSHA");
        assert_eq!(del, 1);
    }
}

/// Writes `cmds` to every connection, then reads every reply: one round trip for N nodes.
fn fan_out(raws: &mut [Raw], cmds: impl Fn(&Raw) -> Vec<redis::Cmd>) {
    let mut sent = 0;
    for r in raws.iter_mut() {
        let cmds = cmds(r);
        sent = cmds.len();
        for cmd in cmds {
            r.conn
                .send_packed_command(&cmd.get_packed_command())
                .expect("send");
        }
    }
    for r in raws.iter_mut() {
        for _ in 0..sent {
            let reply = r.conn.recv_response().expect("reply");
            assert!(!matches!(
                reply,
                redis::Value::Nil | redis::Value::ServerError(_)
            ));
        }
    }
}

fn commandstats(server: &RedisServer) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.raw_connection())
        .expect("INFO")
}

/// CPU time this thread has used, in ns (Linux: scheduler statistics); `None` elsewhere.
fn thread_cpu_ns() -> Option<f64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Server CPU in µs spent in top-level commands (nested script calls are inside EVALSHA's).
fn server_usec(info: &str) -> f64 {
    info.lines()
        .filter(|l| {
            ["cmdstat_set:", "cmdstat_evalsha:", "cmdstat_eval:"]
                .iter()
                .any(|c| l.starts_with(c))
        })
        .filter_map(|l| l.split("usec=").nth(1))
        .filter_map(|s| s.split(',').next())
        .filter_map(|n| n.parse::<f64>().ok())
        .sum()
}

fn reset_stats(server: &RedisServer) {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut server.raw_connection())
        .expect("CONFIG RESETSTAT");
}

// ---------------------------------------------------------------------------------------
// Single Redis, uncontended

fn single_redis(size: &Size, table: &mut Table) {
    println!("## Single Redis, uncontended lock+release (1 thread)");
    let server = RedisServer::start();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).expect("backend"));
    let mut raw = Raw::new(&server);
    let name = "bench:single";
    let floor_key = "lock:bench:floor";
    let lib_pair = || mgr.lock(name).expect("lock").release().expect("release");
    // Warm up: connections open, scripts loaded.
    for _ in 0..200 {
        lib_pair();
        raw.pair(floor_key);
    }
    let mut v = Versus::default();
    let (mut lib_cpu, mut floor_cpu) = (Vec::new(), Vec::new());
    let (mut lib_client, mut floor_client) = (Vec::new(), Vec::new());
    let mut fenced_ratio = Vec::new();
    let stretch = (size.pairs / STRETCHES).max(1);
    for round in 0..size.rounds {
        let (mut lib, mut floor) = (Timed::default(), Timed::default());
        let mut fenced = Timed::default();
        let (mut lib_usec, mut floor_usec) = (0.0, 0.0);
        let (mut lib_ns, mut floor_ns) = (0.0, 0.0);
        for i in 0..STRETCHES {
            // Rotate the order so no side always runs on a warmer machine.
            for k in 0..3 {
                let side = (round + i + k) % 3;
                if side == 2 {
                    fenced.run(stretch, || raw.fenced_pair(floor_key));
                    continue;
                }
                reset_stats(&server);
                let before = thread_cpu_ns();
                if side == 0 {
                    lib.run(stretch, lib_pair);
                    lib_ns += thread_cpu_ns().zip(before).map_or(0.0, |(a, b)| a - b);
                    lib_usec += server_usec(&commandstats(&server));
                } else {
                    floor.run(stretch, || raw.pair(floor_key));
                    floor_ns += thread_cpu_ns().zip(before).map_or(0.0, |(a, b)| a - b);
                    floor_usec += server_usec(&commandstats(&server));
                }
            }
        }
        lib_cpu.push(lib_usec / lib.lat.len() as f64);
        floor_cpu.push(floor_usec / floor.lat.len() as f64);
        lib_client.push(lib_ns / 1e3 / lib.lat.len() as f64);
        floor_client.push(floor_ns / 1e3 / floor.lat.len() as f64);
        let lib = lib.finish();
        fenced_ratio.push(lib.per_sec / fenced.finish().per_sec);
        v.lib.push(lib);
        v.floor.push(floor.finish());
    }
    let (l, f, r) = v.med(|b| b.per_sec);
    table.add(
        "single Redis: pairs/s",
        fmt_rate(l),
        fmt_rate(f),
        Some(r),
        "≥ 0.95",
        Some(r >= 0.95),
    );
    let (l, f, _) = v.med(|b| us(b.p50));
    table.add(
        "single Redis: p50 latency",
        fmt_us(l),
        fmt_us(f),
        Some(l / f),
        "",
        None,
    );
    let (l, f, r) = v.med(|b| us(b.p99));
    table.add(
        "single Redis: p99 latency",
        fmt_us(l),
        fmt_us(f),
        Some(r),
        "≤ 1.2",
        Some(r <= 1.2),
    );
    table.add(
        "single Redis: pairs/s against a fencing floor",
        "",
        "SET+INCR piped",
        Some(median(fenced_ratio)),
        "(information)",
        None,
    );
    let (l, f) = (median(lib_client), median(floor_client));
    if l > 0.0 {
        table.add(
            "single Redis: client CPU per pair (incl. kernel)",
            format!("{l:.1} µs"),
            format!("{f:.1} µs"),
            Some(l / f),
            "(information)",
            None,
        );
    }
    let (l, f) = (median(lib_cpu), median(floor_cpu));
    table.add(
        "single Redis: server CPU per pair (in commands)",
        format!("{l:.1} µs"),
        format!("{f:.1} µs"),
        Some(l / f),
        "(information)",
        None,
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// Redlock

fn redlock(size: &Size, table: &mut Table, n: usize) {
    println!("## Redlock ×{n}, uncontended lock+release (1 thread)");
    let servers = harness::cluster(n);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mgr = LockManager::new(RedlockBackend::connect(&urls).expect("redlock backend"));
    let mut raws: Vec<Raw> = servers.iter().map(Raw::new).collect();
    let key = "lock:bench:redlock-floor";
    let name = "bench:redlock";
    let parallel = |raws: &mut [Raw]| {
        fan_out(raws, |r| vec![r.set_cmd(key)]);
        fan_out(raws, |r| vec![r.del_cmd(key)]);
    };
    // The same work as the library (each node also mints a fencing counter), with SET and
    // INCR pipelined instead of in a script.
    let fenced = |raws: &mut [Raw]| {
        fan_out(raws, |r| {
            let mut incr = redis::cmd("INCR");
            incr.arg(format!("fence:{key}"));
            vec![r.set_cmd(key), incr]
        });
        fan_out(raws, |r| vec![r.del_cmd(key)]);
    };
    let lib_pair = || mgr.lock(name).expect("lock").release().expect("release");
    for _ in 0..100 {
        parallel(&mut raws);
        lib_pair();
    }
    let mut v = Versus::default();
    let (mut seq, mut fenced_ratio) = (Vec::new(), Vec::new());
    let stretch = (size.pairs / STRETCHES).max(1);
    for round in 0..size.rounds {
        let (mut lib, mut p, mut s) = (Timed::default(), Timed::default(), Timed::default());
        let mut f = Timed::default();
        for i in 0..STRETCHES {
            if (round + i) % 2 == 0 {
                lib.run(stretch, lib_pair);
                p.run(stretch, || parallel(&mut raws));
                f.run(stretch / 2, || fenced(&mut raws));
            } else {
                f.run(stretch / 2, || fenced(&mut raws));
                p.run(stretch, || parallel(&mut raws));
                lib.run(stretch, lib_pair);
            }
            s.run(stretch / 2, || {
                for r in raws.iter_mut() {
                    r.pair(key);
                }
            });
        }
        let lib = lib.finish();
        fenced_ratio.push(lib.per_sec / f.finish().per_sec);
        v.lib.push(lib);
        v.floor.push(p.finish());
        seq.push(s.finish());
    }
    let (l, f, r) = v.med(|b| b.per_sec);
    let target = n >= 5;
    table.add(
        format!("Redlock ×{n}: pairs/s"),
        fmt_rate(l),
        fmt_rate(f),
        Some(r),
        if target { "≥ 0.9" } else { "(information)" },
        target.then_some(r >= 0.9),
    );
    let (lp, fp, rp) = v.med(|b| us(b.p99));
    table.add(
        format!("Redlock ×{n}: p99 latency"),
        fmt_us(lp),
        fmt_us(fp),
        Some(rp),
        "(information)",
        None,
    );
    table.add(
        format!("Redlock ×{n}: pairs/s against a fencing floor"),
        "",
        "SET+INCR piped",
        Some(median(fenced_ratio)),
        "(information)",
        None,
    );
    let s = median(seq.iter().map(|b| b.per_sec).collect());
    table.add(
        format!("Redlock ×{n}: library vs sequential fan-out"),
        fmt_rate(l),
        fmt_rate(s),
        Some(l / s),
        "(information)",
        None,
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// Memory backend

fn memory(size: &Size, table: &mut Table) {
    println!("## Memory backend, uncontended lock+release (1 thread)");
    let mgr = LockManager::new(MemoryBackend::new());
    let name = "bench:memory";
    let key = b"lock:bench:memory";
    let map: parking_lot::Mutex<HashMap<Vec<u8>, u64>> = parking_lot::Mutex::new(HashMap::new());
    let ns = |n: usize, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_nanos() as f64 / n as f64
    };
    let mut lib_pair = || mgr.lock(name).expect("lock").release().expect("release");
    let mut floor_pair = || {
        map.lock().insert(key.to_vec(), 1);
        black_box(map.lock().remove(&key[..]));
    };
    ns(size.memory_pairs / 10, &mut lib_pair);
    ns(size.memory_pairs / 10, &mut floor_pair);
    let (mut lib, mut floor, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..size.rounds {
        let l = ns(size.memory_pairs, &mut lib_pair);
        let f = ns(size.memory_pairs, &mut floor_pair);
        lib.push(l);
        floor.push(f);
        ratio.push(l / f);
    }
    let (l, f, r) = (median(lib), median(floor), median(ratio));
    table.add(
        "memory backend: ns per lock+release",
        format!("{l:.0} ns"),
        format!("{f:.0} ns"),
        Some(r),
        "≤ 4",
        Some(r <= 4.0),
    );
    breakdown(size);
    println!();
}

/// What the pieces of the manager's hot path cost, for the lead's profile of lock-core.
fn breakdown(size: &Size) {
    let n = size.memory_pairs;
    let ns = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_nanos() as f64 / n as f64
    };
    let backend = MemoryBackend::new();
    let key = b"lock:bench:memory-breakdown".to_vec();
    let token = Token::generate();
    let ttl = Duration::from_secs(10);
    type Records = HashMap<(u64, Vec<u8>), Arc<[u8; 160]>>;
    thread_local! {
        static HELD: std::cell::RefCell<Records> = std::cell::RefCell::new(HashMap::new());
    }
    let null = LockManager::new(NullBackend);
    let items: Vec<(&str, f64)> = vec![
        (
            "manager lock+release over a no-op backend",
            ns(&mut || {
                null.lock("bench:null")
                    .expect("lock")
                    .release()
                    .expect("release")
            }),
        ),
        (
            "manager try_lock+release over a no-op backend",
            ns(&mut || {
                null.try_lock("bench:null")
                    .expect("try_lock")
                    .expect("free")
                    .release()
                    .expect("release")
            }),
        ),
        (
            "MemoryBackend try_acquire+release (no manager)",
            ns(&mut || {
                black_box(backend.try_acquire(&key, &token, ttl).ok());
                black_box(backend.release(&key, &token).ok());
            }),
        ),
        (
            "Token::generate (ChaCha12 + hex)",
            ns(&mut || {
                black_box(Token::generate());
            }),
        ),
        (
            "Instant::now",
            ns(&mut || {
                black_box(Instant::now());
            }),
        ),
        (
            "Vec<u8> alloc+copy of the key",
            ns(&mut || {
                black_box(key.to_vec());
            }),
        ),
        (
            "Arc<[u8]> alloc (LockName::new)",
            ns(&mut || {
                black_box(Arc::<[u8]>::from(&key[..]));
            }),
        ),
        (
            "Arc::new of a 160-byte hold",
            ns(&mut || {
                black_box(Arc::new([0u8; 160]));
            }),
        ),
        (
            "thread-local (id, key) map insert+remove",
            ns(&mut || {
                let hold = Arc::new([0u8; 160]);
                HELD.with(|h| {
                    let mut h = h.borrow_mut();
                    h.insert((1, key.clone()), hold);
                    black_box(h.remove(&(1, key.clone())));
                })
            }),
        ),
        (
            "parking_lot lock+unlock",
            ns(&mut || {
                black_box(backend.is_empty());
            }),
        ),
    ];
    println!("  hot-path pieces (ns each, one thread; for lock-core's profile):");
    for (what, cost) in items {
        println!("    {what:<50} {cost:>7.0} ns");
    }
}

/// A backend that grants everything at once: what is left is the manager's own cost.
struct NullBackend;

impl LockBackend for NullBackend {
    fn try_acquire(
        &self,
        _: &[u8],
        _: &Token,
        ttl: Duration,
    ) -> Result<Option<lock_core::Acquired>, lock_core::BackendError> {
        Ok(Some(lock_core::Acquired {
            fencing_token: 1,
            validity: ttl,
        }))
    }
    fn release(&self, _: &[u8], _: &Token) -> Result<bool, lock_core::BackendError> {
        Ok(true)
    }
    fn extend(
        &self,
        _: &[u8],
        _: &Token,
        _: lock_core::Extend,
    ) -> Result<Option<Duration>, lock_core::BackendError> {
        Ok(None)
    }
    fn inspect(
        &self,
        _: &[u8],
        _: Option<&Token>,
    ) -> Result<Option<Duration>, lock_core::BackendError> {
        Ok(None)
    }
    fn force_release(&self, _: &[u8]) -> Result<bool, lock_core::BackendError> {
        Ok(false)
    }
    fn health_check(&self) -> Result<(), lock_core::BackendError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Contended hand-off

/// One timed run of `THREADS` threads taking one name, holding it for the critical
/// section.
struct Handoff {
    holds: usize,
    /// Release call started → the next holder's `lock` returned, when the next holder is
    /// another thread (a real hand-off).
    latencies: Vec<Duration>,
    /// How many holds followed a hold of the same thread (it barged back in).
    same_thread: usize,
    /// Total time spent inside `lock` calls, over all threads.
    waiting: Duration,
    per_thread: Vec<usize>,
    elapsed: Duration,
}

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn run_handoff(mgr: &LockManager, name: &str, run: Duration) -> Handoff {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|me| {
            let (mgr, name) = (mgr.clone(), name.to_owned());
            let (stop, barrier) = (stop.clone(), barrier.clone());
            thread::spawn(move || {
                let mut holds = Vec::new();
                let mut waiting = Duration::ZERO;
                let opts = LockOptions::new().wait(Some(Duration::from_secs(30)));
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let g = mgr.lock_with(&name, opts.clone()).expect("lock");
                    let acquired = Instant::now();
                    waiting += acquired - asked;
                    spin(CRITICAL_SECTION);
                    let releasing = Instant::now();
                    g.release().expect("release");
                    holds.push((acquired, releasing, me));
                }
                (holds, waiting)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut per_thread = Vec::new();
    let mut waiting = Duration::ZERO;
    for t in threads {
        let (holds, w) = t.join().expect("hand-off thread");
        per_thread.push(holds.len());
        waiting += w;
        all.extend(holds);
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let mut latencies = Vec::with_capacity(all.len());
    let mut same_thread = 0;
    for pair in all.windows(2) {
        let ((_, released, a), (next, _, b)) = (pair[0], pair[1]);
        assert!(next >= released, "two holders at once: exclusion broken");
        if a == b {
            same_thread += 1;
        } else {
            latencies.push(next - released);
        }
    }
    latencies.sort_unstable();
    Handoff {
        holds: all.len(),
        latencies,
        same_thread,
        waiting,
        per_thread,
        elapsed,
    }
}

/// Per-round figures of one hand-off variant.
#[derive(Default)]
struct HandoffRounds {
    p50: Vec<f64>,
    p99: Vec<f64>,
    throughput: Vec<f64>,
    /// Failed acquire commands per second of waiting, per waiting thread.
    wait_cmds: Vec<f64>,
    /// All commands per second per thread, successful ones included.
    all_cmds: Vec<f64>,
    fairness: Vec<(usize, usize)>,
    same_thread: Vec<f64>,
}

impl HandoffRounds {
    fn push(&mut self, h: &Handoff, scripts: Option<u64>) {
        self.p50.push(us(percentile(&h.latencies, 50.0)));
        self.p99.push(us(percentile(&h.latencies, 99.0)));
        self.throughput
            .push(h.holds as f64 / h.elapsed.as_secs_f64());
        if let Some(scripts) = scripts {
            // Every hold costs one successful acquire and one release; the rest are the
            // attempts waiters made in vain.
            let failed = scripts.saturating_sub(2 * h.holds as u64) as f64;
            self.wait_cmds
                .push(failed / h.waiting.as_secs_f64().max(1e-9));
            self.all_cmds
                .push(scripts as f64 / h.elapsed.as_secs_f64() / THREADS as f64);
        }
        let min = h.per_thread.iter().copied().min().unwrap_or(0);
        let max = h.per_thread.iter().copied().max().unwrap_or(0);
        self.fairness.push((min, max));
        self.same_thread
            .push(h.same_thread as f64 / h.holds.max(1) as f64);
    }
}

fn handoff(size: &Size, table: &mut Table) {
    println!(
        "## Contended hand-off: {THREADS} threads, one name, {}µs critical section (spin)",
        CRITICAL_SECTION.as_micros()
    );
    let server = RedisServer::start();
    let mut floor_raw = Raw::new(&server);
    let with_wake = LockManager::new(RedisBackend::connect(&server.url()).expect("backend"));
    let polling = LockManager::new(
        RedisBackend::builder(&server.url())
            .wake_ups(false)
            .build()
            .expect("backend"),
    );
    let memory = LockManager::new(MemoryBackend::new());
    let warm = size.run.min(Duration::from_millis(300));
    run_handoff(&with_wake, "bench:handoff:warm", warm);
    run_handoff(&polling, "bench:handoff:warm", warm);

    let mut floor_p50 = Vec::new();
    let (mut wake, mut poll, mut mem) = (
        HandoffRounds::default(),
        HandoffRounds::default(),
        HandoffRounds::default(),
    );
    for round in 0..size.rounds {
        let f = batch(size.pairs / 5, || {
            floor_raw.pair("lock:bench:handoff-floor")
        });
        floor_p50.push(us(f.p50));
        for (mgr, rounds, redis) in [
            (&with_wake, &mut wake, true),
            (&polling, &mut poll, true),
            (&memory, &mut mem, false),
        ] {
            reset_stats(&server);
            let name = format!("bench:handoff:{round}");
            let h = run_handoff(mgr, &name, size.run);
            let scripts =
                redis.then(|| server.command_calls("evalsha") + server.command_calls("eval"));
            rounds.push(&h, scripts);
        }
    }
    let floor = median(floor_p50);
    let show = |label: &str, r: &HandoffRounds, table: &mut Table, targets: bool| {
        let p50 = median(r.p50.clone());
        let p99 = median(r.p99.clone());
        let (fmin, fmax) = r.fairness[r.fairness.len() / 2];
        table.add(
            format!("hand-off {label}: p50 release→next acquire"),
            fmt_us(p50),
            fmt_us(floor),
            Some(p50 / floor),
            if targets { "≤ 1 ms" } else { "" },
            targets.then_some(p50 <= 1000.0),
        );
        table.add(
            format!("hand-off {label}: p99"),
            fmt_us(p99),
            "",
            None,
            if targets { "≤ 5 ms" } else { "" },
            targets.then_some(p99 <= 5000.0),
        );
        table.add(
            format!("hand-off {label}: holds/s (per thread min–max)"),
            format!("{} ({fmin}–{fmax})", fmt_rate(median(r.throughput.clone()))),
            "",
            None,
            "",
            None,
        );
        table.add(
            format!("hand-off {label}: holder took it again itself"),
            format!("{:.1}%", 100.0 * median(r.same_thread.clone())),
            "",
            None,
            "",
            None,
        );
        if !r.wait_cmds.is_empty() {
            let w = median(r.wait_cmds.clone());
            table.add(
                format!("hand-off {label}: commands/s per waiting thread"),
                format!("{w:.1}/s"),
                "",
                None,
                if targets { "≤ 50/s" } else { "" },
                targets.then_some(w <= 50.0),
            );
            table.add(
                format!("hand-off {label}: all commands/s per thread"),
                format!("{:.0}/s", median(r.all_cmds.clone())),
                "",
                None,
                "",
                None,
            );
        }
    };
    show("Redis, wake-ups", &wake, table, true);
    show("Redis, polling only", &poll, table, false);
    show("memory", &mem, table, false);
    println!(
        "  (latency: release call started → another thread's lock() returned; floor: the \
         single-node pair p50, the two round trips a hand-off needs; commands per waiting \
         thread = failed acquire scripts / time spent waiting)"
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// Pool

fn pool(size: &Size, table: &mut Table) {
    println!(
        "## {THREADS} threads on {THREADS} names: one manager's pool vs {THREADS} raw connections"
    );
    let server = RedisServer::start();
    let mgr = LockManager::new(RedisBackend::connect(&server.url()).expect("backend"));
    let timed = |work: &(dyn Fn(usize, &AtomicBool) -> usize + Sync)| -> f64 {
        let stop = AtomicBool::new(false);
        let barrier = Barrier::new(THREADS + 1);
        thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (stop, barrier) = (&stop, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        work(i, stop)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            thread::sleep(size.run);
            stop.store(true, Ordering::Relaxed);
            let total: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
            total as f64 / start.elapsed().as_secs_f64()
        })
    };
    let lib = |i: usize, stop: &AtomicBool| {
        let name = format!("bench:pool:{i}");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            mgr.lock(&name).expect("lock").release().expect("release");
            n += 1;
        }
        n
    };
    let raws: Vec<parking_lot::Mutex<Raw>> = (0..THREADS)
        .map(|_| parking_lot::Mutex::new(Raw::new(&server)))
        .collect();
    let raw = |i: usize, stop: &AtomicBool| {
        let key = format!("lock:bench:pool-floor:{i}");
        let mut r = raws[i].lock();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            r.pair(&key);
            n += 1;
        }
        n
    };
    let (mut l, mut f, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..size.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = timed(&lib);
            (a, timed(&raw))
        } else {
            let b = timed(&raw);
            (timed(&lib), b)
        };
        l.push(a);
        f.push(b);
        ratio.push(a / b);
    }
    let r = median(ratio);
    table.add(
        "pool, 8 threads × 8 names: pairs/s",
        fmt_rate(median(l)),
        fmt_rate(median(f)),
        Some(r),
        "≥ 0.8",
        Some(r >= 0.8),
    );
    println!();
}
