//! Filter and projection over changelog chunks, evaluated with DataFusion physical
//! expressions on whole Arrow batches.
//!
//! What happens to each op: `+` and `-` rows pass if the predicate is true (NULL counts as
//! false). An update pair `U-`/`U+` stays a pair if both sides pass, becomes a lone `-`
//! (or `+`) if only the old (or new) side passes, and disappears if neither does. After
//! projection, a pair whose old and new rows became identical (the update touched only
//! columns the projection drops) is dropped. No state, nothing to do at barriers.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions,
    UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};

#[derive(Debug)]
pub struct ProjectFilter {
    filter: Option<Arc<dyn PhysicalExpr>>,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    output: SchemaRef,
    /// The input's schema, for carrying watermarks through (see
    /// [`ProjectFilter::watermarks`]); without it none are carried.
    input: Option<SchemaRef>,
}

impl ProjectFilter {
    pub fn try_new(
        filter: Option<Arc<dyn PhysicalExpr>>,
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        output: SchemaRef,
    ) -> Result<Self> {
        if exprs.len() != output.fields().len() {
            return Err(EngineError::Internal(
                "projection width does not match its schema".into(),
            ));
        }
        Ok(ProjectFilter {
            filter,
            exprs,
            output,
            input: None,
        })
    }

    /// Sets the input schema, which carrying watermarks needs.
    pub fn with_input(mut self, input: SchemaRef) -> Self {
        self.input = Some(input);
        self
    }

    /// The watermarks of the output columns, given those of the input columns
    /// (`input` describes them). A filter keeps them; an output column gets one when its
    /// expression never decreases as one watermarked input column grows (see
    /// [`monotone_in`]): it is that expression evaluated at the input's watermark.
    pub fn watermarks(&self, wms: &[Option<ScalarValue>]) -> Result<Vec<Option<ScalarValue>>> {
        let mut out = Vec::with_capacity(self.exprs.len());
        let Some(input) = &self.input else {
            return Ok(vec![None; self.exprs.len()]);
        };
        if wms.iter().all(Option::is_none) {
            return Ok(vec![None; self.exprs.len()]);
        }
        for e in &self.exprs {
            let wm = match monotone_in(e, input) {
                Some(c) => match &wms.get(c) {
                    Some(Some(w)) => Some(evaluate_at(e, input, c, w)?).filter(|v| !v.is_null()),
                    _ => None,
                },
                None => None,
            };
            out.push(wm);
        }
        Ok(out)
    }

    pub fn apply(&self, chunk: &StreamChunk) -> Result<StreamChunk> {
        let batch = chunk.data();
        let (ops, rows) = match &self.filter {
            None => (
                chunk.ops().to_vec(),
                (0..chunk.len() as u32).collect::<Vec<_>>(),
            ),
            Some(f) => {
                let mask = f.evaluate(batch)?.into_array(batch.num_rows())?;
                let mask: &BooleanArray = mask.as_boolean_opt().ok_or_else(|| {
                    EngineError::Internal("filter predicate is not boolean".into())
                })?;
                select(chunk.ops(), |i| mask.is_valid(i) && mask.value(i))
            }
        };
        // Every row kept (no filter, or one all rows pass) needs no copy of the columns:
        // `select` keeps row order, so then `rows` is `0..n`.
        let filtered = if rows.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_rows(batch, rows)?
        };
        let options = RecordBatchOptions::new().with_row_count(Some(filtered.num_rows()));
        let columns: Vec<ArrayRef> = self
            .exprs
            .iter()
            .map(|e| {
                e.evaluate(&filtered)
                    .and_then(|v| v.into_array(filtered.num_rows()))
            })
            .collect::<Result<_, _>>()?;
        let projected =
            RecordBatch::try_new_with_options(Arc::clone(&self.output), columns, &options)?;
        drop_no_op_updates(ops, projected)
    }
}

/// `e`'s value for a row of `input` whose column `column` is `value` and whose other
/// columns are NULL: for an expression [`monotone_in`] that column, its value at a
/// watermark (or at the largest value of a batch).
pub fn evaluate_at(
    e: &Arc<dyn PhysicalExpr>,
    input: &SchemaRef,
    column: usize,
    value: &ScalarValue,
) -> Result<ScalarValue> {
    let columns: Vec<ArrayRef> = input
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == column {
                value.to_array_of_size(1)
            } else {
                Ok(new_null_array(f.data_type(), 1))
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    let batch = RecordBatch::try_new(Arc::clone(input), columns)?;
    let v = e.evaluate(&batch)?.into_array(1)?;
    Ok(ScalarValue::try_from_array(&v, 0)?)
}

/// The input column an expression never decreases in, when it reads exactly one column and
/// is built only from what keeps order: the column itself, casts, adding or subtracting a
/// constant, casts between time types, and `date_bin`/`date_trunc` and window starts (time
/// bucketing). Watermarks pass through such
/// expressions (`window_start = date_bin(size, ts)` gets `date_bin(size, watermark)`).
pub fn monotone_in(
    e: &Arc<dyn PhysicalExpr>,
    input: &datafusion::arrow::datatypes::Schema,
) -> Option<usize> {
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
    use datafusion::physical_expr::ScalarFunctionExpr;
    let any: &dyn PhysicalExpr = e.as_ref();
    if let Some(c) = any.downcast_ref::<Column>() {
        return Some(c.index());
    }
    if let Some(c) = any.downcast_ref::<CastExpr>() {
        // Only casts between time types keep order (to text or to a time of day, say,
        // would not).
        use datafusion::arrow::datatypes::DataType;
        let is_time = |t: &DataType| {
            matches!(
                t,
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
            )
        };
        let from = c.expr().data_type(input).ok()?;
        return if is_time(&from) && is_time(c.cast_type()) {
            monotone_in(c.expr(), input)
        } else {
            None
        };
    }
    if let Some(s) = any.downcast_ref::<super::time_shift::TimeShift>() {
        return monotone_in(s.input(), input);
    }
    if let Some(b) = any.downcast_ref::<BinaryExpr>() {
        let is_const = |x: &Arc<dyn PhysicalExpr>| x.downcast_ref::<Literal>().is_some();
        return match b.op() {
            Operator::Plus if is_const(b.left()) => monotone_in(b.right(), input),
            Operator::Plus | Operator::Minus if is_const(b.right()) => monotone_in(b.left(), input),
            _ => None,
        };
    }
    if let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() {
        let args = f.args();
        return match f.name() {
            // date_bin(stride, source [, origin]), date_trunc(part, source)
            "date_bin" | "date_trunc" if args.len() >= 2 => {
                let others_const = args
                    .iter()
                    .enumerate()
                    .all(|(i, a)| i == 1 || a.downcast_ref::<Literal>().is_some());
                if others_const {
                    monotone_in(&args[1], input)
                } else {
                    None
                }
            }
            // strom_window_start(ts, stride, offset)
            crate::watermark::WINDOW_START
                if args.len() == 3
                    && args[1..]
                        .iter()
                        .all(|a| a.downcast_ref::<Literal>().is_some()) =>
            {
                monotone_in(&args[0], input)
            }
            _ => None,
        };
    }
    None
}

/// The ops and source row indices that survive a per-row predicate, keeping update pairs
/// consistent.
fn select(ops: &[Op], pass: impl Fn(usize) -> bool) -> (Vec<Op>, Vec<u32>) {
    let mut out_ops = Vec::with_capacity(ops.len());
    let mut rows = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        if ops[i] == Op::UpdateDelete && ops.get(i + 1) == Some(&Op::UpdateInsert) {
            match (pass(i), pass(i + 1)) {
                (true, true) => {
                    out_ops.extend([Op::UpdateDelete, Op::UpdateInsert]);
                    rows.extend([i as u32, i as u32 + 1]);
                }
                (true, false) => {
                    out_ops.push(Op::Delete);
                    rows.push(i as u32);
                }
                (false, true) => {
                    out_ops.push(Op::Insert);
                    rows.push(i as u32 + 1);
                }
                (false, false) => {}
            }
            i += 2;
            continue;
        }
        if pass(i) {
            out_ops.push(match ops[i] {
                Op::UpdateDelete => Op::Delete,
                Op::UpdateInsert => Op::Insert,
                op => op,
            });
            rows.push(i as u32);
        }
        i += 1;
    }
    (out_ops, rows)
}

/// Removes `U-`/`U+` pairs whose two rows are equal.
fn drop_no_op_updates(ops: Vec<Op>, batch: RecordBatch) -> Result<StreamChunk> {
    let equal = |a: usize, b: usize| {
        batch
            .columns()
            .iter()
            .all(|c| c.slice(a, 1) == c.slice(b, 1))
    };
    let (keep_ops, keep): (Vec<Op>, Vec<u32>) = {
        let mut o = Vec::with_capacity(ops.len());
        let mut k = Vec::with_capacity(ops.len());
        let mut i = 0;
        while i < ops.len() {
            if ops[i] == Op::UpdateDelete
                && ops.get(i + 1) == Some(&Op::UpdateInsert)
                && equal(i, i + 1)
            {
                i += 2;
                continue;
            }
            o.push(ops[i]);
            k.push(i as u32);
            i += 1;
        }
        (o, k)
    };
    if keep.len() == ops.len() {
        return StreamChunk::new(ops, batch);
    }
    StreamChunk::new(keep_ops, take_rows(&batch, keep)?)
}

/// The rows of `batch` at `rows`, in that order.
fn take_rows(batch: &RecordBatch, rows: Vec<u32>) -> Result<RecordBatch> {
    let indices = UInt32Array::from(rows);
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<Result<_, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(indices.len()));
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &options,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::logical_expr::{col, lit, Expr};
    use datafusion::physical_expr::create_physical_expr;

    fn physical(e: Expr, input: &SchemaRef) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(input.as_ref().clone()).unwrap();
        create_physical_expr(
            &e,
            &df,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap()
    }

    /// `SELECT c0, c2 * 2 FROM t WHERE c2 > 10` over (c0 bigint, c1 text, c2 double)
    fn op(input: &StreamChunk) -> ProjectFilter {
        let schema = input.data().schema();
        let out = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("kw2", DataType::Float64, true),
        ]));
        ProjectFilter::try_new(
            Some(physical(col("c2").gt(lit(10.0)), &schema)),
            vec![
                physical(col("c0"), &schema),
                physical(col("c2") * lit(2.0), &schema),
            ],
            out,
        )
        .unwrap()
    }

    #[test]
    fn update_pairs_split_when_one_side_fails_the_filter() {
        let input = StreamChunk::from_pretty(
            "   I T F
             +  1 a 20
             +  2 b 5
             -  3 c .
             U- 4 d 30
             U+ 4 d 8
             U- 5 e 1
             U+ 5 e 11
             U- 6 f 1
             U+ 6 f 2
             U- 7 g 12
             U+ 7 g 13",
        );
        let out = op(&input).apply(&input).unwrap();
        assert_eq!(
            out.to_pretty(),
            "+ 1 40\n- 4 60\n+ 5 22\nU- 7 24\nU+ 7 26\n"
        );
    }

    #[test]
    fn updates_invisible_after_projection_are_dropped() {
        let input = StreamChunk::from_pretty(
            "   I T F
             U- 1 a 20
             U+ 1 b 20",
        );
        assert!(op(&input).apply(&input).unwrap().is_empty());
    }
}
