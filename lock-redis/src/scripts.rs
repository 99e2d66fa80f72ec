//! The Lua scripts, each loaded once per server and run by SHA.

use std::sync::LazyLock;

use redis::{Cmd, Script};

/// `EVALSHA <sha> <number of keys> <keys…>`, for the caller to add the arguments.
pub(crate) fn evalsha(script: &Script, keys: &[&[u8]]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    cmd
}

/// Sets the lock if free and mints the next fencing token; a retry by the same token gets
/// its lock refreshed and its fencing token back. KEYS: lock, counter. ARGV: token, ttl ms.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('incr', KEYS[2])
end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return tonumber(redis.call('get', KEYS[2])) or 0
end
return false
",
    )
});

/// Deletes the lock only if it holds our token, then publishes origin..key on the wake
/// channel if one is given (a refused PUBLISH is ignored). KEYS: lock. ARGV: token,
/// [channel, origin].
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('del', KEYS[1])
if ARGV[2] then
  redis.pcall('publish', ARGV[2], ARGV[3] .. KEYS[1])
end
return 1
",
    )
});

/// Deletes the lock whoever holds it, publishing like RELEASE. KEYS: lock. ARGV:
/// [channel, origin].
pub(crate) static FORCE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local deleted = redis.call('del', KEYS[1])
if deleted == 1 and ARGV[1] then
  redis.pcall('publish', ARGV[1], ARGV[2] .. KEYS[1])
end
return deleted
",
    )
});

/// Sets (ARGV[3] = 0) or adds to (ARGV[3] = 1) the TTL only if the lock holds our token;
/// returns the new TTL in ms. KEYS: lock. ARGV: token, ms, mode.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return false
end
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then
  local left = redis.call('pttl', KEYS[1])
  if left > 0 then
    ttl = ttl + left
  end
end
redis.call('pexpire', KEYS[1], ttl)
return ttl
",
    )
});

/// The lock's PTTL if it holds our token, -2 otherwise. KEYS: lock. ARGV: token.
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return -2
end
return redis.call('pttl', KEYS[1])
",
    )
});

/// Answers `writable`, and is refused by a read-only replica before it runs: a script whose flags
/// line does not say `no-writes` may write. What the health check and `connect` send to
/// tell a master from a replica. (A server older than Redis 7 cannot compile the flags
/// line; the health check lets that pass.)
pub(crate) static WRITABLE: LazyLock<Script> =
    LazyLock::new(|| Script::new("#!lua\nreturn 'writable'\n"));
