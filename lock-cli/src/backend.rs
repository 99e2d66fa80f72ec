//! From `--url` (or `DISTLOCK_URL`) and the TLS options to a lock manager.

use lock_core::{LockManager, LockManagerBuilder};
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
    let tls = tls_config(&args.tls)?;
    let builder = if let [url] = urls.as_slice() {
        let b = RedisBackend::builder(url).connect_timeout(args.connect_timeout);
        #[cfg(feature = "tls")]
        let b = b.tls(tls.clone());
        // Fails fast (within the connect timeout) on a server that does not answer.
        let backend = b.connect().map_err(|e| {
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
        let b = b.tls(tls);
        // Needs a quorum of nodes answering, checked side by side.
        LockManager::builder(b.connect()?)
    };
    Ok(builder.prefix(&args.prefix))
}

/// Builds the manager with its defaults.
pub fn plain_manager(args: &BackendArgs) -> Result<LockManager, Failure> {
    Ok(manager(args)?.build()?)
}

/// The TLS options as the library's one TLS configuration, shared by both builders.
#[cfg(feature = "tls")]
fn tls_config(args: &crate::cli::TlsArgs) -> Result<lock_redis::TlsConfig, Failure> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Failure::usage(format!("cannot read {flag} {}: {e}", path.display())))
    };
    let mut config =
        lock_redis::TlsConfig::new().danger_accept_invalid_certs(args.danger_accept_invalid_certs);
    if let Some(path) = &args.tls_ca {
        config = config.root_ca(read("--tls-ca", path)?);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.client_cert(read("--tls-cert", cert)?, read("--tls-key", key)?);
    }
    Ok(config)
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
