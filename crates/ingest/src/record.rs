//! Stream records and their Arrow form: the metadata columns of a Kinesis stream.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;

/// One record read from a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    /// Microseconds since the epoch (UTC).
    pub arrival_micros: i64,
    pub data: Bytes,
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
