//! One interface over every kind of stream: a source, and a reader of one of its streams.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::Result;
use crate::kafka::{KafkaReader, KafkaSource};
use crate::kinesis::{KinesisReader, KinesisSource, ReadBatch, ReadLimits, ShardLag};
use crate::position::Positions;
use crate::record::{self, StreamRecord};

/// Where streams are read from.
#[derive(Debug, Clone)]
pub enum StreamSource {
    Kinesis(KinesisSource),
    Kafka(KafkaSource),
}

impl StreamSource {
    /// A reader of `stream` (a Kinesis stream, a Kafka topic) from `positions`.
    pub fn reader(&self, stream: &str, positions: Positions) -> Result<StreamReader> {
        Ok(match self {
            StreamSource::Kinesis(source) => {
                StreamReader::Kinesis(source.reader(stream, positions))
            }
            StreamSource::Kafka(source) => StreamReader::Kafka(source.reader(stream, positions)?),
        })
    }
}

/// Reads one stream from saved positions.
#[derive(Debug)]
pub enum StreamReader {
    Kinesis(KinesisReader),
    Kafka(KafkaReader),
}

impl StreamReader {
    pub fn positions(&self) -> &Positions {
        match self {
            StreamReader::Kinesis(reader) => reader.positions(),
            StreamReader::Kafka(reader) => reader.positions(),
        }
    }

    /// Lag and counters per shard or partition.
    pub fn lag(&self) -> &BTreeMap<String, ShardLag> {
        match self {
            StreamReader::Kinesis(reader) => reader.lag(),
            StreamReader::Kafka(reader) => reader.lag(),
        }
    }

    /// Goes back to `positions` (the committed ones).
    pub fn reset(&mut self, positions: Positions) {
        match self {
            StreamReader::Kinesis(reader) => reader.reset(positions),
            StreamReader::Kafka(reader) => reader.reset(positions),
        }
    }

    /// Reads once from every readable shard or partition.
    pub async fn read(&mut self, limits: ReadLimits) -> Result<ReadBatch> {
        match self {
            StreamReader::Kinesis(reader) => reader.read(limits).await,
            StreamReader::Kafka(reader) => reader.read(limits).await,
        }
    }

    /// The records as one batch of the stream's metadata columns.
    pub fn to_batch(&self, records: &[&StreamRecord], refresh_micros: i64) -> RecordBatch {
        match self {
            StreamReader::Kinesis(_) => record::records_to_batch(records, refresh_micros),
            StreamReader::Kafka(_) => record::kafka_records_to_batch(records, refresh_micros),
        }
    }
}

/// The metadata columns a stream of this kind exposes to a view.
pub fn stream_schema(kafka: bool) -> SchemaRef {
    if kafka {
        record::kafka_schema()
    } else {
        record::kinesis_schema()
    }
}
