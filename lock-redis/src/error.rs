//! Mapping `redis` and `r2d2` failures into [`BackendError`]s that never carry secrets.

use lock_core::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Classifies a `redis` error and names the server (`addr` must not hold credentials).
/// Public so the Redlock backend maps node errors the same way.
pub fn to_backend_error(addr: &str, e: &RedisError) -> BackendError {
    let kind = classify(e);
    BackendError::new(kind, format!("redis at {addr}: {e}")).with_source(e.clone())
}

fn classify(e: &RedisError) -> BackendErrorKind {
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
        return BackendErrorKind::Auth;
    }
    // A command refused by ACL inside a script comes back as a plain ERR with this text.
    let text = e.to_string();
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

/// r2d2 reports a failed checkout as text only ("timed out waiting for connection: <last
/// connect error>"); recover the kind from the redis error text it carries.
pub(crate) fn pool_error(addr: &str, e: &r2d2::Error) -> BackendError {
    let text = e.to_string();
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
