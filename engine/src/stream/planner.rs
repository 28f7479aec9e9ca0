//! From DataFusion's optimized logical plan to a [`PlanNode`] tree.
//!
//! Supported: table and view scans, filters, projections (every DataFusion scalar
//! function), `GROUP BY` and global aggregates (`count`/`sum`/`avg`/`min`/`max` kept
//! incrementally; every other aggregate, DISTINCT and ordered ones included, recomputed
//! per group from its input multiset), `GROUPING SETS`/`ROLLUP`/`CUBE` (one branch per
//! set), inner/outer/semi/anti equi-joins with extra conditions and `IS NOT DISTINCT FROM`
//! keys, `NOT IN` with PostgreSQL's NULL semantics, keyless joins against a single-row
//! input (uncorrelated scalar subqueries become one), `UNION ALL` (and `UNION`,
//! `DISTINCT`, `DISTINCT ON`, `EXCEPT`, `INTERSECT`, which DataFusion turns into aggregates
//! and semi/anti joins), `VALUES`, window functions, `ORDER BY ... LIMIT/OFFSET` (top-N)
//! and subquery aliases. `ORDER BY` alone is dropped (a view has no order). Anything else
//! is rejected with an error that names the construct: cross joins of two unbounded
//! inputs, `LIMIT` without `ORDER BY`, `WITH RECURSIVE`, `unnest`, `EXISTS`/`IN` under
//! `OR` (mark joins).

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema, NullEquality, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::ColumnarValue;
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::{
    Expr, GroupingSet, JoinType as DfJoinType, LogicalPlan, LogicalPlanBuilder,
};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_planner::create_window_expr;

use super::hash_agg::{AggCall, AggKind, GeneralAgg};
use super::hash_join::JoinType;
use super::over_window::Recompute;
use super::plan::{column_refs, LookupVia, NodeKind, PlanNode};
use super::temporal_filter::Bound;
use crate::error::{EngineError, Result};
use crate::provider::StromTable;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};

/// The column a temporal join key compares: a column, or one cast to a type whose values
/// compare the same (an integer widened, a string in another Arrow representation). The
/// lookup casts the stream's value to the dimension column's type; a value that does not
/// fit matches nothing, as it equals no value of that column.
fn key_column<'e>(e: &'e Expr, schema: &DFSchema) -> Option<&'e Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Cast(cast) => {
            let Expr::Column(c) = cast.expr.as_ref() else {
                return None;
            };
            let from = schema.qualified_field_from_column(c).ok()?.1.data_type();
            let to = cast.field.data_type();
            let same_kind = (from.is_integer() && to.is_integer())
                || (matches!(
                    from,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) && matches!(
                    to,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ));
            same_kind.then_some(c)
        }
        _ => None,
    }
}

fn unsupported(what: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported(format!("{what} is not supported in materialized views yet"))
}

/// The stream plan of a view's (optimized) query.
pub fn plan(logical: &LogicalPlan) -> Result<PlanNode> {
    plan_with_lookups(logical, &[])
}

/// Like [`plan`]; joins with the relations named `lookups` (by their alias in the query:
/// `FOR SYSTEM_TIME AS OF PROCTIME()`) are planned as processing-time lookups.
pub fn plan_with_lookups(logical: &LogicalPlan, lookups: &[String]) -> Result<PlanNode> {
    Planner {
        props: ExecutionProps::new(),
        subqueries: std::cell::Cell::new(0),
        lookups: lookups.to_vec(),
    }
    .node(logical)
}

struct Planner {
    props: ExecutionProps,
    /// Scalar subqueries lifted into joins so far (for unique aliases).
    subqueries: std::cell::Cell<usize>,
    /// Relations joined by processing time (their names in the query).
    lookups: Vec<String>,
}

fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
    ))
}

fn out_schema(plan: &LogicalPlan) -> SchemaRef {
    nullable(plan.schema().as_arrow())
}

impl Planner {
    fn expr(&self, e: &Expr, input: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        if e.exists(|x| {
            Ok(matches!(
                x,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })? {
            return Err(unsupported("a subquery in an expression"));
        }
        if e.exists(|x| Ok(is_now(x)))? {
            return Err(unsupported(
                "now() in a materialized view outside a temporal filter (a WHERE condition comparing a timestamp column with now() plus or minus a constant interval, like ts > now() - INTERVAL '1 hour')",
            ));
        }
        let expr =
            create_physical_expr(e, input, &self.props, &PhysicalPlanningContext::default())?;
        Ok(super::time_shift::shift_fixed_intervals(
            expr,
            input.as_arrow(),
        )?)
    }

    fn node(&self, plan: &LogicalPlan) -> Result<PlanNode> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let provider = source_as_provider(&scan.source)?;
                let table = provider
                    .downcast_ref::<StromTable>()
                    .ok_or_else(|| unsupported(format!("reading \"{}\"", scan.table_name)))?;
                let def = table.def();
                if crate::lookup::is_external(def) {
                    return Err(EngineError::Unsupported(format!(
                        "a materialized view can read the lookup table \"{}\" only as the dimension of a temporal join (JOIN {} FOR SYSTEM_TIME AS OF PROCTIME() AS d ON ...): its rows stay in the external database, whose changes Strom does not see",
                        def.name, def.name
                    )));
                }
                let full_schema = def.visible_arrow_schema();
                let unique_key = (def.user_pk && def.view.is_none()).then(|| def.pk.clone());
                let mut node = PlanNode {
                    kind: NodeKind::Source {
                        relation: def.id,
                        name: def.name.clone(),
                        is_view: def.is_view(),
                    },
                    inputs: vec![],
                    schema: nullable(&full_schema),
                    unique_key,
                    // A source's rows are only ever appended (CDC and upsert formats
                    // need a table), and so are a table's with a watermark.
                    append_only: def.is_source() || def.watermark.is_some(),
                };
                // `scan.filters` are ignored: the provider accepts them as Inexact, so
                // DataFusion keeps the same predicates in a Filter above the scan.
                if let Some(projection) = &scan.projection {
                    node = project_columns(node, projection, out_schema(plan));
                }
                Ok(node)
            }
            LogicalPlan::Projection(p) if has_scalar_subquery(&p.expr)? => {
                let (input, exprs) = self.lift_scalar_subqueries(&p.input, &p.expr)?;
                let exprs = exprs
                    .into_iter()
                    .zip(p.schema.fields())
                    .map(|(e, f)| e.alias_if_changed(f.name().clone()))
                    .collect::<datafusion::common::Result<Vec<_>>>()?;
                self.node(&LogicalPlanBuilder::from(input).project(exprs)?.build()?)
            }
            LogicalPlan::Filter(f) if has_scalar_subquery(std::slice::from_ref(&f.predicate))? => {
                let (input, mut exprs) =
                    self.lift_scalar_subqueries(&f.input, std::slice::from_ref(&f.predicate))?;
                let columns: Vec<Expr> = column_exprs(f.input.schema());
                self.node(
                    &LogicalPlanBuilder::from(input)
                        .filter(exprs.remove(0))?
                        .project(columns)?
                        .build()?,
                )
            }
            LogicalPlan::Projection(p) => {
                let mut input = self.node(&p.input)?;
                let in_schema = p.input.schema();
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| self.expr(e, in_schema))
                    .collect::<Result<Vec<_>>>()?;
                if is_identity(&exprs, input.schema.fields().len()) {
                    // Only renames columns: no operator needed.
                    input.schema = out_schema(plan);
                    return Ok(input);
                }
                let columns: Vec<Option<usize>> = p
                    .expr
                    .iter()
                    .map(|e| match e.clone().unalias() {
                        Expr::Column(c) => in_schema.index_of_column(&c).ok(),
                        _ => None,
                    })
                    .collect();
                let unique_key = input.unique_key.as_ref().and_then(|k| {
                    k.iter()
                        .map(|i| columns.iter().position(|c| *c == Some(*i)))
                        .collect::<Option<Vec<_>>>()
                });
                Ok(PlanNode {
                    kind: NodeKind::Project {
                        exprs,
                        texts: p
                            .expr
                            .iter()
                            .map(|e| e.human_display().to_string())
                            .collect(),
                    },
                    schema: out_schema(plan),
                    unique_key,
                    append_only: input.append_only,
                    inputs: vec![input],
                })
            }
            LogicalPlan::Filter(f) if f.predicate.exists(|x| Ok(is_now(x)))? => {
                // Temporal conjuncts become a TemporalFilter over a Filter of the rest.
                let in_schema = f.input.schema();
                let mut rest = Vec::new();
                let mut temporal: Option<(usize, Option<Bound>, Option<Bound>)> = None;
                for c in split_conjunction(&f.predicate) {
                    if !c.exists(|x| Ok(is_now(x)))? {
                        rest.push(c.clone());
                        continue;
                    }
                    let Some((col, lower, upper)) = temporal_bounds(c, in_schema) else {
                        return Err(unsupported(
                            "now() in this condition: a temporal filter compares a timestamp column with now() plus or minus a constant interval, like ts > now() - INTERVAL '1 hour', joined to other conditions by AND; that",
                        ));
                    };
                    temporal = Some(match temporal {
                        None => (col, lower, upper),
                        Some((c0, l0, u0)) if c0 == col => {
                            let merge = |a: Option<Bound>, b: Option<Bound>| match (a, b) {
                                (Some(_), Some(_)) => {
                                    Err(unsupported("two temporal bounds on the same side"))
                                }
                                (a, b) => Ok(a.or(b)),
                            };
                            (col, merge(l0, lower)?, merge(u0, upper)?)
                        }
                        Some(_) => {
                            return Err(unsupported("temporal filters on two different columns"))
                        }
                    });
                }
                let (column, lower, upper) = temporal.expect("the predicate mentions now()");
                let mut input = self.node(&f.input)?;
                if let Some(pred) = conjunction(rest) {
                    let predicate = self.expr(&pred, in_schema)?;
                    input = PlanNode {
                        kind: NodeKind::Filter {
                            predicate,
                            text: pred.human_display().to_string(),
                        },
                        schema: Arc::clone(&input.schema),
                        unique_key: input.unique_key.clone(),
                        append_only: input.append_only,
                        inputs: vec![input],
                    };
                }
                if !super::temporal_filter::TemporalFilter::supports(
                    input.schema.field(column).data_type(),
                ) {
                    return Err(unsupported(format!(
                        "a temporal filter on column \"{}\" of type {}",
                        input.schema.field(column).name(),
                        input.schema.field(column).data_type()
                    )));
                }
                Ok(PlanNode {
                    kind: NodeKind::TemporalFilter {
                        column,
                        lower,
                        upper,
                    },
                    schema: Arc::clone(&input.schema),
                    unique_key: input.unique_key.clone(),
                    // Rows leave as time passes.
                    append_only: false,
                    inputs: vec![input],
                })
            }
            LogicalPlan::Filter(f) => {
                let input = self.node(&f.input)?;
                let predicate = self.expr(&f.predicate, f.input.schema())?;
                Ok(PlanNode {
                    kind: NodeKind::Filter {
                        predicate,
                        text: f.predicate.human_display().to_string(),
                    },
                    schema: Arc::clone(&input.schema),
                    unique_key: input.unique_key.clone(),
                    append_only: input.append_only,
                    inputs: vec![input],
                })
            }
            LogicalPlan::SubqueryAlias(a) => {
                let mut input = self.node(&a.input)?;
                input.schema = out_schema(plan);
                Ok(input)
            }
            LogicalPlan::Sort(s) => match s.fetch {
                // A view has no order: ORDER BY alone is dropped.
                None => self.node(&s.input),
                Some(fetch) => self.top_n(plan, s, 0, Some(fetch)),
            },
            LogicalPlan::Aggregate(a) => self.aggregate(plan, a),
            LogicalPlan::Extension(ext) => {
                let Some(s) = ext.node.as_any().downcast_ref::<SessionNode>() else {
                    return Err(unsupported(format!("the plan node {}", ext.node.name())));
                };
                let input = self.node(&s.input)?;
                if !input.append_only {
                    return Err(unsupported(
                        "SESSION over input that can update or delete rows (it needs append-only input: a table or source with a watermark)",
                    ));
                }
                let in_schema = s.input.schema();
                let time = in_schema.index_of_column(&s.time)?;
                let keys = s
                    .keys
                    .iter()
                    .map(|k| Ok(in_schema.index_of_column(k)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(PlanNode {
                    kind: NodeKind::SessionWindow {
                        time,
                        gap: s.gap,
                        keys,
                    },
                    schema: out_schema(plan),
                    unique_key: None,
                    append_only: true,
                    inputs: vec![input],
                })
            }
            LogicalPlan::Join(j) => self.join(plan, j),
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.node(i))
                    .collect::<Result<Vec<_>>>()?;
                Ok(PlanNode {
                    kind: NodeKind::UnionAll,
                    schema: out_schema(plan),
                    unique_key: None,
                    append_only: inputs.iter().all(|i| i.append_only),
                    inputs,
                })
            }
            LogicalPlan::Limit(l) => {
                use datafusion::logical_expr::{FetchType, SkipType};
                let (SkipType::Literal(skip), FetchType::Literal(fetch)) =
                    (l.get_skip_type()?, l.get_fetch_type()?)
                else {
                    return Err(unsupported("LIMIT or OFFSET with a non-constant count"));
                };
                match l.input.as_ref() {
                    LogicalPlan::Sort(s) => self.top_n(plan, s, skip, fetch),
                    _ => Err(EngineError::Unsupported(
                        "LIMIT or OFFSET without ORDER BY is not supported in materialized \
                         views: which rows it keeps is arbitrary; add an ORDER BY that \
                         decides it"
                            .into(),
                    )),
                }
            }
            LogicalPlan::Window(w) => self.window(plan, w),
            LogicalPlan::Distinct(_) => Err(unsupported("this form of DISTINCT")),
            LogicalPlan::Values(v) => {
                let schema = out_schema(plan);
                let empty = DFSchema::empty();
                let one = RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                let mut rows = Vec::new();
                for r in &v.values {
                    let mut row = Vec::new();
                    for (e, f) in r.iter().zip(schema.fields()) {
                        let value = match self.expr(e, &empty)?.evaluate(&one)? {
                            ColumnarValue::Scalar(v) => v,
                            ColumnarValue::Array(a) => ScalarValue::try_from_array(&a, 0)?,
                        };
                        row.push(if value.data_type() == *f.data_type() {
                            value
                        } else {
                            value.cast_to(f.data_type())?
                        });
                    }
                    rows.push(row);
                }
                Ok(PlanNode {
                    kind: NodeKind::Values { rows },
                    schema,
                    unique_key: None,
                    append_only: true,
                    inputs: vec![],
                })
            }
            LogicalPlan::EmptyRelation(e) => {
                // No columns (`SELECT 1`): one placeholder column the projection above
                // ignores; with columns (a `WHERE false` DataFusion folded): no rows.
                let (schema, rows) = if e.schema.fields().is_empty() {
                    (
                        Arc::new(Schema::new(vec![Field::new(
                            "__placeholder",
                            DataType::Boolean,
                            true,
                        )])),
                        if e.produce_one_row {
                            vec![vec![ScalarValue::Boolean(None)]]
                        } else {
                            vec![]
                        },
                    )
                } else {
                    (out_schema(plan), vec![])
                };
                Ok(PlanNode {
                    kind: NodeKind::Values { rows },
                    schema,
                    unique_key: None,
                    append_only: true,
                    inputs: vec![],
                })
            }
            LogicalPlan::Unnest(_) => Err(unsupported("unnest")),
            LogicalPlan::RecursiveQuery(_) => Err(unsupported("WITH RECURSIVE")),
            other => Err(unsupported(format!(
                "the query construct {}",
                other.display()
            ))),
        }
    }

    fn aggregate(
        &self,
        plan: &LogicalPlan,
        a: &datafusion::logical_expr::Aggregate,
    ) -> Result<PlanNode> {
        let input = self.node(&a.input)?;
        let in_schema = a.input.schema();
        // GROUPING SETS / ROLLUP / CUBE: one branch per grouping set, each with the
        // columns outside the set NULL and the grouping id as an extra key; the union of
        // the branches is aggregated like a plain GROUP BY.
        let (group_exprs, sets): (Vec<Expr>, Option<Vec<Vec<bool>>>) = match a.group_expr.as_slice()
        {
            [Expr::GroupingSet(gs)] => {
                let exprs: Vec<Expr> = gs.distinct_expr().into_iter().cloned().collect();
                let n = exprs.len();
                let sets: Vec<Vec<bool>> = match gs {
                    GroupingSet::Rollup(_) => (0..=n)
                        .rev()
                        .map(|total| (0..n).map(|i| i >= total).collect())
                        .collect(),
                    GroupingSet::Cube(_) => (0..1u64 << n)
                        .map(|m| (0..n).map(|i| m & (1 << i) != 0).collect())
                        .collect(),
                    GroupingSet::GroupingSets(lists) => lists
                        .iter()
                        .map(|l| exprs.iter().map(|e| !l.contains(e)).collect())
                        .collect(),
                };
                (exprs, Some(sets))
            }
            g if g.iter().any(|e| matches!(e, Expr::GroupingSet(_))) => {
                return Err(unsupported(
                    "GROUPING SETS, CUBE or ROLLUP mixed with other GROUP BY items",
                ))
            }
            g => (g.to_vec(), None),
        };
        let ng = group_exprs.len() + usize::from(sets.is_some());
        // Pre-projection: the group keys, then each call's inputs and filter.
        let mut pre: Vec<Expr> = Vec::new();
        let mut calls = Vec::new();
        let out = plan.schema();
        for (i, e) in a.aggr_expr.iter().enumerate() {
            let mut e = e;
            while let Expr::Alias(Alias { expr, .. }) = e {
                e = expr;
            }
            let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
                return Err(unsupported(format!("the aggregate {}", e.human_display())));
            };
            let name = func.name().to_lowercase();
            let simple = !params.distinct
                && params.order_by.is_empty()
                && params.args.len() <= 1
                && matches!(
                    name.as_str(),
                    "count" | "sum" | "avg" | "mean" | "min" | "max"
                );
            let mut kind = match name.as_str() {
                _ if !simple => AggKind::General,
                "count" => {
                    let star = params.args.is_empty()
                        || matches!(
                            params.args.as_slice(),
                            [Expr::Literal(v, _)] if !v.is_null()
                        );
                    if star {
                        AggKind::CountStar
                    } else {
                        AggKind::Count
                    }
                }
                "sum" => AggKind::Sum,
                "avg" | "mean" => AggKind::Avg,
                "min" => AggKind::Min,
                _ => AggKind::Max,
            };
            let output_type = out.field(ng + i).data_type().clone();
            if matches!(kind, AggKind::Sum | AggKind::Avg) {
                let arg_type = params.args[0].get_type(in_schema)?;
                if !(arg_type.is_integer()
                    || arg_type.is_floating()
                    || matches!(arg_type, DataType::Decimal128(..)))
                {
                    kind = AggKind::General;
                }
            }
            let mut arg = None;
            let mut general = None;
            match kind {
                AggKind::CountStar => {}
                AggKind::General => {
                    let lowered = LoweredAggregateBuilder::new(
                        e,
                        in_schema,
                        in_schema.as_arrow(),
                        &self.props,
                        &PhysicalPlanningContext::default(),
                    )
                    .build()?;
                    let func = lowered.aggregate;
                    let mut inputs = Vec::new();
                    let mut push = |x: &Expr| {
                        pre.push(x.clone());
                        inputs.push(pre.len() - 1);
                    };
                    params.args.iter().for_each(&mut push);
                    // Order-insensitive aggregates take no ORDER BY values.
                    if !func.order_bys().is_empty() {
                        params.order_by.iter().for_each(|s| push(&s.expr));
                    }
                    general = Some(GeneralAgg { func, inputs });
                }
                _ => {
                    pre.push(params.args[0].clone());
                    arg = Some(pre.len() - 1);
                }
            }
            let filter = match &params.filter {
                Some(f) => {
                    pre.push(f.as_ref().clone());
                    Some(pre.len() - 1)
                }
                None => None,
            };
            calls.push(AggCall {
                kind,
                arg,
                filter,
                output_type,
                general,
            });
        }
        // Call inputs are numbered after the group keys.
        for c in &mut calls {
            for x in [&mut c.arg, &mut c.filter].into_iter().flatten() {
                *x += ng;
            }
            if let Some(g) = &mut c.general {
                g.inputs.iter_mut().for_each(|x| *x += ng);
            }
        }
        let mut always_present = None;
        let branches: Vec<Vec<Expr>> = match &sets {
            None => vec![group_exprs.iter().cloned().chain(pre.clone()).collect()],
            Some(sets) => {
                let id_type = out.field(group_exprs.len()).data_type().clone();
                let n = group_exprs.len();
                let mut seen: Vec<&Vec<bool>> = Vec::new();
                let mut branches = Vec::new();
                for set in sets {
                    let ordinal = seen.iter().filter(|s| **s == set).count() as u64;
                    seen.push(set);
                    let semantic = set
                        .iter()
                        .fold(0u64, |acc, &null| (acc << 1) | u64::from(null));
                    let id =
                        ScalarValue::UInt64(Some(semantic | (ordinal << n))).cast_to(&id_type)?;
                    let mut exprs = Vec::new();
                    for (e, &null) in group_exprs.iter().zip(set) {
                        exprs.push(if null {
                            Expr::Literal(ScalarValue::try_from(e.get_type(in_schema)?)?, None)
                                .alias(e.schema_name().to_string())
                        } else {
                            e.clone()
                        });
                    }
                    if set.iter().all(|&null| null) && always_present.is_none() {
                        // The grand total: one row even over no input.
                        let mut key = group_exprs
                            .iter()
                            .map(|e| Ok(ScalarValue::try_from(e.get_type(in_schema)?)?))
                            .collect::<Result<Vec<_>>>()?;
                        key.push(id.clone());
                        always_present = Some(key);
                    }
                    exprs.push(Expr::Literal(id, None).alias("__grouping_id"));
                    exprs.extend(pre.iter().cloned());
                    branches.push(exprs);
                }
                branches
            }
        };
        let mut projects = Vec::new();
        for exprs in &branches {
            let physical = exprs
                .iter()
                .map(|e| self.expr(e, in_schema))
                .collect::<Result<Vec<_>>>()?;
            let identity = is_identity(&physical, input.schema.fields().len());
            let pre_schema = Arc::new(Schema::new(
                physical
                    .iter()
                    .zip(exprs)
                    .enumerate()
                    .map(|(i, (p, e))| {
                        let name = if i < ng {
                            e.schema_name().to_string()
                        } else {
                            format!("${i}")
                        };
                        Ok(Field::new(name, p.data_type(in_schema.as_arrow())?, true))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ));
            projects.push(if identity {
                PlanNode {
                    schema: pre_schema,
                    ..input.clone()
                }
            } else {
                PlanNode {
                    kind: NodeKind::Project {
                        exprs: physical,
                        texts: exprs
                            .iter()
                            .map(|e| e.human_display().to_string())
                            .collect(),
                    },
                    schema: pre_schema,
                    unique_key: None,
                    append_only: input.append_only,
                    inputs: vec![input.clone()],
                }
            });
        }
        let project = if projects.len() == 1 {
            projects.pop().expect("one branch")
        } else {
            PlanNode {
                kind: NodeKind::UnionAll,
                schema: Arc::clone(&projects[0].schema),
                unique_key: None,
                append_only: projects.iter().all(|p| p.append_only),
                inputs: projects,
            }
        };
        Ok(PlanNode {
            kind: NodeKind::HashAgg {
                group_keys: (0..ng).collect(),
                calls,
                always_present,
                window: None,
                append_only_input: false,
            },
            schema: out_schema(plan),
            unique_key: Some((0..ng).collect()),
            append_only: false,
            inputs: vec![project],
        })
    }

    /// The dimension of a processing-time join: the right input, when it is a relation
    /// marked `FOR SYSTEM_TIME AS OF PROCTIME()` read directly (with the columns it reads).
    fn lookup_dim(
        &self,
        right: &LogicalPlan,
    ) -> Result<Option<(Arc<strom_catalog::TableDef>, Vec<usize>)>> {
        let (name, scan) = match right {
            LogicalPlan::SubqueryAlias(a) => match a.input.as_ref() {
                LogicalPlan::TableScan(s) => (a.alias.table().to_string(), s),
                _ => return self.lookup_shape(a.alias.table()),
            },
            LogicalPlan::TableScan(s) => (s.table_name.table().to_string(), s),
            _ => return Ok(None),
        };
        if !self.lookups.contains(&name) {
            return Ok(None);
        }
        let provider = source_as_provider(&scan.source)?;
        let table = provider
            .downcast_ref::<StromTable>()
            .ok_or_else(|| unsupported(format!("a temporal join with \"{name}\"")))?;
        let def = Arc::clone(table.def());
        if def.is_source() || def.is_sink() {
            return Err(unsupported(format!(
                "a temporal join with \"{}\", a {} (it stores no rows to look up: use a table or view)",
                def.name,
                def.kind_name()
            )));
        }
        let visible: Vec<usize> = def.visible_columns().map(|(i, _)| i).collect();
        let columns = match &scan.projection {
            Some(p) => p.iter().map(|&i| visible[i]).collect(),
            None => visible,
        };
        Ok(Some((def, columns)))
    }

    fn lookup_shape(
        &self,
        name: &str,
    ) -> Result<Option<(Arc<strom_catalog::TableDef>, Vec<usize>)>> {
        if self.lookups.iter().any(|l| l == name) {
            return Err(unsupported(format!(
                "a temporal join whose dimension \"{name}\" is not read directly (filter it after the join)"
            )));
        }
        Ok(None)
    }

    /// `left JOIN dim FOR SYSTEM_TIME AS OF PROCTIME() ON left.k = dim.pk`.
    fn lookup_join(
        &self,
        plan: &LogicalPlan,
        j: &datafusion::logical_expr::Join,
        dim: Arc<strom_catalog::TableDef>,
        dim_columns: Vec<usize>,
    ) -> Result<PlanNode> {
        let left_outer = match j.join_type {
            DfJoinType::Inner => false,
            DfJoinType::Left => true,
            other => {
                return Err(unsupported(format!(
                    "a {other} temporal join (only JOIN and LEFT JOIN look the dimension up)"
                )))
            }
        };
        if j.filter.is_some() {
            return Err(unsupported(
                "a temporal join with conditions besides key equalities (filter after the join)",
            ));
        }
        let name = &dim.name;
        let left = self.node(&j.left)?;
        let right_schema = j.right.schema();
        // (left column, dimension stored column) per equality.
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for (l, r) in &j.on {
            let (Some(lc), Some(rc)) =
                (key_column(l, j.left.schema()), key_column(r, right_schema))
            else {
                return Err(unsupported(
                    "a temporal join on expressions (join on columns)",
                ));
            };
            let li = j.left.schema().index_of_column(lc)?;
            let ri = right_schema.index_of_column(rc)?;
            let stored = dim_columns[ri];
            if pairs.iter().any(|&(_, c)| c == stored) {
                return Err(unsupported(format!(
                    "a temporal join comparing \"{}\" of \"{name}\" twice",
                    dim.columns[stored].name
                )));
            }
            pairs.push((li, stored));
        }
        let ordered = |columns: &[usize]| -> Option<Vec<usize>> {
            if columns.len() != pairs.len() {
                return None;
            }
            columns
                .iter()
                .map(|c| pairs.iter().find(|(_, d)| d == c).map(|(l, _)| *l))
                .collect()
        };
        let (left_keys, dim_keys, via) = if crate::lookup::is_external(&dim) {
            // The database answers any equality; the user indexes it.
            let connector = dim
                .connector
                .as_ref()
                .and_then(|c| c.options.get("connector").cloned())
                .unwrap_or_default();
            (
                pairs.iter().map(|p| p.0).collect(),
                pairs.iter().map(|p| p.1).collect(),
                LookupVia::External { connector },
            )
        } else {
            let has_key = dim.user_pk
                || dim
                    .view
                    .as_ref()
                    .is_some_and(|_| dim.pk.len() < dim.columns.len() - 1);
            let by_key = has_key.then(|| ordered(&dim.pk)).flatten();
            if let Some(left_keys) = by_key {
                (left_keys, dim.pk.clone(), LookupVia::Key)
            } else if let Some((index, left_keys)) = dim
                .indexes
                .iter()
                .find_map(|i| ordered(&i.columns).map(|l| (i, l)))
            {
                (
                    left_keys,
                    index.columns.clone(),
                    LookupVia::Index {
                        id: index.id,
                        name: index.name.clone(),
                    },
                )
            } else {
                let cols: Vec<String> = pairs
                    .iter()
                    .map(|&(_, c)| format!("\"{}\"", dim.columns[c].name))
                    .collect();
                let what = if has_key {
                    "the primary key"
                } else {
                    "a primary key (it has none)"
                };
                return Err(unsupported(format!(
                    "a temporal join on {} of \"{name}\", which is neither {what} nor an index of it (look rows up by its key, or CREATE INDEX ON {name} ({}))",
                    cols.join(", "),
                    pairs
                        .iter()
                        .map(|&(_, c)| dim.columns[c].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        Ok(PlanNode {
            kind: NodeKind::LookupJoin {
                left_outer,
                left_keys,
                dim: dim.id,
                dim_name: name.clone(),
                dim_keys,
                dim_columns,
                via,
            },
            schema: out_schema(plan),
            unique_key: None,
            append_only: left.append_only,
            inputs: vec![left],
        })
    }

    fn join(&self, plan: &LogicalPlan, j: &datafusion::logical_expr::Join) -> Result<PlanNode> {
        if let Some((dim, columns)) = self.lookup_dim(&j.right)? {
            return self.lookup_join(plan, j, dim, columns);
        }
        if let LogicalPlan::SubqueryAlias(a) = j.left.as_ref() {
            if self.lookups.iter().any(|l| l == a.alias.table()) {
                return Err(unsupported(
                    "a temporal join with the dimension on the left (put it on the right: stream JOIN dim FOR SYSTEM_TIME AS OF PROCTIME())",
                ));
            }
        }
        let join_type = match j.join_type {
            DfJoinType::Inner => JoinType::Inner,
            DfJoinType::Left => JoinType::Left,
            DfJoinType::Right => JoinType::Right,
            DfJoinType::Full => JoinType::Full,
            DfJoinType::LeftSemi => JoinType::LeftSemi,
            DfJoinType::LeftAnti if j.null_aware => return self.not_in(j),
            DfJoinType::LeftAnti => JoinType::LeftAnti,
            other => {
                return Err(unsupported(format!(
                    "a {other} join (EXISTS or IN combined with OR, or a correlated subquery DataFusion cannot decorrelate)"
                )))
            }
        };
        let null_equal = j.null_equality == NullEquality::NullEqualsNull;
        let mut left = self.node(&j.left)?;
        let mut right = self.node(&j.right)?;
        if j.on.is_empty() {
            // Without keys every row of one side meets every row of the other: fine when
            // one side has at most one row (a global aggregate, as in
            // `WHERE v > (SELECT avg(v) FROM t)`), unbounded state and output otherwise.
            let single = |n: &PlanNode| n.unique_key.as_ref().is_some_and(|k| k.is_empty());
            if !single(&left) && !single(&right) {
                return Err(EngineError::Unsupported(
                    "a cross join (a join without an equality condition) of two inputs that \
                     can both have many rows is not supported in materialized views: its \
                     state and output grow with the product of the inputs; join on an \
                     equality of columns, or against a single-row input such as a global \
                     aggregate"
                        .into(),
                ));
            }
        }
        let (lw, rw) = (left.schema.fields().len(), right.schema.fields().len());
        // Key expressions that are not plain columns are computed by a projection on
        // their side, appended after the side's columns, and projected away after the join.
        let mut extra: [Vec<Expr>; 2] = [Vec::new(), Vec::new()];
        let mut keys: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for (l, r) in &j.on {
            for (side, e, schema, width) in
                [(0, l, j.left.schema(), lw), (1, r, j.right.schema(), rw)]
            {
                let index = match e {
                    Expr::Column(c) => schema.index_of_column(c)?,
                    other => {
                        extra[side].push(other.clone());
                        width + extra[side].len() - 1
                    }
                };
                keys[side].push(index);
            }
        }
        let mut ext_schemas = Vec::new();
        for (side, input, logical) in [(0, &mut left, &j.left), (1, &mut right, &j.right)] {
            let in_df = logical.schema();
            if extra[side].is_empty() {
                ext_schemas.push(in_df.as_ref().clone());
                continue;
            }
            let width = input.schema.fields().len();
            let mut exprs = column_refs(&input.schema, 0..width);
            let mut fields: Vec<Field> = input
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            let mut extra_fields = Vec::new();
            for (n, e) in extra[side].iter().enumerate() {
                let p = self.expr(e, in_df)?;
                let f = Field::new(
                    format!("__join_key_{side}_{n}"),
                    p.data_type(in_df.as_arrow())?,
                    true,
                );
                fields.push(f.clone());
                extra_fields.push(f);
                exprs.push(p);
            }
            let mut texts: Vec<String> = (0..width)
                .map(|i| input.schema.field(i).name().clone())
                .collect();
            texts.extend(extra[side].iter().map(|e| e.human_display().to_string()));
            let extra_df = DFSchema::try_from(Schema::new(extra_fields))?;
            ext_schemas.push(in_df.join(&extra_df)?);
            input.wrap(|taken| PlanNode {
                kind: NodeKind::Project { exprs, texts },
                schema: Arc::new(Schema::new(fields)),
                unique_key: taken.unique_key.clone(),
                append_only: taken.append_only,
                inputs: vec![taken],
            });
        }
        let (le, re) = (extra[0].len(), extra[1].len());
        let joined_df = ext_schemas[0].join(&ext_schemas[1])?;
        let condition = match &j.filter {
            Some(f) => Some((self.expr(f, &joined_df)?, f.human_display().to_string())),
            None => None,
        };
        let [left_keys, right_keys] = keys;
        let join_schema = if join_type.left_only() {
            Arc::clone(&left.schema)
        } else {
            nullable(joined_df.as_arrow())
        };
        // A join with a single-row side keeps the other side's key. (A keyed join's output
        // is not keyed by a side's key even for semi/anti joins: a row whose join key
        // changes is deleted by one worker and inserted by another, and the two ops can
        // arrive in either order; a keyless join runs on one worker, in order.)
        let single = |n: &PlanNode| n.unique_key.as_ref().is_some_and(|k| k.is_empty());
        let unique_key = match join_type {
            _ if !j.on.is_empty() => None,
            JoinType::Inner | JoinType::Left if single(&right) => left.unique_key.clone(),
            JoinType::Inner | JoinType::Right if single(&left) => right
                .unique_key
                .as_ref()
                .map(|k| k.iter().map(|i| i + lw + le).collect()),
            _ => None,
        };
        // An inner join of inputs that only gain rows only gains rows (and semi joins
        // too); outer joins retract NULL-padded rows, anti joins retract matches.
        let append_only = matches!(join_type, JoinType::Inner | JoinType::LeftSemi)
            && left.append_only
            && right.append_only;
        // An interval join (`a.ts BETWEEN b.ts - x AND b.ts + y`) drops rows the other
        // side's watermark makes unmatchable. Which sides may is settled once the
        // append-only flags are final (`PlanNode::choose_state_layout`).
        // Semi joins too: a left row is emitted once it has a match, and a row that can
        // meet no future row of the other side no longer changes anything.
        let cleaned_type = matches!(join_type, JoinType::Inner | JoinType::LeftSemi);
        let mut cleaning = match &j.filter {
            Some(f) if cleaned_type => interval_cleaning(f, &joined_df, lw + le, lw, rw),
            _ => [None, None],
        };
        if cleaned_type {
            // An equality of two time columns is the interval `a <= b <= a` (a window
            // join on `window_start`): each side's rows are unmatchable once the other
            // side's watermark passes them.
            let is_time = |n: &PlanNode, i: usize| is_micros(n.schema.field(i).data_type());
            for (&l, &r) in left_keys.iter().zip(&right_keys) {
                if l < lw && r < rw && is_time(&left, l) && is_time(&right, r) {
                    for (side, (column, other_column)) in [(l, r), (r, l)].into_iter().enumerate() {
                        cleaning[side].get_or_insert(super::hash_join::JoinCleaning {
                            column,
                            other_column,
                            offset: 0,
                            in_memory: false,
                            own_bound: false,
                            from_keys: true,
                        });
                    }
                }
            }
        }
        let inputs_append_only_as_planned = left.append_only && right.append_only;
        let join = PlanNode {
            kind: NodeKind::HashJoin {
                join_type,
                left_keys,
                right_keys,
                condition,
                null_equal,
                cleaning,
                inputs_append_only_as_planned,
                rows_by_key: [None, None],
            },
            schema: join_schema,
            unique_key,
            append_only,
            inputs: vec![left, right],
        };
        if le == 0 && re == 0 {
            return Ok(PlanNode {
                schema: out_schema(plan),
                ..join
            });
        }
        let columns: Vec<usize> = if join_type.left_only() {
            (0..lw).collect()
        } else {
            (0..lw).chain(lw + le..lw + le + rw).collect()
        };
        Ok(project_columns(join, &columns, out_schema(plan)))
    }
}

/// Every column of `schema`, as expressions (to project a plan back to them).
fn column_exprs(schema: &DFSchema) -> Vec<Expr> {
    schema.columns().into_iter().map(Expr::Column).collect()
}

/// A window's `PARTITION BY` and `ORDER BY`.
type WindowSpec = (Vec<Expr>, Vec<datafusion::logical_expr::SortExpr>);

fn has_scalar_subquery(exprs: &[Expr]) -> Result<bool> {
    for e in exprs {
        if e.exists(|x| Ok(matches!(x, Expr::ScalarSubquery(_))))? {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Planner {
    /// Uncorrelated scalar subqueries (`WHERE v > (SELECT avg(v) FROM t)`), which
    /// DataFusion leaves in expressions, become a left join without keys against the
    /// subquery (one row when it is an aggregate; the join is rejected otherwise), and
    /// each subquery a column of it. Correlated ones DataFusion already turned into joins.
    fn lift_scalar_subqueries(
        &self,
        input: &Arc<LogicalPlan>,
        exprs: &[Expr],
    ) -> Result<(LogicalPlan, Vec<Expr>)> {
        use datafusion::common::tree_node::Transformed;
        let mut plan = input.as_ref().clone();
        let mut out = Vec::new();
        for e in exprs {
            let rewritten = e.clone().transform_up(|x| {
                let Expr::ScalarSubquery(sq) = x else {
                    return Ok(Transformed::no(x));
                };
                if !sq.outer_ref_columns.is_empty() {
                    return datafusion::common::plan_err!(
                        "a correlated scalar subquery that could not be turned into a join"
                    );
                }
                let n = self.subqueries.get();
                self.subqueries.set(n + 1);
                let alias = format!("__scalar_sq_{n}");
                let field = sq.subquery.schema().field(0).name().clone();
                let right = LogicalPlanBuilder::from(sq.subquery.as_ref().clone())
                    .alias(alias.clone())?
                    .build()?;
                plan = LogicalPlanBuilder::from(std::mem::replace(
                    &mut plan,
                    LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                        produce_one_row: false,
                        schema: Arc::new(DFSchema::empty()),
                    }),
                ))
                .join_on(
                    right,
                    DfJoinType::Left,
                    [datafusion::logical_expr::lit(true)],
                )?
                .build()?;
                Ok(Transformed::yes(Expr::Column(
                    datafusion::common::Column::new(Some(alias), field),
                )))
            })?;
            out.push(rewritten.data);
        }
        Ok((plan, out))
    }

    fn sort_exprs(
        &self,
        sort: &[datafusion::logical_expr::SortExpr],
        schema: &DFSchema,
    ) -> Result<Vec<PhysicalSortExpr>> {
        sort.iter()
            .map(|s| {
                Ok(PhysicalSortExpr::new(
                    self.expr(&s.expr, schema)?,
                    SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                ))
            })
            .collect()
    }

    /// `ORDER BY ... LIMIT fetch OFFSET skip`.
    fn top_n(
        &self,
        plan: &LogicalPlan,
        s: &datafusion::logical_expr::Sort,
        skip: usize,
        fetch: Option<usize>,
    ) -> Result<PlanNode> {
        let input = self.node(&s.input)?;
        let order_by = self.sort_exprs(&s.expr, s.input.schema())?;
        let text = format!(
            "TopN order=[{}] offset={skip} limit={}",
            s.expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fetch.map_or("all".to_string(), |f| f.to_string())
        );
        Ok(PlanNode {
            kind: NodeKind::OverWindow {
                partition_by: vec![],
                order_by,
                recompute: Recompute::TopN {
                    offset: skip,
                    limit: fetch,
                },
                route: None,
                text,
                window: None,
            },
            schema: out_schema(plan),
            unique_key: input.unique_key.clone(),
            append_only: false,
            inputs: vec![input],
        })
    }

    /// Window functions: one operator per distinct `PARTITION BY` + `ORDER BY`, stacked,
    /// then a projection back into the query's column order.
    fn window(&self, plan: &LogicalPlan, w: &datafusion::logical_expr::Window) -> Result<PlanNode> {
        use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionParams};
        let mut node = self.node(&w.input)?;
        let in_df = w.input.schema();
        let width = in_df.fields().len();
        let spec = |e: &Expr| -> Result<WindowSpec> {
            let mut e = e;
            while let Expr::Alias(Alias { expr, .. }) = e {
                e = expr;
            }
            match e {
                Expr::WindowFunction(f) => {
                    let WindowFunction {
                        params:
                            WindowFunctionParams {
                                partition_by,
                                order_by,
                                ..
                            },
                        ..
                    } = f.as_ref();
                    Ok((partition_by.clone(), order_by.clone()))
                }
                other => Err(unsupported(format!(
                    "the window expression {}",
                    other.human_display()
                ))),
            }
        };
        let mut groups: Vec<(WindowSpec, Vec<usize>)> = Vec::new();
        for (i, e) in w.window_expr.iter().enumerate() {
            let sp = spec(e)?;
            match groups.iter_mut().find(|(g, _)| *g == sp) {
                Some((_, members)) => members.push(i),
                None => groups.push((sp, vec![i])),
            }
        }
        let out = out_schema(plan);
        // Where each window column ends up in the stacked output.
        let mut position = vec![0; w.window_expr.len()];
        let mut fields: Vec<Field> = node
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for ((partition, order), members) in &groups {
            let exprs = members
                .iter()
                .map(|&i| {
                    Ok(create_window_expr(
                        &w.window_expr[i],
                        in_df,
                        &self.props,
                        &PhysicalPlanningContext::default(),
                    )?)
                })
                .collect::<Result<Vec<_>>>()?;
            let partition_by = partition
                .iter()
                .map(|e| self.expr(e, in_df))
                .collect::<Result<Vec<_>>>()?;
            let route = partition
                .iter()
                .map(|e| match e {
                    Expr::Column(c) => in_df.index_of_column(c).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<usize>>>()
                .filter(|r| !r.is_empty());
            let order_by = self.sort_exprs(order, in_df)?;
            for &i in members {
                position[i] = fields.len();
                fields.push(out.field(width + i).as_ref().clone());
            }
            let text = format!(
                "OverWindow partition=[{}] order=[{}] [{}]",
                partition
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                order
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                members
                    .iter()
                    .map(|&i| out.field(width + i).name().clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            // Rows change partition (and so worker) when their partition key changes:
            // the output has no key, its rows are counted.
            let unique_key = None;
            node = PlanNode {
                kind: NodeKind::OverWindow {
                    partition_by,
                    order_by,
                    recompute: Recompute::Window(exprs),
                    route,
                    text,
                    window: None,
                },
                schema: Arc::new(Schema::new(fields.clone())),
                unique_key,
                append_only: false,
                inputs: vec![node],
            };
        }
        let columns: Vec<usize> = (0..width).chain(position).collect();
        Ok(project_columns(node, &columns, out))
    }

    /// `x NOT IN (subquery)` with PostgreSQL's NULL semantics: true when the subquery is
    /// empty; otherwise NULL (so the row is dropped) when `x` is NULL or the subquery has a
    /// NULL, else whether `x` is absent. Planned as a plain anti join, crossed with one row
    /// saying whether the subquery has rows and NULLs, and filtered on those. The
    /// single-row side changes only when one of its two flags does (a projection drops
    /// updates that change nothing), so the cross join rarely does work.
    fn not_in(&self, j: &datafusion::logical_expr::Join) -> Result<PlanNode> {
        use datafusion::functions_aggregate::expr_fn::count;
        use datafusion::logical_expr::{lit, ExprFunctionExt};
        let [(lk, rk)] = j.on.as_slice() else {
            return Err(unsupported("NOT IN with several columns"));
        };
        let mut anti = j.clone();
        anti.null_aware = false;
        let stats = LogicalPlanBuilder::from(j.right.as_ref().clone())
            .aggregate(
                Vec::<Expr>::new(),
                vec![
                    count(lit(1)).alias("__not_in_rows"),
                    count(lit(1))
                        .filter(rk.clone().is_null())
                        .build()?
                        .alias("__not_in_nulls"),
                ],
            )?
            .project(vec![
                datafusion::logical_expr::col("__not_in_rows")
                    .gt(lit(0i64))
                    .alias("__not_in_has_rows"),
                datafusion::logical_expr::col("__not_in_nulls")
                    .gt(lit(0i64))
                    .alias("__not_in_has_nulls"),
            ])?
            .alias("__not_in")?
            .build()?;
        let left_columns: Vec<Expr> = column_exprs(j.left.schema());
        let keep = std::ops::Not::not(datafusion::logical_expr::col("__not_in.__not_in_has_rows"))
            .or(lk
                .clone()
                .is_not_null()
                .and(std::ops::Not::not(datafusion::logical_expr::col(
                    "__not_in.__not_in_has_nulls",
                ))));
        let plan = LogicalPlanBuilder::from(LogicalPlan::Join(anti))
            .cross_join(stats)?
            .filter(keep)?
            .project(left_columns)?
            .build()?;
        self.node(&plan)
    }
}

/// True when `exprs` are exactly the input's columns, in order.
fn is_identity(exprs: &[Arc<dyn PhysicalExpr>], input_width: usize) -> bool {
    exprs.len() == input_width
        && exprs.iter().enumerate().all(|(i, e)| {
            e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                .is_some_and(|c| c.index() == i)
        })
}

/// A projection that picks `columns` of `input`.
fn project_columns(input: PlanNode, columns: &[usize], schema: SchemaRef) -> PlanNode {
    if columns.len() == input.schema.fields().len()
        && columns.iter().enumerate().all(|(i, &c)| i == c)
    {
        return PlanNode { schema, ..input };
    }
    let exprs = column_refs(&input.schema, columns.iter().copied());
    let texts = columns
        .iter()
        .map(|&i| input.schema.field(i).name().clone())
        .collect();
    let unique_key = input.unique_key.as_ref().and_then(|k| {
        k.iter()
            .map(|i| columns.iter().position(|c| c == i))
            .collect::<Option<Vec<_>>>()
    });
    PlanNode {
        kind: NodeKind::Project { exprs, texts },
        schema,
        unique_key,
        append_only: input.append_only,
        inputs: vec![input],
    }
}

/// The name the server gives `now()` in materialized views (a volatile function, so
/// DataFusion does not fold it into a constant): see [`temporal_bounds`].
pub const NOW: &str = "strom_now";

fn is_now(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.name() == NOW)
}

/// A microsecond timestamp type (any time zone): casts between these change nothing but
/// the zone, so a comparison through them is a comparison of instants.
fn is_micros(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, _)
    )
}

/// The expression under a cast that changes only the time zone of a microsecond
/// timestamp (None for any other cast: to `date` or `time` it truncates).
fn zone_cast_inner<'a>(e: &'a Expr, schema: &DFSchema) -> Option<&'a Expr> {
    let (inner, to) = match e {
        Expr::Cast(c) => (c.expr.as_ref(), c.field.data_type()),
        Expr::TryCast(c) => (c.expr.as_ref(), c.field.data_type()),
        _ => return None,
    };
    let from = inner.get_type(schema).ok()?;
    (is_micros(&from) && is_micros(to)).then_some(inner)
}

/// `now() [+|- interval]` as an offset from now in microseconds.
fn now_offset(e: &Expr, schema: &DFSchema) -> Option<i64> {
    match e {
        _ if is_now(e) => Some(0),
        Expr::Cast(_) | Expr::TryCast(_) => now_offset(zone_cast_inner(e, schema)?, schema),
        Expr::Alias(a) => now_offset(&a.expr, schema),
        Expr::BinaryExpr(b) => {
            let base = now_offset(&b.left, schema)?;
            let iv = interval_micros(&b.right)?;
            match b.op {
                datafusion::logical_expr::Operator::Plus => base.checked_add(iv),
                datafusion::logical_expr::Operator::Minus => base.checked_sub(iv),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A constant interval without months (months have no fixed length), in microseconds.
fn interval_micros(e: &Expr) -> Option<i64> {
    match e {
        Expr::Cast(c) => interval_micros(&c.expr),
        Expr::Literal(v, _) => match v {
            ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
                Some(v.days as i64 * 86_400_000_000 + v.nanoseconds / 1_000)
            }
            ScalarValue::IntervalDayTime(Some(v)) => {
                Some(v.days as i64 * 86_400_000_000 + v.milliseconds as i64 * 1_000)
            }
            _ => None,
        },
        _ => None,
    }
}

fn column_index(e: &Expr, schema: &DFSchema) -> Option<usize> {
    match e {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        Expr::Cast(_) | Expr::TryCast(_) => column_index(zone_cast_inner(e, schema)?, schema),
        _ => None,
    }
}

/// A temporal conjunct: `col > now() - interval` and the like (either side), or
/// `col BETWEEN now() - a AND now() + b`: the column and its lower and upper bounds.
fn temporal_bounds(e: &Expr, schema: &DFSchema) -> Option<(usize, Option<Bound>, Option<Bound>)> {
    use datafusion::logical_expr::Operator;
    match e {
        Expr::BinaryExpr(b) => {
            let (col, op, off) = match (
                column_index(&b.left, schema),
                now_offset(&b.right, schema),
                now_offset(&b.left, schema),
                column_index(&b.right, schema),
            ) {
                (Some(c), Some(o), _, _) => (c, b.op, o),
                (_, _, Some(o), Some(c)) => (c, b.op.swap()?, o),
                _ => return None,
            };
            let bound = |inclusive| Bound {
                offset: off,
                inclusive,
            };
            match op {
                Operator::Gt => Some((col, Some(bound(false)), None)),
                Operator::GtEq => Some((col, Some(bound(true)), None)),
                Operator::Lt => Some((col, None, Some(bound(false)))),
                Operator::LtEq => Some((col, None, Some(bound(true)))),
                _ => None,
            }
        }
        Expr::Between(b) if !b.negated => {
            let col = column_index(&b.expr, schema)?;
            let lo = now_offset(&b.low, schema)?;
            let hi = now_offset(&b.high, schema)?;
            Some((
                col,
                Some(Bound {
                    offset: lo,
                    inclusive: true,
                }),
                Some(Bound {
                    offset: hi,
                    inclusive: true,
                }),
            ))
        }
        _ => None,
    }
}

/// A join-condition term: a column of the joined row, plus a constant interval.
fn shifted_column(e: &Expr, schema: &DFSchema) -> Option<(usize, i64)> {
    match e {
        // Only microsecond timestamps: their encodings compare as instants.
        Expr::Column(c) => {
            let i = schema.index_of_column(c).ok()?;
            is_micros(schema.field(i).data_type()).then_some((i, 0))
        }
        Expr::Cast(_) | Expr::TryCast(_) => shifted_column(zone_cast_inner(e, schema)?, schema),
        Expr::BinaryExpr(b) => {
            let (col, base) = shifted_column(&b.left, schema)?;
            let iv = interval_micros(&b.right)?;
            match b.op {
                datafusion::logical_expr::Operator::Plus => Some((col, base.checked_add(iv)?)),
                datafusion::logical_expr::Operator::Minus => Some((col, base.checked_sub(iv)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The state cleaning an interval condition allows (see `hash_join::JoinCleaning`): from
/// each conjunct `a + ca <= b + cb` (or `<`, `>=`, `>`, `BETWEEN`) with `a` and `b` on
/// different sides, rows of `b`'s side with `b < watermark(a) - (cb - ca)` can be dropped.
/// `split` is where the right side's columns start in `schema`; `lw`/`rw` the sides'
/// own widths (key columns computed for the join come after them and are not times).
fn interval_cleaning(
    filter: &Expr,
    schema: &DFSchema,
    split: usize,
    lw: usize,
    rw: usize,
) -> [Option<super::hash_join::JoinCleaning>; 2] {
    use datafusion::logical_expr::Operator;
    let mut out = [None, None];
    let side_of = |i: usize| -> Option<(usize, usize)> {
        if i < lw {
            Some((0, i))
        } else if i >= split && i - split < rw {
            Some((1, i - split))
        } else {
            None
        }
    };
    // `lo <= hi`: rows of hi's side are cleaned by lo's watermark.
    let mut le = |lo: &Expr, hi: &Expr| {
        let (Some((a, ca)), Some((b, cb))) =
            (shifted_column(lo, schema), shifted_column(hi, schema))
        else {
            return;
        };
        let (Some((sa, ia)), Some((sb, ib))) = (side_of(a), side_of(b)) else {
            return;
        };
        if sa == sb || out[sb].is_some() {
            return;
        }
        let Some(offset) = cb.checked_sub(ca) else {
            return;
        };
        out[sb] = Some(super::hash_join::JoinCleaning {
            column: ib,
            other_column: ia,
            offset,
            in_memory: false,
            own_bound: false,
            from_keys: false,
        });
    };
    for c in split_conjunction(filter) {
        match c {
            Expr::BinaryExpr(b) => match b.op {
                Operator::Lt | Operator::LtEq => le(&b.left, &b.right),
                Operator::Gt | Operator::GtEq => le(&b.right, &b.left),
                _ => {}
            },
            Expr::Between(b) if !b.negated => {
                le(&b.low, &b.expr);
                le(&b.expr, &b.high);
            }
            _ => {}
        }
    }
    out
}

/// Names of the functions `SESSION(t, ts, gap, keys...)` is rewritten into (by
/// `strom_sql::windows`): a projection with them is lifted into a [`SessionNode`] by
/// [`lift_sessions`] before DataFusion optimizes the plan.
pub const SESSION_START: &str = "strom_session_start";
pub const SESSION_END: &str = "strom_session_end";

/// The session-window function placeholders: their values depend on other rows, so they
/// cannot be evaluated row by row; in a materialized view they become a session window
/// operator, anywhere else they are an error.
pub fn session_udfs() -> Vec<datafusion::logical_expr::ScalarUDF> {
    [SESSION_START, SESSION_END]
        .into_iter()
        .map(|name| {
            datafusion::logical_expr::ScalarUDF::new_from_impl(SessionFn {
                name,
                signature: datafusion::logical_expr::Signature::variadic_any(
                    datafusion::logical_expr::Volatility::Volatile,
                ),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionFn {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for SessionFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> datafusion::error::Result<DataType> {
        match args.first() {
            Some(t) if is_micros(t) => Ok(t.clone()),
            other => Err(datafusion::error::DataFusionError::Plan(format!(
                "SESSION needs a timestamp or timestamptz time column, not {other:?}"
            ))),
        }
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Err(datafusion::error::DataFusionError::Plan(
            "SESSION windows work only in materialized views".into(),
        ))
    }
}

/// `SESSION(...)` in a view's logical plan: `input`'s rows with `__session_start` and
/// `__session_end` appended (see [`super::session`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionNode {
    input: LogicalPlan,
    time: datafusion::common::Column,
    gap: i64,
    keys: Vec<datafusion::common::Column>,
    schema: datafusion::common::DFSchemaRef,
}

impl PartialOrd for SessionNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.gap, self.time.name(), self.keys.len()).partial_cmp(&(
            other.gap,
            other.time.name(),
            other.keys.len(),
        ))
    }
}

impl datafusion::logical_expr::UserDefinedLogicalNodeCore for SessionNode {
    fn name(&self) -> &str {
        "SessionWindow"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &datafusion::common::DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        // A filter below would change which rows form sessions.
        self.schema
            .columns()
            .into_iter()
            .map(|c| c.flat_name())
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SessionWindow time={} gap={}us", self.time, self.gap)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        Ok(SessionNode {
            input: inputs.remove(0),
            ..self.clone()
        })
    }
}

fn session_call(e: &Expr) -> Option<&datafusion::logical_expr::expr::ScalarFunction> {
    match e {
        Expr::ScalarFunction(f) if f.name() == SESSION_START || f.name() == SESSION_END => Some(f),
        _ => None,
    }
}

/// Lifts projections that compute `strom_session_start/end(ts, gap, keys...)` into a
/// [`SessionNode`] under a projection of its extra columns, so the optimizer can neither
/// move the calls elsewhere nor evaluate them row by row.
pub fn lift_sessions(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::Transformed;
    let lifted = plan.transform_up(|node| {
        let LogicalPlan::Projection(p) = &node else {
            return Ok(Transformed::no(node));
        };
        let mut call: Option<datafusion::logical_expr::expr::ScalarFunction> = None;
        for e in &p.expr {
            e.apply(|x| {
                if let Some(f) = session_call(x) {
                    if call.is_none() {
                        call = Some(f.clone());
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
        }
        let Some(call) = call else {
            return Ok(Transformed::no(node));
        };
        let bad = |what: &str| datafusion::error::DataFusionError::Plan(format!("SESSION: {what}"));
        let column = |e: &Expr| match e {
            Expr::Column(c) => Ok(c.clone()),
            Expr::Cast(c) => match c.expr.as_ref() {
                Expr::Column(c) => Ok(c.clone()),
                _ => Err(bad("the time column and the keys must be columns")),
            },
            _ => Err(bad("the time column and the keys must be columns")),
        };
        let time = column(call.args.first().ok_or_else(|| bad("no time column"))?)?;
        let gap = match call.args.get(1) {
            Some(Expr::Literal(v, _)) => match v.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(g)) if g > 0 => g,
                _ => return Err(bad("the gap must be a positive interval")),
            },
            _ => return Err(bad("the gap must be a constant interval")),
        };
        let keys = call.args[2..]
            .iter()
            .map(column)
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let input = p.input.as_ref().clone();
        let time_type = input
            .schema()
            .qualified_field_from_column(&time)?
            .1
            .data_type()
            .clone();
        let extra = DFSchema::from_unqualified_fields(
            vec![
                Field::new("__session_start", time_type.clone(), true),
                Field::new("__session_end", time_type, true),
            ]
            .into(),
            Default::default(),
        )?;
        let schema = Arc::new(input.schema().join(&extra)?);
        let session = LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(SessionNode {
                input,
                time: time.clone(),
                gap,
                keys: keys.clone(),
                schema,
            }),
        });
        let same_call = |f: &datafusion::logical_expr::expr::ScalarFunction| f.args == call.args;
        let exprs = p
            .expr
            .iter()
            .map(|e| {
                e.clone()
                    .transform(|x| {
                        let Some(f) = session_call(&x) else {
                            return Ok(Transformed::no(x));
                        };
                        if !same_call(f) {
                            return Err(bad("one SESSION per query level"));
                        }
                        let name = if f.name() == SESSION_START {
                            "__session_start"
                        } else {
                            "__session_end"
                        };
                        Ok(Transformed::yes(Expr::Column(
                            datafusion::common::Column::from_name(name),
                        )))
                    })
                    .map(|t| t.data)
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let projection = datafusion::logical_expr::Projection::try_new(exprs, Arc::new(session))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    })?;
    Ok(lifted.data)
}
