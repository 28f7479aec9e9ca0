//! Processing-time temporal joins: `JOIN dim FOR SYSTEM_TIME AS OF PROCTIME() AS d ON
//! ... = d.key`. Each left row is joined with the dimension rows as they are when the row
//! is processed; later changes of the dimension do not rewrite earlier results, so the
//! join keeps no state of the dimension.
//!
//! Where the dimension's rows come from ([`Dim`]):
//! - a Strom table or view looked up by its primary key: one multi-get per chunk at the
//!   epoch's snapshot;
//! - a Strom table or view looked up by a secondary index (`CREATE INDEX`): a prefix scan
//!   of the index per key, then a multi-get of the rows;
//! - an external lookup table ([`crate::lookup`]): the distinct keys of a chunk the cache
//!   does not hold are fetched in one batched call. When the database cannot answer, the
//!   chunk and every later one wait, in order, in a state table committed with the epoch,
//!   and are retried with backoff (the view's deadline makes the runtime run an epoch for
//!   it): no row is lost or reordered, and the rest of the dataflow carries on.
//!
//! A left input that deletes rows needs to retract exactly what was emitted for them, so
//! then the join remembers, per left row (its value encoding), the set of dimension rows
//! each occurrence was joined with (`left row -> set -> count`). An append-only left input
//! keeps no state at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{cast_with_options, take, CastOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use strom_catalog::TableDef;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};
use crate::keys;
use crate::lookup::{ExternalTable, LookupCache, LookupError, LookupOptions, LookupStats};
use crate::row;
use crate::state::{multiset_count, StateAlloc, StateTable};
use crate::store::Snapshot;

type Row = Vec<ScalarValue>;
/// The dimension rows (output columns) one left row found.
type Found = Arc<Vec<Row>>;

/// The set suffix of "no dimension row".
const NONE: &[u8] = &[0];
/// The first byte of a set suffix of dimension rows. (Before sets, a suffix was one row's
/// value encoding, which starts with its format byte 1: still read as a one-row set.)
const SET: u8 = 2;
/// The prefix of waiting chunks in the pending table.
const PENDING: &[u8] = b"p";
/// Retry delays after failures: 200 ms doubling up to 5 s.
const RETRY_FIRST_MICROS: i64 = 200_000;
const RETRY_MAX_MICROS: i64 = 5_000_000;
/// Rows a thread of a primary key lookup takes at least.
const ROWS_PER_THREAD: usize = 1024;
/// How often a running database check is looked at.
const PROBE_POLL_MICROS: i64 = 50_000;

/// Where dimension rows are read.
#[derive(Debug)]
pub enum Dim {
    /// Point reads of the Strom relation's primary key.
    Key,
    /// A Strom secondary index: entries `index key columns ++ primary key` under
    /// [`keys::index_prefix`].
    Index(u32),
    External(Box<External>),
}

/// The state of a join with an external table.
#[derive(Debug)]
pub struct External {
    table: Arc<dyn ExternalTable>,
    cache: Option<LookupCache>,
    cache_missing_key: bool,
    /// Chunks waiting for the database, by sequence number (committed with the epoch).
    pending: StateTable,
    /// Sequence numbers in `pending`, oldest first (None: not read from the store yet).
    waiting: Option<std::collections::VecDeque<u64>>,
    next_seq: u64,
    /// Consecutive failed attempts, and when (runtime clock, µs) to look again.
    failures: u32,
    retry_at: i64,
    /// A background check of whether the database answers, while rows wait for it (in
    /// a mutex only to make the join `Sync`, for [`LookupJoin::join_by_key`]'s threads).
    probe: Option<std::sync::Mutex<std::sync::mpsc::Receiver<std::result::Result<(), String>>>>,
    /// The last check succeeded: retry the waiting rows now.
    ready: bool,
    stats: Arc<LookupStats>,
}

impl External {
    pub fn new(
        table: Arc<dyn ExternalTable>,
        options: &LookupOptions,
        stats: Arc<LookupStats>,
        state: &mut StateAlloc,
    ) -> Self {
        External {
            table,
            cache: options.cache.then(|| LookupCache::new(options)),
            cache_missing_key: options.cache_missing_key,
            pending: state.ordered_table(),
            waiting: None,
            next_seq: 0,
            failures: 0,
            retry_at: i64::MIN,
            probe: None,
            // After a restart, rows that waited are tried at once.
            ready: true,
            stats,
        }
    }

    fn waiting(&mut self) -> Result<&mut std::collections::VecDeque<u64>> {
        if self.waiting.is_none() {
            let mut seqs = std::collections::VecDeque::new();
            let mut rows = 0u64;
            self.pending.scan_ordered(PENDING, false, |suffix, value| {
                let corrupt = || EngineError::Corrupt {
                    table: "lookup join pending rows".into(),
                    reason: "bad entry".into(),
                };
                seqs.push_back(u64::from_be_bytes(
                    suffix.try_into().map_err(|_| corrupt())?,
                ));
                let n: [u8; 4] = value
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(corrupt)?;
                rows += u64::from(u32::from_le_bytes(n));
                Ok(true)
            })?;
            self.next_seq = seqs.back().map_or(0, |s| s + 1);
            // Rows that waited when the server last stopped.
            LookupStats::add(&self.stats.waiting, rows);
            self.waiting = Some(seqs);
        }
        Ok(self.waiting.as_mut().expect("loaded above"))
    }

    fn defer(&mut self, rows: &[(Op, Row)]) -> Result<()> {
        // Row count, then per row: 1 insert / 0 delete, length, the row.
        let mut bytes = (rows.len() as u32).to_le_bytes().to_vec();
        for (op, r) in rows {
            bytes.push(u8::from(op.sign() > 0));
            let enc = row::encode_row(r)?;
            bytes.extend_from_slice(&(enc.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&enc);
        }
        self.waiting()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.put(PENDING, &seq.to_be_bytes(), bytes)?;
        self.waiting()?.push_back(seq);
        LookupStats::add(&self.stats.waiting, rows.len() as u64);
        Ok(())
    }

    fn pending_rows(&mut self, seq: u64, types: &[DataType]) -> Result<Vec<(Op, Row)>> {
        let corrupt = |reason: String| EngineError::Corrupt {
            table: "lookup join pending rows".into(),
            reason,
        };
        let bytes = self
            .pending
            .get(PENDING, &seq.to_be_bytes())?
            .ok_or_else(|| corrupt(format!("waiting chunk {seq} is missing")))?
            .clone();
        let mut out = Vec::new();
        let mut pos = 4;
        while pos < bytes.len() {
            let op = if bytes[pos] == 1 {
                Op::Insert
            } else {
                Op::Delete
            };
            let len = bytes
                .get(pos + 1..pos + 5)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| corrupt("truncated".into()))?;
            let enc = bytes
                .get(pos + 5..pos + 5 + len)
                .ok_or_else(|| corrupt("truncated".into()))?;
            out.push((op, row::decode_row(enc, types).map_err(corrupt)?));
            pos += 5 + len;
        }
        Ok(out)
    }

    fn failed(&mut self, dim: &str, error: String, now: i64) {
        self.ready = false;
        self.failures += 1;
        let delay = RETRY_FIRST_MICROS
            .saturating_mul(1 << (self.failures - 1).min(10))
            .min(RETRY_MAX_MICROS);
        self.retry_at = now.saturating_add(delay);
        LookupStats::add(&self.stats.errors, 1);
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::warn!(
                "lookups in \"{dim}\" failed ({} attempts in a row); rows wait and are retried: {error}",
                self.failures
            );
        }
        self.stats.set_error(Some(error));
    }

    /// Whether waiting rows may be retried now. While they wait, the database is
    /// checked in the background (so a database that is away never stalls the epoch,
    /// which other views share), and retried inline only once a check succeeds.
    fn may_retry(&mut self, dim: &str, now: i64) -> bool {
        if self.ready {
            return true;
        }
        if let Some(rx) = &self.probe {
            let received = rx.lock().expect("probe lock").try_recv();
            match received {
                Ok(Ok(())) => {
                    self.probe = None;
                    self.ready = true;
                    return true;
                }
                Ok(Err(e)) => {
                    self.probe = None;
                    self.failed(dim, e, now);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    self.retry_at = now.saturating_add(PROBE_POLL_MICROS);
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.probe = None;
                    self.failed(dim, "the database check was dropped".into(), now);
                }
            }
            return false;
        }
        if now >= self.retry_at {
            self.probe = Some(std::sync::Mutex::new(self.table.check()));
            self.retry_at = now.saturating_add(PROBE_POLL_MICROS);
        }
        false
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            self.failures = 0;
            self.stats.set_error(None);
        }
    }
}

#[derive(Debug)]
pub struct LookupJoin {
    /// LEFT JOIN: a row without a dimension row is padded with NULLs.
    left_outer: bool,
    /// Left columns compared with `dim_keys`, in the same order.
    left_keys: Vec<usize>,
    dim: Arc<TableDef>,
    dim_types: Vec<DataType>,
    /// Stored columns of the dimension the lookup compares (its primary key, in key
    /// order, for [`Dim::Key`]; the index columns for [`Dim::Index`]).
    dim_keys: Vec<usize>,
    /// Stored columns of the dimension the join outputs.
    dim_columns: Vec<usize>,
    source: Dim,
    output: SchemaRef,
    left_types: Vec<DataType>,
    /// What was emitted per left row (None: the left input only appends).
    emitted: Option<StateTable>,
    /// Threads a chunk's point reads are split over (the stream's worker count).
    read_threads: usize,
}

impl LookupJoin {
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        left_outer: bool,
        left_keys: Vec<usize>,
        dim: Arc<TableDef>,
        dim_keys: Vec<usize>,
        dim_columns: Vec<usize>,
        source: Dim,
        output: SchemaRef,
        append_only_left: bool,
        state: &mut StateAlloc,
    ) -> Result<Self> {
        if left_keys.len() != dim_keys.len() || (matches!(source, Dim::Key) && dim_keys != dim.pk) {
            return Err(EngineError::Internal(
                "lookup join keys do not match the dimension's key".into(),
            ));
        }
        let left_width = output.fields().len() - dim_columns.len();
        Ok(LookupJoin {
            left_outer,
            left_keys,
            dim_types: crate::table::stored_types(&dim),
            dim,
            dim_keys,
            dim_columns,
            source,
            left_types: output.fields()[..left_width]
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            output,
            emitted: (!append_only_left).then(|| state.table()),
            read_threads: 1,
        })
    }

    /// Splits each chunk's point reads over `n` threads (the stream's worker count).
    pub fn set_read_threads(&mut self, n: usize) {
        self.read_threads = n.max(1);
    }

    pub fn output_width(&self) -> usize {
        self.output.fields().len()
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        let mut v: Vec<&mut StateTable> = self.emitted.iter_mut().collect();
        if let Dim::External(e) = &mut self.source {
            v.push(&mut e.pending);
        }
        v
    }

    /// When rows waiting for an external database are next retried (runtime clock, µs).
    pub fn next_deadline(&mut self) -> Result<Option<i64>> {
        let Dim::External(e) = &mut self.source else {
            return Ok(None);
        };
        let retry_at = e.retry_at;
        Ok((!e.waiting()?.is_empty()).then_some(retry_at))
    }

    /// The key a left row looks up, in the dimension's key types (None: a NULL key,
    /// which matches nothing).
    fn key_of(&self, row: &[ScalarValue]) -> Result<Option<Row>> {
        let mut key = Vec::with_capacity(self.left_keys.len());
        for (&k, &c) in self.left_keys.iter().zip(&self.dim_keys) {
            let v = &row[k];
            if v.is_null() {
                return Ok(None);
            }
            // The key value in the dimension's type (the join compared them so); a value
            // that does not fit it (an integer out of its range) equals none of its values.
            let t = &self.dim_types[c];
            if &v.data_type() == t {
                key.push(v.clone());
            } else {
                match v.cast_to(t) {
                    Ok(k) if !k.is_null() => key.push(k),
                    _ => return Ok(None),
                }
            }
        }
        Ok(Some(key))
    }

    fn output_row(&self, full: &[ScalarValue]) -> Row {
        self.dim_columns.iter().map(|&c| full[c].clone()).collect()
    }

    /// The dimension rows each inserted row finds (deletes find nothing: they retract
    /// what the state recorded). `Err` inside: the external database could not answer.
    fn find(
        &mut self,
        snapshot: &Snapshot,
        rows: &[(Op, Row)],
    ) -> Result<std::result::Result<Vec<Found>, String>> {
        let keys: Vec<Option<Row>> = rows
            .iter()
            .map(|(op, r)| {
                if op.sign() > 0 {
                    self.key_of(r)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<_>>()?;
        let nothing: Found = Arc::new(Vec::new());
        match &self.source {
            Dim::Key => {
                let wanted: Vec<Vec<u8>> = keys
                    .iter()
                    .flatten()
                    .map(|k| Ok(keys::row_key(self.dim.id, &keys::encode_key(k)?)))
                    .collect::<Result<_>>()?;
                let mut found = snapshot.multi_get(&wanted)?.into_iter();
                Ok(Ok(keys
                    .iter()
                    .map(|k| {
                        let Some(bytes) = k.as_ref().and_then(|_| found.next()).flatten() else {
                            return Ok(Arc::clone(&nothing));
                        };
                        let full = crate::table::decode(&self.dim, &self.dim_types, &bytes)?;
                        Ok(Arc::new(vec![self.output_row(&full)]))
                    })
                    .collect::<Result<_>>()?))
            }
            Dim::Index(index) => {
                let index = *index;
                let mut by_key: HashMap<Vec<u8>, Found> = HashMap::new();
                let mut out = Vec::with_capacity(keys.len());
                for k in &keys {
                    let Some(k) = k else {
                        out.push(Arc::clone(&nothing));
                        continue;
                    };
                    let enc = keys::encode_key(k)?;
                    if let Some(f) = by_key.get(&enc) {
                        out.push(Arc::clone(f));
                        continue;
                    }
                    let prefix = keys::index_prefix(self.dim.id, index, &enc);
                    let hi = keys::prefix_successor(&prefix).expect("index keys start 0x04");
                    let mut pks = Vec::new();
                    snapshot.for_each(&prefix, &hi, |key, _| {
                        pks.push(keys::row_key(self.dim.id, &key[prefix.len()..]));
                    })?;
                    let mut found = Vec::with_capacity(pks.len());
                    for bytes in snapshot.multi_get(&pks)?.into_iter().flatten() {
                        let full = crate::table::decode(&self.dim, &self.dim_types, &bytes)?;
                        // An entry a TTL expiry left behind may point at a row that has
                        // since been written with another key.
                        let key: Row = self.dim_keys.iter().map(|&c| full[c].clone()).collect();
                        if keys::encode_key(&key)? == enc {
                            found.push(self.output_row(&full));
                        }
                    }
                    let f: Found = Arc::new(found);
                    by_key.insert(enc, Arc::clone(&f));
                    out.push(f);
                }
                Ok(Ok(out))
            }
            Dim::External(_) => self.find_external(keys),
        }
    }

    fn find_external(
        &mut self,
        keys: Vec<Option<Row>>,
    ) -> Result<std::result::Result<Vec<Found>, String>> {
        let Dim::External(ext) = &mut self.source else {
            unreachable!("called for external dimensions")
        };
        let now = Instant::now();
        let nothing: Found = Arc::new(Vec::new());
        // Per row: the encoded key; the distinct keys the cache does not have.
        let mut resolved: HashMap<Vec<u8>, Option<Found>> = HashMap::new();
        let mut missing: Vec<Row> = Vec::new();
        let mut missing_keys: Vec<Vec<u8>> = Vec::new();
        let mut encoded: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        let (mut hits, mut misses) = (0u64, 0u64);
        for k in &keys {
            let Some(k) = k else {
                encoded.push(None);
                continue;
            };
            let enc = keys::encode_key(k)?;
            if !resolved.contains_key(&enc) {
                let cached = ext.cache.as_mut().and_then(|c| c.get(&enc, now));
                if cached.is_none() {
                    missing.push(k.clone());
                    missing_keys.push(enc.clone());
                    misses += 1;
                } else {
                    hits += 1;
                }
                resolved.insert(enc.clone(), cached);
            } else {
                hits += 1;
            }
            encoded.push(Some(enc));
        }
        if !missing.is_empty() {
            let (matched, batch) = match ext.table.fetch(&self.dim_keys, &missing) {
                Ok(b) => b,
                Err(LookupError::Unavailable(e)) => return Ok(Err(e)),
                Err(LookupError::Invalid(e)) => {
                    return Err(EngineError::Unsupported(format!(
                        "looking rows up in \"{}\": {e}",
                        self.dim.name
                    )))
                }
            };
            let rows = crate::table::batch_to_rows(&batch)?;
            LookupStats::add(&ext.stats.fetched, rows.len() as u64);
            let mut grouped: Vec<Vec<Row>> = vec![Vec::new(); missing.len()];
            for (i, r) in matched.into_iter().zip(rows) {
                let slot = grouped.get_mut(i as usize).ok_or_else(|| {
                    EngineError::Internal("a looked-up row matched no requested key".into())
                })?;
                slot.push(self.dim_columns.iter().map(|&c| r[c].clone()).collect());
            }
            for (enc, rows) in missing_keys.into_iter().zip(grouped) {
                let found: Found = Arc::new(rows);
                if let Some(cache) = &mut ext.cache {
                    if !found.is_empty() || ext.cache_missing_key {
                        cache.put(enc.clone(), Arc::clone(&found), now);
                    }
                }
                resolved.insert(enc, Some(found));
            }
        }
        LookupStats::add(&ext.stats.hits, hits);
        LookupStats::add(&ext.stats.misses, misses);
        if let Some(c) = &ext.cache {
            ext.stats
                .cached
                .store(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Ok(encoded
            .iter()
            .map(|e| match e {
                Some(e) => resolved
                    .get(e)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| Arc::clone(&nothing)),
                None => Arc::clone(&nothing),
            })
            .collect()))
    }

    fn joined(&self, row: &[ScalarValue], dim: Option<&[ScalarValue]>) -> Result<Row> {
        let mut out = row.to_vec();
        match dim {
            Some(d) => out.extend_from_slice(d),
            None => {
                for f in &self.output.fields()[row.len()..] {
                    out.push(ScalarValue::try_from(f.data_type())?);
                }
            }
        }
        Ok(out)
    }

    /// Joins left changes with the dimension rows `find` returned for them.
    fn join(&mut self, rows: Vec<(Op, Row)>, found: Vec<Found>) -> Result<StreamChunk> {
        let mut out = Vec::new();
        for ((op, row), dims) in rows.into_iter().zip(found) {
            if op.sign() > 0 {
                if let Some(state) = &mut self.emitted {
                    let prefix = row::encode_row(&row)?;
                    let set = encode_set(&dims)?;
                    state.multiset_add(&prefix, &set, 1, || Ok(Vec::new()))?;
                }
                if dims.is_empty() {
                    if self.left_outer {
                        out.push((Op::Insert, self.joined(&row, None)?));
                    }
                } else {
                    for d in dims.iter() {
                        out.push((Op::Insert, self.joined(&row, Some(d))?));
                    }
                }
            } else {
                // Retract what was emitted for one occurrence of this left row.
                let Some(state) = &mut self.emitted else {
                    return Err(EngineError::Internal(
                        "lookup join: a delete from an input planned as append-only".into(),
                    ));
                };
                let prefix = row::encode_row(&row)?;
                let mut first: Option<Vec<u8>> = None;
                for (suffix, value) in state.bucket(&prefix)? {
                    if multiset_count(value)? > 0 {
                        first = Some(suffix.clone());
                        break;
                    }
                }
                let Some(set) = first else {
                    return Err(EngineError::Internal(
                        "lookup join: delete of a row that was never joined".into(),
                    ));
                };
                state.multiset_add(&prefix, &set, -1, || Ok(Vec::new()))?;
                let types: Vec<DataType> = self
                    .dim_columns
                    .iter()
                    .map(|&c| self.dim_types[c].clone())
                    .collect();
                let dims = decode_set(&set, &types)?;
                if dims.is_empty() {
                    if self.left_outer {
                        out.push((Op::Delete, self.joined(&row, None)?));
                    }
                } else {
                    for d in &dims {
                        out.push((Op::Delete, self.joined(&row, Some(d))?));
                    }
                }
            }
        }
        StreamChunk::from_rows(&self.output, &out)
    }

    /// Joins an epoch's left chunks. With an external dimension, chunks that waited for
    /// the database go first (once it answers again), and a chunk the database cannot
    /// serve waits with every chunk after it.
    pub fn run(
        &mut self,
        chunks: &[StreamChunk],
        snapshot: &Snapshot,
        now: i64,
    ) -> Result<Vec<StreamChunk>> {
        let mut out = Vec::new();
        if matches!(self.source, Dim::Key) && self.emitted.is_none() {
            for c in chunks {
                let n = c.len();
                let parts = if self.read_threads > 1 && n >= 2 * ROWS_PER_THREAD {
                    // Both halves on their own thread: keys, reads and decoding.
                    let half = n / 2;
                    let slice = |from: usize, len: usize| {
                        StreamChunk::new(
                            c.ops()[from..from + len].to_vec(),
                            c.data().slice(from, len),
                        )
                    };
                    let (a, b) = (slice(0, half)?, slice(half, n - half)?);
                    let me = &*self;
                    let (a, b) = std::thread::scope(|s| {
                        let first = s.spawn(|| me.join_by_key(&a, snapshot, 1));
                        let second = me.join_by_key(&b, snapshot, 1);
                        (first.join(), second)
                    });
                    let a =
                        a.map_err(|_| EngineError::Internal("a lookup thread panicked".into()))?;
                    vec![a?, b?]
                } else {
                    vec![self.join_by_key(c, snapshot, self.read_threads)?]
                };
                out.extend(parts.into_iter().filter(|o| !o.is_empty()));
            }
            return Ok(out);
        }
        if !matches!(self.source, Dim::External(_)) {
            for c in chunks {
                let rows = c.rows()?;
                let found = self.find(snapshot, &rows)?.map_err(EngineError::Internal)?;
                let o = self.join(rows, found)?;
                if !o.is_empty() {
                    out.push(o);
                }
            }
            return Ok(out);
        }
        let dim_name = self.dim.name.clone();
        let mut blocked = self.retry_waiting(snapshot, now, &mut out)?;
        for c in chunks {
            let rows = c.rows()?;
            if !blocked {
                match self.find(snapshot, &rows)? {
                    Ok(found) => {
                        let o = self.join(rows, found)?;
                        if !o.is_empty() {
                            out.push(o);
                        }
                        continue;
                    }
                    Err(e) => {
                        self.external().failed(&dim_name, e, now);
                        blocked = true;
                    }
                }
            }
            self.external().defer(&rows)?;
        }
        if !blocked {
            self.external().succeeded();
        }
        Ok(out)
    }

    /// An append-only chunk joined by primary key, column by column: keys encoded from
    /// the arrays, one sorted multi-get, the found rows decoded straight into arrays,
    /// the stream's columns taken. No per-row allocation.
    fn join_by_key(
        &self,
        chunk: &StreamChunk,
        snapshot: &Snapshot,
        threads: usize,
    ) -> Result<StreamChunk> {
        let data = chunk.data();
        let n = data.num_rows();
        if chunk.ops().iter().any(|op| op.sign() < 0) {
            return Err(EngineError::Internal(
                "lookup join: a delete from an input planned as append-only".into(),
            ));
        }
        let mut key_arrays: Vec<ArrayRef> = Vec::with_capacity(self.left_keys.len());
        for (&l, &d) in self.left_keys.iter().zip(&self.dim_keys) {
            let a = data.column(l);
            let t = &self.dim_types[d];
            key_arrays.push(if a.data_type() == t {
                Arc::clone(a)
            } else {
                // A value that does not fit the dimension's type becomes NULL: it equals
                // none of its values.
                cast_with_options(a, t, &CastOptions::default())?
            });
        }
        let refs: Vec<&dyn Array> = key_arrays.iter().map(|a| a.as_ref()).collect();
        let mut wanted = Vec::with_capacity(n);
        let mut row_of = Vec::with_capacity(n);
        let mut key = Vec::with_capacity(32);
        for i in 0..n {
            if refs.iter().any(|a| a.is_null(i)) {
                continue;
            }
            key.clear();
            for a in &refs {
                keys::encode_array_datum(*a, i, &mut key)?;
            }
            wanted.push(keys::row_key(self.dim.id, &key));
            row_of.push(i);
        }
        // The found rows' values, back to back, and each input row's range in them.
        let (values, found_at) = snapshot.multi_get_packed(&wanted, threads)?;
        let mut range: Vec<Option<(usize, usize)>> = vec![None; n];
        for (w, r) in found_at.into_iter().enumerate() {
            range[row_of[w]] = r;
        }
        let (kept, found): (Vec<u32>, Vec<Option<&[u8]>>) = range
            .iter()
            .enumerate()
            .filter(|(_, r)| self.left_outer || r.is_some())
            .map(|(i, r)| (i as u32, r.map(|(a, b)| &values[a..b])))
            .unzip();
        let mut columns: Vec<ArrayRef> = if kept.len() == n {
            data.columns().to_vec()
        } else {
            let indices = UInt32Array::from(kept);
            data.columns()
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<_, _>>()?
        };
        let dim =
            row::decode_columns(&found, &self.dim_types, &self.dim_columns).map_err(|reason| {
                EngineError::Corrupt {
                    table: self.dim.name.clone(),
                    reason,
                }
            })?;
        columns.extend(dim);
        // As the output schema types them (the row path built its batch so too).
        for (i, c) in columns.iter_mut().enumerate() {
            let t = self.output.field(i).data_type();
            if c.data_type() != t {
                *c = cast_with_options(c, t, &CastOptions::default())?;
            }
        }
        let rows = found.len();
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.output),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        StreamChunk::new(vec![Op::Insert; rows], batch)
    }

    fn external(&mut self) -> &mut External {
        match &mut self.source {
            Dim::External(e) => e,
            _ => unreachable!("called for external dimensions"),
        }
    }

    /// Retries every waiting chunk, oldest first, with one lookup for all of them;
    /// true when they still wait.
    fn retry_waiting(
        &mut self,
        snapshot: &Snapshot,
        now: i64,
        out: &mut Vec<StreamChunk>,
    ) -> Result<bool> {
        let dim_name = self.dim.name.clone();
        let types = self.left_types.clone();
        let ext = self.external();
        if ext.waiting()?.is_empty() {
            return Ok(false);
        }
        if !ext.may_retry(&dim_name, now) {
            return Ok(true);
        }
        let seqs: Vec<u64> = ext.waiting()?.iter().copied().collect();
        let mut chunks = Vec::with_capacity(seqs.len());
        let mut all = Vec::new();
        for &seq in &seqs {
            let rows = self.external().pending_rows(seq, &types)?;
            chunks.push(rows.len());
            all.extend(rows);
        }
        let found = match self.find(snapshot, &all)? {
            Ok(found) => found,
            Err(e) => {
                self.external().failed(&dim_name, e, now);
                return Ok(true);
            }
        };
        let n = all.len() as u64;
        let mut rows = all.into_iter();
        let mut found = found.into_iter();
        for len in chunks {
            let part: Vec<(Op, Row)> = rows.by_ref().take(len).collect();
            let f: Vec<Found> = found.by_ref().take(len).collect();
            let o = self.join(part, f)?;
            if !o.is_empty() {
                out.push(o);
            }
        }
        let ext = self.external();
        for seq in seqs {
            ext.pending.delete(PENDING, &seq.to_be_bytes())?;
        }
        ext.waiting()?.clear();
        ext.stats
            .waiting
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        Ok(false)
    }
}

/// The suffix recording the dimension rows one left row occurrence was joined with.
fn encode_set(rows: &[Row]) -> Result<Vec<u8>> {
    if rows.is_empty() {
        return Ok(NONE.to_vec());
    }
    let mut out = vec![SET];
    for r in rows {
        let enc = row::encode_row(r)?;
        out.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        out.extend_from_slice(&enc);
    }
    Ok(out)
}

fn decode_set(bytes: &[u8], types: &[DataType]) -> Result<Vec<Row>> {
    let corrupt = |reason: String| EngineError::Corrupt {
        table: "lookup join state".into(),
        reason,
    };
    match bytes.first() {
        None | Some(0) => return Ok(Vec::new()),
        Some(&SET) => {}
        Some(_) => return Ok(vec![row::decode_row(bytes, types).map_err(corrupt)?]),
    }
    let mut out = Vec::new();
    let mut pos = 1;
    while pos < bytes.len() {
        let len = bytes
            .get(pos..pos + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt("truncated".into()))?;
        let enc = bytes
            .get(pos + 4..pos + 4 + len)
            .ok_or_else(|| corrupt("truncated".into()))?;
        out.push(row::decode_row(enc, types).map_err(corrupt)?);
        pos += 4 + len;
    }
    Ok(out)
}
