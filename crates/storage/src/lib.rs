//! Delta Lake tables under one storage root, on local disk or S3-compatible object storage.
//!
//! This is the only crate that knows the table format. Everything above it speaks of a table by
//! its path relative to the root and of a snapshot by its version number; what a version means
//! (a Delta log entry) stays here.

mod checkpoints;
mod error;
mod files;
mod local;
mod location;
mod root;
mod table;

pub use error::{Error, Result};
pub use files::ExternalLocation;
pub use location::{check_table_path, legacy_location, new_table_path};
pub use root::StorageRoot;
pub use table::{
    AppendOutcome, Appender, DataFile, FILE_COLUMN, ROW_COLUMN, Replaced, Rewrite, RowChanges,
    RowScan, RowSet, StagedFiles, TableHandle, row_group_budget,
};
