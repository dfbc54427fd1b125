//! Stream records and their Arrow form: the metadata columns of a Kinesis stream or a Kafka
//! topic.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use tributary_catalog::SQL_TYPE_METADATA;

/// One record read from a shard (a Kafka partition: `shard_id` is the partition number and
/// `sequence_number` the offset).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    /// Microseconds since the epoch (UTC); a Kafka record's timestamp.
    pub arrival_micros: i64,
    /// The record's payload (a Kafka record's value; empty for a tombstone).
    pub data: Bytes,
    /// What only a Kafka record has.
    pub kafka: Option<Box<KafkaMeta>>,
}

/// The parts of a Kafka record a Kinesis record does not have.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KafkaMeta {
    pub key: Option<Bytes>,
    /// The value is null: a tombstone (a delete, for compacted topics and Debezium).
    pub tombstone: bool,
    /// `C` (create time), `L` (log append time) or `U` (no timestamp), as Redshift shows it.
    pub timestamp_type: char,
    /// Headers in order, names with their values (a header may have none).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// The columns a Kinesis stream exposes to a view, as Redshift documents them.
pub fn kinesis_schema() -> SchemaRef {
    let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
    Arc::new(Schema::new(vec![
        Field::new("approximate_arrival_timestamp", timestamp.clone(), true),
        Field::new("partition_key", DataType::Utf8, true),
        Field::new("shard_id", DataType::Utf8, true),
        Field::new("sequence_number", DataType::Utf8, true),
        Field::new("refresh_time", timestamp, true),
        Field::new("kinesis_data", DataType::Binary, true),
    ]))
}

/// The records as one batch of [`kinesis_schema`]; `refresh_time` is when the refresh began.
pub fn records_to_batch(records: &[&StreamRecord], refresh_micros: i64) -> RecordBatch {
    let mut partition_keys = StringBuilder::new();
    let mut shards = StringBuilder::new();
    let mut sequences = StringBuilder::new();
    let data_bytes = records.iter().map(|r| r.data.len()).sum();
    let mut data = BinaryBuilder::with_capacity(records.len(), data_bytes);
    for record in records {
        partition_keys.append_value(&record.partition_key);
        shards.append_value(&record.shard_id);
        sequences.append_value(&record.sequence_number);
        data.append_value(&record.data);
    }
    let arrivals =
        TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.arrival_micros));
    let refresh = TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
        refresh_micros,
        records.len(),
    ));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(arrivals),
        Arc::new(partition_keys.finish()),
        Arc::new(shards.finish()),
        Arc::new(sequences.finish()),
        Arc::new(refresh),
        Arc::new(data.finish()),
    ];
    RecordBatch::try_new(kinesis_schema(), columns).expect("columns match the Kinesis schema")
}

/// The columns a Kafka topic exposes to a view, as Redshift documents them. `kafka_headers`
/// is SUPER: an array of `{"key": name, "value": text}` objects (values as UTF-8 text, a
/// header without a value as null).
pub fn kafka_schema() -> SchemaRef {
    let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
    Arc::new(Schema::new(vec![
        Field::new("kafka_partition", DataType::Int64, true),
        Field::new("kafka_offset", DataType::Int64, true),
        Field::new("kafka_timestamp_type", DataType::Utf8, true),
        Field::new("kafka_timestamp", timestamp.clone(), true),
        Field::new("kafka_key", DataType::Binary, true),
        Field::new("kafka_value", DataType::Binary, true),
        Field::new("kafka_headers", DataType::Utf8, true)
            .with_metadata([(SQL_TYPE_METADATA.to_string(), "super".to_string())].into()),
        Field::new("refresh_time", timestamp, true),
    ]))
}

/// Kafka records as one batch of [`kafka_schema`].
pub fn kafka_records_to_batch(records: &[&StreamRecord], refresh_micros: i64) -> RecordBatch {
    let mut types = StringBuilder::new();
    let mut keys = BinaryBuilder::new();
    let data_bytes = records.iter().map(|r| r.data.len()).sum();
    let mut values = BinaryBuilder::with_capacity(records.len(), data_bytes);
    let mut headers = StringBuilder::new();
    for record in records {
        let meta = record.kafka.as_deref().cloned().unwrap_or_default();
        types.append_value(meta.timestamp_type.to_string());
        keys.append_option(meta.key.as_deref());
        if meta.tombstone {
            values.append_null();
        } else {
            values.append_value(&record.data);
        }
        let list: Vec<serde_json::Value> = meta
            .headers
            .iter()
            .map(|(key, value)| {
                serde_json::json!({
                    "key": key,
                    "value": value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                })
            })
            .collect();
        headers.append_value(serde_json::Value::Array(list).to_string());
    }
    let number = |text: &str| text.parse::<i64>().ok();
    let partitions = Int64Array::from_iter(records.iter().map(|r| number(&r.shard_id)));
    let offsets = Int64Array::from_iter(records.iter().map(|r| number(&r.sequence_number)));
    let timestamps = TimestampMicrosecondArray::from_iter(records.iter().map(|r| {
        let untimed = r.kafka.as_ref().is_some_and(|m| m.timestamp_type == 'U');
        (!untimed).then_some(r.arrival_micros)
    }));
    let refresh = TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
        refresh_micros,
        records.len(),
    ));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(partitions),
        Arc::new(offsets),
        Arc::new(types.finish()),
        Arc::new(timestamps),
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
        Arc::new(headers.finish()),
        Arc::new(refresh),
    ];
    RecordBatch::try_new(kafka_schema(), columns).expect("columns match the Kafka schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_one_batch_with_the_metadata_columns() {
        let record = StreamRecord {
            shard_id: "shardId-000000000000".into(),
            sequence_number: "1".into(),
            partition_key: "k".into(),
            arrival_micros: 1_000_000,
            data: Bytes::from_static(b"{\"a\":1}"),
            kafka: None,
        };
        let batch = records_to_batch(&[&record, &record], 5);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), kinesis_schema());
        let data = batch
            .column(5)
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap();
        assert_eq!(data.value(1), b"{\"a\":1}");
    }
}
