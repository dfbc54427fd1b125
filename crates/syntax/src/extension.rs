//! Redshift statements sqlparser does not parse: `CREATE EXTERNAL SCHEMA ... FROM KINESIS`,
//! `CREATE MATERIALIZED VIEW` with Redshift's attributes, `REFRESH MATERIALIZED VIEW` and
//! `ALTER MATERIALIZED VIEW ... AUTO REFRESH`, `CREATE [OR REPLACE] PROCEDURE`,
//! `SHOW PROCEDURE`, and `CREATE` / `REFRESH` / `ALTER MIRROR TABLE`.
//!
//! Each becomes an [`ExtStatement`], typed, beside sqlparser's statements in
//! [`crate::Statement`]. A materialized view stays sqlparser's `CREATE MATERIALIZED VIEW`,
//! whose `WITH` options hold Redshift's attributes (see [`options`]).

use sqlparser::ast::{
    CreateTable, CreateTableOptions, CreateView, Expr, Ident, ObjectName, SqlOption, Statement,
    Value,
};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// A Redshift statement sqlparser lacks, as parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtStatement {
    /// `CREATE EXTERNAL SCHEMA [IF NOT EXISTS] name FROM source <option value>...`: the source
    /// lower-cased (`kinesis`, `kafka`, `msk`, `redshift`), options lower-cased.
    CreateExternalSchema {
        name: ObjectName,
        if_not_exists: bool,
        source: String,
        options: Vec<(String, String)>,
    },
    /// `ALTER EXTERNAL SCHEMA name <option value>...`, options lower-cased.
    AlterExternalSchema {
        name: ObjectName,
        options: Vec<(String, String)>,
    },
    /// `CREATE MIRROR TABLE`: the table as a `CREATE TABLE` and the clauses after its columns.
    CreateMirrorTable {
        table: Box<CreateTable>,
        clauses: MirrorClauses,
    },
    /// `REFRESH MATERIALIZED VIEW name` or `REFRESH MIRROR TABLE name`.
    Refresh { name: ObjectName },
    /// `ALTER MATERIALIZED VIEW name AUTO REFRESH {YES | NO}` (or `ALTER MIRROR TABLE`).
    AlterAutoRefresh { name: ObjectName, enable: bool },
    /// `CREATE [OR REPLACE] PROCEDURE`.
    CreateProcedure {
        name: ObjectName,
        definition: ProcedureDefinition,
    },
    /// `SHOW PROCEDURE name [(types)]`: None without a type list (any procedure of the name).
    ShowProcedure {
        name: ObjectName,
        argument_types: Option<Vec<String>>,
    },
    /// Users, groups, grants, owners and datashares.
    Access(crate::access::AccessStatement),
}

impl std::fmt::Display for ExtStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options = |options: &[(String, String)]| {
            options
                .iter()
                .map(|(key, value)| {
                    format!(
                        " {} '{}'",
                        key.to_ascii_uppercase(),
                        value.replace('\'', "''")
                    )
                })
                .collect::<String>()
        };
        match self {
            ExtStatement::CreateExternalSchema {
                name,
                if_not_exists,
                source,
                options: given,
            } => write!(
                f,
                "CREATE EXTERNAL SCHEMA {}{name} FROM {}{}",
                if *if_not_exists { "IF NOT EXISTS " } else { "" },
                source.to_ascii_uppercase(),
                options(given)
            ),
            ExtStatement::AlterExternalSchema {
                name,
                options: given,
            } => write!(f, "ALTER EXTERNAL SCHEMA {name}{}", options(given)),
            ExtStatement::CreateMirrorTable { table, .. } => {
                write!(f, "CREATE MIRROR TABLE {}", table.name)
            }
            ExtStatement::Refresh { name } => write!(f, "REFRESH MATERIALIZED VIEW {name}"),
            ExtStatement::AlterAutoRefresh { name, enable } => write!(
                f,
                "ALTER MATERIALIZED VIEW {name} AUTO REFRESH {}",
                if *enable { "YES" } else { "NO" }
            ),
            ExtStatement::CreateProcedure { name, definition } => write!(
                f,
                "CREATE {}PROCEDURE {name}",
                if definition.or_replace {
                    "OR REPLACE "
                } else {
                    ""
                }
            ),
            ExtStatement::ShowProcedure {
                name,
                argument_types,
            } => match argument_types {
                Some(types) => write!(f, "SHOW PROCEDURE {name}({})", types.join(", ")),
                None => write!(f, "SHOW PROCEDURE {name}"),
            },
            ExtStatement::Access(access) => write!(f, "{access}"),
        }
    }
}

/// The clauses of `CREATE MIRROR TABLE` after the column list.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorClauses {
    /// The change stream: `[schema, stream]` (or `[stream]`), unquoted parts folded to lower
    /// case.
    pub source: Vec<String>,
    /// `debezium`, `dms`, `dynamodb` or `operation`.
    pub format: String,
    /// For `FORMAT OPERATION COLUMN name`: the column's name, as written.
    pub operation_column: Option<String>,
    /// `ORDER BY a.b.c`: the path's keys as written; None for `ORDER BY STREAM POSITION` or no
    /// ORDER BY.
    pub order: Option<Vec<String>>,
    pub auto_refresh: bool,
}

/// A `CREATE PROCEDURE` as parsed: what the procedure module needs to store it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcedureDefinition {
    pub or_replace: bool,
    /// (name, mode `in` / `out` / `inout`, type as SQL text).
    pub arguments: Vec<(Option<String>, String, String)>,
    pub body: String,
    pub language: String,
    pub nonatomic: bool,
    pub security_definer: bool,
    pub settings: Vec<(String, String)>,
}

/// Parses the statement at the parser's position if it is one of ours.
pub fn parse(parser: &mut Parser) -> Option<Result<crate::Statement, ParserError>> {
    let ext =
        |statement: Result<ExtStatement, ParserError>| Some(statement.map(crate::Statement::Ext));
    let word = |n: usize| upper(&parser.peek_nth_token(n).token);
    let (first, second, third) = (word(0), word(1), word(2));
    match (first.as_deref(), second.as_deref(), third.as_deref()) {
        (Some("CREATE"), Some("EXTERNAL"), Some("SCHEMA")) => ext(external_schema(parser)),
        (Some("ALTER"), Some("EXTERNAL"), Some("SCHEMA")) => ext(alter_external_schema(parser)),
        (Some("CREATE"), Some("MATERIALIZED"), Some("VIEW")) => {
            Some(materialized_view(parser).map(crate::Statement::Sql))
        }
        (Some("REFRESH"), Some("MATERIALIZED"), Some("VIEW")) => ext(refresh(parser)),
        (Some("ALTER"), Some("MATERIALIZED"), Some("VIEW")) => ext(alter(parser)),
        (Some("CREATE"), Some("PROCEDURE"), _) => ext(create_procedure(parser, false)),
        (Some("SHOW"), Some("PROCEDURE"), _) => ext(show_procedure(parser)),
        (Some("CREATE"), Some("MIRROR"), Some("TABLE")) => ext(create_mirror(parser)),
        (Some("REFRESH"), Some("MIRROR"), Some("TABLE")) => ext(refresh(parser)),
        (Some("ALTER"), Some("MIRROR"), Some("TABLE")) => ext(alter(parser)),
        (Some("CREATE"), Some("OR"), Some("REPLACE"))
            if word(3).as_deref() == Some("PROCEDURE") =>
        {
            ext(create_procedure(parser, true))
        }
        _ => crate::access::parse(parser)
            .map(|access| access.map(|a| crate::Statement::Ext(ExtStatement::Access(a)))),
    }
}

fn upper(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn skip_words(parser: &mut Parser, count: usize) {
    for _ in 0..count {
        parser.next_token();
    }
}

fn expect_word(parser: &mut Parser, expected: &str) -> Result<(), ParserError> {
    let token = parser.next_token();
    if upper(&token.token).as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(ParserError::ParserError(format!(
            "expected {expected}, found {}",
            token.token
        )))
    }
}

fn at_end(parser: &Parser) -> bool {
    matches!(parser.peek_token().token, Token::EOF | Token::SemiColon)
}

fn option(key: &str, value: String) -> SqlOption {
    SqlOption::KeyValue {
        key: Ident::new(key),
        value: Expr::Value(Value::SingleQuotedString(value).into()),
    }
}

/// `CREATE EXTERNAL SCHEMA [IF NOT EXISTS] name FROM <source> <option value>...`, where a value
/// is a string literal or a word (`IAM_ROLE default`, `AUTHENTICATION none`).
fn external_schema(parser: &mut Parser) -> Result<ExtStatement, ParserError> {
    skip_words(parser, 3);
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    expect_word(parser, "FROM")?;
    let source = parser.next_token();
    let Some(source) = upper(&source.token) else {
        return Err(ParserError::ParserError(format!(
            "expected a source after FROM, found {}",
            source.token
        )));
    };
    Ok(ExtStatement::CreateExternalSchema {
        name,
        if_not_exists,
        source: source.to_ascii_lowercase(),
        options: schema_options(parser, "CREATE")?,
    })
}

/// The `<option value>...` of an external schema statement up to its end, options
/// lower-cased; a value is a string literal or a word (`IAM_ROLE default`).
fn schema_options(parser: &mut Parser, verb: &str) -> Result<Vec<(String, String)>, ParserError> {
    let mut options = Vec::new();
    while !at_end(parser) {
        let key = parser.next_token();
        let Some(key) = upper(&key.token) else {
            return Err(ParserError::ParserError(format!(
                "expected an option of {verb} EXTERNAL SCHEMA, found {}",
                key.token
            )));
        };
        let value = parser.next_token();
        let value = match value.token {
            Token::SingleQuotedString(s) => s,
            Token::Word(w) => w.value,
            other => {
                return Err(ParserError::ParserError(format!(
                    "expected a value for {key}, found {other}"
                )));
            }
        };
        options.push((key.to_ascii_lowercase(), value));
    }
    Ok(options)
}

/// `ALTER EXTERNAL SCHEMA name <option value>...`.
fn alter_external_schema(parser: &mut Parser) -> Result<ExtStatement, ParserError> {
    skip_words(parser, 3);
    let name = parser.parse_object_name(false)?;
    Ok(ExtStatement::AlterExternalSchema {
        name,
        options: schema_options(parser, "ALTER")?,
    })
}

/// `CREATE MATERIALIZED VIEW name [BACKUP {YES|NO}] [DISTSTYLE s] [DISTKEY (c)]
/// [[COMPOUND|INTERLEAVED] SORTKEY (c, ...)] [AUTO REFRESH {YES|NO}] AS query`.
fn materialized_view(parser: &mut Parser) -> Result<Statement, ParserError> {
    skip_words(parser, 3);
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let mut options = Vec::new();
    loop {
        let word = upper(&parser.peek_token().token);
        match word.as_deref() {
            Some("AS") => {
                parser.next_token();
                break;
            }
            Some("BACKUP") => {
                parser.next_token();
                let value = parser.next_token();
                options.push(option(
                    "backup",
                    value.token.to_string().to_ascii_lowercase(),
                ));
            }
            Some("DISTSTYLE") => {
                parser.next_token();
                let value = parser.next_token();
                options.push(option(
                    "diststyle",
                    value.token.to_string().to_ascii_lowercase(),
                ));
            }
            Some("DISTKEY") => {
                parser.next_token();
                let columns = parser.parse_parenthesized_column_list(
                    sqlparser::parser::IsOptional::Mandatory,
                    false,
                )?;
                let names: Vec<String> = columns.iter().map(|c| c.value.clone()).collect();
                options.push(option("distkey", names.join(",")));
            }
            Some("COMPOUND") | Some("INTERLEAVED") | Some("SORTKEY") => {
                if word.as_deref() != Some("SORTKEY") {
                    parser.next_token();
                }
                expect_word(parser, "SORTKEY")?;
                let columns = parser.parse_parenthesized_column_list(
                    sqlparser::parser::IsOptional::Mandatory,
                    false,
                )?;
                let names: Vec<String> = columns.iter().map(|c| c.value.clone()).collect();
                options.push(option("sortkey", names.join(",")));
            }
            Some("AUTO") => {
                parser.next_token();
                expect_word(parser, "REFRESH")?;
                let value = parser.next_token();
                match upper(&value.token).as_deref() {
                    Some(v @ ("YES" | "NO")) => {
                        options.push(option("auto_refresh", v.to_ascii_lowercase()))
                    }
                    _ => {
                        return Err(ParserError::ParserError(format!(
                            "expected YES or NO after AUTO REFRESH, found {}",
                            value.token
                        )));
                    }
                }
            }
            _ => {
                let token = parser.next_token();
                return Err(ParserError::ParserError(format!(
                    "expected AS or a materialized view attribute, found {}",
                    token.token
                )));
            }
        }
    }
    let query = parser.parse_query()?;
    Ok(Statement::CreateView(CreateView {
        or_alter: false,
        or_replace: false,
        materialized: true,
        secure: false,
        name,
        name_before_not_exists: false,
        columns: vec![],
        query,
        options: if options.is_empty() {
            CreateTableOptions::None
        } else {
            CreateTableOptions::With(options)
        },
        cluster_by: vec![],
        comment: None,
        with_no_schema_binding: false,
        if_not_exists,
        temporary: false,
        copy_grants: false,
        to: None,
        params: None,
    }))
}

/// `CREATE MIRROR TABLE [IF NOT EXISTS] name (columns, PRIMARY KEY (k, ...))
/// FROM schema."stream" FORMAT {DEBEZIUM | DMS | DYNAMODB | OPERATION COLUMN name}
/// [ENCODE JSON] [ORDER BY path | ORDER BY STREAM POSITION] [AUTO REFRESH {YES | NO}]`.
/// The clauses after the column list may come in any order.
fn create_mirror(parser: &mut Parser) -> Result<ExtStatement, ParserError> {
    skip_words(parser, 3);
    let create = parser.parse_create_table(false, false, None, false)?;
    let mut clauses = MirrorClauses {
        source: Vec::new(),
        format: String::new(),
        operation_column: None,
        order: None,
        auto_refresh: false,
    };
    while !at_end(parser) {
        let token = parser.next_token();
        match upper(&token.token).as_deref() {
            Some("FROM") => {
                let name = parser.parse_object_name(false)?;
                clauses.source = name
                    .0
                    .iter()
                    .filter_map(|part| part.as_ident())
                    .map(|ident| match ident.quote_style {
                        Some(_) => ident.value.clone(),
                        None => ident.value.to_lowercase(),
                    })
                    .collect();
            }
            Some("FORMAT") => {
                let format = parser.next_token();
                match upper(&format.token).as_deref() {
                    Some(f @ ("DEBEZIUM" | "DMS" | "DYNAMODB")) => {
                        clauses.format = f.to_ascii_lowercase()
                    }
                    Some("OPERATION") => {
                        expect_word(parser, "COLUMN")?;
                        clauses.format = "operation".into();
                        clauses.operation_column = Some(parser.parse_identifier()?.value);
                    }
                    _ => {
                        return Err(ParserError::ParserError(format!(
                            "expected DEBEZIUM, DMS, DYNAMODB or OPERATION COLUMN after FORMAT, found {}",
                            format.token
                        )));
                    }
                }
            }
            Some("ENCODE") => {
                let encoding = parser.next_token();
                if upper(&encoding.token).as_deref() != Some("JSON") {
                    return Err(ParserError::ParserError(format!(
                        "a mirror table reads JSON change records: expected ENCODE JSON, found ENCODE {}",
                        encoding.token
                    )));
                }
            }
            Some("ORDER") => {
                expect_word(parser, "BY")?;
                let next = |n: usize| upper(&parser.peek_nth_token(n).token);
                if next(0).as_deref() == Some("STREAM") && next(1).as_deref() == Some("POSITION") {
                    skip_words(parser, 2);
                    clauses.order = None;
                } else {
                    let mut path = vec![parser.parse_identifier()?.value];
                    while parser.consume_token(&Token::Period) {
                        path.push(parser.parse_identifier()?.value);
                    }
                    clauses.order = Some(path);
                }
            }
            Some("AUTO") => {
                expect_word(parser, "REFRESH")?;
                let value = parser.next_token();
                clauses.auto_refresh = match upper(&value.token).as_deref() {
                    Some("YES") => true,
                    Some("NO") => false,
                    _ => {
                        return Err(ParserError::ParserError(format!(
                            "expected YES or NO after AUTO REFRESH, found {}",
                            value.token
                        )));
                    }
                };
            }
            _ => {
                return Err(ParserError::ParserError(format!(
                    "expected FROM, FORMAT, ENCODE, ORDER BY or AUTO REFRESH in CREATE MIRROR TABLE, found {}",
                    token.token
                )));
            }
        }
    }
    if clauses.source.is_empty() {
        return Err(ParserError::ParserError(
            "CREATE MIRROR TABLE needs its change stream: FROM schema.\"stream\"".into(),
        ));
    }
    if clauses.format.is_empty() {
        return Err(ParserError::ParserError(
            "CREATE MIRROR TABLE needs the change format: FORMAT {DEBEZIUM | DMS | DYNAMODB | OPERATION COLUMN name}".into(),
        ));
    }
    if !matches!(
        create.table_options,
        CreateTableOptions::None | CreateTableOptions::With(_) | CreateTableOptions::Plain(_)
    ) {
        return Err(ParserError::ParserError(
            "CREATE MIRROR TABLE takes no table options".into(),
        ));
    }
    Ok(ExtStatement::CreateMirrorTable {
        table: Box::new(create),
        clauses,
    })
}

/// `REFRESH MATERIALIZED VIEW name` (and `REFRESH MIRROR TABLE name`).
fn refresh(parser: &mut Parser) -> Result<ExtStatement, ParserError> {
    skip_words(parser, 3);
    let name = parser.parse_object_name(false)?;
    Ok(ExtStatement::Refresh { name })
}

/// `ALTER MATERIALIZED VIEW name AUTO REFRESH {YES|NO}` (and `ALTER MIRROR TABLE`).
fn alter(parser: &mut Parser) -> Result<ExtStatement, ParserError> {
    skip_words(parser, 3);
    let name = parser.parse_object_name(false)?;
    expect_word(parser, "AUTO")?;
    expect_word(parser, "REFRESH")?;
    let value = parser.next_token();
    let enable = match upper(&value.token).as_deref() {
        Some("YES") => true,
        Some("NO") => false,
        _ => {
            return Err(ParserError::ParserError(format!(
                "expected YES or NO after AUTO REFRESH, found {}",
                value.token
            )));
        }
    };
    Ok(ExtStatement::AlterAutoRefresh { name, enable })
}

/// `CREATE [OR REPLACE] PROCEDURE name ( [[argname] [IN | OUT | INOUT] argtype [, ...]] )
/// [NONATOMIC] AS $$ body $$ LANGUAGE plpgsql [SECURITY {INVOKER | DEFINER}]
/// [SET name {TO | =} value]`. The attributes after the name may come in any order, as
/// Postgres allows.
fn create_procedure(parser: &mut Parser, or_replace: bool) -> Result<ExtStatement, ParserError> {
    skip_words(parser, if or_replace { 4 } else { 2 });
    let name = parser.parse_object_name(false)?;
    parser.expect_token(&Token::LParen)?;
    let mut arguments = Vec::new();
    if !parser.consume_token(&Token::RParen) {
        loop {
            arguments.push(procedure_argument(parser)?);
            if parser.consume_token(&Token::RParen) {
                break;
            }
            parser.expect_token(&Token::Comma)?;
        }
    }
    let mut definition = ProcedureDefinition {
        or_replace,
        arguments,
        body: String::new(),
        language: String::new(),
        nonatomic: false,
        security_definer: false,
        settings: Vec::new(),
    };
    let mut has_body = false;
    while !at_end(parser) {
        let token = parser.next_token();
        match upper(&token.token).as_deref() {
            Some("NONATOMIC") => definition.nonatomic = true,
            Some("AS") => {
                let body = parser.next_token();
                definition.body = match body.token {
                    Token::DollarQuotedString(s) => s.value,
                    Token::SingleQuotedString(s) => s,
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "expected the procedure body as a $$-quoted string, found {other}"
                        )));
                    }
                };
                has_body = true;
            }
            Some("LANGUAGE") => {
                let language = parser.next_token();
                definition.language = match language.token {
                    Token::Word(w) => w.value.to_ascii_lowercase(),
                    Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "expected a language after LANGUAGE, found {other}"
                        )));
                    }
                };
            }
            Some("SECURITY") => {
                let kind = parser.next_token();
                definition.security_definer = match upper(&kind.token).as_deref() {
                    Some("DEFINER") => true,
                    Some("INVOKER") => false,
                    _ => {
                        return Err(ParserError::ParserError(format!(
                            "expected INVOKER or DEFINER after SECURITY, found {}",
                            kind.token
                        )));
                    }
                };
            }
            Some("SET") => {
                let setting = parser.parse_identifier()?.value.to_ascii_lowercase();
                if !parser.consume_token(&Token::Eq) {
                    expect_word(parser, "TO")?;
                }
                let value = parser.next_token();
                let value = match value.token {
                    Token::SingleQuotedString(s) => s,
                    Token::Word(w) => w.value,
                    Token::Number(n, _) => n,
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "expected a value for {setting}, found {other}"
                        )));
                    }
                };
                definition.settings.push((setting, value));
            }
            _ => {
                return Err(ParserError::ParserError(format!(
                    "expected AS, LANGUAGE, NONATOMIC, SECURITY or SET in CREATE PROCEDURE, found {}",
                    token.token
                )));
            }
        }
    }
    if !has_body {
        return Err(ParserError::ParserError(
            "CREATE PROCEDURE needs a body: AS $$ ... $$ LANGUAGE plpgsql".into(),
        ));
    }
    Ok(ExtStatement::CreateProcedure { name, definition })
}

/// `SHOW PROCEDURE name [( [argtype [, ...]] )]`.
fn show_procedure(parser: &mut Parser) -> Result<ExtStatement, ParserError> {
    skip_words(parser, 2);
    let name = parser.parse_object_name(false)?;
    let mut argument_types = None;
    if parser.consume_token(&Token::LParen) {
        // `()` means "no arguments", not "any".
        let types = argument_types.insert(Vec::new());
        if !parser.consume_token(&Token::RParen) {
            loop {
                let (_, _, data_type) = procedure_argument(parser)?;
                types.push(data_type);
                if parser.consume_token(&Token::RParen) {
                    break;
                }
                parser.expect_token(&Token::Comma)?;
            }
        }
    }
    Ok(ExtStatement::ShowProcedure {
        name,
        argument_types,
    })
}

/// `[argname] [IN | OUT | INOUT] argtype` (Redshift's order), or `[IN | OUT | INOUT]
/// [argname] argtype` (Postgres's).
fn procedure_argument(
    parser: &mut Parser,
) -> Result<(Option<String>, String, String), ParserError> {
    fn mode(parser: &mut Parser) -> Option<String> {
        let word = upper(&parser.peek_token().token)?;
        matches!(word.as_str(), "IN" | "OUT" | "INOUT").then(|| {
            parser.next_token();
            word.to_ascii_lowercase()
        })
    }
    let mut argument_mode = mode(parser);
    // A name is a word followed by a mode or a type; a type alone is followed by `,` or `)`.
    let first = upper(&parser.peek_token().token);
    let second = upper(&parser.peek_nth_token(1).token);
    let multi_word_type = matches!(
        (first.as_deref(), second.as_deref()),
        (Some("DOUBLE"), Some("PRECISION"))
            | (Some("CHARACTER"), Some("VARYING"))
            | (Some("TIMESTAMP" | "TIME"), Some("WITH" | "WITHOUT"))
    );
    let named = matches!(parser.peek_token().token, Token::Word(_))
        && !matches!(
            parser.peek_nth_token(1).token,
            Token::Comma | Token::RParen | Token::LParen
        )
        && !multi_word_type;
    let name = if named {
        Some(crate::names::normalize_ident(&parser.parse_identifier()?))
    } else {
        None
    };
    if argument_mode.is_none() {
        argument_mode = mode(parser);
    }
    let data_type = parser.parse_data_type()?;
    Ok((
        name,
        argument_mode.unwrap_or_else(|| "in".into()),
        data_type.to_string(),
    ))
}

/// The `WITH` options of a materialized view as parsed here, as (key, value) pairs.
pub fn options(options: &[SqlOption]) -> Vec<(String, String)> {
    options
        .iter()
        .filter_map(|option| match option {
            SqlOption::KeyValue { key, value } => {
                let value = match value {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    other => other.to_string(),
                };
                Some((key.value.to_ascii_lowercase(), value))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::dialect::parse_statements;

    use super::*;

    fn one(sql: &str) -> crate::Statement {
        let mut statements = parse_statements(sql).unwrap();
        assert_eq!(statements.len(), 1, "{sql}");
        statements.pop().unwrap()
    }

    fn ext(sql: &str) -> ExtStatement {
        match one(sql) {
            crate::Statement::Ext(statement) => statement,
            other => panic!("not an extension statement: {other:?}"),
        }
    }

    fn sql(sql: &str) -> Statement {
        match one(sql) {
            crate::Statement::Sql(statement) => statement,
            other => panic!("not a sqlparser statement: {other:?}"),
        }
    }

    #[test]
    fn external_schemas_parse_with_their_options() {
        let ExtStatement::CreateExternalSchema {
            name,
            if_not_exists,
            source,
            options: found,
        } = ext("CREATE EXTERNAL SCHEMA kds FROM KINESIS REGION 'us-west-2' IAM_ROLE default;")
        else {
            panic!("not a schema");
        };
        assert_eq!(name.to_string(), "kds");
        assert!(!if_not_exists);
        assert_eq!(source, "kinesis");
        assert_eq!(
            found,
            vec![
                ("region".to_string(), "us-west-2".to_string()),
                ("iam_role".to_string(), "default".to_string()),
            ]
        );
        assert!(parse_statements("CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE").is_err());
    }

    #[test]
    fn materialized_views_keep_redshift_attributes() {
        let Statement::CreateView(view) = sql(
            "CREATE MATERIALIZED VIEW mv BACKUP NO DISTKEY(id) SORTKEY(a, b) AUTO REFRESH YES AS \
             SELECT approximate_arrival_timestamp FROM kds.\"my-stream\"",
        ) else {
            panic!("not a view");
        };
        assert!(view.materialized);
        let CreateTableOptions::With(found) = &view.options else {
            panic!("no options");
        };
        assert_eq!(
            options(found),
            vec![
                ("backup".to_string(), "no".to_string()),
                ("distkey".to_string(), "id".to_string()),
                ("sortkey".to_string(), "a,b".to_string()),
                ("auto_refresh".to_string(), "yes".to_string()),
            ]
        );
        let Statement::CreateView(plain) = sql("CREATE MATERIALIZED VIEW mv AS SELECT 1") else {
            panic!("not a view");
        };
        assert!(plain.materialized);
    }

    #[test]
    fn refresh_and_alter_are_typed() {
        let ExtStatement::Refresh { name } = ext("REFRESH MATERIALIZED VIEW s.\"Mv\"") else {
            panic!("not a refresh");
        };
        let parts = crate::rewrite::idents(&name);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].value, "Mv");
        assert_eq!(
            ext("ALTER MATERIALIZED VIEW mv AUTO REFRESH NO"),
            ExtStatement::AlterAutoRefresh {
                name: ObjectName::from(vec![Ident::new("mv")]),
                enable: false,
            }
        );
        let ExtStatement::AlterExternalSchema { name, options } =
            ext("ALTER EXTERNAL SCHEMA k AUTHENTICATION none URI 'b:9092'")
        else {
            panic!("not an ALTER EXTERNAL SCHEMA");
        };
        assert_eq!(name.to_string(), "k");
        assert_eq!(
            options,
            [("authentication", "none"), ("uri", "b:9092")].map(|(k, v)| (k.into(), v.into()))
        );
        assert!(parse_statements("ALTER EXTERNAL SCHEMA k URI").is_err());
    }

    #[test]
    fn mirror_tables_and_procedures_are_typed() {
        let ExtStatement::CreateMirrorTable { table, clauses } = ext(
            "CREATE MIRROR TABLE m (id int, PRIMARY KEY (id)) FROM s.\"Orders\" FORMAT DEBEZIUM \
             ORDER BY payload.ts AUTO REFRESH YES",
        ) else {
            panic!("not a mirror");
        };
        assert_eq!(table.name.to_string(), "m");
        assert_eq!(
            clauses,
            MirrorClauses {
                source: vec!["s".into(), "Orders".into()],
                format: "debezium".into(),
                operation_column: None,
                order: Some(vec!["payload".into(), "ts".into()]),
                auto_refresh: true,
            }
        );
        let ExtStatement::CreateProcedure { name, definition } =
            ext("CREATE OR REPLACE PROCEDURE p(a int) AS $$ BEGIN NULL; END $$ LANGUAGE plpgsql")
        else {
            panic!("not a procedure");
        };
        assert_eq!(name.to_string(), "p");
        assert!(definition.or_replace);
        assert_eq!(definition.language, "plpgsql");
        assert_eq!(
            ext("SHOW PROCEDURE p()"),
            ExtStatement::ShowProcedure {
                name: ObjectName::from(vec![Ident::new("p")]),
                argument_types: Some(vec![]),
            }
        );
        assert_eq!(
            ext("SHOW PROCEDURE p"),
            ExtStatement::ShowProcedure {
                name: ObjectName::from(vec![Ident::new("p")]),
                argument_types: None,
            }
        );
    }
}
