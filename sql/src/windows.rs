//! Window table functions, rewritten into queries DataFusion plans:
//!
//! | written | becomes |
//! |---|---|
//! | `TUMBLE(t, ts, size [, offset])` | `(SELECT *, strom_window_start(ts, size, offset) AS window_start, strom_window_start(ts, size, offset) + size AS window_end FROM t) AS t` |
//! | `SESSION(t, ts, gap [, key ...])` | `(SELECT *, strom_session_start(ts, gap, keys...) AS window_start, strom_session_end(...) AS window_end FROM t) AS t`, placeholders the engine turns into its session window operator (materialized views only) |
//! | `HOP(t, ts, slide, size [, offset])` | one such branch per window a row falls in (`size / slide` of them, `window_start = strom_window_start(ts, slide, offset) - k * slide`), combined with `UNION ALL` |
//!
//! (`strom_window_start` is the engine's `watermark::window_start_udf`: sizes and offsets
//! in microseconds, the result of `ts`'s type.)
//!
//! Windows are aligned to 1970-01-01 00:00:00 UTC (plus the offset). Every expression here
//! never decreases as `ts` grows, so a watermark on `ts` carries over to `window_start` and
//! `window_end` (see the engine's `project_filter::monotone_in`), which is what lets
//! `EMIT ON WINDOW CLOSE` and state cleaning work on windows.

use std::ops::ControlFlow;

use sqlparser::ast::{
    DateTimeField, Expr, FunctionArg, FunctionArgExpr, Statement, TableAlias, TableFactor, Value,
    VisitMut, VisitorMut,
};

use crate::error::{Result, SqlError};

/// Rewrites every `TUMBLE(...)` and `HOP(...)` in FROM clauses.
/// Takes the processing-time hints out of a statement (`t FOR SYSTEM_TIME AS OF
/// PROCTIME() AS m`, read as `t WITH (strom_proctime) AS m`) and returns the names the
/// hinted relations are known by in the query (their alias, else their name, which is
/// then also made their alias). A materialized view plans joins with them as lookups; a
/// plain query reads them as they are now.
pub fn take_proctime(stmt: &mut Statement) -> Vec<String> {
    struct Hints(Vec<String>);
    impl VisitorMut for Hints {
        type Break = ();
        fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                alias,
                with_hints,
                ..
            } = tf
            {
                let hinted = with_hints.iter().any(|h| {
                    matches!(h, Expr::Identifier(i) if i.value.eq_ignore_ascii_case(crate::parser::PROCTIME_HINT))
                });
                if hinted {
                    with_hints.clear();
                    let a = alias.get_or_insert_with(|| TableAlias {
                        explicit: true,
                        name: name
                            .0
                            .last()
                            .and_then(|p| p.as_ident())
                            .cloned()
                            .unwrap_or_else(|| sqlparser::ast::Ident::new("dim")),
                        columns: vec![],
                        at: None,
                    });
                    self.0.push(crate::ddl::ident_name(&a.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut h = Hints(Vec::new());
    let _ = stmt.visit(&mut h);
    h.0
}

pub fn rewrite_window_functions(stmt: &mut Statement) -> Result<()> {
    let mut v = Windows { error: None };
    let _ = stmt.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Windows {
    error: Option<SqlError>,
}

impl VisitorMut for Windows {
    type Break = ();

    fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name, args, alias, ..
        } = tf
        else {
            return ControlFlow::Continue(());
        };
        let Some(args) = args else {
            return ControlFlow::Continue(());
        };
        let func = name.to_string().to_lowercase();
        if func != "tumble" && func != "hop" && func != "session" {
            return ControlFlow::Continue(());
        }
        match window_subquery(&func, &args.args, alias.clone()) {
            Ok(new) => {
                *tf = new;
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// The relation a window function reads (its first argument).
fn relation_arg(func: &str, a: &FunctionArg) -> Result<String> {
    match arg_expr(func, a)? {
        e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => Ok(e.to_string()),
        other => Err(bad(
            func,
            format!("the first argument must name a relation, not {other}"),
        )),
    }
}

/// The FROM item of `sql` (`SELECT * FROM (...) AS name`), with the user's alias if any.
fn derived_table(func: &str, sql: &str, alias: Option<TableAlias>) -> Result<TableFactor> {
    let mut stmts = crate::parser::parse(sql)?;
    let Some(Statement::Query(q)) = stmts.pop() else {
        return Err(bad(func, "internal error: rewrite did not parse"));
    };
    let sqlparser::ast::SetExpr::Select(select) = *q.body else {
        return Err(bad(func, "internal error: rewrite is not a SELECT"));
    };
    let mut from = select.from.into_iter().next().expect("one FROM item");
    if let (TableFactor::Derived { alias: a, .. }, Some(user)) = (&mut from.relation, alias) {
        *a = Some(user);
    }
    Ok(from.relation)
}

fn bad(func: &str, what: impl std::fmt::Display) -> SqlError {
    SqlError::InvalidDefinition(format!("{}: {what}", func.to_uppercase()))
}

fn arg_expr<'a>(func: &str, a: &'a FunctionArg) -> Result<&'a Expr> {
    match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
        other => Err(bad(func, format!("unexpected argument {other}"))),
    }
}

/// An interval literal's length in microseconds, for the forms `INTERVAL '5' MINUTE`,
/// `INTERVAL '5 minutes'` and `INTERVAL '1 hour 30 minutes'`.
pub fn interval_micros(e: &Expr) -> Option<i64> {
    let Expr::Interval(iv) = e else {
        return None;
    };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let unit_micros = |u: &str| -> Option<i64> {
        Some(match u.trim_end_matches('s') {
            "microsecond" => 1,
            "millisecond" => 1_000,
            "second" | "sec" => 1_000_000,
            "minute" | "min" => 60_000_000,
            "hour" | "hr" => 3_600_000_000,
            "day" => 86_400_000_000,
            "week" => 7 * 86_400_000_000,
            _ => return None,
        })
    };
    if let Some(field) = &iv.leading_field {
        let n: f64 = text.trim().parse().ok()?;
        let unit = match field {
            DateTimeField::Second | DateTimeField::Seconds => 1_000_000i64,
            DateTimeField::Minute | DateTimeField::Minutes => 60_000_000,
            DateTimeField::Hour | DateTimeField::Hours => 3_600_000_000,
            DateTimeField::Day | DateTimeField::Days => 86_400_000_000,
            _ => return None,
        };
        return Some((n * unit as f64).round() as i64);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return None;
    }
    let mut total = 0i64;
    for pair in words.chunks(2) {
        let n: f64 = pair[0].parse().ok()?;
        total += (n * unit_micros(&pair[1].to_lowercase())? as f64).round() as i64;
    }
    Some(total)
}

fn micros_literal(us: i64) -> String {
    format!("INTERVAL '{us} microseconds'")
}

fn window_subquery(
    func: &str,
    args: &[FunctionArg],
    alias: Option<TableAlias>,
) -> Result<TableFactor> {
    if func == "session" {
        return session_subquery(args, alias);
    }
    let (min, max) = if func == "tumble" { (3, 4) } else { (4, 5) };
    if args.len() < min || args.len() > max {
        return Err(bad(
            func,
            if func == "tumble" {
                "expected TUMBLE(relation, time_column, size [, offset])"
            } else {
                "expected HOP(relation, time_column, slide, size [, offset])"
            },
        ));
    }
    let relation = relation_arg(func, &args[0])?;
    let ts = match arg_expr(func, &args[1])? {
        e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => e.to_string(),
        other => {
            return Err(bad(
                func,
                format!("the second argument must be a column, not {other}"),
            ))
        }
    };
    let interval = |i: usize, what: &str| -> Result<i64> {
        let e = arg_expr(func, &args[i])?;
        match interval_micros(e) {
            Some(us) if us > 0 || (what == "offset" && us >= 0) => Ok(us),
            Some(_) => Err(bad(func, format!("the {what} must be positive, not {e}"))),
            None => Err(bad(
                func,
                format!("the {what} must be an interval literal in seconds, minutes, hours or days (INTERVAL '5' MINUTE), not {e}"),
            )),
        }
    };
    let (slide, size, offset) = if func == "tumble" {
        let size = interval(2, "size")?;
        let offset = if args.len() == 4 {
            interval(3, "offset")?
        } else {
            0
        };
        (size, size, offset)
    } else {
        let slide = interval(2, "slide")?;
        let size = interval(3, "size")?;
        let offset = if args.len() == 5 {
            interval(4, "offset")?
        } else {
            0
        };
        if size % slide != 0 {
            return Err(bad(func, "the size must be a whole multiple of the slide"));
        }
        (slide, size, offset)
    };
    let bin = format!("strom_window_start({ts}, {slide}, {offset})");
    let name = alias
        .as_ref()
        .map(|a| a.name.to_string())
        .unwrap_or_else(|| relation.rsplit('.').next().unwrap_or(&relation).to_string());
    let branches: Vec<String> = (0..size / slide)
        .map(|k| {
            let start = if k == 0 {
                bin.clone()
            } else {
                format!("{bin} - {}", micros_literal(k * slide))
            };
            format!(
                "SELECT *, {start} AS window_start, {start} + {} AS window_end FROM {relation}",
                micros_literal(size)
            )
        })
        .collect();
    let sql = format!("SELECT * FROM ({}) AS {name}", branches.join(" UNION ALL "));
    derived_table(func, &sql, alias)
}

/// `SESSION(relation, time_column, gap [, key ...])`: the session placeholders, which the
/// engine lifts into its session window operator (`stream::planner::lift_sessions`).
fn session_subquery(args: &[FunctionArg], alias: Option<TableAlias>) -> Result<TableFactor> {
    let func = "session";
    if args.len() < 3 {
        return Err(bad(
            func,
            "expected SESSION(relation, time_column, gap [, key ...])",
        ));
    }
    let relation = relation_arg(func, &args[0])?;
    let mut columns = Vec::new();
    for (i, a) in args.iter().enumerate().skip(1) {
        if i == 2 {
            continue;
        }
        match arg_expr(func, a)? {
            e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => columns.push(e.to_string()),
            other => {
                return Err(bad(
                    func,
                    format!("the time column and the keys must be columns, not {other}"),
                ))
            }
        }
    }
    let gap_expr = arg_expr(func, &args[2])?;
    let gap = match interval_micros(gap_expr) {
        Some(us) if us > 0 => us,
        _ => {
            return Err(bad(
                func,
                format!("the gap must be a positive interval literal (INTERVAL '10' MINUTE), not {gap_expr}"),
            ))
        }
    };
    let ts = &columns[0];
    let keys: String = columns[1..].iter().map(|k| format!(", {k}")).collect();
    let name = alias
        .as_ref()
        .map(|a| a.name.to_string())
        .unwrap_or_else(|| relation.rsplit('.').next().unwrap_or(&relation).to_string());
    let sql = format!(
        "SELECT * FROM (SELECT *, strom_session_start({ts}, {gap}{keys}) AS window_start, strom_session_end({ts}, {gap}{keys}) AS window_end FROM {relation}) AS {name}"
    );
    derived_table(func, &sql, alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(sql: &str) -> String {
        let mut stmt = crate::parser::parse(sql).unwrap().remove(0);
        rewrite_window_functions(&mut stmt).unwrap();
        stmt.to_string()
    }

    #[test]
    fn tumble_and_hop_become_subqueries() {
        assert_eq!(
            rw("SELECT window_start, count(*) FROM TUMBLE(t, ts, INTERVAL '5' MINUTE) GROUP BY window_start"),
            "SELECT window_start, count(*) FROM (SELECT *, strom_window_start(ts, 300000000, 0) AS window_start, strom_window_start(ts, 300000000, 0) + INTERVAL '300000000 microseconds' AS window_end FROM t) AS t GROUP BY window_start"
        );
        let hop = rw("SELECT * FROM HOP(s.t, ts, INTERVAL '1 minute', INTERVAL '3 minutes') AS h");
        assert_eq!(hop.matches("UNION ALL").count(), 2, "{hop}");
        assert!(hop.contains("- INTERVAL '120000000 microseconds'"), "{hop}");
        assert!(hop.ends_with("AS h"), "{hop}");
        let off = rw("SELECT * FROM TUMBLE(t, ts, INTERVAL '1' HOUR, INTERVAL '15' MINUTE)");
        assert!(
            off.contains("strom_window_start(ts, 3600000000, 900000000)"),
            "{off}"
        );
    }

    #[test]
    fn bad_window_arguments_are_errors() {
        for (sql, want) in [
            ("SELECT * FROM TUMBLE(t, ts)", "expected TUMBLE"),
            ("SELECT * FROM TUMBLE(t, ts, 5)", "interval literal"),
            (
                "SELECT * FROM HOP(t, ts, INTERVAL '2' MINUTE, INTERVAL '5' MINUTE)",
                "whole multiple",
            ),
            (
                "SELECT * FROM TUMBLE(t, ts, INTERVAL '0' MINUTE)",
                "positive",
            ),
            (
                "SELECT * FROM TUMBLE(1, ts, INTERVAL '1' MINUTE)",
                "name a relation",
            ),
        ] {
            let mut stmt = crate::parser::parse(sql).unwrap().remove(0);
            let err = rewrite_window_functions(&mut stmt).unwrap_err().to_string();
            assert!(err.contains(want), "{sql}: {err}");
        }
    }
}
