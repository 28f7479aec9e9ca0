//! The streaming layer: materialized views as incremental dataflows (see
//! `docs/architecture.md`).
//!
//! - [`chunk`]: [`chunk::StreamChunk`], an Arrow batch whose rows carry an [`chunk::Op`],
//!   and a compact text form for tests.
//! - [`hash_agg`]: grouped and global aggregation with retraction.
//! - [`hash_join`]: inner/left/right/full equi-joins with retraction.
//! - [`lookup_join`]: processing-time temporal joins (`FOR SYSTEM_TIME AS OF PROCTIME()`).
//! - [`project_filter`]: filters and projections with DataFusion physical expressions.
//! - [`exchange`]: routing rows to an operator's parallel workers by vnode.
//! - [`plan`], [`planner`]: the stream plan and its derivation from DataFusion plans.
//! - [`window_index`]: the open windows of a windowed aggregation or window function.
//! - [`session`]: session windows (`SESSION(t, ts, gap, keys...)`).
//! - [`temporal_filter`]: `ts > now() - INTERVAL ...` maintained as time passes.
//! - [`runtime`]: epochs, barriers, backfill, recovery.
//!
//! Operators are state machines driven by the runtime: `apply(chunk)` folds a chunk into
//! state, `flush()` (called at a barrier) emits the changes to the output since the last
//! flush; their state lives in RocksDB [`crate::state::StateTable`]s.

pub mod chunk;
pub mod exchange;
pub mod hash_agg;
pub mod hash_join;
pub mod lookup_join;
pub mod over_window;
pub mod plan;
pub mod planner;
pub mod project_filter;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod temporal_filter;
pub mod time_shift;
pub mod window_index;

#[cfg(test)]
mod differential_tests;
