//! PostgreSQL system functions that tools call (`version()`, `format_type`, ...).
//!
//! They run row by row over scalars: they serve catalog queries of a few hundred rows, never
//! data paths. Each closes over the statement's [`QueryEnv`], so answers match the catalog
//! snapshot the statement reads.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use strom_catalog::SqlType;

use crate::pg_catalog::{table_oid_of_index, type_by_oid};
use crate::query::{QueryEnv, DATABASE_NAME};

type Body = Arc<dyn Fn(&[ScalarValue]) -> ScalarValue + Send + Sync>;

struct PgFn {
    name: String,
    signature: Signature,
    ret: DataType,
    body: Body,
}

impl fmt::Debug for PgFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgFn({})", self.name)
    }
}

impl PartialEq for PgFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for PgFn {}
impl Hash for PgFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for PgFn {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.ret.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut out = Vec::with_capacity(rows);
        let mut row_args = Vec::with_capacity(args.args.len());
        for r in 0..rows {
            row_args.clear();
            for a in &args.args {
                row_args.push(match a {
                    ColumnarValue::Scalar(s) => s.clone(),
                    ColumnarValue::Array(arr) => ScalarValue::try_from_array(arr, r)?,
                });
            }
            let v = (self.body)(&row_args);
            out.push(if v.is_null() {
                ScalarValue::try_from(&self.ret)?
            } else {
                v.cast_to(&self.ret)?
            });
        }
        if all_scalar {
            Ok(ColumnarValue::Scalar(
                out.pop().expect("invariant: one row"),
            ))
        } else if out.is_empty() {
            Ok(ColumnarValue::Array(
                datafusion::arrow::array::new_empty_array(&self.ret),
            ))
        } else {
            Ok(ColumnarValue::Array(ScalarValue::iter_to_array(out)?))
        }
    }
}

fn add(ctx: &SessionContext, name: &str, arities: &[usize], ret: DataType, body: Body) {
    let sigs = arities
        .iter()
        .map(|&n| {
            if n == 0 {
                TypeSignature::Nullary
            } else {
                TypeSignature::Any(n)
            }
        })
        .collect();
    ctx.register_udf(ScalarUDF::new_from_impl(PgFn {
        name: name.to_string(),
        signature: Signature::one_of(sigs, Volatility::Stable),
        ret,
        body,
    }));
}

fn text(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}

fn as_u32(v: &ScalarValue) -> Option<u32> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(i)) => u32::try_from(i).ok(),
        _ => None,
    }
}

fn as_str(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

pub const SERVER_VERSION: &str = "15.0";

pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Strom {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION")
    )
}

/// Registers every function on `ctx`.
pub fn register(ctx: &SessionContext, env: &Arc<QueryEnv>) {
    let settings = env.settings.clone();
    let utf8 = DataType::Utf8;
    let oid = DataType::UInt32;
    // PostgreSQL's name for the sample variance.
    ctx.register_udaf(
        datafusion::functions_aggregate::variance::var_samp_udaf()
            .as_ref()
            .clone()
            .with_aliases(["variance"]),
    );

    add(
        ctx,
        "version",
        &[0],
        utf8.clone(),
        Arc::new(|_| text(version_string())),
    );
    add(
        ctx,
        "current_database",
        &[0],
        utf8.clone(),
        Arc::new(|_| text(DATABASE_NAME)),
    );
    add(
        ctx,
        "current_catalog",
        &[0],
        utf8.clone(),
        Arc::new(|_| text(DATABASE_NAME)),
    );
    for name in ["current_user", "session_user", "user", "current_role"] {
        let user = settings.user.clone();
        add(
            ctx,
            name,
            &[0],
            utf8.clone(),
            Arc::new(move |_| text(user.clone())),
        );
    }
    {
        let env2 = Arc::clone(env);
        add(
            ctx,
            "current_schema",
            &[0],
            utf8.clone(),
            Arc::new(move |_| {
                env2.settings
                    .search_path
                    .iter()
                    .find(|s| env2.catalog.schema_by_name(s).is_some())
                    .map(|s| text(s.clone()))
                    .unwrap_or(ScalarValue::Utf8(None))
            }),
        );
    }
    {
        let env2 = Arc::clone(env);
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        add(
            ctx,
            "current_schemas",
            &[1],
            list,
            Arc::new(move |args| {
                let mut names: Vec<ScalarValue> = Vec::new();
                if matches!(args.first(), Some(ScalarValue::Boolean(Some(true)))) {
                    names.push(text("pg_catalog"));
                }
                for s in &env2.settings.search_path {
                    if env2.catalog.schema_by_name(s).is_some() {
                        names.push(text(s.clone()));
                    }
                }
                ScalarValue::List(ScalarValue::new_list_nullable(&names, &DataType::Utf8))
            }),
        );
    }
    {
        let s = settings.clone();
        add(
            ctx,
            "current_setting",
            &[1, 2],
            utf8.clone(),
            Arc::new(move |args| match args.first().and_then(as_str) {
                Some(name) => s.get(&name).map(text).unwrap_or(ScalarValue::Utf8(None)),
                None => ScalarValue::Utf8(None),
            }),
        );
    }
    {
        let env2 = Arc::clone(env);
        add(
            ctx,
            "pg_table_is_visible",
            &[1],
            DataType::Boolean,
            Arc::new(move |args| {
                let Some(oid) = args.first().and_then(as_u32) else {
                    return ScalarValue::Boolean(None);
                };
                let oid = table_oid_of_index(oid);
                let visible = match env2.catalog.table_by_oid(oid) {
                    Some(t) => {
                        let first = env2
                            .settings
                            .search_path
                            .iter()
                            .filter_map(|s| env2.catalog.schema_by_name(s))
                            .find(|sd| env2.catalog.table_by_name(sd.id, &t.name).is_some());
                        first.map(|sd| sd.id == t.schema).unwrap_or(false)
                    }
                    None => true, // system relations live in pg_catalog, always on the path
                };
                ScalarValue::Boolean(Some(visible))
            }),
        );
    }
    for name in ["pg_type_is_visible", "pg_function_is_visible"] {
        add(
            ctx,
            name,
            &[1],
            DataType::Boolean,
            Arc::new(|_| ScalarValue::Boolean(Some(true))),
        );
    }
    add(
        ctx,
        "format_type",
        &[2],
        utf8.clone(),
        Arc::new(|args| {
            let Some(oid) = args.first().and_then(as_u32) else {
                return ScalarValue::Utf8(None);
            };
            let typmod = args
                .get(1)
                .and_then(|v| v.cast_to(&DataType::Int64).ok())
                .and_then(|v| match v {
                    ScalarValue::Int64(Some(i)) => Some(i),
                    _ => None,
                });
            match type_by_oid(oid) {
                Some(ty) => text(with_typmod(ty, typmod.unwrap_or(-1)).pg_name()),
                None => text("???"),
            }
        }),
    );
    add(
        ctx,
        "pg_get_expr",
        &[2, 3],
        utf8.clone(),
        Arc::new(|args| args.first().cloned().unwrap_or(ScalarValue::Utf8(None))),
    );
    for name in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_any_column_privilege",
        "pg_has_role",
    ] {
        add(
            ctx,
            name,
            &[2, 3, 4],
            DataType::Boolean,
            Arc::new(|_| ScalarValue::Boolean(Some(true))),
        );
    }
    {
        let user = settings.user.clone();
        add(
            ctx,
            "pg_get_userbyid",
            &[1],
            utf8.clone(),
            Arc::new(move |_| text(user.clone())),
        );
    }
    for name in [
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_viewdef",
        "pg_get_partkeydef",
        "pg_get_statisticsobjdef_columns",
        "pg_get_triggerdef",
        "pg_get_ruledef",
        "pg_get_function_identity_arguments",
        "pg_get_function_result",
        "pg_get_function_arguments",
    ] {
        add(
            ctx,
            name,
            &[1, 2, 3],
            utf8.clone(),
            Arc::new(|_| ScalarValue::Utf8(None)),
        );
    }
    {
        let env2 = Arc::clone(env);
        add(
            ctx,
            "pg_get_indexdef",
            &[1, 3],
            utf8.clone(),
            Arc::new(move |args| {
                let Some(t) = args
                    .first()
                    .and_then(as_u32)
                    .map(table_oid_of_index)
                    .and_then(|o| env2.catalog.table_by_oid(o))
                else {
                    return ScalarValue::Utf8(None);
                };
                let schema = env2
                    .catalog
                    .schema(t.schema)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                text(format!(
                    "CREATE UNIQUE INDEX {}_pkey ON {}.{} USING btree ({})",
                    t.name,
                    schema,
                    t.name,
                    pk_list(t)
                ))
            }),
        );
    }
    {
        let env2 = Arc::clone(env);
        add(
            ctx,
            "pg_get_constraintdef",
            &[1, 2],
            utf8.clone(),
            Arc::new(move |args| {
                let Some(t) = args
                    .first()
                    .and_then(as_u32)
                    .map(table_oid_of_index)
                    .and_then(|o| env2.catalog.table_by_oid(o))
                else {
                    return ScalarValue::Utf8(None);
                };
                text(format!("PRIMARY KEY ({})", pk_list(t)))
            }),
        );
    }
    add(
        ctx,
        "pg_size_pretty",
        &[1],
        utf8.clone(),
        Arc::new(
            |args| match args.first().and_then(|v| v.cast_to(&DataType::Int64).ok()) {
                Some(ScalarValue::Int64(Some(n))) => text(size_pretty(n)),
                _ => ScalarValue::Utf8(None),
            },
        ),
    );
    // PostgreSQL's octet_length also takes bytea; DataFusion's only takes text.
    add(
        ctx,
        "octet_length",
        &[1],
        DataType::Int32,
        Arc::new(|args| match args.first() {
            Some(
                ScalarValue::Binary(Some(b))
                | ScalarValue::LargeBinary(Some(b))
                | ScalarValue::BinaryView(Some(b)),
            ) => ScalarValue::Int32(Some(b.len() as i32)),
            Some(v) => match as_str(v) {
                Some(s) => ScalarValue::Int32(Some(s.len() as i32)),
                None => ScalarValue::Int32(None),
            },
            None => ScalarValue::Int32(None),
        }),
    );
    add(
        ctx,
        "pg_encoding_to_char",
        &[1],
        utf8.clone(),
        Arc::new(|_| text("UTF8")),
    );
    add(
        ctx,
        "quote_ident",
        &[1],
        utf8.clone(),
        Arc::new(|args| match args.first().and_then(as_str) {
            Some(s) => text(quote_ident(&s)),
            None => ScalarValue::Utf8(None),
        }),
    );
    add(
        ctx,
        "pg_backend_pid",
        &[0],
        DataType::Int32,
        Arc::new(|_| ScalarValue::Int32(Some(std::process::id() as i32))),
    );
    add(
        ctx,
        "pg_is_in_recovery",
        &[0],
        DataType::Boolean,
        Arc::new(|_| ScalarValue::Boolean(Some(false))),
    );
    add(
        ctx,
        "txid_current",
        &[0],
        DataType::Int64,
        Arc::new(|_| ScalarValue::Int64(Some(1))),
    );
    for name in [
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_table_size",
        "pg_indexes_size",
    ] {
        add(
            ctx,
            name,
            &[1, 2],
            DataType::Int64,
            Arc::new(|_| ScalarValue::Int64(Some(0))),
        );
    }
    add(
        ctx,
        "pg_relation_is_publishable",
        &[1],
        DataType::Boolean,
        Arc::new(|_| ScalarValue::Boolean(Some(false))),
    );
    {
        let env2 = Arc::clone(env);
        let resolve = move |args: &[ScalarValue]| -> ScalarValue {
            let Some(v) = args.first() else {
                return ScalarValue::UInt32(None);
            };
            if let Some(s) = as_str(v) {
                // 'schema.name' or 'name', as regclass input accepts
                let (schema, name) = match s.split_once('.') {
                    Some((a, b)) => (
                        Some(a.trim_matches('"').to_string()),
                        b.trim_matches('"').to_string(),
                    ),
                    None => (None, s.trim_matches('"').to_string()),
                };
                let lower = |x: String| {
                    if x.chars().any(|c| c.is_uppercase()) && !s.contains('"') {
                        x.to_lowercase()
                    } else {
                        x
                    }
                };
                return match env2.catalog.resolve_table(
                    schema.map(lower).as_deref(),
                    &lower(name),
                    &env2.settings.search_path,
                ) {
                    Ok(t) => ScalarValue::UInt32(Some(t.id.oid())),
                    Err(_) => crate::pg_catalog::system_relation_oid(&s)
                        .map(|o| ScalarValue::UInt32(Some(o)))
                        .unwrap_or(ScalarValue::UInt32(None)),
                };
            }
            ScalarValue::UInt32(as_u32(v))
        };
        let r2 = resolve.clone();
        add(ctx, "to_regclass_oid", &[1], oid.clone(), Arc::new(resolve));
        add(ctx, "to_regclass", &[1], oid.clone(), Arc::new(r2));
    }
    add(
        ctx,
        "strom_regtype_name",
        &[1],
        utf8.clone(),
        Arc::new(
            |args| match args.first().and_then(as_u32).and_then(type_by_oid) {
                Some(t) => text(t.pg_name()),
                None => match args.first().and_then(as_str) {
                    Some(s) => text(s),
                    None => args
                        .first()
                        .and_then(as_u32)
                        .map(|o| text(o.to_string()))
                        .unwrap_or(ScalarValue::Utf8(None)),
                },
            },
        ),
    );
    add(
        ctx,
        "strom_regproc_name",
        &[1],
        utf8,
        Arc::new(|args| match args.first() {
            Some(v) if !v.is_null() => text(as_str(v).unwrap_or_else(|| v.to_string())),
            _ => ScalarValue::Utf8(None),
        }),
    );
}

fn pk_list(t: &strom_catalog::TableDef) -> String {
    t.pk.iter()
        .map(|&i| quote_ident(&t.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pg_size_pretty`: bytes, kB, MB, GB, TB with PostgreSQL's rounding (switch units at
/// 10 240 of the smaller one, round half up).
fn size_pretty(n: i64) -> String {
    let mut size = n as f64;
    for unit in ["bytes", "kB", "MB", "GB", "TB"] {
        if size.abs() < 10_240.0 || unit == "TB" {
            return format!("{} {unit}", size.round() as i64);
        }
        size /= 1024.0;
    }
    unreachable!("the loop returns at TB")
}

/// `quote_ident`: quotes unless the name is a lower-case identifier.
pub fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Applies a `pg_attribute.atttypmod` to a base type.
fn with_typmod(ty: SqlType, typmod: i64) -> SqlType {
    if typmod < 4 {
        return ty;
    }
    let m = typmod - 4;
    match ty {
        SqlType::Varchar(_) => SqlType::Varchar(Some(m as u32)),
        SqlType::Numeric { .. } => SqlType::Numeric {
            precision: Some((m >> 16) as u8),
            scale: Some((m & 0xffff) as i8),
        },
        SqlType::Array(e) => SqlType::Array(Box::new(with_typmod(*e, typmod))),
        other => other,
    }
}
