//! `jsonb` operators and functions.
//!
//! `jsonb` values are stored as text (Arrow `Utf8` tagged `jsonb`, see
//! [`SqlType::field_metadata`]) in the canonical form PostgreSQL's `jsonb_out` prints:
//! keys sorted shorter-first, `", "` and `": "` as separators. The SQL rewrite
//! (`strom_sql::rewrite`) turns the operators into calls of the functions here:
//!
//! | written | becomes | result |
//! |---|---|---|
//! | `j -> 'k'`, `j -> 2` | `strom_jsonb_get(j, k)` | `jsonb`: object field or array element (negative: from the end) |
//! | `j ->> 'k'` | `strom_jsonb_get_text(j, k)` | `text`: a string unquoted, JSON `null` as NULL |
//! | `j #> '{a,2}'` | `jsonb_extract_path(j, 'a', '2')` semantics | `jsonb` |
//! | `j #>> '{a,2}'` | as `#>` | `text` |
//! | `j ? 'k'` | `strom_jsonb_exists(j, k)` | `boolean`: top-level key (or string array element) exists |
//! | `x::jsonb`, `x::json` | `strom_to_jsonb(x)` | `jsonb`: validated, canonical |
//!
//! and `jsonb_extract_path[_text](j, VARIADIC keys)`, `jsonb_typeof(j)`,
//! `jsonb_array_length(j)` are callable by name. A missing key, an index out of range or
//! a wrong container type gives NULL, as in PostgreSQL; text that is not JSON is an error
//! (22P02) naming the input.
//!
//! Numbers are read as 64-bit integers or doubles: `1.50` prints as `1.5` (PostgreSQL
//! keeps numeric scale inside jsonb).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use serde_json::Value;
use strom_catalog::SqlType;

use crate::pg::text::write_json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Get,
    GetText,
    Path,
    PathText,
    Exists,
    ToJsonb,
    Typeof,
    ArrayLength,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    name: &'static str,
    op: Op,
    signature: Signature,
}

/// Registers every function of this module.
pub fn register(ctx: &SessionContext) {
    let fns = [
        (
            "strom_jsonb_get",
            Op::Get,
            Signature::any(2, Volatility::Immutable),
        ),
        (
            "strom_jsonb_get_text",
            Op::GetText,
            Signature::any(2, Volatility::Immutable),
        ),
        (
            "strom_jsonb_path",
            Op::Path,
            Signature::any(2, Volatility::Immutable),
        ),
        (
            "strom_jsonb_path_text",
            Op::PathText,
            Signature::any(2, Volatility::Immutable),
        ),
        (
            "jsonb_extract_path",
            Op::Path,
            Signature::variadic_any(Volatility::Immutable),
        ),
        (
            "jsonb_extract_path_text",
            Op::PathText,
            Signature::variadic_any(Volatility::Immutable),
        ),
        (
            "strom_jsonb_exists",
            Op::Exists,
            Signature::any(2, Volatility::Immutable),
        ),
        (
            "strom_to_jsonb",
            Op::ToJsonb,
            Signature::any(1, Volatility::Immutable),
        ),
        (
            "jsonb_typeof",
            Op::Typeof,
            Signature::any(1, Volatility::Immutable),
        ),
        (
            "jsonb_array_length",
            Op::ArrayLength,
            Signature::any(1, Volatility::Immutable),
        ),
    ];
    for (name, op, signature) in fns {
        ctx.register_udf(ScalarUDF::new_from_impl(JsonFn {
            name,
            op,
            signature,
        }));
    }
}

fn invalid(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(strom_sql::SqlError::InvalidValue {
        code: "22P02",
        message,
    }))
}

impl ScalarUDFImpl for JsonFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.op {
            Op::Exists => DataType::Boolean,
            Op::ArrayLength => DataType::Int32,
            _ => DataType::Utf8,
        })
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let ty = self.return_type(&[])?;
        let field = Field::new(self.name, ty, true);
        Ok(Arc::new(match self.op {
            Op::Get | Op::Path | Op::ToJsonb => {
                field.with_metadata(SqlType::Jsonb.field_metadata())
            }
            _ => {
                let _ = args;
                field
            }
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = arrays.first().map_or(args.number_rows, |a| a.len());
        let out = self.eval(&arrays, rows)?;
        if scalar {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&out, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// One step of a path: an object key, or an array index (also tried as a key).
enum Step {
    Key(String),
    Index(i64),
}

impl JsonFn {
    fn eval(&self, args: &[ArrayRef], rows: usize) -> DfResult<ArrayRef> {
        let Some(doc) = args.first() else {
            return Err(DataFusionError::Plan(format!(
                "function {} needs a jsonb argument",
                self.name
            )));
        };
        if self.op == Op::ToJsonb
            && !matches!(
                doc.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
            )
        {
            return Err(DataFusionError::Plan(format!(
                "cannot cast type {} to jsonb",
                SqlType::from_arrow(doc.data_type(), &Default::default())
                    .map_or_else(|| doc.data_type().to_string(), |t| t.pg_name())
            )));
        }
        let doc = cast(doc, &DataType::Utf8)?;
        let doc = doc.as_string::<i32>();
        let steps = self.steps(&args[1..], rows)?;
        let parse = |row: usize| -> DfResult<Option<Value>> {
            if doc.is_null(row) {
                return Ok(None);
            }
            let text = doc.value(row);
            serde_json::from_str(text).map(Some).map_err(|e| {
                invalid(format!(
                    "invalid input syntax for type json: \"{text}\": {e}"
                ))
            })
        };
        Ok(match self.op {
            Op::Exists => {
                let mut b = BooleanBuilder::with_capacity(rows);
                for (row, step) in steps.iter().enumerate() {
                    let key = match step.as_deref() {
                        Some([Step::Key(k)]) => Some(k.as_str()),
                        _ => None,
                    };
                    match (parse(row)?, key) {
                        (Some(Value::Object(m)), Some(k)) => b.append_value(m.contains_key(k)),
                        (Some(Value::Array(a)), Some(k)) => {
                            b.append_value(a.iter().any(|v| v.as_str() == Some(k)))
                        }
                        (Some(_), Some(_)) => b.append_value(false),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            Op::ArrayLength => {
                let mut b = Int32Builder::with_capacity(rows);
                for row in 0..rows {
                    match parse(row)? {
                        Some(Value::Array(a)) => b.append_value(a.len() as i32),
                        Some(_) => {
                            return Err(invalid(
                                "cannot get array length of a non-array".to_string(),
                            ))
                        }
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = StringBuilder::with_capacity(rows, rows * 16);
                let mut text = String::new();
                for (row, step) in steps.iter().enumerate() {
                    let Some(v) = parse(row)? else {
                        b.append_null();
                        continue;
                    };
                    let found = match step {
                        Some(path) => follow(&v, path),
                        None if matches!(self.op, Op::ToJsonb | Op::Typeof) => Some(&v),
                        None => None,
                    };
                    text.clear();
                    match (self.op, found) {
                        (_, None) => {
                            b.append_null();
                            continue;
                        }
                        (Op::Typeof, Some(v)) => text.push_str(type_name(v)),
                        (Op::GetText | Op::PathText, Some(Value::String(s))) => text.push_str(s),
                        (Op::GetText | Op::PathText, Some(Value::Null)) => {
                            b.append_null();
                            continue;
                        }
                        (_, Some(v)) => write_json(v, &mut text),
                    }
                    b.append_value(&text);
                }
                Arc::new(b.finish())
            }
        })
    }

    /// Each row's path (`None` for a NULL key, or no path for one-argument functions).
    fn steps(&self, keys: &[ArrayRef], rows: usize) -> DfResult<Vec<Option<Vec<Step>>>> {
        let mut out: Vec<Option<Vec<Step>>> = Vec::with_capacity(rows);
        match self.op {
            Op::ToJsonb | Op::Typeof | Op::ArrayLength => {
                out.resize_with(rows, || None);
            }
            Op::Get | Op::GetText | Op::Exists => {
                let key = &keys[0];
                if key.data_type().is_integer() {
                    let key = cast(key, &DataType::Int64)?;
                    let key = key.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                    for row in 0..rows {
                        out.push((!key.is_null(row)).then(|| vec![Step::Index(key.value(row))]));
                    }
                } else {
                    let key = cast(key, &DataType::Utf8)?;
                    let key = key.as_string::<i32>();
                    for row in 0..rows {
                        out.push(
                            (!key.is_null(row)).then(|| vec![Step::Key(key.value(row).into())]),
                        );
                    }
                }
            }
            Op::Path | Op::PathText => {
                // `j #> '{a,b}'` (one text[] or array-literal text) or
                // `jsonb_extract_path(j, 'a', 'b')` (one text per step).
                let single_list = keys.len() == 1
                    && matches!(keys[0].data_type(), DataType::List(_) | DataType::Utf8);
                let lists: Vec<ArrayRef> = keys
                    .iter()
                    .map(|k| match k.data_type() {
                        DataType::List(_) => Ok(Arc::clone(k)),
                        _ => cast(k, &DataType::Utf8),
                    })
                    .collect::<Result<_, _>>()?;
                for row in 0..rows {
                    let mut path = Vec::new();
                    let mut null = false;
                    for (i, k) in lists.iter().enumerate() {
                        if k.is_null(row) {
                            null = true;
                            break;
                        }
                        match k.data_type() {
                            DataType::List(_) => {
                                let items = cast(&k.as_list::<i32>().value(row), &DataType::Utf8)?;
                                let items = items.as_string::<i32>();
                                for j in 0..items.len() {
                                    if items.is_null(j) {
                                        null = true;
                                    } else {
                                        path.push(Step::Key(items.value(j).into()));
                                    }
                                }
                            }
                            _ => {
                                let s = k.as_string::<i32>().value(row);
                                if single_list && i == 0 && self.name.starts_with("strom_") {
                                    path.extend(parse_text_array(s)?.into_iter().map(Step::Key));
                                } else {
                                    path.push(Step::Key(s.into()));
                                }
                            }
                        }
                    }
                    out.push((!null).then_some(path));
                }
            }
        }
        Ok(out)
    }
}

/// The elements of a PostgreSQL array literal of text, `{a,"b c",2}`.
fn parse_text_array(s: &str) -> DfResult<Vec<String>> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| invalid(format!("malformed array literal: \"{s}\"")))?;
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => cur.extend(chars.next()),
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    if !inner.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    Ok(out)
}

fn follow<'a>(mut v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    for step in path {
        v = match (v, step) {
            (Value::Object(m), Step::Key(k)) => m.get(k)?,
            (Value::Array(a), Step::Index(i)) => index(a, *i)?,
            // A path given as text addresses arrays by integer text.
            (Value::Array(a), Step::Key(k)) => index(a, k.trim().parse().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn index(a: &[Value], i: i64) -> Option<&Value> {
    let i = if i < 0 { a.len() as i64 + i } else { i };
    usize::try_from(i).ok().and_then(|i| a.get(i))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The canonical (`jsonb_out`) text of a JSON document, or the parse error.
pub fn canonical(text: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(text.len());
    write_json(&v, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_split_like_postgres() {
        assert_eq!(parse_text_array("{a,b}").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_text_array("{\"x,y\", 2}").unwrap(), vec!["x,y", "2"]);
        assert!(parse_text_array("{}").unwrap().is_empty());
        assert!(parse_text_array("a,b").is_err());
    }

    #[test]
    fn paths_follow_objects_and_arrays() {
        let v: Value = serde_json::from_str(r#"{"a":[1,{"b":"x"}]}"#).unwrap();
        let p = |s: &[&str]| {
            s.iter()
                .map(|k| Step::Key(k.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(follow(&v, &p(&["a", "1", "b"])), Some(&Value::from("x")));
        assert_eq!(
            follow(&v, &[Step::Key("a".into()), Step::Index(-2)]),
            Some(&Value::from(1))
        );
        assert_eq!(follow(&v, &p(&["a", "x"])), None);
        assert_eq!(follow(&v, &p(&["b"])), None);
    }
}
