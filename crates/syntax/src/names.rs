//! Names as the catalog sees them: identifiers folded the Postgres way.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

/// The catalog-facing normal form of an identifier: unquoted names fold to lower case.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The parts of an object name, normalised.
pub fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => normalize_ident(ident),
            other => other.to_string(),
        })
        .collect()
}
