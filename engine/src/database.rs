//! [`Database`]: the catalog and the table store behind one write path.
//!
//! Statements read through a [`Snapshot`] of the last commit. Writers (DML and DDL) take the
//! single write lock, stage their changes in a [`WriteTxn`] that reads its own writes, and
//! commit them in one RocksDB batch together with the catalog and the row-id sequence, so
//! a statement's effects are either all durable or all absent after a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use rocksdb::WriteBatch;
use strom_catalog::{Catalog, TableDef, TableId};
use tokio::sync::{Mutex, MutexGuard};

use crate::changelog::{self, ChangeQueue, LogEntry, RowChange, SourceBatch};
use crate::error::{EngineError, Result};
use crate::keys::{self, META_PREFIX};
use crate::store::{Snapshot, Store, StoreOptions};
use crate::table;
use crate::watermark::{self, Watermarker};

const CATALOG_KEY: &[u8] = b"\x00catalog";
const ROW_ID_KEY: &[u8] = b"\x00row_id";

pub struct Database {
    store: Store,
    catalog: RwLock<Arc<Catalog>>,
    write_lock: Mutex<()>,
    /// Next hidden row id; only touched under the write lock.
    next_row_id: std::sync::atomic::AtomicI64,
    /// Committed row changes of tables that views read, not yet consumed by the stream
    /// runtime. Held across the RocksDB write of a commit, so that taking a snapshot and
    /// draining the queue under it gives a consistent cut.
    changes: std::sync::Mutex<ChangeQueue>,
    /// Woken after every commit that queued changes.
    pub changes_ready: tokio::sync::Notify,
    /// Planned watermark declarations, by relation.
    watermarkers: std::sync::Mutex<HashMap<TableId, Arc<Watermarker>>>,
    /// Per relation, the visible columns some view reads ([`Database::columns_read`]).
    columns_read: std::sync::Mutex<HashMap<TableId, Arc<[bool]>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("store", &self.store)
            .finish()
    }
}

impl Database {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        debug_assert_eq!(CATALOG_KEY[0], META_PREFIX);
        let store = Store::open(dir, options)?;
        let catalog = match store.get(CATALOG_KEY)? {
            Some(bytes) => Catalog::from_bytes(&bytes)?,
            None => {
                let c = Catalog::new();
                let mut batch = WriteBatch::default();
                batch.put(CATALOG_KEY, c.to_bytes());
                store.write(batch)?;
                c
            }
        };
        let next_row_id = match store.get(ROW_ID_KEY)? {
            Some(b) => {
                i64::from_le_bytes(b.as_slice().try_into().map_err(|_| EngineError::Corrupt {
                    table: "row id sequence".into(),
                    reason: format!("{} bytes", b.len()),
                })?)
            }
            None => 1,
        };
        let changes = changelog::load(&store, &catalog)?;
        Ok(Database {
            store,
            catalog: RwLock::new(Arc::new(catalog)),
            write_lock: Mutex::new(()),
            next_row_id: next_row_id.into(),
            changes: std::sync::Mutex::new(changes),
            changes_ready: tokio::sync::Notify::new(),
            watermarkers: Default::default(),
            columns_read: Default::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, ChangeQueue> {
        self.changes
            .lock()
            .expect("invariant: change queue lock is never poisoned")
    }

    pub fn has_pending_changes(&self) -> bool {
        !self.queue().pending.is_empty()
    }

    /// How many committed change entries the stream runtime has not consumed yet
    /// (connectors wait while it is high: backpressure from slow views).
    pub fn pending_changes(&self) -> usize {
        self.queue().pending.len()
    }

    /// The sequence number of the last committed change entry (0: none yet).
    pub fn last_change_seq(&self) -> u64 {
        self.queue().next_seq - 1
    }

    /// A consistent cut: a snapshot, and every queued change entry it contains (all entries
    /// committed before it, none after), removed from the queue.
    pub fn cut_changes(&self) -> (Arc<Snapshot>, Vec<LogEntry>) {
        let mut q = self.queue();
        let snapshot = self.store.snapshot();
        (snapshot, q.pending.drain(..).collect())
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .expect("invariant: catalog lock is never poisoned")
            .clone()
    }

    /// A read view of everything committed so far.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.snapshot()
    }

    /// Starts a write transaction; waits for any other writer to finish.
    pub async fn begin_write(&self) -> WriteTxn<'_> {
        let guard = self.write_lock.lock().await;
        WriteTxn {
            db: self,
            _guard: guard,
            snapshot: self.store.snapshot(),
            catalog: self.catalog(),
            new_catalog: None,
            batch: WriteBatch::default(),
            overlay: BTreeMap::new(),
            appended: Vec::new(),
            appended_batches: Vec::new(),
            row_ids_used: 0,
            managed: BTreeMap::new(),
            judged: None,
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// The planned watermark of a relation (None: it declares none).
    pub fn watermarker(&self, def: &TableDef) -> Result<Option<Arc<Watermarker>>> {
        let Some(wm) = &def.watermark else {
            return Ok(None);
        };
        let mut cache = self
            .watermarkers
            .lock()
            .expect("invariant: watermark cache lock is never poisoned");
        if let Some(w) = cache.get(&def.id) {
            if w.expr_sql == wm.expr && w.column() == wm.column {
                return Ok(Some(Arc::clone(w)));
            }
        }
        let w = Arc::new(Watermarker::new(def)?.expect("has a watermark"));
        cache.insert(def.id, Arc::clone(&w));
        Ok(Some(w))
    }

    /// Which visible columns of `table` the deployed views read (`None`: no view reads
    /// it, or the stream runtime has not said): a source may leave the others out of
    /// batches it logs by reference ([`WriteTxn::append_batch_by_reference`]).
    pub fn columns_read(&self, table: TableId) -> Option<Arc<[bool]>> {
        self.columns_read
            .lock()
            .expect("invariant: columns-read lock is never poisoned")
            .get(&table)
            .cloned()
    }

    /// Set by the stream runtime whenever its views change: per relation, the visible
    /// columns any view reads.
    pub fn set_columns_read(&self, read: HashMap<TableId, Arc<[bool]>>) {
        *self
            .columns_read
            .lock()
            .expect("invariant: columns-read lock is never poisoned") = read;
    }

    /// A relation's current watermark as committed by writers (None: no row yet).
    pub fn watermark(&self, def: &TableDef) -> Result<Option<ScalarValue>> {
        watermark_in(&self.snapshot(), def)
    }
}

fn watermark_in(snapshot: &Snapshot, def: &TableDef) -> Result<Option<ScalarValue>> {
    let Some(wm) = &def.watermark else {
        return Ok(None);
    };
    snapshot
        .get(&watermark::key(def.id))?
        .map(|b| watermark::decode(&b, &def.columns[wm.column].ty.to_arrow()))
        .transpose()
}

/// Staged changes of one statement. Dropping it without [`WriteTxn::commit`] discards them.
pub struct WriteTxn<'a> {
    db: &'a Database,
    _guard: MutexGuard<'a, ()>,
    snapshot: Arc<Snapshot>,
    catalog: Arc<Catalog>,
    new_catalog: Option<Catalog>,
    batch: WriteBatch,
    /// Row writes staged by this transaction: key -> Some(value) or None (deleted).
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Rows of sources: handed to views, never stored.
    appended: Vec<RowChange>,
    /// Rows of sources that came column-wise (see [`WriteTxn::append_batch`]).
    appended_batches: Vec<SourceBatch>,
    row_ids_used: i64,
    /// Watermarks the writer sets itself (see [`WriteTxn::set_watermark`]).
    managed: BTreeMap<TableId, Option<ScalarValue>>,
    /// Late rows already set aside by [`WriteTxn::judge_watermarks`]: the watermarks
    /// that moved, for the change-log entry.
    judged: Option<MovedWatermarks>,
}

/// Watermarks a transaction moved: relation and new value, encoded.
type MovedWatermarks = Vec<(TableId, Vec<u8>)>;

impl WriteTxn<'_> {
    /// The snapshot this transaction started from (all earlier commits, none of its writes).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The catalog as this transaction will commit it.
    pub fn catalog(&self) -> &Catalog {
        self.new_catalog.as_ref().unwrap_or(&self.catalog)
    }

    /// Replaces the catalog at commit.
    pub fn set_catalog(&mut self, catalog: Catalog) {
        self.new_catalog = Some(catalog);
    }

    /// Reserves `n` hidden row ids, returning the first.
    pub fn alloc_row_ids(&mut self, n: i64) -> i64 {
        let start = self
            .db
            .next_row_id
            .load(std::sync::atomic::Ordering::SeqCst)
            + self.row_ids_used;
        self.row_ids_used += n;
        start
    }

    /// The row under `key`, seeing this transaction's own writes.
    pub fn get(
        &self,
        def: &TableDef,
        types: &[DataType],
        key: &[u8],
    ) -> Result<Option<Vec<ScalarValue>>> {
        let value = match self.overlay.get(key) {
            Some(v) => v.clone(),
            None => self.snapshot.get(key)?,
        };
        value.map(|v| table::decode(def, types, &v)).transpose()
    }

    pub fn put(&mut self, key: Vec<u8>, row: &[ScalarValue]) -> Result<()> {
        let value = crate::row::encode_row(row)?;
        self.batch.put(&key, &value);
        self.overlay.insert(key, Some(value));
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete(&key);
        self.overlay.insert(key, None);
    }

    /// A new row of a source (`key`: its row key): it reaches the views reading the
    /// source through the change log, in this transaction's entry, but is not stored.
    pub fn append(&mut self, table: TableId, key: Vec<u8>, row: &[ScalarValue]) -> Result<()> {
        self.appended.push(RowChange {
            table,
            key,
            old: None,
            new: Some(crate::row::encode_row(row)?),
        });
        Ok(())
    }

    /// New rows of a source as one Arrow batch of its visible columns, in the declared
    /// types and order: like [`WriteTxn::append`] for each row, without turning rows into
    /// values (generators and file readers make columns). Sources keep no hidden row id
    /// for such rows; views never see one.
    pub fn append_batch(
        &mut self,
        table: TableId,
        data: datafusion::arrow::array::RecordBatch,
    ) -> Result<()> {
        self.push_batch(table, data, None)
    }

    /// Like [`WriteTxn::append_batch`], for rows the source can make again from `token`
    /// with the replayer registered for its connector
    /// ([`crate::changelog::register_replayer`]): the change log persists the token, not
    /// the rows. The replayer must make exactly these rows from it, whenever asked.
    ///
    /// `left_out`: visible columns (positions) not decoded, NULL in `data`, because no
    /// view read them ([`Database::columns_read`]). Leaving a column out must not change
    /// whether the rows can be made: the replayer makes them whole, for a view (or a late
    /// row set aside) that needs one.
    pub fn append_batch_by_reference(
        &mut self,
        table: TableId,
        data: datafusion::arrow::array::RecordBatch,
        token: Vec<u8>,
        left_out: Vec<usize>,
    ) -> Result<()> {
        let replay = crate::changelog::Replay {
            token,
            watermark: None,
            left_out,
        };
        self.push_batch(table, data, Some(replay))
    }

    fn push_batch(
        &mut self,
        table: TableId,
        data: datafusion::arrow::array::RecordBatch,
        replay: Option<crate::changelog::Replay>,
    ) -> Result<()> {
        let def = self
            .catalog()
            .table(table)
            .ok_or_else(|| EngineError::Internal(format!("no relation {}", table.0)))?;
        if !def.is_source() {
            return Err(EngineError::Internal(format!(
                "\"{}\" is not a source: its rows cannot come as a batch",
                def.name
            )));
        }
        changelog::check_columns(def, &data).map_err(EngineError::Internal)?;
        if let Some(r) = &replay {
            if let Some(c) = r.left_out.iter().find(|&&c| c >= data.num_columns()) {
                return Err(EngineError::Internal(format!(
                    "a batch of \"{}\" leaves out column {c}, which it does not have",
                    def.name
                )));
            }
        }
        if data.num_rows() > 0 {
            self.appended_batches.push(SourceBatch {
                table,
                data,
                replay,
            });
        }
        Ok(())
    }

    /// Takes over a relation's watermark for this transaction: at commit it becomes the
    /// larger of its current value and `value`, and the rows of the transaction do not
    /// raise it themselves (a Kafka source computes it as the smallest of its active
    /// partitions'). Rows are still judged late against the watermark from before.
    pub fn set_watermark(&mut self, table: TableId, value: Option<ScalarValue>) {
        self.managed.insert(table, value);
    }

    /// Sets this transaction's late rows aside now (it happens at commit otherwise) and
    /// returns how many there were, so a statement can report only the rows it stored.
    /// Rows written after this are not judged: call it after the statement's last write.
    pub fn judge_watermarks(&mut self) -> Result<usize> {
        let (moved, late) = self.apply_watermarks()?;
        self.judged = Some(moved);
        Ok(late)
    }

    /// Sets late rows aside, and raises watermarks, for every relation with a watermark
    /// this transaction adds rows to (see [`crate::watermark`]). Returns the watermarks
    /// that moved, encoded, for the change-log entry, and how many rows were late.
    fn apply_watermarks(&mut self) -> Result<(MovedWatermarks, usize)> {
        if !self.catalog().tables().any(|t| t.watermark.is_some()) {
            return Ok((Vec::new(), 0));
        }
        let mut late_count = 0;
        // The catalog as it commits (a clone only when this transaction changed it).
        let catalog: Arc<Catalog> = match &self.new_catalog {
            Some(c) => Arc::new(c.clone()),
            None => Arc::clone(&self.catalog),
        };
        let mut moved = Vec::new();
        for def in catalog.tables().filter(|t| t.watermark.is_some()) {
            let lo = keys::table_prefix(def.id);
            let hi = keys::prefix_successor(&lo).expect("invariant: table prefix starts with 0x01");
            let stored: Vec<(Vec<u8>, Vec<u8>)> = self
                .overlay
                .range(lo..hi)
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                .collect();
            let appended: Vec<usize> = (0..self.appended.len())
                .filter(|&i| self.appended[i].table == def.id && self.appended[i].new.is_some())
                .collect();
            let managed = self.managed.remove(&def.id);
            let has_batches = self.appended_batches.iter().any(|b| b.table == def.id);
            if stored.is_empty() && appended.is_empty() && managed.is_none() && !has_batches {
                continue;
            }
            let marker = self.db.watermarker(def)?.expect("has a watermark");
            let types = crate::table::stored_types(def);
            let current = watermark_in(&self.snapshot, def)?;
            let rows: Vec<Vec<ScalarValue>> = stored
                .iter()
                .map(|(_, v)| v)
                .chain(
                    appended
                        .iter()
                        .map(|&i| self.appended[i].new.as_ref().expect("filtered")),
                )
                .map(|v| crate::table::decode(def, &types, v))
                .collect::<Result<_>>()?;
            let visible = def.visible_columns().count();
            let refs: Vec<&[ScalarValue]> = rows.iter().map(|r| &r[..visible]).collect();
            let split = marker.split(&refs, current.as_ref())?;
            let mut late_appended = HashSet::new();
            for (i, reason) in split.late.iter().enumerate() {
                let Some(reason) = reason else { continue };
                late_count += 1;
                if i < stored.len() {
                    let key = stored[i].0.clone();
                    self.batch.delete(&key);
                    self.overlay.insert(key, None);
                } else {
                    late_appended.insert(appended[i - stored.len()]);
                }
                self.set_late_aside(
                    &catalog,
                    def,
                    &marker,
                    &rows[i][..visible],
                    reason,
                    &current,
                )?;
            }
            if !late_appended.is_empty() {
                let mut i = 0;
                self.appended.retain(|_| {
                    let keep = !late_appended.contains(&i);
                    i += 1;
                    keep
                });
            }
            // Column-wise rows: judged with Arrow kernels; late ones are set aside one by
            // one (rare), the on-time ones kept as a filtered batch.
            let mut batch_max = None;
            if has_batches {
                let mut batches = std::mem::take(&mut self.appended_batches);
                let judged_at = current.as_ref().map(watermark::encode).transpose()?;
                for b in batches.iter_mut().filter(|b| b.table == def.id) {
                    if let Some(replay) = &mut b.replay {
                        // Made again after a restart, the rows are judged against this.
                        replay.watermark = judged_at.clone();
                    }
                    let bs = marker.split_batch(&b.data, current.as_ref())?;
                    batch_max = watermark::max(batch_max, bs.max);
                    if bs.late.is_empty() {
                        continue;
                    }
                    late_count += bs.late.len();
                    // A late row is set aside whole: columns left out are made again.
                    let whole = match &b.replay {
                        Some(r) if !r.left_out.is_empty() => {
                            Some(crate::changelog::make_whole(def, r).map_err(|e| {
                                EngineError::Internal(format!(
                                    "late rows of source \"{}\" cannot be made again whole: {e}",
                                    def.name
                                ))
                            })?)
                        }
                        _ => None,
                    };
                    let data = whole.as_ref().unwrap_or(&b.data);
                    for (i, reason) in &bs.late {
                        let row = (0..data.num_columns())
                            .map(|c| ScalarValue::try_from_array(data.column(c), *i))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        self.set_late_aside(&catalog, def, &marker, &row, reason, &current)?;
                    }
                    if let Some(keep) = &bs.on_time {
                        b.data = datafusion::arrow::compute::filter_record_batch(&b.data, keep)?;
                    }
                }
                batches.retain(|b| b.data.num_rows() > 0);
                self.appended_batches = batches;
            }
            let new = match managed {
                Some(set) => watermark::max(current.clone(), set),
                None => watermark::max(current.clone(), watermark::max(split.max, batch_max)),
            };
            let ttl = def.watermark.as_ref().is_some_and(|w| w.ttl) && !def.is_source();
            if ttl {
                // Index the rows stored now by time, and expire those the new
                // watermark passed (committed ones; this transaction's go next time).
                let (lo, _) = watermark::ttl_range(def.id);
                for (i, (key, _)) in stored.iter().enumerate() {
                    if split.late[i].is_some() {
                        continue;
                    }
                    let mut k = lo.clone();
                    keys::encode_key_datum(&rows[i][marker.column()], &mut k)?;
                    k.extend_from_slice(key);
                    self.batch.put(k, key);
                }
                if let Some(w) = &new {
                    let mut bound = lo.clone();
                    keys::encode_key_datum(w, &mut bound)?;
                    let mut expired: Vec<Vec<u8>> = Vec::new();
                    self.snapshot.for_each(&lo, &bound, |k, v| {
                        self.batch.delete(v);
                        self.batch.delete(k);
                        if !def.indexes.is_empty() {
                            expired.push(v.to_vec());
                        }
                    })?;
                    // Their index entries go with them (they bypass the overlay, so that
                    // views do not see expiry as deletes).
                    if !expired.is_empty() {
                        let types = table::stored_types(def);
                        let mut writes = Vec::new();
                        for (key, old) in expired.iter().zip(self.snapshot.multi_get(&expired)?) {
                            crate::index::maintain(
                                def,
                                &types,
                                key,
                                old.as_deref(),
                                None,
                                &mut writes,
                            )?;
                        }
                        for (k, _) in writes {
                            self.batch.delete(k);
                        }
                    }
                }
            }
            if let Some(new) = new {
                if current.as_ref() != Some(&new) {
                    let bytes = watermark::encode(&new)?;
                    self.batch.put(watermark::key(def.id), &bytes);
                    moved.push((def.id, bytes));
                }
            }
        }
        Ok((moved, late_count))
    }

    /// Keeps a late row (its visible columns) in the relation's `late_data.table`, if it
    /// has one (and it still exists), else in the late rows store.
    fn set_late_aside(
        &mut self,
        catalog: &Catalog,
        def: &TableDef,
        marker: &Watermarker,
        row: &[ScalarValue],
        reason: &str,
        current: &Option<ScalarValue>,
    ) -> Result<()> {
        if let Some(late_def) = def
            .watermark
            .as_ref()
            .and_then(|w| w.late_table)
            .and_then(|id| catalog.table(id))
        {
            let mut row: Vec<ScalarValue> = row.to_vec();
            row.push(ScalarValue::Utf8(Some(reason.to_string())));
            row.push(match current {
                Some(w) => w.clone(),
                None => ScalarValue::try_from(&def.columns[marker.column()].ty.to_arrow())?,
            });
            row.push(ScalarValue::Int64(Some(self.alloc_row_ids(1))));
            let key = table::key_of(late_def, &row)?;
            return self.put(key, &row);
        }
        let late = watermark::LateRow {
            reason: reason.to_string(),
            watermark: current.as_ref().map(watermark::display).unwrap_or_default(),
            event_time: watermark::display(&row[marker.column()]),
            row: row
                .iter()
                .map(|v| (!v.is_null()).then(|| watermark::display(v)))
                .collect(),
        };
        let id = self.alloc_row_ids(1);
        let json = serde_json::to_vec(&late).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.batch.put(watermark::late_key(def.id, id), json);
        Ok(())
    }

    /// Stages a raw write outside the table space (stream runtime bookkeeping).
    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put(key, value);
    }

    /// Stages the deletion of a raw key range `[lo, hi)` or key.
    pub fn delete_raw(&mut self, lo: Vec<u8>, hi: Option<Vec<u8>>) {
        match hi {
            Some(hi) => self.batch.delete_range(lo, hi),
            None => self.batch.delete(lo),
        }
    }

    /// Deletes every row of a table, and its index entries (DROP TABLE).
    pub fn delete_table_rows(&mut self, def: &TableDef) {
        let lo = keys::table_prefix(def.id);
        let hi = keys::prefix_successor(&lo).expect("invariant: table prefix starts with 0x01");
        self.batch.delete_range(lo, hi);
        let (lo, hi) = crate::index::range(def.id, None);
        self.batch.delete_range(lo, hi);
    }

    /// The index entries that follow this transaction's row writes to tables with
    /// indexes (see [`crate::index`]).
    fn index_writes(&self) -> Result<Vec<crate::index::KeyWrite>> {
        let catalog = self.catalog();
        if !catalog.tables().any(|t| !t.indexes.is_empty()) {
            return Ok(Vec::new());
        }
        type Touched<'a> = (&'a TableDef, &'a Vec<u8>, &'a Option<Vec<u8>>);
        let touched: Vec<Touched<'_>> = self
            .overlay
            .iter()
            .filter_map(|(k, v)| {
                let def = catalog.table(keys::table_of_key(k)?)?;
                (!def.indexes.is_empty()).then_some((def, k, v))
            })
            .collect();
        let old = self.snapshot.multi_get(
            &touched
                .iter()
                .map(|(_, k, _)| (*k).clone())
                .collect::<Vec<_>>(),
        )?;
        let mut out = Vec::new();
        for ((def, key, new), old) in touched.into_iter().zip(old) {
            let types = table::stored_types(def);
            crate::index::maintain(def, &types, key, old.as_deref(), new.as_deref(), &mut out)?;
        }
        Ok(out)
    }

    /// The net change of every touched row of a table that some view reads, and the
    /// column-wise source rows some view reads.
    fn row_changes(&mut self) -> Result<(Vec<RowChange>, Vec<SourceBatch>)> {
        let catalog = self.catalog();
        let watched: HashSet<TableId> = catalog
            .tables()
            .filter_map(|t| t.view.as_ref())
            .flat_map(|v| v.depends_on.iter().copied())
            .collect();
        let batches: Vec<SourceBatch> = std::mem::take(&mut self.appended_batches)
            .into_iter()
            .filter(|b| watched.contains(&b.table))
            .collect();
        let appended: Vec<RowChange> = std::mem::take(&mut self.appended)
            .into_iter()
            .filter(|c| watched.contains(&c.table))
            .collect();
        if watched.is_empty() {
            return Ok((appended, batches));
        }
        type Touched<'k> = (TableId, &'k Vec<u8>, &'k Option<Vec<u8>>);
        let touched: Vec<Touched<'_>> = self
            .overlay
            .iter()
            .filter_map(|(k, v)| Some((keys::table_of_key(k)?, k, v)))
            .filter(|(t, _, _)| watched.contains(t))
            .collect();
        let old = self.snapshot.multi_get(
            &touched
                .iter()
                .map(|(_, k, _)| (*k).clone())
                .collect::<Vec<_>>(),
        )?;
        let changes = touched
            .into_iter()
            .zip(old)
            .filter(|((_, _, new), old)| *new != old)
            .map(|((table, key, new), old)| RowChange {
                table,
                key: key.clone(),
                old,
                new: new.clone(),
            })
            .chain(appended)
            .collect();
        Ok((changes, batches))
    }

    /// Makes every staged change durable and visible at once. Returns the sequence number
    /// of the change entry handed to the stream runtime, if the statement changed rows that
    /// views read (wait for it with the runtime's flush).
    pub fn commit(mut self) -> Result<Option<u64>> {
        let watermarks = match self.judged.take() {
            Some(moved) => moved,
            None => self.apply_watermarks()?.0,
        };
        let (changes, batches) = self.row_changes()?;
        for (k, v) in self.index_writes()? {
            match v {
                Some(v) => self.batch.put(k, v),
                None => self.batch.delete(k),
            }
        }
        let next = self
            .db
            .next_row_id
            .load(std::sync::atomic::Ordering::SeqCst)
            + self.row_ids_used;
        if self.row_ids_used > 0 {
            self.batch.put(ROW_ID_KEY, next.to_le_bytes());
        }
        if let Some(c) = &self.new_catalog {
            self.batch.put(CATALOG_KEY, c.to_bytes());
        }
        let mut queue = self.db.queue();
        let seq = if changes.is_empty() && watermarks.is_empty() && batches.is_empty() {
            None
        } else {
            let entry = LogEntry {
                seq: queue.next_seq,
                changes,
                watermarks,
                batches,
                lost: Vec::new(),
            };
            self.batch
                .put(changelog::log_key(entry.seq), changelog::encode(&entry)?);
            Some(entry)
        };
        self.db.store.write(std::mem::take(&mut self.batch))?;
        let seq = seq.map(|entry| {
            let seq = entry.seq;
            queue.next_seq += 1;
            queue.pending.push_back(entry);
            seq
        });
        drop(queue);
        if seq.is_some() {
            self.db.changes_ready.notify_one();
        }
        self.db
            .next_row_id
            .store(next, std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = self.new_catalog.take() {
            *self
                .db
                .catalog
                .write()
                .expect("invariant: catalog lock is never poisoned") = Arc::new(c);
        }
        Ok(seq)
    }
}
