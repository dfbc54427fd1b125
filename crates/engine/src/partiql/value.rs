//! SUPER values as JSON text: validation and compaction (JSON_PARSE), navigation, and the
//! scalar and container views the functions and casts need.
//!
//! Navigation never builds a document: jiter walks the text, skips the values that are not on
//! the path without allocating, and the result is a slice of the input. A stored SUPER value is
//! compact (no insignificant whitespace, keys in their original order), so equal values have
//! equal text.

use std::borrow::Cow;

use jiter::{Jiter, JiterError, LinePosition, Peek};

/// One step of a PartiQL path: `.name` / `['name']`, or `[index]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(i64),
}

/// Why a text is not JSON, with the position of the first bad character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid JSON at line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

fn invalid(data: &[u8], error: &JiterError) -> Invalid {
    let LinePosition { line, column } = LinePosition::find(data, error.index);
    Invalid {
        line,
        column,
        message: error.error_type.to_string(),
    }
}

/// Checks that `text` is exactly one JSON value.
pub fn validate(text: &str) -> Result<(), Invalid> {
    let data = text.as_bytes();
    let mut jiter = Jiter::new(data);
    jiter
        .next_skip()
        .and_then(|()| jiter.finish())
        .map_err(|e| invalid(data, &e))
}

/// The compact form of a JSON text: validated, with whitespace outside strings removed and
/// everything else (key order, number spelling, escapes) kept as written.
pub fn compact(text: &str) -> Result<String, Invalid> {
    let mut out = String::with_capacity(text.len());
    compact_into(text, &mut out)?;
    Ok(out)
}

/// Appends the compact form of `text` (see [`compact`]) to `out`.
pub fn compact_into(text: &str, out: &mut String) -> Result<(), Invalid> {
    validate(text)?;
    let bytes = text.as_bytes();
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // Most documents from a stream arrive compact: keep them as they are.
    if !bytes.iter().any(is_space) {
        out.push_str(text);
        return Ok(());
    }
    // Whitespace and quotes are ASCII, so the text splits on them at character boundaries.
    let (mut at, mut kept) = (0, 0);
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                // To the closing quote: past escapes, which hold no structure.
                at += 1;
                while let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[at..]) {
                    at += offset + 1;
                    if bytes[at - 1] == b'"' {
                        break;
                    }
                    at += 1;
                }
            }
            byte if is_space(&byte) => {
                out.push_str(&text[kept..at]);
                while at < bytes.len() && is_space(&bytes[at]) {
                    at += 1;
                }
                kept = at;
            }
            _ => at += 1,
        }
    }
    out.push_str(&text[kept..]);
    Ok(())
}

/// The raw text of the value at `path`, or None in lax mode: a missing key, an index out of
/// range, a step into a scalar, a JSON null, or text that is not JSON.
pub fn navigate<'j>(json: &'j str, path: &[Step]) -> Option<&'j str> {
    let mut jiter = Jiter::new(json.as_bytes());
    for step in path {
        let peek = jiter.peek().ok()?;
        match (step, peek) {
            (Step::Key(key), Peek::Object) => {
                let mut found = jiter.known_object().ok()?.map(|k| k == key);
                loop {
                    match found {
                        None => return None,
                        Some(true) => break,
                        Some(false) => {
                            jiter.next_skip().ok()?;
                            found = jiter.next_key().ok()?.map(|k| k == key);
                        }
                    }
                }
            }
            (Step::Index(index), Peek::Array) => {
                let mut position = 0;
                let mut next = jiter.known_array().ok()?;
                loop {
                    match next {
                        None => return None,
                        Some(_) if position == *index => break,
                        Some(peek) => {
                            jiter.known_skip(peek).ok()?;
                            next = jiter.array_step().ok()?;
                            position += 1;
                        }
                    }
                }
            }
            _ => return None,
        }
    }
    let peek = jiter.peek().ok()?;
    if peek == Peek::Null {
        return None;
    }
    let start = jiter.current_index();
    jiter.known_skip(peek).ok()?;
    Some(&json[start..jiter.current_index()])
}

/// The JSON type of a value, as JSON_TYPEOF names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Boolean,
    Null,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Null => "null",
        }
    }
}

/// The type of a compact JSON value, from its first character.
pub fn kind(json: &str) -> Option<Kind> {
    Some(match json.trim_start().as_bytes().first()? {
        b'{' => Kind::Object,
        b'[' => Kind::Array,
        b'"' => Kind::String,
        b't' | b'f' => Kind::Boolean,
        b'n' => Kind::Null,
        b'-' | b'0'..=b'9' => Kind::Number,
        _ => return None,
    })
}

/// A scalar as SQL text: a string without its quotes and escapes, a number as written, a
/// boolean as `true` / `false`. Objects, arrays and null have no scalar text.
pub fn scalar_text(json: &str) -> Option<Cow<'_, str>> {
    match kind(json)? {
        Kind::String => {
            let mut jiter = Jiter::new(json.as_bytes());
            let decoded = jiter.next_str().ok()?;
            if json.len() == decoded.len() + 2 {
                Some(Cow::Borrowed(&json[1..json.len() - 1]))
            } else {
                Some(Cow::Owned(decoded.to_string()))
            }
        }
        Kind::Number | Kind::Boolean => Some(Cow::Borrowed(json.trim())),
        Kind::Object | Kind::Array | Kind::Null => None,
    }
}

/// True if a number has no fractional part or exponent.
pub fn is_integer(json: &str) -> bool {
    kind(json) == Some(Kind::Number) && !json.contains(['.', 'e', 'E'])
}

/// The raw texts of an array's elements, or None if the value is not an array.
pub fn elements(json: &str) -> Option<Vec<&str>> {
    if kind(json)? != Kind::Array {
        return None;
    }
    let mut jiter = Jiter::new(json.as_bytes());
    let mut out = Vec::new();
    let mut next = jiter.next_array().ok()?;
    while let Some(peek) = next {
        let start = jiter.current_index();
        jiter.known_skip(peek).ok()?;
        out.push(&json[start..jiter.current_index()]);
        next = jiter.array_step().ok()?;
    }
    Some(out)
}

/// The keys and raw value texts of an object, in order, or None if the value is not an object.
pub fn entries(json: &str) -> Option<Vec<(String, &str)>> {
    if kind(json)? != Kind::Object {
        return None;
    }
    let mut jiter = Jiter::new(json.as_bytes());
    let mut out = Vec::new();
    let mut key = jiter.next_object().ok()?.map(str::to_string);
    while let Some(name) = key {
        let peek = jiter.peek().ok()?;
        let start = jiter.current_index();
        jiter.known_skip(peek).ok()?;
        out.push((name, &json[start..jiter.current_index()]));
        key = jiter.next_key().ok()?.map(str::to_string);
    }
    Some(out)
}

/// A SQL string as a SUPER string value.
pub fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Step {
        Step::Key(k.to_string())
    }

    #[test]
    fn compacts_keeping_order_and_spelling() {
        assert_eq!(
            compact("{ \"b\": 1,\n \"a\" : [ 50.00, \"x y\" ] }").unwrap(),
            r#"{"b":1,"a":[50.00,"x y"]}"#
        );
        assert_eq!(compact(r#" "a \" b" "#).unwrap(), r#""a \" b""#);
        let error = compact("{\"a\":\n  1,}").unwrap_err();
        assert_eq!((error.line, error.column), (2, 5));
        assert!(compact("1 2").is_err());
        // Escaped backslashes and quotes end a string where JSON says, spaces in it stay.
        assert_eq!(
            compact(r#"{ "a" : "x \\", "b": "say \" hi \\\" " ,"c":[ 1 ,2 ] }"#).unwrap(),
            r#"{"a":"x \\","b":"say \" hi \\\" ","c":[1,2]}"#
        );
        // Compact text is kept as it is; a value appends to what is there.
        let mut out = String::from("[");
        compact_into(r#"{"k":"v w"}"#, &mut out).unwrap();
        assert_eq!(out, r#"[{"k":"v w"}"#);
    }

    #[test]
    fn navigates_lax() {
        let doc = r#"{"a":{"B":[10,{"c":"x"},null]},"n":null}"#;
        assert_eq!(
            navigate(doc, &[key("a"), key("B")]),
            Some(r#"[10,{"c":"x"},null]"#)
        );
        assert_eq!(
            navigate(doc, &[key("a"), key("B"), Step::Index(1), key("c")]),
            Some(r#""x""#)
        );
        assert_eq!(navigate(doc, &[key("a"), key("b")]), None);
        assert_eq!(navigate(doc, &[key("a"), key("B"), Step::Index(3)]), None);
        assert_eq!(navigate(doc, &[key("a"), key("B"), Step::Index(2)]), None);
        assert_eq!(navigate(doc, &[key("n")]), None);
        assert_eq!(
            navigate(doc, &[key("a"), key("B"), Step::Index(0), key("x")]),
            None
        );
        assert_eq!(navigate("not json", &[key("a")]), None);
    }

    #[test]
    fn scalars_and_containers() {
        assert_eq!(scalar_text(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(scalar_text(r#""plain""#).as_deref(), Some("plain"));
        assert_eq!(scalar_text("50.00").as_deref(), Some("50.00"));
        assert_eq!(scalar_text("true").as_deref(), Some("true"));
        assert_eq!(scalar_text("[1]"), None);
        assert!(is_integer("-12") && !is_integer("1.5") && !is_integer("\"1\""));
        assert_eq!(
            elements(r#"[1,"a",{"b":[2]}]"#).unwrap(),
            vec!["1", r#""a""#, r#"{"b":[2]}"#]
        );
        assert_eq!(elements("[]").unwrap(), Vec::<&str>::new());
        assert_eq!(elements("{}"), None);
        assert_eq!(
            entries(r#"{"x":1,"y":[2]}"#).unwrap(),
            vec![("x".to_string(), "1"), ("y".to_string(), "[2]")]
        );
        assert_eq!(quote("a\"b"), r#""a\"b""#);
    }
}
