//! The wall clock temporal filters (`ts > now() - INTERVAL '1 hour'`) read, in
//! microseconds since 1970-01-01 UTC.
//!
//! Tests need time they control: a server started with `STROM_TEST_CLOCK=1` lets
//! `SET strom_test_clock = '2024-01-01 00:00:00+00'` set it (see [`set_manual`]); until
//! then, and without that variable, it is the system clock.

use std::sync::atomic::{AtomicI64, Ordering};

/// `i64::MIN`: not set (the system clock).
static MANUAL: AtomicI64 = AtomicI64::new(i64::MIN);

/// A time value (any timestamp unit, or a date) in microseconds since the epoch.
pub fn micros_of(v: &datafusion::common::ScalarValue) -> Option<i64> {
    use datafusion::common::ScalarValue;
    match v {
        ScalarValue::TimestampMicrosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1_000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000),
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(t.div_euclid(1_000)),
        ScalarValue::Date32(Some(d)) => Some(*d as i64 * 86_400_000_000),
        _ => None,
    }
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    match MANUAL.load(Ordering::SeqCst) {
        i64::MIN => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default(),
        t => t,
    }
}

/// The test clock's value, if it was set.
pub fn manual() -> Option<i64> {
    match MANUAL.load(Ordering::SeqCst) {
        i64::MIN => None,
        t => Some(t),
    }
}

/// Whether this process may set the clock (`STROM_TEST_CLOCK=1`).
pub fn manual_allowed() -> bool {
    std::env::var("STROM_TEST_CLOCK").is_ok_and(|v| v == "1")
}

/// Sets the clock (tests only, see the module docs).
pub fn set_manual(micros: i64) {
    MANUAL.store(micros, Ordering::SeqCst);
}

/// `strom_now()`: what `now()` becomes in a materialized view, so that DataFusion keeps it
/// (it folds `now()` into the planning time) and the stream planner can turn comparisons
/// with it into temporal filters. Evaluated directly it is [`now_micros`], as timestamptz.
pub fn now_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(NowFn {
        signature: datafusion::logical_expr::Signature::nullary(
            datafusion::logical_expr::Volatility::Volatile,
        ),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct NowFn {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for NowFn {
    fn name(&self) -> &str {
        crate::stream::planner::NOW
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        ))
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        Ok(datafusion::logical_expr::ColumnarValue::Scalar(
            datafusion::common::ScalarValue::TimestampMicrosecond(
                Some(now_micros()),
                Some("UTC".into()),
            ),
        ))
    }
}
