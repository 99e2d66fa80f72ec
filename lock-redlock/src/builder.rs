//! Configuration of a [`RedlockBackend`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{BackendError, BackendErrorKind, LockBackend, LockError};
use lock_redis::RedisBackend;

use crate::node::Node;
use crate::{
    quorum, RedlockBackend, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRIFT_FACTOR, DEFAULT_NODE_TIMEOUT,
    DEFAULT_POOL_SIZE, MAX_POOL_SIZE,
};

/// Most operations queued on one node before new ones are refused (a node that stopped
/// answering must not let its queue grow without bound).
pub(crate) const MAX_QUEUED_PER_NODE: usize = 1024;
/// Worker threads of a node the caller talks to directly: they only run cleanups and
/// retries.
pub(crate) const DIRECT_WORKERS: usize = 2;

/// Whether construction checks the nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `build`: no I/O.
    None,
    /// `connect`: a quorum of nodes must answer.
    Quorum,
}

/// One resolved node: its label, the backend, and the Redis backend under it for a URL.
type Resolved = (String, Arc<dyn LockBackend>, Option<RedisBackend>);

/// Checks every node side by side (see [`RedlockBuilder::connect`]); `within` bounds the
/// wait for them all.
fn check_quorum(nodes: &[Resolved], within: Duration) -> Result<(), LockError> {
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, (_, backend, _)) in nodes.iter().enumerate() {
        let (tx, backend) = (tx.clone(), backend.clone());
        // Detached: a node that hangs past `within` only delays its own thread.
        std::thread::Builder::new()
            .name("redlock-connect".into())
            .spawn(move || {
                let _ = tx.send((i, backend.health_check()));
            })
            .map_err(|e| {
                LockError::from(
                    BackendError::new(
                        BackendErrorKind::Other,
                        "cannot start a thread to check the nodes",
                    )
                    .with_source(e),
                )
            })?;
    }
    drop(tx);
    let deadline = std::time::Instant::now() + within;
    let mut outcomes: Vec<Option<Result<(), BackendError>>> = nodes.iter().map(|_| None).collect();
    while let Ok((i, r)) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        outcomes[i] = Some(r);
    }
    let ok = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Ok(()))))
        .count();
    let failed: Vec<String> = outcomes
        .iter()
        .zip(nodes)
        .filter_map(|(o, (addr, _, _))| match o {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("{addr}: {}", crate::report::chain(e))),
            None => Some(format!("{addr}: no answer within {within:?}")),
        })
        .collect();
    let needed = quorum(nodes.len());
    if ok < needed {
        return Err(LockError::from(BackendError::new(
            BackendErrorKind::Quorum,
            format!(
                "{ok} of {} nodes answered, {needed} needed: {}",
                nodes.len(),
                failed.join("; ")
            ),
        )));
    }
    if !failed.is_empty() {
        log::warn!(
            "redlock: connected to a quorum only; used lazily: {}",
            failed.join("; ")
        );
    }
    Ok(())
}

enum NodeSpec {
    Url(String),
    Backend(String, Arc<dyn LockBackend>),
}

/// Configures a [`RedlockBackend`]; [`build`](RedlockBuilder::build) validates. Every
/// setter says its default.
///
/// ```no_run
/// use lock_redlock::RedlockBackend;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), lock_core::LockError> {
/// let backend = RedlockBackend::builder(&[
///     "redis://10.0.0.1/",
///     "redis://10.0.0.2/",
///     "redis://10.0.0.3/",
/// ])
/// .node_timeout(Duration::from_millis(30))
/// .drift_factor(0.02)
/// .pool_size(16)
/// .build()?;
/// # let _ = backend;
/// # Ok(()) }
/// ```
pub struct RedlockBuilder {
    nodes: Vec<NodeSpec>,
    node_timeout: Duration,
    drift_factor: f64,
    pool_size: u32,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: lock_redis::TlsConfig,
}

impl fmt::Debug for RedlockBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: only their number is shown.
        let mut d = f.debug_struct("RedlockBuilder");
        d.field("nodes", &self.nodes.len())
            .field("node_timeout", &self.node_timeout)
            .field("drift_factor", &self.drift_factor)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

impl RedlockBuilder {
    fn new(nodes: Vec<NodeSpec>) -> Self {
        RedlockBuilder {
            nodes,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            drift_factor: DEFAULT_DRIFT_FACTOR,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: lock_redis::TlsConfig::default(),
        }
    }

    pub(crate) fn from_urls<S: AsRef<str>>(urls: &[S]) -> Self {
        Self::new(
            urls.iter()
                .map(|u| NodeSpec::Url(u.as_ref().to_owned()))
                .collect(),
        )
    }

    pub(crate) fn from_backends<B: LockBackend>(
        nodes: impl IntoIterator<Item = (String, B)>,
    ) -> Self {
        Self::new(
            nodes
                .into_iter()
                .map(|(label, b)| NodeSpec::Backend(label, Arc::new(b)))
                .collect(),
        )
    }

    /// How long one operation waits for each node's answer, counted from the start of the
    /// operation. A node that has not answered by then counts as failed, so a dead,
    /// partitioned or paused node costs at most this much. It is also the read, write and
    /// pool-checkout timeout of each node's connections. Keep it small against your TTLs:
    /// an acquisition never waits past the TTL's validity either. Defaults to 50 ms.
    pub fn node_timeout(mut self, d: Duration) -> Self {
        self.node_timeout = d;
        self
    }

    /// The clock-drift factor: each lock's validity is reduced by `ttl * factor + 2 ms`
    /// to allow for servers whose clocks run at slightly different rates. Must be at least
    /// 0 and below 1. Defaults to 0.01, as in the Redlock specification.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// Connections per node: at most this many operations run on one node at once
    /// (beyond, they wait for a connection on the node's workers, and that wait counts
    /// against the node timeout). For nodes given as backends, the number of worker
    /// threads per node that run their operations. Defaults to 8; at most 256.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// How long opening a connection to a node may take. It runs on a node's worker, not
    /// on the caller, who never waits longer than the node timeout; a slow handshake
    /// (TLS, a far region) then still completes and the connection is pooled for the next
    /// operations. Not used for nodes given as backends. Defaults to 1 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The TLS configuration of every `rediss://` node (one PEM may hold the CAs of
    /// several nodes); checked once per node as by
    /// [`RedisBackendBuilder::tls`](lock_redis::RedisBackendBuilder::tls). Not used for
    /// nodes given as backends. Defaults to [`TlsConfig::new`](lock_redis::TlsConfig::new).
    /// Only with the `tls` feature.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: lock_redis::TlsConfig) -> Self {
        self.tls = config;
        self
    }

    /// Builds the backend as [`build`](RedlockBuilder::build) does, then checks that a
    /// quorum of the nodes can be used: each URL node opens one connection and answers
    /// as [`RedisBackendBuilder::connect`](lock_redis::RedisBackendBuilder::connect)
    /// checks, all nodes side by side, so this takes at most the connect timeout plus
    /// the node timeout; a node given as a backend passes its
    /// [`health_check`](LockBackend::health_check). Nodes that fail are logged at `warn`
    /// and used lazily (they are retried by the first operations). `build` is the lazy
    /// alternative, for a program that may start before its Redis nodes.
    ///
    /// # Errors
    /// As [`build`](RedlockBuilder::build); and [`LockError::Setup`] of kind
    /// [`Quorum`](BackendErrorKind::Quorum) when fewer than a quorum of nodes pass, naming
    /// each failed node (by address, never a password) with its error.
    pub fn connect(self) -> Result<RedlockBackend, LockError> {
        self.assemble(Check::Quorum)
    }

    /// Validates the options, builds one [`RedisBackend`] per URL and starts the nodes'
    /// worker threads. Makes no connection: the first operation connects (the lazy
    /// alternative to [`connect`](RedlockBuilder::connect)).
    ///
    /// # Errors
    /// [`LockError::Setup`] for no nodes, a node listed twice, an invalid URL or TLS
    /// option (naming the node by its position, never showing a password), a zero timeout
    /// or pool size, a drift factor outside `0..1`, or a worker thread that cannot be
    /// started.
    pub fn build(self) -> Result<RedlockBackend, LockError> {
        self.assemble(Check::None)
    }

    fn assemble(self, check: Check) -> Result<RedlockBackend, LockError> {
        let config =
            |msg: String| LockError::from(BackendError::new(BackendErrorKind::Config, msg));
        if self.nodes.is_empty() {
            return Err(config("redlock needs at least one node".into()));
        }
        if self.node_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(config("timeouts must be greater than zero".into()));
        }
        if !(self.drift_factor.is_finite() && (0.0..1.0).contains(&self.drift_factor)) {
            return Err(config(format!(
                "drift factor {} is not in 0..1",
                self.drift_factor
            )));
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(config(format!("pool size must be 1 to {MAX_POOL_SIZE}")));
        }
        let mut resolved = Vec::with_capacity(self.nodes.len());
        for (i, spec) in self.nodes.into_iter().enumerate() {
            resolved.push(match spec {
                NodeSpec::Backend(label, backend) => (label, backend, None),
                NodeSpec::Url(url) => {
                    let node = RedisBackend::builder(&url)
                        .pool_size(self.pool_size)
                        .connect_timeout(self.connect_timeout)
                        .read_timeout(self.node_timeout)
                        .write_timeout(self.node_timeout)
                        .checkout_timeout(self.node_timeout)
                        // Waiting on Redlock polls the quorum; a release message per node
                        // would cost every release and wake nobody.
                        .wake_ups(false);
                    #[cfg(feature = "tls")]
                    let node = node.tls(self.tls.clone());
                    let backend = node.build().map_err(|e| match e {
                        LockError::Setup { source } => {
                            config(format!("node {} of the list: {source}", i + 1))
                        }
                        other => other,
                    })?;
                    (
                        backend.addr().to_owned(),
                        Arc::new(backend.clone()) as Arc<dyn LockBackend>,
                        Some(backend),
                    )
                }
            });
        }
        let mut seen = HashSet::new();
        for (addr, _, _) in &resolved {
            if !seen.insert(addr.as_str()) {
                return Err(config(format!(
                    "node {addr} is listed twice; Redlock needs independent nodes"
                )));
            }
        }
        let n = resolved.len();
        if check == Check::Quorum {
            check_quorum(&resolved, self.connect_timeout + self.node_timeout)?;
        }
        if n % 2 == 0 {
            log::warn!(
                "redlock over {n} nodes: an even count needs a quorum of {} and tolerates no \
                 more failures than {} nodes would; use an odd number",
                quorum(n),
                n - 1
            );
        }
        let workers = self.pool_size as usize;
        let nodes = resolved
            .into_iter()
            .enumerate()
            .map(|(i, (addr, backend, redis))| {
                // A node the caller talks to directly only needs workers for leftovers.
                let workers = match redis {
                    Some(_) => DIRECT_WORKERS.min(workers),
                    None => workers,
                };
                Node::start(
                    i,
                    addr,
                    backend,
                    redis,
                    workers,
                    MAX_QUEUED_PER_NODE,
                    self.node_timeout,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedlockBackend::from_parts(
            nodes,
            self.node_timeout,
            self.drift_factor,
            workers,
        ))
    }
}
