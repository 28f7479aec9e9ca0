//! The Nexmark harness: `cargo bench --bench nexmark` runs each query of `bench/nexmark/`
//! on a fresh release `strom` server, as a `connector = 'blackhole'` sink over
//! `connector = 'nexmark'` sources generating `STROM_NEXMARK_EVENTS` events (default
//! 1,000,000) inside the server, and reports events/s, the server's CPU seconds, events
//! per CPU-second, its peak memory and the query's state size.
//!
//! - `STROM_NEXMARK_QUERIES=q0,q5` picks queries (default: all files);
//! - `STROM_NEXMARK_GAP_NS` spaces events in event time (default 100,000 ns: 10,000
//!   events per second of event time, so 1M events span 100 s and windowed queries close
//!   windows and sessions as they go);
//! - `STROM_NEXMARK_OUT=path` also writes the results as a Markdown table;
//! - `STROM_NEXMARK_CSV=dir` reads bids from the CSV files in `dir` instead (a
//!   `connector = 'posix_fs'` source `bid`, no header; `STROM_NEXMARK_EVENTS` is then the
//!   number of rows in them), and `STROM_NEXMARK_DIR=dir` takes the queries from another
//!   directory: `bench/flink/compare.py` runs Strom this way, beside Apache Flink.
//!
//! The clock runs from `CREATE SINK` (the sources start when it reads them) until every
//! event is in the sources and the dataflow has consumed them (`FLUSH`). Each source
//! generates every event and keeps its own kind, so a query reading all three pays for
//! generating the stream three times (the CPU figure includes it).

use std::time::{Duration, Instant};

mod common;
use common::{connect, BenchServer};

/// Rows of each kind among events `0..n` (1 person, 3 auctions, 46 bids per 50).
fn rows_of(kind: &str, n: u64) -> u64 {
    let (epochs, rest) = (n / 50, n % 50);
    match kind {
        "person" => epochs + rest.min(1),
        "auction" => epochs * 3 + rest.saturating_sub(1).min(3),
        _ => epochs * 46 + rest.saturating_sub(4),
    }
}

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process, MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Result {
    query: String,
    events_per_s: f64,
    cpu_s: f64,
    per_cpu_s: f64,
    peak_mib: f64,
    state_mib: f64,
    error: Option<String>,
}

impl Result {
    fn failed(query: &str, error: impl Into<String>) -> Result {
        Result {
            query: query.into(),
            events_per_s: 0.0,
            cpu_s: 0.0,
            per_cpu_s: 0.0,
            peak_mib: 0.0,
            state_mib: 0.0,
            error: Some(error.into()),
        }
    }
}

async fn run(name: &str, sql: &str, events: u64, gap_ns: u64, csv: Option<&str>) -> Result {
    let server = BenchServer::start();
    let c = connect(server.port).await;
    if let Some(dir) = csv {
        // `STROM_NEXMARK_CSV_BY_REFERENCE=1`: the change log keeps (file, byte range)
        // instead of the rows (`log_by_reference`, see docs/connectors.md).
        let by_reference = match std::env::var("STROM_NEXMARK_CSV_BY_REFERENCE").as_deref() {
            Ok("1") | Ok("true") => ", log_by_reference = 'true'",
            _ => "",
        };
        c.batch_execute(&format!(
            "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
                                date_time TIMESTAMP, extra VARCHAR,
                                WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
             WITH (connector = 'posix_fs', posix_fs.root = '{dir}', match_pattern = '*.csv',
                   posix_fs.poll.interval = '20ms'{by_reference})
             FORMAT PLAIN ENCODE CSV (without_header = 'true')"
        ))
        .await
        .unwrap();
    } else {
        let with = |kind: &str| {
            format!(
            "WITH (connector = 'nexmark', nexmark.table.type = '{kind}', nexmark.event.num = '{events}',
                   nexmark.min.event.gap.in.ns = '{gap_ns}')"
        )
        };
        c.batch_execute(&format!(
        "CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR);
         INSERT INTO side_input SELECT i, 'v' || i FROM generate_series(0, 9999) AS g(i);
         CREATE SOURCE person (id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR,
                               state VARCHAR, date_time TIMESTAMP, extra VARCHAR,
                               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};
         CREATE SOURCE auction (id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT,
                                date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR,
                                WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};
         CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
                            date_time TIMESTAMP, extra VARCHAR,
                            WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};",
        with("Person"),
        with("Auction"),
        with("Bid")
    ))
    .await
    .unwrap();
    }
    let pid = server.pid();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let body: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    if let Err(e) = c
        .batch_execute(&format!(
            "CREATE SINK {name} AS {body} WITH (connector = 'blackhole')"
        ))
        .await
    {
        let msg = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string());
        return Result::failed(name, msg);
    }
    // The sources the query reads are the ones that start; wait until each has all its
    // events.
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        // The simple protocol: one parse and plan per poll, where a prepared query plans
        // twice (describe, then execute). The polls' CPU counts in the server's.
        let running: Vec<(String, Option<u64>)> = c
            .simple_query(
                "SELECT name, rows FROM strom_catalog.source_status WHERE kind = 'source' AND running",
            )
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get(0).unwrap_or_default().to_string(),
                    r.get(1).and_then(|n| n.parse().ok()),
                )),
                _ => None,
            })
            .collect();
        let done = !running.is_empty()
            && running.iter().all(|(name, rows)| {
                let want = if csv.is_some() {
                    events
                } else {
                    rows_of(name, events)
                };
                rows.unwrap_or(0) >= want
            });
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Result::failed(name, "not done after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.batch_execute("FLUSH").await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let state: Option<i64> = c
        .query_one(
            "SELECT sum(state_bytes)::bigint FROM strom_catalog.view_state WHERE view_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    Result {
        query: name.into(),
        events_per_s: events as f64 / secs,
        cpu_s: cpu,
        per_cpu_s: events as f64 / cpu.max(0.01),
        peak_mib: peak_mib(pid),
        state_mib: state.unwrap_or(0) as f64 / (1 << 20) as f64,
        error: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: u64 = std::env::var("STROM_NEXMARK_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let gap_ns: u64 = std::env::var("STROM_NEXMARK_GAP_NS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let wanted: Option<Vec<String>> = std::env::var("STROM_NEXMARK_QUERIES")
        .ok()
        .map(|s| s.split(',').map(|q| q.trim().to_string()).collect());
    let csv = std::env::var("STROM_NEXMARK_CSV").ok();
    let dir = match std::env::var("STROM_NEXMARK_DIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/nexmark"),
    };
    let mut queries: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "sql").then(|| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
        })
        .filter(|(n, _)| wanted.as_ref().is_none_or(|w| w.contains(n)))
        .collect();
    queries.sort_by_key(|(n, _)| n[1..].parse::<u32>().unwrap_or(0));
    let mut table = String::from(
        "| query | events/s | CPU s | events per CPU-s | peak memory MiB | state MiB |\n|---|---|---|---|---|---|\n",
    );
    match &csv {
        Some(dir) => println!("{events} bids per query, from the CSV files in {dir}"),
        None => println!("{events} events per query, {gap_ns} ns apart in event time"),
    }
    for (name, sql) in &queries {
        let r = run(name, sql, events, gap_ns, csv.as_deref()).await;
        let line = match &r.error {
            Some(e) => format!("| {} | not run: {e} | | | | |", r.query),
            None => format!(
                "| {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} |",
                r.query, r.events_per_s, r.cpu_s, r.per_cpu_s, r.peak_mib, r.state_mib
            ),
        };
        println!("{line}");
        table.push_str(&line);
        table.push('\n');
    }
    if let Ok(path) = std::env::var("STROM_NEXMARK_OUT") {
        std::fs::write(&path, table).unwrap();
    }
}
