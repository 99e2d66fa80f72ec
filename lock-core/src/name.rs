//! Lock names and tokens.

use std::fmt;
use std::sync::Arc;

use rand::RngCore;

/// The longest accepted lock name, in bytes (before the key prefix is added).
pub const MAX_NAME_LEN: usize = 1024;

/// A lock's name as the caller gave it: any non-empty byte sequence of at most
/// [`MAX_NAME_LEN`] bytes.
///
/// `Display` shows it as text with control and non-UTF-8 bytes escaped, so a hostile name
/// cannot forge log lines. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(Arc<[u8]>);

impl LockName {
    /// Wraps `name` without validating it.
    pub fn new(name: impl AsRef<[u8]>) -> Self {
        LockName(Arc::from(name.as_ref()))
    }

    /// The raw bytes of the name.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '`' || c == '\\' {
                    write!(f, "\\{c}")?;
                } else if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("`")
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockName({self})")
    }
}

/// Keys up to this long live inline, so taking a lock allocates no copy of its name.
const INLINE_KEY: usize = 46;

/// A backend key, the manager's prefix followed by a lock name, with the name's start.
/// The lock path keeps this instead of a [`LockName`] and makes the name (an allocation)
/// only when one is shown: in an error, a log line, or [`LockGuard::name`](crate::LockGuard::name).
#[derive(Clone)]
pub(crate) struct Key {
    bytes: KeyBytes,
    name_start: usize,
}

#[derive(Clone)]
enum KeyBytes {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl Key {
    #[inline]
    pub(crate) fn new(prefix: &[u8], name: &[u8]) -> Self {
        let len = prefix.len() + name.len();
        let bytes = match u8::try_from(len) {
            Ok(short) if len <= INLINE_KEY => {
                let mut buf = [0u8; INLINE_KEY];
                buf[..prefix.len()].copy_from_slice(prefix);
                buf[prefix.len()..len].copy_from_slice(name);
                KeyBytes::Inline(short, buf)
            }
            _ => KeyBytes::Heap([prefix, name].concat().into_boxed_slice()),
        };
        Key {
            bytes,
            name_start: prefix.len(),
        }
    }

    /// The whole key, as the backend stores it.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            KeyBytes::Inline(len, buf) => &buf[..usize::from(*len)],
            KeyBytes::Heap(b) => b,
        }
    }

    /// The lock name alone.
    pub(crate) fn name_bytes(&self) -> &[u8] {
        &self.as_bytes()[self.name_start..]
    }

    /// The lock name, as a new [`LockName`].
    pub(crate) fn name(&self) -> LockName {
        LockName::new(self.name_bytes())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Every byte as its two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// The secret that proves ownership of one acquisition: 128 random bits from `rand`'s
/// thread-local cryptographic generator (ChaCha12, seeded and periodically reseeded from
/// the operating system), written as 32 lowercase hex digits. It carries no time, process
/// or host information.
///
/// A fresh token is drawn for every acquisition, so a holder whose lock expired cannot
/// release or extend its successor's lock. `Debug` shows only a short prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token([u8; 32]);

impl Token {
    /// Draws a fresh random token.
    pub fn generate() -> Self {
        // Two words straight from the generator's buffer (no byte-slice filling), and a
        // byte-to-two-digits table: this runs once per acquisition.
        let mut rng = rand::rng();
        let raw = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).to_le_bytes();
        let mut hex = [0u8; 32];
        for (i, byte) in raw.into_iter().enumerate() {
            let [high, low] = HEX_PAIRS[usize::from(byte)];
            hex[2 * i] = high;
            hex[2 * i + 1] = low;
        }
        Token(hex)
    }

    /// The token as bytes, as stored in the backend.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The first 8 hex digits: enough to correlate log lines, useless to an attacker.
    pub fn short(&self) -> &str {
        &self.as_str()[..8]
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}…)", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex_of_128_bits() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    #[test]
    fn the_hex_table_writes_each_byte_as_two_lowercase_digits() {
        for b in 0..=255u8 {
            assert_eq!(HEX_PAIRS[usize::from(b)], *format!("{b:02x}").as_bytes());
        }
    }

    #[test]
    fn keys_keep_prefix_and_name_inline_or_not() {
        for name in [&b"job"[..], &[b'x'; 60], &[b'y'; 1024]] {
            let k = Key::new(b"lock:", name);
            assert_eq!(k.as_bytes(), [&b"lock:"[..], name].concat());
            assert_eq!(k.name_bytes(), name);
            assert_eq!(k.name(), LockName::new(name));
        }
        assert!(Key::new(b"p:", b"a") < Key::new(b"p:", b"b"));
    }

    #[test]
    fn name_display_escapes_control_and_invalid_bytes() {
        let n = LockName::new(b"a\r\nb\x00\xff`");
        assert_eq!(n.to_string(), "`a\\r\\nb\\u{0}\\xff\\``");
    }
}
