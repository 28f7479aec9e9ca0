//! [`Store`]: the RocksDB instance, consistent read snapshots, and atomic commits.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, IteratorMode, Options, ReadOptions, SnapshotWithThreadMode,
    WriteBatch, WriteOptions, DB,
};

use crate::error::Result;

/// Values found by [`Snapshot::multi_get_packed`], back to back, and per key its range.
pub type Packed = (Vec<u8>, Vec<Option<(usize, usize)>>);
/// One thread's share: its values, and (key index, start, end) per value found.
type PackedPart = (Vec<u8>, Vec<(usize, usize, usize)>);

/// Keys a multi-get thread takes at least (fewer are not worth a thread).
const MULTI_GET_PER_THREAD: usize = 1024;

/// RocksDB's block cache (uncompressed data blocks).
const BLOCK_CACHE_BYTES: usize = 256 << 20;

/// How many key-value pairs one scan step reads before handing back control.
pub const SCAN_STEP: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// fsync the WAL on every commit. Off by default: a committed write then survives a
    /// process crash (`kill -9`) but not a power loss or kernel panic.
    pub sync_writes: bool,
}

/// Cheap to clone: clones share the one RocksDB instance.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    options: StoreOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Store {
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // L0 uncompressed: memtable flushes mostly carry short-lived data (change-log
        // payloads the views consume within moments, state rewritten every epoch) that the
        // first compaction drops, so compressing it is wasted CPU. Every other level stays
        // LZ4 (with dynamic level sizing, entry 1 is the level L0 merges into, which in a
        // small database is the last one).
        {
            use rocksdb::DBCompressionType::{Lz4, None as Plain};
            opts.set_compression_per_level(&[Plain, Lz4, Lz4, Lz4, Lz4, Lz4, Lz4]);
        }
        opts.increase_parallelism(2);
        // Point reads (temporal joins, state) need the hot blocks cached and most misses
        // answered by a bloom filter.
        let mut table = BlockBasedOptions::default();
        // HyperClockCache: lock-free lookups (the LRU cache's shard mutexes show in
        // profiles of parallel point reads). 0: entry size estimated automatically.
        table.set_block_cache(&Cache::new_hyper_clock_cache(BLOCK_CACHE_BYTES, 0));
        table.set_bloom_filter(10.0, false);
        // A hash index inside each data block: a point read finds its entry without a
        // binary search of the block's restart points.
        table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
        table.set_data_block_hash_ratio(0.75);
        opts.set_block_based_table_factory(&table);
        // Opened by descriptor so the default column family has a handle (batched
        // multi-gets need one) and these options.
        let default =
            rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone());
        let db = DB::open_cf_descriptors(&opts, path, vec![default])?;
        Ok(Store {
            db: Arc::new(db),
            options,
        })
    }

    /// A read view of everything committed so far.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snap = self.db.snapshot();
        // SAFETY: the snapshot borrows the `DB` inside `self.db`'s allocation, which `Snapshot`
        // keeps alive through its own `Arc` clone. Fields drop in declaration order, so the
        // snapshot is released before that `Arc`.
        let snap: SnapshotWithThreadMode<'static, DB> = unsafe { std::mem::transmute(snap) };
        Arc::new(Snapshot {
            snap,
            _db: self.db.clone(),
        })
    }

    /// Applies a batch atomically.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.options.sync_writes);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }

    /// Every pair with `lower <= key < upper` in the latest committed state, in key order.
    pub fn scan_latest(&self, lower: &[u8], upper: &[u8]) -> Result<KvPairs> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        self.db
            .iterator_opt(IteratorMode::Start, ro)
            .map(|item| item.map_err(Into::into))
            .collect()
    }

    /// The pairs with `lower <= key < upper` in the latest committed state, read lazily in
    /// key order (descending when `reverse`): for readers that stop after a few entries.
    pub fn iter_latest(
        &self,
        lower: &[u8],
        upper: &[u8],
        reverse: bool,
    ) -> impl Iterator<Item = Result<KvPair>> + '_ {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        self.db
            .iterator_opt(mode, ro)
            .map(|item| item.map_err(Into::into))
    }

    /// Makes every write so far durable against power loss (fsyncs the WAL).
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Flushes memtables so the next start replays less WAL. Called on clean shutdown.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// A key-value pair as read from RocksDB.
pub type KvPair = (Box<[u8]>, Box<[u8]>);
/// Key-value pairs as read from RocksDB.
pub type KvPairs = Vec<KvPair>;

/// A consistent point-in-time view of the store.
pub struct Snapshot {
    snap: SnapshotWithThreadMode<'static, DB>,
    _db: Arc<DB>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.get(key)?)
    }

    pub fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.snap
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(Into::into))
            .collect()
    }

    /// Point reads of many keys, batched in RocksDB in key order (much faster than
    /// [`Snapshot::multi_get`] for many keys), split over up to `threads` threads. Returns
    /// the values found back to back in one buffer, and per key its range in it.
    pub fn multi_get_packed(&self, keys: &[Vec<u8>], threads: usize) -> Result<Packed> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
        let threads = threads
            .clamp(1, 8)
            .min(keys.len().div_ceil(MULTI_GET_PER_THREAD).max(1));
        let part = order.len().div_ceil(threads).max(1);
        let read = |slice: &[usize]| -> Result<PackedPart> {
            let cf = self
                ._db
                .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
                .expect("invariant: the default column family is opened by name");
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&self.snap);
            let sorted = slice.iter().map(|&i| keys[i].as_slice());
            let values = self._db.batched_multi_get_cf_opt(cf, sorted, true, &ro);
            let mut buf = Vec::new();
            let mut found = Vec::new();
            for (&i, v) in slice.iter().zip(values) {
                if let Some(v) = v? {
                    let start = buf.len();
                    buf.extend_from_slice(&v);
                    found.push((i, start, buf.len()));
                }
            }
            Ok((buf, found))
        };
        let parts: Vec<Result<PackedPart>> = if threads == 1 {
            vec![read(&order)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = order
                    .chunks(part)
                    .map(|slice| s.spawn(move || read(slice)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a multi-get thread panicked"))
                    .collect()
            })
        };
        let mut values = Vec::new();
        let mut ranges = vec![None; keys.len()];
        for p in parts {
            let (buf, found) = p?;
            let base = values.len();
            values.extend_from_slice(&buf);
            for (i, a, b) in found {
                ranges[i] = Some((base + a, base + b));
            }
        }
        Ok((values, ranges))
    }

    /// Visits every pair with `lower <= key < upper`, in key order, without collecting
    /// them.
    pub fn for_each(
        &self,
        lower: &[u8],
        upper: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        for item in self.snap.iterator_opt(IteratorMode::Start, ro) {
            let (k, v) = item?;
            visit(&k, &v);
        }
        Ok(())
    }

    /// Up to `limit` pairs with `lower <= key < upper`, in key order.
    pub fn scan(&self, lower: &[u8], upper: &[u8], limit: usize) -> Result<KvPairs> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        let mut out = Vec::new();
        for item in self.snap.iterator_opt(IteratorMode::Start, ro) {
            out.push(item?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
