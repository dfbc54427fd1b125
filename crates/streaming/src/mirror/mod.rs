//! A mirror table's rounds: change records applied by key to its Delta table and its key
//! table (see [`tributary_engine::mirror`]), in the round's transaction, and their files
//! rewritten in the background. The statements that create and vacuum mirrors are the SQL
//! front end's.

mod apply;
mod compact;
mod keyed;

pub use apply::{apply, copy_records, finish_copy, view_records};
pub use compact::{commit_spec, compact_now};
pub use keyed::{convert, storage};
