//! Tributary's SQL layer: Redshift's dialect planned and run by DataFusion over the catalog's
//! Delta tables.
//!
//! A [`Session`] takes parsed statements. Queries and INSERT go to DataFusion, with tables
//! resolved through the catalog version pinned when the statement started; DDL, SET / SHOW
//! and transaction control are handled here. This crate knows nothing of the wire protocol:
//! its errors say whose fault they are, and the wire crate maps them to SQLSTATE codes.

mod access;
mod catalog_list;
mod console;
mod convert;
mod copy;
mod ddl;
mod definition;
mod dml;
mod engine;
mod error;
mod functions;
mod json;
mod locks;
mod maintenance;
mod metrics;
mod params;
mod partiql;
mod procedure;
pub mod runtime;
mod session;
mod settings;
mod sharing;
mod streaming;
mod system;
mod table;
mod transaction;
mod types;

pub use copy::CopyPlan;
pub use datafusion::common::ParamValues;
pub use engine::Engine;
pub use error::{DataErrorKind, Error, Result};
pub use functions::VERSION;
pub use maintenance::{MaintenanceReport, MaintenanceSettings};
pub use metrics::{QueryRecord, SessionGuard, resident_memory_bytes};
pub use session::{Notice, Output, Prepared, Session};
pub use streaming::StreamingSettings;
pub use tributary_syntax::dialect::parse_statements;
pub use tributary_syntax::{ExtStatement, Statement};

/// Stack size of the threads that run sessions. Planning a deep statement (a procedure body's
/// statements inside a CALL, nested subqueries, long CASE chains) recurses further than the
/// 2 MiB tokio gives its worker threads by default, above all in debug builds.
pub const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;
