//! Maintenance throughput of the stream operators with chunks pushed by the harness (no
//! SQL, no change log): what a view's dataflow costs per input row, state writes included.
//! Run with `cargo bench --bench operators`; `docs/benchmarks.md` records the figures.
//! `STROM_BENCH_ROWS` sets the number of input rows (default 2,000,000);
//! `STROM_BENCH_CASE=text` runs only the cases whose name contains `text`.
//!
//! The temporal join case looks each row up in a 1,000,000-row dimension table stored in
//! RocksDB (`STROM_BENCH_DIM` rows), as `JOIN dim FOR SYSTEM_TIME AS OF PROCTIME()` does,
//! by primary key with an append-only input (no join state). The external case looks
//! rows up in a PostgreSQL table (`TEST_PG_URL`, e.g. from `scripts/services.sh start
//! pg`) through the partial cache, each of `rows / 10` keys missed once then hit nine
//! times (90% hits).
//!
//! Each case feeds 4,096-row insert chunks and, every 16 chunks (65,536 rows), runs a
//! barrier: the operator flushes its output and its state changes are written to RocksDB
//! in one batch, as an epoch commit does.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rocksdb::WriteBatch;
use strom_engine::state::{MemoryBudget, StateAlloc, StateTable};
use strom_engine::store::Store;
use strom_engine::stream::chunk::{Op, StreamChunk};
use strom_engine::stream::hash_agg::{AggCall, AggKind, HashAgg};
use strom_engine::stream::hash_join::{HashJoin, JoinType, Side};
use strom_engine::StoreOptions;

const CHUNK: usize = 4096;
const CHUNKS_PER_EPOCH: usize = 16;

fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Insert chunks of `(id, g = id % groups, kw = id * 0.5)`.
fn chunks(rows: usize, groups: i64) -> Vec<StreamChunk> {
    let s = schema(&[
        ("id", DataType::Int64),
        ("g", DataType::Int64),
        ("kw", DataType::Float64),
    ]);
    (0..rows.div_ceil(CHUNK))
        .map(|c| {
            let lo = (c * CHUNK) as i64;
            let hi = ((c + 1) * CHUNK).min(rows) as i64;
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(lo..hi)),
                Arc::new(Int64Array::from_iter_values((lo..hi).map(|i| i % groups))),
                Arc::new(Float64Array::from_iter_values(
                    (lo..hi).map(|i| i as f64 * 0.5),
                )),
            ];
            let batch = RecordBatch::try_new(s.clone(), cols).unwrap();
            StreamChunk::new(vec![Op::Insert; (hi - lo) as usize], batch).unwrap()
        })
        .collect()
}

fn commit(store: &Store, tables: Vec<&mut StateTable>) {
    let mut batch = WriteBatch::default();
    for t in tables {
        t.write_dirty(&mut batch);
        t.tick();
    }
    store.write(batch).unwrap();
}

fn report(name: &str, rows: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<48} {rows:>9} rows {secs:>7.2} s {:>10.0} rows/s",
        rows as f64 / secs
    );
}

fn agg_case(name: &str, rows: usize, groups: i64, with_max: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut alloc = StateAlloc::new(1, store.clone(), MemoryBudget::new(256 << 20));
    let input = chunks(rows, groups);
    let in_schema = input[0].data().schema();
    let mut calls = vec![
        AggCall {
            kind: AggKind::CountStar,
            arg: None,
            filter: None,
            output_type: DataType::Int64,
            general: None,
        },
        AggCall {
            kind: AggKind::Sum,
            arg: Some(2),
            filter: None,
            output_type: DataType::Float64,
            general: None,
        },
    ];
    let mut out = vec![
        ("g", DataType::Int64),
        ("n", DataType::Int64),
        ("s", DataType::Float64),
    ];
    if with_max {
        calls.push(AggCall {
            kind: AggKind::Max,
            arg: Some(2),
            filter: None,
            output_type: DataType::Float64,
            general: None,
        });
        out.push(("mx", DataType::Float64));
    }
    let mut agg = HashAgg::try_new(
        &in_schema,
        vec![1],
        calls,
        schema(&out),
        None,
        false,
        &mut alloc,
    )
    .unwrap();
    let started = Instant::now();
    let mut emitted = 0;
    for epoch in input.chunks(CHUNKS_PER_EPOCH) {
        for c in epoch {
            agg.apply(c).unwrap();
        }
        emitted += agg.flush().unwrap().len();
        commit(&store, agg.state_tables());
    }
    report(name, rows, started);
    assert!(emitted >= groups as usize);
}

fn join_case(name: &str, rows: usize, dim_rows: i64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut alloc = StateAlloc::new(1, store.clone(), MemoryBudget::new(256 << 20));
    let input = chunks(rows, dim_rows);
    let left = input[0].data().schema();
    let right = schema(&[("name", DataType::Int64), ("max_kw", DataType::Float64)]);
    let mut join = HashJoin::try_new(
        JoinType::Inner,
        vec![1],
        vec![0],
        &left,
        &right,
        None,
        false,
        [None, None],
        // The dimension's rows by its key, as for a table with that primary key.
        [None, Some(vec![0])],
        &mut alloc,
    )
    .unwrap();
    let dim = RecordBatch::try_new(
        right,
        vec![
            Arc::new(Int64Array::from_iter_values(0..dim_rows)),
            Arc::new(Float64Array::from_iter_values(
                (0..dim_rows).map(|i| i as f64),
            )),
        ],
    )
    .unwrap();
    join.apply(
        Side::Right,
        &StreamChunk::new(vec![Op::Insert; dim_rows as usize], dim).unwrap(),
    )
    .unwrap();
    commit(&store, join.state_tables());
    let started = Instant::now();
    let mut emitted = 0;
    for epoch in input.chunks(CHUNKS_PER_EPOCH) {
        for c in epoch {
            emitted += join.apply(Side::Left, c).unwrap().len();
        }
        commit(&store, join.state_tables());
    }
    report(name, rows, started);
    assert_eq!(emitted, rows);
}

/// Stream chunks for the lookup cases: the `chunks` rows with their key column replaced
/// by `(i * 7919) % keys`, keys spread over the whole dimension.
fn lookup_chunks(rows: usize, keys: i64) -> Vec<StreamChunk> {
    chunks(rows, i64::MAX)
        .into_iter()
        .map(|c| {
            let ids = c
                .data()
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let k = Int64Array::from_iter_values(ids.values().iter().map(|i| (i * 7919) % keys));
            let mut columns = c.data().columns().to_vec();
            columns[0] = Arc::new(k);
            let data = RecordBatch::try_new(c.data().schema(), columns).unwrap();
            StreamChunk::new(c.ops().to_vec(), data).unwrap()
        })
        .collect()
}

/// The lookup cases' output: the stream's columns, then the dimension's feeder and ratio.
fn lookup_output() -> SchemaRef {
    schema(&[
        ("id", DataType::Int64),
        ("g", DataType::Int64),
        ("kw", DataType::Float64),
        ("feeder", DataType::Utf8),
        ("ratio", DataType::Float64),
    ])
}

/// A stored dimension table `(id BIGINT PRIMARY KEY, feeder VARCHAR, ratio DOUBLE)`.
fn dim_table(id: u32) -> strom_catalog::TableDef {
    use strom_catalog::{ColumnDef, SqlType, TableDef, TableId};
    let col = |name: &str, ty: SqlType| ColumnDef {
        name: name.into(),
        ty,
        nullable: true,
        default: None,
        hidden: false,
    };
    TableDef {
        id: TableId(id),
        schema: strom_catalog::SchemaId(1),
        name: "meters".into(),
        columns: vec![
            col("id", SqlType::BigInt),
            col("feeder", SqlType::Varchar(None)),
            col("ratio", SqlType::Double),
        ],
        pk: vec![0],
        user_pk: true,
        view: None,
        connector: None,
        watermark: None,
        indexes: Vec::new(),
        next_index_id: 0,
    }
}

fn lookup_case(name: &str, rows: usize, dim_rows: i64) {
    use datafusion::common::ScalarValue;
    use strom_engine::stream::lookup_join::{Dim, LookupJoin};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let def = Arc::new(dim_table(7));
    let mut batch = WriteBatch::default();
    for i in 0..dim_rows {
        let row = [
            ScalarValue::Int64(Some(i)),
            ScalarValue::Utf8(Some(format!("F{}", i % 1000))),
            ScalarValue::Float64(Some(1.0 + (i % 7) as f64)),
        ];
        let key = strom_engine::table::key_of(&def, &row).unwrap();
        batch.put(key, strom_engine::row::encode_row(&row).unwrap());
        if batch.len() >= 100_000 {
            store.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    store.write(batch).unwrap();
    store.flush().unwrap();
    let mut alloc = StateAlloc::new(1, store.clone(), MemoryBudget::new(256 << 20));
    let input = lookup_chunks(rows, dim_rows);
    let output = lookup_output();
    let mut join = LookupJoin::try_new(
        false,
        vec![0],
        Arc::clone(&def),
        vec![0],
        vec![1, 2],
        Dim::Key,
        output,
        true,
        &mut alloc,
    )
    .unwrap();
    // As a view's dataflow runs it: reads split over the two workers.
    join.set_read_threads(2);
    let snapshot = store.snapshot();
    let started = Instant::now();
    let mut emitted = 0;
    for epoch in input.chunks(CHUNKS_PER_EPOCH) {
        for c in join.run(epoch, &snapshot, 0).unwrap() {
            emitted += c.len();
        }
    }
    report(name, rows, started);
    assert_eq!(emitted, rows);
}

/// A temporal join with an external PostgreSQL lookup table of `keys` rows, through the
/// partial cache: `rows` stream rows over `keys` distinct keys, each key first missed
/// then hit (`rows / keys` rows per key: 10 gives 90% hits). Needs `TEST_PG_URL`.
fn external_case(name: &str, rows: usize, keys: i64) {
    use strom_engine::lookup::LookupOptions;
    use strom_engine::stream::lookup_join::{Dim, External, LookupJoin};
    let Ok(url) = std::env::var("TEST_PG_URL") else {
        println!("{name:<48} skipped: TEST_PG_URL is not set (scripts/services.sh start pg)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("TEST_PG_URL host {other:?}"),
    };
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS bench_meters;
             CREATE TABLE bench_meters (id BIGINT PRIMARY KEY, feeder TEXT, ratio DOUBLE PRECISION);
             INSERT INTO bench_meters SELECT i, 'F' || (i % 1000), 1.0 + i % 7 FROM generate_series(0, {}) AS g(i);
             ANALYZE bench_meters;",
            keys - 1
        ))
        .await
        .unwrap();
    });
    let mut def = dim_table(8);
    let options: std::collections::BTreeMap<String, String> = [
        ("connector", "postgres".to_string()),
        ("mode", "lookup".into()),
        ("hostname", host),
        ("port", cfg.get_ports()[0].to_string()),
        ("username", cfg.get_user().unwrap().to_string()),
        (
            "database.name",
            cfg.get_dbname().unwrap_or("postgres").to_string(),
        ),
        ("table.name", "bench_meters".into()),
        ("lookup.cache", "PARTIAL".into()),
        ("lookup.partial-cache.max-rows", (2 * keys).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    def.connector = Some(strom_catalog::ConnectorDef {
        is_source: false,
        is_sink: false,
        options: options.clone(),
        format: String::new(),
        encode: String::new(),
        encode_options: Default::default(),
        includes: Vec::new(),
    });
    let def = Arc::new(def);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut alloc = StateAlloc::new(1, store.clone(), MemoryBudget::new(256 << 20));
    let client = strom_connectors::lookup::open(&def).unwrap();
    let stats = strom_engine::lookup::new_stats(strom_catalog::TableId(1), "bench_meters");
    let external = External::new(
        client,
        &LookupOptions::parse(&options).unwrap(),
        Arc::clone(&stats),
        &mut alloc,
    );
    let input = lookup_chunks(rows, keys);
    let output = lookup_output();
    let mut join = LookupJoin::try_new(
        false,
        vec![0],
        Arc::clone(&def),
        vec![0],
        vec![1, 2],
        Dim::External(Box::new(external)),
        output,
        true,
        &mut alloc,
    )
    .unwrap();
    let snapshot = store.snapshot();
    let started = Instant::now();
    let mut emitted = 0;
    for epoch in input.chunks(CHUNKS_PER_EPOCH) {
        for c in join.run(epoch, &snapshot, 0).unwrap() {
            emitted += c.len();
        }
    }
    report(name, rows, started);
    assert_eq!(emitted, rows);
    use std::sync::atomic::Ordering::Relaxed;
    let (hits, misses) = (stats.hits.load(Relaxed), stats.misses.load(Relaxed));
    println!(
        "{:<48} {hits} hits, {misses} misses ({:.1}% hits)",
        "",
        100.0 * hits as f64 / (hits + misses) as f64
    );
}

fn main() {
    let rows: usize = std::env::var("STROM_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let only = std::env::var("STROM_BENCH_CASE").unwrap_or_default();
    let run = |name: &str| name.contains(&only);
    for (name, groups, with_max) in [
        ("group by, 1k groups: count(*), sum", 1000, false),
        ("group by, 1k groups: count(*), sum, max", 1000, true),
        ("group by, 100k groups: count(*), sum", 100_000, false),
    ] {
        if run(name) {
            agg_case(name, rows, groups, with_max);
        }
    }
    let name = "inner join against 1k dimension rows";
    if run(name) {
        join_case(name, rows, 1000);
    }
    let dim_rows: i64 = std::env::var("STROM_BENCH_DIM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let name = "temporal join, 1M-row dimension (by primary key)";
    if run(name) {
        lookup_case(name, rows, dim_rows);
    }
    let name = "temporal join, PostgreSQL lookup table, 90% hits";
    if run(name) {
        external_case(name, rows, (rows / 10) as i64);
    }
}
