//! Redshift functions that DataFusion lacks or names differently. Functions DataFusion already
//! has under Redshift's name (nvl, nvl2, coalesce, date_trunc, to_char, strpos, ...) are used
//! as they are.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Datelike, Duration, Months, NaiveDateTime, TimeZone};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;

/// The version string clients parse: drivers look for "PostgreSQL 8.0.2" as they do on
/// Redshift.
pub const VERSION: &str = concat!(
    "PostgreSQL 8.0.2 on x86_64-pc-linux-gnu, compiled by rustc, Tributary ",
    env!("CARGO_PKG_VERSION")
);

const TIMESTAMP: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

pub fn register(
    context: &SessionContext,
    user: &str,
    namespace: uuid::Uuid,
    clock: &StatementClock,
) {
    for name in ["getdate", "sysdate"] {
        let clock = clock.clone();
        let function = move |_: &[ColumnarValue]| -> DfResult<ColumnarValue> {
            Ok(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(
                Some(clock.now_micros()),
                None,
            )))
        };
        context.register_udf(create_udf(
            name,
            vec![],
            TIMESTAMP,
            Volatility::Stable,
            Arc::new(function),
        ));
    }
    register_constant(context, "version", VERSION.to_string());
    for name in [
        "current_user",
        "session_user",
        "user",
        "current_user_id_name",
    ] {
        register_constant(context, name, user.to_string());
    }
    register_constant(context, "current_namespace", namespace.to_string());
    context.register_udf(ScalarUDF::new_from_impl(Coercing::new(
        "format_encoding",
        vec![DataType::Int32],
        DataType::Utf8,
        encoding_name,
    )));
    context.register_udf(ScalarUDF::new_from_impl(Coercing::new(
        "col_description",
        vec![DataType::Int64, DataType::Int32],
        DataType::Utf8,
        null_text,
    )));
    context.register_udtf(
        "pg_get_late_binding_view_cols",
        Arc::new(LateBindingViewColumns),
    );
    // View definitions are not exposed through pg_catalog yet; NULL is what Postgres returns
    // for an OID that is not a view.
    let null_text = |_: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    };
    context.register_udf(ScalarUDF::new_from_impl(Coercing::new(
        "pg_get_viewdef",
        vec![DataType::Int64, DataType::Boolean],
        DataType::Utf8,
        null_text,
    )));
    let len = datafusion::functions::unicode::character_length()
        .as_ref()
        .clone()
        .with_aliases(["len"]);
    context.register_udf(len);
    crate::json::register(context);
    for (name, inputs, output, function) in [
        (
            "dateadd",
            vec![DataType::Utf8, DataType::Int64, TIMESTAMP],
            TIMESTAMP,
            dateadd as Kernel,
        ),
        (
            "datediff",
            vec![DataType::Utf8, TIMESTAMP, TIMESTAMP],
            DataType::Int64,
            datediff as Kernel,
        ),
        (
            "convert_timezone",
            vec![DataType::Utf8, DataType::Utf8, TIMESTAMP],
            TIMESTAMP,
            convert_timezone as Kernel,
        ),
    ] {
        context.register_udf(ScalarUDF::new_from_impl(Coercing::new(
            name, inputs, output, function,
        )));
    }
}

/// NULL text: view definitions and column comments are not exposed through pg_catalog yet;
/// NULL is what Postgres returns where there is none.
fn null_text(_: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
}

/// Redshift's `format_encoding(attencodingtype)`: the name of a column's compression encoding.
/// Encodings are recorded but not applied (Parquet chooses its own), so every column is "none".
fn encoding_name(_: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
        "none".to_string(),
    ))))
}

/// Redshift's `pg_get_late_binding_view_cols()`: columns of views created WITH NO SCHEMA
/// BINDING. Tributary's views are always bound, so the function returns no rows.
#[derive(Debug)]
struct LateBindingViewColumns;

impl datafusion::catalog::TableFunctionImpl for LateBindingViewColumns {
    fn call_with_args(
        &self,
        _args: datafusion::catalog::TableFunctionArgs,
    ) -> DfResult<Arc<dyn datafusion::catalog::TableProvider>> {
        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_schema", DataType::Utf8, true),
            Field::new("view_name", DataType::Utf8, true),
            Field::new("col_name", DataType::Utf8, true),
            Field::new("col_type", DataType::Utf8, true),
            Field::new("col_num", DataType::Int32, true),
        ]));
        Ok(Arc::new(datafusion::catalog::MemTable::try_new(
            schema,
            vec![vec![]],
        )?))
    }
}

type Kernel = fn(&[ColumnarValue]) -> DfResult<ColumnarValue>;

/// A function with fixed argument types that casts what it is given to them, as SQL does for
/// string literals passed where a timestamp is expected.
// Equality by name is what DataFusion needs (one function per name); the kernel pointer is
// not compared.
#[derive(Debug)]
struct Coercing {
    name: &'static str,
    inputs: Vec<DataType>,
    output: DataType,
    signature: Signature,
    kernel: Kernel,
}

impl Coercing {
    fn new(name: &'static str, inputs: Vec<DataType>, output: DataType, kernel: Kernel) -> Self {
        Self {
            name,
            inputs,
            output,
            signature: Signature::user_defined(Volatility::Immutable),
            kernel,
        }
    }
}

impl PartialEq for Coercing {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.inputs == other.inputs
    }
}

impl Eq for Coercing {}

impl std::hash::Hash for Coercing {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for Coercing {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.output.clone())
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        if args.len() != self.inputs.len() {
            return exec_err!(
                "{} takes {} arguments, got {}",
                self.name,
                self.inputs.len(),
                args.len()
            );
        }
        Ok(self.inputs.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        (self.kernel)(&args.args)
    }
}

fn register_constant(context: &SessionContext, name: &str, value: String) {
    let function = move |_: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            value.clone(),
        ))))
    };
    context.register_udf(create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(function),
    ));
}

/// The start time of the running statement, in microseconds since the epoch; 0 when unset.
/// A session sets it before each statement, so `getdate()` and `sysdate` give one value for
/// the whole statement, as in Redshift.
#[derive(Debug, Default, Clone)]
pub struct StatementClock(Arc<AtomicI64>);

impl StatementClock {
    pub fn start_statement(&self) {
        self.0
            .store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    fn now_micros(&self) -> i64 {
        match self.0.load(Ordering::Relaxed) {
            0 => chrono::Utc::now().timestamp_micros(),
            micros => micros,
        }
    }
}

/// Date parts as Redshift spells them, with their abbreviations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatePart {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
    Microsecond,
}

fn date_part(name: &str) -> DfResult<DatePart> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "year" | "years" | "y" | "yr" | "yrs" | "yy" | "yyyy" => DatePart::Year,
        "quarter" | "quarters" | "qtr" | "qtrs" | "q" => DatePart::Quarter,
        "month" | "months" | "mon" | "mons" | "mm" => DatePart::Month,
        "week" | "weeks" | "w" | "wk" | "wks" => DatePart::Week,
        "day" | "days" | "d" | "dd" => DatePart::Day,
        "hour" | "hours" | "h" | "hr" | "hrs" | "hh" => DatePart::Hour,
        "minute" | "minutes" | "m" | "min" | "mins" | "mi" => DatePart::Minute,
        "second" | "seconds" | "s" | "sec" | "secs" => DatePart::Second,
        "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" | "msecond" | "mseconds" => {
            DatePart::Millisecond
        }
        "microsecond" | "microseconds" | "us" | "usec" | "usecs" | "microsec" | "microsecs" => {
            DatePart::Microsecond
        }
        other => return exec_err!("unsupported date part \"{other}\""),
    })
}

fn naive(micros: i64) -> DfResult<NaiveDateTime> {
    DateTime::from_timestamp_micros(micros)
        .map(|d| d.naive_utc())
        .ok_or_else(|| {
            datafusion::error::DataFusionError::Execution(format!(
                "timestamp out of range: {micros}"
            ))
        })
}

fn add(part: DatePart, amount: i64, at: NaiveDateTime) -> Option<NaiveDateTime> {
    let months = |n: i64| -> Option<NaiveDateTime> {
        if n >= 0 {
            at.checked_add_months(Months::new(n as u32))
        } else {
            at.checked_sub_months(Months::new((-n) as u32))
        }
    };
    match part {
        DatePart::Year => months(amount.checked_mul(12)?),
        DatePart::Quarter => months(amount.checked_mul(3)?),
        DatePart::Month => months(amount),
        DatePart::Week => at.checked_add_signed(Duration::try_weeks(amount)?),
        DatePart::Day => at.checked_add_signed(Duration::try_days(amount)?),
        DatePart::Hour => at.checked_add_signed(Duration::try_hours(amount)?),
        DatePart::Minute => at.checked_add_signed(Duration::try_minutes(amount)?),
        DatePart::Second => at.checked_add_signed(Duration::try_seconds(amount)?),
        DatePart::Millisecond => at.checked_add_signed(Duration::try_milliseconds(amount)?),
        DatePart::Microsecond => at.checked_add_signed(Duration::microseconds(amount)),
    }
}

/// The number of `part` boundaries between two instants, as Redshift counts them.
fn diff(part: DatePart, start: NaiveDateTime, end: NaiveDateTime) -> i64 {
    let months = |d: NaiveDateTime| d.year() as i64 * 12 + d.month0() as i64;
    let floor = |micros: i64, unit: i64| micros.div_euclid(unit);
    let (a, b) = (
        start.and_utc().timestamp_micros(),
        end.and_utc().timestamp_micros(),
    );
    match part {
        DatePart::Year => end.year() as i64 - start.year() as i64,
        DatePart::Quarter => months(end) / 3 - months(start) / 3,
        DatePart::Month => months(end) - months(start),
        DatePart::Week => {
            // Weeks start on Monday.
            let monday = |d: NaiveDateTime| {
                d.date().num_days_from_ce() as i64 - d.weekday().num_days_from_monday() as i64
            };
            (monday(end) - monday(start)) / 7
        }
        DatePart::Day => {
            end.date().num_days_from_ce() as i64 - start.date().num_days_from_ce() as i64
        }
        DatePart::Hour => floor(b, 3_600_000_000) - floor(a, 3_600_000_000),
        DatePart::Minute => floor(b, 60_000_000) - floor(a, 60_000_000),
        DatePart::Second => floor(b, 1_000_000) - floor(a, 1_000_000),
        DatePart::Millisecond => floor(b, 1_000) - floor(a, 1_000),
        DatePart::Microsecond => b - a,
    }
}

fn to_arrays(args: &[ColumnarValue]) -> DfResult<(Vec<ArrayRef>, usize)> {
    let rows = args
        .iter()
        .find_map(|a| match a {
            ColumnarValue::Array(array) => Some(array.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1);
    let arrays = args
        .iter()
        .map(|a| a.clone().into_array(rows))
        .collect::<DfResult<Vec<_>>>()?;
    Ok((arrays, rows))
}

fn finish(array: ArrayRef, scalar_input: bool) -> DfResult<ColumnarValue> {
    if scalar_input {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

fn all_scalar(args: &[ColumnarValue]) -> bool {
    args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)))
}

fn dateadd(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let (arrays, rows) = to_arrays(args)?;
    let parts = arrays[0].as_string::<i32>();
    let amounts = arrays[1].as_primitive::<arrow::datatypes::Int64Type>();
    let times = arrays[2].as_primitive::<TimestampMicrosecondType>();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if parts.is_null(row) || amounts.is_null(row) || times.is_null(row) {
            out.push(None);
            continue;
        }
        let part = date_part(parts.value(row))?;
        let result = add(part, amounts.value(row), naive(times.value(row))?).ok_or_else(|| {
            datafusion::error::DataFusionError::Execution("dateadd: result out of range".into())
        })?;
        out.push(Some(result.and_utc().timestamp_micros()));
    }
    finish(
        Arc::new(TimestampMicrosecondArray::from(out)),
        all_scalar(args),
    )
}

fn datediff(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let (arrays, rows) = to_arrays(args)?;
    let parts = arrays[0].as_string::<i32>();
    let starts = arrays[1].as_primitive::<TimestampMicrosecondType>();
    let ends = arrays[2].as_primitive::<TimestampMicrosecondType>();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if parts.is_null(row) || starts.is_null(row) || ends.is_null(row) {
            out.push(None);
            continue;
        }
        let part = date_part(parts.value(row))?;
        out.push(Some(diff(
            part,
            naive(starts.value(row))?,
            naive(ends.value(row))?,
        )));
    }
    finish(Arc::new(Int64Array::from(out)), all_scalar(args))
}

/// convert_timezone(source, target, timestamp): reads a local time of `source` and gives the
/// local time of `target` for the same instant.
fn convert_timezone(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let (arrays, rows) = to_arrays(args)?;
    let sources = arrays[0].as_string::<i32>();
    let targets = arrays[1].as_string::<i32>();
    let times = arrays[2].as_primitive::<TimestampMicrosecondType>();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if sources.is_null(row) || targets.is_null(row) || times.is_null(row) {
            out.push(None);
            continue;
        }
        let source = timezone(sources.value(row))?;
        let target = timezone(targets.value(row))?;
        let local = naive(times.value(row))?;
        let instant = source
            .from_local_datetime(&local)
            .earliest()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Execution(format!(
                    "{local} does not exist in {}",
                    sources.value(row)
                ))
            })?;
        let converted = instant.with_timezone(&target).naive_local();
        out.push(Some(converted.and_utc().timestamp_micros()));
    }
    finish(
        Arc::new(TimestampMicrosecondArray::from(out)),
        all_scalar(args),
    )
}

fn timezone(name: &str) -> DfResult<arrow::array::timezone::Tz> {
    let canonical = match name.to_ascii_uppercase().as_str() {
        "UTC" | "GMT" | "Z" => "+00:00".to_string(),
        _ => name.to_string(),
    };
    canonical
        .parse::<arrow::array::timezone::Tz>()
        .map_err(|_| {
            datafusion::error::DataFusionError::Execution(format!(
                "time zone \"{name}\" not recognized"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn check_diff(part: &str, start: &str, end: &str, expected: i64) {
        assert_eq!(
            diff(date_part(part).unwrap(), at(start), at(end)),
            expected,
            "{part} {start} {end}"
        );
    }

    #[test]
    fn datediff_counts_boundaries() {
        check_diff("day", "2024-01-01 23:00:00", "2024-01-02 01:00:00", 1);
        check_diff("month", "2024-01-31 00:00:00", "2024-02-01 00:00:00", 1);
        check_diff("year", "2023-12-31 00:00:00", "2024-01-01 00:00:00", 1);
        check_diff("hour", "2024-01-01 10:59:00", "2024-01-01 11:00:00", 1);
        check_diff("week", "2024-01-07 00:00:00", "2024-01-08 00:00:00", 1);
        check_diff("qtr", "2024-03-31 00:00:00", "2024-04-01 00:00:00", 1);
    }

    #[test]
    fn dateadd_clamps_month_ends() {
        let result = add(DatePart::Month, 1, at("2024-01-31 12:00:00")).unwrap();
        assert_eq!(result, at("2024-02-29 12:00:00"));
        assert!(date_part("fortnight").is_err());
    }
}
