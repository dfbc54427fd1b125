//! The names of the internal functions that rewrites write into statements; the SQL layer
//! registers functions under these names.

/// Marks an expression's result as SUPER.
pub const MARK: &str = "__tributary_super";
/// The elements of a SUPER array, for unnesting.
pub const ELEMENTS: &str = "__tributary_super_elements";
/// The indexes of a SUPER array, for `AT n`.
pub const INDEXES: &str = "__tributary_super_indexes";
/// The values of a SUPER object, for UNPIVOT.
pub const VALUES: &str = "__tributary_super_values";
/// The keys of a SUPER object, for UNPIVOT's `AT k`.
pub const KEYS: &str = "__tributary_super_keys";
/// The table function the token pre-pass writes for a FROM-clause `UNPIVOT path`.
pub const UNPIVOT: &str = "__tributary_unpivot";
