//! Match terms for `LIKE` / `ILIKE` on encrypted text: a keyed Bloom filter of a value's
//! trigrams, which the server can test with bit operations, and the exact pattern matcher the
//! proxy runs on each decrypted candidate (so results are exact: the filter only narrows).
//!
//! # Filter
//!
//! A value is case-folded character by character (`char::to_lowercase`, context-free, so a
//! substring of a value folds to a substring of the folded value), framed by `U+0002` and `U+0003`
//! (so `abc%` and `%abc` can use the value's first and last trigrams), and each window of three
//! characters sets [`BITS_PER_GRAM`] bits, chosen by HMAC-SHA256 under the column's match key, in a
//! [`FILTER_BYTES`]-byte filter (fixed size: the filter does not reveal the value's length).
//!
//! A pattern's mask sets the bits of the trigrams of each literal run (between `%`/`_`), framed
//! where the run touches the pattern's start or end. A value matching the pattern contains every
//! such trigram, so `filter & mask = mask`: **no false negatives** (property-tested). Rows whose
//! filter has the bits but that do not match are false positives the proxy drops after decrypting.
//! A pattern without a run of [`MIN_RUN`] literal characters is refused ([`PatternError::TooShort`]):
//! its mask would select almost every row.
//!
//! Leakage: equal trigram sets give equal filters, and a query's mask shows which bits it needs; the
//! database administrator can count shared trigrams between stored values and between a query and
//! stored values, never read a trigram without the key.
//!
//! # Matching
//!
//! [`like_match`] is SQL `LIKE` over Unicode scalar values (`%` any run, `_` one character, the
//! escape character, default `\`, takes the next one literally); `ILIKE` folds both sides as the
//! filter does. (PostgreSQL's `ILIKE` folds with the database collation; for the few characters
//! whose folding differs from Unicode's simple lowercase mapping the two may disagree.)

use ring::hmac;

/// Size of a value's filter.
pub const FILTER_BYTES: usize = 64;
/// Bits each trigram sets.
pub const BITS_PER_GRAM: usize = 2;
/// The shortest literal run a pattern must contain to be matched through the filter.
pub const MIN_RUN: usize = 3;

const START: char = '\u{2}';
const END: char = '\u{3}';

/// A `LIKE` pattern that cannot be matched through the filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// No run of [`MIN_RUN`] literal characters.
    #[error("the pattern has no run of {MIN_RUN} literal characters between wildcards, so an index term cannot narrow it; make the literal part longer")]
    TooShort,
    /// The pattern ends with the escape character (PostgreSQL refuses it too).
    #[error("the pattern ends with the escape character")]
    TrailingEscape,
}

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Any,
}

fn parse(pattern: &str, escape: Option<char>) -> Result<Vec<Tok>, PatternError> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(n) => out.push(Tok::Lit(n)),
                None => return Err(PatternError::TrailingEscape),
            }
        } else if c == '%' {
            if out.last() != Some(&Tok::Any) {
                out.push(Tok::Any);
            }
        } else if c == '_' {
            out.push(Tok::One);
        } else {
            out.push(Tok::Lit(c));
        }
    }
    Ok(out)
}

fn fold(c: char, out: &mut Vec<char>) {
    out.extend(c.to_lowercase());
}

fn fold_str(s: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        fold(c, &mut out);
    }
    out
}

/// A value's filter, or a pattern's mask.
#[derive(Clone, PartialEq, Eq)]
pub struct MatchFilter(
    /// The bits, as stored with the value and tested by the server.
    pub [u8; FILTER_BYTES],
);

impl std::fmt::Debug for MatchFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MatchFilter({} bits)", self.count())
    }
}

impl MatchFilter {
    fn empty() -> MatchFilter {
        MatchFilter([0; FILTER_BYTES])
    }

    /// Whether every bit of `mask` is set here (what the server tests).
    pub fn contains(&self, mask: &MatchFilter) -> bool {
        self.0.iter().zip(mask.0.iter()).all(|(f, m)| f & m == *m)
    }

    /// Bits set.
    pub fn count(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }
}

/// The key of a column's match terms (32 bytes, derived by the caller from the column key).
pub struct MatchKey {
    key: hmac::Key,
}

impl MatchKey {
    /// A match key from 32 key bytes.
    pub fn new(key: &[u8; 32]) -> MatchKey {
        MatchKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn set_gram(&self, gram: &[char], into: &mut MatchFilter) {
        let mut buf = [0u8; 12];
        let mut len = 0;
        for c in gram {
            if let Some(rest) = buf.get_mut(len..) {
                len += c.encode_utf8(rest).len();
            }
        }
        let tag = hmac::sign(&self.key, buf.get(..len).unwrap_or(&[]));
        let t = tag.as_ref();
        for i in 0..BITS_PER_GRAM {
            let hi = t.get(2 * i).copied().unwrap_or(0) as usize;
            let lo = t.get(2 * i + 1).copied().unwrap_or(0) as usize;
            let bit = ((hi << 8) | lo) % (FILTER_BYTES * 8);
            if let Some(b) = into.0.get_mut(bit / 8) {
                *b |= 1 << (bit % 8);
            }
        }
    }

    fn set_grams(&self, seq: &[char], into: &mut MatchFilter) {
        for w in seq.windows(3) {
            self.set_gram(w, into);
        }
    }

    /// The filter stored with `value`.
    pub fn filter(&self, value: &str) -> MatchFilter {
        let mut seq = Vec::with_capacity(value.len() + 2);
        seq.push(START);
        seq.extend(fold_str(value));
        seq.push(END);
        let mut f = MatchFilter::empty();
        self.set_grams(&seq, &mut f);
        f
    }

    /// The mask a value matching `pattern` (LIKE or ILIKE, `escape` as in `ESCAPE`, `None` for
    /// `ESCAPE ''`) has in its filter.
    pub fn pattern_mask(
        &self,
        pattern: &str,
        escape: Option<char>,
    ) -> Result<MatchFilter, PatternError> {
        let toks = parse(pattern, escape)?;
        let mut mask = MatchFilter::empty();
        let mut longest = 0;
        let mut i = 0;
        while i < toks.len() {
            if !matches!(toks.get(i), Some(Tok::Lit(_))) {
                i += 1;
                continue;
            }
            let start = i;
            let mut run = Vec::new();
            while let Some(Tok::Lit(c)) = toks.get(i) {
                run.push(*c);
                i += 1;
            }
            longest = longest.max(run.len());
            let mut seq = Vec::with_capacity(run.len() + 2);
            if start == 0 {
                seq.push(START);
            }
            for c in run {
                fold(c, &mut seq);
            }
            if i == toks.len() {
                seq.push(END);
            }
            self.set_grams(&seq, &mut mask);
        }
        if longest < MIN_RUN {
            return Err(PatternError::TooShort);
        }
        Ok(mask)
    }
}

/// SQL `LIKE` (or, with `fold_case`, `ILIKE` as described in the module docs) of `value` against
/// `pattern`; `Err` for a pattern ending in the escape character (PostgreSQL refuses it too).
pub fn like_match(
    value: &str,
    pattern: &str,
    escape: Option<char>,
    fold_case: bool,
) -> Result<bool, PatternError> {
    let mut toks = parse(pattern, escape)?;
    let v: Vec<char> = if fold_case {
        fold_str(value)
    } else {
        value.chars().collect()
    };
    if fold_case {
        let mut folded = Vec::with_capacity(toks.len());
        for t in toks {
            match t {
                Tok::Lit(c) => {
                    let mut cs = Vec::new();
                    fold(c, &mut cs);
                    folded.extend(cs.into_iter().map(Tok::Lit));
                }
                other => folded.push(other),
            }
        }
        toks = folded;
    }
    // Greedy matching with one backtrack point per `%` (linear in practice, O(n·m) at worst).
    let (mut vi, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        match toks.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, vi));
                pi += 1;
            }
            Some(Tok::One) => {
                vi += 1;
                pi += 1;
            }
            Some(Tok::Lit(c)) if v.get(vi) == Some(c) => {
                vi += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    pi = sp + 1;
                    vi = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return Ok(false),
            },
        }
    }
    Ok(toks.get(pi..).unwrap_or(&[]).iter().all(|t| *t == Tok::Any))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> MatchKey {
        MatchKey::new(&[7u8; 32])
    }

    #[test]
    fn like_follows_sql() {
        let cases = [
            ("alice@example.com", "%@example.com", true),
            ("alice@example.com", "alice%", true),
            ("alice@example.com", "%lice@%", true),
            ("alice@example.com", "a_ice%", true),
            ("alice@example.com", "%bob%", false),
            ("alice", "alice", true),
            ("alice", "alic", false),
            ("alice", "%", true),
            ("", "%", true),
            ("", "_", false),
            ("100%", "100\\%", true),
            ("1000", "100\\%", false),
            ("a_b", "a\\_b", true),
            ("axb", "a\\_b", false),
            ("ababc", "%abc", true),
            ("Ünïcödé", "%ïcö%", true),
        ];
        for (v, p, want) in cases {
            assert_eq!(
                like_match(v, p, Some('\\'), false),
                Ok(want),
                "{v} LIKE {p}"
            );
        }
        assert_eq!(like_match("Alice", "alice", Some('\\'), false), Ok(false));
        assert_eq!(like_match("Alice", "alice", Some('\\'), true), Ok(true));
        assert_eq!(like_match("ÄBC", "%äb%", Some('\\'), true), Ok(true));
        assert_eq!(
            like_match("a\\b", "a\\b", None, false),
            Ok(true),
            "ESCAPE ''"
        );
        assert_eq!(
            like_match("x", "x\\", Some('\\'), false),
            Err(PatternError::TrailingEscape)
        );
    }

    #[test]
    fn short_patterns_are_refused() {
        let k = key();
        for p in ["%ab%", "a%b", "%", "a_b_c", "%a\\%%"] {
            assert_eq!(
                k.pattern_mask(p, Some('\\')),
                Err(PatternError::TooShort),
                "{p}"
            );
        }
        for p in ["%abc%", "abc%", "%abc", "ab%cde"] {
            assert!(k.pattern_mask(p, Some('\\')).is_ok(), "{p}");
        }
    }

    #[test]
    fn filters_narrow_and_do_not_reveal_length() {
        let k = key();
        let f = k.filter("alice@example.com");
        assert!(f.contains(&k.pattern_mask("%example%", Some('\\')).unwrap()));
        assert!(f.contains(&k.pattern_mask("alice%", Some('\\')).unwrap()));
        assert!(!f.contains(&k.pattern_mask("%zzzqqq%", Some('\\')).unwrap()));
        assert!(
            !f.contains(&k.pattern_mask("lice%", Some('\\')).unwrap()),
            "anchored at the start"
        );
        assert_eq!(k.filter("a").0.len(), k.filter(&"a".repeat(1000)).0.len());
        assert_ne!(
            MatchKey::new(&[8u8; 32]).filter("alice").0,
            k.filter("alice").0
        );
        assert!(format!("{f:?}").contains("bits"), "no bytes in Debug");
    }

    /// A pattern that `value` matches: pieces of it, with wildcards in between.
    fn pattern_of(value: &str, cuts: &[(usize, usize, u8)]) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut p = String::new();
        let mut at = 0;
        for &(start, len, wild) in cuts {
            let start = start.min(chars.len()).max(at);
            let end = (start + len).min(chars.len());
            if start > at || wild == 0 {
                p.push('%');
            }
            for (i, c) in chars[start..end].iter().enumerate() {
                if wild == 1 && i == 1 && end - start > 4 {
                    p.push('_');
                } else if matches!(c, '%' | '_' | '\\') {
                    p.push('\\');
                    p.push(*c);
                } else {
                    p.push(*c);
                }
            }
            at = end;
        }
        if at < chars.len() {
            p.push('%');
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// No false negatives: whatever matches a pattern has the pattern's mask in its filter,
        /// for LIKE and ILIKE, with Unicode, wildcards and escapes.
        #[test]
        fn a_matching_value_contains_the_mask(
            value in "[a-cA-CäÄß%_\\\\ ]{0,24}",
            cuts in proptest::collection::vec((0usize..24, 0usize..10, 0u8..3), 1..4),
            upper in any::<bool>(),
        ) {
            let k = key();
            let mut pattern = pattern_of(&value, &cuts);
            if upper {
                pattern = pattern.to_uppercase();
            }
            let fold_case = upper;
            let matches = like_match(&value, &pattern, Some('\\'), fold_case);
            prop_assume!(matches == Ok(true));
            if let Ok(mask) = k.pattern_mask(&pattern, Some('\\')) {
                prop_assert!(k.filter(&value).contains(&mask), "{value:?} LIKE {pattern:?}");
            }
        }

        /// Every substring of at least three characters, as `%s%`, `s%` at the start or `%s` at
        /// the end, has its mask in the value's filter (always indexable, so never vacuous).
        #[test]
        fn substrings_are_found(value in "\\PC{3,40}", a in 0usize..40, len in 3usize..12) {
            let k = key();
            let chars: Vec<char> = value.chars().collect();
            let start = a % (chars.len() - 2);
            let end = (start + len).min(chars.len());
            prop_assume!(end - start >= 3);
            let esc = |cs: &[char]| -> String {
                cs.iter().flat_map(|c| match c {
                    '%' | '_' | '\\' => vec!['\\', *c],
                    c => vec![*c],
                }).collect()
            };
            let sub = esc(&chars[start..end]);
            let f = k.filter(&value);
            for p in [format!("%{sub}%"), format!("{}%", esc(&chars[..end])), format!("%{}", esc(&chars[start..]))] {
                let mask = k.pattern_mask(&p, Some('\\')).expect("a run of three");
                prop_assert!(f.contains(&mask), "{:?} LIKE {:?}", value, p);
                prop_assert_eq!(like_match(&value, &p, Some('\\'), false), Ok(true));
            }
        }

        /// The matcher agrees with a regular expression built from the same pattern.
        #[test]
        fn like_agrees_with_a_regex(
            value in "[ab_%]{0,10}",
            pattern in "[ab_%]{0,6}",
        ) {
            let mut re = String::from("^");
            for c in pattern.chars() {
                match c {
                    '%' => re.push_str("(?s:.*)"),
                    '_' => re.push_str("(?s:.)"),
                    c => re.push_str(&regex_lite_escape(c)),
                }
            }
            re.push('$');
            let want = simple_regex_match(&re, &value);
            prop_assert_eq!(like_match(&value, &pattern, None, false), Ok(want), "{} ~ {}", value, re);
        }
    }

    fn regex_lite_escape(c: char) -> String {
        c.to_string()
    }

    /// A tiny backtracking matcher for the regexes above (`^`, `$`, literals, `(?s:.)`, `(?s:.*)`).
    fn simple_regex_match(re: &str, value: &str) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum T {
            L(char),
            One,
            Any,
        }
        let body = re.trim_start_matches('^').trim_end_matches('$');
        let mut toks = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("(?s:.*)") {
                toks.push(T::Any);
                rest = r;
            } else if let Some(r) = rest.strip_prefix("(?s:.)") {
                toks.push(T::One);
                rest = r;
            } else {
                let c = rest.chars().next().unwrap();
                toks.push(T::L(c));
                rest = &rest[c.len_utf8()..];
            }
        }
        fn go(t: &[T], v: &[char]) -> bool {
            match t.first() {
                None => v.is_empty(),
                Some(T::Any) => (0..=v.len()).any(|i| go(&t[1..], &v[i..])),
                Some(T::One) => !v.is_empty() && go(&t[1..], &v[1..]),
                Some(T::L(c)) => v.first() == Some(c) && go(&t[1..], &v[1..]),
            }
        }
        let v: Vec<char> = value.chars().collect();
        go(&toks, &v)
    }
}
