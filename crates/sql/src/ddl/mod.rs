//! DDL: databases, schemas, tables (with Redshift attributes), views, ALTER and TRUNCATE.
//! Every change edits the session transaction's catalog state, so DDL is transactional: table
//! files are created before the commit that makes them visible (and deleted if it never
//! happens), and deleted only after the commit that hides them.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, SchemaProvider};
use datafusion::sql::sqlparser::ast::{
    ColumnOption, CreateTable, CreateTableLikeKind, CreateView, DistStyle, ObjectName, SchemaName,
    Statement,
};
use datafusion::sql::sqlparser::tokenizer::Token;
use tributary_catalog::{Column, Distribution, Identity, Relation, Table, View};
use tributary_engine::layout::{cast_batch, storage_schema};
use tributary_syntax::names::{name_parts, normalize_ident};

use crate::context::Context;
use crate::definition::{
    NewTable, columns_from_arrow, commit_new_table, constraints, declared_columns, query_rows,
    query_stream,
};
use crate::output::Output;
use crate::{Error, Result};

mod alter;
mod drop;

use alter::{alter_table, truncate_tables};
use drop::drop_objects;

pub(crate) async fn execute(cx: &mut Context, statement: Statement) -> Result<Output> {
    match statement {
        Statement::CreateTable(create) => create_table(cx, create).await,
        Statement::CreateView(view) if view.materialized => {
            crate::streaming::create_materialized_view(cx, view).await
        }
        Statement::CreateView(view) => create_view(cx, view).await,
        Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => create_schema(cx, schema_name, if_not_exists).await,
        Statement::CreateDatabase {
            db_name,
            if_not_exists,
            ..
        } => create_database(cx, db_name, if_not_exists).await,
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => drop_objects(cx, object_type, if_exists, names, cascade).await,
        Statement::AlterTable(alter) => {
            alter_table(cx, &alter.name, alter.if_exists, alter.operations).await
        }
        Statement::Truncate(truncate) => {
            let names = truncate
                .table_names
                .iter()
                .map(|t| t.name.clone())
                .collect();
            truncate_tables(cx, names).await
        }
        Statement::Comment { .. } => Ok(Output::command("COMMENT")),
        Statement::Analyze(_) => Ok(Output::command("ANALYZE")),
        Statement::Vacuum(vacuum) => crate::streaming::mirror::vacuum(cx, vacuum.table_name).await,
        other => Err(Error::NotSupported(format!(
            "statement not supported: {}",
            first_words(&other.to_string())
        ))),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

async fn create_table(cx: &mut Context, create: CreateTable) -> Result<Output> {
    if create.temporary {
        return create_temp_table(cx, create).await;
    }
    let (schema, name) = cx.resolve_for_create(&create.name)?;
    let database = cx.database().to_string();
    if !crate::definition::relation_is_new(cx, &schema, &name, create.if_not_exists)? {
        return Ok(Output::command("CREATE TABLE"));
    }
    let (columns, rows) = if let Some(query) = &create.query {
        let (schema, rows) = query_stream(cx, Statement::Query(query.clone())).await?;
        (columns_from_arrow(&schema)?, Some(rows))
    } else if let Some(like) = &create.like {
        (like_columns(cx, like)?, None)
    } else {
        (declared_columns(&create.columns)?, None)
    };
    if columns.is_empty() {
        return Err(Error::InvalidStatement(
            "a table must have at least one column".into(),
        ));
    }
    let mut table = Table {
        oid: 0,
        owner: cx.user().to_string(),
        path: tributary_storage::new_table_path(&database, &schema, &name),
        version: 0,
        constraints: constraints(&create.columns, &create.constraints),
        distribution: distribution(&create),
        backup: create.backup.unwrap_or(true),
        materialized: None,
        columns,
    };
    let handle = cx.engine().storage.table(&table.path)?;
    cx.catalogs().record_created(&table.path);
    table.version = handle.create(&storage_schema(&table)).await?;
    let new = NewTable {
        schema,
        name,
        table,
    };
    let rows = commit_new_table(cx, new, rows).await?;
    Ok(match create.query {
        Some(_) => Output::Command {
            tag: "SELECT".into(),
            rows: Some(rows),
        },
        None => Output::command("CREATE TABLE"),
    })
}

async fn create_temp_table(cx: &mut Context, create: CreateTable) -> Result<Output> {
    let parts = name_parts(&create.name);
    let name = parts.last().cloned().unwrap_or_default();
    if cx.catalogs().temp().table_exist(&name) {
        if create.if_not_exists {
            return Ok(Output::command("CREATE TABLE"));
        }
        return Err(Error::Duplicate {
            kind: "relation",
            name,
        });
    }
    let (schema, batches) = if let Some(query) = &create.query {
        let (schema, batches) = query_rows(cx, Statement::Query(query.clone())).await?;
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
            Some(like) => like_columns(cx, like)?,
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
    cx.catalogs().temp().register_table(name, Arc::new(table))?;
    Ok(match create.query {
        Some(_) => Output::Command {
            tag: "SELECT".into(),
            rows: Some(rows as u64),
        },
        None => Output::command("CREATE TABLE"),
    })
}

fn like_columns(cx: &Context, like: &CreateTableLikeKind) -> Result<Vec<Column>> {
    let source = match like {
        CreateTableLikeKind::Parenthesized(like) | CreateTableLikeKind::Plain(like) => &like.name,
    };
    let (schema, name) = cx.resolve_existing(source)?;
    let pinned = cx.catalogs().pinned();
    let table = pinned.table(cx.database(), &schema, &name)?;
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

async fn create_view(cx: &mut Context, view: CreateView) -> Result<Output> {
    if view.materialized {
        return Err(Error::NotSupported(
            "materialized views are not supported yet".into(),
        ));
    }
    let (schema, name) = cx.resolve_for_create(&view.name)?;
    let database = cx.database().to_string();
    // Check the query plans now, so that a broken view is refused at creation.
    let statement = cx.rewrite(Statement::Query(view.query.clone()))?;
    cx.plan(&statement).await?;
    let sql = statement.to_string();
    let column_names: Vec<String> = view
        .columns
        .iter()
        .map(|c| normalize_ident(&c.name))
        .collect();
    let owner = cx.user().to_string();
    let or_replace = view.or_replace;
    let if_not_exists = view.if_not_exists;
    let existed = cx.catalogs().modify(|state| {
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
        cx.notice(format!("relation \"{name}\" already exists, skipping"));
    }
    Ok(Output::command("CREATE VIEW"))
}

async fn create_schema(cx: &mut Context, name: SchemaName, if_not_exists: bool) -> Result<Output> {
    let name = match &name {
        SchemaName::Simple(name) | SchemaName::NamedAuthorization(name, _) => {
            name_parts(name).last().cloned().unwrap_or_default()
        }
        SchemaName::UnnamedAuthorization(ident) => normalize_ident(ident),
    };
    let database = cx.database().to_string();
    let owner = cx.user().to_string();
    let result = cx
        .catalogs()
        .modify(|state| state.create_schema(&database, &name, &owner));
    match result {
        Err(tributary_catalog::Error::AlreadyExists { .. }) if if_not_exists => {
            cx.notice(format!("schema \"{name}\" already exists, skipping"));
        }
        other => {
            other?;
        }
    }
    Ok(Output::command("CREATE SCHEMA"))
}

async fn create_database(
    cx: &mut Context,
    name: ObjectName,
    if_not_exists: bool,
) -> Result<Output> {
    if cx.catalogs().in_explicit_transaction() {
        return Err(Error::ActiveTransaction("CREATE DATABASE".into()));
    }
    let name = name_parts(&name).last().cloned().unwrap_or_default();
    let owner = cx.user().to_string();
    let result = cx
        .catalogs()
        .modify(|state| state.create_database(&name, &owner));
    match result {
        Err(tributary_catalog::Error::AlreadyExists { .. }) if if_not_exists => {
            cx.notice(format!("database \"{name}\" already exists, skipping"));
        }
        other => {
            other?;
        }
    }
    Ok(Output::command("CREATE DATABASE"))
}
