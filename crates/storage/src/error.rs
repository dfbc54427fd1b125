//! Errors of the storage layer, classified by whose fault they are.

/// What went wrong while reading or writing tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage root given by the user cannot be used (bad URL, unsupported scheme).
    #[error("invalid storage location '{location}': {reason}")]
    InvalidLocation { location: String, reason: String },
    /// The object store or file system failed.
    #[error("storage I/O failed: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// The Delta log rejected or failed an operation.
    #[error("table storage failed: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// Another writer committed first (put-if-absent lost the race).
    #[error("concurrent commit to {path}: another writer won; retry the statement")]
    Conflict { path: String },
    /// Building a reader over the table failed.
    #[error("table scan failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Data did not fit the table (should have been caught by the caller's checks).
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A data file's footer could not be read.
    #[error("data file unreadable: {0}")]
    Parquet(#[from] deltalake::parquet::errors::ParquetError),
    /// A bug: an invariant of this crate did not hold.
    #[error("internal storage error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
