//! Operator state in RocksDB: [`StateTable`]s with a bounded in-memory cache.
//!
//! A state table belongs to one operator of one view. Its entries are stored under
//!
//! ```text
//! 0x03 | view: u32 BE | state table: u16 BE | vnode: u16 BE | prefix | suffix
//! ```
//!
//! where `prefix` is what the operator looks state up by (a group key, a join key, both
//! memcomparable) and `suffix` tells entries with one prefix apart (a join row, a min/max
//! value). The vnode is a hash of the prefix, so one prefix's entries are contiguous and a
//! prefix's *bucket* is read with one range scan.
//!
//! Caching: buckets are read into memory on first use and written back (only the changed
//! entries) at a barrier, into the epoch's write batch. Reads of uncached buckets go to
//! the latest committed state, which is right because the runtime commits an epoch before
//! it starts the next one and never evicts a bucket with unwritten changes. Every table
//! charges its cached bytes to one shared [`MemoryBudget`]; after each commit the runtime
//! evicts buckets, least recently used epoch first, until the total is back under it.
//!
//! *Ordered* tables ([`StateAlloc::ordered_table`]) are for prefixes with too many entries
//! to hold at once when only the first or last few are read (a global `max` over every
//! reading, a top-N over a whole table). They cache single entries instead of buckets:
//! reads and writes of one entry go through a per-entry cache, and
//! [`StateTable::scan_ordered`] merges the cache's unwritten changes with a lazy RocksDB
//! iterator, so reading the first `n` entries costs `n` entries of memory whatever the
//! prefix holds.
//!
//! A table that was empty when its operator was built (a new view's) and has evicted
//! nothing since is *whole*: every committed entry is in its cache, so a miss is known to
//! be absent without reading RocksDB (a new group, a new window, a new join key). The
//! first eviction ends that, and the table reads misses from the store again.

mod small_map;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::hash_map::EntryRef;
use datafusion::common::HashMap;
use rocksdb::WriteBatch;

use crate::error::{EngineError, Result};
use crate::keys::{self, STATE_PREFIX};
use crate::store::Store;

pub use small_map::SmallMap;

/// Rough per-entry overhead of the cache's maps, added to key and value lengths.
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// The memory all state caches share.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    pub(crate) fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Memory an operator keeps outside its state tables (an in-memory index that cannot be
/// evicted), charged to the budget so that the evictable caches shrink to make room, and
/// given back when it goes.
#[derive(Debug)]
pub struct Charge {
    bytes: usize,
    budget: Arc<MemoryBudget>,
}

impl Charge {
    pub fn new(budget: &Arc<MemoryBudget>) -> Self {
        Charge {
            bytes: 0,
            budget: Arc::clone(budget),
        }
    }

    pub fn add(&mut self, n: usize) {
        self.bytes += n;
        self.budget.add(n);
    }

    pub fn sub(&mut self, n: usize) {
        self.bytes -= n;
        self.budget.sub(n);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.sub(self.bytes);
    }
}

/// The entries of a bucket, by suffix, in suffix order.
pub type Entries = SmallMap<Vec<u8>>;

#[derive(Debug, Default)]
struct Bucket {
    entries: Entries,
    /// Suffixes changed since the last write-back (present: put, absent: delete).
    dirty: SmallMap<()>,
    bytes: usize,
    last_used: u64,
}

/// Appends the store key of the bucket `prefix` (at `vnode`) of state table `index` of
/// `view`: the bytes every entry of the bucket starts with.
fn put_bucket_key(out: &mut Vec<u8>, view: u32, index: u16, vnode: u16, prefix: &[u8]) {
    out.push(STATE_PREFIX);
    out.extend_from_slice(&view.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&vnode.to_be_bytes());
    out.extend_from_slice(prefix);
}

/// The key range of every state table of a view (for `DROP`).
pub fn view_range(view: u32) -> (Vec<u8>, Vec<u8>) {
    let mut lo = vec![STATE_PREFIX];
    lo.extend_from_slice(&view.to_be_bytes());
    let hi = keys::prefix_successor(&lo).expect("invariant: starts with 0x03");
    (lo, hi)
}

/// Hands out a view's state tables, numbered in the order operators are built (the same
/// order on every start, since the plan is rebuilt from the same query).
pub struct StateAlloc {
    view: u32,
    next: u16,
    store: Store,
    budget: Arc<MemoryBudget>,
}

impl StateAlloc {
    pub fn new(view: u32, store: Store, budget: Arc<MemoryBudget>) -> Self {
        StateAlloc {
            view,
            next: 0,
            store,
            budget,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The id of the view whose state this allocates.
    pub fn view(&self) -> u32 {
        self.view
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Builds one operator `workers` times, every instance on the same state tables (the
    /// workers of a parallel operator: each uses only its own vnodes of those tables).
    pub fn build_workers<T>(
        &mut self,
        workers: usize,
        mut build: impl FnMut(&mut StateAlloc) -> crate::error::Result<T>,
    ) -> crate::error::Result<Vec<T>> {
        let start = self.next;
        let mut out = Vec::with_capacity(workers);
        let mut end = start;
        for _ in 0..workers.max(1) {
            self.next = start;
            out.push(build(self)?);
            end = self.next;
        }
        self.next = end;
        Ok(out)
    }

    /// A table whose entries all have the empty suffix (one value per prefix, like an
    /// aggregate's groups): cache misses are point reads instead of range scans.
    pub fn single_table(&mut self) -> StateTable {
        let mut t = self.table();
        t.single = true;
        t
    }

    /// A table read in suffix order a few entries at a time (see the module docs).
    pub fn ordered_table(&mut self) -> StateTable {
        let mut t = self.table();
        t.ordered = true;
        t
    }

    pub fn table(&mut self) -> StateTable {
        let mut t = StateTable::new(
            self.view,
            self.next,
            self.store.clone(),
            Arc::clone(&self.budget),
        );
        // A table with nothing committed starts whole (see the module docs).
        let (lo, hi) = t.range();
        t.whole = self.store.iter_latest(&lo, &hi, false).next().is_none();
        self.next += 1;
        t
    }
}

/// An entry of an ordered table's cache: its value (`None`: absent) and whether that
/// differs from the committed state.
#[derive(Debug)]
struct Slot {
    value: Option<Vec<u8>>,
    dirty: bool,
}

impl Slot {
    fn bytes(&self, key: &[u8]) -> usize {
        key.len() + self.value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
    }
}

/// Records `suffix` as changed in `b`; true when `b` had no changes before.
fn mark_dirty(b: &mut Bucket, suffix: &[u8]) -> bool {
    let was_clean = b.dirty.is_empty();
    b.dirty.insert(suffix, ());
    was_clean
}

/// Changes taken by [`StateTable::stage_dirty`]: keys and values back to back in one
/// buffer, so staging a change copies its bytes instead of allocating two vectors (which,
/// with their frees, was a third of staging's cost in Nexmark q7).
#[derive(Debug, Default)]
struct Staged {
    bytes: Vec<u8>,
    /// Per change, in order: its key's length and its value's (`None`: a delete).
    lens: Vec<(u32, Option<u32>)>,
}

impl Staged {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        let len = |b: &[u8]| u32::try_from(b.len()).expect("invariant: state entries < 4 GiB");
        self.lens.push((len(key), value.map(len)));
        self.bytes.extend_from_slice(key);
        if let Some(v) = value {
            self.bytes.extend_from_slice(v);
        }
    }

    fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Every change, in the order staged.
    fn for_each(&self, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
        let mut at = 0;
        for &(k, v) in &self.lens {
            let key = &self.bytes[at..at + k as usize];
            at += k as usize;
            let value = v.map(|v| {
                let value = &self.bytes[at..at + v as usize];
                at += v as usize;
                value
            });
            f(key, value);
        }
    }
}

pub struct StateTable {
    view: u32,
    index: u16,
    store: Store,
    budget: Arc<MemoryBudget>,
    buckets: HashMap<Vec<u8>, Bucket>,
    /// Prefixes of the buckets with a non-empty dirty set, each once.
    dirty: Vec<Vec<u8>>,
    bytes: usize,
    clock: u64,
    /// Every bucket holds at most the entry with the empty suffix: read with a point get.
    single: bool,
    /// An ordered table: entries are cached one by one in `entries`, by full store key.
    ordered: bool,
    entries: BTreeMap<Vec<u8>, Slot>,
    /// Keys in `entries` with unwritten changes.
    dirty_entries: Vec<Vec<u8>>,
    /// Every committed entry is cached: a miss needs no store read (see the module docs).
    whole: bool,
    /// Changes taken by [`StateTable::stage_dirty`], in key order, not yet written back.
    staged: Staged,
    /// Buckets staging left empty: dropped from the cache at the write-back.
    emptied: Vec<Vec<u8>>,
}

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTable")
            .field("view", &self.view)
            .field("index", &self.index)
            .field("cached_buckets", &self.buckets.len())
            .finish()
    }
}

impl Drop for StateTable {
    fn drop(&mut self) {
        self.budget.sub(self.bytes);
    }
}

impl StateTable {
    pub fn new(view: u32, index: u16, store: Store, budget: Arc<MemoryBudget>) -> Self {
        StateTable {
            view,
            index,
            store,
            budget,
            buckets: HashMap::default(),
            dirty: Vec::new(),
            bytes: 0,
            clock: 0,
            single: false,
            ordered: false,
            entries: BTreeMap::new(),
            dirty_entries: Vec::new(),
            whole: false,
            staged: Staged::default(),
            emptied: Vec::new(),
        }
    }

    /// The key range of all the table's entries.
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        let mut lo = vec![STATE_PREFIX];
        lo.extend_from_slice(&self.view.to_be_bytes());
        lo.extend_from_slice(&self.index.to_be_bytes());
        let hi = keys::prefix_successor(&lo).expect("invariant: starts with 0x03");
        (lo, hi)
    }

    fn entry_key(&self, prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
        let mut k = self.bucket_key(prefix);
        k.extend_from_slice(suffix);
        k
    }

    /// An ordered table's cached entry for `key`, read from the store on a miss.
    fn slot(&mut self, key: Vec<u8>) -> Result<&mut Slot> {
        if !self.entries.contains_key(&key) {
            let value = if self.whole {
                None
            } else {
                self.store.get(&key)?
            };
            let slot = Slot {
                value,
                dirty: false,
            };
            let n = slot.bytes(&key);
            self.bytes += n;
            self.budget.add(n);
            self.entries.insert(key.clone(), slot);
        }
        Ok(self
            .entries
            .get_mut(&key)
            .expect("invariant: inserted above"))
    }

    /// Sets an ordered table's entry (`None` deletes it).
    fn set_entry(&mut self, prefix: &[u8], suffix: &[u8], value: Option<Vec<u8>>) -> Result<()> {
        let key = self.entry_key(prefix, suffix);
        let slot = self.slot(key.clone())?;
        let before = slot.bytes(&key);
        slot.value = value;
        let after = slot.bytes(&key);
        let newly_dirty = !slot.dirty;
        slot.dirty = true;
        self.bytes = self.bytes + after - before;
        self.budget.add(after);
        self.budget.sub(before);
        if newly_dirty {
            self.dirty_entries.push(key);
        }
        Ok(())
    }

    /// Visits an ordered table's entries under `prefix` in suffix order (descending when
    /// `reverse`), with their values, until `visit` returns false. Reads lazily: entries
    /// after the last one visited are never read.
    pub fn scan_ordered(
        &mut self,
        prefix: &[u8],
        reverse: bool,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        debug_assert!(self.ordered, "scan_ordered on a bucket table");
        let lo = self.bucket_key(prefix);
        let hi = keys::prefix_successor(&lo).expect("invariant: starts with 0x03");
        let cached: Box<dyn Iterator<Item = (&Vec<u8>, &Slot)>> = if reverse {
            Box::new(self.entries.range(lo.clone()..hi.clone()).rev())
        } else {
            Box::new(self.entries.range(lo.clone()..hi.clone()))
        };
        let mut cached = cached.peekable();
        // A whole table's cache holds every committed entry: the store adds nothing.
        let (from, to) = if self.whole { (&hi, &hi) } else { (&lo, &hi) };
        let mut stored = self.store.iter_latest(from, to, reverse).peekable();
        loop {
            // The next key in scan order, from whichever side has it; the cache wins ties.
            let take_cached = match (cached.peek(), stored.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(_), Some(Err(_))) => false,
                (Some((ck, _)), Some(Ok((sk, _)))) => {
                    let ord = ck.as_slice().cmp(sk);
                    let ord = if reverse { ord.reverse() } else { ord };
                    if ord == std::cmp::Ordering::Equal {
                        stored.next();
                    }
                    ord != std::cmp::Ordering::Greater
                }
            };
            let go_on = if take_cached {
                let (k, slot) = cached.next().expect("peeked");
                match &slot.value {
                    Some(v) => visit(&k[lo.len()..], v)?,
                    None => true,
                }
            } else {
                let (k, v) = stored.next().expect("peeked")?;
                visit(&k[lo.len()..], &v)?
            };
            if !go_on {
                return Ok(());
            }
        }
    }

    fn bucket_key(&self, prefix: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + prefix.len());
        put_bucket_key(
            &mut k,
            self.view,
            self.index,
            keys::vnode_of(prefix),
            prefix,
        );
        k
    }

    fn load(&mut self, prefix: &[u8]) -> Result<&mut Bucket> {
        let clock = self.clock;
        // One hash of the prefix, hit or miss; the store keys only for a store read.
        let vacant = match self.buckets.entry_ref(prefix) {
            EntryRef::Occupied(o) => {
                let b = o.into_mut();
                b.last_used = clock;
                return Ok(b);
            }
            EntryRef::Vacant(v) => v,
        };
        // The bucket's own key counts too: a bucket read empty (a join probing a key the
        // other side does not have) is cached to spare the next store read, and must
        // show in the budget, or they pile up unseen.
        let mut bucket = Bucket {
            bytes: prefix.len() + ENTRY_OVERHEAD,
            last_used: clock,
            ..Bucket::default()
        };
        if !self.whole {
            // (Not `bucket_key`: `self.buckets` is borrowed.)
            let mut lo = Vec::with_capacity(9 + prefix.len());
            put_bucket_key(
                &mut lo,
                self.view,
                self.index,
                keys::vnode_of(prefix),
                prefix,
            );
            if self.single {
                if let Some(v) = self.store.get(&lo)? {
                    bucket.bytes += lo.len() + v.len() + ENTRY_OVERHEAD;
                    bucket.entries.insert(&[], v);
                }
            } else {
                let hi = keys::prefix_successor(&lo).expect("invariant: starts with 0x03");
                for (k, v) in self.store.scan_latest(&lo, &hi)? {
                    bucket.bytes += k.len() + v.len() + ENTRY_OVERHEAD;
                    bucket.entries.insert(&k[lo.len()..], v.into_vec());
                }
            }
        }
        // Otherwise nothing committed is not cached: the bucket is empty.
        self.bytes += bucket.bytes;
        self.budget.add(bucket.bytes);
        Ok(vacant.insert(bucket))
    }

    /// The cached bucket of `prefix`, marked as used. For a whole table, `None` means it
    /// has no entries, known without a store read: reads of a whole table cache nothing
    /// new, as a join probing the other side with every new key (q7: every bid's price)
    /// would otherwise leave one empty bucket per key in the cache.
    fn cached_bucket(&mut self, prefix: &[u8]) -> Option<&Bucket> {
        let clock = self.clock;
        self.buckets.get_mut(prefix).map(|b| {
            b.last_used = clock;
            &*b
        })
    }

    /// Every entry under `prefix`, by suffix, in suffix order.
    pub fn bucket(&mut self, prefix: &[u8]) -> Result<&Entries> {
        static EMPTY: Entries = SmallMap::new();
        debug_assert!(!self.ordered, "bucket() on an ordered table");
        if self.whole {
            return Ok(self.cached_bucket(prefix).map_or(&EMPTY, |b| &b.entries));
        }
        Ok(&self.load(prefix)?.entries)
    }

    /// The entries of a cached bucket, without touching the table (so that several
    /// buckets can be borrowed at once). After [`StateTable::bucket`] was asked for it
    /// (with no eviction since), `None` means the bucket holds nothing.
    pub fn peek_bucket(&self, prefix: &[u8]) -> Option<&Entries> {
        debug_assert!(!self.ordered, "peek_bucket() on an ordered table");
        self.buckets.get(prefix).map(|b| &b.entries)
    }

    pub fn get(&mut self, prefix: &[u8], suffix: &[u8]) -> Result<Option<&Vec<u8>>> {
        if self.ordered {
            let key = self.entry_key(prefix, suffix);
            return Ok(self.slot(key)?.value.as_ref());
        }
        if self.whole {
            return Ok(self
                .cached_bucket(prefix)
                .and_then(|b| b.entries.get(suffix)));
        }
        Ok(self.load(prefix)?.entries.get(suffix))
    }

    /// Sets the entry `(prefix, suffix)` to what `f` makes of its current value (`None`:
    /// absent; returning `None` deletes it), finding the bucket and the entry once where
    /// a `get` then a `put` would each look them up.
    pub fn update(
        &mut self,
        prefix: &[u8],
        suffix: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        if self.ordered {
            let current = self.get(prefix, suffix)?.cloned();
            return match f(current.as_deref())? {
                Some(v) => self.put(prefix, suffix, v),
                None => self.delete(prefix, suffix),
            };
        }
        let b = self.load(prefix)?;
        let (added, removed) = match f(b.entries.get(suffix).map(Vec::as_slice))? {
            Some(v) => {
                let added = suffix.len() + v.len() + ENTRY_OVERHEAD;
                let removed = b
                    .entries
                    .insert(suffix, v)
                    .map_or(0, |old| suffix.len() + old.len() + ENTRY_OVERHEAD);
                (added, removed)
            }
            None => match b.entries.remove(suffix) {
                Some(old) => (0, suffix.len() + old.len() + ENTRY_OVERHEAD),
                None => return Ok(()),
            },
        };
        b.bytes = b.bytes + added - removed;
        let newly_dirty = mark_dirty(b, suffix);
        self.bytes = self.bytes + added - removed;
        self.budget.add(added);
        self.budget.sub(removed);
        if newly_dirty {
            self.dirty.push(prefix.to_vec());
        }
        Ok(())
    }

    pub fn put(&mut self, prefix: &[u8], suffix: &[u8], value: Vec<u8>) -> Result<()> {
        if self.ordered {
            return self.set_entry(prefix, suffix, Some(value));
        }
        let b = self.load(prefix)?;
        let added = suffix.len() + value.len() + ENTRY_OVERHEAD;
        let removed = b
            .entries
            .insert(suffix, value)
            .map_or(0, |old| suffix.len() + old.len() + ENTRY_OVERHEAD);
        b.bytes = b.bytes + added - removed;
        let newly_dirty = mark_dirty(b, suffix);
        self.bytes = self.bytes + added - removed;
        self.budget.add(added);
        self.budget.sub(removed);
        if newly_dirty {
            self.dirty.push(prefix.to_vec());
        }
        Ok(())
    }

    pub fn delete(&mut self, prefix: &[u8], suffix: &[u8]) -> Result<()> {
        if self.ordered {
            return self.set_entry(prefix, suffix, None);
        }
        if self.whole && !self.buckets.contains_key(prefix) {
            // Nothing to delete, known without a read; caching an empty bucket for it
            // would only cost memory.
            return Ok(());
        }
        let b = self.load(prefix)?;
        if let Some(old) = b.entries.remove(suffix) {
            let removed = suffix.len() + old.len() + ENTRY_OVERHEAD;
            b.bytes -= removed;
            let newly_dirty = mark_dirty(b, suffix);
            self.bytes -= removed;
            self.budget.sub(removed);
            if newly_dirty {
                self.dirty.push(prefix.to_vec());
            }
        }
        Ok(())
    }

    /// Adds `sign` occurrences of an entry to a multiset kept under `prefix` (min/max
    /// values, a general aggregate's inputs, a window partition's rows). `suffix` tells
    /// entries apart; an entry's value is its count as 8 bytes big-endian, then what
    /// `encode` returns, which is called only for a new entry. A count of 0 deletes it.
    pub fn multiset_add(
        &mut self,
        prefix: &[u8],
        suffix: &[u8],
        sign: i64,
        encode: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<()> {
        let (count, value) = match self.get(prefix, suffix)? {
            Some(bytes) => (multiset_count(bytes)? + sign, Some(bytes.clone())),
            None => (sign, None),
        };
        if count < 0 {
            return Err(EngineError::Internal(format!(
                "state table {}/{}: an entry was deleted more often than inserted",
                self.view, self.index
            )));
        }
        if count == 0 {
            return self.delete(prefix, suffix);
        }
        let bytes = match value {
            Some(mut bytes) => {
                bytes[..8].copy_from_slice(&count.to_be_bytes());
                bytes
            }
            None => {
                let mut bytes = count.to_be_bytes().to_vec();
                bytes.extend(encode()?);
                bytes
            }
        };
        self.put(prefix, suffix, bytes)
    }

    /// Visits every committed entry of the table (the store's, not the cache's), as its
    /// vnode, the bytes after it (`prefix ++ suffix`) and its value. For rebuilding what
    /// an operator keeps in memory about its state after a start.
    pub fn for_each_committed(
        &self,
        mut visit: impl FnMut(u16, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (lo, hi) = self.range();
        for kv in self.store.iter_latest(&lo, &hi, false) {
            let (k, v) = kv?;
            let vnode = k
                .get(lo.len()..lo.len() + 2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            visit(vnode, k.get(lo.len() + 2..).unwrap_or_default(), &v)?;
        }
        Ok(())
    }

    /// Adds every change since the last call to `batch`: first those staged by
    /// [`StateTable::stage_dirty`], then the ones made after it. A key changed again after
    /// staging is written twice, and the later write wins, as in the table.
    pub fn write_dirty(&mut self, batch: &mut WriteBatch) {
        // Taken, not drained: one large epoch must not leave its capacity behind.
        std::mem::take(&mut self.staged).for_each(|key, value| match value {
            Some(v) => batch.put(key, v),
            None => batch.delete(key),
        });
        let mut emptied = std::mem::take(&mut self.emptied);
        emptied.extend(self.drain_dirty(|key, value| match value {
            Some(v) => batch.put(key, v),
            None => batch.delete(key),
        }));
        // A bucket emptied by deletes goes from the cache once its deletes are in the
        // batch: the store then has it as it is (nothing), and prefixes that come and go
        // (a join's rows dropped by the watermark, closed windows' groups) would
        // otherwise pile up as empty buckets, which the budget does not see. Not before:
        // a bucket read back from the store while its deletes are only staged would
        // bring the deleted entries back.
        for prefix in emptied {
            let empty = self
                .buckets
                .get(&prefix)
                .is_some_and(|b| b.entries.is_empty() && b.dirty.is_empty());
            if empty {
                let bytes = self.buckets.remove(&prefix).map_or(0, |b| b.bytes);
                self.bytes -= bytes;
                self.budget.sub(bytes);
            }
        }
    }

    /// Takes the changes made since the last write-back, in key order, as copies kept
    /// for the next [`StateTable::write_dirty`]. An operator's worker calls it on its own
    /// thread at the end of its epoch, so the sorting and key building run in parallel
    /// and the epoch's commit, which runs on one thread, only copies bytes.
    pub fn stage_dirty(&mut self) {
        let mut staged = std::mem::take(&mut self.staged);
        let emptied = self.drain_dirty(|key, value| staged.push(key, value));
        self.staged = staged;
        self.emptied.extend(emptied);
    }

    /// Hands every change since the last call to `write` (`None`: a delete), in key
    /// order: RocksDB's memtable inserts a key next to the previous one almost for free
    /// (its skip list keeps the last insert position), while keys in touch order each cost
    /// a full search of the skip list, which made memtable inserts a fifth of Nexmark q7's
    /// CPU. Returns the prefixes of the buckets left empty, for [`StateTable::write_dirty`]
    /// to drop from the cache.
    fn drain_dirty(&mut self, mut write: impl FnMut(&[u8], Option<&[u8]>)) -> Vec<Vec<u8>> {
        let mut keys = std::mem::take(&mut self.dirty_entries);
        keys.sort_unstable();
        for key in keys {
            let slot = self
                .entries
                .get_mut(&key)
                .expect("invariant: dirty entries stay cached");
            slot.dirty = false;
            write(&key, slot.value.as_deref());
        }
        // Store keys are (table, vnode, prefix, suffix): buckets in (vnode, prefix) order,
        // each bucket's suffixes in order (its dirty set is sorted), give the keys in
        // order, as memcomparable prefixes are prefix-free.
        let mut prefixes: Vec<(u16, Vec<u8>)> = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|p| (keys::vnode_of(&p), p))
            .collect();
        prefixes.sort_unstable();
        let mut key = Vec::new();
        for (vnode, prefix) in &prefixes {
            // `bucket_key`, without hashing the prefix again.
            key.clear();
            put_bucket_key(&mut key, self.view, self.index, *vnode, prefix);
            debug_assert_eq!(key, self.bucket_key(prefix));
            let base = key.len();
            let b = self
                .buckets
                .get_mut(prefix)
                .expect("invariant: dirty buckets stay cached");
            for suffix in std::mem::take(&mut b.dirty).into_keys() {
                key.truncate(base);
                key.extend_from_slice(&suffix);
                write(&key, b.entries.get(&suffix).map(Vec::as_slice));
            }
        }
        prefixes
            .into_iter()
            .filter(|(_, p)| self.buckets.get(p).is_some_and(|b| b.entries.is_empty()))
            .map(|(_, p)| p)
            .collect()
    }

    /// Advances this table's notion of time: buckets used from now on are more recent
    /// than everything used before.
    pub fn tick(&mut self) {
        self.clock += 1;
    }

    /// Drops clean buckets last used before `clock - keep` (all of them with `keep` 0).
    /// Returns the bytes freed.
    pub fn evict(&mut self, keep: u64) -> usize {
        if !self.staged.is_empty() || !self.emptied.is_empty() {
            // Staged changes are not in the store yet: a bucket dropped now would be read
            // back without them.
            return 0;
        }
        let horizon = self.clock.saturating_sub(keep);
        let mut freed = 0;
        // An ordered table's entries carry no use time: clean ones all go.
        self.entries.retain(|k, slot| {
            if slot.dirty {
                true
            } else {
                freed += slot.bytes(k);
                false
            }
        });
        self.buckets.retain(|_, b| {
            if b.dirty.is_empty() && (keep == 0 || b.last_used < horizon) {
                freed += b.bytes;
                false
            } else {
                true
            }
        });
        self.bytes -= freed;
        self.budget.sub(freed);
        if freed > 0 {
            self.whole = false;
        }
        freed
    }

    /// Forgets every change not yet written back, and the whole cache: the table is back
    /// at its last committed state.
    pub fn discard(&mut self) {
        self.whole = false;
        self.staged = Staged::default();
        self.emptied.clear();
        self.buckets.clear();
        self.dirty.clear();
        self.entries.clear();
        self.dirty_entries.clear();
        self.budget.sub(self.bytes);
        self.bytes = 0;
    }

    pub fn cached_bytes(&self) -> usize {
        self.bytes
    }
}

/// The count of a multiset entry written by [`StateTable::multiset_add`]; its payload
/// is `&bytes[8..]`.
pub fn multiset_count(bytes: &[u8]) -> Result<i64> {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| EngineError::Corrupt {
            table: "operator state".into(),
            reason: "short multiset entry".into(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::StoreOptions;

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        (dir, store)
    }

    /// A state allocator over a fresh temporary store with a roomy budget.
    pub(crate) fn temp_alloc() -> (tempfile::TempDir, StateAlloc) {
        let (dir, store) = temp_store();
        (dir, StateAlloc::new(1, store, MemoryBudget::new(1 << 30)))
    }

    /// Writes back every change and empties the caches, so the next reads come from
    /// RocksDB: what a barrier followed by a spill does.
    pub(crate) fn spill(store: &Store, tables: Vec<&mut StateTable>) {
        let mut batch = WriteBatch::default();
        for t in tables {
            t.write_dirty(&mut batch);
            t.evict(0);
        }
        store.write(batch).unwrap();
    }

    #[test]
    fn only_a_table_with_nothing_committed_skips_reads_of_misses() {
        let (_dir, mut alloc) = temp_alloc();
        let budget = Arc::clone(alloc.budget());
        let store = alloc.store().clone();
        let mut t = alloc.single_table();
        let mut ordered = alloc.ordered_table();
        assert!(t.whole && ordered.whole, "a new view's tables start whole");
        t.put(b"g", b"", b"1".to_vec()).unwrap();
        ordered.put(b"g", b"a", b"2".to_vec()).unwrap();
        let mut batch = WriteBatch::default();
        t.write_dirty(&mut batch);
        ordered.write_dirty(&mut batch);
        store.write(batch).unwrap();
        // Still whole: what it committed is cached.
        assert!(t.whole);
        assert_eq!(t.get(b"g", b"").unwrap(), Some(&b"1".to_vec()));
        // Evicted: no longer whole, and the entry comes back from the store.
        t.evict(0);
        assert!(!t.whole);
        assert_eq!(t.get(b"g", b"").unwrap(), Some(&b"1".to_vec()));
        // The same tables built again (a restart) hold state: not whole, read it.
        let mut again = StateAlloc::new(1, store.clone(), budget);
        let (mut t2, mut o2) = (again.single_table(), again.ordered_table());
        assert!(!t2.whole && !o2.whole);
        assert_eq!(t2.get(b"g", b"").unwrap(), Some(&b"1".to_vec()));
        let mut seen = Vec::new();
        o2.scan_ordered(b"g", false, |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, vec![(b"a".to_vec(), b"2".to_vec())]);
    }

    /// The keys and values of a batch, in the order it holds them (`None`: a delete).
    fn batch_writes(batch: &WriteBatch) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        struct Collect(Vec<(Vec<u8>, Option<Vec<u8>>)>);
        impl rocksdb::WriteBatchIterator for Collect {
            fn put(&mut self, key: &[u8], value: &[u8]) {
                self.0.push((key.to_vec(), Some(value.to_vec())));
            }
            fn delete(&mut self, key: &[u8]) {
                self.0.push((key.to_vec(), None));
            }
        }
        let mut c = Collect(Vec::new());
        batch.iterate(&mut c);
        c.0
    }

    fn sorted(keys: &[(Vec<u8>, Option<Vec<u8>>)]) -> bool {
        keys.windows(2).all(|w| w[0].0 < w[1].0)
    }

    #[test]
    fn changes_reach_the_batch_in_key_order_and_staged_ones_are_kept() {
        let (_dir, mut alloc) = temp_alloc();
        let store = alloc.store().clone();
        let mut t = alloc.table();
        let mut ordered = alloc.ordered_table();
        // Touched in an order unrelated to their keys (or their vnodes).
        let mut n: u32 = 7;
        for _ in 0..200 {
            n = n.wrapping_mul(2_654_435_761).wrapping_add(1);
            let prefix = (n % 50).to_be_bytes();
            let suffix = [(n % 7) as u8];
            t.put(&prefix, &suffix, n.to_be_bytes().to_vec()).unwrap();
            ordered
                .put(&prefix, &suffix, n.to_be_bytes().to_vec())
                .unwrap();
        }
        // Staged as a delete, put back after staging.
        t.put(&3u32.to_be_bytes(), &[1], b"x".to_vec()).unwrap();
        t.delete(&3u32.to_be_bytes(), &[1]).unwrap();
        t.stage_dirty();
        ordered.stage_dirty();
        assert_eq!(
            t.evict(0),
            0,
            "staged changes are not in the store: no eviction"
        );
        // Changed again after staging: the later write must win.
        t.put(&5u32.to_be_bytes(), &[2], b"late".to_vec()).unwrap();
        t.put(&3u32.to_be_bytes(), &[1], b"back".to_vec()).unwrap();
        ordered.delete(&5u32.to_be_bytes(), &[2]).unwrap();
        let mut batch = WriteBatch::default();
        t.write_dirty(&mut batch);
        let staged_and_late = batch_writes(&batch);
        let mut ob = WriteBatch::default();
        ordered.write_dirty(&mut ob);
        let o = batch_writes(&ob);
        // Staged writes in key order, then the two later ones (in key order themselves).
        let (staged, late) = staged_and_late.split_at(staged_and_late.len() - 2);
        assert!(sorted(staged) && sorted(late), "{staged_and_late:?}");
        assert!(staged.len() > 100);
        let (ostaged, olate) = o.split_at(o.len() - 1);
        assert!(sorted(ostaged) && olate[0].1.is_none());
        store.write(batch).unwrap();
        store.write(ob).unwrap();
        // Read back from the store alone.
        t.evict(0);
        ordered.evict(0);
        assert_eq!(
            t.get(&5u32.to_be_bytes(), &[2]).unwrap(),
            Some(&b"late".to_vec())
        );
        assert_eq!(
            t.get(&3u32.to_be_bytes(), &[1]).unwrap(),
            Some(&b"back".to_vec())
        );
        assert_eq!(ordered.get(&5u32.to_be_bytes(), &[2]).unwrap(), None);
        // Nothing left to write.
        let mut empty = WriteBatch::default();
        t.write_dirty(&mut empty);
        ordered.write_dirty(&mut empty);
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn a_bucket_emptied_by_staged_deletes_is_not_read_back_from_the_store() {
        let (_dir, mut alloc) = temp_alloc();
        let store = alloc.store().clone();
        let budget = Arc::clone(alloc.budget());
        let mut t = alloc.table();
        t.put(b"p", b"s1", b"v".to_vec()).unwrap();
        spill(&store, vec![&mut t]);
        assert!(!t.whole, "evicted: misses read the store");
        t.delete(b"p", b"s1").unwrap();
        t.stage_dirty();
        // The delete is only staged: the store still has the entry, the cache must win.
        assert_eq!(t.get(b"p", b"s1").unwrap(), None);
        t.put(b"p", b"s2", b"w".to_vec()).unwrap();
        spill(&store, vec![&mut t]);
        let got: Vec<_> = t
            .bucket(b"p")
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, vec![(b"s2".to_vec(), b"w".to_vec())]);
        // Emptied for good: the bucket leaves the cache at the write-back.
        t.delete(b"p", b"s2").unwrap();
        t.stage_dirty();
        let mut batch = WriteBatch::default();
        t.write_dirty(&mut batch);
        store.write(batch).unwrap();
        assert_eq!(t.cached_bytes(), 0);
        assert_eq!(budget.used(), 0);
        assert!(t.bucket(b"p").unwrap().is_empty());
    }

    #[test]
    fn probing_absent_keys_caches_nothing_unseen() {
        let (_dir, mut alloc) = temp_alloc();
        let store = alloc.store().clone();
        let budget = Arc::clone(alloc.budget());
        let mut t = alloc.table();
        t.put(b"k", b"s", b"v".to_vec()).unwrap();
        spill(&store, vec![&mut t]);
        // A whole table (a new view's) answers misses from memory and caches nothing.
        let mut whole = alloc.table();
        for i in 0..1000u32 {
            assert!(whole.bucket(&i.to_be_bytes()).unwrap().is_empty());
            assert_eq!(whole.get(&i.to_be_bytes(), b"s").unwrap(), None);
        }
        whole.delete(b"absent", b"s").unwrap();
        assert_eq!((whole.buckets.len(), whole.cached_bytes()), (0, 0));
        // One that is not whole caches the misses (sparing the next store reads), and the
        // budget sees them, so eviction can drop them.
        let before = budget.used();
        for i in 0..1000u32 {
            assert!(t.bucket(&i.to_be_bytes()).unwrap().is_empty());
        }
        assert_eq!(t.bucket(b"k").unwrap().len(), 1);
        assert!(budget.used() >= before + 1000 * ENTRY_OVERHEAD);
        assert!(t.evict(0) >= 1000 * ENTRY_OVERHEAD);
        assert_eq!(budget.used(), before);
    }

    #[test]
    fn update_reads_and_writes_an_entry_like_get_then_put() {
        let (_dir, mut alloc) = temp_alloc();
        let store = alloc.store().clone();
        let budget = Arc::clone(alloc.budget());
        let (mut t, mut by_put) = (alloc.table(), alloc.table());
        let mut seen = Vec::new();
        for value in [Some(b"1".to_vec()), Some(b"22".to_vec()), None, None] {
            t.update(b"p", b"s", |current| {
                seen.push(current.map(<[u8]>::to_vec));
                Ok(value.clone())
            })
            .unwrap();
            match value {
                Some(v) => by_put.put(b"p", b"s", v).unwrap(),
                None => by_put.delete(b"p", b"s").unwrap(),
            }
            assert_eq!(t.cached_bytes(), by_put.cached_bytes());
        }
        assert_eq!(
            seen,
            vec![None, Some(b"1".to_vec()), Some(b"22".to_vec()), None]
        );
        t.update(b"q", b"s", |_| Ok(Some(b"kept".to_vec())))
            .unwrap();
        // An error from `f` changes nothing.
        assert!(t
            .update(b"q", b"s", |_| Err(EngineError::Internal("no".into())))
            .is_err());
        spill(&store, vec![&mut t, &mut by_put]);
        assert_eq!(t.get(b"p", b"s").unwrap(), None);
        assert_eq!(t.get(b"q", b"s").unwrap(), Some(&b"kept".to_vec()));
        assert_eq!(budget.used(), t.cached_bytes() + by_put.cached_bytes());
    }

    #[test]
    fn buckets_survive_eviction_and_reopen_through_the_store() {
        let (_dir, store) = temp_store();
        let budget = MemoryBudget::new(1 << 20);
        let mut t = StateTable::new(7, 1, store.clone(), budget.clone());
        t.put(b"g1", b"a", b"1".to_vec()).unwrap();
        t.put(b"g1", b"b", b"2".to_vec()).unwrap();
        t.put(b"g2", b"", b"3".to_vec()).unwrap();
        t.delete(b"g1", b"a").unwrap();
        assert!(budget.used() > 0);
        // dirty buckets are never evicted
        assert_eq!(t.evict(0), 0);
        let mut batch = WriteBatch::default();
        t.write_dirty(&mut batch);
        store.write(batch).unwrap();
        assert!(t.evict(0) > 0);
        assert_eq!(budget.used(), 0);
        let got: Vec<_> = t
            .bucket(b"g1")
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, vec![(b"b".to_vec(), b"2".to_vec())]);
        let mut other = StateTable::new(7, 2, store, budget);
        assert!(other.bucket(b"g1").unwrap().is_empty());
    }

    fn first(t: &mut StateTable, prefix: &[u8], reverse: bool, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        t.scan_ordered(prefix, reverse, |k, _| {
            out.push(k.to_vec());
            Ok(out.len() < n)
        })
        .unwrap();
        out
    }

    #[test]
    fn ordered_tables_merge_unwritten_changes_with_the_store_and_stay_small() {
        let (_dir, store) = temp_store();
        let budget = MemoryBudget::new(1 << 20);
        let mut t = StateAlloc::new(3, store.clone(), budget.clone()).ordered_table();
        for i in 0..1000u32 {
            t.put(b"p", &i.to_be_bytes(), vec![1]).unwrap();
        }
        t.put(b"q", b"x", vec![1]).unwrap();
        spill(&store, vec![&mut t]);
        assert_eq!(budget.used(), 0);
        let k = |i: u32| i.to_be_bytes().to_vec();
        assert_eq!(first(&mut t, b"p", false, 2), vec![k(0), k(1)]);
        assert_eq!(first(&mut t, b"p", true, 2), vec![k(999), k(998)]);
        // reading a few entries caches none of the others
        assert_eq!(budget.used(), 0);
        // unwritten changes win over the store, in both directions
        t.delete(b"p", &k(0)).unwrap();
        t.delete(b"p", &k(999)).unwrap();
        t.put(b"p", &k(1), vec![2]).unwrap();
        t.put(b"p", &k(5000), vec![3]).unwrap();
        assert_eq!(first(&mut t, b"p", false, 2), vec![k(1), k(2)]);
        assert_eq!(first(&mut t, b"p", true, 2), vec![k(5000), k(998)]);
        let mut v1 = Vec::new();
        t.scan_ordered(b"p", false, |_, v| {
            v1 = v.to_vec();
            Ok(false)
        })
        .unwrap();
        assert_eq!(v1, vec![2]);
        assert_eq!(first(&mut t, b"p", false, usize::MAX).len(), 999);
        // other prefixes are not visited
        assert_eq!(first(&mut t, b"q", false, 10), vec![b"x".to_vec()]);
        assert!(first(&mut t, b"r", false, 10).is_empty());
        // a rollback forgets the changes; a commit keeps them
        t.discard();
        assert_eq!(first(&mut t, b"p", false, 1), vec![k(0)]);
        t.delete(b"p", &k(0)).unwrap();
        // unwritten changes survive eviction
        t.evict(0);
        assert_eq!(first(&mut t, b"p", false, 1), vec![k(1)]);
        spill(&store, vec![&mut t]);
        assert_eq!(first(&mut t, b"p", false, 1), vec![k(1)]);
        assert!(t.get(b"p", &k(0)).unwrap().is_none());
        assert_eq!(t.get(b"p", &k(1)).unwrap(), Some(&vec![1]));
    }
}
