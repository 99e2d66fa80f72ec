//! TLS (`rediss://`): the builder's TLS options, their checks, and the client they build.

use std::fmt;
use std::io;
use std::sync::Arc;

use lock_core::{BackendError, BackendErrorKind};
use redis::{ConnectionAddr, ConnectionInfo, RedisError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::RedisBackendBuilder;

/// The TLS options of a [`RedisBackendBuilder`]; all unset by default.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    root_ca: Option<Vec<u8>>,
    /// Certificate chain and private key, both PEM.
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
    accept_invalid_certs: bool,
}

impl fmt::Debug for TlsOptions {
    /// Whether each option is set, never its bytes (the client key is a secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("root_ca", &self.root_ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("danger_accept_invalid_certs", &self.accept_invalid_certs)
            .finish()
    }
}

impl TlsOptions {
    fn any_set(&self) -> bool {
        self.root_ca.is_some() || self.client_cert.is_some() || self.accept_invalid_certs
    }
}

/// Whether `url` asks for TLS, judged by its scheme only (for `Debug`, which must not
/// parse, let alone show, the rest).
pub(crate) fn is_tls_url(url: &str) -> bool {
    ["rediss://", "valkeys://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

impl RedisBackendBuilder {
    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) for
    /// `rediss://` connections, instead of the system's trust store: the server's
    /// certificate must chain to one of them and name the URL's host (an IP address in
    /// the URL must be in the certificate's subject alternative names). Defaults to unset:
    /// the system's trust store.
    ///
    /// [`build`](RedisBackendBuilder::build) rejects a PEM without a usable certificate,
    /// a `redis://` URL, and the combination with
    /// [`danger_accept_invalid_certs`](RedisBackendBuilder::danger_accept_invalid_certs).
    pub fn tls_root_ca(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls.root_ca = Some(pem.as_ref().to_vec());
        self
    }

    /// Presents this client certificate (PEM, the leaf first, then any intermediates)
    /// with its private key (PEM: PKCS#8, PKCS#1 or SEC1) when the server asks for one,
    /// for mutual TLS (`tls-auth-clients yes` in redis.conf). Defaults to unset: no client
    /// certificate. The key is kept in memory for new connections and never shown.
    ///
    /// [`build`](RedisBackendBuilder::build) rejects an unreadable certificate or key, a
    /// key that does not match the certificate, and a `redis://` URL.
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls.client_cert = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// **Dangerous.** `true` turns every check of the server's certificate off for
    /// `rediss://` connections: any certificate is accepted, from any issuer, for any host
    /// name, expired or not. The connection is still encrypted, but anyone who can
    /// intercept it can pose as the server, read the password and the locks, and answer
    /// what they like. Meant for a test server with a throwaway certificate; give the
    /// server's CA to [`tls_root_ca`](RedisBackendBuilder::tls_root_ca) instead wherever
    /// you can. Defaults to `false`.
    ///
    /// The `redis` crate's `rediss://host/#insecure` URL fragment means the same, so
    /// [`build`](RedisBackendBuilder::build) accepts that fragment only when this is
    /// `true` too (a URL alone never turns the checks off). It also rejects `true` with a
    /// `redis://` URL, or with a root CA set (which would then be ignored). A backend built
    /// with the checks off logs a warning.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.tls.accept_invalid_certs = accept;
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
    tls: &TlsOptions,
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
        return redis::Client::open(info).map_err(|e| crate::to_backend_error(addr, &e));
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
    CryptoProvider::get_default().ok_or_else(|| config("no rustls crypto provider is installed"))
}

/// Checks `tls`'s certificates and key and hands them over in the form the `redis` crate
/// takes.
fn certificates(tls: &TlsOptions) -> Result<redis::TlsCertificates, BackendError> {
    let provider = provider()?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = &tls.root_ca {
        for cert in pem_certificates(pem, "tls root ca")? {
            roots
                .add(cert)
                .map_err(|e| config(format!("tls root ca: not a usable ca certificate ({e})")))?;
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
fn pem_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BackendError> {
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

/// A failed connection attempt says what a mismatch of TLS and plaintext looks like when
/// it is the likely cause: a TLS handshake that got no answer in time (a plaintext server
/// waits for a line that never comes), or a plaintext setup that the server hung up on (a
/// TLS server drops what is not a handshake). Other errors pass unchanged. The I/O error's
/// kind is kept, and with it the error's classification.
pub(crate) fn explain_connect_failure(client: &redis::Client, e: RedisError) -> RedisError {
    let is_tls = matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    );
    let Some(kind) = io_error_kind(&e) else {
        return e;
    };
    let hint = match kind {
        io::ErrorKind::WouldBlock if is_tls => {
            "no answer to the tls handshake in time: is this a tls port?"
        }
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof if !is_tls => {
            "the server hung up during connection setup: a tls port? then use rediss://"
        }
        _ => return e,
    };
    RedisError::from(io::Error::new(kind, format!("{e} ({hint})")))
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

    #[test]
    fn connect_failures_hint_at_a_tls_mismatch_and_keep_their_kind() {
        let tls = redis::Client::open("rediss://127.0.0.1:1/").unwrap();
        let plain = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let timeout = || RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        let reset = || RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));

        let e = explain_connect_failure(&tls, timeout());
        assert!(
            e.is_timeout() && e.to_string().contains("is this a tls port?"),
            "{e}"
        );
        let e = explain_connect_failure(&plain, reset());
        assert!(
            e.is_connection_dropped() && e.to_string().contains("rediss://"),
            "{e}"
        );
        for (client, e) in [(&plain, timeout()), (&tls, reset())] {
            let text = e.to_string();
            assert_eq!(explain_connect_failure(client, e).to_string(), text);
        }
    }
}
