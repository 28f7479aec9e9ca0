//! Hash aggregation with retraction: `GROUP BY` and global (no `GROUP BY`) aggregates.
//!
//! What happens to each op: an inserted row (`+`, `U+`) is added to its group's state, a
//! deleted row (`-`, `U-`) is removed from it; ops only change state. [`HashAgg::flush`]
//! (called at a barrier) then emits, for every group touched since the last flush:
//! `+ row` for a new group, `- old` for a group whose last row left, `U- old`/`U+ new` for a
//! changed result, and nothing when the result did not change.
//!
//! State (in [`StateTable`]s, keyed by the memcomparable group key):
//! - the main table: per group, the key values, the row count and per aggregate a count
//!   (`count`) or a sum and a count of non-NULL inputs (`sum`, `avg`);
//! - one table per `min`/`max`: per group, the multiset of input values (suffix: the
//!   memcomparable value, so entries are in value order; value: its count as 8 bytes
//!   big-endian, then the datum). It is an ordered table: the result reads one end of
//!   the group's multiset from RocksDB, so a `max` over millions of rows keeps only the
//!   entries changed in the epoch in memory. Deleting the current extreme falls back to
//!   the next value, with no recomputation.
//!
//! Over append-only input (`append_only` in [`HashAgg::try_new`]) nothing is ever deleted,
//! so a `min`/`max` keeps only its extreme so far, as one more cell of the main row, and no
//! multiset table: one comparison per input row instead of one state write.
//!
//! Input is read straight from the chunk's Arrow columns: keys are encoded from the arrays,
//! and `count`/`sum`/`avg` over integers, doubles and decimals update their running state
//! in place; a `ScalarValue` is built only for a group's first row in an epoch.
//!
//! The previous output of a group is computed from its state when the group is first
//! touched in an epoch, so no copy of the output is kept (with `EMIT ON WINDOW CLOSE`,
//! which emits nothing as a group changes, it is not computed at all). A global aggregate has exactly
//! one group, which always exists: it is emitted at the first flush even over empty input
//! (`count = 0`, `sum = NULL`).
//!
//! `FILTER (WHERE ...)` is a boolean input column per aggregate: rows where it is not true
//! do not reach that aggregate.
//!
//! Every other aggregate (DISTINCT aggregates, `string_agg`/`array_agg` with `ORDER BY`,
//! `bool_and`, `bit_xor`, `stddev`, `first_value`, ...) is *general*: its state is the
//! group's multiset of input tuples (the call's arguments, then its `ORDER BY` values),
//! in a table like min/max's, and its result is recomputed from that multiset with
//! DataFusion's own accumulator whenever the group changes. Retraction is then exact for
//! any aggregate, and the result is DataFusion's by construction; the price is that a
//! changed group costs time proportional to its size.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, SchemaRef};
use std::sync::Arc;

use datafusion::common::{HashMap, ScalarValue};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::chunk::{Op, StreamChunk};
use super::plan::AggWindow;
use super::window_index::WindowIndex;
use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;
use crate::state::{multiset_count, StateAlloc, StateTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// Recomputed from the group's input multiset (see the module docs).
    General,
}

impl AggKind {
    pub fn name(self) -> &'static str {
        match self {
            AggKind::CountStar | AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::General => "general",
        }
    }
}

/// One aggregate call: its kind, input column, optional FILTER column, output type.
#[derive(Debug, Clone)]
pub struct AggCall {
    pub kind: AggKind,
    pub arg: Option<usize>,
    pub filter: Option<usize>,
    pub output_type: DataType,
    /// For [`AggKind::General`]: the aggregate and its input columns.
    pub general: Option<GeneralAgg>,
}

/// A general aggregate: DataFusion's aggregate expression (which makes accumulators) and
/// the input columns its accumulator is fed: the call's arguments, then its `ORDER BY`
/// expressions, as DataFusion's own aggregation feeds them.
#[derive(Debug, Clone)]
pub struct GeneralAgg {
    pub func: Arc<AggregateFunctionExpr>,
    pub inputs: Vec<usize>,
}

#[derive(Debug, Clone)]
enum AggState {
    Count(i64),
    /// Running sum (None until a non-NULL value arrives) and the count of non-NULL values.
    Sum {
        sum: Option<ScalarValue>,
        count: i64,
    },
    /// The values live in the call's multiset table (min/max and general aggregates).
    Extreme,
    /// The extreme so far of an append-only input's non-NULL values (None: none yet), with
    /// its memcomparable encoding, which orders values as the multiset table does.
    Best(Option<(Vec<u8>, ScalarValue)>),
}

#[derive(Debug, Clone)]
struct Group {
    key: Vec<ScalarValue>,
    rows: i64,
    states: Vec<AggState>,
    /// The group's output row before this epoch's changes (only when the aggregation
    /// emits updates: with `EMIT ON WINDOW CLOSE` nothing is emitted as a group changes).
    prev: Option<Vec<ScalarValue>>,
    /// Whether the group had a stored row before this epoch.
    existed: bool,
}

#[derive(Debug)]
pub struct HashAgg {
    group_keys: Vec<usize>,
    calls: Vec<AggCall>,
    output: SchemaRef,
    /// Types of a main-table value: key columns, the row count, then per call its state.
    state_types: Vec<DataType>,
    /// Per call: the types of the values in its multiset table (min/max: the argument;
    /// general: its input columns).
    arg_types: Vec<Vec<DataType>>,
    main: StateTable,
    /// Per call: the value multiset table of a min/max or general aggregate.
    extremes: Vec<Option<StateTable>>,
    /// Groups touched since the last flush, by encoded key, in first-touch order.
    touched: HashMap<Vec<u8>, usize>,
    groups: Vec<(Vec<u8>, Group)>,
    /// A group that exists even without rows (encoded and as values): the global
    /// aggregate's one group.
    always: Option<(Vec<u8>, Vec<ScalarValue>)>,
    /// A windowed aggregate: the watermark-carrying key column and the open groups.
    window: Option<WindowIndex>,
    /// The input is append-only: min/max keep their extreme in the main row.
    append_only: bool,
}

impl HashAgg {
    /// `output` is the group key columns followed by one column per call; `input` the
    /// schema of input chunks. `append_only`: the input never deletes, so min/max keep
    /// one value per group (a different state layout: it must not change for a view that
    /// already has state).
    pub fn try_new(
        input: &SchemaRef,
        group_keys: Vec<usize>,
        calls: Vec<AggCall>,
        output: SchemaRef,
        window: Option<AggWindow>,
        append_only: bool,
        state: &mut StateAlloc,
    ) -> Result<Self> {
        if window.is_some_and(|w| w.key >= group_keys.len()) {
            return Err(EngineError::Internal(
                "windowed aggregate: the window column is not a group key".into(),
            ));
        }
        if output.fields().len() != group_keys.len() + calls.len() {
            return Err(EngineError::Internal(
                "hash agg output schema does not match keys and calls".into(),
            ));
        }
        let mut state_types: Vec<DataType> = group_keys
            .iter()
            .map(|&k| input.field(k).data_type().clone())
            .collect();
        state_types.push(DataType::Int64);
        let mut arg_types = Vec::new();
        for c in &calls {
            if c.kind == AggKind::General {
                let Some(g) = &c.general else {
                    return Err(EngineError::Internal(
                        "a general aggregate needs its function".into(),
                    ));
                };
                arg_types.push(
                    g.inputs
                        .iter()
                        .map(|&i| input.field(i).data_type().clone())
                        .collect(),
                );
                continue;
            }
            if c.kind != AggKind::CountStar && c.arg.is_none() {
                return Err(EngineError::Internal(format!(
                    "{:?} needs an argument",
                    c.kind
                )));
            }
            let arg_type = c.arg.map(|a| input.field(a).data_type().clone());
            match c.kind {
                AggKind::CountStar | AggKind::Count => state_types.push(DataType::Int64),
                AggKind::Sum | AggKind::Avg => {
                    let t = arg_type.as_ref().expect("checked above");
                    state_types.push(sum_type(t));
                    state_types.push(DataType::Int64);
                }
                AggKind::Min | AggKind::Max if append_only => {
                    state_types.push(arg_type.clone().expect("checked above"));
                }
                AggKind::Min | AggKind::Max | AggKind::General => {}
            }
            arg_types.push(arg_type.into_iter().collect());
        }
        let main = state.single_table();
        // A global aggregate's one group (the empty key) always exists.
        let always = group_keys.is_empty().then(|| (Vec::new(), Vec::new()));
        // min/max read one end of an ordered multiset; a general aggregate reads it all.
        let extremes = calls
            .iter()
            .map(|c| match c.kind {
                AggKind::Min | AggKind::Max if append_only => None,
                AggKind::Min | AggKind::Max => Some(state.ordered_table()),
                AggKind::General => Some(state.table()),
                _ => None,
            })
            .collect();
        // Allocated last, so that a plain aggregate's tables keep their numbers.
        let window = window.map(|cfg| WindowIndex::new(cfg, state));
        Ok(HashAgg {
            window,
            group_keys,
            calls,
            output,
            state_types,
            arg_types,
            main,
            extremes,
            always,
            touched: HashMap::default(),
            groups: Vec::new(),
            append_only,
        })
    }

    /// Makes the group with key `key` exist even without rows, like a global aggregate's
    /// one group (the `()` set of GROUPING SETS over an empty input gives one row). Only
    /// the worker that owns the key's vnode may be told.
    pub fn set_always_present(&mut self, key: Vec<ScalarValue>) -> Result<()> {
        self.always = Some((keys::encode_key(&key)?, key));
        Ok(())
    }

    /// Tells a worker of a parallel aggregate which one it is (see [`WindowIndex`]).
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        if let Some(w) = &mut self.window {
            w.set_worker(worker, workers);
        }
    }

    fn is_always(&self, prefix: &[u8]) -> bool {
        self.always.as_ref().is_some_and(|(p, _)| p == prefix)
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        let mut out = vec![&mut self.main];
        out.extend(self.extremes.iter_mut().flatten());
        if let Some(t) = self.window.as_mut().and_then(WindowIndex::table) {
            out.push(t);
        }
        out
    }

    fn empty_states(&self) -> Vec<AggState> {
        self.calls
            .iter()
            .map(|c| match c.kind {
                AggKind::CountStar | AggKind::Count => AggState::Count(0),
                AggKind::Sum | AggKind::Avg => AggState::Sum {
                    sum: None,
                    count: 0,
                },
                AggKind::Min | AggKind::Max if self.append_only => AggState::Best(None),
                AggKind::Min | AggKind::Max | AggKind::General => AggState::Extreme,
            })
            .collect()
    }

    /// The position in `groups` of the group with encoded key `prefix`, loading it from
    /// state on first touch in this epoch.
    fn touch(&mut self, prefix: &[u8], key: &[ScalarValue]) -> Result<usize> {
        if let Some(&i) = self.touched.get(prefix) {
            return Ok(i);
        }
        let group = match self.stored_group(prefix)? {
            None => Group {
                key: key.to_vec(),
                rows: 0,
                states: self.empty_states(),
                prev: None,
                existed: false,
            },
            Some(mut g) => {
                if self.emits_updates() {
                    g.prev = Some(self.output_row(prefix, &g)?);
                }
                g
            }
        };
        let i = self.groups.len();
        self.groups.push((prefix.to_vec(), group));
        self.touched.insert(prefix.to_vec(), i);
        Ok(i)
    }

    /// The group stored under `prefix`, as its state holds it (`prev` unset).
    fn stored_group(&mut self, prefix: &[u8]) -> Result<Option<Group>> {
        let Some(bytes) = self.main.get(prefix, &[])? else {
            return Ok(None);
        };
        let values =
            row::decode_row(bytes, &self.state_types).map_err(|reason| EngineError::Corrupt {
                table: "aggregate state".into(),
                reason,
            })?;
        let nk = self.group_keys.len();
        let mut it = values.into_iter();
        let key: Vec<ScalarValue> = it.by_ref().take(nk).collect();
        let rows = as_i64(it.next());
        let mut states = Vec::with_capacity(self.calls.len());
        for c in &self.calls {
            states.push(match c.kind {
                AggKind::CountStar | AggKind::Count => AggState::Count(as_i64(it.next())),
                AggKind::Sum | AggKind::Avg => {
                    let sum = it.next().filter(|v| !v.is_null());
                    AggState::Sum {
                        sum,
                        count: as_i64(it.next()),
                    }
                }
                AggKind::Min | AggKind::Max if self.append_only => {
                    match it.next().filter(|v| !v.is_null()) {
                        None => AggState::Best(None),
                        Some(v) => {
                            let mut enc = Vec::new();
                            keys::encode_key_datum(&v, &mut enc)?;
                            AggState::Best(Some((enc, v)))
                        }
                    }
                }
                AggKind::Min | AggKind::Max | AggKind::General => AggState::Extreme,
            });
        }
        Ok(Some(Group {
            key,
            rows,
            states,
            prev: None,
            existed: true,
        }))
    }

    /// Whether a group's changes are emitted as they happen (not `EMIT ON WINDOW CLOSE`).
    fn emits_updates(&self) -> bool {
        !self.window.as_ref().is_some_and(|w| w.cfg.emit_on_close)
    }

    fn output_row(&mut self, prefix: &[u8], g: &Group) -> Result<Vec<ScalarValue>> {
        let mut row = g.key.clone();
        for i in 0..self.calls.len() {
            let v = match &g.states[i] {
                AggState::Extreme if self.calls[i].kind == AggKind::General => {
                    let table = self.extremes[i].as_mut().expect("general agg has a table");
                    let g = self.calls[i].general.as_ref().expect("checked in try_new");
                    general_result(g, &self.arg_types[i], table.bucket(prefix)?)?
                }
                AggState::Extreme => {
                    let table = self.extremes[i].as_mut().expect("min/max has a table");
                    let mut entry = None;
                    let reverse = self.calls[i].kind == AggKind::Max;
                    table.scan_ordered(prefix, reverse, |_, bytes| {
                        entry = Some(bytes[8..].to_vec());
                        Ok(false)
                    })?;
                    match entry {
                        None => ScalarValue::try_from(&self.calls[i].output_type)?,
                        Some(bytes) => decode(&bytes, &self.arg_types[i])?.swap_remove(0),
                    }
                }
                state => result(&self.calls[i], state)?,
            };
            row.push(cast_to(v, &self.calls[i].output_type)?);
        }
        Ok(row)
    }

    /// Folds a chunk into the group states.
    pub fn apply(&mut self, chunk: &StreamChunk) -> Result<()> {
        let batch = chunk.data();
        let key_cols: Vec<ArrayRef> = self
            .group_keys
            .iter()
            .map(|&k| batch.column(k).clone())
            .collect();
        let args: Vec<Option<ArrayRef>> = self
            .calls
            .iter()
            .map(|c| c.arg.map(|a| batch.column(a).clone()))
            .collect();
        let general_inputs: Vec<Vec<ArrayRef>> = self
            .calls
            .iter()
            .map(|c| match &c.general {
                Some(g) => g.inputs.iter().map(|&i| batch.column(i).clone()).collect(),
                None => Vec::new(),
            })
            .collect();
        let filters: Vec<Option<&BooleanArray>> = self
            .calls
            .iter()
            .map(|c| {
                c.filter
                    .map(|f| {
                        batch.column(f).as_boolean_opt().ok_or_else(|| {
                            EngineError::Internal("aggregate FILTER is not boolean".into())
                        })
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let key_refs: Vec<&dyn Array> = key_cols.iter().map(|c| c.as_ref()).collect();
        let row_keys = keys::RowKeys::new(&key_refs, chunk.len())?;
        let mut suffix = Vec::new();
        for (row, op) in chunk.ops().iter().enumerate() {
            let prefix = row_keys.get(row);
            let gi = match self.touched.get(prefix) {
                Some(&i) => i,
                None => {
                    let key = key_cols
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, row))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    self.touch(prefix, &key)?
                }
            };
            let sign = op.sign();
            if sign < 0 && self.append_only {
                return Err(EngineError::Internal(
                    "hash agg: a delete reached an aggregate planned for append-only input".into(),
                ));
            }
            let group = &mut self.groups[gi].1;
            group.rows += sign;
            if group.rows < 0 {
                return Err(EngineError::Internal(
                    "hash agg: a group lost more rows than it had".into(),
                ));
            }
            for (i, call) in self.calls.iter().enumerate() {
                if let Some(f) = filters[i] {
                    if !(f.is_valid(row) && f.value(row)) {
                        continue;
                    }
                }
                let arg = args[i].as_ref();
                match &mut group.states[i] {
                    AggState::Count(n) => {
                        if call.kind == AggKind::CountStar || arg.is_some_and(|a| a.is_valid(row)) {
                            *n += sign;
                        }
                    }
                    AggState::Sum { sum, count } => {
                        let Some(a) = arg.filter(|a| a.is_valid(row)) else {
                            continue;
                        };
                        *count += sign;
                        add_to_sum(sum, a.as_ref(), row, sign)?;
                        if *count == 0 {
                            *sum = None;
                        }
                    }
                    AggState::Best(best) => {
                        let Some(a) = arg.filter(|a| a.is_valid(row)) else {
                            continue;
                        };
                        suffix.clear();
                        keys::encode_array_datum(a.as_ref(), row, &mut suffix)?;
                        let wins = match best {
                            None => true,
                            Some((enc, _)) if call.kind == AggKind::Max => suffix > *enc,
                            Some((enc, _)) => suffix < *enc,
                        };
                        if wins {
                            let value = ScalarValue::try_from_array(a.as_ref(), row)?;
                            match best {
                                Some((enc, v)) => {
                                    enc.clear();
                                    enc.extend_from_slice(&suffix);
                                    *v = value;
                                }
                                None => *best = Some((suffix.clone(), value)),
                            }
                        }
                    }
                    AggState::Extreme if call.kind == AggKind::General => {
                        // Every input tuple counts, NULLs included: the accumulator decides.
                        let cols = &general_inputs[i];
                        suffix.clear();
                        for c in cols {
                            keys::encode_array_datum(c.as_ref(), row, &mut suffix)?;
                        }
                        let table = self.extremes[i].as_mut().expect("general agg has a table");
                        table.multiset_add(prefix, &suffix, sign, || {
                            let values = cols
                                .iter()
                                .map(|c| ScalarValue::try_from_array(c, row))
                                .collect::<std::result::Result<Vec<_>, _>>()?;
                            row::encode_row(&values)
                        })?;
                    }
                    AggState::Extreme => {
                        let Some(a) = arg.filter(|a| a.is_valid(row)) else {
                            continue;
                        };
                        suffix.clear();
                        keys::encode_array_datum(a.as_ref(), row, &mut suffix)?;
                        let table = self.extremes[i].as_mut().expect("min/max has a table");
                        table.multiset_add(prefix, &suffix, sign, || {
                            row::encode_row(&[ScalarValue::try_from_array(a.as_ref(), row)?])
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The changes to the aggregate's output since the last flush; writes the groups'
    /// new state into the state tables.
    pub fn flush(&mut self) -> Result<StreamChunk> {
        self.flush_with_watermarks(&[])
    }

    /// Like [`HashAgg::flush`], given the watermarks of the input columns. A windowed
    /// aggregate then closes every group whose window column the watermark has passed:
    /// its state is dropped (no row for it can arrive any more) and, with
    /// `EMIT ON WINDOW CLOSE`, its final row is emitted now, the only time it is.
    pub fn flush_with_watermarks(
        &mut self,
        input_watermarks: &[Option<ScalarValue>],
    ) -> Result<StreamChunk> {
        let mut out = self.flush_groups()?;
        let Some(w) = &self.window else {
            return StreamChunk::from_rows(&self.output, &out);
        };
        let (cfg, wm_col) = (w.cfg, self.group_keys[w.cfg.key]);
        if cfg.emit_on_close {
            out.clear();
        }
        let Some(Some(wm)) = input_watermarks.get(wm_col) else {
            return StreamChunk::from_rows(&self.output, &out);
        };
        let mut bound = Vec::new();
        keys::encode_key_datum(wm, &mut bound)?;
        let closed = self.window.as_mut().expect("checked").take_closed(&bound)?;
        for prefix in closed {
            if cfg.emit_on_close {
                // Read from state (this epoch's changes are in it): no entry among the
                // touched groups, which are cleared below.
                if let Some(group) = self.stored_group(&prefix)? {
                    if group.rows > 0 {
                        out.push((Op::Insert, self.output_row(&prefix, &group)?));
                    }
                }
            }
            // Otherwise its rows were emitted as it changed: only its state goes.
            self.forget_group(&prefix)?;
        }
        self.touched.clear();
        self.groups.clear();
        StreamChunk::from_rows(&self.output, &out)
    }

    /// The watermarks of the output columns: a group key column keeps its input column's.
    pub fn output_watermarks(&self, input: &[Option<ScalarValue>]) -> Vec<Option<ScalarValue>> {
        let mut out: Vec<Option<ScalarValue>> = self
            .group_keys
            .iter()
            .map(|&k| input.get(k).cloned().flatten())
            .collect();
        out.resize(self.output.fields().len(), None);
        out
    }

    /// Drops every state entry of a group.
    fn forget_group(&mut self, prefix: &[u8]) -> Result<()> {
        self.main.delete(prefix, &[])?;
        for (i, t) in self.extremes.iter_mut().enumerate() {
            let Some(t) = t else { continue };
            let suffixes: Vec<Vec<u8>> = if self.calls[i].kind == AggKind::General {
                t.bucket(prefix)?.keys().cloned().collect()
            } else {
                let mut v = Vec::new();
                t.scan_ordered(prefix, false, |s, _| {
                    v.push(s.to_vec());
                    Ok(true)
                })?;
                v
            };
            for s in suffixes {
                t.delete(prefix, &s)?;
            }
        }
        Ok(())
    }

    /// Writes the touched groups' state; returns the changes of their output rows.
    fn flush_groups(&mut self) -> Result<Vec<(Op, Vec<ScalarValue>)>> {
        if let Some(w) = self.window.as_mut().filter(|w| w.needs_load()) {
            // Groups are stored under their keys, the window column among them.
            w.load(&self.main, &self.state_types[..self.group_keys.len()])?;
        }
        if let Some((prefix, key)) = self.always.clone() {
            if !self.touched.contains_key(&prefix) && self.main.get(&prefix, &[])?.is_none() {
                // The one row of a global aggregate exists before any input does.
                self.touch(&prefix, &key)?;
            }
        }
        let mut out: Vec<(Op, Vec<ScalarValue>)> = Vec::new();
        self.touched.clear();
        let emits = self.emits_updates();
        for (prefix, group) in std::mem::take(&mut self.groups) {
            let exists = group.rows > 0 || self.is_always(&prefix);
            let new_row = if exists && emits {
                Some(self.output_row(&prefix, &group)?)
            } else {
                None
            };
            if exists {
                let mut values = group.key.clone();
                values.push(ScalarValue::Int64(Some(group.rows)));
                for state in &group.states {
                    match state {
                        AggState::Count(n) => values.push(ScalarValue::Int64(Some(*n))),
                        AggState::Sum { sum, count } => {
                            // A NULL cell decodes as NULL whatever type it was written as.
                            values.push(sum.clone().unwrap_or(ScalarValue::Null));
                            values.push(ScalarValue::Int64(Some(*count)));
                        }
                        AggState::Best(best) => {
                            values.push(best.as_ref().map_or(ScalarValue::Null, |(_, v)| v.clone()))
                        }
                        AggState::Extreme => {}
                    }
                }
                self.main.put(&prefix, &[], row::encode_row(&values)?)?;
            } else {
                self.main.delete(&prefix, &[])?;
            }
            if let Some(w) = &mut self.window {
                // Keep the open-group index: a group enters it when it appears.
                if exists != group.existed {
                    let mut window = Vec::new();
                    keys::encode_key_datum(&group.key[w.cfg.key], &mut window)?;
                    if exists {
                        w.open(&window, &prefix)?;
                    } else {
                        w.remove(&window, &prefix)?;
                    }
                }
            }
            match (group.prev, new_row) {
                (None, Some(new)) => out.push((Op::Insert, new)),
                (Some(old), None) => out.push((Op::Delete, old)),
                (Some(old), Some(new)) => {
                    if old != new {
                        out.push((Op::UpdateDelete, old));
                        out.push((Op::UpdateInsert, new));
                    }
                }
                (None, None) => {}
            }
        }
        Ok(out)
    }
}

fn as_i64(v: Option<ScalarValue>) -> i64 {
    match v {
        Some(ScalarValue::Int64(Some(n))) => n,
        _ => 0,
    }
}

fn decode(bytes: &[u8], types: &[DataType]) -> Result<Vec<ScalarValue>> {
    row::decode_row(bytes, types).map_err(|reason| EngineError::Corrupt {
        table: "aggregate state".into(),
        reason,
    })
}

fn cast_to(v: ScalarValue, t: &DataType) -> Result<ScalarValue> {
    if &v.data_type() == t {
        Ok(v)
    } else {
        Ok(v.cast_to(t)?)
    }
}

/// A general aggregate's result over a group's input multiset: a fresh DataFusion
/// accumulator fed every tuple as often as it occurs.
fn general_result(
    g: &GeneralAgg,
    types: &[DataType],
    bucket: &crate::state::Entries,
) -> Result<ScalarValue> {
    let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); types.len()];
    for bytes in bucket.values() {
        let n = multiset_count(bytes)?;
        let values = decode(&bytes[8..], types)?;
        for (col, v) in columns.iter_mut().zip(values) {
            for _ in 0..n {
                col.push(v.clone());
            }
        }
    }
    let arrays = columns
        .into_iter()
        .zip(types)
        .map(|(col, t)| {
            if col.is_empty() {
                Ok(datafusion::arrow::array::new_empty_array(t))
            } else {
                ScalarValue::iter_to_array(col)
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut acc = g.func.create_accumulator()?;
    acc.update_batch(&arrays)?;
    Ok(acc.evaluate()?)
}

/// Adds (`sign` > 0) or subtracts `array[row]` (not NULL) to a running sum: in place for
/// integers, doubles and decimals, through `ScalarValue` arithmetic otherwise.
fn add_to_sum(
    sum: &mut Option<ScalarValue>,
    array: &dyn Array,
    row: usize,
    sign: i64,
) -> Result<()> {
    let overflow = || {
        EngineError::Arrow(arrow::error::ArrowError::ArithmeticOverflow(format!(
            "sum of {} out of range",
            array.data_type()
        )))
    };
    match (sum.as_mut(), array.data_type()) {
        (Some(ScalarValue::Float64(Some(s))), DataType::Float64) => {
            let v = array.as_primitive::<Float64Type>().value(row);
            if sign > 0 {
                *s += v
            } else {
                *s -= v
            }
        }
        (Some(ScalarValue::Int64(Some(s))), DataType::Int64) => {
            let v = array.as_primitive::<Int64Type>().value(row);
            *s = if sign > 0 {
                s.checked_add(v)
            } else {
                s.checked_sub(v)
            }
            .ok_or_else(overflow)?;
        }
        (Some(ScalarValue::Decimal128(Some(s), _, ss)), DataType::Decimal128(_, vs))
            if ss == vs =>
        {
            let v = array.as_primitive::<Decimal128Type>().value(row);
            *s = if sign > 0 {
                s.checked_add(v)
            } else {
                s.checked_sub(v)
            }
            .ok_or_else(overflow)?;
        }
        _ => {
            let v = widen(&ScalarValue::try_from_array(array, row)?)?;
            *sum = Some(match (sum.take(), sign > 0) {
                (None, true) => v,
                (None, false) => v.arithmetic_negate()?,
                (Some(s), true) => s.add_checked(&v)?,
                (Some(s), false) => s.sub_checked(&v)?,
            });
        }
    }
    Ok(())
}

/// The type a sum of `t` values is kept in.
fn sum_type(t: &DataType) -> DataType {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => DataType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            DataType::UInt64
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Decimal128(_, s) => DataType::Decimal128(38, *s),
        other => other.clone(),
    }
}

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
        (AggKind::Min | AggKind::Max, AggState::Best(best)) => match best {
            Some((_, v)) => v.clone(),
            None => ScalarValue::try_from(out)?,
        },
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
    use crate::state::tests::{spill, temp_alloc};
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

    fn input(types: &[DataType]) -> SchemaRef {
        schema(types)
    }

    fn call(kind: AggKind, arg: Option<usize>, out: DataType) -> AggCall {
        AggCall {
            kind,
            arg,
            filter: None,
            output_type: out,
            general: None,
        }
    }

    /// `SELECT feeder, count(*), sum(kw), max(kw), min(kw) GROUP BY feeder` over (id, feeder, kw).
    fn feeder_load(alloc: &mut StateAlloc) -> HashAgg {
        HashAgg::try_new(
            &input(&[DataType::Int64, DataType::Utf8, DataType::Float64]),
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
            None,
            false,
            alloc,
        )
        .unwrap()
    }

    #[test]
    fn extremes_of_a_large_group_are_read_from_the_ends_only() {
        let (_dir, mut alloc) = temp_alloc();
        let store = alloc.store().clone();
        let budget = Arc::clone(alloc.budget());
        let mut agg = feeder_load(&mut alloc);
        let rows: String = (0..20_000).map(|i| format!("+ {i} F1 {i}\n")).collect();
        agg.apply(&StreamChunk::from_pretty(&format!("I T F\n{rows}")))
            .unwrap();
        agg.flush().unwrap();
        crate::state::tests::spill(&store, agg.state_tables());
        assert_eq!(budget.used(), 0);
        agg.apply(&StreamChunk::from_pretty(
            "I T F\n- 19999 F1 19999\n- 0 F1 0",
        ))
        .unwrap();
        assert_eq!(
            agg.flush().unwrap().to_pretty(),
            "U- F1 20000 199990000 19999 0\nU+ F1 19998 199970001 19998 1\n"
        );
        // the group's row and the changed entries, not 20k values
        assert!(budget.used() < 2_000, "{} bytes cached", budget.used());
    }

    #[test]
    fn max_falls_back_when_the_extreme_is_updated_away() {
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = feeder_load(&mut alloc);
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
        let f1 = keys::encode_key(&[ScalarValue::from("F1")]).unwrap();
        assert!(agg.main.get(&f1, &[]).unwrap().is_none());
        let mut left = 0;
        agg.extremes[2]
            .as_mut()
            .unwrap()
            .scan_ordered(&f1, false, |_, _| {
                left += 1;
                Ok(true)
            })
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn changes_that_cancel_within_an_epoch_emit_nothing() {
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = feeder_load(&mut alloc);
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
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = HashAgg::try_new(
            &input(&[DataType::Int64, DataType::Utf8]),
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
            None,
            false,
            &mut alloc,
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
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = HashAgg::try_new(
            &input(&[DataType::Int64, DataType::Boolean]),
            vec![],
            vec![
                AggCall {
                    kind: AggKind::CountStar,
                    arg: None,
                    filter: Some(1),
                    output_type: DataType::Int64,
                    general: None,
                },
                call(AggKind::CountStar, None, DataType::Int64),
            ],
            schema(&[DataType::Int64, DataType::Int64]),
            None,
            false,
            &mut alloc,
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
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = feeder_load(&mut alloc);
        assert!(agg
            .apply(&StreamChunk::from_pretty("I T F\n - 1 F1 10"))
            .is_err());
    }

    /// `SELECT w, count(*), max(v) GROUP BY w` over (w, v), windowed on `w`.
    fn windowed(alloc: &mut StateAlloc, emit_on_close: bool, in_memory: bool) -> HashAgg {
        HashAgg::try_new(
            &input(&[DataType::Int64, DataType::Int64]),
            vec![0],
            vec![
                call(AggKind::CountStar, None, DataType::Int64),
                call(AggKind::Max, Some(1), DataType::Int64),
            ],
            schema(&[DataType::Int64, DataType::Int64, DataType::Int64]),
            Some(AggWindow {
                key: 0,
                emit_on_close,
                in_memory,
            }),
            false,
            alloc,
        )
        .unwrap()
    }

    fn wm(v: i64) -> Vec<Option<ScalarValue>> {
        vec![Some(ScalarValue::Int64(Some(v))), None]
    }

    #[test]
    fn emit_on_window_close_emits_each_group_once_final_and_drops_its_state() {
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = windowed(&mut alloc, true, true);
        agg.apply(&StreamChunk::from_pretty("I I\n + 1 5\n + 2 7"))
            .unwrap();
        assert!(agg.flush_with_watermarks(&wm(1)).unwrap().is_empty());
        // Rows for window 1 arrive in the epoch that closes it: they count.
        agg.apply(&StreamChunk::from_pretty("I I\n + 1 9\n + 3 1"))
            .unwrap();
        let out = agg.flush_with_watermarks(&wm(3)).unwrap();
        assert_eq!(
            out.to_pretty(),
            StreamChunk::from_pretty("I I I\n + 1 2 9\n + 2 1 7").to_pretty()
        );
        // Nothing is left of the closed groups; the open one remains.
        assert!(agg
            .main
            .get(
                &keys::encode_key(&[ScalarValue::Int64(Some(1))]).unwrap(),
                &[]
            )
            .unwrap()
            .is_none());
        assert!(agg.flush_with_watermarks(&wm(3)).unwrap().is_empty());
        let out = agg.flush_with_watermarks(&wm(10)).unwrap();
        assert_eq!(
            out.to_pretty(),
            StreamChunk::from_pretty("I I I\n + 3 1 1").to_pretty()
        );
    }

    #[test]
    fn a_windowed_aggregate_updates_continuously_and_drops_passed_groups() {
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = windowed(&mut alloc, false, true);
        agg.apply(&StreamChunk::from_pretty("I I\n + 1 5")).unwrap();
        let out = agg.flush_with_watermarks(&wm(0)).unwrap();
        assert_eq!(
            out.to_pretty(),
            StreamChunk::from_pretty("I I I\n + 1 1 5").to_pretty()
        );
        agg.apply(&StreamChunk::from_pretty("I I\n + 1 6")).unwrap();
        let out = agg.flush_with_watermarks(&wm(2)).unwrap();
        assert_eq!(
            out.to_pretty(),
            StreamChunk::from_pretty("I I I\n U- 1 1 5\n U+ 1 2 6").to_pretty()
        );
        let key = keys::encode_key(&[ScalarValue::Int64(Some(1))]).unwrap();
        assert!(agg.main.get(&key, &[]).unwrap().is_none());
    }

    /// Groups open when the server stopped are closed by a later watermark, with no
    /// new rows for them: the index finds them again after a start, in memory (state
    /// version 3) as in its state table.
    #[test]
    fn open_windows_are_found_again_after_a_restart() {
        for in_memory in [false, true] {
            let (_dir, mut alloc) = temp_alloc();
            let store = alloc.store().clone();
            let mut after =
                StateAlloc::new(alloc.view(), store.clone(), Arc::clone(alloc.budget()));
            let mut agg = windowed(&mut alloc, true, in_memory);
            agg.apply(&StreamChunk::from_pretty("I I\n + 1 5\n + 2 7\n + 3 1"))
                .unwrap();
            assert!(agg.flush_with_watermarks(&wm(1)).unwrap().is_empty());
            spill(&store, agg.state_tables());
            drop(agg);
            let mut agg = windowed(&mut after, true, in_memory);
            agg.set_worker(0, 1);
            let out = agg.flush_with_watermarks(&wm(3)).unwrap();
            assert_eq!(
                out.to_pretty(),
                StreamChunk::from_pretty("I I I\n + 1 1 5\n + 2 1 7").to_pretty(),
                "in memory: {in_memory}"
            );
            // A row for the open window after the restart joins the stored ones.
            agg.apply(&StreamChunk::from_pretty("I I\n + 3 4")).unwrap();
            assert!(agg.flush_with_watermarks(&wm(3)).unwrap().is_empty());
            let out = agg.flush_with_watermarks(&wm(10)).unwrap();
            assert_eq!(
                out.to_pretty(),
                StreamChunk::from_pretty("I I I\n + 3 2 4").to_pretty(),
                "in memory: {in_memory}"
            );
            // Every window closed and written back: nothing is charged any more, the
            // in-memory index included.
            spill(&store, agg.state_tables());
            assert_eq!(after.budget().used(), 0, "in memory: {in_memory}");
        }
    }

    /// Workers of a parallel aggregate rebuild only the windows of the keys they own.
    #[test]
    fn each_worker_finds_again_only_its_own_open_windows() {
        let (_dir, mut alloc) = temp_alloc();
        let (store, view, budget) = (alloc.store().clone(), alloc.view(), alloc.budget().clone());
        let mut agg = windowed(&mut alloc, true, true);
        let rows: String = (0..40).map(|w| format!("\n + {w} 1")).collect();
        agg.apply(&StreamChunk::from_pretty(&format!("I I{rows}")))
            .unwrap();
        assert!(agg.flush_with_watermarks(&wm(-1)).unwrap().is_empty());
        spill(&store, agg.state_tables());
        drop(agg);
        let mut seen = Vec::new();
        for worker in 0..2 {
            // Workers share their state tables: each allocates the same ones.
            let mut alloc = StateAlloc::new(view, store.clone(), Arc::clone(&budget));
            let mut agg = windowed(&mut alloc, true, true);
            agg.set_worker(worker, 2);
            let out = agg.flush_with_watermarks(&wm(100)).unwrap();
            for row in out.to_pretty().lines() {
                let w: i64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
                let key = keys::encode_key(&[ScalarValue::Int64(Some(w))]).unwrap();
                assert_eq!(super::super::exchange::worker_of(&key, 2), worker);
                seen.push(w);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
    }
}
