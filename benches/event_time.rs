//! Event time against a release `strom` server started here: `cargo bench --bench
//! event_time` (figures to stdout; `docs/benchmarks.md` records them).
//!
//! - window-close latency: a table with `WATERMARK FOR ts AS ts`, an `EMIT ON WINDOW
//!   CLOSE` view of 1-second tumbling windows over 100 points. Each round inserts one
//!   window's rows, then one row of the next window, which moves the watermark past the
//!   window's end; the time from sending that row until the window's rows are visible in
//!   the view (polled every 0.5 ms, `implicit_flush` off) is the close latency. p50/p99.
//! - endless stream: `STROM_BENCH_EVENTS` events (default 10,000,000), 100,000 per
//!   1-minute window over 1,000 points, through an EOWC view and a continuously updated
//!   windowed view; events/s, and the operator state (`strom_catalog.view_state`) after
//!   10 windows and at the end.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

mod common;
use common::{connect, BenchServer};

async fn one(c: &Client, sql: &str) -> String {
    for m in c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        if let SimpleQueryMessage::Row(r) = m {
            return (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                .collect::<Vec<_>>()
                .join("|");
        }
    }
    String::new()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn close_latency(c: &Client, rounds: i64) -> (Duration, Duration) {
    c.batch_execute(
        "SET TimeZone = 'UTC';
         CREATE TABLE lat (point_id VARCHAR, ts TIMESTAMPTZ, v DOUBLE PRECISION, WATERMARK FOR ts AS ts);
         CREATE MATERIALIZED VIEW lat_1s AS SELECT point_id, window_start, count(*) AS n, avg(v) AS a
           FROM TUMBLE(lat, ts, INTERVAL '1' SECOND) GROUP BY point_id, window_start EMIT ON WINDOW CLOSE;
         SET implicit_flush = off;",
    )
    .await
    .unwrap();
    let base = 1_704_067_200i64;
    let mut lat = Vec::new();
    for w in 0..rounds {
        c.batch_execute(&format!(
            "INSERT INTO lat SELECT 'p' || (i % 100), to_timestamp({} + i * 0.001), i FROM generate_series(0, 999) AS g(i)",
            base + w
        ))
        .await
        .unwrap();
        let t = Instant::now();
        c.batch_execute(&format!(
            "INSERT INTO lat VALUES ('p0', to_timestamp({}), 0)",
            base + w + 1
        ))
        .await
        .unwrap();
        let probe = format!(
            "SELECT count(*) FROM lat_1s WHERE window_start = to_timestamp({})",
            base + w
        );
        loop {
            if one(c, &probe).await == "100" {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lat.push(t.elapsed());
    }
    c.batch_execute("SET implicit_flush = on").await.unwrap();
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: i64 = std::env::var("STROM_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let server = BenchServer::start();
    let c = connect(server.port).await;

    let (p50, p99) = close_latency(&c, 200).await;
    println!("window-close latency over 200 windows: p50 {p50:.1?}, p99 {p99:.1?}");

    c.batch_execute(
        "CREATE TABLE soak (point_id VARCHAR, ts TIMESTAMPTZ, v DOUBLE PRECISION,
                            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE MATERIALIZED VIEW soak_eowc AS
           SELECT point_id, window_start, avg(v) AS a, max(v) AS hi, count(*) AS n
           FROM TUMBLE(soak, ts, INTERVAL '1' MINUTE) GROUP BY point_id, window_start
           EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW soak_live AS
           SELECT window_start, min(v) AS lo, count(*) AS n
           FROM TUMBLE(soak, ts, INTERVAL '1' MINUTE) GROUP BY window_start;",
    )
    .await
    .unwrap();
    const PER_WINDOW: i64 = 100_000;
    const PER_STATEMENT: i64 = 20_000;
    let windows = (events / PER_WINDOW).max(11);
    let state = "SELECT sum(state_keys), sum(state_bytes) FROM strom_catalog.view_state";
    let started = Instant::now();
    let mut after_10 = String::new();
    for w in 0..windows {
        for part in 0..PER_WINDOW / PER_STATEMENT {
            c.batch_execute(&format!(
                "INSERT INTO soak SELECT 'p' || (i % 1000), to_timestamp({} + i * 0.0006), i % 997 FROM generate_series({}, {}) AS g(i)",
                1_704_067_200 + w * 60,
                part * PER_STATEMENT,
                (part + 1) * PER_STATEMENT - 1
            ))
            .await
            .unwrap();
        }
        if w == 9 {
            after_10 = one(&c, state).await;
        }
    }
    let elapsed = started.elapsed();
    let total = windows * PER_WINDOW;
    println!(
        "endless stream: {total} events in {elapsed:.1?}: {:.0} events/s through an EOWC and a live windowed view",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "state keys|bytes after 10 windows: {after_10}; after {windows}: {}; EOWC rows: {}",
        one(&c, state).await,
        one(&c, "SELECT count(*) FROM soak_eowc").await
    );
}
