//! Integration tests: one binary, a module per topic. They start real servers on loopback
//! ports (Tributary itself, moto for S3, the Python client drivers) and assert what a user
//! would see.

mod access;
mod bench;
mod cdc;
mod changes;
mod clients;
mod concurrency;
mod copy;
mod durability;
mod errors;
mod interop;
mod kafka;
mod liveness;
mod maintenance;
mod memory;
mod mirror;
mod names;
mod operability;
mod protocol;
mod s3;
mod sharing;
mod slt;
mod stream_service;
mod streaming;
mod transactions;
