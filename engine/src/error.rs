//! Engine errors, classified as the style guide asks: the user's fault, an external
//! failure (storage I/O), or a bug in Strom.

use thiserror::Error;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum EngineError {
    /// RocksDB failed (I/O, corruption, lock held by another process).
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Catalog(#[from] strom_catalog::CatalogError),
    /// A constraint the user's data broke.
    #[error("{message}")]
    Constraint {
        /// SQLSTATE class 23 code, e.g. `23505`.
        code: &'static str,
        message: String,
    },
    /// Stored bytes that do not decode: a bug or on-disk corruption.
    #[error("corrupt stored value in table {table}: {reason}")]
    Corrupt { table: String, reason: String },
    /// A value of a type that cannot be stored in the given place.
    #[error("{0}")]
    Unsupported(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Committed rows that cannot be read back (a source's rows logged by reference that
    /// its connector cannot make again): the views that needed them stop, saying why.
    #[error("{0}")]
    RowsLost(String),
}

impl EngineError {
    pub fn unique_violation(table: &str, key: &str) -> Self {
        EngineError::Constraint {
            code: "23505",
            message: format!(
                "duplicate key value violates unique constraint \"{table}_pkey\"\nDETAIL: Key ({key}) already exists."
            ),
        }
    }

    pub fn not_null_violation(table: &str, column: &str) -> Self {
        EngineError::Constraint {
            code: "23502",
            message: format!(
                "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
            ),
        }
    }
}
