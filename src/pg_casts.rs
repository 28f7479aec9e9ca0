//! Casts to integer types round, as in PostgreSQL; Arrow's casts truncate.
//!
//! PostgreSQL rounds `numeric` to the nearest integer with ties away from zero
//! (`2.5::int` is 3, `-2.5::int` is -3) and `float4`/`float8` with `rint`, ties to even
//! (`2.5::float8::int` is 2). [`PgCastRule`] runs after type coercion and wraps the
//! operand of every cast from a decimal or float type to an integer type in
//! `strom_round_for_int`, which rounds it that way; the cast then only drops zeros.
//! [`round_for_int`] does the same for single values (INSERT into an integer column).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float32Type, Float64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct PgCastRule;

impl AnalyzerRule for PgCastRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let round = Arc::new(ScalarUDF::new_from_impl(RoundForInt::new()));
        plan.transform_up_with_subqueries(|node| {
            let inputs = node.inputs();
            let schema: DFSchema = if inputs.is_empty() {
                node.schema().as_ref().clone()
            } else {
                merge_schema(&inputs)
            };
            node.map_expressions(|e| {
                e.transform_up(|x| match &x {
                    Expr::Cast(Cast { expr, field }) if field.data_type().is_integer() => {
                        match expr.get_type(&schema) {
                            Ok(from) if rounds(&from) => {
                                let arg = Expr::ScalarFunction(ScalarFunction::new_udf(
                                    Arc::clone(&round),
                                    vec![expr.as_ref().clone()],
                                ));
                                Ok(Transformed::yes(Expr::Cast(Cast::new_from_field(
                                    Box::new(arg),
                                    Arc::clone(field),
                                ))))
                            }
                            _ => Ok(Transformed::no(x)),
                        }
                    }
                    _ => Ok(Transformed::no(x)),
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "strom_pg_casts"
    }
}

fn rounds(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _)
    )
}

/// A decimal rounded to scale 0 (ties away from zero), keeping its scale.
fn round_decimal(v: i128, scale: i8) -> i128 {
    if scale <= 0 {
        return v;
    }
    let f = 10i128.pow(scale as u32);
    let (q, r) = (v / f, v % f);
    let q = if r.abs() * 2 >= f { q + r.signum() } else { q };
    q.saturating_mul(f)
}

/// `v` rounded as PostgreSQL does before it becomes an integer.
pub fn round_for_int(v: ScalarValue) -> ScalarValue {
    match v {
        ScalarValue::Float64(Some(f)) => ScalarValue::Float64(Some(f.round_ties_even())),
        ScalarValue::Float32(Some(f)) => ScalarValue::Float32(Some(f.round_ties_even())),
        ScalarValue::Decimal128(Some(d), p, s) => {
            ScalarValue::Decimal128(Some(round_decimal(d, s)), p, s)
        }
        other => other,
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RoundForInt {
    signature: Signature,
}

impl RoundForInt {
    fn new() -> Self {
        RoundForInt {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for RoundForInt {
    fn name(&self) -> &str {
        "strom_round_for_int"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(s) => ColumnarValue::Scalar(round_for_int(s.clone())),
            ColumnarValue::Array(a) => ColumnarValue::Array(round_array(a)),
        })
    }
}

fn round_array(a: &ArrayRef) -> ArrayRef {
    match a.data_type() {
        DataType::Float64 => Arc::new(
            a.as_primitive::<Float64Type>()
                .unary::<_, Float64Type>(f64::round_ties_even),
        ),
        DataType::Float32 => Arc::new(
            a.as_primitive::<Float32Type>()
                .unary::<_, Float32Type>(f32::round_ties_even),
        ),
        DataType::Decimal128(p, s) => {
            let s8 = *s;
            let out: PrimitiveArray<Decimal128Type> = a
                .as_primitive::<Decimal128Type>()
                .unary(|v| round_decimal(v, s8));
            Arc::new(out.with_data_type(DataType::Decimal128(*p, *s)))
        }
        _ => Arc::clone(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_half_away_from_zero() {
        assert_eq!(round_decimal(25, 1), 30);
        assert_eq!(round_decimal(-25, 1), -30);
        assert_eq!(round_decimal(24, 1), 20);
        assert_eq!(round_decimal(-1249, 2), -1200);
        assert_eq!(round_decimal(7, 0), 7);
    }

    #[test]
    fn floats_round_half_to_even() {
        let r = |f: f64| match round_for_int(ScalarValue::Float64(Some(f))) {
            ScalarValue::Float64(Some(f)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(r(2.5), 2.0);
        assert_eq!(r(3.5), 4.0);
        assert_eq!(r(-2.5), -2.0);
        assert_eq!(r(2.4999), 2.0);
        let a: ArrayRef = Arc::new(datafusion::arrow::array::Float64Array::from(vec![0.5, 1.5]));
        let rounded = round_array(&a);
        assert_eq!(
            rounded.as_primitive::<Float64Type>().values().to_vec(),
            vec![0.0, 2.0]
        );
    }
}
