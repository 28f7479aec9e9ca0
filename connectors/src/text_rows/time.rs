//! Calendar times in the forms grid files write them, and fixed UTC offsets.

use chrono::{NaiveDate, NaiveDateTime};

use super::trim_blanks;

/// Parses the date-time forms grid files use: `YYYY-MM-DD HH:MM:SS[.f]`, `YYYY-M-D H:MM`,
/// `YYYY/MM/DD_HH:MM:SS`, `YYYYMMDD HH:MM:SS`, `YYYYMMDDHHMMSS`, `YYYY-MM-DDTHH:MM:SS`,
/// times written `HH-MM-SS`, and a date alone (midnight). Invalid calendar values
/// (month 13, 30 February, hour 24) are `None`.
pub fn parse_datetime(s: &str) -> Option<NaiveDateTime> {
    let (y, mo, d, (h, mi, sec, us)) = parse_parts(s)?;
    NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_micro_opt(h, mi, sec, us)
}

/// [`parse_datetime`] as microseconds since the epoch (of the same wall clock), without
/// building calendar types: the hot path of every timestamp field.
pub fn parse_datetime_micros(s: &str) -> Option<i64> {
    let (y, mo, d, (h, mi, sec, us)) = parse_parts(s)?;
    let days = days_from_civil(y, mo, d);
    Some(
        ((days * 24 + h as i64) * 60 + mi as i64) * 60_000_000 + sec as i64 * 1_000_000 + us as i64,
    )
}

/// Days since 1970-01-01 of a valid proleptic Gregorian date (Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Hour, minute, second, microsecond.
type Clock = (u32, u32, u32, u32);

/// Year, month, day and time of day, validated as a calendar time.
pub(crate) fn parse_parts(s: &str) -> Option<(i32, u32, u32, Clock)> {
    let b = trim_blanks(s).as_bytes();
    let mut i = 0;
    let year = digits(b, &mut i, 4, 4)? as i32;
    let compact = i < b.len() && b[i].is_ascii_digit();
    let (month, day) = if compact {
        (digits(b, &mut i, 2, 2)?, digits(b, &mut i, 2, 2)?)
    } else {
        let sep = *b.get(i)?;
        if sep != b'-' && sep != b'/' && sep != b'.' {
            return None;
        }
        i += 1;
        let m = digits(b, &mut i, 1, 2)?;
        if b.get(i) != Some(&sep) {
            return None;
        }
        i += 1;
        (m, digits(b, &mut i, 1, 2)?)
    };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if i == b.len() {
        return Some((year, month, day, (0, 0, 0, 0)));
    }
    // Date and time are separated by spaces, `T` or `_`, or nothing (`YYYYMMDDHHMMSS`).
    let before = i;
    while i < b.len() && matches!(b[i], b' ' | b'T' | b'_' | b'\t') {
        i += 1;
    }
    if i == before && !compact {
        return None;
    }
    let time = parse_time_at(b, &mut i)?;
    (i == b.len()).then_some((year, month, day, time))
}

/// `HH:MM[:SS[.f]]`, `HH-MM-SS`, `HHMMSS`, validated.
fn parse_time_at(b: &[u8], i: &mut usize) -> Option<Clock> {
    let h = digits(b, i, 1, 2)?;
    let sep = match b.get(*i) {
        Some(&c @ (b':' | b'-')) => {
            *i += 1;
            Some(c)
        }
        Some(c) if c.is_ascii_digit() => None,
        _ => return None,
    };
    let m = digits(b, i, 2, 2)?;
    let mut s = 0;
    let mut micros = 0;
    let more = match sep {
        Some(c) => b.get(*i) == Some(&c),
        None => b.get(*i).is_some_and(u8::is_ascii_digit),
    };
    if more {
        if sep.is_some() {
            *i += 1;
        }
        s = digits(b, i, 2, 2)?;
        if b.get(*i) == Some(&b'.') {
            *i += 1;
            let start = *i;
            let mut frac = 0u32;
            while *i < b.len() && b[*i].is_ascii_digit() {
                if *i - start < 6 {
                    frac = frac * 10 + (b[*i] - b'0') as u32;
                }
                *i += 1;
            }
            let n = *i - start;
            if n == 0 {
                return None;
            }
            micros = frac * 10u32.pow(6 - n.min(6) as u32);
        }
    }
    (h < 24 && m < 60 && s < 60).then_some((h, m, s, micros))
}

fn digits(b: &[u8], i: &mut usize, min: usize, max: usize) -> Option<u32> {
    let start = *i;
    let mut v = 0u32;
    while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
        v = v * 10 + (b[*i] - b'0') as u32;
        *i += 1;
    }
    (*i - start >= min).then_some(v)
}

/// A fixed UTC offset in seconds from a `timezone` option: `UTC`, `+08:00`, `-05`, or a
/// zone of mainland China, Hong Kong, Macau or Taiwan (all UTC+8 without daylight time).
pub fn parse_timezone(s: &str) -> Option<i32> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "utc" | "z" | "gmt" | "etc/utc" => return Some(0),
        "asia/shanghai" | "asia/chongqing" | "asia/harbin" | "prc" | "asia/hong_kong"
        | "asia/macau" | "asia/taipei" | "cst" | "china" => return Some(8 * 3600),
        _ => {}
    }
    let t = t
        .strip_prefix("UTC")
        .or_else(|| t.strip_prefix("utc"))
        .unwrap_or(t);
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?),
        None if rest.len() == 4 => (rest.get(..2)?.parse().ok()?, rest.get(2..)?.parse().ok()?),
        None => (rest.parse().ok()?, 0),
    };
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// Microseconds since the epoch of a local time at a fixed offset.
pub fn local_micros(t: NaiveDateTime, offset_secs: i32) -> i64 {
    t.and_utc().timestamp_micros() - offset_secs as i64 * 1_000_000
}
