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
use strom_engine::lookup::{ExternalTable, LookupOptions, LOOKUP_OPTIONS};

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

/// Checks at `CREATE` that the database can read the declared columns from the table,
/// when the database can be reached within a few seconds (a database that is down does
/// not stop the declaration: rows wait for it). `Err`: what the database said.
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
    let types: Vec<SqlType> = inner.config.columns.iter().map(|c| c.1.clone()).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE 1 = 0",
        inner.select_list(&all),
        inner.config.table
    );
    inner.query_once(&sql, &[], &types, wait).await.map(|_| ())
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

impl Inner {
    async fn connect(&self) -> Result<Conn, String> {
        let c = &self.config;
        match c.kind {
            Kind::Postgres => {
                let mut pg = tokio_postgres::Config::new();
                pg.host(&c.host)
                    .port(c.port)
                    .user(&c.user)
                    .dbname(&c.database)
                    .application_name("strom-lookup")
                    .connect_timeout(c.timeout);
                if let Some(p) = &c.password {
                    pg.password(p);
                }
                let (client, connection) = pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("connecting to PostgreSQL {}:{}: {e}", c.host, c.port))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                // Text forms both sides parse: ISO dates, round-trip floats.
                client
                    .batch_execute("SET DateStyle = ISO, YMD; SET extra_float_digits = 3")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Pg(client))
            }
            Kind::Mysql => {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(c.host.clone())
                    .tcp_port(c.port)
                    .user(Some(c.user.clone()))
                    .pass(c.password.clone())
                    .db_name(Some(c.database.clone()))
                    // Talk to the host and port given: the client would otherwise switch
                    // to the server's Unix socket when it runs on the same machine.
                    .prefer_socket(false);
                let conn = mysql_async::Conn::new(opts)
                    .await
                    .map_err(|e| format!("connecting to MySQL {}:{}: {e}", c.host, c.port))?;
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

    /// One attempt at a query, on a pooled or new connection (dropped on error).
    /// `types`: the declared types of the selected columns (MySQL values are turned into
    /// text by them).
    async fn query_once(
        &self,
        sql: &str,
        params: &[Vec<String>],
        types: &[SqlType],
        timeout: Duration,
    ) -> Result<TextRows, String> {
        let pooled = self.idle.lock().expect("pool lock").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => tokio::time::timeout(timeout, self.connect())
                .await
                .map_err(|_| format!("connecting timed out after {timeout:?}"))??,
        };
        let run = async {
            match &mut conn {
                Conn::Pg(client) => {
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let rows = client.query(sql, &refs).await.map_err(|e| pg_error(&e))?;
                    Ok(rows
                        .iter()
                        .map(|r| {
                            (0..r.len())
                                .map(|i| r.get::<_, Option<String>>(i))
                                .collect()
                        })
                        .collect())
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
                        conn.exec(sql, params).await.map_err(|e| e.to_string())?;
                    Ok(rows
                        .into_iter()
                        .map(|r| {
                            let values = r.unwrap();
                            values
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
            .unwrap_or_else(|_| Err(format!("the query timed out after {timeout:?}")));
        if result.is_ok() {
            self.put_back(conn);
        }
        result
    }

    /// A query, retried `max_retries` times with growing pauses.
    async fn query(&self, sql: &str, params: &[Vec<String>]) -> Result<TextRows, String> {
        let types: Vec<SqlType> = self.config.columns.iter().map(|c| c.1.clone()).collect();
        let mut attempt = 0;
        loop {
            match self
                .query_once(sql, params, &types, self.config.timeout)
                .await
            {
                Ok(rows) => return Ok(rows),
                Err(e) if attempt >= self.config.max_retries => {
                    return Err(format!("{} (after {} attempts)", e, attempt + 1))
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100) * (1 << attempt.min(6))).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The select list: every column as text (PostgreSQL), or as is (MySQL values are
    /// turned into text by [`mysql_text`]).
    fn select_list(&self, columns: &[usize]) -> String {
        let c = &self.config;
        columns
            .iter()
            .map(|&i| {
                let (name, ty, _) = &c.columns[i];
                match (c.kind, ty) {
                    (Kind::Postgres, SqlType::Timestamptz) => format!("to_json({name}) #>> '{{}}'"),
                    (Kind::Postgres, _) => format!("{name}::text"),
                    (Kind::Mysql, _) => name.clone(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The query for a batch of `n` keys over `key_columns`.
    fn batch_sql(&self, key_columns: &[usize], n: usize) -> String {
        let c = &self.config;
        let all: Vec<usize> = (0..c.columns.len()).collect();
        let select = self.select_list(&all);
        let names: Vec<&str> = key_columns
            .iter()
            .map(|&k| c.columns[k].0.as_str())
            .collect();
        let filter = match c.kind {
            Kind::Postgres => {
                let arrays: Vec<String> = key_columns
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| format!("${}::text[]::{}[]", i + 1, c.columns[k].1.pg_name()))
                    .collect();
                if key_columns.len() == 1 {
                    format!("{} = ANY({})", names[0], arrays[0])
                } else {
                    format!(
                        "({}) IN (SELECT * FROM unnest({}))",
                        names.join(", "),
                        arrays.join(", ")
                    )
                }
            }
            Kind::Mysql => {
                let one = if key_columns.len() == 1 {
                    "?".to_string()
                } else {
                    format!("({})", vec!["?"; key_columns.len()].join(", "))
                };
                let list = vec![one; n].join(", ");
                if key_columns.len() == 1 {
                    format!("{} IN ({list})", names[0])
                } else {
                    format!("({}) IN ({list})", names.join(", "))
                }
            }
        };
        format!("SELECT {select} FROM {} WHERE {filter}", c.table)
    }

    async fn fetch_async(
        self: Arc<Self>,
        key_columns: Vec<usize>,
        keys: Vec<Vec<String>>,
    ) -> Result<RecordBatch, String> {
        let size = self.config.batch_size;
        let batches: Vec<Vec<Vec<String>>> = keys.chunks(size).map(<[_]>::to_vec).collect();
        let results: Vec<Result<TextRows, String>> = futures::stream::iter(batches)
            .map(|batch| {
                let me = Arc::clone(&self);
                let key_columns = key_columns.clone();
                async move {
                    match me.config.kind {
                        Kind::Postgres => {
                            // One text array per key column.
                            let mut params =
                                vec![Vec::with_capacity(batch.len()); key_columns.len()];
                            for key in &batch {
                                for (p, v) in params.iter_mut().zip(key) {
                                    p.push(v.clone());
                                }
                            }
                            let sql = me.batch_sql(&key_columns, batch.len());
                            me.query(&sql, &params).await
                        }
                        Kind::Mysql => {
                            // Padded to the batch size with the last key, so one prepared
                            // statement serves every batch.
                            let mut padded = batch.clone();
                            let last = batch.last().cloned().unwrap_or_default();
                            padded.resize(size.min(keys_len_hint(&batch, size)), last);
                            let sql = me.batch_sql(&key_columns, padded.len());
                            // (A key repeated in `IN` still finds its rows once.)
                            me.query(&sql, &padded).await
                        }
                    }
                }
            })
            .buffer_unordered(self.config.connections)
            .collect()
            .await;
        let mut rows = Vec::new();
        for r in results {
            rows.extend(r?);
        }
        let all: Vec<usize> = (0..self.config.columns.len()).collect();
        text_batch(&self.config, &all, rows)
    }
}

/// MySQL batches are padded to the full batch size only when the batch is at least a
/// quarter of it (a handful of keys should not cost a thousand placeholders).
fn keys_len_hint(batch: &[Vec<String>], size: usize) -> usize {
    if batch.len() * 4 >= size {
        size
    } else {
        batch.len()
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
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

/// A key value as text for the query (its cast to text, as PostgreSQL writes it).
fn key_text(v: &ScalarValue) -> Result<String, String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Ok(s.clone()),
        other => match other.cast_to(&DataType::Utf8) {
            Ok(ScalarValue::Utf8(Some(s))) => Ok(s),
            _ => Err(format!("the key value {other} has no text form")),
        },
    }
}

impl ExternalTable for Client {
    fn fetch(&self, columns: &[usize], keys: &[Vec<ScalarValue>]) -> Result<RecordBatch, String> {
        let keys: Vec<Vec<String>> = keys
            .iter()
            .map(|k| k.iter().map(key_text).collect())
            .collect::<Result<_, _>>()?;
        let me = Arc::clone(&self.0);
        let (tx, rx) = std::sync::mpsc::channel();
        let columns = columns.to_vec();
        self.0.handle.spawn(async move {
            let _ = tx.send(me.fetch_async(columns, keys).await);
        });
        rx.recv()
            .map_err(|_| "the lookup task was dropped (server shutting down)".to_string())?
    }

    fn scan(
        &self,
        projection: Option<Vec<usize>>,
    ) -> BoxFuture<'static, Result<RecordBatch, String>> {
        let me = Arc::clone(&self.0);
        let columns = projection.unwrap_or_else(|| (0..me.config.columns.len()).collect());
        let sql = if columns.is_empty() {
            format!("SELECT 1 FROM {}", me.config.table)
        } else {
            format!(
                "SELECT {} FROM {}",
                me.select_list(&columns),
                me.config.table
            )
        };
        let types: Vec<SqlType> = columns
            .iter()
            .map(|&i| me.config.columns[i].1.clone())
            .collect();
        async move {
            // Whole-table reads get more time than lookups.
            let timeout = me.config.timeout.max(Duration::from_secs(300));
            let rows = me.query_once(&sql, &[], &types, timeout).await?;
            if columns.is_empty() {
                let n = rows.len();
                return RecordBatch::try_new_with_options(
                    Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                    vec![],
                    &datafusion::arrow::record_batch::RecordBatchOptions::new()
                        .with_row_count(Some(n)),
                )
                .map_err(|e| e.to_string());
            }
            text_batch(&me.config, &columns, rows)
        }
        .boxed()
    }
}
