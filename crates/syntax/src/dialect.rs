//! Tributary's SQL dialect: sqlparser's Redshift dialect plus the Redshift column attributes it
//! lacks (`IDENTITY(seed, step)`, `ENCODE`, column-level `DISTKEY` / `SORTKEY`), and a token
//! pre-pass for table attributes that sqlparser accepts only in one form.

use sqlparser::ast::{
    ColumnOption, IdentityParameters, IdentityProperty, IdentityPropertyFormatKind,
    IdentityPropertyKind,
};
use sqlparser::dialect::{Dialect, RedshiftSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// The Redshift dialect with Tributary's extensions. It reports itself as Redshift so that
/// every Redshift-specific rule inside sqlparser still applies.
#[derive(Debug, Default)]
pub struct TributaryDialect {
    inner: RedshiftSqlDialect,
}

/// Parses one or more statements: Redshift's that sqlparser lacks ([`crate::extension`]) as
/// [`crate::Statement::Ext`], the others by sqlparser.
pub fn parse_statements(sql: &str) -> Result<Vec<crate::Statement>, ParserError> {
    let dialect = TributaryDialect::default();
    let sql = straighten_quotes(sql);
    let tokens = Tokenizer::new(&dialect, &sql)
        .with_unescape(true)
        .tokenize_with_location()?;
    let tokens = abort_as_rollback(move_backup_first(normalise_table_attributes(tokens)));
    let tokens = remove_duplicates_as_clause(maxerror_as_option(tokens));
    let tokens = unpivot_as_function(tokens);
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    // sqlparser's own loop (`Parser::parse_statements`), with our statements tried first.
    let mut statements = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        match &parser.peek_token_ref().token {
            Token::EOF => break,
            Token::Word(word) if expecting_delimiter && word.keyword == Keyword::END => break,
            _ => {}
        }
        if expecting_delimiter {
            return parser.expected_ref("end of statement", parser.peek_token_ref());
        }
        let statement = match crate::extension::parse(&mut parser) {
            Some(statement) => statement?,
            None => crate::Statement::Sql(parser.parse_statement()?),
        };
        statements.push(statement);
        expecting_delimiter = true;
    }
    Ok(statements)
}

/// Typographic quotes around names and strings (`“etl_to_bi”`, `‘guid’`), as statements
/// copied from articles have them, become the ASCII quotes they stand for. Inside a quoted
/// string, identifier, comment or dollar-quoted body they are left alone.
fn straighten_quotes(sql: &str) -> std::borrow::Cow<'_, str> {
    const DOUBLE: [char; 2] = ['\u{201c}', '\u{201d}'];
    const SINGLE: [char; 2] = ['\u{2018}', '\u{2019}'];
    if !sql.contains(DOUBLE) && !sql.contains(SINGLE) {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    // The character that ends the quoted region we are in, if any.
    let mut closing: Option<&[char]> = None;
    while let Some(c) = chars.next() {
        if let Some(end) = closing {
            if end.contains(&c) {
                closing = None;
                out.push(if DOUBLE.contains(&c) {
                    '"'
                } else if SINGLE.contains(&c) {
                    '\''
                } else {
                    c
                });
            } else {
                out.push(c);
            }
            continue;
        }
        match c {
            '\'' => closing = Some(&['\'']),
            '"' => closing = Some(&['"']),
            '-' if chars.peek() == Some(&'-') => closing = Some(&['\n']),
            '$' if chars.peek() == Some(&'$') => {
                out.push(c);
                out.push(chars.next().unwrap_or('$'));
                // Copy the body up to the closing `$$` untouched.
                while let Some(b) = chars.next() {
                    out.push(b);
                    if b == '$' && chars.peek() == Some(&'$') {
                        out.push(chars.next().unwrap_or('$'));
                        break;
                    }
                }
                continue;
            }
            c if DOUBLE.contains(&c) => {
                out.push('"');
                closing = Some(&DOUBLE);
                continue;
            }
            c if SINGLE.contains(&c) => {
                out.push('\'');
                closing = Some(&SINGLE);
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// The marker that carries COPY's `MAXERROR [AS] n` through the parser, which has no such
/// option: it becomes `EXTENSION '<marker>n'`, an option COPY has no other use for.
pub const MAXERROR_MARKER: &str = "tributary-maxerror=";

fn maxerror_as_option(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut index = 0;
    while index < tokens.len() {
        let token = take(&mut tokens, index);
        index += 1;
        if word_upper(&token.token).as_deref() != Some("MAXERROR") {
            out.push(token);
            continue;
        }
        // MAXERROR [AS] <number>
        let mut next = significant_from(&tokens, index);
        if let Some(at) = next
            && word_upper(&tokens[at].token).as_deref() == Some("AS")
        {
            next = significant_from(&tokens, at + 1);
        }
        let Some((at, Token::Number(n, _))) = next.map(|at| (at, &tokens[at].token)) else {
            out.push(token);
            continue;
        };
        let marker = format!("{MAXERROR_MARKER}{n}");
        index = at + 1;
        let span = token.span;
        out.push(TokenWithSpan {
            token: Token::make_keyword("EXTENSION"),
            span,
        });
        out.push(space(span));
        out.push(TokenWithSpan {
            token: Token::SingleQuotedString(marker),
            span,
        });
    }
    out
}

/// The marker of Redshift's simplified MERGE (`... ON cond REMOVE DUPLICATES`), which the
/// parser does not know: it becomes `WHEN NOT MATCHED THEN INSERT VALUES ('<marker>')`.
pub const REMOVE_DUPLICATES_MARKER: &str = "tributary-remove-duplicates";

fn remove_duplicates_as_clause(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut index = 0;
    while index < tokens.len() {
        let token = take(&mut tokens, index);
        index += 1;
        let duplicates = (word_upper(&token.token).as_deref() == Some("REMOVE"))
            .then(|| significant_from(&tokens, index))
            .flatten()
            .filter(|&at| word_upper(&tokens[at].token).as_deref() == Some("DUPLICATES"));
        let Some(at) = duplicates else {
            out.push(token);
            continue;
        };
        index = at + 1;
        let span = token.span;
        for word in ["WHEN", "NOT", "MATCHED", "THEN", "INSERT", "VALUES"] {
            out.push(TokenWithSpan {
                token: Token::make_keyword(word),
                span,
            });
            out.push(space(span));
        }
        for token in [
            Token::LParen,
            Token::SingleQuotedString(REMOVE_DUPLICATES_MARKER.to_string()),
            Token::RParen,
        ] {
            out.push(TokenWithSpan { token, span });
        }
    }
    out
}

/// PartiQL's object unpivoting in FROM (`FROM t, UNPIVOT t.obj AS v AT k`), which the parser
/// does not know: the path becomes the argument of a table function the PartiQL rewrite
/// recognises (`__tributary_unpivot(t.obj) AS v AT k`).
fn unpivot_as_function(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut index = 0;
    while index < tokens.len() {
        let token = take(&mut tokens, index);
        index += 1;
        let is_unpivot = word_upper(&token.token).as_deref() == Some("UNPIVOT")
            && out
                .iter()
                .rev()
                .find(|t| !matches!(t.token, Token::Whitespace(_)))
                .is_some_and(|t| {
                    t.token == Token::Comma
                        || matches!(word_upper(&t.token).as_deref(), Some("FROM" | "JOIN"))
                })
            && significant_from(&tokens, index).is_none_or(|at| tokens[at].token != Token::LParen);
        if !is_unpivot {
            out.push(token);
            continue;
        }
        let span = token.span;
        out.push(TokenWithSpan {
            token: Token::make_word(crate::functions::UNPIVOT, None),
            span,
        });
        out.push(TokenWithSpan {
            token: Token::LParen,
            span,
        });
        let mut depth = 0usize;
        while index < tokens.len() {
            let next = &tokens[index].token;
            let ends = depth == 0
                && (matches!(next, Token::Comma | Token::SemiColon | Token::RParen)
                    || matches!(
                        word_upper(next).as_deref(),
                        Some("AS" | "WHERE" | "JOIN" | "LEFT" | "GROUP" | "ORDER" | "LIMIT")
                    ));
            if ends {
                break;
            }
            match next {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
                _ => {}
            }
            out.push(take(&mut tokens, index));
            index += 1;
        }
        out.push(TokenWithSpan {
            token: Token::RParen,
            span,
        });
    }
    out
}

/// `ABORT [WORK | TRANSACTION]` is Redshift's (and Postgres's) other spelling of ROLLBACK.
fn abort_as_rollback(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut statement_start = true;
    for token in &mut tokens {
        match &token.token {
            Token::Whitespace(_) => continue,
            Token::SemiColon => {
                statement_start = true;
                continue;
            }
            Token::Word(word) if statement_start && word.value.eq_ignore_ascii_case("abort") => {
                token.token = Token::make_keyword("ROLLBACK");
            }
            _ => {}
        }
        statement_start = false;
    }
    tokens
}

/// Redshift writes `[COMPOUND | INTERLEAVED] SORTKEY (...)`, `SORTKEY AUTO` and a table-level
/// `ENCODE AUTO`; sqlparser knows only `SORTKEY (...)`. The sort key kind has no effect on a
/// single node, so the extra words are dropped here.
fn normalise_table_attributes(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut depth = 0i32;
    let mut index = 0;
    while index < tokens.len() {
        let token = take(&mut tokens, index);
        index += 1;
        match &token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        let word = word_upper(&token.token);
        let next_word =
            || significant_from(&tokens, index).and_then(|at| word_upper(&tokens[at].token));
        if depth == 0
            && matches!(word.as_deref(), Some("COMPOUND" | "INTERLEAVED"))
            && next_word().as_deref() == Some("SORTKEY")
        {
            continue;
        }
        if depth == 0
            && matches!(word.as_deref(), Some("ENCODE" | "SORTKEY"))
            && next_word().as_deref() == Some("AUTO")
        {
            // Drop the keyword and its AUTO argument: automatic choices are the default.
            // (DISTSTYLE AUTO is parsed, and kept.)
            index = significant_from(&tokens, index).map_or(tokens.len(), |at| at + 1);
            continue;
        }
        out.push(token);
    }
    out
}

/// sqlparser reads `BACKUP YES|NO` only before DISTSTYLE / DISTKEY / SORTKEY; Redshift users
/// write it after them too. Moves a trailing BACKUP clause in front of those attributes.
fn move_backup_first(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut depth = 0i32;
    let mut first_attribute = None;
    let mut index = 0;
    while index < tokens.len() {
        match &tokens[index].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon => first_attribute = None,
            token => {
                let word = word_upper(token);
                if depth == 0
                    && matches!(word.as_deref(), Some("DISTSTYLE" | "DISTKEY" | "SORTKEY"))
                {
                    first_attribute.get_or_insert(index);
                }
                if depth == 0
                    && word.as_deref() == Some("BACKUP")
                    && let Some(target) = first_attribute
                    && let Some(value) = (index + 1..tokens.len())
                        .find(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
                {
                    let clause: Vec<TokenWithSpan> = tokens.drain(index..=value).collect();
                    let space = TokenWithSpan::wrap(Token::Whitespace(
                        sqlparser::tokenizer::Whitespace::Space,
                    ));
                    tokens.splice(
                        target..target,
                        clause.into_iter().chain(std::iter::once(space)),
                    );
                    first_attribute = None;
                    continue;
                }
            }
        }
        index += 1;
    }
    tokens
}

/// Moves the token at `index` out of `tokens`, leaving an end-of-file token in its place:
/// the passes above walk the vector once, looking ahead by index, and never clone it.
fn take(tokens: &mut [TokenWithSpan], index: usize) -> TokenWithSpan {
    std::mem::replace(&mut tokens[index], TokenWithSpan::wrap(Token::EOF))
}

/// The first token at or after `from` that is not whitespace.
fn significant_from(tokens: &[TokenWithSpan], from: usize) -> Option<usize> {
    (from..tokens.len()).find(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
}

fn space(span: sqlparser::tokenizer::Span) -> TokenWithSpan {
    TokenWithSpan {
        token: Token::Whitespace(sqlparser::tokenizer::Whitespace::Space),
        span,
    }
}

fn word_upper(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

impl Dialect for TributaryDialect {
    fn dialect(&self) -> std::any::TypeId {
        std::any::TypeId::of::<RedshiftSqlDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.inner.is_delimited_identifier_start(ch)
    }

    fn is_nested_delimited_identifier_start(&self, ch: char) -> bool {
        self.inner.is_nested_delimited_identifier_start(ch)
    }

    fn peek_nested_delimited_identifier_quotes(
        &self,
        chars: std::iter::Peekable<std::str::Chars<'_>>,
    ) -> Option<(char, Option<char>)> {
        self.inner.peek_nested_delimited_identifier_quotes(chars)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.inner.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.inner.is_identifier_part(ch)
    }

    fn convert_type_before_value(&self) -> bool {
        self.inner.convert_type_before_value()
    }

    fn supports_connect_by(&self) -> bool {
        self.inner.supports_connect_by()
    }

    fn supports_top_before_distinct(&self) -> bool {
        self.inner.supports_top_before_distinct()
    }

    fn supports_partiql(&self) -> bool {
        self.inner.supports_partiql()
    }

    fn supports_string_escape_constant(&self) -> bool {
        self.inner.supports_string_escape_constant()
    }

    fn supports_geometric_types(&self) -> bool {
        self.inner.supports_geometric_types()
    }

    fn supports_bitwise_shift_operators(&self) -> bool {
        self.inner.supports_bitwise_shift_operators()
    }

    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.inner.supports_array_typedef_with_brackets()
    }

    fn allow_extract_single_quotes(&self) -> bool {
        self.inner.allow_extract_single_quotes()
    }

    fn supports_string_literal_backslash_escape(&self) -> bool {
        self.inner.supports_string_literal_backslash_escape()
    }

    fn supports_select_wildcard_exclude(&self) -> bool {
        self.inner.supports_select_wildcard_exclude()
    }

    fn supports_select_wildcard_with_alias(&self) -> bool {
        self.inner.supports_select_wildcard_with_alias()
    }

    fn supports_select_exclude(&self) -> bool {
        self.inner.supports_select_exclude()
    }

    fn supports_create_table_like_parenthesized(&self) -> bool {
        self.inner.supports_create_table_like_parenthesized()
    }

    fn supports_string_literal_concatenation_with_newline(&self) -> bool {
        self.inner
            .supports_string_literal_concatenation_with_newline()
    }

    fn supports_window_function_null_treatment_arg(&self) -> bool {
        self.inner.supports_window_function_null_treatment_arg()
    }

    fn supports_filter_during_aggregation(&self) -> bool {
        true
    }

    fn parse_column_option(
        &self,
        parser: &mut Parser,
    ) -> Result<Option<Result<Option<ColumnOption>, ParserError>>, ParserError> {
        if parser.parse_keyword(Keyword::IDENTITY) {
            return Ok(Some(parse_identity(parser).map(Some)));
        }
        if parser.parse_keyword(Keyword::DISTKEY) {
            return Ok(Some(Ok(Some(marker(&["DISTKEY"])))));
        }
        if parser.parse_keyword(Keyword::SORTKEY) {
            return Ok(Some(Ok(Some(marker(&["SORTKEY"])))));
        }
        if let Token::Word(word) = &parser.peek_token().token
            && word.quote_style.is_none()
            && word.value.eq_ignore_ascii_case("ENCODE")
        {
            parser.next_token();
            let encoding = parser.parse_identifier()?;
            return Ok(Some(Ok(Some(marker(&["ENCODE", &encoding.value])))));
        }
        Ok(None)
    }
}

/// A column attribute with no meaning on a single node, kept so it can be recorded.
fn marker(words: &[&str]) -> ColumnOption {
    ColumnOption::DialectSpecific(words.iter().map(|w| Token::make_word(w, None)).collect())
}

fn parse_identity(parser: &mut Parser) -> Result<ColumnOption, ParserError> {
    let parameters = if parser.consume_token(&Token::LParen) {
        let seed = parser.parse_expr()?;
        parser.expect_token(&Token::Comma)?;
        let increment = parser.parse_expr()?;
        parser.expect_token(&Token::RParen)?;
        Some(IdentityPropertyFormatKind::FunctionCall(
            IdentityParameters { seed, increment },
        ))
    } else {
        None
    };
    Ok(ColumnOption::Identity(IdentityPropertyKind::Identity(
        IdentityProperty {
            parameters,
            order: None,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str, expected: &str) {
        let statements = parse_statements(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rendered: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
        assert_eq!(rendered.join("; "), expected);
    }

    #[test]
    fn redshift_column_and_table_attributes_parse() {
        check(
            "create table t (id bigint identity(1,1) encode az64 distkey, name varchar(10) sortkey) \
             diststyle key compound sortkey (id)",
            "CREATE TABLE t (id BIGINT IDENTITY(1, 1) ENCODE az64 DISTKEY, name VARCHAR(10) SORTKEY) \
             DISTSTYLE KEY SORTKEY(id)",
        );
        check(
            "create table t (a int) sortkey auto encode auto",
            "CREATE TABLE t (a INT)",
        );
    }

    #[test]
    fn top_and_ordinary_queries_parse() {
        check("select top 3 * from t", "SELECT TOP 3 * FROM t");
    }
}
