//! The SUPER functions: Redshift's (JSON_SERIALIZE, JSON_TYPEOF, JSON_SIZE, the IS_* tests,
//! ARRAY, GET_ARRAY_LENGTH, JSON_EXTRACT_ARRAY_ELEMENT_TEXT, JSON_ARRAY_LENGTH, TO_VARBYTE), and
//! the internal ones the planner and the FROM rewrite call for navigation, casts and unnesting
//! (named `__tributary_*`; users never write them).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int32Array, Int64Array, ListArray,
    StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use super::value::{self, Kind as JsonKind, Step};
use super::{super_field, to_super_text};
use crate::error::DataErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    // Internal.
    Get,
    Mark,
    ToSuper,
    Text,
    Int,
    Bool,
    Elements,
    Indexes,
    Values,
    Keys,
    // Redshift's.
    Serialize,
    TypeOf,
    Size,
    IsArray,
    IsObject,
    IsScalar,
    IsVarchar,
    IsInteger,
    IsBigint,
    IsDecimal,
    IsFloat,
    IsBoolean,
    Array,
    GetArrayLength,
    ExtractArrayElementText,
    ArrayLength,
    ToVarbyte,
}

pub use tributary_syntax::functions::{ELEMENTS, INDEXES, KEYS, MARK, VALUES};

pub const GET: &str = "__tributary_super_get";
pub const TO_SUPER: &str = "__tributary_to_super";
pub const TEXT: &str = "__tributary_super_text";
pub const INT: &str = "__tributary_super_int";
pub const BOOL: &str = "__tributary_super_bool";

const ALL: &[Kind] = &[
    Kind::Get,
    Kind::Mark,
    Kind::ToSuper,
    Kind::Text,
    Kind::Int,
    Kind::Bool,
    Kind::Elements,
    Kind::Indexes,
    Kind::Values,
    Kind::Keys,
    Kind::Serialize,
    Kind::TypeOf,
    Kind::Size,
    Kind::IsArray,
    Kind::IsObject,
    Kind::IsScalar,
    Kind::IsVarchar,
    Kind::IsInteger,
    Kind::IsBigint,
    Kind::IsDecimal,
    Kind::IsFloat,
    Kind::IsBoolean,
    Kind::Array,
    Kind::GetArrayLength,
    Kind::ExtractArrayElementText,
    Kind::ArrayLength,
    Kind::ToVarbyte,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Get => GET,
            Kind::Mark => MARK,
            Kind::ToSuper => TO_SUPER,
            Kind::Text => TEXT,
            Kind::Int => INT,
            Kind::Bool => BOOL,
            Kind::Elements => ELEMENTS,
            Kind::Indexes => INDEXES,
            Kind::Values => VALUES,
            Kind::Keys => KEYS,
            Kind::Serialize => "json_serialize",
            Kind::TypeOf => "json_typeof",
            Kind::Size => "json_size",
            Kind::IsArray => "is_array",
            Kind::IsObject => "is_object",
            Kind::IsScalar => "is_scalar",
            Kind::IsVarchar => "is_varchar",
            Kind::IsInteger => "is_integer",
            Kind::IsBigint => "is_bigint",
            Kind::IsDecimal => "is_decimal",
            Kind::IsFloat => "is_float",
            Kind::IsBoolean => "is_boolean",
            Kind::Array => "array",
            Kind::GetArrayLength => "get_array_length",
            Kind::ExtractArrayElementText => "json_extract_array_element_text",
            Kind::ArrayLength => "json_array_length",
            Kind::ToVarbyte => "to_varbyte",
        }
    }

    /// Functions whose first argument is a SUPER value: a non-SUPER argument is converted as
    /// Redshift converts it (a string becomes a SUPER string), not read as JSON text.
    pub fn takes_super(name: &str) -> bool {
        ALL.iter().any(|k| {
            k.name() == name
                && matches!(
                    k,
                    Kind::Serialize
                        | Kind::TypeOf
                        | Kind::Size
                        | Kind::IsArray
                        | Kind::IsObject
                        | Kind::IsScalar
                        | Kind::IsVarchar
                        | Kind::IsInteger
                        | Kind::IsBigint
                        | Kind::IsDecimal
                        | Kind::IsFloat
                        | Kind::IsBoolean
                        | Kind::GetArrayLength
                )
        })
    }

    fn output(self) -> DataType {
        match self {
            Kind::Get | Kind::Mark | Kind::ToSuper | Kind::Array => DataType::Utf8,
            Kind::Text | Kind::Serialize | Kind::TypeOf | Kind::ExtractArrayElementText => {
                DataType::Utf8
            }
            Kind::Int | Kind::GetArrayLength => DataType::Int64,
            Kind::Size | Kind::ArrayLength => DataType::Int32,
            Kind::Elements | Kind::Values => DataType::List(super_field("item")),
            Kind::Indexes => DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
            Kind::Keys => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            Kind::ToVarbyte => DataType::Binary,
            _ => DataType::Boolean,
        }
    }

    fn returns_super(self) -> bool {
        matches!(self, Kind::Get | Kind::Mark | Kind::ToSuper | Kind::Array)
    }
}

pub fn udf(kind: Kind) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(SuperFunction {
        kind,
        signature: Signature::variadic_any(Volatility::Immutable),
    }))
}

pub fn register(context: &SessionContext) {
    for kind in ALL {
        context.register_udf(udf(*kind).as_ref().clone());
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SuperFunction {
    kind: Kind,
    signature: Signature,
}

fn data_error(message: String) -> DataFusionError {
    crate::json::data_error(DataErrorKind::InvalidText, message)
}

impl ScalarUDFImpl for SuperFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.kind.output())
    }

    /// A path is named as written (`data.after.first_name`), so that two paths never share a
    /// name inside an expression; a select item is named after its last key by
    /// the PartiQL rewrite (`from::name_paths`). The SUPER marker is invisible.
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        match (self.kind, args.split_first()) {
            (Kind::Get, Some((root, steps))) => {
                let mut name = root.schema_name().to_string();
                for step in steps {
                    match step {
                        Expr::Literal(ScalarValue::Utf8(Some(key)), _) => {
                            name.push('.');
                            name.push_str(key);
                        }
                        other => name.push_str(&format!("[{}]", other.schema_name())),
                    }
                }
                Ok(name)
            }
            (Kind::Mark, Some((inner, []))) => Ok(inner.schema_name().to_string()),
            _ => Ok(format!(
                "{}({})",
                self.name(),
                args.iter()
                    .map(|a| a.schema_name().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let count = args.arg_fields.len();
        let expected = match self.kind {
            Kind::Get => 2..=usize::MAX,
            Kind::Elements | Kind::Indexes | Kind::Values | Kind::Keys | Kind::ToVarbyte => 2..=2,
            Kind::ExtractArrayElementText => 2..=3,
            Kind::ArrayLength => 1..=2,
            Kind::Array => 0..=usize::MAX,
            _ => 1..=1,
        };
        if !expected.contains(&count) {
            return exec_err!("function {} does not take {count} arguments", self.name());
        }
        Ok(if self.kind.returns_super() {
            super_field(self.name())
        } else {
            Arc::new(Field::new(self.name(), self.kind.output(), true))
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = args.number_rows;
        let result = if self.kind == Kind::Get {
            navigate(&args.args, rows)?
        } else {
            self.evaluate(
                &ColumnarValue::values_to_arrays(&args.args)?,
                rows,
                &args.arg_fields,
            )?
        };
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

/// The values of an argument as text (SUPER values are their JSON text).
fn texts(array: &ArrayRef) -> DfResult<StringArray> {
    Ok(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
}

fn map_text<T>(array: &ArrayRef, f: impl Fn(&str) -> Option<T>) -> DfResult<Vec<Option<T>>> {
    Ok(texts(array)?.iter().map(|v| v.and_then(&f)).collect())
}

fn flag(arrays: &[ArrayRef], index: usize, row: usize) -> DfResult<bool> {
    match arrays.get(index) {
        None => Ok(false),
        Some(array) => {
            let array = cast(array, &DataType::Boolean)?;
            let array = array.as_boolean();
            Ok(array.is_valid(row) && array.value(row))
        }
    }
}

impl SuperFunction {
    fn evaluate(
        &self,
        arrays: &[ArrayRef],
        rows: usize,
        fields: &[FieldRef],
    ) -> DfResult<ArrayRef> {
        let first = || {
            arrays
                .first()
                .cloned()
                .ok_or_else(|| data_error("missing argument".into()))
        };
        Ok(match self.kind {
            Kind::Get => {
                let args: Vec<ColumnarValue> =
                    arrays.iter().cloned().map(ColumnarValue::Array).collect();
                navigate(&args, rows)?
            }
            Kind::Mark => cast(&first()?, &DataType::Utf8)?,
            Kind::ToSuper => to_super_text(&first()?)?,
            Kind::Text => Arc::new(StringArray::from(map_text(&first()?, |v| {
                value::scalar_text(v).map(|t| t.into_owned())
            })?)),
            Kind::Int => Arc::new(Int64Array::from(map_text(&first()?, super_int)?)),
            Kind::Bool => Arc::new(BooleanArray::from(map_text(&first()?, super_bool)?)),
            Kind::Elements | Kind::Values => {
                let outer = flag(arrays, 1, 0)?;
                let want_values = self.kind == Kind::Values;
                unnest_list(
                    &first()?,
                    outer,
                    |v| {
                        if want_values {
                            value::entries(v)
                                .map(|e| e.into_iter().map(|(_, v)| v.to_string()).collect())
                        } else {
                            value::elements(v).map(|e| e.into_iter().map(str::to_string).collect())
                        }
                    },
                    super_field("item"),
                )?
            }
            Kind::Keys => {
                let outer = flag(arrays, 1, 0)?;
                unnest_list(
                    &first()?,
                    outer,
                    |v| value::entries(v).map(|e| e.into_iter().map(|(k, _)| k).collect()),
                    Arc::new(Field::new("item", DataType::Utf8, true)),
                )?
            }
            Kind::Indexes => {
                let outer = flag(arrays, 1, 0)?;
                let counts = map_text(&first()?, |v| value::elements(v).map(|e| e.len()))?;
                let mut offsets = vec![0i32];
                let mut values: Vec<Option<i32>> = Vec::new();
                for count in counts {
                    match count {
                        Some(n) if n > 0 => values.extend((0..n as i32).map(Some)),
                        _ if outer => values.push(None),
                        _ => {}
                    }
                    offsets.push(values.len() as i32);
                }
                Arc::new(ListArray::try_new(
                    Arc::new(Field::new("item", DataType::Int32, true)),
                    OffsetBuffer::new(offsets.into()),
                    Arc::new(Int32Array::from(values)),
                    None,
                )?)
            }
            Kind::Serialize => cast(&first()?, &DataType::Utf8)?,
            Kind::TypeOf => Arc::new(StringArray::from(map_text(&first()?, |v| {
                value::kind(v).map(|k| k.name())
            })?)),
            Kind::Size => Arc::new(Int32Array::from(map_text(&first()?, |v| {
                Some(v.len() as i32)
            })?)),
            Kind::IsArray => is(arrays, |v| value::kind(v) == Some(JsonKind::Array))?,
            Kind::IsObject => is(arrays, |v| value::kind(v) == Some(JsonKind::Object))?,
            Kind::IsScalar => is(arrays, |v| {
                !matches!(value::kind(v), Some(JsonKind::Array | JsonKind::Object))
            })?,
            Kind::IsVarchar => is(arrays, |v| value::kind(v) == Some(JsonKind::String))?,
            Kind::IsInteger => is(arrays, |v| value::is_integer(v) && v.parse::<i32>().is_ok())?,
            Kind::IsBigint => is(arrays, |v| value::is_integer(v) && v.parse::<i64>().is_ok())?,
            Kind::IsDecimal => is(arrays, |v| {
                value::kind(v) == Some(JsonKind::Number) && !v.contains(['e', 'E'])
            })?,
            Kind::IsFloat => is(arrays, |v| {
                value::kind(v) == Some(JsonKind::Number) && v.contains(['e', 'E'])
            })?,
            Kind::IsBoolean => is(arrays, |v| value::kind(v) == Some(JsonKind::Boolean))?,
            Kind::Array => array_constructor(arrays, rows, fields)?,
            Kind::GetArrayLength => Arc::new(Int64Array::from(map_text(&first()?, |v| {
                value::elements(v).map(|e| e.len() as i64)
            })?)),
            Kind::ExtractArrayElementText => extract_array_element_text(arrays)?,
            Kind::ArrayLength => array_length(arrays)?,
            Kind::ToVarbyte => to_varbyte(arrays)?,
        })
    }
}

/// `__tributary_super_get(value, step, ...)`: a string step is a key, an integer an index.
fn navigate(args: &[ColumnarValue], rows: usize) -> DfResult<ArrayRef> {
    let documents = texts(&args[0].to_array(rows)?)?;
    let steps: Vec<StepColumn> = args[1..]
        .iter()
        .map(|a| StepColumn::new(&a.to_array(rows)?))
        .collect::<DfResult<_>>()?;
    // Steps are constants in almost every query: resolve them once.
    let constant = args[1..]
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        .then(|| steps.iter().map(|s| s.at(0)).collect::<Option<Vec<Step>>>());
    let mut row_path = Vec::with_capacity(steps.len());
    let out: StringArray = documents
        .iter()
        .enumerate()
        .map(|(row, document)| {
            let path = match &constant {
                Some(path) => path.as_ref()?,
                None => {
                    row_path.clear();
                    for step in &steps {
                        row_path.push(step.at(row)?);
                    }
                    &row_path
                }
            };
            document.and_then(|d| value::navigate(d, path))
        })
        .collect();
    Ok(Arc::new(out))
}

/// One step argument, converted once per batch: integers are indexes, anything else keys.
enum StepColumn {
    Index(arrow::array::Int64Array),
    Key(StringArray),
}

impl StepColumn {
    fn new(array: &ArrayRef) -> DfResult<Self> {
        Ok(if array.data_type().is_integer() {
            let indexes = cast(array, &DataType::Int64)?;
            StepColumn::Index(
                indexes
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .clone(),
            )
        } else {
            StepColumn::Key(texts(array)?)
        })
    }

    fn at(&self, row: usize) -> Option<Step> {
        match self {
            StepColumn::Index(a) => a.is_valid(row).then(|| Step::Index(a.value(row))),
            StepColumn::Key(a) => a.is_valid(row).then(|| Step::Key(a.value(row).to_string())),
        }
    }
}

fn super_int(v: &str) -> Option<i64> {
    let text = value::scalar_text(v)?;
    let text = text.trim();
    if let Ok(i) = text.parse::<i64>() {
        return Some(i);
    }
    match text {
        "true" if value::kind(v) == Some(JsonKind::Boolean) => return Some(1),
        "false" if value::kind(v) == Some(JsonKind::Boolean) => return Some(0),
        _ => {}
    }
    let float = text.parse::<f64>().ok()?;
    let rounded = float.round();
    (rounded.is_finite() && rounded.abs() < 9.2e18).then_some(rounded as i64)
}

fn super_bool(v: &str) -> Option<bool> {
    match value::kind(v)? {
        JsonKind::Boolean => Some(v.starts_with('t')),
        JsonKind::Number if value::is_integer(v) => v.parse::<i64>().ok().map(|i| i != 0),
        JsonKind::String => match value::scalar_text(v)?.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Some(true),
            "false" | "f" | "no" | "n" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn is(arrays: &[ArrayRef], test: impl Fn(&str) -> bool) -> DfResult<ArrayRef> {
    Ok(Arc::new(BooleanArray::from(map_text(&arrays[0], |v| {
        Some(test(v))
    })?)))
}

/// One list per row; `outer` turns a missing, empty or non-container value into one NULL
/// element, so that a LEFT JOIN keeps the row.
fn unnest_list(
    array: &ArrayRef,
    outer: bool,
    items: impl Fn(&str) -> Option<Vec<String>>,
    field: FieldRef,
) -> DfResult<ArrayRef> {
    let mut offsets = vec![0i32];
    let mut values: Vec<Option<String>> = Vec::new();
    for document in texts(array)?.iter() {
        match document.and_then(&items) {
            Some(list) if !list.is_empty() => values.extend(list.into_iter().map(Some)),
            _ if outer => values.push(None),
            _ => {}
        }
        offsets.push(values.len() as i32);
    }
    Ok(Arc::new(ListArray::try_new(
        field,
        OffsetBuffer::new(offsets.into()),
        Arc::new(StringArray::from(values)),
        None,
    )?))
}

/// ARRAY(v1, v2, ...): a SUPER array of the arguments, each converted to SUPER.
fn array_constructor(arrays: &[ArrayRef], rows: usize, fields: &[FieldRef]) -> DfResult<ArrayRef> {
    let converted: Vec<StringArray> = arrays
        .iter()
        .zip(fields)
        .map(|(a, f)| {
            let text = if super::is_super(f) {
                cast(a, &DataType::Utf8)?
            } else {
                to_super_text(a)?
            };
            Ok(text.as_string::<i32>().clone())
        })
        .collect::<DfResult<_>>()?;
    let rows = converted.first().map_or(rows, |a| a.len());
    let out: StringArray = (0..rows)
        .map(|row| {
            let items: Vec<&str> = converted
                .iter()
                .map(|a| if a.is_null(row) { "null" } else { a.value(row) })
                .collect();
            Some(format!("[{}]", items.join(",")))
        })
        .collect();
    Ok(Arc::new(out))
}

fn parse_or_error(text: &str, null_if_invalid: bool) -> DfResult<Option<()>> {
    match value::validate(text) {
        Ok(()) => Ok(Some(())),
        Err(_) if null_if_invalid => Ok(None),
        Err(e) => Err(data_error(e.to_string())),
    }
}

fn extract_array_element_text(arrays: &[ArrayRef]) -> DfResult<ArrayRef> {
    let documents = texts(&arrays[0])?;
    let positions = cast(&arrays[1], &DataType::Int64)?;
    let positions = positions.as_primitive::<arrow::datatypes::Int64Type>();
    let mut out = Vec::with_capacity(documents.len());
    for (row, document) in documents.iter().enumerate() {
        let (Some(document), true) = (document, positions.is_valid(row)) else {
            out.push(None);
            continue;
        };
        if parse_or_error(document, flag(arrays, 2, row)?)?.is_none() {
            out.push(None);
            continue;
        }
        let element = value::elements(document).and_then(|e| {
            usize::try_from(positions.value(row))
                .ok()
                .and_then(|i| e.get(i).copied())
        });
        out.push(element.and_then(|e| {
            value::scalar_text(e)
                .map(|t| t.into_owned())
                .or_else(|| (value::kind(e) != Some(JsonKind::Null)).then(|| e.to_string()))
        }));
    }
    Ok(Arc::new(StringArray::from(out)))
}

fn array_length(arrays: &[ArrayRef]) -> DfResult<ArrayRef> {
    let documents = texts(&arrays[0])?;
    let mut out = Vec::with_capacity(documents.len());
    for (row, document) in documents.iter().enumerate() {
        let Some(document) = document else {
            out.push(None);
            continue;
        };
        let null_if_invalid = flag(arrays, 1, row)?;
        if parse_or_error(document, null_if_invalid)?.is_none() {
            out.push(None);
            continue;
        }
        match value::elements(document) {
            Some(elements) => out.push(Some(elements.len() as i32)),
            None if null_if_invalid => out.push(None),
            None => {
                return Err(data_error(format!(
                    "JSON_ARRAY_LENGTH: {document} is not a JSON array"
                )));
            }
        }
    }
    Ok(Arc::new(Int32Array::from(out)))
}

fn to_varbyte(arrays: &[ArrayRef]) -> DfResult<ArrayRef> {
    let values = texts(&arrays[0])?;
    let formats = texts(&arrays[1])?;
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(values.len());
    for (value, format) in values.iter().zip(formats.iter()) {
        let (Some(value), Some(format)) = (value, format) else {
            out.push(None);
            continue;
        };
        out.push(Some(match format.to_ascii_lowercase().as_str() {
            "utf8" | "utf-8" => value.as_bytes().to_vec(),
            "hex" => {
                if value.len() % 2 != 0 {
                    return Err(data_error(format!("TO_VARBYTE: odd number of hex digits in '{value}'")));
                }
                (0..value.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&value[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| data_error(format!("TO_VARBYTE: '{value}' is not hexadecimal")))?
            }
            "binary" => {
                if value.len() % 8 != 0 {
                    return Err(data_error(format!("TO_VARBYTE: '{value}' is not a whole number of bytes")));
                }
                (0..value.len())
                    .step_by(8)
                    .map(|i| u8::from_str_radix(&value[i..i + 8], 2))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| data_error(format!("TO_VARBYTE: '{value}' is not binary")))?
            }
            other => {
                return Err(crate::json::data_error(
                    DataErrorKind::Other,
                    format!("TO_VARBYTE does not support the format '{other}' (use 'utf8', 'hex' or 'binary')"),
                ));
            }
        }));
    }
    Ok(Arc::new(BinaryArray::from_iter(out)))
}
