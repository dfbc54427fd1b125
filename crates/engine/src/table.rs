//! A catalog table as a DataFusion `TableProvider`: reads the pinned table version and appends
//! through a sink that checks the column rules (NOT NULL, lengths, IDENTITY) and pins the new
//! table version in the session's transaction.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, ExprSchemable, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::expressions::{CastExpr, Column as PhysicalColumn};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr};
use futures::TryStreamExt;
use tributary_catalog::{SqlType, Table};

use crate::catalog_list::SessionCatalogs;
use crate::error::DataErrorKind;
use crate::transaction::WriteKind;
use crate::{Error, Result};

/// A table of the catalog, as of one catalog version.
#[derive(Debug)]
pub struct TributaryTable {
    catalogs: SessionCatalogs,
    /// database, schema, table
    name: [String; 3],
    definition: Table,
    schema: SchemaRef,
    inner: Arc<dyn TableProvider>,
    defaults: HashMap<String, Expr>,
    /// Set for another namespace's table read through a datashare: INSERT is refused.
    read_only: bool,
}

impl TributaryTable {
    pub async fn open(
        catalogs: &SessionCatalogs,
        name: [String; 3],
        definition: Table,
    ) -> Result<Self> {
        let storage = catalogs.store().storage.clone();
        Self::open_in(catalogs, &storage, name, definition, false).await
    }

    /// Opens a table stored under `storage` (this store's root, or a producer's root for a
    /// shared table, which is `read_only`).
    pub async fn open_in(
        catalogs: &SessionCatalogs,
        storage: &Arc<tributary_storage::StorageRoot>,
        name: [String; 3],
        definition: Table,
        read_only: bool,
    ) -> Result<Self> {
        let mut inner = storage
            .table(&definition.path)?
            .provider(definition.version)
            .await?;
        if crate::mirror::is_legacy(&definition) {
            inner = crate::mirror::reader(inner, &definition)?;
        }
        let mut table = Self::over(catalogs, name, definition, inner)?;
        table.read_only = read_only;
        Ok(table)
    }

    /// The table over `inner`, a reader of its stored rows such as a
    /// [`tributary_storage::RowScan`]: columns of `inner` that the table does not declare
    /// pass through unchanged, after the declared ones.
    pub fn over(
        catalogs: &SessionCatalogs,
        name: [String; 3],
        definition: Table,
        inner: Arc<dyn TableProvider>,
    ) -> Result<Self> {
        let schema = logical_schema(&definition, &inner.schema());
        let defaults = parse_defaults(&definition, &schema)?;
        Ok(Self {
            catalogs: catalogs.clone(),
            name,
            definition,
            schema,
            inner,
            defaults,
            read_only: false,
        })
    }

    fn has_time_columns(&self) -> bool {
        self.definition
            .columns
            .iter()
            .any(|c| c.sql_type == SqlType::Time)
    }
}

/// The schema queries see: the stored schema, with TIME restored from its stored integer.
fn logical_schema(definition: &Table, stored: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = stored
        .fields()
        .iter()
        .map(|field| {
            let column = definition.column(field.name());
            let data_type = match column {
                Some(column) if column.sql_type == SqlType::Time => column.sql_type.to_arrow(),
                _ => field.data_type().clone(),
            };
            // Declared nullability is visible to catalogs (psql's \d); IDENTITY columns stay
            // nullable because INSERT leaves them NULL for the sink to fill.
            let nullable = column.is_none_or(|c| c.nullable || c.identity.is_some());
            if column.is_some_and(|c| c.sql_type == SqlType::Super) {
                let marked = crate::partiql::super_field(field.name());
                return marked.as_ref().clone().with_nullable(nullable);
            }
            Field::new(field.name(), data_type, nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn parse_defaults(definition: &Table, schema: &SchemaRef) -> Result<HashMap<String, Expr>> {
    let mut defaults = HashMap::new();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    for column in &definition.columns {
        if let Some(sql) = &column.default {
            let context = crate::planning::expression_context();
            let expr = context.parse_sql_expr(sql, &df_schema)?;
            let expr = expr.cast_to(&column.sql_type.to_arrow(), &df_schema)?;
            defaults.insert(column.name.clone(), expr);
        }
    }
    Ok(defaults)
}

#[async_trait]
impl TableProvider for TributaryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get(column)
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        // Produce the declared types: TIME from its stored microseconds, and UTF-8 where the
        // Parquet reader gives string views (operators that build batches from the plan's
        // schema, such as UNNEST, need the declared type).
        let projected = match projection {
            Some(indices) => Arc::new(self.schema.project(indices)?),
            None => self.schema.clone(),
        };
        let input_schema = plan.schema();
        let differs = input_schema
            .fields()
            .iter()
            .zip(projected.fields())
            .any(|(stored, declared)| stored.data_type() != declared.data_type());
        if !differs {
            return Ok(plan);
        }
        let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projected
            .fields()
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let column: Arc<dyn PhysicalExpr> =
                    Arc::new(PhysicalColumn::new(field.name(), index));
                let expr = if input_schema.field(index).data_type() == field.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, field.data_type().clone(), None))
                };
                (expr, field.name().clone())
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        if self.has_time_columns() {
            // Filters are written against TIME values; the stored column holds integers.
            return Ok(vec![
                TableProviderFilterPushDown::Unsupported;
                filters.len()
            ]);
        }
        self.inner.supports_filters_pushdown(filters)
    }

    async fn insert_into(
        &self,
        _state: &dyn DfSession,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.read_only {
            return Err(DataFusionError::Plan(format!(
                "\"{}\" is a datashare database: its tables are read-only",
                self.name[0]
            )));
        }
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} into a table"
            )));
        }
        let sink = TableSink {
            catalogs: self.catalogs.clone(),
            name: self.name.clone(),
            schema: self.schema.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Appends the rows of one INSERT and commits them.
#[derive(Debug)]
struct TableSink {
    catalogs: SessionCatalogs,
    name: [String; 3],
    schema: SchemaRef,
}

impl DisplayAs for TableSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TributaryTableSink: {}.{}", self.name[1], self.name[2])
    }
}

#[async_trait]
impl DataSink for TableSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends the rows as they come (see [`TableAppend`]), as one table version, so an
    /// INSERT ... SELECT of any size holds about a row group.
    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let external = |e: Error| DataFusionError::External(Box::new(e));
        let mut append = TableAppend::new(&self.catalogs, &self.name);
        let written: DfResult<()> = async {
            while let Some(batch) = data.try_next().await? {
                append.push(batch).await.map_err(external)?;
            }
            Ok(())
        }
        .await;
        if let Err(err) = written {
            append.abort().await;
            return Err(err);
        }
        append.finish().await.map_err(external)
    }
}

/// The bytes of encoded rows a streamed write holds in memory (a Parquet row group): a
/// sixteenth of the query memory limit, 8 to 128 MiB, reserved in the memory pool when the
/// write starts (less when the pool gives less; see `TableHandle::write_buffer`).
pub fn write_buffer_bytes(store: &crate::store::Store) -> usize {
    tributary_storage::row_group_budget(store.query_memory().1)
}

/// Rows appended to a table as they come (INSERT ... SELECT, COPY), committed as one table
/// version of the session's transaction by [`TableAppend::finish`]. The table's write lock
/// is taken with the first row.
pub struct TableAppend {
    catalogs: SessionCatalogs,
    name: [String; 3],
    open: Option<OpenAppend>,
}

struct OpenAppend {
    table: Table,
    writer: tributary_storage::Appender,
    identity_next: Vec<(String, i64)>,
}

impl TableAppend {
    pub fn new(catalogs: &SessionCatalogs, name: &[String; 3]) -> Self {
        Self {
            catalogs: catalogs.clone(),
            name: name.clone(),
            open: None,
        }
    }

    /// Writes `batch` (in the table's logical schema).
    pub async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let open = match &mut self.open {
            Some(open) => open,
            empty => {
                let [database, schema, table_name] = &self.name;
                let slot = self
                    .catalogs
                    .lock_table(database, schema, table_name, WriteKind::Append)
                    .await?;
                crate::mirror::refuse_write(&slot.table, table_name)?;
                let store = self.catalogs.store();
                let writer = store
                    .storage
                    .table(&slot.table.path)?
                    .appender(slot.table.version, write_buffer_bytes(store))
                    .await?;
                empty.insert(OpenAppend {
                    table: slot.table.clone(),
                    writer,
                    identity_next: Vec::new(),
                })
            }
        };
        let stored = prepare_batch(&open.table, &self.name[2], batch, &mut open.identity_next)?;
        open.writer.write(&stored).await?;
        Ok(())
    }

    /// Commits the rows written as one table version; returns their number.
    pub async fn finish(self) -> Result<u64> {
        let Some(open) = self.open else {
            return Ok(0);
        };
        let outcome = open.writer.commit().await?;
        pin_written(
            &self.catalogs,
            &self.name,
            &open.table.path,
            outcome.version,
            &open.identity_next,
        )?;
        Ok(outcome.rows)
    }

    /// Gives the append up: nothing of it is committed.
    pub async fn abort(self) {
        if let Some(open) = self.open {
            open.writer.abort().await;
        }
    }
}

/// Appends `batches` (in the table's logical schema) to the table in the session's
/// transaction. Returns the number of rows written.
pub async fn append(
    catalogs: &SessionCatalogs,
    name: &[String; 3],
    batches: Vec<RecordBatch>,
) -> Result<u64> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(0);
    }
    let [database, schema, table_name] = name;
    let slot = catalogs
        .lock_table(database, schema, table_name, WriteKind::Append)
        .await?;
    let table = &slot.table;
    crate::mirror::refuse_write(table, table_name)?;
    let mut identity_next: Vec<(String, i64)> = Vec::new();
    let mut stored = Vec::with_capacity(batches.len());
    for batch in batches {
        stored.push(prepare_batch(table, table_name, batch, &mut identity_next)?);
    }
    let outcome = catalogs
        .store()
        .storage
        .table(&table.path)?
        .append(table.version, stored)
        .await?;
    pin_written(catalogs, name, &table.path, outcome.version, &identity_next)?;
    Ok(outcome.rows)
}

/// Pins a table version the transaction wrote, with the IDENTITY counters its rows used.
pub fn pin_written(
    catalogs: &SessionCatalogs,
    [database, schema, table_name]: &[String; 3],
    path: &str,
    version: u64,
    identity_next: &[(String, i64)],
) -> Result<()> {
    catalogs.record_written(path);
    catalogs.modify(|state| {
        let table = state.table_mut(database, schema, table_name)?;
        table.version = version;
        for (column, next) in identity_next {
            if let Some(identity) = table
                .columns
                .iter_mut()
                .find(|c| &c.name == column)
                .and_then(|c| c.identity.as_mut())
            {
                identity.next = *next;
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// Turns a batch in the logical schema into the stored schema: fills IDENTITY columns,
/// enforces NOT NULL and declared lengths, and casts to the stored types.
pub fn prepare_batch(
    table: &Table,
    table_name: &str,
    batch: RecordBatch,
    identity_next: &mut Vec<(String, i64)>,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(table.columns.len());
    let mut fields = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        let mut array = batch
            .column_by_name(&column.name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("insert is missing column {}", column.name)))?;
        if let Some(identity) = &column.identity {
            let start = identity_next
                .iter()
                .find(|(name, _)| name == &column.name)
                .map(|(_, next)| *next)
                .unwrap_or(identity.next);
            let (filled, next) =
                fill_identity(&array, start, identity.step, &column.sql_type.to_arrow())?;
            array = filled;
            identity_next.retain(|(name, _)| name != &column.name);
            identity_next.push((column.name.clone(), next));
        }
        if !column.nullable && array.null_count() > 0 {
            return Err(Error::NotNull {
                table: table_name.to_string(),
                column: column.name.clone(),
            });
        }
        if let Some(length) = column.sql_type.length() {
            check_length(&array, length, &column.sql_type)?;
        }
        let stored_type = column.sql_type.to_storage_arrow();
        let array = if column.sql_type == SqlType::Time {
            // Time64(us) -> its microseconds, as stored.
            let micros = cast(
                &array,
                &DataType::Time64(arrow::datatypes::TimeUnit::Microsecond),
            )?;
            cast(&micros, &DataType::Int64)?
        } else {
            cast(&array, &stored_type)?
        };
        fields.push(Field::new(&column.name, stored_type, column.nullable));
        columns.push(array);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Replaces nulls in an IDENTITY column with the next values of its sequence.
fn fill_identity(
    array: &ArrayRef,
    start: i64,
    step: i64,
    target: &DataType,
) -> Result<(ArrayRef, i64)> {
    let as_i64 = cast(array, &DataType::Int64)?;
    let values = as_i64.as_primitive::<arrow::datatypes::Int64Type>();
    let mut next = start;
    let filled: Int64Array = values
        .iter()
        .map(|value| {
            Some(value.unwrap_or_else(|| {
                let current = next;
                next += step;
                current
            }))
        })
        .collect();
    Ok((cast(&(Arc::new(filled) as ArrayRef), target)?, next))
}

pub fn check_length(array: &ArrayRef, length: u32, sql_type: &SqlType) -> Result<()> {
    let too_long = |actual: usize| {
        Error::data(
            DataErrorKind::StringTooLong,
            format!(
                "value too long for type {} (length {actual})",
                sql_type.display_name()
            ),
        )
    };
    match array.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            let strings = cast(array, &DataType::Utf8)?;
            // Redshift measures VARCHAR and CHAR lengths in bytes, not characters.
            for value in strings.as_string::<i32>().iter().flatten() {
                let bytes = if matches!(sql_type, SqlType::Char { .. }) {
                    value.trim_end_matches(' ').len()
                } else {
                    value.len()
                };
                if bytes > length as usize {
                    return Err(too_long(bytes));
                }
            }
        }
        DataType::Binary | DataType::BinaryView | DataType::LargeBinary => {
            let bytes = cast(array, &DataType::Binary)?;
            for value in bytes.as_binary::<i32>().iter().flatten() {
                if value.len() > length as usize {
                    return Err(too_long(value.len()));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
