//! Applying DDL: schemas and tables. Each statement is one catalog change committed in
//! the same RocksDB batch as any rows it removes.

use std::sync::Arc;

use sqlparser::ast::{ObjectType, SchemaName, Statement};
use strom_catalog::{ColumnDef, SchemaId, TableDef, TableId};
use strom_engine::Database;
use strom_sql::ddl::{bind_create_table, ident_name, object_name};

use strom_engine::stream::runtime::StreamRuntime;

use crate::error::{Result, StromError};
use crate::query::QueryEnv;
use crate::session::Settings;
use crate::views;

pub async fn execute(
    db: &Arc<Database>,
    stream: &Arc<StreamRuntime>,
    settings: &Settings,
    stmt: &Statement,
) -> Result<&'static str> {
    match stmt {
        Statement::CreateTable(ct) => {
            let plan = bind_create_table(ct)?;
            let mut txn = db.begin_write().await;
            let mut catalog = txn.catalog().clone();
            let schema = target_schema(&catalog, plan.schema.as_deref(), settings)?;
            if catalog.table_by_name(schema, &plan.name).is_some() {
                if plan.if_not_exists {
                    return Ok(match &plan.connector {
                        Some(c) if c.is_source => "CREATE SOURCE",
                        _ => "CREATE TABLE",
                    });
                }
                return Err(strom_catalog::CatalogError::TableExists(plan.name).into());
            }
            let mut def = TableDef {
                id: TableId(0),
                schema,
                name: plan.name,
                columns: plan.columns,
                pk: plan.pk,
                user_pk: plan.user_pk,
                view: None,
                connector: plan.connector,
                watermark: plan.watermark,
                indexes: Vec::new(),
                next_index_id: 0,
            };
            check_defaults(db, settings, &def)?;
            strom_engine::watermark::Watermarker::new(&def).map_err(|e| {
                StromError::user(
                    "42P17",
                    format!(
                        "{} \"{}\": invalid WATERMARK expression: {e}",
                        def.kind_name(),
                        def.name
                    ),
                )
            })?;
            let tag = if def.is_source() {
                "CREATE SOURCE"
            } else {
                "CREATE TABLE"
            };
            strom_connectors::validate(&def).map_err(|m| {
                StromError::user(
                    "22023",
                    format!("{} \"{}\": {m}", def.kind_name(), def.name),
                )
            })?;
            if strom_engine::lookup::is_external(&def) {
                strom_connectors::lookup::probe(&def).await.map_err(|m| {
                    StromError::user(
                        "42P01",
                        format!(
                            "table \"{}\": the external database cannot read it as declared: {m}",
                            def.name
                        ),
                    )
                })?;
            }
            if let Some(late) = &plan.late_table {
                // The table late rows go to, made with the relation.
                if catalog.table_by_name(schema, late).is_some() {
                    return Err(StromError::user(
                        "42P07",
                        format!(
                            "{} \"{}\": the late_data.table \"{late}\" already exists (it is created with the {})",
                            def.kind_name(),
                            def.name,
                            def.kind_name()
                        ),
                    ));
                }
                let late_def = late_table_def(&def, schema, late);
                let id = catalog.create_table(late_def)?;
                if let Some(w) = &mut def.watermark {
                    w.late_table = Some(id);
                }
            }
            catalog.create_table(def)?;
            txn.set_catalog(catalog);
            txn.commit()?;
            Ok(tag)
        }
        Statement::CreateIndex(ci) => create_index(db, stream, settings, ci).await,
        Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => {
            let name = match schema_name {
                SchemaName::Simple(n) => object_name(n)?.1,
                SchemaName::UnnamedAuthorization(i) => ident_name(i),
                SchemaName::NamedAuthorization(n, _) => object_name(n)?.1,
            };
            let mut txn = db.begin_write().await;
            let mut catalog = txn.catalog().clone();
            if *if_not_exists
                && (catalog.schema_by_name(&name).is_some()
                    || strom_catalog::catalog::SYSTEM_SCHEMAS.contains(&name.as_str()))
            {
                return Ok("CREATE SCHEMA");
            }
            catalog.create_schema(&name)?;
            txn.set_catalog(catalog);
            txn.commit()?;
            Ok("CREATE SCHEMA")
        }
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => match object_type {
            ObjectType::Table | ObjectType::Stream | ObjectType::Stage => {
                // sqlparser has no SOURCE or SINK object types: `strom_sql::connector`
                // parses DROP SOURCE as Stream and DROP SINK as Stage.
                let (kind, tag) = match object_type {
                    ObjectType::Stream => (views::RelationKind::Source, "DROP SOURCE"),
                    ObjectType::Stage => (views::RelationKind::Sink, "DROP SINK"),
                    _ => (views::RelationKind::Table, "DROP TABLE"),
                };
                views::drop_relations(db, stream, settings, names, *if_exists, *cascade, kind)
                    .await?;
                Ok(tag)
            }
            ObjectType::Schema => {
                let mut graph = stream.lock().await;
                let mut txn = db.begin_write().await;
                let mut catalog = txn.catalog().clone();
                let mut dropped_views = Vec::new();
                for n in names {
                    let (_, name) = object_name(n)?;
                    if strom_catalog::catalog::SYSTEM_SCHEMAS.contains(&name.as_str()) {
                        return Err(strom_catalog::CatalogError::SchemaProtected(name).into());
                    }
                    let Some(sd) = catalog.schema_by_name(&name).cloned() else {
                        if *if_exists {
                            continue;
                        }
                        return Err(strom_catalog::CatalogError::SchemaNotFound(name).into());
                    };
                    let ids: Vec<TableId> = catalog.tables_in(sd.id).map(|t| t.id).collect();
                    if !ids.is_empty() && !*cascade {
                        return Err(strom_catalog::CatalogError::SchemaNotEmpty(name).into());
                    }
                    dropped_views.extend(views::drop_in_txn(&mut txn, &mut catalog, &ids, true)?);
                    catalog.drop_schema(&name, false)?;
                }
                txn.set_catalog(catalog);
                txn.commit()?;
                for v in dropped_views {
                    graph.remove(v);
                }
                Ok("DROP SCHEMA")
            }
            ObjectType::Index => drop_indexes(db, stream, settings, names, *if_exists).await,
            other => Err(StromError::unsupported(format!("DROP {other}"))),
        },
        other => Err(StromError::unsupported(crate::session::statement_kind(
            other,
        ))),
    }
}

/// The table and position of the index `name` in `schema`, if any.
fn find_index(
    catalog: &strom_catalog::Catalog,
    schema: SchemaId,
    name: &str,
) -> Option<(TableId, usize)> {
    catalog
        .tables_in(schema)
        .find_map(|t| Some((t.id, t.indexes.iter().position(|i| i.name == name)?)))
}

/// `CREATE INDEX [IF NOT EXISTS] [name] ON relation (column, ...)` on a table or a
/// materialized view: entries for its current rows are written with the catalog change,
/// and kept with every later write (see `strom_engine::index`). Temporal joins use it to
/// look dimension rows up by those columns.
async fn create_index(
    db: &Arc<Database>,
    stream: &Arc<StreamRuntime>,
    settings: &Settings,
    ci: &sqlparser::ast::CreateIndex,
) -> Result<&'static str> {
    if ci.unique {
        return Err(StromError::unsupported(
            "CREATE UNIQUE INDEX (declare a PRIMARY KEY for uniqueness)",
        ));
    }
    if ci.predicate.is_some() || !ci.include.is_empty() {
        return Err(StromError::unsupported(
            "partial indexes and INCLUDE columns",
        ));
    }
    // No epoch may write the relation between reading its rows and committing the index.
    let _graph = stream.lock().await;
    let mut txn = db.begin_write().await;
    let mut catalog = txn.catalog().clone();
    let (schema_name, table_name) = object_name(&ci.table_name)?;
    let def = catalog
        .resolve_table(schema_name.as_deref(), &table_name, &settings.search_path)?
        .clone();
    if def.is_source() || def.is_sink() || strom_engine::lookup::is_external(&def) {
        return Err(StromError::user(
            "42809",
            format!(
                "cannot index {} \"{}\": it stores no rows in Strom",
                if strom_engine::lookup::is_external(&def) {
                    "lookup table"
                } else {
                    def.kind_name()
                },
                def.name
            ),
        ));
    }
    let mut columns = Vec::new();
    for c in &ci.columns {
        let sqlparser::ast::Expr::Identifier(ident) = &c.column.expr else {
            return Err(StromError::unsupported(format!(
                "an index on the expression {} (index columns)",
                c.column.expr
            )));
        };
        let name = ident_name(ident);
        let i = def
            .visible_columns()
            .find(|(_, col)| col.name == name)
            .map(|(i, _)| i)
            .ok_or_else(|| {
                StromError::user(
                    "42703",
                    format!("column \"{name}\" does not exist in \"{}\"", def.name),
                )
            })?;
        if columns.contains(&i) {
            return Err(StromError::user(
                "42701",
                format!("column \"{name}\" appears twice in the index"),
            ));
        }
        if !def.columns[i].ty.is_key_type() {
            return Err(StromError::user(
                "0A000",
                format!(
                    "column \"{name}\" of type {} cannot be indexed",
                    def.columns[i].ty.pg_name()
                ),
            ));
        }
        columns.push(i);
    }
    if columns.is_empty() {
        return Err(StromError::user(
            "42601",
            "an index needs at least one column",
        ));
    }
    let name = match &ci.name {
        Some(n) => object_name(n)?.1,
        None => {
            // PostgreSQL's default: table_col1_col2_idx, numbered if taken.
            let base = format!(
                "{}_{}_idx",
                def.name,
                columns
                    .iter()
                    .map(|&c| def.columns[c].name.as_str())
                    .collect::<Vec<_>>()
                    .join("_")
            );
            let mut name = base.clone();
            let mut n = 0;
            while find_index(&catalog, def.schema, &name).is_some()
                || catalog.table_by_name(def.schema, &name).is_some()
            {
                n += 1;
                name = format!("{base}{n}");
            }
            name
        }
    };
    if find_index(&catalog, def.schema, &name).is_some()
        || catalog.table_by_name(def.schema, &name).is_some()
    {
        if ci.if_not_exists {
            return Ok("CREATE INDEX");
        }
        return Err(StromError::user(
            "42P07",
            format!("relation \"{name}\" already exists"),
        ));
    }
    let index = strom_catalog::IndexDef {
        // Never an id a dropped index had: a view planned against it must not find
        // another index under its id.
        id: def
            .indexes
            .iter()
            .map(|i| i.id + 1)
            .max()
            .unwrap_or(0)
            .max(def.next_index_id),
        name,
        columns,
    };
    for key in strom_engine::index::build(txn.snapshot(), &def, &index)? {
        txn.put_raw(key, Vec::new());
    }
    let mut indexes = def.indexes.clone();
    indexes.push(index);
    catalog.set_indexes(def.id, indexes)?;
    txn.set_catalog(catalog);
    txn.commit()?;
    Ok("CREATE INDEX")
}

/// `DROP INDEX [IF EXISTS] name, ...`: refused while a materialized view looks rows up by
/// the index.
async fn drop_indexes(
    db: &Arc<Database>,
    stream: &Arc<StreamRuntime>,
    settings: &Settings,
    names: &[sqlparser::ast::ObjectName],
    if_exists: bool,
) -> Result<&'static str> {
    let _graph = stream.lock().await;
    let mut txn = db.begin_write().await;
    let mut catalog = txn.catalog().clone();
    for n in names {
        let (schema, name) = object_name(n)?;
        let schemas: Vec<SchemaId> = match &schema {
            Some(s) => vec![
                catalog
                    .schema_by_name(s)
                    .ok_or_else(|| strom_catalog::CatalogError::SchemaNotFound(s.clone()))?
                    .id,
            ],
            None => settings
                .search_path
                .iter()
                .filter_map(|s| catalog.schema_by_name(s).map(|d| d.id))
                .collect(),
        };
        let Some((table, pos)) = schemas.iter().find_map(|&s| find_index(&catalog, s, &name))
        else {
            if if_exists {
                continue;
            }
            return Err(StromError::user(
                "42704",
                format!("index \"{name}\" does not exist"),
            ));
        };
        let mut indexes = catalog.table(table).expect("found above").indexes.clone();
        let id = indexes[pos].id;
        if let Some(user) = catalog.tables().find(|t| {
            t.view
                .as_ref()
                .is_some_and(|v| v.lookup_indexes.contains(&(table, id)))
        }) {
            return Err(StromError::user(
                "2BP01",
                format!(
                    "cannot drop index {name} because materialized view {} looks rows up by it\nHINT: Drop the view first.",
                    user.name
                ),
            ));
        }
        indexes.remove(pos);
        let (lo, hi) = strom_engine::index::range(table, Some(id));
        txn.delete_raw(lo, Some(hi));
        catalog.set_indexes(table, indexes)?;
    }
    txn.set_catalog(catalog);
    txn.commit()?;
    Ok("DROP INDEX")
}

/// `ALTER SOURCE name SET option = value`: changes a running source's options (today
/// `source_rate_limit`); its task restarts with them at the committed offsets.
pub async fn alter_source(
    db: &Arc<Database>,
    settings: &Settings,
    stmt: &Statement,
) -> Result<&'static str> {
    const CHANGEABLE: &[&str] = &["source_rate_limit"];
    let (name, changes) =
        strom_sql::connector::alter_source_options(stmt).expect("checked by the caller");
    let (schema, name) = object_name(name)?;
    let mut txn = db.begin_write().await;
    let mut catalog = txn.catalog().clone();
    let def = catalog
        .resolve_table(schema.as_deref(), &name, &settings.search_path)
        .map_err(|_| StromError::user("42P01", format!("source \"{name}\" does not exist")))?
        .clone();
    let Some(c) = def.connector.as_ref().filter(|_| !def.is_sink()) else {
        return Err(StromError::user(
            "42809",
            format!("\"{name}\" is not a source"),
        ));
    };
    let mut options = c.options.clone();
    for (k, v) in changes {
        if !CHANGEABLE.contains(&k.as_str()) {
            return Err(StromError::user(
                "0A000",
                format!(
                    "option \"{k}\" of source \"{name}\" cannot be changed (changeable: {})",
                    CHANGEABLE.join(", ")
                ),
            ));
        }
        options.insert(k, v);
    }
    let mut changed = def.clone();
    if let Some(c) = changed.connector.as_mut() {
        c.options = options.clone();
    }
    strom_connectors::validate(&changed).map_err(|m| {
        StromError::user(
            "22023",
            format!("{} \"{}\": {m}", def.kind_name(), def.name),
        )
    })?;
    catalog.set_connector_options(def.id, options)?;
    txn.set_catalog(catalog);
    txn.commit()?;
    Ok("ALTER SOURCE")
}

/// The schema a new object goes to: the named one, or the first existing schema on the
/// search path.
fn target_schema(
    catalog: &strom_catalog::Catalog,
    schema: Option<&str>,
    settings: &Settings,
) -> Result<SchemaId> {
    match schema {
        Some(s) => Ok(catalog
            .schema_by_name(s)
            .ok_or_else(|| strom_catalog::CatalogError::SchemaNotFound(s.into()))?
            .id),
        None => settings
            .search_path
            .iter()
            .find_map(|s| catalog.schema_by_name(s))
            .map(|s| s.id)
            .ok_or_else(|| StromError::user("3F000", "no schema has been selected to create in")),
    }
}

/// Plans every DEFAULT once so a bad expression fails the CREATE, not a later INSERT.
fn check_defaults(db: &Arc<Database>, settings: &Settings, def: &TableDef) -> Result<()> {
    if def.columns.iter().all(|c| c.default.is_none()) {
        return Ok(());
    }
    let env = QueryEnv::new(db.catalog(), db.snapshot(), settings.clone());
    let ctx = env.context();
    for c in &def.columns {
        if let Some(sql) = &c.default {
            ctx.state()
                .create_logical_expr(sql, &datafusion::common::DFSchema::empty())
                .map_err(|e| {
                    StromError::user(
                        "42P17",
                        format!(
                            "invalid DEFAULT for column \"{}\": {}",
                            c.name,
                            crate::error::StromError::from(e).code_and_message().1
                        ),
                    )
                })?;
        }
    }
    Ok(())
}

/// The table a relation's late rows go to (`late_data.table`): its visible columns, then
/// why the row was late and the watermark it was behind; rows keyed by a hidden row id.
fn late_table_def(def: &TableDef, schema: strom_catalog::SchemaId, name: &str) -> TableDef {
    let wm = def.watermark.as_ref().expect("checked when bound");
    let mut columns: Vec<ColumnDef> = def
        .visible_columns()
        .map(|(_, c)| ColumnDef {
            name: c.name.clone(),
            ty: c.ty.clone(),
            nullable: true,
            default: None,
            hidden: false,
        })
        .collect();
    columns.push(ColumnDef {
        name: "_late_reason".into(),
        ty: strom_catalog::SqlType::Varchar(None),
        nullable: false,
        default: None,
        hidden: false,
    });
    columns.push(ColumnDef {
        name: "_late_watermark".into(),
        ty: def.columns[wm.column].ty.clone(),
        nullable: true,
        default: None,
        hidden: false,
    });
    columns.push(ColumnDef {
        name: strom_catalog::ROW_ID_COLUMN.into(),
        ty: strom_catalog::SqlType::BigInt,
        nullable: false,
        default: None,
        hidden: true,
    });
    TableDef {
        id: TableId(0),
        schema,
        name: name.to_string(),
        pk: vec![columns.len() - 1],
        columns,
        user_pk: false,
        view: None,
        connector: None,
        watermark: None,
        indexes: Vec::new(),
        next_index_id: 0,
    }
}
