//! Parsing SQL text with sqlparser's PostgreSQL dialect.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::error::{Result, SqlError};

/// Parses one or more `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| SqlError::Syntax(strip_parser_prefix(e.to_string())))
}

fn strip_parser_prefix(msg: String) -> String {
    msg.strip_prefix("sql parser error: ")
        .map(str::to_string)
        .unwrap_or(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_statements_and_reports_syntax_errors() {
        assert_eq!(parse("SELECT 1; SELECT 2;").unwrap().len(), 2);
        let err = parse("SELEC 1").unwrap_err();
        assert_eq!(err.sqlstate(), "42601");
        assert!(err.to_string().contains("SELEC"), "{err}");
    }
}
