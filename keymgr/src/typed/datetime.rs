//! `date` and `timestamptz`: PostgreSQL's binary integers (days / microseconds since 2000-01-01) and
//! ISO text, with PostgreSQL's valid ranges and infinities.

use super::{invalid, trim_ascii_ws};
use crate::error::Result;
use crate::LogicalType;

/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;
const USECS_PER_DAY: i64 = 86_400_000_000;
/// `date` binary value of `infinity`.
pub const DATE_POS_INFINITY: i32 = i32::MAX;
/// `date` binary value of `-infinity`.
pub const DATE_NEG_INFINITY: i32 = i32::MIN;
/// `timestamptz` binary value of `infinity`.
pub const TIMESTAMP_POS_INFINITY: i64 = i64::MAX;
/// `timestamptz` binary value of `-infinity`.
pub const TIMESTAMP_NEG_INFINITY: i64 = i64::MIN;
/// First valid date: Julian day 0 = 4714-11-24 BC (`DATETIME_MIN_JULIAN - POSTGRES_EPOCH_JDATE`).
const DATE_MIN: i32 = -2_451_545;
/// First invalid date after the range: 5874898-01-01 (`DATE_END_JULIAN - POSTGRES_EPOCH_JDATE`).
const DATE_END: i32 = 2_145_031_949;
/// `MIN_TIMESTAMP`: 4714-11-24 00:00:00 BC UTC.
const TS_MIN: i64 = -211_813_488_000_000_000;
/// `END_TIMESTAMP`: 294277-01-01 00:00:00 UTC (exclusive).
const TS_END: i64 = 9_223_371_331_200_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01 (astronomical year numbering).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// The `date` binary value (days since 2000-01-01) of a proleptic Gregorian date given with
/// astronomical year numbering (year 0 = 1 BC); `None` if invalid or out of PostgreSQL's range.
pub fn date_from_days(year: i64, month: u32, day: u32) -> Option<i32> {
    let (m, d) = (i64::from(month), i64::from(day));
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(year, m) || year.abs() > 10_000_000 {
        return None;
    }
    let days = days_from_civil(year, m, d) - PG_EPOCH_UNIX_DAYS;
    i32::try_from(days)
        .ok()
        .filter(|d| (i64::from(DATE_MIN)..i64::from(DATE_END)).contains(&i64::from(*d)))
}

/// The `timestamptz` binary value of a UTC date-time (astronomical year numbering);
/// `None` if invalid or out of range.
pub fn timestamp_from_micros(year: i64, month: u32, day: u32, micros_of_day: i64) -> Option<i64> {
    if !(0..USECS_PER_DAY).contains(&micros_of_day) {
        return None;
    }
    let (m, d) = (i64::from(month), i64::from(day));
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(year, m) || year.abs() > 10_000_000 {
        return None;
    }
    let days = i128::from(days_from_civil(year, m, d) - PG_EPOCH_UNIX_DAYS);
    let t = days * i128::from(USECS_PER_DAY) + i128::from(micros_of_day);
    i64::try_from(t)
        .ok()
        .filter(|t| (TS_MIN..TS_END).contains(t))
}

pub(super) fn check_date(d: i32, format: &'static str) -> Result<()> {
    if d == DATE_POS_INFINITY || d == DATE_NEG_INFINITY || (DATE_MIN..DATE_END).contains(&d) {
        Ok(())
    } else {
        Err(invalid(LogicalType::Date, format, "date out of range"))
    }
}

pub(super) fn check_timestamp(t: i64, format: &'static str) -> Result<()> {
    if t == TIMESTAMP_POS_INFINITY || t == TIMESTAMP_NEG_INFINITY || (TS_MIN..TS_END).contains(&t) {
        Ok(())
    } else {
        Err(invalid(
            LogicalType::Timestamptz,
            format,
            "timestamp out of range",
        ))
    }
}

fn push_ymd(out: &mut String, y: i64, m: i64, d: i64) -> bool {
    use std::fmt::Write as _;
    let bc = y <= 0;
    let shown = if bc { 1 - y } else { y };
    let _ = write!(out, "{shown:04}-{m:02}-{d:02}");
    bc
}

/// ISO text of a valid `date` value, like PostgreSQL with `DateStyle = ISO`.
pub(super) fn date_to_text(d: i32) -> String {
    match d {
        DATE_POS_INFINITY => "infinity".to_string(),
        DATE_NEG_INFINITY => "-infinity".to_string(),
        _ => {
            let (y, m, day) = civil_from_days(i64::from(d) + PG_EPOCH_UNIX_DAYS);
            let mut out = String::with_capacity(16);
            if push_ymd(&mut out, y, m, day) {
                out.push_str(" BC");
            }
            out
        }
    }
}

/// Text of a valid `timestamptz` value, like PostgreSQL with `DateStyle = ISO, TimeZone = UTC`:
/// `2024-01-02 03:04:05.123456+00`, trailing fractional zeros trimmed.
pub(super) fn timestamptz_to_text(t: i64) -> String {
    use std::fmt::Write as _;
    match t {
        TIMESTAMP_POS_INFINITY => "infinity".to_string(),
        TIMESTAMP_NEG_INFINITY => "-infinity".to_string(),
        _ => {
            let days = t.div_euclid(USECS_PER_DAY);
            let us = t.rem_euclid(USECS_PER_DAY);
            let (y, m, d) = civil_from_days(days + PG_EPOCH_UNIX_DAYS);
            let mut out = String::with_capacity(32);
            let bc = push_ymd(&mut out, y, m, d);
            let secs = us / 1_000_000;
            let frac = us % 1_000_000;
            let _ = write!(
                out,
                " {:02}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            if frac != 0 {
                let f = format!("{frac:06}");
                out.push('.');
                out.push_str(f.trim_end_matches('0'));
            }
            out.push_str("+00");
            if bc {
                out.push_str(" BC");
            }
            out
        }
    }
}

/// A little byte cursor for the ISO parsers.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// 1..=max decimal digits.
    fn digits(&mut self, max: usize) -> Option<(i64, usize)> {
        let start = self.i;
        let mut v: i64 = 0;
        while self.i - start < max {
            match self.peek() {
                Some(c @ b'0'..=b'9') => {
                    v = v * 10 + i64::from(c - b'0');
                    self.i += 1;
                }
                _ => break,
            }
        }
        let n = self.i - start;
        (n > 0).then_some((v, n))
    }
    fn spaces(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i - start
    }
    fn rest(&self) -> &[u8] {
        // `i` never passes the end; past it there would be nothing left.
        self.b.get(self.i..).unwrap_or_default()
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

/// `YYYY-MM-DD` (year 1-7 digits, month and day 1-2 digits): (year as written, month, day).
fn ymd(c: &mut Cur<'_>) -> Option<(i64, i64, i64)> {
    let (y, _) = c.digits(7)?;
    if !c.eat(b'-') {
        return None;
    }
    let (m, _) = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let (d, _) = c.digits(2)?;
    Some((y, m, d))
}

/// Optional trailing ` BC` / ` AD`; returns whether BC.
fn era_suffix(c: &mut Cur<'_>) -> Option<bool> {
    let save = c.i;
    if c.spaces() == 0 {
        c.i = save;
        return Some(false);
    }
    match c.rest() {
        b"bc" => {
            c.i += 2;
            Some(true)
        }
        b"ad" => {
            c.i += 2;
            Some(false)
        }
        b"" => Some(false),
        _ => None,
    }
}

/// Astronomical year of a written year and era; year 0 does not exist when written.
fn astronomical(y: i64, bc: bool) -> Option<i64> {
    if y == 0 {
        None
    } else if bc {
        Some(1 - y)
    } else {
        Some(y)
    }
}

/// `date_in` for ISO input: `YYYY-MM-DD[ BC]`, `infinity`, `-infinity`, `epoch`.
pub(super) fn date_from_text(text: &[u8]) -> Result<i32> {
    let bad = || {
        invalid(
            LogicalType::Date,
            "text",
            "it is not an ISO date (YYYY-MM-DD)",
        )
    };
    let t = trim_ascii_ws(text).to_ascii_lowercase();
    match &t[..] {
        b"infinity" | b"+infinity" => return Ok(DATE_POS_INFINITY),
        b"-infinity" => return Ok(DATE_NEG_INFINITY),
        b"epoch" => return Ok(-(PG_EPOCH_UNIX_DAYS as i32)),
        _ => {}
    }
    let mut c = Cur { b: &t, i: 0 };
    let (y, m, d) = ymd(&mut c).ok_or_else(bad)?;
    let bc = era_suffix(&mut c).ok_or_else(bad)?;
    if !c.done() {
        return Err(bad());
    }
    let y = astronomical(y, bc).ok_or_else(bad)?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(invalid(
            LogicalType::Date,
            "text",
            "date field value out of range",
        ));
    }
    date_from_days(y, m as u32, d as u32)
        .ok_or_else(|| invalid(LogicalType::Date, "text", "date out of range"))
}

/// `timestamptz_in` for ISO 8601 input: `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][ ][Z|±HH[[:]MM[[:]SS]]][ BC]`,
/// `infinity`, `-infinity`, `epoch`. No offset means UTC. Fractions beyond microseconds are rounded
/// half up.
pub(super) fn timestamptz_from_text(text: &[u8]) -> Result<i64> {
    let ty = LogicalType::Timestamptz;
    let bad = || invalid(ty, "text", "it is not an ISO 8601 timestamp");
    let t = trim_ascii_ws(text).to_ascii_lowercase();
    match &t[..] {
        b"infinity" | b"+infinity" => return Ok(TIMESTAMP_POS_INFINITY),
        b"-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        b"epoch" => return Ok(-PG_EPOCH_UNIX_DAYS * USECS_PER_DAY),
        _ => {}
    }
    let mut c = Cur { b: &t, i: 0 };
    let (y, mo, d) = ymd(&mut c).ok_or_else(bad)?;
    let (mut h, mut mi, mut s, mut us) = (0i64, 0i64, 0i64, 0i64);
    let mut offset_s = 0i64;
    let save = c.i;
    let has_time = c.eat(b't') || c.spaces() > 0;
    if has_time && matches!(c.peek(), Some(b'0'..=b'9')) {
        h = c.digits(2).ok_or_else(bad)?.0;
        if !c.eat(b':') {
            return Err(bad());
        }
        mi = c.digits(2).ok_or_else(bad)?.0;
        if c.eat(b':') {
            s = c.digits(2).ok_or_else(bad)?.0;
            if c.eat(b'.') {
                let start = c.i;
                while matches!(c.peek(), Some(b'0'..=b'9')) {
                    c.i += 1;
                }
                // `start <= c.i <= t.len()`; an empty fraction is refused just below.
                let frac = t.get(start..c.i).unwrap_or_default();
                if frac.is_empty() {
                    return Err(bad());
                }
                for k in 0..6 {
                    us = us * 10 + frac.get(k).map_or(0, |d| i64::from(d - b'0'));
                }
                if frac.get(6).is_some_and(|&d| d >= b'5') {
                    us += 1;
                }
            }
        }
        let before_zone = c.i;
        c.spaces();
        if c.eat(b'z') {
        } else if c.rest().starts_with(b"utc") {
            c.i += 3;
        } else if let Some(sign @ (b'+' | b'-')) = c.peek() {
            c.i += 1;
            let (oh, n) = c.digits(2).ok_or_else(bad)?;
            let (mut om, mut os) = (0, 0);
            if n == 2 {
                let colon = c.eat(b':');
                if let Some((v, 2)) = c.digits(2) {
                    om = v;
                    let colon2 = c.eat(b':');
                    if let Some((v, 2)) = c.digits(2) {
                        os = v;
                    } else if colon2 {
                        return Err(bad());
                    }
                } else if colon {
                    return Err(bad());
                }
            }
            if oh > 15 || om > 59 || os > 59 {
                return Err(invalid(ty, "text", "time zone displacement out of range"));
            }
            offset_s = oh * 3600 + om * 60 + os;
            if sign == b'-' {
                offset_s = -offset_s;
            }
        } else {
            // No zone: leave the spaces for a following era suffix.
            c.i = before_zone;
        }
    } else {
        c.i = save;
    }
    let bc = era_suffix(&mut c).ok_or_else(bad)?;
    if !c.done() {
        return Err(bad());
    }
    let y = astronomical(y, bc).ok_or_else(bad)?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return Err(invalid(ty, "text", "date field value out of range"));
    }
    if h > 24 || mi > 59 || s > 60 || (h == 24 && (mi, s, us) != (0, 0, 0)) {
        return Err(invalid(ty, "text", "time field value out of range"));
    }
    let days = i128::from(days_from_civil(y, mo, d) - PG_EPOCH_UNIX_DAYS);
    let total = days * i128::from(USECS_PER_DAY)
        + i128::from(((h * 60 + mi) * 60 + s - offset_s) * 1_000_000 + us);
    i64::try_from(total)
        .ok()
        .filter(|t| (TS_MIN..TS_END).contains(t))
        .ok_or_else(|| invalid(ty, "text", "timestamp out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_epoch() {
        assert_eq!(days_from_civil(2000, 1, 1), PG_EPOCH_UNIX_DAYS);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for z in [-3_000_000i64, -719_468, -1, 0, 1, 10_957, 2_000_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        // Range ends as PostgreSQL defines them.
        assert_eq!(date_to_text(DATE_MIN), "4714-11-24 BC");
        assert_eq!(date_to_text(DATE_END - 1), "5874897-12-31");
        assert_eq!(timestamptz_to_text(TS_MIN), "4714-11-24 00:00:00+00 BC");
        assert_eq!(
            timestamptz_to_text(TS_END - 1),
            "294276-12-31 23:59:59.999999+00"
        );
    }
}
