//! The catalog: databases, schemas, tables, views and users, kept as a versioned log of
//! snapshots in the storage root.
//!
//! Every catalog version pins, for each table, the table version that readers must use. A
//! statement reads the catalog version that was current when it started, so all the tables it
//! touches come from one consistent cut, and a write becomes visible only when the catalog
//! version that pins it has been written (put-if-absent, so two writers can never both win).

mod error;
mod log;
mod merge;
mod model;
mod types;

pub use error::{Error, Result};
pub use log::Catalog;
pub use model::{
    AggregateLayout, ArgumentMode, CatalogState, ChangeFormat, Column, Constraint,
    DEFAULT_DATABASE, DEFAULT_SCHEMA, Database, Datashare, Distribution, ExternalSource, Grantee,
    Group, Identity, KeyTable, MaterializedView, MirrorSpec, Privilege, Procedure,
    ProcedureArgument, Relation, SUPERUSER, Schema, SharedDatabase, StoredPassword, Table, User,
    View, ViewInput, procedure_signature,
};
pub use types::{SQL_TYPE_METADATA, SqlType, VARCHAR_LENGTH_DEFAULT, VARCHAR_LENGTH_MAX};
