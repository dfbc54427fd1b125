//! The JSON and VARBYTE functions streaming views use on record payloads: FROM_VARBYTE,
//! IS_UTF8, JSON_PARSE, CAN_JSON_PARSE, IS_VALID_JSON, IS_VALID_JSON_ARRAY and
//! JSON_EXTRACT_PATH_TEXT, with Redshift's semantics (NULL in, NULL out; a missing path is
//! NULL; malformed input is a data error naming the position, unless the function only tests).
//!
//! A SUPER value is carried as JSON text; JSON_PARSE marks its result field with
//! [`tributary_catalog::SQL_TYPE_METADATA`] so that a view or CTAS column built from it is
//! declared SUPER.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::exec_err;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use crate::error::{DataErrorKind, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    FromVarbyte,
    IsUtf8,
    JsonParse,
    CanJsonParse,
    IsValidJson,
    IsValidJsonArray,
    JsonExtractPathText,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::FromVarbyte => "from_varbyte",
            Kind::IsUtf8 => "is_utf8",
            Kind::JsonParse => "json_parse",
            Kind::CanJsonParse => "can_json_parse",
            Kind::IsValidJson => "is_valid_json",
            Kind::IsValidJsonArray => "is_valid_json_array",
            Kind::JsonExtractPathText => "json_extract_path_text",
        }
    }

    fn output(self) -> DataType {
        match self {
            Kind::FromVarbyte | Kind::JsonParse | Kind::JsonExtractPathText => DataType::Utf8,
            _ => DataType::Boolean,
        }
    }
}

pub fn register(context: &SessionContext) {
    for kind in [
        Kind::FromVarbyte,
        Kind::IsUtf8,
        Kind::JsonParse,
        Kind::CanJsonParse,
        Kind::IsValidJson,
        Kind::IsValidJsonArray,
        Kind::JsonExtractPathText,
    ] {
        context.register_udf(ScalarUDF::new_from_impl(JsonFunction {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }));
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFunction {
    kind: Kind,
    signature: Signature,
}

fn is_binary(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

impl ScalarUDFImpl for JsonFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.kind.output())
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let field = Field::new(self.name(), self.kind.output(), true);
        Ok(Arc::new(if self.kind == Kind::JsonParse {
            field.with_metadata(HashMap::from([(
                tributary_catalog::SQL_TYPE_METADATA.to_string(),
                "super".to_string(),
            )]))
        } else {
            field
        }))
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        let name = self.name();
        let text_or_bytes = |t: &DataType| {
            if is_binary(t) {
                DataType::Binary
            } else {
                DataType::Utf8
            }
        };
        match self.kind {
            Kind::FromVarbyte if args.len() == 2 => Ok(vec![DataType::Binary, DataType::Utf8]),
            Kind::IsUtf8 if args.len() == 1 => Ok(vec![DataType::Binary]),
            Kind::JsonParse | Kind::CanJsonParse if args.len() == 1 => {
                Ok(vec![text_or_bytes(&args[0])])
            }
            Kind::IsValidJson | Kind::IsValidJsonArray if args.len() == 1 => {
                Ok(vec![DataType::Utf8])
            }
            Kind::JsonExtractPathText if args.len() >= 2 => {
                let mut types = vec![DataType::Utf8; args.len()];
                if args.len() >= 3 && args[args.len() - 1] == DataType::Boolean {
                    types[args.len() - 1] = DataType::Boolean;
                }
                Ok(types)
            }
            _ => exec_err!("function {name} does not take {} arguments", args.len()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let result: ArrayRef = match self.kind {
            Kind::FromVarbyte => from_varbyte(&arrays)?,
            Kind::IsUtf8 => {
                let bytes = arrays[0].as_binary::<i32>();
                Arc::new(
                    bytes
                        .iter()
                        .map(|b| b.map(|b| std::str::from_utf8(b).is_ok()))
                        .collect::<BooleanArray>(),
                )
            }
            Kind::JsonParse => json_parse(&arrays[0])?,
            Kind::CanJsonParse => Arc::new(
                texts(&arrays[0])?
                    .into_iter()
                    .map(|t| t.map(|t| crate::partiql::value::validate(&t).is_ok()))
                    .collect::<BooleanArray>(),
            ),
            Kind::IsValidJson | Kind::IsValidJsonArray => {
                let want_array = self.kind == Kind::IsValidJsonArray;
                Arc::new(
                    texts(&arrays[0])?
                        .into_iter()
                        .map(|t| {
                            t.map(|t| match serde_json::from_str::<serde_json::Value>(&t) {
                                Ok(serde_json::Value::Array(_)) => want_array,
                                Ok(serde_json::Value::Object(_)) => !want_array,
                                _ => false,
                            })
                        })
                        .collect::<BooleanArray>(),
                )
            }
            Kind::JsonExtractPathText => extract_path_text(&arrays)?,
        };
        if scalar {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&result, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

pub fn data_error(kind: DataErrorKind, message: String) -> DataFusionError {
    DataFusionError::External(Box::new(Error::data(kind, message)))
}

/// JSON_PARSE: each text validated and compacted into a SUPER value; a JSON null is SQL NULL.
fn json_parse(array: &ArrayRef) -> DfResult<ArrayRef> {
    // The compacted texts are no longer than the texts: room for them all at once, so the
    // builder never copies what it holds into a larger buffer.
    let mut out = StringBuilder::with_capacity(array.len(), text_bytes(array));
    let mut value = String::new();
    each_text(array, |text| {
        let Some(text) = text else {
            out.append_null();
            return Ok(());
        };
        value.clear();
        crate::partiql::value::compact_into(text, &mut value)
            .map_err(|e| data_error(DataErrorKind::InvalidText, e.to_string()))?;
        if value == "null" {
            out.append_null();
        } else {
            out.append_value(&value);
        }
        Ok(())
    })?;
    Ok(Arc::new(out.finish()))
}

/// The bytes of an array's text or VARBYTE values (an estimate for other types): what their
/// compacted copies need.
fn text_bytes(array: &ArrayRef) -> usize {
    fn spanned<O: arrow::array::OffsetSizeTrait>(offsets: &[O]) -> usize {
        match (offsets.first(), offsets.last()) {
            (Some(first), Some(last)) => (*last - *first).as_usize(),
            _ => 0,
        }
    }
    match array.data_type() {
        DataType::Utf8 => spanned(array.as_string::<i32>().value_offsets()),
        DataType::LargeUtf8 => spanned(array.as_string::<i64>().value_offsets()),
        DataType::Binary => spanned(array.as_binary::<i32>().value_offsets()),
        DataType::LargeBinary => spanned(array.as_binary::<i64>().value_offsets()),
        DataType::Utf8View => array
            .as_string_view()
            .views()
            .iter()
            .map(|view| *view as u32 as usize)
            .sum(),
        DataType::BinaryView => array
            .as_binary_view()
            .views()
            .iter()
            .map(|view| *view as u32 as usize)
            .sum(),
        _ => array.len() * 64,
    }
}

/// Calls `each` with the values of a text or VARBYTE array as strings, without copying them;
/// VARBYTE must be UTF-8.
fn each_text(array: &ArrayRef, mut each: impl FnMut(Option<&str>) -> DfResult<()>) -> DfResult<()> {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().try_for_each(each),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().try_for_each(each),
        DataType::Utf8View => array.as_string_view().iter().try_for_each(each),
        data_type if is_binary(data_type) => {
            let bytes = cast(array, &DataType::Binary)?;
            bytes.as_binary::<i32>().iter().try_for_each(|b| match b {
                None => each(None),
                Some(b) => each(Some(std::str::from_utf8(b).map_err(|e| {
                    data_error(
                        DataErrorKind::InvalidText,
                        format!("invalid UTF-8 byte sequence at byte {}", e.valid_up_to()),
                    )
                })?)),
            })
        }
        _ => {
            let text = cast(array, &DataType::Utf8)?;
            text.as_string::<i32>().iter().try_for_each(each)
        }
    }
}

/// The values of a text or VARBYTE array as strings; VARBYTE must be UTF-8.
fn texts(array: &ArrayRef) -> DfResult<Vec<Option<String>>> {
    if is_binary(array.data_type()) {
        let bytes = cast(array, &DataType::Binary)?;
        bytes
            .as_binary::<i32>()
            .iter()
            .map(|b| match b {
                None => Ok(None),
                Some(b) => match std::str::from_utf8(b) {
                    Ok(s) => Ok(Some(s.to_string())),
                    Err(e) => Err(data_error(
                        DataErrorKind::InvalidText,
                        format!("invalid UTF-8 byte sequence at byte {}", e.valid_up_to()),
                    )),
                },
            })
            .collect()
    } else {
        let text = cast(array, &DataType::Utf8)?;
        Ok(text
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect())
    }
}

fn from_varbyte(arrays: &[ArrayRef]) -> DfResult<ArrayRef> {
    let bytes = arrays[0].as_binary::<i32>();
    let formats = cast(&arrays[1], &DataType::Utf8)?;
    let formats = formats.as_string::<i32>();
    let mut out = Vec::with_capacity(bytes.len());
    for (i, value) in bytes.iter().enumerate() {
        let Some(value) = value else {
            out.push(None);
            continue;
        };
        let format = formats
            .is_valid(i)
            .then(|| formats.value(i).to_ascii_lowercase());
        out.push(match format.as_deref() {
            None => None,
            Some("utf8" | "utf-8") => Some(
                std::str::from_utf8(value)
                    .map_err(|e| {
                        data_error(
                            DataErrorKind::InvalidText,
                            format!(
                                "invalid UTF-8 byte sequence at byte {}",
                                e.valid_up_to()
                            ),
                        )
                    })?
                    .to_string(),
            ),
            Some("hex") => Some(value.iter().map(|b| format!("{b:02x}")).collect()),
            Some("binary") => Some(value.iter().map(|b| format!("{b:08b}")).collect()),
            Some(other) => {
                return Err(data_error(
                    DataErrorKind::Other,
                    format!("FROM_VARBYTE does not support the format '{other}' (use 'utf8', 'hex' or 'binary')"),
                ));
            }
        });
    }
    Ok(Arc::new(StringArray::from(out)))
}

fn extract_path_text(arrays: &[ArrayRef]) -> DfResult<ArrayRef> {
    let has_flag = arrays.len() >= 3 && arrays[arrays.len() - 1].data_type() == &DataType::Boolean;
    let path_count = arrays.len() - 1 - usize::from(has_flag);
    let documents = texts(&arrays[0])?;
    let paths: Vec<Vec<Option<String>>> = arrays[1..=path_count]
        .iter()
        .map(texts)
        .collect::<DfResult<_>>()?;
    let flags = has_flag.then(|| arrays[arrays.len() - 1].as_boolean().clone());
    let mut out = Vec::with_capacity(documents.len());
    for (row, document) in documents.into_iter().enumerate() {
        let Some(document) = document else {
            out.push(None);
            continue;
        };
        let null_if_invalid = flags
            .as_ref()
            .is_some_and(|f| f.is_valid(row) && f.value(row));
        let value = match serde_json::from_str::<serde_json::Value>(&document) {
            Ok(value) => value,
            Err(_) if null_if_invalid => {
                out.push(None);
                continue;
            }
            Err(e) => {
                return Err(data_error(
                    DataErrorKind::InvalidText,
                    format!(
                        "invalid JSON object at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                ));
            }
        };
        let mut current = Some(&value);
        for path in &paths {
            current = match (current, &path[row]) {
                (Some(serde_json::Value::Object(map)), Some(key)) => map.get(key.as_str()),
                (Some(serde_json::Value::Array(items)), Some(key)) => {
                    key.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
        }
        out.push(match current {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        });
    }
    Ok(Arc::new(StringArray::from(out)))
}
