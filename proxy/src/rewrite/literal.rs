//! SQL literals in simple-protocol statements: their values, the text a ciphertext replaces, and the
//! splicing of rotation variants where the plan's [`SiteRole`] allows (the analysis decides what a value
//! is compared or stored with; this module only checks the text reads that way and splices).
//!
//! Assumes `standard_conforming_strings = on` (PostgreSQL's default since 9.1) for plain `'...'`
//! strings, and UTF-8 as the server encoding; the ciphertext literals written back are correct either
//! way (`E'...'` or backslash-free).

use std::fmt;
use std::ops::Range;

use pgcloak_keymgr::LogicalType;
use pgcloak_policy::{Literal, LiteralKind, SiteRole};

use super::array::encrypt_text_array;
use super::error::{Result, RewriteError};
use super::values::{quote_sql, sql_literal, sql_literal_variants};
use super::{ColumnTarget, Storage};

/// Why a literal cannot be used for an encrypted column (turned into a [`RewriteError`] naming the
/// column with [`LiteralError::for_column`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralError {
    /// The literal cannot be read (unterminated, bad escape, not UTF-8, ...).
    Malformed(&'static str),
    /// A literal of a kind or type that cannot be encrypted for the column (bit string, cast to
    /// another type, type modifier).
    Unsupported(&'static str),
}

impl fmt::Display for LiteralError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiteralError::Malformed(r) => write!(f, "the literal cannot be read ({r})"),
            LiteralError::Unsupported(w) => write!(f, "{w} cannot be encrypted"),
        }
    }
}

impl LiteralError {
    /// The error a client sees, naming the column and its type.
    pub fn for_column(self, column: &str, ty: LogicalType) -> RewriteError {
        match self {
            LiteralError::Malformed(reason) => RewriteError::BadLiteral {
                column: column.to_string(),
                reason,
            },
            LiteralError::Unsupported(what) => RewriteError::UnsupportedLiteral {
                column: column.to_string(),
                what,
                ty: ty.name(),
            },
        }
    }
}

type LResult<T> = std::result::Result<T, LiteralError>;

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The value of a lexer literal as PostgreSQL would read it:
///
/// - `'...'` / `N'...'`: `''` is a quote, backslashes are plain characters;
/// - `E'...'`: `''`, `\'`, `\b \f \n \r \t`, `\o` `\oo` `\ooo` (octal), `\xh` `\xhh` (hex), `\uXXXX`,
///   `\UXXXXXXXX` (surrogate pairs combined), any other `\c` is `c`;
/// - `U&'...'`: `\XXXX`, `\+XXXXXX`, `\\`, with the escape character of a following `UESCAPE 'c'`;
/// - `$tag$...$tag$`: the body verbatim;
/// - numbers as written, with `_` separators dropped and `0x`/`0o`/`0b` integers given in decimal
///   (the lexer never includes a sign: `-5` is an operator and a literal; [`literal_edit`] adds a
///   sign written right before a number the plan encrypts, and replaces it with the literal);
/// - bit strings `B'...'` / `X'...'` are refused.
///
/// The result must be valid UTF-8 without NUL (PostgreSQL rejects the rest in a UTF-8 database).
pub fn decode_literal(sql: &str, lit: &Literal) -> LResult<String> {
    let text = sql.get(lit.span.clone()).ok_or(LiteralError::Malformed(
        "its position is outside the statement",
    ))?;
    let b = text.as_bytes();
    match lit.kind {
        LiteralKind::String => {
            let body = match b.first() {
                Some(b'n' | b'N') => &text[1..],
                _ => text,
            };
            quoted_body(body).map(|s| s.replace("''", "'"))
        }
        LiteralKind::EscapeString => {
            let body = quoted_body_escaped(text.get(1..).unwrap_or(""))?;
            decode_e_string(body)
        }
        LiteralKind::UnicodeString => {
            let body = quoted_body(text.get(2..).unwrap_or(""))?.replace("''", "'");
            let escape = uescape_after(sql, lit.span.end)?
                .map(|(_, c)| c)
                .unwrap_or('\\');
            decode_unicode(&body, escape)
        }
        LiteralKind::DollarString => {
            let close = b
                .iter()
                .skip(1)
                .position(|&c| c == b'$')
                .map(|p| p + 1)
                .ok_or(LiteralError::Malformed(
                    "its dollar-quote tag is not closed",
                ))?;
            let tag = &text[..=close];
            if text.len() < tag.len() * 2 || !text.ends_with(tag) {
                return Err(LiteralError::Malformed("it is not terminated"));
            }
            Ok(text[tag.len()..text.len() - tag.len()].to_string())
        }
        LiteralKind::Number => decode_number(text),
        LiteralKind::Bit => Err(LiteralError::Unsupported("a bit-string literal B'...'")),
        LiteralKind::Hex => Err(LiteralError::Unsupported(
            "a hexadecimal bit-string literal X'...'",
        )),
    }
}

/// The body of `'...'` (doubled quotes left as they are), checking it is closed exactly at the end.
fn quoted_body(text: &str) -> LResult<&str> {
    let b = text.as_bytes();
    if b.first() != Some(&b'\'') {
        return Err(LiteralError::Malformed("it does not start with a quote"));
    }
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        if c == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            if i + 1 != b.len() {
                return Err(LiteralError::Malformed(
                    "it has text after its closing quote",
                ));
            }
            return Ok(&text[1..i]);
        }
        i += 1;
    }
    Err(LiteralError::Malformed("it is not terminated"))
}

/// Like [`quoted_body`] but a backslash also escapes the next byte (E-strings).
fn quoted_body_escaped(text: &str) -> LResult<&str> {
    let b = text.as_bytes();
    if b.first() != Some(&b'\'') {
        return Err(LiteralError::Malformed("it does not start with a quote"));
    }
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => {
                if i + 1 != b.len() {
                    return Err(LiteralError::Malformed(
                        "it has text after its closing quote",
                    ));
                }
                return Ok(&text[1..i]);
            }
            _ => i += 1,
        }
    }
    Err(LiteralError::Malformed("it is not terminated"))
}

fn hex_digit(c: u8) -> Option<u32> {
    (c as char).to_digit(16)
}

fn push_code_point(out: &mut Vec<u8>, cp: u32) -> LResult<()> {
    let c =
        char::from_u32(cp).ok_or(LiteralError::Malformed("it has an invalid Unicode escape"))?;
    if c == '\0' {
        return Err(LiteralError::Malformed("it contains a zero byte"));
    }
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    Ok(())
}

/// Reads `n` hex digits at `b[i..]`.
fn hex_n(b: &[u8], i: usize, n: usize) -> Option<u32> {
    let digits = b.get(i..i.checked_add(n)?)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc.checked_mul(16)? + hex_digit(d)?))
}

fn decode_e_string(body: &str) -> LResult<String> {
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut pending_high: Option<u32> = None;
    while let Some(&c) = b.get(i) {
        if c == b'\'' {
            // `''` inside (the body check guarantees it is doubled).
            out.push(b'\'');
            i += 2;
            continue;
        }
        if c != b'\\' {
            if pending_high.is_some() {
                return Err(LiteralError::Malformed(
                    "it has an unpaired Unicode surrogate",
                ));
            }
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&e) = b.get(i + 1) else {
            return Err(LiteralError::Malformed("it ends inside an escape"));
        };
        if matches!(e, b'u' | b'U') {
            let n = if e == b'u' { 4 } else { 8 };
            let cp = hex_n(b, i + 2, n)
                .ok_or(LiteralError::Malformed("it has an invalid Unicode escape"))?;
            i += 2 + n;
            match (pending_high.take(), cp) {
                (None, 0xD800..=0xDBFF) => pending_high = Some(cp),
                (Some(h), 0xDC00..=0xDFFF) => {
                    push_code_point(&mut out, 0x10000 + ((h - 0xD800) << 10) + (cp - 0xDC00))?
                }
                (Some(_), _) | (None, 0xDC00..=0xDFFF) => {
                    return Err(LiteralError::Malformed(
                        "it has an unpaired Unicode surrogate",
                    ))
                }
                (None, cp) => push_code_point(&mut out, cp)?,
            }
            continue;
        }
        if pending_high.is_some() {
            return Err(LiteralError::Malformed(
                "it has an unpaired Unicode surrogate",
            ));
        }
        i += 2;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match b.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if b.get(i).copied().and_then(hex_digit).is_some() => {
                let mut v = b.get(i).copied().and_then(hex_digit).unwrap_or(0);
                i += 1;
                if let Some(d) = b.get(i).copied().and_then(hex_digit) {
                    v = v * 16 + d;
                    i += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    if pending_high.is_some() {
        return Err(LiteralError::Malformed(
            "it has an unpaired Unicode surrogate",
        ));
    }
    if out.contains(&0) {
        return Err(LiteralError::Malformed("it contains a zero byte"));
    }
    String::from_utf8(out).map_err(|_| LiteralError::Malformed("it is not valid UTF-8"))
}

fn decode_unicode(body: &str, escape: char) -> LResult<String> {
    let mut out = Vec::with_capacity(body.len());
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let mut pending_high: Option<u32> = None;
    let hex = |from: usize, n: usize| -> Option<u32> {
        let s = chars.get(from..from.checked_add(n)?)?;
        s.iter()
            .try_fold(0u32, |acc, c| Some(acc.checked_mul(16)? + c.to_digit(16)?))
    };
    while let Some(&c) = chars.get(i) {
        if c != escape {
            if pending_high.is_some() {
                return Err(LiteralError::Malformed(
                    "it has an unpaired Unicode surrogate",
                ));
            }
            if c == '\0' {
                return Err(LiteralError::Malformed("it contains a zero byte"));
            }
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            i += 1;
            continue;
        }
        let cp = if chars.get(i + 1) == Some(&escape) {
            if pending_high.is_some() {
                return Err(LiteralError::Malformed(
                    "it has an unpaired Unicode surrogate",
                ));
            }
            let mut buf = [0u8; 4];
            out.extend_from_slice(escape.encode_utf8(&mut buf).as_bytes());
            i += 2;
            continue;
        } else if chars.get(i + 1) == Some(&'+') {
            let v =
                hex(i + 2, 6).ok_or(LiteralError::Malformed("it has an invalid Unicode escape"))?;
            i += 8;
            v
        } else {
            let v =
                hex(i + 1, 4).ok_or(LiteralError::Malformed("it has an invalid Unicode escape"))?;
            i += 5;
            v
        };
        match (pending_high.take(), cp) {
            (None, 0xD800..=0xDBFF) => pending_high = Some(cp),
            (Some(h), 0xDC00..=0xDFFF) => {
                push_code_point(&mut out, 0x10000 + ((h - 0xD800) << 10) + (cp - 0xDC00))?
            }
            (Some(_), _) | (None, 0xDC00..=0xDFFF) => {
                return Err(LiteralError::Malformed(
                    "it has an unpaired Unicode surrogate",
                ))
            }
            (None, cp) => push_code_point(&mut out, cp)?,
        }
    }
    if pending_high.is_some() {
        return Err(LiteralError::Malformed(
            "it has an unpaired Unicode surrogate",
        ));
    }
    String::from_utf8(out).map_err(|_| LiteralError::Malformed("it is not valid UTF-8"))
}

/// A `UESCAPE 'c'` clause right after a `U&'...'` literal ending at `end`: (end of the clause, c).
fn uescape_after(sql: &str, end: usize) -> LResult<Option<(usize, char)>> {
    let b = sql.as_bytes();
    let mut i = skip_ws(b, end);
    let word = b.get(i..i + 7);
    if !word.is_some_and(|w| w.eq_ignore_ascii_case(b"uescape"))
        || b.get(i + 7).is_some_and(|c| is_ident_char(*c))
    {
        return Ok(None);
    }
    i = skip_ws(b, i + 7);
    let rest = sql.get(i..).unwrap_or("");
    let mut it = rest.chars();
    let (Some('\''), Some(c), Some('\'')) = (it.next(), it.next(), it.next()) else {
        return Err(LiteralError::Malformed(
            "its UESCAPE clause is not a single character in quotes",
        ));
    };
    if c.is_ascii_hexdigit() || matches!(c, '+' | '\'' | '"') || c.is_whitespace() {
        return Err(LiteralError::Malformed(
            "its UESCAPE character is not allowed",
        ));
    }
    Ok(Some((i + 2 + c.len_utf8(), c)))
}

fn decode_number(text: &str) -> LResult<String> {
    let t: String = text.chars().filter(|c| *c != '_').collect();
    let lower = t.to_ascii_lowercase();
    let radix = if lower.starts_with("0x") {
        16
    } else if lower.starts_with("0o") {
        8
    } else if lower.starts_with("0b") {
        2
    } else {
        if t.is_empty()
            || !t
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            return Err(LiteralError::Malformed("it is not a number"));
        }
        return Ok(t);
    };
    let v = u128::from_str_radix(&lower[2..], radix)
        .map_err(|_| LiteralError::Malformed("it is not a number PostgreSQL's integers hold"))?;
    Ok(v.to_string())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// A decimal number (optional sign, digits with an optional `.`, optional exponent) rounded to an
/// integer half away from zero, exactly, as PostgreSQL's numeric-to-integer cast does; `None` for
/// anything else or an exponent beyond any integer type (the caller then refuses the value as written).
fn round_to_integer(text: &str) -> Option<String> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
    // The value is digits × 10^(exp - frac.len()); keep the digits before the decimal point.
    let point = i64::try_from(int.len()).ok()? + i64::from(exp);
    if point > 40 {
        return None;
    }
    let keep = usize::try_from(point.max(0)).ok()?;
    let mut whole: Vec<u8> = digits.iter().copied().take(keep).collect();
    whole.resize(keep, 0);
    let next = if point < 0 {
        0
    } else {
        digits.get(keep).copied().unwrap_or(0)
    };
    if next >= 5 {
        let mut i = whole.len();
        loop {
            if i == 0 {
                whole.insert(0, 1);
                break;
            }
            i -= 1;
            let Some(d) = whole.get_mut(i) else {
                break;
            };
            if *d == 9 {
                *d = 0;
            } else {
                *d += 1;
                break;
            }
        }
    }
    let start = whole.iter().position(|&d| d != 0).unwrap_or(whole.len());
    let mut out: String = whole
        .get(start..)
        .unwrap_or_default()
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect();
    if out.is_empty() {
        out.push('0');
    } else if negative {
        out.insert(0, '-');
    }
    Some(out)
}

/// A `-` or `+` written right before position `i` (whitespace between at most), with its position:
/// the unary sign of a number literal. Only reached for a literal the analysis planned to encrypt,
/// which it does for a number under a sign only in this form (a sign that is a binary operator
/// makes the value computed, never encrypted). `--` is a comment, not a sign.
fn sign_before(b: &[u8], i: usize) -> Option<(usize, u8)> {
    let s = skip_ws_back(b, i);
    let sign = *b.get(s.checked_sub(1)?)?;
    if !matches!(sign, b'-' | b'+') || (sign == b'-' && s >= 2 && b.get(s - 2) == Some(&b'-')) {
        return None;
    }
    Some((s - 1, sign))
}

fn skip_ws_back(b: &[u8], mut i: usize) -> usize {
    while i > 0 && b.get(i - 1).copied().is_some_and(is_ws) {
        i -= 1;
    }
    i
}

/// What a type name in a cast or typed literal means for an encrypted column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeName {
    Logical(LogicalType),
    /// A PostgreSQL type that is none of the logical types (interval, timestamp, float8, ...).
    Other,
}

fn type_of_name(name: &str) -> Option<TypeName> {
    use LogicalType as L;
    Some(match name {
        "text" | "varchar" | "character varying" => TypeName::Logical(L::Text),
        "int4" | "integer" | "int" => TypeName::Logical(L::Int4),
        "int8" | "bigint" => TypeName::Logical(L::Int8),
        "numeric" | "decimal" => TypeName::Logical(L::Numeric),
        "date" => TypeName::Logical(L::Date),
        "timestamptz" | "timestamp with time zone" => TypeName::Logical(L::Timestamptz),
        "bool" | "boolean" => TypeName::Logical(L::Bool),
        "jsonb" => TypeName::Logical(L::Jsonb),
        "bytea" => TypeName::Logical(L::Bytea),
        "timestamp"
        | "timestamp without time zone"
        | "time"
        | "timetz"
        | "interval"
        | "json"
        | "float4"
        | "float8"
        | "real"
        | "double precision"
        | "int2"
        | "smallint"
        | "char"
        | "character"
        | "bpchar"
        | "name"
        | "uuid"
        | "money"
        | "inet"
        | "cidr"
        | "bit"
        | "varbit"
        | "xml"
        | "oid"
        | "regclass" => TypeName::Other,
        _ => return None,
    })
}

/// A type name in SQL starting at `i` (after `::` or `AS`): (end, name, array?). Unknown identifiers
/// and quoted names come back as `None` (refused by the caller).
fn parse_type_at(b: &[u8], i: usize) -> LResult<Option<(usize, Option<TypeName>, bool)>> {
    let word_at = |i: usize| -> Option<(usize, String)> {
        let mut j = i;
        while b.get(j).copied().is_some_and(is_ident_char) {
            j += 1;
        }
        let word = b.get(i..j).filter(|w| !w.is_empty())?;
        Some((j, String::from_utf8_lossy(word).to_ascii_lowercase()))
    };
    let Some((mut end, mut name)) = word_at(i) else {
        return Ok(None);
    };
    if name == "pg_catalog" && b.get(end) == Some(&b'.') {
        let Some((e, n)) = word_at(end + 1) else {
            return Ok(None);
        };
        end = e;
        name = n;
    }
    // Multi-word names.
    let follow = |end: usize, words: &[&str]| -> Option<usize> {
        let mut j = end;
        for w in words {
            let k = skip_ws(b, j);
            let (e, n) = word_at(k)?;
            if n != *w {
                return None;
            }
            j = e;
        }
        Some(j)
    };
    for (first, rest, full) in [
        ("character", &["varying"][..], "character varying"),
        (
            "timestamp",
            &["with", "time", "zone"][..],
            "timestamp with time zone",
        ),
        (
            "timestamp",
            &["without", "time", "zone"][..],
            "timestamp without time zone",
        ),
        ("double", &["precision"][..], "double precision"),
    ] {
        if name == first {
            if let Some(e) = follow(end, rest) {
                end = e;
                name = full.to_string();
                break;
            }
        }
    }
    let ty = type_of_name(&name);
    let mut j = skip_ws(b, end);
    if b.get(j) == Some(&b'(') {
        return Err(LiteralError::Unsupported(
            "a literal cast with a type modifier",
        ));
    }
    let mut array = false;
    while b.get(j) == Some(&b'[') {
        let k = skip_ws(b, j + 1);
        let mut m = k;
        while b.get(m).is_some_and(u8::is_ascii_digit) {
            m += 1;
        }
        let m = skip_ws(b, m);
        if b.get(m) != Some(&b']') {
            break;
        }
        array = true;
        end = m + 1;
        j = skip_ws(b, end);
    }
    Ok(Some((end, ty, array)))
}

fn check_type(
    ty: Option<TypeName>,
    array: bool,
    want: LogicalType,
    want_array: bool,
) -> LResult<()> {
    match ty {
        Some(TypeName::Logical(t)) if t == want && array == want_array => Ok(()),
        Some(TypeName::Logical(t)) if t == want => Err(LiteralError::Unsupported(if array {
            "an array literal where one value is expected"
        } else {
            "a single value where an array is expected"
        })),
        _ => Err(LiteralError::Unsupported(
            "a literal of another type (a cast or typed literal)",
        )),
    }
}

/// The text a ciphertext literal replaces: the literal's span, widened over what gives the literal its
/// type, which must be the column's logical type (otherwise [`LiteralError::Unsupported`], since the
/// ciphertext can only stand for the value as the column's type):
///
/// - `'...'::type` casts (any number, `pg_catalog.` allowed, `[]` for arrays; a type modifier such as
///   `::numeric(5,2)` or `::varchar(3)` changes the value and is refused);
/// - a typed literal's type name before it: `DATE '2024-01-31'`, `timestamp with time zone '...'`;
/// - `CAST('...' AS type)` when the literal is the whole operand;
/// - the `UESCAPE 'c'` clause of a `U&'...'` literal.
///
/// `array`: the plan encrypts the literal as an array (`col = ANY('{...}')`).
pub fn replace_range(
    sql: &str,
    lit: &Literal,
    ty: LogicalType,
    array: bool,
) -> LResult<Range<usize>> {
    let b = sql.as_bytes();
    let mut start = lit.span.start.min(b.len());
    let mut end = lit.span.end.min(b.len()).max(start);
    if lit.kind == LiteralKind::UnicodeString {
        if let Some((e, _)) = uescape_after(sql, end)? {
            end = e;
        }
    }
    // `::type` casts after the literal.
    end = casts_after(b, end, ty, array)?;
    // A typed literal: `DATE '...'`, `timestamp with time zone '...'`.
    if let Some((s, t)) = type_name_before(b, start) {
        check_type(Some(t), false, ty, array)?;
        start = s;
    }
    let (start, end) = parenthesised_casts(b, start, end, ty, array)?;
    cast_call_around(b, start..end, ty, array)
}

/// The range a `$n` parameter at `span` stands for with the casts around it — `$n::type` (any
/// number), `CAST($n AS type)` — whose type must be the column's logical type: the server gets the
/// ciphertext (bytea or text) in their place, never a cast of it. ORMs cast every parameter
/// (SQLAlchemy `%(salary)s::INTEGER`). Another type is refused ([`LiteralError::Unsupported`]).
pub fn param_range(
    sql: &str,
    span: Range<usize>,
    ty: LogicalType,
    array: bool,
) -> LResult<Range<usize>> {
    let b = sql.as_bytes();
    let (start, end) = (
        span.start,
        casts_after(b, span.end.min(b.len()), ty, array)?,
    );
    let (start, end) = parenthesised_casts(b, start, end, ty, array)?;
    cast_call_around(b, start..end, ty, array)
}

/// `start..end` widened over parentheses that a cast follows, with those casts: `($n)::T`,
/// `('{...}'::int4[])::integer[]` (Django writes `UNNEST(($1)::integer[], ...)`, and psycopg's
/// client-side binding adds its own cast inside).
fn parenthesised_casts(
    b: &[u8],
    mut start: usize,
    mut end: usize,
    ty: LogicalType,
    array: bool,
) -> LResult<(usize, usize)> {
    loop {
        let open = skip_ws_back(b, start);
        let close = skip_ws(b, end);
        let cast_follows = b
            .get(skip_ws(b, close + 1)..)
            .is_some_and(|r| r.starts_with(b"::"));
        // After a name, the parentheses are a call's (`f($1)::text` casts what f returns).
        let call = open > 1
            && b.get(skip_ws_back(b, open - 1).wrapping_sub(1))
                .copied()
                .is_some_and(is_ident_char);
        if open == 0
            || b.get(open - 1) != Some(&b'(')
            || b.get(close) != Some(&b')')
            || !cast_follows
            || call
        {
            break;
        }
        start = open - 1;
        end = casts_after(b, close + 1, ty, array)?;
    }
    Ok((start, end))
}

/// The end of the `::type` casts following `end` (each checked against `ty`).
fn casts_after(b: &[u8], mut end: usize, ty: LogicalType, array: bool) -> LResult<usize> {
    loop {
        let i = skip_ws(b, end);
        if b.get(i..i + 2) != Some(b"::") {
            return Ok(end);
        }
        let k = skip_ws(b, i + 2);
        match parse_type_at(b, k)? {
            Some((e, t, arr)) => {
                check_type(t, arr, ty, array)?;
                end = e;
            }
            None => {
                return Err(LiteralError::Unsupported(
                    "a literal of another type (a cast or typed literal)",
                ))
            }
        }
    }
}

/// `range` widened to `CAST( <range> AS type )` when it is the whole operand of such a call.
fn cast_call_around(
    b: &[u8],
    range: Range<usize>,
    ty: LogicalType,
    array: bool,
) -> LResult<Range<usize>> {
    let (mut start, mut end) = (range.start, range.end);
    // CAST( <literal> AS type )
    let open = skip_ws_back(b, start);
    if open > 0 && b.get(open - 1) == Some(&b'(') {
        let w_end = skip_ws_back(b, open - 1);
        let w_start = w_end.saturating_sub(4);
        let is_cast = b
            .get(w_start..w_end)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"cast"))
            && (w_start == 0 || !b.get(w_start - 1).copied().is_some_and(is_ident_char));
        if is_cast {
            let i = skip_ws(b, end);
            let as_kw = b
                .get(i..i + 2)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"as"))
                && !b.get(i + 2).copied().is_some_and(is_ident_char);
            if as_kw {
                let k = skip_ws(b, i + 2);
                if let Some((e, t, arr)) = parse_type_at(b, k)? {
                    let close = skip_ws(b, e);
                    if b.get(close) == Some(&b')') {
                        check_type(t, arr, ty, array)?;
                        start = w_start;
                        end = close + 1;
                    }
                } else {
                    return Err(LiteralError::Unsupported(
                        "a literal of another type (a cast or typed literal)",
                    ));
                }
            }
        }
    }
    Ok(start..end)
}

/// A type name directly before `start` (whitespace between), as in `DATE '...'`: (its start, type).
/// Only known type names count, so keywords (`FROM 'x'`, `WHEN 'x'`) are never taken for types.
fn type_name_before(b: &[u8], start: usize) -> Option<(usize, TypeName)> {
    let mut words: Vec<(usize, String)> = Vec::new();
    let mut pos = start;
    for _ in 0..4 {
        let e = skip_ws_back(b, pos);
        let mut s = e;
        while s > 0 && b.get(s - 1).copied().is_some_and(is_ident_char) {
            s -= 1;
        }
        if s == e {
            break;
        }
        let word = String::from_utf8_lossy(b.get(s..e).unwrap_or_default()).to_ascii_lowercase();
        let first = words.is_empty();
        let continues = matches!(word.as_str(), "zone" | "varying" | "precision");
        words.push((s, word));
        pos = s;
        if first && !continues {
            break;
        }
    }
    let first = words.first()?;
    let joined = |n: usize| -> Option<(usize, String)> {
        let ws = words.get(..n)?;
        let name: Vec<&str> = ws.iter().rev().map(|(_, w)| w.as_str()).collect();
        Some((ws.last()?.0, name.join(" ")))
    };
    let candidates = match first.1.as_str() {
        "zone" => vec![joined(4)?],
        "varying" | "precision" => vec![joined(2)?],
        _ => vec![first.clone()],
    };
    candidates.into_iter().find_map(|(s, name)| {
        // A word glued to something before it (`x.date`) is an identifier, not a type name.
        if s > 0 && b.get(s - 1) == Some(&b'.') {
            return None;
        }
        type_of_name(&name).map(|t| (s, t))
    })
}

/// The comparison operator ending right before `pos` (whitespace between): `=` → `Some(false)`,
/// `<>`/`!=` → `Some(true)`.
fn operator_before(b: &[u8], pos: usize) -> Option<bool> {
    let e = skip_ws_back(b, pos);
    let is_op = |c: u8| b"+-*/<>=~!@#%^&|`?:".contains(&c);
    let mut s = e;
    while s > 0 && b.get(s - 1).copied().is_some_and(is_op) {
        s -= 1;
    }
    match b.get(s..e)? {
        b"=" => Some(false),
        b"<>" | b"!=" => Some(true),
        _ => None,
    }
}

/// Whether the text agrees with the plan that the value at `range` is the right operand of `=`
/// (`negated`: of `<>` or `!=`), so that `ANY (...)` (`ALL (...)`) may stand in its place.
pub fn compared_at(sql: &str, range: &Range<usize>, negated: bool) -> bool {
    operator_before(sql.as_bytes(), range.start) == Some(negated)
}

/// `ANY (inner)`, or `ALL (inner)` for a negated comparison: what replaces a compared value.
pub fn any_of(negated: bool, inner: &str) -> String {
    let quantifier = if negated { "ALL" } else { "ANY" };
    format!("{quantifier} ({inner})")
}

fn word_before_is(b: &[u8], pos: usize, word: &[u8]) -> bool {
    let e = skip_ws_back(b, pos);
    let Some(s) = e.checked_sub(word.len()) else {
        return false;
    };
    b.get(s..e).is_some_and(|w| w.eq_ignore_ascii_case(word))
        && (s == 0 || !b.get(s - 1).copied().is_some_and(is_ident_char))
}

/// Whether the value at `range` stands between `(` or `,` and `,` or `)`: an element of a list, where
/// several values may stand in its place.
fn list_element_at(b: &[u8], range: &Range<usize>) -> bool {
    let before = skip_ws_back(b, range.start);
    let after = skip_ws(b, range.end);
    before > 0
        && matches!(b.get(before - 1), Some(b'(' | b','))
        && matches!(b.get(after), Some(b',' | b')'))
}

/// `e` moved back over `::type` casts ending there (one-word type names, `[]` allowed).
fn casts_before(b: &[u8], mut e: usize) -> usize {
    loop {
        let mut s = e;
        while s >= 2 && b.get(s - 2..s) == Some(b"[]") {
            s -= 2;
        }
        let word_end = s;
        while s > 0 && b.get(s - 1).copied().is_some_and(is_ident_char) {
            s -= 1;
        }
        let colons = skip_ws_back(b, s);
        if s == word_end || colons < 2 || b.get(colons - 2..colons) != Some(b"::") {
            return e;
        }
        e = skip_ws_back(b, colons - 2);
    }
}

/// `e` moved forward over `::type` casts starting there.
fn casts_after_unchecked(b: &[u8], mut e: usize) -> usize {
    loop {
        let i = skip_ws(b, e);
        if b.get(i..i + 2) != Some(b"::") {
            return e;
        }
        match parse_type_at(b, skip_ws(b, i + 2)) {
            Ok(Some((end, _, _))) => e = end,
            _ => return e,
        }
    }
}

/// One element of an `IN` list as the plan has it ([`pgcloak_policy::ListElement`]), located: a
/// value at its range (casts included), or `NULL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListPiece {
    At(Range<usize>),
    Null,
}

/// The range of `[NOT] IN (e1, ..., ek)` whose elements are `pieces` in order (at least one located),
/// negated as the plan says; `None` when the text does not read that way (then the plan and the text
/// disagree, and the statement is refused rather than rewritten on a guess).
pub fn in_list_range(sql: &str, pieces: &[ListPiece], negated: bool) -> Option<Range<usize>> {
    let b = sql.as_bytes();
    let null_at = |s: usize| {
        b.get(s..s + 4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"null"))
            && !b.get(s + 4).copied().is_some_and(is_ident_char)
    };
    let first = pieces.iter().position(|p| matches!(p, ListPiece::At(_)))?;
    let ListPiece::At(first_range) = pieces.get(first)? else {
        return None;
    };
    // Back over the NULLs before the first located element, to the `(`.
    let mut start = first_range.start;
    for _ in 0..first {
        let comma = skip_ws_back(b, start);
        if comma == 0 || b.get(comma - 1) != Some(&b',') {
            return None;
        }
        let e = casts_before(b, skip_ws_back(b, comma - 1));
        let s = e.checked_sub(4)?;
        if !null_at(s) || (s > 0 && b.get(s - 1).copied().is_some_and(is_ident_char)) {
            return None;
        }
        start = s;
    }
    let open = skip_ws_back(b, start).checked_sub(1)?;
    if b.get(open) != Some(&b'(') || !word_before_is(b, open, b"in") {
        return None;
    }
    let in_start = skip_ws_back(b, open) - 2;
    if word_before_is(b, in_start, b"not") != negated {
        return None;
    }
    let list_start = if negated {
        skip_ws_back(b, in_start) - 3
    } else {
        in_start
    };
    // Forward over the rest, each after a comma.
    let mut end = first_range.end;
    for piece in pieces.get(first + 1..)? {
        let comma = skip_ws(b, end);
        if b.get(comma) != Some(&b',') {
            return None;
        }
        let s = skip_ws(b, comma + 1);
        end = match piece {
            ListPiece::At(r) if r.start == s => r.end,
            ListPiece::Null if null_at(s) => casts_after_unchecked(b, s + 4),
            _ => return None,
        };
    }
    let close = skip_ws(b, end);
    (b.get(close) == Some(&b')')).then_some(list_start..close + 1)
}

/// One replacement in a SQL string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Byte range in the original SQL.
    pub range: Range<usize>,
    /// What replaces it.
    pub text: String,
}

/// The complete replacement for plan encryption `ValueRef::Literal(index)`: decodes the literal,
/// encrypts it (each element for `array`), picks the range ([`replace_range`]) and, for a rotated
/// deterministic column, writes every key version's ciphertext where the plan's `role` allows: a
/// compared value becomes `ANY (ARRAY[c2, c1])`, an `IN` element the elements `c2, c1` (arrays carry
/// the variants as extra elements). Elsewhere the active version is used. The text must read as the
/// plan says ([`RewriteError::PlanMismatch`] otherwise).
pub fn literal_edit(
    sql: &str,
    literals: &[Literal],
    index: usize,
    target: &ColumnTarget<'_>,
    array: bool,
    assignment: bool,
    role: SiteRole,
) -> Result<Edit> {
    let col = target.column();
    let lit = literals
        .get(index)
        .ok_or_else(|| RewriteError::BadLiteral {
            column: col.to_string(),
            reason: "the plan names a literal the statement does not have",
        })?;
    let mut value = decode_literal(sql, lit).map_err(|e| e.for_column(col, target.ty))?;
    let mut range =
        replace_range(sql, lit, target.ty, array).map_err(|e| e.for_column(col, target.ty))?;
    // `-5` / `+5`: the analysis planned the signed number as the value (see `sign_before`).
    if lit.kind == LiteralKind::Number && !array {
        if let Some((at, sign)) = sign_before(sql.as_bytes(), range.start) {
            if sign == b'-' {
                value.insert(0, '-');
            }
            range.start = at;
        }
        // A number with a fraction or exponent is `numeric` to PostgreSQL; stored into an integer
        // column it is rounded (half away from zero). Compared, it is not: `int_col = 2.5` matches
        // nothing, so there the value stays as written and is refused as no integer.
        if assignment
            && matches!(target.ty, LogicalType::Int4 | LogicalType::Int8)
            && value.contains(['.', 'e', 'E'])
        {
            if let Some(rounded) = round_to_integer(&value) {
                value = rounded;
            }
        }
    }
    let (range, text) = if array {
        // A stored array holds one ciphertext per element; a compared one every version's.
        // Typed, since the context may not type it (`UNNEST('{...}')` is ambiguous).
        let arr = encrypt_text_array(target, value.as_bytes(), !assignment)?;
        let text = quote_sql(&String::from_utf8_lossy(&arr));
        (range, format!("{text}::{}", target.storage.sql_type(true)))
    } else {
        let canonical = target.canonical_from_text(value.as_bytes())?;
        if target.has_variants() {
            let variants = sql_literal_variants(target, &canonical)?;
            let mismatch = |detail| RewriteError::PlanMismatch {
                column: col.to_string(),
                detail,
            };
            let text = match role {
                SiteRole::Compared { negated } => {
                    if !compared_at(sql, &range, negated) {
                        return Err(mismatch("no comparison operator before the value"));
                    }
                    let cast = match target.storage {
                        Storage::Bytea => "::bytea[]",
                        Storage::Text => "",
                    };
                    any_of(negated, &format!("ARRAY[{}]{cast}", variants.join(", ")))
                }
                SiteRole::Listed { .. } => {
                    if !list_element_at(sql.as_bytes(), &range) {
                        return Err(mismatch("the value is not an element of a list"));
                    }
                    variants.join(", ")
                }
                SiteRole::Stored | SiteRole::Other => {
                    variants.into_iter().next().unwrap_or_default()
                }
            };
            (range, text)
        } else {
            (
                range,
                sql_literal(target.storage, &target.encrypt(&canonical)?),
            )
        }
    };
    // `THEN'x'` is valid SQL; `THENE'\\x..'` would not be.
    let b = sql.as_bytes();
    let glued = range.start > 0
        && b.get(range.start - 1).copied().is_some_and(is_ident_char)
        && text.as_bytes().first().copied().is_some_and(is_ident_char);
    let text = if glued { format!(" {text}") } else { text };
    Ok(Edit { range, text })
}

/// Applies non-overlapping edits (any order) to `sql`.
pub fn apply_edits(sql: &str, mut edits: Vec<Edit>) -> Result<String> {
    edits.sort_by_key(|e| e.range.start);
    let overlap = || RewriteError::Internal {
        column: "(statement)".to_string(),
        detail: "two literal replacements overlap".to_string(),
    };
    let mut out =
        String::with_capacity(sql.len() + edits.iter().map(|e| e.text.len()).sum::<usize>());
    let mut pos = 0;
    for e in &edits {
        if e.range.start < pos || e.range.end < e.range.start {
            return Err(overlap());
        }
        out.push_str(sql.get(pos..e.range.start).ok_or_else(overlap)?);
        out.push_str(&e.text);
        pos = e.range.end;
    }
    out.push_str(sql.get(pos..).ok_or_else(overlap)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testkit::{Kit, Rng, EMAIL, NOTES, SALARY};
    use pgcloak_keymgr::typed;
    use pgcloak_policy::lex;

    fn lits(sql: &str) -> Vec<Literal> {
        lex(sql).literals
    }

    fn first(sql: &str) -> LResult<String> {
        let l = lits(sql);
        decode_literal(sql, &l[0])
    }

    #[test]
    fn decodes_every_literal_kind() {
        let ok: &[(&str, &str)] = &[
            ("SELECT 'abc'", "abc"),
            ("SELECT 'it''s'", "it's"),
            ("SELECT ''", ""),
            ("SELECT 'a\\nb'", "a\\nb"),
            ("SELECT N'nat'", "nat"),
            ("SELECT 'héllo'", "héllo"),
            ("SELECT E'a\\nb\\tc\\\\d\\'e''f'", "a\nb\tc\\d'e'f"),
            ("SELECT E'\\b\\f\\r\\v\\q'", "\u{8}\u{c}\rvq"),
            ("SELECT E'\\101\\1010\\7'", "AA0\u{7}"),
            ("SELECT E'\\x41\\x4a\\x4G\\xZ'", "AJ\u{4}GxZ"),
            ("SELECT E'\\u00e9\\U0001F600'", "é😀"),
            ("SELECT E'\\uD83D\\uDE00'", "😀"),
            ("SELECT e'\\303\\251'", "é"),
            ("SELECT U&'d\\0061t\\+000061'", "data"),
            ("SELECT U&'\\\\x'", "\\x"),
            ("SELECT U&'it''s'", "it's"),
            ("SELECT U&'d!0061t!+000061' UESCAPE '!'", "data"),
            ("SELECT u&'\\D83D\\DE00'", "😀"),
            ("SELECT $$a'b\\c$$", "a'b\\c"),
            ("SELECT $tag$ $$ x $tag$", " $$ x "),
            ("SELECT $$$$", ""),
            ("SELECT 5000", "5000"),
            ("SELECT 1.5e3", "1.5e3"),
            ("SELECT .5", ".5"),
            ("SELECT 1_000_000", "1000000"),
            ("SELECT 0x1F", "31"),
            ("SELECT 0o17", "15"),
            ("SELECT 0b101", "5"),
        ];
        for (sql, want) in ok {
            assert_eq!(first(sql).as_deref(), Ok(*want), "{sql}");
        }
        // The lexer keeps the sign outside a number literal.
        let l = lits("SELECT -1.5e3");
        assert_eq!(decode_literal("SELECT -1.5e3", &l[0]).unwrap(), "1.5e3");
        let bad: &[(&str, LiteralError)] = &[
            (
                "SELECT 'abc",
                LiteralError::Malformed("it is not terminated"),
            ),
            (
                "SELECT 'ab''",
                LiteralError::Malformed("it is not terminated"),
            ),
            (
                "SELECT E'ab\\'",
                LiteralError::Malformed("it is not terminated"),
            ),
            (
                "SELECT E'\\uZZZZ'",
                LiteralError::Malformed("it has an invalid Unicode escape"),
            ),
            (
                "SELECT E'\\uD83D'",
                LiteralError::Malformed("it has an unpaired Unicode surrogate"),
            ),
            (
                "SELECT E'\\uDE00'",
                LiteralError::Malformed("it has an unpaired Unicode surrogate"),
            ),
            (
                "SELECT E'\\xff'",
                LiteralError::Malformed("it is not valid UTF-8"),
            ),
            (
                "SELECT E'\\000'",
                LiteralError::Malformed("it contains a zero byte"),
            ),
            (
                "SELECT U&'\\00'",
                LiteralError::Malformed("it has an invalid Unicode escape"),
            ),
            (
                "SELECT U&'\\0000'",
                LiteralError::Malformed("it contains a zero byte"),
            ),
            (
                "SELECT U&'x' UESCAPE 'a'",
                LiteralError::Malformed("its UESCAPE character is not allowed"),
            ),
            (
                "SELECT $a$ x",
                LiteralError::Malformed("it is not terminated"),
            ),
            (
                "SELECT B'0101'",
                LiteralError::Unsupported("a bit-string literal B'...'"),
            ),
            (
                "SELECT X'1F'",
                LiteralError::Unsupported("a hexadecimal bit-string literal X'...'"),
            ),
            (
                "SELECT 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
                LiteralError::Malformed("it is not a number PostgreSQL's integers hold"),
            ),
        ];
        for (sql, want) in bad {
            assert_eq!(first(sql), Err(*want), "{sql}");
        }
    }

    #[test]
    fn literal_error_names_column_not_value() {
        let e =
            LiteralError::Malformed("it is not terminated").for_column(EMAIL, LogicalType::Text);
        assert!(e.to_string().contains(EMAIL));
        let e = LiteralError::Unsupported("a bit-string literal B'...'")
            .for_column(EMAIL, LogicalType::Int4);
        let m = e.to_string();
        assert!(
            m.starts_with("pgcloak: a bit-string") && m.contains("int4"),
            "{m}"
        );
    }

    fn range_of(sql: &str, ty: LogicalType, array: bool) -> LResult<String> {
        let l = lits(sql);
        replace_range(sql, &l[0], ty, array).map(|r| sql[r].to_string())
    }

    #[test]
    fn replace_range_covers_casts_typed_literals_and_uescape() {
        use LogicalType as L;
        let ok: &[(&str, L, bool, &str)] = &[
            ("SELECT * FROM t WHERE c = 'x'", L::Text, false, "'x'"),
            ("WHERE c = '5'::int4", L::Int4, false, "'5'::int4"),
            (
                "WHERE c = '5' :: pg_catalog.int4 AND d",
                L::Int4,
                false,
                "'5' :: pg_catalog.int4",
            ),
            (
                "WHERE c = 'x'::text::varchar",
                L::Text,
                false,
                "'x'::text::varchar",
            ),
            (
                "WHERE c = DATE '2024-01-31'",
                L::Date,
                false,
                "DATE '2024-01-31'",
            ),
            (
                "WHERE c = timestamp with time zone '2024-01-31 10:00+02'",
                L::Timestamptz,
                false,
                "timestamp with time zone '2024-01-31 10:00+02'",
            ),
            (
                "WHERE c = '1'::timestamp with time zone",
                L::Timestamptz,
                false,
                "'1'::timestamp with time zone",
            ),
            (
                "WHERE c = CAST('7' AS bigint) OR",
                L::Int8,
                false,
                "CAST('7' AS bigint)",
            ),
            (
                "WHERE c = ANY('{1,2}'::int4[])",
                L::Int4,
                true,
                "'{1,2}'::int4[]",
            ),
            ("WHERE c = ANY('{1,2}')", L::Int4, true, "'{1,2}'"),
            ("WHERE c IS NOT DISTINCT FROM 'x'", L::Text, false, "'x'"),
            ("CASE c WHEN 'x' THEN 1 END", L::Text, false, "'x'"),
            (
                "WHERE c = U&'\\0041' UESCAPE '!' AND",
                L::Text,
                false,
                "U&'\\0041' UESCAPE '!'",
            ),
            ("WHERE t.date = 'x'", L::Text, false, "'x'"),
            // Django's bulk_create through psycopg's client-side binding.
            (
                "SELECT * FROM UNNEST(('{0,1}'::int4[])::integer[], ('{a}')::text[])",
                L::Int4,
                true,
                "('{0,1}'::int4[])::integer[]",
            ),
            // Parentheses of a call stay.
            ("WHERE c = lower('x')::text", L::Text, false, "'x'"),
        ];
        for (sql, ty, array, want) in ok {
            assert_eq!(range_of(sql, *ty, *array).as_deref(), Ok(*want), "{sql}");
        }
        let refused = [
            ("WHERE c = '5'::int8", L::Int4, false),
            ("WHERE c = '5'::numeric(5,2)", L::Numeric, false),
            ("WHERE c = 'abc'::varchar(2)", L::Text, false),
            ("WHERE c = '5'::text::int4", L::Int4, false),
            ("WHERE c = timestamp '2024-01-01'", L::Timestamptz, false),
            ("WHERE c = interval '1 day'", L::Timestamptz, false),
            ("WHERE c = CAST('7' AS int4)", L::Int8, false),
            ("WHERE c = '{1}'::int4[]", L::Int4, false),
            ("WHERE c = ANY('{1}'::int4)", L::Int4, true),
            ("WHERE c = '5'::\"int4\"", L::Int4, false),
            ("WHERE c = '5'::mytype", L::Int4, false),
        ];
        for (sql, ty, array) in refused {
            assert!(
                matches!(range_of(sql, ty, array), Err(LiteralError::Unsupported(_))),
                "{sql}: {:?}",
                range_of(sql, ty, array)
            );
        }
    }

    #[test]
    fn the_text_must_read_as_the_plan_says_a_comparison() {
        let at = |sql: &str| at_in(sql, "'x'");
        for (sql, negated) in [
            ("SELECT 1 FROM t WHERE c = 'x'", false),
            ("WHERE t.c='x' AND d = 1", false),
            ("WHERE \"My\"\"Col\" =\n 'x'", false),
            ("WHERE s.t.\"c\" <> 'x'", true),
            ("WHERE c != 'x'", true),
            ("WHERE (c = 'x')", false),
            ("SELECT a, c = 'x' FROM t", false),
        ] {
            assert!(compared_at(sql, &at(sql), negated), "{sql}");
            assert!(!compared_at(sql, &at(sql), !negated), "{sql}");
        }
        for sql in [
            "WHERE c <= 'x'",
            "WHERE c >= 'x'",
            "WHERE c == 'x'",
            "WHERE c IN ('x')",
            "SELECT f(a := 'x')",
            "'x'",
        ] {
            assert!(!compared_at(sql, &at(sql), false), "{sql}");
            assert!(!compared_at(sql, &at(sql), true), "{sql}");
        }
        assert_eq!(any_of(false, "$1"), "ANY ($1)");
        assert_eq!(any_of(true, "ARRAY['a']"), "ALL (ARRAY['a'])");
        let b = |sql: &str| list_element_at(sql.as_bytes(), &at(sql));
        assert!(b("WHERE c IN ('x')") && b("IN (1, 'x' , 2)") && b("IN (1,'x')"));
        assert!(!b("WHERE c = 'x'") && !b("IN ('x' || 'y')") && !b("IN (1 + 'x')"));
    }

    #[test]
    fn in_lists_are_located_from_the_plans_elements() {
        use ListPiece::{At, Null};
        let sql = "SELECT 1 FROM t WHERE a NOT IN ($1, 'x', NULL, $2) AND f(b, $3) AND c IN ($4)";
        let pieces = [
            At(at_in(sql, "$1")),
            At(at_in(sql, "'x'")),
            Null,
            At(at_in(sql, "$2")),
        ];
        assert_eq!(
            in_list_range(sql, &pieces, true),
            Some(at_in(sql, "NOT IN ($1, 'x', NULL, $2)"))
        );
        assert_eq!(in_list_range(sql, &pieces, false), None, "negation differs");
        assert_eq!(
            in_list_range(sql, &pieces[..3], true),
            None,
            "an element the plan does not have"
        );
        assert_eq!(
            in_list_range(sql, &[At(at_in(sql, "$4"))], false),
            Some(at_in(sql, "IN ($4)"))
        );
        assert_eq!(
            in_list_range(sql, &[At(at_in(sql, "$3"))], false),
            None,
            "function arguments"
        );
        // NULLs first, with casts; ORMs cast each element.
        let sql = "SELECT 1 WHERE a in( NULL::text ,null, $1::VARCHAR, 'x'::text, $2::VARCHAR)";
        let pieces = [
            Null,
            Null,
            At(at_in(sql, "$1::VARCHAR")),
            At(at_in(sql, "'x'::text")),
            At(at_in(sql, "$2::VARCHAR")),
        ];
        assert_eq!(
            in_list_range(sql, &pieces, false),
            Some(at_in(
                sql,
                "in( NULL::text ,null, $1::VARCHAR, 'x'::text, $2::VARCHAR)"
            ))
        );
        for sql in [
            "INSERT INTO t VALUES ($1, $2)",
            "SELECT 1 WHERE a IN ($1 + 1)",
            "SELECT 1 WHERE a IN (SELECT $1)",
            "SELECT 1 WHERE a IN ($10",
            "SELECT 1 WHERE a IN (nullx, $1)",
        ] {
            let s = sql.find("$1").unwrap();
            let pieces = if sql.contains("null") {
                vec![Null, At(s..s + 2)]
            } else {
                vec![At(s..s + 2)]
            };
            assert_eq!(in_list_range(sql, &pieces, false), None, "{sql}");
        }
        assert_eq!(in_list_range("IN (NULL)", &[Null], false), None);
    }

    fn stored_of(t: &ColumnTarget<'_>, sql_lit: &str) -> Vec<u8> {
        // Undo the SQL quoting of a ciphertext literal, then the storage's text form.
        let l = lits(sql_lit);
        let text = decode_literal(sql_lit, &l[0]).unwrap();
        match t.storage {
            Storage::Bytea => {
                typed::canonical_from_text(LogicalType::Bytea, text.as_bytes()).unwrap()
            }
            Storage::Text => text.into_bytes(),
        }
    }

    #[test]
    fn literal_edit_encrypts_and_splices() {
        let kit = Kit::new();
        let kr = kit.keyring();
        for storage in [Storage::Bytea, Storage::Text] {
            let t = kit.target(&kr, SALARY, LogicalType::Int4, storage);
            let sql = "INSERT INTO customers (id, salary) VALUES (1, 5000), (2,'-7'::int4)";
            let l = lits(sql);
            let edits = vec![
                literal_edit(sql, &l, 3, &t, false, false, SiteRole::Stored).unwrap(),
                literal_edit(sql, &l, 1, &t, false, false, SiteRole::Stored).unwrap(),
            ];
            let out = apply_edits(sql, edits.clone()).unwrap();
            assert!(
                out.starts_with("INSERT INTO customers (id, salary) VALUES (1, "),
                "{out}"
            );
            // The ciphertext literals are random bytes and may spell "5000" by chance (CI once
            // saw `...000015000b6...`), so the plaintext is looked for outside them only.
            let relexed = lex(&out);
            assert_eq!(relexed.literals.len(), 4);
            assert!(!relexed.unterminated);
            let n = &relexed.normalized;
            assert!(
                !n.contains("5000") && !n.contains("-7") && !n.contains("::int4"),
                "{n}"
            );
            let lit = |i: usize| &out[relexed.literals[i].span.clone()];
            assert_eq!(lit(1), edits[1].text);
            assert_eq!(lit(3), edits[0].text);
            assert_eq!(
                t.cipher.decrypt(&stored_of(&t, &edits[1].text)).unwrap(),
                5000i32.to_be_bytes()
            );
            assert_eq!(
                t.cipher.decrypt(&stored_of(&t, &edits[0].text)).unwrap(),
                (-7i32).to_be_bytes()
            );
        }
        // Errors name the column.
        let t = kit.target(&kr, SALARY, LogicalType::Int4, Storage::Bytea);
        let sql = "UPDATE customers SET salary = 'lots'";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, false, SiteRole::Stored).unwrap_err();
        assert!(e.to_string().contains(SALARY) && !e.to_string().contains("lots"));
        let e = literal_edit(sql, &lits(sql), 7, &t, false, false, SiteRole::Stored).unwrap_err();
        assert_eq!(e.sqlstate(), "22P02");
        let sql = "UPDATE customers SET salary = B'0101'";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, false, SiteRole::Stored).unwrap_err();
        assert_eq!(e.sqlstate(), "0A000");
    }

    #[test]
    fn literal_edit_takes_a_sign_written_before_a_number() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, SALARY, LogicalType::Int4, Storage::Bytea);
        for (sql, want) in [
            (
                "INSERT INTO customers (id, salary) VALUES (1, -5000)",
                -5000i32,
            ),
            ("UPDATE customers SET salary=- \n 7", -7),
            ("UPDATE customers SET salary = +12", 12),
            ("UPDATE customers SET salary = -0x10", -16),
        ] {
            let l = lits(sql);
            let e = literal_edit(sql, &l, l.len() - 1, &t, false, false, SiteRole::Stored).unwrap();
            let sign = sql.rfind(['-', '+']).unwrap();
            assert_eq!(e.range, sign..l[l.len() - 1].span.end, "{sql}");
            assert_eq!(
                t.cipher.decrypt(&stored_of(&t, &e.text)).unwrap(),
                want.to_be_bytes(),
                "{sql}"
            );
            let out = apply_edits(sql, vec![e]).unwrap();
            assert!(!out.contains(['-', '+']), "{out}");
        }
        // `--` starts a comment: no sign.
        let sql = "UPDATE customers SET salary = --\n5";
        let l = lits(sql);
        let e = literal_edit(sql, &l, 0, &t, false, false, SiteRole::Stored).unwrap();
        assert_eq!(e.range, l[0].span);
        assert_eq!(
            t.cipher.decrypt(&stored_of(&t, &e.text)).unwrap(),
            5i32.to_be_bytes()
        );
    }

    #[test]
    fn numbers_round_to_integers_like_postgres() {
        for (text, want) in [
            ("5000.5", Some("5001")),
            ("-2.5", Some("-3")),
            ("2.49", Some("2")),
            ("2.5", Some("3")),
            ("1e3", Some("1000")),
            ("1.5E1", Some("15")),
            ("15e-1", Some("2")),
            (".5", Some("1")),
            ("0.4", Some("0")),
            ("-0.4", Some("0")),
            ("9.5", Some("10")),
            ("99.9", Some("100")),
            ("5e-2", Some("0")),
            ("+7.", Some("7")),
            ("12", Some("12")),
            ("1e41", None),
            ("1.2.3", None),
            ("e5", None),
            ("", None),
            ("1e", None),
        ] {
            assert_eq!(round_to_integer(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn fractional_numbers_round_when_stored_in_integer_columns() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, SALARY, LogicalType::Int4, Storage::Bytea);
        let sql = "UPDATE customers SET salary = -5000.5";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, true, SiteRole::Stored).unwrap();
        assert_eq!(
            t.cipher.decrypt(&stored_of(&t, &e.text)).unwrap(),
            (-5001i32).to_be_bytes()
        );
        let sql = "INSERT INTO customers (salary) VALUES (4.2e3)";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, true, SiteRole::Stored).unwrap();
        assert_eq!(
            t.cipher.decrypt(&stored_of(&t, &e.text)).unwrap(),
            4200i32.to_be_bytes()
        );
        // Compared, a fraction is no integer (PostgreSQL would match nothing): refused, not rounded.
        let sql = "SELECT 1 FROM customers WHERE salary = 2.5";
        let e = literal_edit(sql, &lits(sql), 1, &t, false, false, SiteRole::Stored).unwrap_err();
        assert_eq!(e.sqlstate(), "22P02");
        // Out of range after rounding: the type's own error.
        let sql = "UPDATE customers SET salary = 2147483647.5";
        assert!(literal_edit(sql, &lits(sql), 0, &t, false, true, SiteRole::Stored).is_err());
    }

    fn at_in(sql: &str, needle: &str) -> Range<usize> {
        let s = sql.find(needle).unwrap();
        s..s + needle.len()
    }

    #[test]
    fn parameter_casts_to_the_logical_type_are_covered_and_others_refused() {
        let sql = "UPDATE t SET a = $1::INTEGER, b = CAST($2 AS int4), c = $3 WHERE d = $4::text";
        let r = |n: &str, ty| param_range(sql, at_in(sql, n), ty, false);
        assert_eq!(r("$1", LogicalType::Int4), Ok(at_in(sql, "$1::INTEGER")));
        assert_eq!(
            r("$2", LogicalType::Int4),
            Ok(at_in(sql, "CAST($2 AS int4)"))
        );
        assert_eq!(r("$3", LogicalType::Text), Ok(at_in(sql, "$3")));
        assert_eq!(r("$4", LogicalType::Text), Ok(at_in(sql, "$4::text")));
        assert!(r("$4", LogicalType::Int4).is_err());
        assert!(r("$1", LogicalType::Text).is_err());
        let dj = "SELECT * FROM UNNEST(($1)::integer[], ( $2 )::varchar[]::text[], f($3)::text)";
        assert_eq!(
            param_range(dj, at_in(dj, "$1"), LogicalType::Int4, true),
            Ok(at_in(dj, "($1)::integer[]"))
        );
        assert_eq!(
            param_range(dj, at_in(dj, "$2"), LogicalType::Text, true),
            Ok(at_in(dj, "( $2 )::varchar[]::text[]"))
        );
        assert!(param_range(dj, at_in(dj, "$1"), LogicalType::Int4, false).is_err());
        assert_eq!(
            param_range(dj, at_in(dj, "$3"), LogicalType::Text, false),
            Ok(at_in(dj, "$3")),
            "a function's parentheses stay"
        );
        let arr = "SELECT 1 WHERE a = ANY($1::text[])";
        assert_eq!(
            param_range(arr, at_in(arr, "$1"), LogicalType::Text, true),
            Ok(at_in(arr, "$1::text[]"))
        );
    }

    #[test]
    fn literal_edit_variants_after_rotation() {
        let kit = Kit::new();
        let old = kit.keyring();
        let kr = kit.rotated_keyring(EMAIL);
        let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let t_old = kit.target(&old, EMAIL, LogicalType::Text, Storage::Text);
        let old_ct = String::from_utf8(t_old.encrypt(b"a@b.c").unwrap()).unwrap();
        let compared = SiteRole::Compared { negated: false };
        let sql = "SELECT id FROM customers WHERE email = 'a@b.c'";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, false, compared).unwrap();
        assert!(e.text.starts_with("ANY (ARRAY['pgc1:"), "{}", e.text);
        assert_eq!(e.range, lits(sql)[0].span, "the operator stays");
        assert!(e.text.contains(&old_ct));
        let sql = "SELECT id FROM customers WHERE email <> 'a@b.c'";
        let e = literal_edit(
            sql,
            &lits(sql),
            0,
            &t,
            false,
            false,
            SiteRole::Compared { negated: true },
        )
        .unwrap();
        assert!(e.text.starts_with("ALL (ARRAY['pgc1:"), "{}", e.text);
        // The plan says compared but the text does not read so: refused, not guessed.
        let sql = "SELECT id FROM customers WHERE email <= 'a@b.c'";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, false, compared).unwrap_err();
        assert_eq!(e.sqlstate(), "XX000");
        assert!(e.to_string().contains(EMAIL) && !e.to_string().contains("a@b.c"));
        let listed = SiteRole::Listed { list: 0 };
        let sql = "SELECT id FROM customers WHERE email IN ('a@b.c', 'd@e.f')";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, false, listed).unwrap();
        assert_eq!(e.range, lits(sql)[0].span);
        assert_eq!(e.text.matches("pgc1:").count(), 2);
        let sql = "SELECT id FROM customers WHERE email IN ('a@b.c' || 'x')";
        assert!(literal_edit(sql, &lits(sql), 0, &t, false, false, listed).is_err());
        // A write, or any other role, uses the active version only.
        let sql = "UPDATE customers SET email = 'a@b.c'";
        for role in [SiteRole::Stored, SiteRole::Other] {
            let e = literal_edit(sql, &lits(sql), 0, &t, false, false, role).unwrap();
            assert!(!e.text.contains(&old_ct) && e.text.starts_with("'pgc1:"));
        }
        let sql = "INSERT INTO customers (email) VALUES ('a@b.c')";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, true, SiteRole::Stored).unwrap();
        assert_eq!(e.text.matches("pgc1:").count(), 1);
        // Arrays carry the variants as elements.
        let sql = "SELECT 1 FROM customers WHERE email = ANY('{a@b.c,x@y.z}')";
        let e = literal_edit(sql, &lits(sql), 1, &t, true, false, SiteRole::Other).unwrap();
        assert_eq!(e.text.matches("pgc1:").count(), 4);
        assert!(e.text.contains(&old_ct));
    }

    #[test]
    fn literal_edit_bytea_array_literal_and_glued_keyword() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, NOTES, LogicalType::Text, Storage::Bytea);
        let sql = "SELECT CASE WHEN true THEN'x' END";
        let e = literal_edit(sql, &lits(sql), 0, &t, false, false, SiteRole::Other).unwrap();
        assert!(e.text.starts_with(" E'\\\\x"), "{}", e.text);
        let out = apply_edits(sql, vec![e]).unwrap();
        assert!(out.contains("THEN E'"), "{out}");
        let sql = "WHERE notes = ANY('{\"a b\",NULL}')";
        let e = literal_edit(sql, &lits(sql), 0, &t, true, false, SiteRole::Other).unwrap();
        assert!(e.text.starts_with("E'{\"\\\\\\\\x"), "{}", e.text);
        // Decoding the literal gives a bytea[] text whose elements decrypt.
        let arr = decode_literal(&e.text, &lits(&e.text)[0]).unwrap();
        assert!(arr.ends_with(",NULL}"), "{arr}");
        assert!(e.text.ends_with("'::bytea[]"), "{}", e.text);
    }

    #[test]
    fn apply_edits_rejects_overlap() {
        let e = |r: Range<usize>| Edit {
            range: r,
            text: "z".into(),
        };
        assert_eq!(
            apply_edits("abcdef", vec![e(4..5), e(0..2)]).unwrap(),
            "zcdzf"
        );
        assert!(apply_edits("abcdef", vec![e(0..3), e(2..4)]).is_err());
        assert!(apply_edits("abc", vec![e(2..9)]).is_err());
        assert!(apply_edits("é", vec![e(1..2)]).is_err());
    }

    #[test]
    fn sql_helpers_never_panic_on_random_text() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Bytea);
        let mut rng = Rng::new(11);
        let alphabet = b"'\"$eEuUnN&\\ ::=<>!,()[]{}0x1_.acstiN";
        for _ in 0..4000 {
            let raw = rng.bytes_from(alphabet, 30);
            let sql = String::from_utf8_lossy(&raw).into_owned();
            let l = lits(&sql);
            for (i, lit) in l.iter().enumerate() {
                let _ = decode_literal(&sql, lit);
                for ty in [LogicalType::Text, LogicalType::Int4] {
                    let _ = replace_range(&sql, lit, ty, i % 2 == 0);
                }
                let range = lit.span.clone();
                let _ = compared_at(&sql, &range, i % 2 == 0);
                let _ = list_element_at(sql.as_bytes(), &range);
                let _ = in_list_range(&sql, &[ListPiece::Null, ListPiece::At(range)], false);
                for role in [
                    SiteRole::Compared { negated: false },
                    SiteRole::Listed { list: 0 },
                    SiteRole::Other,
                ] {
                    if let Ok(e) = literal_edit(&sql, &l, i, &t, false, false, role) {
                        let _ = apply_edits(&sql, vec![e]);
                    }
                }
            }
            // Out-of-range spans.
            let bogus = Literal {
                span: sql.len()..sql.len() + 3,
                kind: LiteralKind::String,
                placeholder: 1,
            };
            assert!(decode_literal(&sql, &bogus).is_err());
            let _ = replace_range(&sql, &bogus, LogicalType::Text, false);
        }
    }
}
