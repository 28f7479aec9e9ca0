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

/// The operator state layout new views are created with (kept in the catalog's
/// `ViewDef::state_version`):
/// - 0: the first layout;
/// - 1: an aggregation over append-only input keeps `min`/`max` as one value in its
///   group's row instead of an ordered multiset of its inputs;
/// - 2: an interval join also drops rows of an append-only side when the other side
///   updates but its watermarks bound its deletes (see
///   [`PlanNode::watermarks_bound_changes`]); before, only joins of two append-only
///   inputs did. Its index of rows by time is kept in memory and rebuilt from the rows
///   after a start, instead of in a state table.
/// - 3: a windowed aggregation or window function keeps its open windows in memory,
///   rebuilt from its groups or partitions after a start, instead of in a state table
///   (see [`super::window_index`]).
/// - 4: a subtree that occurs more than once runs once and feeds every occurrence (see
///   [`super::shared`]).
/// - 5: a join side whose input has a unique key stores its rows by that key (see
///   [`super::hash_join`]'s `KEYED_HEADER`), instead of by the whole row.
pub const STATE_VERSION: u32 = 5;

/// How a temporal join finds dimension rows.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupVia {
    /// A point read of the Strom relation's primary key.
    Key,
    /// A secondary index of the Strom relation (`CREATE INDEX`).
    Index { id: u32, name: String },
    /// An external lookup table (`mode = 'lookup'`), fetched from its database.
    External { connector: String },
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
        /// Set by [`PlanNode::annotate_windows`] when a group key column carries a
        /// watermark: groups it passes are dropped from state, or, with
        /// `EMIT ON WINDOW CLOSE`, emitted once then.
        window: Option<AggWindow>,
        /// Set by [`PlanNode::choose_state_layout`]: the input is append-only, so
        /// `min`/`max` keep one value per group instead of a multiset of inputs.
        append_only_input: bool,
    },
    HashJoin {
        join_type: JoinType,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        condition: Option<(Arc<dyn PhysicalExpr>, String)>,
        /// NULL keys match each other (`IS NOT DISTINCT FROM`).
        null_equal: bool,
        /// Interval joins: per side, how its rows are dropped by the other's watermark
        /// (the planner's candidates, narrowed by [`PlanNode::choose_state_layout`]).
        cleaning: [Option<super::hash_join::JoinCleaning>; 2],
        /// Both inputs were append-only when the join was planned (before
        /// [`PlanNode::annotate_windows`] made `EMIT ON WINDOW CLOSE` aggregates so): the
        /// condition for cleaning in views of state version 0 and 1.
        inputs_append_only_as_planned: bool,
        /// Set by [`PlanNode::choose_state_layout`] from state version 5: per side, the
        /// unique key of its input, under which the join stores its rows (an update
        /// rewrites one entry) instead of under the whole row.
        rows_by_key: [Option<Vec<usize>>; 2],
    },
    UnionAll,
    /// A processing-time temporal join: each input row looks up the dimension's rows as
    /// they are when it is processed (see [`super::lookup_join`]).
    LookupJoin {
        left_outer: bool,
        /// Input columns compared with `dim_keys`, in the same order.
        left_keys: Vec<usize>,
        dim: TableId,
        dim_name: String,
        /// Stored columns of the dimension looked up (its primary key in key order, an
        /// index's columns, or any columns of an external table).
        dim_keys: Vec<usize>,
        /// Stored columns of the dimension in the output.
        dim_columns: Vec<usize>,
        via: LookupVia,
    },
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
        /// Set by [`PlanNode::annotate_windows`] when a `PARTITION BY` column carries a
        /// watermark (`key`: its position in `partition_by`): closed partitions are
        /// dropped from state, or with `EMIT ON WINDOW CLOSE` emitted once then.
        window: Option<AggWindow>,
    },
    /// `column > now() + lower` and/or `column < now() + upper` (see
    /// [`super::temporal_filter`]).
    TemporalFilter {
        column: usize,
        lower: Option<super::temporal_filter::Bound>,
        upper: Option<super::temporal_filter::Bound>,
    },
    /// `SESSION(...)`: the input's rows, held until their session closes, with
    /// `window_start` and `window_end` appended (see [`super::session`]).
    SessionWindow {
        time: usize,
        gap: i64,
        keys: Vec<usize>,
    },
    /// Constant rows (`VALUES`, a query without `FROM`), emitted once when the view is
    /// created.
    Values {
        rows: Vec<Vec<ScalarValue>>,
    },
    /// A subtree that occurs more than once in the plan (see [`super::shared`]): its
    /// input runs where `computed_here`, and every other occurrence with the same `id`
    /// (later in run order) reuses that output in the same epoch. A reusing occurrence
    /// keeps its input for planning and display, but nothing below it is built.
    Shared {
        id: usize,
        computed_here: bool,
    },
}

/// How a windowed aggregate uses the watermark of one of its group key columns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggWindow {
    /// The position in the group key of the column with the watermark.
    pub key: usize,
    /// `EMIT ON WINDOW CLOSE`: a group's row is emitted once, when the watermark passes
    /// it, instead of being updated continuously.
    pub emit_on_close: bool,
    /// Set by [`PlanNode::choose_state_layout`] from state version 3: the open windows
    /// are kept in memory, rebuilt after a start, instead of in a state table.
    pub in_memory: bool,
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
                let window = match &self.kind {
                    NodeKind::HashAgg {
                        window: Some(w), ..
                    } => format!(
                        " window={}{}",
                        keys[w.key],
                        if w.emit_on_close {
                            " emit-on-window-close"
                        } else {
                            ""
                        }
                    ),
                    _ => String::new(),
                };
                format!(
                    "HashAgg group=[{}] aggs=[{}]{window}",
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
                ..
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
                let mut cond = condition
                    .as_ref()
                    .map(|(_, t)| format!(" condition={t}"))
                    .unwrap_or_default();
                if let NodeKind::HashJoin { cleaning, .. } = &self.kind {
                    for (side, c) in ["left", "right"].iter().zip(cleaning) {
                        if let Some(c) = c {
                            let (mine, theirs) = if *side == "left" { (l, r) } else { (r, l) };
                            cond.push_str(&format!(
                                " clean-{side}={} < wm({}) - {}us",
                                mine.field(c.column).name(),
                                theirs.field(c.other_column).name(),
                                c.offset
                            ));
                            if c.own_bound {
                                cond.push_str(" and < own wm");
                            }
                        }
                    }
                }
                if let NodeKind::HashJoin { rows_by_key, .. } = &self.kind {
                    let keyed: Vec<&str> = ["left", "right"]
                        .into_iter()
                        .zip(rows_by_key)
                        .filter_map(|(side, k)| k.is_some().then_some(side))
                        .collect();
                    if !keyed.is_empty() {
                        cond.push_str(&format!(" rows-by-key=[{}]", keyed.join(", ")));
                    }
                }
                format!(
                    "HashJoin {} on=[{}]{cond}",
                    format!("{join_type:?}").to_lowercase(),
                    on.join(", ")
                )
            }
            NodeKind::UnionAll => "UnionAll".to_string(),
            NodeKind::LookupJoin {
                left_outer,
                left_keys,
                dim_name,
                via,
                ..
            } => {
                let input = &self.inputs[0].schema;
                let keys: Vec<&str> = left_keys
                    .iter()
                    .map(|&k| input.field(k).name().as_str())
                    .collect();
                let via = match via {
                    LookupVia::Key => "primary key".to_string(),
                    LookupVia::Index { name, .. } => format!("index {name}"),
                    LookupVia::External { connector } => format!("{connector} lookup"),
                };
                format!(
                    "LookupJoin {} dim={dim_name} key=[{}] via {via} (processing time)",
                    if *left_outer { "left" } else { "inner" },
                    keys.join(", ")
                )
            }
            NodeKind::SessionWindow { time, gap, keys } => {
                let input = &self.inputs[0].schema;
                let keys: Vec<&str> = keys
                    .iter()
                    .map(|&k| input.field(k).name().as_str())
                    .collect();
                format!(
                    "SessionWindow time={} gap={gap}us keys=[{}]",
                    input.field(*time).name(),
                    keys.join(", ")
                )
            }
            NodeKind::TemporalFilter {
                column,
                lower,
                upper,
            } => {
                let col = self.schema.field(*column).name();
                let side = |b: &super::temporal_filter::Bound, op: &str, eq: &str| {
                    let op = if b.inclusive { eq } else { op };
                    format!("{col} {op} now() {:+}us", b.offset)
                };
                let mut parts = Vec::new();
                if let Some(b) = lower {
                    parts.push(side(b, ">", ">="));
                }
                if let Some(b) = upper {
                    parts.push(side(b, "<", "<="));
                }
                format!("TemporalFilter {}", parts.join(" AND "))
            }
            NodeKind::OverWindow { text, window, .. } => match window {
                Some(w) => format!(
                    "{text} window=partition{}{}",
                    w.key,
                    if w.emit_on_close {
                        " emit-on-window-close"
                    } else {
                        ""
                    }
                ),
                None => text.clone(),
            },
            NodeKind::Values { rows } => format!("Values rows={}", rows.len()),
            NodeKind::Shared {
                id,
                computed_here: true,
            } => format!("Shared #{id}"),
            NodeKind::Shared { id, .. } => format!("Shared #{id} (computed above)"),
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
        if self.reuses_shared() {
            return;
        }
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

    /// Per relation the plan reads, which of its visible columns any operator looks at:
    /// a column is left out only when the operators over the source are projections and
    /// filters none of whose expressions (used downstream or not: each is evaluated)
    /// mentions it. Any other operator over a source reads all its columns.
    pub fn columns_read(&self) -> std::collections::HashMap<TableId, Vec<bool>> {
        let mut out = std::collections::HashMap::new();
        self.demand(&vec![true; self.schema.fields().len()], &mut out);
        out
    }

    /// [`PlanNode::columns_read`]: `wanted` are this node's output columns its consumer
    /// reads.
    fn demand(&self, wanted: &[bool], out: &mut std::collections::HashMap<TableId, Vec<bool>>) {
        let mark = |e: &Arc<dyn PhysicalExpr>, need: &mut Vec<bool>| {
            for c in datafusion::physical_expr::utils::collect_columns(e) {
                if let Some(n) = need.get_mut(c.index()) {
                    *n = true;
                }
            }
        };
        match &self.kind {
            NodeKind::Source { relation, .. } => {
                let read = out
                    .entry(*relation)
                    .or_insert_with(|| vec![false; wanted.len()]);
                for (r, w) in read.iter_mut().zip(wanted) {
                    *r |= *w;
                }
            }
            NodeKind::Project { exprs, .. } => {
                let mut need = vec![false; self.inputs[0].schema.fields().len()];
                for e in exprs {
                    mark(e, &mut need);
                }
                self.inputs[0].demand(&need, out);
            }
            NodeKind::Filter { predicate, .. } => {
                let mut need = wanted.to_vec();
                mark(predicate, &mut need);
                self.inputs[0].demand(&need, out);
            }
            // Computed (and read whole) where it is computed.
            _ if self.reuses_shared() => {}
            _ => {
                for i in &self.inputs {
                    i.demand(&vec![true; i.schema.fields().len()], out);
                }
            }
        }
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

    /// Whether a temporal join looks rows up in an external database (rows may wait for
    /// it, and are retried as time passes).
    pub fn has_external_lookup(&self) -> bool {
        let mut found = false;
        self.visit(&mut |n| {
            found |= matches!(
                n.kind,
                NodeKind::LookupJoin {
                    via: LookupVia::External { .. },
                    ..
                }
            )
        });
        found
    }

    /// The indexes the dataflow's temporal joins look rows up by (relation, index id).
    pub fn lookup_indexes(&self) -> Vec<(TableId, u32)> {
        let mut out = Vec::new();
        self.visit(&mut |n| {
            if let NodeKind::LookupJoin {
                dim,
                via: LookupVia::Index { id, .. },
                ..
            } = &n.kind
            {
                out.push((*dim, *id));
            }
        });
        out
    }

    /// The dimensions the dataflow looks rows up in (temporal joins): the view depends on
    /// them, but does not follow their changes.
    pub fn lookups(&self) -> Vec<TableId> {
        let mut out = Vec::new();
        self.visit(&mut |n| {
            if let NodeKind::LookupJoin { dim, .. } = &n.kind {
                out.push(*dim);
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

    /// Which output columns carry a watermark (see [`crate::watermark`]): a source's
    /// watermark column, and what projections, filters, joins, unions (all branches) and
    /// group keys pass on. `relation_watermark` gives a source relation's watermark
    /// column; views read by views carry none.
    pub fn watermark_columns(
        &self,
        relation_watermark: &dyn Fn(TableId) -> Option<usize>,
    ) -> Vec<bool> {
        let width = self.schema.fields().len();
        let inputs: Vec<Vec<bool>> = self
            .inputs
            .iter()
            .map(|i| i.watermark_columns(relation_watermark))
            .collect();
        let mut out = vec![false; width];
        match &self.kind {
            NodeKind::Source {
                relation, is_view, ..
            } => {
                if !is_view {
                    if let Some(c) = relation_watermark(*relation) {
                        if c < width {
                            out[c] = true;
                        }
                    }
                }
            }
            NodeKind::Filter { .. } | NodeKind::TemporalFilter { .. } => out = inputs[0].clone(),
            NodeKind::Project { exprs, .. } => {
                let input = &self.inputs[0].schema;
                for (o, e) in out.iter_mut().zip(exprs) {
                    *o = super::project_filter::monotone_in(e, input)
                        .is_some_and(|c| inputs[0].get(c).copied().unwrap_or(false));
                }
            }
            NodeKind::HashAgg { group_keys, .. } => {
                for (o, &k) in out.iter_mut().zip(group_keys) {
                    *o = inputs[0][k];
                }
            }
            NodeKind::HashJoin {
                join_type,
                left_keys,
                right_keys,
                ..
            } => {
                // See `HashJoin::output_watermarks`: inner joins' watermarked key pairs.
                if *join_type == super::hash_join::JoinType::Inner {
                    let nl = inputs[0].len();
                    for (&l, &r) in left_keys.iter().zip(right_keys) {
                        if inputs[0][l] && inputs[1][r] {
                            if l < width {
                                out[l] = true;
                            }
                            if nl + r < width {
                                out[nl + r] = true;
                            }
                        }
                    }
                }
            }
            NodeKind::UnionAll => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = inputs.iter().all(|i| i.get(c).copied().unwrap_or(false));
                }
            }
            NodeKind::OverWindow { partition_by, .. } => {
                // Only partition columns: a partition's other rows can be re-emitted (its
                // window values change) long after the watermark passed their values.
                for e in partition_by {
                    if let Some(c) =
                        e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                    {
                        if c.index() < width {
                            out[c.index()] = inputs[0].get(c.index()).copied().unwrap_or(false);
                        }
                    }
                }
            }
            NodeKind::SessionWindow { time, .. } => {
                if inputs[0].get(*time).copied().unwrap_or(false) {
                    out[*time] = true;
                    out[width - 2] = true;
                    out[width - 1] = true;
                }
            }
            NodeKind::LookupJoin { .. } => {
                for (o, i) in out.iter_mut().zip(&inputs[0]) {
                    *o = *i;
                }
            }
            NodeKind::Values { .. } => {}
            NodeKind::Shared { .. } => out = inputs[0].clone(),
        }
        out
    }

    /// Marks every aggregation with a watermarked group key column over an append-only
    /// input as windowed (its state is cleaned as the watermark passes); with
    /// `emit_on_window_close`, every such aggregation emits on window close instead of
    /// updating, and the view's output must then be append-only (emitted once, final).
    /// Errors say why `EMIT ON WINDOW CLOSE` cannot apply.
    pub fn annotate_windows(
        &mut self,
        relation_watermark: &dyn Fn(TableId) -> Option<usize>,
        emit_on_window_close: bool,
    ) -> std::result::Result<(), String> {
        let mut emitting = 0;
        self.annotate(relation_watermark, emit_on_window_close, &mut emitting);
        let mut unclosed = None;
        self.visit(&mut |n| {
            if let NodeKind::SessionWindow { time, .. } = &n.kind {
                let input = &n.inputs[0];
                if !input.watermark_columns(relation_watermark)[*time] {
                    unclosed = Some(input.schema.field(*time).name().clone());
                }
            }
        });
        if let Some(col) = unclosed {
            return Err(format!("SESSION over \"{col}\" needs a watermark on it (WATERMARK FOR on the table or source): without one no session ever closes"));
        }
        if emit_on_window_close {
            if emitting == 0 {
                return Err("EMIT ON WINDOW CLOSE needs an aggregation (GROUP BY) over append-only input whose GROUP BY has a column with a watermark, such as window_start of TUMBLE or HOP over a table or source declared with WATERMARK FOR".into());
            }
            if !self.append_only {
                return Err("EMIT ON WINDOW CLOSE needs every aggregation to close by a watermark and nothing after them to update rows (an aggregation without a watermarked GROUP BY column, an outer join, a window function), so that each row is emitted once, final".into());
            }
        }
        Ok(())
    }

    /// Picks the operator state layouts of a view created with `state_version` (see
    /// [`STATE_VERSION`]). Call after [`PlanNode::annotate_windows`], which settles which
    /// nodes are append-only.
    pub fn choose_state_layout(&mut self, state_version: u32) {
        self.choose_layouts(state_version);
        if state_version >= 4 {
            self.share_common_subplans();
        }
    }

    fn choose_layouts(&mut self, state_version: u32) {
        for i in &mut self.inputs {
            i.choose_layouts(state_version);
        }
        match &mut self.kind {
            NodeKind::HashAgg {
                append_only_input,
                window,
                ..
            } => {
                *append_only_input = state_version >= 1 && self.inputs[0].append_only;
                if let Some(w) = window {
                    w.in_memory = state_version >= 3;
                }
            }
            NodeKind::OverWindow {
                window: Some(w), ..
            } => w.in_memory = state_version >= 3,
            NodeKind::HashJoin {
                cleaning,
                inputs_append_only_as_planned,
                join_type,
                rows_by_key,
                ..
            } => {
                *rows_by_key = if state_version >= 5 {
                    [&self.inputs[0], &self.inputs[1]]
                        .map(|i| i.unique_key.clone().filter(|_| i.keeps_key_order()))
                } else {
                    [None, None]
                };
                // A side's row may be dropped once it can match no future change of the
                // other side (whose watermarks must bound its deletes as well as its
                // inserts: a windowed aggregate updating its open windows does, as in
                // Nexmark q7), and it is itself never retracted: the side only gains rows,
                // or its own watermark has passed the row too (Nexmark q8's windowed
                // groups on both sides). Before version 2, only joins of two append-only
                // inputs cleaned.
                let [l, r] = [&self.inputs[0], &self.inputs[1]];
                let bounded = [l.watermarks_bound_changes(), r.watermarks_bound_changes()];
                let append_only = [l.append_only, r.append_only];
                for (side, c) in cleaning.iter_mut().enumerate() {
                    let keep = if state_version >= 2 {
                        bounded[1 - side] && (append_only[side] || bounded[side])
                    } else {
                        // (Inner joins, by their condition only.)
                        *inputs_append_only_as_planned
                            && *join_type == super::hash_join::JoinType::Inner
                            && !c.is_some_and(|c| c.from_keys)
                    };
                    if !keep {
                        *c = None;
                    }
                    if let Some(c) = c {
                        c.in_memory = state_version >= 2;
                        c.own_bound = state_version >= 2 && !append_only[side];
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether the changes of each value of this node's unique key reach the operator
    /// above in the order they were made (a key's delete before the insert that
    /// replaces it), as a join storing rows by key needs: true when one place makes
    /// them, a table (its writes are ordered) or an aggregation (one worker owns a
    /// group), passed on by operators that keep rows in order. Not window functions
    /// or top-N (a row moving between partitions is deleted by one worker and inserted
    /// by another, in either order), nor anything else (a temporal filter's deletes
    /// come as time passes, apart from its input's).
    pub fn keeps_key_order(&self) -> bool {
        match &self.kind {
            NodeKind::Source { .. } | NodeKind::HashAgg { .. } => true,
            NodeKind::Filter { .. } | NodeKind::Project { .. } | NodeKind::Shared { .. } => {
                self.inputs.first().is_some_and(Self::keeps_key_order)
            }
            _ => false,
        }
    }

    /// Whether every change of this node's output in a later epoch, a delete as well as
    /// an insert, has in each column with a watermark a value at or above it. True of an
    /// append-only table or source (rows behind its watermark go to its late table);
    /// kept by filters, projections (a deleted row is computed like an inserted one),
    /// aggregations (a group changes only by input rows of that group, only group key
    /// columns carry watermarks, and a closed window's row is emitted in the epoch that
    /// closes it), inner joins (only key columns carry them) and unions. Not by a
    /// temporal filter (it deletes old rows as time passes), a dimension lookup (it may
    /// hold rows while the dimension cannot answer and send them later), a view read as
    /// a source, nor anything else that could send or retract a row behind the watermark.
    pub fn watermarks_bound_changes(&self) -> bool {
        match &self.kind {
            NodeKind::Source { .. } => self.append_only,
            NodeKind::Filter { .. }
            | NodeKind::Project { .. }
            | NodeKind::HashAgg { .. }
            | NodeKind::Shared { .. } => self.inputs[0].watermarks_bound_changes(),
            NodeKind::HashJoin {
                join_type: super::hash_join::JoinType::Inner,
                ..
            }
            | NodeKind::UnionAll => self.inputs.iter().all(PlanNode::watermarks_bound_changes),
            NodeKind::Values { .. } => true,
            _ => false,
        }
    }

    /// Bottom-up: an aggregation's input is annotated (and its append-only flag final)
    /// before the aggregation is.
    fn annotate(
        &mut self,
        relation_watermark: &dyn Fn(TableId) -> Option<usize>,
        emit_on_close: bool,
        emitting: &mut usize,
    ) {
        for i in &mut self.inputs {
            i.annotate(relation_watermark, emit_on_close, emitting);
        }
        if let NodeKind::HashJoin { cleaning, .. } = &mut self.kind {
            // Cleaning by a column without a watermark would never run: keep no index.
            if cleaning.iter().any(Option::is_some) {
                let wms = [
                    self.inputs[0].watermark_columns(relation_watermark),
                    self.inputs[1].watermark_columns(relation_watermark),
                ];
                for (side, c) in cleaning.iter_mut().enumerate() {
                    if let Some(cfg) = c {
                        if !wms[1 - side]
                            .get(cfg.other_column)
                            .copied()
                            .unwrap_or(false)
                        {
                            *c = None;
                        }
                    }
                }
            }
        }
        match &mut self.kind {
            NodeKind::HashAgg {
                group_keys, window, ..
            } => {
                let input = &self.inputs[0];
                let wm = input.watermark_columns(relation_watermark);
                if input.append_only {
                    // The last watermarked key: `window_end` when grouped by both ends
                    // (for sessions it closes sooner than `window_start`).
                    if let Some(key) = group_keys.iter().rposition(|&k| wm[k]) {
                        *window = Some(AggWindow {
                            key,
                            emit_on_close,
                            in_memory: false,
                        });
                        if emit_on_close {
                            *emitting += 1;
                            // Emitted once, final: the output only grows.
                            self.append_only = true;
                        }
                    }
                }
            }
            NodeKind::OverWindow {
                partition_by,
                recompute: super::over_window::Recompute::Window(_),
                window,
                ..
            } => {
                let input = &self.inputs[0];
                let wm = input.watermark_columns(relation_watermark);
                if input.append_only {
                    let key = partition_by.iter().position(|e| {
                        e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                            .is_some_and(|c| wm.get(c.index()).copied().unwrap_or(false))
                    });
                    if let Some(key) = key {
                        *window = Some(AggWindow {
                            key,
                            emit_on_close,
                            in_memory: false,
                        });
                        if emit_on_close {
                            *emitting += 1;
                            self.append_only = true;
                        }
                    }
                }
            }
            NodeKind::Project { .. }
            | NodeKind::Filter { .. }
            | NodeKind::LookupJoin { .. }
            | NodeKind::Shared { .. } => {
                self.append_only = self.inputs[0].append_only;
            }
            NodeKind::UnionAll => {
                self.append_only = self.inputs.iter().all(|i| i.append_only);
            }
            NodeKind::HashJoin { join_type, .. } => {
                self.append_only = matches!(
                    join_type,
                    super::hash_join::JoinType::Inner | super::hash_join::JoinType::LeftSemi
                ) && self.inputs.iter().all(|i| i.append_only);
            }
            _ => {}
        }
    }

    /// Whether the dataflow has a temporal filter (it must run as time passes).
    pub fn has_temporal_filter(&self) -> bool {
        let mut found = false;
        self.visit(&mut |n| found |= matches!(n.kind, NodeKind::TemporalFilter { .. }));
        found
    }

    /// Puts the node under a new parent made by `parent` from it, in place.
    pub(super) fn wrap(&mut self, parent: impl FnOnce(PlanNode) -> PlanNode) {
        let placeholder = PlanNode {
            kind: NodeKind::UnionAll,
            inputs: vec![],
            schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            unique_key: None,
            append_only: false,
        };
        let node = std::mem::replace(self, placeholder);
        *self = parent(node);
    }

    /// A [`NodeKind::Shared`] occurrence that reuses the output computed elsewhere.
    fn reuses_shared(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::Shared {
                computed_here: false,
                ..
            }
        )
    }

    /// Visits every node that runs: not below an occurrence of a shared subtree that
    /// reuses another's output (the runtime builds nothing there).
    fn visit(&self, f: &mut impl FnMut(&PlanNode)) {
        f(self);
        if self.reuses_shared() {
            return;
        }
        for i in &self.inputs {
            i.visit(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn agg_over(append_only: bool) -> PlanNode {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let source = PlanNode {
            kind: NodeKind::Source {
                relation: TableId(1),
                name: "s".into(),
                is_view: false,
            },
            inputs: vec![],
            schema: Arc::clone(&schema),
            unique_key: None,
            append_only,
        };
        PlanNode {
            kind: NodeKind::HashAgg {
                group_keys: vec![0],
                calls: vec![],
                always_present: None,
                window: None,
                append_only_input: false,
            },
            inputs: vec![source],
            schema,
            unique_key: Some(vec![0]),
            append_only: false,
        }
    }

    fn layout(node: &PlanNode) -> bool {
        match node.kind {
            NodeKind::HashAgg {
                append_only_input, ..
            } => append_only_input,
            _ => unreachable!("an aggregation"),
        }
    }

    #[test]
    fn join_sides_with_a_unique_key_store_rows_by_it_from_state_version_5() {
        // An aggregation (unique by its group key) joined with a source (no key).
        let join = || {
            let (left, right) = (agg_over(true), agg_over(true).inputs.remove(0));
            let mut j = interval_join(left, right, false);
            if let NodeKind::HashJoin { cleaning, .. } = &mut j.kind {
                *cleaning = [None, None];
            }
            j
        };
        let by_key = |version: u32| {
            let mut j = join();
            j.choose_state_layout(version);
            match j.kind {
                NodeKind::HashJoin { rows_by_key, .. } => rows_by_key,
                _ => unreachable!("a join"),
            }
        };
        assert_eq!(by_key(4), [None, None], "earlier views keep rows by row");
        assert_eq!(by_key(5), [Some(vec![0]), None]);
        // A key whose changes may arrive out of order (here a union's, were it keyed)
        // is not used.
        let mut j = join();
        let agg = j.inputs.remove(0);
        j.inputs.insert(
            0,
            PlanNode {
                kind: NodeKind::UnionAll,
                schema: Arc::clone(&agg.schema),
                unique_key: Some(vec![0]),
                append_only: false,
                inputs: vec![agg],
            },
        );
        j.choose_state_layout(5);
        assert!(matches!(
            j.kind,
            NodeKind::HashJoin {
                rows_by_key: [None, None],
                ..
            }
        ));
    }

    #[test]
    fn columns_read_are_those_projections_and_filters_mention() {
        let col = |name: &str, i: usize| {
            Arc::new(datafusion::physical_expr::expressions::Column::new(name, i))
                as Arc<dyn PhysicalExpr>
        };
        let wide = Arc::new(Schema::new(
            ["a", "b", "c", "d"]
                .map(|n| Field::new(n, DataType::Int64, true))
                .to_vec(),
        ));
        let node = |kind, inputs: Vec<PlanNode>, schema: &SchemaRef| PlanNode {
            kind,
            inputs,
            schema: Arc::clone(schema),
            unique_key: None,
            append_only: true,
        };
        let source = || {
            node(
                NodeKind::Source {
                    relation: TableId(7),
                    name: "s".into(),
                    is_view: false,
                },
                vec![],
                &wide,
            )
        };
        let filter = |input| {
            node(
                NodeKind::Filter {
                    predicate: col("b", 1),
                    text: "b".into(),
                },
                vec![input],
                &wide,
            )
        };
        let narrow = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        // Project a over Filter b over s: c and d are not read.
        let picked = node(
            NodeKind::Project {
                exprs: vec![col("a", 0)],
                texts: vec!["a".into()],
            },
            vec![filter(source())],
            &narrow,
        );
        assert_eq!(
            picked.columns_read()[&TableId(7)],
            vec![true, true, false, false]
        );
        // A filter passes the columns its consumer reads through: all, at the root.
        assert_eq!(filter(source()).columns_read()[&TableId(7)], vec![true; 4]);
        // Any other operator over the source reads it whole, and the uses add up.
        let union = node(
            NodeKind::UnionAll,
            vec![
                picked,
                node(
                    NodeKind::Project {
                        exprs: vec![col("d", 3)],
                        texts: vec!["d".into()],
                    },
                    vec![source()],
                    &narrow,
                ),
            ],
            &narrow,
        );
        assert_eq!(
            union.columns_read()[&TableId(7)],
            vec![true, true, false, true]
        );
        let agg = node(
            NodeKind::HashAgg {
                group_keys: vec![0],
                calls: vec![],
                always_present: None,
                window: None,
                append_only_input: true,
            },
            vec![source()],
            &narrow,
        );
        assert_eq!(agg.columns_read()[&TableId(7)], vec![true; 4]);
    }

    #[test]
    fn state_layout_follows_the_views_version_not_just_the_input() {
        // A view created before layouts were versioned keeps its multiset state.
        let mut old = agg_over(true);
        old.choose_state_layout(0);
        assert!(!layout(&old));
        let mut new = agg_over(true);
        new.choose_state_layout(STATE_VERSION);
        assert!(layout(&new));
        // Input that can delete never gets the one-value layout.
        let mut updating = agg_over(false);
        updating.choose_state_layout(STATE_VERSION);
        assert!(!layout(&updating));
    }

    /// An inner join with both sides' cleaning candidates, as the planner leaves them.
    fn interval_join(left: PlanNode, right: PlanNode, as_planned: bool) -> PlanNode {
        let c = super::super::hash_join::JoinCleaning {
            column: 0,
            other_column: 0,
            offset: 0,
            in_memory: false,
            own_bound: false,
            from_keys: false,
        };
        PlanNode {
            kind: NodeKind::HashJoin {
                join_type: super::super::hash_join::JoinType::Inner,
                left_keys: vec![0],
                right_keys: vec![0],
                condition: None,
                null_equal: false,
                cleaning: [Some(c), Some(c)],
                inputs_append_only_as_planned: as_planned,
                rows_by_key: [None, None],
            },
            schema: Arc::clone(&left.schema),
            inputs: vec![left, right],
            unique_key: None,
            append_only: false,
        }
    }

    /// Per side: not cleaned (None), or cleaned with the time index in memory or not
    /// and bounded by the side's own watermark or not.
    fn cleaned_sides(node: &PlanNode) -> [Option<(bool, bool)>; 2] {
        match &node.kind {
            NodeKind::HashJoin { cleaning, .. } => {
                cleaning.map(|c| c.map(|c| (c.in_memory, c.own_bound)))
            }
            _ => unreachable!("a join"),
        }
    }

    #[test]
    fn an_interval_join_cleans_a_side_only_when_nothing_can_retract_what_it_drops() {
        let source = || agg_over(true).inputs.remove(0);
        // Bids against a windowed aggregate of bids (q7): the bids are dropped by the
        // aggregate's watermark, which bounds its updates too; the aggregate's rows,
        // which it may still retract, only once its own watermark has passed them too.
        let mut q7 = interval_join(source(), agg_over(true), false);
        q7.choose_state_layout(STATE_VERSION);
        assert_eq!(
            cleaned_sides(&q7),
            [Some((true, false)), Some((true, true))]
        );
        // Views of an older layout keep the old rule (both inputs append-only) and their
        // time index in a state table.
        let mut old = interval_join(source(), agg_over(true), false);
        old.choose_state_layout(1);
        assert_eq!(cleaned_sides(&old), [None, None]);
        let mut old_both = interval_join(source(), source(), true);
        old_both.choose_state_layout(1);
        assert_eq!(
            cleaned_sides(&old_both),
            [Some((false, false)), Some((false, false))]
        );
        // A temporal filter deletes rows older than any watermark: nothing is dropped
        // against it, nor against an aggregate over updating input.
        let temporal = PlanNode {
            kind: NodeKind::TemporalFilter {
                column: 0,
                lower: None,
                upper: None,
            },
            schema: Arc::clone(&source().schema),
            inputs: vec![source()],
            unique_key: None,
            append_only: false,
        };
        let mut against_temporal = interval_join(source(), temporal, false);
        against_temporal.choose_state_layout(STATE_VERSION);
        assert_eq!(cleaned_sides(&against_temporal), [None, None]);
        let mut against_updating = interval_join(source(), agg_over(false), false);
        against_updating.choose_state_layout(STATE_VERSION);
        assert_eq!(cleaned_sides(&against_updating), [None, None]);
    }
}
