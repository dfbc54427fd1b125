//! Redshift type names as written in SQL, resolved to catalog types with Redshift's defaults.

use datafusion::sql::sqlparser::ast::{
    BinaryLength, CharacterLength, DataType, ExactNumberInfo, TimezoneInfo,
};
use tributary_catalog::{SqlType, VARCHAR_LENGTH_DEFAULT, VARCHAR_LENGTH_MAX};

use crate::{Error, Result};

/// Resolves a declared column type. Unknown names are the user's error (42704).
pub fn resolve(data_type: &DataType) -> Result<SqlType> {
    use DataType as D;
    Ok(match data_type {
        D::SmallInt(_) | D::Int2(_) | D::TinyInt(_) => SqlType::SmallInt,
        D::Int(_) | D::Integer(_) | D::Int4(_) | D::MediumInt(_) => SqlType::Integer,
        D::BigInt(_) | D::Int8(_) => SqlType::BigInt,
        D::Decimal(info) | D::Numeric(info) | D::Dec(info) => decimal(info)?,
        D::Real | D::Float4 => SqlType::Real,
        D::Float(ExactNumberInfo::Precision(p)) if *p <= 24 => SqlType::Real,
        D::Float(_) | D::Float8 | D::Double(_) | D::DoublePrecision => SqlType::Double,
        D::Bool | D::Boolean => SqlType::Boolean,
        D::Char(length) | D::Character(length) => SqlType::Char {
            length: char_length(length, 1),
        },
        D::Varchar(length)
        | D::CharacterVarying(length)
        | D::CharVarying(length)
        | D::Nvarchar(length) => SqlType::Varchar {
            length: char_length(length, VARCHAR_LENGTH_DEFAULT),
        },
        D::Text | D::String(_) => SqlType::Varchar {
            length: VARCHAR_LENGTH_DEFAULT,
        },
        D::Date => SqlType::Date,
        D::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => SqlType::TimestampTz,
        D::Timestamp(_, _) | D::Datetime(_) | D::TimestampNtz(_) => SqlType::Timestamp,
        D::Time(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            return Err(Error::NotSupported(
                "TIMETZ is not supported; use TIME or TIMESTAMPTZ".into(),
            ));
        }
        D::Time(_, _) => SqlType::Time,
        D::Varbinary(length) => SqlType::Varbyte {
            length: binary_length(length),
        },
        D::Bytea | D::Binary(_) => SqlType::Varbyte {
            length: VARCHAR_LENGTH_MAX,
        },
        D::JSON | D::JSONB => SqlType::Super,
        D::Custom(name, modifiers) => custom(&name.to_string(), modifiers)?,
        other => {
            return Err(Error::UndefinedObject(format!(
                "type \"{other}\" does not exist"
            )));
        }
    })
}

fn custom(name: &str, modifiers: &[String]) -> Result<SqlType> {
    let length = |default: u32| -> Result<u32> {
        match modifiers.first() {
            None => Ok(default),
            Some(m) if m.eq_ignore_ascii_case("max") => Ok(VARCHAR_LENGTH_MAX),
            Some(m) => m
                .parse::<u32>()
                .map_err(|_| Error::InvalidStatement(format!("invalid type modifier \"{m}\""))),
        }
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "varbyte" | "varbinary" | "binary varying" => SqlType::Varbyte {
            length: length(64000)?,
        },
        "super" => SqlType::Super,
        "bpchar" => SqlType::Char {
            length: length(256)?,
        },
        "timestamptz" => SqlType::TimestampTz,
        "timestamp_ntz" => SqlType::Timestamp,
        "float8" => SqlType::Double,
        "float4" => SqlType::Real,
        "int" | "int4" => SqlType::Integer,
        "nchar" => SqlType::Char { length: length(1)? },
        "time" => SqlType::Time,
        other => {
            return Err(Error::UndefinedObject(format!(
                "type \"{other}\" does not exist"
            )));
        }
    })
}

fn decimal(info: &ExactNumberInfo) -> Result<SqlType> {
    let (precision, scale) = match info {
        ExactNumberInfo::None => (18, 0),
        ExactNumberInfo::Precision(p) => (*p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if !(1..=38).contains(&precision) || scale < 0 || scale as u64 > precision {
        return Err(Error::InvalidStatement(format!(
            "invalid DECIMAL({precision},{scale}): precision must be 1 to 38 and scale 0 to precision"
        )));
    }
    Ok(SqlType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

fn char_length(length: &Option<CharacterLength>, default: u32) -> u32 {
    match length {
        None => default,
        Some(CharacterLength::Max) => VARCHAR_LENGTH_MAX,
        Some(CharacterLength::IntegerLength { length, .. }) => {
            (*length).min(u32::MAX as u64) as u32
        }
    }
}

fn binary_length(length: &Option<BinaryLength>) -> u32 {
    match length {
        None => 64000,
        Some(BinaryLength::Max) => 1_024_000,
        Some(BinaryLength::IntegerLength { length }) => (*length).min(u32::MAX as u64) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Statement;
    use tributary_syntax::dialect::parse_statements;

    fn check(declared: &str, expected: &str) {
        let sql = format!("create table t (c {declared})");
        let Some(Statement::CreateTable(create)) =
            parse_statements(&sql).unwrap().remove(0).into_sql()
        else {
            panic!("not a CREATE TABLE");
        };
        let resolved = resolve(&create.columns[0].data_type).map(|t| t.display_name());
        assert_eq!(
            resolved.unwrap_or_else(|e| format!("error: {e}")),
            expected,
            "{declared}"
        );
    }

    #[test]
    fn redshift_names_and_defaults() {
        check("int", "integer");
        check("int8", "bigint");
        check("decimal", "numeric(18,0)");
        check("numeric(5,2)", "numeric(5,2)");
        check("varchar", "character varying(256)");
        check("varchar(max)", "character varying(65535)");
        check("text", "character varying(256)");
        check("char", "character(1)");
        check("bpchar", "character(256)");
        check("float", "double precision");
        check("float4", "real");
        check("timestamptz", "timestamp with time zone");
        check("timestamp with time zone", "timestamp with time zone");
        check("varbyte(16)", "varbyte(16)");
        check("super", "super");
        check(
            "decimal(40,2)",
            "error: invalid DECIMAL(40,2): precision must be 1 to 38 and scale 0 to precision",
        );
        check(
            "geometry_thing",
            "error: type \"geometry_thing\" does not exist",
        );
    }
}
