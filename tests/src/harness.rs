//! Real `redis-server` processes for tests.
//!
//! Every server runs on a free port of 127.0.0.1, without persistence, in a temporary
//! directory of its own. The harness only ever signals the processes it spawned itself,
//! so a system Redis (on 6379 or elsewhere) is never touched.
//!
//! `redis-server` must be on `PATH`; if it is not, starting a server panics with one
//! line saying how to install it. Nothing is skipped.
//!
//! [`RedisServer::start_tls`] starts a TLS-only server (`--port 0 --tls-port P`) with a
//! throwaway CA, server and client certificate made by `openssl` (which must be on `PATH`
//! too) in the server's directory.

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// How long one start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when another process takes ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;
/// Connect, read and write timeout of [`RedisServer::raw_connection`].
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const LOG_TAIL_LINES: usize = 30;
const NOT_FOUND: &str = "redis-server not found on PATH: install it \
                         (Debian/Ubuntu: apt-get install redis-server) to run these tests";
const OPENSSL_NOT_FOUND: &str = "openssl not found on PATH: install it \
                                 (Debian/Ubuntu: apt-get install openssl) to run the tls tests";
/// Redis logs this once it listens; our log file is private, so seeing it proves that
/// the port belongs to our child and not to some other process that won a port race.
const READY_LINE: &str = "Ready to accept connections";

/// One `redis-server` child process started by this harness, on a free loopback port.
///
/// Dropping it kills the process (even a paused one, even during unwinding) and removes
/// its temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    pid: u32,
    /// `None` once killed; a pid is only signalled while its `Child` is here and
    /// unreaped, so it cannot have been recycled for another process.
    child: Option<Child>,
    paused: AtomicBool,
    extra_args: Vec<String>,
    /// The certificates of a TLS-only server.
    tls: Option<Tls>,
    log_path: PathBuf,
    // Declared last so the directory is removed after `Drop` has ended the process.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default settings and waits until it answers PING.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH`, or it does not come up within 10 s (the
    /// message then includes the tail of its log).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments, e.g.
    /// `&["--requirepass", "secret"]` or `&["--user", "alice on >pw ~* +@all"]`.
    ///
    /// An ACL line after `--user` may be one argument or one word per argument: it is
    /// split at whitespace, as redis.conf would split it.
    /// The harness's own settings (port, bind address, directory, log file, log level,
    /// no persistence) come after `extra_args` and therefore win. A server whose
    /// default user requires a password still counts as up when it answers `-NOAUTH`.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_in(TempDir::new(), extra_args, None)
    }

    /// Starts a TLS-only server (no plaintext port) with extra command-line arguments, on
    /// certificates generated for it (see [`TestPki`]). Its [`url`](RedisServer::url) is
    /// `rediss://`, and [`raw_connection`](RedisServer::raw_connection) trusts its CA
    /// and presents its client certificate.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`], or if `openssl` is not on `PATH` or fails.
    pub fn start_tls(setup: &TlsSetup, extra_args: &[&str]) -> Self {
        let dir = TempDir::new();
        let pki = TestPki::generate(dir.path(), &setup.server_names);
        let tls = Tls {
            pki,
            setup: setup.clone(),
        };
        Self::start_in(dir, extra_args, Some(tls))
    }

    fn start_in(dir: TempDir, extra_args: &[&str], tls: Option<Tls>) -> Self {
        let log_path = dir.path().join("redis.log");
        let extra_args = expand_args(extra_args);
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            match launch(port, dir.path(), &log_path, &extra_args, tls.as_ref()) {
                Ok(child) => {
                    return Self {
                        port,
                        pid: child.id(),
                        child: Some(child),
                        paused: AtomicBool::new(false),
                        extra_args,
                        tls,
                        log_path,
                        dir,
                    }
                }
                Err(Failure::PortInUse) if attempt < PORT_ATTEMPTS => continue,
                Err(failure) => failure.panic(port, &log_path),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The server shared by the tests of one binary that run at the same time: see
    /// [`shared`].
    pub fn shared() -> Arc<Self> {
        shared()
    }

    /// The TLS server shared by the tests of one binary that run at the same time: see
    /// [`shared_tls`].
    pub fn shared_tls() -> Arc<Self> {
        shared_tls()
    }

    /// The TCP port on 127.0.0.1 (the TLS port of a TLS server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT/"`, or for a TLS server `"rediss://HOST:PORT/"`, where
    /// `HOST` is the first of its certificate's names (`127.0.0.1` by default).
    pub fn url(&self) -> String {
        url(self.port, self.tls.as_ref())
    }

    /// The certificates of a server from [`RedisServer::start_tls`].
    ///
    /// # Panics
    ///
    /// If this server does not speak TLS.
    pub fn pki(&self) -> &TestPki {
        match &self.tls {
            Some(tls) => &tls.pki,
            None => panic!("redis-server on {} is not a tls server", self.addr()),
        }
    }

    /// The pid of the current process, or of the last one if the server has been killed.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is running (possibly paused), i.e. not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How many times the server has run `cmd` (lowercase, e.g. `evalsha`,
    /// `script|load`) since it started or since `CONFIG RESETSTAT`, from `INFO
    /// commandstats`. Commands called inside Lua scripts are counted too.
    pub fn command_calls(&self, cmd: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.raw_connection())
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{cmd}:");
        info.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// `key`'s time to live in milliseconds by `PTTL` over a fresh raw connection: -2 if
    /// there is no such key, -1 if it has no expiry.
    ///
    /// # Panics
    ///
    /// If the server cannot be reached or answers with an error.
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.raw_connection())
            .unwrap_or_else(|e| panic!("PTTL {key} on {}: {e}", self.addr()))
    }

    /// A fresh connection without credentials, with a 2 s connect timeout and 2 s
    /// read and write timeouts. On a TLS server it trusts the server's CA and presents
    /// the client certificate.
    ///
    /// # Panics
    ///
    /// If the server cannot be reached within the timeout.
    pub fn raw_connection(&self) -> redis::Connection {
        connect(self.port, self.tls.as_ref(), CONNECTION_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to redis-server at {}: {e}", self.addr()))
    }

    /// Kills the process with SIGKILL and reaps it. Does nothing if it is already dead.
    ///
    /// # Panics
    ///
    /// If the process cannot be signalled or reaped.
    pub fn kill(&mut self) {
        if let Err(e) = self.stop() {
            panic!(
                "cannot kill redis-server pid {} on {}: {e}",
                self.pid,
                self.addr()
            );
        }
    }

    /// Stops the process with SIGSTOP: it keeps its port and connections but answers
    /// nothing until [`RedisServer::resume`]. Don't pause a server from [`shared`].
    ///
    /// # Panics
    ///
    /// If the server has been killed, or the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("STOP");
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Continues a paused process with SIGCONT.
    ///
    /// # Panics
    ///
    /// If the server has been killed, or the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("CONT");
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Starts the server again on the same port, with the same arguments and directory,
    /// and waits until it answers. Kills the current process first if there is one.
    /// Data is lost, as there is no persistence.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::kill`], or if the new process does not come up (for example
    /// because another process has taken the port meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        match launch(
            self.port,
            self.dir.path(),
            &self.log_path,
            &self.extra_args,
            self.tls.as_ref(),
        ) {
            Ok(child) => {
                self.pid = child.id();
                self.child = Some(child);
            }
            Err(failure) => failure.panic(self.port, &self.log_path),
        }
    }

    fn signal(&self, signal: &str) {
        let Some(child) = &self.child else {
            panic!(
                "redis-server on {} has been killed; cannot send SIG{signal}",
                self.addr()
            );
        };
        let pid = child.id().to_string();
        let output = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {pid}`: {e}"));
        assert!(
            output.status.success(),
            "`kill -{signal} {pid}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    /// Never panics, so `Drop` can use it during unwinding.
    fn stop(&mut self) -> std::io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if self.paused.swap(false, Ordering::SeqCst) {
            // SIGKILL ends a stopped process too; continuing it first is belt and braces.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // std sends SIGKILL, and does nothing if the child was already reaped.
        let killed = child.kill();
        child.wait()?;
        killed
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A server shared by the tests of one test binary that run at the same time.
///
/// The server lives as long as some test holds the returned `Arc`; once the last one is
/// dropped the process is killed, and the next call starts a new server. (A strong
/// static would never be dropped and would leak the process.) Use a server of your own
/// for anything that changes its state beyond keys: faults, configuration, `FLUSHALL`.
///
/// # Panics
///
/// As [`RedisServer::start`].
pub fn shared() -> Arc<RedisServer> {
    static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    shared_in(&SHARED, RedisServer::start)
}

/// A TLS server (the default [`TlsSetup`]) shared as [`shared`] shares a plaintext one.
///
/// # Panics
///
/// As [`RedisServer::start_tls`].
pub fn shared_tls() -> Arc<RedisServer> {
    static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    shared_in(&SHARED, || {
        RedisServer::start_tls(&TlsSetup::default(), &[])
    })
}

fn shared_in(slot: &Mutex<Weak<RedisServer>>, start: fn() -> RedisServer) -> Arc<RedisServer> {
    // A test that panicked while starting poisons the lock; the next one should report
    // its own failure, not a poison error.
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(start());
    *slot = Arc::downgrade(&server);
    server
}

/// `n` independent servers (for Redlock), started in parallel.
///
/// # Panics
///
/// As [`RedisServer::start`]; the servers already started are then killed.
pub fn cluster(n: usize) -> Vec<RedisServer> {
    cluster_of(n, RedisServer::start)
}

/// `n` independent TLS servers (the default [`TlsSetup`]), started in parallel, each
/// with a PKI of its own.
///
/// # Panics
///
/// As [`RedisServer::start_tls`]; the servers already started are then killed.
pub fn cluster_tls(n: usize) -> Vec<RedisServer> {
    cluster_of(n, || RedisServer::start_tls(&TlsSetup::default(), &[]))
}

fn cluster_of(n: usize, start: fn() -> RedisServer) -> Vec<RedisServer> {
    thread::scope(|scope| {
        let handles: Vec<_> = (0..n).map(|_| scope.spawn(start)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// How [`RedisServer::start_tls`] sets a server up.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// `--tls-auth-clients yes`: the server refuses clients without a certificate signed
    /// by its CA. Defaults to `false` (`--tls-auth-clients no`).
    pub require_client_cert: bool,
    /// The server certificate's subject alternative names, as `openssl` takes them.
    /// Defaults to `IP:127.0.0.1,DNS:localhost`.
    pub server_names: String,
}

impl Default for TlsSetup {
    fn default() -> Self {
        Self {
            require_client_cert: false,
            server_names: "IP:127.0.0.1,DNS:localhost".into(),
        }
    }
}

impl TlsSetup {
    /// The default setup with `--tls-auth-clients yes`.
    pub fn mutual() -> Self {
        Self {
            require_client_cert: true,
            ..Self::default()
        }
    }
}

/// A throwaway PKI made by `openssl` at test time: a CA (an EC P-256 key, valid for two
/// days, its name unique), and a server and a client certificate that it signed. The
/// fields are PEM.
#[derive(Clone)]
pub struct TestPki {
    /// The CA's certificate.
    pub ca: Vec<u8>,
    /// The client certificate (extended key usage `clientAuth`).
    pub client_cert: Vec<u8>,
    /// The client certificate's private key (PKCS#8).
    pub client_key: Vec<u8>,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// The OpenSSL config that [`TestPki::generate`] makes its certificates with: one section
/// of extensions each for the CA, the server and the client.
const PKI_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = lock-tests
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = ${ENV::LOCK_TESTS_SERVER_NAMES}
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

impl TestPki {
    /// A PKI of its own, not trusted by any server of the harness: its CA is an unknown
    /// CA to every server, and its client certificate one that no server accepts.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start_tls`].
    pub fn unrelated() -> Self {
        let dir = TempDir::new();
        Self::generate(dir.path(), &TlsSetup::default().server_names)
    }

    /// Writes `ca.crt`, `ca.key`, `server.crt`, `server.key`, `client.crt` and
    /// `client.key` into `dir`.
    fn generate(dir: &Path, server_names: &str) -> Self {
        let config = dir.join("pki.cnf");
        fs::write(&config, PKI_CONFIG)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        // Writes `<name>.crt` and `<name>.key`, signed by the CA unless it is the CA.
        let openssl = |name: &str, subject: &str| {
            let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
            let mut cmd = Command::new("openssl");
            cmd.args(["req", "-x509", "-config"])
                .arg(&config)
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
                .args([
                    "-nodes",
                    "-days",
                    "2",
                    "-extensions",
                    name,
                    "-subj",
                    subject,
                ])
                .args(["-keyout", &key, "-out", &cert]);
            if name != "ca" {
                cmd.args(["-CA", "ca.crt", "-CAkey", "ca.key"]);
            }
            let output = cmd
                .current_dir(dir)
                .env("LOCK_TESTS_SERVER_NAMES", server_names)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| match e.kind() {
                    ErrorKind::NotFound => panic!("{OPENSSL_NOT_FOUND}"),
                    _ => panic!("cannot run openssl: {e}"),
                });
            assert!(
                output.status.success(),
                "openssl req for {cert} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        };
        // A name of its own, or a client would take another PKI's CA for this one's
        // issuer (and report a bad signature rather than an unknown issuer).
        openssl(
            "ca",
            &format!("/CN=lock-tests ca {:016x}", rand::random::<u64>()),
        );
        openssl("server", "/CN=localhost");
        openssl("client", "/CN=lock-tests client");
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        };
        Self {
            ca: read("ca.crt"),
            client_cert: read("client.crt"),
            client_key: read("client.key"),
        }
    }
}

/// The TLS side of a server: its certificates (in its directory) and client policy.
#[derive(Debug)]
struct Tls {
    pki: TestPki,
    setup: TlsSetup,
}

impl Tls {
    /// The host to reach the server by, so that its certificate names it.
    fn host(&self) -> &str {
        self.setup
            .server_names
            .split(',')
            .next()
            .and_then(|name| name.split_once(':'))
            .map_or("127.0.0.1", |(_, host)| host.trim())
    }

    /// The arguments that make `port` the server's only port, for TLS, with the
    /// certificates that [`TestPki::generate`] wrote into `dir`.
    fn server_args(&self, port: u16, dir: &Path) -> Vec<String> {
        let file = |name: &str| dir.join(name).display().to_string();
        let auth = if self.setup.require_client_cert {
            "yes"
        } else {
            "no"
        };
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            auth,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

enum Failure {
    PortInUse,
    Exited(ExitStatus),
    TimedOut,
}

impl Failure {
    fn panic(self, port: u16, log_path: &Path) -> ! {
        let tail = log_tail(log_path);
        match self {
            Failure::PortInUse => panic!(
                "redis-server could not listen on 127.0.0.1:{port}: address in use \
                 (after {PORT_ATTEMPTS} attempts for a fresh port); log tail:\n{tail}"
            ),
            Failure::Exited(status) => panic!(
                "redis-server on 127.0.0.1:{port} exited ({status}) before it was ready; \
                 log tail:\n{tail}"
            ),
            Failure::TimedOut => panic!(
                "redis-server on 127.0.0.1:{port} did not answer PING within {:?}; \
                 log tail:\n{tail}",
                START_TIMEOUT
            ),
        }
    }
}

/// Spawns `redis-server` on `port` (its TLS port with `tls`) and waits until it is ready.
/// On failure the child has been reaped.
fn launch(
    port: u16,
    dir: &Path,
    log_path: &Path,
    extra_args: &[String],
    tls: Option<&Tls>,
) -> Result<Child, Failure> {
    // The log is appended to across restarts; only this run's part counts.
    let log_start = fs::metadata(log_path).map_or(0, |m| m.len() as usize);
    // Config errors go to stderr before Redis opens its log file, so both go there.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot duplicate handle of {}: {e}", log_path.display()));
    let port_args = match tls {
        None => vec!["--port".into(), port.to_string()],
        Some(tls) => tls.server_args(port, dir),
    };
    let mut child = Command::new("redis-server")
        .args(extra_args)
        .args(port_args)
        .args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(log_path)
        .args(["--loglevel", "notice"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| match e.kind() {
            ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            _ => panic!("cannot spawn redis-server: {e}"),
        });

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // An error here (never seen in practice) falls through to the deadline.
        if let Ok(Some(status)) = child.try_wait() {
            let log = read_log(log_path, log_start);
            return Err(if log.contains("Address already in use") {
                Failure::PortInUse
            } else {
                Failure::Exited(status)
            });
        }
        // A probe may take as long as the start may: on a busy machine a TLS handshake of
        // this debug build can take far longer than on an idle one.
        let left = deadline.saturating_duration_since(Instant::now());
        if read_log(log_path, log_start).contains(READY_LINE)
            && answers_ping(port, tls, left.max(POLL_INTERVAL))
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::TimedOut);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Redis quotes every command-line word, so an ACL line passed as one argument would
/// become one user name with spaces in it, which Redis rejects.
fn expand_args(extra_args: &[&str]) -> Vec<String> {
    let mut expanded = Vec::new();
    let mut in_user = false;
    for arg in extra_args {
        if arg.starts_with("--") {
            in_user = *arg == "--user";
            expanded.push(arg.to_string());
        } else if in_user {
            expanded.extend(arg.split_whitespace().map(str::to_owned));
        } else {
            expanded.push(arg.to_string());
        }
    }
    expanded
}

/// A port that was free a moment ago; Redis may still lose it to a race, which
/// `launch` reports as [`Failure::PortInUse`].
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}

fn url(port: u16, tls: Option<&Tls>) -> String {
    match tls {
        None => format!("redis://127.0.0.1:{port}/"),
        Some(tls) => format!("rediss://{}:{port}/", tls.host()),
    }
}

/// A connection without credentials (over TLS with `tls`), with `timeout` for connecting,
/// reading and writing.
fn connect(
    port: u16,
    tls: Option<&Tls>,
    timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let url = url(port, tls);
    let client = match tls {
        None => redis::Client::open(url)?,
        #[cfg(not(feature = "tls"))]
        Some(_) => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "tls servers need the tls feature of lock-tests",
            )))
        }
        #[cfg(feature = "tls")]
        Some(tls) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: tls.pki.client_cert.clone(),
                    client_key: tls.pki.client_key.clone(),
                }),
                root_cert: Some(tls.pki.ca.clone()),
            },
        )?,
    };
    let conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// Whether the server answers PING (or `-NOAUTH`, for a server that wants a password).
fn answers_ping(port: u16, tls: Option<&Tls>, timeout: Duration) -> bool {
    let Ok(mut conn) = connect(port, tls, timeout) else {
        return false;
    };
    match redis::cmd("PING").query::<String>(&mut conn) {
        Ok(reply) => reply == "PONG",
        Err(e) => e.code() == Some("NOAUTH"),
    }
}

fn read_log(log_path: &Path, from: usize) -> String {
    let bytes = fs::read(log_path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}

fn log_tail(log_path: &Path) -> String {
    let log = read_log(log_path, 0);
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        format!("({} is empty)", log_path.display())
    } else {
        tail
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        loop {
            let path = std::env::temp_dir().join(format!(
                "lock-tests-redis-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Self(path),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that nothing listens on (it was free a moment ago): connections to it
/// are refused.
pub fn closed_port() -> u16 {
    free_port()
}

/// `e` and each of its sources, joined by `": "`, as `anyhow` shows an error with `{:#}`:
/// what a user reads, each level once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        shown.push_str(": ");
        shown.push_str(&cause.to_string());
        next = cause.source();
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};

    fn ping(conn: &mut redis::Connection) -> redis::RedisResult<String> {
        redis::cmd("PING").query(conn)
    }

    fn refuses_connections(port: u16) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    }

    #[test]
    fn start_answers_ping() {
        let server = RedisServer::start();
        assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
        assert_eq!(
            server.url(),
            format!("redis://127.0.0.1:{}/", server.port())
        );
        assert_ne!(server.port(), 6379);
        assert!(server.is_running());
        assert_eq!(ping(&mut server.raw_connection()).unwrap(), "PONG");
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut server.raw_connection())
            .unwrap();
        assert!(
            info.contains(&format!("process_id:{}\r\n", server.pid())),
            "answered by another process: {info}"
        );
    }

    #[test]
    fn pause_blocks_and_resume_answers() {
        let server = RedisServer::start();
        let mut conn = server.raw_connection();
        server.pause();
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let err = ping(&mut conn).expect_err("a paused server answered PING");
        assert!(err.is_timeout(), "expected a timeout, got {err}");
        server.resume();
        assert_eq!(ping(&mut server.raw_connection()).unwrap(), "PONG");
    }

    #[test]
    fn kill_then_restart_on_same_port() {
        let mut server = RedisServer::start();
        let (port, first_pid) = (server.port(), server.pid());
        server.kill();
        assert!(!server.is_running());
        assert!(
            refuses_connections(port),
            "port {port} still accepts after kill"
        );
        server.kill();
        server.restart();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), first_pid);
        assert_eq!(ping(&mut server.raw_connection()).unwrap(), "PONG");
    }

    #[test]
    fn restart_of_a_paused_server() {
        let mut server = RedisServer::start();
        server.pause();
        server.restart();
        assert_eq!(ping(&mut server.raw_connection()).unwrap(), "PONG");
    }

    #[test]
    #[should_panic(expected = "has been killed")]
    fn pause_after_kill_panics() {
        let mut server = RedisServer::start();
        server.kill();
        server.pause();
    }

    #[test]
    fn drop_ends_the_process_and_removes_the_directory() {
        let server = RedisServer::start();
        let (port, dir) = (server.port(), server.dir.path().to_path_buf());
        assert!(dir.is_dir());
        drop(server);
        assert!(
            refuses_connections(port),
            "port {port} still accepts after drop"
        );
        assert!(!dir.exists(), "{} not removed", dir.display());
    }

    #[test]
    fn drop_ends_a_paused_process() {
        let server = RedisServer::start();
        let port = server.port();
        server.pause();
        drop(server);
        assert!(
            refuses_connections(port),
            "port {port} still accepts after drop"
        );
    }

    #[test]
    fn drop_during_unwinding_ends_the_process() {
        let port = std::panic::catch_unwind(|| {
            let server = RedisServer::start();
            std::panic::panic_any(server.port());
        })
        .unwrap_err();
        let port = *port.downcast::<u16>().unwrap();
        assert!(
            refuses_connections(port),
            "port {port} still accepts after unwinding"
        );
    }

    // The only user of `shared()` in this binary, so nobody else keeps it alive.
    #[test]
    fn shared_is_shared_until_the_last_holder_drops_it() {
        let a = shared();
        let b = RedisServer::shared();
        assert!(Arc::ptr_eq(&a, &b));
        let (port, pid) = (a.port(), a.pid());
        drop(a);
        assert_eq!(ping(&mut b.raw_connection()).unwrap(), "PONG");
        drop(b);
        assert!(
            refuses_connections(port),
            "shared server survived its last holder"
        );
        let c = shared();
        assert_ne!(c.pid(), pid);
        assert_eq!(ping(&mut c.raw_connection()).unwrap(), "PONG");
    }

    #[test]
    fn cluster_servers_are_independent() {
        let servers = cluster(3);
        assert_eq!(servers.len(), 3);
        let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut servers[0].raw_connection())
            .unwrap();
        let other: Option<String> = redis::cmd("GET")
            .arg("k")
            .query(&mut servers[1].raw_connection())
            .unwrap();
        assert_eq!(other, None);
    }

    #[test]
    fn extra_args_reach_the_server() {
        let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
        assert!(ping(&mut server.raw_connection()).is_err());
        let url = format!("redis://:s3cret@127.0.0.1:{}/", server.port());
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_connection_with_timeout(CONNECTION_TIMEOUT)
            .unwrap();
        assert_eq!(ping(&mut conn).unwrap(), "PONG");
    }

    #[test]
    fn acl_line_as_one_argument() {
        let server = RedisServer::start_with(&["--user", "alice on >pw ~* +@all"]);
        let url = format!("redis://alice:pw@127.0.0.1:{}/", server.port());
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_connection_with_timeout(CONNECTION_TIMEOUT)
            .unwrap();
        assert_eq!(ping(&mut conn).unwrap(), "PONG");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_server_answers_over_tls_only_and_restarts_as_one() {
        let mut server = RedisServer::start_tls(&TlsSetup::mutual(), &[]);
        assert_eq!(
            server.url(),
            format!("rediss://127.0.0.1:{}/", server.port())
        );
        assert_eq!(ping(&mut server.raw_connection()).unwrap(), "PONG");
        let plain = redis::Client::open(format!("redis://{}/", server.addr()))
            .unwrap()
            .get_connection_with_timeout(CONNECTION_TIMEOUT)
            .and_then(|mut c| {
                c.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
                ping(&mut c)
            });
        assert!(plain.is_err(), "plaintext PING answered: {plain:?}");
        let pid = server.pid();
        server.restart();
        assert_ne!(server.pid(), pid);
        assert_eq!(ping(&mut server.raw_connection()).unwrap(), "PONG");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn unrelated_pki_is_not_trusted_by_a_tls_server() {
        let server = RedisServer::start_tls(&TlsSetup::default(), &[]);
        let other = TestPki::unrelated();
        assert_ne!(other.ca, server.pki().ca);
        let tls = Tls {
            pki: other,
            setup: TlsSetup::default(),
        };
        let err = connect(server.port(), Some(&tls), CONNECTION_TIMEOUT)
            .and_then(|mut c| ping(&mut c))
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[test]
    #[should_panic(expected = "exited")]
    fn bad_arguments_panic_with_the_log() {
        RedisServer::start_with(&["--no-such-directive", "1"]);
    }
}
