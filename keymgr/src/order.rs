//! Order terms for range queries on encrypted columns (issue 24): an order-preserving encoding of
//! 64-bit values whose bytes compare like the values, so a plain btree index on `bytea` answers
//! `<`, `BETWEEN`, `ORDER BY`, `MIN`/`MAX`.
//!
//! # Why order-preserving, not order-revealing
//!
//! A block order-revealing scheme (Lewi–Wu) leaks less, but its ciphertexts compare only through a
//! function the server runs; backing an index with it needs a custom btree operator class, and
//! `CREATE OPERATOR CLASS` requires a superuser, which managed PostgreSQL (RDS, Cloud SQL) does not
//! give. Bytes that compare in order need nothing installed and use the index as it is. The price:
//! ciphertexts reveal the order of all values and, as for every order-preserving scheme, roughly
//! their magnitude (about half the bits of a value leak to someone who sees many ciphertexts).
//!
//! # Construction
//!
//! A keyed random order-preserving function from the 64-bit domain into a 96-bit range, built by
//! lazy binary splitting: the domain interval is halved at its midpoint, and the range interval
//! is split at a point drawn by HMAC-SHA256 (under the column's order key) from the positions that
//! leave each half at least as much range as it has domain; the value's half is followed down, 64
//! levels, and the last range interval gives the term (a point in it drawn the same way). Two
//! values part at the level where their halves differ, and everything under the left half maps
//! below the split point, everything under the right half above it: the encoding is strictly
//! increasing (property-tested), deterministic, and a different key gives an unrelated function.
//! (The split is uniform rather than hypergeometric as in Boldyreva et al.: simpler, and no
//! weaker in what matters here, since any order-preserving function reveals the order and
//! approximate values anyway.)
//!
//! Signed values are mapped to unsigned by flipping the sign bit, so `i64` order is kept.
//!
//! Cost: 65 HMAC-SHA256 evaluations per term (one per level and one for the point); the proxy
//! computes one per written value and two per range bound. Not measured yet (no benchmark).

use ring::hmac;

/// Bytes of an order term: a big-endian 96-bit integer.
pub const TERM_BYTES: usize = 12;

/// The key of a column's order terms (32 bytes, derived by the caller from the column key).
pub struct OrderKey {
    key: hmac::Key,
}

impl std::fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderKey([redacted])")
    }
}

/// A uniform draw from `[lo, hi]` (inclusive) keyed by the path so far.
fn draw(key: &hmac::Key, level: u8, dlo: u64, lo: u128, hi: u128) -> u128 {
    let mut msg = [0u8; 1 + 8 + 16];
    let parts = std::iter::once(level)
        .chain(dlo.to_be_bytes())
        .chain(lo.to_be_bytes());
    for (o, b) in msg.iter_mut().zip(parts) {
        *o = b;
    }
    let tag = hmac::sign(key, &msg);
    let mut r = [0u8; 16];
    for (o, b) in r.iter_mut().zip(tag.as_ref()) {
        *o = *b;
    }
    let span = hi - lo + 1;
    // 128 random bits reduced mod a span below 2^97: the bias is below 2^-31.
    lo + u128::from_be_bytes(r) % span
}

impl OrderKey {
    /// An order key from 32 key bytes.
    pub fn new(key: &[u8; 32]) -> OrderKey {
        OrderKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The term of an unsigned value.
    pub fn encode_u64(&self, x: u64) -> [u8; TERM_BYTES] {
        let (mut dlo, mut dhi) = (0u64, u64::MAX);
        let (mut rlo, mut rhi) = (0u128, (1u128 << 96) - 1);
        for level in 0u8..64 {
            // Domain halves [dlo, dm] and [dm + 1, dhi]; each needs as many range points.
            let dm = dlo + (dhi - dlo) / 2;
            let left = u128::from(dm - dlo) + 1;
            let right = u128::from(dhi - dm);
            // The split s ends the left half's range: [rlo, s] and [s + 1, rhi].
            let s = draw(&self.key, level, dlo, rlo + left - 1, rhi - right);
            if x <= dm {
                dhi = dm;
                rhi = s;
            } else {
                dlo = dm + 1;
                rlo = s + 1;
            }
            if dlo == dhi {
                break;
            }
        }
        let point = draw(&self.key, 64, dlo, rlo, rhi);
        let bytes = point.to_be_bytes();
        let mut out = [0u8; TERM_BYTES];
        for (o, b) in out.iter_mut().zip(bytes.iter().skip(16 - TERM_BYTES)) {
            *o = *b;
        }
        out
    }

    /// The term of a signed value (sign bit flipped, so negative values come first).
    pub fn encode_i64(&self, x: i64) -> [u8; TERM_BYTES] {
        self.encode_u64((x as u64) ^ (1 << 63))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> OrderKey {
        OrderKey::new(&[9u8; 32])
    }

    #[test]
    fn boundaries_keep_their_order() {
        let k = key();
        let xs = [
            i64::MIN,
            i64::MIN + 1,
            -1_000_000,
            -2,
            -1,
            0,
            1,
            2,
            1_000_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        for w in xs.windows(2) {
            assert!(
                k.encode_i64(w[0]) < k.encode_i64(w[1]),
                "{} < {}",
                w[0],
                w[1]
            );
        }
        assert!(k.encode_u64(0) < k.encode_u64(u64::MAX));
        assert_eq!(k.encode_i64(42), k.encode_i64(42), "deterministic");
        assert_ne!(
            OrderKey::new(&[1u8; 32]).encode_i64(42),
            k.encode_i64(42),
            "another key, another function"
        );
        assert!(format!("{k:?}").contains("redacted"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// encode(a) < encode(b) exactly when a < b (and equal exactly when equal).
        #[test]
        fn order_is_preserved(a in any::<i64>(), b in any::<i64>()) {
            let k = key();
            prop_assert_eq!(k.encode_i64(a).cmp(&k.encode_i64(b)), a.cmp(&b));
        }

        /// Neighbours too (where a uniform draw would rarely land).
        #[test]
        fn neighbours_keep_their_order(a in any::<i64>().prop_filter("room", |a| *a < i64::MAX)) {
            let k = key();
            prop_assert!(k.encode_i64(a) < k.encode_i64(a + 1));
        }
    }
}
