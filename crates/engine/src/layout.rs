//! A table's schemas: as its Delta table stores it and as queries see it, and the cast of a
//! batch from one to the other.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use tributary_catalog::Table;

use crate::Result;

/// The Delta schema of a table: its columns in their stored types, and a legacy mirror
/// table's hidden bookkeeping columns after them.
pub fn storage_schema(table: &Table) -> Schema {
    let hidden = match crate::mirror::is_legacy(table) {
        true => crate::mirror::hidden_fields(),
        false => Vec::new(),
    };
    Schema::new(
        table
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.sql_type.to_storage_arrow(), c.nullable))
            .chain(hidden)
            .collect::<Vec<_>>(),
    )
}

/// The schema queries see: the declared columns in their Arrow types, all nullable.
pub fn logical_schema(table: &Table) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Casts a batch column by column to `schema` (same column order), with SQL cast rules.
pub fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| {
            if field.data_type() == &arrow::datatypes::DataType::Int64
                && matches!(array.data_type(), arrow::datatypes::DataType::Time64(_))
            {
                let micros = arrow::compute::cast(
                    array,
                    &arrow::datatypes::DataType::Time64(arrow::datatypes::TimeUnit::Microsecond),
                )?;
                return Ok(arrow::compute::cast(&micros, field.data_type())?);
            }
            Ok(arrow::compute::cast(array, field.data_type())?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
