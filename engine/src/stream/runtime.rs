//! The stream runtime: runs every materialized view's dataflow, epoch by epoch.
//!
//! # Epochs and barriers
//! A background task injects a barrier every `barrier_interval` (sooner when a session
//! waits in `FLUSH`), if there is anything to do. For epoch N it
//! 1. *cuts* the input: takes a RocksDB snapshot `C_N` and, atomically with it, every
//!    change-log entry committed before it (see [`crate::changelog`]);
//! 2. runs the views in dependency order. Each view's operator tree receives the epoch's
//!    changes of its sources (tables: the cut's entries; views: what the upstream view
//!    emitted in this epoch), then the barrier: every operator runs to completion on its
//!    inputs before its consumer sees the barrier, so multi-input operators are aligned by
//!    construction, and at the barrier each operator writes its state changes;
//! 3. writes each view's output into its contents table;
//! 4. commits epoch N: all state changes, all view contents, the consumed log position
//!    and the deletion of the consumed entries, in **one RocksDB write batch**.
//!
//! `SELECT` reads the latest RocksDB snapshot, which holds exactly the last committed
//! epoch of every view, so views are mutually consistent. Every epoch commit is in the
//! RocksDB WAL and so survives a process crash; every `checkpoint_interval` the WAL is
//! also fsynced, which makes the epoch survive power loss.
//!
//! # Backfill
//! A new view over non-empty inputs reads them in key order, `backfill_batch` rows per
//! source per epoch, while following their changes: a change of a row at or before the
//! scan position is forwarded, one after it is not (the scan will read the row later, in
//! its new state). For a table source, the scan reads `C_N` (which includes epoch N's
//! changes), so only changes at or before the *old* position are forwarded; for a view
//! source, `C_N` holds the upstream view as of epoch N-1, so the scan goes first and the
//! upstream's epoch-N changes at or before the *new* position are forwarded. The
//! positions are committed with each epoch, so a backfill resumes after a crash.
//!
//! # Failures
//! A view whose dataflow fails (an expression error, say) is rolled back to its last
//! committed state for that epoch and marked failed, durably; its dependants too. Other
//! views carry on. Reading a failed view reports the error; drop and recreate it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use rocksdb::WriteBatch;
use strom_catalog::{TableDef, TableId};
use tokio::sync::{watch, Mutex, Notify, OwnedMutexGuard};

use super::chunk::{Op, StreamChunk};
use super::exchange;
use super::hash_agg::HashAgg;
use super::hash_join::{HashJoin, Side};
use super::lookup_join::{Dim as LookupDim, External, LookupJoin};
use super::over_window::OverWindow;
use super::plan::{column_refs, LookupVia, NodeKind, PlanNode};
use super::project_filter::ProjectFilter;
use super::session::SessionWindow;
use super::temporal_filter::TemporalFilter;
use crate::changelog::{self, RowChange};
use crate::database::Database;
use crate::error::{EngineError, Result};
use crate::keys;
use crate::state::{self, MemoryBudget, StateAlloc, StateTable};
use crate::store::Snapshot;
use crate::table;

const EPOCH_KEY: &[u8] = b"\x00epoch";
/// The clock of the last epoch (temporal filters never see time go back).
const CLOCK_KEY: &[u8] = b"\x00runtime_clock";
/// The watermarks of the relations as of the consumed change log: `[table u32][len u32][value]...`.
const WATERMARKS_KEY: &[u8] = b"\x00runtime_watermarks";

fn encode_watermarks(w: &HashMap<TableId, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut sorted: Vec<_> = w.iter().collect();
    sorted.sort_by_key(|(t, _)| **t);
    for (t, v) in sorted {
        out.extend_from_slice(&t.0.to_be_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn decode_watermarks(mut b: &[u8]) -> Result<HashMap<TableId, Vec<u8>>> {
    let corrupt = || EngineError::Corrupt {
        table: "runtime watermarks".into(),
        reason: "truncated".into(),
    };
    let mut out = HashMap::new();
    while !b.is_empty() {
        let t = u32::from_be_bytes(b.get(..4).ok_or_else(corrupt)?.try_into().expect("4"));
        let n =
            u32::from_be_bytes(b.get(4..8).ok_or_else(corrupt)?.try_into().expect("4")) as usize;
        let v = b.get(8..8 + n).ok_or_else(corrupt)?.to_vec();
        out.insert(TableId(t), v);
        b = &b[8 + n..];
    }
    Ok(out)
}

fn backfill_key(view: TableId) -> Vec<u8> {
    let mut k = b"\x00backfill/".to_vec();
    k.extend_from_slice(&view.0.to_be_bytes());
    k
}

/// Where a failed view's error message is kept.
pub fn failure_key(view: TableId) -> Vec<u8> {
    let mut k = b"\x00view_failed/".to_vec();
    k.extend_from_slice(&view.0.to_be_bytes());
    k
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub barrier_interval: Duration,
    pub checkpoint_interval: Duration,
    /// Bytes of operator state kept in memory, all views together.
    pub memory_budget: usize,
    /// Rows read per source per epoch while a view backfills.
    pub backfill_batch: usize,
    /// Workers per aggregation or join (see [`exchange`]).
    pub workers: usize,
    /// Fewest input rows of an operator in an epoch for which its workers run on threads.
    pub parallel_min_rows: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            barrier_interval: Duration::from_millis(20),
            checkpoint_interval: Duration::from_millis(1000),
            memory_budget: 256 << 20,
            backfill_batch: 65_536,
            workers: 1,
            parallel_min_rows: 4096,
        }
    }
}

/// What has been committed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub epoch: u64,
    /// Every change-log entry up to here is in committed view state.
    pub consumed_seq: u64,
}

/// A view's backfill, as reported to users.
#[derive(Debug, Clone)]
pub struct BackfillStatus {
    pub view: TableId,
    pub name: String,
    pub rows_read: u64,
    pub done: bool,
}

/// Per source of a view: where its backfill scan is.
#[derive(Debug, Clone, PartialEq)]
enum Position {
    /// Scanned up to and including this storage key (empty: nothing yet).
    At(Vec<u8>),
    Done,
}

/// An input of a view's dataflow: a table or view (`def`), or constant rows (`VALUES`),
/// which are emitted once, like a backfill that finishes in its first epoch.
struct Source {
    def: Option<Arc<TableDef>>,
    values: Vec<Vec<ScalarValue>>,
    types: Vec<DataType>,
    schema: SchemaRef,
    position: Position,
}

enum Exec {
    Source(usize),
    ProjectFilter(ProjectFilter, Box<Exec>),
    /// Workers (see [`exchange`]) and the group key columns rows are routed by.
    Agg(Vec<HashAgg>, Vec<usize>, Box<Exec>),
    /// Workers and the left and right key columns rows are routed by.
    Join(Vec<HashJoin>, [Vec<usize>; 2], Box<Exec>, Box<Exec>),
    Union(SchemaRef, Vec<Exec>),
    /// Workers and the columns rows are routed by (none: one worker).
    Window(Vec<OverWindow>, Vec<usize>, Box<Exec>),
    /// One instance: its state is ordered by time in one bucket.
    Temporal(Box<TemporalFilter>, Box<Exec>),
    /// One instance, like a temporal filter.
    Session(Box<SessionWindow>, Box<Exec>),
    /// Processing-time lookups into a dimension (one instance).
    Lookup(Box<LookupJoin>, Box<Exec>),
    /// A shared subtree (see [`super::shared`]) computed here: its output is also kept
    /// in the epoch's slot `id` for the occurrences that reuse it.
    Shared(usize, Box<Exec>),
    /// An occurrence of a shared subtree computed earlier in the epoch: its output again.
    Reused(usize),
}

/// The outputs of shared subtrees in the epoch being run, by id.
type SharedOutputs = Vec<Option<(Vec<StreamChunk>, Vec<Option<ScalarValue>>)>>;

/// Runs `work` for every worker with its share of the input, on scoped threads when there
/// are at least `parallel_min_rows` input rows (below that, starting threads would cost
/// more than it saves), and concatenates the outputs in worker order.
fn run_workers<W: Send, I: Send>(
    workers: &mut [W],
    parts: Vec<I>,
    parallel: bool,
    work: impl Fn(&mut W, I) -> Result<Vec<StreamChunk>> + Sync,
) -> Result<Vec<StreamChunk>> {
    let results: Vec<Result<Vec<StreamChunk>>> = if workers.len() > 1 && parallel {
        std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter_mut()
                .zip(parts)
                .map(|(w, p)| {
                    let work = &work;
                    s.spawn(move || work(w, p))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EngineError::Internal("a stream worker panicked".into()))
                    })
                })
                .collect()
        })
    } else {
        workers
            .iter_mut()
            .zip(parts)
            .map(|(w, p)| work(w, p))
            .collect()
    };
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Stages a worker's state changes on its own thread (see [`StateTable::stage_dirty`]).
fn stage(tables: Vec<&mut StateTable>) {
    for t in tables {
        t.stage_dirty();
    }
}

/// Splits every chunk by worker: the result has one list of chunks per worker.
fn split(chunks: &[StreamChunk], keys: &[usize], workers: usize) -> Result<Vec<Vec<StreamChunk>>> {
    let mut parts: Vec<Vec<StreamChunk>> = (0..workers).map(|_| Vec::new()).collect();
    for c in chunks {
        for (w, part) in exchange::partition(c, keys, workers)?
            .into_iter()
            .enumerate()
        {
            parts[w].extend(part);
        }
    }
    Ok(parts)
}

fn rows_in(chunks: &[StreamChunk]) -> usize {
    chunks.iter().map(StreamChunk::len).sum()
}

impl Exec {
    fn state_tables(&mut self) -> Vec<&mut StateTable> {
        match self {
            Exec::Source(_) | Exec::Reused(_) => vec![],
            Exec::ProjectFilter(_, i) | Exec::Shared(_, i) => i.state_tables(),
            Exec::Agg(workers, _, i) => {
                let mut v: Vec<&mut StateTable> =
                    workers.iter_mut().flat_map(|a| a.state_tables()).collect();
                v.extend(i.state_tables());
                v
            }
            Exec::Join(workers, _, l, r) => {
                let mut v: Vec<&mut StateTable> =
                    workers.iter_mut().flat_map(|j| j.state_tables()).collect();
                v.extend(l.state_tables());
                v.extend(r.state_tables());
                v
            }
            Exec::Union(_, inputs) => inputs.iter_mut().flat_map(|i| i.state_tables()).collect(),
            Exec::Window(workers, _, i) => {
                let mut v: Vec<&mut StateTable> =
                    workers.iter_mut().flat_map(|w| w.state_tables()).collect();
                v.extend(i.state_tables());
                v
            }
            Exec::Temporal(t, i) => {
                let mut v = t.state_tables();
                v.extend(i.state_tables());
                v
            }
            Exec::Session(t, i) => {
                let mut v = t.state_tables();
                v.extend(i.state_tables());
                v
            }
            Exec::Lookup(t, i) => {
                let mut v = t.state_tables();
                v.extend(i.state_tables());
                v
            }
        }
    }

    /// The earliest clock time at which a temporal filter in the dataflow changes
    /// something by time alone.
    fn next_deadline(&mut self) -> Result<Option<i64>> {
        let min = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        };
        Ok(match self {
            Exec::Source(_) | Exec::Reused(_) => None,
            Exec::Temporal(tf, i) => min(tf.next_deadline()?, i.next_deadline()?),
            Exec::Lookup(lj, i) => min(lj.next_deadline()?, i.next_deadline()?),
            Exec::ProjectFilter(_, i)
            | Exec::Shared(_, i)
            | Exec::Agg(_, _, i)
            | Exec::Window(_, _, i)
            | Exec::Session(_, i) => i.next_deadline()?,
            Exec::Join(_, _, l, r) => min(l.next_deadline()?, r.next_deadline()?),
            Exec::Union(_, branches) => {
                let mut d = None;
                for b in branches {
                    d = min(d, b.next_deadline()?);
                }
                d
            }
        })
    }

    /// Runs the dataflow for one epoch over the sources' chunks and watermarks (per
    /// source, per column); returns the output chunks and the output columns' watermarks.
    fn run(
        &mut self,
        inputs: &mut [Option<Vec<StreamChunk>>],
        watermarks: &[Vec<Option<ScalarValue>>],
        now: i64,
        snapshot: &Snapshot,
        parallel_min_rows: usize,
        shared: &mut SharedOutputs,
    ) -> Result<(Vec<StreamChunk>, Vec<Option<ScalarValue>>)> {
        let min = parallel_min_rows;
        Ok(match self {
            Exec::Source(i) => (
                inputs[*i].take().unwrap_or_default(),
                watermarks[*i].clone(),
            ),
            Exec::Shared(id, input) => {
                let out = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                if shared.len() <= *id {
                    shared.resize(*id + 1, None);
                }
                shared[*id] = Some(out.clone());
                out
            }
            // Run order is plan order, so the computing occurrence has run: chunks share
            // their Arrow buffers, nothing is copied.
            Exec::Reused(id) => shared.get(*id).cloned().flatten().ok_or_else(|| {
                EngineError::Internal(format!("shared subplan #{id} reused before it ran"))
            })?,
            Exec::ProjectFilter(pf, input) => {
                let (chunks, wms) = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                let out = chunks
                    .iter()
                    .map(|c| pf.apply(c))
                    .filter(|c| !matches!(c, Ok(c) if c.is_empty()))
                    .collect::<Result<_>>()?;
                (out, pf.watermarks(&wms)?)
            }
            Exec::Agg(workers, keys, input) => {
                let (chunks, wms) = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                let parallel = rows_in(&chunks) >= min;
                let parts = split(&chunks, keys, workers.len())?;
                let out = run_workers(workers, parts, parallel, |agg, part| {
                    for c in &part {
                        agg.apply(c)?;
                    }
                    let out = agg.flush_with_watermarks(&wms)?;
                    stage(agg.state_tables());
                    Ok(if out.is_empty() { vec![] } else { vec![out] })
                })?;
                let out_wms = workers[0].output_watermarks(&wms);
                (out, out_wms)
            }
            Exec::Join(workers, keys, left, right) => {
                let (l, lw) = left.run(inputs, watermarks, now, snapshot, min, shared)?;
                let (r, rw) = right.run(inputs, watermarks, now, snapshot, min, shared)?;
                let parallel = rows_in(&l) + rows_in(&r) >= min;
                let n = workers.len();
                let parts: Vec<(Vec<StreamChunk>, Vec<StreamChunk>)> = split(&l, &keys[0], n)?
                    .into_iter()
                    .zip(split(&r, &keys[1], n)?)
                    .collect();
                let out = run_workers(workers, parts, parallel, |join, (l, r)| {
                    let mut out = Vec::new();
                    for c in &l {
                        out.push(join.apply(Side::Left, c)?);
                    }
                    for c in &r {
                        out.push(join.apply(Side::Right, c)?);
                    }
                    out.retain(|c| !c.is_empty());
                    // Interval joins drop rows the watermarks made unmatchable.
                    join.clean(&lw, &rw)?;
                    stage(join.state_tables());
                    Ok(out)
                })?;
                let wms = workers[0].output_watermarks(&lw, &rw);
                (out, wms)
            }
            Exec::Window(workers, keys, input) => {
                let (chunks, wms) = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                let parallel = rows_in(&chunks) >= min;
                let parts = split(&chunks, keys, workers.len())?;
                let out = run_workers(workers, parts, parallel, |w, part| {
                    for c in &part {
                        w.apply(c)?;
                    }
                    let out = w.flush_with_watermarks(&wms)?;
                    stage(w.state_tables());
                    Ok(if out.is_empty() { vec![] } else { vec![out] })
                })?;
                let out_wms = workers[0].output_watermarks(&wms);
                (out, out_wms)
            }
            Exec::Lookup(lj, input) => {
                let (chunks, wms) = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                let out = lj.run(&chunks, snapshot, now)?;
                let mut wms = wms;
                wms.resize(lj.output_width(), None);
                (out, wms)
            }
            Exec::Session(sw, input) => {
                let (chunks, wms) = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                for c in &chunks {
                    sw.apply(c)?;
                }
                let wm = sw.time_watermark(&wms);
                let (out, earliest) = sw.close(wm.as_ref())?;
                let out_wms = sw.output_watermarks(&wms, earliest);
                (out.into_iter().collect(), out_wms)
            }
            Exec::Temporal(tf, input) => {
                let (chunks, wms) = input.run(inputs, watermarks, now, snapshot, min, shared)?;
                tf.set_now(now);
                (tf.run(&chunks)?.into_iter().collect(), wms)
            }
            Exec::Union(schema, branches) => {
                let mut out = Vec::new();
                // A union's column watermark is the smallest of its branches' (alignment:
                // a row can still come from the branch that is furthest behind).
                let mut wms: Option<Vec<Option<ScalarValue>>> = None;
                for b in branches {
                    let (chunks, bw) = b.run(inputs, watermarks, now, snapshot, min, shared)?;
                    for c in chunks {
                        let data =
                            RecordBatch::try_new(Arc::clone(schema), c.data().columns().to_vec())?;
                        out.push(StreamChunk::new(c.ops().to_vec(), data)?);
                    }
                    wms = Some(match wms {
                        None => bw,
                        Some(acc) => acc
                            .into_iter()
                            .zip(bw)
                            .map(|(a, b)| match (a, b) {
                                (Some(a), Some(b)) => {
                                    Some(if b.partial_cmp(&a) == Some(std::cmp::Ordering::Less) {
                                        b
                                    } else {
                                        a
                                    })
                                }
                                _ => None,
                            })
                            .collect(),
                    });
                }
                let width = schema.fields().len();
                let mut wms = wms.unwrap_or_default();
                wms.resize(width, None);
                (out, wms)
            }
        })
    }
}

/// A put (`Some(value)`) or delete (`None`) of a key.
type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// One view's changes in an epoch, with the storage key of each row.
type Changes = Vec<(Op, Vec<ScalarValue>, Vec<u8>)>;

struct View {
    def: Arc<TableDef>,
    types: Vec<DataType>,
    root: Exec,
    sources: Vec<Source>,
    failed: Option<String>,
    rows_read: u64,
    /// Has a temporal filter: runs as time passes, not only when rows change.
    temporal: bool,
    /// When time alone next changes its output (temporal filters; None: never).
    deadline: Option<i64>,
    /// Per relation it reads, the visible columns its operators look at
    /// ([`PlanNode::columns_read`]).
    reads: HashMap<TableId, Vec<bool>>,
}

impl View {
    /// Whether the view reads a column of `table` that a batch among `entries` left
    /// out (see [`changelog::Replay::left_out`]).
    fn needs_whole(&self, table: TableId, entries: &[changelog::LogEntry]) -> bool {
        let Some(read) = self.reads.get(&table) else {
            return false;
        };
        // Only a source the view reads live (backfilled) is given the batches.
        let live = self
            .sources
            .iter()
            .any(|s| s.position == Position::Done && s.def.as_ref().is_some_and(|d| d.id == table));
        if !live {
            return false;
        }
        entries
            .iter()
            .flat_map(|e| &e.batches)
            .filter(|b| b.table == table)
            .filter_map(|b| b.replay.as_ref())
            .any(|r| {
                r.left_out
                    .iter()
                    .any(|&c| read.get(c).copied().unwrap_or(true))
            })
    }

    fn backfilling(&self) -> bool {
        self.sources.iter().any(|s| s.position != Position::Done)
    }

    fn encode_positions(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &self.sources {
            match &s.position {
                Position::Done => out.push(0),
                Position::At(k) => {
                    out.push(1);
                    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                    out.extend_from_slice(k);
                }
            }
        }
        out
    }

    fn decode_positions(&mut self, mut b: &[u8]) -> Result<()> {
        let bad = || EngineError::Corrupt {
            table: self.def.name.clone(),
            reason: "bad backfill position".into(),
        };
        for s in &mut self.sources {
            let (&tag, rest) = b.split_first().ok_or_else(bad)?;
            b = rest;
            s.position = match tag {
                0 => Position::Done,
                1 => {
                    if b.len() < 4 {
                        return Err(bad());
                    }
                    let n = u32::from_be_bytes(b[..4].try_into().expect("4 bytes")) as usize;
                    let k = b.get(4..4 + n).ok_or_else(bad)?.to_vec();
                    b = &b[4 + n..];
                    Position::At(k)
                }
                _ => return Err(bad()),
            };
        }
        if !b.is_empty() {
            // More inputs were stored than the plan has: the view was planned differently
            // when it was created (see `plan::STATE_VERSION`); its state would be misread.
            return Err(EngineError::Corrupt {
                table: self.def.name.clone(),
                reason: format!(
                    "its plan now reads {} inputs, but more were stored when it was created; drop and recreate it",
                    self.sources.len()
                ),
            });
        }
        Ok(())
    }
}

/// Every deployed view. Held (locked) for the whole of an epoch; DDL that adds or removes
/// views locks it too, so it never races an epoch.
pub struct Graph {
    db: Arc<Database>,
    config: RuntimeConfig,
    budget: Arc<MemoryBudget>,
    views: Vec<View>,
    epoch: u64,
    /// The last change-log entry in committed view state.
    consumed_seq: u64,
    last_sync: Instant,
    status: Arc<StdMutex<Vec<BackfillStatus>>>,
    /// Each relation's watermark as of the consumed change log (encoded values).
    watermarks: HashMap<TableId, Vec<u8>>,
    /// The clock when the last epoch ran (temporal filters); the clock the runtime uses
    /// never goes back below it, also across restarts (`CLOCK_KEY`).
    last_now: i64,
    /// An epoch was asked for at the current time (`flush_clock`).
    force_epoch: bool,
}

pub struct StreamRuntime {
    db: Arc<Database>,
    graph: Arc<Mutex<Graph>>,
    progress: watch::Sender<Progress>,
    flush_requested: Notify,
    status: Arc<StdMutex<Vec<BackfillStatus>>>,
    budget: Arc<MemoryBudget>,
    /// Why the barrier loop stopped, if it did.
    stopped: StdMutex<Option<String>>,
}

impl std::fmt::Debug for StreamRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRuntime").finish_non_exhaustive()
    }
}

impl StreamRuntime {
    pub fn new(db: Arc<Database>, config: RuntimeConfig) -> Result<Arc<Self>> {
        let epoch = match db.store().get(EPOCH_KEY)? {
            Some(b) => {
                u64::from_be_bytes(b.as_slice().try_into().map_err(|_| EngineError::Corrupt {
                    table: "epoch".into(),
                    reason: "bad length".into(),
                })?)
            }
            None => 0,
        };
        let consumed = changelog::consumed(db.store())?;
        let watermarks = match db.store().get(WATERMARKS_KEY)? {
            Some(b) => decode_watermarks(&b)?,
            None => HashMap::new(),
        };
        let last_now = match db.store().get(CLOCK_KEY)? {
            Some(b) => {
                i64::from_be_bytes(b.as_slice().try_into().map_err(|_| EngineError::Corrupt {
                    table: "runtime clock".into(),
                    reason: "bad length".into(),
                })?)
            }
            None => i64::MIN,
        };
        let budget = MemoryBudget::new(config.memory_budget);
        let status = Arc::new(StdMutex::new(Vec::new()));
        let graph = Graph {
            db: Arc::clone(&db),
            config,
            budget: Arc::clone(&budget),
            views: Vec::new(),
            epoch,
            consumed_seq: consumed,
            last_sync: Instant::now(),
            status: Arc::clone(&status),
            watermarks,
            last_now,
            force_epoch: false,
        };
        let (progress, _) = watch::channel(Progress {
            epoch,
            consumed_seq: consumed,
        });
        Ok(Arc::new(StreamRuntime {
            db,
            graph: Arc::new(Mutex::new(graph)),
            progress,
            flush_requested: Notify::new(),
            status,
            budget,
            stopped: StdMutex::new(None),
        }))
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn memory_used(&self) -> usize {
        self.budget.used()
    }

    /// Backfill status of every view still backfilling or created since the start.
    pub fn backfills(&self) -> Vec<BackfillStatus> {
        self.status.lock().expect("status lock").clone()
    }

    /// Locks the graph (waiting for a running epoch to commit), for DDL.
    pub async fn lock(&self) -> OwnedMutexGuard<Graph> {
        Arc::clone(&self.graph).lock_owned().await
    }

    /// Runs the barrier loop until the process exits.
    pub fn start(self: &Arc<Self>) {
        let rt = Arc::clone(self);
        tokio::spawn(async move { rt.run_loop().await });
    }

    async fn run_loop(self: Arc<Self>) {
        let interval = self.graph.lock().await.config.barrier_interval;
        loop {
            tokio::select! {
                _ = self.flush_requested.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            let graph = Arc::clone(&self.graph).lock_owned().await;
            if !graph.has_work() {
                continue;
            }
            let result = tokio::task::spawn_blocking(move || {
                let mut graph = graph;
                let r = graph.run_epoch();
                (graph, r)
            })
            .await;
            match result {
                Ok((_, Ok(progress))) => {
                    self.progress.send_replace(progress);
                }
                Ok((_, Err(e))) => {
                    // Nothing of the epoch was committed, and its input is out of the
                    // queue: stop rather than carry on inconsistently. A restart replays
                    // it from the change log.
                    self.stop(format!("epoch failed: {e}"));
                    return;
                }
                Err(e) => {
                    self.stop(format!("epoch task panicked: {e}"));
                    return;
                }
            }
        }
    }

    fn stop(&self, reason: String) {
        tracing::error!("stream runtime stopped: {reason}; restart the server to recover");
        *self.stopped.lock().expect("stopped lock") = Some(reason);
        self.progress.send_modify(|_| {});
    }

    fn check_running(&self) -> Result<()> {
        match &*self.stopped.lock().expect("stopped lock") {
            Some(r) => Err(EngineError::Internal(format!(
                "the stream runtime stopped ({r}); restart the server to recover"
            ))),
            None => Ok(()),
        }
    }

    /// Returns once every change committed before the call is in every view.
    /// After the test clock moved: waits for an epoch that ran at the new time, when some
    /// view has a temporal filter.
    pub async fn flush_clock(&self) -> Result<()> {
        let epoch = {
            let mut graph = self.graph.lock().await;
            if !graph.views.iter().any(|v| v.failed.is_none() && v.temporal) {
                return Ok(());
            }
            // Under the lock no epoch runs: the next one starts after this.
            graph.force_epoch = true;
            self.progress().epoch
        };
        self.wait_for(|p| p.epoch > epoch).await
    }

    pub async fn flush(&self) -> Result<()> {
        let target = self.db.last_change_seq();
        self.wait_for(|p| p.consumed_seq >= target).await
    }

    /// Waits until `view` has finished backfilling (or failed, or was dropped).
    pub async fn wait_backfill(&self, view: TableId) -> Result<()> {
        loop {
            let pending = self.backfills().iter().any(|s| s.view == view && !s.done);
            if !pending {
                return Ok(());
            }
            let epoch = self.progress().epoch;
            self.wait_for(|p| p.epoch > epoch).await?;
        }
    }

    async fn wait_for(&self, done: impl Fn(&Progress) -> bool) -> Result<()> {
        let mut rx = self.progress.subscribe();
        loop {
            self.check_running()?;
            if done(&rx.borrow_and_update()) {
                return Ok(());
            }
            self.flush_requested.notify_one();
            // Wake up now and then even without news, in case the notify raced a tick.
            let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
        }
    }

    /// The error a failed view stopped with.
    pub fn failure(&self, view: TableId) -> Result<Option<String>> {
        Ok(self
            .db
            .store()
            .get(&failure_key(view))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

/// Meta writes that go with creating a view: its backfill starts at the beginning of
/// every source. Commit them with the catalog change.
pub fn creation_writes(view: TableId, plan: &PlanNode) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut positions = Vec::new();
    for _ in 0..plan.input_count() {
        positions.push(1);
        positions.extend_from_slice(&0u32.to_be_bytes());
    }
    vec![(backfill_key(view), positions)]
}

/// The key ranges and meta keys to delete when dropping a view.
/// Key ranges `[lo, hi)` and single keys.
pub type KeysToDelete = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

pub fn drop_ranges(view: TableId) -> KeysToDelete {
    (
        vec![state::view_range(view.0)],
        vec![backfill_key(view), failure_key(view)],
    )
}

impl Graph {
    fn has_work(&self) -> bool {
        self.db.has_pending_changes()
            || self
                .views
                .iter()
                .any(|v| v.failed.is_none() && v.backfilling())
            || self.clock_due()
    }

    /// The time temporal filters see: the wall clock, but never earlier than the last
    /// epoch's (a clock stepped back would otherwise bring expired rows back, and their
    /// deletes would not match). A test clock is taken as set.
    fn clock(&self) -> i64 {
        let now = crate::clock::now_micros();
        if crate::clock::manual().is_some() {
            now
        } else {
            now.max(self.last_now)
        }
    }

    /// Whether a temporal filter is due (the clock reached the time it next changes
    /// something), or an epoch at the current time was asked for (`flush_clock`).
    fn clock_due(&self) -> bool {
        if self.force_epoch {
            return true;
        }
        let now = self.clock();
        self.views
            .iter()
            .any(|v| v.failed.is_none() && v.deadline.is_some_and(|d| now >= d))
    }

    /// Deploys a view: `def` is its catalog entry, `plan` its stream plan. Views must be
    /// deployed after the views they read. A `new` view starts backfilling; an existing
    /// one resumes where its last committed epoch left it.
    pub fn deploy(&mut self, def: Arc<TableDef>, plan: &PlanNode, new: bool) -> Result<()> {
        let mut alloc =
            StateAlloc::new(def.id.0, self.db.store().clone(), Arc::clone(&self.budget));
        let catalog = self.db.catalog();
        let mut sources = Vec::new();
        let root = build(
            plan,
            &mut alloc,
            &mut sources,
            &catalog,
            self.config.workers.max(1),
        )?;
        let mut view = View {
            types: table::stored_types(&def),
            def: Arc::clone(&def),
            root,
            sources,
            failed: None,
            rows_read: 0,
            temporal: plan.has_temporal_filter() || plan.has_external_lookup(),
            // Unknown until its first epoch: run one.
            deadline: (plan.has_temporal_filter() || plan.has_external_lookup())
                .then_some(i64::MIN),
            reads: plan.columns_read(),
        };
        let store = self.db.store();
        if !new {
            match store.get(&backfill_key(def.id))? {
                // A view whose stored positions do not fit its plan fails alone; the
                // server and the other views start.
                Some(b) => {
                    if let Err(e) = view.decode_positions(&b) {
                        view.failed = Some(e.to_string());
                    }
                }
                None => view
                    .sources
                    .iter_mut()
                    .for_each(|s| s.position = Position::Done),
            }
            if let Some(msg) = store.get(&failure_key(def.id))? {
                view.failed = Some(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        self.status
            .lock()
            .expect("status lock")
            .push(BackfillStatus {
                view: def.id,
                name: def.name.clone(),
                rows_read: 0,
                done: !view.backfilling() || view.failed.is_some(),
            });
        self.views.push(view);
        self.publish_columns_read();
        Ok(())
    }

    /// Forgets a view (its stored state is deleted by the caller's DDL commit).
    pub fn remove(&mut self, view: TableId) {
        self.views.retain(|v| v.def.id != view);
        self.status
            .lock()
            .expect("status lock")
            .retain(|s| s.view != view);
        self.publish_columns_read();
    }

    /// Tells sources which of their columns the views read
    /// ([`Database::columns_read`]).
    fn publish_columns_read(&self) {
        let mut read: HashMap<TableId, Vec<bool>> = HashMap::new();
        for (t, cols) in self.views.iter().flat_map(|v| &v.reads) {
            let all = read.entry(*t).or_insert_with(|| vec![false; cols.len()]);
            for (a, c) in all.iter_mut().zip(cols) {
                *a |= *c;
            }
        }
        self.db
            .set_columns_read(read.into_iter().map(|(t, c)| (t, c.into())).collect());
    }

    fn run_epoch(&mut self) -> Result<Progress> {
        let (snapshot, entries) = self.db.cut_changes();
        let last_seq = entries.last().map(|e| e.seq);
        let mut table_changes: HashMap<TableId, Vec<&RowChange>> = HashMap::new();
        let mut table_batches: HashMap<TableId, Vec<&RecordBatch>> = HashMap::new();
        let mut watermarks_moved = false;
        // Sources whose logged rows could not be made again at start (see `LogEntry::lost`).
        let mut lost: HashMap<TableId, &String> = HashMap::new();
        for e in &entries {
            for (t, reason) in &e.lost {
                lost.entry(*t).or_insert(reason);
            }
            for c in &e.changes {
                table_changes.entry(c.table).or_default().push(c);
            }
            for b in &e.batches {
                table_batches.entry(b.table).or_default().push(&b.data);
            }
            for (t, v) in &e.watermarks {
                self.watermarks.insert(*t, v.clone());
                watermarks_moved = true;
            }
        }
        // Batches some of whose columns were left out (no view read them when they were
        // made), made again whole for the views that read one: a view created since.
        let catalog = self.db.catalog();
        let mut whole: HashMap<TableId, std::result::Result<Vec<RecordBatch>, String>> =
            HashMap::new();
        for view in self.views.iter().filter(|v| v.failed.is_none()) {
            for (t, batches) in &table_batches {
                if whole.contains_key(t) || !view.needs_whole(*t, &entries) {
                    continue;
                }
                let Some(def) = catalog.table(*t) else {
                    whole.insert(*t, Err(format!("source {} no longer exists", t.0)));
                    continue;
                };
                let made = entries
                    .iter()
                    .flat_map(|e| &e.batches)
                    .filter(|b| b.table == *t)
                    .map(|b| match &b.replay {
                        Some(r) if !r.left_out.is_empty() => changelog::remake(def, r),
                        _ => Ok(b.data.clone()),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!(
                            "rows of source \"{}\" logged by reference cannot be made again with the columns left out when they were read: {e}",
                            def.name
                        )
                    });
                debug_assert!(made.as_ref().map_or(true, |m| m.len() == batches.len()));
                whole.insert(*t, made);
            }
        }
        // Only in an epoch that has some.
        let whole_batches = (!whole.is_empty()).then(|| {
            let mut batches = table_batches.clone();
            for (t, made) in &whole {
                if let Ok(made) = made {
                    batches.insert(*t, made.iter().collect());
                }
            }
            batches
        });
        let watermarks = &self.watermarks;
        let now = self.clock();
        self.last_now = now;
        self.force_epoch = false;
        let mut outputs: HashMap<TableId, Changes> = HashMap::new();
        let mut batch = WriteBatch::default();
        let mut failed_now: Vec<TableId> = Vec::new();
        let batch_rows = self.config.backfill_batch;
        let parallel_min_rows = self.config.parallel_min_rows;
        // The epoch this run commits (sink log entries are keyed by it).
        let epoch = self.epoch + 1;
        for view in &mut self.views {
            if view.failed.is_some() {
                continue;
            }
            let was_backfilling = view.backfilling();
            let upstream_failed = view
                .sources
                .iter()
                .filter_map(|s| s.def.as_ref())
                .find(|d| failed_now.contains(&d.id))
                .map(|d| d.name.clone());
            // Only a source the view reads live (backfilled) would have been given them.
            let rows_lost = view
                .sources
                .iter()
                .filter(|s| s.position == Position::Done)
                .filter_map(|s| s.def.as_ref())
                .find_map(|d| lost.get(&d.id))
                .copied()
                .or_else(|| {
                    whole
                        .iter()
                        .filter(|(t, _)| view.needs_whole(**t, &entries))
                        .find_map(|(_, made)| made.as_ref().err())
                });
            let reads_left_out = whole.keys().any(|t| view.needs_whole(*t, &entries));
            let result = match (upstream_failed, rows_lost) {
                (_, Some(reason)) => Err(EngineError::RowsLost((*reason).clone())),
                (Some(name), None) => Err(EngineError::Internal(format!(
                    "materialized view \"{name}\" it reads failed"
                ))),
                (None, None) => step(
                    view,
                    &EpochInput {
                        snapshot: &snapshot,
                        table_changes: &table_changes,
                        table_batches: match &whole_batches {
                            Some(whole) if reads_left_out => whole,
                            _ => &table_batches,
                        },
                        watermarks,
                        now,
                        outputs: &outputs,
                    },
                    batch_rows,
                    parallel_min_rows,
                )
                .and_then(|changes| {
                    // A sink's changes go to its log (delivered by its task), not to
                    // stored contents.
                    let writes = if view.def.is_sink() {
                        if changes.is_empty() || is_blackhole(&view.def) {
                            Vec::new()
                        } else {
                            let entry = crate::sink_log::encode(
                                changes.iter().map(|(op, row, _)| (*op, row.as_slice())),
                            )?;
                            vec![(crate::sink_log::key(view.def.id, epoch), Some(entry))]
                        }
                    } else {
                        let mut writes = content_writes(view, &snapshot, &changes)?;
                        index_writes(&catalog, view, &snapshot, &mut writes)?;
                        writes
                    };
                    Ok((changes, writes))
                }),
            };
            match result {
                Ok((changes, writes)) => {
                    for t in view.root.state_tables() {
                        t.write_dirty(&mut batch);
                    }
                    for (k, v) in writes {
                        match v {
                            Some(v) => batch.put(k, v),
                            None => batch.delete(k),
                        }
                    }
                    if was_backfilling {
                        if view.backfilling() {
                            batch.put(backfill_key(view.def.id), view.encode_positions());
                        } else {
                            batch.delete(backfill_key(view.def.id));
                        }
                    }
                    outputs.insert(view.def.id, changes);
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!("materialized view \"{}\" failed: {msg}", view.def.name);
                    // Roll the view's state back to its last commit.
                    for t in view.root.state_tables() {
                        t.discard();
                    }
                    batch.put(failure_key(view.def.id), msg.as_bytes());
                    view.failed = Some(msg);
                    failed_now.push(view.def.id);
                }
            }
        }
        if let Some(seq) = last_seq {
            changelog::mark_consumed(&mut batch, seq);
        }
        if watermarks_moved {
            // Relations dropped since are forgotten.
            let catalog = self.db.catalog();
            self.watermarks.retain(|t, _| catalog.table(*t).is_some());
            batch.put(WATERMARKS_KEY, encode_watermarks(&self.watermarks));
        }
        self.epoch += 1;
        batch.put(EPOCH_KEY, self.epoch.to_be_bytes());
        batch.put(CLOCK_KEY, now.to_be_bytes());
        for view in &mut self.views {
            if view.temporal && view.failed.is_none() {
                view.deadline = view.root.next_deadline()?;
            }
        }
        self.db.store().write(batch)?;
        if self.last_sync.elapsed() >= self.config.checkpoint_interval {
            self.db.store().sync_wal()?;
            self.last_sync = Instant::now();
        }
        self.evict();
        {
            let mut status = self.status.lock().expect("status lock");
            for s in status.iter_mut() {
                if let Some(v) = self.views.iter().find(|v| v.def.id == s.view) {
                    s.rows_read = v.rows_read;
                    s.done = !v.backfilling() || v.failed.is_some();
                }
            }
        }
        if let Some(seq) = last_seq {
            self.consumed_seq = seq;
        }
        Ok(Progress {
            epoch: self.epoch,
            consumed_seq: self.consumed_seq,
        })
    }

    /// Brings cached state back under the memory budget: first buckets not used in this
    /// epoch, then everything (all of it is written back by now).
    fn evict(&mut self) {
        for v in &mut self.views {
            for t in v.root.state_tables() {
                t.tick();
            }
        }
        for keep in [1, 0] {
            if !self.budget.over() {
                return;
            }
            for v in &mut self.views {
                for t in v.root.state_tables() {
                    t.evict(keep);
                }
            }
        }
    }
}

fn build(
    node: &PlanNode,
    alloc: &mut StateAlloc,
    sources: &mut Vec<Source>,
    catalog: &strom_catalog::Catalog,
    workers: usize,
) -> Result<Exec> {
    // A reusing occurrence of a shared subtree builds nothing below it.
    if let NodeKind::Shared {
        id,
        computed_here: false,
    } = node.kind
    {
        return Ok(Exec::Reused(id));
    }
    let mut inputs = node
        .inputs
        .iter()
        .map(|i| build(i, alloc, sources, catalog, workers))
        .collect::<Result<Vec<_>>>()?;
    Ok(match &node.kind {
        NodeKind::Source { relation, name, .. } => {
            let def = catalog.table(*relation).ok_or_else(|| {
                EngineError::Internal(format!("source \"{name}\" is not in the catalog"))
            })?;
            sources.push(Source {
                types: table::stored_types(def),
                def: Some(Arc::new(def.clone())),
                values: Vec::new(),
                schema: Arc::clone(&node.schema),
                position: Position::At(Vec::new()),
            });
            Exec::Source(sources.len() - 1)
        }
        NodeKind::Filter { predicate, .. } => {
            let input = inputs.remove(0);
            let cols = column_refs(&node.schema, 0..node.schema.fields().len());
            Exec::ProjectFilter(
                ProjectFilter::try_new(
                    Some(Arc::clone(predicate)),
                    cols,
                    Arc::clone(&node.schema),
                )?
                .with_input(Arc::clone(&node.schema)),
                Box::new(input),
            )
        }
        NodeKind::Project { exprs, .. } => Exec::ProjectFilter(
            ProjectFilter::try_new(None, exprs.clone(), Arc::clone(&node.schema))?
                .with_input(Arc::clone(&node.inputs[0].schema)),
            Box::new(inputs.remove(0)),
        ),
        NodeKind::HashAgg {
            group_keys,
            calls,
            always_present,
            window,
            append_only_input,
        } => {
            // A global aggregate has one group: one worker.
            let n = if group_keys.is_empty() { 1 } else { workers };
            let mut aggs = alloc.build_workers(n, |alloc| {
                HashAgg::try_new(
                    &node.inputs[0].schema,
                    group_keys.clone(),
                    calls.clone(),
                    Arc::clone(&node.schema),
                    *window,
                    *append_only_input,
                    alloc,
                )
            })?;
            if let Some(key) = always_present {
                let w = exchange::worker_of(&keys::encode_key(key)?, n);
                aggs[w].set_always_present(key.clone())?;
            }
            for (i, agg) in aggs.iter_mut().enumerate() {
                agg.set_worker(i, n);
            }
            Exec::Agg(aggs, group_keys.clone(), Box::new(inputs.remove(0)))
        }
        NodeKind::HashJoin {
            join_type,
            left_keys,
            right_keys,
            condition,
            null_equal,
            cleaning,
            rows_by_key,
            ..
        } => {
            let right = inputs.pop().expect("join has two inputs");
            let left = inputs.pop().expect("join has two inputs");
            // Without keys all rows meet in one bucket: one worker.
            let n = if left_keys.is_empty() { 1 } else { workers };
            let joins = alloc.build_workers(n, |alloc| {
                HashJoin::try_new(
                    *join_type,
                    left_keys.clone(),
                    right_keys.clone(),
                    &node.inputs[0].schema,
                    &node.inputs[1].schema,
                    condition.as_ref().map(|(c, _)| Arc::clone(c)),
                    *null_equal,
                    *cleaning,
                    rows_by_key.clone(),
                    alloc,
                )
            })?;
            let mut joins = joins;
            for (i, j) in joins.iter_mut().enumerate() {
                j.set_worker(i, n);
            }
            Exec::Join(
                joins,
                [left_keys.clone(), right_keys.clone()],
                Box::new(left),
                Box::new(right),
            )
        }
        NodeKind::UnionAll => Exec::Union(Arc::clone(&node.schema), inputs),
        NodeKind::Shared { id, .. } => Exec::Shared(*id, Box::new(inputs.remove(0))),
        NodeKind::LookupJoin {
            left_outer,
            left_keys,
            dim,
            dim_name,
            dim_keys,
            dim_columns,
            via,
        } => {
            let def = Arc::new(
                catalog
                    .table(*dim)
                    .ok_or_else(|| {
                        EngineError::Internal(format!(
                            "dimension \"{dim_name}\" is not in the catalog"
                        ))
                    })?
                    .clone(),
            );
            let source = match via {
                LookupVia::Key => LookupDim::Key,
                LookupVia::Index { id, .. } => LookupDim::Index(*id),
                LookupVia::External { .. } => {
                    let options = crate::lookup::LookupOptions::parse(
                        &def.connector
                            .as_ref()
                            .expect("external tables have options")
                            .options,
                    )
                    .map_err(|e| EngineError::Unsupported(format!("table \"{dim_name}\": {e}")))?;
                    let stats = crate::lookup::new_stats(TableId(alloc.view()), dim_name);
                    LookupDim::External(Box::new(External::new(
                        crate::lookup::open(&def)?,
                        &options,
                        stats,
                        alloc,
                    )))
                }
            };
            let mut join = LookupJoin::try_new(
                *left_outer,
                left_keys.clone(),
                def,
                dim_keys.clone(),
                dim_columns.clone(),
                source,
                Arc::clone(&node.schema),
                node.inputs[0].append_only,
                alloc,
            )?;
            join.set_read_threads(workers);
            Exec::Lookup(Box::new(join), Box::new(inputs.remove(0)))
        }
        NodeKind::SessionWindow { time, gap, keys } => Exec::Session(
            Box::new(SessionWindow::try_new(
                &node.inputs[0].schema,
                Arc::clone(&node.schema),
                *time,
                *gap,
                keys.clone(),
                alloc,
            )?),
            Box::new(inputs.remove(0)),
        ),
        NodeKind::TemporalFilter {
            column,
            lower,
            upper,
        } => Exec::Temporal(
            Box::new(TemporalFilter::try_new(
                Arc::clone(&node.schema),
                *column,
                *lower,
                *upper,
                alloc,
            )?),
            Box::new(inputs.remove(0)),
        ),
        NodeKind::Values { rows } => {
            sources.push(Source {
                def: None,
                values: rows.clone(),
                types: Vec::new(),
                schema: Arc::clone(&node.schema),
                position: Position::At(Vec::new()),
            });
            Exec::Source(sources.len() - 1)
        }
        NodeKind::OverWindow {
            partition_by,
            order_by,
            recompute,
            route,
            window,
            ..
        } => {
            let n = if route.is_some() { workers } else { 1 };
            let mut ops = alloc.build_workers(n, |alloc| {
                OverWindow::try_new(
                    partition_by.clone(),
                    order_by.clone(),
                    recompute.clone(),
                    Arc::clone(&node.inputs[0].schema),
                    Arc::clone(&node.schema),
                    *window,
                    alloc,
                )
            })?;
            for (i, op) in ops.iter_mut().enumerate() {
                op.set_worker(i, n);
            }
            Exec::Window(
                ops,
                route.clone().unwrap_or_default(),
                Box::new(inputs.remove(0)),
            )
        }
    })
}

/// Runs one view for one epoch and returns its output changes.
/// What an epoch hands every view: the cut's snapshot, the tables' changes and
/// watermarks, the clock, and the outputs of the views run before.
struct EpochInput<'a> {
    snapshot: &'a Snapshot,
    table_changes: &'a HashMap<TableId, Vec<&'a RowChange>>,
    /// Column-wise rows of sources (see [`crate::changelog::SourceBatch`]).
    table_batches: &'a HashMap<TableId, Vec<&'a RecordBatch>>,
    watermarks: &'a HashMap<TableId, Vec<u8>>,
    now: i64,
    outputs: &'a HashMap<TableId, Changes>,
}

fn step(
    view: &mut View,
    epoch: &EpochInput<'_>,
    batch_rows: usize,
    parallel_min_rows: usize,
) -> Result<Changes> {
    let EpochInput {
        snapshot,
        table_changes,
        table_batches,
        watermarks,
        now,
        outputs,
    } = *epoch;
    let mut inputs: Vec<Option<Vec<StreamChunk>>> = Vec::new();
    let mut input_watermarks: Vec<Vec<Option<ScalarValue>>> = Vec::new();
    let mut rows_read = 0u64;
    for src in &mut view.sources {
        let mut rows: Vec<(Op, Vec<ScalarValue>)> = Vec::new();
        let Some(def) = src.def.clone() else {
            // Constant rows: all of them in the first epoch, then never again.
            if src.position != Position::Done {
                rows.extend(src.values.iter().map(|r| (Op::Insert, r.clone())));
                src.position = Position::Done;
            }
            inputs.push(if rows.is_empty() {
                None
            } else {
                Some(vec![StreamChunk::from_rows(&src.schema, &rows)?])
            });
            input_watermarks.push(vec![None; src.schema.fields().len()]);
            continue;
        };
        let visible = src.schema.fields().len();
        // Whether the source was past its backfill before this epoch: then, and only
        // then, this epoch's changes are forwarded (the same rule for rows and batches).
        let live = src.position == Position::Done;
        let forward = |key: &[u8], position: &Position| match position {
            Position::Done => true,
            Position::At(p) => !p.is_empty() && key <= p.as_slice(),
        };
        if def.is_view() {
            // Scan first (the snapshot holds the upstream as of the last epoch), then
            // forward this epoch's changes up to the new position.
            let scanned = scan(src, &def, snapshot, batch_rows, &mut rows)?;
            rows_read += scanned;
            if let Some(changes) = outputs.get(&def.id) {
                for (op, row, key) in changes {
                    if forward(key, &src.position) {
                        rows.push((*op, row.clone()));
                    }
                }
            }
        } else {
            // Forward changes up to the old position, then scan (the snapshot already
            // holds this epoch's changes).
            if let Some(changes) = table_changes.get(&def.id) {
                for c in changes {
                    if !forward(&c.key, &src.position) {
                        continue;
                    }
                    let decode = |b: &Vec<u8>| -> Result<Vec<ScalarValue>> {
                        let mut r = table::decode(&def, &src.types, b)?;
                        r.truncate(visible);
                        Ok(r)
                    };
                    match (&c.old, &c.new) {
                        (Some(o), Some(n)) => {
                            rows.push((Op::UpdateDelete, decode(o)?));
                            rows.push((Op::UpdateInsert, decode(n)?));
                        }
                        (Some(o), None) => rows.push((Op::Delete, decode(o)?)),
                        (None, Some(n)) => rows.push((Op::Insert, decode(n)?)),
                        (None, None) => {}
                    }
                }
            }
            rows_read += scan(src, &def, snapshot, batch_rows, &mut rows)?;
        }
        // Column-wise source rows go to the dataflow as they are, in insert chunks. Like
        // row-wise changes (`forward` is false before the scan finishes), they count
        // from the epoch after the view's first one.
        let mut chunks = Vec::new();
        if live && !def.is_view() {
            if let Some(batches) = table_batches.get(&def.id) {
                chunks.extend(insert_chunks(&src.schema, batches)?);
            }
        }
        // A source's watermark reaches the dataflow once its backfill has delivered
        // everything (before, rows behind it may still come from the scan); the epoch
        // whose scan finishes already carries it.
        let mut wms = vec![None; src.schema.fields().len()];
        if src.position == Position::Done {
            if let (Some(wm), Some(bytes)) = (&def.watermark, watermarks.get(&def.id)) {
                if wm.column < wms.len() {
                    wms[wm.column] = Some(crate::watermark::decode(
                        bytes,
                        src.schema.field(wm.column).data_type(),
                    )?);
                }
            }
        }
        input_watermarks.push(wms);
        if !rows.is_empty() {
            chunks.push(StreamChunk::from_rows(&src.schema, &rows)?);
        }
        inputs.push((!chunks.is_empty()).then_some(chunks));
    }
    view.rows_read += rows_read;
    let (out, _) = view.root.run(
        &mut inputs,
        &input_watermarks,
        now,
        snapshot,
        parallel_min_rows,
        &mut Vec::new(),
    )?;
    let mut changes = Vec::new();
    if is_blackhole(&view.def) {
        // Computed, and dropped: no rows to make, and no view reads a sink.
        return Ok(changes);
    }
    for chunk in out {
        // The dataflow computes DataFusion's types (row_number() is UInt64, a grouping id
        // UInt8); the view stores its catalog types.
        let data = chunk.data();
        let chunk = if data
            .columns()
            .iter()
            .zip(&view.types)
            .all(|(c, t)| c.data_type() == t)
        {
            chunk
        } else {
            let cast = data
                .columns()
                .iter()
                .zip(&view.types)
                .map(|(c, t)| datafusion::arrow::compute::cast(c, t))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let fields: Vec<_> = cast
                .iter()
                .zip(data.schema().fields())
                .map(|(c, f)| f.as_ref().clone().with_data_type(c.data_type().clone()))
                .collect();
            let options = datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(data.num_rows()));
            let batch = RecordBatch::try_new_with_options(
                Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                cast,
                &options,
            )?;
            StreamChunk::new(chunk.ops().to_vec(), batch)?
        };
        for (op, row) in chunk.rows()? {
            let key = table::key_of(&view.def, &row)?;
            changes.push((op, row, key));
        }
    }
    Ok(changes)
}

/// Rows below which consecutive source batches are joined into one chunk: operators pay
/// a fixed cost per chunk (expression setup, routing, output batches), so tiny batches
/// (a short file, a generator's small blocks) are merged, while larger ones (a
/// generator's default block of 1,024 events holds ~940 bids) go on uncopied.
const MIN_CHUNK_ROWS: usize = 256;

/// Source batches (visible columns, declared types) as chunks of inserts in the
/// dataflow's input schema. A batch of at least [`MIN_CHUNK_ROWS`] rows becomes a chunk
/// as it is (its columns are shared, not copied: most views read a few of a source's
/// columns, and the projection above drops the rest); runs of smaller batches are
/// concatenated.
fn insert_chunks(schema: &SchemaRef, batches: &[&RecordBatch]) -> Result<Vec<StreamChunk>> {
    let mut chunks = Vec::new();
    let mut run: Vec<&RecordBatch> = Vec::new();
    let mut run_rows = 0;
    for b in batches.iter().copied().filter(|b| b.num_rows() > 0) {
        // A batch large enough alone is not copied with the small ones before it.
        if b.num_rows() >= MIN_CHUNK_ROWS && run_rows > 0 {
            chunks.push(insert_chunk(schema, &run, run_rows)?);
            (run, run_rows) = (Vec::new(), 0);
        }
        run.push(b);
        run_rows += b.num_rows();
        if run_rows >= MIN_CHUNK_ROWS {
            chunks.push(insert_chunk(schema, &run, run_rows)?);
            (run, run_rows) = (Vec::new(), 0);
        }
    }
    if run_rows > 0 {
        chunks.push(insert_chunk(schema, &run, run_rows)?);
    }
    Ok(chunks)
}

/// Batches holding `rows` rows in all, as one chunk of inserts (copied only when there
/// is more than one batch, or a column's type differs from the dataflow's).
fn insert_chunk(schema: &SchemaRef, batches: &[&RecordBatch], rows: usize) -> Result<StreamChunk> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (c, field) in schema.fields().iter().enumerate() {
        let col = if let [b] = batches {
            Arc::clone(b.column(c))
        } else {
            let parts: Vec<&dyn datafusion::arrow::array::Array> =
                batches.iter().map(|b| b.column(c).as_ref()).collect();
            datafusion::arrow::compute::concat(&parts)?
        };
        columns.push(if col.data_type() == field.data_type() {
            col
        } else {
            datafusion::arrow::compute::cast(&col, field.data_type())?
        });
    }
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    let data = RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)?;
    StreamChunk::new(vec![Op::Insert; rows], data)
}

/// Reads the next backfill rows of a source, as inserts; advances its position.
fn scan(
    src: &mut Source,
    def: &TableDef,
    snapshot: &Snapshot,
    limit: usize,
    rows: &mut Vec<(Op, Vec<ScalarValue>)>,
) -> Result<u64> {
    let Position::At(pos) = &src.position else {
        return Ok(0);
    };
    let table_lo = keys::table_prefix(def.id);
    let hi = keys::prefix_successor(&table_lo).expect("invariant: table prefix");
    let lo = if pos.is_empty() {
        table_lo
    } else {
        let mut k = pos.clone();
        k.push(0);
        k
    };
    let pairs = snapshot.scan(&lo, &hi, limit)?;
    let visible = src.schema.fields().len();
    for (_, v) in &pairs {
        let mut row = table::decode(def, &src.types, v)?;
        let copies = if def.is_view() {
            table::view_row_count(def, &row)?
        } else {
            1
        };
        row.truncate(visible);
        for _ in 0..copies {
            rows.push((Op::Insert, row.clone()));
        }
    }
    let n = pairs.len() as u64;
    src.position = match pairs.last() {
        _ if pairs.len() < limit => Position::Done,
        Some((k, _)) => Position::At(k.to_vec()),
        None => Position::Done,
    };
    Ok(n)
}

/// A `connector = 'blackhole'` sink: its changes are computed and dropped (benchmarks
/// measure the dataflow without delivery).
pub fn is_blackhole(def: &TableDef) -> bool {
    def.is_sink()
        && def
            .connector
            .as_ref()
            .is_some_and(|c| c.options.get("connector").map(String::as_str) == Some("blackhole"))
}

/// Adds the index entries that follow a view's content writes, when the view has
/// indexes (`CREATE INDEX`; read from the current catalog, since the deployed definition
/// predates them).
fn index_writes(
    catalog: &strom_catalog::Catalog,
    view: &View,
    snapshot: &Snapshot,
    writes: &mut Vec<KeyWrite>,
) -> Result<()> {
    let Some(def) = catalog.table(view.def.id).filter(|d| !d.indexes.is_empty()) else {
        return Ok(());
    };
    let old = snapshot.multi_get(&writes.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())?;
    let mut out = Vec::new();
    for ((key, new), old) in writes.iter().zip(old) {
        crate::index::maintain(
            def,
            &view.types,
            key,
            old.as_deref(),
            new.as_deref(),
            &mut out,
        )?;
    }
    writes.extend(out);
    Ok(())
}

/// The writes that apply a view's output changes to its contents table: `(key, Some(row))`
/// to put, `(key, None)` to delete.
fn content_writes(view: &View, snapshot: &Snapshot, changes: &Changes) -> Result<Vec<KeyWrite>> {
    // Net effect per key: the change in count, the last row inserted under it and
    // whether the last op was an insert.
    type Net<'r> = (i64, Option<&'r Vec<ScalarValue>>, bool);
    let mut net: HashMap<&[u8], Net<'_>> = HashMap::new();
    let mut order: Vec<&[u8]> = Vec::new();
    for (op, row, key) in changes {
        let e = net.entry(key.as_slice()).or_insert_with(|| {
            order.push(key.as_slice());
            (0, None, false)
        });
        e.0 += op.sign();
        e.2 = op.sign() > 0;
        if e.2 {
            e.1 = Some(row);
        }
    }
    // With a unique key the last op decides (an insert leaves the row, a delete removes
    // it); otherwise rows are counted and the stored count is needed.
    let keyed = view.def.user_pk;
    let current: Vec<Option<Vec<u8>>> = if keyed {
        vec![]
    } else {
        snapshot.multi_get(&order.iter().map(|k| k.to_vec()).collect::<Vec<_>>())?
    };
    let mut out = Vec::with_capacity(order.len());
    for (i, key) in order.iter().enumerate() {
        let (delta, last_insert, last_is_insert) = net[key];
        let (new_count, old_row) = if keyed {
            (i64::from(last_is_insert), None)
        } else {
            match &current[i] {
                Some(v) => {
                    let row = table::decode(&view.def, &view.types, v)?;
                    (table::view_row_count(&view.def, &row)? + delta, Some(row))
                }
                None => (delta, None),
            }
        };
        if new_count < 0 {
            return Err(EngineError::Internal(format!(
                "materialized view \"{}\": a row was deleted more often than inserted",
                view.def.name
            )));
        }
        if new_count == 0 {
            out.push((key.to_vec(), None));
        } else if delta != 0 || last_insert.is_some() {
            let mut row = match (last_insert, old_row) {
                (Some(r), _) => r.clone(),
                (None, Some(mut r)) => {
                    r.pop();
                    r
                }
                (None, None) => {
                    return Err(EngineError::Internal("view row without contents".into()))
                }
            };
            row.push(ScalarValue::Int64(Some(new_count)));
            out.push((key.to_vec(), Some(crate::row::encode_row(&row)?)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(schema: &SchemaRef, from: i64, rows: i64) -> RecordBatch {
        let ids = Int64Array::from_iter_values(from..from + rows);
        RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(ids)]).unwrap()
    }

    #[test]
    fn large_source_batches_become_chunks_uncopied_and_small_ones_are_joined() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let small = [batch(&schema, 0, 100), batch(&schema, 100, 100)];
        let large = batch(&schema, 200, 1000);
        let tail = batch(&schema, 1200, 10);
        let empty = batch(&schema, 0, 0);
        let batches = [&small[0], &small[1], &empty, &large, &tail];
        let chunks = insert_chunks(&schema, &batches).unwrap();
        let sizes: Vec<usize> = chunks.iter().map(StreamChunk::len).collect();
        // The two small ones together, the large one alone, then the short tail.
        assert_eq!(sizes, vec![200, 1000, 10]);
        // The large batch's column is shared, not copied.
        let shared = chunks[1].data().column(0).to_data();
        assert_eq!(
            shared.buffers()[0].as_ptr(),
            large.column(0).to_data().buffers()[0].as_ptr()
        );
        // Every row once, in order.
        let ids: Vec<i64> = chunks
            .iter()
            .flat_map(|c| {
                let a = c
                    .data()
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                a.values().to_vec()
            })
            .collect();
        assert_eq!(ids, (0..1210).collect::<Vec<i64>>());
        assert!(chunks
            .iter()
            .all(|c| c.ops().iter().all(|op| *op == Op::Insert)));
    }
}
