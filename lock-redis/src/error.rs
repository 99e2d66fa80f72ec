//! Mapping `redis` and `r2d2` failures into [`BackendError`]s that never carry secrets.

use lock_core::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Classifies a `redis` error and names the server (`addr` must not hold credentials).
/// The message says what this level knows (the server, and a hint when the failure looks
/// like a TLS problem); the `redis` error itself is the [`source`](std::error::Error::source).
pub(crate) fn to_backend_error(addr: &str, e: &RedisError) -> BackendError {
    described(addr, e, "", None)
}

/// As [`to_backend_error`], with `what` said of the failure (`""`, or a phrase such as
/// `"no connection"`) and a `hint` found where it happened.
fn described(addr: &str, e: &RedisError, what: &str, hint: Option<&'static str>) -> BackendError {
    let text = e.to_string();
    let tls = if e.is_io_error() {
        tls_failure(&text)
    } else {
        None
    };
    let kind = match tls {
        Some(_) => BackendErrorKind::Tls,
        None => classify(e, &text),
    };
    let mut message = format!("redis at {addr}");
    let read_only = is_read_only(e)
        .then_some("the server is a read-only replica: point the backend at a master");
    for part in [
        Some(what).filter(|w| !w.is_empty()),
        tls.or(hint),
        permission_hint(e, &text),
        read_only,
    ]
    .into_iter()
    .flatten()
    {
        message.push_str(": ");
        message.push_str(part);
    }
    BackendError::new(kind, message).with_source(RedisCause(e.clone()))
}

/// A `redis` error as the cause of a [`BackendError`]. The `redis` crate's `Display`
/// already says its own cause (an I/O error, a TLS alert) and its `source()` returns
/// that cause too, so a printed chain would say it twice; this says each cause once: it
/// hands out the `redis` error's source only when its `Display` does not already say it.
#[derive(Debug)]
struct RedisCause(RedisError);

impl std::fmt::Display for RedisCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RedisCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let inner = std::error::Error::source(&self.0)?;
        let said = self.0.to_string();
        (!said.contains(&inner.to_string())).then_some(inner)
    }
}

/// The right a refused command needed, when the refusal says (an ACL user without
/// `+select` refused the `SELECT` of a URL's database number, for example).
fn permission_hint(e: &RedisError, text: &str) -> Option<&'static str> {
    let refused = e.code() == Some("NOPERM")
        || text.contains("NOPERM")
        || text.contains("no permissions")
        || text.contains("refused to switch database");
    if !refused {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("select") || lower.contains("switch database") {
        Some("the acl user may not run SELECT: a database number other than 0 in the url needs +select")
    } else {
        Some("the acl user lacks a right this backend needs (see the crate docs on acl)")
    }
}

/// A read-only replica refused a write: the backend must point at a master.
pub(crate) fn is_read_only(e: &RedisError) -> bool {
    e.code() == Some("READONLY") || e.to_string().contains("READONLY")
}

/// A connection that could not be opened: what the connector met, with the hint it found.
#[derive(Clone)]
pub(crate) struct ConnectFailure {
    pub(crate) error: RedisError,
    pub(crate) hint: Option<&'static str>,
}

impl ConnectFailure {
    pub(crate) fn to_backend_error(&self, addr: &str) -> BackendError {
        described(addr, &self.error, "no connection", self.hint)
    }
}

fn classify(e: &RedisError, text: &str) -> BackendErrorKind {
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
        return BackendErrorKind::Auth;
    }
    if e.code() == Some("NOPERM") || text.contains("NOPERM") {
        return BackendErrorKind::Permission;
    }
    // Writes refused by a read-only replica: the url names a replica, not a master.
    if is_read_only(e) {
        return BackendErrorKind::Config;
    }
    // A command refused by ACL inside a script comes back as a plain ERR with this text.
    if text.contains("can't run this command") || text.contains("no permissions") {
        return BackendErrorKind::Permission;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => BackendErrorKind::Auth,
        ErrorKind::Server(ServerErrorKind::NoPerm) => BackendErrorKind::Permission,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::Protocol,
        ErrorKind::InvalidClientConfig => BackendErrorKind::Config,
        _ if e.is_timeout() => BackendErrorKind::Timeout,
        _ if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() => {
            BackendErrorKind::Io
        }
        _ => BackendErrorKind::Other,
    }
}

/// What a failed TLS handshake means, from the text of the `rustls` error that ended it
/// (as the `redis` error shows it: r2d2 keeps only the text), or `None` if `text` is not a
/// TLS failure.
fn tls_failure(text: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "invalid peer certificate: UnknownIssuer",
            "the server's certificate is not signed by a trusted ca: see tls_root_ca",
        ),
        (
            "certificate not valid for name",
            "the server's certificate is not issued for this host name",
        ),
        (
            "invalid peer certificate",
            "the server's certificate was not accepted",
        ),
        (
            "received fatal alert",
            "the server refused the handshake: does it require a client certificate \
             (tls_client_cert), or not trust ours?",
        ),
        (
            "received corrupt message",
            "the server does not speak tls on this port: try redis://",
        ),
        (
            "received unexpected message",
            "the server does not speak tls on this port: try redis://",
        ),
        ("peer is incompatible", "no tls version or cipher in common"),
        ("peer misbehaved", "the server broke the tls protocol"),
        (
            "peer sent no certificates",
            "the server sent no certificate",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, hint)| *hint)
}

/// A checkout that failed, from a pool that is not ours (`from_pool`): r2d2 reports it
/// as text only ("timed out waiting for connection: <last connect error>"); the kind is
/// recovered from that text. Nothing was sent, so the error is
/// [`unsent`](BackendError::unsent).
pub(crate) fn pool_error(addr: &str, e: r2d2::Error) -> BackendError {
    let text = e.to_string();
    let kind = if tls_failure(&text).is_some() {
        BackendErrorKind::Tls
    } else if text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("uthentication")
    {
        BackendErrorKind::Auth
    } else if text.contains("NOPERM") {
        BackendErrorKind::Permission
    } else if [
        "refused",
        "reset",
        "roken pipe",
        "end of file",
        "No such file",
    ]
    .iter()
    .any(|t| text.contains(t))
    {
        BackendErrorKind::Io
    } else if text.contains("arse error") {
        BackendErrorKind::Protocol
    } else {
        BackendErrorKind::Timeout
    };
    let mut message = format!("redis at {addr}: no connection");
    if let Some(hint) = tls_failure(&text) {
        message.push_str(": ");
        message.push_str(hint);
    }
    BackendError::new(kind, message).with_source(e).unsent()
}

/// No connection became free, and none could be opened, within `waited`.
pub(crate) fn checkout_timeout(addr: &str, waited: std::time::Duration) -> BackendError {
    BackendError::new(
        BackendErrorKind::Timeout,
        format!("redis at {addr}: no connection free or opened within {waited:?}"),
    )
    .unsent()
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, InvalidMessage};

    /// The hints match `rustls`'s own wording, as the `redis` crate shows it.
    #[test]
    fn rustls_handshake_failures_get_their_hint() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "not signed by a trusted ca",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "was not accepted",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "client certificate",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                "not trust ours",
            ),
            (
                rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
                "does not speak tls",
            ),
        ];
        for (error, hint) in cases {
            let redis_error =
                RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
            let e = to_backend_error("h:1/0", &redis_error);
            assert_eq!(e.kind(), BackendErrorKind::Tls, "{e}");
            assert!(e.to_string().contains(hint), "{hint:?} not in: {e}");
            // What `pool_error` reads: r2d2's text around the connect error.
            let pooled = format!("timed out waiting for connection: {redis_error}");
            assert!(
                tls_failure(&pooled).is_some_and(|h| h.contains(hint)),
                "{pooled}"
            );
            // The cause is said once: by the source, not again by the message.
            assert!(!e.to_string().contains(&redis_error.to_string()), "{e}");
        }
        let other = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            to_backend_error("h:1/0", &other).kind(),
            BackendErrorKind::Io
        );
    }
}
