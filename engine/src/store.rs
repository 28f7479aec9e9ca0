//! [`Store`]: the RocksDB instance, consistent read snapshots, and atomic commits.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    IteratorMode, Options, ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};

use crate::error::Result;

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
        opts.increase_parallelism(2);
        let db = DB::open(&opts, path)?;
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
