//! `strom_catalog`: Strom's own system relations, read like tables.
//!
//! - `strom_catalog.backfill_progress`: one row per materialized view created since the
//!   server started (or redeployed at start): how many input rows its backfill has read
//!   and whether it is done. A view still backfilling is being filled from its inputs'
//!   existing contents; `CREATE MATERIALIZED VIEW` returns when `done` turns true.
//! - `strom_catalog.source_errors`: every message a source or connector table rejected
//!   (undecodable, a value that does not fit its column, a missing required field), with
//!   its partition, offset, reason and payload (the first 4 KiB, as text). Kept until the
//!   source is dropped.
//! - `strom_catalog.source_offsets`: per source, topic and partition, the next offset to
//!   read, as committed with the rows.
//! - `strom_catalog.source_status`: per source, connector table and sink, whether its task
//!   runs, the partitions it reads, the rows (records, for sinks) and rejections since the
//!   server started, and the error that stopped its last attempt (a missing topic, an
//!   unreachable broker) until it works again.
//! - `strom_catalog.lookup_status`: per materialized view and external lookup table it
//!   joins by processing time, since the server started: rows whose key the cache had
//!   (`hits`) or the database was asked for (`misses`), rows fetched, failed attempts
//!   (after the connector's retries), input rows waiting for the database, keys cached,
//!   and the last error until a lookup works again.
//! - `strom_catalog.late_rows`: every row a table or source with a `WATERMARK` set aside
//!   because its event time was behind the watermark (or NULL), with the watermark at the
//!   time, the reason and the row as JSON. Kept until the relation is dropped.
//! - `strom_catalog.watermarks`: each such relation's current watermark.
//! - `strom_catalog.view_state`: per materialized view and operator state table (numbered
//!   in build order), how many keys and bytes of state it has committed in RocksDB (a
//!   full scan: for diagnostics and tests of bounded state, not for dashboards polling
//!   every second).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::Result as DfResult;

use crate::query::QueryEnv;

pub const SCHEMA: &str = "strom_catalog";

const TABLES: &[&str] = &[
    "backfill_progress",
    "late_rows",
    "lookup_status",
    "source_errors",
    "source_offsets",
    "source_status",
    "view_state",
    "watermarks",
];

#[derive(Debug)]
pub struct StromCatalogSchema {
    env: Arc<QueryEnv>,
}

impl StromCatalogSchema {
    pub fn new(env: Arc<QueryEnv>) -> Self {
        StromCatalogSchema { env }
    }

    fn backfill_progress(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_id", DataType::Int64, false),
            Field::new("schema_name", DataType::Utf8, true),
            Field::new("view_name", DataType::Utf8, false),
            Field::new("rows_read", DataType::Int64, false),
            Field::new("done", DataType::Boolean, false),
        ]));
        let cat = &self.env.catalog;
        let b = &self.env.backfills;
        let schema_of = |id| {
            cat.table(id)
                .and_then(|t| cat.schema(t.schema))
                .map(|s| s.name.clone())
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                b.iter().map(|s| s.view.0 as i64),
            )),
            Arc::new(StringArray::from_iter(b.iter().map(|s| schema_of(s.view)))),
            Arc::new(StringArray::from_iter_values(b.iter().map(|s| &s.name))),
            Arc::new(Int64Array::from_iter_values(
                b.iter().map(|s| s.rows_read as i64),
            )),
            Arc::new(BooleanArray::from_iter(b.iter().map(|s| Some(s.done)))),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

impl StromCatalogSchema {
    fn schema_name(&self, t: &strom_catalog::TableDef) -> String {
        self.env
            .catalog
            .schema(t.schema)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn late_rows(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("relation_name", DataType::Utf8, false),
            Field::new("event_time", DataType::Utf8, false),
            Field::new("watermark", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("row", DataType::Utf8, false),
        ]));
        let mut cols: [Vec<String>; 6] = Default::default();
        let ext = |e: strom_engine::EngineError| {
            datafusion::error::DataFusionError::External(Box::new(e))
        };
        for t in self.env.catalog.tables().filter(|t| t.watermark.is_some()) {
            let (lo, hi) = strom_engine::watermark::late_table_range(t.id);
            let names: Vec<&str> = t.visible_columns().map(|(_, c)| c.name.as_str()).collect();
            for (_, v) in self.env.snapshot.scan(&lo, &hi, usize::MAX).map_err(ext)? {
                let Ok(late) = serde_json::from_slice::<strom_engine::watermark::LateRow>(&v)
                else {
                    continue;
                };
                let row: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(&late.row)
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            v.clone()
                                .map_or(serde_json::Value::Null, serde_json::Value::String),
                        )
                    })
                    .collect();
                for (c, v) in cols.iter_mut().zip([
                    self.schema_name(t),
                    t.name.clone(),
                    late.event_time,
                    late.watermark,
                    late.reason,
                    serde_json::Value::Object(row).to_string(),
                ]) {
                    c.push(v);
                }
            }
        }
        let cols: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
            .collect();
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn view_state(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("view_name", DataType::Utf8, false),
            Field::new("state_table", DataType::Int32, false),
            Field::new("state_keys", DataType::Int64, false),
            Field::new("state_bytes", DataType::Int64, false),
        ]));
        let ext = |e: strom_engine::EngineError| {
            datafusion::error::DataFusionError::External(Box::new(e))
        };
        let (mut sch, mut name, mut table, mut keys, mut bytes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for t in self.env.catalog.tables().filter(|t| t.is_view()) {
            let (lo, hi) = strom_engine::state::view_range(t.id.0);
            let mut per: std::collections::BTreeMap<u16, (i64, i64)> = Default::default();
            self.env
                .snapshot
                .for_each(&lo, &hi, |k, v| {
                    // 0x03 | view u32 | table u16 | ...
                    let index = k.get(5..7).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                    let e = per.entry(index).or_default();
                    e.0 += 1;
                    e.1 += (k.len() + v.len()) as i64;
                })
                .map_err(ext)?;
            for (i, (k, b)) in per {
                sch.push(self.schema_name(t));
                name.push(t.name.clone());
                table.push(i as i32);
                keys.push(k);
                bytes.push(b);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sch)),
            Arc::new(StringArray::from(name)),
            Arc::new(Int32Array::from(table)),
            Arc::new(Int64Array::from(keys)),
            Arc::new(Int64Array::from(bytes)),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn watermarks(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("relation_name", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new("watermark", DataType::Utf8, true),
        ]));
        let ext = |e: strom_engine::EngineError| {
            datafusion::error::DataFusionError::External(Box::new(e))
        };
        let (mut sch, mut rel, mut col, mut wm) = (vec![], vec![], vec![], vec![]);
        for t in self.env.catalog.tables() {
            let Some(w) = &t.watermark else { continue };
            let bytes = self
                .env
                .snapshot
                .get(&strom_engine::watermark::key(t.id))
                .map_err(ext)?;
            let value = bytes
                .map(|b| strom_engine::watermark::decode(&b, &t.columns[w.column].ty.to_arrow()))
                .transpose()
                .map_err(ext)?;
            sch.push(self.schema_name(t));
            rel.push(t.name.clone());
            col.push(t.columns[w.column].name.clone());
            wm.push(value.as_ref().map(strom_engine::watermark::display));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sch)),
            Arc::new(StringArray::from(rel)),
            Arc::new(StringArray::from(col)),
            Arc::new(StringArray::from(wm)),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn sources(&self) -> impl Iterator<Item = (String, &strom_catalog::TableDef)> {
        let cat = &self.env.catalog;
        cat.tables()
            .filter(|t| t.connector.is_some() && !strom_engine::lookup::is_external(t))
            .map(|t| {
                let schema = cat
                    .schema(t.schema)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                (schema, t)
            })
    }

    fn source_errors(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("source_name", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("payload", DataType::Utf8, false),
        ]));
        let (mut sch, mut src, mut topic, mut part, mut off, mut reason, mut payload) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (schema_name, t) in self.sources() {
            let rejected = strom_connectors::errors::rejections(&self.env.snapshot, t.id)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            for r in rejected {
                sch.push(schema_name.clone());
                src.push(t.name.clone());
                topic.push(r.topic);
                part.push(r.partition);
                off.push(r.offset);
                reason.push(r.reason);
                payload.push(String::from_utf8_lossy(&r.payload).into_owned());
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sch)),
            Arc::new(StringArray::from(src)),
            Arc::new(StringArray::from(topic)),
            Arc::new(Int32Array::from(part)),
            Arc::new(Int64Array::from(off)),
            Arc::new(StringArray::from(reason)),
            Arc::new(StringArray::from(payload)),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn source_offsets(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("source_name", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("next_offset", DataType::Int64, false),
        ]));
        let (mut sch, mut src, mut topics, mut part, mut off) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (schema_name, t) in self.sources() {
            let offsets = strom_connectors::errors::committed_offsets(&self.env.snapshot, t.id)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            for (topic, p, o) in offsets {
                sch.push(schema_name.clone());
                src.push(t.name.clone());
                topics.push(topic);
                part.push(p);
                off.push(o);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sch)),
            Arc::new(StringArray::from(src)),
            Arc::new(StringArray::from(topics)),
            Arc::new(Int32Array::from(part)),
            Arc::new(Int64Array::from(off)),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

impl StromCatalogSchema {
    fn lookup_status(&self) -> DfResult<RecordBatch> {
        use std::sync::atomic::Ordering::Relaxed;
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_name", DataType::Utf8, false),
            Field::new("dimension", DataType::Utf8, false),
            Field::new("hits", DataType::Int64, false),
            Field::new("misses", DataType::Int64, false),
            Field::new("fetched", DataType::Int64, false),
            Field::new("errors", DataType::Int64, false),
            Field::new("waiting", DataType::Int64, false),
            Field::new("cached", DataType::Int64, false),
            Field::new("last_error", DataType::Utf8, true),
        ]));
        let mut stats: Vec<(String, Arc<strom_engine::lookup::LookupStats>)> =
            strom_engine::lookup::all_stats()
                .into_iter()
                .filter_map(|s| Some((self.env.catalog.table(s.view)?.name.clone(), s)))
                .collect();
        stats.sort_by(|a, b| (&a.0, &a.1.dimension).cmp(&(&b.0, &b.1.dimension)));
        let count = |f: fn(&strom_engine::lookup::LookupStats) -> &std::sync::atomic::AtomicU64| {
            Arc::new(Int64Array::from_iter_values(
                stats.iter().map(|(_, s)| f(s).load(Relaxed) as i64),
            )) as ArrayRef
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(stats.iter().map(|(v, _)| v))),
            Arc::new(StringArray::from_iter_values(
                stats.iter().map(|(_, s)| &s.dimension),
            )),
            count(|s| &s.hits),
            count(|s| &s.misses),
            count(|s| &s.fetched),
            count(|s| &s.errors),
            count(|s| &s.waiting),
            count(|s| &s.cached),
            Arc::new(StringArray::from_iter(
                stats.iter().map(|(_, s)| s.last_error()),
            )),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn source_status(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("running", DataType::Boolean, false),
            Field::new("partitions", DataType::Int64, true),
            Field::new("rows", DataType::Int64, true),
            Field::new("rejected", DataType::Int64, true),
            Field::new("last_error", DataType::Utf8, true),
            Field::new("ingest_latency_ms", DataType::Int64, true),
            Field::new("skipped_blocks", DataType::Int64, true),
        ]));
        let (mut latency, mut skipped) = (vec![], vec![]);
        let (mut sch, mut name, mut kind, mut running) = (vec![], vec![], vec![], vec![]);
        let (mut parts, mut rows, mut rejected, mut error) = (vec![], vec![], vec![], vec![]);
        for (schema_name, t) in self.sources() {
            let st = strom_connectors::running().and_then(|c| c.status(t.id));
            sch.push(schema_name);
            name.push(t.name.clone());
            kind.push(t.kind_name());
            running.push(Some(st.is_some()));
            use std::sync::atomic::Ordering::Relaxed;
            parts.push(st.as_ref().map(|s| s.partitions() as i64));
            rows.push(st.as_ref().map(|s| s.rows.load(Relaxed) as i64));
            rejected.push(st.as_ref().map(|s| s.rejected.load(Relaxed) as i64));
            error.push(st.as_ref().and_then(|s| s.last_error()));
            latency.push(st.as_ref().and_then(|s| s.latency_ms()));
            skipped.push(st.as_ref().map(|s| s.skipped_blocks.load(Relaxed) as i64));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sch)),
            Arc::new(StringArray::from(name)),
            Arc::new(StringArray::from(kind)),
            Arc::new(BooleanArray::from(running)),
            Arc::new(Int64Array::from(parts)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(rejected)),
            Arc::new(StringArray::from(error)),
            Arc::new(Int64Array::from(latency)),
            Arc::new(Int64Array::from(skipped)),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[async_trait]
impl SchemaProvider for StromCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let batch = match name {
            "backfill_progress" => self.backfill_progress()?,
            "source_errors" => self.source_errors()?,
            "source_offsets" => self.source_offsets()?,
            "source_status" => self.source_status()?,
            "late_rows" => self.late_rows()?,
            "lookup_status" => self.lookup_status()?,
            "watermarks" => self.watermarks()?,
            "view_state" => self.view_state()?,
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
