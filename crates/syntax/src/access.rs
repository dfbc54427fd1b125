//! Parsing of the access-control and data-sharing statements, which sqlparser parses in other
//! dialects' forms or not at all: users, groups, GRANT / REVOKE, `ALTER ... OWNER TO`, and
//! datashares. Each becomes an [`AccessStatement`].

use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;
use tributary_catalog::{Grantee, Privilege};

/// A name as written: its parts, unquoted ones folded to lower case.
pub type Name = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
pub enum AccessStatement {
    CreateUser {
        name: String,
        options: UserOptions,
    },
    AlterUser {
        name: String,
        options: UserOptions,
        rename: Option<String>,
    },
    DropUser {
        names: Vec<String>,
        if_exists: bool,
    },
    CreateGroup {
        name: String,
        users: Vec<String>,
    },
    /// `ALTER GROUP g ADD | DROP USER u, ...`.
    AlterGroup {
        name: String,
        add: bool,
        users: Vec<String>,
    },
    RenameGroup {
        name: String,
        to: String,
    },
    DropGroup {
        names: Vec<String>,
        if_exists: bool,
    },
    /// GRANT, or REVOKE when `revoke`.
    Grant {
        revoke: bool,
        /// None: ALL [PRIVILEGES].
        privileges: Option<Vec<Privilege>>,
        object: GrantObject,
        grantees: Vec<Grantee>,
    },
    /// `ALTER {TABLE | VIEW | SCHEMA | DATABASE | PROCEDURE | DATASHARE} name OWNER TO user`.
    Owner {
        kind: ObjectKind,
        name: Name,
        owner: String,
    },
    CreateDatashare {
        name: String,
        publicly_accessible: bool,
    },
    AlterDatashare {
        name: String,
        change: DatashareChange,
    },
    DropDatashare {
        name: String,
        if_exists: bool,
    },
    /// `GRANT | REVOKE USAGE ON DATASHARE s TO | FROM NAMESPACE 'guid'`.
    DatashareUsage {
        name: String,
        namespace: String,
        revoke: bool,
    },
    /// `CREATE DATABASE d FROM DATASHARE s OF [ACCOUNT 'a'] NAMESPACE 'guid'`.
    DatabaseFromShare {
        name: String,
        datashare: String,
        namespace: String,
    },
}

/// The options of CREATE / ALTER USER; None leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserOptions {
    /// Some(None): PASSWORD DISABLE.
    pub password: Option<Option<String>>,
    /// CREATEUSER / NOCREATEUSER (a user who may create users is a superuser, as in
    /// Redshift).
    pub superuser: Option<bool>,
    pub create_database: Option<bool>,
    /// CREATE USER ... IN GROUP g, ...
    pub groups: Vec<String>,
    /// CONNECTION LIMIT, SYSLOG ACCESS, VALID UNTIL, SESSION TIMEOUT: recorded as accepted.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GrantObject {
    Tables(Vec<Name>),
    AllTablesInSchema(Vec<Name>),
    Schemas(Vec<Name>),
    Databases(Vec<Name>),
    /// Procedures by name, with their argument types when given.
    Procedures(Vec<(Name, Option<Vec<String>>)>),
    AllProceduresInSchema(Vec<Name>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Table,
    View,
    Schema,
    Database,
    Procedure,
    Datashare,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DatashareChange {
    AddSchema(String),
    RemoveSchema(String),
    AddTables(Vec<Name>),
    RemoveTables(Vec<Name>),
    AddAllTablesInSchema(Vec<String>),
    RemoveAllTablesInSchema(Vec<String>),
    /// `SET INCLUDENEW = TRUE | FALSE FOR SCHEMA s`.
    IncludeNew {
        schema: String,
        on: bool,
    },
    /// `SET PUBLICACCESSIBLE [=] TRUE | FALSE`.
    PubliclyAccessible(bool),
}

/// Parses the statement at the parser's position if it is an access statement.
pub fn parse(parser: &mut Parser) -> Option<Result<AccessStatement, ParserError>> {
    let word = |n: usize| word_at(parser, n);
    let statement = match (word(0).as_deref(), word(1).as_deref()) {
        (Some("CREATE"), Some("USER")) => create_user(parser),
        (Some("ALTER"), Some("USER")) => alter_user(parser),
        (Some("DROP"), Some("USER")) => drop_names(parser, |names, if_exists| {
            AccessStatement::DropUser { names, if_exists }
        }),
        (Some("CREATE"), Some("GROUP")) => create_group(parser),
        (Some("ALTER"), Some("GROUP")) => alter_group(parser),
        (Some("DROP"), Some("GROUP")) => drop_names(parser, |names, if_exists| {
            AccessStatement::DropGroup { names, if_exists }
        }),
        (Some("GRANT"), _) => grant(parser, false),
        (Some("REVOKE"), _) => grant(parser, true),
        (Some("CREATE"), Some("DATASHARE")) => create_datashare(parser),
        (Some("ALTER"), Some("DATASHARE")) if owner_to_follows(parser) => owner(parser),
        (Some("ALTER"), Some("DATASHARE")) => alter_datashare(parser),
        (Some("DROP"), Some("DATASHARE")) => drop_datashare(parser),
        (Some("CREATE"), Some("DATABASE")) if word(3).as_deref() == Some("FROM") => {
            database_from_share(parser)
        }
        (
            Some("ALTER"),
            Some("TABLE" | "VIEW" | "SCHEMA" | "DATABASE" | "PROCEDURE" | "MATERIALIZED"),
        ) if owner_to_follows(parser) => owner(parser),
        _ => return None,
    };
    Some(statement)
}

impl std::fmt::Display for AccessStatement {
    /// The statement's command and the objects it names; never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessStatement::CreateUser { name, .. } => write!(f, "CREATE USER {name}"),
            AccessStatement::AlterUser { name, .. } => write!(f, "ALTER USER {name}"),
            AccessStatement::DropUser { names, .. } => write!(f, "DROP USER {}", names.join(", ")),
            AccessStatement::CreateGroup { name, .. } => write!(f, "CREATE GROUP {name}"),
            AccessStatement::AlterGroup { name, add, users } => write!(
                f,
                "ALTER GROUP {name} {} USER {}",
                if *add { "ADD" } else { "DROP" },
                users.join(", ")
            ),
            AccessStatement::RenameGroup { name, to } => {
                write!(f, "ALTER GROUP {name} RENAME TO {to}")
            }
            AccessStatement::DropGroup { names, .. } => {
                write!(f, "DROP GROUP {}", names.join(", "))
            }
            AccessStatement::Grant { revoke, .. } => {
                f.write_str(if *revoke { "REVOKE" } else { "GRANT" })
            }
            AccessStatement::Owner { kind, name, owner } => {
                write!(f, "ALTER {kind:?} {} OWNER TO {owner}", name.join("."))
            }
            AccessStatement::CreateDatashare { name, .. } => write!(f, "CREATE DATASHARE {name}"),
            AccessStatement::AlterDatashare { name, .. } => write!(f, "ALTER DATASHARE {name}"),
            AccessStatement::DropDatashare { name, .. } => write!(f, "DROP DATASHARE {name}"),
            AccessStatement::DatashareUsage {
                name,
                namespace,
                revoke,
            } => write!(
                f,
                "{} USAGE ON DATASHARE {name} {} NAMESPACE '{namespace}'",
                if *revoke { "REVOKE" } else { "GRANT" },
                if *revoke { "FROM" } else { "TO" }
            ),
            AccessStatement::DatabaseFromShare {
                name,
                datashare,
                namespace,
            } => write!(
                f,
                "CREATE DATABASE {name} FROM DATASHARE {datashare} OF NAMESPACE '{namespace}'"
            ),
        }
    }
}

fn word_at(parser: &Parser, n: usize) -> Option<String> {
    match parser.peek_nth_token(n).token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// True if `OWNER TO` comes before the end of the statement.
fn owner_to_follows(parser: &Parser) -> bool {
    for n in 2..64 {
        match parser.peek_nth_token(n).token {
            Token::EOF | Token::SemiColon => return false,
            _ if word_at(parser, n).as_deref() == Some("OWNER")
                && word_at(parser, n + 1).as_deref() == Some("TO") =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

fn at_end(parser: &Parser) -> bool {
    matches!(parser.peek_token().token, Token::EOF | Token::SemiColon)
}

fn error<T>(message: String) -> Result<T, ParserError> {
    Err(ParserError::ParserError(message))
}

fn next_word(parser: &mut Parser) -> Option<String> {
    let word = word_at(parser, 0);
    if word.is_some() {
        parser.next_token();
    }
    word
}

fn peek_is(parser: &Parser, word: &str) -> bool {
    word_at(parser, 0).as_deref() == Some(word)
}

fn eat(parser: &mut Parser, word: &str) -> bool {
    if peek_is(parser, word) {
        parser.next_token();
        true
    } else {
        false
    }
}

fn expect(parser: &mut Parser, word: &str) -> Result<(), ParserError> {
    if eat(parser, word) {
        Ok(())
    } else {
        error(format!(
            "expected {word}, found {}",
            parser.peek_token().token
        ))
    }
}

/// An identifier: unquoted ones fold to lower case.
fn identifier(parser: &mut Parser) -> Result<String, ParserError> {
    let token = parser.next_token();
    match token.token {
        Token::Word(w) if w.quote_style.is_some() => Ok(w.value),
        Token::Word(w) => Ok(w.value.to_lowercase()),
        other => error(format!("expected a name, found {other}")),
    }
}

fn name(parser: &mut Parser) -> Result<Name, ParserError> {
    let mut parts = vec![identifier(parser)?];
    while parser.consume_token(&Token::Period) {
        parts.push(identifier(parser)?);
    }
    Ok(parts)
}

fn list<T>(
    parser: &mut Parser,
    mut item: impl FnMut(&mut Parser) -> Result<T, ParserError>,
) -> Result<Vec<T>, ParserError> {
    let mut items = vec![item(parser)?];
    while parser.consume_token(&Token::Comma) {
        items.push(item(parser)?);
    }
    Ok(items)
}

fn string(parser: &mut Parser) -> Result<String, ParserError> {
    let token = parser.next_token();
    match token.token {
        Token::SingleQuotedString(s) => Ok(s),
        other => error(format!("expected a string literal, found {other}")),
    }
}

/// A namespace GUID, quoted or not.
fn namespace(parser: &mut Parser) -> Result<String, ParserError> {
    let token = parser.next_token();
    match token.token {
        Token::SingleQuotedString(s) => Ok(s),
        Token::Word(w) => Ok(w.value),
        other => error(format!("expected a namespace, found {other}")),
    }
}

fn finish(parser: &Parser, statement: AccessStatement) -> Result<AccessStatement, ParserError> {
    if at_end(parser) {
        Ok(statement)
    } else {
        error(format!(
            "unexpected {} at the end of the statement",
            parser.peek_token().token
        ))
    }
}

/// `CREATE USER name [WITH] [PASSWORD {'pw' | DISABLE}] [CREATEDB | NOCREATEDB]
/// [CREATEUSER | NOCREATEUSER] [IN GROUP g, ...] [CONNECTION LIMIT n] ...`.
fn create_user(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let name = identifier(parser)?;
    let options = user_options(parser)?;
    finish(parser, AccessStatement::CreateUser { name, options })
}

/// `ALTER USER name {[WITH] options | RENAME TO new}`.
fn alter_user(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let name = identifier(parser)?;
    if eat(parser, "RENAME") {
        expect(parser, "TO")?;
        let to = identifier(parser)?;
        return finish(
            parser,
            AccessStatement::AlterUser {
                name,
                options: UserOptions::default(),
                rename: Some(to),
            },
        );
    }
    let options = user_options(parser)?;
    finish(
        parser,
        AccessStatement::AlterUser {
            name,
            options,
            rename: None,
        },
    )
}

fn user_options(parser: &mut Parser) -> Result<UserOptions, ParserError> {
    let mut options = UserOptions::default();
    eat(parser, "WITH");
    while !at_end(parser) {
        let Some(word) = next_word(parser) else {
            return error(format!(
                "expected a user option, found {}",
                parser.peek_token().token
            ));
        };
        match word.as_str() {
            "PASSWORD" => {
                options.password = Some(if eat(parser, "DISABLE") {
                    None
                } else {
                    Some(string(parser)?)
                });
            }
            "CREATEUSER" => options.superuser = Some(true),
            "NOCREATEUSER" => options.superuser = Some(false),
            "CREATEDB" => options.create_database = Some(true),
            "NOCREATEDB" => options.create_database = Some(false),
            "IN" => {
                expect(parser, "GROUP")?;
                options.groups = list(parser, identifier)?;
            }
            "CONNECTION" => {
                expect(parser, "LIMIT")?;
                let limit = parser.next_token();
                options.ignored.push(format!("CONNECTION LIMIT {limit}"));
            }
            "VALID" => {
                expect(parser, "UNTIL")?;
                let until = string(parser)?;
                options.ignored.push(format!("VALID UNTIL '{until}'"));
            }
            "SYSLOG" => {
                expect(parser, "ACCESS")?;
                let access = parser.next_token();
                options.ignored.push(format!("SYSLOG ACCESS {access}"));
            }
            "SESSION" => {
                expect(parser, "TIMEOUT")?;
                let limit = parser.next_token();
                options.ignored.push(format!("SESSION TIMEOUT {limit}"));
            }
            other => return error(format!("unknown user option {other}")),
        }
    }
    Ok(options)
}

fn drop_names(
    parser: &mut Parser,
    make: impl FnOnce(Vec<String>, bool) -> AccessStatement,
) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let if_exists = if peek_is(parser, "IF") {
        parser.next_token();
        expect(parser, "EXISTS")?;
        true
    } else {
        false
    };
    let names = list(parser, identifier)?;
    finish(parser, make(names, if_exists))
}

/// `CREATE GROUP name [[WITH] USER u, ...]`.
fn create_group(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let name = identifier(parser)?;
    eat(parser, "WITH");
    let users = if eat(parser, "USER") {
        list(parser, identifier)?
    } else {
        Vec::new()
    };
    finish(parser, AccessStatement::CreateGroup { name, users })
}

/// `ALTER GROUP name {ADD | DROP} USER u, ... | RENAME TO new`.
fn alter_group(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let name = identifier(parser)?;
    let statement = match next_word(parser).as_deref() {
        Some("RENAME") => {
            expect(parser, "TO")?;
            AccessStatement::RenameGroup {
                name,
                to: identifier(parser)?,
            }
        }
        Some(verb @ ("ADD" | "DROP")) => {
            expect(parser, "USER")?;
            AccessStatement::AlterGroup {
                name,
                add: verb == "ADD",
                users: list(parser, identifier)?,
            }
        }
        _ => return error("expected ADD USER, DROP USER or RENAME TO after ALTER GROUP".into()),
    };
    finish(parser, statement)
}

/// `GRANT privileges ON object TO grantee, ... [WITH GRANT OPTION]` and
/// `REVOKE [GRANT OPTION FOR] privileges ON object FROM grantee, ... [CASCADE | RESTRICT]`.
fn grant(parser: &mut Parser, revoke: bool) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    if revoke && peek_is(parser, "GRANT") {
        parser.next_token();
        expect(parser, "OPTION")?;
        expect(parser, "FOR")?;
    }
    let privileges = privileges(parser)?;
    expect(parser, "ON")?;
    if eat(parser, "DATASHARE") {
        let name = identifier(parser)?;
        if privileges.as_deref() != Some(&[Privilege::Usage][..]) {
            return error("only USAGE can be granted on a datashare".into());
        }
        expect(parser, if revoke { "FROM" } else { "TO" })?;
        expect(parser, "NAMESPACE")?;
        let namespace = namespace(parser)?;
        return finish(
            parser,
            AccessStatement::DatashareUsage {
                name,
                namespace,
                revoke,
            },
        );
    }
    let object = grant_object(parser)?;
    expect(parser, if revoke { "FROM" } else { "TO" })?;
    let grantees = list(parser, grantee)?;
    if !revoke && eat(parser, "WITH") {
        expect(parser, "GRANT")?;
        expect(parser, "OPTION")?;
    }
    if revoke {
        let _ = eat(parser, "CASCADE") || eat(parser, "RESTRICT");
    }
    finish(
        parser,
        AccessStatement::Grant {
            revoke,
            privileges,
            object,
            grantees,
        },
    )
}

/// `ALL [PRIVILEGES]` (None) or a list of privileges.
fn privileges(parser: &mut Parser) -> Result<Option<Vec<Privilege>>, ParserError> {
    if eat(parser, "ALL") {
        eat(parser, "PRIVILEGES");
        return Ok(None);
    }
    let privileges = list(parser, |parser| {
        let word = next_word(parser);
        Ok(match word.as_deref() {
            Some("SELECT") => Privilege::Select,
            Some("INSERT") => Privilege::Insert,
            Some("UPDATE") => Privilege::Update,
            Some("DELETE") => Privilege::Delete,
            Some("REFERENCES") => Privilege::References,
            Some("USAGE") => Privilege::Usage,
            Some("CREATE") => Privilege::Create,
            Some("TEMP" | "TEMPORARY") => Privilege::Temp,
            Some("EXECUTE") => Privilege::Execute,
            Some(other) => return error(format!("unknown privilege {other}")),
            None => {
                return error(format!(
                    "expected a privilege, found {}",
                    parser.peek_token().token
                ));
            }
        })
    })?;
    Ok(Some(privileges))
}

fn grant_object(parser: &mut Parser) -> Result<GrantObject, ParserError> {
    if eat(parser, "ALL") {
        let object = next_word(parser);
        expect(parser, "IN")?;
        expect(parser, "SCHEMA")?;
        let schemas = list(parser, name)?;
        return match object.as_deref() {
            Some("TABLES") => Ok(GrantObject::AllTablesInSchema(schemas)),
            Some("PROCEDURES" | "FUNCTIONS") => Ok(GrantObject::AllProceduresInSchema(schemas)),
            _ => error("expected ALL TABLES IN SCHEMA or ALL PROCEDURES IN SCHEMA".into()),
        };
    }
    if eat(parser, "SCHEMA") {
        return Ok(GrantObject::Schemas(list(parser, name)?));
    }
    if eat(parser, "DATABASE") {
        return Ok(GrantObject::Databases(list(parser, name)?));
    }
    if eat(parser, "PROCEDURE") || eat(parser, "FUNCTION") {
        return Ok(GrantObject::Procedures(list(parser, |parser| {
            let procedure = name(parser)?;
            if !parser.consume_token(&Token::LParen) {
                return Ok((procedure, None));
            }
            let mut types = Vec::new();
            let mut current = String::new();
            let mut depth = 0;
            loop {
                let token = parser.next_token().token;
                match token {
                    Token::RParen if depth == 0 => break,
                    Token::Comma if depth == 0 => types.push(std::mem::take(&mut current)),
                    Token::EOF => return error("unterminated argument list".into()),
                    other => {
                        if other == Token::LParen {
                            depth += 1;
                        } else if other == Token::RParen {
                            depth -= 1;
                        }
                        if !current.is_empty()
                            && !matches!(other, Token::LParen | Token::RParen | Token::Comma)
                        {
                            current.push(' ');
                        }
                        current.push_str(&other.to_string());
                    }
                }
            }
            if !current.trim().is_empty() {
                types.push(current);
            }
            Ok((procedure, Some(types)))
        })?));
    }
    eat(parser, "TABLE");
    Ok(GrantObject::Tables(list(parser, name)?))
}

fn grantee(parser: &mut Parser) -> Result<Grantee, ParserError> {
    if eat(parser, "PUBLIC") {
        return Ok(Grantee::Public);
    }
    if eat(parser, "GROUP") {
        return Ok(Grantee::Group(identifier(parser)?));
    }
    if eat(parser, "ROLE") {
        return error("roles are not supported; grant to a user or a GROUP".into());
    }
    Ok(Grantee::User(identifier(parser)?))
}

/// `ALTER {TABLE | VIEW | MATERIALIZED VIEW | SCHEMA | DATABASE | PROCEDURE | DATASHARE}
/// name[(types)] OWNER TO user`.
fn owner(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    let kind = match next_word(parser).as_deref() {
        Some("TABLE") => ObjectKind::Table,
        Some("VIEW") => ObjectKind::View,
        Some("MATERIALIZED") => {
            expect(parser, "VIEW")?;
            ObjectKind::Table
        }
        Some("SCHEMA") => ObjectKind::Schema,
        Some("DATABASE") => ObjectKind::Database,
        Some("PROCEDURE") => ObjectKind::Procedure,
        Some("DATASHARE") => ObjectKind::Datashare,
        _ => return error("unexpected object kind in ALTER ... OWNER TO".into()),
    };
    let object = name(parser)?;
    if kind == ObjectKind::Procedure && parser.consume_token(&Token::LParen) {
        // The argument types only pick an overload; the owner goes to every overload named.
        while !matches!(parser.next_token().token, Token::RParen | Token::EOF) {}
    }
    expect(parser, "OWNER")?;
    expect(parser, "TO")?;
    let owner = identifier(parser)?;
    finish(
        parser,
        AccessStatement::Owner {
            kind,
            name: object,
            owner,
        },
    )
}

/// `CREATE DATASHARE name [[SET] PUBLICACCESSIBLE [=] {TRUE | FALSE}]`.
fn create_datashare(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let name = identifier(parser)?;
    eat(parser, "SET");
    let publicly_accessible = if eat(parser, "PUBLICACCESSIBLE") {
        boolean(parser)?
    } else {
        false
    };
    finish(
        parser,
        AccessStatement::CreateDatashare {
            name,
            publicly_accessible,
        },
    )
}

fn boolean(parser: &mut Parser) -> Result<bool, ParserError> {
    let _ = parser.consume_token(&Token::Eq);
    match next_word(parser).as_deref() {
        Some("TRUE") => Ok(true),
        Some("FALSE") => Ok(false),
        _ => error("expected TRUE or FALSE".into()),
    }
}

/// `ALTER DATASHARE name {ADD | REMOVE} {SCHEMA s | TABLE t, ... | ALL TABLES IN SCHEMA s,
/// ...}` and `ALTER DATASHARE name SET {INCLUDENEW [=] b FOR SCHEMA s | PUBLICACCESSIBLE [=] b}`.
fn alter_datashare(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let share = identifier(parser)?;
    let change = match next_word(parser).as_deref() {
        Some("SET") => {
            if eat(parser, "INCLUDENEW") {
                let on = boolean(parser)?;
                expect(parser, "FOR")?;
                expect(parser, "SCHEMA")?;
                DatashareChange::IncludeNew {
                    schema: identifier(parser)?,
                    on,
                }
            } else if eat(parser, "PUBLICACCESSIBLE") {
                DatashareChange::PubliclyAccessible(boolean(parser)?)
            } else {
                return error("expected INCLUDENEW or PUBLICACCESSIBLE after SET".into());
            }
        }
        Some(verb @ ("ADD" | "REMOVE")) => {
            let add = verb == "ADD";
            if eat(parser, "SCHEMA") {
                let schema = identifier(parser)?;
                if add {
                    DatashareChange::AddSchema(schema)
                } else {
                    DatashareChange::RemoveSchema(schema)
                }
            } else if eat(parser, "TABLE") {
                let tables = list(parser, name)?;
                if add {
                    DatashareChange::AddTables(tables)
                } else {
                    DatashareChange::RemoveTables(tables)
                }
            } else if eat(parser, "ALL") {
                expect(parser, "TABLES")?;
                expect(parser, "IN")?;
                expect(parser, "SCHEMA")?;
                let schemas = list(parser, identifier)?;
                if add {
                    DatashareChange::AddAllTablesInSchema(schemas)
                } else {
                    DatashareChange::RemoveAllTablesInSchema(schemas)
                }
            } else {
                return error(format!(
                    "expected SCHEMA, TABLE or ALL TABLES IN SCHEMA after {verb}"
                ));
            }
        }
        _ => return error("expected ADD, REMOVE or SET after ALTER DATASHARE name".into()),
    };
    finish(
        parser,
        AccessStatement::AlterDatashare {
            name: share,
            change,
        },
    )
}

fn drop_datashare(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let if_exists = if eat(parser, "IF") {
        expect(parser, "EXISTS")?;
        true
    } else {
        false
    };
    let name = identifier(parser)?;
    finish(parser, AccessStatement::DropDatashare { name, if_exists })
}

/// `CREATE DATABASE d FROM DATASHARE s OF [ACCOUNT 'id'] NAMESPACE 'guid'`.
fn database_from_share(parser: &mut Parser) -> Result<AccessStatement, ParserError> {
    parser.next_token();
    parser.next_token();
    let name = identifier(parser)?;
    expect(parser, "FROM")?;
    expect(parser, "DATASHARE")?;
    let datashare = identifier(parser)?;
    expect(parser, "OF")?;
    if eat(parser, "ACCOUNT") {
        string(parser)?;
    }
    expect(parser, "NAMESPACE")?;
    let namespace = namespace(parser)?;
    finish(
        parser,
        AccessStatement::DatabaseFromShare {
            name,
            datashare,
            namespace,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(sql: &str) -> AccessStatement {
        let statements = crate::dialect::parse_statements(sql).unwrap();
        let crate::Statement::Ext(crate::extension::ExtStatement::Access(access)) = &statements[0]
        else {
            panic!("not an access statement: {:?}", statements[0]);
        };
        access.clone()
    }

    #[test]
    fn users_and_groups() {
        assert_eq!(
            parse_one("CREATE USER Alice PASSWORD 'Abcdefg1' CREATEDB IN GROUP bi_users, etl"),
            AccessStatement::CreateUser {
                name: "alice".into(),
                options: UserOptions {
                    password: Some(Some("Abcdefg1".into())),
                    create_database: Some(true),
                    groups: vec!["bi_users".into(), "etl".into()],
                    ..Default::default()
                },
            }
        );
        assert_eq!(
            parse_one("alter group bi_users add user bob, \"Carol\""),
            AccessStatement::AlterGroup {
                name: "bi_users".into(),
                add: true,
                users: vec!["bob".into(), "Carol".into()],
            }
        );
        assert_eq!(
            parse_one("DROP USER IF EXISTS a, b"),
            AccessStatement::DropUser {
                names: vec!["a".into(), "b".into()],
                if_exists: true,
            }
        );
    }

    #[test]
    fn grants() {
        assert_eq!(
            parse_one("GRANT SELECT, INSERT ON TABLE s.t, u TO GROUP bi_users, PUBLIC, bob"),
            AccessStatement::Grant {
                revoke: false,
                privileges: Some(vec![Privilege::Select, Privilege::Insert]),
                object: GrantObject::Tables(vec![vec!["s".into(), "t".into()], vec!["u".into()]]),
                grantees: vec![
                    Grantee::Group("bi_users".into()),
                    Grantee::Public,
                    Grantee::User("bob".into())
                ],
            }
        );
        assert_eq!(
            parse_one("REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA s FROM bob CASCADE"),
            AccessStatement::Grant {
                revoke: true,
                privileges: None,
                object: GrantObject::AllTablesInSchema(vec![vec!["s".into()]]),
                grantees: vec![Grantee::User("bob".into())],
            }
        );
        assert_eq!(
            parse_one("GRANT USAGE ON DATASHARE etl_to_bi TO NAMESPACE 'abc'"),
            AccessStatement::DatashareUsage {
                name: "etl_to_bi".into(),
                namespace: "abc".into(),
                revoke: false,
            }
        );
    }

    #[test]
    fn datashares_with_typographic_quotes() {
        assert_eq!(
            parse_one("ALTER DATASHARE “etl_to_bi” REMOVE TABLE ”website”.”clicks”;"),
            AccessStatement::AlterDatashare {
                name: "etl_to_bi".into(),
                change: DatashareChange::RemoveTables(vec![vec![
                    "website".into(),
                    "clicks".into()
                ]]),
            }
        );
        assert_eq!(
            parse_one(
                "CREATE DATABASE “etl_to_bi” FROM DATASHARE “etl_to_bi” OF NAMESPACE ‘producer_cluster’;"
            ),
            AccessStatement::DatabaseFromShare {
                name: "etl_to_bi".into(),
                datashare: "etl_to_bi".into(),
                namespace: "producer_cluster".into(),
            }
        );
        assert_eq!(
            parse_one("alter table s.t owner to bob"),
            AccessStatement::Owner {
                kind: ObjectKind::Table,
                name: vec!["s".into(), "t".into()],
                owner: "bob".into(),
            }
        );
    }
}
