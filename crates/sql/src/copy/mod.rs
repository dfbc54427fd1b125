//! COPY (bulk load from files or from the client) and UNLOAD (query results to files).
//!
//! Delimited text, CSV and JSON are parsed here, a chunk of rows at a time: each field is
//! converted to its column's type, and a row whose field does not convert (or is too long, or
//! NULL in a NOT NULL column) is a load error with its line number and reason. Load errors go
//! to `stl_load_errors`; more than MAXERROR of them (default 0) fail the COPY, and nothing of it
//! stays. Parquet goes through DataFusion's reader. Input (a file or the client's data) is
//! read, decompressed and parsed a block at a time, and rows are appended in chunks as table
//! versions of the statement's transaction, so a large load never sits in memory whole and
//! still becomes visible at once.

use bytes::Bytes;
use datafusion::prelude::ParquetReadOptions;
use futures::{Stream, StreamExt};
use tributary_storage::ExternalLocation;

use crate::context::Context;
use crate::{Error, Result};

pub(crate) mod errors;
mod loader;
pub(crate) use loader::default_value;
mod plan;
mod unload;

use loader::Loader;
pub use plan::CopyPlan;
pub(crate) use plan::plan;
use plan::{Format, Source};
pub(crate) use unload::unload;

/// Runs a COPY from files. Returns the number of rows loaded.
pub(crate) async fn load_location(cx: &Context, plan: &CopyPlan) -> Result<u64> {
    let Source::Location(location_text) = &plan.source else {
        return Err(Error::Internal(
            "COPY FROM STDIN needs the client's data".into(),
        ));
    };
    let location = ExternalLocation::parse(location_text)?;
    let files = location.list().await?;
    if files.is_empty() {
        return Err(Error::UndefinedFile(format!(
            "the specified location '{location_text}' has no files"
        )));
    }
    let mut loader = Loader::new(cx, plan)?;
    let read: Result<()> = async {
        if plan.format == Format::Parquet {
            let urls: Vec<String> = files.iter().map(|f| location.url_of(f)).collect();
            cx.context()
                .register_object_store(location.base(), location.store());
            let frame = cx
                .context()
                .read_parquet(urls, ParquetReadOptions::default())
                .await?;
            let mut stream = frame.execute_stream().await?;
            while let Some(batch) = stream.next().await {
                loader.push_columnar(batch?).await?;
            }
        } else {
            for file in &files {
                let stream = location.read_stream(file).await?;
                let name = location.url_of(file);
                loader.push_stream(&name, stream).await?;
            }
        }
        Ok(())
    }
    .await;
    loader.end(read).await
}

/// Runs a COPY FROM STDIN with the data the client sends, as it arrives.
pub(crate) async fn load_stream(
    cx: &Context,
    plan: &CopyPlan,
    data: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
) -> Result<u64> {
    let mut loader = Loader::new(cx, plan)?;
    let read = loader.push_stream("STDIN", data).await;
    loader.end(read).await
}
