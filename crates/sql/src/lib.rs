//! Tributary's SQL front end: Redshift's statements, checked and dispatched to their handlers,
//! planned and run by DataFusion over the catalog's Delta tables.
//!
//! A [`Session`] takes parsed statements. Queries and INSERT go to DataFusion, with tables
//! resolved through the catalog version pinned when the statement started; DDL, DML, COPY,
//! access control, datashares, procedures, streaming DDL, SET / SHOW and transaction control
//! are handled here, on the layers below ([`tributary_streaming`], [`tributary_engine`],
//! [`tributary_syntax`]). [`Engine`] composes them for a server. This crate knows nothing of
//! the wire protocol: its errors say whose fault they are, and the wire crate maps them to
//! SQLSTATE codes.

mod access;
mod classify;
mod console;
mod context;
mod copy;
mod ddl;
mod definition;
mod dml;
mod engine;
mod host;
mod maintenance;
mod metrics;
mod output;
mod procedure;
mod rerun;
mod session;
mod sharing;
mod streaming;
mod system;

pub use copy::CopyPlan;
pub use datafusion::common::ParamValues;
pub use engine::Engine;
pub use maintenance::{MaintenanceReport, MaintenanceSettings};
pub use output::{Notice, Output};
pub use session::{Prepared, Session};
pub use tributary_engine::functions::VERSION;
pub use tributary_engine::metrics::{
    QueryRecord, SessionGuard, allocated_memory_bytes, resident_memory_bytes,
    set_allocated_memory_source,
};
pub use tributary_engine::{DataErrorKind, Error, Result, THREAD_STACK_BYTES, runtime};
pub use tributary_streaming::StreamingSettings;
pub use tributary_syntax::dialect::parse_statements;
pub use tributary_syntax::{ExtStatement, Statement};
