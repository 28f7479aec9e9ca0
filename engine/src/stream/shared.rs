//! Shared subplans: a subtree that occurs more than once in a view's plan is computed
//! once per epoch, and its output feeds every place it occurs.
//!
//! Nexmark q5 is the case in point: both sides of its join count the bids of the same
//! `HOP` windows per auction, one grouped by `(window_start, auction)`, the other by
//! `(auction, window_start)`; and every `HOP` branch reads the same projection of `bid`.
//! Without sharing, each bid is counted twice, in two aggregations with the same state.
//!
//! [`PlanNode::share_common_subplans`] runs on a planned view of state version 4 or later
//! (it decides which state tables exist, so a view keeps the decision it was created
//! with, see [`super::plan::STATE_VERSION`]):
//! 1. aggregations that compute the same groups except for the order of their group key
//!    columns, or a projection that only picks columns beneath them, are rewritten into
//!    one form: the projection folded in, the keys in input column order, and a
//!    projection above restoring the output column order;
//! 2. walking the plan in the order the runtime runs it, the first occurrence of a
//!    subtree that occurs again is wrapped in [`NodeKind::Shared`] `computed_here: true`,
//!    and every later one in a `Shared` node that reuses its output (the runtime builds
//!    no operators below it).
//!
//! Subtrees are compared structurally (expressions by DataFusion's `PartialEq`), never
//! by printed text, so the decision is the same every time a view is planned again after
//! a restart. Subtrees with a volatile function (`random()`) are never shared: each
//! occurrence must draw its own values.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::Volatility;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use super::hash_agg::AggCall;
use super::plan::{NodeKind, PlanNode};

impl PlanNode {
    /// Rewrites aggregations into one form where that makes them equal, then marks the
    /// repeated subtrees (see the [module](self) documentation).
    pub fn share_common_subplans(&mut self) {
        while let Some(paths) = equal_after_canonical_form(self) {
            for path in paths {
                let node = node_at(self, &path);
                if let Some(canonical) = canonical_agg(node) {
                    *node = canonical;
                }
            }
        }
        let mut firsts: Vec<(Vec<usize>, &PlanNode)> = Vec::new();
        let mut reuses: Vec<(Vec<usize>, usize)> = Vec::new();
        let all = preorder(self);
        mark(self, &mut Vec::new(), &all, &mut firsts, &mut reuses);
        // Keep the first occurrences something reuses, numbered in run order.
        let used: Vec<usize> = (0..firsts.len())
            .filter(|i| reuses.iter().any(|(_, f)| f == i))
            .collect();
        let mut wraps: Vec<(Vec<usize>, usize, bool)> = Vec::new();
        for (id, &f) in used.iter().enumerate() {
            wraps.push((firsts[f].0.clone(), id, true));
        }
        for (path, f) in reuses {
            let id = used.iter().position(|&u| u == f).expect("used");
            wraps.push((path, id, false));
        }
        // Deepest (latest in pre-order) first: wrapping a node adds a level below its
        // ancestors' paths, not above.
        wraps.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, id, computed_here) in wraps {
            node_at(self, &path).wrap(|inner| PlanNode {
                kind: NodeKind::Shared { id, computed_here },
                schema: Arc::clone(&inner.schema),
                unique_key: inner.unique_key.clone(),
                append_only: inner.append_only,
                inputs: vec![inner],
            });
        }
    }
}

/// Pre-order walk deciding first occurrences and reuses. `all` is every node of the
/// plan: a subtree becomes a first occurrence only if some other node equals it.
fn mark<'a>(
    node: &'a PlanNode,
    path: &mut Vec<usize>,
    all: &[&PlanNode],
    firsts: &mut Vec<(Vec<usize>, &'a PlanNode)>,
    reuses: &mut Vec<(Vec<usize>, usize)>,
) {
    if worth_sharing(node) {
        if let Some(f) = firsts.iter().position(|(_, f)| same(f, node)) {
            reuses.push((path.clone(), f));
            return;
        }
        let occurrences = all.iter().filter(|n| same(n, node)).count();
        if occurrences > 1 {
            firsts.push((path.clone(), node));
        }
    }
    for (i, input) in node.inputs.iter().enumerate() {
        path.push(i);
        mark(input, path, all, firsts, reuses);
        path.pop();
    }
}

/// Not a bare source or constant rows (reading them again costs what reusing does), and
/// nothing that must be computed per occurrence.
fn worth_sharing(node: &PlanNode) -> bool {
    !node.inputs.is_empty() && shareable(node)
}

fn shareable(node: &PlanNode) -> bool {
    let kind_ok = match &node.kind {
        NodeKind::Source { .. } | NodeKind::UnionAll | NodeKind::Values { .. } => true,
        NodeKind::Filter { predicate, .. } => !volatile(predicate),
        NodeKind::Project { exprs, .. } => !exprs.iter().any(volatile),
        NodeKind::HashAgg { calls, .. } => calls.iter().all(|c| c.general.is_none()),
        NodeKind::HashJoin { condition, .. } => !condition.as_ref().is_some_and(|c| volatile(&c.0)),
        // Kept out for now: their parameters have no structural equality (window
        // expressions, lookups of other relations, time-driven state).
        NodeKind::OverWindow { .. }
        | NodeKind::LookupJoin { .. }
        | NodeKind::TemporalFilter { .. }
        | NodeKind::SessionWindow { .. }
        | NodeKind::Shared { .. } => false,
    };
    kind_ok && node.inputs.iter().all(shareable)
}

fn volatile(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>() {
            if f.fun().signature().volatility == Volatility::Volatile {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Whether two subtrees compute the same output the same way (same schema, operators,
/// parameters and inputs).
fn same(a: &PlanNode, b: &PlanNode) -> bool {
    same_schema(&a.schema, &b.schema)
        && a.unique_key == b.unique_key
        && a.append_only == b.append_only
        && a.inputs.len() == b.inputs.len()
        && same_kind(&a.kind, &b.kind)
        && a.inputs.iter().zip(&b.inputs).all(|(x, y)| same(x, y))
}

/// Same column types, whatever the names: operators address columns by position (the
/// same `HOP` relation is `bid.auction` on one side of a join and `auction` on the
/// other).
fn same_schema(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| {
            x.data_type() == y.data_type()
                && x.is_nullable() == y.is_nullable()
                && x.metadata() == y.metadata()
        })
}

fn same_kind(a: &NodeKind, b: &NodeKind) -> bool {
    use NodeKind as K;
    match (a, b) {
        (
            K::Source {
                relation: r1,
                is_view: v1,
                ..
            },
            K::Source {
                relation: r2,
                is_view: v2,
                ..
            },
        ) => r1 == r2 && v1 == v2,
        (K::Filter { predicate: p1, .. }, K::Filter { predicate: p2, .. }) => p1 == p2,
        (K::Project { exprs: e1, .. }, K::Project { exprs: e2, .. }) => e1 == e2,
        (
            K::HashAgg {
                group_keys: g1,
                calls: c1,
                always_present: p1,
                window: w1,
                append_only_input: a1,
            },
            K::HashAgg {
                group_keys: g2,
                calls: c2,
                always_present: p2,
                window: w2,
                append_only_input: a2,
            },
        ) => {
            g1 == g2
                && p1 == p2
                && w1 == w2
                && a1 == a2
                && c1.len() == c2.len()
                && c1.iter().zip(c2).all(|(x, y)| same_call(x, y))
        }
        (
            K::HashJoin {
                join_type: t1,
                left_keys: l1,
                right_keys: r1,
                condition: c1,
                null_equal: n1,
                cleaning: k1,
                inputs_append_only_as_planned: a1,
                rows_by_key: b1,
            },
            K::HashJoin {
                join_type: t2,
                left_keys: l2,
                right_keys: r2,
                condition: c2,
                null_equal: n2,
                cleaning: k2,
                inputs_append_only_as_planned: a2,
                rows_by_key: b2,
            },
        ) => {
            t1 == t2
                && l1 == l2
                && r1 == r2
                && n1 == n2
                && k1 == k2
                && a1 == a2
                && b1 == b2
                && match (c1, c2) {
                    (None, None) => true,
                    (Some((x, _)), Some((y, _))) => x == y,
                    _ => false,
                }
        }
        (K::UnionAll, K::UnionAll) => true,
        (K::Values { rows: r1 }, K::Values { rows: r2 }) => r1 == r2,
        _ => false,
    }
}

/// Built-in aggregate calls only ([`shareable`] keeps general ones out).
fn same_call(a: &AggCall, b: &AggCall) -> bool {
    a.kind == b.kind
        && a.arg == b.arg
        && a.filter == b.filter
        && a.output_type == b.output_type
        && a.general.is_none()
        && b.general.is_none()
}

/// Every node, in pre-order.
fn preorder(node: &PlanNode) -> Vec<&PlanNode> {
    let mut out = vec![node];
    for i in &node.inputs {
        out.extend(preorder(i));
    }
    out
}

fn node_at<'a>(mut node: &'a mut PlanNode, path: &[usize]) -> &'a mut PlanNode {
    for &i in path {
        node = &mut node.inputs[i];
    }
    node
}

/// Paths of aggregations that are not in canonical form and equal another aggregation
/// once both are; `None` when there are none.
fn equal_after_canonical_form(root: &PlanNode) -> Option<Vec<Vec<usize>>> {
    let mut aggs: Vec<(Vec<usize>, Option<PlanNode>, &PlanNode)> = Vec::new();
    fn collect<'a>(
        node: &'a PlanNode,
        path: &mut Vec<usize>,
        out: &mut Vec<(Vec<usize>, Option<PlanNode>, &'a PlanNode)>,
    ) {
        if matches!(node.kind, NodeKind::HashAgg { .. }) && shareable(node) {
            out.push((path.clone(), canonical_agg(node), node));
        }
        for (i, input) in node.inputs.iter().enumerate() {
            path.push(i);
            collect(input, path, out);
            path.pop();
        }
    }
    collect(root, &mut Vec::new(), &mut aggs);
    // The aggregation itself, in canonical form (below the projection restoring order).
    let inner = |c: &Option<PlanNode>, n: &PlanNode| -> PlanNode {
        match c {
            Some(p) => p.inputs[0].clone(),
            None => n.clone(),
        }
    };
    let forms: Vec<PlanNode> = aggs.iter().map(|(_, c, n)| inner(c, n)).collect();
    let mut paths = Vec::new();
    for (i, (path, canonical, _)) in aggs.iter().enumerate() {
        if canonical.is_some() && (0..aggs.len()).any(|j| j != i && same(&forms[i], &forms[j])) {
            paths.push(path.clone());
        }
    }
    // Deepest first: rewriting a node leaves its ancestors' paths valid.
    paths.sort_by(|a, b| b.cmp(a));
    (!paths.is_empty()).then_some(paths)
}

/// An aggregation in canonical form, under a projection that restores its output column
/// order: a projection beneath it that only picks columns of append-only input is folded
/// in, and its group keys are sorted by input column. `None` when it is in that form already, or is
/// not a kind this applies to (grouping sets, general aggregates).
fn canonical_agg(node: &PlanNode) -> Option<PlanNode> {
    let NodeKind::HashAgg {
        group_keys,
        calls,
        always_present: None,
        window,
        append_only_input,
    } = &node.kind
    else {
        return None;
    };
    if calls.iter().any(|c| c.general.is_some()) {
        return None;
    }
    let below = &node.inputs[0];
    // Only over append-only input: on updating input the projection also drops updates
    // that change no column it keeps, which the aggregation would otherwise see as a
    // delete and an insert (a float sum would drift).
    let picked: Option<Vec<usize>> = match &below.kind {
        NodeKind::Project { exprs, .. } if below.inputs[0].append_only => exprs
            .iter()
            .map(|e| e.downcast_ref::<Column>().map(Column::index))
            .collect(),
        _ => None,
    };
    let fold = picked.is_some();
    let (input, map) = match picked {
        Some(map) => (below.inputs[0].clone(), map),
        None => (below.clone(), (0..below.schema.fields().len()).collect()),
    };
    let keys: Vec<usize> = group_keys.iter().map(|&k| map[k]).collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    if !fold && order.iter().enumerate().all(|(p, &i)| p == i) {
        return None;
    }
    let g = keys.len();
    // Output column `c` of the original is column `position(c)` of the canonical one.
    let position = |c: usize| -> usize {
        if c < g {
            order.iter().position(|&i| i == c).expect("key")
        } else {
            c
        }
    };
    let calls: Vec<AggCall> = calls
        .iter()
        .map(|c| AggCall {
            arg: c.arg.map(|a| map[a]),
            filter: c.filter.map(|f| map[f]),
            ..c.clone()
        })
        .collect();
    let fields: Vec<_> = order
        .iter()
        .map(|&i| node.schema.field(i).clone())
        .chain(
            node.schema
                .fields()
                .iter()
                .skip(g)
                .map(|f| f.as_ref().clone()),
        )
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let agg = PlanNode {
        kind: NodeKind::HashAgg {
            group_keys: order.iter().map(|&i| keys[i]).collect(),
            calls,
            always_present: None,
            window: window.map(|w| super::plan::AggWindow {
                key: position(w.key),
                ..w
            }),
            append_only_input: *append_only_input,
        },
        // A set of columns: in column order, like the keys.
        unique_key: node.unique_key.as_ref().map(|k| {
            let mut k: Vec<usize> = k.iter().map(|&c| position(c)).collect();
            k.sort_unstable();
            k
        }),
        append_only: node.append_only,
        inputs: vec![input],
        schema: Arc::clone(&schema),
    };
    let exprs: Vec<Arc<dyn PhysicalExpr>> = (0..node.schema.fields().len())
        .map(|c| {
            Arc::new(Column::new(schema.field(position(c)).name(), position(c)))
                as Arc<dyn PhysicalExpr>
        })
        .collect();
    Some(PlanNode {
        kind: NodeKind::Project {
            texts: node
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            exprs,
        },
        schema: Arc::clone(&node.schema),
        unique_key: node.unique_key.clone(),
        append_only: node.append_only,
        inputs: vec![agg],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::hash_agg::AggKind;
    use crate::stream::plan::{AggWindow, STATE_VERSION};
    use datafusion::arrow::datatypes::{DataType, Field};
    use strom_catalog::TableId;

    fn schema(names: &[&str]) -> Arc<Schema> {
        Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Int64, true))
                .collect::<Vec<_>>(),
        ))
    }

    fn source() -> PlanNode {
        PlanNode {
            kind: NodeKind::Source {
                relation: TableId(7),
                name: "s".into(),
                is_view: false,
            },
            inputs: vec![],
            schema: schema(&["a", "w"]),
            unique_key: None,
            append_only: true,
        }
    }

    /// `count(*)` grouped by `keys` of the source `(a, w)`, windowed by column `w`.
    fn count_by(keys: &[usize]) -> PlanNode {
        let names: Vec<&str> = keys.iter().map(|&k| ["a", "w"][k]).chain(["n"]).collect();
        PlanNode {
            kind: NodeKind::HashAgg {
                group_keys: keys.to_vec(),
                calls: vec![AggCall {
                    kind: AggKind::CountStar,
                    arg: None,
                    filter: None,
                    output_type: DataType::Int64,
                    general: None,
                }],
                always_present: None,
                window: Some(AggWindow {
                    key: keys.iter().position(|&k| k == 1).expect("w"),
                    emit_on_close: false,
                    in_memory: false,
                }),
                append_only_input: false,
            },
            inputs: vec![source()],
            schema: schema(&names),
            unique_key: Some((0..keys.len()).collect()),
            append_only: false,
        }
    }

    fn union(inputs: Vec<PlanNode>) -> PlanNode {
        PlanNode {
            kind: NodeKind::UnionAll,
            schema: Arc::clone(&inputs[0].schema),
            inputs,
            unique_key: None,
            append_only: false,
        }
    }

    fn count_shared(node: &PlanNode) -> (usize, usize) {
        let (mut here, mut reused) = (0, 0);
        for n in preorder(node) {
            match n.kind {
                NodeKind::Shared {
                    computed_here: true,
                    ..
                } => here += 1,
                NodeKind::Shared { .. } => reused += 1,
                _ => {}
            }
        }
        (here, reused)
    }

    #[test]
    fn aggregations_differing_in_key_order_become_one() {
        let mut plan = union(vec![count_by(&[1, 0]), count_by(&[0, 1])]);
        plan.choose_state_layout(STATE_VERSION);
        assert_eq!(count_shared(&plan), (1, 1), "{}", plan.explain());
        // The first branch: a projection restoring (w, a, n) over the shared aggregation,
        // whose keys are in column order and whose window key moved with them.
        let first = &plan.inputs[0];
        let NodeKind::Project { exprs, .. } = &first.kind else {
            panic!("a projection: {}", plan.explain());
        };
        let picked: Vec<usize> = exprs
            .iter()
            .map(|e| e.downcast_ref::<Column>().expect("a column").index())
            .collect();
        assert_eq!(picked, vec![1, 0, 2]);
        assert_eq!(first.schema, schema(&["w", "a", "n"]));
        let agg = &first.inputs[0].inputs[0];
        let NodeKind::HashAgg {
            group_keys, window, ..
        } = &agg.kind
        else {
            panic!("the aggregation: {}", plan.explain());
        };
        assert_eq!(group_keys, &vec![0, 1]);
        assert_eq!(window.map(|w| (w.key, w.in_memory)), Some((1, true)));
        assert!(matches!(
            plan.inputs[1].kind,
            NodeKind::Shared {
                id: 0,
                computed_here: false
            }
        ));
        // The runtime reads one source, not two.
        assert_eq!(plan.input_count(), 1);
    }

    #[test]
    fn a_projection_over_updating_input_is_kept() {
        // It drops updates that change no column it keeps; the aggregation must not see
        // them as a delete and an insert.
        let over_projection = |keys: &[usize]| {
            let mut agg = count_by(keys);
            let mut source = source();
            source.append_only = false;
            agg.inputs[0] = PlanNode {
                kind: NodeKind::Project {
                    exprs: vec![
                        Arc::new(Column::new("a", 0)) as Arc<dyn PhysicalExpr>,
                        Arc::new(Column::new("w", 1)),
                    ],
                    texts: vec!["a".into(), "w".into()],
                },
                schema: Arc::clone(&source.schema),
                unique_key: None,
                append_only: false,
                inputs: vec![source],
            };
            agg
        };
        let mut plan = union(vec![over_projection(&[1, 0]), over_projection(&[0, 1])]);
        plan.choose_state_layout(STATE_VERSION);
        assert_eq!(count_shared(&plan), (1, 1), "{}", plan.explain());
        let shared_agg = &plan.inputs[0].inputs[0].inputs[0];
        assert!(
            matches!(shared_agg.inputs[0].kind, NodeKind::Project { .. }),
            "{}",
            plan.explain()
        );
    }

    #[test]
    fn views_of_earlier_state_versions_keep_their_plan() {
        let mut plan = union(vec![count_by(&[1, 0]), count_by(&[0, 1])]);
        plan.choose_state_layout(3);
        assert_eq!(count_shared(&plan), (0, 0));
        assert!(matches!(plan.inputs[0].kind, NodeKind::HashAgg { .. }));
        assert_eq!(plan.input_count(), 2);
    }

    #[test]
    fn different_aggregations_are_not_shared() {
        let mut other = count_by(&[0, 1]);
        if let NodeKind::HashAgg { calls, .. } = &mut other.kind {
            calls[0].kind = AggKind::Count;
            calls[0].arg = Some(0);
        }
        let mut plan = union(vec![count_by(&[1, 0]), other]);
        plan.choose_state_layout(STATE_VERSION);
        assert_eq!(count_shared(&plan), (0, 0), "{}", plan.explain());
        // Left as planned: nothing to share, nothing rewritten.
        assert!(matches!(plan.inputs[0].kind, NodeKind::HashAgg { .. }));
    }
}
