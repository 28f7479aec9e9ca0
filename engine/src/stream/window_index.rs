//! The open windows of a windowed operator (an aggregation grouped by a watermarked
//! column, a window function partitioned by one): an ordered state table with one bucket,
//! `encode(window column) ++ key -> key`, so the groups or partitions a watermark has
//! passed are the first entries of one scan.
//!
//! The workers of a parallel operator share their state tables, each using the vnodes of
//! its keys; the index has one bucket, so a worker closes only the keys it owns.

use crate::error::Result;
use crate::state::{StateAlloc, StateTable};

use super::exchange::worker_of;
use super::plan::AggWindow;

#[derive(Debug)]
pub struct WindowIndex {
    pub cfg: AggWindow,
    open: StateTable,
    worker: usize,
    workers: usize,
}

impl WindowIndex {
    /// Allocate it after the operator's other tables, so an unwindowed operator keeps its
    /// table numbers.
    pub fn new(cfg: AggWindow, state: &mut StateAlloc) -> Self {
        WindowIndex {
            cfg,
            open: state.ordered_table(),
            worker: 0,
            workers: 1,
        }
    }

    /// Which worker of how many this operator instance is.
    pub fn set_worker(&mut self, worker: usize, workers: usize) {
        self.worker = worker;
        self.workers = workers;
    }

    pub fn table(&mut self) -> &mut StateTable {
        &mut self.open
    }

    /// The index entry of `key` whose window column encodes as `window`.
    fn suffix(window: &[u8], key: &[u8]) -> Vec<u8> {
        let mut s = window.to_vec();
        s.extend_from_slice(key);
        s
    }

    /// Records `key` (window column encoded as `window`) as open.
    pub fn open(&mut self, window: &[u8], key: &[u8]) -> Result<()> {
        self.open.put(&[], &Self::suffix(window, key), key.to_vec())
    }

    /// Forgets `key` (it has no rows any more).
    pub fn remove(&mut self, window: &[u8], key: &[u8]) -> Result<()> {
        self.open.delete(&[], &Self::suffix(window, key))
    }

    /// Takes out of the index the keys this worker owns whose window column sorts below
    /// `bound` (an encoded watermark), in window order.
    pub fn take_closed(&mut self, bound: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (me, workers) = (self.worker, self.workers);
        let mut closed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.open.scan_ordered(&[], false, |suffix, key| {
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
            self.open.delete(&[], &suffix)?;
            keys.push(key);
        }
        Ok(keys)
    }
}
