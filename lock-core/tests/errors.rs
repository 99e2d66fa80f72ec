//! Errors follow the convention of the Rust API guidelines and `anyhow`: each level's
//! `Display` describes that level only and the cause comes from `source()`, so printing
//! a chain shows every cause once.

use std::error::Error as _;

use lock_core::testing::Faulty;
use lock_core::{BackendError, BackendErrorKind, LockBackend, LockError, LockManager, LockName};
use lock_memory::MemoryBackend;

fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

fn assert_no_level_repeats_its_cause(e: &(dyn std::error::Error + 'static)) {
    let levels = chain(e);
    for pair in levels.windows(2) {
        assert!(
            !pair[0].contains(&pair[1]),
            "level {:?} repeats its cause {:?} (whole chain: {levels:?})",
            pair[0],
            pair[1]
        );
    }
}

fn io_failure() -> BackendError {
    BackendError::new(BackendErrorKind::Io, "cannot reach 127.0.0.1:1").with_source(
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
    )
}

#[test]
fn error_chains_show_every_cause_once() {
    let errors = [
        LockError::Backend {
            name: LockName::new("job"),
            source: io_failure(),
        },
        LockError::Setup {
            source: BackendError::new(BackendErrorKind::Config, "bad url"),
        },
        LockError::from(io_failure()),
    ];
    for e in &errors {
        assert_no_level_repeats_its_cause(e);
        assert!(e.source().is_some(), "{e}: the cause must stay reachable");
    }
}

/// A backend that answers nothing.
fn down() -> Faulty<MemoryBackend> {
    let b = Faulty::new(MemoryBackend::new());
    b.fail_all(BackendErrorKind::Io);
    b
}

#[test]
fn a_failed_health_check_is_not_a_setup_failure() {
    let err = LockManager::new(down()).health_check().unwrap_err();
    assert!(!matches!(err, LockError::Setup { .. }), "{err}");
    assert!(!err.to_string().contains("setup"), "{err}");
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io));
    assert_no_level_repeats_its_cause(&err);
    // `?` on a backend's own ping: an unreachable server is not a setup failure either.
    let converted: LockError = down().health_check().unwrap_err().into();
    assert!(!converted.to_string().contains("setup"), "{converted}");
    let err = LockManager::new(down()).try_lock("x").unwrap_err();
    assert_no_level_repeats_its_cause(&err);
}

#[test]
fn the_alternate_form_shows_the_whole_chain_once() {
    let e = LockError::Backend {
        name: LockName::new("job"),
        source: io_failure(),
    };
    assert_eq!(e.to_string(), "backend failed for lock `job`");
    assert_eq!(
        format!("{e:#}"),
        "backend failed for lock `job`: i/o error: cannot reach 127.0.0.1:1: connection refused"
    );
}
