//! Maintenance throughput and freshness of materialized views, against a release `strom`
//! server started here. Run with `cargo bench --bench stream` (figures go to stdout;
//! `docs/benchmarks.md` records them). `STROM_BENCH_ROWS` sets the bulk size.
//!
//! - bulk: `INSERT ... SELECT FROM generate_series` into a table, with no view, then with
//!   a group-by view, then with a two-way join view; each statement returns once the
//!   views are up to date (implicit flush), so the difference is the maintenance cost.
//! - freshness: single-row inserts, each timed from send to the moment its effect is
//!   visible in the view (the statement returns only then), p50/p99, idle and with a
//!   concurrent bulk writer.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

mod common;
use common::{connect, BenchServer};

async fn timed(c: &Client, sql: &str) -> Duration {
    let t = Instant::now();
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn freshness(c: &Client, n: usize, base: i64) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let id = base + i as i64;
        lat.push(
            timed(
                c,
                &format!("INSERT INTO fresh VALUES ({id}, {}, 1.0)", id % 10),
            )
            .await,
        );
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::var("STROM_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let server = BenchServer::start();
    let c = connect(server.port).await;
    c.batch_execute(
        "CREATE TABLE plain (id BIGINT PRIMARY KEY, g INT, v DOUBLE PRECISION);
         CREATE TABLE grouped (id BIGINT PRIMARY KEY, g INT, v DOUBLE PRECISION);
         CREATE TABLE joined (id BIGINT PRIMARY KEY, g INT, v DOUBLE PRECISION);
         CREATE TABLE dim (g INT PRIMARY KEY, name VARCHAR);
         INSERT INTO dim SELECT i, 'g' || i FROM generate_series(0, 999) AS s(i);
         CREATE MATERIALIZED VIEW by_g AS SELECT g, count(*) AS n, sum(v) AS s, max(v) AS hi FROM grouped GROUP BY g;
         CREATE MATERIALIZED VIEW by_name AS SELECT j.id, d.name, j.v FROM joined j JOIN dim d ON j.g = d.g;
         CREATE TABLE fresh (id BIGINT PRIMARY KEY, g INT, v DOUBLE PRECISION);
         CREATE MATERIALIZED VIEW fresh_by_g AS SELECT g, count(*) AS n, sum(v) AS s FROM fresh GROUP BY g;",
    )
    .await
    .unwrap();
    let bulk = |t: &str| {
        format!(
            "INSERT INTO {t} SELECT i, i % 1000, i * 0.5 FROM generate_series(1, {rows}) AS s(i)"
        )
    };
    let t_plain = timed(&c, &bulk("plain")).await;
    let t_group = timed(&c, &bulk("grouped")).await;
    let t_join = timed(&c, &bulk("joined")).await;
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("bulk rows: {rows}");
    println!(
        "insert, no view:        {:>8.0} ms  {:>10.0} rows/s",
        t_plain.as_secs_f64() * 1e3,
        per_s(t_plain)
    );
    println!(
        "insert + group-by view: {:>8.0} ms  {:>10.0} rows/s",
        t_group.as_secs_f64() * 1e3,
        per_s(t_group)
    );
    println!(
        "insert + join view:     {:>8.0} ms  {:>10.0} rows/s",
        t_join.as_secs_f64() * 1e3,
        per_s(t_join)
    );
    let m_group = t_group.saturating_sub(t_plain);
    let m_join = t_join.saturating_sub(t_plain);
    println!(
        "group-by maintenance alone: {:>10.0} rows/s",
        per_s(m_group)
    );
    println!("join maintenance alone:     {:>10.0} rows/s", per_s(m_join));
    let check = c
        .query_one("SELECT sum(n)::BIGINT FROM by_g", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(check, rows, "group-by view total");

    let (p50, p99) = freshness(&c, 500, 1).await;
    println!("freshness idle (500 single-row inserts): p50 {p50:?} p99 {p99:?}");
    // Again with a concurrent writer streaming batches into another table: 10,000-row
    // statements, then 1,000-row ones (DML statements commit one at a time, so the size of
    // the statement ahead of a single-row insert bounds how long it waits to commit).
    let mut base = 10_000_000i64;
    for batch in [10_000i64, 1_000] {
        let writer = connect(server.port).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let start = base;
        let bg = tokio::spawn(async move {
            let mut base = start;
            let mut n = 0i64;
            let t = Instant::now();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                writer
                    .batch_execute(&format!(
                        "INSERT INTO grouped SELECT i, i % 1000, 1.0 FROM generate_series({base}, {}) AS s(i)",
                        base + batch - 1
                    ))
                    .await
                    .unwrap();
                base += batch;
                n += batch;
            }
            (n as f64 / t.elapsed().as_secs_f64(), base)
        });
        let (p50, p99) = freshness(&c, 500, 1_000_000 + base).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (bg_rate, end) = bg.await.unwrap();
        base = end;
        println!(
            "freshness under load ({bg_rate:.0} rows/s in {batch}-row statements into a group-by view meanwhile): p50 {p50:?} p99 {p99:?}"
        );
    }
}
