//! Catalog errors: the user's mistakes (unknown or duplicate names) and storage failures.

/// What went wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name the user gave does not exist.
    #[error("{kind} \"{name}\" does not exist")]
    NotFound { kind: &'static str, name: String },
    /// A name the user gave is taken.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// The user asked for something the catalog forbids (dropping a non-empty schema, ...).
    #[error("{0}")]
    Invalid(String),
    /// A concurrent transaction changed an object this one changed too.
    #[error("could not serialize access: {0}")]
    ConcurrentChange(String),
    /// Another process committed a catalog version first.
    #[error("the catalog was changed by another writer; retry the statement")]
    Conflict,
    /// The object store failed.
    #[error("catalog storage failed: {0}")]
    Storage(#[from] object_store::Error),
    /// A catalog file could not be decoded: the data root is damaged or from another version.
    #[error("catalog file {path} is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    /// A bug: the task that writes a catalog version failed.
    #[error("internal catalog error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
