//! External lookup tables in PostgreSQL and MySQL/MariaDB:
//!
//! ```sql
//! CREATE TABLE dim_customer (customer_id VARCHAR PRIMARY KEY, name VARCHAR, tariff VARCHAR)
//! WITH (connector = 'postgres', mode = 'lookup', hostname = '127.0.0.1', port = '5432',
//!       username = 'strom', password = '...', database.name = 'crm', table.name = 'public.customer',
//!       lookup.cache = 'PARTIAL', lookup.partial-cache.max-rows = '200000');
//! ```
//!
//! Nothing is ingested. A temporal join hands a chunk's distinct missing keys to
//! [`ExternalTable::fetch`]; they are split into batches of `lookup.batch-size` keys, one
//! query each (`WHERE k = ANY($1)` in PostgreSQL, `WHERE k IN (?, ...)` in MySQL), run
//! concurrently on up to `lookup.connections` pooled connections. A failed query is
//! retried `lookup.max-retries` times (100 ms, 200 ms, ... apart) on a new connection;
//! then the join keeps the rows and tries again later (see the engine's `lookup_join`).
//! `SELECT` reads the whole table through ([`ExternalTable::scan`]).
//!
//! The Strom columns name the database table's columns; values travel as text (each
//! column is selected as text and cast to the declared type), so any type with a text
//! form both sides agree on works.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::common::ScalarValue;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use strom_catalog::{ConnectorDef, SqlType, TableDef, TableId};
use strom_engine::lookup::{ExternalTable, LookupError, LookupOptions, LOOKUP_OPTIONS};

/// Options of `connector = 'postgres' | 'mysql'` besides [`LOOKUP_OPTIONS`].
const OPTIONS: &[&str] = &[
    "connector",
    "mode",
    "hostname",
    "port",
    "username",
    "password",
    "database.name",
    "schema.name",
    "table.name",
    "lookup.batch-size",
    "lookup.connections",
    "lookup.timeout",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Postgres,
    Mysql,
}

/// A lookup table's declaration, checked.
#[derive(Debug, Clone)]
struct Config {
    kind: Kind,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
    /// The table's name, quoted for the database (`"public"."customer"`).
    table: String,
    /// Visible columns: quoted name, declared type, Arrow type.
    columns: Vec<(String, SqlType, DataType)>,
    schema: SchemaRef,
    batch_size: usize,
    connections: usize,
    timeout: Duration,
    max_retries: u32,
}

fn quote(kind: Kind, ident: &str) -> String {
    match kind {
        Kind::Postgres => format!("\"{}\"", ident.replace('"', "\"\"")),
        Kind::Mysql => format!("`{}`", ident.replace('`', "``")),
    }
}

fn supported(ty: &SqlType) -> bool {
    !matches!(ty, SqlType::Bytea | SqlType::Interval | SqlType::Array(_))
}

impl Config {
    fn parse(def: &TableDef, c: &ConnectorDef) -> Result<Config, String> {
        let kind = match c.options.get("connector").map(String::as_str) {
            Some("postgres") => Kind::Postgres,
            Some("mysql") => Kind::Mysql,
            other => return Err(format!("unknown connector {other:?}")),
        };
        let connector = c.options["connector"].clone();
        match c.options.get("mode").map(String::as_str) {
            Some("lookup") => {}
            Some(other) => {
                return Err(format!(
                    "connector '{connector}' with mode = '{other}' is not supported (mode = 'lookup' looks rows up by key; to ingest a table use CDC)"
                ))
            }
            None => {
                return Err(format!(
                    "connector '{connector}' needs mode = 'lookup' (rows are looked up by key in the database, not ingested)"
                ))
            }
        }
        if c.is_source || c.is_sink {
            return Err(format!(
                "a {} cannot be a lookup table: use CREATE TABLE ... WITH (connector = '{connector}', mode = 'lookup', ...)",
                if c.is_source { "source" } else { "sink" }
            ));
        }
        if !c.format.is_empty() || !c.encode.is_empty() {
            return Err("a lookup table has no FORMAT ... ENCODE (rows are read as the database types them)".into());
        }
        if !c.includes.is_empty() {
            return Err("a lookup table has no INCLUDE columns".into());
        }
        if def.watermark.is_some() {
            return Err("a lookup table has no WATERMARK (it is read by key, not streamed)".into());
        }
        for k in c.options.keys() {
            if !OPTIONS.contains(&k.as_str()) && !LOOKUP_OPTIONS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown option \"{k}\" for connector '{connector}' (known: {}, {})",
                    OPTIONS.join(", "),
                    LOOKUP_OPTIONS.join(", ")
                ));
            }
        }
        let required = |k: &str| {
            c.options
                .get(k)
                .filter(|v| !v.trim().is_empty())
                .cloned()
                .ok_or_else(|| format!("option \"{k}\" is required"))
        };
        let number = |k: &str, default: u64, max: u64| -> Result<u64, String> {
            match c.options.get(k) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| format!("{k} = '{v}' is not a number from 1 to {max}")),
            }
        };
        let default_port = if kind == Kind::Postgres { 5432 } else { 3306 };
        let port = number("port", default_port, 65535)? as u16;
        let mut parts: Vec<String> = required("table.name")?
            .split('.')
            .map(|p| p.trim().to_string())
            .collect();
        if let Some(s) = c.options.get("schema.name") {
            if parts.len() > 1 {
                return Err("give the schema in schema.name or in table.name, not both".into());
            }
            parts.insert(0, s.clone());
        }
        if parts.len() > 2 || parts.iter().any(String::is_empty) {
            return Err(format!(
                "table.name = '{}' is not a table name (name or schema.name)",
                c.options["table.name"]
            ));
        }
        let table = parts
            .iter()
            .map(|p| quote(kind, p))
            .collect::<Vec<_>>()
            .join(".");
        let mut columns = Vec::new();
        for (_, col) in def.visible_columns() {
            if !supported(&col.ty) {
                return Err(format!(
                    "column \"{}\" has type {}, which lookup tables do not read yet",
                    col.name,
                    col.ty.pg_name()
                ));
            }
            columns.push((quote(kind, &col.name), col.ty.clone(), col.ty.to_arrow()));
        }
        let options = LookupOptions::parse(&c.options)?;
        let timeout = match c.options.get("lookup.timeout") {
            None => Duration::from_secs(10),
            Some(v) => strom_engine::lookup::parse_duration(v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("lookup.timeout = '{v}' is not a duration like '10s'"))?,
        };
        let batch_max = if kind == Kind::Mysql {
            (60_000 / columns.len().max(1)) as u64
        } else {
            100_000
        };
        Ok(Config {
            kind,
            host: required("hostname")?,
            port,
            user: required("username")?,
            password: c.options.get("password").cloned(),
            database: required("database.name")?,
            table,
            schema: def.visible_arrow_schema(),
            columns,
            batch_size: number("lookup.batch-size", 1000, batch_max)? as usize,
            connections: number("lookup.connections", 4, 64)? as usize,
            timeout,
            max_retries: options.max_retries,
        })
    }
}

/// Checks a `connector = 'postgres' | 'mysql'` declaration at `CREATE`.
pub fn validate(def: &TableDef, c: &ConnectorDef) -> Result<(), String> {
    Config::parse(def, c).map(|_| ())
}

/// Checks at `CREATE` that the database can read the declared columns from the table
/// (and, in PostgreSQL, compare each with a value of its declared type, as lookups do),
/// when it can be reached within a few seconds: a database that is down does not stop the
/// declaration (rows wait for it). `Err`: what the database said.
pub async fn probe(def: &TableDef) -> Result<(), String> {
    let c = def.connector.as_ref().ok_or("not a lookup table")?;
    let inner = Inner {
        config: Config::parse(def, c)?,
        handle: tokio::runtime::Handle::current(),
        idle: Mutex::new(Vec::new()),
    };
    let wait = inner.config.timeout.min(Duration::from_secs(3));
    match tokio::time::timeout(wait, inner.connect()).await {
        Ok(Ok(conn)) => inner.put_back(conn),
        Ok(Err(e)) => {
            tracing::warn!("lookup table \"{}\": cannot check it now: {e}", def.name);
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                "lookup table \"{}\": cannot check it now: connecting timed out",
                def.name
            );
            return Ok(());
        }
    }
    let all: Vec<usize> = (0..inner.config.columns.len()).collect();
    let mut sql = format!(
        "SELECT {} FROM {} AS t WHERE 1 = 0",
        inner.select_list(&all),
        inner.config.table
    );
    if inner.config.kind == Kind::Postgres {
        for (name, ty, _) in &inner.config.columns {
            sql.push_str(&format!(
                " AND t.{name} = ANY('{{}}'::text[]::{}[])",
                ty.pg_name()
            ));
        }
    }
    let types: Vec<SqlType> = inner.config.columns.iter().map(|c| c.1.clone()).collect();
    inner
        .query_once(&sql, &[], &types, wait)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Clients by table, shared by every join and `SELECT` of the table (re-made when its
/// options change).
static CLIENTS: Mutex<BTreeMap<TableId, OpenClient>> = Mutex::new(BTreeMap::new());

/// A client and the options it was made with.
type OpenClient = (BTreeMap<String, String>, Arc<Client>);

/// Opens (or reuses) the client of an external lookup table; registered with the engine
/// by [`register`].
pub fn open(def: &TableDef) -> Result<Arc<dyn ExternalTable>, String> {
    let c = def
        .connector
        .as_ref()
        .ok_or("not a lookup table (no connector)")?;
    let mut clients = CLIENTS.lock().expect("clients lock");
    if let Some((options, client)) = clients.get(&def.id) {
        if *options == c.options && client.0.config.schema == def.visible_arrow_schema() {
            return Ok(Arc::clone(client) as Arc<dyn ExternalTable>);
        }
    }
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "lookup tables are opened inside the server's runtime".to_string())?;
    let client = Arc::new(Client(Arc::new(Inner {
        config: Config::parse(def, c)?,
        handle,
        idle: Mutex::new(Vec::new()),
    })));
    clients.insert(def.id, (c.options.clone(), Arc::clone(&client)));
    Ok(client)
}

/// Closes the pooled connections of lookup tables that were dropped or changed (joins
/// still using an old client keep it until they go).
pub fn forget_dropped(catalog: &strom_catalog::Catalog) {
    CLIENTS
        .lock()
        .expect("clients lock")
        .retain(|id, (options, _)| {
            catalog
                .table(*id)
                .and_then(|t| t.connector.as_ref())
                .is_some_and(|c| c.options == *options)
        });
}

/// Makes the engine open external lookup tables with [`open`].
pub fn register() {
    strom_engine::lookup::register(open);
}

enum Conn {
    Pg(tokio_postgres::Client),
    My(Box<mysql_async::Conn>),
}

/// One lookup table's database client.
#[derive(Debug)]
pub struct Client(Arc<Inner>);

/// The client's configuration and a small pool of connections.
struct Inner {
    config: Config,
    handle: tokio::runtime::Handle,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("kind", &self.config.kind)
            .field("table", &self.config.table)
            .finish()
    }
}

/// Text rows: per row, per selected column.
type TextRows = Vec<Vec<Option<String>>>;

/// A PostgreSQL error as transient (the connection, the server's state) or not.
fn pg_error(e: &tokio_postgres::Error) -> LookupError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let msg = format!("{code}: {}", db.message());
            // 08: connection; 53: resources; 57P: shutdown; 40001/40P01: serialization,
            // deadlock; 55P03: lock not available.
            if ["08", "53", "57P"].iter().any(|p| code.starts_with(p))
                || ["40001", "40P01", "55P03"].contains(&code)
            {
                LookupError::Unavailable(msg)
            } else {
                LookupError::Invalid(msg)
            }
        }
        None => LookupError::Unavailable(e.to_string()),
    }
}

/// A MySQL error as transient or not: server errors are permanent except those about
/// the server's state (too many connections, shutdown, lock waits, deadlocks).
fn mysql_error(e: mysql_async::Error) -> LookupError {
    match &e {
        mysql_async::Error::Server(s)
            if ![1040, 1053, 1203, 1205, 1213, 1927, 3024].contains(&s.code) =>
        {
            LookupError::Invalid(e.to_string())
        }
        _ => LookupError::Unavailable(e.to_string()),
    }
}

impl Inner {
    async fn connect(&self) -> Result<Conn, LookupError> {
        let c = &self.config;
        let unavailable = |db: &str, e: String| {
            LookupError::Unavailable(format!("connecting to {db} {}:{}: {e}", c.host, c.port))
        };
        match c.kind {
            Kind::Postgres => {
                let mut pg = tokio_postgres::Config::new();
                pg.host(&c.host)
                    .port(c.port)
                    .user(&c.user)
                    .dbname(&c.database)
                    .application_name("strom-lookup")
                    .connect_timeout(c.timeout.min(CONNECT_TIMEOUT));
                if let Some(p) = &c.password {
                    pg.password(p);
                }
                let (client, connection) =
                    pg.connect(tokio_postgres::NoTls).await.map_err(|e| {
                        match e.as_db_error() {
                            // Refused by the server itself (no such database, bad password).
                            Some(_) => LookupError::Invalid(pg_error(&e).to_string()),
                            None => unavailable("PostgreSQL", e.to_string()),
                        }
                    })?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                // Text forms both sides parse: ISO dates, round-trip floats, UTC.
                client
                    .batch_execute(
                        "SET DateStyle = ISO, YMD; SET extra_float_digits = 3; SET TimeZone = 'UTC'",
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                Ok(Conn::Pg(client))
            }
            Kind::Mysql => {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(c.host.clone())
                    .tcp_port(c.port)
                    .user(Some(c.user.clone()))
                    .pass(c.password.clone())
                    .db_name(Some(c.database.clone()))
                    // Timestamps are read and compared in UTC.
                    .init(vec!["SET time_zone = '+00:00'"])
                    // Talk to the host and port given: the client would otherwise switch
                    // to the server's Unix socket when it runs on the same machine.
                    .prefer_socket(false);
                let conn = mysql_async::Conn::new(opts).await.map_err(|e| match e {
                    mysql_async::Error::Server(_) => mysql_error(e),
                    other => unavailable("MySQL", other.to_string()),
                })?;
                Ok(Conn::My(Box::new(conn)))
            }
        }
    }

    fn put_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < self.config.connections {
            idle.push(conn);
        }
    }

    /// A pooled connection that is not known to be closed, or a new one.
    async fn take(&self, timeout: Duration) -> Result<Conn, LookupError> {
        loop {
            let pooled = self.idle.lock().expect("pool lock").pop();
            match pooled {
                Some(Conn::Pg(c)) if c.is_closed() => continue,
                Some(c) => return Ok(c),
                None => {
                    let wait = timeout.min(CONNECT_TIMEOUT);
                    return tokio::time::timeout(wait, self.connect())
                        .await
                        .map_err(|_| {
                            LookupError::Unavailable(format!(
                                "connecting to {}:{} timed out after {wait:?}",
                                self.config.host, self.config.port
                            ))
                        })?;
                }
            }
        }
    }

    /// One attempt at a query, on a pooled or new connection (dropped on error).
    /// `types`: the declared types of the selected columns (MySQL values are turned into
    /// text by them; PostgreSQL selects every column as text).
    async fn query_once(
        &self,
        sql: &str,
        params: &[Vec<String>],
        types: &[SqlType],
        timeout: Duration,
    ) -> Result<TextRows, LookupError> {
        let mut conn = self.take(timeout).await?;
        let run = async {
            match &mut conn {
                Conn::Pg(client) => {
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let rows = client.query(sql, &refs).await.map_err(|e| pg_error(&e))?;
                    rows.iter()
                        .map(|r| {
                            (0..r.len())
                                .map(|i| {
                                    r.try_get::<_, Option<String>>(i)
                                        .map_err(|e| LookupError::Invalid(e.to_string()))
                                })
                                .collect()
                        })
                        .collect()
                }
                Conn::My(conn) => {
                    use mysql_async::prelude::Queryable;
                    let values: Vec<mysql_async::Value> = params
                        .iter()
                        .flatten()
                        .map(|s| mysql_async::Value::Bytes(s.clone().into_bytes()))
                        .collect();
                    let params = if values.is_empty() {
                        mysql_async::Params::Empty
                    } else {
                        mysql_async::Params::Positional(values)
                    };
                    let rows: Vec<mysql_async::Row> =
                        conn.exec(sql, params).await.map_err(mysql_error)?;
                    Ok(rows
                        .into_iter()
                        .map(|r| {
                            r.unwrap()
                                .into_iter()
                                .zip(types)
                                .map(|(v, ty)| mysql_text(v, ty))
                                .collect()
                        })
                        .collect())
                }
            }
        };
        let result = tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(LookupError::Unavailable(format!(
                    "the query timed out after {timeout:?}"
                )))
            });
        if result.is_ok() {
            self.put_back(conn);
        }
        result
    }

    /// A query, retried `max_retries` times with growing pauses while the database is
    /// unavailable.
    async fn query(
        &self,
        sql: &str,
        params: &[Vec<String>],
        types: &[SqlType],
    ) -> Result<TextRows, LookupError> {
        let mut attempt = 0;
        loop {
            match self
                .query_once(sql, params, types, self.config.timeout)
                .await
            {
                Ok(rows) => return Ok(rows),
                Err(LookupError::Unavailable(e)) if attempt >= self.config.max_retries => {
                    return Err(LookupError::Unavailable(format!(
                        "{e} (after {} attempts)",
                        attempt + 1
                    )))
                }
                Err(LookupError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100) * (1 << attempt.min(6))).await;
                    attempt += 1;
                }
                Err(invalid) => return Err(invalid),
            }
        }
    }

    /// The select list of `columns`, qualified by `alias`: every column as text
    /// (PostgreSQL), or as is (MySQL values are turned into text by [`mysql_text`]).
    fn select_list(&self, columns: &[usize]) -> String {
        let c = &self.config;
        columns
            .iter()
            .map(|&i| {
                let (name, ty, _) = &c.columns[i];
                match (c.kind, ty) {
                    (Kind::Postgres, SqlType::Timestamptz) => {
                        format!("to_json(t.{name}) #>> '{{}}'")
                    }
                    (Kind::Postgres, _) => format!("t.{name}::text"),
                    (Kind::Mysql, _) => format!("t.{name}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The query for a batch of `n` keys over `key_columns`: every column of the rows
    /// that match, after the (0-based) position of the key they matched, so that the
    /// database's own comparison pairs rows with keys.
    fn batch_sql(&self, key_columns: &[usize], n: usize) -> String {
        let c = &self.config;
        let all: Vec<usize> = (0..c.columns.len()).collect();
        let select = self.select_list(&all);
        let on: Vec<String> = key_columns
            .iter()
            .enumerate()
            .map(|(i, &k)| format!("t.{} = k.v{i}", c.columns[k].0))
            .collect();
        match c.kind {
            Kind::Postgres => {
                let arrays: Vec<String> = key_columns
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| format!("${}::text[]::{}[]", i + 1, c.columns[k].1.pg_name()))
                    .collect();
                let names: Vec<String> = (0..key_columns.len()).map(|i| format!("v{i}")).collect();
                format!(
                    "SELECT (k.i - 1)::text, {select} FROM unnest({}) WITH ORDINALITY AS k({}, i) JOIN {} AS t ON {}",
                    arrays.join(", "),
                    names.join(", "),
                    c.table,
                    on.join(" AND ")
                )
            }
            Kind::Mysql => {
                let casts: Vec<String> = key_columns
                    .iter()
                    .map(|&k| mysql_cast(&c.columns[k].1))
                    .collect();
                let rows: Vec<String> = (0..n)
                    .map(|r| {
                        let values: Vec<String> = casts
                            .iter()
                            .enumerate()
                            .map(|(i, cast)| {
                                if r == 0 {
                                    format!("{cast} AS v{i}")
                                } else {
                                    cast.clone()
                                }
                            })
                            .collect();
                        if r == 0 {
                            format!("SELECT {r} AS i, {}", values.join(", "))
                        } else {
                            format!("SELECT {r}, {}", values.join(", "))
                        }
                    })
                    .collect();
                format!(
                    "SELECT k.i, {select} FROM ({}) AS k JOIN {} AS t ON {}",
                    rows.join(" UNION ALL "),
                    c.table,
                    on.join(" AND ")
                )
            }
        }
    }

    async fn fetch_async(
        self: Arc<Self>,
        key_columns: Vec<usize>,
        keys: Vec<Vec<String>>,
    ) -> Result<(Vec<u32>, RecordBatch), LookupError> {
        let size = self.config.batch_size;
        let mut types = vec![SqlType::BigInt];
        types.extend(self.config.columns.iter().map(|c| c.1.clone()));
        let batches: Vec<(usize, Vec<Vec<String>>)> = keys
            .chunks(size)
            .enumerate()
            .map(|(i, b)| (i * size, b.to_vec()))
            .collect();
        let results: Vec<Result<TextRows, LookupError>> = futures::stream::iter(batches)
            .map(|(offset, batch)| {
                let me = Arc::clone(&self);
                let key_columns = key_columns.clone();
                let types = types.clone();
                async move {
                    let n = batch.len();
                    let mut rows = match me.config.kind {
                        Kind::Postgres => {
                            // One text array per key column.
                            let mut params = vec![Vec::with_capacity(n); key_columns.len()];
                            for key in &batch {
                                for (p, v) in params.iter_mut().zip(key) {
                                    p.push(v.clone());
                                }
                            }
                            let sql = me.batch_sql(&key_columns, n);
                            me.query(&sql, &params, &types).await?
                        }
                        Kind::Mysql => {
                            // Padded to the batch size with the last key (its rows come
                            // back under positions past `n`, dropped below), so one
                            // prepared statement serves every full-ish batch.
                            let mut padded = batch.clone();
                            let last = batch.last().cloned().unwrap_or_default();
                            padded.resize(padded_len(n, size), last);
                            let sql = me.batch_sql(&key_columns, padded.len());
                            me.query(&sql, &padded, &types).await?
                        }
                    };
                    // Positions relative to all keys; padding's dropped.
                    rows.retain_mut(|r| {
                        match r[0].as_deref().and_then(|p| p.parse::<usize>().ok()) {
                            Some(p) if p < n => {
                                r[0] = Some((p + offset).to_string());
                                true
                            }
                            _ => false,
                        }
                    });
                    Ok(rows)
                }
            })
            .buffer_unordered(self.config.connections)
            .collect()
            .await;
        let mut rows = Vec::new();
        for r in results {
            rows.extend(r?);
        }
        let positions: Vec<u32> = rows
            .iter()
            .map(|r| {
                r[0].as_deref().and_then(|p| p.parse().ok()).ok_or_else(|| {
                    LookupError::Invalid("a row came back without its key position".into())
                })
            })
            .collect::<Result<_, _>>()?;
        let rows: TextRows = rows.into_iter().map(|mut r| r.split_off(1)).collect();
        let all: Vec<usize> = (0..self.config.columns.len()).collect();
        let batch = text_batch(&self.config, &all, rows).map_err(LookupError::Invalid)?;
        Ok((positions, batch))
    }
}

/// How long connecting may take (within `lookup.timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// MySQL batches are padded to the full batch size when they are at least a quarter of
/// it (a handful of keys should not cost a thousand placeholders).
fn padded_len(n: usize, size: usize) -> usize {
    if n * 4 >= size {
        size
    } else {
        n
    }
}

/// A MySQL placeholder cast to the declared type of the column it is compared with, so
/// that the comparison can use the column's index.
fn mysql_cast(ty: &SqlType) -> String {
    match ty {
        SqlType::Boolean | SqlType::SmallInt | SqlType::Int | SqlType::BigInt => {
            "CAST(? AS SIGNED)".into()
        }
        SqlType::Real | SqlType::Double => "CAST(? AS DOUBLE)".into(),
        SqlType::Numeric {
            precision: Some(p),
            scale,
        } => format!("CAST(? AS DECIMAL({p},{}))", scale.unwrap_or(0)),
        SqlType::Numeric { .. } => "CAST(? AS DECIMAL(65,30))".into(),
        SqlType::Date => "CAST(? AS DATE)".into(),
        SqlType::Time => "CAST(? AS TIME(6))".into(),
        SqlType::Timestamp | SqlType::Timestamptz => "CAST(? AS DATETIME(6))".into(),
        _ => "?".into(),
    }
}

/// A MySQL value as the text the declared type parses.
fn mysql_text(v: mysql_async::Value, ty: &SqlType) -> Option<String> {
    use mysql_async::Value;
    Some(match v {
        Value::NULL => return None,
        Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Date(y, mo, d, h, mi, s, us) => {
            if *ty == SqlType::Date {
                format!("{y:04}-{mo:02}-{d:02}")
            } else if *ty == SqlType::Timestamptz {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}+00:00")
            } else {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}")
            }
        }
        Value::Time(neg, days, h, mi, s, us) => format!(
            "{}{:02}:{mi:02}:{s:02}.{us:06}",
            if neg { "-" } else { "" },
            days * 24 + u32::from(h)
        ),
    })
}

/// Text rows as a batch of the given columns, each cast to its declared type.
fn text_batch(c: &Config, columns: &[usize], rows: TextRows) -> Result<RecordBatch, String> {
    let schema = Arc::new(c.schema.project(columns).map_err(|e| e.to_string())?);
    let options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (pos, &i) in columns.iter().enumerate() {
        let text = StringArray::from_iter(rows.iter().map(|r| r[pos].as_deref()));
        let (_, _, arrow) = &c.columns[i];
        let array = cast_with_options(&text, arrow, &options).map_err(|e| {
            format!(
                "column {} of {}: a value does not read as {}: {e}",
                c.columns[i].0,
                c.table,
                c.columns[i].1.pg_name()
            )
        })?;
        arrays.push(array);
    }
    RecordBatch::try_new_with_options(
        schema,
        arrays,
        &datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(rows.len())),
    )
    .map_err(|e| e.to_string())
}

/// A key value as text for the query: as PostgreSQL reads it, or for MySQL with
/// booleans as 1/0 and timestamps in UTC without an offset.
fn key_text(kind: Kind, v: &ScalarValue) -> Result<String, LookupError> {
    match (kind, v) {
        (
            _,
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s.clone()),
        (Kind::Mysql, ScalarValue::Boolean(Some(b))) => Ok(if *b { "1" } else { "0" }.into()),
        (Kind::Mysql, ScalarValue::TimestampMicrosecond(Some(us), _)) => {
            chrono::DateTime::from_timestamp_micros(*us)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                .ok_or_else(|| LookupError::Invalid(format!("the key value {v} is out of range")))
        }
        (_, other) => match other.cast_to(&DataType::Utf8) {
            Ok(ScalarValue::Utf8(Some(s))) => Ok(s),
            _ => Err(LookupError::Invalid(format!(
                "the key value {other} has no text form"
            ))),
        },
    }
}

impl ExternalTable for Client {
    fn fetch(
        &self,
        columns: &[usize],
        keys: &[Vec<ScalarValue>],
    ) -> Result<(Vec<u32>, RecordBatch), LookupError> {
        let kind = self.0.config.kind;
        let keys: Vec<Vec<String>> = keys
            .iter()
            .map(|k| k.iter().map(|v| key_text(kind, v)).collect())
            .collect::<Result<_, _>>()?;
        let me = Arc::clone(&self.0);
        let (tx, rx) = std::sync::mpsc::channel();
        let columns = columns.to_vec();
        self.0.handle.spawn(async move {
            let _ = tx.send(me.fetch_async(columns, keys).await);
        });
        rx.recv().map_err(|_| {
            LookupError::Unavailable("the lookup task was dropped (server shutting down)".into())
        })?
    }

    fn check(&self) -> std::sync::mpsc::Receiver<Result<(), String>> {
        let me = Arc::clone(&self.0);
        let (tx, rx) = std::sync::mpsc::channel();
        self.0.handle.spawn(async move {
            let probe = if me.config.kind == Kind::Postgres {
                "SELECT NULL::text"
            } else {
                "SELECT NULL"
            };
            let r = me
                .query_once(probe, &[], &[SqlType::Text], me.config.timeout)
                .await;
            let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
        });
        rx
    }

    fn scan(
        &self,
        projection: Option<Vec<usize>>,
    ) -> BoxFuture<'static, Result<RecordBatch, String>> {
        let me = Arc::clone(&self.0);
        let columns = projection.unwrap_or_else(|| (0..me.config.columns.len()).collect());
        let sql = if columns.is_empty() {
            let null = if me.config.kind == Kind::Postgres {
                "NULL::text"
            } else {
                "NULL"
            };
            format!("SELECT {null} FROM {} AS t", me.config.table)
        } else {
            format!(
                "SELECT {} FROM {} AS t",
                me.select_list(&columns),
                me.config.table
            )
        };
        let types: Vec<SqlType> = if columns.is_empty() {
            vec![SqlType::Text]
        } else {
            columns
                .iter()
                .map(|&i| me.config.columns[i].1.clone())
                .collect()
        };
        async move {
            // Whole-table reads get more time than lookups.
            let timeout = me.config.timeout.max(Duration::from_secs(300));
            let rows = me
                .query_once(&sql, &[], &types, timeout)
                .await
                .map_err(|e| e.to_string())?;
            if columns.is_empty() {
                return RecordBatch::try_new_with_options(
                    Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                    vec![],
                    &datafusion::arrow::record_batch::RecordBatchOptions::new()
                        .with_row_count(Some(rows.len())),
                )
                .map_err(|e| e.to_string());
            }
            text_batch(&me.config, &columns, rows)
        }
        .boxed()
    }
}
