//! Temporal filters: `WHERE ts > now() - INTERVAL '1 hour'` (a lower bound: rows leave as
//! time passes), `WHERE ts < now() + INTERVAL '5' MINUTE` (an upper bound: rows enter as
//! time passes), or both, maintained continuously.
//!
//! A row is visible while `ts > now + lower` (or `>=`) and `ts < now + upper` (or `<=`).
//! `now` is the runtime's clock ([`crate::clock`]), read once per epoch.
//!
//! State, in two ordered tables keyed by `encode(ts) ++ encode(row)` (a multiset: the
//! count is kept), so each epoch reads only the rows that change:
//! - `active`: visible rows, kept only with a lower bound, to be deleted when they expire;
//! - `pending`: rows not yet visible (an upper bound), to be inserted when they enter.
//!
//! A row already too old when it arrives (below the lower bound) is dropped: time only
//! grows, so it could never become visible, and no state is kept for it. State is dropped
//! as rows expire, so a view of "the last hour" holds an hour of rows.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;
use crate::state::{StateAlloc, StateTable};

/// One side of a temporal filter: `ts > now + offset` (lower; `>=` when `inclusive`) or
/// `ts < now + offset` (upper; `<=` when `inclusive`), offsets in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    pub offset: i64,
    pub inclusive: bool,
}

/// A state entry: its key suffix, its count and its row.
type Entry = (Vec<u8>, i64, Vec<ScalarValue>);

#[derive(Debug)]
pub struct TemporalFilter {
    column: usize,
    lower: Option<Bound>,
    upper: Option<Bound>,
    schema: SchemaRef,
    types: Vec<datafusion::arrow::datatypes::DataType>,
    active: StateTable,
    pending: StateTable,
    now: i64,
}

use crate::clock::micros_of as micros;

impl TemporalFilter {
    pub fn try_new(
        schema: SchemaRef,
        column: usize,
        lower: Option<Bound>,
        upper: Option<Bound>,
        state: &mut StateAlloc,
    ) -> Result<Self> {
        if column >= schema.fields().len() || (lower.is_none() && upper.is_none()) {
            return Err(EngineError::Internal(
                "temporal filter without a bound".into(),
            ));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(TemporalFilter {
            column,
            lower,
            upper,
            schema,
            types,
            active: state.ordered_table(),
            pending: state.ordered_table(),
            now: crate::clock::now_micros(),
        })
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        vec![&mut self.active, &mut self.pending]
    }

    /// Sets the time this epoch runs at.
    pub fn set_now(&mut self, now: i64) {
        self.now = now;
    }

    fn above_lower(&self, t: i64) -> bool {
        self.lower.is_none_or(|b| {
            let bound = self.now.saturating_add(b.offset);
            if b.inclusive {
                t >= bound
            } else {
                t > bound
            }
        })
    }

    fn below_upper(&self, t: i64) -> bool {
        self.upper.is_none_or(|b| {
            let bound = self.now.saturating_add(b.offset);
            if b.inclusive {
                t <= bound
            } else {
                t < bound
            }
        })
    }

    /// State key: the time (memcomparable), then the row's value encoding (any column
    /// type; equal rows share an entry).
    fn suffix(&self, t: &ScalarValue, row: &[ScalarValue]) -> Result<Vec<u8>> {
        let mut s = Vec::new();
        keys::encode_key_datum(t, &mut s)?;
        s.extend(row::encode_row(row)?);
        Ok(s)
    }

    /// Filters a chunk at the current time, keeping the state of rows that may change
    /// visibility later; returns the visible changes.
    pub fn apply(&mut self, chunk: &StreamChunk) -> Result<Vec<(Op, Vec<ScalarValue>)>> {
        let mut out = Vec::new();
        for (op, row) in chunk.rows()? {
            let tv = row[self.column].clone();
            let Some(t) = micros(&tv) else {
                continue; // NULL time: the comparison is never true
            };
            let suffix = self.suffix(&tv, &row)?;
            let sign = op.sign();
            if !self.above_lower(t) {
                // Too old: never visible again. A delete of a row that was visible was
                // already emitted when it expired.
                continue;
            }
            if !self.below_upper(t) {
                self.pending
                    .multiset_add(&[], &suffix, sign, || row::encode_row(&row))?;
                continue;
            }
            if self.lower.is_some() {
                self.active
                    .multiset_add(&[], &suffix, sign, || row::encode_row(&row))?;
            }
            out.push((if sign > 0 { Op::Insert } else { Op::Delete }, row));
        }
        Ok(out)
    }

    /// What time passing does: pending rows that entered are inserted, visible rows that
    /// expired are deleted.
    pub fn tick(&mut self) -> Result<Vec<(Op, Vec<ScalarValue>)>> {
        let mut out = Vec::new();
        if self.upper.is_some() {
            for (suffix, count, row) in self.take_while(true)? {
                self.pending.delete(&[], &suffix)?;
                let t = micros(&row[self.column]).unwrap_or(i64::MIN);
                if !self.above_lower(t) {
                    continue; // entered and expired between two epochs
                }
                if self.lower.is_some() {
                    self.active
                        .multiset_add(&[], &suffix, count, || row::encode_row(&row))?;
                }
                for _ in 0..count {
                    out.push((Op::Insert, row.clone()));
                }
            }
        }
        if self.lower.is_some() {
            for (suffix, count, row) in self.take_while(false)? {
                self.active.delete(&[], &suffix)?;
                for _ in 0..count {
                    out.push((Op::Delete, row.clone()));
                }
            }
        }
        Ok(out)
    }

    /// The earliest clock time at which `tick` would change something (a pending row
    /// enters, a visible one expires); None when nothing is held.
    pub fn next_deadline(&mut self) -> Result<Option<i64>> {
        let mut deadline: Option<i64> = None;
        let first_time = |table: &mut StateTable,
                          types: &[datafusion::arrow::datatypes::DataType],
                          column: usize|
         -> Result<Option<i64>> {
            let mut t = None;
            table.scan_ordered(&[], false, |_, value| {
                if let Ok(r) = row::decode_row(&value[8..], types) {
                    t = micros(&r[column]);
                }
                Ok(false)
            })?;
            Ok(t)
        };
        let types = self.types.clone();
        if let Some(b) = self.upper {
            // Enters once `t < now + offset` (or `<=`).
            if let Some(t) = first_time(&mut self.pending, &types, self.column)? {
                let d = t
                    .saturating_sub(b.offset)
                    .saturating_add(i64::from(!b.inclusive));
                deadline = Some(deadline.map_or(d, |x: i64| x.min(d)));
            }
        }
        if let Some(b) = self.lower {
            // Leaves once `t <= now + offset` (or `<`).
            if let Some(t) = first_time(&mut self.active, &types, self.column)? {
                let d = t
                    .saturating_sub(b.offset)
                    .saturating_add(i64::from(b.inclusive));
                deadline = Some(deadline.map_or(d, |x: i64| x.min(d)));
            }
        }
        Ok(deadline)
    }

    /// The first entries of `pending` (which are now below the upper bound) or of
    /// `active` (which are now at or below the lower bound), in time order.
    fn take_while(&mut self, pending: bool) -> Result<Vec<Entry>> {
        let mut found = Vec::new();
        let types = self.types.clone();
        let column = self.column;
        let (lower, upper, now) = (self.lower, self.upper, self.now);
        let table = if pending {
            &mut self.pending
        } else {
            &mut self.active
        };
        let mut error = None;
        table.scan_ordered(&[], false, |suffix, value| {
            let count = crate::state::multiset_count(value)?;
            let row = match row::decode_row(&value[8..], &types) {
                Ok(r) => r,
                Err(reason) => {
                    error = Some(reason);
                    return Ok(false);
                }
            };
            let t = micros(&row[column]).unwrap_or(i64::MIN);
            let take = if pending {
                upper.is_none_or(|b| {
                    let bound = now.saturating_add(b.offset);
                    if b.inclusive {
                        t <= bound
                    } else {
                        t < bound
                    }
                })
            } else {
                lower.is_some_and(|b| {
                    let bound = now.saturating_add(b.offset);
                    if b.inclusive {
                        t < bound
                    } else {
                        t <= bound
                    }
                })
            };
            if !take {
                return Ok(false);
            }
            found.push((suffix.to_vec(), count, row));
            Ok(true)
        })?;
        if let Some(reason) = error {
            return Err(EngineError::Corrupt {
                table: "temporal filter state".into(),
                reason,
            });
        }
        Ok(found)
    }

    /// Runs one epoch: time passing first (so every row is in the state its time says
    /// at this epoch's clock), then the chunks; the output chunk.
    pub fn run(&mut self, chunks: &[StreamChunk]) -> Result<Option<StreamChunk>> {
        let mut out = self.tick()?;
        for c in chunks {
            out.extend(self.apply(c)?);
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(StreamChunk::from_rows(&self.schema, &out)?))
    }

    /// Whether a value of the filtered column is a type it understands.
    pub fn supports(t: &datafusion::arrow::datatypes::DataType) -> bool {
        use datafusion::arrow::datatypes::DataType;
        matches!(
            t,
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, _)
                | DataType::Date32
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::temp_alloc;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]))
    }

    fn row(id: i64, ts: i64) -> Vec<ScalarValue> {
        vec![
            ScalarValue::Int64(Some(id)),
            ScalarValue::TimestampMicrosecond(Some(ts), Some("UTC".into())),
        ]
    }

    fn chunk(rows: &[(Op, Vec<ScalarValue>)]) -> StreamChunk {
        StreamChunk::from_rows(&schema(), rows).unwrap()
    }

    fn ids(out: &Option<StreamChunk>) -> Vec<(String, i64)> {
        let Some(c) = out else { return vec![] };
        c.rows()
            .unwrap()
            .into_iter()
            .map(|(op, r)| match &r[0] {
                ScalarValue::Int64(Some(i)) => (op.symbol().to_string(), *i),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn rows_expire_as_time_passes_and_state_goes_with_them() {
        let (_dir, mut alloc) = temp_alloc();
        // ts > now - 100
        let lower = Some(Bound {
            offset: -100,
            inclusive: false,
        });
        let mut f = TemporalFilter::try_new(schema(), 1, lower, None, &mut alloc).unwrap();
        f.set_now(1_000);
        let out = f
            .run(&[chunk(&[
                (Op::Insert, row(1, 950)),
                (Op::Insert, row(2, 850)), // too old already: dropped
                (Op::Insert, row(3, 990)),
            ])])
            .unwrap();
        assert_eq!(ids(&out), vec![("+".into(), 1), ("+".into(), 3)]);
        f.set_now(1_060); // bound 960: row 1 (950) expires
        assert_eq!(ids(&f.run(&[]).unwrap()), vec![("-".into(), 1)]);
        // A delete of an expired row emits nothing; of a visible one, a delete.
        let out = f
            .run(&[chunk(&[
                (Op::Delete, row(1, 950)),
                (Op::Delete, row(3, 990)),
            ])])
            .unwrap();
        assert_eq!(ids(&out), vec![("-".into(), 3)]);
        let mut left = 0;
        f.active
            .scan_ordered(&[], false, |_, _| {
                left += 1;
                Ok(true)
            })
            .unwrap();
        assert_eq!(left, 0, "expired and deleted rows leave no state");
    }

    #[test]
    fn future_rows_enter_when_their_time_comes() {
        let (_dir, mut alloc) = temp_alloc();
        // now - 100 < ts <= now
        let lower = Some(Bound {
            offset: -100,
            inclusive: false,
        });
        let upper = Some(Bound {
            offset: 0,
            inclusive: true,
        });
        let mut f = TemporalFilter::try_new(schema(), 1, lower, upper, &mut alloc).unwrap();
        f.set_now(1_000);
        let out = f
            .run(&[chunk(&[
                (Op::Insert, row(1, 1_050)),
                (Op::Insert, row(2, 1_000)),
            ])])
            .unwrap();
        assert_eq!(ids(&out), vec![("+".into(), 2)]);
        f.set_now(1_050);
        assert_eq!(ids(&f.run(&[]).unwrap()), vec![("+".into(), 1)]);
        f.set_now(1_120); // bound 1020: row 2 (1000) expires, row 1 stays
        assert_eq!(ids(&f.run(&[]).unwrap()), vec![("-".into(), 2)]);
        // Entered and expired between two epochs: never shown.
        f.run(&[chunk(&[(Op::Insert, row(3, 2_000))])]).unwrap();
        f.set_now(5_000);
        assert_eq!(ids(&f.run(&[]).unwrap()), vec![("-".into(), 1)]);
    }
}
