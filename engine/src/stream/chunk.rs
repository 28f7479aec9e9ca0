//! [`StreamChunk`]: a changelog batch.
//!
//! Every row carries an [`Op`]. An update is an adjacent `U-`/`U+` pair (old row, then new
//! row); operators that cannot keep a pair together (a filter that keeps only one side)
//! turn it into a plain `-` or `+`.

use std::fmt::Write;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Delete,
    UpdateDelete,
    UpdateInsert,
}

impl Op {
    /// +1 for rows entering the relation, -1 for rows leaving it.
    pub fn sign(self) -> i64 {
        match self {
            Op::Insert | Op::UpdateInsert => 1,
            Op::Delete | Op::UpdateDelete => -1,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Insert => "+",
            Op::Delete => "-",
            Op::UpdateDelete => "U-",
            Op::UpdateInsert => "U+",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "+" => Op::Insert,
            "-" => Op::Delete,
            "U-" => Op::UpdateDelete,
            "U+" => Op::UpdateInsert,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct StreamChunk {
    ops: Vec<Op>,
    data: RecordBatch,
}

impl StreamChunk {
    pub fn new(ops: Vec<Op>, data: RecordBatch) -> Result<Self> {
        if ops.len() != data.num_rows() {
            return Err(EngineError::Internal(format!(
                "chunk has {} ops for {} rows",
                ops.len(),
                data.num_rows()
            )));
        }
        Ok(StreamChunk { ops, data })
    }

    /// A chunk from rows of scalars of the given schema.
    pub fn from_rows(schema: &SchemaRef, rows: &[(Op, Vec<ScalarValue>)]) -> Result<Self> {
        let values: Vec<Vec<ScalarValue>> = rows.iter().map(|(_, r)| r.clone()).collect();
        let projection: Vec<usize> = (0..schema.fields().len()).collect();
        let data = crate::table::rows_to_batch(schema, &projection, &values)?;
        StreamChunk::new(rows.iter().map(|(op, _)| *op).collect(), data)
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn data(&self) -> &RecordBatch {
        &self.data
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The rows as `(op, values)`.
    pub fn rows(&self) -> Result<Vec<(Op, Vec<ScalarValue>)>> {
        Ok(self
            .ops
            .iter()
            .copied()
            .zip(crate::table::batch_to_rows(&self.data)?)
            .collect())
    }

    /// Parses the test text form: a header of type letters, then one row per line.
    ///
    /// ```text
    ///    I T F
    /// +  1 a 1.5
    /// U- 1 a 1.5
    /// U+ 1 b .      <- `.` is NULL
    /// ```
    ///
    /// Type letters: `I` bigint, `i` integer, `F` double, `T` text, `B` boolean.
    pub fn from_pretty(text: &str) -> StreamChunk {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header = lines
            .next()
            .expect("chunk text needs a header of type letters");
        let types: Vec<DataType> = header.split_whitespace().map(type_of_letter).collect();
        let schema = Arc::new(Schema::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let rows: Vec<(Op, Vec<ScalarValue>)> = lines
            .map(|line| {
                let mut parts = line.split_whitespace();
                let op = parts
                    .next()
                    .and_then(Op::parse)
                    .unwrap_or_else(|| panic!("bad op in {line:?}"));
                let values: Vec<ScalarValue> = parts
                    .zip(&types)
                    .map(|(v, t)| {
                        if v == "." {
                            ScalarValue::try_from(t).expect("null of a test type")
                        } else {
                            ScalarValue::try_from_string(v.to_string(), t)
                                .unwrap_or_else(|e| panic!("{v}: {e}"))
                        }
                    })
                    .collect();
                assert_eq!(
                    values.len(),
                    types.len(),
                    "wrong number of values in {line:?}"
                );
                (op, values)
            })
            .collect();
        StreamChunk::from_rows(&schema, &rows).expect("valid test chunk")
    }

    /// The text form [`StreamChunk::from_pretty`] reads, without the header.
    pub fn to_pretty(&self) -> String {
        let mut out = String::new();
        for (op, values) in self.rows().expect("chunk rows decode") {
            let _ = write!(out, "{}", op.symbol());
            for v in values {
                if v.is_null() {
                    out.push_str(" .");
                } else {
                    let _ = write!(out, " {v}");
                }
            }
            out.push('\n');
        }
        out
    }
}

fn type_of_letter(l: &str) -> DataType {
    match l {
        "I" => DataType::Int64,
        "i" => DataType::Int32,
        "F" => DataType::Float64,
        "T" => DataType::Utf8,
        "B" => DataType::Boolean,
        other => panic!("unknown type letter {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_round_trip() {
        let c = StreamChunk::from_pretty(
            "  I T F
             + 1 a 1.5
             - 2 . 2
             U- 1 a 1.5
             U+ 1 b .",
        );
        assert_eq!(c.len(), 4);
        assert_eq!(c.ops()[2], Op::UpdateDelete);
        assert_eq!(c.to_pretty(), "+ 1 a 1.5\n- 2 . 2\nU- 1 a 1.5\nU+ 1 b .\n");
        assert_eq!(Op::UpdateDelete.sign(), -1);
    }
}
