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
            other => Err(StromError::unsupported(format!("DROP {other}"))),
        },
        other => Err(StromError::unsupported(crate::session::statement_kind(
            other,
        ))),
    }
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
    }
}
