//! Window functions (`f(...) OVER (PARTITION BY ... ORDER BY ...)`) and top-N
//! (`ORDER BY ... LIMIT n OFFSET m`), maintained by recomputing the partitions that
//! changed.
//!
//! State: one [`StateTable`] holding each partition's rows (prefix: the memcomparable
//! partition key; suffix: the memcomparable row, so equal rows share an entry; value: the
//! row's count as 8 bytes big-endian, then the row). A top-N has a single partition.
//!
//! When a partition is first touched in an epoch its current output is computed and
//! kept; ops then only change the stored rows. At the barrier every touched partition's
//! output is computed again and the difference (as a multiset of rows) is emitted:
//! `-` for rows that left, `+` for rows that arrived. So a new reading that changes only
//! the last row's `lag` emits one `-`/`+` pair, not the partition.
//!
//! Computing a partition: its rows (each repeated by its count) are sorted by the
//! `ORDER BY` keys, ties broken by the rows' memcomparable order, which makes the result
//! deterministic ("stable under ties": a tie never flips because of an unrelated
//! change). A window then evaluates DataFusion's own window expressions over the sorted
//! partition (frames, `lag`/`lead` defaults and peers as DataFusion computes them); a
//! top-N takes rows `offset .. offset + limit`.
//!
//! A top-N keeps its rows in an *ordered* state table instead: the suffix is the row's
//! `ORDER BY` key (encoded so bytes sort as the clause says, see
//! [`keys::encode_sort_datum`]) and then the memcomparable row. Its output is the entries
//! `offset .. offset + limit` read lazily from the start of the table, so computing it
//! costs `offset + limit` entries of time and memory however many rows the input has.
//!
//! Cost: a changed window partition costs time proportional to its size, and it is held
//! in memory while it is recomputed; fine for the per-device partitions of grid checks.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{HashMap, ScalarValue};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::WindowExpr;

use super::chunk::{Op, StreamChunk};
use super::plan::AggWindow;
use super::window_index::WindowIndex;
use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;
use crate::state::{multiset_count, StateAlloc, StateTable};

/// What is computed per partition.
#[derive(Debug, Clone)]
pub enum Recompute {
    /// Window expressions sharing one `PARTITION BY` and `ORDER BY`; each adds a column.
    Window(Vec<Arc<dyn WindowExpr>>),
    /// Rows `offset .. offset + limit` (all from `offset` when `limit` is `None`).
    TopN { offset: usize, limit: Option<usize> },
}

#[derive(Debug)]
pub struct OverWindow {
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    kind: Recompute,
    input: SchemaRef,
    types: Vec<DataType>,
    output: SchemaRef,
    rows: StateTable,
    /// Partitions touched since the last flush, with their output before it, in
    /// first-touch order.
    touched: HashMap<Vec<u8>, usize>,
    before: Vec<(Vec<u8>, Vec<Vec<ScalarValue>>)>,
    /// Partitioned by a watermarked column: the open partitions by that column.
    window: Option<WindowIndex>,
    /// Touched partitions' encoded window column (windowed only).
    window_keys: HashMap<Vec<u8>, Vec<u8>>,
}

fn corrupt(reason: String) -> EngineError {
    EngineError::Corrupt {
        table: "window state".into(),
        reason,
    }
}

impl OverWindow {
    /// How many columns the output has (the input's, then the window functions').
    pub fn output_width(&self) -> usize {
        self.output.fields().len()
    }

    pub fn try_new(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        kind: Recompute,
        input: SchemaRef,
        output: SchemaRef,
        window: Option<AggWindow>,
        state: &mut StateAlloc,
    ) -> Result<Self> {
        let extra = match &kind {
            Recompute::Window(exprs) => exprs.len(),
            Recompute::TopN { .. } => 0,
        };
        if output.fields().len() != input.fields().len() + extra {
            return Err(EngineError::Internal(
                "window output is not its input plus one column per function".into(),
            ));
        }
        let rows = match &kind {
            Recompute::Window(_) => state.table(),
            Recompute::TopN { .. } => state.ordered_table(),
        };
        Ok(OverWindow {
            partition_by,
            order_by,
            kind,
            types: input
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            input,
            output,
            rows,
            touched: HashMap::default(),
            before: Vec::new(),
            // Allocated last, so an unwindowed operator keeps its table numbers.
            window: window.map(|cfg| WindowIndex::new(cfg, state)),
            window_keys: HashMap::default(),
        })
    }

    /// Tells a worker of a parallel operator which one it is (see [`WindowIndex`]).
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        if let Some(w) = &mut self.window {
            w.set_worker(worker, workers);
        }
    }

    /// The watermarks of the output columns: partition columns keep their input's.
    pub fn output_watermarks(&self, input: &[Option<ScalarValue>]) -> Vec<Option<ScalarValue>> {
        let mut out = vec![None; self.output.fields().len()];
        for e in &self.partition_by {
            if let Some(c) = e.downcast_ref::<datafusion::physical_expr::expressions::Column>() {
                if c.index() < out.len() {
                    out[c.index()] = input.get(c.index()).cloned().flatten();
                }
            }
        }
        out
    }

    /// Like [`OverWindow::flush`], then closes the partitions the watermark passed: their
    /// state is dropped and, with `EMIT ON WINDOW CLOSE`, their final rows are emitted
    /// (the only time they are).
    pub fn flush_with_watermarks(
        &mut self,
        input_watermarks: &[Option<ScalarValue>],
    ) -> Result<StreamChunk> {
        let mut out = self.flush_changes()?;
        let Some(w) = &self.window else {
            return StreamChunk::from_rows(&self.output, &out);
        };
        let cfg = w.cfg;
        if cfg.emit_on_close {
            out.clear();
        }
        let wm = self.partition_by[cfg.key]
            .downcast_ref::<datafusion::physical_expr::expressions::Column>()
            .and_then(|c| input_watermarks.get(c.index()).cloned().flatten());
        let Some(wm) = wm else {
            return StreamChunk::from_rows(&self.output, &out);
        };
        let mut bound = Vec::new();
        keys::encode_key_datum(&wm, &mut bound)?;
        let closed = self.window.as_mut().expect("checked").take_closed(&bound)?;
        for prefix in closed {
            if cfg.emit_on_close {
                for row in self.compute(&prefix)? {
                    out.push((Op::Insert, row));
                }
            }
            let gone: Vec<Vec<u8>> = self.rows.bucket(&prefix)?.keys().cloned().collect();
            for s in gone {
                self.rows.delete(&prefix, &s)?;
            }
        }
        StreamChunk::from_rows(&self.output, &out)
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        let mut out = vec![&mut self.rows];
        if let Some(t) = self.window.as_mut().and_then(WindowIndex::table) {
            out.push(t);
        }
        out
    }

    /// Folds a chunk into the stored partitions.
    pub fn apply(&mut self, chunk: &StreamChunk) -> Result<()> {
        let batch = chunk.data();
        let n = batch.num_rows();
        let keys_cols: Vec<ArrayRef> = self
            .partition_by
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        // A top-N's entries sort by the ORDER BY keys first.
        let sort_cols: Vec<ArrayRef> = match self.kind {
            Recompute::TopN { .. } => self
                .order_by
                .iter()
                .map(|s| s.expr.evaluate(batch).and_then(|v| v.into_array(n)))
                .collect::<std::result::Result<_, _>>()?,
            Recompute::Window(_) => Vec::new(),
        };
        let mut prefix = Vec::new();
        let mut suffix = Vec::new();
        for (i, op) in chunk.ops().iter().enumerate() {
            prefix.clear();
            for c in &keys_cols {
                keys::encode_array_datum(c.as_ref(), i, &mut prefix)?;
            }
            if !self.touched.contains_key(prefix.as_slice()) {
                let out = self.compute(&prefix)?;
                self.touched.insert(prefix.clone(), self.before.len());
                self.before.push((prefix.clone(), out));
                if let Some(w) = &self.window {
                    let mut k = Vec::new();
                    keys::encode_array_datum(keys_cols[w.cfg.key].as_ref(), i, &mut k)?;
                    self.window_keys.insert(prefix.clone(), k);
                }
            }
            suffix.clear();
            for (c, s) in sort_cols.iter().zip(&self.order_by) {
                let o = s.options;
                keys::encode_sort_datum(c.as_ref(), i, o.descending, o.nulls_first, &mut suffix)?;
            }
            for c in batch.columns() {
                keys::encode_array_datum(c.as_ref(), i, &mut suffix)?;
            }
            self.rows.multiset_add(&prefix, &suffix, op.sign(), || {
                let values = batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, i))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                row::encode_row(&values)
            })?;
        }
        Ok(())
    }

    /// The changes of every partition touched since the last flush.
    pub fn flush(&mut self) -> Result<StreamChunk> {
        let out = self.flush_changes()?;
        StreamChunk::from_rows(&self.output, &out)
    }

    fn flush_changes(&mut self) -> Result<Vec<(Op, Vec<ScalarValue>)>> {
        if let Some(w) = self.window.as_mut().filter(|w| w.needs_load()) {
            // Partitions are stored under their keys, the window column among them.
            let types = self
                .partition_by
                .iter()
                .map(|e| e.data_type(&self.input))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            w.load(&self.rows, &types)?;
        }
        self.touched.clear();
        let mut out = Vec::new();
        for (prefix, before) in std::mem::take(&mut self.before) {
            let after = self.compute(&prefix)?;
            if let (Some(w), Some(k)) = (&mut self.window, self.window_keys.remove(&prefix)) {
                // Keep the open-partition index: in while the partition has rows.
                if after.is_empty() {
                    w.remove(&k, &prefix)?;
                } else if before.is_empty() {
                    w.open(&k, &prefix)?;
                }
            }
            diff(before, after, &mut out)?;
        }
        Ok(out)
    }

    /// A partition's output rows, from its stored rows.
    fn compute(&mut self, prefix: &[u8]) -> Result<Vec<Vec<ScalarValue>>> {
        if let Recompute::TopN { offset, limit } = self.kind {
            return self.top_n(prefix, offset, limit);
        }
        let mut rows = Vec::new();
        for value in self.rows.bucket(prefix)?.values() {
            let count = multiset_count(value)?;
            let row = row::decode_row(&value[8..], &self.types).map_err(corrupt)?;
            for _ in 0..count {
                rows.push(row.clone());
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let columns = (0..self.types.len())
            .map(|c| ScalarValue::iter_to_array(rows.iter().map(|r| r[c].clone())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        let batch = RecordBatch::try_new_with_options(Arc::clone(&self.input), columns, &options)?;
        // Sort by the ORDER BY keys; rows arrive in memcomparable order, and the position
        // as the last key makes ties keep it.
        let mut sort: Vec<SortColumn> = self
            .order_by
            .iter()
            .map(|s| {
                Ok(SortColumn {
                    values: s.expr.evaluate(&batch)?.into_array(n)?,
                    options: Some(s.options),
                })
            })
            .collect::<Result<_>>()?;
        sort.push(SortColumn {
            values: Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            options: None,
        });
        let sorted = take_record_batch(&batch, &lexsort_to_indices(&sort, None)?)?;
        let (sorted, window_columns) = match &self.kind {
            Recompute::Window(exprs) => {
                let cols = exprs
                    .iter()
                    .map(|e| e.evaluate(&sorted))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                (sorted, cols)
            }
            Recompute::TopN { .. } => unreachable!("top-N is read in order, not sorted"),
        };
        let mut out = Vec::with_capacity(sorted.num_rows());
        for i in 0..sorted.num_rows() {
            let mut row = Vec::with_capacity(self.output.fields().len());
            for c in sorted.columns().iter().chain(&window_columns) {
                row.push(ScalarValue::try_from_array(c, i)?);
            }
            out.push(row);
        }
        Ok(out)
    }
}

impl OverWindow {
    /// Rows `offset .. offset + limit` of the ordered entries under `prefix`.
    fn top_n(
        &mut self,
        prefix: &[u8],
        offset: usize,
        limit: Option<usize>,
    ) -> Result<Vec<Vec<ScalarValue>>> {
        let mut skip = offset;
        let mut want = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let types = &self.types;
        self.rows.scan_ordered(prefix, false, |_, value| {
            let count = multiset_count(value)? as usize;
            let skipped = count.min(skip);
            skip -= skipped;
            let take = (count - skipped).min(want);
            if take > 0 {
                let row = row::decode_row(&value[8..], types).map_err(corrupt)?;
                for _ in 0..take {
                    out.push(row.clone());
                }
                want -= take;
            }
            Ok(want > 0)
        })?;
        Ok(out)
    }
}

/// Appends the ops that turn the multiset `before` into `after`.
fn diff(
    before: Vec<Vec<ScalarValue>>,
    after: Vec<Vec<ScalarValue>>,
    out: &mut Vec<(Op, Vec<ScalarValue>)>,
) -> Result<()> {
    let mut net: HashMap<Vec<u8>, i64> = HashMap::default();
    let encoded_before = before
        .iter()
        .map(|r| row::encode_row(r))
        .collect::<Result<Vec<_>>>()?;
    let encoded_after = after
        .iter()
        .map(|r| row::encode_row(r))
        .collect::<Result<Vec<_>>>()?;
    for k in &encoded_before {
        *net.entry(k.clone()).or_default() -= 1;
    }
    for k in &encoded_after {
        *net.entry(k.clone()).or_default() += 1;
    }
    for (k, r) in encoded_before.iter().zip(before) {
        let c = net.get_mut(k).expect("counted above");
        if *c < 0 {
            *c += 1;
            out.push((Op::Delete, r));
        }
    }
    for (k, r) in encoded_after.iter().zip(after) {
        let c = net.get_mut(k).expect("counted above");
        if *c > 0 {
            *c -= 1;
            out.push((Op::Insert, r));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::temp_alloc;
    use crate::state::StateAlloc;
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    fn schema(names: &[&str], types: &[DataType]) -> SchemaRef {
        Arc::new(Schema::new(
            names
                .iter()
                .zip(types)
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Top 2 of (id I, v I) by v DESC, then id.
    fn top2() -> (tempfile::TempDir, OverWindow) {
        let (dir, mut alloc) = temp_alloc();
        (dir, top2_in(&mut alloc))
    }

    fn top2_in(alloc: &mut StateAlloc) -> OverWindow {
        let input = schema(&["id", "v"], &[DataType::Int64, DataType::Int64]);
        let order = vec![PhysicalSortExpr::new(
            Arc::new(Column::new("v", 1)),
            SortOptions {
                descending: true,
                nulls_first: false,
            },
        )];
        OverWindow::try_new(
            vec![],
            order,
            Recompute::TopN {
                offset: 0,
                limit: Some(2),
            },
            Arc::clone(&input),
            input,
            None,
            alloc,
        )
        .unwrap()
    }

    fn run(op: &mut OverWindow, text: &str) -> String {
        op.apply(&StreamChunk::from_pretty(&format!("I I\n{text}")))
            .unwrap();
        op.flush().unwrap().to_pretty()
    }

    #[test]
    fn top_n_emits_only_rows_entering_and_leaving_the_top() {
        let (_dir, mut op) = top2();
        assert_eq!(run(&mut op, "+ 1 10\n+ 2 30\n+ 3 20"), "+ 2 30\n+ 3 20\n");
        // below the top: nothing
        assert_eq!(run(&mut op, "+ 4 5"), "");
        // a new leader pushes the second out
        assert_eq!(run(&mut op, "+ 5 40"), "- 3 20\n+ 5 40\n");
        // deleting a leader lets the next one in
        assert_eq!(run(&mut op, "- 2 30"), "- 2 30\n+ 3 20\n");
        // ties (v = 20) are broken by the row, the same way every time
        assert_eq!(run(&mut op, "+ 0 20"), "- 3 20\n+ 0 20\n");
        assert_eq!(run(&mut op, "+ 9 1\n- 9 1"), "");
    }

    #[test]
    fn top_n_reads_only_the_top_of_a_large_input() {
        let (_dir, mut alloc) = temp_alloc();
        let store = alloc.store().clone();
        let budget = Arc::clone(alloc.budget());
        let mut op = top2_in(&mut alloc);
        let rows: String = (0..20_000)
            .map(|i| format!("+ {i} {}\n", i % 977))
            .collect();
        run(&mut op, &rows);
        crate::state::tests::spill(&store, op.state_tables());
        assert_eq!(budget.used(), 0);
        // a new leader: the op reads the old top 2 and the new one, not 20k rows
        assert_eq!(run(&mut op, "+ 99999 5000"), "- 1953 976\n+ 99999 5000\n");
        assert!(budget.used() < 2_000, "{} bytes cached", budget.used());
        crate::state::tests::spill(&store, op.state_tables());
        // deleting down through the ties of v = 976 (20 rows share it), in row order
        assert_eq!(run(&mut op, "- 99999 5000"), "- 99999 5000\n+ 1953 976\n");
        assert_eq!(run(&mut op, "- 976 976"), "- 976 976\n+ 2930 976\n");
    }

    #[test]
    fn nulls_sort_as_the_order_says() {
        let (_dir, mut op) = top2();
        assert_eq!(run(&mut op, "+ 1 .\n+ 2 1"), "+ 2 1\n+ 1 .\n");
    }
}
