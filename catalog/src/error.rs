//! Catalog errors. All of them are the user's fault except [`CatalogError::Corrupt`].

use thiserror::Error;

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("schema \"{0}\" does not exist")]
    SchemaNotFound(String),
    #[error("schema \"{0}\" already exists")]
    SchemaExists(String),
    #[error("relation \"{0}\" does not exist")]
    TableNotFound(String),
    #[error("relation \"{0}\" already exists")]
    TableExists(String),
    #[error("schema \"{0}\" is not empty; drop its relations first or use CASCADE")]
    SchemaNotEmpty(String),
    #[error("cannot drop schema \"{0}\"")]
    SchemaProtected(String),
    #[error("catalog data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}
