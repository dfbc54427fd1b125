//! DDL: databases, schemas, tables (with Redshift attributes), views, ALTER and TRUNCATE.
//! Every change edits the session transaction's catalog state, so DDL is transactional: table
//! files are created before the commit that makes them visible (and deleted if it never
//! happens), and deleted only after the commit that hides them.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, SchemaProvider};
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOption, CreateTable, CreateTableLikeKind, CreateView,
    DistStyle, Expr, IdentityPropertyFormatKind, IdentityPropertyKind, ObjectName, ObjectType,
    RenameTableNameKind, SchemaName, Statement, TableConstraint,
};
use datafusion::sql::sqlparser::tokenizer::Token;
use tributary_catalog::{
    CatalogState, Column, Constraint, Distribution, Identity, Relation, SqlType, Table, View,
};

use crate::session::{Output, Session};
use crate::transaction::WriteKind;
use crate::{Error, Result, types};
use tributary_syntax::rewrite::{name_parts, normalize_ident};

pub(crate) async fn execute(session: &mut Session, statement: Statement) -> Result<Output> {
    match statement {
        Statement::CreateTable(create) => create_table(session, create).await,
        Statement::CreateView(view) if view.materialized => {
            crate::streaming::create_materialized_view(session, view).await
        }
        Statement::CreateView(view) => create_view(session, view).await,
        Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => create_schema(session, schema_name, if_not_exists).await,
        Statement::CreateDatabase {
            db_name,
            if_not_exists,
            ..
        } => create_database(session, db_name, if_not_exists).await,
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => drop_objects(session, object_type, if_exists, names, cascade).await,
        Statement::AlterTable(alter) => {
            alter_table(session, &alter.name, alter.if_exists, alter.operations).await
        }
        Statement::Truncate(truncate) => {
            let names = truncate
                .table_names
                .iter()
                .map(|t| t.name.clone())
                .collect();
            truncate_tables(session, names).await
        }
        Statement::Comment { .. } => Ok(Output::command("COMMENT")),
        Statement::Analyze(_) => Ok(Output::command("ANALYZE")),
        Statement::Vacuum(vacuum) => {
            crate::streaming::mirror::vacuum(session, vacuum.table_name).await
        }
        other => Err(Error::NotSupported(format!(
            "statement not supported: {}",
            first_words(&other.to_string())
        ))),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A table whose files were written but which is not yet in the catalog.
pub(crate) struct NewTable {
    pub schema: String,
    pub name: String,
    pub table: Table,
}

async fn create_table(session: &mut Session, create: CreateTable) -> Result<Output> {
    if create.temporary {
        return create_temp_table(session, create).await;
    }
    let (schema, name) = session.resolve_for_create(&create.name)?;
    let database = session.database().to_string();
    if !crate::ddl::relation_is_new(session, &schema, &name, create.if_not_exists)? {
        return Ok(Output::command("CREATE TABLE"));
    }
    let (columns, batches) = if let Some(query) = &create.query {
        let output = query_rows(session, Statement::Query(query.clone())).await?;
        (columns_from_arrow(&output.0)?, output.1)
    } else if let Some(like) = &create.like {
        (like_columns(session, like)?, vec![])
    } else {
        (declared_columns(&create.columns)?, vec![])
    };
    if columns.is_empty() {
        return Err(Error::InvalidStatement(
            "a table must have at least one column".into(),
        ));
    }
    let mut table = Table {
        oid: 0,
        owner: session.user().to_string(),
        path: tributary_storage::new_table_path(&database, &schema, &name),
        version: 0,
        constraints: constraints(&create.columns, &create.constraints),
        distribution: distribution(&create),
        backup: create.backup.unwrap_or(true),
        materialized: None,
        columns,
    };
    let handle = session.engine().storage.table(&table.path)?;
    session.catalogs().record_created(&table.path);
    table.version = handle.create(&storage_schema(&table)).await?;
    let new = NewTable {
        schema,
        name,
        table,
    };
    let rows = commit_new_table(session, new, batches).await?;
    Ok(match create.query {
        Some(_) => Output::Command {
            tag: "SELECT".into(),
            rows: Some(rows),
        },
        None => Output::command("CREATE TABLE"),
    })
}

/// Whether relation `name` can be created in `schema` (which must exist): false when it
/// exists and IF NOT EXISTS was given (a notice says it is skipped), an error when it exists
/// otherwise.
pub(crate) fn relation_is_new(
    session: &mut Session,
    schema: &str,
    name: &str,
    if_not_exists: bool,
) -> Result<bool> {
    let database = session.database().to_string();
    let pinned = session.catalogs().pinned();
    pinned.schema(&database, schema)?;
    if pinned.relation(&database, schema, name).is_none() {
        return Ok(true);
    }
    if if_not_exists {
        session.notice(format!("relation \"{name}\" already exists, skipping"));
        return Ok(false);
    }
    Err(Error::Duplicate {
        kind: "relation",
        name: name.to_string(),
    })
}

/// Makes a created table visible, with its first rows (CREATE TABLE AS) appended first.
pub(crate) async fn commit_new_table(
    session: &mut Session,
    new: NewTable,
    batches: Vec<RecordBatch>,
) -> Result<u64> {
    let database = session.database().to_string();
    let engine = session.engine().clone();
    let NewTable {
        schema,
        name,
        mut table,
    } = new;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > 0 {
        let logical = logical_schema(&table);
        let batches = batches
            .into_iter()
            .map(|b| cast_batch(&b, &logical))
            .collect::<Result<Vec<_>>>()?;
        let stored = batches
            .into_iter()
            .map(|b| cast_batch(&b, &Arc::new(storage_schema(&table))))
            .collect::<Result<Vec<_>>>()?;
        table.version = engine
            .storage
            .table(&table.path)?
            .append(table.version, stored)
            .await?
            .version;
    }
    session.catalogs().modify(|state| {
        table.oid = state.allocate_oid();
        state.insert_relation(&database, &schema, &name, Relation::Table(table.clone()))
    })?;
    Ok(rows as u64)
}

async fn create_temp_table(session: &mut Session, create: CreateTable) -> Result<Output> {
    let parts = name_parts(&create.name);
    let name = parts.last().cloned().unwrap_or_default();
    if session.catalogs().temp().table_exist(&name) {
        if create.if_not_exists {
            return Ok(Output::command("CREATE TABLE"));
        }
        return Err(Error::Duplicate {
            kind: "relation",
            name,
        });
    }
    let (schema, batches) = if let Some(query) = &create.query {
        let (schema, batches) = query_rows(session, Statement::Query(query.clone())).await?;
        let schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let batches = batches
            .iter()
            .map(|b| cast_batch(b, &schema))
            .collect::<Result<Vec<_>>>()?;
        (schema, batches)
    } else {
        let columns = match &create.like {
            Some(like) => like_columns(session, like)?,
            None => declared_columns(&create.columns)?,
        };
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
            .collect();
        (Arc::new(Schema::new(fields)), vec![])
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let table = MemTable::try_new(schema, vec![batches])?;
    session
        .catalogs()
        .temp()
        .register_table(name, Arc::new(table))?;
    Ok(match create.query {
        Some(_) => Output::Command {
            tag: "SELECT".into(),
            rows: Some(rows as u64),
        },
        None => Output::command("CREATE TABLE"),
    })
}

/// Runs a query to completion (for CREATE TABLE AS).
pub(crate) async fn query_rows(
    session: &mut Session,
    statement: Statement,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let statement = session.rewrite(statement)?;
    let plan = session.plan(&statement).await?;
    let frame = session.context().execute_logical_plan(plan).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    Ok((schema, frame.collect().await?))
}

pub(crate) fn columns_from_arrow(schema: &SchemaRef) -> Result<Vec<Column>> {
    schema
        .fields()
        .iter()
        .map(|field| {
            let declared = field.metadata().get(crate::json::SQL_TYPE_METADATA);
            let sql_type = if declared.map(String::as_str) == Some("super") {
                Some(SqlType::Super)
            } else {
                SqlType::from_arrow(field.data_type())
            };
            let sql_type = sql_type.ok_or_else(|| {
                Error::NotSupported(format!(
                    "column \"{}\" has type {} which cannot be stored",
                    field.name(),
                    field.data_type()
                ))
            })?;
            Ok(Column {
                name: field.name().clone(),
                sql_type,
                nullable: true,
                default: None,
                identity: None,
                encode: None,
            })
        })
        .collect()
}

fn like_columns(session: &Session, like: &CreateTableLikeKind) -> Result<Vec<Column>> {
    let source = match like {
        CreateTableLikeKind::Parenthesized(like) | CreateTableLikeKind::Plain(like) => &like.name,
    };
    let (schema, name) = session.resolve_existing(source)?;
    let pinned = session.catalogs().pinned();
    let table = pinned.table(session.database(), &schema, &name)?;
    Ok(table
        .columns
        .iter()
        .map(|c| Column {
            identity: c.identity.as_ref().map(|i| Identity {
                next: i.seed,
                ..i.clone()
            }),
            ..c.clone()
        })
        .collect())
}

pub(crate) fn declared_columns(definitions: &[ColumnDef]) -> Result<Vec<Column>> {
    let mut columns: Vec<Column> = Vec::with_capacity(definitions.len());
    for definition in definitions {
        let column = declared_column(definition)?;
        if columns.iter().any(|c| c.name == column.name) {
            return Err(Error::Duplicate {
                kind: "column",
                name: column.name,
            });
        }
        columns.push(column);
    }
    Ok(columns)
}

fn declared_column(definition: &ColumnDef) -> Result<Column> {
    let mut column = Column {
        name: normalize_ident(&definition.name),
        sql_type: types::resolve(&definition.data_type)?,
        nullable: true,
        default: None,
        identity: None,
        encode: None,
    };
    for option in &definition.options {
        match &option.option {
            ColumnOption::NotNull => column.nullable = false,
            ColumnOption::Null => column.nullable = true,
            ColumnOption::PrimaryKey(_) => column.nullable = false,
            ColumnOption::Default(expr) => column.default = Some(expr.to_string()),
            ColumnOption::Identity(kind) => column.identity = Some(identity(kind, &column)?),
            ColumnOption::DialectSpecific(tokens) => {
                if let [Token::Word(keyword), Token::Word(value)] = tokens.as_slice()
                    && keyword.value.eq_ignore_ascii_case("encode")
                {
                    column.encode = Some(value.value.to_lowercase());
                }
            }
            ColumnOption::Unique(_) | ColumnOption::ForeignKey(_) | ColumnOption::Comment(_) => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "column option {other} is not supported"
                )));
            }
        }
    }
    Ok(column)
}

fn identity(kind: &IdentityPropertyKind, column: &Column) -> Result<Identity> {
    if !matches!(
        column.sql_type,
        SqlType::SmallInt | SqlType::Integer | SqlType::BigInt
    ) {
        return Err(Error::InvalidStatement(format!(
            "IDENTITY column \"{}\" must be SMALLINT, INTEGER or BIGINT",
            column.name
        )));
    }
    let (IdentityPropertyKind::Identity(property) | IdentityPropertyKind::Autoincrement(property)) =
        kind;
    let (seed, step) = match &property.parameters {
        Some(IdentityPropertyFormatKind::FunctionCall(p))
        | Some(IdentityPropertyFormatKind::StartAndIncrement(p)) => {
            (integer_literal(&p.seed)?, integer_literal(&p.increment)?)
        }
        None => (1, 1),
    };
    if step == 0 {
        return Err(Error::InvalidStatement(
            "IDENTITY step must not be zero".into(),
        ));
    }
    Ok(Identity {
        seed,
        step,
        next: seed,
    })
}

fn integer_literal(expr: &Expr) -> Result<i64> {
    let text = expr.to_string();
    text.parse::<i64>().map_err(|_| {
        Error::InvalidStatement(format!("IDENTITY arguments must be integers, got {text}"))
    })
}

pub(crate) fn constraints(
    columns: &[ColumnDef],
    table_constraints: &[TableConstraint],
) -> Vec<Constraint> {
    let mut out = Vec::new();
    for column in columns {
        let name = normalize_ident(&column.name);
        for option in &column.options {
            match &option.option {
                ColumnOption::PrimaryKey(_) => out.push(Constraint::PrimaryKey {
                    columns: vec![name.clone()],
                }),
                ColumnOption::Unique(_) => out.push(Constraint::Unique {
                    columns: vec![name.clone()],
                }),
                ColumnOption::ForeignKey(fk) => out.push(Constraint::ForeignKey {
                    columns: vec![name.clone()],
                    references: fk.foreign_table.to_string(),
                    referenced_columns: fk.referred_columns.iter().map(normalize_ident).collect(),
                }),
                _ => {}
            }
        }
    }
    for constraint in table_constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => out.push(Constraint::PrimaryKey {
                columns: pk
                    .columns
                    .iter()
                    .map(|c| c.column.expr.to_string().to_lowercase())
                    .collect(),
            }),
            TableConstraint::Unique(unique) => out.push(Constraint::Unique {
                columns: unique
                    .columns
                    .iter()
                    .map(|c| c.column.expr.to_string().to_lowercase())
                    .collect(),
            }),
            TableConstraint::ForeignKey(fk) => out.push(Constraint::ForeignKey {
                columns: fk.columns.iter().map(normalize_ident).collect(),
                references: fk.foreign_table.to_string(),
                referenced_columns: fk.referred_columns.iter().map(normalize_ident).collect(),
            }),
            _ => {}
        }
    }
    out
}

fn distribution(create: &CreateTable) -> Distribution {
    let mut distribution = Distribution {
        diststyle: create.diststyle.as_ref().map(|d| match d {
            DistStyle::Auto => "AUTO".to_string(),
            DistStyle::Even => "EVEN".to_string(),
            DistStyle::Key => "KEY".to_string(),
            DistStyle::All => "ALL".to_string(),
        }),
        distkey: create
            .distkey
            .as_ref()
            .map(|e| e.to_string().to_lowercase()),
        sortkey: create
            .sortkey
            .iter()
            .flatten()
            .map(|e| e.to_string().to_lowercase())
            .collect(),
        sortkey_kind: None,
    };
    for column in &create.columns {
        for option in &column.options {
            if let ColumnOption::DialectSpecific(tokens) = &option.option
                && let [Token::Word(keyword)] = tokens.as_slice()
            {
                let name = normalize_ident(&column.name);
                if keyword.value.eq_ignore_ascii_case("distkey") {
                    distribution.distkey = Some(name);
                    distribution
                        .diststyle
                        .get_or_insert_with(|| "KEY".to_string());
                } else if keyword.value.eq_ignore_ascii_case("sortkey") {
                    distribution.sortkey.push(name);
                }
            }
        }
    }
    distribution
}

/// The schema of the stored Delta table.
/// The Delta schema of a table: its columns in their stored types, and a mirror table's
/// hidden bookkeeping columns after them.
pub(crate) fn storage_schema(table: &Table) -> Schema {
    let hidden = match crate::streaming::mirror::spec(table) {
        Some(_) => crate::streaming::mirror::hidden_fields(),
        None => Vec::new(),
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

pub(crate) fn logical_schema(table: &Table) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Casts a batch column by column to `schema` (same column order), with SQL cast rules.
pub(crate) fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
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

async fn create_view(session: &mut Session, view: CreateView) -> Result<Output> {
    if view.materialized {
        return Err(Error::NotSupported(
            "materialized views are not supported yet".into(),
        ));
    }
    let (schema, name) = session.resolve_for_create(&view.name)?;
    let database = session.database().to_string();
    // Check the query plans now, so that a broken view is refused at creation.
    let statement = session.rewrite(Statement::Query(view.query.clone()))?;
    session.plan(&statement).await?;
    let sql = statement.to_string();
    let column_names: Vec<String> = view
        .columns
        .iter()
        .map(|c| normalize_ident(&c.name))
        .collect();
    let owner = session.user().to_string();
    let or_replace = view.or_replace;
    let if_not_exists = view.if_not_exists;
    let existed = session.catalogs().modify(|state| {
        let oid = state.allocate_oid();
        let target = state.schema_mut(&database, &schema)?;
        match target.relations.get(&name) {
            Some(Relation::Table(_)) => Err(tributary_catalog::Error::Invalid(format!(
                "\"{name}\" is a table, not a view"
            ))),
            Some(Relation::View(_)) if if_not_exists => Ok(true),
            Some(Relation::View(_)) if !or_replace => {
                Err(tributary_catalog::Error::AlreadyExists {
                    kind: "relation",
                    name: name.clone(),
                })
            }
            _ => {
                target.relations.insert(
                    name.clone(),
                    Relation::View(View {
                        oid,
                        owner,
                        sql,
                        column_names,
                    }),
                );
                Ok(false)
            }
        }
    })?;
    if existed {
        session.notice(format!("relation \"{name}\" already exists, skipping"));
    }
    Ok(Output::command("CREATE VIEW"))
}

async fn create_schema(
    session: &mut Session,
    name: SchemaName,
    if_not_exists: bool,
) -> Result<Output> {
    let name = match &name {
        SchemaName::Simple(name) | SchemaName::NamedAuthorization(name, _) => {
            name_parts(name).last().cloned().unwrap_or_default()
        }
        SchemaName::UnnamedAuthorization(ident) => normalize_ident(ident),
    };
    let database = session.database().to_string();
    let owner = session.user().to_string();
    let result = session
        .catalogs()
        .modify(|state| state.create_schema(&database, &name, &owner));
    match result {
        Err(tributary_catalog::Error::AlreadyExists { .. }) if if_not_exists => {
            session.notice(format!("schema \"{name}\" already exists, skipping"));
        }
        other => {
            other?;
        }
    }
    Ok(Output::command("CREATE SCHEMA"))
}

async fn create_database(
    session: &mut Session,
    name: ObjectName,
    if_not_exists: bool,
) -> Result<Output> {
    if session.catalogs().in_explicit_transaction() {
        return Err(Error::ActiveTransaction("CREATE DATABASE".into()));
    }
    let name = name_parts(&name).last().cloned().unwrap_or_default();
    let owner = session.user().to_string();
    let result = session
        .catalogs()
        .modify(|state| state.create_database(&name, &owner));
    match result {
        Err(tributary_catalog::Error::AlreadyExists { .. }) if if_not_exists => {
            session.notice(format!("database \"{name}\" already exists, skipping"));
        }
        other => {
            other?;
        }
    }
    Ok(Output::command("CREATE DATABASE"))
}

async fn drop_objects(
    session: &mut Session,
    object_type: ObjectType,
    if_exists: bool,
    names: Vec<ObjectName>,
    cascade: bool,
) -> Result<Output> {
    let tag = match object_type {
        ObjectType::Table => "DROP TABLE",
        ObjectType::View => "DROP VIEW",
        ObjectType::MaterializedView => "DROP MATERIALIZED VIEW",
        ObjectType::Schema => "DROP SCHEMA",
        ObjectType::Database => "DROP DATABASE",
        other => {
            return Err(Error::NotSupported(format!(
                "DROP {other} is not supported"
            )));
        }
    };
    for name in names {
        let dropped_paths = match object_type {
            ObjectType::Table | ObjectType::View | ObjectType::MaterializedView => {
                drop_relation(session, &name, object_type, if_exists).await?
            }
            ObjectType::Schema => drop_schema(session, &name, if_exists, cascade).await?,
            _ => drop_database(session, &name, if_exists, cascade).await?,
        };
        for path in dropped_paths {
            // Deleted once the drop commits.
            session.catalogs().record_dropped(&path);
        }
    }
    Ok(Output::command(tag))
}

async fn drop_relation(
    session: &mut Session,
    name: &ObjectName,
    kind: ObjectType,
    if_exists: bool,
) -> Result<Vec<String>> {
    let view = kind == ObjectType::View;
    let materialized = kind == ObjectType::MaterializedView;
    let parts = name_parts(name);
    if !view && parts.len() == 1 && session.catalogs().temp().table_exist(&parts[0]) {
        session.catalogs().temp().deregister_table(&parts[0])?;
        return Ok(vec![]);
    }
    let database = session.database().to_string();
    let resolved = session
        .resolve_existing(name)
        .and_then(|(schema, relation)| {
            let pinned = session.catalogs().pinned();
            pinned.schema(&database, &schema)?;
            match pinned.relation(&database, &schema, &relation) {
                Some(_) => Ok((schema, relation)),
                None => Err(Error::UndefinedTable(relation)),
            }
        });
    let (schema, relation) = match resolved {
        Ok(resolved) => resolved,
        Err(Error::UndefinedTable(_) | Error::UndefinedSchema(_)) if if_exists => {
            session.notice(format!(
                "{} \"{}\" does not exist, skipping",
                match kind {
                    ObjectType::View => "view",
                    ObjectType::MaterializedView => "materialized view",
                    _ => "table",
                },
                parts.join(".")
            ));
            return Ok(vec![]);
        }
        Err(err) => return Err(err),
    };
    let is_table = matches!(
        session
            .catalogs()
            .pinned()
            .relation(&database, &schema, &relation),
        Some(Relation::Table(_))
    );
    if is_table && !view {
        // Like any writer, a drop waits for the table's current writer and conflicts with
        // changes committed after the snapshot.
        session
            .catalogs()
            .lock_table(&database, &schema, &relation, WriteKind::Rewrite)
            .await?;
    }
    let path = session
        .catalogs()
        .modify(|state| {
            let target = state.schema_mut(&database, &schema)?;
            match (target.relations.get(&relation), view) {
                (None, _) => Err(tributary_catalog::Error::NotFound {
                    kind: "relation",
                    name: relation.clone(),
                }),
                (Some(Relation::Table(_)), true) => Err(tributary_catalog::Error::Invalid(
                    format!("\"{relation}\" is not a view"),
                )),
                (Some(Relation::Table(t)), false) if materialized && t.materialized.is_none() => {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is not a materialized view"
                    )))
                }
                (Some(Relation::Table(t)), false)
                    if materialized && crate::streaming::mirror::spec(t).is_some() =>
                {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is a mirror table; use DROP TABLE"
                    )))
                }
                (Some(Relation::Table(t)), false)
                    if !materialized
                        && t.materialized.is_some()
                        && crate::streaming::mirror::spec(t).is_none() =>
                {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is a materialized view; use DROP MATERIALIZED VIEW"
                    )))
                }
                (Some(Relation::View(_)), false) if materialized => {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is not a materialized view"
                    )))
                }
                (Some(Relation::View(_)), false) => Err(tributary_catalog::Error::Invalid(
                    format!("\"{relation}\" is not a table"),
                )),
                _ => Ok(match target.relations.remove(&relation) {
                    Some(Relation::Table(table)) => Some(table.path),
                    _ => None,
                }),
            }
        })
        .map_err(wrong_type)?;
    Ok(path.into_iter().collect())
}

fn wrong_type(err: tributary_catalog::Error) -> Error {
    match err {
        tributary_catalog::Error::Invalid(message) => Error::WrongObjectType(message),
        other => other.into(),
    }
}

async fn drop_schema(
    session: &mut Session,
    name: &ObjectName,
    if_exists: bool,
    cascade: bool,
) -> Result<Vec<String>> {
    let schema = name_parts(name).last().cloned().unwrap_or_default();
    let database = session.database().to_string();
    let result = session.catalogs().modify(|state| {
            let db = state
                .databases
                .get_mut(&database)
                .ok_or_else(|| tributary_catalog::Error::NotFound { kind: "database", name: database.clone() })?;
            let target = db
                .schemas
                .get(&schema)
                .ok_or_else(|| tributary_catalog::Error::NotFound { kind: "schema", name: schema.clone() })?;
            if (!target.relations.is_empty() || !target.procedures.is_empty()) && !cascade {
                return Err(tributary_catalog::Error::Invalid(format!(
                    "cannot drop schema {schema} because other objects depend on it; use DROP SCHEMA ... CASCADE"
                )));
            }
            let removed = db.schemas.remove(&schema).map(|s| table_paths(s.relations.values())).unwrap_or_default();
            Ok(removed)
        });
    match result {
        Ok(paths) => Ok(paths),
        Err(tributary_catalog::Error::NotFound { .. }) if if_exists => {
            session.notice(format!("schema \"{schema}\" does not exist, skipping"));
            Ok(vec![])
        }
        Err(tributary_catalog::Error::Invalid(message)) => Err(Error::DependentObjects(message)),
        Err(err) => Err(err.into()),
    }
}

async fn drop_database(
    session: &mut Session,
    name: &ObjectName,
    if_exists: bool,
    _cascade: bool,
) -> Result<Vec<String>> {
    let database = name_parts(name).last().cloned().unwrap_or_default();
    if database == session.database() {
        return Err(Error::InvalidStatement(
            "cannot drop the currently open database".into(),
        ));
    }
    if session.catalogs().in_explicit_transaction() {
        return Err(Error::ActiveTransaction("DROP DATABASE".into()));
    }
    let result = session.catalogs().modify(|state: &mut CatalogState| {
        let removed = state.databases.remove(&database).ok_or_else(|| {
            tributary_catalog::Error::NotFound {
                kind: "database",
                name: database.clone(),
            }
        })?;
        Ok(removed
            .schemas
            .values()
            .flat_map(|s| table_paths(s.relations.values()))
            .collect::<Vec<_>>())
    });
    match result {
        Ok(paths) => Ok(paths),
        Err(tributary_catalog::Error::NotFound { .. }) if if_exists => {
            session.notice(format!("database \"{database}\" does not exist, skipping"));
            Ok(vec![])
        }
        Err(err) => Err(err.into()),
    }
}

fn table_paths<'a>(relations: impl Iterator<Item = &'a Relation>) -> Vec<String> {
    relations
        .filter_map(|r| match r {
            Relation::Table(t) => Some(t.path.clone()),
            Relation::View(_) => None,
        })
        .collect()
}

async fn alter_table(
    session: &mut Session,
    name: &ObjectName,
    if_exists: bool,
    operations: Vec<AlterTableOperation>,
) -> Result<Output> {
    let (schema, table_name) = match session.resolve_existing(name) {
        Ok(resolved) => resolved,
        Err(Error::UndefinedTable(_)) if if_exists => return Ok(Output::command("ALTER TABLE")),
        Err(err) => return Err(err),
    };
    let mut current_name = table_name;
    for operation in operations {
        current_name = alter_one(session, &schema, &current_name, operation).await?;
    }
    Ok(Output::command("ALTER TABLE"))
}

/// Applies one ALTER TABLE operation; returns the table's name afterwards.
async fn alter_one(
    session: &mut Session,
    schema: &str,
    name: &str,
    operation: AlterTableOperation,
) -> Result<String> {
    let database = session.database().to_string();
    match operation {
        AlterTableOperation::RenameTable { table_name } => {
            let new_name = match table_name {
                RenameTableNameKind::As(n) | RenameTableNameKind::To(n) => {
                    name_parts(&n).last().cloned().unwrap_or_default()
                }
            };
            if matches!(
                session
                    .catalogs()
                    .pinned()
                    .relation(&database, schema, name),
                Some(Relation::Table(_))
            ) {
                session
                    .catalogs()
                    .lock_table(&database, schema, name, WriteKind::Rewrite)
                    .await?;
            }
            session.catalogs().modify(|state| {
                let target = state.schema_mut(&database, schema)?;
                if target.relations.contains_key(&new_name) {
                    return Err(tributary_catalog::Error::AlreadyExists {
                        kind: "relation",
                        name: new_name.clone(),
                    });
                }
                let relation = target.relations.remove(name).ok_or_else(|| {
                    tributary_catalog::Error::NotFound {
                        kind: "relation",
                        name: name.to_string(),
                    }
                })?;
                target.relations.insert(new_name.clone(), relation);
                Ok(())
            })?;
            Ok(new_name)
        }
        AlterTableOperation::AddColumn {
            column_def,
            if_not_exists,
            ..
        } => {
            let column = declared_column(&column_def)?;
            let exists = session
                .catalogs()
                .pinned()
                .table(&database, schema, name)?
                .column(&column.name)
                .is_some();
            if exists {
                if if_not_exists {
                    return Ok(name.to_string());
                }
                return Err(Error::Duplicate {
                    kind: "column",
                    name: column.name,
                });
            }
            if column.identity.is_some() {
                return Err(Error::NotSupported(
                    "ALTER TABLE ADD COLUMN cannot add an IDENTITY column".into(),
                ));
            }
            rewrite_table(session, schema, name, |columns| {
                columns.push(column.clone());
                Ok(())
            })
            .await?;
            Ok(name.to_string())
        }
        AlterTableOperation::DropColumn {
            column_names,
            if_exists,
            ..
        } => {
            for column in column_names {
                let column = normalize_ident(&column);
                let result = rewrite_table(session, schema, name, |columns| {
                    let before = columns.len();
                    columns.retain(|c| c.name != column);
                    if columns.len() == before {
                        return Err(Error::UndefinedColumn(format!(
                            "column \"{column}\" of relation \"{name}\" does not exist"
                        )));
                    }
                    if columns.is_empty() {
                        return Err(Error::InvalidStatement(
                            "cannot drop the last column of a table".into(),
                        ));
                    }
                    Ok(())
                })
                .await;
                match result {
                    Err(Error::UndefinedColumn(_)) if if_exists => {}
                    other => {
                        other?;
                    }
                }
            }
            Ok(name.to_string())
        }
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => {
            let old = normalize_ident(&old_column_name);
            let new = normalize_ident(&new_column_name);
            rewrite_table(session, schema, name, |columns| {
                if columns.iter().any(|c| c.name == new) {
                    return Err(Error::Duplicate {
                        kind: "column",
                        name: new.clone(),
                    });
                }
                let column = columns.iter_mut().find(|c| c.name == old).ok_or_else(|| {
                    Error::UndefinedColumn(format!("column \"{old}\" does not exist"))
                })?;
                column.name = new.clone();
                Ok(())
            })
            .await?;
            Ok(name.to_string())
        }
        other => Err(Error::NotSupported(format!(
            "ALTER TABLE {other} is not supported"
        ))),
    }
}

/// Changes a table's columns by rewriting its data under the new schema (Delta tables have no
/// column mapping here, so external readers see plain column names). Returns rows rewritten.
async fn rewrite_table(
    session: &mut Session,
    schema: &str,
    name: &str,
    change: impl FnOnce(&mut Vec<Column>) -> Result<()>,
) -> Result<u64> {
    let database = session.database().to_string();
    let engine = session.engine().clone();
    let table = session
        .catalogs()
        .lock_table(&database, schema, name, WriteKind::Rewrite)
        .await?
        .table;
    crate::streaming::mirror::refuse_write(&table, name)?;
    let mut columns = table.columns.clone();
    change(&mut columns)?;
    // Read the current rows in the old logical shape, then project them into the new one.
    let provider = crate::table::TributaryTable::open(
        session.catalogs(),
        [database.clone(), schema.to_string(), name.to_string()],
        table.clone(),
    )
    .await?;
    let context = datafusion::prelude::SessionContext::new();
    context.register_table("t", Arc::new(provider))?;
    let batches = rename_aware_select(&context, &table.columns, &columns).await?;
    let new_table = Table {
        columns,
        ..table.clone()
    };
    let stored_schema = Arc::new(storage_schema(&new_table));
    let logical = logical_schema(&new_table);
    let stored = batches
        .iter()
        .map(|b| cast_batch(&cast_batch(b, &logical)?, &stored_schema))
        .collect::<Result<Vec<_>>>()?;
    let rows: usize = stored.iter().map(RecordBatch::num_rows).sum();
    let version = engine
        .storage
        .table(&table.path)?
        .overwrite(table.version, stored, &stored_schema)
        .await?;
    session.catalogs().record_written(&table.path);
    session.catalogs().modify(|state| {
        let target = state.table_mut(&database, schema, name)?;
        target.columns = new_table.columns.clone();
        target.version = version;
        Ok(())
    })?;
    Ok(rows as u64)
}

/// Selects the old rows in the new column order. Renamed columns are matched by position of
/// their definition: a rename keeps the column in place.
async fn rename_aware_select(
    context: &datafusion::prelude::SessionContext,
    old: &[Column],
    new: &[Column],
) -> Result<Vec<RecordBatch>> {
    let mut exprs = Vec::with_capacity(new.len());
    for (index, column) in new.iter().enumerate() {
        let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
        let source = if old.iter().any(|o| o.name == column.name) {
            Some(column.name.clone())
        } else if old.len() == new.len() {
            // A rename: same position, new name.
            Some(old[index].name.clone())
        } else {
            None
        };
        exprs.push(match source {
            Some(source) => format!("{} AS {}", quoted(&source), quoted(&column.name)),
            None => format!(
                "CAST(NULL AS {}) AS {}",
                arrow_sql_type(&column.sql_type),
                quoted(&column.name)
            ),
        });
    }
    let sql = format!("SELECT {} FROM t", exprs.join(", "));
    Ok(context.sql(&sql).await?.collect().await?)
}

/// A DataFusion SQL type name for a NULL of the given column type.
fn arrow_sql_type(sql_type: &SqlType) -> &'static str {
    match sql_type {
        SqlType::SmallInt => "SMALLINT",
        SqlType::Integer => "INT",
        SqlType::BigInt => "BIGINT",
        SqlType::Decimal { .. } => "DOUBLE",
        SqlType::Real => "REAL",
        SqlType::Double => "DOUBLE",
        SqlType::Boolean => "BOOLEAN",
        SqlType::Date => "DATE",
        SqlType::Timestamp | SqlType::TimestampTz => "TIMESTAMP",
        SqlType::Time => "TIME",
        SqlType::Varbyte { .. } => "BYTEA",
        _ => "VARCHAR",
    }
}

async fn truncate_tables(session: &mut Session, names: Vec<ObjectName>) -> Result<Output> {
    for name in names {
        let parts = name_parts(&name);
        if parts.len() == 1 && session.catalogs().temp().table_exist(&parts[0]) {
            let provider = session.catalogs().temp().table(&parts[0]).await?;
            if let Some(provider) = provider {
                let empty = MemTable::try_new(provider.schema(), vec![vec![]])?;
                session.catalogs().temp().deregister_table(&parts[0])?;
                session
                    .catalogs()
                    .temp()
                    .register_table(parts[0].clone(), Arc::new(empty))?;
            }
            continue;
        }
        let (schema, table) = session.resolve_existing(&name)?;
        rewrite_table_empty(session, &schema, &table).await?;
    }
    Ok(Output::command("TRUNCATE TABLE"))
}

async fn rewrite_table_empty(session: &mut Session, schema: &str, name: &str) -> Result<()> {
    let database = session.database().to_string();
    let table = session
        .catalogs()
        .lock_table(&database, schema, name, WriteKind::Rewrite)
        .await?
        .table;
    crate::streaming::mirror::refuse_write(&table, name)?;
    let stored_schema = Arc::new(storage_schema(&table));
    let version = session
        .engine()
        .storage
        .table(&table.path)?
        .overwrite(table.version, vec![], &stored_schema)
        .await?;
    session.catalogs().record_written(&table.path);
    session.catalogs().modify(|state| {
        state.table_mut(&database, schema, name)?.version = version;
        Ok(())
    })?;
    Ok(())
}
