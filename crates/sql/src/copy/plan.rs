//! A COPY statement read into what to load, from where, and how.

use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, Statement,
};
use tributary_syntax::dialect::MAXERROR_MARKER;
use tributary_syntax::names::{name_parts, normalize_ident};

use crate::context::Context;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Format {
    /// Delimited text: Redshift's default (`|`), Postgres's COPY text (tab).
    Text,
    Csv,
    Json {
        ignore_case: bool,
    },
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Compression {
    None,
    Gzip,
    Bzip2,
    Zstd,
}

/// Where COPY reads from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Location(String),
    /// The client sends the data (`COPY ... FROM STDIN`, psql's `\copy`).
    Stdin,
}

/// A parsed COPY: target, source and options.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    pub(super) schema: String,
    pub(super) table: String,
    /// The columns the input fills, in input order.
    pub(super) columns: Vec<String>,
    pub(super) source: Source,
    pub(super) format: Format,
    pub(super) delimiter: u8,
    pub(super) quote: u8,
    pub(super) ignore_header: u64,
    pub(super) null_as: Option<String>,
    pub(super) compression: Compression,
    pub(super) date_format: Option<String>,
    pub(super) time_format: Option<String>,
    pub(super) max_errors: u64,
    pub(super) empty_as_null: bool,
    pub(super) blanks_as_null: bool,
}

impl CopyPlan {
    /// True for `COPY ... FROM STDIN`: the data comes in CopyData messages afterwards.
    pub fn from_stdin(&self) -> bool {
        matches!(self.source, Source::Stdin)
    }

    /// The number of columns the client sends.
    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// The schema-qualified target, for locking.
    pub(crate) fn target(&self) -> (&str, &str) {
        (&self.schema, &self.table)
    }
}

/// Reads a COPY statement. `COPY ... TO` is refused: use UNLOAD.
pub(crate) fn plan(cx: &Context, statement: &Statement) -> Result<CopyPlan> {
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Err(Error::Internal("not a COPY statement".into()));
    };
    if *to {
        return Err(Error::NotSupported(
            "COPY ... TO is not supported; use UNLOAD ('query') TO 's3://...'".into(),
        ));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(Error::Syntax("COPY FROM loads into a table".into()));
    };
    let parts = name_parts(table_name);
    if parts.len() == 1
        && datafusion::catalog::SchemaProvider::table_exist(
            cx.catalogs().temp().as_ref(),
            &parts[0],
        )
    {
        return Err(Error::NotSupported(
            "COPY into a temporary table is not supported".into(),
        ));
    }
    let (schema, table_name) = cx.resolve_existing(table_name)?;
    let definition = cx
        .catalogs()
        .pinned()
        .table(cx.database(), &schema, &table_name)?
        .clone();
    let columns: Vec<String> = if columns.is_empty() {
        definition.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        columns.iter().map(normalize_ident).collect()
    };
    for column in &columns {
        if definition.column(column).is_none() {
            return Err(Error::UndefinedColumn(format!(
                "column \"{column}\" of relation \"{table_name}\" does not exist"
            )));
        }
    }
    let source = match target {
        CopyTarget::Stdin => Source::Stdin,
        CopyTarget::File { filename } => Source::Location(filename.clone()),
        other => {
            return Err(Error::NotSupported(format!(
                "COPY FROM {other} is not supported"
            )));
        }
    };
    let mut plan = CopyPlan {
        schema,
        table: table_name,
        columns,
        // COPY FROM STDIN speaks Postgres's text format (tab); files Redshift's (pipe).
        delimiter: if matches!(source, Source::Stdin) {
            b'\t'
        } else {
            b'|'
        },
        source,
        format: Format::Text,
        quote: b'"',
        ignore_header: 0,
        null_as: None,
        compression: Compression::None,
        date_format: None,
        time_format: None,
        max_errors: 0,
        empty_as_null: false,
        blanks_as_null: false,
    };
    let mut delimiter_given = false;
    for option in legacy_options {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                plan.format = Format::Csv;
                for csv_option in csv_options {
                    match csv_option {
                        CopyLegacyCsvOption::Header => plan.ignore_header = 1,
                        CopyLegacyCsvOption::Quote(quote) => plan.quote = ascii(*quote)?,
                        _ => {}
                    }
                }
            }
            CopyLegacyOption::Json(spec) => {
                let spec = spec.clone().unwrap_or_else(|| "auto".into());
                let lower = spec.to_ascii_lowercase();
                plan.format = match lower.as_str() {
                    "auto" => Format::Json { ignore_case: false },
                    "auto ignorecase" => Format::Json { ignore_case: true },
                    _ => {
                        return Err(Error::NotSupported(format!(
                            "JSON '{spec}': only JSON 'auto' and 'auto ignorecase' are supported, not JSONPaths files"
                        )));
                    }
                };
            }
            CopyLegacyOption::Parquet => plan.format = Format::Parquet,
            CopyLegacyOption::Delimiter(c) => {
                plan.delimiter = ascii(*c)?;
                delimiter_given = true;
            }
            CopyLegacyOption::IgnoreHeader(n) => plan.ignore_header = *n,
            CopyLegacyOption::Header => plan.ignore_header = 1,
            CopyLegacyOption::Null(null) => plan.null_as = Some(null.clone()),
            CopyLegacyOption::Gzip => plan.compression = Compression::Gzip,
            CopyLegacyOption::Bzip2 => plan.compression = Compression::Bzip2,
            CopyLegacyOption::Zstd => plan.compression = Compression::Zstd,
            CopyLegacyOption::DateFormat(f) => plan.date_format = f.clone(),
            CopyLegacyOption::TimeFormat(f) => plan.time_format = f.clone(),
            CopyLegacyOption::EmptyAsNull => plan.empty_as_null = true,
            CopyLegacyOption::BlankAsNull => plan.blanks_as_null = true,
            CopyLegacyOption::Extension(marker) if marker.starts_with(MAXERROR_MARKER) => {
                plan.max_errors = marker[MAXERROR_MARKER.len()..]
                    .parse()
                    .map_err(|_| Error::Syntax(format!("MAXERROR takes a number, not {marker}")))?;
            }
            // Authorization and region: the object store takes credentials from the
            // environment, so they are accepted and not needed.
            CopyLegacyOption::IamRole(_)
            | CopyLegacyOption::Credentials(_)
            | CopyLegacyOption::Region(_)
            | CopyLegacyOption::AcceptAnyDate
            | CopyLegacyOption::AcceptInvChars(_)
            | CopyLegacyOption::CompUpdate { .. }
            | CopyLegacyOption::StatUpdate(_)
            | CopyLegacyOption::TruncateColumns
            | CopyLegacyOption::RemoveQuotes => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    for option in options {
        match option {
            CopyOption::Format(Ident { value, .. }) => {
                plan.format = match value.to_ascii_lowercase().as_str() {
                    "csv" => Format::Csv,
                    "text" => Format::Text,
                    other => {
                        return Err(Error::NotSupported(format!(
                            "COPY FORMAT {other} is not supported"
                        )));
                    }
                }
            }
            CopyOption::Delimiter(c) => {
                plan.delimiter = ascii(*c)?;
                delimiter_given = true;
            }
            CopyOption::Null(null) => plan.null_as = Some(null.clone()),
            CopyOption::Header(header) => plan.ignore_header = u64::from(*header),
            CopyOption::Quote(quote) => plan.quote = ascii(*quote)?,
            CopyOption::Encoding(_) | CopyOption::Freeze(_) => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    if plan.format == Format::Csv && !delimiter_given {
        plan.delimiter = b',';
    }
    if matches!(plan.source, Source::Stdin) && plan.format == Format::Parquet {
        return Err(Error::NotSupported(
            "COPY FROM STDIN takes text or CSV".into(),
        ));
    }
    Ok(plan)
}

pub(super) fn ascii(c: char) -> Result<u8> {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| Error::Syntax(format!("COPY delimiter and quote must be ASCII, not '{c}'")))
}
