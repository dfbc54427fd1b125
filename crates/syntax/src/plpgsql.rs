//! The PL/pgSQL subset of Redshift stored procedures, parsed into blocks of statements.
//!
//! Control structure (blocks, IF, loops, RAISE, assignments) is parsed here; SQL statements and
//! expressions stay text, and are parsed by the SQL parser when they run, after the procedure's
//! variables have been substituted. The text is rebuilt from the tokens, so string literals and
//! comments come back as written.

use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::dialect::TributaryDialect;
use crate::{Error, Result};

/// `[<<label>>] [DECLARE ...] BEGIN ... [EXCEPTION WHEN OTHERS THEN ...] END`.
#[derive(Debug, Clone)]
pub struct Block {
    pub label: Option<String>,
    pub declarations: Vec<Declaration>,
    pub body: Vec<Statement>,
    /// The statements of `EXCEPTION WHEN OTHERS THEN` (Redshift's only condition).
    pub handler: Option<Vec<Statement>>,
}

#[derive(Debug, Clone)]
pub struct Declaration {
    pub name: String,
    pub kind: DeclarationKind,
    pub constant: bool,
    pub not_null: bool,
    /// The initial value's expression, as SQL text.
    pub default: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeclarationKind {
    /// A scalar of this type (SQL text, resolved when the block runs).
    Scalar(String),
    /// `RECORD`: takes the shape of the row assigned to it.
    Record,
    /// `name ALIAS FOR $n` or `ALIAS FOR other`.
    Alias(String),
}

/// One statement, with its line in the body (1-based) for error reports.
#[derive(Debug, Clone)]
pub struct Statement {
    pub line: u64,
    pub kind: StatementKind,
}

#[derive(Debug, Clone)]
pub enum StatementKind {
    Block(Block),
    /// `target := expression` (or `=`); the target may be `record.field`.
    Assign {
        target: String,
        expression: String,
    },
    If {
        /// (condition, statements), for IF and each ELSIF.
        branches: Vec<(String, Vec<Statement>)>,
        otherwise: Vec<Statement>,
    },
    Loop {
        label: Option<String>,
        body: Vec<Statement>,
    },
    While {
        label: Option<String>,
        condition: String,
        body: Vec<Statement>,
    },
    /// `FOR i IN [REVERSE] low .. high [BY step] LOOP`.
    ForRange {
        label: Option<String>,
        variable: String,
        reverse: bool,
        low: String,
        high: String,
        step: Option<String>,
        body: Vec<Statement>,
    },
    /// `FOR target IN query LOOP` or `FOR target IN EXECUTE expression LOOP`.
    ForQuery {
        label: Option<String>,
        targets: Vec<String>,
        query: QuerySource,
        body: Vec<Statement>,
    },
    /// `EXIT [label] [WHEN condition]`.
    Exit {
        label: Option<String>,
        condition: Option<String>,
    },
    /// `CONTINUE [label] [WHEN condition]`.
    Continue {
        label: Option<String>,
        condition: Option<String>,
    },
    Return,
    /// `RAISE level 'format', args...`; a bare `RAISE` re-raises the caught error.
    Raise {
        level: RaiseLevel,
        format: Option<String>,
        arguments: Vec<String>,
    },
    Null,
    /// `PERFORM query`: runs the query and discards its rows.
    Perform(String),
    /// `EXECUTE expression [INTO target, ...]`: dynamic SQL.
    Execute {
        expression: String,
        into: Vec<String>,
    },
    Commit,
    Rollback,
    /// `GET DIAGNOSTICS variable := ROW_COUNT`.
    RowCount(String),
    /// Any other SQL statement; `SELECT ... INTO a, b` assigns the first row to variables.
    Sql {
        sql: String,
        into: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub enum QuerySource {
    Query(String),
    Execute(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaiseLevel {
    Log,
    Info,
    Notice,
    Warning,
    Exception,
}

impl RaiseLevel {
    pub fn severity(self) -> &'static str {
        match self {
            RaiseLevel::Log => "LOG",
            RaiseLevel::Info => "INFO",
            RaiseLevel::Notice => "NOTICE",
            RaiseLevel::Warning => "WARNING",
            RaiseLevel::Exception => "EXCEPTION",
        }
    }
}

/// Parses a procedure body.
pub fn parse_body(body: &str) -> Result<Block> {
    let dialect = TributaryDialect::default();
    let tokens = Tokenizer::new(&dialect, body)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax(format!("in the procedure body: {e}")))?;
    let mut parser = BodyParser { tokens, pos: 0 };
    let block = parser.block(None)?;
    parser.consume(&Token::SemiColon);
    if let Some(token) = parser.peek() {
        return Err(parser.error_at(token, "unexpected text after the procedure's final END"));
    }
    Ok(block)
}

struct BodyParser {
    tokens: Vec<TokenWithSpan>,
    pos: usize,
}

fn is_trivia(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_))
}

fn upper(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// A name as plpgsql folds it: unquoted words to lower case.
fn name_of(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
        Token::Word(w) => Some(w.value.clone()),
        _ => None,
    }
}

impl BodyParser {
    /// The index of the n-th significant token from the position.
    fn index(&self, n: usize) -> Option<usize> {
        let mut seen = 0;
        for (i, token) in self.tokens.iter().enumerate().skip(self.pos) {
            if is_trivia(&token.token) || matches!(token.token, Token::EOF) {
                continue;
            }
            if seen == n {
                return Some(i);
            }
            seen += 1;
        }
        None
    }

    fn peek(&self) -> Option<&TokenWithSpan> {
        self.index(0).map(|i| &self.tokens[i])
    }

    fn peek_word(&self, n: usize) -> Option<String> {
        self.index(n).and_then(|i| upper(&self.tokens[i].token))
    }

    fn peek_token(&self, n: usize) -> Option<&Token> {
        self.index(n).map(|i| &self.tokens[i].token)
    }

    fn next(&mut self) -> Option<TokenWithSpan> {
        let i = self.index(0)?;
        self.pos = i + 1;
        Some(self.tokens[i].clone())
    }

    fn line(&self) -> u64 {
        self.peek().map(|t| t.span.start.line).unwrap_or(0)
    }

    fn consume(&mut self, token: &Token) -> bool {
        if self.peek_token(0) == Some(token) {
            self.next();
            true
        } else {
            false
        }
    }

    fn consume_word(&mut self, word: &str) -> bool {
        if self.peek_word(0).as_deref() == Some(word) {
            self.next();
            true
        } else {
            false
        }
    }

    fn error_at(&self, token: &TokenWithSpan, message: &str) -> Error {
        Error::Syntax(format!(
            "{message} at or near \"{}\" (procedure body line {})",
            token.token, token.span.start.line
        ))
    }

    fn error_here(&self, message: &str) -> Error {
        match self.peek() {
            Some(token) => self.error_at(token, message),
            None => Error::Syntax(format!("{message} at the end of the procedure body")),
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<()> {
        if self.consume_word(word) {
            Ok(())
        } else {
            Err(self.error_here(&format!("expected {word}")))
        }
    }

    fn expect_semicolon(&mut self) -> Result<()> {
        if self.consume(&Token::SemiColon) {
            Ok(())
        } else {
            Err(self.error_here("expected \";\""))
        }
    }

    fn identifier(&mut self) -> Result<String> {
        match self.next() {
            Some(token) => {
                name_of(&token.token).ok_or_else(|| self.error_at(&token, "expected a name"))
            }
            None => Err(self.error_here("expected a name")),
        }
    }

    /// The text from the position up to (not including) the first top-level token that
    /// `stop` accepts; parentheses and CASE ... END nest. The stop token is not consumed.
    fn text_until(&mut self, stop: impl Fn(&Token) -> bool) -> Result<String> {
        let mut text = String::new();
        let mut parens = 0usize;
        let mut cases = 0usize;
        loop {
            let Some(token) = self.tokens.get(self.pos) else {
                return Err(self.error_here("unexpected end of the procedure body"));
            };
            let token = &token.token;
            if matches!(token, Token::EOF) {
                return Err(self.error_here("unexpected end of the procedure body"));
            }
            if parens == 0 && cases == 0 && !is_trivia(token) && stop(token) {
                return Ok(text.trim().to_string());
            }
            match token {
                Token::LParen => parens += 1,
                Token::RParen => parens = parens.saturating_sub(1),
                _ => match upper(token).as_deref() {
                    Some("CASE") => cases += 1,
                    Some("END") if cases > 0 => cases -= 1,
                    _ => {}
                },
            }
            text.push_str(&render(token));
            self.pos += 1;
        }
    }

    fn text_until_semicolon(&mut self) -> Result<String> {
        let text = self.text_until(|t| matches!(t, Token::SemiColon))?;
        self.expect_semicolon()?;
        Ok(text)
    }

    fn text_until_word(&mut self, words: &[&str]) -> Result<String> {
        self.text_until(|t| upper(t).is_some_and(|w| words.contains(&w.as_str())))
    }

    /// `<<label>>`, if present.
    fn label(&mut self) -> Result<Option<String>> {
        if self.peek_token(0) != Some(&Token::ShiftLeft) {
            return Ok(None);
        }
        self.next();
        let label = self.identifier()?;
        if !self.consume(&Token::ShiftRight) {
            return Err(self.error_here("expected >> after the label"));
        }
        Ok(Some(label))
    }

    fn block(&mut self, label: Option<String>) -> Result<Block> {
        let mut declarations = Vec::new();
        if self.consume_word("DECLARE") {
            while self.peek_word(0).as_deref() != Some("BEGIN") {
                if self.peek().is_none() {
                    return Err(self.error_here("expected BEGIN after DECLARE"));
                }
                declarations.push(self.declaration()?);
            }
        }
        self.expect_word("BEGIN")?;
        let body = self.statements(&["END", "EXCEPTION"])?;
        let handler = if self.consume_word("EXCEPTION") {
            self.expect_word("WHEN")?;
            let condition = self.identifier()?;
            if condition != "others" {
                return Err(Error::NotSupported(format!(
                    "exception condition {condition}: Redshift procedures handle only WHEN OTHERS"
                )));
            }
            self.expect_word("THEN")?;
            Some(self.statements(&["END"])?)
        } else {
            None
        };
        self.expect_word("END")?;
        if let Some(label) = &label
            && self.peek_word(0).is_some()
            && self.peek_token(0) != Some(&Token::SemiColon)
            && name_of(self.peek_token(0).expect("peeked")).as_ref() == Some(label)
        {
            self.next();
        }
        Ok(Block {
            label,
            declarations,
            body,
            handler,
        })
    }

    /// `name [CONSTANT] type [NOT NULL] [{DEFAULT | := | =} expression];`,
    /// `name RECORD;`, `name ALIAS FOR $n;`.
    fn declaration(&mut self) -> Result<Declaration> {
        let name = self.identifier()?;
        let constant = self.consume_word("CONSTANT");
        if self.consume_word("ALIAS") {
            self.expect_word("FOR")?;
            let target = self.text_until_semicolon()?;
            return Ok(Declaration {
                name,
                kind: DeclarationKind::Alias(target.to_lowercase()),
                constant,
                not_null: false,
                default: None,
            });
        }
        if self.peek_word(0).as_deref() == Some("RECORD")
            && self.peek_token(1) == Some(&Token::SemiColon)
        {
            self.next();
            self.next();
            return Ok(Declaration {
                name,
                kind: DeclarationKind::Record,
                constant,
                not_null: false,
                default: None,
            });
        }
        let type_text = self.text_until(|t| {
            matches!(t, Token::SemiColon | Token::Assignment | Token::Eq)
                || matches!(upper(t).as_deref(), Some("DEFAULT" | "NOT"))
        })?;
        let not_null = if self.consume_word("NOT") {
            self.expect_word("NULL")?;
            true
        } else {
            false
        };
        let default = if self.consume(&Token::Assignment)
            || self.consume(&Token::Eq)
            || self.consume_word("DEFAULT")
        {
            Some(self.text_until_semicolon()?)
        } else {
            self.expect_semicolon()?;
            None
        };
        if type_text.is_empty() {
            return Err(Error::Syntax(format!(
                "variable \"{name}\" needs a type in DECLARE"
            )));
        }
        Ok(Declaration {
            name,
            kind: DeclarationKind::Scalar(type_text),
            constant,
            not_null,
            default,
        })
    }

    /// Statements up to one of the terminator words (not consumed).
    fn statements(&mut self, terminators: &[&str]) -> Result<Vec<Statement>> {
        let mut statements = Vec::new();
        loop {
            match self.peek_word(0) {
                Some(word) if terminators.contains(&word.as_str()) => return Ok(statements),
                _ => {}
            }
            if self.peek().is_none() {
                return Err(self.error_here(&format!("expected {}", terminators.join(" or "))));
            }
            if self.consume(&Token::SemiColon) {
                continue;
            }
            statements.push(self.statement()?);
        }
    }

    fn statement(&mut self) -> Result<Statement> {
        let line = self.line();
        let label = self.label()?;
        let labeled = label.is_some();
        let word = self.peek_word(0);
        let kind = match word.as_deref() {
            Some("DECLARE") | Some("BEGIN") => {
                let block = self.block(label.clone())?;
                self.expect_semicolon()?;
                StatementKind::Block(block)
            }
            Some("IF") => {
                self.next();
                self.if_statement()?
            }
            Some("LOOP") => {
                self.next();
                let body = self.loop_body(&label)?;
                StatementKind::Loop { label, body }
            }
            Some("WHILE") => {
                self.next();
                let condition = self.text_until_word(&["LOOP"])?;
                self.expect_word("LOOP")?;
                let body = self.loop_body(&label)?;
                StatementKind::While {
                    label,
                    condition,
                    body,
                }
            }
            Some("FOR") => {
                self.next();
                self.for_statement(label)?
            }
            Some("EXIT") | Some("CONTINUE") => {
                self.next();
                let target = match self.peek_token(0) {
                    Some(Token::Word(_)) if self.peek_word(0).as_deref() != Some("WHEN") => {
                        Some(self.identifier()?)
                    }
                    _ => None,
                };
                let condition = if self.consume_word("WHEN") {
                    Some(self.text_until(|t| matches!(t, Token::SemiColon))?)
                } else {
                    None
                };
                self.expect_semicolon()?;
                if word.as_deref() == Some("EXIT") {
                    StatementKind::Exit {
                        label: target,
                        condition,
                    }
                } else {
                    StatementKind::Continue {
                        label: target,
                        condition,
                    }
                }
            }
            Some("RETURN") => {
                self.next();
                self.expect_semicolon()?;
                StatementKind::Return
            }
            Some("NULL") if self.peek_token(1) == Some(&Token::SemiColon) => {
                self.next();
                self.next();
                StatementKind::Null
            }
            Some("RAISE") => {
                self.next();
                self.raise()?
            }
            Some("PERFORM") => {
                self.next();
                let query = self.text_until_semicolon()?;
                StatementKind::Perform(format!("SELECT {query}"))
            }
            Some("EXECUTE") => {
                self.next();
                let expression = self.text_until(|t| {
                    matches!(t, Token::SemiColon) || upper(t).as_deref() == Some("INTO")
                })?;
                let into = if self.consume_word("INTO") {
                    self.targets()?
                } else {
                    vec![]
                };
                self.expect_semicolon()?;
                StatementKind::Execute { expression, into }
            }
            Some("COMMIT") | Some("ROLLBACK") => {
                self.next();
                if !self.consume_word("TRANSACTION") {
                    self.consume_word("WORK");
                }
                self.expect_semicolon()?;
                if word.as_deref() == Some("ROLLBACK") {
                    StatementKind::Rollback
                } else {
                    StatementKind::Commit
                }
            }
            Some("GET") if self.peek_word(1).as_deref() == Some("DIAGNOSTICS") => {
                self.next();
                self.next();
                let target = self.identifier()?;
                if !self.consume(&Token::Assignment) && !self.consume(&Token::Eq) {
                    return Err(self.error_here("expected := in GET DIAGNOSTICS"));
                }
                let item = self.identifier()?;
                if item != "row_count" {
                    return Err(Error::NotSupported(format!(
                        "GET DIAGNOSTICS {item}: only ROW_COUNT is supported"
                    )));
                }
                self.expect_semicolon()?;
                StatementKind::RowCount(target)
            }
            _ => self.assignment_or_sql()?,
        };
        if labeled
            && !matches!(
                kind,
                StatementKind::Block(_)
                    | StatementKind::Loop { .. }
                    | StatementKind::While { .. }
                    | StatementKind::ForRange { .. }
                    | StatementKind::ForQuery { .. }
            )
        {
            return Err(Error::Syntax(format!(
                "a label must precede a block or a loop (procedure body line {line})"
            )));
        }
        Ok(Statement { line, kind })
    }

    /// After IF: `condition THEN ... [ELSIF condition THEN ...] [ELSE ...] END IF;`.
    fn if_statement(&mut self) -> Result<StatementKind> {
        let mut branches = Vec::new();
        let mut otherwise = Vec::new();
        loop {
            let condition = self.text_until_word(&["THEN"])?;
            self.expect_word("THEN")?;
            let body = self.statements(&["ELSIF", "ELSEIF", "ELSE", "END"])?;
            branches.push((condition, body));
            match self.next().and_then(|t| upper(&t.token)).as_deref() {
                Some("ELSIF") | Some("ELSEIF") => continue,
                Some("ELSE") => {
                    otherwise = self.statements(&["END"])?;
                    self.expect_word("END")?;
                    break;
                }
                _ => break,
            }
        }
        self.expect_word("IF")?;
        self.expect_semicolon()?;
        Ok(StatementKind::If {
            branches,
            otherwise,
        })
    }

    /// After LOOP: `... END LOOP [label];`.
    fn loop_body(&mut self, label: &Option<String>) -> Result<Vec<Statement>> {
        let body = self.statements(&["END"])?;
        self.expect_word("END")?;
        self.expect_word("LOOP")?;
        if label.is_some() && self.peek_token(0) != Some(&Token::SemiColon) {
            self.identifier()?;
        }
        self.expect_semicolon()?;
        Ok(body)
    }

    /// After FOR: a range loop or a query loop.
    fn for_statement(&mut self, label: Option<String>) -> Result<StatementKind> {
        let targets = self.targets()?;
        self.expect_word("IN")?;
        if self.consume_word("EXECUTE") {
            let expression = self.text_until_word(&["LOOP"])?;
            self.expect_word("LOOP")?;
            let body = self.loop_body(&label)?;
            return Ok(StatementKind::ForQuery {
                label,
                targets,
                query: QuerySource::Execute(expression),
                body,
            });
        }
        let reverse = self.consume_word("REVERSE");
        let header = self.text_until_word(&["LOOP"])?;
        self.expect_word("LOOP")?;
        let body = self.loop_body(&label)?;
        match split_range(&header) {
            Some((low, high, step)) => {
                let [variable] = targets.as_slice() else {
                    return Err(Error::Syntax(
                        "a FOR loop over a range has one loop variable".into(),
                    ));
                };
                Ok(StatementKind::ForRange {
                    label,
                    variable: variable.clone(),
                    reverse,
                    low,
                    high,
                    step,
                    body,
                })
            }
            None if reverse => Err(Error::Syntax(
                "REVERSE needs a range: FOR i IN REVERSE high .. low LOOP".into(),
            )),
            None => Ok(StatementKind::ForQuery {
                label,
                targets,
                query: QuerySource::Query(header),
                body,
            }),
        }
    }

    /// `name [, name ...]`, each possibly `record.field`.
    fn targets(&mut self) -> Result<Vec<String>> {
        let mut targets = vec![self.target()?];
        while self.consume(&Token::Comma) {
            targets.push(self.target()?);
        }
        Ok(targets)
    }

    fn target(&mut self) -> Result<String> {
        let mut name = self.identifier()?;
        while self.peek_token(0) == Some(&Token::Period) {
            self.next();
            name.push('.');
            name.push_str(&self.identifier()?);
        }
        Ok(name)
    }

    /// After RAISE: `[level] 'format' [, expression ...];` or a bare `RAISE;`.
    fn raise(&mut self) -> Result<StatementKind> {
        if self.consume(&Token::SemiColon) {
            return Ok(StatementKind::Raise {
                level: RaiseLevel::Exception,
                format: None,
                arguments: vec![],
            });
        }
        let level = match self.peek_word(0).as_deref() {
            Some("LOG") => RaiseLevel::Log,
            Some("INFO") => RaiseLevel::Info,
            Some("NOTICE") => RaiseLevel::Notice,
            Some("WARNING") => RaiseLevel::Warning,
            Some("EXCEPTION") => RaiseLevel::Exception,
            _ => RaiseLevel::Exception,
        };
        if self.peek_word(0).is_some() {
            self.next();
        }
        let format = match self.next().map(|t| t.token) {
            Some(Token::SingleQuotedString(s)) => unescape_quotes(&s),
            Some(Token::EscapedStringLiteral(s)) => s,
            _ => return Err(self.error_here("RAISE needs a format string")),
        };
        let mut arguments = Vec::new();
        while self.consume(&Token::Comma) {
            arguments.push(self.text_until(|t| matches!(t, Token::Comma | Token::SemiColon))?);
        }
        self.expect_semicolon()?;
        Ok(StatementKind::Raise {
            level,
            format: Some(format),
            arguments,
        })
    }

    /// `target := expression;` or any SQL statement up to its semicolon.
    fn assignment_or_sql(&mut self) -> Result<StatementKind> {
        let is_assignment = {
            let mut n = 1;
            while self.peek_token(n) == Some(&Token::Period) {
                n += 2;
            }
            matches!(self.peek_token(0), Some(Token::Word(_)))
                && matches!(self.peek_token(n), Some(Token::Assignment | Token::Eq))
        };
        if is_assignment {
            let target = self.target()?;
            self.next();
            let expression = self.text_until_semicolon()?;
            return Ok(StatementKind::Assign { target, expression });
        }
        let first = self.peek_word(0);
        let start = self.pos;
        let sql = self.text_until_semicolon()?;
        if matches!(first.as_deref(), Some("SELECT" | "WITH")) {
            // plpgsql's SELECT ... INTO names variables, not a new table.
            self.pos = start;
            return self.select_into();
        }
        Ok(StatementKind::Sql { sql, into: vec![] })
    }

    /// A SELECT whose top-level `INTO [STRICT] a, b` is taken out of its text.
    fn select_into(&mut self) -> Result<StatementKind> {
        let mut sql = String::new();
        let mut into = Vec::new();
        let mut parens = 0usize;
        loop {
            let Some(token) = self.tokens.get(self.pos).map(|t| t.token.clone()) else {
                return Err(self.error_here("expected \";\""));
            };
            match &token {
                Token::SemiColon if parens == 0 => {
                    self.pos += 1;
                    break;
                }
                Token::EOF => return Err(self.error_here("expected \";\"")),
                Token::LParen => parens += 1,
                Token::RParen => parens = parens.saturating_sub(1),
                _ => {}
            }
            if parens == 0 && into.is_empty() && upper(&token).as_deref() == Some("INTO") {
                self.pos += 1;
                self.consume_word("STRICT");
                into = self.targets()?;
                sql.push(' ');
                continue;
            }
            sql.push_str(&render(&token));
            self.pos += 1;
        }
        Ok(StatementKind::Sql {
            sql: sql.trim().to_string(),
            into,
        })
    }
}

/// A token as written (the tokenizer kept string contents unescaped).
fn render(token: &Token) -> String {
    match token {
        Token::Whitespace(Whitespace::SingleLineComment { .. }) => " ".into(),
        Token::Whitespace(Whitespace::MultiLineComment(_)) => " ".into(),
        other => other.to_string(),
    }
}

fn unescape_quotes(s: &str) -> String {
    s.replace("''", "'")
}

/// Splits `low .. high [BY step]` at its top-level `..`, outside quotes.
fn split_range(header: &str) -> Option<(String, String, Option<String>)> {
    let bytes = header.as_bytes();
    let mut quoted = false;
    let mut depth = 0i32;
    for i in 0..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            b'.' if !quoted && depth == 0 && bytes.get(i + 1) == Some(&b'.') => {
                let low = header[..i].trim().to_string();
                let rest = header[i + 2..].trim();
                let upper_rest = rest.to_ascii_uppercase();
                let (high, step) = match upper_rest.find(" BY ") {
                    Some(at) => (
                        rest[..at].trim().to_string(),
                        Some(rest[at + 4..].trim().to_string()),
                    ),
                    None => (rest.to_string(), None),
                };
                return Some((low, high, step));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(block: &Block) -> Vec<String> {
        block
            .body
            .iter()
            .map(|s| {
                format!("{:?}", s.kind)
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn parses_control_structure() {
        let body = "
DECLARE
  total integer := 0;
  r RECORD;
  name varchar(20) DEFAULT 'x';
BEGIN
  total := total + 1;
  IF total > 1 THEN
    RAISE INFO 'big %', total;
  ELSIF total = 1 THEN
    NULL;
  ELSE
    RAISE EXCEPTION 'no';
  END IF;
  FOR i IN 1..3 LOOP
    total := total + i;
  END LOOP;
  FOR r IN SELECT a, b FROM t ORDER BY a LOOP
    INSERT INTO u VALUES (r.a);
  END LOOP;
  SELECT count(*) INTO total FROM t WHERE a = 'it''s';
  update t set a = CASE WHEN b THEN 1 ELSE 2 END; -- trailing comment
  WHILE total > 0 LOOP total := total - 1; EXIT WHEN total = 2; END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE;
END;";
        let block = parse_body(body).unwrap();
        assert_eq!(block.declarations.len(), 3);
        assert!(matches!(
            block.declarations[1].kind,
            DeclarationKind::Record
        ));
        assert_eq!(block.declarations[2].default.as_deref(), Some("'x'"));
        assert_eq!(
            kinds(&block),
            [
                "Assign", "If", "ForRange", "ForQuery", "Sql", "Sql", "While"
            ]
        );
        let StatementKind::Sql { sql, into } = &block.body[4].kind else {
            panic!()
        };
        assert_eq!(sql, "SELECT count(*)   FROM t WHERE a = 'it''s'");
        assert_eq!(into, &["total"]);
        let StatementKind::ForRange { low, high, .. } = &block.body[2].kind else {
            panic!()
        };
        assert_eq!((low.as_str(), high.as_str()), ("1", "3"));
        assert_eq!(block.body[1].line, 8);
        assert!(block.handler.is_some());
    }

    #[test]
    fn reports_unbalanced_bodies() {
        let err = parse_body("BEGIN IF x THEN NULL; END;").unwrap_err();
        assert!(err.to_string().contains("expected IF"), "{err}");
        let err = parse_body("BEGIN SELECT 1").unwrap_err();
        assert!(
            err.to_string().contains("end of the procedure body"),
            "{err}"
        );
    }
}
