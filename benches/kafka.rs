//! Kafka JSON ingest throughput, against a release `strom` server started here and the
//! broker `scripts/services.sh start kafka` runs (`TEST_KAFKA_BOOTSTRAP`, default
//! 127.0.0.1:9092). Run with `cargo bench --bench kafka`; `STROM_BENCH_ROWS` sets the
//! number of messages (default 1,000,000). `docs/benchmarks.md` records the figures.
//!
//! The messages (meter readings, ~110 bytes of JSON each, two partitions) are produced
//! first; then a source and a view `count(*), sum(kw)` over it are created, and the time
//! until the view counts every message is measured: decoding, the write transactions,
//! the change log and the view's epochs, end to end. The same is done for a connector
//! table (rows stored).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

mod common;
use common::{connect, BenchServer};

async fn count(c: &Client, view: &str) -> i64 {
    c.query_one(&format!("SELECT n FROM {view}"), &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: usize = std::env::var("STROM_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let bootstrap =
        std::env::var("TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("bench_TMR_CJ_YXNDL_03_{nanos}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let t = Instant::now();
    let mut bytes = 0usize;
    let mut acks = Vec::new();
    for i in 0..rows {
        let payload = format!(
            r#"{{"meter_id": "M{:06}", "ts": "2025-03-13T17:{:02}:00Z", "kw": {}.{:02}, "quality": {}}}"#,
            i % 100_000,
            i % 60,
            i % 5000,
            i % 100,
            i % 3
        );
        bytes += payload.len();
        let rec: FutureRecord<'_, str, str> = FutureRecord::to(&topic)
            .partition((i % 2) as i32)
            .payload(&payload);
        acks.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
        if acks.len() >= 100_000 {
            for a in acks.drain(..) {
                a.await.unwrap().unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    let produce = t.elapsed();
    println!(
        "produced {rows} messages ({:.1} MB) in {:.1} s",
        bytes as f64 / 1e6,
        produce.as_secs_f64()
    );

    let server = BenchServer::start();
    let c = connect(server.port).await;
    for (kind, relation) in [("SOURCE", "src_readings"), ("TABLE", "tbl_readings")] {
        let view = format!("{relation}_total");
        let t = Instant::now();
        c.batch_execute(&format!(
            "CREATE {kind} {relation} (meter_id VARCHAR, ts TIMESTAMPTZ, kw DOUBLE PRECISION, quality SMALLINT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW {view} AS SELECT count(*) AS n, sum(kw) AS kw FROM {relation};"
        ))
        .await
        .unwrap();
        while count(&c, &view).await < rows as i64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d = t.elapsed().as_secs_f64();
        println!(
            "{kind:<6} -> view: {rows} records in {d:.2} s: {:.0} records/s, {:.1} MB/s",
            rows as f64 / d,
            bytes as f64 / 1e6 / d
        );
    }
}
