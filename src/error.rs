//! The server's error type and the one place errors become SQLSTATE codes.

use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};
use strom_catalog::CatalogError;
use strom_engine::EngineError;
use strom_sql::SqlError;

pub type Result<T, E = StromError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StromError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A user error with an explicit SQLSTATE.
    #[error("{message}")]
    User { code: &'static str, message: String },
}

impl StromError {
    pub fn user(code: &'static str, message: impl Into<String>) -> Self {
        StromError::User {
            code,
            message: message.into(),
        }
    }

    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        StromError::user("0A000", format!("{what} is not supported"))
    }

    /// SQLSTATE and message as the client should see them.
    pub fn code_and_message(&self) -> (&'static str, String) {
        match self {
            StromError::Sql(e) => (e.sqlstate(), e.to_string()),
            StromError::Catalog(e) => (catalog_code(e), e.to_string()),
            StromError::Engine(e) => engine_code(e),
            StromError::DataFusion(e) => datafusion_code(e),
            StromError::User { code, message } => (code, message.clone()),
        }
    }

    pub fn into_pgwire(self) -> PgWireError {
        PgWireError::UserError(Box::new(self.error_info()))
    }

    /// The ErrorResponse fields. A message may carry `\nDETAIL: ...` and then
    /// `\nHINT: ...` parts, which become the DETAIL and HINT fields.
    pub fn error_info(&self) -> ErrorInfo {
        let (code, message) = self.code_and_message();
        let (message, hint) = match message.split_once("\nHINT: ") {
            Some((m, h)) => (m.to_string(), Some(h.to_string())),
            None => (message, None),
        };
        let (message, detail) = match message.split_once("\nDETAIL: ") {
            Some((m, d)) => (m.to_string(), Some(d.to_string())),
            None => (message, None),
        };
        let mut info = ErrorInfo::new("ERROR".to_string(), code.to_string(), message);
        info.detail = detail;
        info.hint = hint;
        info
    }
}

fn catalog_code(e: &CatalogError) -> &'static str {
    match e {
        CatalogError::SchemaNotFound(_) => "3F000",
        CatalogError::SchemaExists(_) => "42P06",
        CatalogError::TableNotFound(_) => "42P01",
        CatalogError::TableExists(_) => "42P07",
        CatalogError::SchemaNotEmpty(_) => "2BP01",
        CatalogError::SchemaProtected(_) => "42501",
        CatalogError::Corrupt(_) => "XX001",
    }
}

fn engine_code(e: &EngineError) -> (&'static str, String) {
    match e {
        EngineError::Constraint { code, message } => (code, message.clone()),
        EngineError::Catalog(c) => (catalog_code(c), c.to_string()),
        EngineError::DataFusion(d) => datafusion_code(d),
        EngineError::Arrow(a) => arrow_code(&a.to_string()),
        EngineError::Unsupported(m) => ("0A000", m.clone()),
        EngineError::Storage(_) => ("58030", e.to_string()),
        EngineError::Corrupt { .. } => ("XX001", e.to_string()),
        EngineError::Internal(_) => ("XX000", e.to_string()),
        EngineError::RowsLost(m) => ("XX001", m.clone()),
    }
}

/// Classifies Arrow compute errors raised while evaluating user expressions.
fn arrow_code(msg: &str) -> (&'static str, String) {
    let lower = msg.to_lowercase();
    let code = if lower.contains("divide by zero") || lower.contains("division by zero") {
        return ("22012", "division by zero".into());
    } else if lower.contains("overflow")
        || lower.contains("can't cast value")
        || lower.contains("too large to store")
        || lower.contains("out of range")
    {
        "22003"
    } else if lower.contains("cannot cast") || lower.contains("parse") || lower.contains("invalid")
    {
        "22P02"
    } else {
        "XX000"
    };
    (code, msg.to_string())
}

fn datafusion_code(e: &DataFusionError) -> (&'static str, String) {
    let e = e.find_root();
    match e {
        DataFusionError::SQL(p, _) => ("42601", format!("syntax error: {p}")),
        DataFusionError::Plan(m) => (plan_code(m), m.clone()),
        DataFusionError::SchemaError(s, _) => {
            let m = s.to_string();
            let code = if m.contains("No field named") || m.contains("not found") {
                "42703"
            } else if m.contains("ambiguous") || m.contains("Ambiguous") {
                "42702"
            } else {
                "42P10"
            };
            (code, m)
        }
        DataFusionError::NotImplemented(m) => ("0A000", format!("not supported: {m}")),
        DataFusionError::ArrowError(a, _) => arrow_code(&a.to_string()),
        DataFusionError::Execution(m) => arrow_code(m),
        DataFusionError::External(inner) => {
            if let Some(engine) = inner.downcast_ref::<EngineError>() {
                engine_code(engine)
            } else if let Some(sql) = inner.downcast_ref::<SqlError>() {
                (sql.sqlstate(), sql.to_string())
            } else {
                ("XX000", inner.to_string())
            }
        }
        DataFusionError::Configuration(m) => ("22023", m.clone()),
        other => ("XX000", other.to_string()),
    }
}

fn plan_code(m: &str) -> &'static str {
    if m.contains("table") && m.contains("not found") {
        "42P01"
    } else if m.contains("Invalid function")
        || m.contains("No function matches")
        || m.contains("function") && m.contains("not found")
    {
        "42883"
    } else if m.contains("Cannot infer common")
        || m.contains("cannot be cast")
        || m.contains("Cannot coerce")
    {
        "42804"
    } else if m.contains("No field named") || m.contains("not found") {
        "42703"
    } else {
        "42601"
    }
}
