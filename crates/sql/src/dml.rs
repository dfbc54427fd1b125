//! UPDATE, DELETE and MERGE.
//!
//! Each statement locks its target table and registers, as a scratch table, the target at the
//! transaction's snapshot with a row identifier: for a stored table, the number of the row's
//! data file and its index in the file (a [`tributary_storage::RowScan`]). The statement
//! becomes one SELECT over that scratch table (plus its FROM / USING / source tables and any
//! subqueries), which DataFusion plans and runs like any query: it returns, per affected row,
//! the row identifier, what to do, and the new values. Scan filters and join filters prune the
//! target's files and row groups by statistics and bloom filters, so a small change reads
//! little of a large table.
//!
//! The SELECT's rows are taken as they stream (a [`ChangeWriter`]): the affected rows'
//! identifiers go into a bitmap, and the new row versions and inserted rows are written to
//! new data files as they come, so a change of any size holds the bitmap and a row group.
//! A stored table's change is one Delta commit of the transaction: the affected rows are
//! marked deleted in deletion vectors of their files, and the new files are added. No file is
//! rewritten; the cost follows the change. A temporary table's rows are held in memory and
//! rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, UInt64Array,
};
use arrow::compute::{filter_record_batch, interleave};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{LogicalPlanBuilder, cast, col};
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, MergeAction, MergeClause, MergeClauseKind,
    MergeInsertKind, ObjectName, Statement, TableFactor, TableWithJoins, UpdateTableFromKind, With,
};
use futures::StreamExt as _;
use tributary_catalog::Table;
use tributary_engine::table::{TributaryTable, prepare_batch, write_buffer_bytes};
use tributary_engine::transaction::WriteKind;
use tributary_storage::{Appender, RowChanges, RowSet};
use tributary_syntax::names::{name_parts, normalize_ident};

use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

const ROW_ID: &str = "__tributary_rid";
const ACTION: &str = "__tributary_action";

/// What a result row of the planned statement does to the target.
const ACTION_UPDATE: i64 = 1;
const ACTION_DELETE: i64 = 2;
const ACTION_INSERT: i64 = 3;

/// Runs UPDATE, DELETE or MERGE; `with` is a WITH clause written before the statement.
pub(crate) async fn execute(
    cx: &mut Context,
    statement: Statement,
    with: Option<With>,
) -> Result<Output> {
    match statement {
        Statement::Delete(delete) => delete_rows(cx, delete, with).await,
        Statement::Update(update) => {
            let from = match update.from {
                Some(UpdateTableFromKind::BeforeSet(tables))
                | Some(UpdateTableFromKind::AfterSet(tables)) => tables,
                None => vec![],
            };
            if update.returning.is_some() {
                return Err(Error::NotSupported(
                    "UPDATE ... RETURNING is not supported".into(),
                ));
            }
            update_rows(
                cx,
                &update.table,
                &update.assignments,
                &from,
                update.selection.as_ref(),
                with,
            )
            .await
        }
        Statement::Merge(merge) => {
            merge_rows(
                cx,
                &merge.table,
                &merge.source,
                &merge.on,
                &merge.clauses,
                with,
            )
            .await
        }
        other => Err(Error::Internal(format!("not a DML statement: {other}"))),
    }
}

/// Row identifiers of a stored table: the file's number in the high bits, the row's index in
/// the file in the low 40 bits.
const ROW_BITS: u32 = 40;

/// The target table, read at the snapshot and registered as a scratch table.
struct Target {
    schema_name: String,
    name: String,
    /// The target's columns as queries see them.
    schema: SchemaRef,
    rows: TargetRows,
    /// The scratch table's name in the session's temporary schema.
    scratch: String,
    /// How the statement names the target (its alias, or its name).
    alias: String,
}

/// Where the target's rows come from.
enum TargetRows {
    /// A temporary table's rows, each batch with the row identifier as its last column.
    Memory(Vec<RecordBatch>),
    /// A stored table's version, scanned with each row's file and index.
    Stored {
        table: Box<Table>,
        scan: Arc<tributary_storage::RowScan>,
    },
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(1);

impl Target {
    async fn open(cx: &Context, factor: &TableFactor) -> Result<Self> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err(Error::NotSupported(format!(
                "the target of UPDATE, DELETE or MERGE must be a table, not {factor}"
            )));
        };
        let alias = match alias {
            Some(alias) => normalize_ident(&alias.name),
            None => name_parts(name).last().cloned().unwrap_or_default(),
        };
        let parts = name_parts(name);
        let temp = cx.catalogs().temp().clone();
        let scratch = format!(
            "__tributary_target_{}",
            SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if parts.len() == 1 && temp.table_exist(&parts[0]) {
            let provider = temp
                .table(&parts[0])
                .await?
                .ok_or_else(|| Error::UndefinedTable(parts[0].clone()))?;
            let schema = nullable(provider.schema().fields().iter());
            let frame = cx.context().read_table(provider)?;
            let rows = frame.collect().await?;
            let with_ids = Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .cloned()
                    .chain(std::iter::once(Arc::new(Field::new(
                        ROW_ID,
                        DataType::UInt64,
                        false,
                    ))))
                    .collect::<Vec<_>>(),
            ));
            let mut next_id = 0u64;
            let mut batches = Vec::with_capacity(rows.len());
            for batch in rows {
                let ids = UInt64Array::from_iter_values(next_id..next_id + batch.num_rows() as u64);
                next_id += batch.num_rows() as u64;
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(ids));
                batches.push(RecordBatch::try_new(with_ids.clone(), columns)?);
            }
            let memory = MemTable::try_new(with_ids, vec![batches.clone()])?;
            temp.register_table(scratch.clone(), Arc::new(memory))?;
            return Ok(Self {
                schema_name: String::new(),
                name: parts[0].clone(),
                schema,
                rows: TargetRows::Memory(batches),
                scratch,
                alias,
            });
        }
        let (schema_name, table_name) = resolve_table(cx, name)?;
        let database = cx.database().to_string();
        let slot = cx
            .catalogs()
            .lock_table(&database, &schema_name, &table_name, WriteKind::Rewrite)
            .await?;
        tributary_engine::mirror::refuse_write(&slot.table, &table_name)?;
        let scan = Arc::new(
            cx.engine()
                .storage
                .table(&slot.table.path)?
                .row_scan(slot.table.version)
                .await?,
        );
        let provider = TributaryTable::over(
            cx.catalogs(),
            [database, schema_name.clone(), table_name.clone()],
            slot.table.clone(),
            scan.clone(),
        )?;
        let fields = provider.schema().fields().clone();
        let declared = fields.len().saturating_sub(2);
        let schema = nullable(fields.iter().take(declared));
        temp.register_table(scratch.clone(), Arc::new(provider))?;
        Ok(Self {
            schema_name,
            name: table_name,
            schema,
            rows: TargetRows::Stored {
                table: Box::new(slot.table),
                scan,
            },
            scratch,
            alias,
        })
    }

    /// The stored table; None for a temporary table.
    fn table(&self) -> Option<&Table> {
        match &self.rows {
            TargetRows::Memory(_) => None,
            TargetRows::Stored { table, .. } => Some(table),
        }
    }

    /// The expression of a target row's identifier (NULL where a join found no target row).
    fn row_id(&self) -> String {
        match &self.rows {
            TargetRows::Memory(_) => self.column(ROW_ID),
            TargetRows::Stored { .. } => format!(
                "(CAST({} AS BIGINT) * {} + {})",
                self.column(tributary_storage::FILE_COLUMN),
                1u64 << ROW_BITS,
                self.column(tributary_storage::ROW_COLUMN)
            ),
        }
    }

    /// The scratch table as a FROM item, under the statement's name for the target.
    fn scratch_item(&self) -> String {
        format!(
            "{}.{} AS {}",
            tributary_engine::catalog_list::TEMP_SCHEMA,
            quote(&self.scratch),
            quote(&self.alias)
        )
    }

    fn column(&self, name: &str) -> String {
        format!("{}.{}", quote(&self.alias), quote(name))
    }

    fn close(&self, cx: &Context) {
        let _ = cx.catalogs().temp().deregister_table(&self.scratch);
    }
}

/// The fields as a schema, nullable throughout: NOT NULL is checked on the final rows, with a
/// proper error.
fn nullable<'a>(fields: impl Iterator<Item = &'a Arc<Field>>) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn resolve_table(cx: &Context, name: &ObjectName) -> Result<(String, String)> {
    let (schema, table) = cx.resolve_existing(name)?;
    let pinned = cx.catalogs().pinned();
    match pinned.relation(cx.database(), &schema, &table) {
        Some(tributary_catalog::Relation::Table(_)) => Ok((schema, table)),
        Some(tributary_catalog::Relation::View(_)) => Err(Error::WrongObjectType(format!(
            "cannot change rows of \"{table}\": it is a view"
        ))),
        None => Err(Error::UndefinedTable(table)),
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn with_prefix(with: &Option<With>) -> String {
    match with {
        Some(with) => format!("{with} "),
        None => String::new(),
    }
}

fn from_list(tables: &[TableWithJoins]) -> String {
    tables.iter().map(|t| format!(", {t}")).collect::<String>()
}

async fn delete_rows(cx: &mut Context, delete: Delete, with: Option<With>) -> Result<Output> {
    if delete.returning.is_some() || delete.limit.is_some() {
        return Err(Error::NotSupported(
            "DELETE ... RETURNING and DELETE ... LIMIT are not supported".into(),
        ));
    }
    let tables = match &delete.from {
        FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
    };
    let [target_table] = tables.as_slice() else {
        return Err(Error::NotSupported(
            "DELETE names one target table; join others with USING".into(),
        ));
    };
    let mut others: Vec<TableWithJoins> = delete.using.clone().unwrap_or_default();
    if !target_table.joins.is_empty() {
        return Err(Error::Syntax(
            "DELETE FROM takes one table; join others with USING".into(),
        ));
    }
    others.retain(|t| t.relation != target_table.relation);
    let target = Target::open(cx, &target_table.relation).await?;
    let result = async {
        let selection = delete
            .selection
            .as_ref()
            .map(|s| format!(" WHERE {s}"))
            .unwrap_or_default();
        let sql = format!(
            "{}SELECT {} AS {ROW_ID}, CAST({ACTION_DELETE} AS BIGINT) AS {ACTION} FROM {}{}{selection}",
            with_prefix(&with),
            target.row_id(),
            target.scratch_item(),
            from_list(&others),
        );
        let (affected, _) = ChangeWriter::new(cx, &target)
            .apply(cx, &target, &[(&sql, false)], "DELETE")
            .await?;
        Ok::<_, Error>(affected)
    }
    .await;
    target.close(cx);
    let rows = result?;
    Ok(Output::Command {
        tag: "DELETE".into(),
        rows: Some(rows),
    })
}

/// The expression of each target column after an assignment list: the assigned value, or the
/// column's current value.
fn assigned_values(
    target: &Target,
    assignments: &[datafusion::sql::sqlparser::ast::Assignment],
) -> Result<Vec<String>> {
    let mut values: Vec<Option<String>> = vec![None; target.schema.fields().len()];
    for assignment in assignments {
        let names: Vec<ObjectName> = match &assignment.target {
            AssignmentTarget::ColumnName(name) => vec![name.clone()],
            AssignmentTarget::Tuple(names) => names.clone(),
        };
        if names.len() != 1 {
            return Err(Error::NotSupported(
                "multiple-column assignments are not supported".into(),
            ));
        }
        let column = name_parts(&names[0]).last().cloned().unwrap_or_default();
        let index = target.schema.index_of(&column).map_err(|_| {
            Error::UndefinedColumn(format!(
                "column \"{column}\" of relation \"{}\" does not exist",
                target.name
            ))
        })?;
        if values[index].is_some() {
            return Err(Error::Syntax(format!(
                "multiple assignments to same column \"{column}\""
            )));
        }
        values[index] = Some(match &assignment.value {
            Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case("default") => {
                default_of(target, &column)
            }
            value => value.to_string(),
        });
    }
    Ok(values
        .into_iter()
        .zip(target.schema.fields())
        .map(|(value, field)| value.unwrap_or_else(|| target.column(field.name())))
        .collect())
}

/// A column's DEFAULT expression, or NULL.
fn default_of(target: &Target, column: &str) -> String {
    target
        .table()
        .and_then(|t| t.column(column))
        .and_then(|c| c.default.clone())
        .map(|d| format!("({d})"))
        .unwrap_or_else(|| "NULL".into())
}

async fn update_rows(
    cx: &mut Context,
    table: &TableWithJoins,
    assignments: &[datafusion::sql::sqlparser::ast::Assignment],
    from: &[TableWithJoins],
    selection: Option<&Expr>,
    with: Option<With>,
) -> Result<Output> {
    if !table.joins.is_empty() {
        return Err(Error::NotSupported(
            "UPDATE of a join is not supported; name other tables in FROM".into(),
        ));
    }
    let target = Target::open(cx, &table.relation).await?;
    // Naming the target again in FROM (without an alias) means the target itself.
    let from: Vec<TableWithJoins> = from
        .iter()
        .filter(|t| !(t.joins.is_empty() && t.relation == table.relation))
        .cloned()
        .collect();
    let from = from.as_slice();
    let result = async {
        let values = assigned_values(&target, assignments)?;
        let projections: String = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!(", {v} AS \"__new_{i}\""))
            .collect();
        let selection = selection
            .map(|s| format!(" WHERE {s}"))
            .unwrap_or_default();
        let sql = format!(
            "{}SELECT {} AS {ROW_ID}, CAST({ACTION_UPDATE} AS BIGINT) AS {ACTION}{projections} FROM {}{}{selection}",
            with_prefix(&with),
            target.row_id(),
            target.scratch_item(),
            from_list(from),
        );
        let (affected, _) = ChangeWriter::new(cx, &target)
            .apply(cx, &target, &[(&sql, false)], "UPDATE")
            .await?;
        Ok::<_, Error>(affected)
    }
    .await;
    target.close(cx);
    let rows = result?;
    Ok(Output::Command {
        tag: "UPDATE".into(),
        rows: Some(rows),
    })
}

async fn merge_rows(
    cx: &mut Context,
    table: &TableFactor,
    source: &TableFactor,
    on: &Expr,
    clauses: &[MergeClause],
    with: Option<With>,
) -> Result<Output> {
    let target = Target::open(cx, table).await?;
    if is_simplified(clauses) {
        let result = remove_duplicates(cx, &target, source, on, &with).await;
        target.close(cx);
        return Ok(Output::Command {
            tag: "MERGE".into(),
            rows: Some(result?),
        });
    }
    let result = async {
        let matched = format!("{} IS NOT NULL", target.row_id());
        // One CASE arm per clause, in order: the first clause whose condition holds decides.
        let mut action_arms = Vec::new();
        let mut value_arms: Vec<Vec<String>> = vec![Vec::new(); target.schema.fields().len()];
        for clause in clauses {
            let condition = match clause.clause_kind {
                MergeClauseKind::Matched => matched.clone(),
                MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget => {
                    format!("NOT ({matched})")
                }
                MergeClauseKind::NotMatchedBySource => {
                    return Err(Error::NotSupported(
                        "WHEN NOT MATCHED BY SOURCE is not supported".into(),
                    ));
                }
            };
            let condition = match &clause.predicate {
                Some(predicate) => format!("{condition} AND ({predicate})"),
                None => condition,
            };
            let (kind, values) = match (&clause.action, clause.clause_kind) {
                (MergeAction::Update(update), MergeClauseKind::Matched) => {
                    (ACTION_UPDATE, assigned_values(&target, &update.assignments)?)
                }
                (MergeAction::Delete { .. }, MergeClauseKind::Matched) => {
                    (ACTION_DELETE, vec!["NULL".to_string(); value_arms.len()])
                }
                (MergeAction::Insert(insert), kind) if kind != MergeClauseKind::Matched => {
                    (ACTION_INSERT, insert_values(&target, insert)?)
                }
                _ => {
                    return Err(Error::Syntax(
                        "WHEN MATCHED takes UPDATE or DELETE, WHEN NOT MATCHED takes INSERT".into(),
                    ));
                }
            };
            action_arms.push(format!("WHEN {condition} THEN {kind}"));
            for (arms, value) in value_arms.iter_mut().zip(values) {
                arms.push(format!("WHEN {condition} THEN {value}"));
            }
        }
        let projections: String = value_arms
            .iter()
            .enumerate()
            .map(|(i, arms)| format!(", CASE {} END AS \"__new_{i}\"", arms.join(" ")))
            .collect();
        let sql = format!(
            "{}SELECT * FROM (SELECT {} AS {ROW_ID}, CAST(CASE {} END AS BIGINT) AS {ACTION}{projections} FROM {source} LEFT JOIN {} ON {on}) AS \"__merge\" WHERE {ACTION} IS NOT NULL",
            with_prefix(&with),
            target.row_id(),
            action_arms.join(" "),
            target.scratch_item(),
        );
        let (affected, _) = ChangeWriter::new(cx, &target)
            .apply(cx, &target, &[(&sql, true)], "MERGE")
            .await?;
        Ok::<_, Error>(affected)
    }
    .await;
    target.close(cx);
    let rows = result?;
    Ok(Output::Command {
        tag: "MERGE".into(),
        rows: Some(rows),
    })
}

/// True for Redshift's simplified MERGE (`REMOVE DUPLICATES`), as the dialect marks it.
fn is_simplified(clauses: &[MergeClause]) -> bool {
    let [clause] = clauses else {
        return false;
    };
    let MergeAction::Insert(insert) = &clause.action else {
        return false;
    };
    let MergeInsertKind::Values(values) = &insert.kind else {
        return false;
    };
    matches!(
        values.rows.as_slice(),
        [row] if matches!(
            row.content.as_slice(),
            [Expr::Value(v)] if v.value.to_string().contains(tributary_syntax::dialect::REMOVE_DUPLICATES_MARKER)
        )
    )
}

/// Simplified MERGE: target rows that match a source row are replaced by the source rows
/// (one copy each, so target duplicates go), and unmatched source rows are inserted. The
/// source has the target's columns, in order. Returns the number of source rows.
async fn remove_duplicates(
    cx: &mut Context,
    target: &Target,
    source: &TableFactor,
    on: &Expr,
    with: &Option<With>,
) -> Result<u64> {
    let matched = format!(
        "{}SELECT {} AS {ROW_ID}, CAST({ACTION_DELETE} AS BIGINT) AS {ACTION} FROM {source} JOIN {} ON {on}",
        with_prefix(with),
        target.row_id(),
        target.scratch_item(),
    );
    let (source_sql, source_alias) = match source {
        TableFactor::Table { name, alias, .. } => (
            name.to_string(),
            alias
                .as_ref()
                .map(|a| normalize_ident(&a.name))
                .unwrap_or_else(|| name_parts(name).last().cloned().unwrap_or_default()),
        ),
        other => (other.to_string(), String::new()),
    };
    let from = if source_alias.is_empty() {
        source_sql
    } else {
        format!("{source_sql} AS {}", quote(&source_alias))
    };
    let inserted = format!(
        "{}SELECT NULL AS {ROW_ID}, CAST({ACTION_INSERT} AS BIGINT) AS {ACTION}, * FROM {from}",
        with_prefix(with),
    );
    let (_, rows) = ChangeWriter::new(cx, target)
        .apply(
            cx,
            target,
            &[(&matched, false), (&inserted, false)],
            "MERGE",
        )
        .await?;
    Ok(rows)
}

/// The value of each target column for a WHEN NOT MATCHED THEN INSERT.
fn insert_values(
    target: &Target,
    insert: &datafusion::sql::sqlparser::ast::MergeInsertExpr,
) -> Result<Vec<String>> {
    let MergeInsertKind::Values(values) = &insert.kind else {
        return Err(Error::NotSupported(
            "INSERT ROW in MERGE is not supported".into(),
        ));
    };
    let [row] = values.rows.as_slice() else {
        return Err(Error::Syntax(
            "MERGE ... INSERT takes one VALUES row".into(),
        ));
    };
    let row = &row.content;
    let columns: Vec<String> = if insert.columns.is_empty() {
        // Without a column list, values fill the columns in order; the rest take defaults.
        target
            .schema
            .fields()
            .iter()
            .take(row.len())
            .map(|f| f.name().clone())
            .collect()
    } else {
        insert
            .columns
            .iter()
            .map(|c| name_parts(c).last().cloned().unwrap_or_default())
            .collect()
    };
    if columns.len() != row.len() {
        return Err(Error::Syntax(format!(
            "INSERT has {} target columns but {} expressions",
            columns.len(),
            row.len()
        )));
    }
    let mut out: Vec<Option<String>> = vec![None; target.schema.fields().len()];
    for (column, value) in columns.iter().zip(row) {
        let index = target.schema.index_of(column).map_err(|_| {
            Error::UndefinedColumn(format!(
                "column \"{column}\" of relation \"{}\" does not exist",
                target.name
            ))
        })?;
        out[index] = Some(match value {
            Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case("default") => {
                default_of(target, column)
            }
            value => value.to_string(),
        });
    }
    Ok(out
        .into_iter()
        .zip(target.schema.fields())
        .map(|(value, field)| value.unwrap_or_else(|| default_of(target, field.name())))
        .collect())
}

/// How many changed rows the writer counts between measures of the memory its bitmap holds.
const MEASURE_EVERY: u64 = 1 << 20;

/// The bytes a changed row is taken to add to the bitmap between measures (a sparse row costs
/// two bytes in a bitmap container, a dense one an eighth of a byte).
const BYTES_PER_CHANGED_ROW: usize = 2;

/// A statement's changes, taken as the planned SELECT streams them: the target rows it
/// deletes or replaces, as a bitmap of row identifiers, and its new rows. For a stored table
/// the new rows (new versions of updated rows, and inserted rows) are written to new data
/// files as they come, so memory holds the bitmap and a row group of encoded rows, whatever
/// the size of the change; one Delta commit marks the changed rows deleted and adds the files.
/// The bitmap's memory is reserved from the session's pool: a change too large for the limit
/// fails with 53000 and commits nothing.
struct ChangeWriter {
    /// Target rows deleted or replaced, by row identifier.
    changed: RowSet,
    /// Rows inserted.
    inserted: u64,
    new_rows: NewRows,
    reservation: MemoryReservation,
    /// Changed rows since the bitmap was last measured.
    unmeasured: u64,
    /// The bitmap's size when last measured.
    measured: usize,
    /// The part of the reservation that is the bitmap's.
    bitmap_bytes: usize,
}

/// Where the new rows go.
enum NewRows {
    /// A temporary table's: kept to rebuild it.
    Memory {
        /// New values, in the target's column order.
        values: Vec<RecordBatch>,
        /// Row identifier -> (batch, row) of its new values in `values`.
        updated: HashMap<u64, (usize, usize)>,
        /// Rows to insert, (batch, row) in `values`.
        inserted: Vec<(usize, usize)>,
    },
    /// A stored table's: written to new files, opened with the first row.
    Stored {
        append: Option<Box<Appender>>,
        identity_next: Vec<(String, i64)>,
    },
}

impl ChangeWriter {
    fn new(cx: &Context, target: &Target) -> Self {
        let new_rows = match &target.rows {
            TargetRows::Memory(_) => NewRows::Memory {
                values: Vec::new(),
                updated: HashMap::new(),
                inserted: Vec::new(),
            },
            TargetRows::Stored { .. } => NewRows::Stored {
                append: None,
                identity_next: Vec::new(),
            },
        };
        let reservation = MemoryConsumer::new("changed rows of UPDATE, DELETE or MERGE")
            .register(&cx.context().runtime_env().memory_pool);
        Self {
            changed: RowSet::new(),
            inserted: 0,
            new_rows,
            reservation,
            unmeasured: 0,
            measured: 0,
            bitmap_bytes: 0,
        }
    }

    /// Runs each of `queries` (SQL, and whether a target row may match one source row only)
    /// into the writer, then commits the changes as `operation`. Returns the rows affected
    /// and the rows inserted. On an error nothing is committed.
    async fn apply(
        mut self,
        cx: &mut Context,
        target: &Target,
        queries: &[(&str, bool)],
        operation: &str,
    ) -> Result<(u64, u64)> {
        for (sql, single_match) in queries {
            if let Err(err) = self.run(cx, sql, target, *single_match).await {
                self.abort().await;
                return Err(err);
            }
        }
        self.finish(cx, target, operation).await
    }

    /// Plans the statement's SELECT and takes its rows as they stream.
    async fn run(
        &mut self,
        cx: &mut Context,
        sql: &str,
        target: &Target,
        single_match: bool,
    ) -> Result<()> {
        let mut statements = cx.parse(sql)?;
        let statement = statements
            .pop()
            .and_then(|s| s.into_sql())
            .ok_or_else(|| Error::Internal("empty DML query".into()))?;
        let statement = cx.rewrite(statement)?;
        let plan = cx.plan(&statement).await?;
        // Cast the new values to the target's column types, with SQL's cast rules.
        let columns = plan.schema().columns();
        let has_values = columns.len() > 2;
        if has_values && columns.len() != target.schema.fields().len() + 2 {
            return Err(Error::InvalidStatement(format!(
                "the source has {} columns, the target \"{}\" {}",
                columns.len() - 2,
                target.name,
                target.schema.fields().len()
            )));
        }
        let mut exprs = vec![col(columns[0].clone()), col(columns[1].clone())];
        if has_values {
            for (index, field) in target.schema.fields().iter().enumerate() {
                exprs.push(
                    cast(col(columns[index + 2].clone()), field.data_type().clone())
                        .alias(field.name()),
                );
            }
        }
        let plan = LogicalPlanBuilder::from(plan).project(exprs)?.build()?;
        let mut stream = cx
            .context()
            .execute_logical_plan(plan)
            .await?
            .execute_stream()
            .await?;
        while let Some(batch) = stream.next().await {
            self.take(cx, target, batch?, has_values, single_match)
                .await?;
        }
        Ok(())
    }

    /// Takes one batch of the statement's rows: row identifier, action, new values.
    async fn take(
        &mut self,
        cx: &Context,
        target: &Target,
        batch: RecordBatch,
        has_values: bool,
        single_match: bool,
    ) -> Result<()> {
        let ids = arrow::compute::cast(batch.column(0), &DataType::UInt64)?;
        let ids = ids.as_primitive::<UInt64Type>();
        let actions = arrow::compute::cast(batch.column(1), &DataType::Int64)?;
        let actions = actions.as_primitive::<arrow::datatypes::Int64Type>();
        let index = match &self.new_rows {
            NewRows::Memory { values, .. } => values.len(),
            NewRows::Stored { .. } => 0,
        };
        // The rows whose values become rows of the table.
        let mut keep = BooleanBufferBuilder::new(batch.num_rows());
        let changed_before = self.changed.len();
        for row in 0..batch.num_rows() {
            let action = actions.value(row);
            if action == ACTION_INSERT {
                keep.append(true);
                self.inserted += 1;
                if let NewRows::Memory { inserted, .. } = &mut self.new_rows {
                    inserted.push((index, row));
                }
                continue;
            }
            let id = ids.value(row);
            if !self.changed.insert(id) {
                if single_match {
                    return Err(Error::Cardinality(
                        "Found multiple matches to update the same tuple: a row of the MERGE target matches more than one source row".into(),
                    ));
                }
                // UPDATE ... FROM: a row matched by several rows is updated once, as in
                // Postgres.
                keep.append(false);
                continue;
            }
            let updated = action != ACTION_DELETE;
            keep.append(updated);
            if updated && let NewRows::Memory { updated, .. } = &mut self.new_rows {
                updated.insert(id, (index, row));
            }
        }
        self.unmeasured += self.changed.len() - changed_before;
        if has_values {
            let values = batch.project(&(2..batch.num_columns()).collect::<Vec<_>>())?;
            match &mut self.new_rows {
                NewRows::Memory { values: all, .. } => {
                    self.reservation.try_grow(values.get_array_memory_size())?;
                    all.push(values);
                }
                NewRows::Stored {
                    append,
                    identity_next,
                } => {
                    let kept =
                        filter_record_batch(&values, &BooleanArray::new(keep.finish(), None))?;
                    if kept.num_rows() > 0 {
                        let TargetRows::Stored { table, .. } = &target.rows else {
                            return Err(Error::Internal(
                                "new rows of another kind of target".into(),
                            ));
                        };
                        let stored = prepare_batch(table, &target.name, kept, identity_next)?;
                        let writer = match append {
                            Some(writer) => writer,
                            empty => {
                                let store = cx.catalogs().store();
                                empty.insert(Box::new(
                                    store
                                        .storage
                                        .table(&table.path)?
                                        .appender(table.version, write_buffer_bytes(store))
                                        .await?,
                                ))
                            }
                        };
                        writer.write(&stored).await?;
                    }
                }
            }
        }
        self.hold()
    }

    /// Keeps the bitmap's part of the reservation at its size: measured every
    /// [`MEASURE_EVERY`] changed rows, estimated in between.
    fn hold(&mut self) -> Result<()> {
        let wanted = if self.unmeasured >= MEASURE_EVERY {
            self.unmeasured = 0;
            self.measured = self.changed.serialized_size();
            self.measured
        } else {
            self.measured + self.unmeasured as usize * BYTES_PER_CHANGED_ROW
        };
        if wanted > self.bitmap_bytes {
            self.reservation.try_grow(wanted - self.bitmap_bytes)?;
        } else {
            self.reservation.shrink(self.bitmap_bytes - wanted);
        }
        self.bitmap_bytes = wanted;
        Ok(())
    }

    /// Gives the changes up: nothing is committed.
    async fn abort(self) {
        if let NewRows::Stored {
            append: Some(append),
            ..
        } = self.new_rows
        {
            (*append).abort().await;
        }
    }

    /// Commits the changes; returns the rows affected and the rows inserted.
    async fn finish(
        self,
        cx: &mut Context,
        target: &Target,
        operation: &str,
    ) -> Result<(u64, u64)> {
        let affected = self.changed.len() + self.inserted;
        let inserted = self.inserted;
        if affected == 0 {
            self.abort().await;
            return Ok((0, 0));
        }
        match (self.new_rows, &target.rows) {
            (
                NewRows::Memory {
                    values,
                    updated,
                    inserted,
                },
                TargetRows::Memory(batches),
            ) => rebuild_memory(
                cx,
                target,
                batches,
                &self.changed,
                &updated,
                &values,
                &inserted,
            )?,
            (
                NewRows::Stored {
                    append,
                    identity_next,
                },
                TargetRows::Stored { table, scan },
            ) => {
                let added = match append {
                    Some(append) => Some((*append).into_staged().await?),
                    None => None,
                };
                let deleted = by_file(&self.changed, scan)?;
                let version = cx
                    .engine()
                    .storage
                    .table(&table.path)?
                    .change_rows(table.version, RowChanges { deleted, added }, operation)
                    .await?;
                let name = [
                    cx.database().to_string(),
                    target.schema_name.clone(),
                    target.name.clone(),
                ];
                tributary_engine::table::pin_written(
                    cx.catalogs(),
                    &name,
                    &table.path,
                    version,
                    &identity_next,
                )?;
            }
            _ => return Err(Error::Internal("new rows of another kind of target".into())),
        }
        Ok((affected, inserted))
    }
}

/// Row identifiers of a stored table as the rows of each data file, by path.
fn by_file(
    changed: &RowSet,
    scan: &tributary_storage::RowScan,
) -> Result<BTreeMap<String, RowSet>> {
    let mut deleted: BTreeMap<String, RowSet> = BTreeMap::new();
    let mut current: Option<(u64, RowSet)> = None;
    let mut close = |file: u64, rows: RowSet| -> Result<()> {
        let path = u32::try_from(file)
            .ok()
            .and_then(|file| scan.path_of(file))
            .ok_or_else(|| Error::Internal(format!("file number {file} names no data file")))?;
        deleted.insert(path.to_string(), rows);
        Ok(())
    };
    // Identifiers come in order, so each file's rows come together and in order.
    for id in changed.iter() {
        let (file, row) = (id >> ROW_BITS, id & ((1 << ROW_BITS) - 1));
        match &mut current {
            Some((open, rows)) if *open == file => {
                rows.try_push(row)
                    .map_err(|_| Error::Internal("row identifiers out of order".into()))?;
            }
            _ => {
                if let Some((open, rows)) = current.take() {
                    close(open, rows)?;
                }
                current = Some((file, RowSet::from_iter([row])));
            }
        }
    }
    if let Some((open, rows)) = current {
        close(open, rows)?;
    }
    Ok(deleted)
}

/// A temporary table's new content, rebuilt from its rows in memory.
fn rebuild_memory(
    cx: &mut Context,
    target: &Target,
    batches: &[RecordBatch],
    changed: &RowSet,
    updated: &HashMap<u64, (usize, usize)>,
    values: &[RecordBatch],
    inserted: &[(usize, usize)],
) -> Result<()> {
    let width = target.schema.fields().len();
    let mut content = Vec::with_capacity(batches.len() + 1);
    for batch in batches {
        let ids = batch.column(width).as_primitive::<UInt64Type>();
        // A changed row goes unless it was updated.
        let keep: BooleanArray = ids
            .values()
            .iter()
            .map(|id| Some(!changed.contains(*id) || updated.contains_key(id)))
            .collect();
        let mut columns: Vec<ArrayRef> = batch.columns()[..width].to_vec();
        let touched = ids.values().iter().any(|id| updated.contains_key(id));
        if touched {
            // Row i comes from source 0 (the old row) or from new-value batch b (source b + 1).
            let indices: Vec<(usize, usize)> = ids
                .values()
                .iter()
                .enumerate()
                .map(|(row, id)| match updated.get(id) {
                    Some((b, r)) => (b + 1, *r),
                    None => (0, row),
                })
                .collect();
            for (c, column) in columns.iter_mut().enumerate() {
                let mut sources: Vec<&dyn Array> = vec![column.as_ref()];
                sources.extend(values.iter().map(|v| v.column(c).as_ref()));
                *column = interleave(&sources, &indices)?;
            }
        }
        let rebuilt = RecordBatch::try_new(target.schema.clone(), columns)?;
        content.push(filter_record_batch(&rebuilt, &keep)?);
    }
    if !inserted.is_empty() {
        let columns = (0..width)
            .map(|c| {
                let sources: Vec<&dyn Array> =
                    values.iter().map(|v| v.column(c).as_ref()).collect();
                Ok(interleave(&sources, inserted)?)
            })
            .collect::<Result<Vec<_>>>()?;
        content.push(RecordBatch::try_new(target.schema.clone(), columns)?);
    }
    let memory = MemTable::try_new(target.schema.clone(), vec![content])?;
    let temp = cx.catalogs().temp().clone();
    temp.deregister_table(&target.name)?;
    temp.register_table(target.name.clone(), Arc::new(memory))?;
    Ok(())
}
