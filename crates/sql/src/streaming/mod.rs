//! Streaming statements: CREATE / ALTER EXTERNAL SCHEMA over Kinesis and Kafka, CREATE
//! MATERIALIZED VIEW over a stream, REFRESH and ALTER ... AUTO REFRESH, and mirror tables
//! (CREATE MIRROR TABLE, VACUUM). Rounds, the runner and the scan-error log are the streaming
//! layer's ([`tributary_streaming`]); these handlers check, store and start them.

pub(crate) mod mirror;
mod query_view;
mod statements;
mod table;

pub(crate) use statements::{
    alter_auto_refresh, alter_external_schema, create_external_schema, create_materialized_view,
    refresh,
};
