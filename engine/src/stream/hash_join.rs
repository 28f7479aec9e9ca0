//! Equi-joins with retraction: inner, left, right and full outer, left semi and left anti,
//! with an optional extra (non-equi) condition on the joined row.
//!
//! State: per side, a [`StateTable`] of its rows bucketed by join key (prefix: the
//! memcomparable join key; suffix: the encoded row, so equal rows share one entry, or,
//! for a side whose input has a unique key, that key; see [`KEYED_HEADER`]), each with
//! its multiplicity and its *degree*, the number of rows of the other side it
//! currently joins with. The degree is what outer joins need: a preserved row with degree
//! 0 appears once per copy, padded with NULLs. It is kept for preserved sides and for a
//! semi or anti join's left side only (0 is stored otherwise), so probing an inner join
//! never rewrites the other side's state.
//!
//! What happens to each op of side S (the other side is O):
//! - insert `r`: for every O row `o` matching `r`, emit `+ (r, o)`; if `o` is preserved and
//!   had degree 0, first emit `- (NULLs, o)`, its padded row. If nothing matches and S is
//!   preserved, emit `+ (r, NULLs)`. Store `r` with its degree.
//! - delete `r`: the mirror image (`- (r, o)`, and `+ (NULLs, o)` when `o`'s degree drops
//!   to 0; `- (r, NULLs)` if `r` matched nothing).
//!
//! A semi join emits a left row while its degree is above 0, an anti join while it is 0;
//! their output is the left columns only, and the left degree is kept for them.
//!
//! Updates are handled as a delete then an insert. A NULL in a key column matches nothing
//! (unless the keys are compared with `IS NOT DISTINCT FROM`), so such rows are not
//! stored: a preserved one is passed through padded, an anti join's passes as it is. A
//! join without keys (a cross join; the planner allows it only next to an input of at
//! most one row) keeps each side in one bucket. Output is
//! emitted as rows arrive; a join keeps no per-epoch buffer, so a barrier has nothing to
//! flush. Within an epoch the runtime applies all left changes, then all right changes,
//! which computes `ΔL ⋈ R_old + L_new ⋈ ΔR`, the change of the join.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::{HashMap, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;
use crate::state::{Charge, StateAlloc, StateTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
    LeftAnti,
}

impl JoinType {
    /// Whether the output is the left columns only.
    pub fn left_only(self) -> bool {
        matches!(self, JoinType::LeftSemi | JoinType::LeftAnti)
    }
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

const COUNTS: [DataType; 2] = [DataType::Int64, DataType::Int64];

#[derive(Debug)]
pub struct HashJoin {
    /// Per side: how its rows are dropped once the other side's watermark makes them
    /// unmatchable (interval joins), with the index of its rows by time.
    cleaning: [Option<Cleaning>; 2],
    join_type: JoinType,
    keys: [Vec<usize>; 2],
    types: [Vec<DataType>; 2],
    /// Evaluated over `left ++ right` rows (of schema `pair`).
    condition: Option<Arc<dyn PhysicalExpr>>,
    pair: SchemaRef,
    output: SchemaRef,
    /// NULL keys match each other (`IS NOT DISTINCT FROM`).
    null_equal: bool,
    /// Per side: the columns of a unique key of its rows, when its rows are stored by
    /// that key (see [`KEYED_HEADER`]).
    by_key: [Option<Vec<usize>>; 2],
    state: [StateTable; 2],
}

/// How a side's rows are stored in its state table, under `join key ++ suffix`:
/// - by row (no unique key, or views of state version 4 and before): the suffix is the
///   encoded row, so equal rows share an entry; the value is `(count, degree)` as an
///   encoded row ([`counts`]);
/// - by key (state version 5 on, for a side whose input has a unique key): the suffix is
///   the memcomparable unique key, the value [`KEYED_HEADER`] bytes of count and degree
///   (i64 LE each) followed by the encoded row. An update (a delete and an insert of one
///   key, adjacent in a chunk) rewrites one entry in place, where by row it deletes one
///   and inserts another, and its time-index entry stays (unless the cleaning column's
///   value changed).
const KEYED_HEADER: usize = 16;

/// A keyed entry's value: count, degree, then the encoded row.
fn keyed_value(count: i64, degree: i64, row: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(KEYED_HEADER + row.len());
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(&degree.to_le_bytes());
    v.extend_from_slice(row);
    v
}

/// A keyed entry's count and degree, and its encoded row.
fn keyed_parts(value: &[u8]) -> Result<(i64, i64, &[u8])> {
    if value.len() < KEYED_HEADER {
        return Err(corrupt("a keyed join entry is truncated".into()));
    }
    let int = |at: usize| i64::from_le_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    Ok((int(0), int(8), &value[KEYED_HEADER..]))
}

/// An interval join's state cleaning for one side (S; the other side is O), from a
/// condition `O.other_column <= S.column + offset` (or `<`): an S row with
/// `column < watermark(O.other_column) - offset` can match no future O row (those have
/// `other_column >= watermark`), so it is dropped. Only for inner and semi joins, against
/// a side whose watermarks bound its deletes too; a side that may retract rows itself is
/// dropped from only past its own watermark as well (`own_bound`). The planner checks
/// (`PlanNode::choose_state_layout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoinCleaning {
    pub column: usize,
    pub other_column: usize,
    /// Microseconds.
    pub offset: i64,
    /// The time index is kept in memory, per worker (state version 2 on), instead of in a
    /// state table.
    pub in_memory: bool,
    /// The side may retract rows (its watermarks bound its changes): a row is dropped only
    /// once its own side's watermark on `column` has passed it too, so that it can no
    /// longer be deleted.
    pub own_bound: bool,
    /// Derived from an equality of time columns in the join key (state version 2 on),
    /// not from the join's condition.
    pub from_keys: bool,
}

/// A side's cleaning and its index of rows by time. Keys are `encode(time) ++ key ++
/// suffix` (the row's state entry: its join key and its row, or its unique key), values
/// `[time len][key len]` (u32 BE each).
#[derive(Debug)]
struct Cleaning {
    cfg: JoinCleaning,
    index: TimeIndex,
    worker: usize,
    workers: usize,
}

/// The time and key lengths at the start of a time-index key.
type IndexLens = (u32, u32);

#[derive(Debug)]
enum TimeIndex {
    /// Views of state version 0 and 1: an ordered state table, one bucket shared by the
    /// workers (each drops only the rows it owns), written and deleted with every row.
    Stored(StateTable),
    /// In memory, this worker's rows only: no store writes. It is derived from the side's
    /// rows, so after a start it is rebuilt from them (`loaded`) before the first
    /// cleaning. It holds one entry per row that can still match, and cannot be evicted:
    /// its `bytes` are charged to the state budget, so that the evictable caches shrink
    /// instead. (A watermark of the other side that stops, an idle partition without
    /// `idle_timeout`, lets it grow with the side's rows.)
    Memory {
        entries: BTreeMap<Vec<u8>, IndexLens>,
        loaded: bool,
        bytes: Charge,
    },
}

/// The bytes an in-memory time index entry is charged.
fn index_entry_bytes(key: &[u8]) -> usize {
    key.len() + crate::state::ENTRY_OVERHEAD
}

fn idx(side: Side) -> usize {
    match side {
        Side::Left => 0,
        Side::Right => 1,
    }
}

fn counts(count: i64, degree: i64) -> Result<Vec<u8>> {
    row::encode_row(&[
        ScalarValue::Int64(Some(count)),
        ScalarValue::Int64(Some(degree)),
    ])
}

fn corrupt(reason: String) -> EngineError {
    EngineError::Corrupt {
        table: "join state".into(),
        reason,
    }
}

impl HashJoin {
    /// The watermarks of the output columns, given the inputs'. Only an inner join's key
    /// columns carry one: a new row on either side can still join old rows of the other,
    /// so an output key column is bounded only by both sides' key watermarks (the
    /// smaller), which the equality makes equal.
    pub fn output_watermarks(
        &self,
        left: &[Option<ScalarValue>],
        right: &[Option<ScalarValue>],
    ) -> Vec<Option<ScalarValue>> {
        let width = self.output.fields().len();
        let mut out = vec![None; width];
        if self.join_type != JoinType::Inner {
            return out;
        }
        for (&l, &r) in self.keys[0].iter().zip(&self.keys[1]) {
            if let (Some(Some(a)), Some(Some(b))) = (left.get(l), right.get(r)) {
                let min = if b.partial_cmp(a) == Some(std::cmp::Ordering::Less) {
                    b.clone()
                } else {
                    a.clone()
                };
                if l < width {
                    out[l] = Some(min.clone());
                }
                if left.len() + r < width {
                    out[left.len() + r] = Some(min);
                }
            }
        }
        out
    }

    /// Joins rows of schema `left` and `right` on `left_keys` = `right_keys` (none: a
    /// cross join). The output is `left ++ right` (all nullable), or `left` for semi and
    /// anti joins.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        join_type: JoinType,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        left: &SchemaRef,
        right: &SchemaRef,
        condition: Option<Arc<dyn PhysicalExpr>>,
        null_equal: bool,
        cleaning: [Option<JoinCleaning>; 2],
        by_key: [Option<Vec<usize>>; 2],
        state: &mut StateAlloc,
    ) -> Result<Self> {
        if left_keys.len() != right_keys.len() {
            return Err(EngineError::Internal(
                "a hash join needs the same number of keys per side".into(),
            ));
        }
        let types = |s: &SchemaRef| -> Vec<DataType> {
            s.fields().iter().map(|f| f.data_type().clone()).collect()
        };
        let nullable = |fields: Vec<&Arc<Field>>| -> SchemaRef {
            Arc::new(Schema::new(
                fields
                    .into_iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            ))
        };
        let pair = nullable(left.fields().iter().chain(right.fields()).collect());
        let output = if join_type.left_only() {
            nullable(left.fields().iter().collect())
        } else {
            Arc::clone(&pair)
        };
        let tables = [state.table(), state.table()];
        // Allocated after the row tables, so a join without cleaning keeps its numbers.
        let cleaning = cleaning.map(|c| {
            c.map(|cfg| Cleaning {
                cfg,
                index: if cfg.in_memory {
                    TimeIndex::Memory {
                        entries: BTreeMap::new(),
                        // Committed rows are read in at the first cleaning.
                        loaded: false,
                        bytes: Charge::new(state.budget()),
                    }
                } else {
                    TimeIndex::Stored(state.ordered_table())
                },
                worker: 0,
                workers: 1,
            })
        });
        Ok(HashJoin {
            cleaning,
            join_type,
            keys: [left_keys, right_keys],
            types: [types(left), types(right)],
            condition,
            pair,
            output,
            null_equal,
            by_key,
            state: tables,
        })
    }

    /// The schema of output chunks.
    pub fn output(&self) -> &SchemaRef {
        &self.output
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        let mut out: Vec<&mut StateTable> = self.state.iter_mut().collect();
        for c in self.cleaning.iter_mut().flatten() {
            if let TimeIndex::Stored(t) = &mut c.index {
                out.push(t);
            }
        }
        out
    }

    /// Tells a worker of a parallel join which one it is (see [`Cleaning`]).
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        for c in self.cleaning.iter_mut().flatten() {
            c.worker = worker;
            c.workers = workers;
        }
    }

    /// Records (or, with `present` false, forgets) a stored row of side `me`, whose
    /// cleaning column's value encodes as `time` (memcomparable), in its time index:
    /// under `time ++ prefix ++ suffix`, with the time and prefix lengths.
    fn index_row(
        &mut self,
        me: usize,
        time: &[u8],
        prefix: &[u8],
        suffix: &[u8],
        present: bool,
    ) -> Result<()> {
        let Some(c) = self.cleaning[me].as_mut() else {
            return Ok(());
        };
        let mut key = Vec::with_capacity(time.len() + prefix.len() + suffix.len());
        key.extend_from_slice(time);
        key.extend_from_slice(prefix);
        key.extend_from_slice(suffix);
        let (tl, pl) = (time.len() as u32, prefix.len() as u32);
        match (&mut c.index, present) {
            (TimeIndex::Stored(t), true) => {
                let mut value = tl.to_be_bytes().to_vec();
                value.extend_from_slice(&pl.to_be_bytes());
                t.put(&[], &key, value)?;
            }
            (TimeIndex::Stored(t), false) => t.delete(&[], &key)?,
            (TimeIndex::Memory { entries, bytes, .. }, true) => {
                let n = index_entry_bytes(&key);
                if entries.insert(key, (tl, pl)).is_none() {
                    bytes.add(n);
                }
            }
            (TimeIndex::Memory { entries, bytes, .. }, false) => {
                if entries.remove(&key).is_some() {
                    bytes.sub(index_entry_bytes(&key));
                }
            }
        }
        Ok(())
    }

    /// The memcomparable value of side `me`'s cleaning column in row `i` of `this`, if
    /// the side is cleaned.
    fn time_of(&self, me: usize, this: &[ArrayRef], i: usize) -> Result<Option<Vec<u8>>> {
        let Some(c) = &self.cleaning[me] else {
            return Ok(None);
        };
        let mut t = Vec::new();
        keys::encode_array_datum(this[c.cfg.column].as_ref(), i, &mut t)?;
        Ok(Some(t))
    }

    /// Rebuilds an in-memory time index of side `me` from the side's committed rows
    /// (after a start; once), before the side's first change: `apply` and `clean` call
    /// it. Loaded later, a row stored by key whose time changed since the start would
    /// come back under its committed time too, and be dropped by that stale entry.
    fn load_index(&mut self, me: usize) -> Result<()> {
        let Some(c) = &self.cleaning[me] else {
            return Ok(());
        };
        let TimeIndex::Memory { loaded: false, .. } = &c.index else {
            return Ok(());
        };
        let (worker, workers, column) = (c.worker, c.workers, c.cfg.column);
        let key_types: Vec<DataType> = self.keys[me]
            .iter()
            .map(|&k| self.types[me][k].clone())
            .collect();
        let keyed = self.by_key[me].is_some();
        // Per committed row: `prefix ++ suffix`, the prefix's length, and the row (by
        // key, it is in the value).
        let mut rows: Vec<(Vec<u8>, usize, Vec<u8>)> = Vec::new();
        // A row's vnode is its prefix's, which also picks its worker.
        self.state[me].for_each_committed(|vnode, tail, value| {
            if workers > 1 && vnode as usize % workers != worker {
                return Ok(());
            }
            let mut at = 0;
            for t in &key_types {
                at += keys::key_datum_len(&tail[at..], t)
                    .ok_or_else(|| corrupt("a join row's key does not decode".into()))?;
            }
            let row = if keyed {
                keyed_parts(value)?.2.to_vec()
            } else {
                tail[at..].to_vec()
            };
            rows.push((tail.to_vec(), at, row));
            Ok(())
        })?;
        for (tail, at, row) in rows {
            let (prefix, suffix) = tail.split_at(at);
            let row = row::decode_row(&row, &self.types[me]).map_err(corrupt)?;
            let mut time = Vec::new();
            keys::encode_key_datum(&row[column], &mut time)?;
            self.index_row(me, &time, prefix, suffix, true)?;
        }
        if let Some(Cleaning {
            index: TimeIndex::Memory { loaded, .. },
            ..
        }) = &mut self.cleaning[me]
        {
            *loaded = true;
        }
        Ok(())
    }

    /// Drops the rows each side can no longer match, given the watermarks of the left
    /// and right input columns (interval joins; see [`JoinCleaning`]).
    pub fn clean(
        &mut self,
        left: &[Option<ScalarValue>],
        right: &[Option<ScalarValue>],
    ) -> Result<()> {
        for me in 0..2 {
            self.load_index(me)?;
            let Some(c) = &self.cleaning[me] else {
                continue;
            };
            let other_wms = if me == 0 { right } else { left };
            let Some(Some(wm)) = other_wms.get(c.cfg.other_column) else {
                continue;
            };
            let Some(mut bound) = shift_time(wm, -c.cfg.offset) else {
                continue;
            };
            if c.cfg.own_bound {
                let own_wms = if me == 0 { left } else { right };
                let Some(Some(own)) = own_wms.get(c.cfg.column) else {
                    continue;
                };
                if own.partial_cmp(&bound) == Some(std::cmp::Ordering::Less) {
                    bound = own.clone();
                }
            }
            let mut encoded = Vec::new();
            keys::encode_key_datum(&bound, &mut encoded)?;
            let (worker, workers) = (c.worker, c.workers);
            let c = self.cleaning[me].as_mut().expect("checked");
            match &mut c.index {
                TimeIndex::Memory { entries, bytes, .. } => {
                    // Every key before the bound is an unmatchable row of this worker.
                    let kept = entries.split_off(encoded.as_slice());
                    let gone = std::mem::replace(entries, kept);
                    let freed: usize = gone.keys().map(|k| index_entry_bytes(k)).sum();
                    bytes.sub(freed);
                    for (key, (tl, pl)) in gone {
                        let (tl, pl) = (tl as usize, pl as usize);
                        let (prefix, suffix) = key[tl..].split_at(pl);
                        self.state[me].delete(prefix, suffix)?;
                    }
                }
                TimeIndex::Stored(index) => {
                    let mut gone: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = Vec::new();
                    index.scan_ordered(&[], false, |suffix, value| {
                        if suffix >= encoded.as_slice() {
                            return Ok(false);
                        }
                        let len = |at: usize| {
                            value
                                .get(at..at + 4)
                                .and_then(|b| b.try_into().ok())
                                .map(u32::from_be_bytes)
                                .unwrap_or(0) as usize
                        };
                        let (tl, pl) = (len(0), len(4));
                        let prefix = suffix.get(tl..tl + pl).unwrap_or_default();
                        if workers <= 1 || super::exchange::worker_of(prefix, workers) == worker {
                            gone.push((
                                suffix.to_vec(),
                                prefix.to_vec(),
                                suffix.get(tl + pl..).unwrap_or_default().to_vec(),
                            ));
                        }
                        Ok(true)
                    })?;
                    for (index_key, prefix, row_suffix) in gone {
                        index.delete(&[], &index_key)?;
                        self.state[me].delete(&prefix, &row_suffix)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the degrees of `side`'s rows are kept (to pad them, or to decide whether a
    /// semi/anti join emits them).
    fn tracks_degree(&self, side: Side) -> bool {
        self.preserved(side) || (self.join_type.left_only() && side == Side::Left)
    }

    fn preserved(&self, side: Side) -> bool {
        matches!(
            (self.join_type, side),
            (JoinType::Left | JoinType::Full, Side::Left)
                | (JoinType::Right | JoinType::Full, Side::Right)
        )
    }

    /// `chunk`'s columns as this join stores side `me`'s (the plan gives them these
    /// types; a column that differs is cast).
    fn conform(&self, me: usize, chunk: &StreamChunk) -> Result<Vec<ArrayRef>> {
        let data = chunk.data();
        if data.num_columns() != self.types[me].len() {
            return Err(EngineError::Internal(
                "join input row has the wrong width".into(),
            ));
        }
        data.columns()
            .iter()
            .zip(&self.types[me])
            .map(|(c, t)| {
                if c.data_type() == t {
                    Ok(Arc::clone(c))
                } else {
                    Ok(compute::cast(c, t)?)
                }
            })
            .collect()
    }

    /// The stored rows of `side` under each of `prefixes`, decoded into columns.
    fn probe(&mut self, side: Side, prefixes: &[&[u8]]) -> Result<Probe> {
        let s = idx(side);
        for p in prefixes {
            // Brings the bucket into the cache (unless the table knows it is empty).
            self.state[s].bucket(p)?;
        }
        let keep_suffixes = self.tracks_degree(side);
        let keyed = self.by_key[s].is_some();
        let table = &self.state[s];
        let mut rows: Vec<Option<&[u8]>> = Vec::new();
        let mut values: Vec<Option<&[u8]>> = Vec::new();
        let (mut counts, mut degrees) = (Vec::new(), Vec::new());
        let mut suffixes = Vec::new();
        let mut spans = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            let start = rows.len();
            for (suffix, value) in table.peek_bucket(p).into_iter().flat_map(|b| b.iter()) {
                if keyed {
                    let (count, degree, row) = keyed_parts(value)?;
                    rows.push(Some(row));
                    counts.push(count);
                    degrees.push(degree);
                } else {
                    rows.push(Some(suffix));
                    values.push(Some(value));
                }
                if keep_suffixes {
                    suffixes.push(suffix.clone());
                }
            }
            spans.push((start, rows.len() - start));
        }
        let all: Vec<usize> = (0..self.types[s].len()).collect();
        let columns = row::decode_columns(&rows, &self.types[s], &all).map_err(corrupt)?;
        if !keyed {
            let numbers = row::decode_columns(&values, &COUNTS, &[0, 1]).map_err(corrupt)?;
            let ints = |a: &ArrayRef| -> Vec<i64> {
                a.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.unwrap_or(0))
                    .collect()
            };
            counts = ints(&numbers[0]);
            degrees = ints(&numbers[1]);
        }
        Ok(Probe {
            spans,
            columns,
            counts,
            degrees,
            suffixes,
        })
    }

    /// Sets the degree of the entry `(prefix, suffix)` of side `s`, whose count is
    /// `count`.
    fn write_degree(
        &mut self,
        s: usize,
        prefix: &[u8],
        suffix: &[u8],
        count: i64,
        degree: i64,
    ) -> Result<()> {
        if self.by_key[s].is_none() {
            return self.state[s].put(prefix, suffix, counts(count, degree)?);
        }
        self.state[s].update(prefix, suffix, |current| {
            let (_, _, row) = keyed_parts(current.ok_or_else(|| {
                EngineError::Internal("join: the degree of a row that is not stored".into())
            })?)?;
            Ok(Some(keyed_value(count, degree, row)))
        })
    }

    /// Rows of `left ++ right` (or `left` alone, for a narrower `schema`), this side's
    /// taken from `this` at `this_idx` and the other side's from `other` at `other_idx`;
    /// a NULL index gives NULLs.
    fn take_rows(
        &self,
        side: Side,
        schema: &SchemaRef,
        (this, this_idx): (&[ArrayRef], &UInt32Array),
        (other, other_idx): (&[ArrayRef], &UInt32Array),
    ) -> Result<RecordBatch> {
        let take_all = |columns: &[ArrayRef], indices: &UInt32Array| -> Result<Vec<ArrayRef>> {
            columns
                .iter()
                .map(|c| {
                    Ok(if c.is_empty() {
                        // Only NULL indices can point into nothing.
                        new_null_array(c.data_type(), indices.len())
                    } else {
                        compute::take(c.as_ref(), indices, None)?
                    })
                })
                .collect()
        };
        let (left, right) = match side {
            Side::Left => ((this, this_idx), (other, other_idx)),
            Side::Right => ((other, other_idx), (this, this_idx)),
        };
        let mut columns = take_all(left.0, left.1)?;
        if schema.fields().len() > columns.len() {
            columns.extend(take_all(right.0, right.1)?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(this_idx.len()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &options,
        )?)
    }

    /// For each row of `rows` (of a chunk arriving on `side`, as columns `this`), the
    /// entries of its bucket in `probe` it meets (all, or those passing the extra
    /// condition), in bucket order. The condition is evaluated over the pairs of many rows
    /// at once: the buckets' membership does not change while one side's chunk is applied
    /// (only degrees do), so neither do the matches. `apply` asks for rows whose pairs
    /// reach [`PAIRS_PER_BATCH`] at most by the last row's.
    fn match_rows(
        &self,
        side: Side,
        this: &[ArrayRef],
        rows: std::ops::Range<usize>,
        key_of_row: &[Option<usize>],
        probe: &Probe,
    ) -> Result<Vec<Vec<u32>>> {
        let first = rows.start;
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
        let Some(cond) = &self.condition else {
            for (o, k) in out.iter_mut().zip(&key_of_row[rows]) {
                if let Some(k) = k {
                    let (start, len) = probe.spans[*k];
                    *o = (start as u32..(start + len) as u32).collect();
                }
            }
            return Ok(out);
        };
        // Per pair: its row and its entry.
        let (mut this_idx, mut other_idx): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
        let evaluate = |this_idx: &mut Vec<u32>,
                        other_idx: &mut Vec<u32>,
                        out: &mut Vec<Vec<u32>>|
         -> Result<()> {
            if this_idx.is_empty() {
                return Ok(());
            }
            let t = UInt32Array::from(std::mem::take(this_idx));
            let o = UInt32Array::from(std::mem::take(other_idx));
            let batch = self.take_rows(side, &self.pair, (this, &t), (&probe.columns, &o))?;
            let mask = cond.evaluate(&batch)?.into_array(batch.num_rows())?;
            let mask = mask
                .as_boolean_opt()
                .ok_or_else(|| EngineError::Internal("join condition is not boolean".into()))?;
            for k in 0..t.len() {
                if mask.is_valid(k) && mask.value(k) {
                    out[t.value(k) as usize - first].push(o.value(k));
                }
            }
            Ok(())
        };
        for i in rows {
            let Some(k) = key_of_row[i] else { continue };
            let (start, len) = probe.spans[k];
            for j in start..start + len {
                this_idx.push(i as u32);
                other_idx.push(j as u32);
            }
            if this_idx.len() >= PAIRS_PER_BATCH {
                evaluate(&mut this_idx, &mut other_idx, &mut out)?;
            }
        }
        evaluate(&mut this_idx, &mut other_idx, &mut out)?;
        Ok(out)
    }

    /// Applies a chunk arriving on `side` and returns the join's output changes.
    ///
    /// Degrees are only kept for a preserved side (they are read only to pad its rows),
    /// so an inner join writes nothing to the other side's state per probe. The other
    /// side's buckets are decoded into columns once per chunk (degrees kept in step with
    /// the updates), and the output is taken from those and the chunk's columns: no row
    /// becomes scalars on the way.
    pub fn apply(&mut self, side: Side, chunk: &StreamChunk) -> Result<StreamChunk> {
        let (me, other) = (idx(side), idx(side.other()));
        self.load_index(me)?;
        let me_preserved = self.preserved(side);
        let other_preserved = self.preserved(side.other());
        let other_tracked = self.tracks_degree(side.other());
        let me_tracked = self.tracks_degree(side);
        let semi = match self.join_type {
            JoinType::LeftSemi => Some(true),
            JoinType::LeftAnti => Some(false),
            _ => None,
        };
        let this = self.conform(me, chunk)?;
        let n = chunk.len();
        let key_cols: Vec<&dyn Array> = self.keys[me].iter().map(|&k| this[k].as_ref()).collect();
        let row_keys = keys::RowKeys::new(&key_cols, n)?;
        // Each row's key, numbered in order of appearance (None: NULL, which meets
        // nothing), and the other side's bucket of each key.
        let mut key_of_row: Vec<Option<usize>> = Vec::with_capacity(n);
        let mut numbers: HashMap<&[u8], usize> = HashMap::default();
        let mut prefixes: Vec<&[u8]> = Vec::new();
        for i in 0..n {
            if !self.null_equal && key_cols.iter().any(|c| c.is_null(i)) {
                key_of_row.push(None);
                continue;
            }
            let p = row_keys.get(i);
            let k = *numbers.entry(p).or_insert_with(|| {
                prefixes.push(p);
                prefixes.len() - 1
            });
            key_of_row.push(Some(k));
        }
        let mut probe = self.probe(side.other(), &prefixes)?;
        // The output, as rows taken from this chunk and from the probed entries.
        let mut ops: Vec<Op> = Vec::new();
        let (mut from_this, mut from_other): (Vec<Option<u32>>, Vec<Option<u32>>) =
            (Vec::new(), Vec::new());
        let mut emit = |op: Op, i: Option<usize>, j: Option<usize>| {
            ops.push(op);
            from_this.push(i.map(|i| i as u32));
            from_other.push(j.map(|j| j as u32));
        };
        // Matches are computed for a run of rows at a time, ending with the row whose
        // pairs reach PAIRS_PER_BATCH: what is held is bounded by that and by the
        // largest bucket, not by the chunk's pairs.
        let mut matches: Vec<Vec<u32>> = Vec::new();
        let mut first = 0;
        // This side's rows stored by key: each row's key, and the row of a delete whose
        // insert (next) rewrites its entry.
        let own_keys = match &self.by_key[me] {
            Some(columns) => {
                let columns: Vec<&dyn Array> = columns.iter().map(|&c| this[c].as_ref()).collect();
                Some(keys::RowKeys::new(&columns, n)?)
            }
            None => None,
        };
        let mut replaced: Option<usize> = None;
        let mut encoded = Vec::new();
        for i in 0..n {
            if i >= first + matches.len() {
                let mut end = i;
                let mut pairs = 0;
                while end < n && (end == i || pairs < PAIRS_PER_BATCH) {
                    if let Some(k) = key_of_row[end] {
                        pairs += probe.spans[k].1;
                    }
                    end += 1;
                }
                matches = self.match_rows(side, &this, i..end, &key_of_row, &probe)?;
                first = i;
            }
            let insert = chunk.ops()[i].sign() > 0;
            let plain = if insert { Op::Insert } else { Op::Delete };
            let Some(k) = key_of_row[i] else {
                if me_preserved || (semi == Some(false) && side == Side::Left) {
                    // Padded, or (anti join) passed through as it is.
                    emit(plain, Some(i), None);
                }
                continue;
            };
            let prefix = prefixes[k];
            let matched = std::mem::take(&mut matches[i - first]);
            let degree: i64 = matched.iter().map(|&j| probe.counts[j as usize]).sum();
            let step = if insert { 1 } else { -1 };
            if let Some(semi) = semi {
                // Only the left rows are emitted, while (semi) or unless (anti) they match.
                let flip = |degree: i64| (degree > 0) == semi;
                if side == Side::Left {
                    if flip(degree) {
                        emit(plain, Some(i), None);
                    }
                } else {
                    for j in matched.iter().map(|&j| j as usize) {
                        let (old, count) = (probe.degrees[j], probe.counts[j]);
                        let new_degree = old + step;
                        if flip(old) != flip(new_degree) {
                            let op = if flip(new_degree) {
                                Op::Insert
                            } else {
                                Op::Delete
                            };
                            for _ in 0..count {
                                emit(op, None, Some(j));
                            }
                        }
                        probe.degrees[j] = new_degree;
                        self.write_degree(other, prefix, &probe.suffixes[j], count, new_degree)?;
                    }
                }
            } else {
                for j in matched.iter().map(|&j| j as usize) {
                    let (old, count) = (probe.degrees[j], probe.counts[j]);
                    let new_degree = old + step;
                    for _ in 0..count {
                        if insert {
                            if other_preserved && old == 0 {
                                emit(Op::Delete, None, Some(j));
                            }
                            emit(Op::Insert, Some(i), Some(j));
                        } else {
                            emit(Op::Delete, Some(i), Some(j));
                            if other_preserved && new_degree == 0 {
                                emit(Op::Insert, None, Some(j));
                            }
                        }
                    }
                    if other_tracked {
                        probe.degrees[j] = new_degree;
                        self.write_degree(other, prefix, &probe.suffixes[j], count, new_degree)?;
                    }
                }
                if degree == 0 && me_preserved {
                    emit(plain, Some(i), None);
                }
            }
            // The row's own entry, read and written in one step (no result above
            // depends on it; a failed epoch is rolled back whole).
            let my_degree = if me_tracked { degree } else { 0 };
            let Some(own) = &own_keys else {
                row::encode_array_row(&this, i, &mut encoded)?;
                let mut my_count = 0;
                self.state[me].update(prefix, &encoded, |current| {
                    my_count = match current {
                        Some(v) => {
                            let c = row::decode_row(v, &COUNTS).map_err(corrupt)?;
                            match &c[0] {
                                ScalarValue::Int64(Some(a)) => *a,
                                _ => return Err(corrupt("bad counts".into())),
                            }
                        }
                        None if insert => 0,
                        None => return Err(never_inserted()),
                    };
                    (my_count + step != 0)
                        .then(|| counts(my_count + step, my_degree))
                        .transpose()
                })?;
                if (my_count == 0) != (my_count + step == 0) {
                    if let Some(time) = self.time_of(me, &this, i)? {
                        self.index_row(me, &time, prefix, &encoded, my_count + step != 0)?;
                    }
                }
                continue;
            };
            let key = own.get(i);
            if !insert
                && i + 1 < n
                && chunk.ops()[i + 1].sign() > 0
                && key_of_row[i + 1] == Some(k)
                && own.get(i + 1) == key
            {
                // An update of this key: the insert that follows rewrites the entry.
                replaced = Some(i);
                continue;
            }
            row::encode_array_row(&this, i, &mut encoded)?;
            if let Some(old) = replaced.take() {
                self.state[me].update(prefix, key, |current| {
                    match current.map(keyed_parts).transpose()? {
                        Some((1, _, _)) => Ok(Some(keyed_value(1, my_degree, &encoded))),
                        Some(_) => Err(corrupt("a keyed join entry's count is not 1".into())),
                        None => Err(never_inserted()),
                    }
                })?;
                let (was, now) = (self.time_of(me, &this, old)?, self.time_of(me, &this, i)?);
                if let (Some(was), Some(now)) = (was, now) {
                    if was != now {
                        self.index_row(me, &was, prefix, key, false)?;
                        self.index_row(me, &now, prefix, key, true)?;
                    }
                }
                continue;
            }
            let mut my_count = 0;
            self.state[me].update(prefix, key, |current| {
                my_count = match current {
                    Some(v) => keyed_parts(v)?.0,
                    None if insert => 0,
                    None => return Err(never_inserted()),
                };
                match my_count + step {
                    0 => Ok(None),
                    1 => Ok(Some(keyed_value(1, my_degree, &encoded))),
                    _ => Err(EngineError::Internal(
                        "join: two rows of one side have the same unique key".into(),
                    )),
                }
            })?;
            if let Some(time) = self.time_of(me, &this, i)? {
                self.index_row(me, &time, prefix, key, my_count == 0)?;
            }
        }
        let batch = self.take_rows(
            side,
            &self.output,
            (&this, &UInt32Array::from(from_this)),
            (&probe.columns, &UInt32Array::from(from_other)),
        )?;
        StreamChunk::new(ops, batch)
    }
}

fn never_inserted() -> EngineError {
    EngineError::Internal("join: delete of a row that was never inserted".into())
}

/// The other side's rows a chunk meets: the bucket of each of its keys, decoded once per
/// chunk into columns, one bucket after another.
struct Probe {
    /// Per key of the chunk (numbered as in `apply`): its bucket's first entry and its
    /// number of entries.
    spans: Vec<(usize, usize)>,
    /// The other side's columns, one row per entry.
    columns: Vec<ArrayRef>,
    counts: Vec<i64>,
    degrees: Vec<i64>,
    /// Per entry, its suffix, when the entries' degrees are written back.
    suffixes: Vec<Vec<u8>>,
}

/// Joined pairs a join condition is evaluated over at once (see `HashJoin::match_rows`).
const PAIRS_PER_BATCH: usize = 8192;

/// A time value moved by `micros` (None: not a time, or out of range).
fn shift_time(v: &ScalarValue, micros: i64) -> Option<ScalarValue> {
    Some(match v {
        ScalarValue::TimestampMicrosecond(Some(t), tz) => {
            ScalarValue::TimestampMicrosecond(Some(t.checked_add(micros)?), tz.clone())
        }
        ScalarValue::TimestampMillisecond(Some(t), tz) => {
            ScalarValue::TimestampMillisecond(Some(t.checked_add(micros / 1_000)?), tz.clone())
        }
        ScalarValue::TimestampSecond(Some(t), tz) => {
            ScalarValue::TimestampSecond(Some(t.checked_add(micros / 1_000_000)?), tz.clone())
        }
        ScalarValue::TimestampNanosecond(Some(t), tz) => ScalarValue::TimestampNanosecond(
            Some(t.checked_add(micros.checked_mul(1_000)?)?),
            tz.clone(),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::temp_alloc;
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

    fn sides() -> (SchemaRef, SchemaRef) {
        let o = output();
        (
            Arc::new(Schema::new(o.fields()[..3].to_vec())),
            Arc::new(Schema::new(o.fields()[3..].to_vec())),
        )
    }

    fn join(t: JoinType) -> (tempfile::TempDir, HashJoin) {
        join_on(t, None)
    }

    /// `... ON feeder = name [AND condition]`.
    fn join_on(
        t: JoinType,
        condition: Option<Arc<dyn PhysicalExpr>>,
    ) -> (tempfile::TempDir, HashJoin) {
        let (dir, mut alloc) = temp_alloc();
        (dir, build(t, condition, [None, None], &mut alloc))
    }

    /// `... ON feeder = name [AND condition]`, each side's rows stored by row or by the
    /// given key columns.
    fn build(
        t: JoinType,
        condition: Option<Arc<dyn PhysicalExpr>>,
        by_key: [Option<Vec<usize>>; 2],
        alloc: &mut StateAlloc,
    ) -> HashJoin {
        let (l, r) = sides();
        HashJoin::try_new(
            t,
            vec![1],
            vec![0],
            &l,
            &r,
            condition,
            false,
            [None, None],
            by_key,
            alloc,
        )
        .unwrap()
    }

    /// `kw > max_kw`, over the joined row.
    fn kw_over_max() -> Arc<dyn PhysicalExpr> {
        let schema = output();
        let df = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        create_physical_expr(
            &col("kw").gt(col("max_kw")),
            &df,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap()
    }

    /// `... ON feeder = name AND kw > max_kw`.
    fn kw_over_max_join(t: JoinType) -> (tempfile::TempDir, HashJoin) {
        join_on(t, Some(kw_over_max()))
    }

    fn left(text: &str) -> StreamChunk {
        StreamChunk::from_pretty(&format!("I T F\n{text}"))
    }

    fn right(text: &str) -> StreamChunk {
        StreamChunk::from_pretty(&format!("T F\n{text}"))
    }

    /// An interval-cleaned join of `(k, ts)` rows on `k`, each side dropped by the
    /// other's watermark on `ts`, with the time index stored or in memory, and rows
    /// stored by row or by the key columns `by_key`.
    fn cleaned_join(
        alloc: &mut StateAlloc,
        in_memory: bool,
        by_key: Option<Vec<usize>>,
    ) -> (SchemaRef, HashJoin) {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
                true,
            ),
        ]));
        let c = JoinCleaning {
            column: 1,
            other_column: 1,
            offset: 0,
            in_memory,
            own_bound: false,
            from_keys: false,
        };
        let j = HashJoin::try_new(
            JoinType::Inner,
            vec![0],
            vec![0],
            &schema,
            &schema,
            None,
            false,
            [Some(c), Some(c)],
            [by_key.clone(), by_key],
            alloc,
        )
        .unwrap();
        (schema, j)
    }

    fn timed(schema: &SchemaRef, rows: &[(i64, i64)]) -> StreamChunk {
        let rows: Vec<(Op, Vec<ScalarValue>)> = rows
            .iter()
            .map(|&(k, t)| {
                (
                    Op::Insert,
                    vec![
                        ScalarValue::Int64(Some(k)),
                        ScalarValue::TimestampMicrosecond(Some(t), None),
                    ],
                )
            })
            .collect();
        StreamChunk::from_rows(schema, &rows).unwrap()
    }

    fn wm(t: i64) -> Vec<Option<ScalarValue>> {
        vec![None, Some(ScalarValue::TimestampMicrosecond(Some(t), None))]
    }

    #[test]
    fn interval_cleaning_drops_unmatchable_rows_with_either_time_index() {
        // (Rows by key: the key is the whole row here, as `k` repeats.)
        for (in_memory, by_key) in [(false, None), (true, None), (true, Some(vec![0, 1]))] {
            let case = format!("in memory: {in_memory}, by key: {by_key:?}");
            let (_dir, mut alloc) = temp_alloc();
            let (schema, mut j) = cleaned_join(&mut alloc, in_memory, by_key.clone());
            j.set_worker(0, 1);
            j.apply(Side::Left, &timed(&schema, &[(1, 10), (1, 20), (2, 30)]))
                .unwrap();
            // The right side's watermark at 20: the left row at 10 can match nothing more.
            j.clean(&wm(0), &wm(20)).unwrap();
            let out = j.apply(Side::Right, &timed(&schema, &[(1, 25)])).unwrap();
            assert_eq!(out.to_pretty(), "+ 1 20 1 25\n", "{case}");
            // Committed and read back by a new instance (a restart): the stored rows are
            // still dropped once the watermark passes them.
            crate::state::tests::spill(alloc.store(), j.state_tables());
            let store = alloc.store().clone();
            let mut alloc = StateAlloc::new(1, store, crate::state::MemoryBudget::new(1 << 30));
            let (_, mut j) = cleaned_join(&mut alloc, in_memory, by_key);
            j.set_worker(0, 1);
            j.clean(&wm(30), &wm(31)).unwrap();
            let out = j
                .apply(Side::Right, &timed(&schema, &[(1, 40), (2, 40)]))
                .unwrap();
            assert!(out.is_empty(), "{case}: {}", out.to_pretty());
            let out = j.apply(Side::Left, &timed(&schema, &[(1, 40)])).unwrap();
            assert_eq!(out.to_pretty(), "+ 1 40 1 40\n", "{case}");
        }
    }

    #[test]
    fn an_update_by_key_moves_the_row_in_the_time_index() {
        // Rows stored by `k`: an update that moves a row's time re-files it, so the row
        // is dropped by its new time, not its old one, also after a restart.
        let (_dir, mut alloc) = temp_alloc();
        let (schema, mut j) = cleaned_join(&mut alloc, true, Some(vec![0]));
        j.set_worker(0, 1);
        j.apply(Side::Left, &timed(&schema, &[(1, 10), (2, 10)]))
            .unwrap();
        let update = |rows: &[(i64, i64)]| {
            let mut c = timed(&schema, rows);
            c = StreamChunk::new(vec![Op::UpdateDelete, Op::UpdateInsert], c.data().clone())
                .unwrap();
            c
        };
        assert!(j
            .apply(Side::Left, &update(&[(1, 10), (1, 50)]))
            .unwrap()
            .is_empty());
        // Past 10: row 2 goes; row 1 (now at 50) stays.
        j.clean(&wm(0), &wm(20)).unwrap();
        let out = j
            .apply(Side::Right, &timed(&schema, &[(1, 60), (2, 60)]))
            .unwrap();
        assert_eq!(out.to_pretty(), "+ 1 50 1 60\n");
        crate::state::tests::spill(alloc.store(), j.state_tables());
        let store = alloc.store().clone();
        let mut alloc = StateAlloc::new(1, store, crate::state::MemoryBudget::new(1 << 30));
        let (_, mut j) = cleaned_join(&mut alloc, true, Some(vec![0]));
        j.set_worker(0, 1);
        // After a restart, row 1 moves again (50 -> 80) before anything is cleaned: the
        // index rebuilt from the committed rows must not bring back its entry at 50.
        let out = j.apply(Side::Left, &update(&[(1, 50), (1, 80)])).unwrap();
        assert_eq!(out.to_pretty(), "- 1 50 1 60\n+ 1 80 1 60\n");
        j.clean(&wm(0), &wm(51)).unwrap();
        let out = j.apply(Side::Right, &update(&[(1, 60), (1, 70)])).unwrap();
        assert_eq!(out.to_pretty(), "- 1 80 1 60\n+ 1 80 1 70\n");
        // Past 80: row 1 goes (else the right row's update would retract and re-pair it).
        j.clean(&wm(0), &wm(81)).unwrap();
        let out = j.apply(Side::Right, &update(&[(1, 70), (1, 90)])).unwrap();
        assert!(out.is_empty(), "{}", out.to_pretty());
    }

    /// The rows of a chunk as sorted text lines.
    fn sorted_lines(c: &StreamChunk) -> Vec<String> {
        let mut lines: Vec<String> = c.to_pretty().lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// Appends to `text` a change of the row with `key` of `rows` (a relation unique by
    /// it): the insert of `row` if there is none, else its delete (`delete`) or its
    /// update to `row`.
    fn change<K: Ord>(
        rows: &mut BTreeMap<K, String>,
        key: K,
        row: String,
        delete: bool,
        text: &mut String,
    ) {
        match rows.get(&key) {
            None => text.push_str(&format!("+ {row}\n")),
            Some(old) if delete => text.push_str(&format!("- {old}\n")),
            Some(old) => text.push_str(&format!("U- {old}\nU+ {row}\n")),
        }
        if delete && rows.contains_key(&key) {
            rows.remove(&key);
        } else {
            rows.insert(key, row);
        }
    }

    #[test]
    fn rows_stored_by_key_join_like_rows_stored_by_row() {
        // Changes of a left side unique by `id` and a right side unique by `name`
        // (inserts, deletes, updates that change the join key or not), applied to the
        // same join storing its rows by row and by key: every chunk's output is the same,
        // for every join type, with and without a condition, with state committed and
        // read back from the store between some of them.
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let feeders = ["F1", "F2", "."];
        let types = [
            JoinType::Inner,
            JoinType::Left,
            JoinType::Right,
            JoinType::Full,
            JoinType::LeftSemi,
            JoinType::LeftAnti,
        ];
        for t in types {
            for condition in [None, Some(kw_over_max())] {
                let (_d1, mut a1) = temp_alloc();
                let (_d2, mut a2) = temp_alloc();
                let mut by_row = build(t, condition.clone(), [None, None], &mut a1);
                let mut by_key = build(t, condition, [Some(vec![0]), Some(vec![0])], &mut a2);
                let mut lefts: BTreeMap<i64, String> = BTreeMap::new();
                let mut rights: BTreeMap<&str, String> = BTreeMap::new();
                for step in 0..200 {
                    let mut text = String::new();
                    let side = if next(2) == 0 {
                        for _ in 0..1 + next(4) {
                            let id = next(6) as i64;
                            let row = format!("{id} {} {}", feeders[next(3) as usize], next(20));
                            change(&mut lefts, id, row, next(3) == 0, &mut text);
                        }
                        Side::Left
                    } else {
                        for _ in 0..1 + next(3) {
                            let name = ["F1", "F2", "F3"][next(3) as usize];
                            let row = format!("{name} {}", next(20));
                            change(&mut rights, name, row, next(3) == 0, &mut text);
                        }
                        Side::Right
                    };
                    let text = match side {
                        Side::Left => left(&text),
                        Side::Right => right(&text),
                    };
                    let want = by_row.apply(side, &text).unwrap();
                    let got = by_key.apply(side, &text).unwrap();
                    assert_eq!(
                        sorted_lines(&got),
                        sorted_lines(&want),
                        "{t:?} at step {step}, {side:?} chunk:\n{}",
                        text.to_pretty()
                    );
                    if step % 7 == 0 {
                        crate::state::tests::spill(a1.store(), by_row.state_tables());
                        crate::state::tests::spill(a2.store(), by_key.state_tables());
                    }
                }
            }
        }
    }

    #[test]
    fn an_update_by_key_rewrites_one_entry() {
        let (_d1, mut a1) = temp_alloc();
        let (_d2, mut a2) = temp_alloc();
        let mut by_row = build(JoinType::Inner, None, [None, None], &mut a1);
        let mut by_key = build(JoinType::Inner, None, [Some(vec![0]), None], &mut a2);
        let writes = |j: &mut HashJoin| {
            let mut batch = rocksdb::WriteBatch::default();
            for t in j.state_tables() {
                t.write_dirty(&mut batch);
            }
            batch.len()
        };
        for j in [&mut by_row, &mut by_key] {
            j.apply(Side::Left, &left("+ 1 F1 10\n+ 2 F1 30")).unwrap();
            writes(j);
        }
        let update = left("U- 2 F1 30\nU+ 2 F1 5");
        assert_eq!(
            by_key.apply(Side::Left, &update).unwrap().to_pretty(),
            by_row.apply(Side::Left, &update).unwrap().to_pretty()
        );
        // By row: the old row's entry is deleted and the new one put; by key, one put.
        assert_eq!(writes(&mut by_row), 2);
        assert_eq!(writes(&mut by_key), 1);
        assert_eq!(
            by_key
                .apply(Side::Right, &right("+ F1 100"))
                .unwrap()
                .to_pretty(),
            "+ 1 F1 10 F1 100\n+ 2 F1 5 F1 100\n"
        );
        // A second row with a key already stored is an error, not a silent overwrite.
        let err = by_key.apply(Side::Left, &left("+ 1 F1 11")).unwrap_err();
        assert!(err.to_string().contains("unique key"), "{err}");
    }

    #[test]
    fn inner_join_emits_and_retracts_pairs_with_multiplicity() {
        let (_dir, mut j) = join(JoinType::Inner);
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
        let (_dir, mut j) = join(JoinType::Left);
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
        let (_dir, mut j) = join(JoinType::Full);
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
        let (_dir, mut j) = kw_over_max_join(JoinType::Left);
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
    fn a_condition_over_many_pairs_is_evaluated_in_batches_with_the_same_result() {
        // ... ON feeder = name AND kw > max_kw, with a chunk whose pairs span several
        // evaluation batches (`PAIRS_PER_BATCH`), a NULL key among them.
        let (_dir, mut j) = kw_over_max_join(JoinType::Inner);
        let rights: String = (0..100).map(|m| format!("+ F1 {m}\n")).collect();
        j.apply(Side::Right, &right(&rights)).unwrap();
        let mut lefts: String = (0..200)
            .map(|k| format!("+ {k} F1 {}\n", k as f64 / 2.0))
            .collect();
        lefts.push_str("+ 999 . 1000\n");
        let out = j.apply(Side::Left, &left(&lefts)).unwrap();
        let got: Vec<(i64, f64)> = out
            .rows()
            .unwrap()
            .into_iter()
            .map(|(op, r)| {
                assert_eq!(op, Op::Insert);
                match (&r[0], &r[4]) {
                    (ScalarValue::Int32(Some(id)), ScalarValue::Float64(Some(m))) => {
                        (*id as i64, *m)
                    }
                    (ScalarValue::Int64(Some(id)), ScalarValue::Float64(Some(m))) => (*id, *m),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let want: Vec<(i64, f64)> = (0..200i64)
            .flat_map(|k| {
                (0..100)
                    .filter(move |&m| (k as f64 / 2.0) > m as f64)
                    .map(move |m| (k, m as f64))
            })
            .collect();
        assert!(want.len() > PAIRS_PER_BATCH, "{}", want.len());
        // (Each row's matches come in bucket order, which is by encoded row.)
        let mut got = got;
        got.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        assert!(got == want, "{} pairs, {} expected", got.len(), want.len());
    }

    #[test]
    fn semi_and_anti_joins_follow_matches_coming_and_going() {
        let (_dir, mut semi) = join(JoinType::LeftSemi);
        let (_dir2, mut anti) = join(JoinType::LeftAnti);
        let l = left("+ 1 F1 10\n+ 1 F1 10\n+ 2 F2 5\n+ 3 . 7");
        assert_eq!(semi.apply(Side::Left, &l).unwrap().to_pretty(), "");
        assert_eq!(
            anti.apply(Side::Left, &l).unwrap().to_pretty(),
            "+ 1 F1 10\n+ 1 F1 10\n+ 2 F2 5\n+ 3 . 7\n"
        );
        let r = right("+ F1 1\n+ F1 2");
        // the first match flips the row (both copies); the second changes nothing
        assert_eq!(
            semi.apply(Side::Right, &r).unwrap().to_pretty(),
            "+ 1 F1 10\n+ 1 F1 10\n"
        );
        assert_eq!(
            anti.apply(Side::Right, &r).unwrap().to_pretty(),
            "- 1 F1 10\n- 1 F1 10\n"
        );
        let r = right("- F1 1");
        assert!(semi.apply(Side::Right, &r).unwrap().is_empty());
        assert!(anti.apply(Side::Right, &r).unwrap().is_empty());
        let r = right("- F1 2\n+ . 3");
        assert_eq!(
            semi.apply(Side::Right, &r).unwrap().to_pretty(),
            "- 1 F1 10\n- 1 F1 10\n"
        );
        assert_eq!(
            anti.apply(Side::Right, &r).unwrap().to_pretty(),
            "+ 1 F1 10\n+ 1 F1 10\n"
        );
    }

    #[test]
    fn null_equal_keys_and_cross_joins() {
        let (_dir, mut alloc) = temp_alloc();
        let (l, r) = sides();
        let mut j = HashJoin::try_new(
            JoinType::Inner,
            vec![1],
            vec![0],
            &l,
            &r,
            None,
            true,
            [None, None],
            [None, None],
            &mut alloc,
        )
        .unwrap();
        j.apply(Side::Left, &left("+ 1 . 10")).unwrap();
        assert_eq!(
            j.apply(Side::Right, &right("+ . 1")).unwrap().to_pretty(),
            "+ 1 . 10 . 1\n"
        );
        let mut x = HashJoin::try_new(
            JoinType::Inner,
            vec![],
            vec![],
            &l,
            &r,
            None,
            false,
            [None, None],
            [None, None],
            &mut alloc,
        )
        .unwrap();
        x.apply(Side::Left, &left("+ 1 a 10\n+ 2 . 20")).unwrap();
        assert_eq!(
            x.apply(Side::Right, &right("+ z 1")).unwrap().to_pretty(),
            "+ 1 a 10 z 1\n+ 2 . 20 z 1\n"
        );
    }

    #[test]
    fn deleting_an_unknown_row_is_an_error() {
        let (_dir, mut j) = join(JoinType::Inner);
        assert!(j.apply(Side::Left, &left("- 1 F1 10")).is_err());
    }
}
