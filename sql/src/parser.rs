//! Parsing SQL text with sqlparser's PostgreSQL dialect.
//!
//! One addition: `FLUSH` (no arguments), which PostgreSQL does not have and sqlparser only
//! knows for MySQL. It parses to `Statement::Flush` with [`FlushType::Tables`]; see
//! [`is_flush`]. And RisingWave's connector DDL (`CREATE SOURCE`, `CREATE TABLE ... WITH
//! (connector = ...) FORMAT ... ENCODE ...`), see [`crate::connector`].

use sqlparser::ast::{FlushType, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use crate::error::{Result, SqlError};

/// Parses one or more `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    parse_all(sql).map_err(|e| SqlError::Syntax(strip_parser_prefix(e.to_string())))
}

/// True for the statement `FLUSH` parses to.
pub fn is_flush(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::Flush {
            object_type: FlushType::Tables,
            tables,
            ..
        } if tables.is_empty()
    )
}

fn flush() -> Statement {
    Statement::Flush {
        object_type: FlushType::Tables,
        location: None,
        channel: None,
        read_lock: false,
        export: false,
        tables: vec![],
    }
}

fn parse_all(sql: &str) -> std::result::Result<Vec<Statement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut stmts = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        if parser.peek_token_ref().token == Token::EOF {
            break;
        }
        if expecting_delimiter {
            return parser.expected("end of statement", parser.peek_token());
        }
        let is_flush = matches!(
            &parser.peek_token_ref().token,
            Token::Word(w) if w.keyword == Keyword::FLUSH
        ) && matches!(
            parser.peek_nth_token(1).token,
            Token::EOF | Token::SemiColon
        );
        if is_flush {
            parser.next_token();
            stmts.push(flush());
        } else if crate::connector::starts_alter_source(&parser) {
            stmts.push(crate::connector::parse_alter_source(&mut parser)?);
        } else if crate::connector::starts_create_sink(&parser) {
            stmts.push(crate::connector::parse_create_sink(&mut parser)?);
        } else if crate::connector::starts_drop_source(&parser) {
            stmts.push(crate::connector::parse_drop_source(&mut parser)?);
        } else if crate::connector::starts_create_source(&parser)
            || crate::connector::starts_create_table(&parser)
        {
            match crate::connector::parse_create_connector(&mut parser)? {
                Some(stmt) => stmts.push(stmt),
                None => stmts.push(parser.parse_statement()?),
            }
        } else {
            stmts.push(parser.parse_statement()?);
        }
        expecting_delimiter = true;
    }
    Ok(stmts)
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
        assert!(parse("SELECT 1 SELECT 2").is_err());
    }

    #[test]
    fn flush_is_a_statement_of_its_own() {
        let stmts = parse("INSERT INTO t VALUES (1); flush; SELECT 1").unwrap();
        assert_eq!(stmts.len(), 3);
        assert!(is_flush(&stmts[1]));
        assert!(parse("FLUSH TABLES").is_err());
    }
}
