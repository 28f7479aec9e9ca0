//! The value encoding of stored rows.
//!
//! A row is `FORMAT_V1` followed by one cell per column, in catalog column order. A cell is
//! a tag byte (`0` null, `1` present) and then the value: fixed-width little-endian numbers,
//! `u32` length + bytes for strings and binaries, `u32` count + cells for lists. Decoding
//! needs the column types, which come from the catalog; the encoding itself carries none.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, IntervalMonthDayNano, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::common::ScalarValue;

use crate::error::{EngineError, Result};

const FORMAT_V1: u8 = 1;

pub fn encode_row(values: &[ScalarValue]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1 + values.len() * 9);
    out.push(FORMAT_V1);
    for v in values {
        encode_cell(v, &mut out)?;
    }
    Ok(out)
}

/// Sets `out` to the encoding of row `row` of `columns`: the bytes
/// [`encode_row`] gives for the same values, without a `ScalarValue` per cell for the
/// common types (a join stores every input row this way).
pub fn encode_array_row(columns: &[ArrayRef], row: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    out.push(FORMAT_V1);
    for c in columns {
        if c.is_null(row) {
            out.push(0);
            continue;
        }
        match c.data_type() {
            DataType::Int64 => {
                out.push(1);
                out.extend_from_slice(&c.as_primitive::<Int64Type>().value(row).to_le_bytes());
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                out.push(1);
                let v = c.as_primitive::<TimestampMicrosecondType>().value(row);
                out.extend_from_slice(&v.to_le_bytes());
            }
            DataType::Int32 => {
                out.push(1);
                out.extend_from_slice(&c.as_primitive::<Int32Type>().value(row).to_le_bytes());
            }
            DataType::Float64 => {
                out.push(1);
                out.extend_from_slice(&c.as_primitive::<Float64Type>().value(row).to_le_bytes());
            }
            DataType::Utf8 => {
                out.push(1);
                put_bytes(c.as_string::<i32>().value(row).as_bytes(), out);
            }
            _ => encode_cell(&ScalarValue::try_from_array(c, row)?, out)?,
        }
    }
    Ok(())
}

fn encode_cell(v: &ScalarValue, out: &mut Vec<u8>) -> Result<()> {
    if v.is_null() {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    match v {
        ScalarValue::Boolean(Some(b)) => out.push(*b as u8),
        ScalarValue::Int8(Some(i)) => out.extend_from_slice(&i.to_le_bytes()),
        ScalarValue::UInt8(Some(i)) => out.push(*i),
        ScalarValue::UInt16(Some(i)) => out.extend_from_slice(&i.to_le_bytes()),
        ScalarValue::UInt32(Some(i)) => out.extend_from_slice(&i.to_le_bytes()),
        ScalarValue::UInt64(Some(i)) => out.extend_from_slice(&i.to_le_bytes()),
        ScalarValue::Int16(Some(i)) => out.extend_from_slice(&i.to_le_bytes()),
        ScalarValue::Int32(Some(i)) | ScalarValue::Date32(Some(i)) => {
            out.extend_from_slice(&i.to_le_bytes())
        }
        ScalarValue::Int64(Some(i))
        | ScalarValue::Time64Microsecond(Some(i))
        | ScalarValue::TimestampMicrosecond(Some(i), _) => out.extend_from_slice(&i.to_le_bytes()),
        ScalarValue::Float32(Some(f)) => out.extend_from_slice(&f.to_le_bytes()),
        ScalarValue::Float64(Some(f)) => out.extend_from_slice(&f.to_le_bytes()),
        ScalarValue::Decimal128(Some(d), _, _) => out.extend_from_slice(&d.to_le_bytes()),
        ScalarValue::IntervalMonthDayNano(Some(iv)) => {
            out.extend_from_slice(&iv.months.to_le_bytes());
            out.extend_from_slice(&iv.days.to_le_bytes());
            out.extend_from_slice(&iv.nanoseconds.to_le_bytes());
        }
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => put_bytes(s.as_bytes(), out),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => put_bytes(b, out),
        ScalarValue::List(list) => {
            let values = list.value(0);
            out.extend_from_slice(&(values.len() as u32).to_le_bytes());
            for i in 0..values.len() {
                encode_cell(&ScalarValue::try_from_array(&values, i)?, out)?;
            }
        }
        other => {
            return Err(EngineError::Internal(format!(
                "no storage encoding for values of type {}",
                other.data_type()
            )))
        }
    }
    Ok(())
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Decodes a row stored with [`encode_row`] for columns of the given types.
pub fn decode_row(
    bytes: &[u8],
    types: &[DataType],
) -> std::result::Result<Vec<ScalarValue>, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    match r.u8()? {
        FORMAT_V1 => {}
        v => return Err(format!("unknown row format {v}")),
    }
    let row = types
        .iter()
        .map(|t| r.cell(t))
        .collect::<Result<Vec<_>, _>>()?;
    if r.pos != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - r.pos));
    }
    Ok(row)
}

/// Decodes the `columns` (positions in `types`) of many stored rows straight into Arrow
/// arrays, one per wanted column; `None` rows are all NULL. The common types are appended
/// to typed builders without a per-value allocation; the others go through
/// [`ScalarValue`]s.
pub fn decode_columns(
    rows: &[Option<&[u8]>],
    types: &[DataType],
    columns: &[usize],
) -> std::result::Result<Vec<ArrayRef>, String> {
    let last = columns.iter().copied().max().map_or(0, |m| m + 1);
    // Per stored position, the output slot it fills.
    let mut slot_of: Vec<Option<usize>> = vec![None; last];
    for (slot, &c) in columns.iter().enumerate() {
        if slot_of[c].is_some() {
            return Err("a column decoded twice".into());
        }
        slot_of[c] = Some(slot);
    }
    let mut builders: Vec<ColumnBuilder> = columns
        .iter()
        .map(|&c| ColumnBuilder::new(&types[c], rows.len()))
        .collect();
    for row in rows {
        let Some(bytes) = row else {
            for b in &mut builders {
                b.push_null();
            }
            continue;
        };
        let mut r = Reader { buf: bytes, pos: 0 };
        match r.u8()? {
            FORMAT_V1 => {}
            v => return Err(format!("unknown row format {v}")),
        }
        for (c, slot) in slot_of.iter().enumerate() {
            match slot {
                Some(s) => builders[*s].push(&mut r, &types[c])?,
                None => r.skip(&types[c])?,
            }
        }
    }
    builders
        .into_iter()
        .zip(columns)
        .map(|(b, &c)| b.finish(&types[c]))
        .collect()
}

/// An Arrow array being filled from stored cells.
enum ColumnBuilder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Utf8(StringBuilder),
    Other(Vec<ScalarValue>),
}

impl ColumnBuilder {
    fn new(ty: &DataType, rows: usize) -> Self {
        match ty {
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            DataType::Int16 => ColumnBuilder::I16(Int16Builder::with_capacity(rows)),
            DataType::Int32 | DataType::Date32 => {
                ColumnBuilder::I32(Int32Builder::with_capacity(rows))
            }
            DataType::Int64
            | DataType::Time64(TimeUnit::Microsecond)
            | DataType::Timestamp(TimeUnit::Microsecond, _) => {
                ColumnBuilder::I64(Int64Builder::with_capacity(rows))
            }
            DataType::Float32 => ColumnBuilder::F32(Float32Builder::with_capacity(rows)),
            DataType::Float64 => ColumnBuilder::F64(Float64Builder::with_capacity(rows)),
            DataType::Utf8 => ColumnBuilder::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            _ => ColumnBuilder::Other(Vec::with_capacity(rows)),
        }
    }

    fn push_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::I16(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::F32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Other(v) => v.push(ScalarValue::Null),
        }
    }

    fn push(&mut self, r: &mut Reader<'_>, ty: &DataType) -> std::result::Result<(), String> {
        if let ColumnBuilder::Other(v) = self {
            v.push(r.cell(ty)?);
            return Ok(());
        }
        if r.u8()? == 0 {
            self.push_null();
            return Ok(());
        }
        match self {
            ColumnBuilder::Bool(b) => b.append_value(r.u8()? != 0),
            ColumnBuilder::I16(b) => b.append_value(i16::from_le_bytes(r.take()?)),
            ColumnBuilder::I32(b) => b.append_value(i32::from_le_bytes(r.take()?)),
            ColumnBuilder::I64(b) => b.append_value(i64::from_le_bytes(r.take()?)),
            ColumnBuilder::F32(b) => b.append_value(f32::from_le_bytes(r.take()?)),
            ColumnBuilder::F64(b) => b.append_value(f64::from_le_bytes(r.take()?)),
            ColumnBuilder::Utf8(b) => {
                let s = std::str::from_utf8(r.bytes()?).map_err(|e| e.to_string())?;
                b.append_value(s)
            }
            ColumnBuilder::Other(_) => unreachable!("handled above"),
        }
        Ok(())
    }

    fn finish(self, ty: &DataType) -> std::result::Result<ArrayRef, String> {
        let array: ArrayRef = match self {
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::I16(mut b) => Arc::new(b.finish()),
            ColumnBuilder::I32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::I64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::F32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::F64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Other(v) => {
                let v: Vec<ScalarValue> = v
                    .into_iter()
                    .map(|x| match x {
                        ScalarValue::Null => ScalarValue::try_from(ty),
                        x => Ok(x),
                    })
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                return if v.is_empty() {
                    Ok(datafusion::arrow::array::new_empty_array(ty))
                } else {
                    ScalarValue::iter_to_array(v).map_err(|e| e.to_string())
                };
            }
        };
        if array.data_type() == ty {
            Ok(array)
        } else {
            // Dates, times and timestamps were built as their integer storage.
            let data = array
                .to_data()
                .into_builder()
                .data_type(ty.clone())
                .build()
                .map_err(|e| e.to_string())?;
            Ok(datafusion::arrow::array::make_array(data))
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.pos + N;
        let s = self.buf.get(self.pos..end).ok_or("row is truncated")?;
        self.pos = end;
        Ok(s.try_into().expect("invariant: slice has length N"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }

    fn bytes(&mut self) -> Result<&[u8], String> {
        let len = u32::from_le_bytes(self.take()?) as usize;
        let end = self.pos + len;
        let s = self.buf.get(self.pos..end).ok_or("row is truncated")?;
        self.pos = end;
        Ok(s)
    }

    /// Moves past a cell without decoding it.
    fn skip(&mut self, ty: &DataType) -> Result<(), String> {
        if self.u8()? == 0 {
            return Ok(());
        }
        let width = match ty {
            DataType::Boolean | DataType::Int8 | DataType::UInt8 => 1,
            DataType::Int16 | DataType::UInt16 => 2,
            DataType::Int32 | DataType::UInt32 | DataType::Date32 | DataType::Float32 => 4,
            DataType::Int64
            | DataType::UInt64
            | DataType::Float64
            | DataType::Time64(_)
            | DataType::Timestamp(_, _) => 8,
            DataType::Decimal128(_, _) | DataType::Interval(_) => 16,
            DataType::Utf8
            | DataType::Utf8View
            | DataType::LargeUtf8
            | DataType::Binary
            | DataType::BinaryView
            | DataType::LargeBinary => {
                self.bytes()?;
                return Ok(());
            }
            DataType::List(field) => {
                let n = u32::from_le_bytes(self.take()?) as usize;
                for _ in 0..n {
                    self.skip(field.data_type())?;
                }
                return Ok(());
            }
            other => return Err(format!("no storage decoding for type {other}")),
        };
        let end = self.pos + width;
        if end > self.buf.len() {
            return Err("row is truncated".into());
        }
        self.pos = end;
        Ok(())
    }

    fn cell(&mut self, ty: &DataType) -> Result<ScalarValue, String> {
        if self.u8()? == 0 {
            return ScalarValue::try_from(ty).map_err(|e| e.to_string());
        }
        Ok(match ty {
            DataType::Boolean => ScalarValue::Boolean(Some(self.u8()? != 0)),
            DataType::Int8 => ScalarValue::Int8(Some(i8::from_le_bytes(self.take()?))),
            DataType::UInt8 => ScalarValue::UInt8(Some(self.u8()?)),
            DataType::UInt16 => ScalarValue::UInt16(Some(u16::from_le_bytes(self.take()?))),
            DataType::UInt32 => ScalarValue::UInt32(Some(u32::from_le_bytes(self.take()?))),
            DataType::UInt64 => ScalarValue::UInt64(Some(u64::from_le_bytes(self.take()?))),
            DataType::Int16 => ScalarValue::Int16(Some(i16::from_le_bytes(self.take()?))),
            DataType::Int32 => ScalarValue::Int32(Some(i32::from_le_bytes(self.take()?))),
            DataType::Date32 => ScalarValue::Date32(Some(i32::from_le_bytes(self.take()?))),
            DataType::Int64 => ScalarValue::Int64(Some(i64::from_le_bytes(self.take()?))),
            DataType::Time64(TimeUnit::Microsecond) => {
                ScalarValue::Time64Microsecond(Some(i64::from_le_bytes(self.take()?)))
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => ScalarValue::TimestampMicrosecond(
                Some(i64::from_le_bytes(self.take()?)),
                tz.clone(),
            ),
            DataType::Float32 => ScalarValue::Float32(Some(f32::from_le_bytes(self.take()?))),
            DataType::Float64 => ScalarValue::Float64(Some(f64::from_le_bytes(self.take()?))),
            DataType::Decimal128(p, s) => {
                ScalarValue::Decimal128(Some(i128::from_le_bytes(self.take()?)), *p, *s)
            }
            DataType::Interval(_) => {
                let months = i32::from_le_bytes(self.take()?);
                let days = i32::from_le_bytes(self.take()?);
                let nanos = i64::from_le_bytes(self.take()?);
                ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                    months, days, nanos,
                )))
            }
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                let b = self.bytes()?;
                let s = String::from_utf8(b.to_vec()).map_err(|e| e.to_string())?;
                match ty {
                    DataType::Utf8View => ScalarValue::Utf8View(Some(s)),
                    DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(s)),
                    _ => ScalarValue::Utf8(Some(s)),
                }
            }
            DataType::Binary => ScalarValue::Binary(Some(self.bytes()?.to_vec())),
            DataType::BinaryView => ScalarValue::BinaryView(Some(self.bytes()?.to_vec())),
            DataType::LargeBinary => ScalarValue::LargeBinary(Some(self.bytes()?.to_vec())),
            DataType::List(field) => {
                let n = u32::from_le_bytes(self.take()?) as usize;
                let elems = (0..n)
                    .map(|_| self.cell(field.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                ScalarValue::List(ScalarValue::new_list_nullable(&elems, field.data_type()))
                    .cast_to(&DataType::List(field.clone()))
                    .map_err(|e| e.to_string())?
            }
            other => return Err(format!("no storage decoding for type {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, IntervalUnit};

    #[test]
    fn columns_decode_like_rows() {
        let types = vec![
            DataType::Int64,
            DataType::Utf8,
            DataType::Float64,
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            DataType::Decimal128(10, 2),
            DataType::Boolean,
        ];
        let rows = [
            vec![
                ScalarValue::Int64(Some(1)),
                ScalarValue::Utf8(Some("a".into())),
                ScalarValue::Float64(Some(1.5)),
                ScalarValue::TimestampMicrosecond(Some(7), Some("+00:00".into())),
                ScalarValue::Decimal128(Some(123), 10, 2),
                ScalarValue::Boolean(Some(true)),
            ],
            vec![
                ScalarValue::Int64(None),
                ScalarValue::Utf8(None),
                ScalarValue::Float64(Some(-2.0)),
                ScalarValue::TimestampMicrosecond(None, Some("+00:00".into())),
                ScalarValue::Decimal128(None, 10, 2),
                ScalarValue::Boolean(Some(false)),
            ],
        ];
        let encoded: Vec<Vec<u8>> = rows.iter().map(|r| encode_row(r).unwrap()).collect();
        let mut input: Vec<Option<&[u8]>> = encoded.iter().map(|e| Some(e.as_slice())).collect();
        input.insert(1, None);
        // Out of order, skipping column 2.
        let wanted = [3, 1, 0, 4, 5];
        let arrays = decode_columns(&input, &types, &wanted).unwrap();
        for (a, &c) in arrays.iter().zip(&wanted) {
            assert_eq!(a.data_type(), &types[c]);
            assert_eq!(a.len(), 3);
            assert_eq!(ScalarValue::try_from_array(a, 0).unwrap(), rows[0][c]);
            assert!(a.is_null(1));
            assert_eq!(ScalarValue::try_from_array(a, 2).unwrap(), rows[1][c]);
        }
        assert!(decode_columns(&[Some(&encoded[0][..5])], &types, &[2]).is_err());
    }

    #[test]
    fn rows_encode_from_arrays_like_from_scalars() {
        let list_ty = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
        let list = ScalarValue::List(ScalarValue::new_list_nullable(
            &[ScalarValue::Int32(Some(1)), ScalarValue::Int32(None)],
            &DataType::Int32,
        ));
        let tz = Some("+00:00".into());
        // Per column: a value, then NULL; the fast paths and the fallback.
        let values = [
            ScalarValue::Int64(Some(-3)),
            ScalarValue::TimestampMicrosecond(Some(1_700_000_000_000_000), tz),
            ScalarValue::Int32(Some(i32::MIN)),
            ScalarValue::Float64(Some(-0.0)),
            ScalarValue::Utf8(Some("电表 ✓".into())),
            ScalarValue::Boolean(Some(true)),
            ScalarValue::Decimal128(Some(150), 10, 2),
            ScalarValue::Date32(Some(20000)),
            list,
        ];
        let columns: Vec<ArrayRef> = values
            .iter()
            .map(|v| {
                let null = ScalarValue::try_from(v.data_type()).unwrap();
                ScalarValue::iter_to_array([v.clone(), null]).unwrap()
            })
            .collect();
        assert_eq!(columns[8].data_type(), &list_ty);
        let mut out = vec![9, 9];
        encode_array_row(&columns, 0, &mut out).unwrap();
        assert_eq!(out, encode_row(&values).unwrap());
        let nulls: Vec<ScalarValue> = values
            .iter()
            .map(|v| ScalarValue::try_from(v.data_type()).unwrap())
            .collect();
        encode_array_row(&columns, 1, &mut out).unwrap();
        assert_eq!(out, encode_row(&nulls).unwrap());
    }

    #[test]
    fn every_stored_type_round_trips_with_nulls() {
        let list_ty = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
        let list = ScalarValue::List(ScalarValue::new_list_nullable(
            &[ScalarValue::Int32(Some(1)), ScalarValue::Int32(None)],
            &DataType::Int32,
        ));
        let cases: Vec<(ScalarValue, DataType)> = vec![
            (ScalarValue::Boolean(Some(true)), DataType::Boolean),
            (ScalarValue::Int16(Some(-7)), DataType::Int16),
            (ScalarValue::Int32(Some(i32::MIN)), DataType::Int32),
            (ScalarValue::Int64(Some(i64::MAX)), DataType::Int64),
            (ScalarValue::Float32(Some(1.5)), DataType::Float32),
            (ScalarValue::Float64(Some(-0.0)), DataType::Float64),
            (
                ScalarValue::Decimal128(Some(150), 10, 2),
                DataType::Decimal128(10, 2),
            ),
            (ScalarValue::Utf8(Some("电表 ✓".into())), DataType::Utf8),
            (ScalarValue::Binary(Some(vec![0, 1, 255])), DataType::Binary),
            (ScalarValue::Date32(Some(20000)), DataType::Date32),
            (
                ScalarValue::Time64Microsecond(Some(61_000_000)),
                DataType::Time64(TimeUnit::Microsecond),
            ),
            (
                ScalarValue::TimestampMicrosecond(
                    Some(1_700_000_000_000_000),
                    Some("+00:00".into()),
                ),
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            ),
            (
                ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(1, 2, 3))),
                DataType::Interval(IntervalUnit::MonthDayNano),
            ),
            (list, list_ty),
        ];
        let mut values: Vec<ScalarValue> = cases.iter().map(|(v, _)| v.clone()).collect();
        let mut types: Vec<DataType> = cases.iter().map(|(_, t)| t.clone()).collect();
        // and a null of every type
        for (_, t) in &cases {
            values.push(ScalarValue::try_from(t).unwrap());
            types.push(t.clone());
        }
        let bytes = encode_row(&values).unwrap();
        assert_eq!(decode_row(&bytes, &types).unwrap(), values);
    }

    #[test]
    fn truncated_rows_are_errors_not_panics() {
        let bytes = encode_row(&[ScalarValue::Utf8(Some("hello".into()))]).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_row(&bytes[..cut], &[DataType::Utf8]).is_err());
        }
    }
}
