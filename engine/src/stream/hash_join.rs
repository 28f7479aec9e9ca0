//! Equi-joins with retraction: inner, left, right and full outer, with an optional extra
//! (non-equi) condition on the joined row.
//!
//! State: both sides' rows, bucketed by join key, each with its *degree*, the number of
//! rows of the other side it currently joins with. The degree is what outer joins need:
//! a preserved row with degree 0 appears once, padded with NULLs.
//!
//! What happens to each op of side S (the other side is O):
//! - insert `r`: for every O row `o` matching `r`, emit `+ (r, o)`; if `o` is preserved and
//!   had degree 0, first emit `- (NULLs, o)`, its padded row. If nothing matches and S is
//!   preserved, emit `+ (r, NULLs)`. Store `r` with its degree.
//! - delete `r`: the mirror image (`- (r, o)`, and `+ (NULLs, o)` when `o`'s degree drops
//!   to 0; `- (r, NULLs)` if `r` matched nothing).
//!
//! Updates are handled as a delete then an insert. A NULL in a key column matches nothing.
//! Output is emitted as rows arrive; a join keeps no per-epoch buffer, so a barrier has
//! nothing to flush.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    Inner,
    Left,
    Right,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    row: Vec<ScalarValue>,
    degree: i64,
}

type Key = Vec<ScalarValue>;

#[derive(Debug)]
pub struct HashJoin {
    join_type: JoinType,
    keys: [Vec<usize>; 2],
    widths: [usize; 2],
    /// Evaluated over `left ++ right` rows.
    condition: Option<Arc<dyn PhysicalExpr>>,
    output: SchemaRef,
    state: [HashMap<Key, Vec<Entry>>; 2],
}

fn idx(side: Side) -> usize {
    match side {
        Side::Left => 0,
        Side::Right => 1,
    }
}

impl HashJoin {
    /// `output` is the left columns followed by the right ones, all nullable.
    pub fn try_new(
        join_type: JoinType,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        widths: (usize, usize),
        condition: Option<Arc<dyn PhysicalExpr>>,
        output: SchemaRef,
    ) -> Result<Self> {
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(EngineError::Internal(
                "a hash join needs the same number (> 0) of keys per side".into(),
            ));
        }
        if output.fields().len() != widths.0 + widths.1 {
            return Err(EngineError::Internal(
                "join output is not left ++ right".into(),
            ));
        }
        Ok(HashJoin {
            join_type,
            keys: [left_keys, right_keys],
            widths: [widths.0, widths.1],
            condition,
            output,
            state: [HashMap::new(), HashMap::new()],
        })
    }

    fn preserved(&self, side: Side) -> bool {
        matches!(
            (self.join_type, side),
            (JoinType::Left | JoinType::Full, Side::Left)
                | (JoinType::Right | JoinType::Full, Side::Right)
        )
    }

    fn joined(&self, side: Side, row: &[ScalarValue], other: &[ScalarValue]) -> Vec<ScalarValue> {
        match side {
            Side::Left => row.iter().chain(other).cloned().collect(),
            Side::Right => other.iter().chain(row).cloned().collect(),
        }
    }

    /// `row` of `side` padded with NULLs for the other side.
    fn padded(&self, side: Side, row: &[ScalarValue]) -> Result<Vec<ScalarValue>> {
        let (lo, hi) = match side {
            Side::Left => (self.widths[0], self.widths[0] + self.widths[1]),
            Side::Right => (0, self.widths[0]),
        };
        let nulls = (lo..hi)
            .map(|i| ScalarValue::try_from(self.output.field(i).data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match side {
            Side::Left => row.iter().cloned().chain(nulls).collect(),
            Side::Right => nulls.into_iter().chain(row.iter().cloned()).collect(),
        })
    }

    /// Indices into the other side's bucket that `row` joins with.
    fn matches(&self, side: Side, key: &Key, row: &[ScalarValue]) -> Result<Vec<usize>> {
        if key.iter().any(ScalarValue::is_null) {
            return Ok(Vec::new());
        }
        let Some(bucket) = self.state[idx(side.other())].get(key) else {
            return Ok(Vec::new());
        };
        let Some(cond) = &self.condition else {
            return Ok((0..bucket.len()).collect());
        };
        let pairs: Vec<(Op, Vec<ScalarValue>)> = bucket
            .iter()
            .map(|e| (Op::Insert, self.joined(side, row, &e.row)))
            .collect();
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let batch = StreamChunk::from_rows(&self.output, &pairs)?;
        let mask = cond.evaluate(batch.data())?.into_array(pairs.len())?;
        let mask = mask
            .as_boolean_opt()
            .ok_or_else(|| EngineError::Internal("join condition is not boolean".into()))?;
        Ok((0..pairs.len())
            .filter(|&i| mask.is_valid(i) && mask.value(i))
            .collect())
    }

    /// Applies a chunk arriving on `side` and returns the join's output changes.
    pub fn apply(&mut self, side: Side, chunk: &StreamChunk) -> Result<StreamChunk> {
        let mut out = Vec::new();
        for (op, row) in chunk.rows()? {
            if row.len() != self.widths[idx(side)] {
                return Err(EngineError::Internal(
                    "join input row has the wrong width".into(),
                ));
            }
            let key: Key = self.keys[idx(side)]
                .iter()
                .map(|&k| row[k].clone())
                .collect();
            let matches = self.matches(side, &key, &row)?;
            let other_preserved = self.preserved(side.other());
            let me_preserved = self.preserved(side);
            if op.sign() > 0 {
                for &m in &matches {
                    let entry = &self.state[idx(side.other())][&key][m];
                    if other_preserved && entry.degree == 0 {
                        out.push((Op::Delete, self.padded(side.other(), &entry.row)?));
                    }
                    out.push((Op::Insert, self.joined(side, &row, &entry.row)));
                    self.state[idx(side.other())]
                        .get_mut(&key)
                        .expect("invariant: matched bucket")[m]
                        .degree += 1;
                }
                if matches.is_empty() && me_preserved {
                    out.push((Op::Insert, self.padded(side, &row)?));
                }
                self.state[idx(side)].entry(key).or_default().push(Entry {
                    row,
                    degree: matches.len() as i64,
                });
            } else {
                let bucket = self.state[idx(side)].get_mut(&key).ok_or_else(|| {
                    EngineError::Internal("join: delete of a row that was never inserted".into())
                })?;
                let pos = bucket.iter().position(|e| e.row == row).ok_or_else(|| {
                    EngineError::Internal("join: delete of a row that was never inserted".into())
                })?;
                bucket.swap_remove(pos);
                if bucket.is_empty() {
                    self.state[idx(side)].remove(&key);
                }
                for &m in &matches {
                    let entry = &mut self.state[idx(side.other())]
                        .get_mut(&key)
                        .expect("invariant: matched bucket")[m];
                    entry.degree -= 1;
                    let (degree, other_row) = (entry.degree, entry.row.clone());
                    out.push((Op::Delete, self.joined(side, &row, &other_row)));
                    if other_preserved && degree == 0 {
                        out.push((Op::Insert, self.padded(side.other(), &other_row)?));
                    }
                }
                if matches.is_empty() && me_preserved {
                    out.push((Op::Delete, self.padded(side, &row)?));
                }
            }
        }
        StreamChunk::from_rows(&self.output, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::col;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::physical_expr::create_physical_expr;

    /// reading(id I, feeder T, kw F) JOIN feeder(name T, max_kw F) ON feeder = name
    fn output() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("feeder", DataType::Utf8, true),
            Field::new("kw", DataType::Float64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("max_kw", DataType::Float64, true),
        ]))
    }

    fn join(t: JoinType) -> HashJoin {
        HashJoin::try_new(t, vec![1], vec![0], (3, 2), None, output()).unwrap()
    }

    fn left(text: &str) -> StreamChunk {
        StreamChunk::from_pretty(&format!("I T F\n{text}"))
    }

    fn right(text: &str) -> StreamChunk {
        StreamChunk::from_pretty(&format!("T F\n{text}"))
    }

    #[test]
    fn inner_join_emits_and_retracts_pairs_with_multiplicity() {
        let mut j = join(JoinType::Inner);
        assert!(j
            .apply(Side::Left, &left("+ 1 F1 10\n+ 2 F1 30\n+ 3 F2 1"))
            .unwrap()
            .is_empty());
        let out = j.apply(Side::Right, &right("+ F1 100")).unwrap();
        assert_eq!(out.to_pretty(), "+ 1 F1 10 F1 100\n+ 2 F1 30 F1 100\n");
        // an update of the left row: delete then insert
        let out = j.apply(Side::Left, &left("U- 2 F1 30\nU+ 2 F1 5")).unwrap();
        assert_eq!(out.to_pretty(), "- 2 F1 30 F1 100\n+ 2 F1 5 F1 100\n");
        // a duplicate right row doubles the matches
        let out = j.apply(Side::Right, &right("+ F1 100")).unwrap();
        assert_eq!(out.len(), 2);
        let out = j.apply(Side::Right, &right("- F1 100\n- F1 100")).unwrap();
        assert_eq!(out.len(), 4);
        assert!(out.ops().iter().all(|o| *o == Op::Delete));
    }

    #[test]
    fn left_join_pads_and_unpads_as_matches_come_and_go() {
        let mut j = join(JoinType::Left);
        assert_eq!(
            j.apply(Side::Left, &left("+ 1 F1 10")).unwrap().to_pretty(),
            "+ 1 F1 10 . .\n"
        );
        assert_eq!(
            j.apply(Side::Right, &right("+ F1 100"))
                .unwrap()
                .to_pretty(),
            "- 1 F1 10 . .\n+ 1 F1 10 F1 100\n"
        );
        // a second match does not touch the padded row again
        assert_eq!(
            j.apply(Side::Right, &right("+ F1 50")).unwrap().to_pretty(),
            "+ 1 F1 10 F1 50\n"
        );
        assert_eq!(
            j.apply(Side::Right, &right("- F1 100"))
                .unwrap()
                .to_pretty(),
            "- 1 F1 10 F1 100\n"
        );
        assert_eq!(
            j.apply(Side::Right, &right("- F1 50")).unwrap().to_pretty(),
            "- 1 F1 10 F1 50\n+ 1 F1 10 . .\n"
        );
        assert_eq!(
            j.apply(Side::Left, &left("- 1 F1 10")).unwrap().to_pretty(),
            "- 1 F1 10 . .\n"
        );
        // unmatched right rows are not emitted by a left join
        assert!(j.apply(Side::Right, &right("+ F9 1")).unwrap().is_empty());
    }

    #[test]
    fn full_join_and_null_keys() {
        let mut j = join(JoinType::Full);
        assert_eq!(
            j.apply(Side::Right, &right("+ F1 100"))
                .unwrap()
                .to_pretty(),
            "+ . . . F1 100\n"
        );
        assert_eq!(
            j.apply(Side::Left, &left("+ 1 F1 10")).unwrap().to_pretty(),
            "- . . . F1 100\n+ 1 F1 10 F1 100\n"
        );
        // NULL keys never match, on either side
        assert_eq!(
            j.apply(Side::Left, &left("+ 2 . 1")).unwrap().to_pretty(),
            "+ 2 . 1 . .\n"
        );
        assert_eq!(
            j.apply(Side::Right, &right("+ . 7")).unwrap().to_pretty(),
            "+ . . . . 7\n"
        );
        assert_eq!(
            j.apply(Side::Left, &left("- 1 F1 10")).unwrap().to_pretty(),
            "- 1 F1 10 F1 100\n+ . . . F1 100\n"
        );
    }

    #[test]
    fn extra_condition_filters_pairs() {
        // ... ON feeder = name AND kw > max_kw
        let schema = output();
        let df = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let cond = create_physical_expr(
            &col("kw").gt(col("max_kw")),
            &df,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        let mut j = HashJoin::try_new(JoinType::Left, vec![1], vec![0], (3, 2), Some(cond), schema)
            .unwrap();
        j.apply(Side::Right, &right("+ F1 20")).unwrap();
        assert_eq!(
            j.apply(Side::Left, &left("+ 1 F1 10")).unwrap().to_pretty(),
            "+ 1 F1 10 . .\n"
        );
        assert_eq!(
            j.apply(Side::Left, &left("+ 2 F1 30")).unwrap().to_pretty(),
            "+ 2 F1 30 F1 20\n"
        );
    }

    #[test]
    fn deleting_an_unknown_row_is_an_error() {
        let mut j = join(JoinType::Inner);
        assert!(j.apply(Side::Left, &left("- 1 F1 10")).is_err());
    }
}
