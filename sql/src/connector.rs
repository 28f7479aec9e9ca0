//! `CREATE SOURCE` and `CREATE TABLE ... WITH (connector = ...)` in RisingWave's syntax:
//!
//! ```sql
//! CREATE SOURCE | TABLE [IF NOT EXISTS] name (columns and constraints)
//!   [INCLUDE key | partition | offset | timestamp | topic | header ['name'] [AS alias]] ...
//!   WITH (connector = 'kafka', topic = '...', properties.bootstrap.server = '...', ...)
//!   FORMAT PLAIN | UPSERT ENCODE JSON | CSV [(delimiter = ',', without_header = 'true')]
//! ```
//!
//! sqlparser knows none of `CREATE SOURCE`, `INCLUDE`, dotted option names or `FORMAT ...
//! ENCODE`, so [`parse_create_connector`] reads them with sqlparser's building blocks
//! (column definitions, names, literals) and returns a `CREATE TABLE` statement whose
//! `WITH` options carry everything; option names starting with `strom.` are ours
//! ([`KIND`], [`FORMAT`], [`ENCODE`], [`ENCODE_OPTION`], [`INCLUDE`]). [`connector_spec`]
//! reads them back when the table is bound.

use std::collections::BTreeMap;

use sqlparser::ast::helpers::stmt_create_table::CreateTableBuilder;
use sqlparser::ast::{
    CreateTable, CreateTableOptions, Expr, Ident, SqlOption, Statement, Value, ValueWithSpan,
};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use crate::error::{Result, SqlError};

/// `source` or `table`.
pub const KIND: &str = "strom.kind";
pub const FORMAT: &str = "strom.format";
pub const ENCODE: &str = "strom.encode";
/// Prefix of `ENCODE JSON (k = v)` options.
pub const ENCODE_OPTION: &str = "strom.encode.";
/// Prefix of `INCLUDE` clauses, numbered in order: value `kind|argument|alias`.
pub const INCLUDE: &str = "strom.include.";
/// `WATERMARK FOR column AS expr`: value `column|expr`, with [`TTL_MARK`] appended for
/// `... WITH TTL`.
pub const WATERMARK: &str = "strom.watermark";
/// Appended to a watermark's expression text when the clause ends `WITH TTL`.
pub const TTL_MARK: &str = " |WITH TTL";
/// `CREATE MATERIALIZED VIEW ... EMIT ON WINDOW CLOSE` (see [`crate::parser`]).
pub const EMIT_ON_WINDOW_CLOSE: &str = "strom.emit_on_window_close";

/// What `CREATE SOURCE`/`CREATE TABLE ... WITH (connector = ...)` declared.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectorSpec {
    /// `CREATE SOURCE`: rows feed views and are not stored.
    pub is_source: bool,
    /// `CREATE SINK`: a view's changes go out.
    pub is_sink: bool,
    /// The `WITH` options, names lower-cased (`connector`, `topic`, `properties.*`, ...).
    pub options: BTreeMap<String, String>,
    /// `PLAIN`, `UPSERT`, ... (upper case); empty when no `FORMAT` clause was given.
    pub format: String,
    /// `JSON`, `CSV`, ... (upper case).
    pub encode: String,
    pub encode_options: BTreeMap<String, String>,
    pub includes: Vec<IncludeSpec>,
}

/// `INCLUDE kind ['argument'] [AS alias]`.
#[derive(Debug, Clone, PartialEq)]
pub struct IncludeSpec {
    pub kind: String,
    pub argument: Option<String>,
    pub alias: String,
}

fn word(p: &Parser, nth: usize) -> Option<String> {
    match &p.peek_nth_token_ref(nth).token {
        Token::Word(w) => Some(w.value.to_uppercase()),
        _ => None,
    }
}

/// True when the next tokens start a statement [`parse_create_connector`] handles:
/// `CREATE SOURCE`, or a `CREATE TABLE` (checked by trying it).
pub fn starts_create_source(p: &Parser) -> bool {
    word(p, 0).as_deref() == Some("CREATE") && word(p, 1).as_deref() == Some("SOURCE")
}

pub fn starts_drop_source(p: &Parser) -> bool {
    word(p, 0).as_deref() == Some("DROP")
        && matches!(word(p, 1).as_deref(), Some("SOURCE") | Some("SINK"))
}

pub fn starts_alter_source(p: &Parser) -> bool {
    word(p, 0).as_deref() == Some("ALTER") && word(p, 1).as_deref() == Some("SOURCE")
}

/// `ALTER SOURCE name SET option = value [, ...]` (also `SET (option = value, ...)`), as an
/// `ALTER TABLE name SET TBLPROPERTIES (...)`; [`alter_source_options`] reads it back.
pub fn parse_alter_source(p: &mut Parser) -> std::result::Result<Statement, ParserError> {
    p.expect_keyword(Keyword::ALTER)?;
    p.next_token(); // SOURCE
    let name = p.parse_object_name(false)?;
    p.expect_keyword(Keyword::SET)?;
    let options = if p.peek_token_ref().token == Token::LParen {
        parse_dotted_options(p)?
    } else {
        // `SET a = 1, b = 2` without parentheses: parse as if they were there.
        let mut out = Vec::new();
        loop {
            let mut key = p.parse_identifier()?.value.to_lowercase();
            while p.consume_token(&Token::Period) {
                key.push('.');
                key.push_str(&p.parse_identifier()?.value.to_lowercase());
            }
            if !p.consume_token(&Token::Eq) {
                p.expect_keyword(Keyword::TO)?;
            }
            let tok = p.next_token();
            let value = match tok.token {
                Token::SingleQuotedString(s) => s,
                Token::Number(n, _) => n,
                Token::Word(w) => w.value,
                _ => return p.expected("an option value", tok),
            };
            out.push((key, value));
            if !p.consume_token(&Token::Comma) {
                break;
            }
        }
        out
    };
    let mut with = to_sql_options(options);
    with.extend(to_sql_options(vec![(KIND.into(), "alter_source".into())]));
    Ok(Statement::AlterTable(sqlparser::ast::AlterTable {
        name,
        if_exists: false,
        only: false,
        operations: vec![sqlparser::ast::AlterTableOperation::SetTblProperties {
            table_properties: with,
        }],
        location: None,
        on_cluster: None,
        table_type: None,
        end_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
    }))
}

/// The options of an `ALTER SOURCE ... SET` made by [`parse_alter_source`].
pub fn alter_source_options(
    stmt: &Statement,
) -> Option<(&sqlparser::ast::ObjectName, BTreeMap<String, String>)> {
    let Statement::AlterTable(at) = stmt else {
        return None;
    };
    let [sqlparser::ast::AlterTableOperation::SetTblProperties { table_properties }] =
        at.operations.as_slice()
    else {
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ours = false;
    for o in table_properties {
        if let SqlOption::KeyValue { key, value } = o {
            let v = match value {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    other => other.to_string(),
                },
                other => other.to_string(),
            };
            if key.value == KIND {
                ours = v == "alter_source";
            } else {
                out.insert(key.value.clone(), v);
            }
        }
    }
    ours.then_some((&at.name, out))
}

pub fn starts_create_sink(p: &Parser) -> bool {
    word(p, 0).as_deref() == Some("CREATE") && word(p, 1).as_deref() == Some("SINK")
}

/// A sink's query: the tokens up to the statement's last top-level `WITH (`. Left to
/// itself, sqlparser reads `FROM t WITH (...)` as MSSQL table hints, which would swallow
/// the sink's options after a query ending in a table name.
///
/// Also says whether the query ends with `EMIT ON WINDOW CLOSE` (consumed here, as in
/// `CREATE SINK ... AS query EMIT ON WINDOW CLOSE WITH (...)`).
fn parse_query_before_with(
    p: &mut Parser,
) -> std::result::Result<(Box<sqlparser::ast::Query>, bool), ParserError> {
    let tokens = statement_tokens(p);
    let mut depth = 0i32;
    let mut cut = None;
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w)
                if depth == 0
                    && w.keyword == Keyword::WITH
                    && tokens.get(i + 1).is_some_and(|n| n.token == Token::LParen) =>
            {
                cut = Some(i)
            }
            _ => {}
        }
    }
    let Some(n) = cut else {
        // No options: let the caller say so.
        return Ok((p.parse_query()?, false));
    };
    let is_word = |t: &sqlparser::tokenizer::TokenWithSpan, k: &str| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case(k));
    let emit = n >= 4
        && ["EMIT", "ON", "WINDOW", "CLOSE"]
            .iter()
            .zip(&tokens[n - 4..n])
            .all(|(k, t)| is_word(t, k));
    let end = if emit { n - 4 } else { n };
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let mut sub = Parser::new(&dialect).with_tokens_with_locations(tokens[..end].to_vec());
    let query = sub.parse_query()?;
    if sub.peek_token_ref().token != Token::EOF {
        return sub.expected("the end of the sink's query", sub.peek_token());
    }
    for _ in 0..n {
        p.next_token();
    }
    Ok((query, emit))
}

/// The tokens of the statement at the parser's position, up to a `;` outside parentheses
/// or the end, read in one pass (peeking the n-th token rescans from the position, which
/// is quadratic over a long statement); the parser is left where it was.
pub(crate) fn statement_tokens(p: &mut Parser) -> Vec<sqlparser::tokenizer::TokenWithSpan> {
    let mut tokens = Vec::new();
    let mut depth = 0i32;
    let mut consumed = 0;
    loop {
        let t = p.next_token();
        consumed += 1;
        match &t.token {
            Token::EOF => break,
            Token::SemiColon if depth == 0 => break,
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        tokens.push(t);
    }
    for _ in 0..consumed {
        p.prev_token();
    }
    tokens
}

/// `CREATE SINK [IF NOT EXISTS] name FROM relation | AS query [EMIT ON WINDOW CLOSE]
/// WITH (...) FORMAT f ENCODE e [(...)]`, as a `CREATE MATERIALIZED VIEW` (of
/// `SELECT * FROM relation` or the query) whose options carry the sink declaration (read
/// back by [`connector_spec_of_view`]) and, like a view's, `EMIT ON WINDOW CLOSE`.
pub fn parse_create_sink(p: &mut Parser) -> std::result::Result<Statement, ParserError> {
    p.expect_keyword(Keyword::CREATE)?;
    p.next_token(); // SINK
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false)?;
    let (query, emit_on_window_close) = if p.parse_keyword(Keyword::FROM) {
        let from = p.parse_object_name(false)?;
        let sql = format!("SELECT * FROM {from}");
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        (
            Parser::new(&dialect).try_with_sql(&sql)?.parse_query()?,
            false,
        )
    } else if p.parse_keyword(Keyword::AS) {
        parse_query_before_with(p)?
    } else {
        return p.expected("FROM relation or AS query", p.peek_token());
    };
    let mut options: Vec<(String, String)> = Vec::new();
    if !p.parse_keyword(Keyword::WITH) {
        return p.expected("WITH (connector = ...)", p.peek_token());
    }
    options.extend(parse_dotted_options(p)?);
    if word(p, 0).as_deref() == Some("FORMAT") {
        p.next_token();
        options.push((FORMAT.into(), p.parse_identifier()?.value.to_uppercase()));
        if word(p, 0).as_deref() != Some("ENCODE") {
            return p.expected("ENCODE after FORMAT", p.peek_token());
        }
        p.next_token();
        options.push((ENCODE.into(), p.parse_identifier()?.value.to_uppercase()));
        if p.peek_token_ref().token == Token::LParen {
            for (k, v) in parse_dotted_options(p)? {
                options.push((format!("{ENCODE_OPTION}{k}"), v));
            }
        }
    }
    options.push((KIND.into(), "sink".into()));
    if emit_on_window_close {
        // Read by `parser::emits_on_window_close`, as for a materialized view.
        options.push((EMIT_ON_WINDOW_CLOSE.into(), "true".into()));
    }
    Ok(Statement::CreateView(sqlparser::ast::CreateView {
        or_alter: false,
        or_replace: false,
        materialized: true,
        secure: false,
        name,
        name_before_not_exists: false,
        columns: vec![],
        query,
        options: CreateTableOptions::With(to_sql_options(options)),
        cluster_by: vec![],
        comment: None,
        with_no_schema_binding: false,
        if_not_exists,
        temporary: false,
        copy_grants: false,
        to: None,
        params: None,
    }))
}

fn to_sql_options(options: Vec<(String, String)>) -> Vec<SqlOption> {
    options
        .into_iter()
        .map(|(k, v)| SqlOption::KeyValue {
            key: Ident::with_quote('"', k),
            value: Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(v))),
        })
        .collect()
}

/// `DROP SOURCE | SINK [IF EXISTS] names [CASCADE | RESTRICT]`. sqlparser has no object
/// types for them, so a source is dropped as `ObjectType::Stream` and a sink as
/// `ObjectType::Stage` (neither exists in PostgreSQL's dialect otherwise); the server maps
/// them back.
pub fn parse_drop_source(p: &mut Parser) -> std::result::Result<Statement, ParserError> {
    p.expect_keyword(Keyword::DROP)?;
    let sink = word(p, 0).as_deref() == Some("SINK");
    p.next_token(); // SOURCE | SINK
    let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let names = p.parse_comma_separated(|p| p.parse_object_name(false))?;
    let cascade = p.parse_keyword(Keyword::CASCADE);
    if !cascade {
        let _ = p.parse_keyword(Keyword::RESTRICT);
    }
    Ok(Statement::Drop {
        object_type: if sink {
            sqlparser::ast::ObjectType::Stage
        } else {
            sqlparser::ast::ObjectType::Stream
        },
        if_exists,
        names,
        cascade,
        restrict: false,
        purge: false,
        temporary: false,
        table: None,
    })
}

pub fn starts_create_table(p: &Parser) -> bool {
    word(p, 0).as_deref() == Some("CREATE") && word(p, 1).as_deref() == Some("TABLE")
}

/// Parses a connector `CREATE SOURCE`/`CREATE TABLE`. For a `CREATE TABLE` without
/// `INCLUDE`, `WITH (connector = ...)` or `FORMAT`, returns `Ok(None)` having consumed
/// nothing, so the caller parses it as an ordinary table.
pub fn parse_create_connector(
    p: &mut Parser,
) -> std::result::Result<Option<Statement>, ParserError> {
    p.expect_keyword(Keyword::CREATE)?;
    // The CREATE token's index: rewinding stops on it (prev_token skips whitespace).
    let start = p.index() - 1;
    let is_source = word(p, 0).as_deref() == Some("SOURCE");
    p.next_token(); // SOURCE | TABLE
    let head = (|| {
        let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = p.parse_object_name(false)?;
        let (columns, constraints, watermark) = parse_columns_with_watermark(p)?;
        Ok::<_, ParserError>((if_not_exists, name, columns, constraints, watermark))
    })();
    // A table whose head does not parse here is left to sqlparser, which reports it.
    let (if_not_exists, name, columns, constraints, watermark) = match head {
        Ok(h) => h,
        Err(e) if is_source => return Err(e),
        Err(e) => {
            while p.index() > start {
                p.prev_token();
            }
            if mentions_watermark(p) {
                return Err(e);
            }
            return Ok(None);
        }
    };
    let mut options: Vec<(String, String)> = Vec::new();
    if let Some((column, expr)) = &watermark {
        options.push((WATERMARK.into(), format!("{column}|{expr}")));
    }
    let mut includes = 0;
    while p.parse_keyword(Keyword::INCLUDE) {
        let kind = p.parse_identifier()?.value.to_lowercase();
        let argument = match &p.peek_token_ref().token {
            Token::SingleQuotedString(_) => Some(p.parse_literal_string()?),
            _ => None,
        };
        let alias = if p.parse_keyword(Keyword::AS) {
            crate::ddl::ident_name(&p.parse_identifier()?)
        } else {
            String::new()
        };
        options.push((
            format!("{INCLUDE}{includes}"),
            format!("{kind}|{}|{alias}", argument.unwrap_or_default()),
        ));
        includes += 1;
    }
    let mut connector = false;
    if p.parse_keyword(Keyword::WITH) {
        for (k, v) in parse_dotted_options(p)? {
            connector |= k == "connector";
            options.push((k, v));
        }
    }
    let mut format = false;
    if word(p, 0).as_deref() == Some("FORMAT") {
        p.next_token();
        format = true;
        let f = p.parse_identifier()?.value.to_uppercase();
        options.push((FORMAT.into(), f));
        if word(p, 0).as_deref() != Some("ENCODE") {
            return p.expected("ENCODE after FORMAT", p.peek_token());
        }
        p.next_token();
        let e = p.parse_identifier()?.value.to_uppercase();
        options.push((ENCODE.into(), e));
        if p.peek_token_ref().token == Token::LParen {
            for (k, v) in parse_dotted_options(p)? {
                options.push((format!("{ENCODE_OPTION}{k}"), v));
            }
        }
    }
    // A plain table may still have options (`late_data.table`).
    let has_options = options.iter().any(|(k, _)| k != WATERMARK);
    if !is_source && includes == 0 && !connector && !format && watermark.is_none() && !has_options {
        while p.index() > start {
            p.prev_token();
        }
        return Ok(None);
    }
    if is_source || includes > 0 || connector || format || has_options {
        options.push((
            KIND.into(),
            if is_source { "source" } else { "table" }.into(),
        ));
    }
    let with = to_sql_options(options);
    let ct = CreateTableBuilder::new(name)
        .if_not_exists(if_not_exists)
        .columns(columns)
        .constraints(constraints)
        .table_options(CreateTableOptions::With(with))
        .build();
    Ok(Some(Statement::CreateTable(ct)))
}

/// Whether the statement at the parser's position has `WATERMARK FOR` in it (its errors
/// are ours to report: sqlparser would only say it does not know the clause).
fn mentions_watermark(p: &Parser) -> bool {
    let mut n = 0;
    loop {
        match &p.peek_nth_token_ref(n).token {
            Token::EOF | Token::SemiColon => return false,
            Token::Word(w) if w.value.eq_ignore_ascii_case("WATERMARK") => {
                if matches!(&p.peek_nth_token_ref(n + 1).token, Token::Word(f) if f.keyword == Keyword::FOR)
                {
                    return true;
                }
                n += 1;
            }
            _ => n += 1,
        }
    }
}

/// A table's column list, which may hold one `WATERMARK FOR column AS expr` element
/// (RisingWave's syntax; sqlparser does not know it): the columns, the constraints and the
/// watermark's column name and expression text.
#[allow(clippy::type_complexity)]
fn parse_columns_with_watermark(
    p: &mut Parser,
) -> std::result::Result<
    (
        Vec<sqlparser::ast::ColumnDef>,
        Vec<sqlparser::ast::TableConstraint>,
        Option<(String, String)>,
    ),
    ParserError,
> {
    if p.peek_token_ref().token != Token::LParen {
        let (c, k) = p.parse_columns()?;
        return Ok((c, k, None));
    }
    // The list's tokens, and where a WATERMARK element starts and ends.
    let mut tokens = Vec::new();
    let mut depth = 0i32;
    let mut element_start = true;
    let mut watermark: Option<(usize, usize)> = None;
    loop {
        let t = p.peek_nth_token(tokens.len());
        match &t.token {
            Token::EOF => break,
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        let is_watermark = element_start
            && depth == 1
            && matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case("WATERMARK"))
            && matches!(&p.peek_nth_token_ref(tokens.len() + 1).token, Token::Word(w) if w.keyword == Keyword::FOR);
        if is_watermark {
            if watermark.is_some() {
                return p.expected("one WATERMARK clause", t);
            }
            watermark = Some((tokens.len(), usize::MAX));
        }
        let ends_element = depth == 0 || (depth == 1 && t.token == Token::Comma);
        if ends_element {
            if let Some((_, end @ usize::MAX)) = &mut watermark {
                *end = tokens.len();
            }
        }
        element_start = depth == 1 && matches!(t.token, Token::Comma | Token::LParen);
        tokens.push(t);
        if depth == 0 {
            break;
        }
    }
    let Some((wm_start, wm_end)) = watermark else {
        let (c, k) = p.parse_columns()?;
        return Ok((c, k, None));
    };
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    // The watermark element: WATERMARK FOR column AS expr.
    let mut wp =
        Parser::new(&dialect).with_tokens_with_locations(tokens[wm_start..wm_end].to_vec());
    wp.next_token(); // WATERMARK
    wp.expect_keyword(Keyword::FOR)?;
    let column = crate::ddl::ident_name(&wp.parse_identifier()?);
    wp.expect_keyword(Keyword::AS)?;
    let expr = wp.parse_expr()?;
    let mut expr_text = expr.to_string();
    // `WITH TTL`: stored rows behind the watermark expire (see `WatermarkDef::ttl`).
    if wp.parse_keyword(Keyword::WITH) {
        match &wp.next_token().token {
            Token::Word(w) if w.value.eq_ignore_ascii_case("TTL") => {
                expr_text.push_str(TTL_MARK);
            }
            _ => return wp.expected("TTL after WITH in the WATERMARK clause", wp.peek_token()),
        }
    }
    if wp.peek_token_ref().token != Token::EOF {
        return wp.expected("the end of the WATERMARK clause", wp.peek_token());
    }
    // The list without it (and without the comma before or after it).
    let n = tokens.len();
    let mut rest: Vec<_> = tokens[..wm_start].to_vec();
    let mut tail = &tokens[wm_end..];
    if rest.last().is_some_and(|t| t.token == Token::Comma) {
        rest.pop();
    } else if tail.first().is_some_and(|t| t.token == Token::Comma) {
        tail = &tail[1..];
    }
    rest.extend_from_slice(tail);
    let mut cp = Parser::new(&dialect).with_tokens_with_locations(rest);
    let (columns, constraints) = cp.parse_columns()?;
    for _ in 0..n {
        p.next_token();
    }
    Ok((columns, constraints, Some((column, expr_text))))
}

/// The `WATERMARK FOR column AS expr` of a `CREATE TABLE`/`CREATE SOURCE` made by
/// [`parse_create_connector`]: the column name and the expression's SQL text.
pub fn watermark_spec(ct: &CreateTable) -> Option<(String, String)> {
    let CreateTableOptions::With(options) = &ct.table_options else {
        return None;
    };
    options.iter().find_map(|o| match o {
        SqlOption::KeyValue {
            key,
            value: Expr::Value(v),
        } if key.value == WATERMARK => match &v.value {
            Value::SingleQuotedString(s) => s
                .split_once('|')
                .map(|(c, e)| (c.to_string(), e.to_string())),
            _ => None,
        },
        _ => None,
    })
}

/// `( name[.name...] = value, ... )`; values are string, number or word literals.
fn parse_dotted_options(p: &mut Parser) -> std::result::Result<Vec<(String, String)>, ParserError> {
    p.expect_token(&Token::LParen)?;
    let mut out = Vec::new();
    if p.consume_token(&Token::RParen) {
        return Ok(out);
    }
    loop {
        // Dotted, and words may be joined by hyphens (`lookup.partial-cache.max-rows`).
        let mut key = p.parse_identifier()?.value.to_lowercase();
        loop {
            if p.consume_token(&Token::Period) {
                key.push('.');
            } else if p.consume_token(&Token::Minus) {
                key.push('-');
            } else {
                break;
            }
            key.push_str(&p.parse_identifier()?.value.to_lowercase());
        }
        p.expect_token(&Token::Eq)?;
        let tok = p.next_token();
        let value = match tok.token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            Token::Minus => {
                let next = p.next_token();
                match next.token {
                    Token::Number(n, _) => format!("-{n}"),
                    _ => return p.expected("a number", next),
                }
            }
            _ => return p.expected("an option value", tok),
        };
        out.push((key, value));
        if p.consume_token(&Token::RParen) {
            return Ok(out);
        }
        p.expect_token(&Token::Comma)?;
    }
}

/// The connector declaration of a `CREATE TABLE` produced by [`parse_create_connector`],
/// or `None` for an ordinary table. Ordinary tables with `WITH` options are rejected.
pub fn connector_spec(ct: &CreateTable) -> Result<Option<ConnectorSpec>> {
    spec_of_options(&ct.table_options)
}

/// The sink declaration of a `CREATE MATERIALIZED VIEW` made by [`parse_create_sink`].
pub fn connector_spec_of_view(cv: &sqlparser::ast::CreateView) -> Result<Option<ConnectorSpec>> {
    spec_of_options(&cv.options)
}

fn spec_of_options(table_options: &CreateTableOptions) -> Result<Option<ConnectorSpec>> {
    let options = match table_options {
        CreateTableOptions::None => return Ok(None),
        CreateTableOptions::With(o) => o,
        other => {
            return Err(SqlError::Unsupported(format!("table options {other}")));
        }
    };
    let mut spec = ConnectorSpec::default();
    let mut kind = None;
    let mut any = false;
    for o in options {
        let SqlOption::KeyValue { key, value } = o else {
            return Err(SqlError::Unsupported(format!("table option {o}")));
        };
        let value = match value {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        };
        let k = key.value.to_lowercase();
        if k == WATERMARK || k == EMIT_ON_WINDOW_CLOSE {
            continue;
        }
        any = true;
        if k == KIND {
            kind = Some(value);
        } else if k == FORMAT {
            spec.format = value;
        } else if k == ENCODE {
            spec.encode = value;
        } else if let Some(e) = k.strip_prefix(ENCODE_OPTION) {
            spec.encode_options.insert(e.to_string(), value);
        } else if k.starts_with(INCLUDE) {
            let mut parts = value.splitn(3, '|');
            let (kind, arg, alias) = (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            );
            spec.includes.push(IncludeSpec {
                kind,
                argument: (!arg.is_empty()).then_some(arg),
                alias,
            });
        } else {
            spec.options.insert(k, value);
        }
    }
    if !any {
        return Ok(None); // only a WATERMARK clause
    }
    match kind.as_deref() {
        Some("source") => spec.is_source = true,
        Some("sink") => spec.is_sink = true,
        Some(_) => {}
        None => {
            return Err(SqlError::Unsupported(
                "WITH options on a table without a connector".into(),
            ))
        }
    }
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn spec(sql: &str) -> ConnectorSpec {
        match parse(sql).unwrap().remove(0) {
            Statement::CreateTable(ct) => connector_spec(&ct).unwrap().unwrap(),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sources_and_connector_tables_parse() {
        let s = spec(
            "CREATE SOURCE IF NOT EXISTS meter_readings (meter_id VARCHAR, kw DOUBLE PRECISION) \
             INCLUDE partition AS kafka_partition INCLUDE offset INCLUDE header 'trace' AS tr \
             WITH (connector = 'kafka', topic = 'TMR_CJ_YXNDL_03', \
                   properties.bootstrap.server = '127.0.0.1:9092', scan.startup.mode = 'earliest', \
                   source_rate_limit = 1000) \
             FORMAT PLAIN ENCODE CSV (delimiter = '|', without_header = true)",
        );
        assert!(s.is_source);
        assert_eq!(s.options["connector"], "kafka");
        assert_eq!(s.options["properties.bootstrap.server"], "127.0.0.1:9092");
        assert_eq!(s.options["source_rate_limit"], "1000");
        assert_eq!((s.format.as_str(), s.encode.as_str()), ("PLAIN", "CSV"));
        assert_eq!(s.encode_options["delimiter"], "|");
        assert_eq!(s.encode_options["without_header"], "true");
        assert_eq!(
            s.includes,
            vec![
                IncludeSpec {
                    kind: "partition".into(),
                    argument: None,
                    alias: "kafka_partition".into()
                },
                IncludeSpec {
                    kind: "offset".into(),
                    argument: None,
                    alias: "".into()
                },
                IncludeSpec {
                    kind: "header".into(),
                    argument: Some("trace".into()),
                    alias: "tr".into()
                },
            ]
        );
        let t = spec(
            "CREATE TABLE meters (meter_id VARCHAR PRIMARY KEY, ratio FLOAT8) INCLUDE key AS k \
             WITH (connector = 'kafka', topic = 'meter_ledger') FORMAT UPSERT ENCODE JSON; SELECT 1",
        );
        assert!(!t.is_source);
        assert_eq!(t.format, "UPSERT");
        // ordinary tables still parse as before, and statements after them too
        let stmts = parse("CREATE TABLE t (a INT); CREATE TABLE u (b INT PRIMARY KEY)").unwrap();
        assert_eq!(stmts.len(), 2);
        match &stmts[0] {
            Statement::CreateTable(ct) => assert!(connector_spec(ct).unwrap().is_none()),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn malformed_connector_clauses_are_syntax_errors() {
        for sql in [
            "CREATE SOURCE s (a INT) WITH (connector 'kafka')",
            "CREATE SOURCE s (a INT) WITH (connector = 'kafka') FORMAT PLAIN",
            "CREATE SOURCE s (a INT) INCLUDE",
            "CREATE TABLE t (a INT) WITH (connector = 'kafka') FORMAT PLAIN ENCODE JSON extra",
        ] {
            assert!(parse(sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn sink_queries_end_at_the_sink_options() {
        let sink = |sql: &str| match parse(sql).unwrap().remove(0) {
            Statement::CreateView(cv) => (
                cv.query.to_string(),
                connector_spec_of_view(&cv).unwrap().unwrap(),
            ),
            other => panic!("{other}"),
        };
        // A query ending in a table name: `yc WITH (...)` is not a table hint.
        let (q, s) = sink(
            "CREATE SINK s AS SELECT seq FROM yc WITH (connector = 'kafka', topic = 't', \
             properties.bootstrap.server = 'b', delivery = 'exactly_once') FORMAT PLAIN ENCODE JSON; SELECT 1",
        );
        assert_eq!(q, "SELECT seq FROM yc");
        assert_eq!(s.options["delivery"], "exactly_once");
        // A CTE and a parenthesised subquery keep their own WITH and parentheses.
        let (q, s) = sink(
            "CREATE SINK s AS WITH x AS (SELECT a FROM (SELECT 1 AS a) y) SELECT a FROM x \
             WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'b') \
             FORMAT UPSERT ENCODE JSON",
        );
        assert_eq!(
            q,
            "WITH x AS (SELECT a FROM (SELECT 1 AS a) y) SELECT a FROM x"
        );
        assert_eq!(s.format, "UPSERT");
        assert!(parse("CREATE SINK s AS SELECT 1 FROM t extra junk WITH (connector = 'kafka') FORMAT PLAIN ENCODE JSON").is_err());
        // EMIT ON WINDOW CLOSE ends the query, as in a materialized view.
        let sql = "CREATE SINK s AS SELECT a, count(*) FROM t GROUP BY a EMIT ON WINDOW CLOSE \
                   WITH (connector = 'blackhole')";
        let Statement::CreateView(cv) = parse(sql).unwrap().remove(0) else {
            panic!("{sql}")
        };
        assert_eq!(cv.query.to_string(), "SELECT a, count(*) FROM t GROUP BY a");
        assert!(crate::parser::emits_on_window_close(&cv));
        assert_eq!(
            connector_spec_of_view(&cv).unwrap().unwrap().options["connector"],
            "blackhole"
        );
        let (q, _) = sink("CREATE SINK s AS SELECT a FROM t WITH (connector = 'blackhole')");
        assert_eq!(q, "SELECT a FROM t");
    }
}
