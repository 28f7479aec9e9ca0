//! The open windows of a windowed operator (an aggregation grouped by a watermarked
//! column, a window function partitioned by one): `(encoded window column, key)` pairs in
//! order, so the groups or partitions a watermark has passed are the first entries.
//!
//! Views of state version 3 and later keep them in memory and rebuild them from the
//! operator's own state after a start ([`WindowIndex::load`]): every open key has state
//! there, and its window column is part of the key. Before, they were an ordered state
//! table with one bucket, `encode(window column) ++ key -> key`, which cost a state write
//! when a group appeared and a scan and a delete when it closed (a tenth of Nexmark q5).
//!
//! The workers of a parallel operator each see only the keys they own (by vnode). The
//! in-memory index is charged to the state memory budget, like a join's time index.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;

use crate::error::{EngineError, Result};
use crate::keys;
use crate::state::{Charge, StateAlloc, StateTable, ENTRY_OVERHEAD};

use super::exchange::worker_of;
use super::plan::AggWindow;

#[derive(Debug)]
enum Open {
    /// State versions before 3.
    Table(StateTable),
    Memory {
        open: BTreeSet<(Vec<u8>, Vec<u8>)>,
        /// Whether the keys committed before this start are in `open`.
        loaded: bool,
        /// What `open` holds, charged to the state budget.
        bytes: Charge,
    },
}

/// The bytes an in-memory entry is charged.
fn entry_bytes(window: &[u8], key: &[u8]) -> usize {
    window.len() + key.len() + ENTRY_OVERHEAD
}

#[derive(Debug)]
pub struct WindowIndex {
    pub cfg: AggWindow,
    open: Open,
    worker: usize,
    workers: usize,
}

impl WindowIndex {
    /// Allocate it after the operator's other tables, so an unwindowed operator keeps its
    /// table numbers (a view of state version 3 or later allocates none).
    pub fn new(cfg: AggWindow, state: &mut StateAlloc) -> Self {
        let open = if cfg.in_memory {
            Open::Memory {
                open: BTreeSet::new(),
                loaded: false,
                bytes: Charge::new(state.budget()),
            }
        } else {
            Open::Table(state.ordered_table())
        };
        WindowIndex {
            cfg,
            open,
            worker: 0,
            workers: 1,
        }
    }

    /// Which worker of how many this operator instance is.
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        self.worker = worker;
        self.workers = workers;
    }

    /// The index's state table, if it has one.
    pub fn table(&mut self) -> Option<&mut StateTable> {
        match &mut self.open {
            Open::Table(t) => Some(t),
            Open::Memory { .. } => None,
        }
    }

    /// Whether [`WindowIndex::load`] must run before the index is used.
    pub fn needs_load(&self) -> bool {
        matches!(self.open, Open::Memory { loaded: false, .. })
    }

    /// Fills an in-memory index with the keys committed in `state`, the operator's table
    /// whose entries are stored under its keys (an aggregation's groups, a window
    /// function's partitions), each key being datums of `key_types`, the window column
    /// among them. Call before the first use after a start, when the operator has changed
    /// nothing yet: the store then holds exactly the keys open at the start.
    pub fn load(&mut self, state: &StateTable, key_types: &[DataType]) -> Result<()> {
        let (worker, workers, window) = (self.worker, self.workers, self.cfg.key);
        let Open::Memory {
            open,
            loaded,
            bytes,
        } = &mut self.open
        else {
            return Ok(());
        };
        let corrupt = || EngineError::Corrupt {
            table: "window state".into(),
            reason: "a key does not decode".into(),
        };
        state.for_each_committed(|vnode, tail, _| {
            if workers > 1 && vnode as usize % workers != worker {
                return Ok(());
            }
            let (mut at, mut window_at) = (0, 0..0);
            for (i, t) in key_types.iter().enumerate() {
                let len = keys::key_datum_len(&tail[at..], t).ok_or_else(corrupt)?;
                if i == window {
                    window_at = at..at + len;
                }
                at += len;
            }
            // A partition's rows share its key: the first inserts it, the rest find it.
            let (window, key) = (&tail[window_at], &tail[..at]);
            if open.insert((window.to_vec(), key.to_vec())) {
                bytes.add(entry_bytes(window, key));
            }
            Ok(())
        })?;
        *loaded = true;
        Ok(())
    }

    /// The index entry of `key` whose window column encodes as `window`.
    fn suffix(window: &[u8], key: &[u8]) -> Vec<u8> {
        let mut s = window.to_vec();
        s.extend_from_slice(key);
        s
    }

    /// Records `key` (window column encoded as `window`) as open.
    pub fn open(&mut self, window: &[u8], key: &[u8]) -> Result<()> {
        match &mut self.open {
            Open::Table(t) => t.put(&[], &Self::suffix(window, key), key.to_vec()),
            Open::Memory { open, bytes, .. } => {
                if open.insert((window.to_vec(), key.to_vec())) {
                    bytes.add(entry_bytes(window, key));
                }
                Ok(())
            }
        }
    }

    /// Forgets `key` (it has no rows any more).
    pub fn remove(&mut self, window: &[u8], key: &[u8]) -> Result<()> {
        match &mut self.open {
            Open::Table(t) => t.delete(&[], &Self::suffix(window, key)),
            Open::Memory { open, bytes, .. } => {
                if open.remove(&(window.to_vec(), key.to_vec())) {
                    bytes.sub(entry_bytes(window, key));
                }
                Ok(())
            }
        }
    }

    /// Takes out of the index the keys this worker owns whose window column sorts below
    /// `bound` (an encoded watermark), in window order.
    pub fn take_closed(&mut self, bound: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (me, workers) = (self.worker, self.workers);
        let t = match &mut self.open {
            Open::Memory { open, bytes, .. } => {
                // Encoded windows are prefix-free, so (window, key) pairs sort as their
                // concatenation does, and a window below `bound` comes first.
                let mut keys = Vec::new();
                while open.first().is_some_and(|(w, _)| w.as_slice() < bound) {
                    let (window, key) = open.pop_first().expect("checked");
                    bytes.sub(entry_bytes(&window, &key));
                    keys.push(key);
                }
                return Ok(keys);
            }
            Open::Table(t) => t,
        };
        let mut closed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        t.scan_ordered(&[], false, |suffix, key| {
            if suffix >= bound {
                return Ok(false);
            }
            if workers <= 1 || worker_of(key, workers) == me {
                closed.push((suffix.to_vec(), key.to_vec()));
            }
            Ok(true)
        })?;
        let mut keys = Vec::with_capacity(closed.len());
        for (suffix, key) in closed {
            t.delete(&[], &suffix)?;
            keys.push(key);
        }
        Ok(keys)
    }
}
