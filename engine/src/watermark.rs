//! Event-time watermarks of tables and sources (`WATERMARK FOR ts AS ts - INTERVAL '30'
//! SECOND`).
//!
//! A relation's watermark is a value of its watermark column: no row with a smaller value
//! will be used any more. It only grows. Each write transaction that adds rows to a
//! relation with a watermark ([`crate::database::WriteTxn::commit`]):
//!
//! 1. sets rows whose event time is below the watermark *as it was before the transaction*
//!    (or NULL) aside as late: they are not stored or handed to views, but kept in the late
//!    rows store ([`late_key`], shown as `strom_catalog.late_rows`) with the reason and the
//!    watermark;
//! 2. raises the watermark to the largest value of the watermark expression over the
//!    on-time rows (or to a value the writer computed itself, as the Kafka source does per
//!    partition, see [`crate::database::WriteTxn::set_watermark`]);
//! 3. stores the new watermark under [`key`] and puts it in the transaction's change-log
//!    entry, so the stream runtime sees it exactly when it sees the rows.
//!
//! Because late rows never reach a view, an operator may drop state the watermark has
//! passed, and a window closed by it never changes again.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use strom_catalog::{TableDef, TableId};

use crate::error::{EngineError, Result};
use crate::keys::META_PREFIX;

const TAG: &[u8] = b"watermark";
const LATE_TAG: &[u8] = b"late";
const TTL_TAG: &[u8] = b"ttl";

/// The key range of a `WITH TTL` table's expiry index: `encode(time) ++ row key -> row
/// key`, so the rows a new watermark expires are one range scan.
pub fn ttl_range(table: TableId) -> (Vec<u8>, Vec<u8>) {
    let mut lo = vec![META_PREFIX];
    lo.extend_from_slice(TTL_TAG);
    lo.extend_from_slice(&table.0.to_be_bytes());
    let hi = crate::keys::prefix_successor(&lo).expect("starts with 0x00");
    (lo, hi)
}

/// The key of a relation's current (writer-side) watermark.
pub fn key(table: TableId) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(TAG);
    k.extend_from_slice(&table.0.to_be_bytes());
    k
}

/// The key range of every relation's late rows.
pub fn late_range() -> (Vec<u8>, Vec<u8>) {
    let mut lo = vec![META_PREFIX];
    lo.extend_from_slice(LATE_TAG);
    let hi = crate::keys::prefix_successor(&lo).expect("starts with 0x00");
    (lo, hi)
}

/// The key range of one relation's late rows (dropped with it).
pub fn late_table_range(table: TableId) -> (Vec<u8>, Vec<u8>) {
    let mut lo = late_range().0;
    lo.extend_from_slice(&table.0.to_be_bytes());
    let hi = crate::keys::prefix_successor(&lo).expect("starts with 0x00");
    (lo, hi)
}

/// The key of one late row; `id` is unique in the database (a row id).
pub fn late_key(table: TableId, id: i64) -> Vec<u8> {
    let mut k = late_table_range(table).0;
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

/// A late row as kept: JSON `{"reason", "watermark", "event_time", "row"}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LateRow {
    pub reason: String,
    pub watermark: String,
    pub event_time: String,
    /// The row's visible columns as text (NULL: `None`), in column order.
    pub row: Vec<Option<String>>,
}

/// The table id of a late row key.
pub fn late_table_of(key: &[u8]) -> Option<TableId> {
    let base = 1 + LATE_TAG.len();
    key.get(base..base + 4)
        .and_then(|b| b.try_into().ok())
        .map(|b| TableId(u32::from_be_bytes(b)))
}

/// Evaluates a relation's watermark declaration over rows.
#[derive(Debug)]
pub struct Watermarker {
    /// The expression's SQL text it was planned from (to notice a changed definition).
    pub expr_sql: String,
    column: usize,
    expr: Arc<dyn PhysicalExpr>,
    /// The expression never decreases as the watermark column grows and reads no other
    /// column (`ts`, `ts - INTERVAL '4' SECOND`; see
    /// [`crate::stream::project_filter::monotone_in`]): its maximum over rows is its
    /// value at the largest `ts`, so a batch evaluates it once.
    monotone: bool,
    /// The relation's visible columns.
    schema: SchemaRef,
}

/// What an Arrow batch of new rows does to a watermark (see [`Watermarker::split_batch`]).
#[derive(Debug, Default)]
pub struct BatchSplit {
    /// The late rows: index in the batch and why.
    pub late: Vec<(usize, String)>,
    /// The rows to keep (`None`: all of them).
    pub on_time: Option<datafusion::arrow::array::BooleanArray>,
    /// The largest watermark expression value over the on-time rows.
    pub max: Option<ScalarValue>,
}

/// What a batch of new rows does to a watermark.
#[derive(Debug, Default)]
pub struct Split {
    /// Per row: why it is late, or `None` when it is on time.
    pub late: Vec<Option<String>>,
    /// The largest watermark expression value over the on-time rows.
    pub max: Option<ScalarValue>,
}

impl Watermarker {
    /// Plans the watermark of `def` (None: it has none).
    pub fn new(def: &TableDef) -> Result<Option<Watermarker>> {
        let Some(wm) = &def.watermark else {
            return Ok(None);
        };
        let schema: SchemaRef = Arc::new(Schema::new(
            def.visible_columns()
                .map(|(_, c)| Field::new(&c.name, c.ty.to_arrow(), true))
                .collect::<Vec<_>>(),
        ));
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let expr = ctx.parse_sql_expr(&wm.expr, &df_schema)?;
        let want = schema.field(wm.column).data_type().clone();
        let expr = datafusion::logical_expr::Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(expr),
            want,
        ));
        let expr = ctx.create_physical_expr(expr, &df_schema)?;
        let monotone =
            crate::stream::project_filter::monotone_in(&expr, &schema) == Some(wm.column);
        Ok(Some(Watermarker {
            expr_sql: wm.expr.clone(),
            column: wm.column,
            expr,
            monotone,
            schema,
        }))
    }

    /// The visible columns (positions) the watermark expression reads, its event-time
    /// column among them.
    pub fn columns_read(&self) -> Vec<usize> {
        let mut read: Vec<usize> = datafusion::physical_expr::utils::collect_columns(&self.expr)
            .iter()
            .map(|c| c.index())
            .collect();
        read.push(self.column);
        read
    }

    /// The watermark column's index.
    pub fn column(&self) -> usize {
        self.column
    }

    /// Splits new rows (their visible columns) into late and on-time ones against the
    /// watermark `current`, and computes the expression's maximum over the on-time ones.
    pub fn split(&self, rows: &[&[ScalarValue]], current: Option<&ScalarValue>) -> Result<Split> {
        if rows.is_empty() {
            return Ok(Split::default());
        }
        let values = self.evaluate(rows)?;
        let mut out = Split {
            late: Vec::with_capacity(rows.len()),
            max: None,
        };
        for (i, row) in rows.iter().enumerate() {
            let ts = &row[self.column];
            let late = if ts.is_null() {
                Some(format!(
                    "no event time: \"{}\" is NULL",
                    self.schema.field(self.column).name()
                ))
            } else {
                match current {
                    Some(w) if ts.partial_cmp(w) == Some(std::cmp::Ordering::Less) => {
                        Some(format!(
                            "behind the watermark: \"{}\" = {} < {}",
                            self.schema.field(self.column).name(),
                            display(ts),
                            display(w)
                        ))
                    }
                    _ => None,
                }
            };
            if late.is_none() && values.is_valid(i) {
                let v = ScalarValue::try_from_array(&values, i)?;
                if out
                    .max
                    .as_ref()
                    .is_none_or(|m| v.partial_cmp(m) == Some(std::cmp::Ordering::Greater))
                {
                    out.max = Some(v);
                }
            }
            out.late.push(late);
        }
        Ok(out)
    }

    /// [`Watermarker::split`] for rows that come as one Arrow batch of the relation's
    /// visible columns: the same rules, computed with Arrow kernels.
    pub fn split_batch(
        &self,
        batch: &RecordBatch,
        current: Option<&ScalarValue>,
    ) -> Result<BatchSplit> {
        use datafusion::arrow::compute::kernels::{boolean, cmp};
        use datafusion::arrow::compute::{filter, is_null};
        let n = batch.num_rows();
        if n == 0 {
            return Ok(BatchSplit::default());
        }
        let ts = batch.column(self.column);
        let nulls = is_null(ts)?;
        let late = match current {
            Some(w) => {
                let w = datafusion::arrow::array::Scalar::new(w.to_array()?);
                boolean::or_kleene(&nulls, &cmp::lt(ts, &w)?)?
            }
            None => nulls,
        };
        // A monotone expression is evaluated once, at the largest event time: with
        // `ts - INTERVAL`, Arrow's interval arithmetic per row was a tenth of the CPU of
        // reading a CSV file.
        let values = if self.monotone {
            Arc::clone(ts)
        } else {
            self.expr.evaluate(batch)?.into_array(n)?
        };
        let mut out = BatchSplit::default();
        let values = if late.true_count() == 0 {
            values
        } else {
            let name = self.schema.field(self.column).name();
            for i in (0..n).filter(|&i| late.is_valid(i) && late.value(i)) {
                let v = ScalarValue::try_from_array(ts, i)?;
                out.late.push((
                    i,
                    match current {
                        Some(w) if !v.is_null() => format!(
                            "behind the watermark: \"{name}\" = {} < {}",
                            display(&v),
                            display(w)
                        ),
                        _ => format!("no event time: \"{name}\" is NULL"),
                    },
                ));
            }
            let keep = boolean::not(&late)?;
            let kept = filter(&values, &keep)?;
            out.on_time = Some(keep);
            kept
        };
        let mut acc =
            datafusion::functions_aggregate::min_max::MaxAccumulator::try_new(values.data_type())?;
        datafusion::logical_expr::Accumulator::update_batch(&mut acc, &[values])?;
        let max = datafusion::logical_expr::Accumulator::evaluate(&mut acc)?;
        let max = if self.monotone && !max.is_null() {
            crate::stream::project_filter::evaluate_at(&self.expr, &self.schema, self.column, &max)?
        } else {
            max
        };
        out.max = (!max.is_null()).then_some(max);
        Ok(out)
    }

    /// The watermark expression over rows (their visible columns), all in one batch.
    fn evaluate(&self, rows: &[&[ScalarValue]]) -> Result<ArrayRef> {
        let columns: Vec<ArrayRef> = (0..self.schema.fields().len())
            .map(|c| {
                let t = self.schema.field(c).data_type();
                ScalarValue::iter_to_array(rows.iter().map(|r| {
                    r.get(c)
                        .cloned()
                        .unwrap_or_else(|| ScalarValue::try_from(t).unwrap_or(ScalarValue::Null))
                }))
            })
            .collect::<std::result::Result<_, _>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(self.expr.evaluate(&batch)?.into_array(rows.len())?)
    }

    /// The watermark expression per row (None where it is NULL), in one batch.
    pub fn eval_all(&self, rows: &[&[ScalarValue]]) -> Result<Vec<Option<ScalarValue>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.evaluate(rows)?;
        (0..rows.len())
            .map(|i| {
                Ok(values
                    .is_valid(i)
                    .then(|| ScalarValue::try_from_array(&values, i))
                    .transpose()?)
            })
            .collect()
    }
}

/// Encodes a watermark value for storage.
pub fn encode(v: &ScalarValue) -> Result<Vec<u8>> {
    crate::row::encode_row(std::slice::from_ref(v))
}

/// Decodes a watermark stored by [`encode`] as a value of `column`'s type.
pub fn decode(bytes: &[u8], ty: &datafusion::arrow::datatypes::DataType) -> Result<ScalarValue> {
    crate::row::decode_row(bytes, std::slice::from_ref(ty))
        .map_err(|reason| EngineError::Corrupt {
            table: "watermark".into(),
            reason,
        })?
        .pop()
        .ok_or_else(|| EngineError::Corrupt {
            table: "watermark".into(),
            reason: "empty".into(),
        })
}

/// The larger of two watermarks.
pub fn max(a: Option<ScalarValue>, b: Option<ScalarValue>) -> Option<ScalarValue> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.partial_cmp(&a) == Some(std::cmp::Ordering::Greater) {
            b
        } else {
            a
        }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The name of [`window_start_udf`].
pub const WINDOW_START: &str = "strom_window_start";

/// `strom_window_start(ts, stride_micros, offset_micros)`: the start of the window of
/// length `stride` (aligned to 1970-01-01 00:00:00 UTC plus `offset`) that contains `ts`,
/// of `ts`'s own type (`date_bin` would return nanoseconds). `TUMBLE` and `HOP` are
/// rewritten into it; it never decreases as `ts` grows, so watermarks pass through it.
pub fn window_start_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(WindowStart {
        signature: datafusion::logical_expr::Signature::any(
            3,
            datafusion::logical_expr::Volatility::Immutable,
        ),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowStart {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for WindowStart {
    fn name(&self) -> &str {
        WINDOW_START
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        arg_types: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        use datafusion::arrow::datatypes::{DataType, TimeUnit};
        match &arg_types[0] {
            DataType::Timestamp(_, tz) => {
                Ok(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
            }
            other => Err(datafusion::error::DataFusionError::Plan(format!(
                "window functions need a timestamp or timestamptz time column, not {other}"
            ))),
        }
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::{AsArray, TimestampMicrosecondArray};
        use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
        use datafusion::logical_expr::ColumnarValue;
        let int = |v: &ColumnarValue| -> datafusion::error::Result<i64> {
            match v {
                ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                    ScalarValue::Int64(Some(n)) => Ok(n),
                    _ => Err(datafusion::error::DataFusionError::Plan(
                        "window size and offset must not be NULL".into(),
                    )),
                },
                _ => Err(datafusion::error::DataFusionError::Plan(
                    "window size and offset must be constants".into(),
                )),
            }
        };
        let (stride, offset) = (int(&args.args[1])?, int(&args.args[2])?);
        if stride <= 0 || offset < 0 || offset >= stride {
            return Err(datafusion::error::DataFusionError::Plan(
                "window size must be positive and the offset between 0 and the size".into(),
            ));
        }
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let ts = args.args[0].to_array(args.number_rows)?;
        let tz = match ts.data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            other => {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "window functions need a timestamp column, not {other}"
                )))
            }
        };
        let ts = datafusion::arrow::compute::cast(
            &ts,
            &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        )?;
        // Saturating: a window start at the edge of the range stays ordered.
        let out: TimestampMicrosecondArray =
            ts.as_primitive::<TimestampMicrosecondType>().unary(|t| {
                t.saturating_sub(offset)
                    .div_euclid(stride)
                    .saturating_mul(stride)
                    .saturating_add(offset)
            });
        let out: ArrayRef = Arc::new(out.with_timezone_opt(tz));
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

/// A watermark or event time as text (`2024-01-01T00:05:30+00:00`).
pub fn display(v: &ScalarValue) -> String {
    if v.is_null() {
        return "NULL".into();
    }
    v.to_array()
        .ok()
        .and_then(|a| datafusion::arrow::util::display::array_value_to_string(&a, 0).ok())
        .unwrap_or_else(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    use strom_catalog::{ColumnDef, SchemaId, SqlType, WatermarkDef};

    fn marker(expr: &str) -> Watermarker {
        marker_of(expr, SqlType::Timestamp)
    }

    fn marker_of(expr: &str, ts_type: SqlType) -> Watermarker {
        let column = |name: &str, ty| ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            default: None,
            hidden: false,
        };
        let def = TableDef {
            id: TableId(1),
            schema: SchemaId(0),
            name: "bid".into(),
            columns: vec![column("ts", ts_type), column("v", SqlType::BigInt)],
            pk: vec![],
            user_pk: false,
            view: None,
            connector: None,
            watermark: Some(WatermarkDef {
                column: 0,
                expr: expr.into(),
                late_table: None,
                ttl: false,
            }),
            indexes: vec![],
            next_index_id: 0,
        };
        Watermarker::new(&def).unwrap().unwrap()
    }

    /// The watermark a batch raises is the expression's largest value over its on-time
    /// rows, whether the expression is evaluated once (monotone) or per row; and only the
    /// forms that cannot decrease as `ts` grows take the shortcut.
    #[test]
    fn a_monotone_expression_is_evaluated_once_with_the_same_maximum() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                datafusion::arrow::datatypes::DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Microsecond,
                    None,
                ),
                true,
            ),
            Field::new("v", datafusion::arrow::datatypes::DataType::Int64, true),
        ]));
        // The largest ts has the smallest v: an expression reading v peaks elsewhere.
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(5_000_000),
                    None,
                    Some(9_000_000),
                    Some(1_000_000),
                ])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(0), Some(8)])),
            ],
        )
        .unwrap();
        let ts = |us: i64| ScalarValue::TimestampMicrosecond(Some(us), None);
        for (expr, monotone, want) in [
            ("ts", true, ts(9_000_000)),
            ("ts - INTERVAL '4' SECOND", true, ts(5_000_000)),
            ("ts + INTERVAL '1' SECOND", true, ts(10_000_000)),
            // Reads v: its largest value is at the smallest ts.
            (
                "CASE WHEN v > 5 THEN ts + INTERVAL '1' HOUR ELSE ts END",
                false,
                ts(3_601_000_000),
            ),
            // Decreasing in ts: its maximum is at the smallest ts.
            (
                "TIMESTAMP '2000-01-01 00:00:00' - (ts - TIMESTAMP '1970-01-01 00:00:00')",
                false,
                ScalarValue::TimestampMicrosecond(Some(946_684_800_000_000 - 1_000_000), None),
            ),
        ] {
            let m = marker(expr);
            assert_eq!(m.monotone, monotone, "{expr}");
            let got = m.split_batch(&batch, None).unwrap();
            assert_eq!(got.max, Some(want.clone()), "{expr}");
            // The row path, which always evaluates every row, agrees.
            let rows: Vec<Vec<ScalarValue>> = (0..batch.num_rows())
                .map(|i| {
                    (0..2)
                        .map(|c| ScalarValue::try_from_array(batch.column(c), i).unwrap())
                        .collect()
                })
                .collect();
            let refs: Vec<&[ScalarValue]> = rows.iter().map(Vec::as_slice).collect();
            assert_eq!(m.split(&refs, None).unwrap().max, Some(want), "{expr}");
        }
        // Late rows do not count: against a watermark of 6 s only the 9 s row is on time.
        let m = marker("ts - INTERVAL '4' SECOND");
        let got = m.split_batch(&batch, Some(&ts(6_000_000))).unwrap();
        assert_eq!(got.max, Some(ts(5_000_000)));
        assert_eq!(got.late.len(), 3);
    }

    /// The same for a TIMESTAMPTZ column: the shortcut keeps the time zone of the column.
    #[test]
    fn a_monotone_expression_over_timestamptz_keeps_its_zone() {
        let ty = SqlType::Timestamptz.to_arrow();
        let datafusion::arrow::datatypes::DataType::Timestamp(_, zone) = &ty else {
            panic!("TIMESTAMPTZ is an Arrow timestamp");
        };
        let zone = zone.clone();
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", ty.clone(), true),
            Field::new("v", datafusion::arrow::datatypes::DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(5_000_000), Some(9_000_000)])
                        .with_timezone_opt(zone.clone()),
                ),
                Arc::new(Int64Array::from(vec![Some(1), Some(2)])),
            ],
        )
        .unwrap();
        let m = marker_of("ts - INTERVAL '4' SECOND", SqlType::Timestamptz);
        assert!(m.monotone);
        let got = m.split_batch(&batch, None).unwrap();
        assert_eq!(
            got.max,
            Some(ScalarValue::TimestampMicrosecond(Some(5_000_000), zone))
        );
    }
}
