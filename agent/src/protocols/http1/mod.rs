//! HTTP/1.x: requests and responses rebuilt from the two byte streams of one connection.
//!
//! An [`Http1Parser`] is fed the [`Chunk`]s and [`Gap`]s of one connection, in the order the
//! traced process moved them, and appends an [`HttpExchange`] (a request, its response, their
//! timings and threads) each time a response completes. Heads (request line or status line and
//! headers) are parsed with `httparse`; bodies are framed by this module's own state machine
//! (`Content-Length`, `chunked` with extensions and trailers, read-until-close) and are counted,
//! never buffered.
//!
//! What it handles:
//! - any split of the byte streams into chunks, down to one byte per chunk;
//! - keep-alive and pipelining: responses pair with requests first in, first out;
//! - `Expect: 100-continue` and other `1xx` interim responses, which are skipped; `HEAD`, `204`
//!   and `304` responses, which have no body; responses delimited by the end of the connection,
//!   finished by [`Http1Parser::on_close`];
//! - bytes the kernel did not capture ([`Gap`]): inside a body they are counted as body bytes
//!   (up to two more right after chunk data are taken as its CRLF); where they hide chunked
//!   framing, the message is kept and the end of its body sought (see "Chunked framing lost"
//!   below); where they hide a header block or a message boundary, the damaged message is
//!   dropped, that direction resynchronizes at the next chunk that starts like a message, and
//!   pairing restarts clean (see "Pairing after damage" below);
//! - bytes that are not HTTP/1.x where a message should start: an error, then the same
//!   resynchronization.
//!
//! What it deliberately does not do:
//! - HTTP/2, including h2c prior knowledge (a connection opening with `PRI * HTTP/2.0` is not
//!   recognized by [`looks_like_request`]);
//! - anything after a protocol switch: a `101 Switching Protocols` response (WebSocket, h2c
//!   upgrade) or a `2xx` answer to `CONNECT` is emitted as an exchange, then every later byte of
//!   the connection is ignored;
//! - decode bodies (no decompression, no trailer values: trailers are skipped);
//! - keep more than bounded pieces of a message: at most [`MAX_KEPT_HEADERS`] headers, names
//!   lower-cased, values cut to [`MAX_HEADER_VALUE_BYTES`], the request-target cut to
//!   [`MAX_TARGET_BYTES`]. A header block larger than [`MAX_HEAD_BYTES`] is an error. Which
//!   headers end up in a span is the span builder's business.
//!
//! # Chunked framing lost
//!
//! The kernel copies a prefix of each syscall and, of a longer one, its last 64 bytes too; the
//! bytes between are a [`Gap`]. A chunked body moved in large syscalls (a client reading a 1 MB
//! response 64 KiB at a time) loses its chunk-size lines that way. Its message is kept, in its
//! place in the pairing, and its direction seeks the end of the body: every later byte counts
//! as body, and the message ends at the first chunk that *ends* with the end of a chunked body
//! (`\r\n0\r\n\r\n`, CRLF only; extensions on the last chunk and trailer fields are recognized
//! within the last 128 bytes seen; right after a gap, `0\r\n\r\n` alone will do).
//! - The message ends at that chunk's time. Its `body_len` is approximate: bytes moved after
//!   the framing was lost are counted whole, chunk-size lines included.
//! - The end must end a chunk: one followed by more bytes in the same chunk is not seen (a
//!   peer waiting for the end sends nothing after it, unless pipelining). Chunk data that
//!   happens to end a chunk the way a body ends ends the body early. A gap inside a trailer
//!   section hides the last-chunk line, and the end is then missed.
//! - The end is taken as missed, and the message dropped with `GapInFraming` as a gap that
//!   hides a message boundary would, when: the direction moves more than [`MAX_SEEK_BYTES`]
//!   without it; a chunk of that direction starts like a message; a request starts while a response is sought
//!   (a client waits for the response); a second final response starts while a request is
//!   sought; the other direction is damaged. At close, a response still sought is unanswered.
//! - A response is sought only when no other request waits behind it, so a response missed
//!   this way can never be taken for its body. A request is sought even when pipelined; the
//!   requests that start behind one whose end was found this way are paired but not emitted
//!   until pairing restarts at a lull (a request hidden in the bytes taken for its body would
//!   shift the pairing, as below).
//!
//! # Pairing after damage
//!
//! Damage drops the requests waiting for responses; the parser counts the responses still owed
//! to requests it no longer holds and discards them when they come. Pairing restarts at a
//! request that starts a chunk at a lull: the response direction moved since the request
//! direction last did, and is between messages.
//! - On a connection that never pipelined, a lull means every earlier request was answered: the
//!   parser forgets what it was owed and pairs again from that request on. Whatever the damage,
//!   it loses the damaged exchange, never pairs wrongly.
//! - On a connection that pipelined (a request started while an earlier one could still be
//!   waiting), a lull also needs the count to say that nothing is owed and nothing waits. Lost
//!   bytes that hide whole messages (a write of which nothing was captured, or several pipelined
//!   messages in one write) can make the count wrong: too high, and the connection stops pairing
//!   until it closes; too low, and a request can be paired with an earlier request's response.
//!   Pipelining is rare, and the parser prefers losing exchanges to mis-pairing them wherever it
//!   can tell.

//!
//! # This folder
//!
//! `mod.rs`: detection and the exchange's types; `parser.rs`: the state machine
//! ([`Http1Parser`]); `framing.rs`: head parsing and chunked bodies; `span.rs`: the span rules
//! (names, attributes, status) with `route.rs` (route inference) and `redact.rs` (what of a URL
//! may leave the host); `tests.rs` and `testdata/`: the parser's tests on recorded captures.

mod framing;
pub mod headers;
mod parser;
pub mod redact;
pub mod route;
pub mod span;

use std::{any::Any, borrow::Cow, sync::Arc};

pub use headers::Headers;
pub use parser::Http1Parser;

use super::{Boxed, Chunk, Direction, Endpoints, Exchange, Options, Protocol, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};

/// HTTP/1.0 and HTTP/1.1, in the [`REGISTRY`](super::REGISTRY).
pub struct Http1;

impl Protocol for Http1 {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        let request_side = Side::sending_requests(chunk.direction);
        if looks_like_request(chunk.bytes) {
            return Some(request_side);
        }
        looks_like_response(chunk.bytes).then_some(match request_side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        })
    }

    fn parser(&self, side: Side, _first: &[u8], _options: &Options) -> Box<dyn StreamParser> {
        Boxed::stream(self.name(), Http1Parser::new(side))
    }
}

impl Exchange for HttpExchange {
    fn side(&self) -> Side {
        self.side
    }

    fn request_start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::http_span(self, endpoints, resource, clock)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn answered(&self) -> bool {
        self.response.is_some()
    }
}

/// Largest header block (start line, headers, final empty line) of one message.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers kept per message; further headers still count for framing but are not kept.
pub const MAX_KEPT_HEADERS: usize = 32;
/// Longest header value kept, in bytes; longer values are cut.
pub const MAX_HEADER_VALUE_BYTES: usize = 512;
/// Longest header name kept, in bytes; headers with longer names are not kept.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Longest request-target kept, in bytes; longer targets are cut.
pub const MAX_TARGET_BYTES: usize = 4096;
/// Requests waiting for their responses on one connection (pipelining depth).
pub const MAX_PENDING_REQUESTS: usize = 16;
/// Bytes (captured or lost) one direction may move while seeking the end of a chunked body whose
/// framing was lost, before the message is given up.
pub const MAX_SEEK_BYTES: u64 = 64 << 20;

/// Headers parsed per message, beyond which the message is an error.
const MAX_PARSED_HEADERS: usize = 1024;
/// Headers parsed with a buffer on the stack before falling back to one on the heap.
const STACK_HEADERS: usize = 64;
/// Longest chunk-size line (size, extensions, CRLF).
const MAX_CHUNK_LINE: u16 = 1024;
/// Largest trailer section of a chunked body.
const MAX_TRAILER_BYTES: u32 = MAX_HEAD_BYTES as u32;
/// A head buffer that grew beyond this is released once its message is parsed.
const HEAD_CAPACITY_KEPT: usize = 2048;
/// Last bytes of a direction kept while seeking the end of a chunked body, so that a last chunk
/// split across chunks is still recognized (the kernel captures the last 64 bytes of a syscall).
const SEEK_CONTEXT: usize = 128;

/// Request methods recognized at the start of a stream: RFC 9110, PATCH, WebDAV and its
/// extensions (DeltaV, CalDAV, binding), `QUERY`, cache `PURGE`, and the SSDP/GENA methods.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"QUERY",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
    b"MKACTIVITY",
    b"MKWORKSPACE",
    b"CHECKOUT",
    b"CHECKIN",
    b"UNCHECKOUT",
    b"VERSION-CONTROL",
    b"BASELINE-CONTROL",
    b"UPDATE",
    b"LABEL",
    b"MERGE",
    b"ORDERPATCH",
    b"MKCALENDAR",
    b"ACL",
    b"BIND",
    b"UNBIND",
    b"REBIND",
    b"LINK",
    b"UNLINK",
    b"PURGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
];

/// True when `bytes` start like an HTTP/1.x request line (`GET /x HTTP/1.1`), possibly cut short.
///
/// The method must be one this module knows (standard, PATCH, WebDAV and common extensions);
/// as far as `bytes` go, the request-target must be visible characters and the version
/// `HTTP/1.0` or `HTTP/1.1`. `b"GE"` is accepted, `b"GET /x HTTP/2.0"` and `b""` are not.
pub fn looks_like_request(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    for method in METHODS {
        if bytes.len() <= method.len() {
            if method.starts_with(bytes) {
                return true;
            }
        } else if bytes.starts_with(method) && bytes.get(method.len()) == Some(&b' ') {
            return request_line_rest_ok(bytes.get(method.len() + 1..).unwrap_or_default());
        }
    }
    false
}

/// Checks what follows `METHOD SP`: a request-target, SP, `HTTP/1.x`, end of line; all optional
/// from the point where the bytes end.
fn request_line_rest_ok(rest: &[u8]) -> bool {
    let Some(&first) = rest.first() else {
        return true;
    };
    if !(first == b'/' || first == b'*' || first == b'[' || first.is_ascii_alphanumeric()) {
        return false;
    }
    let target_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    if !rest.iter().take(target_len).all(|&b| b > b' ' && b != 0x7f) {
        return false;
    }
    match rest.get(target_len + 1..) {
        Some(version) => version_then_eol_ok(version),
        None => true, // cut short inside the target
    }
}

/// `HTTP/1.0` or `HTTP/1.1` followed by CR or LF, as far as `bytes` go.
fn version_then_eol_ok(bytes: &[u8]) -> bool {
    const VERSION: &[u8] = b"HTTP/1.";
    let n = bytes.len().min(VERSION.len());
    if bytes.get(..n) != VERSION.get(..n) {
        return false;
    }
    match bytes.get(VERSION.len()) {
        None => return true,
        Some(b'0' | b'1') => {}
        Some(_) => return false,
    }
    matches!(bytes.get(VERSION.len() + 1), None | Some(b'\r' | b'\n'))
}

/// True when `bytes` start like an HTTP/1.x status line (`HTTP/1.1 200`), possibly cut short.
///
/// `b"HTTP/1."` is accepted; `b"HTTP/2 200"`, `b"HTTP/1.1 OK"` and `b""` are not.
pub fn looks_like_response(bytes: &[u8]) -> bool {
    const VERSION: &[u8] = b"HTTP/1.";
    if bytes.is_empty() {
        return false;
    }
    let n = bytes.len().min(VERSION.len());
    if bytes.get(..n) != VERSION.get(..n) {
        return false;
    }
    // After "HTTP/1.": minor digit, SP, three digits, then SP or end of line.
    for (i, &b) in bytes.iter().enumerate().skip(VERSION.len()).take(6) {
        let ok = match i - VERSION.len() {
            0 => b == b'0' || b == b'1',
            1 => b == b' ',
            2..=4 => b.is_ascii_digit(),
            _ => matches!(b, b' ' | b'\r' | b'\n'),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// One request and the response that answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// Which end of the connection the traced process is.
    pub side: Side,
    pub request: HttpRequest,
    /// The final response; `None` when the connection closed before its head (an unanswered
    /// request: its times end at the close). A response whose head was seen is kept whatever
    /// happened to its body (a client that read the head and closed).
    pub response: Option<HttpResponse>,
    /// Kernel monotonic time of the first chunk of the request.
    pub request_start_ns: u64,
    /// Kernel monotonic time of the last chunk (or gap) of the request, body included.
    pub request_end_ns: u64,
    /// Kernel monotonic time of the first chunk of the final response (interim `1xx` excluded).
    pub response_start_ns: u64,
    /// Kernel monotonic time of the last chunk (or gap) of the response, body included; for a
    /// response delimited by the end of the connection, the time given to
    /// [`Http1Parser::on_close`].
    pub response_end_ns: u64,
    /// Thread that moved the first chunk of the request.
    pub request_tid: u32,
    /// Thread that moved the first chunk of the final response.
    pub response_tid: u32,
}

/// The parts of a request that the parser keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method as sent (`GET`, `PROPFIND`, ...).
    pub method: String,
    /// Raw request-target (`/a?b=c`, `*`, `host:443`, `http://h/p`), cut to [`MAX_TARGET_BYTES`].
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    /// The first [`MAX_KEPT_HEADERS`] headers in order: names lower-cased, values cut to
    /// [`MAX_HEADER_VALUE_BYTES`] (bytes that are not UTF-8 shown as U+FFFD).
    pub headers: Headers,
    /// Body length in bytes, decoded (chunk framing not counted), lost bytes included;
    /// approximate when chunked framing was lost (module docs).
    pub body_len: u64,
}

/// The parts of a response that the parser keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code (`200`, `404`, `101`, ...).
    pub status: u16,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    /// Kept as for [`HttpRequest::headers`].
    pub headers: Headers,
    /// Body length in bytes, decoded (chunk framing not counted), lost bytes included;
    /// approximate when chunked framing was lost (module docs).
    pub body_len: u64,
}

#[cfg(test)]
impl HttpExchange {
    /// The response, for tests of exchanges that have one.
    pub fn response(&self) -> &HttpResponse {
        self.response.as_ref().expect("an answered exchange")
    }
}

impl HttpRequest {
    /// Value of the first kept header with this name (any case).
    pub fn header<'a>(&'a self, name: &'a str) -> Option<Cow<'a, str>> {
        self.headers.get(name)
    }
}

impl HttpResponse {
    /// Value of the first kept header with this name (any case).
    pub fn header<'a>(&'a self, name: &'a str) -> Option<Cow<'a, str>> {
        self.headers.get(name)
    }
}

/// What went wrong with the bytes of a connection. Each error drops at most the message it
/// happened in (and, for pairing, see the module docs); the parser keeps going.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http1Error {
    /// Bytes where a message should start do not look like HTTP/1.x. Reported once: the
    /// direction then skips chunks until one starts like a message.
    #[error("bytes where an HTTP/1.x message should start do not look like one")]
    NotHttp,
    /// `httparse` rejected a header block.
    #[error("malformed message head: {0}")]
    BadHead(httparse::Error),
    /// A header block grew beyond [`MAX_HEAD_BYTES`] without ending.
    #[error("header block larger than {} bytes", MAX_HEAD_BYTES)]
    HeadersTooLarge,
    /// More headers than the parser accepts in one message.
    #[error("more than {} headers in one message", MAX_PARSED_HEADERS)]
    TooManyHeaders,
    /// `Content-Length` is not a number, or two of them differ.
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    /// A request's `Transfer-Encoding` does not end in `chunked`, so its length is unknown.
    #[error("request Transfer-Encoding does not end in chunked")]
    BadTransferEncoding,
    /// Chunked framing (size line, CRLF after data, trailers) is malformed.
    #[error("malformed chunked body")]
    BadChunkEncoding,
    /// Bytes were lost inside a header block.
    #[error("bytes lost inside a header block")]
    GapInHead,
    /// Bytes were lost where the message framing was: past a message's end, or in chunk
    /// framing when the end of the body was then missed (module docs).
    #[error("bytes lost where the message framing was")]
    GapInFraming,
    /// A final response arrived with no request waiting for it; it is dropped.
    #[error("response with no request waiting for it")]
    UnpairedResponse,
    /// More pipelined requests than [`MAX_PENDING_REQUESTS`] wait for responses.
    #[error("more than {} requests waiting for responses", MAX_PENDING_REQUESTS)]
    TooManyPending,
}
