//! AST rewrites that let DataFusion plan what PostgreSQL clients and tools send.
//!
//! psql, JDBC drivers and BI tools query `pg_catalog` with PostgreSQL-only syntax. We
//! rewrite it into forms DataFusion plans, and the server provides the functions:
//!
//! | written | becomes |
//! |---|---|
//! | `pg_catalog.f(...)` | `f(...)` |
//! | `a OPERATOR(pg_catalog.~) b` | `a ~ b` (and other operators likewise) |
//! | `x COLLATE "C"` | `x` |
//! | `x::regclass` | `to_regclass_oid(x)` (an oid) |
//! | `x::regtype`, `x::regproc`, ... | `strom_regtype_name(x)` etc. (text) |
//! | `x::oid`, `x::pg_catalog.text`, `x::name` | casts to the corresponding built-in type |
//! | `x::jsonb`, `x::json` | `strom_to_jsonb(x)` |
//! | `j -> k`, `j ->> k`, `j #> p`, `j #>> p`, `j ? k` | `strom_jsonb_get(j, k)` and the like (see the server's `jsonb` module) |

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, DataType, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, Statement,
    VisitMut, VisitorMut,
};

/// Applies every rewrite to a statement in place.
pub fn rewrite_statement(stmt: &mut Statement) -> crate::Result<()> {
    rewrite_statement_with(stmt, &|_| false)
}

/// Like [`rewrite_statement`]; `empty_catalog` tells which `pg_catalog` relations have no
/// rows, so that scalar subqueries over them can be replaced by NULL.
pub fn rewrite_statement_with(
    stmt: &mut Statement,
    empty_catalog: &dyn Fn(&str) -> bool,
) -> crate::Result<()> {
    // A view definition keeps its processing-time hints for the view planner (which
    // takes them itself); any other statement reads the relations as they are now.
    let view_definition = match stmt {
        Statement::CreateView(_) => true,
        Statement::Explain { statement, .. } => {
            matches!(statement.as_ref(), Statement::CreateView(_))
        }
        _ => false,
    };
    if !view_definition {
        crate::windows::take_proctime(stmt);
    }
    crate::windows::rewrite_window_functions(stmt)?;
    let mut error = None;
    let _ = sqlparser::ast::visit_expressions_mut(stmt, |e| match rewrite_expr(e, empty_catalog) {
        Ok(()) => ControlFlow::Continue(()),
        Err(err) => {
            error = Some(err);
            ControlFlow::Break(())
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    let _ = stmt.visit(&mut EmptyCatalogSelects { empty_catalog });
    let _ = stmt.visit(&mut OutputNames);
    Ok(())
}

/// A SELECT (without aggregates or GROUP BY) whose FROM is one empty `pg_catalog` relation,
/// optionally LEFT JOINed to others, returns no rows whatever its expressions are. Tools
/// probe such relations (policies, publications, statistics) with PostgreSQL-only
/// expressions; we keep the shape and the (empty) result but drop those expressions.
struct EmptyCatalogSelects<'a> {
    empty_catalog: &'a dyn Fn(&str) -> bool,
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
];

impl VisitorMut for EmptyCatalogSelects<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        self.set_expr(&mut query.body);
        ControlFlow::Continue(())
    }
}

impl EmptyCatalogSelects<'_> {
    fn set_expr(&self, body: &mut SetExpr) {
        match body {
            SetExpr::Select(select) => self.select(select),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            _ => {}
        }
    }

    fn select(&self, select: &mut sqlparser::ast::Select) {
        let [from] = select.from.as_slice() else {
            return;
        };
        let empty = match &from.relation {
            sqlparser::ast::TableFactor::Table { name, .. } => {
                last_part(name).is_some_and(|n| (self.empty_catalog)(&n))
            }
            _ => false,
        };
        // Every join but RIGHT/FULL keeps an empty left side empty.
        let keeps_empty = from.joins.iter().all(|j| {
            !matches!(
                j.join_operator,
                sqlparser::ast::JoinOperator::RightOuter(_)
                    | sqlparser::ast::JoinOperator::Right(_)
                    | sqlparser::ast::JoinOperator::FullOuter(_)
            )
        });
        let grouped = !matches!(&select.group_by, sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty());
        // Aggregates make one row out of none; look for them outside subqueries only.
        let mut outer_level = select.projection.clone();
        let _ = sqlparser::ast::visit_expressions_mut(&mut outer_level, |e| {
            if matches!(
                e,
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. }
            ) {
                *e = Expr::value(sqlparser::ast::Value::Null);
            }
            ControlFlow::<()>::Continue(())
        });
        let mut aggregated = false;
        let _ = sqlparser::ast::visit_expressions(&outer_level, |e| {
            if let Expr::Function(f) = e {
                if last_part(&f.name).is_some_and(|n| AGGREGATES.contains(&n.as_str()))
                    && f.over.is_none()
                {
                    aggregated = true;
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if !empty || !keeps_empty || grouped || aggregated || select.having.is_some() {
            return;
        }
        for item in select.projection.iter_mut() {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = pg_column_name(e).unwrap_or_else(|| "?column?".into());
                    *item = SelectItem::ExprWithAlias {
                        expr: Expr::value(sqlparser::ast::Value::Null),
                        alias: Ident::with_quote('"', name),
                    };
                }
                SelectItem::ExprWithAlias { expr, .. } => {
                    *expr = Expr::value(sqlparser::ast::Value::Null)
                }
                _ => {}
            }
        }
        name_items(&mut select.projection);
        select.selection = None;
    }
}

/// Marks a duplicate output name: DataFusion needs unique projection names, PostgreSQL
/// allows duplicates. The server strips this marker and what follows from result names.
pub const DUPLICATE_NAME_MARKER: char = '\u{0}';

/// Names unaliased select items the way PostgreSQL does (`sum`, `count`, `?column?`,
/// `case`, the type name of a cast literal), instead of DataFusion's expression text.
struct OutputNames;

impl VisitorMut for OutputNames {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        name_set_expr(&mut query.body);
        ControlFlow::Continue(())
    }
}

fn name_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => name_items(&mut select.projection),
        SetExpr::SetOperation { left, .. } => name_set_expr(left),
        SetExpr::Query(q) => name_set_expr(&mut q.body),
        _ => {}
    }
}

fn name_items(items: &mut [SelectItem]) {
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        match item {
            SelectItem::UnnamedExpr(expr) => {
                let name = pg_column_name(expr).unwrap_or_else(|| "?column?".to_string());
                let is_column = matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
                let dup = seen.contains(&name);
                if !is_column || dup {
                    let alias = if dup {
                        format!("{name}{DUPLICATE_NAME_MARKER}{i}")
                    } else {
                        name.clone()
                    };
                    let expr = std::mem::replace(expr, Expr::value(sqlparser::ast::Value::Null));
                    *item = SelectItem::ExprWithAlias {
                        expr,
                        alias: Ident::with_quote('"', alias),
                    };
                }
                seen.push(name);
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                let name = alias.value.clone();
                if seen.contains(&name) {
                    alias.value = format!("{name}{DUPLICATE_NAME_MARKER}{i}");
                    alias.quote_style = Some('"');
                }
                seen.push(name);
            }
            _ => {}
        }
    }
}

/// PostgreSQL's `FigureColname`: the name of an unaliased select item, if it has one.
fn pg_column_name(expr: &Expr) -> Option<String> {
    let ident = |i: &Ident| {
        if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_lowercase()
        }
    };
    match expr {
        Expr::Identifier(i) => Some(ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        // Operators rewritten into calls have no name; a cast to jsonb is named by its
        // operand or its type.
        Expr::Function(f) => match last_part(&f.name)?.as_str() {
            "strom_to_jsonb" => match &f.args {
                FunctionArguments::List(l) => match l.args.first() {
                    Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))) => {
                        pg_column_name(inner).or_else(|| Some("jsonb".into()))
                    }
                    _ => Some("jsonb".into()),
                },
                _ => Some("jsonb".into()),
            },
            n if n.starts_with("strom_jsonb_") => None,
            n => Some(n.to_string()),
        },
        Expr::Nested(e) => pg_column_name(e),
        Expr::Cast {
            expr, data_type, ..
        } => pg_column_name(expr).or_else(|| {
            Some(match crate::types::sql_type(data_type) {
                Ok(t) => t.pg_typname(),
                Err(_) => data_type.to_string().to_lowercase(),
            })
        }),
        Expr::Case { .. } => Some("case".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => Some(alias.value.clone()),
                Some(SelectItem::UnnamedExpr(e)) => pg_column_name(e),
                _ => None,
            },
            _ => None,
        },
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::TypedString(ts) => crate::types::sql_type(&ts.data_type)
            .ok()
            .map(|t| t.pg_typname()),
        Expr::Interval(_) => Some("interval".into()),
        _ => None,
    }
}

/// The function a jsonb operator is planned as (see the server's `jsonb` module).
fn json_operator(op: &BinaryOperator) -> Option<&'static str> {
    Some(match op {
        BinaryOperator::Arrow => "strom_jsonb_get",
        BinaryOperator::LongArrow => "strom_jsonb_get_text",
        BinaryOperator::HashArrow => "strom_jsonb_path",
        BinaryOperator::HashLongArrow => "strom_jsonb_path_text",
        BinaryOperator::Question => "strom_jsonb_exists",
        _ => return None,
    })
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(|i| i.value.to_lowercase())
}

fn strip_pg_catalog(name: &mut ObjectName) {
    if name.0.len() == 2 {
        if let Some(first) = name.0[0].as_ident() {
            if first.value.eq_ignore_ascii_case("pg_catalog") {
                name.0.remove(0);
            }
        }
    }
}

fn call(name: &str, arg: Expr) -> Expr {
    call_n(name, vec![arg])
}

fn call_n(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// What a PostgreSQL-only type in a cast turns into.
enum CastTarget {
    Type(DataType),
    Function(&'static str),
}

fn cast_target(dt: &DataType) -> Option<CastTarget> {
    let name = match dt {
        DataType::Regclass => return Some(CastTarget::Function("to_regclass_oid")),
        DataType::JSON | DataType::JSONB => return Some(CastTarget::Function("strom_to_jsonb")),
        DataType::Custom(name, _) => last_part(name)?,
        _ => return None,
    };
    Some(match name.as_str() {
        "regclass" => CastTarget::Function("to_regclass_oid"),
        "regtype" => CastTarget::Function("strom_regtype_name"),
        "regproc" | "regprocedure" | "regoper" | "regnamespace" | "regrole" | "regconfig" => {
            CastTarget::Function("strom_regproc_name")
        }
        "oid" | "xid" | "cid" | "regcollation" => CastTarget::Type(DataType::IntUnsigned(None)),
        "text" | "name" | "char" | "bpchar" | "varchar" => CastTarget::Type(DataType::Text),
        "int2" => CastTarget::Type(DataType::SmallInt(None)),
        "int4" => CastTarget::Type(DataType::Int(None)),
        "int8" => CastTarget::Type(DataType::BigInt(None)),
        "bool" => CastTarget::Type(DataType::Boolean),
        "float4" => CastTarget::Type(DataType::Real),
        "float8" => CastTarget::Type(DataType::DoublePrecision),
        "timestamptz" => CastTarget::Type(DataType::Timestamp(
            None,
            sqlparser::ast::TimezoneInfo::WithTimeZone,
        )),
        "string" => CastTarget::Type(DataType::Text),
        "json" | "jsonb" => CastTarget::Function("strom_to_jsonb"),
        _ => return None,
    })
}

/// psql's `\d` selects single values from `pg_catalog` with correlated scalar subqueries
/// such as `(SELECT pg_get_expr(d.adbin, ...) FROM pg_attrdef d WHERE d.adrelid = a.attrelid)`.
/// DataFusion only decorrelates aggregated ones, so for subqueries over `pg_catalog`
/// relations (which return at most one row there) we wrap the value in `max(...)`.
/// User queries are left alone.
fn aggregate_catalog_subquery(q: &mut Query) -> bool {
    let SetExpr::Select(select) = q.body.as_mut() else {
        return false;
    };
    let over_catalog = !select.from.is_empty()
        && select.from.iter().all(|t| match &t.relation {
            sqlparser::ast::TableFactor::Table { name, .. } => {
                let first = name
                    .0
                    .first()
                    .and_then(ObjectNamePart::as_ident)
                    .map(|i| i.value.to_lowercase());
                let last = last_part(name).unwrap_or_default();
                first.as_deref() == Some("pg_catalog") || last.starts_with("pg_")
            }
            _ => false,
        });
    let grouped =
        !matches!(&select.group_by, sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if !over_catalog || grouped || select.projection.len() != 1 {
        return false;
    }
    if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } =
        &mut select.projection[0]
    {
        let inner = std::mem::replace(e, Expr::value(sqlparser::ast::Value::Null));
        *e = call("max", inner);
    }
    true
}

fn split_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

fn and_all(mut parts: Vec<Expr>) -> Option<Expr> {
    let first = if parts.is_empty() {
        return None;
    } else {
        parts.remove(0)
    };
    Some(parts.into_iter().fold(first, |acc, p| Expr::BinaryOp {
        left: Box::new(acc),
        op: BinaryOperator::And,
        right: Box::new(p),
    }))
}

/// Qualifiers (`a` in `a.col`) used by an expression; `None` if it also uses an
/// unqualified column, which could belong to either side.
fn qualifiers(e: &Expr) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut unqualified = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        match x {
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                out.push(parts[parts.len() - 2].value.to_lowercase())
            }
            Expr::Identifier(_) => unqualified = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    (!unqualified).then_some(out)
}

/// Moves conjuncts of a catalog subquery's WHERE that only reference the outer query out
/// of it: `(SELECT v FROM d WHERE d.k = a.k AND a.flag)` becomes
/// `CASE WHEN a.flag THEN (SELECT v FROM d WHERE d.k = a.k) END` (the same value), which
/// DataFusion can decorrelate. Conjuncts with no qualified column stay inside.
fn hoist_outer_conjuncts(e: &mut Expr) {
    let Expr::Subquery(q) = e else { return };
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    let inner: Vec<String> = select
        .from
        .iter()
        .filter_map(|t| match &t.relation {
            sqlparser::ast::TableFactor::Table { name, alias, .. } => Some(match alias {
                Some(a) => a.name.value.to_lowercase(),
                None => last_part(name).unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();
    let Some(selection) = select.selection.take() else {
        return;
    };
    let mut parts = Vec::new();
    split_and(selection, &mut parts);
    let (outer, keep): (Vec<Expr>, Vec<Expr>) =
        parts.into_iter().partition(|p| match qualifiers(p) {
            Some(qs) => !qs.is_empty() && qs.iter().all(|q| !inner.contains(q)),
            None => false,
        });
    select.selection = and_all(keep);
    if let Some(cond) = and_all(outer) {
        let sub = std::mem::replace(e, Expr::value(sqlparser::ast::Value::Null));
        *e = Expr::Case {
            case_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
            end_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
            operand: None,
            conditions: vec![sqlparser::ast::CaseWhen {
                condition: cond,
                result: sub,
            }],
            else_result: None,
        };
    }
}

/// A scalar subquery whose FROM list includes an empty `pg_catalog` relation yields NULL
/// (its cross product is empty); replacing it spares DataFusion correlations it cannot
/// decorrelate, such as psql's collation lookup in `\d`.
fn reads_empty_catalog(q: &Query, empty_catalog: &dyn Fn(&str) -> bool) -> bool {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return false;
    };
    let inner_joins = select.from.iter().flat_map(|t| &t.joins).all(|j| {
        matches!(
            j.join_operator,
            sqlparser::ast::JoinOperator::Join(_) | sqlparser::ast::JoinOperator::Inner(_)
        )
    });
    let empty = |f: &sqlparser::ast::TableFactor| match f {
        sqlparser::ast::TableFactor::Table {
            name, args: None, ..
        } => last_part(name).is_some_and(|n| empty_catalog(&n)),
        _ => false,
    };
    inner_joins
        && select
            .from
            .iter()
            .any(|t| empty(&t.relation) || t.joins.iter().any(|j| empty(&j.relation)))
}

/// `unnest(...)` in FROM: psql unnests `reloptions`, which Strom never sets.
fn unnests_only(q: &Query) -> bool {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return false;
    };
    !select.from.is_empty()
        && select.from.iter().all(|t| {
            t.joins.is_empty()
                && match &t.relation {
                    sqlparser::ast::TableFactor::Table {
                        name,
                        args: Some(_),
                        ..
                    } => last_part(name).as_deref() == Some("unnest"),
                    sqlparser::ast::TableFactor::UNNEST { .. } => true,
                    _ => false,
                }
        })
}

/// `ARRAY(subquery)`, which DataFusion does not plan. Tools use it over catalogs; where the
/// subquery provably returns no rows (an empty catalog relation, or `unnest` of options
/// Strom never sets) it is the empty text array. Elsewhere it stays an error.
fn empty_array_subquery(e: &mut Expr, empty_catalog: &dyn Fn(&str) -> bool) {
    let Expr::Function(f) = e else { return };
    if last_part(&f.name).as_deref() != Some("array") {
        return;
    }
    let FunctionArguments::Subquery(q) = &f.args else {
        return;
    };
    if reads_empty_catalog(q, empty_catalog) || unnests_only(q) {
        *e = Expr::Cast {
            kind: sqlparser::ast::CastKind::Cast,
            expr: Box::new(Expr::Array(sqlparser::ast::Array {
                elem: vec![],
                named: true,
            })),
            data_type: DataType::Array(sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                Box::new(DataType::Varchar(None)),
                None,
            )),
            array: false,
            format: None,
        };
    }
}

/// `1e20` as `100000000000000000000`, if the plain form fits a 38-digit decimal.
fn expand_exponent(n: &str) -> Option<String> {
    let (mantissa, exp) = n.split_once(['e', 'E'])?;
    let exp: i32 = exp.parse().ok()?;
    let neg = mantissa.starts_with('-');
    let m = mantissa.trim_start_matches(['-', '+']);
    let (int, frac) = m.split_once('.').unwrap_or((m, ""));
    let digits = format!("{int}{frac}");
    let point = int.len() as i32 + exp; // position of the decimal point in `digits`
    let plain = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    let (i, f) = plain.split_once('.').unwrap_or((&plain, ""));
    if i.trim_start_matches('0').len() + f.len() > 38 {
        return None;
    }
    Some(if neg { format!("-{plain}") } else { plain })
}

/// The string inside a plain string literal.
/// `to_char(t, 'YYYY-MM-DD HH24:MI')`: DataFusion's `to_char` takes chrono patterns, so
/// a PostgreSQL pattern (a literal without `%`) is translated; a pattern with `%` is
/// taken as chrono's already.
fn pg_to_char_pattern(f: &mut Function) {
    let sqlparser::ast::FunctionArguments::List(list) = &mut f.args else {
        return;
    };
    let Some(sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(e))) =
        list.args.get_mut(1)
    else {
        return;
    };
    let Some(pattern) = string_literal(e) else {
        return;
    };
    if pattern.contains('%') {
        return;
    }
    *e = Expr::value(sqlparser::ast::Value::SingleQuotedString(chrono_pattern(
        pattern,
    )));
}

/// A PostgreSQL `to_char` pattern as a chrono one.
pub fn chrono_pattern(pg: &str) -> String {
    const TOKENS: &[(&str, &str)] = &[
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("YYYY", "%Y"),
        ("MONTH", "%B"),
        ("Month", "%B"),
        ("month", "%B"),
        ("DDD", "%j"),
        ("MON", "%b"),
        ("Mon", "%b"),
        ("mon", "%b"),
        ("DAY", "%A"),
        ("Day", "%A"),
        ("day", "%A"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("DY", "%a"),
        ("Dy", "%a"),
        ("dy", "%a"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
        ("AM", "%p"),
        ("PM", "%p"),
        ("am", "%P"),
        ("pm", "%P"),
        ("TZ", "%Z"),
        ("FM", ""),
    ];
    let mut out = String::with_capacity(pg.len() + 8);
    let mut rest = pg;
    'outer: while let Some(ch) = rest.chars().next() {
        if ch == '"' {
            // Quoted text is literal.
            let end = rest[1..].find('"').map_or(rest.len(), |i| i + 2);
            out.push_str(&rest[1..end.saturating_sub(1).max(1)]);
            rest = &rest[end.min(rest.len())..];
            continue;
        }
        for (token, chrono) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(chrono);
                rest = after;
                continue 'outer;
            }
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

pub fn string_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(s)
            | sqlparser::ast::Value::EscapedStringLiteral(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn rewrite_expr(e: &mut Expr, empty_catalog: &dyn Fn(&str) -> bool) -> crate::Result<()> {
    // 'literal'::type for types whose PostgreSQL input syntax Arrow does not parse.
    if let Expr::Cast {
        expr, data_type, ..
    } = e
    {
        if let (Some(lit), Ok(ty)) = (string_literal(expr), crate::types::sql_type(data_type)) {
            if let Some(typed) = crate::literal::typed_literal(&ty, lit)? {
                *e = typed;
                return Ok(());
            }
        }
    }
    // Numeric literals with an exponent (1e308) do not fit a decimal: read them as double.
    if let Expr::Value(v) = e {
        if let sqlparser::ast::Value::Number(n, _) = &v.value {
            if n.contains(['e', 'E']) {
                if let Some(plain) = expand_exponent(n) {
                    *e = Expr::value(sqlparser::ast::Value::Number(plain, false));
                    return Ok(());
                }
                let n = n.clone();
                *e = Expr::Cast {
                    kind: sqlparser::ast::CastKind::Cast,
                    expr: Box::new(Expr::value(sqlparser::ast::Value::SingleQuotedString(n))),
                    data_type: DataType::DoublePrecision,
                    array: false,
                    format: None,
                };
                return Ok(());
            }
        }
    }
    empty_array_subquery(e, empty_catalog);
    match e {
        Expr::Function(f) => {
            strip_pg_catalog(&mut f.name);
            if last_part(&f.name).as_deref() == Some("to_char") {
                pg_to_char_pattern(f);
            }
        }
        Expr::BinaryOp { left, op, right } if json_operator(op).is_some() => {
            let name = json_operator(op).expect("checked by the guard");
            let null = || Expr::value(sqlparser::ast::Value::Null);
            let l = std::mem::replace(left.as_mut(), null());
            let r = std::mem::replace(right.as_mut(), null());
            *e = call_n(name, vec![l, r]);
        }
        Expr::BinaryOp { op, .. } => {
            if let BinaryOperator::PGCustomBinaryOperator(parts) = op {
                let new = match parts.last().map(String::as_str) {
                    Some("~") => Some(BinaryOperator::PGRegexMatch),
                    Some("~*") => Some(BinaryOperator::PGRegexIMatch),
                    Some("!~") => Some(BinaryOperator::PGRegexNotMatch),
                    Some("!~*") => Some(BinaryOperator::PGRegexNotIMatch),
                    Some("=") => Some(BinaryOperator::Eq),
                    Some("<>") => Some(BinaryOperator::NotEq),
                    Some("<") => Some(BinaryOperator::Lt),
                    Some("<=") => Some(BinaryOperator::LtEq),
                    Some(">") => Some(BinaryOperator::Gt),
                    Some(">=") => Some(BinaryOperator::GtEq),
                    Some("||") => Some(BinaryOperator::StringConcat),
                    _ => None,
                };
                if let Some(new) = new {
                    *op = new;
                }
            }
        }
        Expr::Subquery(q) => {
            if reads_empty_catalog(q, empty_catalog) {
                *e = Expr::value(sqlparser::ast::Value::Null);
            } else if aggregate_catalog_subquery(q) {
                hoist_outer_conjuncts(e);
            }
        }
        Expr::Collate { expr, .. } => {
            let inner = std::mem::replace(expr.as_mut(), Expr::value(sqlparser::ast::Value::Null));
            *e = inner;
        }
        Expr::Cast {
            expr, data_type, ..
        } => match cast_target(data_type) {
            Some(CastTarget::Type(t)) => *data_type = t,
            Some(CastTarget::Function(name)) => {
                let inner =
                    std::mem::replace(expr.as_mut(), Expr::value(sqlparser::ast::Value::Null));
                *e = call(name, inner);
            }
            None => {}
        },
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn rw(sql: &str) -> String {
        let mut s = parse(sql).unwrap().remove(0);
        rewrite_statement(&mut s).unwrap();
        s.to_string()
    }

    #[test]
    fn psql_describe_query_shapes_are_rewritten() {
        assert_eq!(
            rw("SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(meter)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid)"),
            "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname ~ '^(meter)$' AND pg_table_is_visible(c.oid)"
        );
        assert_eq!(
            rw("SELECT 'meter'::regclass"),
            "SELECT to_regclass_oid('meter') AS \"to_regclass_oid\""
        );
    }

    #[test]
    fn to_char_patterns_translate_from_postgres_to_chrono() {
        assert_eq!(chrono_pattern("YYYY-MM-DD HH24:MI:SS"), "%Y-%m-%d %H:%M:%S");
        assert_eq!(chrono_pattern("HH:MI AM"), "%I:%M %p");
        assert_eq!(
            chrono_pattern("Dy, DD Mon YYYY \"at\" HH24"),
            "%a, %d %b %Y at %H"
        );
        assert_eq!(chrono_pattern("FMDD.MM.YY US"), "%d.%m.%y %6f");
        assert_eq!(
            rw("SELECT to_char(t, 'YYYY-MM-DD') FROM x"),
            "SELECT to_char(t, '%Y-%m-%d') AS \"to_char\" FROM x"
        );
        // A chrono pattern is left alone.
        assert_eq!(
            rw("SELECT to_char(t, '%H:%M') FROM x"),
            "SELECT to_char(t, '%H:%M') AS \"to_char\" FROM x"
        );
    }

    #[test]
    fn exponent_literals_become_decimals_when_they_fit() {
        assert_eq!(expand_exponent("1e20").unwrap(), "100000000000000000000");
        assert_eq!(expand_exponent("1e-05").unwrap(), "0.00001");
        assert_eq!(expand_exponent("-2.5E3").unwrap(), "-2500");
        assert_eq!(expand_exponent("1.17549435e-38"), None);
        assert_eq!(expand_exponent("1.7976931348623157e308"), None);
    }

    #[test]
    fn output_columns_are_named_like_postgres() {
        assert_eq!(
            rw("SELECT feeder, sum(kw), count(*), 1 + 1, '1'::int, x::text, count(*) FROM t"),
            "SELECT feeder, sum(kw) AS \"sum\", count(*) AS \"count\", 1 + 1 AS \"?column?\", '1'::INT AS \"int4\", \
             x::TEXT AS \"x\", count(*) AS \"count\u{0}6\" FROM t"
        );
        assert_eq!(
            rw("SELECT x::pg_catalog.regtype::pg_catalog.text FROM t"),
            "SELECT strom_regtype_name(x)::TEXT AS \"strom_regtype_name\" FROM t"
        );
        assert_eq!(
            rw("SELECT j -> 'a' ->> 0, j #> '{a,b}', '{}'::jsonb, x::json FROM t WHERE j ? 'k'"),
            "SELECT strom_jsonb_get_text(strom_jsonb_get(j, 'a'), 0) AS \"?column?\", \
             strom_jsonb_path(j, '{a,b}') AS \"?column?\u{0}1\", strom_to_jsonb('{}') AS \"jsonb\", \
             strom_to_jsonb(x) AS \"x\" FROM t WHERE strom_jsonb_exists(j, 'k')"
        );
        assert_eq!(
            rw("SELECT c FROM t WHERE c = '5'::oid"),
            "SELECT c FROM t WHERE c = '5'::INT UNSIGNED"
        );
    }
}

#[cfg(test)]
mod empty_catalog_tests {
    use super::*;
    use crate::parser::parse;

    #[test]
    fn selects_over_empty_catalogs_drop_their_expressions() {
        let mut s = parse("SELECT pubname, array_upper(x, 1) FROM pg_catalog.pg_publication p JOIN pg_catalog.pg_class c ON c.oid = p.oid WHERE f(x) UNION SELECT relname, NULL FROM pg_catalog.pg_class ORDER BY 1").unwrap().remove(0);
        rewrite_statement_with(&mut s, &|n| n == "pg_publication").unwrap();
        assert_eq!(
            s.to_string(),
            "SELECT NULL AS \"pubname\", NULL AS \"array_upper\" FROM pg_catalog.pg_publication p JOIN pg_catalog.pg_class c ON c.oid = p.oid UNION SELECT relname, NULL FROM pg_catalog.pg_class ORDER BY 1"
        );
    }
}
