//! What statements run on, below any statement handler: the store (a storage root, its catalog
//! and what transactions share), transactions and table write locks, a session's catalogs as
//! DataFusion sees them, the table providers (a mirror table's merge-on-read included),
//! planning outside a session, Redshift's types and their conversion from text, SUPER and
//! PartiQL, the functions DataFusion lacks, session settings, bind parameters, the metrics'
//! counters and the runtimes that run queries beside the server's I/O.
//!
//! Nothing here knows a session, a statement handler or how a streaming view ingests: the SQL
//! front end and the streaming layer build on these parts, and add theirs to a session's
//! catalogs through [`catalog_list::Extensions`]. Errors say whose fault they are; the wire
//! crate maps them to SQLSTATE codes.

pub mod catalog_list;
pub mod conjunction;
pub mod convert;
pub mod datafusion_text;
pub mod decimal;
pub mod error;
pub mod functions;
pub mod json;
pub mod layout;
pub mod locks;
pub mod metrics;
pub mod mirror;
pub mod params;
pub mod partiql;
pub mod planning;
pub mod producer;
mod providers;
pub mod query_memory;
pub mod runtime;
pub mod settings;
pub mod store;
pub mod table;
pub mod transaction;
mod transaction_control;
pub mod types;

pub use error::{DataErrorKind, Error, Result};

/// Stack size of the threads that run sessions. Planning a deep statement (a procedure body's
/// statements inside a CALL, nested subqueries, long CASE chains) recurses further than the
/// 2 MiB tokio gives its worker threads by default, above all in debug builds.
pub const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;
