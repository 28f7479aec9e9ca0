//! Materialized views: `CREATE`, `EXPLAIN CREATE`, `DROP`, and deploying every view at
//! start.
//!
//! A view's query is planned by DataFusion (with the same PostgreSQL rewrites as `SELECT`),
//! optimized, and turned into a stream plan by `strom_engine::stream::planner`. The
//! catalog keeps the query text with every relation schema-qualified; at start each view
//! is planned again from it and redeployed, and its operators find their state where the
//! last committed epoch left it.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sqlparser::ast::{ObjectName, Query, Statement};
use strom_catalog::{Catalog, ColumnDef, SqlType, TableDef, TableId, ViewDef, VIEW_COUNT_COLUMN};
use strom_engine::stream::plan::PlanNode;
use strom_engine::stream::planner;
use strom_engine::stream::runtime::{self, StreamRuntime};
use strom_engine::{Database, WriteTxn};
use strom_sql::ddl::{ident_name, object_name};

use crate::error::{Result, StromError};
use crate::query::{self, QueryEnv};
use crate::session::{Outcome, Settings};

/// A planned view: its catalog entry (id not yet assigned) and its stream plan.
struct Planned {
    def: TableDef,
    plan: PlanNode,
}

fn view_parts(
    stmt: &Statement,
) -> Result<(&ObjectName, &[sqlparser::ast::ViewColumnDef], &Query, bool)> {
    match stmt {
        Statement::CreateView(cv) if cv.materialized => {
            if cv.or_replace {
                return Err(StromError::unsupported(
                    "CREATE OR REPLACE MATERIALIZED VIEW",
                ));
            }
            Ok((&cv.name, &cv.columns, &cv.query, cv.if_not_exists))
        }
        Statement::CreateView(_) => Err(StromError::unsupported(
            "CREATE VIEW (only CREATE MATERIALIZED VIEW)",
        )),
        _ => Err(StromError::user(
            "XX000",
            "internal error: not a CREATE VIEW",
        )),
    }
}

/// What a view is made of: its name, column names (empty: the query's), query and
/// whether it emits on window close.
struct ViewSpec<'a> {
    name: &'a str,
    columns: &'a [String],
    query: &'a Query,
    emit_on_window_close: bool,
    /// Processing-time joins recorded with a stored view (its query has lost the clause).
    lookups: &'a [String],
    /// The operator state layout (`ViewDef::state_version`).
    state_version: u32,
}

/// `now()` and `CURRENT_TIMESTAMP` in a view become `strom_now()`, which DataFusion does
/// not fold into the planning time: comparisons with it are temporal filters (see the
/// engine's `temporal_filter`).
fn now_as_temporal(stmt: &mut Statement) {
    let _ = sqlparser::ast::visit_expressions_mut(stmt, |e| {
        if let sqlparser::ast::Expr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            let no_args = match &f.args {
                sqlparser::ast::FunctionArguments::None => true,
                sqlparser::ast::FunctionArguments::List(l) => l.args.is_empty(),
                _ => false,
            };
            if no_args && (name == "now" || name == "current_timestamp") {
                f.name = sqlparser::ast::ObjectName::from(vec![sqlparser::ast::Ident::new(
                    strom_engine::stream::planner::NOW,
                )]);
                f.args =
                    sqlparser::ast::FunctionArguments::List(sqlparser::ast::FunctionArgumentList {
                        duplicate_treatment: None,
                        args: vec![],
                        clauses: vec![],
                    });
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Plans a view's query against `catalog`.
async fn plan_view(
    db: &Arc<Database>,
    catalog: &Arc<Catalog>,
    settings: &Settings,
    schema: strom_catalog::SchemaId,
    spec: ViewSpec<'_>,
) -> Result<Planned> {
    let ViewSpec {
        name,
        columns,
        query,
        emit_on_window_close,
        lookups,
        state_version,
    } = spec;
    let mut stmt = Statement::Query(Box::new(query.clone()));
    let mut lookups = lookups.to_vec();
    lookups.extend(strom_sql::windows::take_proctime(&mut stmt));
    query::prepare_statement(&mut stmt, catalog, settings)?;
    now_as_temporal(&mut stmt);
    let env = QueryEnv::new(Arc::clone(catalog), db.snapshot(), settings.clone());
    let ctx = env.context();
    let logical = query::plan(&ctx, &stmt).await?;
    if !crate::session::param_types(&logical)?.is_empty() {
        return Err(StromError::user(
            "42P02",
            "a materialized view cannot have parameters",
        ));
    }
    let logical = strom_engine::stream::planner::lift_sessions(logical)?;
    let optimized = ctx.state().optimize(&logical)?;
    let mut plan = planner::plan_with_lookups(&optimized, &lookups)?;
    plan.annotate_windows(
        &|id| {
            catalog
                .table(id)
                .and_then(|t| t.watermark.as_ref())
                .map(|w| w.column)
        },
        emit_on_window_close,
    )
    .map_err(|m| StromError::user("42P17", format!("materialized view \"{name}\": {m}")))?;
    plan.choose_state_layout(state_version);
    // Types after analysis (UNION branches are coerced to common types there).
    let out = optimized.schema();
    if !columns.is_empty() && columns.len() > out.fields().len() {
        return Err(StromError::user(
            "42601",
            "CREATE MATERIALIZED VIEW specifies too many column names",
        ));
    }
    let mut cols: Vec<ColumnDef> = Vec::new();
    for (i, f) in out.fields().iter().enumerate() {
        // Duplicate output names carry a marker (see `strom_sql::rewrite`); PostgreSQL
        // reports them when a relation would have them.
        let col_name = columns.get(i).cloned().unwrap_or_else(|| {
            f.name()
                .split(strom_sql::rewrite::DUPLICATE_NAME_MARKER)
                .next()
                .unwrap_or_default()
                .to_string()
        });
        if cols.iter().any(|c| c.name == col_name) {
            return Err(StromError::user(
                "42701",
                format!("column \"{col_name}\" specified more than once"),
            ));
        }
        let ty = SqlType::from_arrow(f.data_type(), f.metadata()).ok_or_else(|| {
            StromError::unsupported(format!(
                "column \"{col_name}\" of type {} in a materialized view",
                f.data_type()
            ))
        })?;
        cols.push(ColumnDef {
            name: col_name,
            ty,
            nullable: true,
            default: None,
            hidden: false,
        });
    }
    let visible = cols.len();
    cols.push(ColumnDef {
        name: VIEW_COUNT_COLUMN.into(),
        ty: SqlType::BigInt,
        nullable: false,
        default: None,
        hidden: true,
    });
    let (pk, keyed) = match &plan.unique_key {
        Some(k) => (k.clone(), true),
        None => ((0..visible).collect(), false),
    };
    let mut depends_on: Vec<TableId> = Vec::new();
    for id in plan
        .sources()
        .into_iter()
        .map(|(id, _)| id)
        .chain(plan.lookups())
    {
        if !depends_on.contains(&id) {
            depends_on.push(id);
        }
    }
    let Statement::Query(prepared) = stmt else {
        unreachable!("prepared a query")
    };
    Ok(Planned {
        def: TableDef {
            id: TableId(0),
            schema,
            name: name.to_string(),
            columns: cols,
            pk,
            user_pk: keyed,
            view: Some(ViewDef {
                query: prepared.to_string(),
                depends_on,
                emit_on_window_close,
                lookups,
                lookup_indexes: plan.lookup_indexes(),
                state_version,
            }),
            connector: None,
            watermark: None,
            indexes: Vec::new(),
            next_index_id: 0,
        },
        plan,
    })
}

fn target(
    catalog: &Catalog,
    settings: &Settings,
    name: &ObjectName,
) -> Result<(strom_catalog::SchemaId, String)> {
    let (schema, name) = object_name(name)?;
    let schema_id = match schema {
        Some(s) => {
            catalog
                .schema_by_name(&s)
                .ok_or(strom_catalog::CatalogError::SchemaNotFound(s))?
                .id
        }
        None => settings
            .search_path
            .iter()
            .find_map(|s| catalog.schema_by_name(s))
            .map(|s| s.id)
            .ok_or_else(|| StromError::user("3F000", "no schema has been selected to create in"))?,
    };
    Ok((schema_id, name))
}

fn column_names(columns: &[sqlparser::ast::ViewColumnDef]) -> Vec<String> {
    columns.iter().map(|c| ident_name(&c.name)).collect()
}

/// Plans a `CREATE MATERIALIZED VIEW` statement against the current catalog.
async fn plan_statement(
    db: &Arc<Database>,
    catalog: &Arc<Catalog>,
    settings: &Settings,
    schema: strom_catalog::SchemaId,
    name: &str,
    stmt: &Statement,
) -> Result<Planned> {
    let (_, columns, query, _) = view_parts(stmt)?;
    let eowc =
        matches!(stmt, Statement::CreateView(cv) if strom_sql::parser::emits_on_window_close(cv));
    let columns = column_names(columns);
    plan_view(
        db,
        catalog,
        settings,
        schema,
        ViewSpec {
            name,
            columns: &columns,
            query,
            emit_on_window_close: eowc,
            lookups: &[],
            state_version: strom_engine::stream::plan::STATE_VERSION,
        },
    )
    .await
}

/// `CREATE MATERIALIZED VIEW`: returns once the view is backfilled.
pub async fn create(
    db: &Arc<Database>,
    stream: &Arc<StreamRuntime>,
    settings: &Settings,
    stmt: &Statement,
) -> Result<&'static str> {
    let sink_spec = match stmt {
        Statement::CreateView(cv) => strom_sql::connector::connector_spec_of_view(cv)?,
        _ => None,
    };
    let tag = if sink_spec.is_some() {
        "CREATE SINK"
    } else {
        "CREATE MATERIALIZED VIEW"
    };
    let (name, _, _, if_not_exists) = view_parts(stmt)?;
    let catalog = db.catalog();
    let (schema, name) = target(&catalog, settings, name)?;
    if catalog.table_by_name(schema, &name).is_some() {
        if if_not_exists {
            return Ok(tag);
        }
        return Err(strom_catalog::CatalogError::TableExists(name).into());
    }
    let mut planned = plan_statement(db, &catalog, settings, schema, &name, stmt).await?;
    if let Some(sink) = planned
        .plan
        .sources()
        .iter()
        .filter_map(|(id, _)| catalog.table(*id))
        .find(|t| t.is_sink())
    {
        return Err(StromError::user(
            "42809",
            format!("\"{}\" is a sink: it has no rows to read", sink.name),
        ));
    }
    if let Some(spec) = sink_spec {
        planned.def.connector = Some(strom_catalog::ConnectorDef {
            is_source: false,
            is_sink: true,
            options: spec.options,
            format: spec.format,
            encode: spec.encode,
            encode_options: spec.encode_options,
            includes: Vec::new(),
        });
        strom_connectors::sink::validate(&planned.def, planned.plan.append_only)
            .map_err(|m| StromError::user("22023", format!("sink \"{name}\": {m}")))?;
    }
    let backfilling: Vec<String> = stream
        .backfills()
        .into_iter()
        .filter(|b| !b.done && planned.plan.sources().iter().any(|(id, _)| *id == b.view))
        .map(|b| b.name)
        .collect();
    if let Some(n) = backfilling.first() {
        return Err(StromError::user(
            "55000",
            format!("materialized view \"{n}\" is still being created"),
        ));
    }
    // Hold the graph so no epoch runs between the catalog commit and the deployment.
    let mut graph = stream.lock().await;
    let mut txn = db.begin_write().await;
    let mut catalog = txn.catalog().clone();
    if catalog.table_by_name(schema, &name).is_some() {
        if if_not_exists {
            return Ok(tag);
        }
        return Err(strom_catalog::CatalogError::TableExists(name).into());
    }
    for (id, _) in planned.plan.sources() {
        if catalog.table(id).is_none() {
            return Err(StromError::user(
                "40001",
                "a relation the view reads was dropped concurrently; retry",
            ));
        }
    }
    for (table, index) in planned.plan.lookup_indexes() {
        let exists = catalog
            .table(table)
            .is_some_and(|t| t.indexes.iter().any(|i| i.id == index));
        if !exists {
            return Err(StromError::user(
                "40001",
                "an index the view looks rows up by was dropped concurrently; retry",
            ));
        }
    }
    let id = catalog.create_table(planned.def)?;
    let def = Arc::new(catalog.table(id).expect("just created").clone());
    for (k, v) in runtime::creation_writes(id, &planned.plan) {
        txn.put_raw(k, v);
    }
    if def.is_sink() {
        // The sink's identity (its Kafka transactional id and progress group), made with it.
        let (k, v) = strom_connectors::sink::new_identity(id);
        txn.put_raw(k, v);
    }
    graph.deploy(Arc::clone(&def), &planned.plan, true)?;
    txn.set_catalog(catalog);
    if let Err(e) = txn.commit() {
        graph.remove(id);
        return Err(e.into());
    }
    std::mem::drop(graph);
    stream.wait_backfill(id).await?;
    if let Some(msg) = stream.failure(id)? {
        return Err(StromError::user(
            "XX000",
            format!("materialized view \"{name}\" failed while backfilling: {msg}"),
        ));
    }
    Ok(tag)
}

/// `EXPLAIN CREATE MATERIALIZED VIEW`: the stream plan, one node per row.
pub async fn explain(db: &Arc<Database>, settings: &Settings, stmt: &Statement) -> Result<Outcome> {
    let (name, _, _, _) = view_parts(stmt)?;
    let catalog = db.catalog();
    let (schema, name) = target(&catalog, settings, name)?;
    let planned = plan_statement(db, &catalog, settings, schema, &name, stmt).await?;
    let key: Vec<&str> = planned
        .def
        .pk
        .iter()
        .map(|&i| planned.def.columns[i].name.as_str())
        .collect();
    let mut lines = vec![format!(
        "MaterializedView {name} key=[{}]{}",
        key.join(", "),
        if planned.def.user_pk {
            ""
        } else {
            " (all columns, counted)"
        }
    )];
    lines.extend(planned.plan.explain().lines().map(|l| format!("  {l}")));
    let schema = Arc::new(Schema::new(vec![Field::new(
        "QUERY PLAN",
        DataType::Utf8,
        false,
    )]));
    let array = datafusion::arrow::array::StringArray::from(lines);
    let batch =
        datafusion::arrow::array::RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(array)])
            .map_err(|e| StromError::user("XX000", e.to_string()))?;
    Ok(Outcome::Rows {
        schema,
        batches: vec![batch],
    })
}

/// Drops `ids` and, with `cascade`, every view depending on them, inside `txn`. Returns
/// the dropped views, to remove from the runtime after the commit.
pub fn drop_in_txn(
    txn: &mut WriteTxn<'_>,
    catalog: &mut Catalog,
    ids: &[TableId],
    cascade: bool,
) -> Result<Vec<TableId>> {
    let mut order: Vec<TableId> = Vec::new();
    for &id in ids {
        for d in catalog.with_dependants(id) {
            if let Some(pos) = order.iter().position(|&x| x == d) {
                order.remove(pos);
            }
            order.push(d);
        }
    }
    if !cascade {
        if let Some(&extra) = order.iter().find(|d| !ids.contains(d)) {
            let dep = catalog.table(extra).expect("dependant exists");
            let base = ids
                .iter()
                .filter_map(|&i| catalog.table(i))
                .find(|b| catalog.with_dependants(b.id).contains(&extra))
                .expect("some dropped relation has the dependant");
            // The relation `dep` reads that leads to `base` (base itself, or a view on it).
            let on_base = catalog.with_dependants(base.id);
            let direct = dep
                .view
                .as_ref()
                .and_then(|v| {
                    v.depends_on
                        .iter()
                        .filter(|&&d| d == base.id || on_base.contains(&d))
                        .find_map(|&d| catalog.table(d))
                })
                .unwrap_or(base);
            return Err(StromError::user(
                "2BP01",
                format!(
                    "cannot drop {} {} because other objects depend on it\nDETAIL: {} {} depends on {} {}\nHINT: Use DROP ... CASCADE to drop the dependent objects too.",
                    base.kind_name(),
                    base.name,
                    dep.kind_name(),
                    dep.name,
                    direct.kind_name(),
                    direct.name
                ),
            ));
        }
    }
    let mut views = Vec::new();
    for id in order.into_iter().rev() {
        let def = catalog.drop_table(id)?;
        txn.delete_table_rows(&def);
        if def.connector.is_some() {
            strom_connectors::errors::stage_forget(txn, id);
        }
        if def.watermark.is_some() {
            let (lo, hi) = strom_engine::watermark::late_table_range(id);
            txn.delete_raw(lo, Some(hi));
            let (lo, hi) = strom_engine::watermark::ttl_range(id);
            txn.delete_raw(lo, Some(hi));
            txn.delete_raw(strom_engine::watermark::key(id), None);
        }
        if def.is_sink() {
            strom_connectors::sink::stage_forget(txn, id);
        }
        if def.is_view() {
            let (ranges, keys) = runtime::drop_ranges(id);
            for (lo, hi) in ranges {
                txn.delete_raw(lo, Some(hi));
            }
            for k in keys {
                txn.delete_raw(k, None);
            }
            views.push(id);
        }
    }
    Ok(views)
}

/// What a `DROP` statement names: `DROP TABLE`, `DROP MATERIALIZED VIEW`, `DROP SOURCE`
/// or `DROP SINK`. Each drops only objects of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    View,
    Source,
    Sink,
}

impl RelationKind {
    pub fn of(def: &TableDef) -> RelationKind {
        if def.is_sink() {
            RelationKind::Sink
        } else if def.is_view() {
            RelationKind::View
        } else if def.is_source() {
            RelationKind::Source
        } else {
            RelationKind::Table
        }
    }

    fn name(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::View => "materialized view",
            RelationKind::Source => "source",
            RelationKind::Sink => "sink",
        }
    }

    fn statement(self) -> &'static str {
        match self {
            RelationKind::Table => "DROP TABLE",
            RelationKind::View => "DROP MATERIALIZED VIEW",
            RelationKind::Source => "DROP SOURCE",
            RelationKind::Sink => "DROP SINK",
        }
    }
}

/// `DROP TABLE | MATERIALIZED VIEW | SOURCE | SINK [IF EXISTS] names [CASCADE]`: one
/// atomic catalog change, with the rows, state and connector bookkeeping of everything
/// dropped. Naming an object of another kind is 42809 with a hint.
pub async fn drop_relations(
    db: &Arc<Database>,
    stream: &Arc<StreamRuntime>,
    settings: &Settings,
    names: &[ObjectName],
    if_exists: bool,
    cascade: bool,
    kind: RelationKind,
) -> Result<()> {
    let mut graph = stream.lock().await;
    let mut txn = db.begin_write().await;
    let mut catalog = txn.catalog().clone();
    let mut ids = Vec::new();
    for n in names {
        let (schema, name) = object_name(n)?;
        match catalog.resolve_table(schema.as_deref(), &name, &settings.search_path) {
            Ok(def) if RelationKind::of(def) == kind => ids.push(def.id),
            Ok(def) => {
                let actual = RelationKind::of(def);
                let article = |k: RelationKind| match k {
                    RelationKind::Table => "a table",
                    RelationKind::View => "a materialized view",
                    RelationKind::Source => "a source",
                    RelationKind::Sink => "a sink",
                };
                return Err(StromError::user(
                    "42809",
                    format!(
                        "\"{}\" is not {}\nHINT: Use {} to remove {}.",
                        def.name,
                        article(kind),
                        actual.statement(),
                        article(actual)
                    ),
                ));
            }
            Err(_) if if_exists => {}
            Err(_) if kind != RelationKind::Table => {
                return Err(StromError::user(
                    "42P01",
                    format!("{} \"{name}\" does not exist", kind.name()),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let dropped = drop_in_txn(&mut txn, &mut catalog, &ids, cascade)?;
    txn.set_catalog(catalog);
    txn.commit()?;
    for v in dropped {
        graph.remove(v);
    }
    Ok(())
}

/// Plans and deploys every view in the catalog (at start), in creation order, which puts
/// every view after the views it reads.
pub async fn deploy_all(db: &Arc<Database>, stream: &Arc<StreamRuntime>) -> Result<()> {
    let catalog = db.catalog();
    let settings = Settings::new("strom");
    let mut graph = stream.lock().await;
    for def in catalog.tables().filter(|t| t.is_view()) {
        let view = def.view.as_ref().expect("filtered to views");
        let query = match strom_sql::parser::parse(&view.query)?.pop() {
            Some(Statement::Query(q)) => q,
            _ => {
                return Err(StromError::user(
                    "XX001",
                    format!(
                        "stored query of materialized view \"{}\" is not a query",
                        def.name
                    ),
                ))
            }
        };
        let visible: Vec<String> = def.visible_columns().map(|(_, c)| c.name.clone()).collect();
        let planned = plan_view(
            db,
            &catalog,
            &settings,
            def.schema,
            ViewSpec {
                name: &def.name,
                columns: &visible,
                query: &query,
                emit_on_window_close: view.emit_on_window_close,
                lookups: &view.lookups,
                state_version: view.state_version,
            },
        )
        .await
        .map_err(|e| {
            StromError::user(
                "XX000",
                format!(
                    "cannot plan materialized view \"{}\" again: {}",
                    def.name,
                    e.code_and_message().1
                ),
            )
        })?;
        if planned.def.columns != def.columns || planned.def.pk != def.pk {
            return Err(StromError::user(
                "XX000",
                format!(
                    "materialized view \"{}\" plans to a different shape than it was created with",
                    def.name
                ),
            ));
        }
        graph.deploy(Arc::new(def.clone()), &planned.plan, false)?;
    }
    Ok(())
}
