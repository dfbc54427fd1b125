//! Change records decoded: Debezium, AWS DMS, DynamoDB stream records and rows with an
//! operation column, each turned into one keyed change (the row image, whether it deletes
//! the key, and an ordering value). Pure functions of the record: what a change does to a
//! table is the caller's.

use serde_json::{Map, Value};

use crate::StreamRecord;

/// The scan-error code of a change record that is not JSON.
pub const INVALID_JSON: &str = "invalid_json";
/// The scan-error code of a change record that is JSON but not a usable change.
pub const INVALID_CHANGE: &str = "invalid_change";

/// How change records spell their changes (`FORMAT ...` of `CREATE MIRROR TABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeFormat<'a> {
    /// Debezium JSON: `op` c / u / d / r with `before` / `after`, with or without the schema
    /// envelope.
    Debezium,
    /// AWS DMS JSON: `data` with `metadata.operation` insert / update / delete / load.
    Dms,
    /// DynamoDB stream records: `eventName` INSERT / MODIFY / REMOVE with `dynamodb.Keys`,
    /// `NewImage`, `OldImage`.
    Dynamodb,
    /// A flat row whose `column` holds I / U / D.
    Operation { column: &'a str },
}

/// What decodes a stream's change records: their format, and the path in a record whose
/// value orders the changes of one key (None: the stream position orders them).
#[derive(Debug, Clone, Copy)]
pub struct ChangeSpec<'a> {
    pub format: ChangeFormat<'a>,
    pub order: Option<&'a [String]>,
}

/// One change record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub delete: bool,
    /// The ordering value, as bytes whose order is the values' order (see [`order_bytes`]).
    pub order: Vec<u8>,
    /// The row after the change (for a delete: a row with at least the key).
    pub image: Map<String, Value>,
}

/// Why a record was not applied: (scan-error code, reason).
pub type Rejection = (&'static str, String);

/// A Kafka tombstone (a null value). Debezium writes one after each delete event, keyed by the
/// row's key, so that log compaction can drop the key's older records, the delete event
/// included. Ordered by stream position, the tombstone is a delete of its key, which keeps a
/// mirror right when compaction removed the delete event. Ordered by a source value (ORDER BY
/// source.lsn) it carries none, so it is left to the delete event before it.
fn tombstone(
    spec: ChangeSpec<'_>,
    record: &StreamRecord,
    key: Option<&[u8]>,
) -> Result<Option<Change>, Rejection> {
    if !matches!(spec.format, ChangeFormat::Debezium) || spec.order.is_some() {
        return Ok(None);
    }
    let key: Value = serde_json::from_slice(key.unwrap_or_default()).map_err(|e| {
        (
            INVALID_JSON,
            format!("the key of a tombstone is not a Debezium JSON key: {e}"),
        )
    })?;
    // With the schema envelope, the key is the payload.
    let key = match key {
        Value::Object(mut object) if object.contains_key("schema") => {
            object.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    };
    let Value::Object(image) = key else {
        return Err(invalid(
            "the key of a tombstone is not a JSON object of the key's columns".into(),
        ));
    };
    Ok(Some(Change {
        delete: true,
        order: order_bytes(&Value::String(record.sequence_number.clone()))
            .ok_or_else(|| invalid("the record has no stream position".into()))?,
        image,
    }))
}

/// Decodes one change record. `Ok(None)` is a record that carries no change (a Debezium
/// tombstone, a DMS control record, a Debezium message event).
pub fn decode(spec: ChangeSpec<'_>, record: &StreamRecord) -> Result<Option<Change>, Rejection> {
    if let Some(kafka) = record.kafka.as_ref().filter(|k| k.tombstone) {
        return tombstone(spec, record, kafka.key.as_deref());
    }
    let value: Value = serde_json::from_slice(&record.data).map_err(|e| {
        (
            INVALID_JSON,
            format!("the change record is not valid JSON: {e}"),
        )
    })?;
    if value.is_null() {
        return Ok(None);
    }
    let Value::Object(object) = value else {
        return Err(invalid("the change record is not a JSON object".into()));
    };
    let (delete, image, root) = match spec.format {
        ChangeFormat::Debezium => {
            // With the schema envelope, the change is the payload.
            let payload = match (object.get("schema"), object.get("payload")) {
                (Some(_), Some(Value::Object(payload))) => payload,
                (Some(_), Some(Value::Null)) => return Ok(None),
                _ => &object,
            };
            let op = payload
                .get("op")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("the Debezium record has no \"op\"".into()))?;
            let row = |side: &str| match payload.get(side) {
                Some(Value::Object(row)) => Ok(row.clone()),
                _ => Err(invalid(format!(
                    "the Debezium \"{op}\" record has no \"{side}\" row{}",
                    if side == "before" {
                        " (the source table needs REPLICA IDENTITY with the key)"
                    } else {
                        ""
                    }
                ))),
            };
            let (delete, side) = match op {
                "c" | "r" | "u" => (false, "after"),
                "d" => (true, "before"),
                "m" => return Ok(None),
                "t" => {
                    return Err(invalid(
                        "a Debezium truncate event is not applied to a mirror table".into(),
                    ));
                }
                other => return Err(invalid(format!("unknown Debezium op \"{other}\""))),
            };
            let mut image = row(side)?;
            if let (Some(schema), Some(_)) = (object.get("schema"), object.get("payload")) {
                debezium_values(schema, side, &mut image).map_err(invalid)?;
            }
            (delete, image, payload)
        }
        ChangeFormat::Dms => {
            let metadata = object
                .get("metadata")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid("the DMS record has no \"metadata\"".into()))?;
            if metadata
                .get("record-type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "data")
            {
                return Ok(None);
            }
            let operation = metadata
                .get("operation")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("the DMS record has no \"metadata.operation\"".into()))?;
            let delete = match operation.to_ascii_lowercase().as_str() {
                "insert" | "update" | "load" => false,
                "delete" => true,
                other => return Err(invalid(format!("unknown DMS operation \"{other}\""))),
            };
            let data = object
                .get("data")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid("the DMS record has no \"data\" row".into()))?;
            (delete, data.clone(), &object)
        }
        ChangeFormat::Dynamodb => {
            let event = object
                .get("eventName")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("the DynamoDB record has no \"eventName\"".into()))?;
            let dynamodb = object
                .get("dynamodb")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid("the DynamoDB record has no \"dynamodb\"".into()))?;
            let image = |name: &str| -> Result<Map<String, Value>, Rejection> {
                match dynamodb.get(name) {
                    Some(Value::Object(item)) => dynamo_item(item).map_err(invalid),
                    _ => Ok(Map::new()),
                }
            };
            let keys = image("Keys")?;
            let (delete, mut row) = match event {
                "INSERT" | "MODIFY" => {
                    if !dynamodb.contains_key("NewImage") {
                        return Err(invalid(format!(
                            "the DynamoDB {event} record has no \"NewImage\" (the stream view type must include new images)"
                        )));
                    }
                    (false, image("NewImage")?)
                }
                "REMOVE" => (true, image("OldImage")?),
                other => return Err(invalid(format!("unknown DynamoDB eventName \"{other}\""))),
            };
            for (key, value) in keys {
                row.insert(key, value);
            }
            (delete, row, &object)
        }
        ChangeFormat::Operation { column } => {
            let op = lookup(&object, column)
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(format!("the record has no operation column \"{column}\""))
                })?;
            let delete = match op.to_ascii_uppercase().as_str() {
                "I" | "INSERT" | "U" | "UPDATE" => false,
                "D" | "DELETE" => true,
                other => {
                    return Err(invalid(format!(
                        "unknown operation \"{other}\" (expected I, U or D)"
                    )));
                }
            };
            (delete, object.clone(), &object)
        }
    };
    let order = match spec.order {
        None => order_bytes(&Value::String(record.sequence_number.clone())),
        Some(path) => {
            let mut value = Some(root);
            let mut current: Option<&Value> = None;
            for key in path {
                current = value.and_then(|object| lookup(object, key));
                value = current.and_then(Value::as_object);
            }
            let path = path.join(".");
            let current = current
                .filter(|v| !v.is_null())
                .ok_or_else(|| invalid(format!("the change has no ordering value at {path}")))?;
            Some(order_bytes(current).ok_or_else(|| {
                invalid(format!(
                    "the ordering value at {path} is not a number or a string: {current}"
                ))
            })?)
        }
    };
    let order = order.ok_or_else(|| invalid("the record has no stream position".into()))?;
    Ok(Some(Change {
        delete,
        order,
        image,
    }))
}

/// Turns the values Debezium encodes by logical type, as the schema envelope names them, into
/// plain ones: Kafka Connect decimals (base64 of a big-endian unscaled integer), variable
/// scale decimals, and dates and timestamps counted from the epoch.
fn debezium_values(schema: &Value, side: &str, row: &mut Map<String, Value>) -> Result<(), String> {
    let fields = schema
        .get("fields")
        .and_then(Value::as_array)
        .and_then(|fields| {
            fields
                .iter()
                .find(|f| f.get("field").and_then(Value::as_str) == Some(side))
        })
        .and_then(|f| f.get("fields"))
        .and_then(Value::as_array);
    for field in fields.into_iter().flatten() {
        let (Some(column), Some(logical)) = (
            field.get("field").and_then(Value::as_str),
            field.get("name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(value) = row.get_mut(column).filter(|v| !v.is_null()) else {
            continue;
        };
        let integer = |value: &Value| {
            value.as_i64().ok_or_else(|| {
                format!("column \"{column}\": {logical} needs an integer, not {value}")
            })
        };
        let instant = |micros: Option<i64>| {
            micros
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| Value::String(t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()))
                .ok_or_else(|| {
                    format!("column \"{column}\": {value} is out of range for {logical}")
                })
        };
        *value = match logical {
            "org.apache.kafka.connect.data.Decimal" => {
                let scale = field
                    .get("parameters")
                    .and_then(|p| p.get("scale"))
                    .and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or(s.as_u64()))
                    .unwrap_or(0);
                match value {
                    Value::String(text) => Value::String(decimal_from_base64(text, scale)?),
                    _ => continue,
                }
            }
            "io.debezium.data.VariableScaleDecimal" => {
                let scale = value.get("scale").and_then(Value::as_u64).unwrap_or(0);
                let digits = value.get("value").and_then(Value::as_str).ok_or_else(|| {
                    format!("column \"{column}\": a VariableScaleDecimal needs \"value\"")
                })?;
                Value::String(decimal_from_base64(digits, scale)?)
            }
            "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => {
                let days = integer(value)?;
                chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(days)))
                    .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                    .ok_or_else(|| {
                        format!("column \"{column}\": {days} is out of range for a date")
                    })?
            }
            "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
                instant(integer(value)?.checked_mul(1_000))?
            }
            "io.debezium.time.MicroTimestamp" => instant(Some(integer(value)?))?,
            "io.debezium.time.NanoTimestamp" => instant(Some(integer(value)?.div_euclid(1_000)))?,
            _ => continue,
        };
    }
    Ok(())
}

/// A Kafka Connect decimal: base64 of the unscaled value as a big-endian two's complement
/// integer, shown with `scale` fraction digits.
fn decimal_from_base64(text: &str, scale: u64) -> Result<String, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not a base64 decimal: {text} ({e})"))?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(format!("not a decimal of at most 38 digits: {text}"));
    }
    let mut unscaled: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for byte in bytes {
        unscaled = (unscaled << 8) | i128::from(byte);
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    Ok(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// A record that is JSON but not a usable change.
pub fn invalid(reason: String) -> Rejection {
    (INVALID_CHANGE, reason)
}

/// A key of a JSON object: exactly, else ignoring ASCII case (source systems and Redshift
/// disagree on the case of names).
pub fn lookup<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A DynamoDB item (`{"name": {"S": "x"}, ...}`) as plain JSON.
fn dynamo_item(item: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    item.iter()
        .map(|(name, value)| Ok((name.clone(), dynamo_value(value)?)))
        .collect()
}

fn dynamo_value(value: &Value) -> Result<Value, String> {
    let typed = value
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .ok_or_else(|| format!("not a DynamoDB attribute value: {value}"))?;
    let number = |text: &Value| -> Result<Value, String> {
        let text = text
            .as_str()
            .ok_or_else(|| format!("a DynamoDB number must be a string: {text}"))?;
        // A number JSON cannot spell (leading zeros) stays text; it still converts to a
        // numeric column.
        Ok(serde_json::from_str::<serde_json::Number>(text)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(text.to_string())))
    };
    Ok(match (typed.0.as_str(), typed.1) {
        ("S" | "B", v) => v.clone(),
        ("N", v) => number(v)?,
        ("BOOL", v) => v.clone(),
        ("NULL", _) => Value::Null,
        ("M", Value::Object(map)) => Value::Object(dynamo_item(map)?),
        ("L", Value::Array(items)) => {
            Value::Array(items.iter().map(dynamo_value).collect::<Result<_, _>>()?)
        }
        ("SS" | "BS", Value::Array(items)) => Value::Array(items.clone()),
        ("NS", Value::Array(items)) => {
            Value::Array(items.iter().map(number).collect::<Result<_, _>>()?)
        }
        (other, _) => return Err(format!("unknown DynamoDB attribute type \"{other}\"")),
    })
}

/// An ordering value as bytes whose lexicographic order is the values' order: numbers (JSON
/// numbers, or strings of digits such as DynamoDB and Kinesis sequence numbers) by value,
/// and other strings (ISO timestamps) as text, after every number. None for other JSON.
pub fn order_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Number(n) => number_bytes(&n.to_string()),
        Value::String(s) => number_bytes(s).or_else(|| {
            let mut bytes = vec![b'S'];
            bytes.extend_from_slice(s.as_bytes());
            Some(bytes)
        }),
        _ => None,
    }
}

/// The integer an ordering value's bytes ([`order_bytes`]) stand for; None for a fraction, a
/// text, or a number outside BIGINT's range.
pub fn order_integer(bytes: &[u8]) -> Option<i64> {
    let (&sign, rest) = bytes.split_first()?;
    let (length, digits) = rest.split_first_chunk::<2>()?;
    let length = u16::from_be_bytes(*length);
    let (negative, length, digits) = match sign {
        b'P' => (false, length, digits),
        b'N' => (true, u16::MAX - length, digits.strip_suffix(b"~")?),
        _ => return None,
    };
    if digits.len() != length as usize || digits.len() > 19 {
        return None;
    }
    let mut value: i128 = 0;
    for &digit in digits {
        let digit = if negative { b'9' - digit + b'0' } else { digit };
        value = value * 10 + i128::from(digit.checked_sub(b'0').filter(|d| *d <= 9)?);
    }
    i64::try_from(if negative { -value } else { value }).ok()
}

/// `[-]digits[.digits]` as order-preserving bytes: a sign byte, the integer part's length
/// (complemented for negatives), then the digits (complemented for negatives, which end with
/// a byte above every digit so that a longer fraction sorts first).
fn number_bytes(text: &str) -> Option<Vec<u8>> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let length = u16::try_from(int.len()).ok()?;
    let negative = negative && !(int.is_empty() && frac.is_empty());
    let mut bytes = Vec::with_capacity(4 + int.len() + frac.len());
    if negative {
        bytes.push(b'N');
        bytes.extend_from_slice(&(u16::MAX - length).to_be_bytes());
        bytes.extend(int.bytes().chain(frac.bytes()).map(|d| b'9' - d + b'0'));
        bytes.push(b'~');
    } else {
        bytes.push(b'P');
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend(int.bytes().chain(frac.bytes()));
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(value: Value) -> Vec<u8> {
        order_bytes(&value).expect("orderable")
    }

    #[test]
    fn ordering_values_compare_as_values() {
        let ascending = [
            serde_json::json!(-100),
            serde_json::json!(-2.5),
            serde_json::json!(-2.25),
            serde_json::json!(-2),
            serde_json::json!(0),
            serde_json::json!(0.5),
            serde_json::json!(2),
            serde_json::json!("10"),
            serde_json::json!(99.9),
            serde_json::json!(100),
            serde_json::json!("49590338271490256608559692538361571095921575989136588898"),
            serde_json::json!("2024-01-01T00:00:00Z"),
            serde_json::json!("2024-01-02T00:00:00Z"),
        ];
        for pair in ascending.windows(2) {
            assert!(
                order(pair[0].clone()) < order(pair[1].clone()),
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(
            order(serde_json::json!(7)),
            order(serde_json::json!("007.0"))
        );
        assert_eq!(order_bytes(&serde_json::json!(true)), None);
    }

    #[test]
    fn integer_ordering_values_read_back_from_their_bytes() {
        for value in [0i64, 7, -7, 10, -10, 1_000_000, i64::MAX, i64::MIN, -1] {
            assert_eq!(order_integer(&order(serde_json::json!(value))), Some(value));
        }
        assert_eq!(order_integer(&order(serde_json::json!("007.0"))), Some(7));
        assert_eq!(order_integer(&order(serde_json::json!("-0"))), Some(0));
        for other in [
            serde_json::json!(1.5),
            serde_json::json!(-1.5),
            serde_json::json!("9223372036854775808"),
            serde_json::json!("-9223372036854775809"),
            serde_json::json!("2024-01-01T00:00:00Z"),
            serde_json::json!("49590338271490256608559692538361571095921575989136588898"),
        ] {
            assert_eq!(order_integer(&order(other.clone())), None, "{other}");
        }
    }

    #[test]
    fn debezium_logical_types_follow_the_schema_envelope() {
        assert_eq!(decimal_from_base64("AOY=", 2).unwrap(), "2.30");
        assert_eq!(decimal_from_base64("/xg=", 2).unwrap(), "-2.32");
        assert_eq!(decimal_from_base64("Bw==", 0).unwrap(), "7");
        assert!(decimal_from_base64("not base64!", 2).is_err());
        let spec = ChangeSpec {
            format: ChangeFormat::Debezium,
            order: None,
        };
        let record = serde_json::json!({
            "schema": {"type": "struct", "fields": [
                {"type": "struct", "field": "after", "fields": [
                    {"type": "int32", "field": "id"},
                    {"type": "bytes", "field": "price", "name": "org.apache.kafka.connect.data.Decimal",
                     "parameters": {"scale": "2", "connect.decimal.precision": "10"}},
                    {"type": "int32", "field": "born", "name": "io.debezium.time.Date"},
                    {"type": "int64", "field": "seen", "name": "io.debezium.time.MicroTimestamp"},
                    {"type": "int64", "field": "at", "name": "io.debezium.time.Timestamp"}
                ]}
            ]},
            "payload": {"op": "c", "before": null,
                "after": {"id": 1, "price": "AOY=", "born": 19000, "seen": 1700000000123456i64, "at": 1700000000123i64}}
        });
        let record = StreamRecord {
            shard_id: "s".into(),
            sequence_number: "1".into(),
            partition_key: "1".into(),
            arrival_micros: 0,
            data: bytes::Bytes::from(record.to_string()),
            kafka: None,
        };
        let change = decode(spec, &record).unwrap().unwrap();
        assert!(!change.delete);
        assert_eq!(
            Value::Object(change.image),
            serde_json::json!({"id": 1, "price": "2.30", "born": "2022-01-08",
                "seen": "2023-11-14 22:13:20.123456", "at": "2023-11-14 22:13:20.123000"})
        );
    }

    #[test]
    fn dynamodb_values_become_plain_json() {
        let item: Map<String, Value> = serde_json::from_str(
            r#"{"id": {"N": "12"}, "name": {"S": "Zoë"}, "tags": {"SS": ["a"]},
                "address": {"M": {"zip": {"N": "2134"}, "gone": {"NULL": true}}},
                "ok": {"BOOL": false}, "list": {"L": [{"N": "1.5"}, {"S": "x"}]}}"#,
        )
        .unwrap();
        let plain = dynamo_item(&item).unwrap();
        assert_eq!(
            Value::Object(plain),
            serde_json::json!({"id": 12, "name": "Zoë", "tags": ["a"],
                "address": {"zip": 2134, "gone": null}, "ok": false, "list": [1.5, "x"]})
        );
        let bad: Map<String, Value> = serde_json::from_str(r#"{"id": {"X": "1"}}"#).unwrap();
        assert!(dynamo_item(&bad).unwrap_err().contains("\"X\""));
    }
}
