//! Configuration of a [`RedlockBackend`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{BackendError, BackendErrorKind, LockBackend, LockError};
use lock_redis::{RedisBackend, RedisBackendBuilder};

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
    tls: Tls,
}

/// The TLS options, handed to every node's [`RedisBackendBuilder`] as they are.
#[derive(Default)]
struct Tls {
    root_ca: Option<Vec<u8>>,
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
    accept_invalid_certs: bool,
}

impl Tls {
    fn apply(&self, mut node: RedisBackendBuilder) -> RedisBackendBuilder {
        if let Some(pem) = &self.root_ca {
            node = node.tls_root_ca(pem);
        }
        if let Some((cert, key)) = &self.client_cert {
            node = node.tls_client_cert(cert, key);
        }
        node.danger_accept_invalid_certs(self.accept_invalid_certs)
    }
}

impl fmt::Debug for RedlockBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: only their number is shown.
        f.debug_struct("RedlockBuilder")
            .field("nodes", &self.nodes.len())
            .field("node_timeout", &self.node_timeout)
            .field("drift_factor", &self.drift_factor)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_root_ca", &self.tls.root_ca.is_some())
            .field("tls_client_cert", &self.tls.client_cert.is_some())
            .field(
                "danger_accept_invalid_certs",
                &self.tls.accept_invalid_certs,
            )
            .finish()
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
            tls: Tls::default(),
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

    /// Trusts the CA certificates in `pem` for every `rediss://` node, instead of the
    /// system's trust store; one PEM may hold the CAs of several nodes. Defaults to unset.
    /// As [`RedisBackendBuilder::tls_root_ca`], which checks it (once per node); not used
    /// for nodes given as backends.
    pub fn tls_root_ca(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls.root_ca = Some(pem.as_ref().to_vec());
        self
    }

    /// Presents this client certificate and key (PEM) to every `rediss://` node that asks
    /// for one. Defaults to unset. As [`RedisBackendBuilder::tls_client_cert`]; not used for
    /// nodes given as backends.
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls.client_cert = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// **Dangerous.** `true` turns every check of the nodes' certificates off, so that
    /// anyone who can intercept a connection can pose as a node. Defaults to `false`. As
    /// [`RedisBackendBuilder::danger_accept_invalid_certs`], which says what it allows and
    /// what it refuses (a `#insecure` URL fragment needs it); not used for nodes given as
    /// backends.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.tls.accept_invalid_certs = accept;
        self
    }

    /// Validates the options, builds one [`RedisBackend`] per URL and starts the nodes'
    /// worker threads. Makes no connection: the first operation connects.
    ///
    /// # Errors
    /// [`LockError::Setup`] for no nodes, a node listed twice, an invalid URL or TLS
    /// option (naming the node by its position, never showing a password), a zero timeout
    /// or pool size, a drift factor outside `0..1`, or a worker thread that cannot be
    /// started.
    pub fn build(self) -> Result<RedlockBackend, LockError> {
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
                    let backend = self.tls.apply(node).build().map_err(|e| match e {
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
