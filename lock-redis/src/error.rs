//! Mapping `redis` and `r2d2` failures into [`BackendError`]s that never carry secrets.

use lock_core::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Classifies a `redis` error and names the server (`addr` must not hold credentials).
/// Public so the Redlock backend maps node errors the same way.
pub fn to_backend_error(addr: &str, e: &RedisError) -> BackendError {
    let text = e.to_string();
    if e.is_io_error() {
        if let Some(hint) = tls_failure(&text) {
            return BackendError::new(
                BackendErrorKind::Tls,
                format!("redis at {addr}: {text} ({hint})"),
            )
            .with_source(e.clone());
        }
    }
    let kind = classify(e, &text);
    BackendError::new(kind, format!("redis at {addr}: {text}")).with_source(e.clone())
}

fn classify(e: &RedisError, text: &str) -> BackendErrorKind {
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
        return BackendErrorKind::Auth;
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

/// r2d2 reports a failed checkout as text only ("timed out waiting for connection: <last
/// connect error>"); recover the kind from the redis error text it carries. Nothing was
/// sent, so the error is [`unsent`](BackendError::unsent).
pub(crate) fn pool_error(addr: &str, e: &r2d2::Error) -> BackendError {
    checkout_error(addr, e).unsent()
}

fn checkout_error(addr: &str, e: &r2d2::Error) -> BackendError {
    let text = e.to_string();
    if let Some(hint) = tls_failure(&text) {
        return BackendError::new(
            BackendErrorKind::Tls,
            format!("redis at {addr}: no connection: {text} ({hint})"),
        );
    }
    let kind = if text.contains("WRONGPASS")
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
    BackendError::new(kind, format!("redis at {addr}: no connection: {text}"))
}

#[cfg(test)]
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
        }
        let other = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            to_backend_error("h:1/0", &other).kind(),
            BackendErrorKind::Io
        );
    }
}
