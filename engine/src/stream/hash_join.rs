//! Equi-joins with retraction: inner, left, right and full outer, left semi and left anti,
//! with an optional extra (non-equi) condition on the joined row.
//!
//! State: per side, a [`StateTable`] of its rows bucketed by join key (prefix: the
//! memcomparable join key; suffix: the encoded row, so equal rows share one entry), each
//! with its multiplicity and its *degree*, the number of rows of the other side it
//! currently joins with. The degree is what outer joins need: a preserved row with degree
//! 0 appears once per copy, padded with NULLs. It is kept for preserved sides only (0 is
//! stored otherwise), so probing an inner join never rewrites the other side's state.
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

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
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

/// A stored row of one side.
#[derive(Debug, Clone)]
struct Entry {
    suffix: Vec<u8>,
    row: Vec<ScalarValue>,
    count: i64,
    degree: i64,
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
    state: [StateTable; 2],
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
/// row`, values `[time len][key len]` (u32 BE each).
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

    /// The time-index key of a stored row of side `me` (`encode(time) ++ prefix ++
    /// suffix`) with its time and prefix lengths, if that side is cleaned.
    fn index_key(
        &self,
        me: usize,
        row: &[ScalarValue],
        prefix: &[u8],
        suffix: &[u8],
    ) -> Result<Option<(Vec<u8>, IndexLens)>> {
        let Some(c) = &self.cleaning[me] else {
            return Ok(None);
        };
        let mut key = Vec::with_capacity(9 + prefix.len() + suffix.len());
        keys::encode_key_datum(&row[c.cfg.column], &mut key)?;
        let lens = (key.len() as u32, prefix.len() as u32);
        key.extend_from_slice(prefix);
        key.extend_from_slice(suffix);
        Ok(Some((key, lens)))
    }

    /// Records (or, with `present` false, forgets) a stored row of side `me` in its time
    /// index.
    fn index_row(
        &mut self,
        me: usize,
        row: &[ScalarValue],
        prefix: &[u8],
        suffix: &[u8],
        present: bool,
    ) -> Result<()> {
        let Some((key, (tl, pl))) = self.index_key(me, row, prefix, suffix)? else {
            return Ok(());
        };
        let c = self.cleaning[me].as_mut().expect("index_key checked");
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

    /// Rebuilds an in-memory time index of side `me` from the side's committed rows
    /// (after a start; once). Rows applied since the start are in it already.
    fn load_index(&mut self, me: usize) -> Result<()> {
        let Some(c) = &self.cleaning[me] else {
            return Ok(());
        };
        let TimeIndex::Memory { loaded: false, .. } = &c.index else {
            return Ok(());
        };
        let (worker, workers) = (c.worker, c.workers);
        let key_types: Vec<DataType> = self.keys[me]
            .iter()
            .map(|&k| self.types[me][k].clone())
            .collect();
        let mut rows: Vec<(Vec<u8>, usize)> = Vec::new();
        // A row's vnode is its prefix's, which also picks its worker.
        self.state[me].for_each_committed(|vnode, tail| {
            if workers > 1 && vnode as usize % workers != worker {
                return Ok(());
            }
            let mut at = 0;
            for t in &key_types {
                at += keys::key_datum_len(&tail[at..], t)
                    .ok_or_else(|| corrupt("a join row's key does not decode".into()))?;
            }
            rows.push((tail.to_vec(), at));
            Ok(())
        })?;
        for (tail, at) in rows {
            let (prefix, suffix) = tail.split_at(at);
            let row = row::decode_row(suffix, &self.types[me]).map_err(corrupt)?;
            self.index_row(me, &row, prefix, suffix, true)?;
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

    fn joined(&self, side: Side, row: &[ScalarValue], other: &[ScalarValue]) -> Vec<ScalarValue> {
        match side {
            Side::Left => row.iter().chain(other).cloned().collect(),
            Side::Right => other.iter().chain(row).cloned().collect(),
        }
    }

    /// `row` of `side` padded with NULLs for the other side.
    fn padded(&self, side: Side, row: &[ScalarValue]) -> Result<Vec<ScalarValue>> {
        let nulls = self.types[idx(side.other())]
            .iter()
            .map(ScalarValue::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match side {
            Side::Left => row.iter().cloned().chain(nulls).collect(),
            Side::Right => nulls.into_iter().chain(row.iter().cloned()).collect(),
        })
    }

    /// The stored rows of `side` under `prefix`.
    fn entries(&mut self, side: Side, prefix: &[u8]) -> Result<Vec<Entry>> {
        let types = &self.types[idx(side)];
        self.state[idx(side)]
            .bucket(prefix)?
            .iter()
            .map(|(suffix, value)| {
                let row = row::decode_row(suffix, types).map_err(corrupt)?;
                let c = row::decode_row(value, &COUNTS).map_err(corrupt)?;
                let n = |v: &ScalarValue| match v {
                    ScalarValue::Int64(Some(n)) => *n,
                    _ => 0,
                };
                Ok(Entry {
                    suffix: suffix.clone(),
                    row,
                    count: n(&c[0]),
                    degree: n(&c[1]),
                })
            })
            .collect()
    }

    /// For each of some rows of a chunk arriving on `side` (with their keys, see
    /// `apply`), the entries of its bucket on the other side it meets (all, or those
    /// passing the extra condition), in bucket order. The condition is evaluated over the
    /// pairs of many rows at once: the buckets' membership does not change while one
    /// side's chunk is applied (only degrees do), so neither do the matches. `apply`
    /// asks for rows whose pairs reach [`PAIRS_PER_BATCH`] at most by the last row's.
    fn match_all(
        &self,
        side: Side,
        rows: &[(Op, Vec<ScalarValue>)],
        prefixes: &[Option<Vec<u8>>],
        buckets: &HashMap<Vec<u8>, Vec<Entry>>,
    ) -> Result<Vec<Vec<usize>>> {
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
        let bucket_of = |p: &[u8]| -> &Vec<Entry> {
            buckets.get(p).expect("invariant: decoded before matching")
        };
        let Some(cond) = &self.condition else {
            for (o, p) in out.iter_mut().zip(prefixes) {
                if let Some(p) = p {
                    *o = (0..bucket_of(p).len()).collect();
                }
            }
            return Ok(out);
        };
        let mut pairs: Vec<(Op, Vec<ScalarValue>)> = Vec::new();
        // Per pair: its row and its entry in the row's bucket.
        let mut owners: Vec<(usize, usize)> = Vec::new();
        let evaluate = |pairs: &mut Vec<(Op, Vec<ScalarValue>)>,
                        owners: &mut Vec<(usize, usize)>,
                        out: &mut Vec<Vec<usize>>|
         -> Result<()> {
            if pairs.is_empty() {
                return Ok(());
            }
            let batch = StreamChunk::from_rows(&self.pair, pairs)?;
            let mask = cond.evaluate(batch.data())?.into_array(pairs.len())?;
            let mask = mask
                .as_boolean_opt()
                .ok_or_else(|| EngineError::Internal("join condition is not boolean".into()))?;
            for (k, &(i, j)) in owners.iter().enumerate() {
                if mask.is_valid(k) && mask.value(k) {
                    out[i].push(j);
                }
            }
            pairs.clear();
            owners.clear();
            Ok(())
        };
        for (i, ((_, row), p)) in rows.iter().zip(prefixes).enumerate() {
            let Some(p) = p else { continue };
            for (j, e) in bucket_of(p).iter().enumerate() {
                pairs.push((Op::Insert, self.joined(side, row, &e.row)));
                owners.push((i, j));
            }
            if pairs.len() >= PAIRS_PER_BATCH {
                evaluate(&mut pairs, &mut owners, &mut out)?;
            }
        }
        evaluate(&mut pairs, &mut owners, &mut out)?;
        Ok(out)
    }

    /// Applies a chunk arriving on `side` and returns the join's output changes.
    ///
    /// Degrees are only kept for a preserved side (they are read only to pad its rows),
    /// so an inner join writes nothing to the other side's state per probe. The other
    /// side's buckets are decoded once per chunk and kept in step with the degree updates.
    pub fn apply(&mut self, side: Side, chunk: &StreamChunk) -> Result<StreamChunk> {
        let mut out = Vec::new();
        let (me, other) = (idx(side), idx(side.other()));
        let me_preserved = self.preserved(side);
        let other_preserved = self.preserved(side.other());
        let other_tracked = self.tracks_degree(side.other());
        let semi = match self.join_type {
            JoinType::LeftSemi => Some(true),
            JoinType::LeftAnti => Some(false),
            _ => None,
        };
        if chunk.data().num_columns() != self.types[me].len() {
            return Err(EngineError::Internal(
                "join input row has the wrong width".into(),
            ));
        }
        let key_cols: Vec<ArrayRef> = self.keys[me]
            .iter()
            .map(|&k| chunk.data().column(k).clone())
            .collect();
        let mut buckets: HashMap<Vec<u8>, Vec<Entry>> = HashMap::default();
        let rows = chunk.rows()?;
        // Each row's key (None: NULL, which meets nothing), and the other side's bucket
        // of each key, decoded once per chunk.
        let mut prefixes: Vec<Option<Vec<u8>>> = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            if !self.null_equal && key_cols.iter().any(|c| c.is_null(i)) {
                prefixes.push(None);
                continue;
            }
            let mut prefix = Vec::new();
            for c in &key_cols {
                keys::encode_array_datum(c.as_ref(), i, &mut prefix)?;
            }
            if !buckets.contains_key(prefix.as_slice()) {
                let entries = self.entries(side.other(), &prefix)?;
                buckets.insert(prefix.clone(), entries);
            }
            prefixes.push(Some(prefix));
        }
        // Matches are computed for a run of rows at a time, ending with the row whose
        // pairs reach PAIRS_PER_BATCH: what is held is bounded by that and by the
        // largest bucket, not by the chunk's pairs.
        let mut rows = rows;
        let mut matches: Vec<Vec<usize>> = Vec::new();
        let mut first = 0;
        for i in 0..rows.len() {
            if i >= first + matches.len() {
                let mut end = i;
                let mut pairs = 0;
                while end < rows.len() && (end == i || pairs < PAIRS_PER_BATCH) {
                    if let Some(p) = &prefixes[end] {
                        pairs += buckets.get(p.as_slice()).map_or(0, Vec::len);
                    }
                    end += 1;
                }
                matches = self.match_all(side, &rows[i..end], &prefixes[i..end], &buckets)?;
                first = i;
            }
            let (op, row) = std::mem::replace(&mut rows[i], (Op::Insert, Vec::new()));
            let prefix = prefixes[i].take();
            let insert = op.sign() > 0;
            let Some(prefix) = prefix else {
                let op = if insert { Op::Insert } else { Op::Delete };
                if me_preserved {
                    out.push((op, self.padded(side, &row)?));
                } else if semi == Some(false) && side == Side::Left {
                    out.push((op, row));
                }
                continue;
            };
            let suffix = row::encode_row(&row)?;
            let bucket = buckets
                .get_mut(prefix.as_slice())
                .expect("invariant: decoded above");
            let matched = std::mem::take(&mut matches[i - first]);
            let matched = &matched;
            let degree: i64 = matched.iter().map(|&j| bucket[j].count).sum();
            if let Some(semi) = semi {
                // Only the left rows are emitted, while (semi) or unless (anti) they match.
                let flip = |degree: i64| (degree > 0) == semi;
                if side == Side::Left {
                    if flip(degree) {
                        let op = if insert { Op::Insert } else { Op::Delete };
                        out.push((op, row.clone()));
                    }
                } else {
                    for &j in matched {
                        let e = &mut bucket[j];
                        let new_degree = e.degree + if insert { 1 } else { -1 };
                        if flip(e.degree) != flip(new_degree) {
                            let op = if flip(new_degree) {
                                Op::Insert
                            } else {
                                Op::Delete
                            };
                            for _ in 0..e.count {
                                out.push((op, e.row.clone()));
                            }
                        }
                        e.degree = new_degree;
                        self.state[other].put(&prefix, &e.suffix, counts(e.count, new_degree)?)?;
                    }
                }
            } else {
                for &j in matched {
                    let e = &mut bucket[j];
                    let joined = self.joined(side, &row, &e.row);
                    let new_degree = e.degree + if insert { 1 } else { -1 };
                    let padded_other = if other_preserved {
                        Some(self.padded(side.other(), &e.row)?)
                    } else {
                        None
                    };
                    for _ in 0..e.count {
                        if insert {
                            if let (Some(p), 0) = (&padded_other, e.degree) {
                                out.push((Op::Delete, p.clone()));
                            }
                            out.push((Op::Insert, joined.clone()));
                        } else {
                            out.push((Op::Delete, joined.clone()));
                            if let (Some(p), 0) = (&padded_other, new_degree) {
                                out.push((Op::Insert, p.clone()));
                            }
                        }
                    }
                    if other_tracked {
                        e.degree = new_degree;
                        self.state[other].put(&prefix, &e.suffix, counts(e.count, new_degree)?)?;
                    }
                }
                if degree == 0 && me_preserved {
                    let op = if insert { Op::Insert } else { Op::Delete };
                    out.push((op, self.padded(side, &row)?));
                }
            }
            // The row's own count, read and written in one step (no result above
            // depends on it; a failed epoch is rolled back whole).
            let my_degree = if self.tracks_degree(side) { degree } else { 0 };
            let mut my_count = 0;
            self.state[me].update(&prefix, &suffix, |current| {
                my_count = match current {
                    Some(v) => {
                        let c = row::decode_row(v, &COUNTS).map_err(corrupt)?;
                        match &c[0] {
                            ScalarValue::Int64(Some(a)) => *a,
                            _ => return Err(corrupt("bad counts".into())),
                        }
                    }
                    None if insert => 0,
                    None => {
                        return Err(EngineError::Internal(
                            "join: delete of a row that was never inserted".into(),
                        ))
                    }
                };
                let new_count = my_count + if insert { 1 } else { -1 };
                (new_count != 0)
                    .then(|| counts(new_count, my_degree))
                    .transpose()
            })?;
            let new_count = my_count + if insert { 1 } else { -1 };
            if (my_count == 0) != (new_count == 0) {
                self.index_row(me, &row, &prefix, &suffix, new_count != 0)?;
            }
        }
        StreamChunk::from_rows(&self.output, &out)
    }
}

/// Joined pairs a join condition is evaluated over at once (see `HashJoin::match_all`).
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
        let (l, r) = sides();
        let j = HashJoin::try_new(
            t,
            vec![1],
            vec![0],
            &l,
            &r,
            condition,
            false,
            [None, None],
            &mut alloc,
        )
        .unwrap();
        (dir, j)
    }

    /// `... ON feeder = name AND kw > max_kw`.
    fn kw_over_max_join(t: JoinType) -> (tempfile::TempDir, HashJoin) {
        let schema = output();
        let df = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let cond = create_physical_expr(
            &col("kw").gt(col("max_kw")),
            &df,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        join_on(t, Some(cond))
    }

    fn left(text: &str) -> StreamChunk {
        StreamChunk::from_pretty(&format!("I T F\n{text}"))
    }

    fn right(text: &str) -> StreamChunk {
        StreamChunk::from_pretty(&format!("T F\n{text}"))
    }

    /// An interval-cleaned join of `(k, ts)` rows on `k`, each side dropped by the
    /// other's watermark on `ts`, with the time index stored or in memory.
    fn cleaned_join(alloc: &mut StateAlloc, in_memory: bool) -> (SchemaRef, HashJoin) {
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
        for in_memory in [false, true] {
            let (_dir, mut alloc) = temp_alloc();
            let (schema, mut j) = cleaned_join(&mut alloc, in_memory);
            j.set_worker(0, 1);
            j.apply(Side::Left, &timed(&schema, &[(1, 10), (1, 20), (2, 30)]))
                .unwrap();
            // The right side's watermark at 20: the left row at 10 can match nothing more.
            j.clean(&wm(0), &wm(20)).unwrap();
            let out = j.apply(Side::Right, &timed(&schema, &[(1, 25)])).unwrap();
            assert_eq!(out.to_pretty(), "+ 1 20 1 25\n", "in memory: {in_memory}");
            // Committed and read back by a new instance (a restart): the stored rows are
            // still dropped once the watermark passes them.
            crate::state::tests::spill(alloc.store(), j.state_tables());
            let store = alloc.store().clone();
            let mut alloc = StateAlloc::new(1, store, crate::state::MemoryBudget::new(1 << 30));
            let (_, mut j) = cleaned_join(&mut alloc, in_memory);
            j.set_worker(0, 1);
            j.clean(&wm(30), &wm(31)).unwrap();
            let out = j
                .apply(Side::Right, &timed(&schema, &[(1, 40), (2, 40)]))
                .unwrap();
            assert!(
                out.is_empty(),
                "in memory: {in_memory}: {}",
                out.to_pretty()
            );
            let out = j.apply(Side::Left, &timed(&schema, &[(1, 40)])).unwrap();
            assert_eq!(out.to_pretty(), "+ 1 40 1 40\n", "in memory: {in_memory}");
        }
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
