//! SQL front end: parsing, PostgreSQL-compatibility rewrites, and DDL binding.
//!
//! - [`parser`]: SQL text to sqlparser statements (PostgreSQL dialect).
//! - [`rewrite`]: AST rewrites that let DataFusion plan what PostgreSQL clients send
//!   (`pg_catalog.` function prefixes, `OPERATOR(pg_catalog.~)`, `::regclass` casts, ...).
//! - [`types`]: sqlparser data types to [`strom_catalog::SqlType`].
//! - [`ddl`]: `CREATE TABLE` to a [`strom_catalog::TableDef`].
//! - [`connector`]: `CREATE SOURCE` / connector tables (RisingWave syntax).
//! - [`windows`]: `TUMBLE(...)` and `HOP(...)` window table functions.
//!
//! Queries and DML are planned by DataFusion (`SessionState::statement_to_plan`) against
//! table providers the server registers; this crate never touches storage.

pub mod connector;
pub mod ddl;
pub mod error;
pub mod literal;
pub mod parser;
pub mod rewrite;
pub mod types;
pub mod windows;

pub use error::{Result, SqlError};
