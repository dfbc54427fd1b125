//! Redshift's column types, their names, and how each is represented in Arrow and in storage.

use arrow::datatypes::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};

/// Largest VARCHAR / VARBYTE length Redshift allows (`VARCHAR(MAX)`).
pub const VARCHAR_LENGTH_MAX: u32 = 65535;
/// Length of a VARCHAR, TEXT or VARBYTE declared without one, as in Redshift.
pub const VARCHAR_LENGTH_DEFAULT: u32 = 256;

/// The Arrow field metadata key that names a column's SQL type where the Arrow type alone is
/// ambiguous: `super` marks JSON text as SUPER. Stream batches and JSON_PARSE results carry it.
pub const SQL_TYPE_METADATA: &str = "tributary.sql_type";

/// A column type as the user declared it, with Redshift's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SqlType {
    SmallInt,
    Integer,
    BigInt,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Real,
    Double,
    Boolean,
    Char {
        length: u32,
    },
    Varchar {
        length: u32,
    },
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Varbyte {
        length: u32,
    },
    /// Semi-structured data, stored as JSON text.
    Super,
}

impl SqlType {
    /// The Arrow type that queries see.
    pub fn to_arrow(&self) -> DataType {
        match self {
            SqlType::SmallInt => DataType::Int16,
            SqlType::Integer => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            SqlType::Real => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::Boolean => DataType::Boolean,
            SqlType::Char { .. } | SqlType::Varchar { .. } | SqlType::Super => DataType::Utf8,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
            SqlType::Varbyte { .. } => DataType::Binary,
        }
    }

    /// The Arrow type written to Delta. Delta has no time-of-day type, so TIME is stored as
    /// microseconds since midnight; every other type is stored as queries see it.
    pub fn to_storage_arrow(&self) -> DataType {
        match self {
            SqlType::Time => DataType::Int64,
            other => other.to_arrow(),
        }
    }

    /// The maximum length in characters (CHAR, VARCHAR) or bytes (VARBYTE), if bounded.
    pub fn length(&self) -> Option<u32> {
        match self {
            SqlType::Char { length }
            | SqlType::Varchar { length }
            | SqlType::Varbyte { length } => Some(*length),
            _ => None,
        }
    }

    /// The name Redshift shows in `svv_columns.data_type` and `format_type`.
    pub fn display_name(&self) -> String {
        match self {
            SqlType::SmallInt => "smallint".into(),
            SqlType::Integer => "integer".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
            SqlType::Real => "real".into(),
            SqlType::Double => "double precision".into(),
            SqlType::Boolean => "boolean".into(),
            SqlType::Char { length } => format!("character({length})"),
            SqlType::Varchar { length } => format!("character varying({length})"),
            SqlType::Date => "date".into(),
            SqlType::Timestamp => "timestamp without time zone".into(),
            SqlType::TimestampTz => "timestamp with time zone".into(),
            SqlType::Time => "time without time zone".into(),
            SqlType::Varbyte { length } => format!("varbyte({length})"),
            SqlType::Super => "super".into(),
        }
    }

    /// The name as a CAST target in Redshift SQL (`varchar(256)`, `decimal(5,2)`).
    pub fn cast_name(&self) -> String {
        match self {
            SqlType::SmallInt => "smallint".into(),
            SqlType::Integer => "integer".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            SqlType::Real => "real".into(),
            SqlType::Double => "double precision".into(),
            SqlType::Boolean => "boolean".into(),
            SqlType::Char { length } => format!("char({length})"),
            SqlType::Varchar { length } => format!("varchar({length})"),
            SqlType::Date => "date".into(),
            SqlType::Timestamp => "timestamp".into(),
            SqlType::TimestampTz => "timestamptz".into(),
            SqlType::Time => "time".into(),
            SqlType::Varbyte { length } => format!("varbyte({length})"),
            SqlType::Super => "super".into(),
        }
    }

    /// The name without length, precision or scale (`character varying`, `numeric`).
    pub fn base_name(&self) -> String {
        let name = self.display_name();
        match name.find('(') {
            Some(open) => name[..open].to_string(),
            None => name,
        }
    }

    /// The Postgres type OID that clients are told, following Redshift's choices.
    pub fn pg_oid(&self) -> u32 {
        match self {
            SqlType::SmallInt => 21,
            SqlType::Integer => 23,
            SqlType::BigInt => 20,
            SqlType::Decimal { .. } => 1700,
            SqlType::Real => 700,
            SqlType::Double => 701,
            SqlType::Boolean => 16,
            SqlType::Char { .. } => 1042,
            SqlType::Varchar { .. } => 1043,
            SqlType::Date => 1082,
            SqlType::Timestamp => 1114,
            SqlType::TimestampTz => 1184,
            SqlType::Time => 1083,
            SqlType::Varbyte { .. } => 6551,
            SqlType::Super => 4000,
        }
    }

    /// The closest declared type for an Arrow type (used for CREATE TABLE AS and views).
    pub fn from_arrow(data_type: &DataType) -> Option<SqlType> {
        Some(match data_type {
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => SqlType::SmallInt,
            DataType::Int32 | DataType::UInt16 => SqlType::Integer,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => SqlType::BigInt,
            DataType::Decimal128(p, s) => SqlType::Decimal {
                precision: *p,
                scale: *s,
            },
            DataType::Float16 | DataType::Float32 => SqlType::Real,
            DataType::Float64 => SqlType::Double,
            DataType::Boolean => SqlType::Boolean,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => SqlType::Varchar {
                length: VARCHAR_LENGTH_MAX,
            },
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Timestamp(_, None) => SqlType::Timestamp,
            DataType::Timestamp(_, Some(_)) => SqlType::TimestampTz,
            DataType::Time32(_) | DataType::Time64(_) => SqlType::Time,
            DataType::Binary | DataType::BinaryView | DataType::LargeBinary => SqlType::Varbyte {
                length: VARCHAR_LENGTH_MAX,
            },
            DataType::Null => SqlType::Varchar {
                length: VARCHAR_LENGTH_DEFAULT,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql_type: SqlType, name: &str, arrow: DataType) {
        assert_eq!(sql_type.display_name(), name);
        assert_eq!(sql_type.to_arrow(), arrow);
        let back = SqlType::from_arrow(&arrow).expect("every declared type maps back");
        assert_eq!(back.to_arrow(), arrow);
    }

    #[test]
    fn names_and_arrow_types() {
        check(SqlType::Integer, "integer", DataType::Int32);
        check(
            SqlType::Decimal {
                precision: 5,
                scale: 2,
            },
            "numeric(5,2)",
            DataType::Decimal128(5, 2),
        );
        check(
            SqlType::Varchar { length: 10 },
            "character varying(10)",
            DataType::Utf8,
        );
        check(
            SqlType::Time,
            "time without time zone",
            DataType::Time64(TimeUnit::Microsecond),
        );
        assert_eq!(SqlType::Time.to_storage_arrow(), DataType::Int64);
    }
}
