//! Hash aggregation with retraction: `GROUP BY` and global (no `GROUP BY`) aggregates.
//!
//! What happens to each op: an inserted row (`+`, `U+`) is added to its group's state, a
//! deleted row (`-`, `U-`) is removed from it; ops only change state. [`HashAgg::flush`]
//! (called at a barrier) then emits, for every group touched since the last flush:
//! `+ row` for a new group, `- old` for a group whose last row left, `U- old`/`U+ new` for a
//! changed result, and nothing when the result did not change.
//!
//! State per group: the row count, and per aggregate: a count (`count`), a sum and a count
//! of non-NULL inputs (`sum`, `avg`), or a multiset of the input values (`min`, `max`), so
//! that deleting the current extreme falls back to the next one instead of recomputing.
//! A global aggregate has exactly one group, which always exists: it is emitted at the
//! first flush even over empty input (`count = 0`, `sum = NULL`).
//!
//! `FILTER (WHERE ...)` is a boolean input column per aggregate: rows where it is not true
//! do not reach that aggregate.

use std::collections::{BTreeMap, HashMap, HashSet};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// One aggregate call: its kind, input column, optional FILTER column, output type.
#[derive(Debug, Clone)]
pub struct AggCall {
    pub kind: AggKind,
    pub arg: Option<usize>,
    pub filter: Option<usize>,
    pub output_type: DataType,
}

/// A scalar with a total order, for the min/max multisets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ordered(ScalarValue);

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

#[derive(Debug, Clone)]
enum AggState {
    Count(i64),
    /// Running sum (None until a non-NULL value arrives) and the count of non-NULL values.
    Sum {
        sum: Option<ScalarValue>,
        count: i64,
    },
    Extreme(BTreeMap<Ordered, i64>),
}

#[derive(Debug, Clone)]
struct Group {
    rows: i64,
    states: Vec<AggState>,
}

type GroupKey = Vec<ScalarValue>;

#[derive(Debug)]
pub struct HashAgg {
    group_keys: Vec<usize>,
    calls: Vec<AggCall>,
    output: SchemaRef,
    groups: HashMap<GroupKey, Group>,
    /// Result rows as last emitted, by group.
    emitted: HashMap<GroupKey, Vec<ScalarValue>>,
    dirty: Vec<GroupKey>,
    dirty_set: HashSet<GroupKey>,
    flushed_once: bool,
}

impl HashAgg {
    /// `output` is the group key columns followed by one column per call.
    pub fn try_new(group_keys: Vec<usize>, calls: Vec<AggCall>, output: SchemaRef) -> Result<Self> {
        if output.fields().len() != group_keys.len() + calls.len() {
            return Err(EngineError::Internal(
                "hash agg output schema does not match keys and calls".into(),
            ));
        }
        for c in &calls {
            if c.kind != AggKind::CountStar && c.arg.is_none() {
                return Err(EngineError::Internal(format!(
                    "{:?} needs an argument",
                    c.kind
                )));
            }
        }
        Ok(HashAgg {
            group_keys,
            calls,
            output,
            groups: HashMap::new(),
            emitted: HashMap::new(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            flushed_once: false,
        })
    }

    fn is_global(&self) -> bool {
        self.group_keys.is_empty()
    }

    fn empty_group(&self) -> Group {
        Group {
            rows: 0,
            states: self
                .calls
                .iter()
                .map(|c| match c.kind {
                    AggKind::CountStar | AggKind::Count => AggState::Count(0),
                    AggKind::Sum | AggKind::Avg => AggState::Sum {
                        sum: None,
                        count: 0,
                    },
                    AggKind::Min | AggKind::Max => AggState::Extreme(BTreeMap::new()),
                })
                .collect(),
        }
    }

    /// Folds a chunk into the group states.
    pub fn apply(&mut self, chunk: &StreamChunk) -> Result<()> {
        for (op, row) in chunk.rows()? {
            let key: GroupKey = self.group_keys.iter().map(|&k| row[k].clone()).collect();
            let sign = op.sign();
            if !self.groups.contains_key(&key) {
                let g = self.empty_group();
                self.groups.insert(key.clone(), g);
            }
            let group = self
                .groups
                .get_mut(&key)
                .expect("invariant: group inserted above");
            group.rows += sign;
            if group.rows < 0 {
                return Err(EngineError::Internal(
                    "hash agg: a group lost more rows than it had".into(),
                ));
            }
            for (call, state) in self.calls.iter().zip(group.states.iter_mut()) {
                if let Some(f) = call.filter {
                    if !matches!(row[f], ScalarValue::Boolean(Some(true))) {
                        continue;
                    }
                }
                let arg = call.arg.map(|a| &row[a]);
                update(call.kind, state, arg, sign)?;
            }
            if self.dirty_set.insert(key.clone()) {
                self.dirty.push(key);
            }
        }
        Ok(())
    }

    /// The changes to the aggregate's output since the last flush.
    pub fn flush(&mut self) -> Result<StreamChunk> {
        let mut out: Vec<(Op, Vec<ScalarValue>)> = Vec::new();
        if self.is_global() && !self.flushed_once && !self.groups.contains_key(&Vec::new()) {
            // The one row of a global aggregate exists before any input does.
            let g = self.empty_group();
            self.groups.insert(Vec::new(), g);
            self.dirty_set.insert(Vec::new());
            self.dirty.push(Vec::new());
        }
        self.flushed_once = true;
        for key in std::mem::take(&mut self.dirty) {
            self.dirty_set.remove(&key);
            let group = self
                .groups
                .get(&key)
                .expect("invariant: dirty groups exist");
            let new_row = if group.rows == 0 && !self.is_global() {
                None
            } else {
                let mut row = key.clone();
                for (call, state) in self.calls.iter().zip(&group.states) {
                    row.push(result(call, state)?);
                }
                Some(row)
            };
            if group.rows == 0 && !self.is_global() {
                self.groups.remove(&key);
            }
            match (self.emitted.remove(&key), new_row) {
                (None, Some(new)) => {
                    out.push((Op::Insert, new.clone()));
                    self.emitted.insert(key, new);
                }
                (Some(old), None) => out.push((Op::Delete, old)),
                (Some(old), Some(new)) => {
                    if old != new {
                        out.push((Op::UpdateDelete, old));
                        out.push((Op::UpdateInsert, new.clone()));
                    }
                    self.emitted.insert(key, new);
                }
                (None, None) => {}
            }
        }
        StreamChunk::from_rows(&self.output, &out)
    }
}

fn update(kind: AggKind, state: &mut AggState, arg: Option<&ScalarValue>, sign: i64) -> Result<()> {
    match (kind, state) {
        (AggKind::CountStar, AggState::Count(n)) => *n += sign,
        (AggKind::Count, AggState::Count(n)) => {
            if arg.is_some_and(|v| !v.is_null()) {
                *n += sign
            }
        }
        (AggKind::Sum | AggKind::Avg, AggState::Sum { sum, count }) => {
            let Some(v) = arg.filter(|v| !v.is_null()) else {
                return Ok(());
            };
            let v = widen(v)?;
            *count += sign;
            *sum = Some(match (sum.take(), sign > 0) {
                (None, true) => v,
                (None, false) => v.arithmetic_negate()?,
                (Some(s), true) => s.add_checked(&v)?,
                (Some(s), false) => s.sub_checked(&v)?,
            });
            if *count == 0 {
                *sum = None;
            }
        }
        (AggKind::Min | AggKind::Max, AggState::Extreme(values)) => {
            let Some(v) = arg.filter(|v| !v.is_null()) else {
                return Ok(());
            };
            let entry = values.entry(Ordered(v.clone())).or_insert(0);
            *entry += sign;
            if *entry == 0 {
                values.remove(&Ordered(v.clone()));
            } else if *entry < 0 {
                return Err(EngineError::Internal(
                    "min/max: a value was deleted more often than inserted".into(),
                ));
            }
        }
        (kind, _) => {
            return Err(EngineError::Internal(format!(
                "state mismatch for {kind:?}"
            )))
        }
    }
    Ok(())
}

/// Sums accumulate in the widest type of their family, as DataFusion's `sum` does.
fn widen(v: &ScalarValue) -> Result<ScalarValue> {
    Ok(match v {
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_) => v.cast_to(&DataType::Int64)?,
        ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_) => v.cast_to(&DataType::UInt64)?,
        ScalarValue::Float16(_) | ScalarValue::Float32(_) | ScalarValue::Float64(_) => {
            v.cast_to(&DataType::Float64)?
        }
        ScalarValue::Decimal128(x, _, s) => ScalarValue::Decimal128(*x, 38, *s),
        other => other.clone(),
    })
}

fn result(call: &AggCall, state: &AggState) -> Result<ScalarValue> {
    let out = &call.output_type;
    let v = match (call.kind, state) {
        (AggKind::CountStar | AggKind::Count, AggState::Count(n)) => ScalarValue::Int64(Some(*n)),
        (AggKind::Sum, AggState::Sum { sum, .. }) => match sum {
            Some(s) => s.clone(),
            None => ScalarValue::try_from(out)?,
        },
        (AggKind::Avg, AggState::Sum { sum, count }) => match sum {
            None => ScalarValue::try_from(out)?,
            Some(ScalarValue::Decimal128(Some(s), _, scale)) => match out {
                DataType::Decimal128(_, out_scale) => {
                    let factor = 10i128.pow((*out_scale - *scale).max(0) as u32);
                    let num = s * factor;
                    let c = *count as i128;
                    // round half away from zero
                    let q = (num * 2 + num.signum() * c) / (2 * c);
                    ScalarValue::Decimal128(Some(q), 38, *out_scale)
                }
                _ => ScalarValue::Float64(Some(
                    *s as f64 / 10f64.powi(*scale as i32) / *count as f64,
                )),
            },
            Some(s) => {
                let f = match s.cast_to(&DataType::Float64)? {
                    ScalarValue::Float64(Some(f)) => f,
                    _ => return Err(EngineError::Internal("avg of a non-numeric sum".into())),
                };
                ScalarValue::Float64(Some(f / *count as f64))
            }
        },
        (AggKind::Min, AggState::Extreme(values)) => match values.keys().next() {
            Some(v) => v.0.clone(),
            None => ScalarValue::try_from(out)?,
        },
        (AggKind::Max, AggState::Extreme(values)) => match values.keys().next_back() {
            Some(v) => v.0.clone(),
            None => ScalarValue::try_from(out)?,
        },
        (kind, _) => {
            return Err(EngineError::Internal(format!(
                "state mismatch for {kind:?}"
            )))
        }
    };
    if &v.data_type() == out {
        Ok(v)
    } else {
        Ok(v.cast_to(out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn schema(types: &[DataType]) -> SchemaRef {
        Arc::new(Schema::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("o{i}"), t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn call(kind: AggKind, arg: Option<usize>, out: DataType) -> AggCall {
        AggCall {
            kind,
            arg,
            filter: None,
            output_type: out,
        }
    }

    /// `SELECT feeder, count(*), sum(kw), max(kw), min(kw) GROUP BY feeder` over (id, feeder, kw).
    fn feeder_load() -> HashAgg {
        HashAgg::try_new(
            vec![1],
            vec![
                call(AggKind::CountStar, None, DataType::Int64),
                call(AggKind::Sum, Some(2), DataType::Float64),
                call(AggKind::Max, Some(2), DataType::Float64),
                call(AggKind::Min, Some(2), DataType::Float64),
            ],
            schema(&[
                DataType::Utf8,
                DataType::Int64,
                DataType::Float64,
                DataType::Float64,
                DataType::Float64,
            ]),
        )
        .unwrap()
    }

    #[test]
    fn max_falls_back_when_the_extreme_is_updated_away() {
        let mut agg = feeder_load();
        agg.apply(&StreamChunk::from_pretty(
            "  I T F
             + 1 F1 10
             + 2 F1 30",
        ))
        .unwrap();
        assert_eq!(agg.flush().unwrap().to_pretty(), "+ F1 2 40 30 10\n");
        // UPDATE reading SET kw = 5 WHERE id = 2
        agg.apply(&StreamChunk::from_pretty(
            "   I T F
             U- 2 F1 30
             U+ 2 F1 5",
        ))
        .unwrap();
        assert_eq!(
            agg.flush().unwrap().to_pretty(),
            "U- F1 2 40 30 10\nU+ F1 2 15 10 5\n"
        );
        // DELETE FROM reading WHERE id = 1
        agg.apply(&StreamChunk::from_pretty("I T F\n - 1 F1 10"))
            .unwrap();
        assert_eq!(
            agg.flush().unwrap().to_pretty(),
            "U- F1 2 15 10 5\nU+ F1 1 5 5 5\n"
        );
        // the last row leaves: the group disappears
        agg.apply(&StreamChunk::from_pretty("I T F\n - 2 F1 5"))
            .unwrap();
        assert_eq!(agg.flush().unwrap().to_pretty(), "- F1 1 5 5 5\n");
        assert!(agg.groups.is_empty());
    }

    #[test]
    fn changes_that_cancel_within_an_epoch_emit_nothing() {
        let mut agg = feeder_load();
        agg.apply(&StreamChunk::from_pretty("I T F\n + 1 F1 10"))
            .unwrap();
        agg.flush().unwrap();
        agg.apply(&StreamChunk::from_pretty(
            "  I T F
             + 2 F1 7
             - 2 F1 7",
        ))
        .unwrap();
        assert!(agg.flush().unwrap().is_empty());
        // a group born and gone within one epoch is never emitted
        agg.apply(&StreamChunk::from_pretty("I T F\n + 3 F9 1\n - 3 F9 1"))
            .unwrap();
        assert!(agg.flush().unwrap().is_empty());
    }

    #[test]
    fn global_aggregate_has_one_row_even_over_empty_input() {
        let mut agg = HashAgg::try_new(
            vec![],
            vec![
                call(AggKind::CountStar, None, DataType::Int64),
                call(AggKind::Sum, Some(0), DataType::Int64),
                call(AggKind::Avg, Some(0), DataType::Float64),
                call(AggKind::Count, Some(1), DataType::Int64),
            ],
            schema(&[
                DataType::Int64,
                DataType::Int64,
                DataType::Float64,
                DataType::Int64,
            ]),
        )
        .unwrap();
        assert_eq!(agg.flush().unwrap().to_pretty(), "+ 0 . . 0\n");
        agg.apply(&StreamChunk::from_pretty("I T\n + 4 a\n + 2 ."))
            .unwrap();
        assert_eq!(agg.flush().unwrap().to_pretty(), "U- 0 . . 0\nU+ 2 6 3 1\n");
        agg.apply(&StreamChunk::from_pretty("I T\n - 4 a\n - 2 ."))
            .unwrap();
        assert_eq!(agg.flush().unwrap().to_pretty(), "U- 2 6 3 1\nU+ 0 . . 0\n");
    }

    #[test]
    fn filter_columns_gate_each_aggregate() {
        // count(*) FILTER (WHERE c1), count(*)
        let mut agg = HashAgg::try_new(
            vec![],
            vec![
                AggCall {
                    kind: AggKind::CountStar,
                    arg: None,
                    filter: Some(1),
                    output_type: DataType::Int64,
                },
                call(AggKind::CountStar, None, DataType::Int64),
            ],
            schema(&[DataType::Int64, DataType::Int64]),
        )
        .unwrap();
        agg.apply(&StreamChunk::from_pretty(
            "I B\n + 1 true\n + 2 false\n + 3 .",
        ))
        .unwrap();
        assert_eq!(agg.flush().unwrap().to_pretty(), "+ 1 3\n");
    }

    #[test]
    fn deleting_more_than_was_inserted_is_an_error_not_a_panic() {
        let mut agg = feeder_load();
        assert!(agg
            .apply(&StreamChunk::from_pretty("I T F\n - 1 F1 10"))
            .is_err());
    }
}
