//! The Strom catalog: ids, SQL types and object definitions.
//!
//! This crate is the bottom of the workspace DAG. It knows nothing about storage or
//! execution; it describes *what exists*:
//!
//! - [`ids`]: newtype ids (`SchemaId`, `TableId`) and how they map to PostgreSQL oids.
//! - [`types`]: [`SqlType`], the column types users write, with their Arrow and
//!   PostgreSQL faces.
//! - [`object`]: [`SchemaDef`], [`TableDef`], [`ColumnDef`].
//! - [`catalog`]: [`Catalog`], an immutable snapshot of all objects. DDL produces a new
//!   snapshot; readers keep an `Arc` to the one they started with. Persistence is a
//!   single serialized value (see [`Catalog::to_bytes`]), written by the engine in the same
//!   RocksDB batch as any data change of the same statement.
//!
//! Start reading at [`catalog::Catalog`].

pub mod catalog;
pub mod error;
pub mod ids;
pub mod object;
pub mod types;

pub use catalog::Catalog;
pub use error::{CatalogError, Result};
pub use ids::{SchemaId, TableId};
pub use object::{
    ColumnDef, ConnectorDef, IncludeDef, IndexDef, SchemaDef, TableDef, ViewDef, WatermarkDef,
    ROW_ID_COLUMN, VIEW_COUNT_COLUMN,
};
pub use types::SqlType;
