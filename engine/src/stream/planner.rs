//! From DataFusion's optimized logical plan to a [`PlanNode`] tree.
//!
//! Supported: table and view scans, filters, projections (every DataFusion scalar
//! function), `GROUP BY` and global aggregates (`count`, `count(*)`, `sum`, `avg`, `min`,
//! `max`, each with `FILTER`), inner/left/right/full equi-joins with extra conditions,
//! `UNION ALL` (and `UNION`/`DISTINCT`, which DataFusion turns into aggregates), subquery
//! aliases, and `ORDER BY` (ignored: a view has no order). Anything else is rejected with
//! an error that names the construct.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, JoinType as DfJoinType, LogicalPlan};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};

use super::hash_agg::{AggCall, AggKind};
use super::hash_join::JoinType;
use super::plan::{column_refs, NodeKind, PlanNode};
use crate::error::{EngineError, Result};
use crate::provider::StromTable;

fn unsupported(what: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported(format!("{what} is not supported in materialized views yet"))
}

/// The stream plan of a view's (optimized) query.
pub fn plan(logical: &LogicalPlan) -> Result<PlanNode> {
    Planner {
        props: ExecutionProps::new(),
    }
    .node(logical)
}

struct Planner {
    props: ExecutionProps,
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
        if e.exists(|x| Ok(matches!(x, Expr::WindowFunction(_))))? {
            return Err(unsupported("a window function"));
        }
        Ok(create_physical_expr(
            e,
            input,
            &self.props,
            &PhysicalPlanningContext::default(),
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
                    append_only: false,
                };
                // `scan.filters` are ignored: the provider accepts them as Inexact, so
                // DataFusion keeps the same predicates in a Filter above the scan.
                if let Some(projection) = &scan.projection {
                    node = project_columns(node, projection, out_schema(plan));
                }
                Ok(node)
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
            LogicalPlan::Sort(s) => {
                if s.fetch.is_some() {
                    return Err(unsupported("ORDER BY with LIMIT"));
                }
                self.node(&s.input)
            }
            LogicalPlan::Aggregate(a) => self.aggregate(plan, a),
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
            LogicalPlan::Limit(_) => Err(unsupported("LIMIT")),
            LogicalPlan::Window(_) => Err(unsupported("a window function")),
            LogicalPlan::Distinct(_) => Err(unsupported("DISTINCT ON")),
            LogicalPlan::Values(_) => Err(unsupported("VALUES")),
            LogicalPlan::EmptyRelation(_) => Err(unsupported("a query without FROM")),
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
        if a.group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err(unsupported("GROUPING SETS, CUBE or ROLLUP"));
        }
        // Pre-projection: the group keys, then each call's argument and filter.
        let mut pre: Vec<Expr> = a.group_expr.clone();
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
            if params.distinct {
                return Err(unsupported(format!("{name}(DISTINCT ...)")));
            }
            if !params.order_by.is_empty() {
                return Err(unsupported(format!("{name}(... ORDER BY ...)")));
            }
            let kind = match name.as_str() {
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
                "max" => AggKind::Max,
                _ => return Err(unsupported(format!("the aggregate function {name}"))),
            };
            let arg = if kind == AggKind::CountStar {
                None
            } else {
                let [arg] = params.args.as_slice() else {
                    return Err(unsupported(format!("{name} with several arguments")));
                };
                pre.push(arg.clone());
                Some(pre.len() - 1)
            };
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
                output_type: out.field(a.group_expr.len() + i).data_type().clone(),
            });
        }
        let exprs = pre
            .iter()
            .map(|e| self.expr(e, in_schema))
            .collect::<Result<Vec<_>>>()?;
        let identity = is_identity(&exprs, input.schema.fields().len());
        let pre_schema = Arc::new(Schema::new(
            exprs
                .iter()
                .zip(&pre)
                .enumerate()
                .map(|(i, (p, e))| {
                    let name = if i < a.group_expr.len() {
                        e.schema_name().to_string()
                    } else {
                        format!("${i}")
                    };
                    Ok(Field::new(name, p.data_type(in_schema.as_arrow())?, true))
                })
                .collect::<Result<Vec<_>>>()?,
        ));
        let project = if identity {
            PlanNode {
                schema: pre_schema,
                ..input
            }
        } else {
            PlanNode {
                kind: NodeKind::Project {
                    exprs,
                    texts: pre.iter().map(|e| e.human_display().to_string()).collect(),
                },
                schema: pre_schema,
                unique_key: None,
                append_only: input.append_only,
                inputs: vec![input],
            }
        };
        let ng = a.group_expr.len();
        Ok(PlanNode {
            kind: NodeKind::HashAgg {
                group_keys: (0..ng).collect(),
                calls,
            },
            schema: out_schema(plan),
            unique_key: Some((0..ng).collect()),
            append_only: false,
            inputs: vec![project],
        })
    }

    fn join(&self, plan: &LogicalPlan, j: &datafusion::logical_expr::Join) -> Result<PlanNode> {
        let join_type = match j.join_type {
            DfJoinType::Inner => JoinType::Inner,
            DfJoinType::Left => JoinType::Left,
            DfJoinType::Right => JoinType::Right,
            DfJoinType::Full => JoinType::Full,
            other => {
                return Err(unsupported(format!(
                    "a {other} join (from IN, EXISTS or a correlated subquery)"
                )))
            }
        };
        if j.on.is_empty() {
            return Err(unsupported(
                "a join without an equality condition (a cross join)",
            ));
        }
        let mut left = self.node(&j.left)?;
        let mut right = self.node(&j.right)?;
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
            let taken = std::mem::replace(
                input,
                PlanNode {
                    kind: NodeKind::UnionAll,
                    inputs: vec![],
                    schema: Arc::new(Schema::empty()),
                    unique_key: None,
                    append_only: false,
                },
            );
            *input = PlanNode {
                kind: NodeKind::Project { exprs, texts },
                schema: Arc::new(Schema::new(fields)),
                unique_key: taken.unique_key.clone(),
                append_only: taken.append_only,
                inputs: vec![taken],
            };
        }
        let (le, re) = (extra[0].len(), extra[1].len());
        let joined_df = ext_schemas[0].join(&ext_schemas[1])?;
        let condition = match &j.filter {
            Some(f) => Some((self.expr(f, &joined_df)?, f.human_display().to_string())),
            None => None,
        };
        let [left_keys, right_keys] = keys;
        let join_schema = nullable(joined_df.as_arrow());
        let join = PlanNode {
            kind: NodeKind::HashJoin {
                join_type,
                left_keys,
                right_keys,
                condition,
            },
            schema: join_schema,
            unique_key: None,
            append_only: false,
            inputs: vec![left, right],
        };
        if le == 0 && re == 0 {
            return Ok(PlanNode {
                schema: out_schema(plan),
                ..join
            });
        }
        let columns: Vec<usize> = (0..lw).chain(lw + le..lw + le + rw).collect();
        Ok(project_columns(join, &columns, out_schema(plan)))
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
