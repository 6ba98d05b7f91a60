//! Fuzz the LIKE matcher and the match filter with arbitrary values and patterns: never panic, and
//! never a false negative (a value that matches a pattern always has the pattern's mask).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcloak_keymgr::matching::{like_match, MatchKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (value, pattern) = text.split_once('\u{1}').unwrap_or((text, "%"));
    let key = MatchKey::new(&[3u8; 32]);
    let filter = key.filter(value);
    for escape in [Some('\\'), None] {
        for fold in [false, true] {
            if like_match(value, pattern, escape, fold) == Ok(true) {
                if let Ok(mask) = key.pattern_mask(pattern, escape) {
                    assert!(filter.contains(&mask), "false negative: {value:?} LIKE {pattern:?}");
                }
            }
        }
    }
});
