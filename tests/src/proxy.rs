//! A small blocking TCP proxy on loopback, for injecting network faults between a client
//! and a server: latency and jitter, a blackhole, resets, and lost replies.
//!
//! The proxy listens on a free port of 127.0.0.1 and forwards every connection to one
//! upstream address, which must be a loopback address too. Each accepted connection gets
//! two threads, one per direction, and the [`Mode`] can be switched at any time; it applies
//! at once to the connections already open and to new ones.
//!
//! ```no_run
//! use lock_tests::harness::RedisServer;
//! use lock_tests::proxy::{Mode, Proxy};
//!
//! let server = RedisServer::start();
//! let proxy = Proxy::start(&server.addr()).unwrap();
//! let url = proxy.url(); // point the client here instead of at the server
//! proxy.set_mode(Mode::Blackhole); // the client now hears nothing
//! proxy.set_mode(Mode::PassThrough); // and everything it sent is delivered
//! # let _ = url;
//! ```
//!
//! Dropping the proxy closes every connection and ends its threads; that takes at most
//! about a second (a pending write's timeout), usually a few milliseconds. The threads
//! never panic: an I/O error only ends the connection it happened on.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::Rng;

/// How long a blocked read waits before the thread looks at the mode and the shutdown flag.
const TICK: Duration = Duration::from_millis(10);
/// How often the accept loop polls its non-blocking listener.
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// Timeout of the proxy's own connection to the upstream server.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long forwarding one chunk may block (a peer that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long [`Proxy::set_mode`] waits for the listener to close or reopen.
const LISTENER_SWITCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How many request bytes a connection remembers for [`Proxy::drop_next_replies_to`].
const REQUEST_MEMORY: usize = 64 * 1024;

/// What the proxy does with the bytes it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways unchanged. The initial mode.
    PassThrough,
    /// Every chunk read, in either direction, is held for `base` plus a uniformly random
    /// extra of at most `jitter` before it is forwarded. A request and its reply therefore
    /// take about twice that. Order is kept: a chunk waits behind the one before it.
    Latency {
        /// The fixed delay of every chunk.
        base: Duration,
        /// The largest random extra delay of a chunk.
        jitter: Duration,
    },
    /// Connections are accepted and kept open, but nothing is forwarded either way and
    /// nothing is answered. Bytes are left unread in the kernel's buffers, so when the mode
    /// changes back they are delivered in order, as when a network partition heals under
    /// TCP retransmission: a client that gave up on a request may still see it executed.
    Blackhole,
    /// Every open connection is closed (both sides) and the listening socket with it, so
    /// new connections are refused. Switching to another mode listens again on the same
    /// port.
    Reset,
    /// Requests are forwarded to the server, but a reply from the server cuts its
    /// connection (both sides) instead of being forwarded: the client sees the connection
    /// close after the server has acted on its request. Applies to every reply, including
    /// those of a client's connection handshake, for as long as the mode is set; see
    /// [`Proxy::drop_next_replies`] for a counted, targeted variant.
    DropReplies,
}

/// A fault-injecting TCP proxy on a free port of 127.0.0.1. See the [module docs](self).
///
/// Dropping it closes every connection and stops its threads.
pub struct Proxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    port: u16,
    upstream: SocketAddr,
    state: Mutex<State>,
    conns: Mutex<Vec<Arc<Conn>>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    stopping: AtomicBool,
    /// Whether the accept loop holds a listening socket right now.
    listening: AtomicBool,
    accepted: AtomicUsize,
    dropped_replies: AtomicUsize,
    /// Chunks read and not yet written or discarded.
    in_flight: AtomicUsize,
}

struct State {
    mode: Mode,
    /// Replies still to drop in the counted variant, and what their request must contain.
    drop_budget: usize,
    drop_needle: Option<Vec<u8>>,
}

/// One proxied connection: the client's socket and ours to the server.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    /// Bytes sent upstream since the last reply was forwarded (capped).
    request: Mutex<Vec<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proxy {
    /// Starts a proxy to `upstream` (for example [`RedisServer::addr`]), in
    /// [`Mode::PassThrough`].
    ///
    /// # Errors
    /// If `upstream` does not resolve to a loopback address, or no port can be bound or
    /// thread started.
    ///
    /// [`RedisServer::addr`]: crate::harness::RedisServer::addr
    pub fn start(upstream: &str) -> io::Result<Proxy> {
        let upstream = upstream.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                ErrorKind::InvalidInput,
                "upstream address resolves to nothing",
            )
        })?;
        if !upstream.ip().is_loopback() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("the proxy only forwards to loopback addresses, not {upstream}"),
            ));
        }
        let listener = bind(0)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            port,
            upstream,
            state: Mutex::new(State {
                mode: Mode::PassThrough,
                drop_budget: 0,
                drop_needle: None,
            }),
            conns: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            listening: AtomicBool::new(true),
            accepted: AtomicUsize::new(0),
            dropped_replies: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&shared, listener))?
        };
        Ok(Proxy {
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The port the proxy listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `"127.0.0.1:PORT"` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    /// `"redis://127.0.0.1:PORT/"` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.shared.port)
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switches the mode; it applies at once to open connections and new ones.
    ///
    /// Switching to [`Mode::Reset`] returns once every connection is closed and the
    /// listener is gone (new connections are refused); switching away from it returns once
    /// the proxy listens again (or after 2 s if the port could not be bound again, which
    /// leaves the proxy refusing connections).
    pub fn set_mode(&self, mode: Mode) {
        let reset = mode == Mode::Reset;
        lock(&self.shared.state).mode = mode;
        if reset {
            self.shared.close_all();
        }
        let deadline = Instant::now() + LISTENER_SWITCH_TIMEOUT;
        while self.shared.listening.load(Ordering::SeqCst) == reset && Instant::now() < deadline {
            thread::sleep(ACCEPT_POLL);
        }
    }

    /// Drops the next `n` replies from the server, whatever they answer: each cuts its
    /// connection (both sides) after the request was forwarded, as [`Mode::DropReplies`]
    /// does, but only `n` times. Applies in [`Mode::PassThrough`] and [`Mode::Latency`].
    /// Replaces any budget left from an earlier call.
    pub fn drop_next_replies(&self, n: usize) {
        let mut st = lock(&self.shared.state);
        st.drop_budget = n;
        st.drop_needle = None;
    }

    /// As [`drop_next_replies`](Proxy::drop_next_replies), but only counts and drops
    /// replies to requests whose bytes contain `needle` (for example `b"EVALSHA"`), so a
    /// client's connection handshake or pings pass.
    pub fn drop_next_replies_to(&self, n: usize, needle: &[u8]) {
        let mut st = lock(&self.shared.state);
        st.drop_budget = n;
        st.drop_needle = Some(needle.to_vec());
    }

    /// How many replies of the counted budget are still to be dropped.
    pub fn replies_left_to_drop(&self) -> usize {
        lock(&self.shared.state).drop_budget
    }

    /// How many replies have been dropped so far (in any mode).
    pub fn dropped_replies(&self) -> usize {
        self.shared.dropped_replies.load(Ordering::SeqCst)
    }

    /// How many connections have been accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many proxied connections are open right now.
    pub fn open_connections(&self) -> usize {
        let mut conns = lock(&self.shared.conns);
        conns.retain(|c| !c.is_closed());
        conns.len()
    }

    /// Waits until no chunk the proxy has read is still waiting to be forwarded (delayed
    /// by [`Mode::Latency`], or held by [`Mode::Blackhole`]), for at most `timeout`.
    /// Returns whether it got there. Bytes the proxy has not read yet are not counted.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr())
            .field("upstream", &self.shared.upstream)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let pumps = std::mem::take(&mut *lock(&self.shared.pumps));
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

impl Shared {
    fn mode(&self) -> Mode {
        lock(&self.state).mode.clone()
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn close_all(&self) {
        let conns = std::mem::take(&mut *lock(&self.conns));
        for conn in conns {
            conn.close();
        }
    }

    /// Whether the reply just read on `conn` is to be dropped (and counts it if so).
    /// The request the reply answers is forgotten here, before the reply is forwarded, so
    /// that the client's next request cannot be forgotten in its place.
    fn take_reply_drop(&self, conn: &Conn) -> bool {
        let request = std::mem::take(&mut *lock(&conn.request));
        let mut st = lock(&self.state);
        let drop = match st.mode {
            Mode::DropReplies => true,
            Mode::PassThrough | Mode::Latency { .. } if st.drop_budget > 0 => {
                let matches = match &st.drop_needle {
                    None => true,
                    Some(needle) => contains(&request, needle),
                };
                if matches {
                    st.drop_budget -= 1;
                }
                matches
            }
            _ => false,
        };
        if drop {
            self.dropped_replies.fetch_add(1, Ordering::SeqCst);
        }
        drop
    }

    /// Sets up forwarding for a freshly accepted client connection.
    fn open(self: &Arc<Self>, client: TcpStream) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        if self.mode() == Mode::Reset {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let Ok(server) = TcpStream::connect_timeout(&self.upstream, UPSTREAM_CONNECT_TIMEOUT)
        else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let streams = (|| {
            for s in [&client, &server] {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(TICK))?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
            }
            Ok::<_, io::Error>((
                client.try_clone()?,
                server.try_clone()?,
                client.try_clone()?,
                server.try_clone()?,
            ))
        })();
        let conn = Arc::new(Conn {
            client,
            server,
            closed: AtomicBool::new(false),
            request: Mutex::new(Vec::new()),
        });
        let Ok((client_in, server_out, client_out, server_in)) = streams else {
            conn.close();
            return;
        };
        {
            let mut conns = lock(&self.conns);
            conns.retain(|c| !c.is_closed());
            conns.push(conn.clone());
        }
        let mut pumps = lock(&self.pumps);
        pumps.retain(|p| !p.is_finished());
        for (from, to, upstream_bound) in [
            (client_in, server_out, true),
            (server_in, client_out, false),
        ] {
            let (shared, conn2) = (self.clone(), conn.clone());
            let spawned = thread::Builder::new()
                .name(format!("proxy-{}-pump", self.port))
                .spawn(move || pump(&shared, &conn2, from, to, upstream_bound));
            match spawned {
                Ok(handle) => pumps.push(handle),
                Err(_) => conn.close(),
            }
        }
        // A reset may have come between the mode check above and the registration.
        if self.mode() == Mode::Reset {
            conn.close();
        }
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.server.shutdown(Shutdown::Both);
        }
    }

    fn note_request(&self, chunk: &[u8]) {
        let mut req = lock(&self.request);
        if req.len() + chunk.len() <= REQUEST_MEMORY {
            req.extend_from_slice(chunk);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn bind(port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut listener = Some(listener);
    while !shared.stopping() {
        if shared.mode() == Mode::Reset {
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
            thread::sleep(ACCEPT_POLL);
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match bind(shared.port) {
                Ok(l) => {
                    shared.listening.store(true, Ordering::SeqCst);
                    listener.insert(l)
                }
                Err(_) => {
                    thread::sleep(TICK);
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((client, _)) => shared.open(client),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                thread::sleep(ACCEPT_POLL)
            }
            // Out of file descriptors, say: keep going, the next accept may work.
            Err(_) => thread::sleep(TICK),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Copies `from` to `to` under the current mode until either side closes, the connection
/// is cut, or the proxy stops. Closes the whole connection on the way out.
fn pump(
    shared: &Shared,
    conn: &Conn,
    mut from: TcpStream,
    mut to: TcpStream,
    upstream_bound: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while !shared.stopping() && !conn.is_closed() {
        if shared.mode() == Mode::Blackhole {
            // Leave the bytes in the kernel, to be delivered when the partition heals.
            thread::sleep(TICK);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => break,
        };
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let forwarded = forward(shared, conn, &mut to, &buf[..n], upstream_bound);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !forwarded {
            break;
        }
    }
    conn.close();
}

/// Forwards one chunk under the current mode; `false` if the connection is to end.
fn forward(
    shared: &Shared,
    conn: &Conn,
    to: &mut TcpStream,
    chunk: &[u8],
    upstream_bound: bool,
) -> bool {
    if upstream_bound {
        conn.note_request(chunk);
    } else if shared.take_reply_drop(conn) {
        return false;
    }
    loop {
        if shared.stopping() || conn.is_closed() {
            return false;
        }
        match shared.mode() {
            // Read just before the partition started: hold it until it heals.
            Mode::Blackhole => thread::sleep(TICK),
            Mode::Latency { base, jitter } => {
                let extra =
                    rand::rng().random_range(0..=jitter.as_nanos().min(u64::MAX as u128) as u64);
                let delay = base.saturating_add(Duration::from_nanos(extra));
                if !sleep_while_open(shared, conn, delay) {
                    return false;
                }
                break;
            }
            _ => break,
        }
    }
    if to.write_all(chunk).is_err() {
        return false;
    }
    true
}

/// Sleeps for `d` in ticks; `false` if the connection was closed or the proxy stopped.
fn sleep_while_open(shared: &Shared, conn: &Conn, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if shared.stopping() || conn.is_closed() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        thread::sleep((end - now).min(TICK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every chunk back and records what it received.
    struct Echo {
        addr: SocketAddr,
        received: Arc<Mutex<Vec<u8>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Self {
            let listener = bind(0).unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (rec, st) = (received.clone(), stop.clone());
            let thread = thread::spawn(move || {
                let mut handles = Vec::new();
                while !st.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let (rec, st) = (rec.clone(), st.clone());
                            handles.push(thread::spawn(move || {
                                s.set_nonblocking(false).unwrap();
                                s.set_read_timeout(Some(TICK)).unwrap();
                                let mut buf = [0u8; 4096];
                                while !st.load(Ordering::SeqCst) {
                                    match s.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(n) => {
                                            lock(&rec).extend_from_slice(&buf[..n]);
                                            if s.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                        Err(e) if is_timeout(&e) => {}
                                        Err(_) => break,
                                    }
                                }
                            }));
                        }
                        Err(_) => thread::sleep(ACCEPT_POLL),
                    }
                }
                for h in handles {
                    let _ = h.join();
                }
            });
            Echo {
                addr,
                received,
                stop,
                thread: Some(thread),
            }
        }

        fn received(&self) -> Vec<u8> {
            lock(&self.received).clone()
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn client(proxy: &Proxy, read_timeout: Duration) -> TcpStream {
        let s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(read_timeout)).unwrap();
        s
    }

    /// Sends `msg` and reads back exactly as many bytes, or the error met.
    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    fn start() -> (Echo, Proxy) {
        let echo = Echo::start();
        let proxy = Proxy::start(&echo.addr.to_string()).unwrap();
        (echo, proxy)
    }

    #[test]
    fn pass_through_forwards_both_ways() {
        let (echo, proxy) = start();
        let mut s = client(&proxy, Duration::from_secs(2));
        assert_eq!(round_trip(&mut s, b"hello").unwrap(), b"hello");
        assert_eq!(round_trip(&mut s, b"again").unwrap(), b"again");
        assert_eq!(echo.received(), b"helloagain");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);
        assert_eq!(proxy.upstream(), echo.addr);
    }

    #[test]
    fn only_loopback_upstreams_are_accepted() {
        let err = Proxy::start("192.0.2.1:6379").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn latency_delays_each_direction() {
        let (_echo, proxy) = start();
        let base = Duration::from_millis(40);
        proxy.set_mode(Mode::Latency {
            base,
            jitter: Duration::from_millis(10),
        });
        let mut s = client(&proxy, Duration::from_secs(2));
        let start = Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").unwrap(), b"slow");
        let took = start.elapsed();
        assert!(took >= 2 * base, "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn blackhole_answers_nothing_then_delivers_in_order() {
        let (echo, proxy) = start();
        let mut s = client(&proxy, Duration::from_millis(150));
        assert_eq!(round_trip(&mut s, b"a").unwrap(), b"a");
        proxy.set_mode(Mode::Blackhole);
        let err = round_trip(&mut s, b"b").unwrap_err();
        assert!(is_timeout(&err), "{err}");
        // A new connection is accepted too, and hears nothing either.
        let mut s2 = client(&proxy, Duration::from_millis(100));
        assert!(round_trip(&mut s2, b"c").is_err());
        assert_eq!(echo.received(), b"a");
        proxy.set_mode(Mode::PassThrough);
        let mut late = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.read_exact(&mut late).unwrap();
        assert_eq!(&late, b"b");
    }

    #[test]
    fn reset_closes_connections_and_refuses_new_ones_until_switched_back() {
        let (_echo, proxy) = start();
        let mut s = client(&proxy, Duration::from_secs(2));
        assert_eq!(round_trip(&mut s, b"x").unwrap(), b"x");
        proxy.set_mode(Mode::Reset);
        let mut buf = [0u8; 1];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        let refused = TcpStream::connect(proxy.addr()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(proxy.open_connections(), 0);
        proxy.set_mode(Mode::PassThrough);
        let mut s = client(&proxy, Duration::from_secs(2));
        assert_eq!(round_trip(&mut s, b"y").unwrap(), b"y");
    }

    #[test]
    fn drop_replies_forwards_the_request_and_cuts_the_reply() {
        let (echo, proxy) = start();
        proxy.set_mode(Mode::DropReplies);
        for msg in [&b"one"[..], b"two"] {
            let mut s = client(&proxy, Duration::from_secs(2));
            let mut buf = [0u8; 8];
            s.write_all(msg).unwrap();
            assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        }
        assert_eq!(echo.received(), b"onetwo");
        assert_eq!(proxy.dropped_replies(), 2);
    }

    #[test]
    fn drop_next_replies_counts_and_filters() {
        let (echo, proxy) = start();
        proxy.drop_next_replies_to(1, b"GET");
        let mut s = client(&proxy, Duration::from_secs(2));
        assert_eq!(round_trip(&mut s, b"PING").unwrap(), b"PING");
        assert!(round_trip(&mut s, b"GET k").is_err());
        assert_eq!(proxy.replies_left_to_drop(), 0);
        let mut s = client(&proxy, Duration::from_secs(2));
        assert_eq!(round_trip(&mut s, b"GET k").unwrap(), b"GET k");
        proxy.drop_next_replies(1);
        assert!(round_trip(&mut s, b"PING").is_err());
        assert_eq!(proxy.dropped_replies(), 2);
        assert_eq!(echo.received(), b"PINGGET kGET kPING");
    }

    #[test]
    fn drop_stops_every_thread_promptly() {
        let (_echo, proxy) = start();
        proxy.set_mode(Mode::Latency {
            base: Duration::from_secs(5),
            jitter: Duration::ZERO,
        });
        // Every connection has a chunk waiting out its 5 s delay.
        let _clients: Vec<_> = (0..4)
            .map(|_| {
                let mut s = client(&proxy, Duration::from_secs(2));
                s.write_all(b"x").unwrap();
                s
            })
            .collect();
        thread::sleep(Duration::from_millis(100));
        assert!(!proxy.wait_idle(Duration::from_millis(10)));
        let start = Instant::now();
        drop(proxy);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }
}
