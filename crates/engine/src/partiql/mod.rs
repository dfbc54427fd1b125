//! SUPER and PartiQL: semi-structured values queried the Redshift way.
//!
//! A SUPER value is stored and carried as compact JSON text in a UTF-8 column whose field is
//! marked with [`SQL_TYPE_METADATA`] = `super`. Text keeps the Delta tables
//! readable as plain strings by Spark and Trino, the stream path stores what it received
//! without re-encoding, and navigation (jiter, skipping what is off the path) costs about as
//! much as reading the bytes once.
//!
//! - [`from`] rewrites the parsed statement: bracket paths, and unnesting / unpivoting in FROM.
//! - [`planner`] plans dotted paths on SUPER columns, the SUPER type name, and Redshift's
//!   dynamic typing (casts from SUPER, comparisons, SUPER into SUPER columns).
//! - [`functions`] are the SUPER functions; [`value`] the JSON-text primitives under them.

mod functions;
mod planner;
pub mod value;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionStateDefaults;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::planner::ExprPlanner;
use datafusion::optimizer::analyzer::resolve_grouping_function::ResolveGroupingFunction;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::prelude::SessionContext;

pub use planner::CaseSensitivity;
use planner::{RedshiftTypes, SuperCoercion, SuperPlanner, SuperUdfs};

use tributary_catalog::SQL_TYPE_METADATA;

/// A nullable UTF-8 field marked SUPER.
pub fn super_field(name: &str) -> FieldRef {
    Arc::new(
        Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
            SQL_TYPE_METADATA.to_string(),
            "super".to_string(),
        )])),
    )
}

/// True if a field holds SUPER values.
pub fn is_super(field: &Field) -> bool {
    field.metadata().get(SQL_TYPE_METADATA).map(String::as_str) == Some("super")
}

/// Adds SUPER planning to a session: the navigation planner ahead of DataFusion's own, the
/// SUPER type name, and the dynamic-typing rule ahead of type coercion.
pub fn configure(
    builder: SessionStateBuilder,
    case_sensitive: CaseSensitivity,
) -> SessionStateBuilder {
    let mut planners: Vec<Arc<dyn ExprPlanner>> = vec![Arc::new(SuperPlanner {
        case_sensitive,
        get: functions::udf(functions::Kind::Get),
    })];
    planners.extend(SessionStateDefaults::default_expr_planners());
    let coercion = SuperCoercion {
        udfs: SuperUdfs {
            mark: functions::udf(functions::Kind::Mark),
            to_super: functions::udf(functions::Kind::ToSuper),
            text: functions::udf(functions::Kind::Text),
            int: functions::udf(functions::Kind::Int),
            boolean: functions::udf(functions::Kind::Bool),
        },
    };
    builder
        .with_expr_planners(planners)
        .with_analyzer_rules(vec![
            Arc::new(ResolveGroupingFunction::new()),
            Arc::new(coercion),
            Arc::new(TypeCoercion::new()),
        ])
}

/// Registers the SUPER functions and the SUPER type name. Runs after pg_catalog's setup,
/// whose type planner ours wraps.
pub fn register(context: &SessionContext) {
    functions::register(context);
    let state = context.state_ref();
    let existing = state.read().clone();
    let mut builder = SessionStateBuilder::new_from_existing(existing);
    let fallback = builder.type_planner().clone();
    let replaced = builder
        .with_type_planner(Arc::new(RedshiftTypes { fallback }))
        .build();
    *state.write() = replaced;
}

/// SQL values as SUPER text: strings become SUPER strings, numbers and booleans SUPER
/// scalars, NULL stays NULL.
pub fn to_super_text(array: &ArrayRef) -> DfResult<ArrayRef> {
    let data_type = array.data_type();
    let text = cast(array, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let numeric_or_boolean = data_type.is_numeric() || *data_type == DataType::Boolean;
    let out: StringArray = text
        .iter()
        .map(|value| {
            value.and_then(|v| {
                if numeric_or_boolean {
                    // NaN and infinities have no JSON form.
                    (!matches!(v, "NaN" | "inf" | "-inf")).then(|| v.to_string())
                } else {
                    Some(value::quote(v))
                }
            })
        })
        .collect();
    Ok(Arc::new(out))
}
