//! PostgreSQL's binary wire format for result values and parameters.

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, IntervalMonthDayNanoType, IntervalUnit, Time64MicrosecondType, TimeUnit,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::common::ScalarValue;
use strom_catalog::SqlType;

use super::text::{self, TextOptions, PG_EPOCH_DAYS};

const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

/// Appends the binary form of `array[row]` for a column of type `ty`; false for NULL.
pub fn encode_cell(
    array: &ArrayRef,
    row: usize,
    ty: &SqlType,
    opts: &TextOptions,
    out: &mut BytesMut,
) -> bool {
    if array.is_null(row) || array.data_type() == &DataType::Null {
        return false;
    }
    encode_value(array.as_ref(), row, ty, opts, out);
    true
}

fn as_i64(array: &dyn Array, row: usize) -> Option<i64> {
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row) as i64,
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row) as i64,
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row) as i64,
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row) as i64,
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row) as i64,
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row) as i64,
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row) as i64,
        _ => return None,
    })
}

fn encode_value(
    array: &dyn Array,
    row: usize,
    ty: &SqlType,
    opts: &TextOptions,
    out: &mut BytesMut,
) {
    match ty {
        SqlType::Boolean => out.put_u8(array.as_boolean().value(row) as u8),
        SqlType::SmallInt => out.put_i16(as_i64(array, row).unwrap_or_default() as i16),
        SqlType::Int => out.put_i32(as_i64(array, row).unwrap_or_default() as i32),
        SqlType::BigInt => out.put_i64(as_i64(array, row).unwrap_or_default()),
        SqlType::Real => match array.data_type() {
            DataType::Float32 => out.put_f32(array.as_primitive::<Float32Type>().value(row)),
            _ => out.put_f32(float_of(array, row) as f32),
        },
        SqlType::Double => out.put_f64(float_of(array, row)),
        SqlType::Numeric { .. } => match array.data_type() {
            DataType::Decimal128(_, s) => {
                let v = array.as_primitive::<Decimal128Type>().value(row);
                let trim = matches!(
                    ty,
                    SqlType::Numeric {
                        precision: None,
                        ..
                    }
                );
                numeric(v, *s, trim, out)
            }
            _ => text_fallback(array, row, ty, opts, out),
        },
        SqlType::Date if array.data_type() == &DataType::Date32 => out
            .put_i32((array.as_primitive::<Date32Type>().value(row) as i64 - PG_EPOCH_DAYS) as i32),
        SqlType::Time if array.data_type() == &DataType::Time64(TimeUnit::Microsecond) => {
            out.put_i64(array.as_primitive::<Time64MicrosecondType>().value(row))
        }
        SqlType::Timestamp | SqlType::Timestamptz => match array.data_type() {
            DataType::Timestamp(unit, _) => {
                let micros = match unit {
                    TimeUnit::Second => {
                        array
                            .as_primitive::<datafusion::arrow::datatypes::TimestampSecondType>()
                            .value(row)
                            * 1_000_000
                    }
                    TimeUnit::Millisecond => {
                        array
                            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>(
                            )
                            .value(row)
                            * 1000
                    }
                    TimeUnit::Microsecond => array
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                        .value(row),
                    TimeUnit::Nanosecond => array
                        .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>()
                        .value(row)
                        .div_euclid(1000),
                };
                out.put_i64(micros - PG_EPOCH_MICROS)
            }
            _ => text_fallback(array, row, ty, opts, out),
        },
        SqlType::Interval
            if array.data_type() == &DataType::Interval(IntervalUnit::MonthDayNano) =>
        {
            let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            out.put_i64(v.nanoseconds / 1000);
            out.put_i32(v.days);
            out.put_i32(v.months);
        }
        SqlType::Bytea => match array.data_type() {
            DataType::Binary => out.put_slice(array.as_binary::<i32>().value(row)),
            DataType::LargeBinary => out.put_slice(array.as_binary::<i64>().value(row)),
            DataType::BinaryView => out.put_slice(array.as_binary_view().value(row)),
            _ => text_fallback(array, row, ty, opts, out),
        },
        SqlType::Jsonb => {
            out.put_u8(1);
            text_fallback(array, row, ty, opts, out)
        }
        SqlType::Array(elem) => match array.data_type() {
            DataType::List(_) => {
                let values = array.as_list::<i32>().value(row);
                pg_array(&values, elem, opts, out)
            }
            _ => text_fallback(array, row, ty, opts, out),
        },
        // varchar/text and anything whose Arrow type differs from the usual: the text form
        // is also the binary form for text types.
        _ => text_fallback(array, row, ty, opts, out),
    }
}

fn float_of(array: &dyn Array, row: usize) -> f64 {
    match array.data_type() {
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row),
        DataType::Float32 => array.as_primitive::<Float32Type>().value(row) as f64,
        _ => as_i64(array, row).unwrap_or_default() as f64,
    }
}

fn text_fallback(
    array: &dyn Array,
    row: usize,
    ty: &SqlType,
    opts: &TextOptions,
    out: &mut BytesMut,
) {
    let mut s = String::new();
    let arr: ArrayRef = array.slice(row, 1);
    text::format_cell(&arr, 0, ty, opts, &mut s);
    out.put_slice(s.as_bytes());
}

/// `numeric_send`: base-10000 digits with weight, sign and display scale.
pub fn numeric(v: i128, scale: i8, trim: bool, out: &mut BytesMut) {
    let mut s = String::new();
    text::decimal(v, scale, trim, &mut s);
    let neg = s.starts_with('-');
    let s = s.trim_start_matches('-');
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, ""));
    let dscale = frac_part.len() as u16;
    // Pad the integer part on the left and the fraction on the right to multiples of 4.
    let int_pad = (4 - int_part.len() % 4) % 4;
    let int_digits = format!("{}{}", "0".repeat(int_pad), int_part);
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let frac_digits = format!("{}{}", frac_part, "0".repeat(frac_pad));
    let mut groups: Vec<i16> = Vec::new();
    for chunk in int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
    {
        let g = std::str::from_utf8(chunk)
            .expect("invariant: ascii digits")
            .parse::<i16>()
            .unwrap_or(0);
        groups.push(g);
    }
    let mut weight = (int_digits.len() / 4) as i16 - 1;
    // Strip leading and trailing zero groups.
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if neg && !groups.is_empty() { 0x4000 } else { 0 });
    out.put_u16(dscale);
    for g in groups {
        out.put_i16(g);
    }
}

fn pg_array(values: &ArrayRef, elem: &SqlType, opts: &TextOptions, out: &mut BytesMut) {
    let has_null = values.null_count() > 0;
    out.put_i32(1);
    out.put_i32(has_null as i32);
    out.put_u32(elem.pg_oid());
    out.put_i32(values.len() as i32);
    out.put_i32(1);
    let mut cell = BytesMut::new();
    for i in 0..values.len() {
        if values.is_null(i) {
            out.put_i32(-1);
            continue;
        }
        cell.clear();
        encode_value(values.as_ref(), i, elem, opts, &mut cell);
        out.put_i32(cell.len() as i32);
        out.put_slice(&cell);
    }
}

/// Decodes a binary-format parameter of PostgreSQL type `oid`.
pub fn decode_param(oid: u32, bytes: &[u8]) -> Result<ScalarValue, String> {
    let need = |n: usize| {
        if bytes.len() == n {
            Ok(())
        } else {
            Err(format!(
                "binary parameter of type oid {oid} has {} bytes, expected {n}",
                bytes.len()
            ))
        }
    };
    Ok(match oid {
        16 => {
            need(1)?;
            ScalarValue::Boolean(Some(bytes[0] != 0))
        }
        21 => {
            need(2)?;
            ScalarValue::Int16(Some(i16::from_be_bytes([bytes[0], bytes[1]])))
        }
        23 => {
            need(4)?;
            ScalarValue::Int32(Some(i32::from_be_bytes(
                bytes.try_into().map_err(|_| "length")?,
            )))
        }
        20 => {
            need(8)?;
            ScalarValue::Int64(Some(i64::from_be_bytes(
                bytes.try_into().map_err(|_| "length")?,
            )))
        }
        26 => {
            need(4)?;
            ScalarValue::UInt32(Some(u32::from_be_bytes(
                bytes.try_into().map_err(|_| "length")?,
            )))
        }
        700 => {
            need(4)?;
            ScalarValue::Float32(Some(f32::from_be_bytes(
                bytes.try_into().map_err(|_| "length")?,
            )))
        }
        701 => {
            need(8)?;
            ScalarValue::Float64(Some(f64::from_be_bytes(
                bytes.try_into().map_err(|_| "length")?,
            )))
        }
        25 | 1043 | 1042 | 19 | 0 | 705 | 114 => ScalarValue::Utf8(Some(utf8(bytes)?)),
        3802 => match bytes.split_first() {
            Some((1, rest)) => ScalarValue::Utf8(Some(utf8(rest)?)),
            _ => return Err("unsupported jsonb binary version".into()),
        },
        17 => ScalarValue::Binary(Some(bytes.to_vec())),
        1082 => {
            need(4)?;
            let d =
                i32::from_be_bytes(bytes.try_into().map_err(|_| "length")?) as i64 + PG_EPOCH_DAYS;
            ScalarValue::Date32(Some(d as i32))
        }
        1083 => {
            need(8)?;
            ScalarValue::Time64Microsecond(Some(i64::from_be_bytes(
                bytes.try_into().map_err(|_| "length")?,
            )))
        }
        1114 | 1184 => {
            need(8)?;
            let v = i64::from_be_bytes(bytes.try_into().map_err(|_| "length")?) + PG_EPOCH_MICROS;
            let tz = (oid == 1184).then(|| strom_catalog::types::UTC.into());
            ScalarValue::TimestampMicrosecond(Some(v), tz)
        }
        1186 => {
            need(16)?;
            let micros = i64::from_be_bytes(bytes[0..8].try_into().map_err(|_| "length")?);
            let days = i32::from_be_bytes(bytes[8..12].try_into().map_err(|_| "length")?);
            let months = i32::from_be_bytes(bytes[12..16].try_into().map_err(|_| "length")?);
            ScalarValue::IntervalMonthDayNano(Some(
                datafusion::arrow::datatypes::IntervalMonthDayNano::new(
                    months,
                    days,
                    micros * 1000,
                ),
            ))
        }
        1700 => decode_numeric(bytes)?,
        oid if matches!(crate::pg_catalog::type_by_oid(oid), Some(SqlType::Array(_))) => {
            decode_array(oid, bytes)?
        }
        other => {
            return Err(format!(
                "binary parameters of type oid {other} are not supported; send them as text"
            ))
        }
    })
}

/// `array_recv` for one-dimensional arrays.
fn decode_array(oid: u32, b: &[u8]) -> Result<ScalarValue, String> {
    let Some(SqlType::Array(elem)) = crate::pg_catalog::type_by_oid(oid) else {
        return Err(format!("type oid {oid} is not an array"));
    };
    let rd_i32 = |pos: usize| -> Result<i32, String> {
        b.get(pos..pos + 4)
            .map(|s| i32::from_be_bytes(s.try_into().expect("invariant: 4 bytes")))
            .ok_or_else(|| "array parameter is truncated".to_string())
    };
    let ndim = rd_i32(0)?;
    let elem_type = elem.to_arrow();
    if ndim == 0 {
        return Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &[],
            &elem_type,
        )));
    }
    if ndim != 1 {
        return Err("only one-dimensional array parameters are supported".into());
    }
    let elem_oid = rd_i32(8)? as u32;
    let len = rd_i32(12)?;
    let mut pos = 20;
    let mut items = Vec::with_capacity(len.max(0) as usize);
    for _ in 0..len {
        let n = rd_i32(pos)?;
        pos += 4;
        if n < 0 {
            items.push(ScalarValue::try_from(&elem_type).map_err(|e| e.to_string())?);
            continue;
        }
        let data = b
            .get(pos..pos + n as usize)
            .ok_or("array parameter is truncated")?;
        pos += n as usize;
        items.push(
            decode_param(elem_oid, data)?
                .cast_to(&elem_type)
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &items, &elem_type,
    )))
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in parameter".to_string())
}

fn decode_numeric(b: &[u8]) -> Result<ScalarValue, String> {
    if b.len() < 8 {
        return Err("numeric parameter is truncated".into());
    }
    let rd = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let ndigits = rd(0) as usize;
    let weight = rd(2) as i32;
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = u16::from_be_bytes([b[6], b[7]]) as i32;
    if b.len() != 8 + 2 * ndigits {
        return Err("numeric parameter has a bad length".into());
    }
    if sign == 0xC000 {
        return Err("NaN is not a valid numeric value here".into());
    }
    if dscale > 38 {
        return Err("numeric parameter scale exceeds 38".into());
    }
    let mut int: i128 = 0;
    for i in 0..ndigits {
        // digit i has weight (weight - i) in base 10000
        let d = rd(8 + 2 * i) as i128;
        let exp10 = 4 * (weight - i as i32) + dscale;
        if exp10 >= 0 {
            int = int
                .checked_add(
                    d.checked_mul(10i128.checked_pow(exp10 as u32).ok_or("numeric overflow")?)
                        .ok_or("numeric overflow")?,
                )
                .ok_or("numeric overflow")?;
        } else {
            let div = 10i128.pow((-exp10).min(38) as u32);
            int += d / div;
        }
    }
    if sign == 0x4000 {
        int = -int;
    }
    Ok(ScalarValue::Decimal128(Some(int), 38, dscale as i8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_send_matches_postgres() {
        // 1234.5 with scale 2: digits [1234, 5000], weight 0, dscale 2
        let mut out = BytesMut::new();
        numeric(123450, 2, false, &mut out);
        assert_eq!(&out[..], &[0, 2, 0, 0, 0, 0, 0, 2, 0x04, 0xD2, 0x13, 0x88]);
        // round trip through the parameter decoder
        assert_eq!(
            decode_numeric(&out).unwrap(),
            ScalarValue::Decimal128(Some(123450), 38, 2)
        );
        let mut out = BytesMut::new();
        numeric(-5, 2, false, &mut out); // -0.05: digits [500], weight -1
        assert_eq!(&out[..], &[0, 1, 0xFF, 0xFF, 0x40, 0, 0, 2, 0x01, 0xF4]);
        assert_eq!(
            decode_numeric(&out).unwrap(),
            ScalarValue::Decimal128(Some(-5), 38, 2)
        );
    }
}
