//! Kafka sources and tables against the real Kafka-protocol broker (tansu) that
//! `scripts/test.sh` starts (`TEST_KAFKA_BOOTSTRAP`). Each test uses fresh topics, since
//! the broker lives across runs.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

use crate::server::{db_message, text_rows as rows, TestServer};

fn bootstrap() -> String {
    std::env::var("TEST_KAFKA_BOOTSTRAP").expect(
        "TEST_KAFKA_BOOTSTRAP is not set: run the suite with scripts/test.sh, which starts the broker",
    )
}

/// A topic name no earlier run used.
fn fresh_topic(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{base}_{}_{nanos}", std::process::id())
}

async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in res {
        r.expect("topic created");
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Sends `(partition, key, value, header)` messages and waits for every ack.
async fn produce(p: &FutureProducer, topic: &str, msgs: &[(i32, Option<&str>, Option<&str>)]) {
    let mut acks = Vec::new();
    for (part, key, value) in msgs {
        let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(topic).partition(*part);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        rec = rec.headers(OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("t-1"),
        }));
        // send_result enqueues now (send() would only when awaited, one at a time).
        acks.push(p.send_result(rec).map_err(|(e, _)| e).expect("enqueued"));
    }
    for a in acks {
        a.await.expect("delivery report").expect("delivered");
    }
}

/// Polls `sql` until it returns `want` (rendered `a|b` per row), or fails after 30 s.
async fn wait_for(c: &Client, sql: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<String> = rows(c, sql)
            .await
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| v.unwrap_or_else(|| "NULL".into()))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{sql}: still {got:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_source_feeds_views_with_metadata_and_keeps_bad_records() {
    let topic = fresh_topic("TMR_CJ_YXNDL_03");
    create_topic(&topic, 3).await;
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE meter_readings (meter_id VARCHAR NOT NULL, ts TIMESTAMPTZ, kw DOUBLE PRECISION, quality SMALLINT)
           INCLUDE partition AS kafka_partition INCLUDE offset AS kafka_offset INCLUDE timestamp AS kafka_ts
           INCLUDE key AS k INCLUDE header 'trace' AS trace
         WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}',
               scan.startup.mode = 'earliest')
         FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW kw_by_meter AS
           SELECT meter_id, count(*) AS n, sum(kw) AS kw, max(quality) AS q FROM meter_readings GROUP BY meter_id;
         CREATE MATERIALIZED VIEW meta AS
           SELECT kafka_partition, count(*) AS n, min(kafka_offset) AS lo, max(kafka_offset) AS hi,
                  count(DISTINCT trace) AS traces, count(k) AS keyed, count(kafka_ts) AS stamped
           FROM meter_readings GROUP BY kafka_partition;",
        bootstrap()
    ))
    .await
    .unwrap();
    // Messages sent before and after the views exist all count (earliest, from offset 0).
    let p = producer();
    let mut msgs: Vec<(i32, Option<String>, Option<String>)> = Vec::new();
    for i in 0..300 {
        let meter = format!("M{}", i % 3);
        msgs.push((
            i % 3,
            Some(meter.clone()),
            Some(format!(
                r#"{{"meter_id": "{meter}", "ts": "2024-03-01T10:{:02}:00Z", "kw": {}.5, "quality": {}}}"#,
                i % 60,
                i,
                i % 2
            )),
        ));
    }
    // Bad records: not JSON, a wrong type, a missing required field, no value at all.
    msgs.push((0, None, Some("not json at all".into())));
    msgs.push((1, None, Some(r#"{"meter_id": "M9", "kw": "lots"}"#.into())));
    msgs.push((2, None, Some(r#"{"kw": 1.0}"#.into())));
    msgs.push((2, Some("M0".into()), None));
    let borrowed: Vec<(i32, Option<&str>, Option<&str>)> = msgs
        .iter()
        .map(|(p, k, v)| (*p, k.as_deref(), v.as_deref()))
        .collect();
    produce(&p, &topic, &borrowed).await;
    // sum over i ≡ m (mod 3) of (i + 0.5), i < 300
    let sum = |m: i64| {
        (0..300)
            .filter(|i| i % 3 == m)
            .map(|i| i as f64 + 0.5)
            .sum::<f64>()
    };
    wait_for(
        &c,
        "SELECT meter_id, n, kw, q FROM kw_by_meter ORDER BY meter_id",
        &[
            &format!("M0|100|{}|1", sum(0)),
            &format!("M1|100|{}|1", sum(1)),
            &format!("M2|100|{}|1", sum(2)),
        ],
    )
    .await;
    wait_for(
        &c,
        "SELECT * FROM meta ORDER BY kafka_partition",
        &[
            "0|100|0|99|1|100|100",
            "1|100|0|99|1|100|100",
            "2|100|0|99|1|100|100",
        ],
    )
    .await;
    let errors = rows(
        &c,
        "SELECT source_name, partition, \"offset\", reason, payload FROM strom_catalog.source_errors ORDER BY partition, \"offset\"",
    )
    .await;
    assert_eq!(errors.len(), 4, "{errors:?}");
    let e = |i: usize, col: usize| errors[i][col].clone().unwrap();
    assert_eq!(
        (e(0, 0), e(0, 1), e(0, 2)),
        ("meter_readings".into(), "0".into(), "100".into())
    );
    assert_eq!(e(0, 4), "not json at all");
    assert!(
        e(1, 3).contains("kw") || e(1, 3).to_lowercase().contains("parse"),
        "{}",
        e(1, 3)
    );
    assert!(e(2, 3).contains("meter_id"), "{}", e(2, 3));
    assert_eq!((e(3, 1), e(3, 2)), ("2".into(), "101".into()));
    assert!(e(3, 3).contains("no value"), "{}", e(3, 3));
    wait_for(
        &c,
        "SELECT partition, next_offset FROM strom_catalog.source_offsets ORDER BY partition",
        &["0|101", "1|101", "2|102"],
    )
    .await;
    wait_for(
        &c,
        "SELECT kind, running, partitions, rows, rejected, last_error FROM strom_catalog.source_status",
        &["source|t|3|300|4|NULL"],
    )
    .await;
    // A source is not stored: reading it directly names the way out.
    let err = c
        .simple_query("SELECT * FROM meter_readings")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("create a materialized view")
            || format!("{err:?}").contains("materialized view"),
        "{err:?}"
    );
    // Bad declarations name the option.
    for (sql, needle) in [
        ("CREATE SOURCE s2 (a INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x', scan.startup.mode = 'soon') FORMAT PLAIN ENCODE JSON", "scan.startup.mode"),
        ("CREATE SOURCE s2 (a INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x', topik = 'y') FORMAT PLAIN ENCODE JSON", "topik"),
        ("CREATE SOURCE s2 (a INT) WITH (connector = 'kafka', properties.bootstrap.server = 'x') FORMAT PLAIN ENCODE JSON", "topic"),
        ("CREATE SOURCE s2 (a INT) WITH (connector = 'kafkaa', topic = 't') FORMAT PLAIN ENCODE JSON", "kafkaa"),
        ("CREATE SOURCE s2 (a INT PRIMARY KEY) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x') FORMAT UPSERT ENCODE JSON", "PRIMARY KEY"),
        ("CREATE SOURCE s2 (a INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x') FORMAT UPSERT ENCODE JSON", "UPSERT"),
        ("CREATE SOURCE s2 (a INTERVAL) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x') FORMAT PLAIN ENCODE JSON", "column \"a\""),
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let msg = db_message(&err);
        assert!(msg.contains(needle), "{sql}: {msg}");
    }
    // DROP names the kind: each statement drops only its own kind of object.
    for (sql, needle) in [
        ("DROP TABLE meter_readings", "Use DROP SOURCE"),
        ("DROP SINK kw_by_meter", "Use DROP MATERIALIZED VIEW"),
        ("DROP SOURCE kw_by_meter", "is not a source"),
        ("DROP SINK nope", "sink \"nope\" does not exist"),
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let msg = db_message(&err);
        let hint = err
            .as_db_error()
            .and_then(|d| d.hint().map(str::to_string))
            .unwrap_or_default();
        assert!(
            msg.contains(needle) || hint.contains(needle),
            "{sql}: {msg} / {hint}"
        );
    }
    // Dropping the source (and its views) forgets its offsets and rejections.
    c.batch_execute("DROP SOURCE meter_readings CASCADE")
        .await
        .unwrap();
    assert!(rows(&c, "SELECT * FROM strom_catalog.source_errors")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_table_replaces_and_deletes_rows_by_key() {
    let topic = fresh_topic("meter_ledger");
    create_topic(&topic, 2).await;
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE TABLE meters (meter_id VARCHAR PRIMARY KEY, feeder VARCHAR, ratio DOUBLE PRECISION)
           INCLUDE key AS k
         WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
         FORMAT UPSERT ENCODE JSON;
         CREATE MATERIALIZED VIEW feeders AS SELECT feeder, count(*) AS n, sum(ratio) AS r FROM meters GROUP BY feeder;",
        bootstrap()
    ))
    .await
    .unwrap();
    let p = producer();
    produce(
        &p,
        &topic,
        &[
            (
                0,
                Some("M1"),
                Some(r#"{"meter_id": "M1", "feeder": "F1", "ratio": 1.5}"#),
            ),
            (
                1,
                Some("M2"),
                Some(r#"{"meter_id": "M2", "feeder": "F1", "ratio": 2}"#),
            ),
            (
                0,
                Some("M3"),
                Some(r#"{"meter_id": "M3", "feeder": "F2", "ratio": 10}"#),
            ),
        ],
    )
    .await;
    wait_for(
        &c,
        "SELECT * FROM meters ORDER BY meter_id",
        &["M1|F1|1.5|M1", "M2|F1|2|M2", "M3|F2|10|M3"],
    )
    .await;
    // M1 moves to F2, M2 is deleted (tombstone; key as a JSON object), M3's key is a JSON
    // string.
    produce(
        &p,
        &topic,
        &[
            (
                0,
                Some("M1"),
                Some(r#"{"meter_id": "M1", "feeder": "F2", "ratio": 3}"#),
            ),
            (1, Some(r#"{"meter_id": "M2"}"#), None),
            (0, Some(r#""M3""#), None),
        ],
    )
    .await;
    wait_for(
        &c,
        "SELECT * FROM meters ORDER BY meter_id",
        &["M1|F2|3|M1"],
    )
    .await;
    wait_for(&c, "SELECT * FROM feeders ORDER BY feeder", &["F2|1|3"]).await;
    // The table is an ordinary table for queries.
    wait_for(&c, "SELECT count(*) FROM meters WHERE ratio > 1", &["1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_is_exactly_once_across_kill_9() {
    const N: usize = 60_000;
    let topic = fresh_topic("SCADA_YC_RT_03");
    let out = fresh_topic("yc_by_k");
    create_topic(&topic, 2).await;
    create_topic(&out, 1).await;
    let mut server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE yc (seq BIGINT NOT NULL, v INT)
         WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{b}')
         FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW yc_total AS SELECT count(*) AS n, sum(seq) AS s, count(DISTINCT seq) AS d FROM yc;
         CREATE MATERIALIZED VIEW yc_by_k AS SELECT seq % 10 AS k, count(*) AS n FROM yc GROUP BY seq % 10;
         CREATE SINK yc_out FROM yc_by_k
           WITH (connector = 'kafka', topic = '{out}', properties.bootstrap.server = '{b}', primary_key = 'k')
           FORMAT UPSERT ENCODE JSON;",
        b = bootstrap()
    ))
    .await
    .unwrap();
    drop(c);
    // Produce in the background while the server is killed three times.
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let p = producer();
            for chunk in 0..20 {
                let msgs: Vec<(i32, Option<String>, Option<String>)> = (0..N / 20)
                    .map(|i| {
                        let seq = chunk * (N / 20) + i;
                        (
                            (seq % 2) as i32,
                            None,
                            Some(format!(r#"{{"seq": {seq}, "v": 1}}"#)),
                        )
                    })
                    .collect();
                let borrowed: Vec<(i32, Option<&str>, Option<&str>)> = msgs
                    .iter()
                    .map(|(p, k, v)| (*p, k.as_deref(), v.as_deref()))
                    .collect();
                produce(&p, &topic, &borrowed).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill();
        server.spawn();
    }
    producing.await.unwrap();
    let c = server.client().await;
    let s: usize = (0..N).sum();
    wait_for(
        &c,
        "SELECT n, s, d FROM yc_total",
        &[&format!("{N}|{s}|{N}")],
    )
    .await;
    // The sink lost nothing across the kills: the topic, compacted by key, is the view.
    let want: std::collections::BTreeMap<String, Option<String>> = (0..10)
        .map(|k| {
            (
                format!(r#"{{"k":{k}}}"#),
                Some(format!(r#"{{"k":{k},"n":{}}}"#, N / 10)),
            )
        })
        .collect();
    let by_key = |recs: &Records| -> std::collections::BTreeMap<String, Option<String>> {
        recs.iter()
            .map(|(k, v)| (k.clone().expect("keyed"), v.clone()))
            .collect()
    };
    let records = consume_until(&out, |r| by_key(r) == want).await;
    assert_eq!(by_key(&records), want);
}

/// Reads the exactly-once test topic, applying transaction markers.
async fn read_transactional(topic: &str) -> crate::kafka_txn::Transactional {
    let (b, t) = (bootstrap(), topic.to_string());
    tokio::task::spawn_blocking(move || crate::kafka_txn::read(&b, &t, 0))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_sink_across_kill_9() {
    const N: usize = 20_000;
    let (input, out) = (fresh_topic("eo_in"), fresh_topic("eo_out"));
    create_topic(&input, 1).await;
    create_topic(&out, 1).await;
    // The failpoint holds each transaction open 300 ms before its commit, and waits 300 ms
    // after it before the sink log is trimmed: the kills below aim at those windows.
    let mut server = TestServer::start_with_env(&[], &[("STROM_TEST_SINK_PAUSE_MS", "300")]);
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE eo (seq BIGINT NOT NULL)
         WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{b}')
         FORMAT PLAIN ENCODE JSON;
         CREATE SINK eo_out AS SELECT seq FROM eo
           WITH (connector = 'kafka', topic = '{out}', properties.bootstrap.server = '{b}', delivery = 'exactly_once')
           FORMAT PLAIN ENCODE JSON;",
        b = bootstrap()
    ))
    .await
    .unwrap();
    drop(c);
    let producing = {
        let input = input.clone();
        tokio::spawn(async move {
            let p = producer();
            for chunk in 0..40 {
                let msgs: Vec<String> = (0..N / 40)
                    .map(|i| format!(r#"{{"seq": {}}}"#, chunk * (N / 40) + i))
                    .collect();
                let borrowed: Vec<(i32, Option<&str>, Option<&str>)> =
                    msgs.iter().map(|m| (0, None, Some(m.as_str()))).collect();
                produce(&p, &input, &borrowed).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Kill inside an open transaction (its records are in the broker, undecided), then
    // right after a commit (before the log is trimmed), then inside one again.
    for kill_open in [true, false, true] {
        let before = read_transactional(&out).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = read_transactional(&out).await;
            let hit = if kill_open {
                now.open > 0
            } else {
                now.commits > before.commits
            };
            if hit {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sink made no progress: {} commits, {} undecided records",
                now.commits,
                now.open
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        server.spawn();
    }
    producing.await.unwrap();

    // With aborted transactions discounted, every row arrives exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let read = loop {
        let read = read_transactional(&out).await;
        if read.committed.len() >= N || Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen = vec![0u32; N];
    for (_, value) in &read.committed {
        let v: serde_json::Value =
            serde_json::from_slice(value.as_deref().expect("a row")).unwrap();
        seen[v["seq"].as_u64().unwrap() as usize] += 1;
    }
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .map(|(seq, n)| (seq, *n))
        .take(10)
        .collect();
    eprintln!(
        "exactly-once sink: {} committed records in {} transactions; {} aborted records in {} aborted transactions",
        read.committed.len(),
        read.commits,
        read.aborted,
        read.aborts
    );
    assert!(
        wrong.is_empty(),
        "rows not delivered exactly once (seq, times): {wrong:?}"
    );
    assert_eq!(read.committed.len(), N);
    assert_eq!(read.open, 0, "records of transactions never ended");
    // The kills inside open transactions left aborted records the reader had to discount.
    assert!(
        read.aborts >= 2 && read.aborted > 0,
        "{} aborted transactions, {} aborted records",
        read.aborts,
        read.aborted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_envelopes_and_csv_maintain_tables() {
    let (dbz, canal, maxwell, csv) = (
        fresh_topic("cdc_dbz"),
        fresh_topic("cdc_canal"),
        fresh_topic("cdc_maxwell"),
        fresh_topic("TMR_CSV"),
    );
    for t in [&dbz, &canal, &maxwell, &csv] {
        create_topic(t, 1).await;
    }
    let server = TestServer::start();
    let c = server.client().await;
    let b = bootstrap();
    c.batch_execute(&format!(
        "CREATE TABLE dev_dbz (id INT PRIMARY KEY, name VARCHAR, kv DOUBLE PRECISION)
           WITH (connector = 'kafka', topic = '{dbz}', properties.bootstrap.server = '{b}') FORMAT DEBEZIUM ENCODE JSON;
         CREATE TABLE dev_canal (id INT PRIMARY KEY, name VARCHAR, kv DOUBLE PRECISION)
           WITH (connector = 'kafka', topic = '{canal}', properties.bootstrap.server = '{b}') FORMAT CANAL ENCODE JSON;
         CREATE TABLE dev_maxwell (id INT PRIMARY KEY, name VARCHAR, kv DOUBLE PRECISION)
           WITH (connector = 'kafka', topic = '{maxwell}', properties.bootstrap.server = '{b}') FORMAT MAXWELL ENCODE JSON;
         CREATE SOURCE tmr (meter_id VARCHAR, kwh NUMERIC(10,2), ts TIMESTAMP)
           WITH (connector = 'kafka', topic = '{csv}', properties.bootstrap.server = '{b}')
           FORMAT PLAIN ENCODE CSV (delimiter = '|', without_header = 'false');
         CREATE MATERIALIZED VIEW tmr_total AS SELECT meter_id, sum(kwh) AS kwh, max(ts) AS last FROM tmr GROUP BY meter_id;"
    ))
    .await
    .unwrap();
    let p = producer();
    // The same history in each envelope: insert 1, 2, 3; update 1; move 2 to key 20; delete 3.
    produce(
        &p,
        &dbz,
        &[
            (0, None, Some(r#"{"schema": {}, "payload": {"before": null, "after": {"id": 1, "name": "a", "kv": 10}, "op": "r"}}"#)),
            (0, None, Some(r#"{"before": null, "after": {"id": 2, "name": "b", "kv": 35}, "op": "c"}"#)),
            (0, None, Some(r#"{"before": null, "after": {"id": 3, "name": "c", "kv": 110}, "op": "c"}"#)),
            (0, None, Some(r#"{"before": {"id": 1, "name": "a", "kv": 10}, "after": {"id": 1, "name": "a2", "kv": 10.5}, "op": "u"}"#)),
            (0, None, Some(r#"{"before": {"id": 2, "name": "b", "kv": 35}, "after": {"id": 20, "name": "b", "kv": 35}, "op": "u"}"#)),
            (0, None, Some(r#"{"before": {"id": 3}, "after": null, "op": "d"}"#)),
            (0, Some(r#"{"id": 3}"#), None),
            (0, None, Some(r#"{"op": "u", "after": {"id": "x"}}"#)),
            // Rejected whole: its `after` has no key, so its `before` is not deleted either.
            (0, None, Some(r#"{"before": {"id": 20}, "after": {"id": null, "name": "zz"}, "op": "u"}"#)),
        ],
    )
    .await;
    produce(
        &p,
        &canal,
        &[
            (0, None, Some(r#"{"data": [{"id": "1", "name": "a", "kv": "10"}, {"id": "2", "name": "b", "kv": "35"}], "type": "INSERT", "isDdl": false}"#)),
            (0, None, Some(r#"{"data": [{"id": "3", "name": "c", "kv": "110"}], "type": "INSERT", "isDdl": false}"#)),
            (0, None, Some(r#"{"data": null, "type": "ALTER", "isDdl": true, "sql": "ALTER TABLE dev ADD x INT"}"#)),
            (0, None, Some(r#"{"data": [{"id": "1", "name": "a2", "kv": "10.5"}, {"id": "20", "name": "b", "kv": "35"}], "old": [{"name": "a", "kv": "10"}, {"id": "2"}], "type": "UPDATE", "isDdl": false}"#)),
            (0, None, Some(r#"{"data": [{"id": "3", "name": "c", "kv": "110"}], "type": "DELETE", "isDdl": false}"#)),
        ],
    )
    .await;
    produce(
        &p,
        &maxwell,
        &[
            (0, None, Some(r#"{"database": "erp", "table": "dev", "type": "bootstrap-insert", "data": {"id": 1, "name": "a", "kv": 10}}"#)),
            (0, None, Some(r#"{"database": "erp", "table": "dev", "type": "insert", "data": {"id": 2, "name": "b", "kv": 35}}"#)),
            (0, None, Some(r#"{"database": "erp", "table": "dev", "type": "insert", "data": {"id": 3, "name": "c", "kv": 110}}"#)),
            (0, None, Some(r#"{"database": "erp", "table": "dev", "type": "update", "data": {"id": 1, "name": "a2", "kv": 10.5}, "old": {"name": "a", "kv": 10}}"#)),
            (0, None, Some(r#"{"database": "erp", "table": "dev", "type": "update", "data": {"id": 20, "name": "b", "kv": 35}, "old": {"id": 2}}"#)),
            (0, None, Some(r#"{"database": "erp", "table": "dev", "type": "delete", "data": {"id": 3, "name": "c", "kv": 110}}"#)),
        ],
    )
    .await;
    produce(
        &p,
        &csv,
        &[
            (0, None, Some("meter_id|kwh|ts")),
            (0, None, Some("M1|1.25|2024-03-01 10:00:00")),
            (0, None, Some("M1|2.50|2024-03-01 10:15:00\n")),
            (0, None, Some("M2|0.10|2024-03-01 10:00:00")),
            (0, None, Some("M2|lots|2024-03-01 10:15:00")),
        ],
    )
    .await;
    for t in ["dev_dbz", "dev_canal", "dev_maxwell"] {
        wait_for(
            &c,
            &format!("SELECT * FROM {t} ORDER BY id"),
            &["1|a2|10.5", "20|b|35"],
        )
        .await;
    }
    wait_for(
        &c,
        "SELECT * FROM tmr_total ORDER BY meter_id",
        &["M1|3.75|2024-03-01 10:15:00", "M2|0.10|2024-03-01 10:00:00"],
    )
    .await;
    let errors = rows(
        &c,
        "SELECT source_name, \"offset\" FROM strom_catalog.source_errors ORDER BY source_name, \"offset\"",
    )
    .await;
    let errors: Vec<String> = errors
        .into_iter()
        .map(|r| format!("{}@{}", r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(errors, vec!["dev_dbz@7", "dev_dbz@8", "tmr@4"]);
    // The rejected update at offset 8 (now known to be processed) deleted nothing.
    wait_for(
        &c,
        "SELECT * FROM dev_dbz ORDER BY id",
        &["1|a2|10.5", "20|b|35"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_patterns_and_topic_name_columns() {
    let run = format!(
        "R{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (a, b, other) = (
        format!("TMR_CJ_YXNDL_03_{run}"),
        format!("TMR_CJ_WGDL_04_{run}"),
        format!("SCADA_YC_RT_03_{run}"),
    );
    for t in [&a, &b, &other] {
        create_topic(t, 2).await;
    }
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE tmr_all (meter_id VARCHAR, kwh DOUBLE PRECISION)
           INCLUDE topic INCLUDE topic_system INCLUDE topic_datatype AS datatype
           INCLUDE topic_company1 AS company INCLUDE topic_company2 INCLUDE topic_ok
         WITH (connector = 'kafka', topic = 'TMR_CJ_*_{run}', properties.bootstrap.server = '{}')
         FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW by_type AS
           SELECT _topic_system, datatype, company, count(*) AS n, sum(kwh) AS kwh,
                  bool_and(_topic_ok) AS ok, count(DISTINCT _rw_kafka_topic) AS topics,
                  count(DISTINCT _topic_company2) AS runs
           FROM tmr_all GROUP BY _topic_system, datatype, company;",
        bootstrap()
    ))
    .await
    .unwrap();
    let p = producer();
    let msg = r#"{"meter_id": "M1", "kwh": 1.5}"#;
    produce(&p, &a, &[(0, None, Some(msg)), (1, None, Some(msg))]).await;
    produce(&p, &b, &[(1, None, Some(msg))]).await;
    produce(&p, &other, &[(0, None, Some(msg))]).await;
    wait_for(
        &c,
        "SELECT * FROM by_type ORDER BY datatype",
        &["TMR|WGDL|04|1|1.5|t|1|1", "TMR|YXNDL|03|2|3|t|1|1"],
    )
    .await;
    // A topic created later that matches joins without a restart.
    let late = format!("TMR_CJ_ZXYG_05_{run}");
    create_topic(&late, 1).await;
    produce(&p, &late, &[(0, None, Some(msg))]).await;
    wait_for(
        &c,
        "SELECT datatype, n FROM by_type ORDER BY datatype",
        &["WGDL|1", "YXNDL|2", "ZXYG|1"],
    )
    .await;
}

type Records = Vec<(Option<String>, Option<String>)>;

/// The records of partition 0 of a topic, from the start, read until `done` says the
/// records so far are enough or 30 s passed: (key, value) as text.
async fn consume_until(topic: &str, done: impl Fn(&Records) -> bool) -> Records {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", fresh_topic("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => {
                let m = m.expect("read");
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.push((text(m.key()), text(m.payload())));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_deliver_view_changes_as_upsert_debezium_and_plain() {
    let (input, upsert_out, dbz_out, plain_out) = (
        fresh_topic("sink_in"),
        fresh_topic("feeder_kw"),
        fresh_topic("feeder_dbz"),
        fresh_topic("readings_copy"),
    );
    for t in [&input, &upsert_out, &dbz_out, &plain_out] {
        create_topic(t, 1).await;
    }
    let server = TestServer::start();
    let c = server.client().await;
    let b = bootstrap();
    c.batch_execute(&format!(
        "CREATE TABLE readings (id INT PRIMARY KEY, feeder VARCHAR, kw DOUBLE PRECISION)
           WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{b}')
           FORMAT UPSERT ENCODE JSON;
         CREATE MATERIALIZED VIEW kw_by_feeder AS SELECT feeder, sum(kw) AS kw, count(*) AS n FROM readings GROUP BY feeder;
         CREATE SINK kw_out FROM kw_by_feeder
           WITH (connector = 'kafka', topic = '{upsert_out}', properties.bootstrap.server = '{b}', primary_key = 'feeder',
                 delivery = 'exactly_once')
           FORMAT UPSERT ENCODE JSON;
         CREATE SINK kw_dbz FROM kw_by_feeder
           WITH (connector = 'kafka', topic = '{dbz_out}', properties.bootstrap.server = '{b}', primary_key = 'feeder')
           FORMAT DEBEZIUM ENCODE JSON;
         CREATE SINK big_readings AS SELECT id, kw FROM readings WHERE kw > 10
           WITH (connector = 'kafka', topic = '{plain_out}', properties.bootstrap.server = '{b}', force_append_only = 'true')
           FORMAT PLAIN ENCODE JSON;"
    ))
    .await
    .unwrap();
    let p = producer();
    produce(
        &p,
        &input,
        &[
            (0, Some("1"), Some(r#"{"id": 1, "feeder": "F1", "kw": 5}"#)),
            (0, Some("2"), Some(r#"{"id": 2, "feeder": "F1", "kw": 20}"#)),
            (0, Some("3"), Some(r#"{"id": 3, "feeder": "F2", "kw": 30}"#)),
        ],
    )
    .await;
    wait_for(
        &c,
        "SELECT * FROM kw_by_feeder ORDER BY feeder",
        &["F1|25|2", "F2|30|1"],
    )
    .await;
    produce(
        &p,
        &input,
        &[
            (0, Some("3"), None),
            (0, Some("1"), Some(r#"{"id": 1, "feeder": "F1", "kw": 7}"#)),
        ],
    )
    .await;
    wait_for(
        &c,
        "SELECT * FROM kw_by_feeder ORDER BY feeder",
        &["F1|27|2"],
    )
    .await;

    // UPSERT: replaying the topic by key gives the view.
    let by_key = |recs: &Records| -> std::collections::BTreeMap<String, Option<String>> {
        recs.iter()
            .map(|(k, v)| (k.clone().expect("keyed"), v.clone()))
            .collect()
    };
    let want: std::collections::BTreeMap<String, Option<String>> = [
        (
            r#"{"feeder":"F1"}"#.to_string(),
            Some(r#"{"feeder":"F1","kw":27.0,"n":2}"#.to_string()),
        ),
        (r#"{"feeder":"F2"}"#.to_string(), None),
    ]
    .into_iter()
    .collect();
    let upserts = consume_until(&upsert_out, |r| by_key(r) == want).await;
    assert_eq!(by_key(&upserts), want, "{upserts:?}");
    // DEBEZIUM: creates, an update with before/after, a delete.
    let ops_of = |recs: &Records| -> Vec<String> {
        recs.iter()
            .map(|(_, v)| {
                let e: serde_json::Value = serde_json::from_str(v.as_deref().unwrap()).unwrap();
                format!(
                    "{}:{}:{}",
                    e["op"].as_str().unwrap(),
                    e["before"]["kw"],
                    e["after"]["kw"]
                )
            })
            .collect()
    };
    let complete = |ops: &[String]| {
        ops.contains(&"u:25.0:27.0".to_string()) && ops.contains(&"d:30.0:null".to_string())
    };
    let events = consume_until(&dbz_out, |r| complete(&ops_of(r))).await;
    assert!(complete(&ops_of(&events)), "{:?}", ops_of(&events));
    assert!(ops_of(&events).contains(&"c:null:30.0".to_string()));
    // PLAIN with force_append_only: inserted rows only.
    let plain = consume_until(&plain_out, |r| r.len() >= 2).await;
    let mut values: Vec<String> = plain.into_iter().filter_map(|(_, v)| v).collect();
    values.sort();
    assert_eq!(
        values,
        vec![r#"{"id":2,"kw":20.0}"#, r#"{"id":3,"kw":30.0}"#]
    );
    // Sinks are not relations to read; bad declarations name the problem.
    let err = c.simple_query("SELECT * FROM kw_out").await.unwrap_err();
    assert!(format!("{err:?}").contains("sink"), "{err:?}");
    for (sql, needle) in [
        (format!("CREATE SINK s1 FROM kw_by_feeder WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{b}') FORMAT PLAIN ENCODE JSON"), "append-only"),
        (format!("CREATE SINK s1 FROM kw_by_feeder WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{b}') FORMAT UPSERT ENCODE JSON"), "primary_key"),
        (format!("CREATE SINK s1 FROM kw_by_feeder WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{b}', primary_key = 'nope') FORMAT UPSERT ENCODE JSON"), "nope"),
        (format!("CREATE SINK s1 FROM kw_by_feeder WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{b}', delivery = 'twice') FORMAT DEBEZIUM ENCODE JSON"), "option \"delivery\": \"twice\""),
        (format!("CREATE SINK s1 FROM kw_by_feeder WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{b}', properties.transactional.id = 'x') FORMAT DEBEZIUM ENCODE JSON"), "delivery = 'at_least_once' | 'exactly_once'"),
    ] {
        let err = c.simple_query(&sql).await.unwrap_err();
        let msg = db_message(&err);
        assert!(msg.contains(needle), "{sql}: {msg}");
    }
    c.batch_execute("DROP SINK kw_out; DROP SINK kw_dbz; DROP SINK big_readings")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_source_rate_limit_pauses_and_resumes_and_show_lists() {
    let topic = fresh_topic("paced");
    create_topic(&topic, 1).await;
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE paced (n INT)
           WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}', source_rate_limit = 0)
           FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW paced_n AS SELECT count(*) AS n FROM paced;
         CREATE SINK paced_out FROM paced_n
           WITH (connector = 'kafka', topic = '{topic}_out', properties.bootstrap.server = '{}', primary_key = 'n')
           FORMAT UPSERT ENCODE JSON;",
        bootstrap(),
        bootstrap()
    ))
    .await
    .unwrap();
    wait_for(&c, "SHOW SOURCES", &["paced"]).await;
    wait_for(&c, "SHOW SINKS", &["paced_out"]).await;
    let msgs: Vec<String> = (0..50).map(|i| format!(r#"{{"n": {i}}}"#)).collect();
    let batch: Vec<(i32, Option<&str>, Option<&str>)> =
        msgs.iter().map(|m| (0, None, Some(m.as_str()))).collect();
    produce(&producer(), &topic, &batch).await;
    // Paused: nothing arrives while the limit is 0.
    tokio::time::sleep(Duration::from_millis(800)).await;
    wait_for(&c, "SELECT n FROM paced_n", &["0"]).await;
    c.batch_execute("ALTER SOURCE paced SET source_rate_limit = 1000")
        .await
        .unwrap();
    wait_for(&c, "SELECT n FROM paced_n", &["50"]).await;
    for (sql, needle) in [
        (
            "ALTER SOURCE paced SET topic = 'other'",
            "cannot be changed",
        ),
        (
            "ALTER SOURCE paced SET source_rate_limit = 'fast'",
            "source_rate_limit",
        ),
        (
            "ALTER SOURCE nope SET source_rate_limit = 1",
            "does not exist",
        ),
        (
            "ALTER SOURCE paced_n SET source_rate_limit = 1",
            "not a source",
        ),
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let msg = db_message(&err);
        assert!(msg.contains(needle), "{sql}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partition_watermarks_with_idle_timeout_close_windows() {
    let topic = fresh_topic("SCADA_YC_RT_03");
    create_topic(&topic, 2).await;
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "SET TimeZone = 'UTC';
         CREATE SOURCE tel (point_id VARCHAR, ts TIMESTAMPTZ, value DOUBLE PRECISION,
                            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
         WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{b}',
               watermark.idle_timeout = '2s', late_data.table = 'tel_late')
         FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW tel_1m AS
           SELECT window_start, count(*) AS n, sum(value) AS total
           FROM TUMBLE(tel, ts, INTERVAL '1' MINUTE) GROUP BY window_start
           EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW tel_all AS SELECT count(*) AS n FROM tel;",
        b = bootstrap()
    ))
    .await
    .unwrap();
    let bad = c
        .batch_execute(&format!(
            "CREATE SOURCE bad_idle (ts TIMESTAMPTZ, WATERMARK FOR ts AS ts)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{b}',
                   watermark.idle_timeout = 'later')
             FORMAT PLAIN ENCODE JSON",
            b = bootstrap()
        ))
        .await
        .unwrap_err();
    assert!(
        format!("{bad:?}")
            .contains("\\\"watermark.idle_timeout\\\": \\\"later\\\" is not a duration"),
        "{bad:?}"
    );
    let p = producer();
    let ev = |ts: &str, v: i32| {
        format!(r#"{{"point_id": "p", "ts": "2024-01-01T{ts}Z", "value": {v}}}"#)
    };
    let (a, b) = (ev("00:00:10", 1), ev("00:00:20", 2));
    produce(&p, &topic, &[(0, None, Some(&a)), (1, None, Some(&b))]).await;
    wait_for(&c, "SELECT n FROM tel_all", &["2"]).await;
    // Partition 0 moves on to 00:01:30; partition 1 (last at 00:00:20) holds the
    // watermark at 00:00:15, so the first minute stays open.
    let m = ev("00:01:30", 4);
    produce(&p, &topic, &[(0, None, Some(&m))]).await;
    wait_for(&c, "SELECT n FROM tel_all", &["3"]).await;
    wait_for(
        &c,
        "SELECT watermark FROM strom_catalog.watermarks WHERE relation_name = 'tel'",
        &["2024-01-01T00:00:15Z"],
    )
    .await;
    assert_eq!(rows(&c, "SELECT * FROM tel_1m").await.len(), 0);
    // Once partition 1 has been quiet for the idle timeout, partition 0 alone moves the
    // watermark (to 00:01:35) and the first minute closes. Partition 0 keeps talking
    // meanwhile (else the whole source would be idle, see the next test).
    for s in 31..36 {
        let tick = ev(&format!("00:01:{s}"), 0);
        produce(&p, &topic, &[(0, None, Some(&tick))]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = ev("00:01:40", 8);
    produce(&p, &topic, &[(0, None, Some(&m))]).await;
    wait_for(
        &c,
        "SELECT window_start, n, total FROM tel_1m",
        &["2024-01-01 00:00:00+00|2|3"],
    )
    .await;
    // Partition 1 speaks again, behind the watermark: its row goes to the late table.
    let late = ev("00:00:50", 16);
    produce(&p, &topic, &[(1, None, Some(&late))]).await;
    // (The watermark it was behind is past 00:01:00, since that minute has closed.)
    wait_for(
        &c,
        "SELECT ts, value, _late_watermark >= TIMESTAMPTZ '2024-01-01 00:01:00+00' FROM tel_late",
        &["2024-01-01 00:00:50+00|16|t"],
    )
    .await;
    wait_for(&c, "SELECT n FROM tel_all", &["9"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_source_lets_its_last_window_close() {
    let topic = fresh_topic("quiet_meter");
    create_topic(&topic, 1).await;
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "SET TimeZone = 'UTC';
         CREATE SOURCE quiet (meter VARCHAR, ts TIMESTAMPTZ, kw DOUBLE PRECISION,
                              WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
         WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{b}',
               watermark.idle_timeout = '1s')
         FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW quiet_1m AS
           SELECT window_start, count(*) AS n FROM TUMBLE(quiet, ts, INTERVAL '1' MINUTE)
           GROUP BY window_start EMIT ON WINDOW CLOSE;",
        b = bootstrap()
    ))
    .await
    .unwrap();
    // Two readings a minute apart, then silence: without idleness the second minute
    // would stay open until the next reading; with it, the source's watermark follows
    // the wall clock once every partition has been quiet for a second.
    let p = producer();
    let ev = |ts: &str| format!(r#"{{"meter": "m", "ts": "2024-01-01T{ts}Z", "kw": 1}}"#);
    let (a, b) = (ev("00:00:30"), ev("00:01:30"));
    produce(&p, &topic, &[(0, None, Some(&a)), (0, None, Some(&b))]).await;
    wait_for(
        &c,
        "SELECT window_start, n FROM quiet_1m ORDER BY window_start",
        &["2024-01-01 00:00:00+00|1", "2024-01-01 00:01:00+00|1"],
    )
    .await;
}

/// `CREATE SINK ... AS query EMIT ON WINDOW CLOSE`: each window goes out once, final, when
/// the watermark passes its end, so a plain (append-only) format needs no forcing. The
/// same query without the clause would send every change of every open window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_emitting_on_window_close_sends_each_window_once_final() {
    let out = fresh_topic("per_minute");
    create_topic(&out, 1).await;
    let server = TestServer::start();
    let c = server.client().await;
    let b = bootstrap();
    c.batch_execute(&format!(
        "SET TimeZone = 'UTC';
         CREATE TABLE ev (meter VARCHAR, ts TIMESTAMPTZ, kw INT,
                          WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE SINK per_minute AS
           SELECT window_start, count(*) AS n, sum(kw) AS kw
           FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY window_start
           EMIT ON WINDOW CLOSE
           WITH (connector = 'kafka', topic = '{out}', properties.bootstrap.server = '{b}')
           FORMAT PLAIN ENCODE JSON;"
    ))
    .await
    .unwrap();
    // The first minute's rows arrive over several epochs; the last one closes it
    // (watermark 00:01:05), then one at 00:02:30 closes the second minute.
    for (ts, kw) in [
        ("00:00:10", 1),
        ("00:00:20", 2),
        ("00:00:50", 3),
        ("00:01:10", 10),
        ("00:01:20", 20),
        ("00:02:30", 100),
    ] {
        c.batch_execute(&format!(
            "INSERT INTO ev VALUES ('m1', TIMESTAMPTZ '2024-01-01 {ts}+00', {kw}); FLUSH;"
        ))
        .await
        .unwrap();
    }
    let records = consume_until(&out, |r| r.len() >= 2).await;
    let windows: Vec<(String, i64, i64)> = records
        .iter()
        .map(|(_, v)| {
            let v: serde_json::Value =
                serde_json::from_str(v.as_deref().expect("a value")).expect("JSON");
            (
                v["window_start"]
                    .as_str()
                    .expect("window_start")
                    .to_string(),
                v["n"].as_i64().expect("n"),
                v["kw"].as_i64().expect("kw"),
            )
        })
        .collect();
    assert_eq!(windows.len(), 2, "{records:?}");
    assert!(windows[0].0.contains("00:00:00"), "{windows:?}");
    assert_eq!((windows[0].1, windows[0].2), (3, 6), "{windows:?}");
    assert!(windows[1].0.contains("00:01:00"), "{windows:?}");
    assert_eq!((windows[1].1, windows[1].2), (2, 30), "{windows:?}");
}
