//! Reading string literals as PostgreSQL does when their type comes from the context.
//!
//! `strom_sql::literal` handles literals whose type is written in the SQL (casts, INSERT
//! and UPDATE targets). [`PgLiteralRule`] handles the rest in the logical plan: a string
//! literal compared with a `bytea`, `interval` or array expression (`WHERE b = '\x01'`,
//! `WHERE iv = '1 day'`) is parsed with PostgreSQL's input syntax before DataFusion's type
//! coercion would cast it with Arrow's (or give up).

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

/// A PostgreSQL literal of Arrow type `dt`, if Strom reads that type differently from Arrow.
pub fn pg_scalar(dt: &DataType, s: &str) -> Option<Result<ScalarValue, strom_sql::SqlError>> {
    Some(match dt {
        DataType::Binary => {
            strom_sql::literal::parse_bytea(s).map(|b| ScalarValue::Binary(Some(b)))
        }
        DataType::Interval(_) => strom_sql::literal::parse_interval(s).map(|(m, d, us)| {
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(m, d, us * 1000)))
        }),
        DataType::List(field) => strom_sql::literal::parse_array(s).and_then(|items| {
            let elem = field.data_type();
            let values = items
                .into_iter()
                .map(|item| match item {
                    None => ScalarValue::try_from(elem).map_err(|e| bad(&e.to_string())),
                    Some(t) => match pg_scalar(elem, &t) {
                        Some(v) => v,
                        None => ScalarValue::Utf8(Some(t.clone()))
                            .cast_to(elem)
                            .map_err(|_| {
                                bad(&format!("invalid input syntax for type {elem}: \"{t}\""))
                            }),
                    },
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                &values, elem,
            )))
        }),
        _ => return None,
    })
}

fn bad(m: &str) -> strom_sql::SqlError {
    strom_sql::SqlError::InvalidValue {
        code: "22P02",
        message: m.to_string(),
    }
}

#[derive(Debug, Default)]
pub struct PgLiteralRule;

fn is_comparison(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
    )
}

fn utf8_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => Some(s),
        _ => None,
    }
}

fn rewrite(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
        return Ok(Transformed::no(e));
    };
    if !is_comparison(op) {
        return Ok(Transformed::no(e));
    }
    for (lit_side, other) in [(right, left), (left, right)] {
        let Some(s) = utf8_literal(lit_side) else {
            continue;
        };
        let Ok(dt) = other.get_type(schema) else {
            continue;
        };
        if let Some(v) = pg_scalar(&dt, s) {
            let v = v.map_err(|e| DataFusionError::External(Box::new(e)))?;
            let lit = Expr::Literal(v, None);
            let (l, r) = if std::ptr::eq(lit_side.as_ref(), right.as_ref()) {
                (left.as_ref().clone(), lit)
            } else {
                (lit, right.as_ref().clone())
            };
            return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(l),
                *op,
                Box::new(r),
            ))));
        }
    }
    Ok(Transformed::no(e))
}

impl AnalyzerRule for PgLiteralRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let inputs = node.inputs();
            if inputs.len() != 1 {
                return Ok(Transformed::no(node));
            }
            let schema: Arc<DFSchema> = Arc::clone(inputs[0].schema());
            node.map_expressions(|e| e.transform_up(|x| rewrite(x, &schema)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "strom_pg_literals"
    }
}

/// A timestamp literal without a zone, read in the session's zone, as an RFC 3339 string;
/// `None` when the literal carries its own offset or is not a plain timestamp.
pub fn localize_timestamp(s: &str, tz: &Tz) -> Option<String> {
    let t = s.trim();
    let naive = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })?;
    let local = tz.from_local_datetime(&naive).earliest()?;
    Some(local.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_timestamps_take_the_session_zone() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            localize_timestamp("2025-03-13 17:05:00", &tz).unwrap(),
            "2025-03-13T17:05:00+08:00"
        );
        assert_eq!(localize_timestamp("2025-03-13 17:05:00+02", &tz), None);
        assert_eq!(
            localize_timestamp("2025-03-13", &Tz::UTC).unwrap(),
            "2025-03-13T00:00:00+00:00"
        );
    }

    #[test]
    fn postgres_literals_for_arrow_types() {
        assert_eq!(
            pg_scalar(&DataType::Binary, "\\x0102").unwrap().unwrap(),
            ScalarValue::Binary(Some(vec![1, 2]))
        );
        assert!(pg_scalar(&DataType::Int32, "1").is_none());
    }
}
