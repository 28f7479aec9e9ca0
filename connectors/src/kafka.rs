//! Kafka sources and tables: options, and the ingest loop of one source.
//!
//! A source reads every partition of its topic by explicit assignment (no consumer-group
//! rebalancing; Strom keeps the offsets). Each poll of up to [`MAX_POLL_ROWS`] messages
//! (or [`POLL_WINDOW`] of waiting) becomes one write transaction holding the rows (stored
//! for a table, handed to the views for a source), the rejected messages, and every
//! partition's next offset. Views consume that transaction's change-log entry in an epoch
//! that commits atomically with their state, so after a crash the source resumes at the
//! committed offsets and every message reaches the views exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use datafusion::common::ScalarValue;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use strom_catalog::{ConnectorDef, SqlType, TableDef};
use strom_engine::Database;

use crate::cdc;
use crate::decode::{CsvDecoder, Decoded, JsonDecoder, PayloadDecoder};
use crate::errors::{self, Rejected};
use crate::{SourceStatus, Stop};

/// Most messages in one transaction.
pub const MAX_POLL_ROWS: usize = 8192;
/// Longest wait for more messages before writing what arrived.
pub const POLL_WINDOW: Duration = Duration::from_millis(20);
/// How often the topic list is read again for new topics and partitions.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(2);
/// Change-log entries the views may lag behind before the source waits for them.
const MAX_PENDING_ENTRIES: usize = 16;

const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "properties.bootstrap.server",
    "scan.startup.mode",
    "source_rate_limit",
    "watermark.idle_timeout",
];

/// A duration option: `500ms`, `30s`, `5m`, `1h`, or a number of seconds (one parser for
/// every connector option).
pub use strom_engine::lookup::parse_duration;

/// What a source knows of one partition for its watermark.
#[derive(Debug, Clone)]
struct PartitionState {
    /// The largest watermark expression value of its committed rows.
    watermark: Option<ScalarValue>,
    /// When it last had a message (or was found).
    last_message: Instant,
    /// When its reader last polled.
    polled: Option<Instant>,
    /// Its reader polled and found nothing after its last message: it has no backlog.
    caught_up: bool,
}

/// Per source, each partition's state. Shared by the source's readers.
type PartitionWatermarks = HashMap<(String, i32), PartitionState>;

fn partition_watermarks() -> &'static Mutex<HashMap<strom_catalog::TableId, PartitionWatermarks>> {
    static MAP: OnceLock<Mutex<HashMap<strom_catalog::TableId, PartitionWatermarks>>> =
        OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// Forgets a dropped source's partition watermarks.
pub fn forget_watermarks(source: strom_catalog::TableId) {
    partition_watermarks()
        .lock()
        .expect("invariant: watermark map lock is never poisoned")
        .remove(&source);
}

/// Registers every partition of the source, whichever reader owns it (a partition without
/// rows yet holds the watermark back until it is idle; registering all of them at listing
/// keeps a fast reader from moving the watermark past a partition another reader has not
/// read yet).
fn register_partitions(def: &TableDef, partitions: &[(String, i32)]) {
    if def.watermark.is_none() {
        return;
    }
    let mut map = partition_watermarks()
        .lock()
        .expect("invariant: watermark map lock is never poisoned");
    let parts = map.entry(def.id).or_default();
    let now = Instant::now();
    for p in partitions {
        parts.entry(p.clone()).or_insert(PartitionState {
            watermark: None,
            last_message: now,
            polled: None,
            caught_up: false,
        });
    }
}

/// A reader polled its `partitions` until the poll window ended (`timed_out`) or it had
/// enough rows; `with_messages` had a message in it. A partition without a message in a
/// poll that waited the whole window has nothing to read: no backlog.
fn note_poll(
    def: &TableDef,
    partitions: &BTreeSet<(String, i32)>,
    with_messages: &BTreeSet<(String, i32)>,
    timed_out: bool,
) {
    if def.watermark.is_none() {
        return;
    }
    let mut map = partition_watermarks()
        .lock()
        .expect("invariant: watermark map lock is never poisoned");
    let Some(parts) = map.get_mut(&def.id) else {
        return;
    };
    let now = Instant::now();
    for p in partitions {
        if let Some(state) = parts.get_mut(p) {
            state.polled = Some(now);
            if timed_out && !with_messages.contains(p) {
                state.caught_up = true;
            }
        }
    }
}

/// Whether a partition no longer holds the watermark back: no message for `idle_timeout`,
/// and its reader is polling and found it empty since (a partition whose reader is stuck,
/// throttled or behind is not idle: its backlog would become late).
fn is_idle(state: &PartitionState, idle_timeout: Option<Duration>) -> bool {
    let Some(t) = idle_timeout else {
        return false;
    };
    state.caught_up
        && state.last_message.elapsed() > t
        && state.polled.is_some_and(|p| p.elapsed() <= t)
}

/// When every partition of a source has been idle (see [`is_idle`]) the whole source is:
/// its watermark then follows the wall clock, `now - idle_timeout`, so the windows of a
/// quiet source close, and a quiet source does not hold back the windows it is unioned or
/// joined with. A row it sends later behind that watermark is late, judged at the source,
/// so no closed window ever changes. Only for timestamp watermark columns.
async fn advance_idle_source(
    db: &Arc<Database>,
    def: &TableDef,
    idle_timeout: Option<Duration>,
) -> Result<(), String> {
    let (Some(t), Some(wm)) = (idle_timeout, &def.watermark) else {
        return Ok(());
    };
    let all_idle = {
        let map = partition_watermarks()
            .lock()
            .expect("invariant: watermark map lock is never poisoned");
        map.get(&def.id).is_some_and(|parts| {
            !parts.is_empty() && parts.values().all(|p| is_idle(p, idle_timeout))
        })
    };
    if !all_idle {
        return Ok(());
    }
    let now = strom_engine::clock::now_micros().saturating_sub(t.as_micros() as i64);
    let value = match def.columns[wm.column].ty.to_arrow() {
        arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz) => {
            ScalarValue::TimestampMicrosecond(Some(now), tz)
        }
        _ => return Ok(()),
    };
    if db
        .watermark(def)
        .map_err(|e| e.to_string())?
        .is_some_and(|w| w.partial_cmp(&value) != Some(std::cmp::Ordering::Less))
    {
        return Ok(());
    }
    let mut txn = db.begin_write().await;
    if txn.catalog().table(def.id).is_none() {
        return Ok(());
    }
    txn.set_watermark(def.id, Some(value));
    txn.commit().map_err(|e| e.to_string())?;
    Ok(())
}

/// The source's watermark: the smallest partition watermark among the partitions that
/// are not idle, with `batch` (this transaction's per-partition maxima) merged in; `None`
/// while such a partition has no rows yet. An idle partition stops holding the watermark
/// back, so one quiet device or partition does not stall every window; when it speaks
/// again its rows are judged against the watermark the others moved.
fn source_watermark(
    parts: &PartitionWatermarks,
    batch: &HashMap<(String, i32), Option<ScalarValue>>,
    idle_timeout: Option<Duration>,
) -> Option<ScalarValue> {
    let mut min: Option<ScalarValue> = None;
    for (key, state) in parts {
        let in_batch = batch.get(key);
        if in_batch.is_none() && is_idle(state, idle_timeout) {
            continue;
        }
        let wm = strom_engine::watermark::max(state.watermark.clone(), in_batch.cloned().flatten());
        // An active partition without rows yet: nothing is known about its times.
        let wm = wm?;
        if min
            .as_ref()
            .is_none_or(|m| wm.partial_cmp(m) == Some(std::cmp::Ordering::Less))
        {
            min = Some(wm);
        }
    }
    min
}

fn opt<'a>(c: &'a ConnectorDef, name: &str) -> Option<&'a str> {
    c.options.get(name).map(String::as_str)
}

/// Checks a Kafka connector declaration; the error names the option at fault.
pub fn validate(def: &TableDef, c: &ConnectorDef) -> Result<(), String> {
    crate::check_kafka_options(c, OPTIONS, "connector kafka")?;
    match opt(c, "scan.startup.mode") {
        None | Some("earliest") | Some("latest") => {}
        Some(other) => {
            return Err(format!(
                "option \"scan.startup.mode\": \"{other}\" is not earliest or latest"
            ))
        }
    }
    if let Some(t) = opt(c, "watermark.idle_timeout") {
        if def.watermark.is_none() {
            return Err("option \"watermark.idle_timeout\" needs a WATERMARK FOR clause".into());
        }
        if parse_duration(t).is_none() {
            return Err(format!(
                "option \"watermark.idle_timeout\": \"{t}\" is not a duration (like 500ms, 30s, 5m)"
            ));
        }
    }
    if let Some(r) = opt(c, "source_rate_limit") {
        if r.parse::<u64>().is_err() {
            return Err(format!(
                "option \"source_rate_limit\": \"{r}\" is not a number of rows per second"
            ));
        }
    }
    for inc in &c.includes {
        const KAFKA: &[&str] = &[
            "key",
            "partition",
            "offset",
            "timestamp",
            "topic",
            "header",
            "topic_system",
            "topic_domain",
            "topic_datatype",
            "topic_company1",
            "topic_company2",
            "topic_ok",
        ];
        if !KAFKA.contains(&inc.kind.as_str()) {
            return Err(format!(
                "connector kafka cannot INCLUDE {} (it includes {})",
                inc.kind,
                KAFKA.join(", ")
            ));
        }
    }
    if c.is_source && def.has_declared_pk() {
        return Err("a source cannot have a PRIMARY KEY (its rows are not stored, so a key cannot replace earlier rows): use CREATE TABLE".into());
    }
    for (_, col) in def.visible_columns() {
        if c.includes
            .iter()
            .any(|i| def.columns[i.column].name == col.name)
        {
            continue;
        }
        let decodable = match col.ty {
            SqlType::Interval | SqlType::Bytea => false,
            SqlType::Array(_) => c.encode == "JSON",
            _ => true,
        };
        if !decodable {
            return Err(format!(
                "column \"{}\" of type {} cannot be read from ENCODE {} yet",
                col.name, col.ty, c.encode
            ));
        }
    }
    match (c.format.as_str(), c.encode.as_str()) {
        ("", _) => return Err("a kafka source needs FORMAT ... ENCODE ...".into()),
        ("PLAIN", "JSON") | ("PLAIN", "CSV") => {}
        (f @ ("UPSERT" | "DEBEZIUM" | "CANAL" | "MAXWELL"), "JSON") => {
            if c.is_source {
                return Err(format!("FORMAT {f} needs a table (CREATE TABLE ... PRIMARY KEY), not a source: updates and deletes need stored rows"));
            }
            if !def.has_declared_pk() {
                return Err(format!("FORMAT {f} needs a PRIMARY KEY: messages replace and delete rows by key"));
            }
        }
        (f, e) => {
            return Err(format!(
                "FORMAT {f} ENCODE {e} is not supported yet (supported: PLAIN JSON, PLAIN CSV, UPSERT JSON, DEBEZIUM JSON, CANAL JSON, MAXWELL JSON)"
            ))
        }
    }
    for (k, v) in &c.encode_options {
        match (c.encode.as_str(), k.as_str()) {
            ("CSV", "delimiter") if csv_delimiter(v).is_some() => {}
            ("CSV", "delimiter") => {
                return Err(format!(
                    "ENCODE CSV option \"delimiter\": \"{v}\" is not one character"
                ))
            }
            ("CSV", "without_header") if v == "true" || v == "false" => {}
            ("CSV", "without_header") => {
                return Err(format!(
                    "ENCODE CSV option \"without_header\": \"{v}\" is not true or false"
                ))
            }
            (e, k) => return Err(format!("unknown ENCODE {e} option \"{k}\"")),
        }
    }
    Ok(())
}

/// A message, copied out of the consumer.
struct Msg {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Which partitions one of a source's readers owns: those whose (topic, partition) hash
/// to `worker` modulo `workers`. Each reader has its own consumer, decodes its polls and
/// commits its own transactions; their partitions (and so their offsets) are disjoint.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub worker: usize,
    pub workers: usize,
}

impl Share {
    fn owns(&self, topic: &str, partition: i32) -> bool {
        // FNV-1a: stable across runs and builds.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in topic.bytes().chain(partition.to_be_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        (h % self.workers.max(1) as u64) as usize == self.worker
    }
}

/// Runs one reader of a source until stopped, reconnecting after errors.
pub async fn run(
    db: Arc<Database>,
    def: Arc<TableDef>,
    stop: Stop,
    status: Arc<SourceStatus>,
    share: Share,
) {
    let what = format!("source \"{}\"", def.name);
    crate::retry_until_stopped(&what, &stop, &status, || {
        run_once(&db, &def, &stop, &status, share)
    })
    .await
}

fn client_config(def: &TableDef, c: &ConnectorDef, share: Share) -> ClientConfig {
    let mut cfg = crate::librdkafka_config(c);
    // An offset that no longer exists (retention, a recreated topic) restarts at the
    // oldest message kept, not past everything (librdkafka's default), unless the
    // options say otherwise.
    if !c.options.contains_key("properties.auto.offset.reset") {
        cfg.set("auto.offset.reset", "earliest");
    }
    cfg.set(
        "group.id",
        format!("strom-source-{}-{}", def.id.0, share.worker),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("enable.partition.eof", "false");
    cfg
}

async fn run_once(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    stop: &Stop,
    status: &Arc<SourceStatus>,
    share: Share,
) -> Result<(), String> {
    let c = def.connector.as_ref().expect("a connector table");
    let topic = opt(c, "topic").unwrap_or_default().to_string();
    let consumer: StreamConsumer = client_config(def, c, share)
        .create()
        .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
    let consumer = Arc::new(consumer);
    let latest = opt(c, "scan.startup.mode") == Some("latest");
    let mut assigned = Assigned {
        share,
        set: BTreeSet::new(),
    };
    assign_new(db, def, &consumer, &topic, latest, &mut assigned, status).await?;
    let mut last_listing = Instant::now();
    // Partitions found later are new: they are read from their beginning.
    // Each reader takes its share of the rate limit.
    let rate: Option<u64> = opt(c, "source_rate_limit")
        .and_then(|r| r.parse::<u64>().ok())
        .map(|r| r.div_ceil(share.workers.max(1) as u64));
    let decoder = payload_decoder(def);
    // Copy keys and headers out of messages only when something reads them.
    let want_key = c.format == "UPSERT" || c.includes.iter().any(|i| i.kind == "key");
    let want_headers = c.includes.iter().any(|i| i.kind == "header");
    let mut last_topic: Arc<str> = Arc::from("");
    let started = Instant::now();
    let mut sent: u64 = 0;
    let idle_timeout = opt(c, "watermark.idle_timeout").and_then(parse_duration);
    let mut last_idle_advance = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // New topics matching the pattern, and new partitions, join while running.
        if last_listing.elapsed() >= RELIST_INTERVAL {
            assign_new(db, def, &consumer, &topic, false, &mut assigned, status).await?;
            last_listing = Instant::now();
        }
        if assigned.set.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Backpressure: wait while the views are behind.
        while db.pending_changes() > MAX_PENDING_ENTRIES && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let max_rows = match rate {
            Some(0) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Some(r) => {
                // Stay within `r` rows per second since the start.
                let allowed = (started.elapsed().as_secs_f64() * r as f64) as u64 + r / 50 + 1;
                if allowed <= sent {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                ((allowed - sent) as usize).min(MAX_POLL_ROWS)
            }
            None => MAX_POLL_ROWS,
        };
        let mut msgs = Vec::new();
        let deadline = tokio::time::Instant::now() + POLL_WINDOW;
        while msgs.len() < max_rows {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(format!("reading topic \"{topic}\": {e}")),
                Ok(Ok(m)) => {
                    if m.topic() != &*last_topic {
                        last_topic = Arc::from(m.topic());
                    }
                    msgs.push(Msg {
                        topic: Arc::clone(&last_topic),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: want_key.then(|| m.key().map(<[u8]>::to_vec)).flatten(),
                        payload: m.payload().map(<[u8]>::to_vec),
                        timestamp_ms: m.timestamp().to_millis(),
                        headers: match m.headers() {
                            Some(h) if want_headers => h
                                .iter()
                                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                .collect(),
                            _ => Vec::new(),
                        },
                    })
                }
            }
        }
        if def.watermark.is_some() {
            let with_messages: BTreeSet<(String, i32)> = msgs
                .iter()
                .map(|m| (m.topic.to_string(), m.partition))
                .collect();
            note_poll(def, &assigned.set, &with_messages, msgs.len() < max_rows);
        }
        if msgs.is_empty() {
            if idle_timeout.is_some() && last_idle_advance.elapsed() >= Duration::from_secs(1) {
                last_idle_advance = Instant::now();
                advance_idle_source(db, def, idle_timeout).await?;
            }
            continue;
        }
        sent += msgs.len() as u64;
        write(db, def, &decoder, msgs, status).await?;
    }
    Ok(())
}

/// The decoder of a table's payload columns (declared columns, not metadata or hidden).
/// `NOT NULL` payload columns are required there (for whole-row formats); [`check_row`]
/// checks every stored row once metadata is filled in.
fn payload_decoder(def: &TableDef) -> PayloadDecoder {
    let c = def.connector.as_ref().expect("a connector table");
    let cols = payload_columns(def);
    let fields: Vec<Field> = cols
        .iter()
        .map(|&i| Field::new(&def.columns[i].name, def.columns[i].ty.to_arrow(), true))
        .collect();
    // CDC delete images may hold only the key, so only PLAIN and UPSERT payloads (always
    // whole rows) require values here.
    let whole_rows = matches!(c.format.as_str(), "PLAIN" | "UPSERT");
    let required: Vec<usize> = (0..cols.len())
        .filter(|&j| whole_rows && !def.columns[cols[j]].nullable)
        .collect();
    let schema = Schema::new(fields);
    if c.encode == "CSV" {
        let delimiter = c
            .encode_options
            .get("delimiter")
            .and_then(|d| csv_delimiter(d))
            .unwrap_or(b',');
        let with_header =
            c.encode_options.get("without_header").map(String::as_str) == Some("false");
        PayloadDecoder::Csv(CsvDecoder::new(schema, required, delimiter, with_header))
    } else {
        PayloadDecoder::Json(JsonDecoder::new(schema, required))
    }
}

fn csv_delimiter(d: &str) -> Option<u8> {
    match d {
        "\\t" | "\t" => Some(b'\t'),
        _ if d.len() == 1 => Some(d.as_bytes()[0]),
        _ => None,
    }
}

fn payload_columns(def: &TableDef) -> Vec<usize> {
    let c = def.connector.as_ref().expect("a connector table");
    def.visible_columns()
        .map(|(i, _)| i)
        .filter(|i| !c.includes.iter().any(|inc| inc.column == *i))
        .collect()
}

/// The value of a metadata column for a message.
fn include_value(kind: &str, argument: Option<&str>, m: &Msg) -> ScalarValue {
    let text = |b: &Option<Vec<u8>>| {
        ScalarValue::Utf8(b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
    };
    let part = |i: usize| ScalarValue::Utf8(topic_parts(&m.topic).and_then(|p| p[i].clone()));
    match kind {
        "key" => text(&m.key),
        "partition" => ScalarValue::Int32(Some(m.partition)),
        "offset" => ScalarValue::Int64(Some(m.offset)),
        "timestamp" => {
            ScalarValue::TimestampMicrosecond(m.timestamp_ms.map(|t| t * 1000), Some("UTC".into()))
        }
        "topic" => ScalarValue::Utf8(Some(m.topic.to_string())),
        "topic_system" => part(0),
        "topic_domain" => part(1),
        "topic_datatype" => part(2),
        "topic_company1" => part(3),
        "topic_company2" => part(4),
        "topic_ok" => ScalarValue::Boolean(Some(topic_parts(&m.topic).is_some())),
        "header" => {
            let v = m
                .headers
                .iter()
                .rev()
                .find(|(k, _)| Some(k.as_str()) == argument)
                .and_then(|(_, v)| v.clone());
            text(&v)
        }
        _ => ScalarValue::Null,
    }
}

/// The parts of a topic named by the utility convention
/// `SYSTEM_DOMAIN_DATATYPE_COMPANY1[_COMPANY2]` (four or five non-empty alphanumeric
/// parts), or `None` when the name does not follow it.
pub fn topic_parts(topic: &str) -> Option<[Option<String>; 5]> {
    let parts: Vec<&str> = topic.split('_').collect();
    if !(4..=5).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return None;
    }
    let mut out: [Option<String>; 5] = Default::default();
    for (i, p) in parts.iter().enumerate() {
        out[i] = Some(p.to_string());
    }
    Some(out)
}

/// `*` (any run of characters) and `?` (one character) glob matching of topic names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn is_pattern(topic: &str) -> bool {
    topic.contains(['*', '?'])
}

/// The partitions a reader has assigned, and which it may own.
struct Assigned {
    share: Share,
    set: BTreeSet<(String, i32)>,
}

/// Lists the topics (the one named, or all matching the pattern) and assigns every
/// partition not assigned yet, at its committed offset, else at its end when `latest`
/// (the first listing of a `latest` source), else at its beginning.
async fn assign_new(
    db: &Arc<Database>,
    def: &TableDef,
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    latest: bool,
    assigned: &mut Assigned,
    status: &Arc<SourceStatus>,
) -> Result<(), String> {
    let share = assigned.share;
    let listing = {
        let consumer = Arc::clone(consumer);
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let pattern = is_pattern(&topic);
            let md = consumer
                .fetch_metadata(
                    (!pattern).then_some(topic.as_str()),
                    Duration::from_secs(10),
                )
                .map_err(|e| format!("cannot list the topics of the broker: {e}"))?;
            let mut found = Vec::new();
            for t in md.topics() {
                let wanted = if pattern {
                    glob_match(&topic, t.name()) && !t.name().starts_with("__")
                } else {
                    t.name() == topic
                };
                if wanted && t.error().is_none() {
                    for p in t.partitions() {
                        found.push((t.name().to_string(), p.id()));
                    }
                }
            }
            if found.is_empty() && !pattern {
                return Err(format!("topic \"{topic}\" does not exist"));
            }
            Ok(found)
        })
        .await
        .map_err(|e| e.to_string())??
    };
    register_partitions(def, &listing);
    let snapshot = db.snapshot();
    let mut tpl = TopicPartitionList::new();
    // `latest` partitions without a committed offset start at their current end, and
    // that position is committed at once, so a restart before their first message does
    // not skip what arrived meanwhile.
    let mut pinned: Vec<(String, i32, i64)> = Vec::new();
    for (t, p) in listing {
        if !share.owns(&t, p) || assigned.set.contains(&(t.clone(), p)) {
            continue;
        }
        let offset =
            match errors::committed_offset(&snapshot, def.id, &t, p).map_err(|e| e.to_string())? {
                Some(next) => Offset::Offset(next),
                None if latest => {
                    let (consumer, topic) = (Arc::clone(consumer), t.clone());
                    let (_, high) = tokio::task::spawn_blocking(move || {
                        consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot read the end of \"{t}\" [{p}]: {e}"))?;
                    pinned.push((t.clone(), p, high));
                    Offset::Offset(high)
                }
                None => Offset::Beginning,
            };
        tpl.add_partition_offset(&t, p, offset)
            .map_err(|e| e.to_string())?;
        assigned.set.insert((t, p));
    }
    if !pinned.is_empty() {
        let mut txn = db.begin_write().await;
        if txn.catalog().table(def.id).is_none() {
            return Ok(());
        }
        for (t, p, high) in &pinned {
            errors::stage_offset(&mut txn, def.id, t, *p, *high);
        }
        txn.commit().map_err(|e| e.to_string())?;
    }
    if tpl.count() > 0 {
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| format!("cannot assign partitions: {e}"))?;
    }
    status.set_partitions(share.worker, assigned.set.len());
    Ok(())
}

/// The primary key of an upsert tombstone, from the message key: a JSON object with the
/// key columns, or (for a one-column key) the key text itself.
fn tombstone_key(def: &TableDef, key: Option<&[u8]>) -> Result<Vec<ScalarValue>, String> {
    let key = key.ok_or("a message without value (a delete) needs a key")?;
    let text = std::str::from_utf8(key).map_err(|_| "message key is not UTF-8".to_string())?;
    // A key declared as `INCLUDE key AS k ... PRIMARY KEY (k)` is the key text itself.
    let c = def.connector.as_ref().expect("a connector table");
    if let [pk] = def.pk.as_slice() {
        if c.includes
            .iter()
            .any(|i| i.kind == "key" && i.column == *pk)
        {
            return Ok(vec![ScalarValue::Utf8(Some(text.to_string()))]);
        }
    }
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    // A JSON string key ("M2") is its content.
    let unquoted;
    let text = match &value {
        Some(serde_json::Value::String(s)) => {
            unquoted = s.clone();
            unquoted.as_str()
        }
        _ => text,
    };
    let parsed: Option<serde_json::Map<String, serde_json::Value>> = match value {
        Some(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    };
    def.pk
        .iter()
        .map(|&i| {
            let col = &def.columns[i];
            let raw = match &parsed {
                Some(obj) => match obj.get(&col.name) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => {
                        return Err(format!("message key has no \"{}\"", col.name))
                    }
                    Some(v) => v.to_string(),
                },
                None if def.pk.len() == 1 => text.to_string(),
                None => return Err("message key is not a JSON object of the key columns".into()),
            };
            ScalarValue::Utf8(Some(raw.clone()))
                .cast_to(&col.ty.to_arrow())
                .map_err(|_| format!("message key \"{raw}\" is not a valid {}", col.ty))
        })
        .collect()
}

/// What one message asks for, before its row images are decoded.
enum Step {
    /// Store (or, for a source, hand on) the row decoded from this image.
    Put(Vec<u8>),
    /// Delete the row with the key of this image (CDC deletes, the old image of updates).
    Delete(Vec<u8>),
    /// Delete the row with this key (an upsert tombstone).
    DeleteKey(Vec<ScalarValue>),
}

/// A checked write of one message (`Put` without a key: the row id is set under the lock).
enum Write {
    Put(Option<Vec<u8>>, Vec<ScalarValue>),
    Delete(Vec<u8>),
}

/// The steps of one message, or why it is rejected.
fn steps(
    def: &TableDef,
    c: &ConnectorDef,
    decoder: &PayloadDecoder,
    m: &Msg,
) -> Result<Vec<Step>, String> {
    let Some(payload) = m.payload.as_deref() else {
        return match c.format.as_str() {
            "UPSERT" => Ok(vec![Step::DeleteKey(tombstone_key(def, m.key.as_deref())?)]),
            // A Debezium delete is followed by a tombstone for log compaction.
            "DEBEZIUM" => Ok(Vec::new()),
            _ => Err("message has no value".into()),
        };
    };
    let actions = match c.format.as_str() {
        "DEBEZIUM" => cdc::debezium(payload)?,
        "CANAL" => cdc::canal(payload)?,
        "MAXWELL" => cdc::maxwell(payload)?,
        _ => {
            if let PayloadDecoder::Csv(csv) = decoder {
                if csv.is_header(payload) {
                    return Ok(Vec::new());
                }
            }
            return Ok(vec![Step::Put(payload.to_vec())]);
        }
    };
    Ok(actions
        .into_iter()
        .map(|a| match a {
            cdc::Action::Put(j) => Step::Put(j.into_bytes()),
            cdc::Action::Delete(j) => Step::Delete(j.into_bytes()),
        })
        .collect())
}

async fn write(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    decoder: &PayloadDecoder,
    msgs: Vec<Msg>,
    status: &Arc<SourceStatus>,
) -> Result<(), String> {
    let c = def.connector.as_ref().expect("a connector table");
    let payload_cols = payload_columns(def);
    let planned: Vec<Result<Vec<Step>, String>> =
        msgs.iter().map(|m| steps(def, c, decoder, m)).collect();
    // Every row image of the poll, decoded together.
    let mut images: Vec<&[u8]> = Vec::new();
    for p in planned.iter().flatten() {
        for step in p {
            if let Step::Put(b) | Step::Delete(b) = step {
                images.push(b);
            }
        }
    }
    let decoded: Vec<Result<(Arc<RecordBatch>, usize), String>> = match decoder.decode(&images) {
        Decoded::All(batch) => {
            let batch = Arc::new(batch);
            (0..images.len())
                .map(|r| Ok((Arc::clone(&batch), r)))
                .collect()
        }
        Decoded::Each(each) => each
            .into_iter()
            .map(|r| r.map(|b| (Arc::new(b), 0)))
            .collect(),
    };
    let mut decoded = decoded.into_iter();
    // Every image of a message is consumed (so the next message gets its own), and every
    // write is built and checked before any is staged: a message is applied whole or
    // rejected whole. This happens before the write lock is taken, so the source's
    // readers build rows in parallel; a row id (tables without a key) is set under it.
    let built: Vec<Result<Vec<Write>, String>> =
        msgs.iter()
            .zip(planned)
            .map(|(m, plan)| {
                let images: Vec<Option<Result<Vec<ScalarValue>, String>>> = match &plan {
                    Ok(steps) => steps
                        .iter()
                        .map(|step| match step {
                            Step::Put(_) | Step::Delete(_) => {
                                Some(decoded.next().expect("one per image").and_then(
                                    |(batch, r)| {
                                        let mut values = vec![ScalarValue::Null; def.columns.len()];
                                        for (b, &col) in payload_cols.iter().enumerate() {
                                            values[col] =
                                                ScalarValue::try_from_array(batch.column(b), r)
                                                    .map_err(|e| e.to_string())?;
                                        }
                                        Ok(values)
                                    },
                                ))
                            }
                            Step::DeleteKey(_) => None,
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let steps = plan?;
                let mut writes: Vec<Write> = Vec::with_capacity(steps.len());
                for (step, image) in steps.into_iter().zip(images) {
                    let image = image.transpose()?;
                    match (step, image) {
                        (Step::DeleteKey(pk), _) => writes.push(Write::Delete(pk_key(def, &pk)?)),
                        (Step::Delete(_), Some(values)) => {
                            let pk: Vec<ScalarValue> =
                                def.pk.iter().map(|&k| values[k].clone()).collect();
                            if pk.iter().any(ScalarValue::is_null) {
                                return Err("a delete's row image lacks the primary key".into());
                            }
                            writes.push(Write::Delete(pk_key(def, &pk)?));
                        }
                        (Step::Put(_), Some(mut values)) => {
                            for inc in &c.includes {
                                values[inc.column] =
                                    include_value(&inc.kind, inc.argument.as_deref(), m)
                                        .cast_to(&def.columns[inc.column].ty.to_arrow())
                                        .map_err(|e| e.to_string())?;
                            }
                            check_row(def, &values)?;
                            let key = if def.has_row_id() {
                                None
                            } else {
                                Some(
                                    strom_engine::table::key_of(def, &values)
                                        .map_err(|e| e.to_string())?,
                                )
                            };
                            writes.push(Write::Put(key, values));
                        }
                        _ => unreachable!("images are decoded"),
                    }
                }
                Ok(writes)
            })
            .collect();
    // Per-partition watermarks (WATERMARK FOR): this poll's maximum per partition. The
    // shared map takes them only once the transaction committed, so no reader ever counts
    // another's uncommitted rows.
    let watermarker = db.watermarker(def).map_err(|e| e.to_string())?;
    let mut batch_marks: HashMap<(String, i32), Option<ScalarValue>> = HashMap::new();
    if let Some(marker) = &watermarker {
        // The poll's rows evaluated in one batch, then folded per partition.
        let visible = def.visible_columns().count();
        let mut owners: Vec<(String, i32)> = Vec::new();
        let mut rows: Vec<&[ScalarValue]> = Vec::new();
        for (m, writes) in msgs.iter().zip(&built) {
            let key = (m.topic.to_string(), m.partition);
            batch_marks.entry(key.clone()).or_default();
            for w in writes.iter().flatten() {
                if let Write::Put(_, values) = w {
                    owners.push(key.clone());
                    rows.push(&values[..visible]);
                }
            }
        }
        let marks = marker.eval_all(&rows).map_err(|e| e.to_string())?;
        for (key, v) in owners.into_iter().zip(marks) {
            let part = batch_marks.entry(key).or_default();
            *part = strom_engine::watermark::max(part.take(), v);
        }
    }
    let idle_timeout = opt(c, "watermark.idle_timeout").and_then(parse_duration);
    let mut txn = db.begin_write().await;
    // Dropped while this poll was read: write nothing (DROP removed rows and offsets).
    if txn.catalog().table(def.id).is_none() {
        return Ok(());
    }
    let row_id_base = if def.has_row_id() {
        txn.alloc_row_ids(msgs.len() as i64)
    } else {
        0
    };
    let mut next_offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    let (mut rows_ok, mut rejected) = (0u64, 0u64);
    for ((i, m), writes) in msgs.iter().enumerate().zip(built) {
        next_offsets.insert((&*m.topic, m.partition), m.offset + 1);
        let outcome = writes.and_then(|writes| {
            for w in writes {
                match w {
                    Write::Delete(key) => txn.delete(key),
                    Write::Put(key, mut values) => {
                        let key = match key {
                            Some(k) => k,
                            None => {
                                let last = values.len() - 1;
                                values[last] = ScalarValue::Int64(Some(row_id_base + i as i64));
                                strom_engine::table::key_of(def, &values)
                                    .map_err(|e| e.to_string())?
                            }
                        };
                        if c.is_source {
                            txn.append(def.id, key, &values)
                                .map_err(|e| e.to_string())?;
                        } else {
                            txn.put(key, &values).map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
            Ok(())
        });
        match outcome {
            Ok(()) => rows_ok += 1,
            Err(reason) => {
                rejected += 1;
                errors::stage_rejection(
                    &mut txn,
                    def.id,
                    &Rejected {
                        topic: m.topic.to_string(),
                        partition: m.partition,
                        offset: m.offset,
                        reason,
                        payload: m.payload.clone().unwrap_or_default(),
                    },
                );
            }
        }
    }
    for ((topic, p), next) in next_offsets {
        errors::stage_offset(&mut txn, def.id, topic, p, next);
    }
    if watermarker.is_some() {
        let map = partition_watermarks()
            .lock()
            .expect("invariant: watermark map lock is never poisoned");
        let wm = map
            .get(&def.id)
            .and_then(|parts| source_watermark(parts, &batch_marks, idle_timeout));
        txn.set_watermark(def.id, wm);
    }
    txn.commit().map_err(|e| e.to_string())?;
    if watermarker.is_some() {
        let mut map = partition_watermarks()
            .lock()
            .expect("invariant: watermark map lock is never poisoned");
        let parts = map.entry(def.id).or_default();
        let now = Instant::now();
        for (key, v) in batch_marks {
            let state = parts.entry(key).or_insert(PartitionState {
                watermark: None,
                last_message: now,
                polled: None,
                caught_up: false,
            });
            state.watermark = strom_engine::watermark::max(state.watermark.take(), v);
            state.last_message = now;
            state.caught_up = false;
        }
    }
    status.add(rows_ok, rejected);
    Ok(())
}

fn pk_key(def: &TableDef, pk: &[ScalarValue]) -> Result<Vec<u8>, String> {
    Ok(strom_engine::keys::row_key(
        def.id,
        &strom_engine::keys::encode_key(pk).map_err(|e| e.to_string())?,
    ))
}

/// NOT NULL and `varchar(n)` of a row about to be stored.
fn check_row(def: &TableDef, values: &[ScalarValue]) -> Result<(), String> {
    for (col, v) in def.columns.iter().zip(values) {
        if !col.nullable && v.is_null() && !col.hidden {
            return Err(format!(
                "missing value for required column \"{}\"",
                col.name
            ));
        }
        if let (SqlType::Varchar(Some(n)), ScalarValue::Utf8(Some(s))) = (&col.ty, v) {
            if s.chars().count() > *n as usize {
                return Err(format!(
                    "value too long for column \"{}\" (character varying({n}))",
                    col.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_idle_partitions_stop_holding_the_watermark_back() {
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("1e30"), None);
        let now = Instant::now();
        let old = now - Duration::from_secs(120);
        let v = |n: i64| Some(ScalarValue::Int64(Some(n)));
        let state = |wm, last, caught_up| PartitionState {
            watermark: wm,
            last_message: last,
            polled: Some(now),
            caught_up,
        };
        let minute = Some(Duration::from_secs(60));
        let none = HashMap::new();
        let mut parts = PartitionWatermarks::new();
        parts.insert(("t".into(), 0), state(v(100), now, false));
        parts.insert(("t".into(), 1), state(v(40), old, true));
        // Without a timeout the slowest partition holds the watermark back ...
        assert_eq!(source_watermark(&parts, &none, None), v(40));
        // ... with one, a partition quiet for longer, and caught up, no longer does ...
        assert_eq!(source_watermark(&parts, &none, minute), v(100));
        // ... but one whose reader has not found it empty (a backlog) still does.
        parts.insert(("t".into(), 1), state(v(40), old, false));
        assert_eq!(source_watermark(&parts, &none, minute), v(40));
        // A partition without rows yet holds it until it is idle.
        parts.insert(("t".into(), 1), state(None, now, false));
        assert_eq!(source_watermark(&parts, &none, minute), None);
        // This poll's rows count for their partition.
        let batch = HashMap::from([(("t".into(), 1), v(70))]);
        assert_eq!(source_watermark(&parts, &batch, minute), v(70));
    }

    #[test]
    fn topic_names_split_by_the_utility_convention() {
        let p = topic_parts("TMR_CJ_YXNDL_03").unwrap();
        assert_eq!(p[0].as_deref(), Some("TMR"));
        assert_eq!(p[2].as_deref(), Some("YXNDL"));
        assert_eq!(p[3].as_deref(), Some("03"));
        assert_eq!(p[4], None);
        assert_eq!(topic_parts("A_B_C_D_E").unwrap()[4].as_deref(), Some("E"));
        for bad in [
            "TMR_CJ_03",
            "A_B_C_D_E_F",
            "TMR__YXNDL_03",
            "TMR_CJ_YX-DL_03",
            "",
        ] {
            assert!(topic_parts(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn readers_split_partitions_disjointly_and_completely() {
        let shares: Vec<Share> = (0..2).map(|worker| Share { worker, workers: 2 }).collect();
        let mut per_worker = [0; 2];
        for p in 0..64 {
            let owners: Vec<usize> = shares
                .iter()
                .filter(|s| s.owns("TMR_CJ_YXNDL_03", p))
                .map(|s| s.worker)
                .collect();
            assert_eq!(owners.len(), 1);
            per_worker[owners[0]] += 1;
        }
        assert!(per_worker.iter().all(|&n| n > 16), "{per_worker:?}");
    }

    #[test]
    fn topic_patterns_glob() {
        assert!(glob_match("TMR_CJ_*_03", "TMR_CJ_YXNDL_03"));
        assert!(!glob_match("TMR_CJ_*_03", "TMR_CJ_YXNDL_04"));
        assert!(glob_match("TMR_*", "TMR_"));
        assert!(glob_match("T?R_*_0?", "TMR_X_Y_03"));
        assert!(!glob_match("TMR", "TMR_CJ"));
        assert!(glob_match("*", ""));
    }
}
