//! Sessions: per-connection settings and the dispatch of one statement.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono_tz::Tz;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use sqlparser::ast::{Expr, ObjectType, Set, Statement, Value};
use strom_engine::stream::runtime::StreamRuntime;
use strom_engine::Database;

use crate::error::{Result, StromError};
use crate::functions::SERVER_VERSION;
use crate::pg::binary::decode_param;
use crate::pg::text::parse_time_zone;
use crate::query::{self, QueryEnv};
use crate::{ddl, dml, views};

/// Settings a session can `SET` and `SHOW`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub user: String,
    pub search_path: Vec<String>,
    search_path_text: String,
    pub time_zone: Tz,
    pub time_zone_name: String,
    /// DML returns only once its changes are visible in every view (`implicit_flush`,
    /// also accepted as `RW_IMPLICIT_FLUSH`).
    pub implicit_flush: bool,
    /// Other settings clients set (`application_name`, `extra_float_digits`, ...): kept and
    /// shown back, without effect.
    other: BTreeMap<String, String>,
}

impl Settings {
    pub fn new(user: &str) -> Self {
        let mut s = Settings {
            user: user.to_string(),
            search_path: Vec::new(),
            search_path_text: String::new(),
            time_zone: Tz::UTC,
            time_zone_name: "UTC".into(),
            implicit_flush: true,
            other: BTreeMap::new(),
        };
        s.set_search_path("\"$user\", public");
        for (k, v) in [
            ("application_name", ""),
            ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"),
            ("datestyle", "ISO, MDY"),
            ("intervalstyle", "postgres"),
            ("extra_float_digits", "1"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("max_identifier_length", "63"),
            ("transaction_isolation", "read committed"),
            ("default_transaction_isolation", "read committed"),
            ("transaction_read_only", "off"),
            ("default_transaction_read_only", "off"),
            ("is_superuser", "on"),
            ("statement_timeout", "0"),
            ("lock_timeout", "0"),
            ("bytea_output", "hex"),
            ("lc_messages", "C.UTF-8"),
            ("lc_monetary", "C.UTF-8"),
            ("lc_numeric", "C.UTF-8"),
            ("lc_time", "C.UTF-8"),
            ("lc_collate", "C.UTF-8"),
            ("lc_ctype", "C.UTF-8"),
            ("server_version_num", "150000"),
            ("client_min_messages", "notice"),
        ] {
            s.other.insert(k.to_string(), v.to_string());
        }
        s
    }

    fn set_search_path(&mut self, text: &str) {
        self.search_path_text = text.to_string();
        self.search_path = text
            .split(',')
            .map(|p| p.trim().trim_matches('"').to_string())
            .map(|p| if p == "$user" { self.user.clone() } else { p })
            .filter(|p| !p.is_empty())
            .collect();
    }

    /// The value `SHOW name` prints.
    pub fn get(&self, name: &str) -> Option<String> {
        let n = name.to_lowercase();
        match n.as_str() {
            "timezone" | "time zone" => Some(self.time_zone_name.clone()),
            "search_path" => Some(self.search_path_text.clone()),
            "server_version" => Some(SERVER_VERSION.to_string()),
            "session_authorization" => Some(self.user.clone()),
            "implicit_flush" | "rw_implicit_flush" => {
                Some(if self.implicit_flush { "on" } else { "off" }.into())
            }
            _ => self.other.get(&n).cloned(),
        }
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let n = name.to_lowercase();
        match n.as_str() {
            "timezone" | "time zone" => {
                let value = if value.eq_ignore_ascii_case("local")
                    || value.eq_ignore_ascii_case("default")
                {
                    "UTC"
                } else {
                    value
                };
                let tz = parse_time_zone(value).ok_or_else(|| {
                    StromError::user(
                        "22023",
                        format!("invalid value for parameter \"TimeZone\": \"{value}\""),
                    )
                })?;
                self.time_zone = tz;
                self.time_zone_name = if tz == Tz::UTC && value.eq_ignore_ascii_case("utc") {
                    "UTC".into()
                } else {
                    value.to_string()
                };
            }
            "search_path" => self.set_search_path(value),
            "strom_test_clock" => {
                if !strom_engine::clock::manual_allowed() {
                    return Err(StromError::user(
                        "55000",
                        "strom_test_clock can be set only when the server runs with STROM_TEST_CLOCK=1 (for tests)",
                    ));
                }
                let t = chrono::DateTime::parse_from_rfc3339(&value.replace(' ', "T"))
                    .or_else(|_| chrono::DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%#z"))
                    .map_err(|_| {
                        StromError::user(
                            "22007",
                            format!("invalid timestamp for strom_test_clock: \"{value}\""),
                        )
                    })?;
                strom_engine::clock::set_manual(t.timestamp_micros());
            }
            "implicit_flush" | "rw_implicit_flush" => {
                self.implicit_flush = match value.to_lowercase().as_str() {
                    "on" | "true" | "1" | "yes" | "default" => true,
                    "off" | "false" | "0" | "no" => false,
                    _ => {
                        return Err(StromError::user(
                            "22023",
                            format!("parameter \"{n}\" requires a Boolean value"),
                        ))
                    }
                }
            }
            "server_version"
            | "server_encoding"
            | "integer_datetimes"
            | "max_identifier_length"
            | "server_version_num" => {
                return Err(StromError::user(
                    "55P02",
                    format!("parameter \"{n}\" cannot be changed"),
                ))
            }
            _ => {
                self.other.insert(n, value.to_string());
            }
        }
        Ok(())
    }

    pub fn all(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self.other.clone().into_iter().collect();
        all.push(("TimeZone".into(), self.time_zone_name.clone()));
        all.push(("search_path".into(), self.search_path_text.clone()));
        all.push(("server_version".into(), SERVER_VERSION.into()));
        all.push((
            "implicit_flush".into(),
            if self.implicit_flush { "on" } else { "off" }.into(),
        ));
        all.sort();
        all
    }
}

/// A bound parameter as it came off the wire.
#[derive(Debug, Clone)]
pub enum Param {
    Null,
    Text(String),
    /// Binary format, with the type oid the client declared (0 if none).
    Binary(u32, Vec<u8>),
}

/// What a statement produced.
#[derive(Debug)]
pub enum Outcome {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A command tag such as `CREATE TABLE`, with the row count for DML.
    Command {
        tag: &'static str,
        rows: Option<usize>,
    },
    TransactionStart,
    TransactionEnd(&'static str),
}

/// What `Describe` reports for a statement: parameter types and result columns.
#[derive(Debug)]
pub struct Description {
    pub params: Vec<Option<FieldRef>>,
    pub columns: Option<SchemaRef>,
}

pub struct Session {
    pub db: Arc<Database>,
    pub stream: Arc<StreamRuntime>,
    pub settings: std::sync::Mutex<Settings>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(db: Arc<Database>, stream: Arc<StreamRuntime>, user: &str) -> Self {
        Session {
            db,
            stream,
            settings: std::sync::Mutex::new(Settings::new(user)),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .lock()
            .expect("invariant: settings lock is never poisoned")
            .clone()
    }

    fn env(&self) -> Arc<QueryEnv> {
        QueryEnv::with_status(
            self.db.catalog(),
            self.db.snapshot(),
            self.settings(),
            self.stream.backfills(),
        )
    }

    /// Runs one statement with its bound parameters.
    pub async fn execute(
        &self,
        stmt: &Statement,
        params: &[Param],
        param_oids: &[u32],
    ) -> Result<Outcome> {
        let mut stmt = stmt.clone();
        query::prepare_statement(&mut stmt, &self.db.catalog(), &self.settings())?;
        match &stmt {
            Statement::Explain { statement, .. }
                if matches!(statement.as_ref(), Statement::CreateView(_)) =>
            {
                no_params(params)?;
                views::explain(&self.db, &self.settings(), statement).await
            }
            Statement::CreateView(_) => {
                no_params(params)?;
                let tag = views::create(&self.db, &self.stream, &self.settings(), &stmt).await?;
                Ok(Outcome::Command { tag, rows: None })
            }
            Statement::Drop {
                object_type: ObjectType::MaterializedView,
                if_exists,
                names,
                cascade,
                ..
            } => {
                views::drop_relations(
                    &self.db,
                    &self.stream,
                    &self.settings(),
                    names,
                    *if_exists,
                    *cascade,
                    views::RelationKind::View,
                )
                .await?;
                let tag = "DROP MATERIALIZED VIEW";
                Ok(Outcome::Command { tag, rows: None })
            }
            s if strom_sql::parser::is_flush(s) => {
                self.stream.flush().await?;
                Ok(Outcome::Command {
                    tag: "FLUSH",
                    rows: None,
                })
            }
            Statement::Query(_) | Statement::Explain { .. } => {
                let env = self.env();
                let ctx = env.context();
                let plan = query::plan(&ctx, &stmt).await?;
                let plan = bind_params(plan, params, param_oids)?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let batches = query::collect(&ctx, plan).await?;
                Ok(Outcome::Rows { schema, batches })
            }
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
                let settings = self.settings();
                let (tag, rows) =
                    dml::execute(&self.db, &settings, &stmt, params, param_oids).await?;
                if settings.implicit_flush {
                    self.stream.flush().await?;
                }
                Ok(Outcome::Command {
                    tag,
                    rows: Some(rows),
                })
            }
            Statement::AlterTable(_)
                if strom_sql::connector::alter_source_options(&stmt).is_some() =>
            {
                no_params(params)?;
                let tag = ddl::alter_source(&self.db, &self.settings(), &stmt).await?;
                Ok(Outcome::Command { tag, rows: None })
            }
            Statement::CreateTable(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateIndex(_)
            | Statement::Drop { .. } => {
                no_params(params)?;
                let tag = ddl::execute(&self.db, &self.stream, &self.settings(), &stmt).await?;
                Ok(Outcome::Command { tag, rows: None })
            }
            Statement::Set(set) => {
                let clock = strom_engine::clock::manual();
                self.apply_set(set)?;
                if strom_engine::clock::manual() != clock {
                    // The test clock moved: temporal filters catch up before SET returns.
                    self.stream.flush_clock().await?;
                }
                Ok(Outcome::Command {
                    tag: "SET",
                    rows: None,
                })
            }
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.clone())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.show(&name)
            }
            Statement::StartTransaction { .. } => Ok(Outcome::TransactionStart),
            Statement::Commit { .. } => Ok(Outcome::TransactionEnd("COMMIT")),
            Statement::Rollback { .. } => Ok(Outcome::TransactionEnd("ROLLBACK")),
            Statement::Discard { .. } => Ok(Outcome::Command {
                tag: "DISCARD ALL",
                rows: None,
            }),
            Statement::Deallocate { .. } => Ok(Outcome::Command {
                tag: "DEALLOCATE",
                rows: None,
            }),
            other => Err(StromError::unsupported(format!(
                "statement \"{}\"",
                statement_kind(other)
            ))),
        }
    }

    /// Parameter types and result columns of a statement, without running it.
    pub async fn describe(&self, stmt: &Statement) -> Result<Description> {
        let mut stmt = stmt.clone();
        query::prepare_statement(&mut stmt, &self.db.catalog(), &self.settings())?;
        match &stmt {
            Statement::Explain { statement, .. }
                if matches!(statement.as_ref(), Statement::CreateView(_)) =>
            {
                Ok(Description {
                    params: vec![],
                    columns: Some(Arc::new(Schema::new(vec![Field::new(
                        "QUERY PLAN",
                        DataType::Utf8,
                        false,
                    )]))),
                })
            }
            Statement::Query(_) | Statement::Explain { .. } => {
                let env = self.env();
                let ctx = env.context();
                let plan = query::plan(&ctx, &stmt).await?;
                Ok(Description {
                    params: param_types(&plan)?,
                    columns: Some(Arc::new(plan.schema().as_arrow().clone())),
                })
            }
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
                let params = dml::describe(&self.db, &self.settings(), &stmt).await?;
                Ok(Description {
                    params,
                    columns: None,
                })
            }
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.clone())
                    .collect::<Vec<_>>()
                    .join(" ");
                Ok(Description {
                    params: vec![],
                    columns: Some(show_schema(&name)),
                })
            }
            _ => Ok(Description {
                params: vec![],
                columns: None,
            }),
        }
    }

    fn apply_set(&self, set: &Set) -> Result<()> {
        let mut settings = self
            .settings
            .lock()
            .expect("invariant: settings lock is never poisoned");
        match set {
            Set::SetTimeZone { value, .. } => {
                settings.set("timezone", &setting_value(std::slice::from_ref(value)))
            }
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = variable.to_string();
                settings.set(&name, &setting_value(values))
            }
            Set::SetNames { .. } => Ok(()),
            Set::SetSessionParam(_) | Set::SetTransaction { .. } => Ok(()),
            other => Err(StromError::unsupported(format!("SET form \"{other}\""))),
        }
    }

    fn show(&self, name: &str) -> Result<Outcome> {
        let settings = self.settings();
        if name.eq_ignore_ascii_case("sources") || name.eq_ignore_ascii_case("sinks") {
            // Sources and connector tables, or sinks, of the schemas on the search path.
            let sinks = name.eq_ignore_ascii_case("sinks");
            let catalog = self.db.catalog();
            let mut names: Vec<String> = catalog
                .tables()
                .filter(|t| {
                    t.connector.is_some()
                        && t.is_sink() == sinks
                        && catalog
                            .schema(t.schema)
                            .is_some_and(|s| settings.search_path.contains(&s.name))
                })
                .map(|t| t.name.clone())
                .collect();
            names.sort();
            let schema = show_schema(name);
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(datafusion::arrow::array::StringArray::from(names))],
            )
            .map_err(|e| StromError::user("XX000", e.to_string()))?;
            return Ok(Outcome::Rows {
                schema,
                batches: vec![batch],
            });
        }
        if name.eq_ignore_ascii_case("all") {
            let schema = Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("setting", DataType::Utf8, false),
            ]));
            let all = settings.all();
            let names = datafusion::arrow::array::StringArray::from_iter_values(
                all.iter().map(|(k, _)| k.as_str()),
            );
            let values = datafusion::arrow::array::StringArray::from_iter_values(
                all.iter().map(|(_, v)| v.as_str()),
            );
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(names), Arc::new(values)])
                    .map_err(|e| StromError::user("XX000", e.to_string()))?;
            return Ok(Outcome::Rows {
                schema,
                batches: vec![batch],
            });
        }
        let value = settings.get(name).ok_or_else(|| {
            StromError::user(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            )
        })?;
        let schema = show_schema(name);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                value,
            ]))],
        )
        .map_err(|e| StromError::user("XX000", e.to_string()))?;
        Ok(Outcome::Rows {
            schema,
            batches: vec![batch],
        })
    }
}

fn show_schema(name: &str) -> SchemaRef {
    let col = if name.eq_ignore_ascii_case("sources") || name.eq_ignore_ascii_case("sinks") {
        "Name".to_string()
    } else if name.eq_ignore_ascii_case("time zone") {
        "TimeZone".to_string()
    } else {
        name.to_lowercase()
    };
    Arc::new(Schema::new(vec![Field::new(col, DataType::Utf8, false)]))
}

fn setting_value(values: &[Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_params(params: &[Param]) -> Result<()> {
    if params.is_empty() {
        Ok(())
    } else {
        Err(StromError::user(
            "42P02",
            "this statement takes no parameters",
        ))
    }
}

pub fn statement_kind(stmt: &Statement) -> String {
    let s = stmt.to_string();
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The parameter types DataFusion inferred, by position (fields keep the jsonb tag).
pub fn param_types(plan: &LogicalPlan) -> Result<Vec<Option<FieldRef>>> {
    let fields = plan.get_parameter_fields()?;
    let n = fields
        .keys()
        .filter_map(|k| k.strip_prefix('$')?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    Ok((1..=n)
        .map(|i| fields.get(&format!("${i}")).cloned().flatten())
        .collect())
}

/// Substitutes bound parameter values into a plan, converting each to the type the plan
/// expects for it.
pub fn bind_params(plan: LogicalPlan, params: &[Param], param_oids: &[u32]) -> Result<LogicalPlan> {
    if params.is_empty() {
        return Ok(plan);
    }
    let inferred = param_types(&plan)?;
    let mut values = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let field = inferred.get(i).cloned().flatten();
        // The type the client encoded a binary value in: the one it declared at Parse, else
        // the one we described to it (which keeps jsonb apart from text).
        let declared = match param_oids.get(i).copied().unwrap_or(0) {
            0 => field
                .as_ref()
                .and_then(|f| strom_catalog::SqlType::from_arrow(f.data_type(), f.metadata()))
                .map(|t| t.pg_oid())
                .unwrap_or(0),
            oid => oid,
        };
        let target = field
            .map(|f| f.data_type().clone())
            .or_else(|| crate::pg_catalog::type_by_oid(declared).map(|t| t.to_arrow()))
            .unwrap_or(DataType::Utf8);
        values.push(param_value(p, declared, &target, i + 1)?);
    }
    Ok(plan.with_param_values(ParamValues::from(values))?)
}

pub fn param_value(
    p: &Param,
    declared_oid: u32,
    target: &DataType,
    pos: usize,
) -> Result<ScalarValue> {
    let v = match p {
        Param::Null => return Ok(ScalarValue::try_from(target)?),
        Param::Text(s) => match target {
            DataType::List(field) => {
                let elem = field.data_type();
                let items = strom_sql::literal::parse_array(s)?;
                let values = items
                    .into_iter()
                    .map(|item| match item {
                        None => Ok(ScalarValue::try_from(elem)?),
                        Some(t) => ScalarValue::Utf8(Some(t.clone()))
                            .cast_to(elem)
                            .map_err(|_| {
                                StromError::user(
                                    "22P02",
                                    format!("invalid input syntax for type {elem}: \"{t}\""),
                                )
                            }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                return Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                    &values, elem,
                )));
            }
            _ => ScalarValue::Utf8(Some(s.clone())),
        },
        Param::Binary(oid, bytes) => {
            let oid = if *oid != 0 { *oid } else { declared_oid };
            let oid = if oid != 0 {
                oid
            } else {
                strom_catalog::SqlType::from_arrow(target, &Default::default())
                    .map(|t| t.pg_oid())
                    .unwrap_or(25)
            };
            decode_param(oid, bytes)
                .map_err(|m| StromError::user("22P03", format!("parameter ${pos}: {m}")))?
        }
    };
    if &v.data_type() == target {
        return Ok(v);
    }
    v.cast_to(target).map_err(|_| {
        StromError::user(
            "22P02",
            format!("invalid input syntax for parameter ${pos} of type {target}: \"{v}\""),
        )
    })
}
