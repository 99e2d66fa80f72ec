//! The wake-up subscriber: one thread per backend, started by the first wait, subscribed
//! to the wake channel, turning other processes' releases into wake-ups.
//!
//! It never panics and never gives up: a failed connection is retried with backoff
//! (waiters poll meanwhile). It ends when its backend is dropped (it holds only a `Weak`)
//! or when nobody has waited for a while, and is started again by the next wait.

use std::sync::Weak;
use std::thread;
use std::time::{Duration, Instant};

use lock_core::BackendErrorKind;
use redis::{RedisError, Value};

use crate::wake::{Wake, ORIGIN_LEN};

/// How long one read blocks: the longest the thread takes to notice that its backend is
/// gone or that it should stop.
const TICK: Duration = Duration::from_millis(200);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A refused subscription (ACL) will not fix itself soon.
const PERMISSION_BACKOFF: Duration = Duration::from_secs(30);
/// After this long without traffic, a PING tells a quiet connection from a dead one.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Starts the subscriber thread of `wake`.
pub(crate) fn spawn(wake: Weak<Wake>, generation: u64) -> std::io::Result<()> {
    thread::Builder::new()
        .name("lock-redis-wake".into())
        .spawn(move || run(&wake, generation))
        .map(drop)
}

enum End {
    /// The backend is gone, or nobody waits any more.
    Stop,
    /// The connection failed or was refused.
    Failed { error: RedisError, was_live: bool },
}

fn run(weak: &Weak<Wake>, generation: u64) {
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    loop {
        let (error, was_live) = match session(weak, generation) {
            End::Stop => break,
            End::Failed { error, was_live } => (error, was_live),
        };
        let Some(wake) = weak.upgrade() else { break };
        wake.set_live(generation, false);
        if was_live {
            backoff = BACKOFF_MIN;
            warned = false;
        }
        let e = crate::error::to_backend_error(&wake.addr, &error);
        let pause = if e.kind() == BackendErrorKind::Permission {
            PERMISSION_BACKOFF
        } else {
            backoff
        };
        if warned {
            log::debug!("wake-up subscriber: {e}; retrying in {pause:?}");
        } else {
            log::warn!(
                "wake-up subscriber: {e}; waiters poll until it is back (retrying in {pause:?})"
            );
            warned = true;
        }
        drop(wake);
        if !pause_for(weak, generation, pause) {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    if let Some(wake) = weak.upgrade() {
        wake.subscriber_exited(generation);
    }
}

/// Sleeps for `d` a tick at a time; `false` if the subscriber should stop meanwhile.
fn pause_for(weak: &Weak<Wake>, generation: u64, d: Duration) -> bool {
    let end = Instant::now().checked_add(d).unwrap_or_else(Instant::now);
    loop {
        let now = Instant::now();
        if now >= end {
            return true;
        }
        thread::sleep((end - now).min(TICK));
        match weak.upgrade() {
            Some(wake) if !wake.should_stop(generation) => {}
            _ => return false,
        }
    }
}

/// One connection: subscribe, then hand every foreign release to the waiters.
fn session(weak: &Weak<Wake>, generation: u64) -> End {
    let failed = |error| End::Failed {
        error,
        was_live: false,
    };
    let (connector, channel, origin) = match weak.upgrade() {
        Some(wake) => match &wake.connector {
            Some(c) => (c.clone(), wake.channel.clone(), wake.origin),
            None => return End::Stop,
        },
        None => return End::Stop,
    };
    let mut conn = match r2d2::ManageConnection::connect(&connector) {
        Ok(conn) => conn,
        Err(e) => return failed(e),
    };
    // SUBSCRIBE by hand: `PubSub::subscribe` would not show us a refusal.
    let subscribe = redis::cmd("SUBSCRIBE").arg(&channel).get_packed_command();
    if let Err(e) = conn.send_packed_command(&subscribe) {
        return failed(e);
    }
    match conn.recv_response() {
        Ok(Value::ServerError(e)) => return failed(e.into()),
        Err(e) => return failed(e),
        Ok(_) => {}
    }
    if let Err(e) = conn.set_read_timeout(Some(TICK)) {
        return failed(e);
    }
    match weak.upgrade() {
        Some(wake) => wake.set_live(generation, true),
        None => return End::Stop,
    }
    log::debug!("wake-up subscriber: subscribed");
    let mut pubsub = conn.as_pubsub();
    let mut quiet_since = Instant::now();
    loop {
        let lost = |error| End::Failed {
            error,
            was_live: true,
        };
        match pubsub.get_message() {
            Ok(msg) => {
                quiet_since = Instant::now();
                let Some(wake) = weak.upgrade() else {
                    return End::Stop;
                };
                // Only our channel is subscribed on this connection.
                let payload = msg.get_payload_bytes();
                if payload.len() > ORIGIN_LEN {
                    let (from, key) = payload.split_at(ORIGIN_LEN);
                    if from != origin {
                        wake.remote_release(key);
                    }
                }
            }
            Err(e) if e.is_timeout() => {
                match weak.upgrade() {
                    Some(wake) if !wake.should_stop(generation) => {}
                    _ => return End::Stop,
                }
                if quiet_since.elapsed() >= KEEPALIVE {
                    let ping = pubsub
                        .set_read_timeout(Some(connector.read_timeout))
                        .and_then(|()| pubsub.ping::<Value>())
                        .and_then(|_| pubsub.set_read_timeout(Some(TICK)));
                    if let Err(e) = ping {
                        return lost(e);
                    }
                    quiet_since = Instant::now();
                }
            }
            Err(e) => return lost(e),
        }
    }
}
