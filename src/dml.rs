//! INSERT, UPDATE and DELETE.
//!
//! Each statement takes the write lock, reads the current rows through the transaction's
//! snapshot, and commits all its row changes in one batch: it is atomic, and a failing row
//! (duplicate key, NULL in a NOT NULL column, value too long) leaves the table untouched.
//!
//! - INSERT is planned by DataFusion (column lists, DEFAULTs, VALUES coercion); we run its
//!   input and write the rows, handling `ON CONFLICT` ourselves.
//! - UPDATE and DELETE are rewritten into a SELECT of the old primary key (and, for UPDATE,
//!   the new row) over the target table, which DataFusion plans with primary-key filters
//!   pushed into the scan.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use sqlparser::ast::{
    AssignmentTarget, ConflictTarget, Delete, Expr, FromTable, Ident, Insert, OnConflictAction,
    OnInsert, Statement, TableFactor, TableObject, TableWithJoins, Update, UpdateTableFromKind,
};
use strom_catalog::{SqlType, TableDef};
use strom_engine::{table, Database, WriteTxn};
use strom_sql::ddl::{ident_name, object_name};

use crate::error::{Result, StromError};
use crate::query::{self, QueryEnv};
use crate::session::{bind_params, param_types, Param, Settings};

pub async fn execute(
    db: &Arc<Database>,
    settings: &Settings,
    stmt: &Statement,
    params: &[Param],
    param_oids: &[u32],
) -> Result<(&'static str, usize)> {
    let mut txn = db.begin_write().await;
    let n = match stmt {
        Statement::Insert(ins) => (
            "INSERT",
            insert(&mut txn, settings, ins, params, param_oids).await?,
        ),
        Statement::Update(up) => (
            "UPDATE",
            update(&mut txn, settings, up, params, param_oids).await?,
        ),
        Statement::Delete(del) => (
            "DELETE",
            delete(&mut txn, settings, del, params, param_oids).await?,
        ),
        _ => {
            return Err(StromError::user(
                "XX000",
                "internal error: not a DML statement",
            ))
        }
    };
    txn.commit()?;
    Ok(n)
}

/// Parameter types of a DML statement.
pub async fn describe(
    db: &Arc<Database>,
    settings: &Settings,
    stmt: &Statement,
) -> Result<Vec<Option<datafusion::arrow::datatypes::FieldRef>>> {
    let catalog = db.catalog();
    let snapshot = db.snapshot();
    let plan = match stmt {
        Statement::Insert(ins) => {
            let (ins, _) = split_on_conflict(ins)?;
            let def = resolve(&catalog, settings, insert_target(&ins)?)?;
            let env = QueryEnv::new(catalog.clone(), snapshot, settings.clone());
            let ctx = env.context();
            env.plan_defaults(&ctx, def)?;
            query::plan(&ctx, &Statement::Insert(ins)).await?
        }
        Statement::Update(up) => {
            let (def, _, sql) = update_select(&catalog, settings, up)?;
            plan_select(&catalog, snapshot, settings, def, &sql)
                .await?
                .1
        }
        Statement::Delete(del) => {
            let (def, sql) = delete_select(&catalog, settings, del)?;
            plan_select(&catalog, snapshot, settings, def, &sql)
                .await?
                .1
        }
        _ => return Ok(vec![]),
    };
    param_types(&plan)
}

fn resolve<'a>(
    catalog: &'a strom_catalog::Catalog,
    settings: &Settings,
    name: &sqlparser::ast::ObjectName,
) -> Result<&'a TableDef> {
    let (schema, name) = object_name(name)?;
    let def = catalog.resolve_table(schema.as_deref(), &name, &settings.search_path)?;
    if def.is_view() {
        return Err(StromError::user(
            "42809",
            format!("cannot change materialized view \"{}\"", def.name),
        ));
    }
    if strom_engine::lookup::is_external(def) {
        return Err(StromError::user(
            "42809",
            format!(
                "cannot change lookup table \"{}\": its rows live in the external database (change them there)",
                def.name
            ),
        ));
    }
    Ok(def)
}

fn insert_target(ins: &Insert) -> Result<&sqlparser::ast::ObjectName> {
    match &ins.table {
        TableObject::TableName(n) => Ok(n),
        other => Err(StromError::unsupported(format!("INSERT INTO {other}"))),
    }
}

fn split_on_conflict(ins: &Insert) -> Result<(Insert, Option<sqlparser::ast::OnConflict>)> {
    if ins.returning.is_some() {
        return Err(StromError::unsupported("INSERT ... RETURNING"));
    }
    let mut ins = ins.clone();
    let on = match ins.on.take() {
        None => None,
        Some(OnInsert::OnConflict(c)) => Some(c),
        Some(other) => return Err(StromError::unsupported(format!("{other}"))),
    };
    Ok((ins, on))
}

/// Casts a row to the table's column types and checks NOT NULL and varchar lengths.
fn coerce_row(def: &TableDef, row: Vec<ScalarValue>) -> Result<Vec<ScalarValue>> {
    row.into_iter()
        .zip(&def.columns)
        .map(|(v, c)| {
            let target = c.ty.to_arrow();
            let mut v = if v.data_type() == target {
                v
            } else if v.is_null() {
                ScalarValue::try_from(&target)?
            } else {
                let v = if target.is_integer() {
                    crate::pg_casts::round_for_int(v)
                } else {
                    v
                };
                v.cast_to(&target).map_err(|e| {
                    let (code, msg) = StromError::from(e).code_and_message();
                    StromError::user(
                        if code == "XX000" { "22P02" } else { code },
                        format!("column \"{}\": {msg}", c.name),
                    )
                })?
            };
            if v.is_null() && !c.nullable {
                return Err(
                    strom_engine::EngineError::not_null_violation(&def.name, &c.name).into(),
                );
            }
            // jsonb is stored in its canonical text (what `jsonb_out` prints).
            if let (SqlType::Jsonb, ScalarValue::Utf8(Some(s))) = (&c.ty, &v) {
                match crate::jsonb::canonical(s) {
                    Ok(text) => v = ScalarValue::Utf8(Some(text)),
                    Err(e) => {
                        return Err(StromError::user(
                            "22P02",
                            format!("invalid input syntax for type json: {e}"),
                        ))
                    }
                }
            }
            if let (SqlType::Varchar(Some(n)), ScalarValue::Utf8(Some(s))) = (&c.ty, &v) {
                if s.chars().count() > *n as usize {
                    return Err(StromError::user(
                        "22001",
                        format!("value too long for type character varying({n})"),
                    ));
                }
            }
            Ok(v)
        })
        .collect()
}

fn unique_violation(def: &TableDef, row: &[ScalarValue]) -> StromError {
    strom_engine::EngineError::unique_violation(
        &def.name,
        &table::describe_key(def, &table::pk_of(def, row)),
    )
    .into()
}

async fn insert(
    txn: &mut WriteTxn<'_>,
    settings: &Settings,
    ins: &Insert,
    params: &[Param],
    param_oids: &[u32],
) -> Result<usize> {
    let (plain, on_conflict) = split_on_conflict(ins)?;
    let catalog = Arc::new(txn.catalog().clone());
    let def = resolve(&catalog, settings, insert_target(&plain)?)?.clone();
    if let Some(c) = &on_conflict {
        check_conflict_target(&def, c)?;
    }
    let env = QueryEnv::new(
        catalog.clone(),
        Arc::clone(txn.snapshot()),
        settings.clone(),
    );
    let ctx = env.context();
    env.plan_defaults(&ctx, &def)?;
    let plan = query::plan(&ctx, &Statement::Insert(plain)).await?;
    let plan = bind_params(plan, params, param_oids)?;
    let LogicalPlan::Dml(dml) = plan else {
        return Err(StromError::user(
            "XX000",
            "internal error: INSERT did not plan as DML",
        ));
    };
    let batches = query::collect(&ctx, Arc::unwrap_or_clone(dml.input)).await?;
    let types = table::stored_types(&def);
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut next_row_id = if def.has_row_id() {
        txn.alloc_row_ids(total as i64)
    } else {
        0
    };
    let mut written = 0;
    let mut conflicts: Vec<(Vec<ScalarValue>, Vec<ScalarValue>)> = Vec::new();
    let mut inserted_keys: HashSet<Vec<u8>> = HashSet::new();
    for batch in &batches {
        for mut row in table::batch_to_rows(batch)? {
            if def.has_row_id() {
                row.push(ScalarValue::Int64(Some(next_row_id)));
                next_row_id += 1;
            }
            let row = coerce_row(&def, row)?;
            let key = table::key_of(&def, &row)?;
            match txn.get(&def, &types, &key)? {
                None => {
                    txn.put(key.clone(), &row)?;
                    inserted_keys.insert(key);
                    written += 1;
                }
                Some(existing) => match on_conflict.as_ref().map(|c| &c.action) {
                    None => return Err(unique_violation(&def, &row)),
                    Some(OnConflictAction::DoNothing) => {}
                    Some(OnConflictAction::DoUpdate(_)) => {
                        if inserted_keys.contains(&key) {
                            return Err(second_touch());
                        }
                        conflicts.push((existing, row))
                    }
                },
            }
        }
    }
    if let Some(OnConflictAction::DoUpdate(up)) = on_conflict.as_ref().map(|c| &c.action) {
        written += apply_do_update(txn, &def, &types, up, &conflicts, &ins_alias(ins)).await?;
    }
    if def.watermark.is_some() {
        // Rows behind the watermark are kept as late, not stored: the tag counts the rest.
        written -= txn.judge_watermarks()?;
    }
    Ok(written)
}

/// A table with a watermark only ever gains rows: windows closed by its watermark could
/// not take back what they emitted.
fn append_only(def: &TableDef, what: &str) -> Result<()> {
    if def.watermark.is_some() {
        return Err(StromError::user(
            "0A000",
            format!(
                "cannot {what} table \"{}\": a table with a WATERMARK is append-only",
                def.name
            ),
        ));
    }
    Ok(())
}

fn second_touch() -> StromError {
    StromError::user(
        "21000",
        "ON CONFLICT DO UPDATE command cannot affect row a second time",
    )
}

fn ins_alias(ins: &Insert) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(a) = &ins.table_alias {
        names.push(ident_name(&a.alias));
    }
    if let TableObject::TableName(n) = &ins.table {
        if let Ok((_, name)) = object_name(n) {
            names.push(name);
        }
    }
    names
}

fn check_conflict_target(def: &TableDef, c: &sqlparser::ast::OnConflict) -> Result<()> {
    let no_match = || {
        StromError::user(
            "42P10",
            format!("there is no unique or exclusion constraint matching the ON CONFLICT specification on \"{}\"", def.name),
        )
    };
    if !def.user_pk {
        return Err(no_match());
    }
    match &c.conflict_target {
        None => Ok(()),
        Some(ConflictTarget::Columns(cols)) => {
            let given: BTreeSet<String> = cols.iter().map(ident_name).collect();
            let pk: BTreeSet<String> = def
                .pk
                .iter()
                .map(|&i| def.columns[i].name.clone())
                .collect();
            if given == pk {
                Ok(())
            } else {
                Err(no_match())
            }
        }
        Some(ConflictTarget::OnConstraint(name)) => {
            if name.to_string().trim_matches('"') == format!("{}_pkey", def.name) {
                Ok(())
            } else {
                Err(no_match())
            }
        }
    }
}

const EXCLUDED_PREFIX: &str = "__excluded__";

/// Evaluates `DO UPDATE SET ... [WHERE ...]` for each (existing, proposed) pair.
async fn apply_do_update(
    txn: &mut WriteTxn<'_>,
    def: &TableDef,
    types: &[DataType],
    up: &sqlparser::ast::DoUpdate,
    conflicts: &[(Vec<ScalarValue>, Vec<ScalarValue>)],
    table_names: &[String],
) -> Result<usize> {
    if conflicts.is_empty() {
        return Ok(0);
    }
    // A relation with every column twice: as stored, and as proposed (EXCLUDED).
    let visible: Vec<usize> = def.visible_columns().map(|(i, _)| i).collect();
    let mut fields = Vec::new();
    for &i in &visible {
        fields.push(strom_catalog::object::column_field(&def.columns[i]).with_nullable(true));
    }
    for &i in &visible {
        let c = &def.columns[i];
        fields.push(
            strom_catalog::object::column_field(c)
                .with_name(format!("{EXCLUDED_PREFIX}{}", c.name))
                .with_nullable(true),
        );
    }
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let rows: Vec<Vec<ScalarValue>> = conflicts
        .iter()
        .map(|(old, new)| {
            visible
                .iter()
                .map(|&i| old[i].clone())
                .chain(visible.iter().map(|&i| new[i].clone()))
                .collect()
        })
        .collect();
    let projection: Vec<usize> = (0..schema.fields().len()).collect();
    let batch = table::rows_to_batch(&schema, &projection, &rows)?;
    let ctx = SessionContext::new();
    ctx.register_table(
        "__conflict",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
    )?;

    let assigned: Vec<Option<Expr>> = assigned_columns(def, &up.assignments)?
        .into_iter()
        .map(|e| e.map(|e| conflict_expr(e.clone(), table_names)))
        .collect();
    let mut items: Vec<String> = Vec::new();
    for &i in &visible {
        let c = &def.columns[i];
        items.push(match &assigned[i] {
            Some(e) => format!("{e}"),
            None => quoted(&c.name),
        });
    }
    let where_sql = match &up.selection {
        Some(e) => format!("{}", conflict_expr(e.clone(), table_names)),
        None => "true".into(),
    };
    let sql = format!(
        "SELECT {}, ({where_sql}) AS __apply FROM __conflict",
        items.join(", ")
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut updated = 0;
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    let mut i = 0;
    for b in &batches {
        for out in table::batch_to_rows(b)? {
            let (old, _) = &conflicts[i];
            i += 1;
            if !matches!(out.last(), Some(ScalarValue::Boolean(Some(true)))) {
                continue;
            }
            let mut row = old.clone();
            for (k, &col) in visible.iter().enumerate() {
                row[col] = out[k].clone();
            }
            let row = coerce_row(def, row)?;
            let old_key = table::key_of(def, old)?;
            if !touched.insert(old_key.clone()) {
                return Err(second_touch());
            }
            let new_key = table::key_of(def, &row)?;
            if new_key != old_key {
                if txn.get(def, types, &new_key)?.is_some() {
                    return Err(unique_violation(def, &row));
                }
                txn.delete(old_key);
            }
            txn.put(new_key, &row)?;
            updated += 1;
        }
    }
    Ok(updated)
}

/// The expression assigned to each column of `def` by `SET c = e, ...` (`None` where
/// unassigned). Unknown and hidden columns are 42703, naming the column.
fn assigned_columns<'a>(
    def: &TableDef,
    assignments: &'a [sqlparser::ast::Assignment],
) -> Result<Vec<Option<&'a Expr>>> {
    let mut assigned: Vec<Option<&Expr>> = vec![None; def.columns.len()];
    for a in assignments {
        let AssignmentTarget::ColumnName(n) = &a.target else {
            return Err(StromError::unsupported("SET (a, b) = (...)"));
        };
        let col = object_name(n)?.1;
        let idx = def
            .column_index(&col)
            .filter(|&i| !def.columns[i].hidden)
            .ok_or_else(|| {
                StromError::user(
                    "42703",
                    format!(
                        "column \"{col}\" of relation \"{}\" does not exist",
                        def.name
                    ),
                )
            })?;
        assigned[idx] = Some(&a.value);
    }
    Ok(assigned)
}

/// `EXCLUDED.c` -> `__excluded__c`; `t.c` -> `c` for the target's name or alias.
fn conflict_expr(mut e: Expr, table_names: &[String]) -> Expr {
    let _ = sqlparser::ast::visit_expressions_mut(&mut e, |x| {
        if let Expr::CompoundIdentifier(parts) = x {
            if parts.len() == 2 {
                let q = ident_name(&parts[0]);
                let col = ident_name(&parts[1]);
                if q == "excluded" {
                    *x =
                        Expr::Identifier(Ident::with_quote('"', format!("{EXCLUDED_PREFIX}{col}")));
                } else if table_names.contains(&q) {
                    *x = Expr::Identifier(Ident::with_quote('"', col));
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    e
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The name the SELECT uses for the target table: its alias or its (last) name.
fn qualifier(t: &TableWithJoins) -> Result<(sqlparser::ast::ObjectName, String)> {
    if !t.joins.is_empty() {
        return Err(StromError::unsupported(
            "JOIN in the target of UPDATE/DELETE; use FROM/USING",
        ));
    }
    match &t.relation {
        TableFactor::Table { name, alias, .. } => {
            let q = match alias {
                Some(a) => quoted(&ident_name(&a.name)),
                None => quoted(&object_name(name)?.1),
            };
            Ok((name.clone(), q))
        }
        other => Err(StromError::unsupported(format!("UPDATE/DELETE of {other}"))),
    }
}

/// Column type to cast an assigned value to, as SQL DataFusion understands.
fn cast_sql(ty: &SqlType) -> Option<String> {
    match ty {
        SqlType::Varchar(_) | SqlType::Text | SqlType::Jsonb => None,
        SqlType::Timestamptz => Some("timestamptz".into()),
        other => Some(other.pg_name()),
    }
}

fn update_select<'a>(
    catalog: &'a strom_catalog::Catalog,
    settings: &Settings,
    up: &Update,
) -> Result<(&'a TableDef, usize, String)> {
    if up.returning.is_some() || up.limit.is_some() || !up.order_by.is_empty() {
        return Err(StromError::unsupported(
            "UPDATE with RETURNING, ORDER BY or LIMIT",
        ));
    }
    let (name, q) = qualifier(&up.table)?;
    let def = resolve(catalog, settings, &name)?;
    let assigned = assigned_columns(def, &up.assignments)?;
    let mut items: Vec<String> = def
        .pk
        .iter()
        .enumerate()
        .map(|(k, &i)| format!("{q}.{} AS __old_key_{k}", quoted(&def.columns[i].name)))
        .collect();
    let npk = items.len();
    for (i, c) in def.columns.iter().enumerate() {
        let value = match assigned[i] {
            Some(e) => match cast_sql(&c.ty) {
                Some(t) => format!("CAST({e} AS {t})"),
                None => format!("{e}"),
            },
            None => format!("{q}.{}", quoted(&c.name)),
        };
        items.push(format!("{value} AS __new_{i}"));
    }
    let mut sql = format!("SELECT {} FROM {}", items.join(", "), up.table);
    if let Some(from) = &up.from {
        let tables = match from {
            UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t) => t,
        };
        for t in tables {
            sql.push_str(&format!(", {t}"));
        }
    }
    if let Some(sel) = &up.selection {
        sql.push_str(&format!(" WHERE {sel}"));
    }
    Ok((def, npk, sql))
}

fn delete_select<'a>(
    catalog: &'a strom_catalog::Catalog,
    settings: &Settings,
    del: &Delete,
) -> Result<(&'a TableDef, String)> {
    if del.returning.is_some() || del.limit.is_some() || !del.order_by.is_empty() {
        return Err(StromError::unsupported(
            "DELETE with RETURNING, ORDER BY or LIMIT",
        ));
    }
    let tables = match &del.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let [target] = tables.as_slice() else {
        return Err(StromError::unsupported("DELETE from several tables"));
    };
    let (name, q) = qualifier(target)?;
    let def = resolve(catalog, settings, &name)?;
    let items: Vec<String> = def
        .pk
        .iter()
        .enumerate()
        .map(|(k, &i)| format!("{q}.{} AS __key_{k}", quoted(&def.columns[i].name)))
        .collect();
    let mut sql = format!("SELECT {} FROM {target}", items.join(", "));
    if let Some(using) = &del.using {
        for t in using {
            sql.push_str(&format!(", {t}"));
        }
    }
    if let Some(sel) = &del.selection {
        sql.push_str(&format!(" WHERE {sel}"));
    }
    Ok((def, sql))
}

async fn plan_select(
    catalog: &Arc<strom_catalog::Catalog>,
    snapshot: Arc<strom_engine::Snapshot>,
    settings: &Settings,
    def: &TableDef,
    sql: &str,
) -> Result<(SessionContext, LogicalPlan)> {
    let mut stmts = strom_sql::parser::parse(sql)?;
    let mut stmt = stmts
        .pop()
        .ok_or_else(|| StromError::user("XX000", "internal error: empty DML select"))?;
    query::prepare_statement(&mut stmt, catalog, settings)?;
    let env = QueryEnv::with_hidden(catalog.clone(), snapshot, settings.clone(), def.id);
    let ctx = env.context();
    let plan = query::plan(&ctx, &stmt).await?;
    Ok((ctx, plan))
}

async fn update(
    txn: &mut WriteTxn<'_>,
    settings: &Settings,
    up: &Update,
    params: &[Param],
    param_oids: &[u32],
) -> Result<usize> {
    let catalog = Arc::new(txn.catalog().clone());
    let (def, npk, sql) = update_select(&catalog, settings, up)?;
    let def = def.clone();
    append_only(&def, "UPDATE")?;
    let (ctx, plan) =
        plan_select(&catalog, Arc::clone(txn.snapshot()), settings, &def, &sql).await?;
    let plan = bind_params(plan, params, param_oids)?;
    let batches = query::collect(&ctx, plan).await?;
    let types = table::stored_types(&def);
    let mut changes = Vec::new();
    for b in &batches {
        for row in table::batch_to_rows(b)? {
            let old_pk = row[..npk].to_vec();
            let new_row = coerce_row(&def, row[npk..].to_vec())?;
            changes.push((old_pk, new_row));
        }
    }
    // Delete every old version first, so keys may move onto keys this statement frees.
    for (old_pk, _) in &changes {
        txn.delete(strom_engine::keys::row_key(
            def.id,
            &strom_engine::keys::encode_key(old_pk)?,
        ));
    }
    for (_, row) in &changes {
        let key = table::key_of(&def, row)?;
        if txn.get(&def, &types, &key)?.is_some() {
            return Err(unique_violation(&def, row));
        }
        txn.put(key, row)?;
    }
    Ok(changes.len())
}

async fn delete(
    txn: &mut WriteTxn<'_>,
    settings: &Settings,
    del: &Delete,
    params: &[Param],
    param_oids: &[u32],
) -> Result<usize> {
    let catalog = Arc::new(txn.catalog().clone());
    let (def, sql) = delete_select(&catalog, settings, del)?;
    let def = def.clone();
    append_only(&def, "DELETE")?;
    let (ctx, plan) =
        plan_select(&catalog, Arc::clone(txn.snapshot()), settings, &def, &sql).await?;
    let plan = bind_params(plan, params, param_oids)?;
    let batches = query::collect(&ctx, plan).await?;
    let mut keys = BTreeSet::new();
    for b in &batches {
        for pk in table::batch_to_rows(b)? {
            keys.insert(strom_engine::keys::row_key(
                def.id,
                &strom_engine::keys::encode_key(&pk)?,
            ));
        }
    }
    let n = keys.len();
    for k in keys {
        txn.delete(k);
    }
    Ok(n)
}
