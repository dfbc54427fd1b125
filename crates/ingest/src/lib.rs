//! Stream sources. The only crate that knows Kinesis: it lists a stream's shards, reads them in
//! order (a parent before its children), turns records into Arrow batches with the metadata
//! columns views select, and tracks how far each shard has been read.
//!
//! Positions are opaque to every other crate: they travel as JSON values, are stored in the
//! same catalog commit as the rows read up to them, and come back here to resume.

mod error;
mod kinesis;
mod position;
mod record;
pub mod service;

pub use error::{Error, Result};
pub use kinesis::{KinesisReader, KinesisSource, ReadBatch, ReadLimits, ShardLag};
pub use position::{Gap, Positions};
pub use record::{StreamRecord, kinesis_schema, records_to_batch};
pub use service::{ServiceSettings, StreamService};
