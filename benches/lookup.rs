//! Processing-time temporal join throughput against a release `strom` server started
//! here: `cargo bench --bench lookup` (figures to stdout; `docs/benchmarks.md` records
//! them). A 1,000,000-row dimension in Strom (`STROM_BENCH_DIM`), then
//! `STROM_BENCH_ROWS` (default 1,000,000) stream rows, inserted 100,000 per statement
//! into a table a view joins with the dimension by processing time; each statement returns
//! once the view has them (implicit flush), so the rate is end to end.

use std::time::Instant;

mod common;
use common::{connect, BenchServer};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |name: &str, default: i64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (dim_rows, rows) = (
        env("STROM_BENCH_DIM", 1_000_000),
        env("STROM_BENCH_ROWS", 1_000_000),
    );
    let server = BenchServer::start();
    let c = connect(server.port).await;
    let t = Instant::now();
    c.batch_execute(&format!(
        "CREATE TABLE meters (meter_id BIGINT PRIMARY KEY, feeder VARCHAR, ratio DOUBLE PRECISION);
         INSERT INTO meters SELECT i, 'F' || (i % 1000), 1.0 + (i % 7) FROM generate_series(0, {}) AS g(i);
         CREATE TABLE readings (meter_id BIGINT, kw DOUBLE PRECISION);
         CREATE MATERIALIZED VIEW enriched AS
           SELECT r.meter_id, m.feeder, r.kw * m.ratio AS kw
           FROM readings r JOIN meters FOR SYSTEM_TIME AS OF PROCTIME() AS m ON r.meter_id = m.meter_id;",
        dim_rows - 1
    ))
    .await
    .unwrap();
    println!("dimension of {dim_rows} rows loaded in {:.1?}", t.elapsed());
    const PER_STATEMENT: i64 = 100_000;
    let t = Instant::now();
    let mut done = 0;
    while done < rows {
        let n = PER_STATEMENT.min(rows - done);
        c.batch_execute(&format!(
            "INSERT INTO readings SELECT (i * 7919) % {dim_rows}, 1.5 FROM generate_series({done}, {}) AS g(i)",
            done + n - 1
        ))
        .await
        .unwrap();
        done += n;
    }
    let elapsed = t.elapsed();
    let joined: i64 = c
        .query_one("SELECT count(*) FROM enriched", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, rows);
    println!(
        "temporal join: {rows} rows in {elapsed:.1?}: {:.0} rows/s (dimension {dim_rows} rows, every row found)",
        rows as f64 / elapsed.as_secs_f64()
    );
}
