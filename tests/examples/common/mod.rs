//! What the recipes share: the lock backend picked from `REDIS_URL`, and a small store
//! for their data (the "database" a real program would protect with the lock).
//!
//! - `REDIS_URL` unset: the memory backend, and the store is a map in this process.
//! - `REDIS_URL=redis://host:port/`: one Redis server, which also keeps the store.
//! - `REDIS_URL=redis://a/,redis://b/,redis://c/`: Redlock over those masters; the store
//!   lives on the first of them.

#![allow(dead_code)] // each recipe uses part of it

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::LockManager;
use lock_memory::MemoryBackend;
use lock_redis::RedisBackend;
use lock_redlock::RedlockBackend;

pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// How long the store keeps what the recipes write: a day, so nothing lives forever.
const KEEP_SECS: u64 = 24 * 3600;

/// Writes `value` unless the record has seen a greater token than `token`: the check a
/// resource makes with fencing tokens, atomically on the server.
const WRITE_FENCED: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
if tonumber(ARGV[1]) < seen then return 0 end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1";

/// The lock manager and the store, on the backend `REDIS_URL` names.
pub fn setup() -> Result<(LockManager, Store)> {
    let urls: Vec<String> = std::env::var("REDIS_URL")
        .unwrap_or_default()
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    Ok(match urls.as_slice() {
        [] => {
            println!("backend: memory (set REDIS_URL to use Redis, or a comma list for Redlock)");
            let store = Store::Memory(Arc::default());
            (LockManager::new(MemoryBackend::new()), store)
        }
        [url] => {
            let backend = RedisBackend::connect(url)?;
            println!("backend: redis at {}", backend.addr());
            (LockManager::new(backend), Store::redis(url)?)
        }
        urls => {
            let backend = RedlockBackend::builder(urls)
                .node_timeout(Duration::from_millis(500))
                .build()?;
            println!("backend: redlock over {}", backend.addrs().join(", "));
            (LockManager::new(backend), Store::redis(&urls[0])?)
        }
    })
}

/// Records of `(fencing token, value)` by key: in this process, or in Redis.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<Mutex<HashMap<String, (u64, String)>>>),
    Redis(Box<redis::Client>),
}

impl Store {
    fn redis(url: &str) -> Result<Self> {
        Ok(Store::Redis(Box::new(redis::Client::open(url)?)))
    }

    fn conn(client: &redis::Client) -> Result<redis::Connection> {
        let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(conn)
    }

    fn map(
        m: &Mutex<HashMap<String, (u64, String)>>,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, String)>> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value at `key`, if any.
    pub fn read(&self, key: &str) -> Result<Option<String>> {
        match self {
            Store::Memory(m) => Ok(Self::map(m).get(key).map(|(_, v)| v.clone())),
            Store::Redis(c) => Ok(redis::cmd("HGET")
                .arg(key)
                .arg("value")
                .query(&mut Self::conn(c)?)?),
        }
    }

    /// Sets `key` to `value`, whatever was there.
    pub fn write(&self, key: &str, value: &str) -> Result<()> {
        match self {
            Store::Memory(m) => {
                Self::map(m).insert(key.to_owned(), (0, value.to_owned()));
                Ok(())
            }
            Store::Redis(c) => Ok(redis::pipe()
                .hset(key, "value", value)
                .expire(key, KEEP_SECS as i64)
                .query(&mut Self::conn(c)?)?),
        }
    }

    /// Sets `key` to `value` unless a greater token than `token` was written there
    /// before; `false` (and nothing written) for such a stale token.
    pub fn write_fenced(&self, key: &str, token: u64, value: &str) -> Result<bool> {
        match self {
            Store::Memory(m) => {
                let mut map = Self::map(m);
                if map.get(key).is_some_and(|(seen, _)| token < *seen) {
                    return Ok(false);
                }
                map.insert(key.to_owned(), (token, value.to_owned()));
                Ok(true)
            }
            Store::Redis(c) => {
                let written: i64 = redis::Script::new(WRITE_FENCED)
                    .key(key)
                    .arg(token)
                    .arg(value)
                    .arg(KEEP_SECS)
                    .invoke(&mut Self::conn(c)?)?;
                Ok(written == 1)
            }
        }
    }

    /// Adds one to the number at `key` (0 if unset) and returns the new count.
    pub fn incr(&self, key: &str) -> Result<i64> {
        match self {
            Store::Memory(m) => {
                let mut map = Self::map(m);
                let entry = map.entry(key.to_owned()).or_insert((0, "0".into()));
                let n = entry.1.parse::<i64>().unwrap_or(0) + 1;
                entry.1 = n.to_string();
                Ok(n)
            }
            Store::Redis(c) => {
                let (n,): (i64,) = redis::pipe()
                    .hincr(key, "value", 1)
                    .expire(key, KEEP_SECS as i64)
                    .ignore()
                    .query(&mut Self::conn(c)?)?;
                Ok(n)
            }
        }
    }

    /// The number at `key`, 0 if unset.
    pub fn count(&self, key: &str) -> Result<i64> {
        Ok(self.read(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<()> {
        match self {
            Store::Memory(m) => {
                Self::map(m).remove(key);
                Ok(())
            }
            Store::Redis(c) => Ok(redis::cmd("DEL").arg(key).query(&mut Self::conn(c)?)?),
        }
    }
}

/// `name` from the environment, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name for this run of a recipe: unique per process and time.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}
