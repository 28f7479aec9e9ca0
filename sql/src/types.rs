//! sqlparser data types to [`SqlType`].

use sqlparser::ast::{ArrayElemTypeDef, CharacterLength, DataType, ExactNumberInfo, TimezoneInfo};
use strom_catalog::SqlType;

use crate::error::{Result, SqlError};

/// The column type for a type name as written in DDL or a cast.
pub fn sql_type(dt: &DataType) -> Result<SqlType> {
    Ok(match dt {
        DataType::Bool | DataType::Boolean => SqlType::Boolean,
        DataType::SmallInt(_) | DataType::Int2(_) => SqlType::SmallInt,
        DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_) => SqlType::Int,
        DataType::BigInt(_) | DataType::Int8(_) => SqlType::BigInt,
        DataType::Real | DataType::Float4 => SqlType::Real,
        DataType::DoublePrecision | DataType::Float8 | DataType::Double(ExactNumberInfo::None) => {
            SqlType::Double
        }
        DataType::Float(info) => match info {
            ExactNumberInfo::Precision(p) if *p <= 24 => SqlType::Real,
            _ => SqlType::Double,
        },
        DataType::Numeric(info) | DataType::Decimal(info) | DataType::Dec(info) => numeric(info)?,
        DataType::Varchar(len) | DataType::CharacterVarying(len) | DataType::CharVarying(len) => {
            SqlType::Varchar(char_len(len)?)
        }
        DataType::Text | DataType::String(_) => SqlType::Varchar(None),
        DataType::Date => SqlType::Date,
        DataType::Time(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => SqlType::Time,
        DataType::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            SqlType::Timestamp
        }
        DataType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            SqlType::Timestamptz
        }
        DataType::Interval { .. } => SqlType::Interval,
        DataType::Bytea => SqlType::Bytea,
        DataType::JSONB | DataType::JSON => SqlType::Jsonb,
        DataType::Array(elem) => match elem {
            ArrayElemTypeDef::SquareBracket(inner, _) | ArrayElemTypeDef::AngleBracket(inner) => {
                let inner = sql_type(inner)?;
                if matches!(inner, SqlType::Array(_)) {
                    return Err(SqlError::Unsupported("multi-dimensional arrays".into()));
                }
                SqlType::Array(Box::new(inner))
            }
            _ => return Err(SqlError::UnknownType(dt.to_string())),
        },
        DataType::Custom(name, _) => {
            let n = name.to_string().to_lowercase();
            match n.as_str() {
                "timestamptz" => SqlType::Timestamptz,
                "int2" => SqlType::SmallInt,
                "int4" => SqlType::Int,
                "int8" => SqlType::BigInt,
                "float4" => SqlType::Real,
                "float8" => SqlType::Double,
                "string" => SqlType::Varchar(None),
                "timetz" => return Err(SqlError::Unsupported("type time with time zone".into())),
                _ => return Err(SqlError::UnknownType(n)),
            }
        }
        other => return Err(SqlError::UnknownType(other.to_string().to_lowercase())),
    })
}

fn numeric(info: &ExactNumberInfo) -> Result<SqlType> {
    let (p, s) = match info {
        ExactNumberInfo::None => {
            return Ok(SqlType::Numeric {
                precision: None,
                scale: None,
            })
        }
        ExactNumberInfo::Precision(p) => (*p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if !(1..=38).contains(&p) {
        return Err(SqlError::InvalidDefinition(format!(
            "NUMERIC precision {p} must be between 1 and 38"
        )));
    }
    if s < 0 || s > p as i64 {
        return Err(SqlError::InvalidDefinition(format!(
            "NUMERIC scale {s} must be between 0 and precision {p}"
        )));
    }
    Ok(SqlType::Numeric {
        precision: Some(p as u8),
        scale: Some(s as i8),
    })
}

fn char_len(len: &Option<CharacterLength>) -> Result<Option<u32>> {
    Ok(match len {
        None | Some(CharacterLength::Max) => None,
        Some(CharacterLength::IntegerLength { length, .. }) => {
            if *length == 0 || *length > 10_485_760 {
                return Err(SqlError::InvalidDefinition(format!(
                    "length for type varchar must be between 1 and 10485760, not {length}"
                )));
            }
            Some(*length as u32)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;
    use sqlparser::ast::Statement;

    fn col_type(ty: &str) -> Result<SqlType> {
        let stmt = parse(&format!("CREATE TABLE t (c {ty})"))
            .unwrap()
            .remove(0);
        match stmt {
            Statement::CreateTable(ct) => sql_type(&ct.columns[0].data_type),
            _ => unreachable!(),
        }
    }

    #[test]
    fn maps_every_documented_type_name() {
        assert_eq!(col_type("string").unwrap(), SqlType::Varchar(None));
        assert_eq!(col_type("varchar(5)").unwrap(), SqlType::Varchar(Some(5)));
        assert_eq!(col_type("double precision").unwrap(), SqlType::Double);
        assert_eq!(col_type("timestamptz").unwrap(), SqlType::Timestamptz);
        assert_eq!(
            col_type("timestamp with time zone").unwrap(),
            SqlType::Timestamptz
        );
        assert_eq!(
            col_type("numeric(10,2)").unwrap(),
            SqlType::Numeric {
                precision: Some(10),
                scale: Some(2)
            }
        );
        assert_eq!(
            col_type("int[]").unwrap(),
            SqlType::Array(Box::new(SqlType::Int))
        );
        assert_eq!(col_type("jsonb").unwrap(), SqlType::Jsonb);
        assert!(matches!(
            col_type("geography"),
            Err(SqlError::UnknownType(_))
        ));
        assert!(matches!(
            col_type("numeric(50,2)"),
            Err(SqlError::InvalidDefinition(_))
        ));
    }
}
