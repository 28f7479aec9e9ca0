//! The reader loop shared by sources and tables whose rows are generated in-process
//! (`nexmark`, `datagen`): row `n` is a function of `n`, so rows are made in numbered
//! blocks. Reader `split` of `splits` makes blocks `split, split + splits, ...`, each in
//! one transaction that also commits the next block the reader will make; a restart
//! (including after `kill -9`) resumes there without losing or repeating a row.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::common::ScalarValue;
use strom_catalog::TableDef;
use strom_engine::Database;

use crate::{errors, SourceStatus, Stop};

/// The rows numbered `first..last` (a generator may keep only some of them).
pub type MakeRows = Arc<dyn Fn(u64, u64) -> Vec<Vec<ScalarValue>> + Send + Sync>;

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
        // Backpressure: wait while the views are behind (as Kafka sources do), so
        // changes do not pile up in memory.
        while db.pending_changes() > crate::MAX_PENDING_BLOCKS && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = first.saturating_add(b.chunk).min(b.total);
        let make = Arc::clone(&b.rows);
        let rows = tokio::task::spawn_blocking(move || make(first, last))
            .await
            .map_err(|e| e.to_string())?;
        let mut txn = db.begin_write().await;
        if txn.catalog().table(def.id).is_none() {
            return Ok(()); // dropped meanwhile
        }
        let base = if def.has_row_id() {
            txn.alloc_row_ids(rows.len() as i64)
        } else {
            0
        };
        let n = rows.len() as u64;
        for (i, mut values) in rows.into_iter().enumerate() {
            if def.has_row_id() {
                values.push(ScalarValue::Int64(Some(base + i as i64)));
            }
            let key = strom_engine::table::key_of(def, &values).map_err(|e| e.to_string())?;
            if c.is_source {
                txn.append(def.id, key, &values)
                    .map_err(|e| e.to_string())?;
            } else {
                // A table keeps the rows (queries can read them).
                txn.put(key, &values).map_err(|e| e.to_string())?;
            }
        }
        block += b.splits as u64;
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
