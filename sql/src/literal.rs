//! String literals read as PostgreSQL reads them for a known target type.
//!
//! DataFusion casts `'text'` to a type with Arrow's parsers, which differ from PostgreSQL's
//! for `bytea` (`'\x0102'` is hex, not four characters), `interval` (`'1 day 02:00:00'`),
//! arrays (`'{1,NULL}'`) and out-of-range dates (22008, not 22P02). Where the target type
//! is known from the SQL text (an explicit cast, an INSERT column, an UPDATE assignment),
//! [`typed_literal`] turns the literal into an expression DataFusion evaluates exactly.

use sqlparser::ast::{Array, CastKind, DataType, Expr, Value};
use strom_catalog::SqlType;

use crate::error::{Result, SqlError};

fn string_lit(s: &str) -> Expr {
    Expr::value(Value::SingleQuotedString(s.to_string()))
}

fn cast(e: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(e),
        data_type,
        array: false,
        format: None,
    }
}

/// The sqlparser type DataFusion maps to the Arrow type of `ty`.
pub fn ast_type(ty: &SqlType) -> Option<DataType> {
    let s = match ty {
        SqlType::Timestamptz => "TIMESTAMP WITH TIME ZONE".to_string(),
        SqlType::Jsonb | SqlType::Varchar(_) | SqlType::Text => "VARCHAR".to_string(),
        SqlType::Array(e) => format!("{}[]", ast_type(e)?),
        other => other.pg_name(),
    };
    let sql = format!("CREATE TABLE t (c {s})");
    match crate::parser::parse(&sql).ok()?.pop()? {
        sqlparser::ast::Statement::CreateTable(ct) => {
            ct.columns.into_iter().next().map(|c| c.data_type)
        }
        _ => None,
    }
}

/// An expression for literal `s` read as type `ty`, or `None` if DataFusion's own cast
/// already agrees with PostgreSQL for this type.
pub fn typed_literal(ty: &SqlType, s: &str) -> Result<Option<Expr>> {
    Ok(Some(match ty {
        SqlType::Bytea => Expr::value(Value::HexStringLiteral(hex(&parse_bytea(s)?))),
        SqlType::Interval => {
            let (months, days, micros) = parse_interval(s)?;
            cast(
                string_lit(&format!(
                    "{months} months {days} days {micros} microseconds"
                )),
                DataType::Interval {
                    fields: None,
                    precision: None,
                },
            )
        }
        SqlType::Array(elem) => {
            let items = parse_array(s)?;
            let elem_ast =
                ast_type(elem).ok_or_else(|| SqlError::Unsupported(format!("arrays of {elem}")))?;
            let exprs = items
                .into_iter()
                .map(|item| match item {
                    None => Ok(cast(Expr::value(Value::Null), elem_ast.clone())),
                    Some(v) => Ok(typed_literal(elem, &v)?
                        .unwrap_or_else(|| cast(string_lit(&v), elem_ast.clone()))),
                })
                .collect::<Result<Vec<_>>>()?;
            let array_type =
                ast_type(ty).ok_or_else(|| SqlError::Unsupported(format!("type {ty}")))?;
            cast(
                Expr::Array(Array {
                    elem: exprs,
                    named: true,
                }),
                array_type,
            )
        }
        SqlType::Jsonb => {
            serde_json::from_str::<serde_json::Value>(s).map_err(|e| SqlError::InvalidValue {
                code: "22P02",
                message: format!("invalid input syntax for type json: {e}"),
            })?;
            return Ok(None);
        }
        SqlType::Date | SqlType::Timestamp | SqlType::Timestamptz => {
            check_date_part(s)?;
            return Ok(None);
        }
        _ => return Ok(None),
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// `byteain`: `\x` followed by hex digit pairs, or the escape format (`\\`, `\ooo`).
pub fn parse_bytea(s: &str) -> Result<Vec<u8>> {
    let bad = || SqlError::InvalidValue {
        code: "22P02",
        message: "invalid input syntax for type bytea".into(),
    };
    if let Some(h) = s.strip_prefix("\\x") {
        let digits: Vec<u8> = h.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(SqlError::InvalidValue {
                code: "22P02",
                message: "invalid hexadecimal data: odd number of digits".into(),
            });
        }
        return digits
            .chunks(2)
            .map(|p| {
                u8::from_str_radix(std::str::from_utf8(p).map_err(|_| bad())?, 16)
                    .map_err(|_| bad())
            })
            .collect();
    }
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(u8::try_from(v).map_err(|_| bad())?);
            i += 4;
        } else {
            return Err(bad());
        }
    }
    Ok(out)
}

/// PostgreSQL's array text form, one dimension: `{1,NULL,"a b"}`.
pub fn parse_array(s: &str) -> Result<Vec<Option<String>>> {
    let bad = |why: &str| SqlError::InvalidValue {
        code: "22P02",
        message: format!("malformed array literal: \"{s}\"{why}"),
    };
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or_else(|| bad(""))?;
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Ok(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err(bad("")),
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == ',' {
                break;
            }
            if c == '{' || c == '"' {
                return Err(bad(" (only one-dimensional arrays are supported)"));
            }
            if !quoted {
                item.push(c);
            }
            chars.next();
        }
        let item = if quoted {
            item
        } else {
            item.trim().to_string()
        };
        items.push(if !quoted && item.eq_ignore_ascii_case("null") {
            None
        } else {
            Some(item)
        });
        if chars.next().is_none() {
            break;
        }
    }
    Ok(items)
}

/// Rejects `YYYY-MM-DD` prefixes that name no calendar day, as PostgreSQL does (22008).
fn check_date_part(s: &str) -> Result<()> {
    let t = s.trim();
    let b = t.as_bytes();
    let looks_like_date = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit);
    if !looks_like_date {
        return Ok(());
    }
    let num = |r: std::ops::Range<usize>| t[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (num(0..4) as i32, num(5..7), num(8..10));
    if chrono_valid(y, m, d) {
        Ok(())
    } else {
        Err(SqlError::InvalidValue {
            code: "22008",
            message: format!("date/time field value out of range: \"{s}\""),
        })
    }
}

fn chrono_valid(y: i32, m: u32, d: u32) -> bool {
    if !(1..=12).contains(&m) || d == 0 {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][(m - 1) as usize];
    d <= days
}

const MICROS_PER_SECOND: f64 = 1e6;

/// `interval_in` for the `postgres` style: `1 year 2 mons 3 days 04:05:06`, `1.5 days`,
/// `-1 day +02:00:00`, `2 weeks`, `36 hours`, `3 ago`. Fractions spill into smaller units as
/// PostgreSQL does (months are 30 days, days 24 hours).
pub fn parse_interval(s: &str) -> Result<(i32, i32, i64)> {
    let bad = || SqlError::InvalidValue {
        code: "22007",
        message: format!("invalid input syntax for type interval: \"{s}\""),
    };
    let mut months = 0f64;
    let mut days = 0f64;
    let mut micros = 0f64;
    let mut tokens: Vec<String> = s
        .trim()
        .trim_start_matches('@')
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let ago = tokens.last().is_some_and(|t| t == "ago");
    if ago {
        tokens.pop();
    }
    if tokens.is_empty() {
        return Err(bad());
    }
    let mut i = 0;
    while i < tokens.len() {
        let tok = &tokens[i];
        if tok.contains(':') {
            micros += parse_time(tok).ok_or_else(bad)?;
            i += 1;
            continue;
        }
        // a number, possibly with its unit attached (`10s`)
        let split = tok
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(tok.len());
        let (num, attached) = tok.split_at(split);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit = if !attached.is_empty() {
            attached.to_string()
        } else if i + 1 < tokens.len()
            && tokens[i + 1].starts_with(|c: char| c.is_ascii_alphabetic())
        {
            i += 1;
            tokens[i].clone()
        } else {
            "second".to_string()
        };
        match unit.as_str() {
            "millennium" | "millennia" | "millenniums" => months += value * 12_000.0,
            "century" | "centuries" => months += value * 1200.0,
            "decade" | "decades" => months += value * 120.0,
            "y" | "yr" | "yrs" | "year" | "years" => months += value * 12.0,
            "mon" | "mons" | "month" | "months" => months += value,
            "w" | "week" | "weeks" => days += value * 7.0,
            "d" | "day" | "days" => days += value,
            "h" | "hr" | "hrs" | "hour" | "hours" => micros += value * 3600.0 * MICROS_PER_SECOND,
            "m" | "min" | "mins" | "minute" | "minutes" => {
                micros += value * 60.0 * MICROS_PER_SECOND
            }
            "s" | "sec" | "secs" | "second" | "seconds" => micros += value * MICROS_PER_SECOND,
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => micros += value * 1000.0,
            "us" | "usec" | "usecs" | "microsecond" | "microseconds" => micros += value,
            _ => return Err(bad()),
        }
        i += 1;
    }
    // Spill fractions: months -> days -> microseconds.
    let whole_months = months.trunc();
    days += (months - whole_months) * 30.0;
    let whole_days = days.trunc();
    micros += (days - whole_days) * 86_400.0 * MICROS_PER_SECOND;
    let sign = if ago { -1.0 } else { 1.0 };
    let out_months = sign * whole_months;
    let out_days = sign * whole_days;
    let out_micros = (sign * micros).round();
    if out_months.abs() > i32::MAX as f64
        || out_days.abs() > i32::MAX as f64
        || out_micros.abs() > i64::MAX as f64
    {
        return Err(SqlError::InvalidValue {
            code: "22015",
            message: "interval out of range".into(),
        });
    }
    Ok((out_months as i32, out_days as i32, out_micros as i64))
}

/// `[-+]H:M[:S[.f]]` in microseconds.
fn parse_time(t: &str) -> Option<f64> {
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let parts: Vec<&str> = body.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return None;
    }
    let h: f64 = parts[0].parse().ok()?;
    let m: f64 = parts[1].parse().ok()?;
    let s: f64 = if parts.len() == 3 {
        parts[2].parse().ok()?
    } else {
        0.0
    };
    let v = ((h * 60.0 + m) * 60.0 + s) * MICROS_PER_SECOND;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_like_postgres() {
        let h = 3_600_000_000i64;
        assert_eq!(parse_interval("1 day 2 hours").unwrap(), (0, 1, 2 * h));
        assert_eq!(parse_interval("1 day 02:00:00").unwrap(), (0, 1, 2 * h));
        assert_eq!(
            parse_interval("1 year 2 months 3 days 4 hours 5 minutes 6 seconds").unwrap(),
            (14, 3, 4 * h + 306_000_000)
        );
        assert_eq!(parse_interval("1.5 days").unwrap(), (0, 1, 12 * h));
        assert_eq!(parse_interval("2 weeks").unwrap(), (0, 14, 0));
        assert_eq!(parse_interval("1 day -1 hour").unwrap(), (0, 1, -h));
        assert_eq!(parse_interval("-1 year -2 months").unwrap(), (-14, 0, 0));
        assert_eq!(
            parse_interval("2 days 00:00:00.25").unwrap(),
            (0, 2, 250_000)
        );
        assert_eq!(parse_interval("1 day ago").unwrap(), (0, -1, 0));
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn bytea_input_formats() {
        assert_eq!(parse_bytea("\\x0102").unwrap(), vec![1, 2]);
        assert_eq!(
            parse_bytea("\\xDEADbeef").unwrap(),
            vec![0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(parse_bytea("abc").unwrap(), b"abc".to_vec());
        assert_eq!(
            parse_bytea("a\\\\b\\001").unwrap(),
            vec![b'a', b'\\', b'b', 1]
        );
        assert!(parse_bytea("\\x0").is_err());
        assert!(parse_bytea("\\q").is_err());
    }

    #[test]
    fn arrays_and_dates() {
        assert_eq!(
            parse_array("{1,NULL, 3}").unwrap(),
            vec![Some("1".into()), None, Some("3".into())]
        );
        assert_eq!(
            parse_array(r#"{"a b","x\"y",NULL,"NULL"}"#).unwrap(),
            vec![
                Some("a b".into()),
                Some("x\"y".into()),
                None,
                Some("NULL".into())
            ]
        );
        assert!(parse_array("{{1},{2}}").is_err());
        assert!(check_date_part("2025-02-30").is_err());
        assert!(check_date_part("2024-02-29 10:00").is_ok());
        assert!(ast_type(&SqlType::Array(Box::new(SqlType::Int))).is_some());
    }
}
