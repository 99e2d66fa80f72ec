//! How node errors are shown inside a Redlock error: one error cannot have several
//! sources, so each node's error is written out with its whole chain of causes.

use std::error::Error;

use lock_core::Acquired;
use std::fmt;

/// `e` and each of its sources, joined by `": "`.
pub(crate) fn chain<'a>(e: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(e)
}

/// See [`chain`].
pub(crate) struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

pub(crate) fn acquired_label(a: &Option<Acquired>) -> &'static str {
    if a.is_some() {
        "acquired"
    } else {
        "held by another"
    }
}
