//! The `pg_catalog` schema: Postgres catalogs (from datafusion-pg-catalog, built from the same
//! catalog list queries use) plus Redshift's system views, built from the pinned catalog
//! version without touching table storage.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::prelude::{col, lit};
use tributary_catalog::{CatalogState, Relation, SUPERUSER, SqlType};
use tributary_engine::catalog_list::SessionCatalogs;

use crate::engine::Engine;

/// Redshift system views served here.
const REDSHIFT_VIEWS: &[&str] = &[
    "svv_tables",
    "svv_columns",
    "svv_all_tables",
    "svv_all_columns",
    "pg_table_def",
    "svv_table_info",
    "stl_load_errors",
    "pg_group",
];

/// True if an unqualified name should resolve to `pg_catalog` when no user relation has it.
pub fn is_system_relation(name: &str) -> bool {
    ["pg_", "svv_", "stv_", "stl_", "svl_", "sys_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

#[derive(Debug)]
pub struct SystemSchema {
    engine: Arc<Engine>,
    catalogs: SessionCatalogs,
    database: String,
    postgres: Option<Arc<dyn SchemaProvider>>,
}

impl SystemSchema {
    /// datafusion-pg-catalog derives `pg_attribute` types from Arrow types, which loses what
    /// the user declared (VARCHAR(12) becomes text, NUMERIC(8,2) plain numeric). This joins
    /// it with the catalog's declarations so that psql's `\d` and drivers show them.
    async fn with_declared_types(
        &self,
        postgres: &dyn SchemaProvider,
        attributes: Arc<dyn TableProvider>,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let (Some(classes), Some(namespaces)) = (
            postgres.table("pg_class").await?,
            postgres.table("pg_namespace").await?,
        ) else {
            return Ok(attributes);
        };
        let declared = declared_types(&self.catalogs.pinned(), &self.database)?;
        let declared = Arc::new(MemTable::try_new(declared.schema(), vec![vec![declared]])?);
        let left = |name: &str| datafusion::common::Column::from_qualified_name(name);
        let plan = LogicalPlanBuilder::scan("a", provider_as_source(attributes.clone()), None)?
            .join(
                LogicalPlanBuilder::scan("c", provider_as_source(classes), None)?.build()?,
                datafusion::logical_expr::JoinType::Left,
                (vec![left("a.attrelid")], vec![left("c.oid")]),
                None,
            )?
            .join(
                LogicalPlanBuilder::scan("n", provider_as_source(namespaces), None)?.build()?,
                datafusion::logical_expr::JoinType::Left,
                (vec![left("c.relnamespace")], vec![left("n.oid")]),
                None,
            )?
            .join(
                LogicalPlanBuilder::scan("m", provider_as_source(declared), None)?.build()?,
                datafusion::logical_expr::JoinType::Left,
                (
                    vec![left("n.nspname"), left("c.relname"), left("a.attname")],
                    vec![
                        left("m.schema_name"),
                        left("m.table_name"),
                        left("m.column_name"),
                    ],
                ),
                None,
            )?
            .project(attributes.schema().fields().iter().map(|field| {
                let original = col(format!("a.{}", field.name()));
                match field.name().as_str() {
                    "atttypid" | "atttypmod" => {
                        datafusion::functions::core::expr_fn::coalesce(vec![
                            datafusion::prelude::cast(
                                col(format!("m.{}", field.name())),
                                field.data_type().clone(),
                            ),
                            original,
                        ])
                        .alias(field.name())
                    }
                    _ => original.alias(field.name()),
                }
            }))?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }

    /// Plans every view of the database to list its columns. A view that no longer plans (its
    /// table was dropped) has no columns to list, as in Redshift's late-binding views.
    async fn view_columns(&self) -> ViewColumns {
        use datafusion::catalog::CatalogProviderList;
        let state = self.catalogs.pinned();
        let Some(catalog) = self.catalogs.catalog(&self.database) else {
            return Vec::new();
        };
        let mut views = Vec::new();
        for (schema, name, relation) in relations(&state, &self.database) {
            if !matches!(relation, Relation::View(_)) {
                continue;
            }
            let Some(provider) = catalog.schema(schema) else {
                continue;
            };
            let Ok(Some(view)) = provider.table(name).await else {
                continue;
            };
            let columns = view
                .schema()
                .fields()
                .iter()
                .map(|field| tributary_catalog::Column {
                    name: field.name().clone(),
                    sql_type: SqlType::from_arrow(field.data_type()).unwrap_or(SqlType::Varchar {
                        length: tributary_catalog::VARCHAR_LENGTH_MAX,
                    }),
                    nullable: field.is_nullable(),
                    default: None,
                    identity: None,
                    encode: None,
                })
                .collect();
            views.push((schema.to_string(), name.to_string(), columns));
        }
        views
    }

    pub fn new(
        engine: Arc<Engine>,
        catalogs: SessionCatalogs,
        database: String,
        postgres: Option<Arc<dyn SchemaProvider>>,
    ) -> Self {
        Self {
            engine,
            catalogs,
            database,
            postgres,
        }
    }

    fn build(&self, name: &str, views: &ViewColumns) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let state = self.catalogs.pinned();
        let batch = match name {
            "svv_tables" | "svv_all_tables" => tables(&state, &self.database)?,
            "svv_columns" | "svv_all_columns" => columns(&state, &self.database, views)?,
            "pg_table_def" => table_def(&state, &self.database)?,
            "svv_external_tables" | "svv_external_columns" => external_view(name),
            "stv_mv_info"
            | "sys_mv_refresh_history"
            | "sys_stream_scan_states"
            | "sys_stream_lag"
            | "svv_external_schemas" => {
                tributary_streaming::system_view(self.engine.as_ref(), &state, &self.database, name)
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal(format!("no view {name}"))
                    })?
            }
            "pg_user" => users(&state)?,
            "pg_group" => groups(&state)?,
            "svv_datashares" | "svv_datashare_objects" | "svv_datashare_consumers" => {
                crate::sharing::views::system_view(&self.catalogs, &state, name)
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal(format!("no view {name}"))
                    })?
            }
            "stl_load_errors" => {
                crate::copy::errors::load_errors_batch(&self.engine.load_errors.snapshot())
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            }
            _ => return Ok(None),
        };
        let batch = visible_rows(&state, &self.catalogs.user(), &self.database, name, batch)?;
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }
}

/// The rows of a system view a user may see, as in Redshift: a user who is not a superuser
/// sees the relations it may use (USAGE on the schema and a privilege on the relation), the
/// streaming views' rows of those relations, and its own load errors.
pub(crate) fn visible_rows(
    state: &CatalogState,
    user: &str,
    database: &str,
    view: &str,
    batch: RecordBatch,
) -> DfResult<RecordBatch> {
    if state.is_superuser(user) {
        return Ok(batch);
    }
    let (schema_column, name_column) = match view {
        "svv_tables" | "svv_all_tables" | "svv_columns" | "svv_all_columns" => {
            ("table_schema", "table_name")
        }
        "pg_table_def" => ("schemaname", "tablename"),
        "svv_table_info" => ("schema", "table"),
        "stv_mv_info" => ("schema", "name"),
        "sys_mv_refresh_history"
        | "sys_stream_scan_states"
        | "sys_stream_lag"
        | "sys_stream_scan_errors" => ("schema_name", "mv_name"),
        "stl_load_errors" => {
            let Some(users) = batch
                .column_by_name("userid")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            else {
                return Ok(batch);
            };
            let own: BooleanArray = users.iter().map(|u| Some(u == Some(user))).collect();
            return Ok(arrow::compute::filter_record_batch(&batch, &own)?);
        }
        _ => return Ok(batch),
    };
    let text = |column: &str| -> Option<Vec<Option<String>>> {
        let array = batch.column_by_name(column)?;
        let array = arrow::compute::cast(array, &DataType::Utf8).ok()?;
        let array = array.as_any().downcast_ref::<StringArray>()?.clone();
        Some(array.iter().map(|v| v.map(str::to_string)).collect())
    };
    let (Some(schemas), Some(names)) = (text(schema_column), text(name_column)) else {
        return Ok(batch);
    };
    let keep: BooleanArray = schemas
        .iter()
        .zip(&names)
        .map(|(schema, name)| {
            let (Some(schema), Some(name)) = (schema, name) else {
                return Some(false);
            };
            Some(may_see(state, user, database, schema, name))
        })
        .collect();
    Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
}

/// True if `user` may see the relation in system views: it may use the schema and holds some
/// privilege on the relation (superusers see everything).
pub(crate) fn may_see(
    state: &CatalogState,
    user: &str,
    database: &str,
    schema: &str,
    name: &str,
) -> bool {
    use tributary_catalog::Privilege as P;
    if state.is_superuser(user) {
        return true;
    }
    let Ok(found) = state.schema(database, schema) else {
        return false;
    };
    if !state.holds(user, found.oid, &found.owner, P::Usage) {
        return false;
    }
    let Some(relation) = found.relations.get(name) else {
        return false;
    };
    let owner = CatalogState::relation_owner(relation);
    [P::Select, P::Insert, P::Update, P::Delete, P::References]
        .into_iter()
        .any(|p| state.holds(user, relation.oid(), owner, p))
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = REDSHIFT_VIEWS
            .iter()
            .chain(tributary_streaming::SYSTEM_VIEWS)
            .chain(crate::sharing::views::VIEWS)
            .map(|s| s.to_string())
            .collect();
        if let Some(postgres) = &self.postgres {
            names.extend(postgres.table_names());
        }
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if name == "sys_stream_scan_errors" {
            let batches = tributary_streaming::scan_errors(self.engine.as_ref(), &self.database)
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let state = self.catalogs.pinned();
            let user = self.catalogs.user();
            let batches = batches
                .into_iter()
                .map(|batch| visible_rows(&state, &user, &self.database, name, batch))
                .collect::<DfResult<Vec<_>>>()?;
            let schema = tributary_streaming::scan_errors_schema();
            return Ok(Some(Arc::new(MemTable::try_new(schema, vec![batches])?)));
        }
        if name == "svv_table_info" {
            let state = self.catalogs.pinned();
            let batch = table_info(&state, &self.database, &self.engine.storage).await?;
            let batch = visible_rows(&state, &self.catalogs.user(), &self.database, name, batch)?;
            return Ok(Some(Arc::new(MemTable::try_new(
                batch.schema(),
                vec![vec![batch]],
            )?)));
        }
        let views = if matches!(name, "svv_columns" | "svv_all_columns") {
            self.view_columns().await
        } else {
            Vec::new()
        };
        if let Some(table) = self.build(name, &views)? {
            return Ok(Some(table));
        }
        let Some(postgres) = &self.postgres else {
            return Ok(None);
        };
        let Some(table) = postgres.table(name).await? else {
            return Ok(None);
        };
        let table = if name == "pg_attribute" {
            self.with_declared_types(postgres.as_ref(), table).await?
        } else {
            table
        };
        Ok(Some(with_driver_columns(name, table)?))
    }

    fn table_exist(&self, name: &str) -> bool {
        REDSHIFT_VIEWS.contains(&name)
            || tributary_streaming::SYSTEM_VIEWS.contains(&name)
            || crate::sharing::views::VIEWS.contains(&name)
            || self.postgres.as_ref().is_some_and(|p| p.table_exist(name))
    }
}

/// Columns clients read from Postgres catalogs that datafusion-pg-catalog lacks:
/// - psql sends pre-12 catalog queries to a server that reports version 8.0.2, and those read
///   `pg_class.relhasoids` (always false) and `pg_attrdef.adsrc`;
/// - Redshift drivers read `pg_class.reldiststyle` (EVEN, 0: one node has nothing to
///   distribute), `pg_class.relacl` (no per-table privileges yet), and `pg_attribute`'s
///   `attencodingtype`, `attisdistkey`, `attsortkeyord` (the real values are in pg_table_def).
fn driver_columns(table: &str) -> DfResult<Vec<Expr>> {
    let null_of =
        |t: DataType| -> DfResult<Expr> { Ok(lit(datafusion::common::ScalarValue::try_from(&t)?)) };
    Ok(match table {
        "pg_class" => vec![
            lit(false).alias("relhasoids"),
            lit(0i32).alias("reldiststyle"),
            null_of(DataType::new_list(DataType::Utf8, true))?.alias("relacl"),
        ],
        "pg_attribute" => vec![
            lit(0i32).alias("attencodingtype"),
            lit(false).alias("attisdistkey"),
            lit(0i32).alias("attsortkeyord"),
        ],
        "pg_attrdef" => vec![null_of(DataType::Utf8)?.alias("adsrc")],
        _ => vec![],
    })
}

fn with_driver_columns(
    name: &str,
    table: Arc<dyn TableProvider>,
) -> DfResult<Arc<dyn TableProvider>> {
    let extra = driver_columns(name)?;
    if extra.is_empty() {
        return Ok(table);
    }
    let columns: Vec<Expr> = table
        .schema()
        .fields()
        .iter()
        .map(|f| col(f.name()))
        .collect();
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?
        .project(columns.into_iter().chain(extra))?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// The declared type of every table column, as Postgres type OID and type modifier.
fn declared_types(state: &CatalogState, database: &str) -> DfResult<RecordBatch> {
    let rows = column_rows(state, database);
    let (oid, typmod): (Vec<i32>, Vec<i32>) = rows
        .iter()
        .map(|r| match &r.column.sql_type {
            SqlType::Varchar { length } | SqlType::Char { length } => {
                (r.column.sql_type.pg_oid() as i32, *length as i32 + 4)
            }
            SqlType::Decimal { precision, scale } => {
                (1700, ((*precision as i32) << 16 | *scale as i32) + 4)
            }
            // Types format_type does not know are shown by their storage form.
            SqlType::Super => (25, -1),
            SqlType::Varbyte { .. } => (17, -1),
            other => (other.pg_oid() as i32, -1),
        })
        .unzip();
    let schema = Arc::new(Schema::new(vec![
        utf8("schema_name"),
        utf8("table_name"),
        utf8("column_name"),
        int("atttypid"),
        int("atttypmod"),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(rows.iter().map(|r| Some(r.schema.to_string()))),
            strings(rows.iter().map(|r| Some(r.table.to_string()))),
            strings(rows.iter().map(|r| Some(r.column.name.clone()))),
            ints(oid.into_iter().map(Some)),
            ints(typmod.into_iter().map(Some)),
        ],
    )?)
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}

fn strings<I: IntoIterator<Item = Option<String>>>(values: I) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

fn ints<I: IntoIterator<Item = Option<i32>>>(values: I) -> ArrayRef {
    Arc::new(Int32Array::from_iter(values))
}

/// Every relation of a database: (schema, name, relation).
fn relations<'a>(state: &'a CatalogState, database: &str) -> Vec<(&'a str, &'a str, &'a Relation)> {
    state
        .databases
        .get(database)
        .into_iter()
        .flat_map(|db| db.schemas.iter())
        .flat_map(|(schema, s)| {
            s.relations
                .iter()
                .map(move |(name, r)| (schema.as_str(), name.as_str(), r))
        })
        .collect()
}

fn tables(state: &CatalogState, database: &str) -> DfResult<RecordBatch> {
    let rows = relations(state, database);
    let schema = Arc::new(Schema::new(vec![
        utf8("table_catalog"),
        utf8("table_schema"),
        utf8("table_name"),
        utf8("table_type"),
        utf8("remarks"),
    ]));
    let kind = |r: &Relation| match r {
        Relation::Table(_) => "BASE TABLE",
        Relation::View(_) => "VIEW",
    };
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(rows.iter().map(|_| Some(database.to_string()))),
            strings(rows.iter().map(|(s, _, _)| Some(s.to_string()))),
            strings(rows.iter().map(|(_, n, _)| Some(n.to_string()))),
            strings(rows.iter().map(|(_, _, r)| Some(kind(r).to_string()))),
            strings(rows.iter().map(|_| None)),
        ],
    )?)
}

/// One row per column of every table (view columns are not listed yet: they need planning).
struct ColumnRow<'a> {
    schema: &'a str,
    table: &'a str,
    position: i32,
    column: std::borrow::Cow<'a, tributary_catalog::Column>,
    distkey: bool,
    sortkey: i32,
}

fn column_rows<'a>(state: &'a CatalogState, database: &str) -> Vec<ColumnRow<'a>> {
    let mut rows = Vec::new();
    for (schema, name, relation) in relations(state, database) {
        let Relation::Table(table) = relation else {
            continue;
        };
        for (index, column) in table.columns.iter().enumerate() {
            rows.push(ColumnRow {
                schema,
                table: name,
                position: index as i32 + 1,
                column: std::borrow::Cow::Borrowed(column),
                distkey: table.distribution.distkey.as_deref() == Some(column.name.as_str()),
                sortkey: table
                    .distribution
                    .sortkey
                    .iter()
                    .position(|k| *k == column.name)
                    .map_or(0, |p| p as i32 + 1),
            });
        }
    }
    rows
}

/// Columns of a view, named by (schema, view): views are planned to learn them.
type ViewColumns = Vec<(String, String, Vec<tributary_catalog::Column>)>;

fn columns(state: &CatalogState, database: &str, views: &ViewColumns) -> DfResult<RecordBatch> {
    let mut rows = column_rows(state, database);
    for (schema, view, columns) in views {
        for (index, column) in columns.iter().enumerate() {
            rows.push(ColumnRow {
                schema,
                table: view,
                position: index as i32 + 1,
                column: std::borrow::Cow::Borrowed(column),
                distkey: false,
                sortkey: 0,
            });
        }
    }
    let schema = Arc::new(Schema::new(vec![
        utf8("table_catalog"),
        utf8("table_schema"),
        utf8("table_name"),
        utf8("column_name"),
        int("ordinal_position"),
        utf8("column_default"),
        utf8("is_nullable"),
        utf8("data_type"),
        int("character_maximum_length"),
        int("numeric_precision"),
        int("numeric_precision_radix"),
        int("numeric_scale"),
        int("datetime_precision"),
        utf8("interval_type"),
        int("interval_precision"),
        utf8("character_set_catalog"),
        utf8("character_set_schema"),
        utf8("character_set_name"),
        utf8("collation_catalog"),
        utf8("collation_schema"),
        utf8("collation_name"),
        utf8("domain_name"),
        utf8("remarks"),
    ]));
    let numeric = |t: &SqlType| -> (Option<i32>, Option<i32>) {
        match t {
            SqlType::SmallInt => (Some(16), Some(0)),
            SqlType::Integer => (Some(32), Some(0)),
            SqlType::BigInt => (Some(64), Some(0)),
            SqlType::Decimal { precision, scale } => (Some(*precision as i32), Some(*scale as i32)),
            SqlType::Real => (Some(24), None),
            SqlType::Double => (Some(53), None),
            _ => (None, None),
        }
    };
    let data_type = |t: &SqlType| match t {
        SqlType::Decimal { .. } => "numeric".to_string(),
        SqlType::Varchar { .. } => "character varying".to_string(),
        SqlType::Char { .. } => "character".to_string(),
        SqlType::Varbyte { .. } => "varbyte".to_string(),
        other => other.display_name(),
    };
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(rows.iter().map(|_| Some(database.to_string()))),
            strings(rows.iter().map(|r| Some(r.schema.to_string()))),
            strings(rows.iter().map(|r| Some(r.table.to_string()))),
            strings(rows.iter().map(|r| Some(r.column.name.clone()))),
            ints(rows.iter().map(|r| Some(r.position))),
            strings(rows.iter().map(|r| r.column.default.clone())),
            strings(
                rows.iter()
                    .map(|r| Some(if r.column.nullable { "YES" } else { "NO" }.to_string())),
            ),
            strings(rows.iter().map(|r| Some(data_type(&r.column.sql_type)))),
            ints(
                rows.iter()
                    .map(|r| r.column.sql_type.length().map(|l| l as i32)),
            ),
            ints(rows.iter().map(|r| numeric(&r.column.sql_type).0)),
            ints(rows.iter().map(|r| {
                numeric(&r.column.sql_type).0.map(|_| {
                    if matches!(r.column.sql_type, SqlType::Decimal { .. }) {
                        10
                    } else {
                        2
                    }
                })
            })),
            ints(rows.iter().map(|r| numeric(&r.column.sql_type).1)),
            ints(rows.iter().map(|r| {
                matches!(
                    r.column.sql_type,
                    SqlType::Timestamp | SqlType::TimestampTz | SqlType::Time
                )
                .then_some(6)
            })),
            strings(rows.iter().map(|_| None)),
            ints(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
            strings(rows.iter().map(|_| None)),
        ],
    )?)
}

fn table_def(state: &CatalogState, database: &str) -> DfResult<RecordBatch> {
    let rows = column_rows(state, database);
    let schema = Arc::new(Schema::new(vec![
        utf8("schemaname"),
        utf8("tablename"),
        utf8("column"),
        utf8("type"),
        utf8("encoding"),
        Field::new("distkey", DataType::Boolean, true),
        int("sortkey"),
        Field::new("notnull", DataType::Boolean, true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(rows.iter().map(|r| Some(r.schema.to_string()))),
            strings(rows.iter().map(|r| Some(r.table.to_string()))),
            strings(rows.iter().map(|r| Some(r.column.name.clone()))),
            strings(rows.iter().map(|r| Some(r.column.sql_type.display_name()))),
            strings(
                rows.iter()
                    .map(|r| Some(r.column.encode.clone().unwrap_or_else(|| "none".into()))),
            ),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.distkey)),
            )),
            ints(rows.iter().map(|r| Some(r.sortkey))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(!r.column.nullable)),
            )),
        ],
    )?)
}

/// Redshift's table summary. `tbl_rows` counts the rows of the table's data files, those
/// marked deleted (by deletion vectors, until compaction or VACUUM rewrites their files)
/// included; `estimated_visible_rows` leaves them out; `size` is in 1 MB blocks. The counts
/// come from the Delta log of the pinned version; a table whose log cannot be read shows
/// NULLs rather than failing the view.
async fn table_info(
    state: &CatalogState,
    database: &str,
    storage: &Arc<tributary_storage::StorageRoot>,
) -> DfResult<RecordBatch> {
    let rows: Vec<_> = relations(state, database)
        .into_iter()
        .filter_map(|(schema, name, relation)| match relation {
            Relation::Table(table) => Some((schema, name, table)),
            Relation::View(_) => None,
        })
        .collect();
    let mut counts: Vec<Option<(u64, u64, u64)>> = Vec::with_capacity(rows.len());
    for (_, _, table) in &rows {
        let files = match storage.table(&table.path) {
            Ok(handle) => handle.files(table.version).await.ok(),
            Err(_) => None,
        };
        counts.push(files.map(|files| {
            files.iter().fold((0, 0, 0), |(rows, deleted, bytes), f| {
                (rows + f.rows, deleted + f.deleted, bytes + f.bytes)
            })
        }));
    }
    let schema = Arc::new(Schema::new(vec![
        utf8("database"),
        utf8("schema"),
        Field::new("table_id", DataType::Int32, true),
        utf8("table"),
        utf8("diststyle"),
        utf8("sortkey1"),
        utf8("location"),
        Field::new("unsorted", DataType::Float64, true),
        Field::new("tbl_rows", DataType::Int64, true),
        Field::new("estimated_visible_rows", DataType::Int64, true),
        Field::new("size", DataType::Int64, true),
    ]));
    let count = |pick: fn(&(u64, u64, u64)) -> u64| -> ArrayRef {
        Arc::new(arrow::array::Int64Array::from_iter(
            counts.iter().map(|c| c.as_ref().map(|c| pick(c) as i64)),
        ))
    };
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(rows.iter().map(|_| Some(database.to_string()))),
            strings(rows.iter().map(|(s, _, _)| Some(s.to_string()))),
            ints(rows.iter().map(|(_, _, t)| Some(t.oid as i32))),
            strings(rows.iter().map(|(_, n, _)| Some(n.to_string()))),
            strings(rows.iter().map(|(_, _, t)| {
                Some(match (&t.distribution.diststyle, &t.distribution.distkey) {
                    (_, Some(key)) => format!("KEY({key})"),
                    (Some(style), None) => style.clone(),
                    (None, None) => "AUTO(EVEN)".to_string(),
                })
            })),
            strings(
                rows.iter()
                    .map(|(_, _, t)| t.distribution.sortkey.first().cloned()),
            ),
            strings(rows.iter().map(|(_, _, t)| Some(t.path.clone()))),
            // A legacy mirror's stored changes are its unsorted rows: VACUUM converts it, as
            // Redshift's VACUUM sorts unsorted rows. Other tables keep no unsorted region.
            Arc::new(arrow::array::Float64Array::from_iter(rows.iter().map(
                |(_, _, t)| {
                    let spec = t.materialized.as_ref()?.mirror.as_ref()?;
                    if spec.keys.is_some() {
                        return None;
                    }
                    let stored = spec.base_rows + spec.unfolded;
                    Some(if stored == 0 {
                        0.0
                    } else {
                        spec.unfolded as f64 * 100.0 / stored as f64
                    })
                },
            ))),
            count(|(rows, _, _)| *rows),
            count(|(rows, deleted, _)| rows - deleted),
            count(|(_, _, bytes)| bytes.div_ceil(1 << 20)),
        ],
    )?)
}

/// External tables and columns (of data-catalog schemas, not served yet): drivers query these
/// views, so they exist, empty, with Redshift's columns. External schemas are listed by
/// `streaming::system_view`.
fn external_view(name: &str) -> RecordBatch {
    let fields = match name {
        "svv_external_tables" => vec![
            utf8("redshift_database_name"),
            utf8("schemaname"),
            utf8("tablename"),
            utf8("location"),
            utf8("input_format"),
            utf8("output_format"),
            utf8("serialization_lib"),
            utf8("serde_parameters"),
            int("compressed"),
            utf8("parameters"),
            utf8("tabletype"),
        ],
        _ => vec![
            utf8("redshift_database_name"),
            utf8("schemaname"),
            utf8("tablename"),
            utf8("columnname"),
            utf8("external_type"),
            int("columnnum"),
            int("part_key"),
            utf8("is_nullable"),
        ],
    };
    RecordBatch::new_empty(Arc::new(Schema::new(fields)))
}

/// `pg_group`: each group with its members' user ids.
fn groups(state: &CatalogState) -> DfResult<RecordBatch> {
    let groups: Vec<_> = state.groups.iter().collect();
    let schema = Arc::new(Schema::new(vec![
        utf8("groname"),
        int("grosysid"),
        Field::new("grolist", DataType::new_list(DataType::Int32, true), true),
    ]));
    let mut lists = arrow::array::ListBuilder::new(arrow::array::Int32Builder::new());
    for (_, group) in &groups {
        for member in &group.members {
            let id = state
                .users
                .get(member)
                .map(|u| if member == SUPERUSER { 0 } else { u.oid as i32 });
            lists.values().append_option(id);
        }
        lists.append(true);
    }
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(groups.iter().map(|(name, _)| Some(name.to_string()))),
            ints(groups.iter().map(|(_, g)| Some(g.oid as i32))),
            Arc::new(lists.finish()),
        ],
    )?)
}

fn users(state: &CatalogState) -> DfResult<RecordBatch> {
    let users: Vec<_> = state.users.iter().collect();
    let schema = Arc::new(Schema::new(vec![
        utf8("usename"),
        int("usesysid"),
        Field::new("usecreatedb", DataType::Boolean, true),
        Field::new("usesuper", DataType::Boolean, true),
        Field::new("usecatupd", DataType::Boolean, true),
        utf8("passwd"),
        utf8("valuntil"),
        utf8("useconfig"),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(users.iter().map(|(name, _)| Some(name.to_string()))),
            // pg_class (from datafusion-pg-catalog) reports owner 0 for every relation; until
            // it tracks owners, the superuser answers to that id so owner joins find it.
            ints(
                users
                    .iter()
                    .map(|(name, u)| Some(if *name == SUPERUSER { 0 } else { u.oid as i32 })),
            ),
            Arc::new(BooleanArray::from_iter(
                users
                    .iter()
                    .map(|(_, u)| Some(u.superuser || u.create_database)),
            )),
            Arc::new(BooleanArray::from_iter(
                users.iter().map(|(_, u)| Some(u.superuser)),
            )),
            Arc::new(BooleanArray::from_iter(
                users.iter().map(|(_, u)| Some(u.superuser)),
            )),
            strings(users.iter().map(|_| Some("********".to_string()))),
            strings(users.iter().map(|_| None)),
            strings(users.iter().map(|_| None)),
        ],
    )?)
}
