//! How far each shard has been read. Stored as JSON next to the rows read up to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The read position of every shard a view has read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    shards: BTreeMap<String, ShardPosition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShardPosition {
    /// Every record up to and including this sequence number has been read.
    After(String),
    /// The shard is closed and was read to its end; its children come next.
    Ended,
}

/// Records that could not be read because the stream no longer holds them: the saved
/// position fell out of the stream's retention, and reading resumed at the trim horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub shard_id: String,
    /// The last position read before the gap.
    pub after: String,
    pub reason: String,
}

impl Positions {
    /// Reads positions back from their stored form (`null` for a view never refreshed).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        if value.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(value.clone()).map_err(|e| Error::Positions(e.to_string()))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn get(&self, shard: &str) -> Option<&ShardPosition> {
        self.shards.get(shard)
    }

    pub(crate) fn set(&mut self, shard: &str, position: ShardPosition) {
        self.shards.insert(shard.to_string(), position);
    }

    pub(crate) fn is_ended(&self, shard: &str) -> bool {
        matches!(self.shards.get(shard), Some(ShardPosition::Ended))
    }

    /// Forgets shards the stream no longer lists (expired after retention).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.shards.retain(|shard, _| keep(shard));
    }

    /// Each shard and its position as text (a sequence number, or `SHARD_END`), for the
    /// system views.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.shards
            .iter()
            .map(|(shard, position)| {
                let text = match position {
                    ShardPosition::After(sequence) => sequence.clone(),
                    ShardPosition::Ended => "SHARD_END".to_string(),
                };
                (shard.clone(), text)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_json() {
        let mut positions = Positions::default();
        positions.set("shardId-000000000000", ShardPosition::Ended);
        positions.set("shardId-000000000001", ShardPosition::After("4959".into()));
        let back = Positions::from_json(&positions.to_json()).unwrap();
        assert_eq!(back, positions);
        assert!(back.is_ended("shardId-000000000000"));
        assert_eq!(
            Positions::from_json(&serde_json::Value::Null).unwrap(),
            Positions::default()
        );
        assert!(Positions::from_json(&serde_json::json!({"shards": 3})).is_err());
    }
}
