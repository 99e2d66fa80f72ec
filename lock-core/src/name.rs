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
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let mut hex = [0u8; 32];
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in raw.iter().enumerate() {
            hex[2 * i] = DIGITS[(b >> 4) as usize];
            hex[2 * i + 1] = DIGITS[(b & 0xf) as usize];
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
    fn name_display_escapes_control_and_invalid_bytes() {
        let n = LockName::new(b"a\r\nb\x00\xff`");
        assert_eq!(n.to_string(), "`a\\r\\nb\\u{0}\\xff\\``");
    }
}
