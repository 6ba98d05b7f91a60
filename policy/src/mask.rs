//! Masks: how a `masked` reader sees a value. Applied by the proxy to the decrypted text form of a value.
//!
//! A masked column is always presented to the client as type `text` (whatever its logical type), so every
//! mask returns text — or NULL where nothing may be shown. NULL values stay NULL (the proxy does not call
//! [`apply_mask`] for them).

use std::fmt;

use ring::hmac;

/// A mask from the policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mask {
    /// `****` followed by the last 4 characters (`****4567`); values of 4 characters or fewer are `****`.
    Last4,
    /// First character of the local part, `***`, then the domain: `a***@example.com`.
    /// A value without `@` is redacted.
    Email,
    /// `****` for every value and every logical type (a masked column is text to the client).
    Redact,
    /// A keyed, consistent pseudonym: `h:` + 16 hex digits of HMAC-SHA256(key, value). Same value and key,
    /// same pseudonym, so masked readers can still group and join on it.
    Hash,
    /// Keep `front` leading and `back` trailing characters, `****` between; values too short to hide
    /// anything are `****`.
    Partial { front: usize, back: usize },
}

/// Largest K accepted in `partial(K_FRONT,K_BACK)`.
pub const PARTIAL_MAX: usize = 64;

const STARS: &str = "****";

impl Mask {
    /// Parse a mask as written in the policy file; the error says what to write instead.
    pub fn parse(s: &str) -> Result<Mask, String> {
        match s {
            "last4" => return Ok(Mask::Last4),
            "email" => return Ok(Mask::Email),
            "redact" => return Ok(Mask::Redact),
            "hash" => return Ok(Mask::Hash),
            _ => {}
        }
        let fix = "write partial(K_FRONT,K_BACK) with two whole numbers, e.g. partial(2,4)";
        if let Some(rest) = s.strip_prefix("partial") {
            let inner = rest
                .trim_start()
                .strip_prefix('(')
                .and_then(|r| r.trim_end().strip_suffix(')'));
            let Some(inner) = inner else {
                return Err(format!("malformed mask `{s}`; {fix}"));
            };
            let nums: Vec<&str> = inner.split(',').map(str::trim).collect();
            let [a, b] = nums.as_slice() else {
                return Err(format!("malformed mask `{s}`: expected two numbers; {fix}"));
            };
            let (Ok(front), Ok(back)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                return Err(format!(
                    "malformed mask `{s}`: `{a}`/`{b}` are not whole numbers; {fix}"
                ));
            };
            if front > PARTIAL_MAX || back > PARTIAL_MAX {
                return Err(format!(
                    "mask `{s}` keeps too much: K_FRONT and K_BACK must be at most {PARTIAL_MAX}"
                ));
            }
            if front == 0 && back == 0 {
                return Err(format!("mask `{s}` keeps nothing; use \"redact\" instead"));
            }
            return Ok(Mask::Partial { front, back });
        }
        Err(format!(
            "unknown mask `{s}`; use one of last4, email, redact, hash, partial(K_FRONT,K_BACK)"
        ))
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Last4 => f.write_str("last4"),
            Mask::Email => f.write_str("email"),
            Mask::Redact => f.write_str("redact"),
            Mask::Hash => f.write_str("hash"),
            Mask::Partial { front, back } => write!(f, "partial({front},{back})"),
        }
    }
}

/// The value a masked reader receives (always presented as type `text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskedValue {
    Text(String),
    Null,
}

/// Mask the text form of one decrypted (or plaintext) value, whatever the column's type.
///
/// Every mask works on the PostgreSQL text form of the value (`12345`, `2024-01-31`, `\x00ff`), character
/// by character (never splitting UTF-8). `hash_key` keys the `hash` mask; the proxy passes one key per
/// deployment (or per column, if pseudonyms must not be joinable across columns).
pub fn apply_mask(mask: Mask, plaintext: &str, hash_key: &[u8]) -> MaskedValue {
    let text = match mask {
        Mask::Redact => STARS.to_string(),
        Mask::Last4 => {
            let n = plaintext.chars().count();
            if n <= 4 {
                STARS.to_string()
            } else {
                let tail: String = plaintext.chars().skip(n - 4).collect();
                format!("{STARS}{tail}")
            }
        }
        Mask::Email => match plaintext.rsplit_once('@') {
            Some((local, domain)) if !domain.is_empty() => match local.chars().next() {
                Some(first) => format!("{first}***@{domain}"),
                None => format!("***@{domain}"),
            },
            _ => STARS.to_string(),
        },
        Mask::Hash => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, hash_key);
            let tag = hmac::sign(&key, plaintext.as_bytes());
            let bytes = tag.as_ref();
            format!("h:{}", hex::encode(bytes.get(..8).unwrap_or(bytes)))
        }
        Mask::Partial { front, back } => {
            let n = plaintext.chars().count();
            if front.saturating_add(back) >= n {
                STARS.to_string()
            } else {
                let head: String = plaintext.chars().take(front).collect();
                let tail: String = plaintext.chars().skip(n - back).collect();
                format!("{head}{STARS}{tail}")
            }
        }
    };
    MaskedValue::Text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mask: Mask, s: &str) -> String {
        match apply_mask(mask, s, b"k") {
            MaskedValue::Text(t) => t,
            MaskedValue::Null => "NULL".into(),
        }
    }

    #[test]
    fn masks_as_documented() {
        assert_eq!(m(Mask::Last4, "555-123-4567"), "****4567");
        assert_eq!(m(Mask::Last4, "4567"), "****");
        assert_eq!(m(Mask::Last4, ""), "****");
        assert_eq!(m(Mask::Email, "alice@example.com"), "a***@example.com");
        assert_eq!(m(Mask::Email, "@example.com"), "***@example.com");
        assert_eq!(m(Mask::Email, "not-an-email"), "****");
        assert_eq!(m(Mask::Email, "a@"), "****");
        assert_eq!(m(Mask::Redact, "anything"), "****");
        assert_eq!(
            m(Mask::Partial { front: 2, back: 2 }, "4111111111111111"),
            "41****11"
        );
        assert_eq!(m(Mask::Partial { front: 2, back: 2 }, "abcd"), "****");
        assert_eq!(
            m(Mask::Partial { front: 0, back: 3 }, "héllo wörld"),
            "****rld"
        );
        assert_eq!(m(Mask::Last4, "日本語のテキスト"), "****テキスト");
    }

    #[test]
    fn hash_is_keyed_and_consistent() {
        let a = apply_mask(Mask::Hash, "alice", b"key1");
        let b = apply_mask(Mask::Hash, "alice", b"key1");
        let c = apply_mask(Mask::Hash, "alice", b"key2");
        let d = apply_mask(Mask::Hash, "bob", b"key1");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        match a {
            MaskedValue::Text(t) => {
                assert!(t.starts_with("h:"));
                assert_eq!(t.len(), 18);
                assert!(!t.contains("alice"));
            }
            MaskedValue::Null => panic!("hash gave NULL"),
        }
    }

    #[test]
    fn non_text_types_mask_their_text_form() {
        let v = apply_mask(Mask::Last4, "123456789", b"");
        assert_eq!(v, MaskedValue::Text("****6789".into()));
        let v = apply_mask(Mask::Redact, "t", b"");
        assert_eq!(v, MaskedValue::Text("****".into()));
    }

    #[test]
    fn parse_masks() {
        assert_eq!(
            Mask::parse("partial(2,4)"),
            Ok(Mask::Partial { front: 2, back: 4 })
        );
        assert_eq!(
            Mask::parse("partial( 1 , 0 )"),
            Ok(Mask::Partial { front: 1, back: 0 })
        );
        for bad in [
            "partial",
            "partial(2)",
            "partial(a,b)",
            "partial(2,4",
            "partial(-1,2)",
            "partial(0,0)",
            "partial(1000,1)",
            "last5",
            "partial(1,2,3)",
        ] {
            assert!(Mask::parse(bad).is_err(), "{bad} should be rejected");
        }
        for m in ["last4", "email", "redact", "hash", "partial(3,1)"] {
            assert_eq!(Mask::parse(m).map(|x| x.to_string()), Ok(m.to_string()));
        }
    }
}
