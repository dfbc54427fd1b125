//! sqllogictest runners. The same `.slt` files run in-process (through a SQL session) and over
//! the wire (through tokio-postgres against a started server); values are rendered as the
//! Postgres text protocol renders them, so one expected output serves both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqllogictest::{DBOutput, DefaultColumnType, Runner};
use tributary_sql::{Engine, Output, Session};

use crate::server::TestServer;

/// Every `.slt` file under `slt/`, sorted; with `TRIBUTARY_SLT` set, only the files whose
/// path contains its value (to run one file while working on it).
pub fn slt_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect(&crate::repo_root().join("slt"), &mut files);
    if let Ok(filter) = std::env::var("TRIBUTARY_SLT") {
        files.retain(|f| f.to_string_lossy().contains(&filter));
    }
    files.sort();
    files
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("slt directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "slt") {
            files.push(path);
        }
    }
}

/// An error as a test sees it: `[SQLSTATE] message`.
#[derive(Debug)]
pub struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

fn accept_any_types<T>(_: &Vec<T>, _: &Vec<T>) -> bool {
    true
}

/// Runs one file against a fresh in-process engine.
pub async fn run_slt_in_process(file: &Path) -> Result<(), String> {
    // Sessions run on threads with the server's stack size (deep procedure nesting needs
    // it), not on the test's thread.
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::thread::Builder::new()
            .stack_size(tributary_sql::THREAD_STACK_BYTES)
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(run_in_process(&file))
            })
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "the slt runner panicked".to_string())?
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn run_in_process(file: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine = Engine::open(dir.path().to_str().expect("utf-8"), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut runner = Runner::new(move || {
        let engine = engine.clone();
        async move {
            Ok(InProcess {
                session: engine
                    .session("admin", "dev")
                    .map_err(|e| SltError(e.to_string()))?,
            })
        }
    });
    runner.with_column_validator(accept_any_types);
    runner
        .run_file_async(file)
        .await
        .map_err(|e| e.display(true).to_string())
}

/// Runs one file against a fresh server, over the Postgres protocol.
pub async fn run_slt_over_wire(file: &Path) -> Result<(), String> {
    let server = Arc::new(TestServer::start().await);
    let connect_to = server.clone();
    let mut runner = Runner::new(move || {
        let server = connect_to.clone();
        async move {
            Ok(Wire {
                client: server.client().await,
            })
        }
    });
    runner.with_column_validator(accept_any_types);
    runner
        .run_file_async(file)
        .await
        .map_err(|e| e.display(true).to_string())
}

struct InProcess {
    session: Session,
}

#[async_trait]
impl sqllogictest::AsyncDB for InProcess {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let fail =
            |e: tributary_sql::Error| SltError(format!("[{}] {e}", tributary_wire::sqlstate(&e)));
        let statements = self.session.parse(sql).map_err(fail)?;
        let mut last = DBOutput::StatementComplete(0);
        for statement in statements {
            last = match self.session.execute(statement).await.map_err(fail)? {
                Output::Command { rows, .. } => DBOutput::StatementComplete(rows.unwrap_or(0)),
                Output::Rows { stream, .. } => {
                    let batches: Vec<RecordBatch> =
                        stream.try_collect().await.map_err(|e| fail(e.into()))?;
                    rows_output(&batches).map_err(SltError)?
                }
                Output::CopyIn { .. } => {
                    self.session.cancel_copy();
                    return Err(SltError(
                        "COPY FROM STDIN needs a client that sends data".into(),
                    ));
                }
            };
        }
        Ok(last)
    }

    async fn shutdown(&mut self) {}
}

fn rows_output(batches: &[RecordBatch]) -> Result<DBOutput<DefaultColumnType>, String> {
    let mut rows = Vec::new();
    let mut width = 0;
    for batch in batches {
        width = batch.num_columns();
        let columns: Vec<Vec<String>> = batch
            .columns()
            .iter()
            .map(|c| render_column(c.as_ref()))
            .collect::<Result<_, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c[row].clone()).collect());
        }
    }
    Ok(DBOutput::Rows {
        types: vec![DefaultColumnType::Any; width],
        rows,
    })
}

/// Renders values as the Postgres text protocol does.
fn render_column(array: &dyn Array) -> Result<Vec<String>, String> {
    let options = FormatOptions::default().with_null("NULL");
    let formatter = ArrayFormatter::try_new(array, &options).map_err(|e| e.to_string())?;
    (0..array.len())
        .map(|row| {
            if array.is_null(row) {
                return Ok("NULL".to_string());
            }
            let text = match array.data_type() {
                DataType::Boolean => if array.as_boolean().value(row) {
                    "t"
                } else {
                    "f"
                }
                .to_string(),
                DataType::Timestamp(_, tz) => {
                    let as_micros = arrow::compute::cast(
                        &array.slice(row, 1),
                        &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                    )
                    .map_err(|e| e.to_string())?;
                    let micros = as_micros
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(0);
                    let at = chrono::DateTime::from_timestamp_micros(micros)
                        .ok_or("timestamp out of range")?;
                    match tz {
                        None => at.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                        Some(_) => at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                    }
                }
                DataType::Time64(TimeUnit::Microsecond) => {
                    let micros = array
                        .as_primitive::<arrow::datatypes::Time64MicrosecondType>()
                        .value(row);
                    let time = chrono::NaiveTime::from_num_seconds_from_midnight_opt(
                        (micros / 1_000_000) as u32,
                        ((micros % 1_000_000) * 1000) as u32,
                    )
                    .ok_or("time out of range")?;
                    time.format("%H:%M:%S%.6f").to_string()
                }
                DataType::Binary | DataType::BinaryView | DataType::LargeBinary => {
                    let bytes = arrow::compute::cast(&array.slice(row, 1), &DataType::Binary)
                        .map_err(|e| e.to_string())?;
                    let value = bytes.as_binary::<i32>().value(0);
                    format!(
                        "\\x{}",
                        value.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    )
                }
                _ => formatter.value(row).to_string(),
            };
            Ok(if text.is_empty() {
                "(empty)".to_string()
            } else {
                text
            })
        })
        .collect()
}

struct Wire {
    client: tokio_postgres::Client,
}

#[async_trait]
impl sqllogictest::AsyncDB for Wire {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        use tokio_postgres::SimpleQueryMessage;
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => SltError(format!("[{}] {}", db.code().code(), db.message())),
                None => SltError(e.to_string()),
            })?;
        // The last statement's result is the one reported.
        let mut rows: Option<Vec<Vec<String>>> = None;
        let mut width = 0;
        let mut count = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    width = columns.len();
                    rows = Some(Vec::new());
                }
                SimpleQueryMessage::Row(row) => {
                    let values = (0..row.len())
                        .map(|i| match row.get(i) {
                            None => "NULL".to_string(),
                            Some("") => "(empty)".to_string(),
                            Some(text) => text.to_string(),
                        })
                        .collect();
                    rows.get_or_insert_with(Vec::new).push(values);
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(match rows {
            Some(rows) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; width],
                rows,
            },
            None => DBOutput::StatementComplete(count),
        })
    }

    async fn shutdown(&mut self) {}
}
