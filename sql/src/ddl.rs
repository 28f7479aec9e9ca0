//! Binding `CREATE TABLE` to a table definition.

use sqlparser::ast::{ColumnOption, CreateTable, Expr, Ident, ObjectName, TableConstraint};
use strom_catalog::object::ROW_ID_COLUMN;
use strom_catalog::{ColumnDef, SqlType};

use crate::error::{Result, SqlError};
use crate::types::sql_type;

/// A bound `CREATE TABLE`; the server resolves the schema and allocates the id.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTablePlan {
    pub schema: Option<String>,
    pub name: String,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    pub pk: Vec<usize>,
    pub user_pk: bool,
    /// Sources and connector tables (see [`crate::connector`]).
    pub connector: Option<strom_catalog::ConnectorDef>,
    /// `WATERMARK FOR column AS expr`; the expression is checked by the server.
    pub watermark: Option<strom_catalog::WatermarkDef>,
    /// `late_data.table = 'name'`: the table late rows go to (made by the server).
    pub late_table: Option<String>,
}

/// The option naming the table late rows go to.
pub const LATE_DATA_TABLE: &str = "late_data.table";

/// An identifier as PostgreSQL resolves it: unquoted names fold to lower case.
pub fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// `[schema.]name` of an object name.
pub fn object_name(name: &ObjectName) -> Result<(Option<String>, String)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(ident_name)
                .ok_or_else(|| SqlError::Syntax(format!("invalid name {name}")))
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [n] => Ok((None, n.clone())),
        [s, n] => Ok((Some(s.clone()), n.clone())),
        [db, s, n] if db == "dev" => Ok((Some(s.clone()), n.clone())),
        _ => Err(SqlError::Unsupported(format!(
            "cross-database reference {name}"
        ))),
    }
}

fn pk_columns(
    columns: &[ColumnDef],
    idents: impl Iterator<Item = Result<String>>,
) -> Result<Vec<usize>> {
    let mut pk = Vec::new();
    for name in idents {
        let name = name?;
        let idx = columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| SqlError::UnknownColumn(name.clone()))?;
        if pk.contains(&idx) {
            return Err(SqlError::DuplicateColumn(name));
        }
        pk.push(idx);
    }
    Ok(pk)
}

pub fn bind_create_table(ct: &CreateTable) -> Result<CreateTablePlan> {
    if ct.query.is_some() {
        return Err(SqlError::Unsupported("CREATE TABLE ... AS".into()));
    }
    if ct.temporary || ct.external {
        return Err(SqlError::Unsupported("temporary or external tables".into()));
    }
    if ct.columns.is_empty() {
        return Err(SqlError::InvalidDefinition(
            "a table needs at least one column".into(),
        ));
    }
    let (schema, name) = object_name(&ct.name)?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut pk: Option<Vec<usize>> = None;
    for (i, c) in ct.columns.iter().enumerate() {
        let col_name = ident_name(&c.name);
        if columns.iter().any(|x| x.name == col_name) {
            return Err(SqlError::DuplicateColumn(col_name));
        }
        if col_name == ROW_ID_COLUMN {
            return Err(SqlError::InvalidDefinition(format!(
                "column name \"{ROW_ID_COLUMN}\" is reserved"
            )));
        }
        let ty = sql_type(&c.data_type)?;
        let mut col = ColumnDef {
            name: col_name.clone(),
            ty,
            nullable: true,
            default: None,
            hidden: false,
        };
        for opt in &c.options {
            match &opt.option {
                ColumnOption::Null => col.nullable = true,
                ColumnOption::NotNull => col.nullable = false,
                ColumnOption::Default(e) => col.default = Some(default_sql(e)),
                ColumnOption::PrimaryKey(_) => {
                    if pk.is_some() {
                        return Err(SqlError::InvalidDefinition(format!(
                            "multiple primary keys for table \"{name}\" are not allowed"
                        )));
                    }
                    pk = Some(vec![i]);
                }
                other => {
                    return Err(SqlError::Unsupported(format!(
                        "column option {other} (column \"{col_name}\")"
                    )))
                }
            }
        }
        columns.push(col);
    }
    // INCLUDE clauses add metadata columns after the declared ones.
    let spec = crate::connector::connector_spec(ct)?;
    let mut includes = Vec::new();
    for inc in spec.iter().flat_map(|s| &s.includes) {
        let ty = match inc.kind.as_str() {
            "partition" => SqlType::Int,
            "offset" => SqlType::BigInt,
            "timestamp" => SqlType::Timestamptz,
            "key" | "topic" | "header" | "topic_system" | "topic_domain" | "topic_datatype"
            | "topic_company1" | "topic_company2" => SqlType::Varchar(None),
            "topic_ok" => SqlType::Boolean,
            // File sources (connector posix_fs).
            "file_name" | "file_path" | "company" | "subcompany" | "system" | "suffix"
            | "class" | "entity" | "object" | "block_attr" | "unit" => SqlType::Varchar(None),
            "file_size" | "line" => SqlType::BigInt,
            "snapshot_time" | "ingest_time" | "block_time" => SqlType::Timestamptz,
            "ingest_latency" => SqlType::Interval,
            "name_ok" => SqlType::Boolean,
            "limit_min" | "limit_max" => SqlType::Double,
            other => {
                return Err(SqlError::InvalidDefinition(format!(
                    "unknown INCLUDE \"{other}\" (Kafka: key, partition, offset, timestamp, topic, topic_system, topic_domain, topic_datatype, topic_company1, topic_company2, topic_ok, header; files: file_name, file_path, file_size, company, subcompany, system, suffix, snapshot_time, ingest_time, ingest_latency, name_ok, line, class, entity, object, block_time, block_attr, unit, limit_min, limit_max)"
                )))
            }
        };
        if inc.kind == "header" && inc.argument.is_none() {
            return Err(SqlError::InvalidDefinition(
                "INCLUDE header needs the header name: INCLUDE header 'name' AS column".into(),
            ));
        }
        let col_name = if !inc.alias.is_empty() {
            inc.alias.clone()
        } else if inc.kind == "key" {
            "_rw_key".into()
        } else if inc.kind.starts_with("topic_")
            || !matches!(
                inc.kind.as_str(),
                "partition" | "offset" | "timestamp" | "topic" | "header"
            )
        {
            format!("_{}", inc.kind)
        } else {
            format!("_rw_kafka_{}", inc.kind)
        };
        if columns.iter().any(|x| x.name == col_name) {
            return Err(SqlError::DuplicateColumn(col_name));
        }
        includes.push(strom_catalog::IncludeDef {
            kind: inc.kind.clone(),
            argument: inc.argument.clone(),
            column: columns.len(),
        });
        columns.push(ColumnDef {
            name: col_name,
            ty,
            nullable: true,
            default: None,
            hidden: false,
        });
    }
    let mut spec = spec;
    let late_table = spec
        .as_mut()
        .and_then(|s| s.options.remove(LATE_DATA_TABLE));
    // A table whose only option was `late_data.table` has no connector.
    if let Some(s) = &spec {
        if !s.is_source && s.format.is_empty() && s.includes.is_empty() {
            if let Some(k) = s.options.keys().find(|k| *k != "connector") {
                if !s.options.contains_key("connector") {
                    return Err(SqlError::InvalidDefinition(format!(
                        "unknown option \"{k}\" for table \"{name}\" (a table without a connector takes only {LATE_DATA_TABLE})"
                    )));
                }
            }
            if s.options.is_empty() {
                spec = None;
            }
        }
    }
    let connector = spec.map(|s| strom_catalog::ConnectorDef {
        is_source: s.is_source,
        is_sink: s.is_sink,
        options: s.options,
        format: s.format,
        encode: s.encode,
        encode_options: s.encode_options,
        includes,
    });
    for con in &ct.constraints {
        match con {
            TableConstraint::PrimaryKey(p) => {
                if pk.is_some() {
                    return Err(SqlError::InvalidDefinition(format!(
                        "multiple primary keys for table \"{name}\" are not allowed"
                    )));
                }
                let names = p.columns.iter().map(|ic| match &ic.column.expr {
                    Expr::Identifier(id) => Ok(ident_name(id)),
                    other => Err(SqlError::Unsupported(format!(
                        "primary key on expression {other}"
                    ))),
                });
                pk = Some(pk_columns(&columns, names)?);
            }
            other => return Err(SqlError::Unsupported(format!("table constraint {other}"))),
        }
    }
    let (pk, user_pk) = match pk {
        Some(pk) => {
            for &i in &pk {
                let c = &mut columns[i];
                if !c.ty.is_key_type() {
                    return Err(SqlError::InvalidDefinition(format!(
                        "column \"{}\" of type {} cannot be part of a primary key",
                        c.name, c.ty
                    )));
                }
                c.nullable = false;
            }
            (pk, true)
        }
        None => {
            columns.push(ColumnDef {
                name: ROW_ID_COLUMN.into(),
                ty: SqlType::BigInt,
                nullable: false,
                default: None,
                hidden: true,
            });
            (vec![columns.len() - 1], false)
        }
    };
    let watermark = match crate::connector::watermark_spec(ct) {
        None => None,
        Some((column, expr)) => {
            let (expr, ttl) = match expr.strip_suffix(crate::connector::TTL_MARK) {
                Some(e) => (e.to_string(), true),
                None => (expr, false),
            };
            let i = columns
                .iter()
                .position(|c| c.name == column && !c.hidden)
                .ok_or_else(|| {
                    SqlError::InvalidDefinition(format!(
                        "WATERMARK FOR \"{column}\": table \"{name}\" has no such column"
                    ))
                })?;
            if !matches!(
                columns[i].ty,
                SqlType::Timestamp | SqlType::Timestamptz | SqlType::Date
            ) {
                return Err(SqlError::InvalidDefinition(format!(
                    "WATERMARK FOR \"{column}\": the column is {}, and a watermark needs a timestamp, timestamptz or date column",
                    columns[i].ty
                )));
            }
            if user_pk {
                return Err(SqlError::InvalidDefinition(format!(
                    "table \"{name}\" has a WATERMARK and a PRIMARY KEY: a table with a watermark is append-only, so it cannot have a primary key"
                )));
            }
            Some(strom_catalog::WatermarkDef {
                column: i,
                expr,
                late_table: None,
                ttl,
            })
        }
    };
    if late_table.is_some() && watermark.is_none() {
        return Err(SqlError::InvalidDefinition(format!(
            "option \"{LATE_DATA_TABLE}\" of \"{name}\" needs a WATERMARK FOR clause (rows are late only behind a watermark)"
        )));
    }
    Ok(CreateTablePlan {
        schema,
        name,
        if_not_exists: ct.if_not_exists,
        columns,
        pk,
        user_pk,
        connector,
        watermark,
        late_table,
    })
}

fn default_sql(e: &Expr) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;
    use sqlparser::ast::Statement;

    fn bind(sql: &str) -> Result<CreateTablePlan> {
        match parse(sql).unwrap().remove(0) {
            Statement::CreateTable(ct) => bind_create_table(&ct),
            _ => unreachable!(),
        }
    }

    #[test]
    fn column_and_table_primary_keys() {
        let p = bind("CREATE TABLE Meter (id BIGINT PRIMARY KEY, \"Feeder\" VARCHAR NOT NULL, kw DOUBLE PRECISION DEFAULT 0)").unwrap();
        assert_eq!(p.name, "meter");
        assert_eq!(p.columns[1].name, "Feeder");
        assert_eq!(p.pk, vec![0]);
        assert!(!p.columns[0].nullable && !p.columns[1].nullable && p.columns[2].nullable);
        assert_eq!(p.columns[2].default.as_deref(), Some("0"));
        let p = bind("CREATE TABLE s.t (a INT, b TEXT, PRIMARY KEY (b, a))").unwrap();
        assert_eq!((p.schema.as_deref(), p.pk.clone()), (Some("s"), vec![1, 0]));
    }

    #[test]
    fn tables_without_key_get_a_hidden_row_id() {
        let p = bind("CREATE TABLE t (a INT)").unwrap();
        assert!(!p.user_pk);
        assert_eq!(p.columns.len(), 2);
        assert!(p.columns[1].hidden);
        assert_eq!(p.pk, vec![1]);
    }

    #[test]
    fn bad_definitions_name_the_culprit() {
        let e = bind("CREATE TABLE t (a INT, a INT)").unwrap_err();
        assert!(e.to_string().contains("\"a\""), "{e}");
        let e = bind("CREATE TABLE t (a INT, PRIMARY KEY (b))").unwrap_err();
        assert_eq!(e.sqlstate(), "42703");
        let e = bind("CREATE TABLE t (a INT PRIMARY KEY, b INT, PRIMARY KEY (b))").unwrap_err();
        assert_eq!(e.sqlstate(), "42P16");
        let e = bind("CREATE TABLE t (j JSONB PRIMARY KEY)").unwrap_err();
        assert!(e.to_string().contains("\"j\""), "{e}");
    }
}
