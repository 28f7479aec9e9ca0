//! Kafka sinks: `CREATE SINK name FROM view | AS query WITH (connector = 'kafka', ...)
//! FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON`.
//!
//! A sink is planned as a materialized view whose changes the runtime writes to the sink
//! log (`strom_engine::sink_log`) in each epoch's commit instead of storing them. The
//! delivery task here reads the log in epoch order, sends each entry's records, waits until
//! the broker acknowledged every one, and only then deletes the entry. So every change is
//! delivered at least once; the producer is idempotent, so broker-side retries add no
//! duplicates, but a crash between the acknowledgement and the deletion sends that entry
//! again (`exactly_once` with Kafka transactions is not built yet).
//!
//! Records, per format (JSON rows are objects keyed by column name):
//! - `PLAIN`: one record per inserted row. Only append-only queries, unless
//!   `force_append_only = 'true'`, which drops deletes and sends updates as new rows.
//! - `UPSERT`: key = the `primary_key` columns as a JSON object; value = the row, or no
//!   value (a tombstone) when the key's row was deleted. Within an epoch only the last
//!   state of each key is sent.
//! - `DEBEZIUM`: `{"before": ..., "after": ..., "op": "c" | "u" | "d", "ts_ms": ...}`; an
//!   update pair becomes one `u` event; key as for `UPSERT` when `primary_key` is given.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strom_catalog::{ConnectorDef, TableDef, TableId};
use strom_engine::stream::chunk::Op;
use strom_engine::{sink_log, Database, WriteTxn};

use crate::{SourceStatus, Stop};

const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "properties.bootstrap.server",
    "primary_key",
    "force_append_only",
];

fn opt<'a>(c: &'a ConnectorDef, name: &str) -> Option<&'a str> {
    c.options.get(name).map(String::as_str)
}

/// The sink's visible columns (a view's stored columns end with the hidden count).
fn columns(def: &TableDef) -> Vec<(String, DataType)> {
    def.visible_columns()
        .map(|(_, c)| (c.name.clone(), c.ty.to_arrow()))
        .collect()
}

fn primary_key(def: &TableDef, c: &ConnectorDef) -> Result<Vec<usize>, String> {
    let Some(pk) = opt(c, "primary_key") else {
        return Ok(Vec::new());
    };
    let cols = columns(def);
    pk.split(',')
        .map(|name| {
            let name = name.trim().to_lowercase();
            cols.iter()
                .position(|(n, _)| *n == name)
                .ok_or_else(|| format!("option \"primary_key\": the sink has no column \"{name}\""))
        })
        .collect()
}

/// Checks a sink declaration (`append_only`: the query only ever inserts).
pub fn validate(def: &TableDef, append_only: bool) -> Result<(), String> {
    let c = def.connector.as_ref().ok_or("not a sink")?;
    match opt(c, "connector") {
        Some("kafka") => {}
        Some(other) => return Err(format!("unknown connector \"{other}\" (supported: kafka)")),
        None => return Err("option \"connector\" is required".into()),
    }
    crate::check_kafka_options(c, OPTIONS, "a kafka sink")?;
    let force = match opt(c, "force_append_only") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(format!(
                "option \"force_append_only\": \"{v}\" is not true or false"
            ))
        }
    };
    let pk = primary_key(def, c)?;
    match (c.format.as_str(), c.encode.as_str()) {
        ("", _) => return Err("a sink needs FORMAT ... ENCODE JSON".into()),
        ("PLAIN", "JSON") => {
            if !append_only && !force {
                return Err("FORMAT PLAIN needs an append-only query, and this one can update or delete rows: use FORMAT UPSERT (with primary_key) or FORMAT DEBEZIUM, or set force_append_only = 'true'".into());
            }
        }
        ("UPSERT", "JSON") => {
            if pk.is_empty() {
                return Err("FORMAT UPSERT needs option \"primary_key\" (the columns that key the records)".into());
            }
        }
        ("DEBEZIUM", "JSON") => {}
        (f, e) => {
            return Err(format!(
                "FORMAT {f} ENCODE {e} is not supported for sinks (supported: PLAIN, UPSERT, DEBEZIUM with ENCODE JSON)"
            ))
        }
    }
    if let Some(k) = c.encode_options.keys().next() {
        return Err(format!("unknown ENCODE {} option \"{k}\"", c.encode));
    }
    Ok(())
}

/// Stages the removal of a sink's undelivered log (DROP SINK).
pub fn stage_forget(txn: &mut WriteTxn<'_>, sink: TableId) {
    let (lo, hi) = sink_log::range(sink);
    txn.delete_raw(lo, Some(hi));
}

/// JSON object texts of the columns `cols` of each change's row, as arrow-json writes them
/// (numbers as numbers, decimals with all their digits, timestamps as ISO 8601 strings,
/// NULLs as `null`); `schema` describes the row.
fn json_lines(
    schema: &SchemaRef,
    changes: &[(Op, Vec<ScalarValue>)],
    cols: &[usize],
) -> Result<Vec<String>, String> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let schema: SchemaRef = Arc::new(schema.project(cols).map_err(|e| e.to_string())?);
    let columns = cols
        .iter()
        .map(|&c| ScalarValue::iter_to_array(changes.iter().map(|(_, r)| r[c].clone())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let batch = RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(&batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let text = String::from_utf8(buf).map_err(|e| e.to_string())?;
    Ok(text.lines().map(str::to_string).collect())
}

/// One Kafka record: key and value (`None`: a tombstone).
type Record = (Option<String>, Option<String>);

/// The records of one epoch's changes.
fn records(
    c: &ConnectorDef,
    schema: &SchemaRef,
    pk: &[usize],
    changes: &[(Op, Vec<ScalarValue>)],
) -> Result<Vec<Record>, String> {
    let all: Vec<usize> = (0..schema.fields().len()).collect();
    let values = json_lines(schema, changes, &all)?;
    let keys: Vec<Option<String>> = if pk.is_empty() {
        vec![None; changes.len()]
    } else {
        json_lines(schema, changes, pk)?
            .into_iter()
            .map(Some)
            .collect()
    };
    let mut out = Vec::new();
    match c.format.as_str() {
        "PLAIN" => {
            for (((op, _), key), value) in changes.iter().zip(keys).zip(values) {
                if op.sign() > 0 {
                    out.push((key, Some(value)));
                }
            }
        }
        "UPSERT" => {
            // The last state of each key, in the order keys first changed.
            let mut last: HashMap<String, Option<String>> = HashMap::new();
            let mut order = Vec::new();
            for (((op, _), key), value) in changes.iter().zip(keys).zip(values) {
                let key = key.expect("validated: UPSERT has a key");
                if !last.contains_key(&key) {
                    order.push(key.clone());
                }
                last.insert(key, (op.sign() > 0).then_some(value));
            }
            for key in order {
                let value = last.remove(&key).flatten();
                out.push((Some(key), value));
            }
        }
        _ => {
            // DEBEZIUM
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default();
            let event = |before: &str, after: &str, op: &str| {
                format!(r#"{{"before":{before},"after":{after},"op":"{op}","ts_ms":{now}}}"#)
            };
            let mut pending_before: Option<String> = None;
            for (((op, _), key), value) in changes.iter().zip(keys).zip(values) {
                match op {
                    Op::UpdateDelete => pending_before = Some(value),
                    Op::UpdateInsert => match pending_before.take() {
                        Some(b) => out.push((key, Some(event(&b, &value, "u")))),
                        None => out.push((key, Some(event("null", &value, "c")))),
                    },
                    Op::Insert => out.push((key, Some(event("null", &value, "c")))),
                    Op::Delete => out.push((key, Some(event(&value, "null", "d")))),
                }
            }
            if let Some(b) = pending_before {
                out.push((None, Some(event(&b, "null", "d"))));
            }
        }
    }
    Ok(out)
}

/// Delivers one sink's log until stopped, retrying after errors.
pub async fn run(db: Arc<Database>, def: Arc<TableDef>, stop: Stop, status: Arc<SourceStatus>) {
    let what = format!("sink \"{}\"", def.name);
    crate::retry_until_stopped(&what, &stop, &status, || {
        run_once(&db, &def, &stop, &status)
    })
    .await
}

async fn run_once(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    stop: &Stop,
    status: &Arc<SourceStatus>,
) -> Result<(), String> {
    let c = def.connector.as_ref().expect("a sink");
    let topic = opt(c, "topic").unwrap_or_default().to_string();
    let mut cfg = crate::librdkafka_config(c);
    cfg.set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    let producer: FutureProducer = cfg
        .create()
        .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
    let cols = columns(def);
    let types: Vec<DataType> = cols.iter().map(|(_, t)| t.clone()).collect();
    let schema: SchemaRef = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let pk = primary_key(def, c)?;
    let (lo, hi) = sink_log::range(def.id);
    while !stop.load(Ordering::Relaxed) {
        let entries = db
            .snapshot()
            .scan(&lo, &hi, 64)
            .map_err(|e| e.to_string())?;
        if entries.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut acks = Vec::new();
        let mut sent = 0u64;
        for (_, value) in &entries {
            let changes = sink_log::decode(value, &types).map_err(|e| e.to_string())?;
            for (key, value) in records(c, &schema, &pk, &changes)? {
                let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(&topic);
                if let Some(k) = &key {
                    rec = rec.key(k);
                }
                if let Some(v) = &value {
                    rec = rec.payload(v);
                }
                loop {
                    match producer.send_result(rec) {
                        Ok(ack) => {
                            acks.push(ack);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            // The producer's queue is full: wait for what is in flight.
                            for ack in acks.drain(..) {
                                await_ack(ack, &topic).await?;
                            }
                            rec = back;
                        }
                        Err((e, _)) => {
                            return Err(format!("cannot queue a record for \"{topic}\": {e}"))
                        }
                    }
                }
                sent += 1;
            }
        }
        for ack in acks {
            await_ack(ack, &topic).await?;
        }
        // Everything in these entries is acknowledged: forget them.
        let last = entries.last().expect("not empty").0.to_vec();
        let mut txn = db.begin_write().await;
        txn.delete_raw(
            lo.clone(),
            Some(strom_engine::keys::prefix_successor(&last).unwrap_or(hi.clone())),
        );
        txn.commit().map_err(|e| e.to_string())?;
        status.add(sent, 0);
    }
    Ok(())
}

async fn await_ack(ack: rdkafka::producer::DeliveryFuture, topic: &str) -> Result<(), String> {
    match ack.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(format!("delivery to \"{topic}\" failed: {e}")),
        Err(_) => Err(format!("delivery to \"{topic}\" was cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(format: &str, pk: Option<&str>) -> ConnectorDef {
        let mut options = std::collections::BTreeMap::new();
        if let Some(pk) = pk {
            options.insert("primary_key".to_string(), pk.to_string());
        }
        ConnectorDef {
            is_source: false,
            is_sink: true,
            options,
            format: format.into(),
            encode: "JSON".into(),
            encode_options: Default::default(),
            includes: vec![],
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("feeder", DataType::Utf8, true),
            Field::new("kw", DataType::Float64, true),
        ]))
    }

    fn row(f: &str, kw: f64) -> Vec<ScalarValue> {
        vec![ScalarValue::from(f), ScalarValue::Float64(Some(kw))]
    }

    #[test]
    fn upsert_sends_the_last_state_of_each_key() {
        let changes = vec![
            (Op::Insert, row("F1", 1.0)),
            (Op::Insert, row("F2", 2.0)),
            (Op::UpdateDelete, row("F1", 1.0)),
            (Op::UpdateInsert, row("F1", 3.0)),
            (Op::Delete, row("F2", 2.0)),
        ];
        let recs = records(&conn("UPSERT", Some("feeder")), &schema(), &[0], &changes).unwrap();
        assert_eq!(
            recs,
            vec![
                (
                    Some(r#"{"feeder":"F1"}"#.into()),
                    Some(r#"{"feeder":"F1","kw":3.0}"#.into())
                ),
                (Some(r#"{"feeder":"F2"}"#.into()), None),
            ]
        );
    }

    #[test]
    fn debezium_pairs_updates() {
        let changes = vec![
            (Op::UpdateDelete, row("F1", 1.0)),
            (Op::UpdateInsert, row("F1", 3.0)),
            (Op::Delete, row("F2", 2.0)),
        ];
        let recs = records(&conn("DEBEZIUM", None), &schema(), &[], &changes).unwrap();
        let ops: Vec<serde_json::Value> = recs
            .iter()
            .map(|(_, v)| serde_json::from_str(v.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(ops[0]["op"], "u");
        assert_eq!(ops[0]["before"]["kw"], 1.0);
        assert_eq!(ops[0]["after"]["kw"], 3.0);
        assert_eq!(ops[1]["op"], "d");
        assert_eq!(ops[1]["after"], serde_json::Value::Null);
    }
}
