//! Runs every `slt/**/*.slt` file against a real server, once over the simple query
//! protocol (tokio-postgres `simple_query`) and once over the extended protocol
//! ([`TextClient`]). Errors are rendered as `[SQLSTATE] message` so files can pin codes.
//!
//! `STROM_SLT_FILTER=substring` runs only matching files.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

use crate::pgclient::{Reply, ServerError, TextClient};
use crate::server::TestServer;

#[derive(Debug)]
pub struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SltError {}

impl From<ServerError> for SltError {
    fn from(e: ServerError) -> Self {
        SltError(e.to_string())
    }
}

fn render(v: Option<&str>) -> String {
    match v {
        None => "NULL".to_string(),
        Some("") => "(empty)".to_string(),
        Some(s) => s.to_string(),
    }
}

fn pg_error(e: tokio_postgres::Error) -> SltError {
    match e.as_db_error() {
        Some(db) => SltError(format!("[{}] {}", db.code().code(), db.message())),
        None => SltError(format!("[client] {e}")),
    }
}

enum Conn {
    Simple(tokio_postgres::Client),
    Extended(TextClient),
}

struct Db {
    conn: Conn,
}

#[async_trait]
impl AsyncDB for Db {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        match &mut self.conn {
            Conn::Simple(client) => {
                let msgs = client.simple_query(sql).await.map_err(pg_error)?;
                let mut rows = Vec::new();
                let mut is_query = false;
                let mut affected = 0;
                for m in msgs {
                    match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            is_query = true;
                            rows.push((0..r.len()).map(|i| render(r.get(i))).collect::<Vec<_>>());
                        }
                        tokio_postgres::SimpleQueryMessage::RowDescription(_) => is_query = true,
                        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => affected = n,
                        _ => {}
                    }
                }
                Ok(output(is_query, rows, affected))
            }
            Conn::Extended(client) => {
                let reply = client
                    .run(sql)
                    .await
                    .map_err(|e| SltError(format!("[io] {e}")))??;
                Ok(match reply {
                    Reply::Rows(rows) => {
                        let rows: Vec<Vec<String>> = rows
                            .into_iter()
                            .map(|r| r.iter().map(|v| render(v.as_deref())).collect())
                            .collect();
                        output(true, rows, 0)
                    }
                    Reply::Command(tag) => {
                        let n = tag
                            .rsplit(' ')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        DBOutput::StatementComplete(n)
                    }
                })
            }
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "strom"
    }
}

fn output(is_query: bool, rows: Vec<Vec<String>>, affected: u64) -> DBOutput<DefaultColumnType> {
    if is_query {
        let width = rows.first().map(|r| r.len()).unwrap_or(0);
        DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        }
    } else {
        DBOutput::StatementComplete(affected)
    }
}

fn slt_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "slt") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("slt"),
        &mut files,
    );
    files.sort();
    let filter = std::env::var("STROM_SLT_FILTER").unwrap_or_default();
    files.retain(|f| f.to_string_lossy().contains(&filter));
    files
}

async fn run_all(extended: bool) {
    // The test clock lets files drive temporal filters (`SET strom_test_clock = ...`).
    let server = TestServer::start_with_env(&[], &[("STROM_TEST_CLOCK", "1")]);
    let port = server.port;
    let conn_str = server.conn_str();
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files found");
    let mut failures = Vec::new();
    for file in &files {
        let conn_str = conn_str.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let conn_str = conn_str.clone();
            async move {
                let conn = if extended {
                    Conn::Extended(
                        TextClient::connect(port)
                            .await
                            .map_err(|e| SltError(e.to_string()))?,
                    )
                } else {
                    let (client, connection) =
                        tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                            .await
                            .map_err(pg_error)?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Conn::Simple(client)
                };
                Ok::<_, SltError>(Db { conn })
            }
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    let mode = if extended { "extended" } else { "simple" };
    assert!(
        failures.is_empty(),
        "{} of {} slt files failed ({mode} protocol):\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_simple_protocol() {
    run_all(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_extended_protocol() {
    run_all(true).await;
}
