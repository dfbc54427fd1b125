//! Text to typed columns, as COPY converts fields (DATEFORMAT / TIMEFORMAT, 'auto' included);
//! mirror tables convert change records' values the same way.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use tributary_catalog::SqlType;

use crate::Result;

/// Longest raw line or value kept in a load error.
pub const RAW_KEPT: usize = 1024;

/// Converts text values to `sql_type` (DATEFORMAT / TIMEFORMAT as COPY takes them; None is
/// ISO). Returns the column and, for each value that does not convert, its row and why.
pub fn convert_column(
    values: &StringArray,
    sql_type: &SqlType,
    date_format: Option<&str>,
    time_format: Option<&str>,
) -> Result<(ArrayRef, Vec<(usize, String)>)> {
    let target = sql_type.to_arrow();
    let converted: ArrayRef = match (sql_type, date_format, time_format) {
        (SqlType::Date, Some(format), _) => Arc::new(parse_dates(values, format)),
        (SqlType::Timestamp | SqlType::TimestampTz, _, Some(format)) => {
            let micros = parse_timestamps(values, format);
            arrow::compute::cast(&(Arc::new(micros) as ArrayRef), &target)?
        }
        (SqlType::Boolean, _, _) => Arc::new(parse_booleans(values)),
        _ => cast_with_options(values, &target, &CastOptions::default())?,
    };
    let failures = if converted.null_count() == values.null_count() {
        Vec::new()
    } else {
        values
            .iter()
            .enumerate()
            .filter(|(row, value)| value.is_some() && converted.is_null(*row))
            .map(|(row, value)| {
                (
                    row,
                    format!(
                        "Invalid input for type {}: '{}'",
                        sql_type.display_name(),
                        truncate(value.unwrap_or_default())
                    ),
                )
            })
            .collect()
    };
    Ok((converted, failures))
}

fn parse_booleans(values: &StringArray) -> BooleanArray {
    values
        .iter()
        .map(|v| {
            v.and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "1" | "y" | "yes" | "on" => Some(true),
                "f" | "false" | "0" | "n" | "no" | "off" => Some(false),
                _ => None,
            })
        })
        .collect()
}

/// Date formats tried by DATEFORMAT 'auto', after ISO.
const AUTO_DATES: [&str; 6] = [
    "%Y-%m-%d", "%m/%d/%Y", "%Y%m%d", "%d-%b-%Y", "%Y/%m/%d", "%b %d %Y",
];
/// Timestamp formats tried by TIMEFORMAT 'auto'.
const AUTO_TIMESTAMPS: [&str; 6] = [
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%m/%d/%Y %H:%M:%S%.f",
    "%Y%m%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.fZ",
];

pub fn parse_dates(values: &StringArray, format: &str) -> arrow::array::Date32Array {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let patterns: Vec<String> = if format.eq_ignore_ascii_case("auto") {
        AUTO_DATES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![tributary_syntax::rewrite::chrono_pattern(format)]
    };
    values
        .iter()
        .map(|v| {
            let v = v?.trim();
            patterns
                .iter()
                .find_map(|p| NaiveDate::parse_from_str(v, p).ok())
                .or_else(|| {
                    // A timestamp where a date is wanted: keep the date part.
                    NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S")
                        .ok()
                        .map(|t| t.date())
                })
                .map(|d| (d - epoch).num_days() as i32)
        })
        .collect()
}

pub fn parse_timestamps(
    values: &StringArray,
    format: &str,
) -> arrow::array::TimestampMicrosecondArray {
    let lower = format.to_ascii_lowercase();
    values
        .iter()
        .map(|v| {
            let v = v?.trim();
            match lower.as_str() {
                "epochsecs" => v.parse::<f64>().ok().map(|s| (s * 1e6) as i64),
                "epochmillisecs" => v.parse::<f64>().ok().map(|ms| (ms * 1e3) as i64),
                "auto" => AUTO_TIMESTAMPS
                    .iter()
                    .find_map(|p| NaiveDateTime::parse_from_str(v, p).ok())
                    .or_else(|| DateTime::parse_from_rfc3339(v).ok().map(|t| t.naive_utc()))
                    .or_else(|| {
                        NaiveDate::parse_from_str(v, "%Y-%m-%d")
                            .ok()
                            .and_then(|d| d.and_hms_opt(0, 0, 0))
                    })
                    .map(|t| t.and_utc().timestamp_micros()),
                _ => NaiveDateTime::parse_from_str(
                    v,
                    &tributary_syntax::rewrite::chrono_pattern(format),
                )
                .ok()
                .map(|t| t.and_utc().timestamp_micros()),
            }
        })
        .collect()
}

/// A raw line or value as a load error keeps it: at most [`RAW_KEPT`] bytes.
pub fn truncate(text: &str) -> String {
    if text.len() <= RAW_KEPT {
        return text.to_string();
    }
    let mut end = RAW_KEPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps_in_auto_and_explicit_formats() {
        let values = StringArray::from(vec![
            Some("2024-03-01"),
            Some("03/02/2024"),
            Some("not a date"),
        ]);
        let dates = parse_dates(&values, "auto");
        assert!(dates.is_valid(0) && dates.is_valid(1) && dates.is_null(2));
        let explicit = parse_dates(&StringArray::from(vec!["01.02.2024"]), "DD.MM.YYYY");
        assert_eq!(explicit.value(0), 19754);
        let epoch = parse_timestamps(&StringArray::from(vec!["1.5"]), "epochsecs");
        assert_eq!(epoch.value(0), 1_500_000);
        let auto = parse_timestamps(&StringArray::from(vec!["2024-03-01T10:00:00Z"]), "auto");
        assert!(auto.is_valid(0));
    }
}
