//! TLS (`rediss://`): the one TLS configuration value, its checks, and the client it
//! builds. Everything but the URL-scheme test and the hints on failed connections exists
//! only with the `tls` feature.

use std::io;
use std::sync::Arc;

use redis::{ConnectionAddr, RedisError};

#[cfg(feature = "tls")]
pub(crate) use with_tls::client;
#[cfg(feature = "tls")]
pub use with_tls::TlsConfig;

/// Whether `url` asks for TLS, judged by its scheme only (for `Debug`, which must not
/// parse, let alone show, the rest).
pub(crate) fn is_tls_url(url: &str) -> bool {
    ["rediss://", "valkeys://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

/// The error for a `rediss://` URL in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(crate) fn no_tls_feature() -> lock_core::BackendError {
    lock_core::BackendError::new(
        lock_core::BackendErrorKind::Config,
        "rediss:// urls need the `tls` cargo feature of lock-redis (or of lock-redlock), \
         which this build does not have",
    )
}

#[cfg(feature = "tls")]
mod with_tls {
    use std::fmt;
    use std::sync::Arc;

    use lock_core::{BackendError, BackendErrorKind};
    use redis::{ConnectionAddr, ConnectionInfo};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// The TLS configuration of `rediss://` connections, taken by
    /// [`RedisBackendBuilder::tls`](crate::RedisBackendBuilder::tls) and by the Redlock
    /// builder (the same value for every node). All unset by default: the system's trust
    /// store, no client certificate, certificate checks on. Only with the `tls` feature.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use lock_redis::{RedisBackend, TlsConfig};
    /// let tls = TlsConfig::new()
    ///     .root_ca(std::fs::read("/etc/redis/tls/ca.crt")?)
    ///     .client_cert(
    ///         std::fs::read("/etc/redis/tls/client.crt")?,
    ///         std::fs::read("/etc/redis/tls/client.key")?,
    ///     );
    /// let backend = RedisBackend::builder("rediss://redis.internal:6380/").tls(tls).build()?;
    /// # let _ = backend; Ok(()) }
    /// ```
    #[derive(Clone, Default)]
    pub struct TlsConfig {
        root_ca: Option<Vec<u8>>,
        /// Certificate chain and private key, both PEM.
        client_cert: Option<(Vec<u8>, Vec<u8>)>,
        accept_invalid_certs: bool,
    }

    impl fmt::Debug for TlsConfig {
        /// Whether each option is set, never its bytes (the client key is a secret).
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TlsConfig")
                .field("root_ca", &self.root_ca.is_some())
                .field("client_cert", &self.client_cert.is_some())
                .field("danger_accept_invalid_certs", &self.accept_invalid_certs)
                .finish()
        }
    }

    impl TlsConfig {
        /// The default: the system's trust store, no client certificate, checks on.
        pub fn new() -> Self {
            Self::default()
        }

        pub(crate) fn any_set(&self) -> bool {
            self.root_ca.is_some() || self.client_cert.is_some() || self.accept_invalid_certs
        }

        /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) instead
        /// of the system's trust store: the server's certificate must chain to one of them and
        /// name the URL's host (an IP address in the URL must be in the certificate's subject
        /// alternative names). One PEM may hold the CAs of several Redlock nodes. Defaults to
        /// unset: the system's trust store.
        ///
        /// `build` rejects a PEM without a usable certificate, a `redis://` URL, and the
        /// combination with [`danger_accept_invalid_certs`](TlsConfig::danger_accept_invalid_certs).
        pub fn root_ca(mut self, pem: impl AsRef<[u8]>) -> Self {
            self.root_ca = Some(pem.as_ref().to_vec());
            self
        }

        /// Presents this client certificate (PEM, the leaf first, then any intermediates)
        /// with its private key (PEM: PKCS#8, PKCS#1 or SEC1) when the server asks for one,
        /// for mutual TLS (`tls-auth-clients yes` in redis.conf). Defaults to unset. The key
        /// is kept in memory for new connections and never shown.
        ///
        /// `build` rejects an unreadable certificate or key, a key that does not match the
        /// certificate, and a `redis://` URL.
        pub fn client_cert(
            mut self,
            cert_pem: impl AsRef<[u8]>,
            key_pem: impl AsRef<[u8]>,
        ) -> Self {
            self.client_cert = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
            self
        }

        /// **Dangerous.** `true` turns every check of the server's certificate off: any
        /// certificate is accepted, from any issuer, for any host name, expired or not. The
        /// connection is still encrypted, but anyone who can intercept it can pose as the
        /// server, read the password and the locks, and answer what they like. Meant for a
        /// test server with a throwaway certificate; give the server's CA to
        /// [`root_ca`](TlsConfig::root_ca) instead wherever you can. Defaults to `false`.
        ///
        /// The `redis` crate's `rediss://host/#insecure` URL fragment means the same, so
        /// `build` accepts that fragment only when this is `true` too (a URL alone never turns
        /// the checks off). It also rejects `true` with a `redis://` URL, or with a root CA
        /// set (which would then be ignored). A backend built with the checks off logs a
        /// warning.
        pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
            self.accept_invalid_certs = accept;
            self
        }
    }

    fn config(msg: impl Into<String>) -> BackendError {
        BackendError::new(BackendErrorKind::Config, msg)
    }

    /// The `redis` client for `info` with `tls`'s options. Every TLS option is checked here,
    /// by building the `rustls` configuration once, so that a bad PEM is reported by `build()`
    /// and not by the first connection.
    pub(crate) fn client(
        info: ConnectionInfo,
        tls: &TlsConfig,
        addr: &str,
    ) -> Result<redis::Client, BackendError> {
        let ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } = info.addr()
        else {
            if tls.any_set() {
                return Err(config(
                    "tls options need a rediss:// url (this one is not tls)",
                ));
            }
            return redis::Client::open(info).map_err(|e| crate::error::to_backend_error(addr, &e));
        };
        if *insecure && !tls.accept_invalid_certs {
            return Err(config(
                "the url's #insecure fragment turns tls certificate checks off; it needs \
             danger_accept_invalid_certs(true) on the builder too",
            ));
        }
        if tls.accept_invalid_certs && tls.root_ca.is_some() {
            return Err(config(
                "tls_root_ca has no effect with danger_accept_invalid_certs(true); set one of them",
            ));
        }
        let certificates = certificates(tls)?;
        let info = if tls.accept_invalid_certs {
            log::warn!(
                "redis at {addr}: tls certificate checks are off (danger_accept_invalid_certs): \
             the server is not authenticated"
            );
            let addr = ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: true,
                tls_params: None,
            };
            info.set_addr(addr)
        } else {
            info
        };
        redis::Client::build_with_tls(info, certificates).map_err(|e| {
            // Already parsed above, so this is unexpected; still a configuration problem.
            config(format!("redis at {addr}: tls setup failed: {e}"))
        })
    }

    /// The process-wide `rustls` crypto provider: ring, unless the application installed
    /// another one first (which is then used as it is).
    fn provider() -> Result<&'static Arc<CryptoProvider>, BackendError> {
        // Err only means that a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        CryptoProvider::get_default()
            .ok_or_else(|| config("no rustls crypto provider is installed"))
    }

    /// Checks `tls`'s certificates and key and hands them over in the form the `redis` crate
    /// takes.
    fn certificates(tls: &TlsConfig) -> Result<redis::TlsCertificates, BackendError> {
        let provider = provider()?;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &tls.root_ca {
            for cert in pem_certificates(pem, "tls root ca")? {
                roots.add(cert).map_err(|e| {
                    config(format!("tls root ca: not a usable ca certificate ({e})"))
                })?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config(format!("tls setup failed: {e}")))?
            .with_root_certificates(roots);
        let client_tls = match &tls.client_cert {
            None => None,
            Some((cert_pem, key_pem)) => {
                let chain = pem_certificates(cert_pem, "tls client certificate")?;
                // The key parser's errors may quote the PEM: say nothing of its content.
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
                    config("tls client key: no readable pem private key (pkcs#8, pkcs#1 or sec1)")
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| config(format!("tls client certificate and key: {e}")))?;
                Some(redis::ClientTlsConfig {
                    client_cert: cert_pem.clone(),
                    client_key: key_pem.clone(),
                })
            }
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert: tls.root_ca.clone(),
        })
    }

    /// The certificates of `pem`: at least one, or an error naming `what`.
    fn pem_certificates(
        pem: &[u8],
        what: &str,
    ) -> Result<Vec<CertificateDer<'static>>, BackendError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config(format!("{what}: unreadable pem ({e})")))?;
        if certs.is_empty() {
            return Err(config(format!(
                "{what}: no pem certificate found (expected -----BEGIN CERTIFICATE-----)"
            )));
        }
        Ok(certs)
    }
}

/// What a failed connection attempt suggests when a mismatch of TLS and plaintext is the
/// likely cause: a TLS handshake that got no answer in time (a plaintext server waits for
/// a line that never comes), or a plaintext setup that the server hung up on while it
/// still takes connections (a TLS server drops what is not a handshake; a server that
/// went away refuses the next connection, and gets no hint). `None` otherwise.
pub(crate) fn connect_failure_hint(client: &redis::Client, e: &RedisError) -> Option<&'static str> {
    let addr = client.get_connection_info().addr();
    let is_tls = matches!(addr, ConnectionAddr::TcpTls { .. });
    match io_error_kind(e)? {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if is_tls => {
            Some("no answer to the tls handshake in time: is this a tls port?")
        }
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof if !is_tls => {
            let ConnectionAddr::Tcp(host, port) = addr else {
                return None;
            };
            still_listening(host, *port).then_some(
                "the server hung up during connection setup: a tls port? then use rediss://",
            )
        }
        _ => None,
    }
}

/// Whether a TCP connection to `host:port` opens now (within 100 ms). A host name is not
/// resolved (that could block): it counts as listening.
fn still_listening(host: &str, port: u16) -> bool {
    let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() else {
        return true;
    };
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::new(ip, port),
        std::time::Duration::from_millis(100),
    )
    .is_ok()
}

/// The kind of the I/O error that `e` wraps, if it wraps one.
fn io_error_kind(e: &RedisError) -> Option<io::ErrorKind> {
    // The `redis` crate keeps its cause as an `Arc<dyn Error>`, which is what `source()`
    // hands out; the I/O error is inside it.
    let source = std::error::Error::source(e)?;
    let inner = source.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?;
    inner.downcast_ref::<io::Error>().map(io::Error::kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_told_by_their_scheme() {
        assert!(is_tls_url("rediss://h/"));
        assert!(is_tls_url("REDISS://h/"));
        assert!(is_tls_url("valkeys://h/"));
        assert!(!is_tls_url("redis://h/"));
        assert!(!is_tls_url("rediss"));
        assert!(!is_tls_url(""));
        assert!(!is_tls_url("é"));
    }

    #[test]
    fn the_io_error_kind_is_found_inside_a_redis_error() {
        let e = RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(io_error_kind(&e), Some(io::ErrorKind::WouldBlock));
        let e = RedisError::from((redis::ErrorKind::Parse, "not io"));
        assert_eq!(io_error_kind(&e), None);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn connect_failures_hint_at_a_tls_mismatch_only_when_it_fits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls = redis::Client::open(format!("rediss://127.0.0.1:{open}/")).unwrap();
        let plain = redis::Client::open(format!("redis://127.0.0.1:{open}/")).unwrap();
        let gone = redis::Client::open(format!("redis://127.0.0.1:{closed}/")).unwrap();
        let timeout = || RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        let reset = || RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));

        let hint = connect_failure_hint(&tls, &timeout()).unwrap();
        assert!(hint.contains("is this a tls port?"), "{hint}");
        let hint = connect_failure_hint(&plain, &reset()).unwrap();
        assert!(hint.contains("rediss://"), "{hint}");
        // A server that hung up and is gone: no tls hint.
        assert_eq!(connect_failure_hint(&gone, &reset()), None);
        assert_eq!(connect_failure_hint(&plain, &timeout()), None);
        assert_eq!(connect_failure_hint(&tls, &reset()), None);
    }
}
