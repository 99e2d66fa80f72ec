//! From `--url` (or `DISTLOCK_URL`) and the TLS options to a lock manager.

use std::time::{Duration, Instant};

use lock_core::{LockBackend, LockManager, LockManagerBuilder};
use lock_redis::RedisBackend;
use lock_redlock::RedlockBackend;

use crate::cli::BackendArgs;
use crate::exit::Failure;

/// The URLs given, split at commas and trimmed, in order.
fn urls(args: &BackendArgs) -> Result<Vec<&str>, Failure> {
    let urls: Vec<&str> = args
        .urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(Failure::usage(
            "no backend: give --url redis://HOST:PORT/ (repeat it for Redlock) or set DISTLOCK_URL",
        ));
    }
    Ok(urls)
}

/// A manager builder on one Redis server, or on Redlock over several.
pub fn manager(args: &BackendArgs) -> Result<LockManagerBuilder, Failure> {
    let urls = urls(args)?;
    #[cfg(feature = "tls")]
    let tls = Tls::read(&args.tls)?;
    let builder = if let [url] = urls.as_slice() {
        let b = RedisBackend::builder(url).connect_timeout(args.connect_timeout);
        #[cfg(feature = "tls")]
        let b = tls.apply_redis(b);
        let backend = b.build().map_err(|e| {
            let mut f = Failure::from(e);
            f.message = format!("--url {}: {}", redact(url), f.message);
            f
        })?;
        LockManager::builder(backend)
    } else {
        let b = RedlockBackend::builder(&urls)
            .connect_timeout(args.connect_timeout)
            .node_timeout(args.node_timeout);
        #[cfg(feature = "tls")]
        let b = tls.apply_redlock(b);
        let backend = b.build()?;
        connect_nodes(&backend, args.connect_timeout + args.node_timeout);
        LockManager::builder(backend)
    };
    Ok(builder.prefix(&args.prefix))
}

/// Gives the nodes' connections time to open (on the nodes' workers, within the connect
/// timeout) before the first lock call: a Redlock call waits a node timeout only, which a
/// first connection can outlast. Returns after `bound` at most; the first lock call then
/// reports a node that is still not answering.
fn connect_nodes(backend: &RedlockBackend, bound: Duration) {
    let start = Instant::now();
    while backend.health_check().is_err() && start.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds the manager with its defaults.
pub fn plain_manager(args: &BackendArgs) -> Result<LockManager, Failure> {
    Ok(manager(args)?.build()?)
}

/// The TLS files, read.
#[cfg(feature = "tls")]
struct Tls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    insecure: bool,
}

#[cfg(feature = "tls")]
impl Tls {
    fn read(args: &crate::cli::TlsArgs) -> Result<Self, Failure> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Failure::usage(format!("cannot read {flag} {}: {e}", path.display())))
        };
        let ca = args
            .tls_ca
            .as_deref()
            .map(|p| read("--tls-ca", p))
            .transpose()?;
        let client = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((read("--tls-cert", cert)?, read("--tls-key", key)?)),
            _ => None,
        };
        Ok(Tls {
            ca,
            client,
            insecure: args.danger_accept_invalid_certs,
        })
    }

    fn apply_redis(
        &self,
        mut b: lock_redis::RedisBackendBuilder,
    ) -> lock_redis::RedisBackendBuilder {
        if let Some(ca) = &self.ca {
            b = b.tls_root_ca(ca);
        }
        if let Some((cert, key)) = &self.client {
            b = b.tls_client_cert(cert, key);
        }
        b.danger_accept_invalid_certs(self.insecure)
    }

    fn apply_redlock(&self, mut b: lock_redlock::RedlockBuilder) -> lock_redlock::RedlockBuilder {
        if let Some(ca) = &self.ca {
            b = b.tls_root_ca(ca);
        }
        if let Some((cert, key)) = &self.client {
            b = b.tls_client_cert(cert, key);
        }
        b.danger_accept_invalid_certs(self.insecure)
    }
}

/// `url` with any user and password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "(url)".to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_user_and_password() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://u:p@ss@h/"), "redis://***@h/");
        assert_eq!(redact("rediss://h:6380/"), "rediss://h:6380/");
        assert_eq!(redact("no-scheme:pw@h"), "(url)");
    }
}
