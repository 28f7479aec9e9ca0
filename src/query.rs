//! Planning and running statements with DataFusion over one consistent read view.
//!
//! Every statement gets a [`QueryEnv`]: the catalog and storage snapshot it reads, and the
//! session settings. [`QueryEnv::context`] builds a DataFusion `SessionContext` whose catalog
//! `dev` exposes the user schemas (backed by [`StromTable`]), `pg_catalog` (see
//! [`crate::pg_catalog`]) and DataFusion's `information_schema`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::TableProvider;
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use sqlparser::ast::Statement;
use strom_catalog::{Catalog, SchemaId, TableDef, TableId};
use strom_engine::stream::runtime::BackfillStatus;
use strom_engine::{Snapshot, StromTable};

use crate::error::Result;
use crate::session::Settings;

pub const DATABASE_NAME: &str = "dev";

/// What one statement reads.
pub struct QueryEnv {
    pub catalog: Arc<Catalog>,
    pub snapshot: Arc<Snapshot>,
    pub settings: Settings,
    /// Tables whose hidden row id is exposed (UPDATE/DELETE targets).
    pub expose_hidden: Vec<TableId>,
    /// Planned `DEFAULT` expressions of INSERT targets.
    defaults: Mutex<HashMap<TableId, HashMap<String, Expr>>>,
    /// What `strom_catalog.backfill_progress` shows.
    pub backfills: Vec<BackfillStatus>,
}

impl std::fmt::Debug for QueryEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEnv")
            .field("catalog_version", &self.catalog.version)
            .finish()
    }
}

impl QueryEnv {
    pub fn new(catalog: Arc<Catalog>, snapshot: Arc<Snapshot>, settings: Settings) -> Arc<Self> {
        Self::build(catalog, snapshot, settings, Vec::new(), Vec::new())
    }

    /// An environment that also shows the stream runtime's status (`strom_catalog`).
    pub fn with_status(
        catalog: Arc<Catalog>,
        snapshot: Arc<Snapshot>,
        settings: Settings,
        backfills: Vec<BackfillStatus>,
    ) -> Arc<Self> {
        Self::build(catalog, snapshot, settings, Vec::new(), backfills)
    }

    pub fn with_hidden(
        catalog: Arc<Catalog>,
        snapshot: Arc<Snapshot>,
        settings: Settings,
        t: TableId,
    ) -> Arc<Self> {
        Self::build(catalog, snapshot, settings, vec![t], Vec::new())
    }

    fn build(
        catalog: Arc<Catalog>,
        snapshot: Arc<Snapshot>,
        settings: Settings,
        expose_hidden: Vec<TableId>,
        backfills: Vec<BackfillStatus>,
    ) -> Arc<Self> {
        Arc::new(QueryEnv {
            catalog,
            snapshot,
            settings,
            expose_hidden,
            defaults: Mutex::default(),
            backfills,
        })
    }

    /// A DataFusion context reading this environment.
    pub fn context(self: &Arc<Self>) -> SessionContext {
        let default_schema = self
            .settings
            .search_path
            .iter()
            .find(|s| self.catalog.schema_by_name(s).is_some())
            .cloned()
            .unwrap_or_else(|| "public".to_string());
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE_NAME, default_schema)
            .with_information_schema(true)
            .with_target_partitions(2);
        let opts = config.options_mut();
        opts.sql_parser.parse_float_as_decimal = true;
        opts.sql_parser.enable_ident_normalization = true;
        opts.execution.time_zone = Some(self.settings.time_zone_name.clone());
        let list: Arc<dyn CatalogProviderList> = Arc::new(StromCatalogList {
            db: Arc::new(StromDatabase {
                env: Arc::clone(self),
            }),
        });
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_catalog_list(list)
            .with_analyzer_rules(vec![
                Arc::new(crate::pg_literals::PgLiteralRule),
                Arc::new(datafusion::optimizer::analyzer::resolve_grouping_function::ResolveGroupingFunction::new()),
                Arc::new(datafusion::optimizer::analyzer::type_coercion::TypeCoercion::new()),
                Arc::new(crate::pg_casts::PgCastRule),
            ])
            .build();
        let ctx = SessionContext::new_with_state(state);
        crate::functions::register(&ctx, self);
        crate::jsonb::register(&ctx);
        ctx.register_udf(strom_engine::watermark::window_start_udf());
        ctx.register_udf(strom_engine::clock::now_udf());
        for f in strom_engine::stream::planner::session_udfs() {
            ctx.register_udf(f);
        }
        ctx
    }

    /// Plans the `DEFAULT` expressions of `def` so an INSERT can fill omitted columns.
    pub fn plan_defaults(&self, ctx: &SessionContext, def: &TableDef) -> Result<()> {
        let mut map = HashMap::new();
        for c in def.visible_columns().map(|(_, c)| c) {
            if let Some(sql) = &c.default {
                let expr = ctx.state().create_logical_expr(sql, &DFSchema::empty())?;
                map.insert(c.name.clone(), expr);
            }
        }
        self.defaults
            .lock()
            .expect("invariant: defaults lock is never poisoned")
            .insert(def.id, map);
        Ok(())
    }

    fn table_provider(&self, def: &TableDef) -> Arc<dyn TableProvider> {
        let defaults = self
            .defaults
            .lock()
            .expect("invariant: defaults lock is never poisoned")
            .get(&def.id)
            .cloned()
            .unwrap_or_default();
        Arc::new(StromTable::new(
            Arc::new(def.clone()),
            Arc::clone(&self.snapshot),
            self.expose_hidden.contains(&def.id),
            defaults,
        ))
    }
}

/// Readies a parsed statement for DataFusion: PostgreSQL-compatibility rewrites, string
/// literals read as their target column's type, and unqualified table names resolved
/// along the session's `search_path` (with `pg_catalog` first, as in PostgreSQL).
pub fn prepare_statement(
    stmt: &mut Statement,
    catalog: &Catalog,
    settings: &Settings,
) -> Result<()> {
    strom_sql::rewrite::rewrite_statement_with(stmt, &crate::pg_catalog::is_empty_relation)?;
    coerce_target_literals(stmt, catalog, settings)?;
    qualify_relations(stmt, catalog, settings);
    Ok(())
}

fn coerce_target_literals(
    stmt: &mut Statement,
    catalog: &Catalog,
    settings: &Settings,
) -> Result<()> {
    use sqlparser::ast::{AssignmentTarget, SetExpr, TableFactor, TableObject};
    use strom_sql::literal::typed_literal;
    use strom_sql::rewrite::string_literal;
    let resolve = |name: &sqlparser::ast::ObjectName| -> Option<TableDef> {
        let (schema, table) = strom_sql::ddl::object_name(name).ok()?;
        catalog
            .resolve_table(schema.as_deref(), &table, &settings.search_path)
            .ok()
            .cloned()
    };
    let coerce = |def: &TableDef, col: &str, e: &mut sqlparser::ast::Expr| -> Result<()> {
        let Some(c) = def.columns.iter().find(|c| c.name == col) else {
            return Ok(());
        };
        if let Some(lit) = string_literal(e) {
            if c.ty == strom_catalog::SqlType::Timestamptz {
                if let Some(local) =
                    crate::pg_literals::localize_timestamp(lit, &settings.time_zone)
                {
                    *e = sqlparser::ast::Expr::value(sqlparser::ast::Value::SingleQuotedString(
                        local,
                    ));
                    return Ok(());
                }
            }
            if let Some(typed) = typed_literal(&c.ty, lit)? {
                *e = typed;
            }
        }
        Ok(())
    };
    match stmt {
        Statement::Insert(ins) => {
            let TableObject::TableName(name) = &ins.table else {
                return Ok(());
            };
            let Some(def) = resolve(name) else {
                return Ok(());
            };
            let targets: Vec<String> = if ins.columns.is_empty() {
                def.visible_columns().map(|(_, c)| c.name.clone()).collect()
            } else {
                ins.columns
                    .iter()
                    .map(|c| {
                        strom_sql::ddl::object_name(c)
                            .map(|(_, n)| n)
                            .unwrap_or_default()
                    })
                    .collect()
            };
            if let Some(source) = &mut ins.source {
                if let SetExpr::Values(values) = source.body.as_mut() {
                    for row in &mut values.rows {
                        for (e, col) in row.iter_mut().zip(&targets) {
                            coerce(&def, col, e)?;
                        }
                    }
                }
            }
        }
        Statement::Update(up) => {
            let TableFactor::Table { name, .. } = &up.table.relation else {
                return Ok(());
            };
            let Some(def) = resolve(name) else {
                return Ok(());
            };
            for a in &mut up.assignments {
                if let AssignmentTarget::ColumnName(n) = &a.target {
                    let col = strom_sql::ddl::object_name(n)
                        .map(|(_, c)| c)
                        .unwrap_or_default();
                    coerce(&def, &col, &mut a.value)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Qualifies unqualified table names with the schema `search_path` finds them in. CTE names
/// are left alone.
fn qualify_relations(stmt: &mut Statement, catalog: &Catalog, settings: &Settings) {
    use sqlparser::ast::{Ident, ObjectNamePart, Query, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Ctes(Vec<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                self.0.extend(
                    with.cte_tables
                        .iter()
                        .map(|c| strom_sql::ddl::ident_name(&c.alias.name)),
                );
            }
            ControlFlow::Continue(())
        }
    }
    let mut ctes = Ctes(Vec::new());
    let _ = stmt.visit(&mut ctes);
    let _ = sqlparser::ast::visit_relations_mut(stmt, |name| {
        if name.0.len() == 1 {
            if let Some(ident) = name.0[0].as_ident() {
                let n = strom_sql::ddl::ident_name(ident);
                let schema = if ctes.0.contains(&n) {
                    None
                } else if crate::pg_catalog::RELATIONS.iter().any(|(r, _)| *r == n) {
                    Some("pg_catalog".to_string())
                } else {
                    catalog
                        .resolve_table(None, &n, &settings.search_path)
                        .ok()
                        .and_then(|t| catalog.schema(t.schema))
                        .map(|s| s.name.clone())
                };
                if let Some(schema) = schema {
                    name.0.insert(
                        0,
                        ObjectNamePart::Identifier(Ident::with_quote('"', schema)),
                    );
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Plans an (already rewritten) statement.
pub async fn plan(ctx: &SessionContext, stmt: &Statement) -> Result<LogicalPlan> {
    let plan = ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(stmt.clone())))
        .await?;
    Ok(plan)
}

/// Runs a plan to completion.
pub async fn collect(ctx: &SessionContext, plan: LogicalPlan) -> Result<Vec<RecordBatch>> {
    let df = ctx.execute_logical_plan(plan).await?;
    Ok(df.collect().await?)
}

#[derive(Debug)]
struct StromCatalogList {
    db: Arc<StromDatabase>,
}

impl CatalogProviderList for StromCatalogList {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        vec![DATABASE_NAME.to_string()]
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        (name == DATABASE_NAME).then(|| Arc::clone(&self.db) as Arc<dyn CatalogProvider>)
    }
}

#[derive(Debug)]
struct StromDatabase {
    env: Arc<QueryEnv>,
}

impl CatalogProvider for StromDatabase {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.env.catalog.schemas().map(|s| s.name.clone()).collect();
        names.push("pg_catalog".into());
        names.push(crate::system::SCHEMA.into());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == crate::system::SCHEMA {
            return Some(Arc::new(crate::system::StromCatalogSchema::new(
                Arc::clone(&self.env),
            )));
        }
        if name == "pg_catalog" {
            return Some(Arc::new(crate::pg_catalog::PgCatalogSchema::new(
                Arc::clone(&self.env),
            )));
        }
        let sd = self.env.catalog.schema_by_name(name)?;
        Some(Arc::new(StromSchema {
            env: Arc::clone(&self.env),
            schema: sd.id,
        }))
    }
}

#[derive(Debug)]
struct StromSchema {
    env: Arc<QueryEnv>,
    schema: SchemaId,
}

#[async_trait]
impl SchemaProvider for StromSchema {
    fn table_names(&self) -> Vec<String> {
        self.env
            .catalog
            .tables_in(self.schema)
            .map(|t| t.name.clone())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .env
            .catalog
            .table_by_name(self.schema, name)
            .map(|def| self.env.table_provider(def)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.env.catalog.table_by_name(self.schema, name).is_some()
    }
}
