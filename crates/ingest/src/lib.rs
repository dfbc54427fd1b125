//! Stream sources. The only crate that knows Kinesis and Kafka: it lists a stream's shards (a
//! topic's partitions), reads them in order (a parent shard before its children), turns
//! records into Arrow batches with the metadata columns views select, and tracks how far each
//! shard or partition has been read. Change records (Debezium, DMS, DynamoDB) are decoded
//! here too, into keyed changes ([`change`]).
//!
//! Positions are opaque to every other crate: they travel as JSON values, are stored in the
//! same catalog commit as the rows read up to them, and come back here to resume.

pub mod change;
mod error;
mod kafka;
mod kinesis;
mod position;
mod record;
pub mod service;
mod source;

pub use error::{Error, Result};
pub use kafka::{KafkaReader, KafkaSource};
pub use kinesis::{KinesisReader, KinesisSource, ReadBatch, ReadLimits, ShardLag};
pub use position::{Gap, Positions};
pub use record::{KafkaMeta, StreamRecord};
pub use service::{ServiceSettings, StreamService};
pub use source::{StreamReader, StreamSource, stream_schema};
