//! Kafka sinks: `CREATE SINK name FROM view | AS query WITH (connector = 'kafka', ...)
//! FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON`.
//!
//! A sink is planned as a materialized view whose changes the runtime writes to the sink
//! log (`strom_engine::sink_log`) in each epoch's commit instead of storing them. The
//! delivery task here reads the log in epoch order, sends each entry's records, waits until
//! the broker acknowledged every one, and only then deletes the entry. So every change is
//! delivered at least once; the producer is idempotent, so broker-side retries add no
//! duplicates, but a crash between the acknowledgement and the deletion sends that entry
//! again.
//!
//! With `delivery = 'exactly_once'` the task sends each batch of log entries in one Kafka
//! transaction, and in the same transaction commits the batch's last epoch as the offset
//! of a progress group (`TxnOffsetCommit`: it becomes visible only if the transaction
//! commits). After a crash the new producer's `init_transactions` fences and aborts the
//! old one's open transaction; the task then reads the group's committed offset and drops
//! the log entries the broker already has, so a `read_committed` consumer sees every
//! change exactly once. The transactional id and the group are both
//! `strom-sink-<token>-<sink id>`, where the token is a random number kept in the sink's
//! identity key (`sink_log::identity_key`).
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
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
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
    "delivery",
];

/// Whether a sink delivers with Kafka transactions (`delivery = 'exactly_once'`).
fn exactly_once(c: &ConnectorDef) -> Result<bool, String> {
    match opt(c, "delivery") {
        None | Some("at_least_once") => Ok(false),
        Some("exactly_once") => Ok(true),
        Some(v) => Err(format!(
            "option \"delivery\": \"{v}\" is not at_least_once or exactly_once"
        )),
    }
}

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
        Some("blackhole") => {
            // Changes are computed and dropped: nothing to configure.
            if let Some(k) = c.options.keys().find(|k| *k != "connector") {
                return Err(format!("unknown option \"{k}\" for a blackhole sink"));
            }
            if !c.format.is_empty() {
                return Err("a blackhole sink takes no FORMAT (nothing is encoded)".into());
            }
            return Ok(());
        }
        Some(other) => {
            return Err(format!(
                "unknown connector \"{other}\" (supported: kafka, blackhole)"
            ))
        }
        None => return Err("option \"connector\" is required".into()),
    }
    crate::check_kafka_options(c, OPTIONS, "a kafka sink")?;
    exactly_once(c)?;
    for set_by_strom in [
        "properties.transactional.id",
        "properties.enable.idempotence",
    ] {
        if c.options.contains_key(set_by_strom) {
            return Err(format!(
                "option \"{set_by_strom}\" is set by Strom for sinks: choose the delivery mode with delivery = 'at_least_once' | 'exactly_once'"
            ));
        }
    }
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
    txn.delete_raw(sink_log::identity_key(sink), None);
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
    let cols = columns(def);
    let types: Vec<DataType> = cols.iter().map(|(_, t)| t.clone()).collect();
    let schema: SchemaRef = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let pk = primary_key(def, c)?;
    let (lo, hi) = sink_log::range(def.id);
    let mut cfg = crate::librdkafka_config(c);
    cfg.set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    if !c.options.contains_key("properties.transaction.timeout.ms") {
        // Room for large batches (librdkafka's default is 60 s).
        cfg.set("transaction.timeout.ms", "300000");
    }
    // librdkafka clients block while they are dropped (flush, thread joins): drop them
    // off the async threads, whichever way this attempt ends.
    let mut clients = BlockingDrop(None);
    let txn = if exactly_once(c)? {
        Some(Transactions::start(db, def, c, &mut cfg, &topic).await?)
    } else {
        None
    };
    let producer: FutureProducer = match &txn {
        Some(t) => t.producer.clone(),
        None => cfg
            .create()
            .map_err(|e| format!("cannot create a Kafka producer: {e}"))?,
    };
    clients.0 = Some((txn, producer.clone()));
    let txn = &clients.0.as_ref().expect("just set").0;
    while !stop.load(Ordering::Relaxed) {
        let entries = db
            .snapshot()
            .scan(&lo, &hi, 64)
            .map_err(|e| e.to_string())?;
        if entries.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // Deliver only what is durable: after a power loss the store comes back at its
        // last synced epoch, and the broker must not hold epochs the store forgot.
        {
            let db = Arc::clone(db);
            tokio::task::spawn_blocking(move || db.store().sync_wal())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let last = entries.last().expect("not empty").0.to_vec();
        if let Some(t) = &txn {
            producer
                .begin_transaction()
                .map_err(|e| format!("cannot begin a Kafka transaction: {e}"))?;
            let epoch = sink_log::epoch_of(&last).expect("a log key");
            let sent = send(&producer, &topic, c, &schema, &types, &pk, &entries).await;
            let sent = match sent {
                Ok(sent) => {
                    test_pause().await;
                    t.commit(epoch).await.map(|()| sent)
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(sent) => {
                    status.add(sent, 0);
                    test_pause().await;
                }
                Err(e) => {
                    // Best effort: the next producer's init_transactions aborts it anyway.
                    let p = producer.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        p.abort_transaction(Duration::from_secs(10))
                    })
                    .await;
                    return Err(e);
                }
            }
        } else {
            let sent = send(&producer, &topic, c, &schema, &types, &pk, &entries).await?;
            status.add(sent, 0);
        }
        // Everything in these entries is acknowledged (or committed): forget them.
        forget_through(db, def.id, &last).await?;
    }
    Ok(())
}

/// A failpoint for crash tests: with `STROM_TEST_SINK_PAUSE_MS` set, an exactly-once sink
/// waits that long before committing each transaction (its records are in the broker,
/// undecided) and again after committing (before trimming its log), so a test can kill
/// the server inside either window.
async fn test_pause() {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("STROM_TEST_SINK_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(d) = pause {
        tokio::time::sleep(*d).await;
    }
}

/// Deletes a sink's log entries up to and including the key `last`.
async fn forget_through(db: &Database, sink: TableId, last: &[u8]) -> Result<(), String> {
    let (lo, hi) = sink_log::range(sink);
    let mut txn = db.begin_write().await;
    txn.delete_raw(
        lo,
        Some(strom_engine::keys::prefix_successor(last).unwrap_or(hi)),
    );
    txn.commit().map(drop).map_err(|e| e.to_string())
}

/// Sends the records of log entries and waits until the broker acknowledged each one;
/// returns how many were sent.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    c: &ConnectorDef,
    schema: &SchemaRef,
    types: &[DataType],
    pk: &[usize],
    entries: &[strom_engine::store::KvPair],
) -> Result<u64, String> {
    let mut acks = Vec::new();
    let mut sent = 0u64;
    for (_, value) in entries {
        let changes = sink_log::decode(value, types).map_err(|e| e.to_string())?;
        for (key, value) in records(c, schema, pk, &changes)? {
            let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(topic);
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
                            await_ack(ack, topic).await?;
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
        await_ack(ack, topic).await?;
    }
    Ok(sent)
}

/// Drops librdkafka clients on a blocking thread.
struct BlockingDrop(Option<(Option<Transactions>, FutureProducer)>);

impl Drop for BlockingDrop {
    fn drop(&mut self) {
        if let Some(clients) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(clients));
        }
    }
}

/// An exactly-once sink's transactional producer and progress group.
struct Transactions {
    producer: FutureProducer,
    /// Holds the progress group's metadata for `send_offsets_to_transaction`.
    group: BaseConsumer,
    topic: String,
}

impl Transactions {
    /// Makes the transactional producer (fencing and aborting any earlier one's open
    /// transaction), then drops the log entries the broker already committed.
    async fn start(
        db: &Arc<Database>,
        def: &TableDef,
        c: &ConnectorDef,
        cfg: &mut ClientConfig,
        topic: &str,
    ) -> Result<Transactions, String> {
        let name = format!(
            "strom-sink-{:016x}-{}",
            identity(db, def.id).await?,
            def.id.0
        );
        cfg.set("transactional.id", &name);
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
        let mut group_cfg = crate::librdkafka_config(c);
        group_cfg
            .set("group.id", &name)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let group: BaseConsumer = group_cfg
            .create()
            .map_err(|e| format!("cannot create a Kafka consumer for the sink's progress: {e}"))?;
        let topic = topic.to_string();
        let (producer, group, committed) = tokio::task::spawn_blocking(move || {
            producer
                .init_transactions(Duration::from_secs(30))
                .map_err(|e| format!("cannot start Kafka transactions: {e}"))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            let committed = group
                .committed_offsets(tpl, Duration::from_secs(30))
                .map_err(|e| format!("cannot read the sink's committed progress: {e}"))?;
            let next = match committed.find_partition(&topic, 0) {
                Some(p) => {
                    // An error here is not "nothing delivered": reading on would send
                    // the broker's epochs again.
                    p.error()
                        .map_err(|e| format!("cannot read the sink's committed progress: {e}"))?;
                    match p.offset() {
                        Offset::Offset(n) if n > 0 => Some(n as u64),
                        _ => None,
                    }
                }
                None => None,
            };
            Ok::<_, String>((producer, group, next))
        })
        .await
        .map_err(|e| e.to_string())??;
        // The progress offset is the epoch after the last one delivered.
        if let Some(next) = committed {
            forget_through(db, def.id, &sink_log::key(def.id, next - 1)).await?;
        }
        Ok(Transactions {
            producer,
            group,
            topic: topic_of(c),
        })
    }

    /// Commits the open transaction with `epoch` as the last delivered one.
    async fn commit(&self, epoch: u64) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(epoch as i64 + 1))
            .map_err(|e| e.to_string())?;
        let meta = self
            .group
            .group_metadata()
            .ok_or("the sink's progress group has no metadata")?;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .send_offsets_to_transaction(&tpl, &meta, Duration::from_secs(30))
                .map_err(|e| format!("cannot add the sink's progress to the transaction: {e}"))?;
            producer
                .commit_transaction(Duration::from_secs(60))
                .map_err(|e| format!("cannot commit the Kafka transaction: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

fn topic_of(c: &ConnectorDef) -> String {
    opt(c, "topic").unwrap_or_default().to_string()
}

/// A new sink's identity entry (key and token), written in its `CREATE SINK` transaction.
pub fn new_identity(sink: TableId) -> (Vec<u8>, Vec<u8>) {
    (
        sink_log::identity_key(sink),
        random_token().to_be_bytes().to_vec(),
    )
}

fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The sink's identity token (made with the sink; made on first use for a sink created
/// before that).
async fn identity(db: &Database, sink: TableId) -> Result<u64, String> {
    let key = sink_log::identity_key(sink);
    if let Some(v) = db.snapshot().get(&key).map_err(|e| e.to_string())? {
        // A fresh token would lose the sink's progress in the broker: refuse instead.
        return <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| "the sink's identity token is corrupt".to_string());
    }
    let token = random_token();
    let mut txn = db.begin_write().await;
    txn.put_raw(key, token.to_be_bytes().to_vec());
    txn.commit().map_err(|e| e.to_string())?;
    Ok(token)
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
