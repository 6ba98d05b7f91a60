//! The value of a literal as PostgreSQL reads it: quoted strings, `E'...'` escapes, `U&'...'` with
//! `UESCAPE`, dollar quoting and numbers.

use pgcloak_policy::{Literal, LiteralKind};

use super::{is_ident_char, skip_ws, LResult, LiteralError};
use crate::rewrite::escape::{decode_escape, hex_digit, Dialect};

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

/// Appends an escaped code point of an E-string (`\u`, `\U`) or a U& string, pairing UTF-16
/// surrogates: a high surrogate waits in `pending_high` for the low one that must follow.
fn push_escaped(out: &mut Vec<u8>, pending_high: &mut Option<u32>, cp: u32) -> LResult<()> {
    match (pending_high.take(), cp) {
        (None, 0xD800..=0xDBFF) => {
            *pending_high = Some(cp);
            Ok(())
        }
        (Some(h), 0xDC00..=0xDFFF) => {
            push_code_point(out, 0x10000 + ((h - 0xD800) << 10) + (cp - 0xDC00))
        }
        (Some(_), _) | (None, 0xDC00..=0xDFFF) => Err(LiteralError::Malformed(
            "it has an unpaired Unicode surrogate",
        )),
        (None, cp) => push_code_point(out, cp),
    }
}

/// Reads `n` hex digits at `b[i..]`.
fn hex_n(b: &[u8], i: usize, n: usize) -> Option<u32> {
    let digits = b.get(i..i.checked_add(n)?)?;
    digits.iter().try_fold(0u32, |acc, &d| {
        Some(acc.checked_mul(16)? + u32::from(hex_digit(d)?))
    })
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
            push_escaped(&mut out, &mut pending_high, cp)?;
            continue;
        }
        if pending_high.is_some() {
            return Err(LiteralError::Malformed(
                "it has an unpaired Unicode surrogate",
            ));
        }
        let (byte, next) = decode_escape(b, i + 1, Dialect::EString)
            .ok_or(LiteralError::Malformed("it ends inside an escape"))?;
        out.push(byte);
        i = next;
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
        push_escaped(&mut out, &mut pending_high, cp)?;
    }
    if pending_high.is_some() {
        return Err(LiteralError::Malformed(
            "it has an unpaired Unicode surrogate",
        ));
    }
    String::from_utf8(out).map_err(|_| LiteralError::Malformed("it is not valid UTF-8"))
}

/// A `UESCAPE 'c'` clause right after a `U&'...'` literal ending at `end`: (end of the clause, c).
pub(super) fn uescape_after(sql: &str, end: usize) -> LResult<Option<(usize, char)>> {
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
