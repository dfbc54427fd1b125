//! UNLOAD: a query's rows written to files (Parquet or delimited text) on S3 or disk.

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::sql::sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, Statement};
use tributary_storage::ExternalLocation;

use super::plan::ascii;
use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

/// UNLOAD ('query') TO 's3://...' | 'file:///...' [FORMAT [AS] PARQUET | CSV] [HEADER]
/// [DELIMITER 'c'] [GZIP] [ALLOWOVERWRITE] [PARALLEL ...] [EXTENSION 'ext'].
pub(crate) async fn unload(cx: &mut Context, statement: Statement) -> Result<Output> {
    let Statement::Unload {
        query,
        query_text,
        to,
        options,
        ..
    } = statement
    else {
        return Err(Error::Internal("not an UNLOAD statement".into()));
    };
    let statement = match (query, query_text) {
        (Some(query), _) => Statement::Query(query),
        (None, Some(text)) => {
            let mut statements = cx.parse(&text)?;
            match (
                statements.pop().and_then(|s| s.into_sql()),
                statements.is_empty(),
            ) {
                (Some(statement @ Statement::Query(_)), true) => statement,
                _ => {
                    return Err(Error::Syntax("UNLOAD takes one SELECT statement".into()));
                }
            }
        }
        (None, None) => return Err(Error::Syntax("UNLOAD needs a query".into())),
    };
    let mut parquet = false;
    let mut header = false;
    let mut delimiter = b'|';
    let mut delimiter_given = false;
    let mut csv = false;
    let mut gzip = false;
    let mut overwrite = false;
    let mut extension: Option<String> = None;
    for option in &options {
        match option {
            CopyLegacyOption::Parquet => parquet = true,
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                header |= csv_options
                    .iter()
                    .any(|o| matches!(o, CopyLegacyCsvOption::Header));
            }
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Delimiter(c) => {
                delimiter = ascii(*c)?;
                delimiter_given = true;
            }
            CopyLegacyOption::Gzip => gzip = true,
            CopyLegacyOption::AllowOverwrite | CopyLegacyOption::CleanPath => overwrite = true,
            CopyLegacyOption::Extension(ext) => {
                extension = Some(ext.trim_start_matches('.').to_string())
            }
            CopyLegacyOption::IamRole(_)
            | CopyLegacyOption::Credentials(_)
            | CopyLegacyOption::Region(_)
            | CopyLegacyOption::Parallel(_)
            | CopyLegacyOption::MaxFileSize(_)
            | CopyLegacyOption::RowGroupSize(_)
            | CopyLegacyOption::Manifest { .. }
            | CopyLegacyOption::Encrypted { .. } => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "UNLOAD option {other} is not supported"
                )));
            }
        }
    }
    if csv && !delimiter_given {
        delimiter = b',';
    }
    let location = ExternalLocation::parse(&to.value)?;
    if !location.list().await?.is_empty() && !overwrite {
        return Err(Error::InvalidStatement(format!(
            "Specified unload destination '{}' is not empty. Unload destination must be empty or ALLOWOVERWRITE specified.",
            to.value
        )));
    }
    let statement = cx.rewrite(statement)?;
    let plan = cx.plan(&statement).await?;
    let frame = cx.context().execute_logical_plan(plan).await?;
    let rows = frame.clone().count().await? as u64;
    let suffix = match (parquet, &extension, gzip) {
        (true, _, _) => "0000_part_00.parquet".to_string(),
        (false, Some(ext), true) => format!("0000_part_00.{ext}.gz"),
        (false, Some(ext), false) => format!("0000_part_00.{ext}"),
        (false, None, true) => "0000_part_00.gz".to_string(),
        (false, None, false) => "0000_part_00".to_string(),
    };
    let target = format!("{}{}", to.value, suffix);
    cx.context()
        .register_object_store(location.base(), location.store());
    let single = DataFrameWriteOptions::new().with_single_file_output(true);
    if parquet {
        frame.write_parquet(&target, single, None).await?;
    } else {
        let options = datafusion::common::config::CsvOptions::default()
            .with_has_header(header)
            .with_delimiter(delimiter)
            .with_compression(if gzip {
                datafusion::common::parsers::CompressionTypeVariant::GZIP
            } else {
                datafusion::common::parsers::CompressionTypeVariant::UNCOMPRESSED
            });
        frame.write_csv(&target, single, Some(options)).await?;
    }
    Ok(Output::Command {
        tag: "UNLOAD".into(),
        rows: Some(rows),
    })
}
