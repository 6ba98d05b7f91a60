//! Test-only helpers shared by the tests of every pgcloak crate; a dev-dependency only, never linked
//! into the proxy.
#![forbid(unsafe_code)]

/// xorshift64*: reproducible pseudo-random inputs for property loops and load generators (the same
/// seed gives the same sequence on every machine, so a failure can be replayed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; zero is made non-zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// Up to `max_len` random bytes.
    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Up to `max_len` bytes drawn mostly from `alphabet` (so parsers get past their first checks),
    /// one in eight random.
    pub fn bytes_from(&mut self, alphabet: &[u8], max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| match alphabet.get(self.below(alphabet.len())) {
                Some(&b) if self.below(8) != 0 => b,
                _ => self.next() as u8,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert!(xs.iter().all(|&x| x == b.next()));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
        assert_ne!(Rng::new(0).next(), 0);
        assert!((0..1000).all(|_| a.below(10) < 10));
        assert_eq!(a.below(0), 0);
        assert!(a.bytes(5).len() <= 5);
        let from = a.bytes_from(b"ab", 1000);
        assert!(from.iter().filter(|c| b"ab".contains(c)).count() > from.len() / 2);
    }
}
