//! `ts ± INTERVAL '…'` on a microsecond timestamp, as integer arithmetic.
//!
//! DataFusion evaluates a timestamp plus an `IntervalMonthDayNano` through `chrono`, row
//! by row (months and days need a calendar). Most intervals in streaming queries are a
//! fixed length: the `HOP` and `TUMBLE` rewrites shift `window_start` by microseconds,
//! `window_end` adds the window size, watermarks subtract seconds. The planner replaces
//! such an addition by a [`TimeShift`], which adds a constant number of microseconds to
//! the whole column. An interval is a fixed length when it has no months and, for a
//! timestamp with a time zone other than UTC, no days either (a day in a zone is not
//! always 24 hours).

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, IntervalMonthDayNano, Schema, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;

/// `input + micros` for a microsecond timestamp `input`, with an error on overflow.
#[derive(Debug, Eq)]
pub struct TimeShift {
    input: Arc<dyn PhysicalExpr>,
    micros: i64,
}

impl PartialEq for TimeShift {
    fn eq(&self, other: &Self) -> bool {
        self.micros == other.micros && self.input.as_ref() == other.input.as_ref()
    }
}

impl Hash for TimeShift {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.input.as_ref().hash(state);
        self.micros.hash(state);
    }
}

impl TimeShift {
    pub fn input(&self) -> &Arc<dyn PhysicalExpr> {
        &self.input
    }
}

impl fmt::Display for TimeShift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:+}us", self.input, self.micros)
    }
}

/// The length of a fixed-length interval in microseconds, for a timestamp with (`zoned`)
/// or without a time zone.
fn fixed_micros(i: &IntervalMonthDayNano, zoned: bool) -> Option<i64> {
    if i.months != 0 || (zoned && i.days != 0) || i.nanoseconds % 1000 != 0 {
        return None;
    }
    (i.days as i64)
        .checked_mul(86_400_000_000)?
        .checked_add(i.nanoseconds / 1000)
}

/// Replaces every `timestamp ± fixed interval` in `expr` by a [`TimeShift`] (see the
/// [module](self) documentation).
pub fn shift_fixed_intervals(
    expr: Arc<dyn PhysicalExpr>,
    input: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(expr
        .transform_up(|e| {
            let Some(b) = e.downcast_ref::<BinaryExpr>() else {
                return Ok(Transformed::no(e));
            };
            let sign = match b.op() {
                Operator::Plus => 1,
                Operator::Minus => -1,
                _ => return Ok(Transformed::no(e)),
            };
            // Strom stores TIMESTAMPTZ in UTC, where a day is 24 hours.
            let zoned = match b.left().data_type(input)? {
                DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                    tz.is_some_and(|z| !matches!(z.as_ref(), "UTC" | "+00:00" | "Z"))
                }
                _ => return Ok(Transformed::no(e)),
            };
            let interval = match b.right().downcast_ref::<Literal>().map(Literal::value) {
                Some(ScalarValue::IntervalMonthDayNano(Some(i))) => *i,
                _ => return Ok(Transformed::no(e)),
            };
            match fixed_micros(&interval, zoned).and_then(|m| m.checked_mul(sign)) {
                Some(micros) => Ok(Transformed::yes(Arc::new(TimeShift {
                    input: Arc::clone(b.left()),
                    micros,
                })
                    as Arc<dyn PhysicalExpr>)),
                None => Ok(Transformed::no(e)),
            }
        })?
        .data)
}

fn overflow() -> ArrowError {
    ArrowError::ComputeError("timestamp out of range".into())
}

impl PhysicalExpr for TimeShift {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.input.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.input.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.input.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let micros = self.micros;
        // DataFusion's arithmetic goes through chrono and fails outside its range (about
        // ±262,000 years); so does this, not only on i64 overflow.
        let (lo, hi) = (
            chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros(),
            chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros(),
        );
        let shift = |t: i64| {
            t.checked_add(micros)
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(overflow)
        };
        Ok(match self.input.evaluate(batch)? {
            ColumnarValue::Array(a) => {
                let tz = match a.data_type() {
                    DataType::Timestamp(TimeUnit::Microsecond, tz) => tz.clone(),
                    other => {
                        return Err(DataFusionError::Internal(format!(
                            "a time shift of a {other} column"
                        )))
                    }
                };
                let out: TimestampMicrosecondArray = a
                    .as_primitive::<TimestampMicrosecondType>()
                    .try_unary(shift)?;
                ColumnarValue::Array(Arc::new(out.with_timezone_opt(tz)) as ArrayRef)
            }
            ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(v, tz)) => {
                let v = v.map(shift).transpose()?;
                ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(v, tz))
            }
            ColumnarValue::Scalar(other) => {
                return Err(DataFusionError::Internal(format!(
                    "a time shift of {other:?}"
                )))
            }
        })
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(TimeShift {
            input: Arc::clone(&children[0]),
            micros: self.micros,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.input.fmt_sql(f)?;
        write!(f, " + INTERVAL '{} microseconds'", self.micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::logical_expr::{col, lit};
    use datafusion::physical_expr::create_physical_expr;
    use datafusion::physical_expr::execution_props::ExecutionProps;

    fn batch(tz: Option<&str>) -> RecordBatch {
        let ts = TimestampMicrosecondArray::from(vec![
            Some(1_704_067_200_000_000),
            None,
            Some(-5),
            Some(1_711_846_800_000_000), // 2024-03-31 01:00 UTC, a DST change in Europe
        ])
        .with_timezone_opt(tz.map(Arc::from));
        let schema = Schema::new(vec![Field::new("ts", ts.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap()
    }

    /// The expression as DataFusion plans it, and after the rewrite.
    fn both(
        e: datafusion::logical_expr::Expr,
        b: &RecordBatch,
    ) -> (Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>) {
        let df = DFSchema::try_from(b.schema().as_ref().clone()).unwrap();
        let plain = create_physical_expr(
            &e,
            &df,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        let shifted = shift_fixed_intervals(Arc::clone(&plain), &b.schema()).unwrap();
        (plain, shifted)
    }

    /// Both forms give the same column on `b`.
    fn assert_same(
        plain: &Arc<dyn PhysicalExpr>,
        shifted: &Arc<dyn PhysicalExpr>,
        b: &RecordBatch,
    ) {
        let n = b.num_rows();
        let want = plain.evaluate(b).unwrap().into_array(n).unwrap();
        let got = shifted.evaluate(b).unwrap().into_array(n).unwrap();
        assert_eq!(want.as_ref(), got.as_ref(), "{plain} vs {shifted}");
    }

    fn interval(days: i32, nanos: i64) -> datafusion::logical_expr::Expr {
        lit(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(0, days, nanos),
        )))
    }

    #[test]
    fn fixed_intervals_give_what_datafusion_gives() {
        for tz in [None, Some("Europe/Berlin")] {
            let b = batch(tz);
            let cases = [
                col("ts") - interval(0, 4_000_000_000),
                col("ts") + interval(0, 600_000_000_000),
                (col("ts") - interval(0, 2_000_000_000)) + interval(0, 10_000_000_000),
            ];
            for e in cases {
                let (plain, shifted) = both(e.clone(), &b);
                assert!(
                    shifted.to_string().contains("us"),
                    "{e} was not rewritten: {shifted}"
                );
                assert_same(&plain, &shifted, &b);
            }
        }
        // Days are 24 hours without a time zone, and in UTC (TIMESTAMPTZ's storage).
        let b = batch(Some("UTC"));
        let (plain, shifted) = both(col("ts") - interval(2, 0), &b);
        assert!(shifted.downcast_ref::<TimeShift>().is_some());
        assert_same(&plain, &shifted, &b);
        let b = batch(None);
        let (plain, shifted) = both(col("ts") + interval(1, 0), &b);
        assert!(shifted.downcast_ref::<TimeShift>().is_some());
        assert_same(&plain, &shifted, &b);
    }

    #[test]
    fn calendar_intervals_are_left_to_datafusion() {
        // A day in a time zone (23 hours across a DST change) and a month.
        let b = batch(Some("Europe/Berlin"));
        let (_, shifted) = both(col("ts") + interval(1, 0), &b);
        assert!(shifted.downcast_ref::<TimeShift>().is_none());
        let month = lit(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(1, 0, 0),
        )));
        let (_, shifted) = both(col("ts") + month, &batch(None));
        assert!(shifted.downcast_ref::<TimeShift>().is_none());
    }

    #[test]
    fn out_of_range_is_an_error_where_datafusion_errs() {
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros();
        for (start, by) in [
            (i64::MAX - 1, 1_000_000_000),
            (max - 1_000_000, 2_000_000_000),
        ] {
            let ts = TimestampMicrosecondArray::from(vec![start]);
            let schema = Schema::new(vec![Field::new("ts", ts.data_type().clone(), true)]);
            let b = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap();
            let (plain, shifted) = both(col("ts") + interval(0, by), &b);
            assert!(
                plain.evaluate(&b).is_err(),
                "DataFusion accepts {start} + {by}ns"
            );
            let err = shifted.evaluate(&b).unwrap_err().to_string();
            assert!(err.contains("timestamp out of range"), "{err}");
        }
        // In range up to chrono's last microsecond.
        let ts = TimestampMicrosecondArray::from(vec![max - 1_000_000]);
        let schema = Schema::new(vec![Field::new("ts", ts.data_type().clone(), true)]);
        let b = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap();
        let (plain, shifted) = both(col("ts") + interval(0, 1_000_000_000), &b);
        assert_same(&plain, &shifted, &b);
    }
}
