//! The streaming layer (work in progress toward materialized views; see
//! `docs/architecture.md`): changelog chunks and the pure, chunk-level operator cores.
//!
//! - [`chunk`]: [`chunk::StreamChunk`], an Arrow batch whose rows carry an [`chunk::Op`],
//!   and a compact text form for tests.
//! - [`hash_agg`]: grouped and global aggregation with retraction.
//! - [`hash_join`]: inner/left/right/full equi-joins with retraction.
//! - [`project_filter`]: filters and projections with DataFusion physical expressions.
//!
//! Operators here are state machines driven by the caller: `apply(chunk)` folds a chunk
//! into state, `flush()` (called at a barrier) emits the changes to the output since the
//! last flush. They hold their state in memory for now; persisting it in RocksDB state
//! tables and running operators as tasks between barriers is the next step.

pub mod chunk;
pub mod hash_agg;
pub mod hash_join;
pub mod plan;
pub mod planner;
pub mod project_filter;
pub mod runtime;

#[cfg(test)]
mod differential_tests;
