//! The reader loop shared by sources and tables whose rows are generated in-process
//! (`nexmark`, `datagen`): row `n` is a function of `n`, so rows are made in numbered
//! blocks. Reader `split` of `splits` makes blocks `split, split + splits, ...`, each in
//! one transaction that also commits the next block the reader will make; a restart
//! (including after `kill -9`) resumes there without losing or repeating a row.
//!
//! Rows are made column-wise (an Arrow batch of the declared visible columns) and reach
//! a source's views as that batch ([`strom_engine::WriteTxn::append_batch`]); a table
//! stores them row by row. Without a rate, several blocks go in one transaction (up to
//! [`ROWS_PER_TXN`] rows), so the per-commit cost is spread over many rows.
//!
//! A source's blocks go into the change log by reference (their row numbers, see
//! [`strom_engine::changelog::Replay`]): after a restart, [`replay`] makes the rows of
//! the entries the views had not consumed again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use strom_catalog::TableDef;
use strom_engine::Database;

use crate::{errors, SourceStatus, Stop};

/// The rows numbered `first..last` (a generator may keep only some of them), as a batch
/// of the relation's visible columns in [`schema`]'s types.
pub type MakeRows = Arc<dyn Fn(u64, u64) -> Result<RecordBatch, String> + Send + Sync>;

/// Rows per transaction a reader without a rate aims for.
pub const ROWS_PER_TXN: u64 = 8192;

/// The Arrow schema of a relation's visible columns (what [`MakeRows`] returns).
pub fn schema(def: &TableDef) -> SchemaRef {
    Arc::new(Schema::new(
        def.visible_columns()
            .map(|(_, c)| Field::new(&c.name, c.ty.to_arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

/// How a generated relation is read.
pub struct Blocks {
    /// The offset "topic" the readers' next blocks are committed under.
    pub state: &'static str,
    /// Rows are numbered `0..total`.
    pub total: u64,
    pub chunk: u64,
    pub splits: usize,
    /// Rows per second over all readers (`None`: as fast as the views take them;
    /// `Some(0)`: paused).
    pub rate: Option<u64>,
    pub rows: MakeRows,
}

/// Runs reader `split` until stopped; past the last row it idles until stopped.
/// `prepare` reads the declaration (again after each failed attempt).
pub async fn run(
    db: Arc<Database>,
    def: Arc<TableDef>,
    stop: Stop,
    status: Arc<SourceStatus>,
    split: usize,
    prepare: fn(&TableDef) -> Result<Blocks, String>,
) {
    let what = format!("source \"{}\"", def.name);
    crate::retry_until_stopped(&what, &stop, &status, || {
        run_once(&db, &def, &stop, &status, split, prepare)
    })
    .await
}

async fn run_once(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    stop: &Stop,
    status: &Arc<SourceStatus>,
    split: usize,
    prepare: fn(&TableDef) -> Result<Blocks, String>,
) -> Result<(), String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let b = prepare(def)?;
    let mut block = errors::committed_offset(&db.snapshot(), def.id, b.state, split as i32)
        .map_err(|e| e.to_string())?
        .map_or(split as u64, |b| b as u64);
    let started = Instant::now();
    let mut emitted = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let first = block.saturating_mul(b.chunk);
        if first >= b.total {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        crate::wait_for_views(db, stop).await;
        // Without a rate, as many blocks as make about ROWS_PER_TXN rows.
        let blocks = match b.rate {
            None => (crate::generated::ROWS_PER_TXN / b.chunk.max(1)).max(1),
            Some(_) => 1,
        };
        let make = Arc::clone(&b.rows);
        let (chunk, splits, total) = (b.chunk, b.splits as u64, b.total);
        let start = block;
        let (parts, next) = tokio::task::spawn_blocking(move || {
            let mut parts = Vec::new();
            let mut block = start;
            for _ in 0..blocks {
                let first = block.saturating_mul(chunk);
                if first >= total {
                    break;
                }
                let last = first.saturating_add(chunk).min(total);
                parts.push((first, last, make(first, last)?));
                block += splits;
            }
            Ok::<_, String>((parts, block))
        })
        .await
        .map_err(|e| e.to_string())??;
        let mut txn = db.begin_write().await;
        if txn.catalog().table(def.id).is_none() {
            return Ok(()); // dropped meanwhile
        }
        let n: u64 = parts.iter().map(|p| p.2.num_rows() as u64).sum();
        if c.is_source {
            for (first, last, data) in parts {
                txn.append_batch_by_reference(def.id, data, token(first, last), Vec::new())
                    .map_err(|e| e.to_string())?;
            }
        } else {
            // A table keeps the rows (queries can read them).
            let mut rows = Vec::new();
            for (_, _, data) in &parts {
                rows.extend(strom_engine::table::batch_to_rows(data).map_err(|e| e.to_string())?);
            }
            let base = if def.has_row_id() {
                txn.alloc_row_ids(rows.len() as i64)
            } else {
                0
            };
            for (i, mut values) in rows.into_iter().enumerate() {
                if def.has_row_id() {
                    values.push(ScalarValue::Int64(Some(base + i as i64)));
                }
                let key = strom_engine::table::key_of(def, &values).map_err(|e| e.to_string())?;
                txn.put(key, &values).map_err(|e| e.to_string())?;
            }
        }
        block = next;
        errors::stage_offset(&mut txn, def.id, b.state, split as i32, block as i64);
        txn.commit().map_err(|e| e.to_string())?;
        status.add(n, 0);
        emitted += n;
        match b.rate {
            None => tokio::task::yield_now().await,
            Some(0) => crate::pause_until(stop, started, Duration::MAX).await,
            Some(limit) => {
                // Each reader takes its share of the rate.
                let due = Duration::from_secs_f64(emitted as f64 * b.splits as f64 / limit as f64);
                crate::pause_until(stop, started, due).await;
            }
        }
    }
    Ok(())
}

/// The version of the generators' output. Bump it whenever a release changes the rows a
/// generator makes for a given declaration: blocks logged by an older release are then
/// reported lost (their views fail, saying why) instead of replayed as different rows.
const TOKEN_VERSION: u8 = 1;

/// A block's change-log token: [`TOKEN_VERSION`], its first row number and the one after
/// its last.
fn token(first: u64, last: u64) -> Vec<u8> {
    let mut t = vec![TOKEN_VERSION];
    t.extend_from_slice(&first.to_be_bytes());
    t.extend_from_slice(&last.to_be_bytes());
    t
}

/// Makes a block again from its [`token`] (the change log's [`Replayer`] for a
/// generator), with `prepare` reading the source's declaration.
///
/// [`Replayer`]: strom_engine::changelog::Replayer
pub fn replay(
    def: &TableDef,
    token: &[u8],
    prepare: fn(&TableDef) -> Result<Blocks, String>,
) -> Result<RecordBatch, String> {
    let (Some(&TOKEN_VERSION), Some(first), Some(last)) = (
        token.first(),
        token.get(1..9),
        token.get(9..).filter(|t| t.len() == 8),
    ) else {
        return Err(format!(
            "the block was logged by a generator of another version (token {token:02x?}, this release makes version {TOKEN_VERSION})"
        ));
    };
    let number = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    (prepare(def)?.rows)(number(first), number(last))
}
