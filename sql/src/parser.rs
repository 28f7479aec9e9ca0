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

/// The hint `FOR SYSTEM_TIME AS OF PROCTIME()` becomes (`name WITH (strom_proctime)`, which
/// sqlparser reads as table hints in every dialect); see [`crate::windows::take_proctime`].
pub const PROCTIME_HINT: &str = "strom_proctime";

fn parse_all(sql: &str) -> std::result::Result<Vec<Statement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let tokens = sqlparser::tokenizer::Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| ParserError::TokenizerError(e.to_string()))?;
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(proctime_as_hint(tokens));
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
        } else if starts_create_materialized_view(&parser) {
            stmts.push(parse_create_materialized_view(&mut parser)?);
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

/// Rewrites `FOR SYSTEM_TIME AS OF PROCTIME()` (a processing-time temporal join, Flink's
/// and RisingWave's syntax, which sqlparser reads only in other dialects) into the table
/// hint `WITH (strom_proctime)`.
fn proctime_as_hint(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Vec<sqlparser::tokenizer::TokenWithSpan> {
    use sqlparser::tokenizer::TokenWithSpan;
    let words = ["FOR", "SYSTEM_TIME", "AS", "OF", "PROCTIME"];
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        // The next non-whitespace tokens from i.
        let mut j = i;
        let mut matched = Vec::new();
        while matched.len() < words.len() + 2 && j < tokens.len() {
            if !matches!(tokens[j].token, Token::Whitespace(_)) {
                matched.push(j);
            }
            j += 1;
        }
        let is_hint = matched.len() == words.len() + 2
            && words.iter().enumerate().all(|(k, w)| {
                matches!(&tokens[matched[k]].token, Token::Word(x) if x.value.eq_ignore_ascii_case(w))
            })
            && tokens[matched[5]].token == Token::LParen
            && tokens[matched[6]].token == Token::RParen;
        if is_hint {
            let span = tokens[matched[0]].span;
            let word = |w: &str| TokenWithSpan {
                token: Token::make_word(w, None),
                span,
            };
            // sqlparser reads hints after the alias: `t AS m WITH (...)`.
            let next_word = |from: usize| {
                (from..tokens.len()).find(|&k| !matches!(tokens[k].token, Token::Whitespace(_)))
            };
            let mut after = matched[6] + 1;
            if let Some(k) = next_word(after) {
                match &tokens[k].token {
                    Token::Word(w) if w.keyword == Keyword::AS => {
                        if let Some(k2) = next_word(k + 1) {
                            out.push(tokens[k].clone());
                            out.push(tokens[k2].clone());
                            after = k2 + 1;
                        }
                    }
                    Token::Word(w)
                        if w.keyword == Keyword::NoKeyword || w.quote_style.is_some() =>
                    {
                        out.push(tokens[k].clone());
                        after = k + 1;
                    }
                    _ => {}
                }
            }
            out.push(word("WITH"));
            out.push(TokenWithSpan {
                token: Token::LParen,
                span,
            });
            out.push(word(PROCTIME_HINT));
            out.push(TokenWithSpan {
                token: Token::RParen,
                span,
            });
            i = after;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    out
}

fn starts_create_materialized_view(p: &Parser) -> bool {
    let word = |n: usize| match &p.peek_nth_token_ref(n).token {
        Token::Word(w) => Some(w.keyword),
        _ => None,
    };
    let at = usize::from(word(0) == Some(Keyword::EXPLAIN));
    word(at) == Some(Keyword::CREATE)
        && word(at + 1) == Some(Keyword::MATERIALIZED)
        && word(at + 2) == Some(Keyword::VIEW)
}

/// `CREATE MATERIALIZED VIEW ... [EMIT ON WINDOW CLOSE]` (RisingWave's syntax, unknown to
/// sqlparser): the clause is cut off before sqlparser parses the rest, and recorded as the
/// view option [`crate::connector::EMIT_ON_WINDOW_CLOSE`].
fn parse_create_materialized_view(p: &mut Parser) -> std::result::Result<Statement, ParserError> {
    let mut tokens = crate::connector::statement_tokens(p);
    let n = tokens.len();
    let is_word = |t: &sqlparser::tokenizer::TokenWithSpan, k: &str| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case(k));
    let emit = n >= 4
        && ["EMIT", "ON", "WINDOW", "CLOSE"]
            .iter()
            .zip(&tokens[n - 4..])
            .all(|(k, t)| is_word(t, k));
    if !emit {
        return p.parse_statement();
    }
    tokens.truncate(n - 4);
    let dialect = PostgreSqlDialect {};
    let mut sub = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut stmt = sub.parse_statement()?;
    if sub.peek_token_ref().token != Token::EOF {
        return sub.expected("EMIT ON WINDOW CLOSE at the end", sub.peek_token());
    }
    for _ in 0..n {
        p.next_token();
    }
    let view = match &mut stmt {
        Statement::Explain { statement, .. } => statement.as_mut(),
        other => other,
    };
    if let Statement::CreateView(cv) = view {
        let option = sqlparser::ast::SqlOption::KeyValue {
            key: sqlparser::ast::Ident::with_quote('"', crate::connector::EMIT_ON_WINDOW_CLOSE),
            value: sqlparser::ast::Expr::Value(sqlparser::ast::ValueWithSpan::from(
                sqlparser::ast::Value::SingleQuotedString("true".into()),
            )),
        };
        match &mut cv.options {
            sqlparser::ast::CreateTableOptions::With(o) => o.push(option),
            other => *other = sqlparser::ast::CreateTableOptions::With(vec![option]),
        }
    }
    Ok(stmt)
}

/// True when a `CREATE MATERIALIZED VIEW` ends with `EMIT ON WINDOW CLOSE`.
pub fn emits_on_window_close(cv: &sqlparser::ast::CreateView) -> bool {
    matches!(&cv.options, sqlparser::ast::CreateTableOptions::With(o) if o.iter().any(|o| matches!(
        o,
        sqlparser::ast::SqlOption::KeyValue { key, .. } if key.value == crate::connector::EMIT_ON_WINDOW_CLOSE
    )))
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
    fn emit_on_window_close_ends_a_materialized_view() {
        let stmts = parse(
            "CREATE MATERIALIZED VIEW v AS SELECT a FROM (SELECT 1 AS a) x GROUP BY a EMIT ON WINDOW CLOSE; \
             CREATE MATERIALIZED VIEW w AS SELECT 1",
        )
        .unwrap();
        let eowc: Vec<bool> = stmts
            .iter()
            .map(|s| match s {
                Statement::CreateView(cv) => emits_on_window_close(cv),
                _ => panic!("{s}"),
            })
            .collect();
        assert_eq!(eowc, vec![true, false]);
        assert!(parse("CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT ON WINDOW").is_err());
    }

    #[test]
    fn flush_is_a_statement_of_its_own() {
        let stmts = parse("INSERT INTO t VALUES (1); flush; SELECT 1").unwrap();
        assert_eq!(stmts.len(), 3);
        assert!(is_flush(&stmts[1]));
        assert!(parse("FLUSH TABLES").is_err());
    }
}
