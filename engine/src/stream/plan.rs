//! The stream plan: what a materialized view's dataflow is made of, before it runs.
//!
//! A [`PlanNode`] tree is produced by the [planner](super::planner) from DataFusion's
//! optimized logical plan and turned into running operators by the
//! [runtime](super::runtime). Every node knows its output schema, a unique key of its
//! output when one can be derived (it becomes the view's storage key), and whether its
//! output is append-only (only inserts). `EXPLAIN CREATE MATERIALIZED VIEW` prints it.

use std::fmt::Write;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use strom_catalog::TableId;

use super::hash_agg::{AggCall, AggKind};
use super::hash_join::JoinType;
use super::over_window::Recompute;

/// Physical expressions that read `columns` of `schema` unchanged.
pub fn column_refs(
    schema: &SchemaRef,
    columns: impl IntoIterator<Item = usize>,
) -> Vec<Arc<dyn PhysicalExpr>> {
    columns
        .into_iter()
        .map(|i| {
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                schema.field(i).name(),
                i,
            )) as Arc<dyn PhysicalExpr>
        })
        .collect()
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// The changes of a table or of another view (its visible columns).
    Source {
        relation: TableId,
        name: String,
        is_view: bool,
    },
    Filter {
        predicate: Arc<dyn PhysicalExpr>,
        text: String,
    },
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        texts: Vec<String>,
    },
    HashAgg {
        group_keys: Vec<usize>,
        calls: Vec<AggCall>,
        /// A group that exists even without input rows (GROUPING SETS with `()`).
        always_present: Option<Vec<ScalarValue>>,
    },
    HashJoin {
        join_type: JoinType,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        condition: Option<(Arc<dyn PhysicalExpr>, String)>,
        /// NULL keys match each other (`IS NOT DISTINCT FROM`).
        null_equal: bool,
    },
    UnionAll,
    /// Window functions or a top-N, by partition recomputation (see
    /// [`super::over_window`]).
    OverWindow {
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        recompute: Recompute,
        /// Input columns rows are routed to workers by: the partition columns, when they
        /// are plain columns (otherwise one worker).
        route: Option<Vec<usize>>,
        text: String,
    },
    /// Constant rows (`VALUES`, a query without `FROM`), emitted once when the view is
    /// created.
    Values {
        rows: Vec<Vec<ScalarValue>>,
    },
}

#[derive(Debug, Clone)]
pub struct PlanNode {
    pub kind: NodeKind,
    pub inputs: Vec<PlanNode>,
    /// Output columns; every field nullable.
    pub schema: SchemaRef,
    /// Columns whose values identify an output row, if the planner could derive them.
    /// `Some(vec![])` means at most one row (a global aggregate).
    pub unique_key: Option<Vec<usize>>,
    pub append_only: bool,
}

impl PlanNode {
    fn name(&self) -> String {
        match &self.kind {
            NodeKind::Source {
                name,
                is_view: true,
                ..
            } => format!("ViewSource {name}"),
            NodeKind::Source { name, .. } => format!("TableSource {name}"),
            NodeKind::Filter { text, .. } => format!("Filter {text}"),
            NodeKind::Project { texts, .. } => format!("Project {}", texts.join(", ")),
            NodeKind::HashAgg {
                group_keys, calls, ..
            } => {
                let input = &self.inputs[0].schema;
                let col = |i: usize| input.field(i).name().clone();
                let keys: Vec<String> = group_keys.iter().map(|&k| col(k)).collect();
                let aggs: Vec<String> = calls
                    .iter()
                    .map(|c| {
                        let arg = match (c.kind, c.arg) {
                            (AggKind::CountStar, _) | (_, None) => "*".to_string(),
                            (_, Some(a)) => col(a),
                        };
                        let filter = c
                            .filter
                            .map(|f| format!(" filter {}", col(f)))
                            .unwrap_or_default();
                        format!("{}({arg}){filter}", c.kind.name())
                    })
                    .collect();
                format!(
                    "HashAgg group=[{}] aggs=[{}]",
                    keys.join(", "),
                    aggs.join(", ")
                )
            }
            NodeKind::HashJoin {
                join_type,
                left_keys,
                right_keys,
                condition,
                null_equal,
            } => {
                let (l, r) = (&self.inputs[0].schema, &self.inputs[1].schema);
                let eq = if *null_equal {
                    "IS NOT DISTINCT FROM"
                } else {
                    "="
                };
                let on: Vec<String> = left_keys
                    .iter()
                    .zip(right_keys)
                    .map(|(&a, &b)| format!("{} {eq} {}", l.field(a).name(), r.field(b).name()))
                    .collect();
                let cond = condition
                    .as_ref()
                    .map(|(_, t)| format!(" condition={t}"))
                    .unwrap_or_default();
                format!(
                    "HashJoin {} on=[{}]{cond}",
                    format!("{join_type:?}").to_lowercase(),
                    on.join(", ")
                )
            }
            NodeKind::UnionAll => "UnionAll".to_string(),
            NodeKind::OverWindow { text, .. } => text.clone(),
            NodeKind::Values { rows } => format!("Values rows={}", rows.len()),
        }
    }

    fn explain_into(&self, depth: usize, out: &mut String) {
        let key = match &self.unique_key {
            Some(k) => {
                let names: Vec<&str> = k
                    .iter()
                    .map(|&i| self.schema.field(i).name().as_str())
                    .collect();
                format!(" key=[{}]", names.join(", "))
            }
            None => String::new(),
        };
        let append = if self.append_only { " append-only" } else { "" };
        let _ = writeln!(out, "{}{}{key}{append}", "  ".repeat(depth), self.name());
        for i in &self.inputs {
            i.explain_into(depth + 1, out);
        }
    }

    /// The plan as indented text, one node per line.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        self.explain_into(0, &mut out);
        out
    }

    /// Every source in the plan, in tree order.
    pub fn sources(&self) -> Vec<(TableId, bool)> {
        let mut out = Vec::new();
        self.visit(&mut |n| {
            if let NodeKind::Source {
                relation, is_view, ..
            } = &n.kind
            {
                out.push((*relation, *is_view));
            }
        });
        out
    }

    /// How many inputs the view's dataflow reads (sources and constant rows), in the
    /// order the runtime numbers them.
    pub fn input_count(&self) -> usize {
        let mut n = 0;
        self.visit(&mut |node| {
            if matches!(node.kind, NodeKind::Source { .. } | NodeKind::Values { .. }) {
                n += 1;
            }
        });
        n
    }

    fn visit(&self, f: &mut impl FnMut(&PlanNode)) {
        f(self);
        for i in &self.inputs {
            i.visit(f);
        }
    }
}
