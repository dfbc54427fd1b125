//! A mirror table's rounds: change records applied by key, and the stored changes folded into
//! the base or coalesced, in the round's transaction or in the background. The statements
//! that create and vacuum mirrors are the SQL front end's; readers merge through
//! [`tributary_engine::mirror`].

mod apply;
mod fold;

pub use apply::{apply, copy_records, view_records};
pub use fold::{commit_spec, fold};

/// A round folds the stored changes into the base once there are at least
/// `StreamingSettings::mirror_fold_changes` of them and at least this fraction of the base.
/// Reads cost grows with the stored changes (at 30k changes/s into 10M rows, a quarter let
/// them reach 1.8M and put freshness p99 at 4.2 s, a twentieth 1.9 s); a fold rewrites the
/// base, in the background.
const FOLD_BASE_FRACTION: u64 = 20;
