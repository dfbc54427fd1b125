//! Reading Kafka topics (Apache Kafka, Amazon MSK, Confluent, or anything speaking the
//! protocol) with librdkafka.
//!
//! Tributary keeps its own offsets: a reader is assigned every partition of its topic at the
//! offsets stored with the view's rows, and never joins a consumer group or commits offsets
//! to the broker. Records of aborted transactions never reach it (`read_committed`, which
//! librdkafka filters), compressed batches are decompressed by librdkafka, and partitions
//! added to the topic are picked up at the next listing, from their beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kinesis::{ReadBatch, ReadLimits, ShardLag};
use crate::position::{Positions, ShardPosition};
use crate::record::{KafkaMeta, StreamRecord};
use crate::{Error, Result};

/// How often the topic's partitions are listed again.
const RELIST_INTERVAL: Duration = Duration::from_secs(10);
/// How long a read waits for the first record when none is buffered.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// How often the partitions' tips are asked for, to report lag.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// How long a broker request (metadata, watermarks) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka cluster: librdkafka client properties (`bootstrap.servers`, `security.protocol`,
/// TLS and SASL settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSource {
    properties: BTreeMap<String, String>,
}

impl KafkaSource {
    /// A cluster reached with these librdkafka properties.
    pub fn new(properties: BTreeMap<String, String>) -> Self {
        Self { properties }
    }

    /// A reader of `topic` that resumes from `positions`.
    pub fn reader(&self, topic: &str, positions: Positions) -> Result<KafkaReader> {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // Tributary's own offsets, never a group's; EOF events tell when a partition is
        // read to its end.
        config
            .set("group.id", "tributary")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // A broker answers a fetch as soon as it has records; with none it waits this
            // long. Lower than librdkafka's 500 ms so that a broker that holds every fetch
            // for part of it (tansu does) still delivers within freshness targets.
            .set("fetch.wait.max.ms", "100")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<ReaderContext> = config
            .create_with_context(ReaderContext)
            .map_err(|e| Error::Kafka(format!("cannot create a Kafka client: {e}")))?;
        Ok(KafkaReader {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            positions,
            partitions: Vec::new(),
            listed: None,
            assigned: false,
            at_end: BTreeSet::new(),
            held: BTreeMap::new(),
            lag: BTreeMap::new(),
            measured: None,
        })
    }
}

/// librdkafka reports every event through the client context, a partition's end included;
/// the default context logs each at error level. A reader's context keeps the end of a
/// partition quiet (it is how a reader knows it caught up) and logs other client errors as
/// warnings: the reader also reports them in `sys_stream_lag.last_error`.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("Kafka client: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads one topic, every partition, from saved offsets.
pub struct KafkaReader {
    consumer: Arc<BaseConsumer<ReaderContext>>,
    topic: String,
    positions: Positions,
    partitions: Vec<i32>,
    listed: Option<Instant>,
    /// The consumer is assigned every partition at `positions`.
    assigned: bool,
    /// Partitions read to their end since their last record.
    at_end: BTreeSet<i32>,
    /// Records fetched but not yet returned because they arrived after a refresh's limit,
    /// in offset order, per partition. Their partition is paused until they are returned.
    held: BTreeMap<i32, Vec<StreamRecord>>,
    lag: BTreeMap<String, ShardLag>,
    measured: Option<Instant>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("topic", &self.topic)
            .field("positions", &self.positions)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// What one poll of the consumer returned, off the async runtime.
struct Polled {
    records: Vec<StreamRecord>,
    /// Per partition polled: whether its last event was its end (else a record).
    ends: BTreeMap<i32, bool>,
    /// Records that arrived after the limit, per partition (now paused), in offset order.
    late: BTreeMap<i32, Vec<StreamRecord>>,
    error: Option<String>,
    /// The high watermark of each partition, when measured.
    tips: BTreeMap<i32, i64>,
}

impl KafkaReader {
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Lag and counters per partition.
    pub fn lag(&self) -> &BTreeMap<String, ShardLag> {
        &self.lag
    }

    /// Goes back to `positions` (the committed ones), dropping what was read ahead.
    pub fn reset(&mut self, positions: Positions) {
        if positions != self.positions {
            self.positions = positions;
            self.assigned = false;
        }
    }

    /// Returns held records that arrived before `limit` (all of them without one), and
    /// resumes the partitions whose held records are all returned.
    fn release_held(&mut self, limit: Option<i64>, budget: usize) -> Result<Vec<StreamRecord>> {
        let mut released = Vec::new();
        let mut resumed = TopicPartitionList::new();
        for (partition, records) in &mut self.held {
            let due = records
                .iter()
                .take_while(|r| limit.is_none_or(|limit| r.arrival_micros < limit))
                .count()
                .min(budget.saturating_sub(released.len()));
            released.extend(records.drain(..due));
            if records.is_empty() {
                resumed.add_partition(&self.topic, *partition);
            }
        }
        self.held.retain(|_, records| !records.is_empty());
        if resumed.count() > 0 {
            self.consumer
                .resume(&resumed)
                .map_err(|e| Error::Kafka(format!("cannot read topic \"{}\": {e}", self.topic)))?;
        }
        Ok(released)
    }

    /// Reads what is buffered or arrives within a short wait, up to `records_per_shard` per
    /// partition. With `arrived_before_micros` (a manual refresh), a partition is done at its
    /// end or at its first record that arrived later; that record is held for the next read.
    pub async fn read(&mut self, limits: ReadLimits) -> Result<ReadBatch> {
        if self.listed.is_none_or(|at| at.elapsed() >= RELIST_INTERVAL) {
            self.relist().await?;
        }
        if self.partitions.is_empty() {
            return Ok(ReadBatch {
                positions: self.positions.clone(),
                caught_up: true,
                ..Default::default()
            });
        }
        if !self.assigned {
            self.assign()?;
        }
        let budget = limits.records_per_shard.max(1) as usize * self.partitions.len();
        let before = limits.arrived_before_micros;
        let mut records = self.release_held(before, budget)?;
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let paused: BTreeSet<i32> = self.held.keys().copied().collect();
        let budget = budget - records.len();
        // The tips, for the lag, at most once per LAG_INTERVAL (a request per partition).
        let measure = self
            .measured
            .is_none_or(|at| at.elapsed() >= LAG_INTERVAL)
            .then(|| self.partitions.clone());
        if measure.is_some() {
            self.measured = Some(Instant::now());
        }
        let polled = tokio::task::spawn_blocking(move || {
            let mut polled = poll(&consumer, &topic, paused, budget, before);
            if let Some(partitions) = measure {
                polled.tips = partitions
                    .into_iter()
                    .filter_map(|p| {
                        let (_, high) =
                            consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT).ok()?;
                        Some((p, high))
                    })
                    .collect();
            }
            polled
        })
        .await
        .map_err(|e| Error::Kafka(format!("the Kafka poll failed: {e}")))?;
        // In the order the poll saw them: a partition is at its end if its last event was
        // the end, not a record.
        for (partition, ended) in polled.ends {
            if ended {
                self.at_end.insert(partition);
            } else {
                self.at_end.remove(&partition);
            }
        }
        for (partition, late) in polled.late {
            self.held.entry(partition).or_default().extend(late);
        }
        records.extend(polled.records);
        for record in &records {
            self.positions.set(
                &record.shard_id,
                ShardPosition::After(record.sequence_number.clone()),
            );
            let lag = self.lag.entry(record.shard_id.clone()).or_default();
            lag.records_read += 1;
            lag.bytes_read += record.data.len() as u64;
        }
        for partition in &self.partitions {
            let lag = self.lag.entry(partition.to_string()).or_default();
            lag.last_error = polled.error.clone();
            if let Some(high) = polled.tips.get(partition).copied() {
                let next = match self.positions.get(&partition.to_string()) {
                    Some(ShardPosition::After(offset)) => offset.parse::<i64>().unwrap_or(-1) + 1,
                    _ => 0,
                };
                lag.records_behind = (high >= 0).then(|| (high - next).max(0));
            }
        }
        // Done: every partition is at its end, or holds a record that arrived after the limit.
        let caught_up = self
            .partitions
            .iter()
            .all(|p| self.at_end.contains(p) || self.held.contains_key(p));
        Ok(ReadBatch {
            records,
            positions: self.positions.clone(),
            caught_up,
            gaps: Vec::new(),
        })
    }

    /// Lists the topic's partitions; new ones are assigned from their beginning.
    async fn relist(&mut self) -> Result<()> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(|e| format!("cannot list the partitions of topic \"{topic}\": {e}"))?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(format!("topic \"{topic}\" does not exist"));
            };
            if let Some(error) = found.error() {
                return Err(format!(
                    "cannot read topic \"{topic}\": {:?}",
                    rdkafka::error::RDKafkaErrorCode::from(error)
                ));
            }
            let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
            partitions.sort_unstable();
            Ok(partitions)
        })
        .await
        .map_err(|e| Error::Kafka(e.to_string()))?
        .map_err(Error::Kafka)?;
        if listed != self.partitions {
            self.partitions = listed;
            self.assigned = false;
        }
        self.listed = Some(Instant::now());
        Ok(())
    }

    /// Assigns every partition at its position: after the last offset read, or from the
    /// beginning.
    fn assign(&mut self) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for partition in &self.partitions {
            let offset = match self.positions.get(&partition.to_string()) {
                Some(ShardPosition::After(offset)) => offset
                    .parse::<i64>()
                    .map(|o| Offset::Offset(o + 1))
                    .unwrap_or(Offset::Beginning),
                _ => Offset::Beginning,
            };
            list.add_partition_offset(&self.topic, *partition, offset)
                .map_err(|e| Error::Kafka(e.to_string()))?;
        }
        let unreadable =
            |e: KafkaError| Error::Kafka(format!("cannot read topic \"{}\": {e}", self.topic));
        self.consumer.assign(&list).map_err(unreadable)?;
        // Reading starts again at the positions: nothing is held, nothing paused.
        self.consumer.resume(&list).map_err(unreadable)?;
        self.held.clear();
        self.at_end.clear();
        self.assigned = true;
        Ok(())
    }
}

/// Polls up to `budget` records: waits a little for the first, then takes what is buffered.
/// A record that arrived at or after `arrived_before` pauses its partition: it and any later
/// record of that partition still in flight are returned as late, in offset order.
fn poll(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    mut paused: BTreeSet<i32>,
    budget: usize,
    arrived_before: Option<i64>,
) -> Polled {
    let mut polled = Polled {
        records: Vec::new(),
        ends: BTreeMap::new(),
        late: BTreeMap::new(),
        error: None,
        tips: BTreeMap::new(),
    };
    let mut wait = FIRST_WAIT;
    while polled.records.len() < budget {
        let Some(next) = consumer.poll(wait) else {
            break;
        };
        wait = Duration::ZERO;
        match next {
            Ok(message) => {
                let partition = message.partition();
                let record = record(&message);
                let late = paused.contains(&partition)
                    || arrived_before.is_some_and(|limit| record.arrival_micros >= limit);
                if !late {
                    polled.ends.insert(partition, false);
                    polled.records.push(record);
                    continue;
                }
                if paused.insert(partition) {
                    let mut list = TopicPartitionList::new();
                    list.add_partition(topic, partition);
                    if let Err(error) = consumer.pause(&list) {
                        polled.error = Some(format!("cannot pause partition {partition}: {error}"));
                    }
                }
                polled.late.entry(partition).or_default().push(record);
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                polled.ends.insert(partition, true);
            }
            Err(error) => {
                polled.error = Some(error.to_string());
                break;
            }
        }
    }
    polled
}

/// A Kafka message as a stream record.
fn record(message: &rdkafka::message::BorrowedMessage<'_>) -> StreamRecord {
    let (timestamp_type, millis) = match message.timestamp() {
        Timestamp::CreateTime(ms) => ('C', ms),
        Timestamp::LogAppendTime(ms) => ('L', ms),
        Timestamp::NotAvailable => ('U', 0),
    };
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                .collect()
        })
        .unwrap_or_default();
    let key = message.key().map(Bytes::copy_from_slice);
    StreamRecord {
        shard_id: message.partition().to_string(),
        sequence_number: message.offset().to_string(),
        partition_key: key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        arrival_micros: millis.saturating_mul(1000),
        data: message
            .payload()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        kafka: Some(Box::new(KafkaMeta {
            key,
            tombstone: message.payload().is_none(),
            timestamp_type,
            headers,
        })),
    }
}
