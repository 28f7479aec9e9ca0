//! Maintenance throughput of the stream operators with chunks pushed by the harness (no
//! SQL, no change log): what a view's dataflow costs per input row, state writes included.
//! Run with `cargo bench --bench operators`; `docs/benchmarks.md` records the figures.
//! `STROM_BENCH_ROWS` sets the number of input rows (default 2,000,000);
//! `STROM_BENCH_CASE=text` runs only the cases whose name contains `text`.
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
    let mut agg =
        HashAgg::try_new(&in_schema, vec![1], calls, schema(&out), None, &mut alloc).unwrap();
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
}
