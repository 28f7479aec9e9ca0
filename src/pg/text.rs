//! PostgreSQL's text output format for every type Strom returns.
//!
//! Clients and test suites compare this text byte for byte, so each function here follows
//! PostgreSQL's own output routine (`float8out`, `numeric_out`, `timestamptz_out`,
//! `interval_out` with IntervalStyle `postgres`, `array_out`, `jsonb_out`, `byteaout`).

use std::fmt::Write;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Decimal256Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float16Type, Float32Type,
    Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, IntervalDayTimeType,
    IntervalMonthDayNanoType, IntervalUnit, IntervalYearMonthType, Time32MillisecondType,
    Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use strom_catalog::SqlType;

/// Session settings that change how values print.
#[derive(Debug, Clone)]
pub struct TextOptions {
    pub time_zone: Tz,
}

/// Appends the text of `array[row]` to `out`; returns false for NULL (nothing appended).
pub fn format_cell(
    array: &ArrayRef,
    row: usize,
    ty: &SqlType,
    opts: &TextOptions,
    out: &mut String,
) -> bool {
    if array.is_null(row) || array.data_type() == &DataType::Null {
        return false;
    }
    format_value(array.as_ref(), row, ty, opts, out);
    true
}

fn format_value(array: &dyn Array, row: usize, ty: &SqlType, opts: &TextOptions, out: &mut String) {
    macro_rules! prim {
        ($t:ty) => {{
            let _ = write!(out, "{}", array.as_primitive::<$t>().value(row));
        }};
    }
    match array.data_type() {
        DataType::Boolean => out.push(if array.as_boolean().value(row) {
            't'
        } else {
            'f'
        }),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float16 => float(
            f32::from(array.as_primitive::<Float16Type>().value(row)) as f64,
            true,
            out,
        ),
        DataType::Float32 => float(
            array.as_primitive::<Float32Type>().value(row) as f64,
            true,
            out,
        ),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row), false, out),
        DataType::Decimal128(_, s) => {
            let v = array.as_primitive::<Decimal128Type>().value(row);
            decimal(v, *s, trims_zeros(ty), out)
        }
        DataType::Decimal256(_, s) => {
            let v = array.as_primitive::<Decimal256Type>().value(row);
            match v.to_i128() {
                Some(v) => decimal(v, *s, true, out),
                None => out.push_str(&v.to_string()),
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = match array.data_type() {
                DataType::Utf8 => array.as_string::<i32>().value(row),
                DataType::LargeUtf8 => array.as_string::<i64>().value(row),
                _ => array.as_string_view().value(row),
            };
            if *ty == SqlType::Jsonb {
                jsonb(s, out)
            } else {
                out.push_str(s)
            }
        }
        DataType::Binary => bytea(array.as_binary::<i32>().value(row), out),
        DataType::LargeBinary => bytea(array.as_binary::<i64>().value(row), out),
        DataType::BinaryView => bytea(array.as_binary_view().value(row), out),
        DataType::FixedSizeBinary(_) => bytea(array.as_fixed_size_binary().value(row), out),
        DataType::Date32 => date(array.as_primitive::<Date32Type>().value(row) as i64, out),
        DataType::Date64 => date(
            array.as_primitive::<Date64Type>().value(row) / 86_400_000,
            out,
        ),
        DataType::Time32(TimeUnit::Second) => time_micros(
            array.as_primitive::<Time32SecondType>().value(row) as i64 * 1_000_000,
            out,
        ),
        DataType::Time32(_) => time_micros(
            array.as_primitive::<Time32MillisecondType>().value(row) as i64 * 1000,
            out,
        ),
        DataType::Time64(TimeUnit::Microsecond) => time_micros(
            array.as_primitive::<Time64MicrosecondType>().value(row),
            out,
        ),
        DataType::Time64(_) => time_micros(
            array.as_primitive::<Time64NanosecondType>().value(row) / 1000,
            out,
        ),
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(array, row, unit);
            match tz {
                None => timestamp(micros, out),
                Some(_) => timestamptz(micros, &opts.time_zone, out),
            }
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            interval(v.months, v.days, v.nanoseconds / 1000, out)
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = array.as_primitive::<IntervalDayTimeType>().value(row);
            interval(0, v.days, v.milliseconds as i64 * 1000, out)
        }
        DataType::Interval(IntervalUnit::YearMonth) => interval(
            array.as_primitive::<IntervalYearMonthType>().value(row),
            0,
            0,
            out,
        ),
        DataType::Duration(unit) => {
            let micros = match unit {
                TimeUnit::Second => {
                    array.as_primitive::<DurationSecondType>().value(row) * 1_000_000
                }
                TimeUnit::Millisecond => {
                    array.as_primitive::<DurationMillisecondType>().value(row) * 1000
                }
                TimeUnit::Microsecond => array.as_primitive::<DurationMicrosecondType>().value(row),
                TimeUnit::Nanosecond => {
                    array.as_primitive::<DurationNanosecondType>().value(row) / 1000
                }
            };
            interval(0, 0, micros, out)
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            let values = match array.data_type() {
                DataType::List(_) => array.as_list::<i32>().value(row),
                DataType::LargeList(_) => array.as_list::<i64>().value(row),
                _ => array.as_fixed_size_list().value(row),
            };
            let elem_ty = match ty {
                SqlType::Array(e) => e.as_ref().clone(),
                _ => SqlType::Text,
            };
            pg_array(&values, &elem_ty, opts, out)
        }
        DataType::Null => {}
        _ => {
            let formatter = datafusion::arrow::util::display::ArrayFormatter::try_new(
                array,
                &datafusion::arrow::util::display::FormatOptions::default(),
            );
            if let Ok(f) = formatter {
                let _ = write!(out, "{}", f.value(row));
            }
        }
    }
}

fn trims_zeros(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Numeric {
            precision: None,
            ..
        }
    )
}

fn timestamp_micros(array: &dyn Array, row: usize, unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row) * 1_000_000,
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row) * 1000,
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1000),
    }
}

/// `float4out`/`float8out` with `extra_float_digits = 1`: the shortest text that reads back
/// as the same value, in exponent form when the decimal exponent is < -4 or >= 6 (real)
/// / 15 (double).
pub fn float(v: f64, is_real: bool, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    let sci = if is_real {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("invariant: {:e} has an exponent");
    let exp: i32 = exp.parse().expect("invariant: {:e} exponent is an integer");
    let limit = if is_real { 6 } else { 15 };
    if v != 0.0 && (exp < -4 || exp >= limit) {
        let _ = write!(
            out,
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        );
    } else if is_real {
        let _ = write!(out, "{}", v as f32);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `numeric_out` for a scaled integer; `trim` drops trailing fraction zeros (unconstrained
/// numeric, whose stored scale is ours, not the user's).
pub fn decimal(v: i128, scale: i8, trim: bool, out: &mut String) {
    let neg = v < 0;
    let digits = v.unsigned_abs().to_string();
    let scale = scale.max(0) as usize;
    let (int_part, frac_part) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("", digits.as_str())
    };
    let mut frac = format!(
        "{}{}",
        "0".repeat(scale.saturating_sub(frac_part.len())),
        frac_part
    );
    if trim {
        while frac.ends_with('0') {
            frac.pop();
        }
    }
    if neg && (int_part.chars().any(|c| c != '0') || frac.chars().any(|c| c != '0')) {
        out.push('-');
    }
    out.push_str(if int_part.is_empty() { "0" } else { int_part });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
}

fn bytea(b: &[u8], out: &mut String) {
    out.push_str("\\x");
    for byte in b {
        let _ = write!(out, "{byte:02x}");
    }
}

const UNIX_EPOCH_DAYS_CE: i32 = 719_163;

fn naive_date(days_since_epoch: i64) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(
        (days_since_epoch + UNIX_EPOCH_DAYS_CE as i64)
            .try_into()
            .ok()?,
    )
}

fn write_date(d: NaiveDate, out: &mut String) {
    let y = d.year();
    if y > 0 {
        let _ = write!(out, "{:04}-{:02}-{:02}", y, d.month(), d.day());
    } else {
        let _ = write!(out, "{:04}-{:02}-{:02}", 1 - y, d.month(), d.day());
    }
}

fn bc_suffix(d: NaiveDate, out: &mut String) {
    if d.year() <= 0 {
        out.push_str(" BC");
    }
}

fn date(days: i64, out: &mut String) {
    match naive_date(days) {
        Some(d) => {
            write_date(d, out);
            bc_suffix(d, out);
        }
        None => {
            let _ = write!(out, "{days}");
        }
    }
}

fn write_time(secs_of_day: u32, micros: u32, out: &mut String) {
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    );
    frac_micros(micros, out);
}

fn frac_micros(micros: u32, out: &mut String) {
    if micros > 0 {
        let mut s = format!(".{micros:06}");
        while s.ends_with('0') {
            s.pop();
        }
        out.push_str(&s);
    }
}

fn time_micros(micros: i64, out: &mut String) {
    let secs = micros.div_euclid(1_000_000);
    write_time(secs as u32, micros.rem_euclid(1_000_000) as u32, out)
}

fn naive_datetime(micros: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_micros(micros).map(|d| d.naive_utc())
}

fn write_datetime(dt: NaiveDateTime, out: &mut String) {
    write_date(dt.date(), out);
    out.push(' ');
    write_time(
        dt.time().num_seconds_from_midnight(),
        dt.time().nanosecond() / 1000,
        out,
    );
}

fn timestamp(micros: i64, out: &mut String) {
    match naive_datetime(micros) {
        Some(dt) => {
            write_datetime(dt, out);
            bc_suffix(dt.date(), out);
        }
        None => {
            let _ = write!(out, "{micros}");
        }
    }
}

fn timestamptz(micros: i64, tz: &Tz, out: &mut String) {
    let Some(utc) = naive_datetime(micros) else {
        let _ = write!(out, "{micros}");
        return;
    };
    let local = tz.from_utc_datetime(&utc);
    let offset = local.offset().fix().local_minus_utc();
    write_datetime(local.naive_local(), out);
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.abs();
    let _ = write!(out, "{sign}{:02}", abs / 3600);
    if abs % 3600 != 0 {
        let _ = write!(out, ":{:02}", abs / 60 % 60);
        if abs % 60 != 0 {
            let _ = write!(out, ":{:02}", abs % 60);
        }
    }
    bc_suffix(local.date_naive(), out);
}

/// `interval_out` with IntervalStyle `postgres`: `1 year 2 mons 3 days 04:05:06`.
pub fn interval(months: i32, days: i32, micros: i64, out: &mut String) {
    let start = out.len();
    let mut is_before = false;
    let part = |value: i64, unit: &str, out: &mut String, is_before: &mut bool| {
        if value == 0 {
            return;
        }
        if out.len() > start {
            out.push(' ');
        }
        let plus = if *is_before && value > 0 { "+" } else { "" };
        let _ = write!(
            out,
            "{plus}{value} {unit}{}",
            if value == 1 { "" } else { "s" }
        );
        *is_before |= value < 0;
    };
    part((months / 12) as i64, "year", out, &mut is_before);
    part((months % 12) as i64, "mon", out, &mut is_before);
    part(days as i64, "day", out, &mut is_before);
    if micros != 0 || out.len() == start {
        if out.len() > start {
            out.push(' ');
        }
        let sign = if micros < 0 {
            "-"
        } else if is_before {
            "+"
        } else {
            ""
        };
        let abs = micros.unsigned_abs();
        let secs = abs / 1_000_000;
        let _ = write!(
            out,
            "{sign}{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        frac_micros((abs % 1_000_000) as u32, out);
    }
}

/// `array_out`: `{1,NULL}`, `{"a b",c}`.
fn pg_array(values: &ArrayRef, elem_ty: &SqlType, opts: &TextOptions, out: &mut String) {
    out.push('{');
    let mut buf = String::new();
    for i in 0..values.len() {
        if i > 0 {
            out.push(',');
        }
        if values.is_null(i) {
            out.push_str("NULL");
            continue;
        }
        buf.clear();
        format_value(values.as_ref(), i, elem_ty, opts, &mut buf);
        let needs_quotes = buf.is_empty()
            || buf.eq_ignore_ascii_case("null")
            || buf
                .chars()
                .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
        if needs_quotes {
            out.push('"');
            for c in buf.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&buf);
        }
    }
    out.push('}');
}

/// `jsonb_out`: `{"a": 1, "b": [1, 2]}` with object keys in jsonb order (shorter keys first,
/// then bytewise).
pub fn jsonb(s: &str, out: &mut String) {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => write_json(&v, out),
        Err(_) => out.push_str(s),
    }
}

/// Appends `v` as PostgreSQL's `jsonb_out` prints it.
pub fn write_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| {
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
            });
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for binary dates and timestamps.
pub const PG_EPOCH_DAYS: i64 = 10_957;

/// The session time zone from a `SET TIME ZONE` value.
pub fn parse_time_zone(name: &str) -> Option<Tz> {
    let n = name.trim();
    if n.eq_ignore_ascii_case("utc") || n.eq_ignore_ascii_case("z") || n.eq_ignore_ascii_case("gmt")
    {
        return Some(Tz::UTC);
    }
    n.parse::<Tz>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64, real: bool) -> String {
        let mut s = String::new();
        float(v, real, &mut s);
        s
    }

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(f(12.5, false), "12.5");
        assert_eq!(f(0.1, false), "0.1");
        assert_eq!(f(1e20, false), "1e+20");
        assert_eq!(f(1e15, false), "1e+15");
        assert_eq!(f(123456789012345.0, false), "123456789012345");
        assert_eq!(f(1.5e-5, false), "1.5e-05");
        assert_eq!(f(0.0001, false), "0.0001");
        assert_eq!(f(-0.0, false), "-0");
        assert_eq!(f(f64::INFINITY, false), "Infinity");
        assert_eq!(f(1000000.0, true), "1e+06");
        assert_eq!(f(100000.0, true), "100000");
        assert_eq!(f(0.1f32 as f64, true), "0.1");
    }

    #[test]
    fn numerics_keep_their_scale() {
        let d = |v, s, t| {
            let mut o = String::new();
            decimal(v, s, t, &mut o);
            o
        };
        assert_eq!(d(150, 2, false), "1.50");
        assert_eq!(d(-5, 2, false), "-0.05");
        assert_eq!(d(0, 2, false), "0.00");
        assert_eq!(d(15_000_000_000, 10, true), "1.5");
        assert_eq!(d(20_000_000_000, 10, true), "2");
        assert_eq!(d(42, 0, false), "42");
    }

    #[test]
    fn intervals_print_like_postgres() {
        let i = |m, d, us| {
            let mut o = String::new();
            interval(m, d, us, &mut o);
            o
        };
        assert_eq!(i(0, 1, 2 * 3_600_000_000), "1 day 02:00:00");
        assert_eq!(
            i(14, 3, (4 * 3600 + 5 * 60 + 6) * 1_000_000),
            "1 year 2 mons 3 days 04:05:06"
        );
        assert_eq!(i(0, 0, 0), "00:00:00");
        assert_eq!(i(-12, 0, 0), "-1 years");
        assert_eq!(i(0, -1, 7_200_000_000), "-1 days +02:00:00");
        assert_eq!(i(0, 0, -1_500_000), "-00:00:01.5");
    }

    #[test]
    fn timestamptz_uses_session_zone() {
        let mut o = String::new();
        // 2025-03-13 09:05:00 UTC
        timestamptz(
            1_741_856_700_000_000,
            &"Asia/Shanghai".parse().unwrap(),
            &mut o,
        );
        assert_eq!(o, "2025-03-13 17:05:00+08");
        o.clear();
        timestamptz(
            1_741_856_700_500_000,
            &"Asia/Kolkata".parse().unwrap(),
            &mut o,
        );
        assert_eq!(o, "2025-03-13 14:35:00.5+05:30");
    }

    #[test]
    fn jsonb_orders_keys_like_postgres() {
        let mut o = String::new();
        jsonb(r#"{"bb":1,"a":[1,2],"c":{"y":null}}"#, &mut o);
        assert_eq!(o, r#"{"a": [1, 2], "c": {"y": null}, "bb": 1}"#);
    }
}
