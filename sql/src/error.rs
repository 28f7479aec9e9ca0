//! Errors of the SQL front end. All are the user's fault; each maps to a SQLSTATE.

use thiserror::Error;

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum SqlError {
    /// 42601
    #[error("syntax error: {0}")]
    Syntax(String),
    /// 0A000
    #[error("not supported: {0}")]
    Unsupported(String),
    /// 42704
    #[error("type \"{0}\" does not exist")]
    UnknownType(String),
    /// 42703
    #[error("column \"{0}\" does not exist")]
    UnknownColumn(String),
    /// 42701
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    /// 42P16
    #[error("{0}")]
    InvalidDefinition(String),
    /// A literal that is not a valid value of its type (22P02, 22007, 22008, ...).
    #[error("{message}")]
    InvalidValue { code: &'static str, message: String },
}

impl SqlError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlError::Syntax(_) => "42601",
            SqlError::Unsupported(_) => "0A000",
            SqlError::UnknownType(_) => "42704",
            SqlError::UnknownColumn(_) => "42703",
            SqlError::DuplicateColumn(_) => "42701",
            SqlError::InvalidDefinition(_) => "42P16",
            SqlError::InvalidValue { code, .. } => code,
        }
    }
}
