//! Connectors: external systems feeding sources and tables, and receiving sinks.
//!
//! [`Connectors::start`] runs a watcher that keeps one ingest task per connector table
//! or source and one delivery task per sink ([`sink`]) in the catalog: started when it appears (a source only once some view reads
//! it, so that `CREATE SOURCE` then `CREATE MATERIALIZED VIEW` misses nothing from
//! `scan.startup.mode = 'earliest'`), stopped when it is dropped. Tasks resume from the
//! offsets committed with their rows (see [`kafka`]). [`validate`] checks a declaration
//! at `CREATE`.

pub mod cdc;
pub mod datagen;
pub mod decode;
pub mod delimited;
pub mod efile;
pub mod errors;
pub mod file_name;
pub mod generated;
pub mod kafka;
pub mod lookup;
pub mod nexmark;
pub mod posix_fs;
pub mod sink;
pub mod text_rows;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strom_catalog::{TableDef, TableId};
use strom_engine::Database;

/// Set to stop a task.
pub type Stop = Arc<AtomicBool>;

/// The process's connectors, once started (read by `strom_catalog.source_status`).
static RUNNING: std::sync::OnceLock<Arc<Connectors>> = std::sync::OnceLock::new();

/// Installs what the engine needs from the connectors before the database opens: the
/// opener of external lookup tables, and the replayers of generator rows the change log
/// holds by reference.
pub fn register() {
    lookup::register();
    strom_engine::changelog::register_replayer("nexmark", |def, token| {
        generated::replay(def, token, nexmark::source::blocks)
    });
    strom_engine::changelog::register_replayer("datagen", |def, token| {
        generated::replay(def, token, datagen::blocks)
    });
    strom_engine::changelog::register_replayer("posix_fs", posix_fs::replay_csv);
}

/// The connectors started by [`Connectors::start`] in this process, if any.
pub fn running() -> Option<&'static Arc<Connectors>> {
    RUNNING.get()
}

/// Live counters of one source (since the server started).
#[derive(Debug, Default)]
pub struct SourceStatus {
    pub rows: AtomicU64,
    pub rejected: AtomicU64,
    /// Partitions assigned, per reader.
    partitions: Mutex<BTreeMap<usize, usize>>,
    last_error: Mutex<Option<String>>,
    /// File sources: blocks of classes the source does not read.
    pub skipped_blocks: AtomicU64,
    /// File sources: ingest time minus snapshot time of the last file begun, in ms
    /// (`None` before any file with a snapshot time).
    latency_ms: Mutex<Option<i64>>,
}

impl SourceStatus {
    fn add(&self, rows: u64, rejected: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock") = None;
    }

    fn add_skipped(&self, n: u64) {
        self.skipped_blocks.fetch_add(n, Ordering::Relaxed);
    }

    fn set_latency_ms(&self, ms: i64) {
        *self.latency_ms.lock().expect("status lock") = Some(ms);
    }

    /// File sources: the ingest latency of the last file begun (ms).
    pub fn latency_ms(&self) -> Option<i64> {
        *self.latency_ms.lock().expect("status lock")
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().expect("status lock") = Some(e);
    }

    fn set_partitions(&self, worker: usize, n: usize) {
        self.partitions
            .lock()
            .expect("status lock")
            .insert(worker, n);
    }

    /// Partitions read, over all of the source's readers.
    pub fn partitions(&self) -> usize {
        self.partitions.lock().expect("status lock").values().sum()
    }

    /// The error that stopped the last attempt to read, until reading works again.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("status lock").clone()
    }
}

struct Task {
    stop: Stop,
    status: Arc<SourceStatus>,
    /// The declaration the task runs with; a change (`ALTER SOURCE`) restarts it.
    def: TableDef,
    /// One per reader of a source; one for a sink.
    handles: Vec<tokio::task::JoinHandle<()>>,
}

/// Readers per source: the machine's cores, at most 4.
fn readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// The running connector tasks.
#[derive(Default)]
pub struct Connectors {
    tasks: Mutex<BTreeMap<TableId, Task>>,
    /// Stopped tasks that may still be finishing a poll; a new task for the same id
    /// waits for its predecessor, so it reads the offsets that poll commits.
    stopping: Mutex<BTreeMap<TableId, Vec<tokio::task::JoinHandle<()>>>>,
}

/// Change-log entries a generator source may be ahead of the views before it waits:
/// 32 entries of up to ~8,000 rows keep epochs large (cheaper per row) while bounding
/// the memory the queue of changes takes.
pub const MAX_PENDING_BLOCKS: usize = 32;

/// Back-pressure for in-process readers (generators, files): waits while the views are
/// more than [`MAX_PENDING_BLOCKS`] entries behind, so changes do not pile up in memory.
async fn wait_for_views(db: &Database, stop: &Stop) {
    while db.pending_changes() > MAX_PENDING_BLOCKS && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sleeps until `due` after `started` (a generator's rate), waking every 100 ms to
/// return early once `stop` is set; `Duration::MAX` waits until stopped (paused).
async fn pause_until(stop: &Stop, started: std::time::Instant, due: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let Some(left) = due.checked_sub(started.elapsed()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// Runs `attempt` until it returns `Ok` or `stop` is set; after an error the error is
/// logged and shown in the status, and the next attempt starts a second later.
async fn retry_until_stopped<F, Fut>(what: &str, stop: &Stop, status: &SourceStatus, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    while !stop.load(Ordering::Relaxed) {
        match attempt().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("{what}: {e}; retrying in 1 s");
                status.set_error(e);
                for _ in 0..20 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Checks the options every Kafka source and sink has: only `known` ones and
/// `properties.*`, and a non-empty `topic` and broker. `what` names the object kind.
fn check_kafka_options(
    c: &strom_catalog::ConnectorDef,
    known: &[&str],
    what: &str,
) -> Result<(), String> {
    for k in c.options.keys() {
        if !known.contains(&k.as_str()) && !k.starts_with("properties.") {
            return Err(format!(
                "unknown option \"{k}\" for {what} (known: {}, properties.*)",
                known.join(", ")
            ));
        }
    }
    for required in ["topic", "properties.bootstrap.server"] {
        if c.options.get(required).is_none_or(String::is_empty) {
            return Err(format!("option \"{required}\" is required for {what}"));
        }
    }
    Ok(())
}

/// The librdkafka configuration of the `properties.*` options
/// (`properties.bootstrap.server` becomes `bootstrap.servers`).
fn librdkafka_config(c: &strom_catalog::ConnectorDef) -> rdkafka::config::ClientConfig {
    let mut cfg = rdkafka::config::ClientConfig::new();
    for (k, v) in &c.options {
        if let Some(p) = k.strip_prefix("properties.") {
            let name = if p == "bootstrap.server" {
                "bootstrap.servers"
            } else {
                p
            };
            cfg.set(name, v);
        }
    }
    cfg
}

/// Checks a connector declaration; the error names what is wrong.
pub fn validate(def: &TableDef) -> Result<(), String> {
    let Some(c) = &def.connector else {
        return Ok(());
    };
    match c.options.get("connector").map(String::as_str) {
        Some("kafka") => kafka::validate(def, c),
        Some("postgres" | "mysql") => lookup::validate(def, c),
        Some("nexmark") => nexmark::source::spec(def, c).map(|_| ()),
        Some("datagen") => datagen::spec(def, c).map(|_| ()),
        Some("posix_fs") => posix_fs::spec(def, c).map(|_| ()),
        Some(other) => Err(format!(
            "unknown connector \"{other}\" (supported: kafka, nexmark, datagen, posix_fs; postgres and mysql with mode = 'lookup')"
        )),
        None => Err("option \"connector\" is required".into()),
    }
}

impl Connectors {
    /// Starts the watcher; it runs as long as the process.
    pub fn start(db: Arc<Database>) -> Arc<Connectors> {
        let me = Arc::new(Connectors::default());
        let _ = RUNNING.set(Arc::clone(&me));
        let watcher = Arc::clone(&me);
        tokio::spawn(async move {
            loop {
                watcher.reconcile(&db);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        me
    }

    /// Starts tasks for new sources, stops those of dropped ones.
    fn reconcile(&self, db: &Arc<Database>) {
        let catalog = db.catalog();
        let read: HashSet<TableId> = catalog
            .tables()
            .filter_map(|t| t.view.as_ref())
            .flat_map(|v| v.depends_on.iter().copied())
            .collect();
        let wanted: BTreeMap<TableId, &TableDef> = catalog
            .tables()
            .filter(|t| {
                t.connector.is_some()
                    && !strom_engine::lookup::is_external(t)
                    && !strom_engine::stream::runtime::is_blackhole(t)
                    && (!t.is_source() || read.contains(&t.id))
            })
            .map(|t| (t.id, t))
            .collect();
        lookup::forget_dropped(&catalog);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        let mut stopped = self.stopping.lock().expect("stopping lock");
        stopped.retain(|_, hs| hs.iter().any(|h| !h.is_finished()));
        let ids: Vec<TableId> = tasks.keys().copied().collect();
        for id in ids {
            let keep = wanted
                .get(&id)
                .is_some_and(|d| d.connector == tasks[&id].def.connector);
            if !keep {
                let task = tasks.remove(&id).expect("listed");
                task.stop.store(true, Ordering::Relaxed);
                stopped.insert(id, task.handles);
                if !wanted.contains_key(&id) {
                    // Dropped (or no longer read by any view): its partitions start over.
                    kafka::forget_watermarks(id);
                }
            }
        }
        for (id, def) in wanted {
            if tasks.contains_key(&id) {
                continue;
            }
            let stop: Stop = Arc::new(AtomicBool::new(false));
            let status = Arc::new(SourceStatus::default());
            let shared = Arc::new(def.clone());
            // New readers start once every reader of the previous task has finished: the
            // first to take the lock awaits them, the others wait for the lock.
            let previous = Arc::new(tokio::sync::Mutex::new(
                stopped.remove(&id).unwrap_or_default(),
            ));
            let connector = def
                .connector
                .as_ref()
                .and_then(|c| c.options.get("connector").cloned())
                .unwrap_or_default();
            let c = def.connector.as_ref();
            let workers = match connector.as_str() {
                _ if def.is_sink() => 1,
                "nexmark" => c
                    .and_then(|c| nexmark::source::spec(def, c).ok())
                    .map_or(1, |s| s.splits),
                "datagen" => c
                    .and_then(|c| datagen::spec(def, c).ok())
                    .map_or(1, |s| s.splits),
                // One reader: files are read in name order.
                "posix_fs" => 1,
                _ => readers(),
            };
            let mut handles = Vec::with_capacity(workers);
            for worker in 0..workers {
                let (dbc, shared) = (Arc::clone(db), Arc::clone(&shared));
                let (stop2, status2) = (Arc::clone(&stop), Arc::clone(&status));
                let previous = Arc::clone(&previous);
                let connector = connector.clone();
                handles.push(tokio::spawn(async move {
                    {
                        let mut prev = previous.lock().await;
                        for p in prev.drain(..) {
                            let _ = p.await;
                        }
                    }
                    if shared.is_sink() {
                        sink::run(dbc, shared, stop2, status2).await
                    } else if connector == "nexmark" {
                        let prepare = nexmark::source::blocks;
                        generated::run(dbc, shared, stop2, status2, worker, prepare).await
                    } else if connector == "datagen" {
                        generated::run(dbc, shared, stop2, status2, worker, datagen::blocks).await
                    } else if connector == "posix_fs" {
                        posix_fs::run(dbc, shared, stop2, status2).await
                    } else {
                        let share = kafka::Share { worker, workers };
                        kafka::run(dbc, shared, stop2, status2, share).await
                    }
                }));
            }
            tasks.insert(
                id,
                Task {
                    stop,
                    status,
                    def: def.clone(),
                    handles,
                },
            );
        }
    }

    /// The status of a running source task.
    pub fn status(&self, id: TableId) -> Option<Arc<SourceStatus>> {
        self.tasks
            .lock()
            .expect("tasks lock")
            .get(&id)
            .map(|t| Arc::clone(&t.status))
    }
}
