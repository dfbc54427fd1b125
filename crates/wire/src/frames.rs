//! Checks every message a client sends before pgwire decodes it.
//!
//! pgwire decodes a message's fields from the connection's whole read buffer, not from the
//! message alone: a field that runs past the message's length reads the next message, and
//! one that runs past the buffer panics ("advance out of bounds"). A NUL inside a query, a
//! Bind with a wrong count, a length under 4: each dropped the connection with a panic, and
//! could leave the reader in the middle of the next message.
//!
//! [`Guarded`] sits between the socket and pgwire's codec. It frames the byte stream itself
//! and checks each message's structure (every field inside the message, the message ending
//! where its fields end, format codes and counts in range, text in UTF-8), as Postgres's
//! `pq_getmsg*` functions do, before pgwire sees a byte of it:
//!
//! - a well-formed message passes through unchanged;
//! - a message whose frame is sound but whose content is not (the cases where Postgres
//!   reports an ERROR and the session goes on) is replaced by a Query message carrying the
//!   error ([`violation`] reads it back), which the connection loop answers with that error;
//! - a broken frame (a length under 4 or over the limit, an unknown message type, a bad
//!   startup packet: Postgres's FATAL cases) ends the stream with an error that the
//!   connection loop reports before it closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest message accepted: a statement, a Bind's parameters or a chunk of COPY data.
/// Postgres allows 1 GiB; 256 MiB is far above what a client sends in one message (a
/// 32,767-parameter INSERT is a few hundred KiB) and bounds what a connection can make the
/// server buffer.
pub(crate) const MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The largest startup packet (Postgres's limit).
const STARTUP_BYTES_MAX: usize = 10_000;

/// The largest message of the types that carry no statement or data (Postgres's limit for
/// them).
const SMALL_MESSAGE_BYTES_MAX: usize = 10_000;

/// Request codes of the untyped first packet.
const CANCEL_REQUEST: u32 = 80_877_102;
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;

/// The start of the Query text that carries a violation to the connection loop. It begins
/// with a control character no client puts at the start of a statement.
const VIOLATION_MARKER: &str = "\u{1}tributary-protocol-violation:";

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// A message whose content is malformed, reported as an ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: &'static str,
    pub message: String,
    /// The message belonged to the extended query protocol: after the error, messages are
    /// skipped until Sync.
    pub extended: bool,
}

/// A frame that cannot be read on from, reported as FATAL before the connection closes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BrokenFrame(pub String);

/// The Violation a Query's text carries, if it is one [`Guarded`] made.
pub(crate) fn violation(query: &str) -> Option<Violation> {
    let rest = query.strip_prefix(VIOLATION_MARKER)?;
    let (extended, rest) = rest.split_once(':')?;
    let (code, message) = rest.split_once(':')?;
    let code = match code {
        "22021" => "22021",
        "22023" => "22023",
        _ => "08P01",
    };
    Some(Violation {
        code,
        message: message.to_string(),
        extended: extended == "E",
    })
}

/// A socket whose incoming messages are checked before they are read.
pub(crate) struct Guarded<S> {
    inner: S,
    /// Bytes read and not yet framed.
    raw: BytesMut,
    /// Checked messages, ready for the reader.
    checked: BytesMut,
    /// The next packet is the untyped startup packet.
    startup: bool,
    /// The stream ends after `checked`: with this error, or at the end of the input.
    broken: Option<String>,
    eof: bool,
}

impl<S> Guarded<S> {
    /// Guards `inner`, whose first `read` bytes were already read from it.
    pub(crate) fn new(inner: S, read: BytesMut) -> Self {
        let mut guarded = Self {
            inner,
            raw: read,
            checked: BytesMut::new(),
            startup: true,
            broken: None,
            eof: false,
        };
        guarded.frame();
        guarded
    }

    /// Moves every complete message of `raw` into `checked`, checked or replaced.
    fn frame(&mut self) {
        while self.broken.is_none() {
            let outcome = if self.startup {
                self.frame_startup()
            } else {
                self.frame_typed()
            };
            match outcome {
                Ok(true) => continue,
                Ok(false) => return,
                Err(reason) => self.broken = Some(reason),
            }
        }
    }

    /// The untyped first packet: SSL / GSS requests, a cancel request or the startup message.
    fn frame_startup(&mut self) -> Result<bool, String> {
        if self.raw.len() < 8 {
            return Ok(false);
        }
        let length = u32::from_be_bytes(self.raw[0..4].try_into().expect("4 bytes")) as usize;
        let code = u32::from_be_bytes(self.raw[4..8].try_into().expect("4 bytes"));
        if !(8..=STARTUP_BYTES_MAX).contains(&length) {
            return Err("invalid length of startup packet".into());
        }
        if self.raw.len() < length {
            return Ok(false);
        }
        let body = &self.raw[8..length];
        match code {
            SSL_REQUEST | GSS_REQUEST if body.is_empty() => {}
            CANCEL_REQUEST if (4..=260).contains(&body.len()) => {}
            _ if code >> 16 == 3 => {
                check_startup_parameters(body)?;
                self.startup = false;
            }
            SSL_REQUEST | GSS_REQUEST | CANCEL_REQUEST => {
                return Err("invalid length of startup packet".into());
            }
            _ => {
                return Err(format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0 to 3.2",
                    code >> 16,
                    code & 0xffff
                ));
            }
        }
        let packet = self.raw.split_to(length);
        self.checked.extend_from_slice(&packet);
        Ok(true)
    }

    /// One typed message: a type byte, a length that counts itself, the body.
    fn frame_typed(&mut self) -> Result<bool, String> {
        if self.raw.len() < 5 {
            return Ok(false);
        }
        let kind = self.raw[0];
        let length = u32::from_be_bytes(self.raw[1..5].try_into().expect("4 bytes")) as usize;
        let limit = match kind {
            b'Q' | b'P' | b'B' | b'd' => MESSAGE_BYTES_MAX,
            b'E' | b'D' | b'C' | b'S' | b'H' | b'X' | b'c' | b'f' | b'p' => SMALL_MESSAGE_BYTES_MAX,
            other => return Err(format!("invalid frontend message type {other}")),
        };
        if length < 4 || length > limit {
            return Err(format!("invalid message length {length}"));
        }
        if self.raw.len() < length + 1 {
            return Ok(false);
        }
        let message = self.raw.split_to(length + 1);
        match check_body(kind, &message[5..]) {
            Ok(()) => self.checked.extend_from_slice(&message),
            Err(BodyError::Fatal(reason)) => return Err(reason),
            Err(BodyError::Violation(code, reason)) => {
                let extended = matches!(kind, b'P' | b'B' | b'E' | b'D' | b'C' | b'H');
                put_violation(&mut self.checked, extended, code, &reason);
            }
        }
        Ok(true)
    }
}

/// Writes a Query message that carries a violation.
fn put_violation(out: &mut BytesMut, extended: bool, code: &str, reason: &str) {
    let text = format!(
        "{VIOLATION_MARKER}{}:{code}:{reason}",
        if extended { "E" } else { "S" }
    );
    let text = text.replace('\0', " ");
    out.put_u8(b'Q');
    out.put_u32((4 + text.len() + 1) as u32);
    out.put_slice(text.as_bytes());
    out.put_u8(0);
}

enum BodyError {
    /// The message cannot be trusted to end where its length says (Postgres closes the
    /// connection).
    Fatal(String),
    /// The message is malformed; the session goes on after an ERROR with this SQLSTATE.
    Violation(&'static str, String),
}

fn violation_error(message: &str) -> BodyError {
    BodyError::Violation("08P01", message.to_string())
}

/// The fields of one message body, read with bounds checks.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], BodyError> {
        if self.bytes.len() < count {
            return Err(violation_error("insufficient data left in message"));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, BodyError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, BodyError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn i32(&mut self) -> Result<i32, BodyError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A NUL-terminated string in UTF-8.
    fn string(&mut self) -> Result<&'a str, BodyError> {
        let Some(end) = self.bytes.iter().position(|b| *b == 0) else {
            return Err(violation_error("invalid string in message"));
        };
        let text = self.take(end + 1)?;
        std::str::from_utf8(&text[..end]).map_err(|_| {
            BodyError::Violation(
                "22021",
                "invalid byte sequence for encoding \"UTF8\"".to_string(),
            )
        })
    }

    /// A count of following items (never negative).
    fn count(&mut self) -> Result<usize, BodyError> {
        usize::try_from(self.i16()?)
            .map_err(|_| violation_error("invalid count in message (negative)"))
    }

    /// A format code: 0 (text) or 1 (binary).
    fn format(&mut self) -> Result<i16, BodyError> {
        match self.i16()? {
            code @ (0 | 1) => Ok(code),
            code => Err(BodyError::Violation(
                "22023",
                format!("unsupported format code: {code}"),
            )),
        }
    }

    /// The message must end here: a NUL inside a statement leaves text after the string.
    fn end(self) -> Result<(), BodyError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(violation_error("invalid message format"))
        }
    }
}

fn check_body(kind: u8, body: &[u8]) -> Result<(), BodyError> {
    let mut fields = Fields { bytes: body };
    match kind {
        b'Q' | b'f' => {
            fields.string()?;
        }
        b'P' => {
            fields.string()?;
            fields.string()?;
            let types = fields.count()?;
            fields.take(types.saturating_mul(4))?;
        }
        b'B' => check_bind(&mut fields)?,
        b'E' => {
            fields.string()?;
            fields.i32()?;
        }
        b'D' | b'C' => {
            let target = fields.u8()?;
            if target != b'S' && target != b'P' {
                return Err(violation_error(&format!(
                    "invalid {} message subtype {target}",
                    if kind == b'D' { "DESCRIBE" } else { "CLOSE" }
                )));
            }
            fields.string()?;
        }
        b'S' | b'H' | b'X' | b'c' => {
            if !body.is_empty() {
                return Err(BodyError::Fatal("invalid message format".into()));
            }
        }
        // COPY data is any bytes; password and SASL messages are checked by the
        // authentication handler, which knows which of them it expects.
        _ => return Ok(()),
    }
    fields.end()
}

fn check_bind(fields: &mut Fields<'_>) -> Result<(), BodyError> {
    fields.string()?;
    fields.string()?;
    let formats = fields.count()?;
    for _ in 0..formats {
        fields.format()?;
    }
    let parameters = fields.count()?;
    if formats > 1 && formats != parameters {
        return Err(violation_error(&format!(
            "bind message has {formats} parameter formats but {parameters} parameters"
        )));
    }
    for _ in 0..parameters {
        match fields.i32()? {
            -1 => {}
            length if length >= 0 => {
                fields.take(length as usize)?;
            }
            length => {
                return Err(violation_error(&format!(
                    "invalid parameter length {length}"
                )));
            }
        }
    }
    let results = fields.count()?;
    for _ in 0..results {
        fields.format()?;
    }
    Ok(())
}

/// Whether a password message is a well-formed SASLInitialResponse: the mechanism's name,
/// then the length of the initial data (-1 for none) and exactly that much data.
pub(crate) fn is_sasl_initial_response(body: &[u8]) -> bool {
    let mut fields = Fields { bytes: body };
    let structure = (|| {
        fields.string()?;
        match fields.i32()? {
            -1 => {}
            length if length >= 0 => {
                fields.take(length as usize)?;
            }
            _ => return Err(violation_error("invalid length")),
        }
        Ok::<_, BodyError>(())
    })();
    structure.is_ok() && fields.bytes.is_empty()
}

/// The startup packet's parameters: NUL-terminated names and values in UTF-8, ending with an
/// empty name exactly at the end of the packet.
fn check_startup_parameters(body: &[u8]) -> Result<(), String> {
    let mut fields = Fields { bytes: body };
    loop {
        let name = fields
            .string()
            .map_err(|_| "invalid startup packet layout: expected terminator as last byte")?;
        if name.is_empty() {
            break;
        }
        fields
            .string()
            .map_err(|_| "invalid startup packet layout: expected terminator as last byte")?;
    }
    fields
        .end()
        .map_err(|_| "invalid startup packet layout: expected terminator as last byte".into())
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.checked.is_empty() {
                let count = buf.remaining().min(this.checked.len());
                buf.put_slice(&this.checked[..count]);
                this.checked.advance(count);
                return Poll::Ready(Ok(()));
            }
            if let Some(reason) = this.broken.take() {
                this.eof = true;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    BrokenFrame(reason),
                )));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client closed the connection, possibly in the middle of a message:
                // what is left was never a whole message, so it is dropped.
                this.eof = true;
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.frame();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the guard makes of `input`: the messages it lets through (a violation shown as
    /// `violation(code)`), and how the stream ends.
    fn check(startup_done: bool, input: &[u8], expected: &[&str], ends: &str) {
        let mut guard = Guarded {
            inner: (),
            raw: BytesMut::from(input),
            checked: BytesMut::new(),
            startup: !startup_done,
            broken: None,
            eof: false,
        };
        guard.frame();
        let mut seen = Vec::new();
        let mut out = guard.checked.clone();
        let mut untyped = !startup_done;
        while !out.is_empty() {
            if untyped {
                let length = u32::from_be_bytes(out[0..4].try_into().unwrap()) as usize;
                out.advance(length);
                seen.push("startup".to_string());
                untyped = false;
                continue;
            }
            let kind = out[0] as char;
            let length = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
            let body = out.split_to(length + 1);
            let text = String::from_utf8_lossy(&body[5..]).into_owned();
            let text = text.strip_suffix('\0').unwrap_or(&text);
            seen.push(match violation(text) {
                Some(v) if kind == 'Q' => format!("violation({})", v.code),
                _ => kind.to_string(),
            });
        }
        assert_eq!(seen, expected, "{input:?}");
        let end = match (&guard.broken, guard.raw.is_empty()) {
            (Some(reason), _) => reason.clone(),
            (None, true) => "clean".to_string(),
            (None, false) => "partial".to_string(),
        };
        assert!(end.contains(ends), "{end:?} does not contain {ends:?}");
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn well_formed_messages_pass_unchanged() {
        let bind = [
            &b"\0stmt\0"[..],
            &1i16.to_be_bytes(),
            &1i16.to_be_bytes(),
            &2i16.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &1i32.to_be_bytes(),
            b"7",
            &0i16.to_be_bytes(),
        ]
        .concat();
        let input = concat(&[
            message(b'Q', b"select 1\0"),
            message(
                b'P',
                &[
                    &b"s\0select $1\0"[..],
                    &1i16.to_be_bytes(),
                    &23i32.to_be_bytes(),
                ]
                .concat(),
            ),
            message(b'B', &bind),
            message(b'E', &[&b"\0"[..], &0i32.to_be_bytes()].concat()),
            message(b'D', b"Ss\0"),
            message(b'S', b""),
            message(b'd', b"any\0bytes"),
            message(b'p', b"\x01\x02"),
        ]);
        check(
            true,
            &input,
            &["Q", "P", "B", "E", "D", "S", "d", "p"],
            "clean",
        );
        // A message cut by the end of what was read so far waits for the rest.
        check(
            true,
            &input[..input.len() - 1],
            &["Q", "P", "B", "E", "D", "S", "d"],
            "partial",
        );
    }

    #[test]
    fn malformed_content_becomes_an_error_and_the_next_message_is_read() {
        let sync = message(b'S', b"");
        for (body, kind, code) in [
            (&b"select 1\0garbage\0"[..], b'Q', "08P01"),
            (b"select 1", b'Q', "08P01"),
            (b"\xff\xfe\0", b'Q', "22021"),
            (b"s\0select\0\x00\x05\0\0", b'P', "08P01"),
            (b"\0s\0\xff\xff", b'B', "08P01"),
            (b"\0s\0\0\x01\0\x07\0\0\0\0", b'B', "22023"),
            (b"\0s\0\0\x03\0\0\0\0\0\0\0\x01\0\0\0\0", b'B', "08P01"),
            (b"\0s\0\0\0\0\x01\x7f\xff\xff\xff\0\0", b'B', "08P01"),
            (b"Xs\0", b'D', "08P01"),
            (b"\0", b'E', "08P01"),
        ] {
            let input = concat(&[message(kind, body), sync.clone()]);
            check(true, &input, &[&format!("violation({code})"), "S"], "clean");
        }
    }

    #[test]
    fn broken_frames_end_the_stream() {
        check(true, b"Q\0\0\0\x02", &[], "invalid message length 2");
        check(true, b"Q\x7f\xff\xff\xff", &[], "invalid message length");
        check(
            true,
            &message(b'Z', b""),
            &[],
            "invalid frontend message type 90",
        );
        check(
            true,
            &concat(&[message(b'Q', b"select 1\0"), message(b'S', b"x")]),
            &["Q"],
            "invalid message format",
        );
        check(
            false,
            b"\0\0\0\x04\0\0\0\0",
            &[],
            "invalid length of startup packet",
        );
        check(
            false,
            b"\0\0\0\x0c\0\x02\0\0user",
            &[],
            "unsupported frontend protocol 2.0",
        );
        check(
            false,
            b"\0\0\0\x0d\0\x03\0\0user\0",
            &[],
            "expected terminator",
        );
    }

    #[test]
    fn sasl_initial_responses_are_checked() {
        assert!(is_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03abc"));
        assert!(is_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff"));
        for bad in [
            &b""[..],
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-256\0",
            b"SCRAM-SHA-256\0\0\0",
            b"SCRAM-SHA-256\0\0\0\0\x09abc",
            b"SCRAM-SHA-256\0\0\0\0\x01abc",
            b"SCRAM-SHA-256\0\x80\0\0\0",
        ] {
            assert!(!is_sasl_initial_response(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_startup_packet_opens_the_typed_messages() {
        let mut startup = b"\0\0\0\0\0\x03\0\0user\0admin\0\0".to_vec();
        let length = startup.len() as u32;
        startup[0..4].copy_from_slice(&length.to_be_bytes());
        let input = concat(&[startup, message(b'Q', b"select 1\0")]);
        check(false, &input, &["startup", "Q"], "clean");
    }
}
