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

mod decode;
pub use decode::decode_literal;
use decode::uescape_after;

pub(super) fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub(super) fn skip_ws(b: &[u8], mut i: usize) -> usize {
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
mod tests;
