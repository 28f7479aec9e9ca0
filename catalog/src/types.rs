//! SQL column types: what users write, how Arrow holds it, how PostgreSQL names it.

use arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Field-metadata key carrying a SQL type Arrow cannot tell apart (jsonb vs text).
pub const TYPE_METADATA_KEY: &str = "strom.type";

/// Precision and scale used for `numeric` without a declared precision. PostgreSQL keeps
/// arbitrary precision; we keep 28 integer digits and 10 fraction digits, and print values
/// without trailing fraction zeros.
pub const UNCONSTRAINED_NUMERIC_PRECISION: u8 = 38;
pub const UNCONSTRAINED_NUMERIC_SCALE: i8 = 10;

/// The time zone Arrow timestamps with time zone are stored in.
pub const UTC: &str = "+00:00";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SqlType {
    Boolean,
    SmallInt,
    Int,
    BigInt,
    Real,
    Double,
    /// `numeric(p, s)`; both `None` for unconstrained `numeric`.
    Numeric {
        precision: Option<u8>,
        scale: Option<i8>,
    },
    Varchar(Option<u32>),
    Text,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    Bytea,
    Jsonb,
    Array(Box<SqlType>),
}

impl SqlType {
    pub fn to_arrow(&self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::SmallInt => DataType::Int16,
            SqlType::Int => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Real => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::Numeric { precision, scale } => match (precision, scale) {
                (None, _) => DataType::Decimal128(
                    UNCONSTRAINED_NUMERIC_PRECISION,
                    UNCONSTRAINED_NUMERIC_SCALE,
                ),
                (Some(p), s) => DataType::Decimal128(*p, s.unwrap_or(0)),
            },
            SqlType::Varchar(_) | SqlType::Text | SqlType::Jsonb => DataType::Utf8,
            SqlType::Date => DataType::Date32,
            SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            SqlType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            SqlType::Bytea => DataType::Binary,
            SqlType::Array(elem) => DataType::List(Arc::new(
                Field::new_list_field(elem.to_arrow(), true).with_metadata(elem.field_metadata()),
            )),
        }
    }

    /// Metadata to attach to an Arrow field of this type (see [`TYPE_METADATA_KEY`]).
    pub fn field_metadata(&self) -> HashMap<String, String> {
        let tag = match self {
            SqlType::Jsonb => "jsonb",
            SqlType::Numeric {
                precision: None, ..
            } => "numeric",
            _ => return HashMap::new(),
        };
        HashMap::from([(TYPE_METADATA_KEY.to_string(), tag.to_string())])
    }

    /// The SQL type of an Arrow field produced by a query, for result descriptions.
    /// Returns `None` for Arrow types with no PostgreSQL counterpart.
    pub fn from_arrow(dt: &DataType, metadata: &HashMap<String, String>) -> Option<SqlType> {
        let tag = metadata.get(TYPE_METADATA_KEY).map(String::as_str);
        Some(match dt {
            DataType::Boolean => SqlType::Boolean,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => SqlType::SmallInt,
            DataType::Int32 | DataType::UInt16 => SqlType::Int,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => SqlType::BigInt,
            DataType::Float16 | DataType::Float32 => SqlType::Real,
            DataType::Float64 => SqlType::Double,
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
                if tag == Some("numeric") {
                    SqlType::Numeric {
                        precision: None,
                        scale: None,
                    }
                } else {
                    SqlType::Numeric {
                        precision: Some(*p),
                        scale: Some(*s),
                    }
                }
            }
            DataType::Decimal256(_, _) => SqlType::Numeric {
                precision: None,
                scale: None,
            },
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                if tag == Some("jsonb") {
                    SqlType::Jsonb
                } else {
                    SqlType::Varchar(None)
                }
            }
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Time32(_) | DataType::Time64(_) => SqlType::Time,
            DataType::Timestamp(_, None) => SqlType::Timestamp,
            DataType::Timestamp(_, Some(_)) => SqlType::Timestamptz,
            DataType::Interval(_) | DataType::Duration(_) => SqlType::Interval,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Bytea,
            DataType::FixedSizeBinary(_) => SqlType::Bytea,
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                SqlType::Array(Box::new(SqlType::from_arrow(f.data_type(), f.metadata())?))
            }
            DataType::Null => SqlType::Text,
            _ => return None,
        })
    }

    /// The PostgreSQL type oid.
    pub fn pg_oid(&self) -> u32 {
        match self {
            SqlType::Boolean => 16,
            SqlType::SmallInt => 21,
            SqlType::Int => 23,
            SqlType::BigInt => 20,
            SqlType::Real => 700,
            SqlType::Double => 701,
            SqlType::Numeric { .. } => 1700,
            SqlType::Varchar(_) => 1043,
            SqlType::Text => 25,
            SqlType::Date => 1082,
            SqlType::Time => 1083,
            SqlType::Timestamp => 1114,
            SqlType::Timestamptz => 1184,
            SqlType::Interval => 1186,
            SqlType::Bytea => 17,
            SqlType::Jsonb => 3802,
            SqlType::Array(elem) => match elem.as_ref() {
                SqlType::Boolean => 1000,
                SqlType::SmallInt => 1005,
                SqlType::Int => 1007,
                SqlType::BigInt => 1016,
                SqlType::Real => 1021,
                SqlType::Double => 1022,
                SqlType::Numeric { .. } => 1231,
                SqlType::Varchar(_) => 1015,
                SqlType::Text => 1009,
                SqlType::Date => 1182,
                SqlType::Time => 1183,
                SqlType::Timestamp => 1115,
                SqlType::Timestamptz => 1185,
                SqlType::Interval => 1187,
                SqlType::Bytea => 1001,
                SqlType::Jsonb => 3807,
                SqlType::Array(_) => 0,
            },
        }
    }

    /// PostgreSQL's `atttypmod` for this type (-1 when there is none).
    pub fn pg_typmod(&self) -> i32 {
        match self {
            SqlType::Varchar(Some(n)) => *n as i32 + 4,
            SqlType::Numeric {
                precision: Some(p),
                scale,
            } => (((*p as i32) << 16) | (scale.unwrap_or(0) as i32 & 0xffff)) + 4,
            SqlType::Array(elem) => elem.pg_typmod(),
            _ => -1,
        }
    }

    /// The name `format_type()` and `\d` print.
    pub fn pg_name(&self) -> String {
        match self {
            SqlType::Boolean => "boolean".into(),
            SqlType::SmallInt => "smallint".into(),
            SqlType::Int => "integer".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Real => "real".into(),
            SqlType::Double => "double precision".into(),
            SqlType::Numeric {
                precision: Some(p),
                scale,
            } => format!("numeric({},{})", p, scale.unwrap_or(0)),
            SqlType::Numeric { .. } => "numeric".into(),
            SqlType::Varchar(Some(n)) => format!("character varying({n})"),
            SqlType::Varchar(None) => "character varying".into(),
            SqlType::Text => "text".into(),
            SqlType::Date => "date".into(),
            SqlType::Time => "time without time zone".into(),
            SqlType::Timestamp => "timestamp without time zone".into(),
            SqlType::Timestamptz => "timestamp with time zone".into(),
            SqlType::Interval => "interval".into(),
            SqlType::Bytea => "bytea".into(),
            SqlType::Jsonb => "jsonb".into(),
            SqlType::Array(elem) => format!("{}[]", elem.pg_name()),
        }
    }

    /// The `pg_type.typname` of this type (`int8`, `_int4`, ...).
    pub fn pg_typname(&self) -> String {
        match self {
            SqlType::Boolean => "bool".into(),
            SqlType::SmallInt => "int2".into(),
            SqlType::Int => "int4".into(),
            SqlType::BigInt => "int8".into(),
            SqlType::Real => "float4".into(),
            SqlType::Double => "float8".into(),
            SqlType::Numeric { .. } => "numeric".into(),
            SqlType::Varchar(_) => "varchar".into(),
            SqlType::Text => "text".into(),
            SqlType::Date => "date".into(),
            SqlType::Time => "time".into(),
            SqlType::Timestamp => "timestamp".into(),
            SqlType::Timestamptz => "timestamptz".into(),
            SqlType::Interval => "interval".into(),
            SqlType::Bytea => "bytea".into(),
            SqlType::Jsonb => "jsonb".into(),
            SqlType::Array(elem) => format!("_{}", elem.pg_typname()),
        }
    }

    /// Whether values of this type can be part of a primary key.
    pub fn is_key_type(&self) -> bool {
        !matches!(self, SqlType::Array(_) | SqlType::Jsonb)
    }
}

impl std::fmt::Display for SqlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.pg_name())
    }
}

/// Every base type, for `pg_type`.
pub fn base_types() -> Vec<SqlType> {
    vec![
        SqlType::Boolean,
        SqlType::SmallInt,
        SqlType::Int,
        SqlType::BigInt,
        SqlType::Real,
        SqlType::Double,
        SqlType::Numeric {
            precision: None,
            scale: None,
        },
        SqlType::Varchar(None),
        SqlType::Text,
        SqlType::Date,
        SqlType::Time,
        SqlType::Timestamp,
        SqlType::Timestamptz,
        SqlType::Interval,
        SqlType::Bytea,
        SqlType::Jsonb,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_round_trip_keeps_sql_type_where_it_matters() {
        for ty in base_types() {
            let back = SqlType::from_arrow(&ty.to_arrow(), &ty.field_metadata()).unwrap();
            match ty {
                SqlType::Text => assert_eq!(back, SqlType::Varchar(None)),
                _ => assert_eq!(back, ty, "{ty}"),
            }
        }
    }

    #[test]
    fn typmods_follow_postgres() {
        assert_eq!(SqlType::Varchar(Some(10)).pg_typmod(), 14);
        let n = SqlType::Numeric {
            precision: Some(10),
            scale: Some(2),
        };
        assert_eq!(n.pg_typmod(), (10 << 16 | 2) + 4);
        assert_eq!(n.pg_name(), "numeric(10,2)");
        assert_eq!(SqlType::Array(Box::new(SqlType::Int)).pg_oid(), 1007);
    }
}
