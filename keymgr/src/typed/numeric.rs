//! `numeric`: PostgreSQL's base-10000 binary format (ndigits, weight, sign, dscale, digits) and its
//! decimal text, normalised the way `numeric_recv` / `numeric_in` store values.

use super::{invalid, trim_ascii_ws};
use crate::error::Result;
use crate::LogicalType;

const POS: u16 = 0x0000;
const NEG: u16 = 0x4000;
const NAN: u16 = 0xC000;
const PINF: u16 = 0xD000;
const NINF: u16 = 0xF000;
/// `NUMERIC_DSCALE_MAX`.
const DSCALE_MAX: i64 = 0x3FFF;
/// `NUMERIC_MAX_PRECISION`: bound on the exponent of text input.
const MAX_EXPONENT: i64 = 1000;
const NBASE: u16 = 10_000;

const TY: LogicalType = LogicalType::Numeric;

/// A numeric value in PostgreSQL's variable form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Num {
    sign: u16,
    weight: i16,
    dscale: u16,
    digits: Vec<u16>,
}

impl Num {
    fn special(sign: u16) -> Num {
        Num {
            sign,
            weight: 0,
            // numeric_send reads the dscale of ±Infinity out of the short header's flag bits and so
            // sends 32 (0x20); NaN sends 0. Reproduce that byte for byte.
            dscale: if sign == NAN { 0 } else { 0x20 },
            digits: Vec::new(),
        }
    }

    /// `trunc_var(dscale)` + `strip_var` + zero normalisation, as `numeric_recv` does.
    fn normalise(mut self) -> Num {
        if matches!(self.sign, NAN | PINF | NINF) {
            return Num::special(self.sign);
        }
        // trunc_var(dscale): keep the decimal digits up to `dscale` places after the point.
        let di = (i64::from(self.weight) + 1) * 4 + i64::from(self.dscale);
        if di <= 0 {
            self.digits.clear();
        } else {
            let keep = usize::try_from((di + 3) / 4).unwrap_or(usize::MAX);
            if keep <= self.digits.len() {
                self.digits.truncate(keep);
                let r = di % 4;
                if r > 0 {
                    let p = 10u16.pow((4 - r) as u32);
                    if let Some(last) = self.digits.last_mut() {
                        *last -= *last % p;
                    }
                }
            }
        }
        // strip leading zeros
        let lead = self.digits.iter().take_while(|&&d| d == 0).count();
        if lead > 0 {
            self.digits.drain(..lead);
            self.weight = self.weight.saturating_sub(lead as i16);
        }
        while self.digits.last() == Some(&0) {
            self.digits.pop();
        }
        if self.digits.is_empty() {
            self.sign = POS;
            self.weight = 0;
        }
        self
    }

    fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 2 * self.digits.len());
        out.extend_from_slice(&(self.digits.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.weight.to_be_bytes());
        out.extend_from_slice(&self.sign.to_be_bytes());
        out.extend_from_slice(&self.dscale.to_be_bytes());
        for d in &self.digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }
}

/// Decodes `numeric_recv`'s input and returns the normalised binary (the canonical form).
pub(super) fn from_binary(bin: &[u8], format: &'static str) -> Result<Vec<u8>> {
    Ok(decode(bin, format)?.to_binary())
}

fn decode(bin: &[u8], format: &'static str) -> Result<Num> {
    let Some((&[n0, n1, w0, w1, s0, s1, d0, d1], body)) = bin.split_first_chunk::<8>() else {
        return Err(invalid(TY, format, "it is shorter than the 8-byte header"));
    };
    let ndigits = i16::from_be_bytes([n0, n1]);
    let weight = i16::from_be_bytes([w0, w1]);
    let sign = u16::from_be_bytes([s0, s1]);
    let dscale = u16::from_be_bytes([d0, d1]);
    if ndigits < 0 {
        return Err(invalid(TY, format, "negative digit count"));
    }
    if body.len() != 2 * ndigits as usize {
        return Err(invalid(
            TY,
            format,
            "the digit count does not match the length",
        ));
    }
    if !matches!(sign, POS | NEG | NAN | PINF | NINF) {
        return Err(invalid(TY, format, "invalid sign"));
    }
    if i64::from(dscale) > DSCALE_MAX {
        return Err(invalid(TY, format, "invalid scale"));
    }
    let mut digits = Vec::with_capacity(ndigits as usize);
    // `body` is exactly `ndigits` pairs (checked above), so there is no remainder.
    for &pair in body.as_chunks::<2>().0 {
        let d = u16::from_be_bytes(pair);
        if d >= NBASE {
            return Err(invalid(TY, format, "invalid digit"));
        }
        digits.push(d);
    }
    Ok(Num {
        sign,
        weight,
        dscale,
        digits,
    }
    .normalise())
}

/// Decimal text of a canonical numeric, as `numeric_out` prints it (dscale digits after the point).
pub(super) fn to_text(canonical: &[u8]) -> Result<Vec<u8>> {
    let n = decode(canonical, "canonical")?;
    match n.sign {
        NAN => return Ok(b"NaN".to_vec()),
        PINF => return Ok(b"Infinity".to_vec()),
        NINF => return Ok(b"-Infinity".to_vec()),
        _ => {}
    }
    let mut out = Vec::with_capacity(n.digits.len() * 4 + 4);
    if n.sign == NEG {
        out.push(b'-');
    }
    let weight = i64::from(n.weight);
    let digit = |idx: i64| -> u16 {
        usize::try_from(idx)
            .ok()
            .and_then(|i| n.digits.get(i).copied())
            .unwrap_or(0)
    };
    if weight < 0 {
        out.push(b'0');
    } else {
        for idx in 0..=weight {
            let d = digit(idx);
            if idx == 0 {
                out.extend_from_slice(d.to_string().as_bytes());
            } else {
                out.extend_from_slice(format!("{d:04}").as_bytes());
            }
        }
    }
    if n.dscale > 0 {
        out.push(b'.');
        let mut remaining = usize::from(n.dscale);
        let mut k = 1i64;
        while remaining > 0 {
            let d = digit(weight + k);
            let s = format!("{d:04}");
            let take = remaining.min(4);
            out.extend(s.bytes().take(take));
            remaining -= take;
            k += 1;
        }
    }
    Ok(out)
}

/// Splits `s` after its leading ASCII digits.
fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    // `n <= s.len()`; were it past the end, every byte would be a digit.
    s.split_at_checked(n).unwrap_or((s, &[]))
}

/// `numeric_in`: whitespace, sign, digits with optional point, optional exponent; `NaN`,
/// `Infinity`/`inf` (signed), case-insensitive. Returns the canonical binary.
pub(super) fn from_text(text: &[u8]) -> Result<Vec<u8>> {
    let bad = || invalid(TY, "text", "it is not a number");
    let t = trim_ascii_ws(text);
    let lower = t.to_ascii_lowercase();
    match &lower[..] {
        b"nan" => return Ok(Num::special(NAN).to_binary()),
        b"infinity" | b"+infinity" | b"inf" | b"+inf" => return Ok(Num::special(PINF).to_binary()),
        b"-infinity" | b"-inf" => return Ok(Num::special(NINF).to_binary()),
        _ => {}
    }
    let (neg, rest) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, t),
    };
    let (int, mut rest) = split_digits(rest);
    let mut frac: &[u8] = &[];
    if let Some(r) = rest.strip_prefix(b".") {
        (frac, rest) = split_digits(r);
    }
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let mut exp: i64 = 0;
    if let Some(r) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let (eneg, r) = match r.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, r),
        };
        if r.is_empty() || !r.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        for &d in r {
            exp = exp * 10 + i64::from(d - b'0');
            if exp > MAX_EXPONENT {
                return Err(invalid(TY, "text", "the exponent is out of range"));
            }
        }
        if eneg {
            exp = -exp;
        }
        rest = &[];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    let dscale = (frac.len() as i64 - exp).max(0);
    if dscale > DSCALE_MAX {
        return Err(invalid(
            TY,
            "text",
            "too many digits after the decimal point",
        ));
    }
    // Decimal digit j (of int ++ frac) has decimal exponent point - 1 - j.
    let point = int.len() as i64 + exp;
    let all = int.iter().chain(frac.iter());
    let first_nz = int.iter().chain(frac.iter()).position(|&c| c != b'0');
    let Some(first_nz) = first_nz else {
        return Ok(Num {
            sign: POS,
            weight: 0,
            dscale: dscale as u16,
            digits: Vec::new(),
        }
        .to_binary());
    };
    let top_exp = point - 1 - first_nz as i64;
    let weight = top_exp.div_euclid(4);
    if weight > i64::from(i16::MAX) {
        return Err(invalid(TY, "text", "value overflows numeric format"));
    }
    let mut digits: Vec<u16> = Vec::new();
    for (j, &c) in all.enumerate().skip(first_nz) {
        let e = point - 1 - j as i64;
        let idx = usize::try_from(weight - e.div_euclid(4)).map_err(|_| bad())?;
        if idx >= digits.len() {
            digits.resize(idx + 1, 0);
        }
        // Never fails: `digits` was just grown past `idx`.
        let slot = digits.get_mut(idx).ok_or_else(bad)?;
        *slot += u16::from(c - b'0') * 10u16.pow(e.rem_euclid(4) as u32);
    }
    if digits.len() > i16::MAX as usize {
        return Err(invalid(TY, "text", "value overflows numeric format"));
    }
    Ok(Num {
        sign: if neg { NEG } else { POS },
        weight: weight as i16,
        dscale: dscale as u16,
        digits,
    }
    .normalise()
    .to_binary())
}
