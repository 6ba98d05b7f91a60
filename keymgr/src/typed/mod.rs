//! Typed plaintexts: PostgreSQL text and binary wire formats of each logical type to and from one
//! canonical byte form, so that `'42'` (text) and `00 00 00 2a` (binary) encrypt identically.
//!
//! Canonical forms (what is encrypted):
//!
//! | type | canonical bytes |
//! |---|---|
//! | `text` | the bytes as given (client encoding; no validation) |
//! | `bytea` | the raw bytes |
//! | `int4`, `int8` | two's complement big-endian, 4 / 8 bytes (= binary format) |
//! | `bool` | one byte, `0` or `1` |
//! | `date` | i32 BE days since 2000-01-01; `infinity` = i32::MAX, `-infinity` = i32::MIN (= binary format) |
//! | `timestamptz` | i64 BE microseconds since 2000-01-01 00:00:00 UTC; ±infinity = i64::MAX / i64::MIN (= binary format) |
//! | `numeric` | PostgreSQL's binary format, normalised as `numeric_recv` stores it: no leading or trailing zero base-10000 digits, digits beyond `dscale` dropped, zero has sign `+` and weight 0, NaN/±Infinity have no digits |
//! | `jsonb` | the JSON text as the client sent it (validated, **not** normalised): deterministic equality on a jsonb column is equality of the JSON text, so `{"a":1}` and `{"a": 1}` encrypt differently |
//!
//! Text input follows PostgreSQL's input functions where it matters (surrounding whitespace, bool
//! spellings, `infinity`, BC dates, numeric exponents); text output is what PostgreSQL prints with
//! `DateStyle = ISO` and `TimeZone = UTC`. Not supported on input: PostgreSQL 16's `0x`/`0o`/`0b`
//! integer literals and `_` digit separators, date styles other than ISO year-month-day, named time
//! zones, and the words `now`/`today`/`tomorrow`/`yesterday` (they depend on the clock; the proxy
//! must refuse or resolve them). A timestamp without an offset is taken as UTC.

mod datetime;
mod numeric;

use crate::error::{KeyError, Result};
use crate::LogicalType;

pub use datetime::{
    date_from_days, timestamp_from_micros, DATE_NEG_INFINITY, DATE_POS_INFINITY,
    TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY,
};

pub(crate) fn invalid(ty: LogicalType, format: &'static str, reason: &'static str) -> KeyError {
    KeyError::InvalidValue {
        ty: ty.name(),
        format,
        reason,
    }
}

/// A `text` value as PostgreSQL accepts one (UTF-8, no NUL): the server cannot check it once it is
/// encrypted, so pgcloak does.
fn valid_text(v: &[u8], format: &'static str) -> Result<Vec<u8>> {
    if v.contains(&0) {
        return Err(invalid(LogicalType::Text, format, "it contains a NUL byte"));
    }
    std::str::from_utf8(v)
        .map_err(|_| invalid(LogicalType::Text, format, "it is not valid UTF-8"))?;
    Ok(v.to_vec())
}

/// Canonical bytes of a value in PostgreSQL's text format.
pub fn canonical_from_text(ty: LogicalType, text: &[u8]) -> Result<Vec<u8>> {
    match ty {
        LogicalType::Text => valid_text(text, "text"),
        LogicalType::Bytea => bytea_from_text(text),
        LogicalType::Int4 => {
            let v = parse_int(ty, text, i32::MIN as i64, i32::MAX as i64)?;
            Ok((v as i32).to_be_bytes().to_vec())
        }
        LogicalType::Int8 => Ok(parse_int(ty, text, i64::MIN, i64::MAX)?
            .to_be_bytes()
            .to_vec()),
        LogicalType::Bool => Ok(vec![u8::from(parse_bool(text)?)]),
        LogicalType::Date => Ok(datetime::date_from_text(text)?.to_be_bytes().to_vec()),
        LogicalType::Timestamptz => Ok(datetime::timestamptz_from_text(text)?
            .to_be_bytes()
            .to_vec()),
        LogicalType::Numeric => numeric::from_text(text),
        LogicalType::Jsonb => {
            validate_json(ty, "text", text)?;
            Ok(text.to_vec())
        }
    }
}

/// Canonical bytes of a value in PostgreSQL's binary format (what `*_recv` accepts).
pub fn canonical_from_binary(ty: LogicalType, bin: &[u8]) -> Result<Vec<u8>> {
    match ty {
        LogicalType::Text => valid_text(bin, "binary"),
        LogicalType::Bytea => Ok(bin.to_vec()),
        LogicalType::Int4 => fixed::<4>(ty, "binary", bin).map(|b| b.to_vec()),
        LogicalType::Int8 => fixed::<8>(ty, "binary", bin).map(|b| b.to_vec()),
        LogicalType::Bool => {
            // boolrecv: any non-zero byte is true
            let [b] = fixed::<1>(ty, "binary", bin)?;
            Ok(vec![u8::from(b != 0)])
        }
        LogicalType::Date => {
            let d = i32::from_be_bytes(fixed::<4>(ty, "binary", bin)?);
            datetime::check_date(d, "binary")?;
            Ok(d.to_be_bytes().to_vec())
        }
        LogicalType::Timestamptz => {
            let t = i64::from_be_bytes(fixed::<8>(ty, "binary", bin)?);
            datetime::check_timestamp(t, "binary")?;
            Ok(t.to_be_bytes().to_vec())
        }
        LogicalType::Numeric => numeric::from_binary(bin, "binary"),
        LogicalType::Jsonb => {
            let (&version, json) = bin
                .split_first()
                .ok_or(invalid(ty, "binary", "it is empty"))?;
            if version != 1 {
                return Err(invalid(
                    ty,
                    "binary",
                    "unsupported jsonb version byte (expected 1)",
                ));
            }
            validate_json(ty, "binary", json)?;
            Ok(json.to_vec())
        }
    }
}

/// [`to_text`], reusing `canonical`'s buffer where the two forms are the same bytes.
pub fn into_text(ty: LogicalType, mut canonical: Vec<u8>) -> Result<Vec<u8>> {
    to_text_in_place(ty, &mut canonical, 0)?;
    Ok(canonical)
}

/// Replaces the canonical value at `buf[start..]` by its text format, without a buffer of its own
/// where the two are the same bytes or a number (a row being rewritten converts each value on its
/// own end). On error `buf` is as it was.
pub fn to_text_in_place(ty: LogicalType, buf: &mut Vec<u8>, start: usize) -> Result<()> {
    // itoa rather than `write!`: the formatting machinery costs several times as much, for a number
    // read in every row.
    let int = |buf: &mut Vec<u8>, v: i64| {
        buf.truncate(start);
        buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    };
    match ty {
        LogicalType::Text | LogicalType::Jsonb => {}
        LogicalType::Int4 => {
            let v = i32::from_be_bytes(fixed::<4>(ty, "canonical", value_at(buf, start)?)?);
            int(buf, v.into());
        }
        LogicalType::Int8 => {
            let v = i64::from_be_bytes(fixed::<8>(ty, "canonical", value_at(buf, start)?)?);
            int(buf, v);
        }
        _ => {
            let text = to_text(ty, value_at(buf, start)?)?;
            buf.truncate(start);
            buf.extend_from_slice(&text);
        }
    }
    Ok(())
}

/// [`to_binary`], reusing `canonical`'s buffer where the two forms are the same bytes.
pub fn into_binary(ty: LogicalType, mut canonical: Vec<u8>) -> Result<Vec<u8>> {
    to_binary_in_place(ty, &mut canonical, 0)?;
    Ok(canonical)
}

/// [`to_text_in_place`] for the binary format.
pub fn to_binary_in_place(ty: LogicalType, buf: &mut Vec<u8>, start: usize) -> Result<()> {
    if !matches!(ty, LogicalType::Text | LogicalType::Bytea) {
        let bin = to_binary(ty, value_at(buf, start)?)?;
        buf.truncate(start);
        buf.extend_from_slice(&bin);
    }
    Ok(())
}

/// The value at `buf[start..]` of the `*_in_place` conversions; a `start` past the end of `buf` is
/// the caller's bug.
fn value_at(buf: &[u8], start: usize) -> Result<&[u8]> {
    buf.get(start..).ok_or(KeyError::Internal {
        what: "value offset past the end of the buffer",
    })
}

/// PostgreSQL's text format of a canonical value.
pub fn to_text(ty: LogicalType, canonical: &[u8]) -> Result<Vec<u8>> {
    const C: &str = "canonical";
    match ty {
        LogicalType::Text | LogicalType::Jsonb => Ok(canonical.to_vec()),
        LogicalType::Bytea => Ok(bytea_text(canonical)),
        LogicalType::Int4 => Ok(i32::from_be_bytes(fixed::<4>(ty, C, canonical)?)
            .to_string()
            .into_bytes()),
        LogicalType::Int8 => Ok(i64::from_be_bytes(fixed::<8>(ty, C, canonical)?)
            .to_string()
            .into_bytes()),
        LogicalType::Bool => match fixed::<1>(ty, C, canonical)? {
            [0] => Ok(b"f".to_vec()),
            [1] => Ok(b"t".to_vec()),
            _ => Err(invalid(ty, C, "the byte is neither 0 nor 1")),
        },
        LogicalType::Date => {
            let d = i32::from_be_bytes(fixed::<4>(ty, C, canonical)?);
            datetime::check_date(d, C)?;
            Ok(datetime::date_to_text(d).into_bytes())
        }
        LogicalType::Timestamptz => {
            let t = i64::from_be_bytes(fixed::<8>(ty, C, canonical)?);
            datetime::check_timestamp(t, C)?;
            Ok(datetime::timestamptz_to_text(t).into_bytes())
        }
        LogicalType::Numeric => numeric::to_text(canonical),
    }
}

/// PostgreSQL's binary format of a canonical value.
pub fn to_binary(ty: LogicalType, canonical: &[u8]) -> Result<Vec<u8>> {
    const C: &str = "canonical";
    match ty {
        LogicalType::Text | LogicalType::Bytea => Ok(canonical.to_vec()),
        LogicalType::Jsonb => {
            let mut out = Vec::with_capacity(1 + canonical.len());
            out.push(1);
            out.extend_from_slice(canonical);
            Ok(out)
        }
        LogicalType::Bool => match fixed::<1>(ty, C, canonical)? {
            [b @ (0 | 1)] => Ok(vec![b]),
            _ => Err(invalid(ty, C, "the byte is neither 0 nor 1")),
        },
        LogicalType::Int4 => fixed::<4>(ty, C, canonical).map(|b| b.to_vec()),
        LogicalType::Int8 => fixed::<8>(ty, C, canonical).map(|b| b.to_vec()),
        LogicalType::Date => {
            let b = fixed::<4>(ty, C, canonical)?;
            datetime::check_date(i32::from_be_bytes(b), C)?;
            Ok(b.to_vec())
        }
        LogicalType::Timestamptz => {
            let b = fixed::<8>(ty, C, canonical)?;
            datetime::check_timestamp(i64::from_be_bytes(b), C)?;
            Ok(b.to_vec())
        }
        LogicalType::Numeric => {
            // Canonical is already the binary format; re-normalise to validate it.
            numeric::from_binary(canonical, C)
        }
    }
}

fn fixed<const N: usize>(ty: LogicalType, format: &'static str, b: &[u8]) -> Result<[u8; N]> {
    b.try_into().map_err(|_| {
        invalid(
            ty,
            format,
            match N {
                1 => "it is not exactly 1 byte",
                4 => "it is not exactly 4 bytes",
                _ => "it is not exactly 8 bytes",
            },
        )
    })
}

pub(crate) fn trim_ascii_ws(b: &[u8]) -> &[u8] {
    let is_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
    let mut t = b;
    while let Some((first, rest)) = t.split_first() {
        if !is_ws(first) {
            break;
        }
        t = rest;
    }
    while let Some((last, rest)) = t.split_last() {
        if !is_ws(last) {
            break;
        }
        t = rest;
    }
    t
}

/// `int4in` / `int8in`: optional surrounding whitespace, optional sign, decimal digits.
fn parse_int(ty: LogicalType, text: &[u8], min: i64, max: i64) -> Result<i64> {
    let t = trim_ascii_ws(text);
    let (neg, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid(ty, "text", "it is not an integer"));
    }
    // Accumulate negatively so i64::MIN parses.
    let mut v: i64 = 0;
    for &d in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d - b'0')))
            .ok_or(invalid(ty, "text", "it is out of range"))?;
    }
    let v = if neg {
        v
    } else {
        v.checked_neg()
            .ok_or(invalid(ty, "text", "it is out of range"))?
    };
    if v < min || v > max {
        return Err(invalid(ty, "text", "it is out of range"));
    }
    Ok(v)
}

/// `boolin`: whitespace-trimmed, case-insensitive; any prefix of `true`/`false`/`yes`/`no`, `on`,
/// `of`/`off`, `1`, `0`.
fn parse_bool(text: &[u8]) -> Result<bool> {
    let t = trim_ascii_ws(text).to_ascii_lowercase();
    let prefix_of = |word: &[u8], min: usize| t.len() >= min && word.starts_with(&t);
    if prefix_of(b"true", 1) || prefix_of(b"yes", 1) || prefix_of(b"on", 2) || t == b"1" {
        Ok(true)
    } else if prefix_of(b"false", 1) || prefix_of(b"no", 1) || prefix_of(b"off", 2) || t == b"0" {
        Ok(false)
    } else {
        Err(invalid(
            LogicalType::Bool,
            "text",
            "it is not a boolean spelling",
        ))
    }
}

/// `byteain`: `\x` hex (whitespace allowed between digit pairs) or the escape format.
fn bytea_from_text(text: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    bytea_from_text_into(text, &mut out)?;
    Ok(out)
}

/// The bytes of a `bytea` value in text format (hex or escape), appended to `out`. On error `out` is
/// as it was.
pub fn bytea_from_text_into(text: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    if let Some(hex) = text.strip_prefix(b"\\x") {
        // What PostgreSQL itself prints (no whitespace): two digits at a time, no filtering. A
        // bytea-stored ciphertext is decoded this way for every value read.
        if hex.len() % 2 == 0 {
            // Every `u8` indexes the 256-entry tables; the fallback is their "not a digit" bit.
            let half = |t: &[u16; 256], c: u8| t.get(usize::from(c)).copied().unwrap_or(0x100);
            // OR of every pair: bit 8 says a byte was not a digit.
            let mut seen = 0u16;
            out.extend(hex.as_chunks::<2>().0.iter().map(|&[h, l]| {
                let v = half(&HEX_HIGH, h) | half(&HEX_LOW, l);
                seen |= v;
                v as u8
            }));
            if seen >> 8 == 0 {
                return Ok(());
            }
            // Whitespace or a bad digit: the general path below decides.
            out.truncate(start);
        }
    }
    let decoded = bytea_general(text, out);
    if decoded.is_err() {
        out.truncate(start);
    }
    decoded
}

/// Hex input with whitespace, and the escape format.
fn bytea_general(text: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let ty = LogicalType::Bytea;
    if let Some(hex) = text.strip_prefix(b"\\x") {
        let mut it = hex
            .iter()
            .copied()
            .filter(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'));
        while let Some(hi) = it.next() {
            let lo = it
                .next()
                .ok_or(invalid(ty, "text", "odd number of hexadecimal digits"))?;
            let h = hex_val(hi).ok_or(invalid(ty, "text", "invalid hexadecimal digit"))?;
            let l = hex_val(lo).ok_or(invalid(ty, "text", "invalid hexadecimal digit"))?;
            out.push(h << 4 | l);
        }
        return Ok(());
    }
    out.reserve(text.len());
    let mut rest = text;
    loop {
        rest = match rest {
            [] => return Ok(()),
            [b'\\', b'\\', tail @ ..] => {
                out.push(b'\\');
                tail
            }
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', tail @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                tail
            }
            [b'\\', ..] => return Err(invalid(ty, "text", "invalid escape sequence")),
            [c, tail @ ..] => {
                out.push(*c);
                tail
            }
        };
    }
}

/// bytea's text form of `bytes`: `\x<hex>`.
pub fn bytea_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bytes.len() * 2);
    out.extend_from_slice(bytes);
    bytea_text_in_place(&mut out, 0);
    out
}

/// Turns the bytes `buf[start..]` into bytea's text form `\x<hex>` in place. The `n` bytes grow to
/// `n + 1` two-byte pairs: pair 0 becomes `\x`, pair `1 + i` the digits of byte `i`. Written back to
/// front, two input bytes (one pair, `k`) at a time: their digits go to pairs `2k + 1` and `2k + 2`,
/// which are past `k` and so already read.
pub fn bytea_text_in_place(buf: &mut Vec<u8>, start: usize) {
    let n = buf.len().saturating_sub(start);
    buf.resize(start + 2 + 2 * n, 0);
    let Some(region) = buf.get_mut(start..) else {
        return;
    };
    let (pairs, _) = region.as_chunks_mut::<2>();
    for k in (0..n.div_ceil(2)).rev() {
        let Some(&[b0, b1]) = pairs.get(k) else {
            continue;
        };
        // With `n` odd the last pair's second byte is padding: its pair `n + 1` does not exist.
        if let Some(p) = pairs.get_mut(2 * k + 2) {
            *p = hex_pair(b1);
        }
        if let Some(p) = pairs.get_mut(2 * k + 1) {
            *p = hex_pair(b0);
        }
    }
    if let Some(p) = pairs.first_mut() {
        *p = *b"\\x";
    }
}

/// The two lower-case hex digits of a byte.
fn hex_pair(b: u8) -> [u8; 2] {
    // A u8 index into a 256-entry table: never out of range, and the check compiles away.
    HEX_PAIRS.get(usize::from(b)).copied().unwrap_or_default()
}

/// The hex digits of every byte value, in value order.
#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time, where an out-of-bounds index is a build error; \
              `i < 256`, the table's length, and `i >> 4`, `i & 0x0f` below 16"
)]
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    t
};

/// [`HEX_DIGIT`] as the high and the low half of a byte; bit 8 set for a byte that is no digit.
const HEX_HIGH: [u16; 256] = hex_halves(4);
const HEX_LOW: [u16; 256] = hex_halves(0);

#[allow(
    clippy::indexing_slicing,
    reason = "`i < 256`, the length of both tables; only evaluated in const items, where an \
              out-of-bounds index would be a build error"
)]
const fn hex_halves(shift: u32) -> [u16; 256] {
    let mut t = [0x100; 256];
    let mut i = 0;
    while i < 256 {
        if HEX_DIGIT[i] <= 0xf {
            t[i] = (HEX_DIGIT[i] as u16) << shift;
        }
        i += 1;
    }
    t
}

/// Value of each hexadecimal digit; 0xff for every other byte.
#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time, where an out-of-bounds index is a build error; \
              `i < 256`, the table's length"
)]
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 256 {
        if let Some(v) = hex_val(i as u8) {
            t[i] = v;
        }
        i += 1;
    }
    t
};

const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn validate_json(ty: LogicalType, format: &'static str, json: &[u8]) -> Result<()> {
    serde_json::from_slice::<serde::de::IgnoredAny>(json)
        .map(|_| ())
        .map_err(|_| invalid(ty, format, "it is not valid JSON"))
}

#[cfg(test)]
pub(crate) mod tests;
