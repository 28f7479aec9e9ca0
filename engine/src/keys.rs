//! Key layout and the memcomparable encoding of primary keys.
//!
//! Every stored row lives under
//!
//! ```text
//! 0x01 | table_id: u32 BE | vnode: u16 BE | memcomparable(pk datums...)
//! ```
//!
//! The virtual node (`vnode`) is a stable hash of the encoded primary key modulo
//! [`VNODE_COUNT`]. Work is later split between workers and processes by vnode ranges, so a
//! vnode's rows must stay contiguous; that is why the vnode comes before the key.
//!
//! The memcomparable encoding orders byte strings the way the values order: a key column is
//! a null flag (`0x00` null, `0x01` present) followed by the value: integers big-endian with
//! the sign bit flipped, floats with the usual IEEE-754 bit trick, strings and bytes with
//! `0x00` escaped as `0x00 0xFF` and terminated by `0x00 0x00`. Every column encoding is
//! self-delimiting, so a prefix of key columns is a byte prefix of the key.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int32Type, Int64Type, IntervalUnit, Time64MicrosecondType,
    TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::ScalarValue;

use crate::error::{EngineError, Result};
use strom_catalog::TableId;

pub const VNODE_COUNT: u16 = 256;

/// First byte of meta keys (catalog, sequences).
pub const META_PREFIX: u8 = 0x00;
/// First byte of table rows.
pub const TABLE_PREFIX: u8 = 0x01;
/// First byte of the change log the stream runtime consumes (see `changelog`).
pub const LOG_PREFIX: u8 = 0x02;
/// First byte of operator state (see `state`).
pub const STATE_PREFIX: u8 = 0x03;
/// First byte of secondary index entries (`CREATE INDEX`, see [`index_prefix`]).
pub const INDEX_PREFIX: u8 = 0x04;

/// `0x01 | table_id`: every row of the table starts with these bytes.
pub fn table_prefix(table: TableId) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.push(TABLE_PREFIX);
    k.extend_from_slice(&table.0.to_be_bytes());
    k
}

/// `0x01 | table_id | vnode`.
pub fn vnode_prefix(table: TableId, vnode: u16) -> Vec<u8> {
    let mut k = table_prefix(table);
    k.extend_from_slice(&vnode.to_be_bytes());
    k
}

/// `0x04 | table_id | index | encoded index key`: the entries of one index key, each
/// followed by the encoded primary key of a row that has it (the entry's value is empty).
/// Without `key`, the prefix of the whole index.
pub fn index_prefix(table: TableId, index: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(INDEX_PREFIX);
    k.extend_from_slice(&table.0.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The smallest byte string greater than every string starting with `prefix`, or `None`
/// when there is none (all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A stable 64-bit FNV-1a hash. Stable across builds and platforms: vnodes are persisted.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The virtual node of an encoded primary key.
pub fn vnode_of(encoded_pk: &[u8]) -> u16 {
    (fnv1a(encoded_pk) % VNODE_COUNT as u64) as u16
}

/// The full storage key of a row with the given encoded primary key.
pub fn row_key(table: TableId, encoded_pk: &[u8]) -> Vec<u8> {
    let mut k = vnode_prefix(table, vnode_of(encoded_pk));
    k.extend_from_slice(encoded_pk);
    k
}

/// The table a row key belongs to, or `None` for keys outside the table space.
pub fn table_of_key(key: &[u8]) -> Option<TableId> {
    if key.len() < 5 || key[0] != TABLE_PREFIX {
        return None;
    }
    Some(TableId(u32::from_be_bytes(key[1..5].try_into().ok()?)))
}

/// The encoded primary key part of a storage key.
pub fn pk_part(key: &[u8]) -> &[u8] {
    &key[7..]
}

/// Appends the memcomparable encoding of `v` to `out`.
pub fn encode_key_datum(v: &ScalarValue, out: &mut Vec<u8>) -> Result<()> {
    if v.is_null() {
        out.push(0x00);
        return Ok(());
    }
    out.push(0x01);
    match v {
        ScalarValue::Boolean(Some(b)) => out.push(*b as u8),
        ScalarValue::Int8(Some(i)) => out.push((*i as u8) ^ 0x80),
        ScalarValue::UInt8(Some(i)) => out.push(*i),
        ScalarValue::UInt16(Some(i)) => out.extend_from_slice(&i.to_be_bytes()),
        ScalarValue::UInt32(Some(i)) => out.extend_from_slice(&i.to_be_bytes()),
        ScalarValue::UInt64(Some(i)) => out.extend_from_slice(&i.to_be_bytes()),
        ScalarValue::Int16(Some(i)) => {
            out.extend_from_slice(&((*i as u16) ^ (1 << 15)).to_be_bytes())
        }
        ScalarValue::Int32(Some(i)) | ScalarValue::Date32(Some(i)) => {
            out.extend_from_slice(&((*i as u32) ^ (1 << 31)).to_be_bytes())
        }
        ScalarValue::Int64(Some(i))
        | ScalarValue::Time64Microsecond(Some(i))
        | ScalarValue::TimestampMicrosecond(Some(i), _) => {
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes())
        }
        ScalarValue::Float32(Some(f)) => out.extend_from_slice(&f32_key(*f)),
        ScalarValue::Float64(Some(f)) => out.extend_from_slice(&f64_key(*f)),
        ScalarValue::Decimal128(Some(d), _, _) => {
            out.extend_from_slice(&((*d as u128) ^ (1 << 127)).to_be_bytes())
        }
        ScalarValue::IntervalMonthDayNano(Some(iv)) => {
            out.extend_from_slice(&((iv.months as u32) ^ (1 << 31)).to_be_bytes());
            out.extend_from_slice(&((iv.days as u32) ^ (1 << 31)).to_be_bytes());
            out.extend_from_slice(&((iv.nanoseconds as u64) ^ (1 << 63)).to_be_bytes());
        }
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => encode_bytes(s.as_bytes(), out),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => encode_bytes(b, out),
        other => {
            return Err(EngineError::Unsupported(format!(
                "values of type {} cannot be part of a primary key",
                other.data_type()
            )))
        }
    }
    Ok(())
}

/// -0.0 and 0.0 are one key, every NaN is one key (sorting after +inf).
fn f32_key(f: f32) -> [u8; 4] {
    let f = if f == 0.0 {
        0.0
    } else if f.is_nan() {
        f32::NAN
    } else {
        f
    };
    let bits = f.to_bits();
    let enc = if bits >> 31 == 1 {
        !bits
    } else {
        bits ^ (1 << 31)
    };
    enc.to_be_bytes()
}

fn f64_key(f: f64) -> [u8; 8] {
    let f = if f == 0.0 {
        0.0
    } else if f.is_nan() {
        f64::NAN
    } else {
        f
    };
    let bits = f.to_bits();
    let enc = if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    };
    enc.to_be_bytes()
}

/// Appends the memcomparable encoding of `array[row]` to `out`: the same bytes as
/// [`encode_key_datum`] of that value, without building a `ScalarValue` for the common
/// types (operators encode every input row's key this way).
pub fn encode_array_datum(array: &dyn Array, row: usize, out: &mut Vec<u8>) -> Result<()> {
    if array.is_null(row) {
        out.push(0x00);
        return Ok(());
    }
    match array.data_type() {
        DataType::Int64 => {
            out.push(0x01);
            let i = array.as_primitive::<Int64Type>().value(row);
            out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
        }
        // Timestamps, times of day and dates as `encode_key_datum` encodes them (window
        // starts are group and join keys): no `ScalarValue` per row.
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            out.push(0x01);
            let i = array.as_primitive::<TimestampMicrosecondType>().value(row);
            out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            out.push(0x01);
            let i = array.as_primitive::<Time64MicrosecondType>().value(row);
            out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
        }
        DataType::Int32 => {
            out.push(0x01);
            let i = array.as_primitive::<Int32Type>().value(row);
            out.extend_from_slice(&((i as u32) ^ (1 << 31)).to_be_bytes());
        }
        DataType::Date32 => {
            out.push(0x01);
            let i = array.as_primitive::<Date32Type>().value(row);
            out.extend_from_slice(&((i as u32) ^ (1 << 31)).to_be_bytes());
        }
        DataType::Float64 => {
            out.push(0x01);
            out.extend_from_slice(&f64_key(array.as_primitive::<Float64Type>().value(row)));
        }
        DataType::Utf8 => {
            out.push(0x01);
            encode_bytes(array.as_string::<i32>().value(row).as_bytes(), out);
        }
        DataType::Utf8View => {
            out.push(0x01);
            encode_bytes(array.as_string_view().value(row).as_bytes(), out);
        }
        _ => encode_key_datum(&ScalarValue::try_from_array(array, row)?, out)?,
    }
    Ok(())
}

/// Appends an encoding of `array[row]` whose byte order is the order of `ORDER BY ...
/// [DESC] [NULLS FIRST | LAST]`: the memcomparable datum with its null flag placed for
/// `nulls_first`, every byte inverted when descending (the encoding is self-delimiting,
/// so inverting reverses the order).
pub fn encode_sort_datum(
    array: &dyn Array,
    row: usize,
    descending: bool,
    nulls_first: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    if array.is_null(row) {
        // Present values have flag 0x01; 0x00 sorts before them, 0x02 after.
        out.push(if nulls_first != descending {
            0x00
        } else {
            0x02
        });
    } else {
        encode_array_datum(array, row, out)?;
    }
    if descending {
        for b in &mut out[start..] {
            *b = !*b;
        }
    }
    Ok(())
}

/// The memcomparable keys of some columns for every row of a batch (each row's key is
/// [`encode_array_datum`] of each column in turn), in one buffer. Columns of 64- and
/// 32-bit integers, timestamps, times and dates without NULLs are encoded column by
/// column into fixed-width keys, with no per-row type dispatch (routing and grouping by
/// a window start and an id); other keys row by row.
pub struct RowKeys {
    bytes: Vec<u8>,
    /// Every key's width when all are as wide; else 0, and `ends` marks them.
    width: usize,
    ends: Vec<usize>,
}

impl RowKeys {
    pub fn new(columns: &[&dyn Array], rows: usize) -> Result<Self> {
        let widths: Option<Vec<usize>> = columns
            .iter()
            .map(|c| {
                (c.null_count() == 0)
                    .then(|| fixed_width(c.data_type()))
                    .flatten()
            })
            .collect();
        let Some(widths) = widths.filter(|w| !w.is_empty()) else {
            let mut bytes = Vec::with_capacity(rows * columns.len() * 9);
            let mut ends = Vec::with_capacity(rows);
            for row in 0..rows {
                for c in columns {
                    encode_array_datum(*c, row, &mut bytes)?;
                }
                ends.push(bytes.len());
            }
            return Ok(RowKeys {
                bytes,
                width: 0,
                ends,
            });
        };
        let width: usize = widths.iter().sum();
        let mut bytes = vec![0u8; rows * width];
        let mut at = 0;
        for (c, w) in columns.iter().zip(&widths) {
            let mut put = |row: usize, value: &[u8]| {
                let k = row * width + at;
                bytes[k] = 0x01;
                bytes[k + 1..k + 1 + value.len()].copy_from_slice(value);
            };
            match c.data_type() {
                DataType::Int64 => fill64(c.as_primitive::<Int64Type>().values(), &mut put),
                DataType::Timestamp(TimeUnit::Microsecond, _) => fill64(
                    c.as_primitive::<TimestampMicrosecondType>().values(),
                    &mut put,
                ),
                DataType::Time64(TimeUnit::Microsecond) => {
                    fill64(c.as_primitive::<Time64MicrosecondType>().values(), &mut put)
                }
                DataType::Int32 => fill32(c.as_primitive::<Int32Type>().values(), &mut put),
                DataType::Date32 => fill32(c.as_primitive::<Date32Type>().values(), &mut put),
                other => {
                    return Err(EngineError::Internal(format!(
                        "no fixed-width key encoding for {other}"
                    )))
                }
            }
            at += w;
        }
        Ok(RowKeys {
            bytes,
            width,
            ends: Vec::new(),
        })
    }

    /// Row `row`'s key.
    pub fn get(&self, row: usize) -> &[u8] {
        if self.width > 0 {
            &self.bytes[row * self.width..(row + 1) * self.width]
        } else {
            let start = if row == 0 { 0 } else { self.ends[row - 1] };
            &self.bytes[start..self.ends[row]]
        }
    }
}

/// The width of [`encode_array_datum`]'s encoding of a non-NULL value of `ty`, when
/// [`RowKeys`] encodes it column by column.
fn fixed_width(ty: &DataType) -> Option<usize> {
    match ty {
        DataType::Int64
        | DataType::Timestamp(TimeUnit::Microsecond, _)
        | DataType::Time64(TimeUnit::Microsecond) => Some(9),
        DataType::Int32 | DataType::Date32 => Some(5),
        _ => None,
    }
}

fn fill64<T: Copy + Into<i64>>(values: &[T], put: &mut impl FnMut(usize, &[u8])) {
    for (row, v) in values.iter().enumerate() {
        let v: i64 = (*v).into();
        put(row, &((v as u64) ^ (1 << 63)).to_be_bytes());
    }
}

fn fill32<T: Copy + Into<i32>>(values: &[T], put: &mut impl FnMut(usize, &[u8])) {
    for (row, v) in values.iter().enumerate() {
        let v: i32 = (*v).into();
        put(row, &((v as u32) ^ (1 << 31)).to_be_bytes());
    }
}

/// The memcomparable encodings of the given columns, one key per row.
pub fn encode_array_keys(columns: &[&dyn Array], rows: usize) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut key = Vec::with_capacity(columns.len() * 9);
        for c in columns {
            encode_array_datum(*c, row, &mut key)?;
        }
        out.push(key);
    }
    Ok(out)
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    for &byte in b {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The length of the memcomparable datum of type `t` at the start of `bytes` (as
/// [`encode_key_datum`] writes it), to split an encoded key into its columns; `None`
/// when `bytes` is cut short or `t` is not a key type.
pub fn key_datum_len(bytes: &[u8], t: &DataType) -> Option<usize> {
    match bytes.first()? {
        0x00 => return Some(1),
        0x01 => {}
        _ => return None,
    }
    let width = match t {
        DataType::Boolean | DataType::Int8 | DataType::UInt8 => 1,
        DataType::Int16 | DataType::UInt16 => 2,
        DataType::Int32 | DataType::UInt32 | DataType::Date32 | DataType::Float32 => 4,
        DataType::Int64
        | DataType::UInt64
        | DataType::Float64
        | DataType::Time64(_)
        | DataType::Timestamp(TimeUnit::Microsecond, _) => 8,
        DataType::Decimal128(_, _) | DataType::Interval(IntervalUnit::MonthDayNano) => 16,
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => {
            // Escaped bytes (0 as 0 0xFF), ended by 0 0.
            let mut i = 1;
            loop {
                match (bytes.get(i)?, bytes.get(i + 1)) {
                    (0, Some(0)) => return Some(i + 2),
                    (0, Some(0xFF)) => i += 2,
                    (0, _) => return None,
                    _ => i += 1,
                }
            }
        }
        _ => return None,
    };
    (bytes.len() > width).then_some(1 + width)
}

/// The memcomparable encoding of a whole key.
pub fn encode_key(values: &[ScalarValue]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for v in values {
        encode_key_datum(v, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::IntervalMonthDayNano;

    fn enc(v: ScalarValue) -> Vec<u8> {
        encode_key(&[v]).unwrap()
    }

    fn assert_order_preserved(values: Vec<ScalarValue>) {
        for w in values.windows(2) {
            assert!(
                enc(w[0].clone()) < enc(w[1].clone()),
                "{:?} should sort before {:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn key_datum_len_splits_an_encoded_key_into_its_columns() {
        let values = [
            ScalarValue::Int64(Some(-7)),
            ScalarValue::Utf8(Some("a\0b".into())),
            ScalarValue::Utf8(None),
            ScalarValue::Boolean(Some(true)),
            ScalarValue::Int16(Some(3)),
            ScalarValue::Date32(Some(19_000)),
            ScalarValue::TimestampMicrosecond(Some(1), None),
            ScalarValue::Decimal128(Some(12), 10, 2),
            ScalarValue::Binary(Some(vec![0, 0, 1])),
            ScalarValue::Float64(Some(1.5)),
        ];
        let key = encode_key(&values).unwrap();
        let mut at = 0;
        for v in &values {
            let len = key_datum_len(&key[at..], &v.data_type()).unwrap();
            assert_eq!(&key[at..at + len], enc(v.clone()).as_slice(), "{v:?}");
            at += len;
        }
        assert_eq!(at, key.len());
        // Cut short, or not a key type: no length.
        assert_eq!(
            key_datum_len(&enc(ScalarValue::Int64(Some(1)))[..5], &DataType::Int64),
            None
        );
        assert_eq!(
            key_datum_len(
                &enc(ScalarValue::Utf8(Some("ab".into())))[..3],
                &DataType::Utf8
            ),
            None
        );
        assert_eq!(key_datum_len(&[0x01, 0], &DataType::Null), None);
    }

    #[test]
    fn integers_sort_like_values() {
        assert_order_preserved(
            [i64::MIN, -5, -1, 0, 1, 7, i64::MAX]
                .map(|i| ScalarValue::Int64(Some(i)))
                .to_vec(),
        );
        assert_order_preserved(
            [-300i16, 0, 300]
                .map(|i| ScalarValue::Int16(Some(i)))
                .to_vec(),
        );
    }

    #[test]
    fn floats_sort_like_values_and_zero_is_one_key() {
        assert_order_preserved(
            [
                f64::NEG_INFINITY,
                -2.5,
                -0.1,
                0.0,
                1e-300,
                3.0,
                f64::INFINITY,
            ]
            .map(|f| ScalarValue::Float64(Some(f)))
            .to_vec(),
        );
        assert_eq!(
            enc(ScalarValue::Float64(Some(-0.0))),
            enc(ScalarValue::Float64(Some(0.0)))
        );
    }

    #[test]
    fn strings_sort_bytewise_and_are_self_delimiting() {
        assert_order_preserved(
            ["", "a", "a\0", "a\0b", "ab", "b"]
                .map(|s| ScalarValue::Utf8(Some(s.into())))
                .to_vec(),
        );
        // ("a", "b") must not collide with ("ab", "")
        let k1 = encode_key(&[ScalarValue::from("a"), ScalarValue::from("b")]).unwrap();
        let k2 = encode_key(&[ScalarValue::from("ab"), ScalarValue::from("")]).unwrap();
        assert_ne!(k1, k2);
    }

    #[test]
    fn decimals_and_intervals_sort() {
        assert_order_preserved(
            [-1000i128, -1, 0, 250]
                .map(|d| ScalarValue::Decimal128(Some(d), 10, 2))
                .to_vec(),
        );
        let iv =
            |m, d, n| ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(m, d, n)));
        assert_order_preserved(vec![
            iv(-1, 0, 0),
            iv(0, -1, 5),
            iv(0, 0, 0),
            iv(0, 0, 1),
            iv(1, 0, 0),
        ]);
    }

    #[test]
    fn vnode_is_stable() {
        // Persisted data depends on this value never changing.
        let k = encode_key(&[ScalarValue::Int64(Some(42))]).unwrap();
        assert_eq!(vnode_of(&k), vnode_of(&k.clone()));
        assert_eq!(vnode_of(b"strom"), (fnv1a(b"strom") % 256) as u16);
        assert!(vnode_of(&k) < VNODE_COUNT);
    }

    #[test]
    fn array_encoding_equals_scalar_encoding() {
        use datafusion::arrow::array::{
            ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray,
            StringViewArray, Time64MicrosecondArray, TimestampMicrosecondArray,
        };
        use std::sync::Arc;
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(-3), None, Some(i64::MAX)])),
            Arc::new(Int32Array::from(vec![Some(7), Some(i32::MIN), None])),
            Arc::new(Float64Array::from(vec![Some(-0.0), Some(f64::NAN), None])),
            Arc::new(StringArray::from(vec![Some("a\0b"), None, Some("")])),
            Arc::new(StringViewArray::from(vec![
                None,
                Some("long enough to not inline"),
                Some("x"),
            ])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            Arc::new(Date32Array::from(vec![Some(1), Some(-1), None])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(-1), None, Some(1_704_067_200_000_000)])
                    .with_timezone("+00:00"),
            ),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(i64::MIN),
                Some(0),
                None,
            ])),
            Arc::new(Time64MicrosecondArray::from(vec![
                Some(86_399_999_999),
                None,
                Some(0),
            ])),
        ];
        for a in &arrays {
            for row in 0..a.len() {
                let mut fast = Vec::new();
                encode_array_datum(a.as_ref(), row, &mut fast).unwrap();
                let slow = encode_key(&[ScalarValue::try_from_array(a, row).unwrap()]).unwrap();
                assert_eq!(fast, slow, "{:?} row {row}", a.data_type());
            }
        }
    }

    #[test]
    fn row_keys_are_the_per_row_encodings() {
        use datafusion::arrow::array::*;
        use std::sync::Arc;
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![i64::MIN, -1, 0, 7]));
        let starts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            -1,
            0,
            1_704_067_200_000_000,
            i64::MAX,
        ]));
        let days: ArrayRef = Arc::new(Date32Array::from(vec![-3, 0, 19_000, i32::MAX]));
        let with_null: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), None, Some(-5), None]));
        let text: ArrayRef = Arc::new(StringArray::from(vec!["a", "", "a\0b", "zz"]));
        let zoned: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(vec![5, -5, 0, 1]).with_timezone("UTC"));
        // Sliced: values and nulls start at the offset.
        let (ids_sliced, null_sliced) = (ids.slice(1, 3), with_null.slice(1, 3));
        let (starts_sliced, null_free) = (starts.slice(1, 3), with_null.slice(2, 1));
        let sets: [(&[&ArrayRef], usize); 10] = [
            (&[&ids], 4),
            (&[&starts, &ids], 4),
            (&[&days, &starts, &ids], 4),
            (&[&ids, &with_null], 4),
            (&[&text, &ids], 4),
            (&[&zoned, &ids], 4),
            (&[&ids_sliced, &starts_sliced], 3),
            (&[&ids_sliced, &null_sliced], 3),
            (&[&null_free], 1),
            (&[], 3),
        ];
        let empty = RowKeys::new(&[ids.slice(0, 0).as_ref()], 0).unwrap();
        assert!(empty.bytes.is_empty());
        for (set, rows) in sets {
            let cols: Vec<&dyn Array> = set.iter().map(|a| a.as_ref() as &dyn Array).collect();
            let keys = RowKeys::new(&cols, rows).unwrap();
            for row in 0..rows {
                let mut want = Vec::new();
                for c in &cols {
                    encode_array_datum(*c, row, &mut want).unwrap();
                }
                assert_eq!(keys.get(row), want.as_slice(), "row {row} of {cols:?}");
            }
        }
    }

    #[test]
    fn prefix_successor_carries() {
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
    }
}
