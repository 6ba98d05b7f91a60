//! Finding sensitive data (`pgcloak discover`): detectors that check a value's content and structure
//! (checksums, number plans, calendar dates), hints from column names and comments, and the
//! per-column verdict: a class, a confidence (the share of sampled values that matched), the detector,
//! and a policy suggestion (encryption mode, mask).
//!
//! Pure: the proxy samples the values and prints the findings; nothing here keeps or returns a value.
//! Decoys are not flagged: an 18-digit string whose GB 11643 check character is wrong is no identity
//! number, a digit run failing Luhn is no card, UUIDs and timestamps match nothing, and a column is
//! only flagged by content when most of its sampled values match the same detector.

use std::fmt;

use crate::model::Class;

/// What a value (or a column's name) looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    Email,
    /// E.164 (`+` and 8 to 15 digits) or a mainland China mobile number (11 digits, `13`–`19`).
    Phone,
    /// Mainland China resident identity number: 17 digits and a GB 11643 check character, with a
    /// valid birth date.
    CnResidentId,
    /// 13 to 19 digits (spaces or dashes allowed between groups) passing the Luhn check.
    BankCard,
    /// ISO 13616: country code, check digits, BBAN; mod-97 = 1.
    Iban,
    /// US social security number `AAA-GG-SSSS` with the SSA's area, group and serial rules.
    UsSsn,
    IpAddress,
    /// A calendar date in a column whose name says birth date.
    DateOfBirth,
    /// One or two capital letters and 7 or 8 digits in a column whose name says passport.
    Passport,
    /// Found by name or comment only (`salary`, `address`, `name`, ...).
    NameHint(Hint),
}

/// What a column's name or comment alone suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hint {
    Salary,
    Address,
    PersonName,
    Secret,
}

impl Detector {
    /// Every content detector, in the order values are tried (most specific first).
    const CONTENT: [Detector; 7] = [
        Detector::CnResidentId,
        Detector::Iban,
        Detector::UsSsn,
        Detector::BankCard,
        Detector::Email,
        Detector::IpAddress,
        Detector::Phone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::CnResidentId => "cn_resident_id",
            Detector::BankCard => "bank_card",
            Detector::Iban => "iban",
            Detector::UsSsn => "us_ssn",
            Detector::IpAddress => "ip_address",
            Detector::DateOfBirth => "date_of_birth",
            Detector::Passport => "passport",
            Detector::NameHint(Hint::Salary) => "name:salary",
            Detector::NameHint(Hint::Address) => "name:address",
            Detector::NameHint(Hint::PersonName) => "name:person_name",
            Detector::NameHint(Hint::Secret) => "name:secret",
        }
    }

    /// The class a column of this kind should have.
    pub fn class(self) -> Class {
        match self {
            Detector::IpAddress => Class::Internal,
            Detector::DateOfBirth
            | Detector::NameHint(Hint::Salary)
            | Detector::NameHint(Hint::Address)
            | Detector::NameHint(Hint::PersonName) => Class::Sensitive,
            _ => Class::Confidential,
        }
    }

    /// `deterministic` for identifiers applications look rows up by, `randomized` otherwise.
    pub fn suggested_mode(self) -> &'static str {
        match self {
            Detector::Email
            | Detector::Phone
            | Detector::CnResidentId
            | Detector::BankCard
            | Detector::Iban
            | Detector::UsSsn
            | Detector::Passport => "deterministic",
            _ => "randomized",
        }
    }

    /// The mask a `masked` reader should see.
    pub fn suggested_mask(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone | Detector::BankCard | Detector::Iban | Detector::UsSsn => "last4",
            Detector::CnResidentId => "partial(3,4)",
            Detector::Passport => "partial(1,2)",
            _ => "redact",
        }
    }

    /// Whether one value has this detector's content and structure. Name-only detectors (and
    /// dates of birth and passports, which need the name too) match through [`column_hint`].
    pub fn matches(self, v: &str) -> bool {
        let v = v.trim();
        match self {
            Detector::Email => is_email(v),
            Detector::Phone => is_phone(v),
            Detector::CnResidentId => is_cn_resident_id(v),
            Detector::BankCard => is_bank_card(v),
            Detector::Iban => is_iban(v),
            Detector::UsSsn => is_us_ssn(v),
            Detector::IpAddress => v.parse::<std::net::IpAddr>().is_ok(),
            Detector::DateOfBirth => {
                parse_date(v).is_some_and(|(y, _, _)| (1900..=2100).contains(&y))
            }
            Detector::Passport => is_passport_like(v),
            Detector::NameHint(_) => false,
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first content detector `v` matches.
pub fn classify_value(v: &str) -> Option<Detector> {
    Detector::CONTENT.into_iter().find(|d| d.matches(v))
}

/// What a column's name and comment suggest (lower-cased words, Chinese terms too).
pub fn column_hint(name: &str, comment: Option<&str>) -> Option<Detector> {
    let text = format!("{} {}", name, comment.unwrap_or("")).to_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    // Whole words (`phone`, `dob`), and compound names as written (`first_name`, `card_no`).
    let has = |w: &str| words.contains(&w) || text.split_whitespace().any(|t| t == w);
    let contains = |s: &str| text.contains(s);
    let table: [(bool, Detector); 12] = [
        (has("ssn") || contains("social security"), Detector::UsSsn),
        (
            contains("身份证")
                || has("idcard")
                || has("id_card")
                || contains("id card")
                || contains("national_id")
                || has("sfz"),
            Detector::CnResidentId,
        ),
        (has("passport") || contains("护照"), Detector::Passport),
        (has("iban"), Detector::Iban),
        (
            contains("银行卡")
                || has("card")
                || contains("card_no")
                || contains("card_number")
                || has("pan"),
            Detector::BankCard,
        ),
        (
            has("email") || has("mail") || contains("e-mail") || contains("邮箱"),
            Detector::Email,
        ),
        (
            has("phone")
                || has("mobile")
                || has("tel")
                || has("cell")
                || contains("手机")
                || contains("电话"),
            Detector::Phone,
        ),
        (
            has("dob") || contains("birth") || contains("生日") || contains("出生"),
            Detector::DateOfBirth,
        ),
        (
            has("salary") || has("wage") || has("income") || contains("工资") || contains("薪"),
            Detector::NameHint(Hint::Salary),
        ),
        (
            has("password") || has("secret") || has("token") || contains("密码"),
            Detector::NameHint(Hint::Secret),
        ),
        (
            has("address") || has("street") || contains("地址"),
            Detector::NameHint(Hint::Address),
        ),
        (
            has("first_name")
                || has("last_name")
                || has("full_name")
                || has("surname")
                || contains("姓名"),
            Detector::NameHint(Hint::PersonName),
        ),
    ];
    table.into_iter().find(|(hit, _)| *hit).map(|(_, d)| d)
}

/// How confident a content finding must be: the share of sampled non-empty values that matched.
pub const MIN_CONFIDENCE: f64 = 0.6;

/// The verdict on one column.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub detector: Detector,
    pub class: Class,
    /// Share of the sampled non-empty values that matched `detector` (0 for a name-only finding
    /// on a column with no matching values).
    pub confidence: f64,
    /// Non-empty values sampled.
    pub sampled: usize,
    /// `content`: most values matched; `name`: the name or comment said so.
    pub basis: &'static str,
}

/// Counts what a column's sampled values match; the values themselves are not kept.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    sampled: usize,
    hits: Vec<(Detector, usize)>,
}

impl Tally {
    /// Counts one sampled value (NULLs and empty strings are not counted).
    pub fn add(&mut self, v: &str) {
        if v.trim().is_empty() {
            return;
        }
        self.sampled += 1;
        for d in Detector::CONTENT
            .into_iter()
            .chain([Detector::DateOfBirth, Detector::Passport])
        {
            if d.matches(v) {
                match self.hits.iter_mut().find(|(h, _)| *h == d) {
                    Some((_, n)) => *n += 1,
                    None => self.hits.push((d, 1)),
                }
            }
        }
    }

    pub fn sampled(&self) -> usize {
        self.sampled
    }

    fn share(&self, d: Detector) -> f64 {
        if self.sampled == 0 {
            return 0.0;
        }
        let n = self
            .hits
            .iter()
            .find(|(h, _)| *h == d)
            .map_or(0, |(_, n)| *n);
        n as f64 / self.sampled as f64
    }

    /// The verdict: a content detector most values matched (dates of birth and passports also need
    /// the name), else what the name or comment says, else nothing.
    pub fn verdict(&self, name: &str, comment: Option<&str>) -> Option<Finding> {
        let hint = column_hint(name, comment);
        let best = Detector::CONTENT
            .into_iter()
            .map(|d| (d, self.share(d)))
            .filter(|(_, s)| *s >= MIN_CONFIDENCE)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((d, share)) = best {
            return Some(Finding {
                detector: d,
                class: d.class(),
                confidence: share,
                sampled: self.sampled,
                basis: "content",
            });
        }
        let hint = hint?;
        let share = self.share(hint);
        // A name that promises content the values do not have (a `card_ref` of random digits, a
        // `birthday` of free text) flags nothing; names without a content detector (salary,
        // address, person names, secrets) flag by themselves. Columns with no text values sampled
        // (dates, numbers) are judged by the name.
        if !matches!(hint, Detector::NameHint(_)) && self.sampled > 0 && share < MIN_CONFIDENCE {
            return None;
        }
        Some(Finding {
            detector: hint,
            class: hint.class(),
            confidence: share,
            sampled: self.sampled,
            basis: if share >= MIN_CONFIDENCE {
                "content"
            } else {
                "name"
            },
        })
    }
}

fn digits_only(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
}

fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.');
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    local_ok && domain_ok
}

fn is_phone(v: &str) -> bool {
    let compact: String = v
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    if let Some(rest) = compact.strip_prefix('+') {
        // E.164: a country code (no leading 0) and at most 15 digits in all.
        if !(digits_only(rest) && (8..=15).contains(&rest.len()) && !rest.starts_with('0')) {
            return false;
        }
        // +86 numbers must be valid mainland mobiles or landlines (10 to 12 digits after 86).
        if let Some(cn) = rest.strip_prefix("86") {
            return is_cn_mobile(cn) || (9..=11).contains(&cn.len());
        }
        return true;
    }
    is_cn_mobile(&compact)
}

fn is_cn_mobile(d: &str) -> bool {
    d.len() == 11
        && digits_only(d)
        && d.starts_with('1')
        && matches!(d.as_bytes().get(1), Some(b'3'..=b'9'))
}

/// GB 11643-1999: 6-digit area, 8-digit birth date, 3-digit sequence, ISO 7064 MOD 11-2 check.
fn is_cn_resident_id(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 18 || !b.iter().take(17).all(u8::is_ascii_digit) {
        return false;
    }
    let Some(&last) = b.get(17) else { return false };
    if Some(last.to_ascii_uppercase()) != gb11643_check(b) {
        return false;
    }
    // The first digit is a region (1-8, and 9 for some newer codes); the birth date must exist.
    if !matches!(b.first(), Some(b'1'..=b'9')) {
        return false;
    }
    let date = std::str::from_utf8(b.get(6..14).unwrap_or_default()).unwrap_or("");
    let (y, m, d) = (
        date.get(0..4).and_then(|s| s.parse::<i32>().ok()),
        date.get(4..6).and_then(|s| s.parse::<u32>().ok()),
        date.get(6..8).and_then(|s| s.parse::<u32>().ok()),
    );
    match (y, m, d) {
        (Some(y), Some(m), Some(d)) => (1900..=2100).contains(&y) && valid_date(y, m, d),
        _ => false,
    }
}

/// The ISO 7064 MOD 11-2 check character of the first 17 digits of `digits`.
fn gb11643_check(digits: &[u8]) -> Option<u8> {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = digits
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d.wrapping_sub(b'0')) * w)
        .sum();
    b"10X98765432".get((sum % 11) as usize).copied()
}

fn is_bank_card(v: &str) -> bool {
    let groups: Vec<&str> = v.split([' ', '-']).collect();
    if groups.iter().any(|g| g.is_empty()) || groups.len() > 5 {
        return false;
    }
    let digits: String = groups.concat();
    if !digits_only(&digits) || !(13..=19).contains(&digits.len()) {
        return false;
    }
    // Major networks start 2-6 (Mastercard 2/5, Visa 4, Amex 3, UnionPay 62, Discover 6).
    if !matches!(digits.as_bytes().first(), Some(b'2'..=b'6')) {
        return false;
    }
    luhn(&digits)
}

fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

fn is_iban(v: &str) -> bool {
    let compact: String = v.chars().filter(|c| *c != ' ').collect();
    let b = compact.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b.iter().take(2).all(u8::is_ascii_uppercase)
        || !b.iter().skip(2).take(2).all(u8::is_ascii_digit)
        || !b
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return false;
    }
    // Move the first four characters to the end, letters to numbers, mod 97 must be 1.
    let rearranged = b.iter().skip(4).chain(b.iter().take(4));
    let mut rem: u64 = 0;
    for &c in rearranged {
        let n = if c.is_ascii_digit() {
            u64::from(c - b'0')
        } else {
            u64::from(c - b'A') + 10
        };
        rem = if n >= 10 {
            (rem * 100 + n) % 97
        } else {
            (rem * 10 + n) % 97
        };
    }
    rem == 1
}

/// `AAA-GG-SSSS`: area not 000, 666 or 900-999; group not 00; serial not 0000.
fn is_us_ssn(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let [a, g, s] = parts.as_slice() else {
        return false;
    };
    if a.len() != 3 || g.len() != 2 || s.len() != 4 || ![a, g, s].iter().all(|p| digits_only(p)) {
        return false;
    }
    let area: u32 = a.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && *g != "00" && *s != "0000"
}

fn is_passport_like(v: &str) -> bool {
    let b = v.as_bytes();
    let letters = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    let rest = b.get(letters..).unwrap_or_default();
    (1..=2).contains(&letters)
        && (7..=8).contains(&rest.len())
        && rest.iter().all(u8::is_ascii_digit)
}

/// `YYYY-MM-DD` (also with `/` or `.`), a date that exists.
fn parse_date(v: &str) -> Option<(i32, u32, u32)> {
    let parts: Vec<&str> = v.split(['-', '/', '.']).collect();
    let [y, m, d] = parts.as_slice() else {
        return None;
    };
    if y.len() != 4 || !(1..=2).contains(&m.len()) || !(1..=2).contains(&d.len()) {
        return None;
    }
    let (y, m, d) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    valid_date(y, m, d).then_some((y, m, d))
}

fn valid_date(y: i32, m: u32, d: u32) -> bool {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid resident id for a birth date, with its check character computed.
    pub(crate) fn cn_id(body17: &str) -> String {
        let check = gb11643_check(body17.as_bytes()).unwrap() as char;
        format!("{body17}{check}")
    }

    #[test]
    fn the_check_character_matches_the_standard_s_example() {
        // GB 11643-1999's own example number.
        assert_eq!(gb11643_check(b"11010519491231002"), Some(b'X'));
        assert_eq!(cn_id("11010519491231002"), "11010519491231002X");
    }

    #[test]
    fn each_detector_accepts_real_values_and_rejects_look_alikes() {
        let id = cn_id("11010519491231002");
        assert_eq!(classify_value(&id), Some(Detector::CnResidentId));
        // Wrong check character; impossible birth date; too short.
        let mut wrong = id.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_ne!(classify_value(&wrong), Some(Detector::CnResidentId));
        assert!(!is_cn_resident_id(&cn_id("11010519490231002")), "Feb 31st");
        assert!(!is_cn_resident_id("11010519491231"));

        assert!(is_bank_card("4111 1111 1111 1111"));
        assert!(is_bank_card("5500-0000-0000-0004"));
        assert!(is_bank_card("6212345678901232"), "UnionPay, 16 digits");
        assert!(!is_bank_card("4111 1111 1111 1112"), "Luhn fails");
        assert!(!is_bank_card("0000000000000000"), "no network");

        assert!(is_iban("DE89 3704 0044 0532 0130 00"));
        assert!(is_iban("GB82WEST12345698765432"));
        assert!(!is_iban("GB82WEST12345698765433"));

        assert!(is_us_ssn("123-45-6789"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
        ] {
            assert!(!is_us_ssn(bad), "{bad}");
        }

        assert!(is_email("ada.lovelace+x@example.co.uk"));
        for bad in [
            "@example.com",
            "a@b",
            "a@b.c",
            "a b@example.com",
            "a@-x.com",
            "plain",
        ] {
            assert!(!is_email(bad), "{bad}");
        }

        for good in [
            "+44 20 7946 0018",
            "+1 (415) 555-0100",
            "13812345678",
            "+86 139 1234 5678",
        ] {
            assert!(is_phone(good), "{good}");
        }
        for bad in [
            "12345678901",
            "10012345678",
            "+0123456789",
            "+12",
            "555-0100",
        ] {
            assert!(!is_phone(bad), "{bad}");
        }

        assert_eq!(classify_value("192.168.10.4"), Some(Detector::IpAddress));
        assert_eq!(classify_value("2001:db8::1"), Some(Detector::IpAddress));
        assert!(is_passport_like("E12345678") && is_passport_like("GB1234567"));
        assert!(!is_passport_like("ORD12345678901"));
    }

    #[test]
    fn decoys_match_nothing() {
        for decoy in [
            "550e8400-e29b-41d4-a716-446655440000",
            "2026-12-07 12:34:56.123456+00",
            "2026-12-07T12:34:56Z",
            "ORD-2024-000123",
            "INV-88231",
            "100234",
            "hello world",
        ] {
            assert_eq!(classify_value(decoy), None, "{decoy}");
        }
        // Random 18-digit strings: the check character rejects ten in eleven of them, and the rest
        // only reach the verdict's threshold in a column of real ids.
        let mut tally = Tally::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            tally.add(&format!("{:018}", x % 1_000_000_000_000_000_000));
        }
        assert_eq!(tally.verdict("ref_no", None), None);
    }

    #[test]
    fn verdicts_need_most_values_or_the_name() {
        let mut t = Tally::default();
        for i in 0..100 {
            t.add(&format!("user{i}@example.com"));
        }
        t.add("");
        t.add("not an email");
        let f = t.verdict("contact", None).unwrap();
        assert_eq!(
            (f.detector, f.class, f.sampled, f.basis),
            (Detector::Email, Class::Confidential, 101, "content")
        );
        assert!(f.confidence > 0.98 && f.confidence < 1.0);

        // A few emails in a free-text column are not enough...
        let mut notes = Tally::default();
        for i in 0..100 {
            notes.add(if i % 10 == 0 {
                "x@example.com"
            } else {
                "called back, all fine"
            });
        }
        assert_eq!(notes.verdict("notes", None), None);
        // ... but the name alone flags a column, with the confidence its values earn.
        let f = notes.verdict("salary", None).unwrap();
        assert_eq!(
            (f.detector, f.class, f.basis),
            (Detector::NameHint(Hint::Salary), Class::Sensitive, "name")
        );
        let f = Tally::default().verdict("c1", Some("客户手机号")).unwrap();
        assert_eq!(f.detector, Detector::Phone);
        // A name promising content the values lack flags nothing.
        assert_eq!(notes.verdict("card_ref", None), None);
        assert_eq!(notes.verdict("mobile", None), None);
        assert_eq!(
            Tally::default().verdict("身份证号", None).unwrap().detector,
            Detector::CnResidentId
        );

        // Dates are birth dates only by name, and then the values must be dates.
        let mut dates = Tally::default();
        for d in 1..=28 {
            dates.add(&format!("1980-02-{d:02}"));
        }
        assert_eq!(dates.verdict("created_on", None), None);
        assert_eq!(
            dates.verdict("date_of_birth", None).unwrap().class,
            Class::Sensitive
        );
        assert_eq!(
            notes.verdict("birthday", None),
            None,
            "the name says dates, the values are not"
        );
    }
}
