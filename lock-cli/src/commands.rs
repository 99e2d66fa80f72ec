//! `distlock status`, `wait` and `unlock`: looking at a lock without holding it.

use lock_core::LockError;

use crate::cli::{BackendArgs, NameArgs, UnlockArgs, WaitArgs};
use crate::exit::{self, Failure};

/// `distlock status NAME`: prints whether the lock is held and for how long yet.
///
/// # Errors
/// A [`Failure`] if the backend cannot answer or the input is bad.
pub fn status(args: &NameArgs, backend: &BackendArgs) -> Result<u8, Failure> {
    let mgr = crate::backend::plain_manager(backend)?;
    let shown = lock_core::LockName::new(&args.name);
    match mgr.ttl(&args.name)? {
        Some(left) if left == std::time::Duration::MAX => {
            println!("{shown} is held, without an expiry");
            Ok(0)
        }
        Some(left) => {
            let left = std::time::Duration::from_millis(left.as_millis() as u64);
            println!(
                "{shown} is held, for {} more unless renewed",
                humantime::format_duration(left)
            );
            Ok(0)
        }
        None => {
            println!("{shown} is free");
            Ok(exit::FREE)
        }
    }
}

/// `distlock wait NAME`: returns once nobody holds the lock, taking nothing.
///
/// # Errors
/// A [`Failure`] if the wait ends with the lock still held, the backend cannot answer or
/// the input is bad.
pub fn wait(args: &WaitArgs, backend: &BackendArgs) -> Result<u8, Failure> {
    let mgr = crate::backend::plain_manager(backend)?;
    match mgr.wait_unlocked(&args.name, args.wait) {
        Ok(()) => Ok(0),
        Err(LockError::Timeout { name, waited }) => Err(Failure::new(
            args.conflict_exit_code,
            format!(
                "lock {name} is still held after {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    waited.as_millis() as u64
                ))
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `distlock unlock --force NAME`: deletes the lock whoever holds it.
///
/// # Errors
/// A [`Failure`] without `--force`, if the backend cannot answer, or for bad input.
pub fn unlock(args: &UnlockArgs, backend: &BackendArgs) -> Result<u8, Failure> {
    if !args.force {
        return Err(Failure::usage(
            "unlock deletes the lock whoever holds it, which is unsafe while the holder still \
             works; add --force if it is known to be gone",
        ));
    }
    let mgr = crate::backend::plain_manager(backend)?;
    let shown = lock_core::LockName::new(&args.name);
    eprintln!(
        "distlock: warning: force-unlocking {shown}: its holder is not told and may still be \
         working; the next taker will run at the same time as it"
    );
    match mgr.force_unlock(&args.name)? {
        true => {
            println!("{shown} deleted");
            Ok(0)
        }
        false => {
            println!("{shown} was not locked");
            Ok(exit::FREE)
        }
    }
}
