//! The Kinesis operations of the embedded stream service: JSON request in, (status, JSON
//! response) out, with Kinesis' error types and limits.

use base64::Engine as _;
use serde_json::{Value, json};

use super::store::{MAX_RECORD_BYTES, Start, Store, StoreError};

/// PutRecords: at most this many records and bytes per call.
const MAX_PUT_RECORDS: usize = 500;
const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
/// GetRecords: at most this many records and bytes per call.
const MAX_GET_RECORDS: usize = 10_000;
const MAX_GET_BYTES: usize = 10 * 1024 * 1024;
/// A shard iterator expires this long after it was issued, as in Kinesis.
const ITERATOR_MILLIS: i64 = 5 * 60 * 1000;
const ARN_PREFIX: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/";

type Reply = (u16, Value);

pub(super) struct Api {
    store: Store,
}

/// An error response in Kinesis' shape.
pub(super) fn failure(kind: &str, message: &str) -> Reply {
    (400, json!({"__type": kind, "message": message}))
}

fn store_failure(err: StoreError) -> Reply {
    match err {
        StoreError::NotFound(m) => failure("ResourceNotFoundException", &m),
        StoreError::InUse(m) => failure("ResourceInUseException", &m),
        StoreError::Invalid(m) => failure("ValidationException", &m),
        StoreError::Internal(m) => {
            tracing::error!(error = %m, "stream service store failed");
            (500, json!({"__type": "InternalFailure", "message": m}))
        }
    }
}

fn invalid(message: impl Into<String>) -> Reply {
    failure("InvalidArgumentException", &message.into())
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn seconds(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

impl Api {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn call(&self, operation: &str, body: &[u8]) -> Reply {
        let request: Value = match serde_json::from_slice(body) {
            Ok(Value::Object(o)) => Value::Object(o),
            Ok(_) | Err(_) if body.is_empty() => json!({}),
            _ => return failure("SerializationException", "the request is not a JSON object"),
        };
        let result = match operation {
            "CreateStream" => self.create_stream(&request),
            "DeleteStream" => self.delete_stream(&request),
            "ListStreams" => Ok(self.list_streams()),
            "DescribeStream" => self.describe_stream(&request),
            "DescribeStreamSummary" => self.describe_stream_summary(&request),
            "ListShards" => self.list_shards(&request),
            "PutRecord" => self.put_record(&request),
            "PutRecords" => self.put_records(&request),
            "GetShardIterator" => self.get_shard_iterator(&request),
            "GetRecords" => self.get_records(&request),
            other => Err(failure(
                "UnknownOperationException",
                &format!("operation {other:?} is not supported by this stream service"),
            )),
        };
        match result {
            Ok(value) => (200, value),
            Err(reply) => reply,
        }
    }

    /// The stream a request names, by `StreamName` or `StreamARN`.
    fn stream_name<'a>(&self, request: &'a Value) -> Result<&'a str, Reply> {
        if let Some(name) = request.get("StreamName").and_then(Value::as_str) {
            return Ok(name);
        }
        if let Some(arn) = request.get("StreamARN").and_then(Value::as_str) {
            return arn
                .rsplit_once("stream/")
                .map(|(_, name)| name)
                .ok_or_else(|| invalid(format!("not a stream ARN: {arn}")));
        }
        Err(invalid("StreamName or StreamARN is required"))
    }

    fn create_stream(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        let shards = request
            .get("ShardCount")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        self.store
            .create(name, shards.min(u64::from(u32::MAX)) as u32)
            .map_err(store_failure)?;
        Ok(json!({}))
    }

    fn delete_stream(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        self.store.delete(name).map_err(store_failure)?;
        Ok(json!({}))
    }

    fn list_streams(&self) -> Value {
        let names = self.store.names();
        let summaries: Vec<Value> = names
            .iter()
            .filter_map(|n| self.store.stream(n).ok())
            .map(|s| {
                json!({
                    "StreamName": s.meta.name,
                    "StreamARN": format!("{ARN_PREFIX}{}", s.meta.name),
                    "StreamStatus": "ACTIVE",
                    "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                    "StreamCreationTimestamp": seconds(s.meta.created_millis),
                })
            })
            .collect();
        json!({"StreamNames": names, "HasMoreStreams": false, "StreamSummaries": summaries})
    }

    fn shards_json(&self, name: &str) -> Result<Vec<Value>, Reply> {
        let stream = self.store.stream(name).map_err(store_failure)?;
        Ok(stream
            .meta
            .shards
            .iter()
            .map(|shard| {
                json!({
                    "ShardId": shard.id,
                    "HashKeyRange": {
                        "StartingHashKey": shard.starting_hash_key.to_string(),
                        "EndingHashKey": shard.ending_hash_key.to_string(),
                    },
                    "SequenceNumberRange": {
                        "StartingSequenceNumber": shard.starting_sequence.to_string(),
                    },
                })
            })
            .collect())
    }

    fn describe_stream(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        let stream = self.store.stream(name).map_err(store_failure)?;
        let shards = self.shards_json(name)?;
        Ok(json!({"StreamDescription": {
            "StreamName": stream.meta.name,
            "StreamARN": format!("{ARN_PREFIX}{}", stream.meta.name),
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "Shards": shards,
            "HasMoreShards": false,
            "RetentionPeriodHours": stream.meta.retention_hours,
            "StreamCreationTimestamp": seconds(stream.meta.created_millis),
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
        }}))
    }

    fn describe_stream_summary(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        let stream = self.store.stream(name).map_err(store_failure)?;
        Ok(json!({"StreamDescriptionSummary": {
            "StreamName": stream.meta.name,
            "StreamARN": format!("{ARN_PREFIX}{}", stream.meta.name),
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "RetentionPeriodHours": stream.meta.retention_hours,
            "StreamCreationTimestamp": seconds(stream.meta.created_millis),
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
            "OpenShardCount": stream.meta.shards.len(),
            "ConsumerCount": 0,
        }}))
    }

    fn list_shards(&self, request: &Value) -> Result<Value, Reply> {
        // Every shard fits in one page; a NextToken names the stream.
        let name = match request.get("NextToken").and_then(Value::as_str) {
            Some(token) => token.to_string(),
            None => self.stream_name(request)?.to_string(),
        };
        Ok(json!({"Shards": self.shards_json(&name)?}))
    }

    fn put_record(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        let stream = self.store.stream(name).map_err(store_failure)?;
        let (key, data, explicit) = entry(request)?;
        let shard = stream.route(&key, explicit);
        let sequences = stream
            .append(shard, &[(key.as_str(), data.as_slice())])
            .map_err(store_failure)?;
        Ok(json!({
            "SequenceNumber": sequences[0].to_string(),
            "ShardId": stream.meta.shards[shard].id,
        }))
    }

    fn put_records(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        let stream = self.store.stream(name).map_err(store_failure)?;
        let entries = request
            .get("Records")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("Records is required"))?;
        if entries.is_empty() || entries.len() > MAX_PUT_RECORDS {
            return Err(failure(
                "ValidationException",
                &format!(
                    "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length between 1 and {MAX_PUT_RECORDS}, not {}",
                    entries.len()
                ),
            ));
        }
        let parsed = entries.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        let total: usize = parsed.iter().map(|(k, d, _)| k.len() + d.len()).sum();
        if total > MAX_PUT_BYTES {
            return Err(invalid(format!(
                "Records size exceeds 5 MB limit: {total} bytes"
            )));
        }
        // Records of one shard are appended together, in request order.
        let shards: Vec<usize> = parsed
            .iter()
            .map(|(key, _, explicit)| stream.route(key, *explicit))
            .collect();
        let mut results = vec![Value::Null; parsed.len()];
        let mut order: Vec<usize> = (0..parsed.len()).collect();
        order.sort_by_key(|&i| shards[i]);
        for group in order.chunk_by(|&a, &b| shards[a] == shards[b]) {
            let shard = shards[group[0]];
            let records: Vec<(&str, &[u8])> = group
                .iter()
                .map(|&i| (parsed[i].0.as_str(), parsed[i].1.as_slice()))
                .collect();
            let sequences = stream.append(shard, &records).map_err(store_failure)?;
            for (&i, sequence) in group.iter().zip(sequences) {
                results[i] = json!({
                    "SequenceNumber": sequence.to_string(),
                    "ShardId": stream.meta.shards[shard].id,
                });
            }
        }
        Ok(json!({"FailedRecordCount": 0, "Records": results, "EncryptionType": "NONE"}))
    }

    fn get_shard_iterator(&self, request: &Value) -> Result<Value, Reply> {
        let name = self.stream_name(request)?;
        let stream = self.store.stream(name).map_err(store_failure)?;
        let shard_id = request
            .get("ShardId")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("ShardId is required"))?;
        let shard = stream.shard_index(shard_id).map_err(store_failure)?;
        let sequence = || -> Result<u64, Reply> {
            let text = request
                .get("StartingSequenceNumber")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid("StartingSequenceNumber is required for this iterator type")
                })?;
            text.parse().map_err(|_| {
                invalid(format!(
                    "StartingSequenceNumber {text} is not a sequence number of this stream"
                ))
            })
        };
        let start = match request.get("ShardIteratorType").and_then(Value::as_str) {
            Some("TRIM_HORIZON") => Start::TrimHorizon,
            Some("LATEST") => Start::Latest,
            Some("AT_SEQUENCE_NUMBER") => Start::AtSequence(sequence()?),
            Some("AFTER_SEQUENCE_NUMBER") => Start::AfterSequence(sequence()?),
            Some("AT_TIMESTAMP") => {
                let at = request
                    .get("Timestamp")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| invalid("Timestamp is required for AT_TIMESTAMP"))?;
                Start::AtTimestamp((at * 1000.0) as i64)
            }
            other => {
                return Err(invalid(format!(
                    "unknown ShardIteratorType {}",
                    other.unwrap_or("(none)")
                )));
            }
        };
        let position = stream.position(shard, start);
        Ok(json!({"ShardIterator": iterator(name, shard, position)}))
    }

    fn get_records(&self, request: &Value) -> Result<Value, Reply> {
        let token = request
            .get("ShardIterator")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("ShardIterator is required"))?;
        let (name, shard, position, expires) = parse_iterator(token)?;
        if expires < now_millis() {
            return Err(failure(
                "ExpiredIteratorException",
                &format!(
                    "Iterator expired. The iterator was created at time {} while right now it is {}",
                    expires - ITERATOR_MILLIS,
                    now_millis()
                ),
            ));
        }
        let limit = request
            .get("Limit")
            .and_then(Value::as_u64)
            .map(|l| l as usize)
            .unwrap_or(MAX_GET_RECORDS);
        if limit == 0 || limit > MAX_GET_RECORDS {
            return Err(invalid(format!(
                "Limit must be between 1 and {MAX_GET_RECORDS}"
            )));
        }
        let stream = self.store.stream(&name).map_err(store_failure)?;
        if shard >= stream.meta.shards.len() {
            return Err(failure(
                "ResourceNotFoundException",
                "the iterator's shard does not exist",
            ));
        }
        let (records, next, behind) = stream
            .read(shard, position, limit, MAX_GET_BYTES)
            .map_err(store_failure)?;
        let engine = base64::engine::general_purpose::STANDARD;
        let records: Vec<Value> = records
            .into_iter()
            .map(|r| {
                json!({
                    "SequenceNumber": r.sequence.to_string(),
                    "ApproximateArrivalTimestamp": seconds(r.arrival_millis),
                    "Data": engine.encode(&r.data),
                    "PartitionKey": r.partition_key,
                })
            })
            .collect();
        Ok(json!({
            "Records": records,
            "NextShardIterator": iterator(&name, shard, next),
            "MillisBehindLatest": behind,
        }))
    }
}

/// A record of PutRecord(s): partition key, data, explicit hash key.
fn entry(value: &Value) -> Result<(String, Vec<u8>, Option<u128>), Reply> {
    let key = value
        .get("PartitionKey")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("PartitionKey is required"))?;
    if key.is_empty() || key.chars().count() > 256 {
        return Err(failure(
            "ValidationException",
            "1 validation error detected: Value at 'partitionKey' failed to satisfy constraint: Member must have length between 1 and 256",
        ));
    }
    let data = value
        .get("Data")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("Data is required"))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| {
            failure(
                "SerializationException",
                &format!("Data is not base64: {e}"),
            )
        })?;
    if data.len() + key.len() > MAX_RECORD_BYTES {
        return Err(failure(
            "ValidationException",
            &format!(
                "1 validation error detected: Value at 'data' failed to satisfy constraint: Member must have length less than or equal to {MAX_RECORD_BYTES}"
            ),
        ));
    }
    let explicit = match value.get("ExplicitHashKey").and_then(Value::as_str) {
        Some(text) => Some(
            text.parse::<u128>()
                .map_err(|_| invalid(format!("ExplicitHashKey {text} is not a 128-bit integer")))?,
        ),
        None => None,
    };
    Ok((key.to_string(), data, explicit))
}

/// A shard iterator: the stream, shard and position, and when it expires, base64 encoded.
fn iterator(stream: &str, shard: usize, position: usize) -> String {
    let text = json!([stream, shard, position, now_millis() + ITERATOR_MILLIS]).to_string();
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn parse_iterator(token: &str) -> Result<(String, usize, usize, i64), Reply> {
    let bad = || invalid(format!("Invalid ShardIterator: {token}"));
    let text = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&text).map_err(|_| bad())?;
    match value.as_array().map(Vec::as_slice) {
        Some([Value::String(stream), shard, position, expires]) => Ok((
            stream.clone(),
            shard.as_u64().ok_or_else(bad)? as usize,
            position.as_u64().ok_or_else(bad)? as usize,
            expires.as_i64().ok_or_else(bad)?,
        )),
        _ => Err(bad()),
    }
}
