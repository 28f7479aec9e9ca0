//! The Strom engine: storage of tables in RocksDB and the read path DataFusion queries use.
//!
//! Layers, bottom up:
//!
//! - [`keys`]: the key layout (`table | vnode | memcomparable pk`) and key encoding.
//! - [`row`]: the value encoding of stored rows.
//! - [`store`]: RocksDB, snapshots, atomic batch writes.
//! - [`database`]: the catalog plus the single write path ([`database::WriteTxn`]); every
//!   statement commits its row changes, catalog change and sequences in one batch.
//! - [`table`], [`scan_range`], [`provider`]: reading a table at a snapshot as Arrow
//!   batches, with primary-key predicates turned into point gets and range scans.
//! - [`changelog`]: committed row changes of tables that views read, durable until the
//!   stream runtime has consumed them.
//! - [`state`]: operator state tables in RocksDB with caches under one memory budget.
//! - [`stream`]: the incremental dataflow: chunks, operators, stream plans, the runtime.
//! - [`watermark`]: event-time watermarks of relations, and their late rows.
//!
//! Start reading at [`database::Database`].

pub mod changelog;
pub mod clock;
pub mod database;
pub mod error;
pub mod index;
pub mod keys;
pub mod lookup;
pub mod provider;
pub mod row;
pub mod scan_range;
pub mod sink_log;
pub mod state;
pub mod store;
pub mod stream;
pub mod table;
pub mod watermark;

pub use database::{Database, WriteTxn};
pub use error::{EngineError, Result};
pub use provider::StromTable;
pub use store::{Snapshot, StoreOptions};
