//! Turning filter predicates on primary-key columns into RocksDB gets and range scans.
//!
//! DataFusion passes a table scan its conjunctive filters. [`plan_scan`] looks for
//! `pk = literal`, `pk IN (literals)` and `pk <op> literal` on a prefix of the primary key:
//!
//! - equality on every key column: point gets ([`ScanPlan::Points`]);
//! - equality on a prefix, and/or a range on the next column: one range per vnode (keys
//!   are vnode-prefixed, see [`crate::keys`]) per prefix value ([`ScanPlan::Ranges`]);
//! - anything else: a full scan of the table's key space.
//!
//! Filters are still re-applied by DataFusion above the scan (pushdown is `Inexact`), so the
//! plan only needs to return a superset of the matching rows; it never decides a row's fate.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use strom_catalog::TableDef;

use crate::keys::{self, VNODE_COUNT};

/// At most this many point keys or prefix values; beyond it we scan.
const MAX_POINTS: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum ScanPlan {
    /// Exact storage keys.
    Points(Vec<Vec<u8>>),
    /// `[lower, upper)` storage key ranges, in key order.
    Ranges(Vec<(Vec<u8>, Vec<u8>)>),
}

impl ScanPlan {
    pub fn full(def: &TableDef) -> ScanPlan {
        let lo = keys::table_prefix(def.id);
        let hi = keys::prefix_successor(&lo).expect("invariant: table prefix is not all 0xFF");
        ScanPlan::Ranges(vec![(lo, hi)])
    }

    pub fn describe(&self) -> String {
        match self {
            ScanPlan::Points(p) => format!("point_get keys={}", p.len()),
            ScanPlan::Ranges(r) if r.len() == 1 => "full_scan".to_string(),
            ScanPlan::Ranges(r) => format!("range_scan ranges={}", r.len()),
        }
    }
}

#[derive(Default, Clone)]
struct ColumnBounds {
    /// Allowed values from `=` / `IN`; `None` when unconstrained.
    eq: Option<Vec<ScalarValue>>,
    lower: Option<(ScalarValue, bool)>, // (value, inclusive)
    upper: Option<(ScalarValue, bool)>,
}

/// A literal converted to the column's type, only if no information is lost.
fn literal_for(col_type: &datafusion::arrow::datatypes::DataType, e: &Expr) -> Option<ScalarValue> {
    let v = match e {
        Expr::Literal(v, _) => v,
        _ => return None,
    };
    if v.is_null() {
        return None;
    }
    let cast = v.cast_to(col_type).ok()?;
    let back = cast.cast_to(&v.data_type()).ok()?;
    (back == *v).then_some(cast)
}

fn column_index(def: &TableDef, e: &Expr) -> Option<usize> {
    match e {
        Expr::Column(c) => def.column_index(&c.name),
        _ => None,
    }
}

fn flip(op: Operator) -> Operator {
    match op {
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        other => other,
    }
}

/// `a = 1 OR a = 3` (DataFusion's form of a short IN list) constrains key column `a`.
fn collect_or(def: &TableDef, filter: &Expr, bounds: &mut [ColumnBounds]) {
    let mut values = Vec::new();
    let Some(col) = or_of_equalities(def, filter, &mut values) else {
        return;
    };
    let Some(k) = def.pk.iter().position(|&p| p == col) else {
        return;
    };
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.dedup();
    bounds[k].eq = Some(values);
}

/// The column of a disjunction of `column = literal` terms over one column, collecting
/// the literals.
fn or_of_equalities(def: &TableDef, e: &Expr, values: &mut Vec<ScalarValue>) -> Option<usize> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let l = or_of_equalities(def, left, values)?;
            let r = or_of_equalities(def, right, values)?;
            (l == r).then_some(l)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let (col, lit) = match (column_index(def, left), column_index(def, right)) {
                (Some(c), None) => (c, right.as_ref()),
                (None, Some(c)) => (c, left.as_ref()),
                _ => return None,
            };
            values.push(literal_for(&def.columns[col].ty.to_arrow(), lit)?);
            Some(col)
        }
        _ => None,
    }
}

fn collect(def: &TableDef, filter: &Expr, bounds: &mut [ColumnBounds]) {
    let pk_pos = |col: usize| def.pk.iter().position(|&p| p == col);
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            collect(def, left, bounds);
            collect(def, right, bounds);
        }
        Expr::BinaryExpr(BinaryExpr {
            op: Operator::Or, ..
        }) => collect_or(def, filter, bounds),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (col, lit, op) = match (column_index(def, left), column_index(def, right)) {
                (Some(c), None) => (c, right.as_ref(), *op),
                (None, Some(c)) => (c, left.as_ref(), flip(*op)),
                _ => return,
            };
            let Some(k) = pk_pos(col) else { return };
            let Some(v) = literal_for(&def.columns[col].ty.to_arrow(), lit) else {
                return;
            };
            let b = &mut bounds[k];
            match op {
                Operator::Eq => b.eq = Some(vec![v]),
                Operator::Gt => b.lower = Some((v, false)),
                Operator::GtEq => b.lower = Some((v, true)),
                Operator::Lt => b.upper = Some((v, false)),
                Operator::LtEq => b.upper = Some((v, true)),
                _ => {}
            }
        }
        Expr::InList(il) if !il.negated => {
            let Some(col) = column_index(def, &il.expr) else {
                return;
            };
            let Some(k) = pk_pos(col) else { return };
            let ty = def.columns[col].ty.to_arrow();
            let values: Option<Vec<ScalarValue>> =
                il.list.iter().map(|e| literal_for(&ty, e)).collect();
            if let Some(mut values) = values {
                values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                values.dedup();
                bounds[k].eq = Some(values);
            }
        }
        Expr::Between(b) if !b.negated => {
            let Some(col) = column_index(def, &b.expr) else {
                return;
            };
            let Some(k) = pk_pos(col) else { return };
            let ty = def.columns[col].ty.to_arrow();
            if let (Some(lo), Some(hi)) = (literal_for(&ty, &b.low), literal_for(&ty, &b.high)) {
                bounds[k].lower = Some((lo, true));
                bounds[k].upper = Some((hi, true));
            }
        }
        _ => {}
    }
}

/// Chooses how to read the rows that may satisfy `filters`.
pub fn plan_scan(def: &TableDef, filters: &[Expr]) -> ScanPlan {
    let mut bounds = vec![ColumnBounds::default(); def.pk.len()];
    for f in filters {
        collect(def, f, &mut bounds);
    }
    // Cartesian product of the equality prefix.
    let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
    let mut eq_len = 0;
    for b in &bounds {
        let Some(values) = &b.eq else { break };
        if prefixes.len() * values.len() > MAX_POINTS {
            break;
        }
        let mut next = Vec::with_capacity(prefixes.len() * values.len());
        for p in &prefixes {
            for v in values {
                let mut k = p.clone();
                if keys::encode_key_datum(v, &mut k).is_err() {
                    return ScanPlan::full(def);
                }
                next.push(k);
            }
        }
        prefixes = next;
        eq_len += 1;
    }
    if eq_len == def.pk.len() {
        return ScanPlan::Points(
            prefixes
                .iter()
                .map(|pk| keys::row_key(def.id, pk))
                .collect(),
        );
    }
    // Bounds on the column after the equality prefix, encoded as key-suffix bounds.
    let next = &bounds[eq_len];
    let enc = |v: &ScalarValue| {
        let mut k = Vec::new();
        keys::encode_key_datum(v, &mut k).ok().map(|_| k)
    };
    let lower: Option<Vec<u8>> = match &next.lower {
        Some((v, true)) => enc(v),
        Some((v, false)) => enc(v).and_then(|k| keys::prefix_successor(&k)),
        None => None,
    };
    let upper: Option<Vec<u8>> = match &next.upper {
        Some((v, true)) => enc(v).and_then(|k| keys::prefix_successor(&k)),
        Some((v, false)) => enc(v),
        None => None,
    };
    if eq_len == 0 && lower.is_none() && upper.is_none() {
        return ScanPlan::full(def);
    }
    if prefixes.len() * VNODE_COUNT as usize > MAX_POINTS * 16 {
        return ScanPlan::full(def);
    }
    let mut ranges = Vec::with_capacity(prefixes.len() * VNODE_COUNT as usize);
    for vnode in 0..VNODE_COUNT {
        let vp = keys::vnode_prefix(def.id, vnode);
        for p in &prefixes {
            let mut base = vp.clone();
            base.extend_from_slice(p);
            let lo = match &lower {
                Some(l) => [base.as_slice(), l].concat(),
                None => base.clone(),
            };
            let hi = match &upper {
                Some(u) => [base.as_slice(), u].concat(),
                None => match keys::prefix_successor(&base) {
                    Some(h) => h,
                    None => continue,
                },
            };
            if lo < hi {
                ranges.push((lo, hi));
            }
        }
    }
    ScanPlan::Ranges(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use strom_catalog::{ColumnDef, SchemaId, SqlType, TableId};

    fn table(pk: Vec<usize>) -> TableDef {
        let c = |n: &str, ty| ColumnDef {
            name: n.into(),
            ty,
            nullable: false,
            default: None,
            hidden: false,
        };
        TableDef {
            id: TableId(3),
            schema: SchemaId(0),
            name: "t".into(),
            columns: vec![
                c("a", SqlType::BigInt),
                c("b", SqlType::Varchar(None)),
                c("v", SqlType::Double),
            ],
            pk,
            user_pk: true,
            view: None,
            connector: None,
            watermark: None,
            indexes: Vec::new(),
            next_index_id: 0,
        }
    }

    #[test]
    fn full_key_equality_is_point_gets() {
        let def = table(vec![0]);
        match plan_scan(&def, &[col("a").eq(lit(5i64))]) {
            ScanPlan::Points(p) => assert_eq!(p.len(), 1),
            other => panic!("{other:?}"),
        }
        match plan_scan(
            &def,
            &[col("a").in_list(vec![lit(1i64), lit(3i64), lit(1i64)], false)],
        ) {
            ScanPlan::Points(p) => assert_eq!(p.len(), 2),
            other => panic!("{other:?}"),
        }
        // literal of another integer width still qualifies
        assert!(matches!(
            plan_scan(&def, &[lit(5i32).eq(col("a"))]),
            ScanPlan::Points(_)
        ));
    }

    #[test]
    fn ranges_and_prefixes_scan_each_vnode() {
        let def = table(vec![0]);
        match plan_scan(&def, &[col("a").gt_eq(lit(3i64)), col("a").lt(lit(7i64))]) {
            ScanPlan::Ranges(r) => assert_eq!(r.len(), VNODE_COUNT as usize),
            other => panic!("{other:?}"),
        }
        let def2 = table(vec![0, 1]);
        match plan_scan(&def2, &[col("a").eq(lit(1i64))]) {
            ScanPlan::Ranges(r) => assert_eq!(r.len(), VNODE_COUNT as usize),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_key_or_lossy_filters_scan_everything() {
        let def = table(vec![0]);
        assert_eq!(
            plan_scan(&def, &[col("v").eq(lit(1.0))]),
            ScanPlan::full(&def)
        );
        assert_eq!(
            plan_scan(&def, &[col("a").lt(lit(1.5))]),
            ScanPlan::full(&def)
        );
        assert_eq!(plan_scan(&def, &[]), ScanPlan::full(&def));
    }
}
