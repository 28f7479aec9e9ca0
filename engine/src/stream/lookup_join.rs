//! Processing-time temporal joins: `JOIN dim FOR SYSTEM_TIME AS OF PROCTIME() AS d ON
//! ... = d.key`. Each left row is joined with the dimension row as it is when the row is
//! processed (a point read of the dimension's primary key at the epoch's snapshot); later
//! changes of the dimension do not rewrite earlier results, so the join keeps no state of
//! the dimension.
//!
//! A left input that deletes rows needs to retract exactly what was emitted for them, so
//! then the join remembers, per left row (its value encoding), the dimension rows it was
//! joined with (a multiset: `left row -> dimension row or "none" -> count`). An append-only
//! left input keeps no state at all.

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use strom_catalog::TableDef;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;
use crate::state::{multiset_count, StateAlloc, StateTable};
use crate::store::Snapshot;

#[derive(Debug)]
pub struct LookupJoin {
    /// LEFT JOIN: a row without a dimension row is padded with NULLs.
    left_outer: bool,
    /// Left columns giving the dimension's primary key, in key order.
    left_keys: Vec<usize>,
    dim: std::sync::Arc<TableDef>,
    dim_types: Vec<DataType>,
    /// Stored columns of the dimension the join outputs.
    dim_columns: Vec<usize>,
    output: SchemaRef,
    /// What was emitted per left row (None: the left input only appends).
    emitted: Option<StateTable>,
}

/// The multiset suffix of "no dimension row".
const NONE: &[u8] = &[0];

impl LookupJoin {
    pub fn try_new(
        left_outer: bool,
        left_keys: Vec<usize>,
        dim: std::sync::Arc<TableDef>,
        dim_columns: Vec<usize>,
        output: SchemaRef,
        append_only_left: bool,
        state: &mut StateAlloc,
    ) -> Result<Self> {
        if left_keys.len() != dim.pk.len() {
            return Err(EngineError::Internal(
                "lookup join keys do not match the dimension's key".into(),
            ));
        }
        Ok(LookupJoin {
            left_outer,
            left_keys,
            dim_types: crate::table::stored_types(&dim),
            dim,
            dim_columns,
            output,
            emitted: (!append_only_left).then(|| state.table()),
        })
    }

    pub fn output_width(&self) -> usize {
        self.output.fields().len()
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        self.emitted.iter_mut().collect()
    }

    /// The storage key of the dimension row a left row looks up (None: a NULL key).
    fn dim_key(&self, row: &[ScalarValue]) -> Result<Option<Vec<u8>>> {
        let mut pk = Vec::with_capacity(self.left_keys.len());
        for (&k, &c) in self.left_keys.iter().zip(&self.dim.pk) {
            let v = &row[k];
            if v.is_null() {
                return Ok(None);
            }
            // The key value in the dimension's key type (the join compared them so).
            let t = &self.dim_types[c];
            pk.push(if &v.data_type() == t {
                v.clone()
            } else {
                v.cast_to(t)?
            });
        }
        Ok(Some(keys::row_key(self.dim.id, &keys::encode_key(&pk)?)))
    }

    /// The dimension rows (their output columns) for a chunk's inserted rows, as of
    /// `snapshot`, read with one multi-get.
    fn lookup_all(
        &self,
        snapshot: &Snapshot,
        rows: &[(Op, Vec<ScalarValue>)],
    ) -> Result<Vec<Option<Vec<ScalarValue>>>> {
        let keys: Vec<Option<Vec<u8>>> = rows
            .iter()
            .map(|(op, r)| {
                if op.sign() > 0 {
                    self.dim_key(r)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<_>>()?;
        let wanted: Vec<Vec<u8>> = keys.iter().flatten().cloned().collect();
        let mut found = snapshot.multi_get(&wanted)?.into_iter();
        keys.iter()
            .map(|k| {
                let Some(bytes) = k.as_ref().and_then(|_| found.next()).flatten() else {
                    return Ok(None);
                };
                let full = crate::table::decode(&self.dim, &self.dim_types, &bytes)?;
                Ok(Some(
                    self.dim_columns.iter().map(|&c| full[c].clone()).collect(),
                ))
            })
            .collect()
    }

    fn joined(&self, row: &[ScalarValue], dim: Option<&[ScalarValue]>) -> Result<Vec<ScalarValue>> {
        let mut out = row.to_vec();
        match dim {
            Some(d) => out.extend_from_slice(d),
            None => {
                for f in &self.output.fields()[row.len()..] {
                    out.push(ScalarValue::try_from(f.data_type())?);
                }
            }
        }
        Ok(out)
    }

    /// Joins a chunk of left changes with the dimension as of `snapshot`.
    pub fn apply(&mut self, chunk: &StreamChunk, snapshot: &Snapshot) -> Result<StreamChunk> {
        let mut out = Vec::new();
        let rows = chunk.rows()?;
        let dims = self.lookup_all(snapshot, &rows)?;
        for ((op, row), dim) in rows.into_iter().zip(dims) {
            if op.sign() > 0 {
                if let Some(state) = &mut self.emitted {
                    let prefix = row::encode_row(&row)?;
                    let suffix = match &dim {
                        Some(d) => row::encode_row(d)?,
                        None => NONE.to_vec(),
                    };
                    let d = dim.clone();
                    state.multiset_add(&prefix, &suffix, 1, || match &d {
                        Some(d) => row::encode_row(d),
                        None => Ok(Vec::new()),
                    })?;
                }
                match dim {
                    Some(d) => out.push((Op::Insert, self.joined(&row, Some(&d))?)),
                    None if self.left_outer => out.push((Op::Insert, self.joined(&row, None)?)),
                    None => {}
                }
            } else {
                // Retract what was emitted for this left row.
                let Some(state) = &mut self.emitted else {
                    return Err(EngineError::Internal(
                        "lookup join: a delete from an input planned as append-only".into(),
                    ));
                };
                let prefix = row::encode_row(&row)?;
                let mut first: Option<(Vec<u8>, Vec<u8>)> = None;
                for (suffix, value) in state.bucket(&prefix)? {
                    if multiset_count(value)? > 0 {
                        first = Some((suffix.clone(), value[8..].to_vec()));
                        break;
                    }
                }
                let Some((suffix, dim_bytes)) = first else {
                    return Err(EngineError::Internal(
                        "lookup join: delete of a row that was never joined".into(),
                    ));
                };
                state.multiset_add(&prefix, &suffix, -1, || Ok(Vec::new()))?;
                if suffix.as_slice() == NONE {
                    if self.left_outer {
                        out.push((Op::Delete, self.joined(&row, None)?));
                    }
                } else {
                    let types: Vec<DataType> = self
                        .dim_columns
                        .iter()
                        .map(|&c| self.dim_types[c].clone())
                        .collect();
                    let d = row::decode_row(&dim_bytes, &types).map_err(|reason| {
                        EngineError::Corrupt {
                            table: "lookup join state".into(),
                            reason,
                        }
                    })?;
                    out.push((Op::Delete, self.joined(&row, Some(&d))?));
                }
            }
        }
        StreamChunk::from_rows(&self.output, &out)
    }
}
