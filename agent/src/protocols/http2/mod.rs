//! HTTP/2 and gRPC: one exchange per stream, from the frames of both directions.
//!
//! [`Http2`] recognizes a connection by the client's preface (`PRI * HTTP/2.0`: the client
//! writes it, the server reads it), by a server's first `SETTINGS` frame (Go servers write it
//! before reading the preface), or, on a connection ztrace saw only mid-way, by a chunk that
//! starts with frames and holds a `HEADERS` frame whose first field is a request or response
//! pseudo-header of the static table. h2c prior knowledge and h2 over TLS (plaintext from the
//! TLS probes) look the same here.
//!
//! [`Http2Parser`] (`parser.rs`) cuts each direction into frames (`frame.rs`: DATA, HEADERS,
//! CONTINUATION, padding, priority, RST_STREAM, GOAWAY, SETTINGS, PING, WINDOW_UPDATE, frames
//! of any size with gaps inside `DATA`), decodes header blocks with its own HPACK decoder
//! (`hpack.rs`, `huffman.rs`) and pairs by stream id, so any interleaving of streams pairs
//! exactly. `span.rs` makes the span: gRPC calls (`content-type: application/grpc...`, or
//! `grpc-status` in the answer) follow the RPC conventions, other requests the HTTP ones with
//! `network.protocol.version` `2`; the attribute names are in one table there.
//!
//! A connection seen mid-way: its HPACK tables were filled before ztrace looked. Entries
//! inserted since decode; references to older ones are unknown — a method reported `_OTHER`, a
//! name without a route, no status — never another entry's text; such exchanges are counted
//! ([`crate::protocols::Parser::take_unknown`], `exchanges_fields_unknown`).
//!
//! A connection upgraded from HTTP/1.1 (`Upgrade: h2c` answered by `101`) is handed over by the
//! HTTP/1 parser ([`Http2Parser::upgraded`]): the upgraded request is stream 1, answered in
//! HTTP/2, and later streams are HTTP/2's.
//!
//! What it deliberately does not do: server pushes (their header blocks only keep the table in step);
//! body contents (gRPC messages are counted, not decoded); header values beyond
//! [`hpack::MAX_TEXT`] bytes and fields beyond [`MAX_KEPT_FIELDS`] per block.

mod frame;
pub mod hpack;
mod huffman;
mod parser;
pub mod span;

use std::{any::Any, sync::Arc};

pub use parser::Http2Parser;

use self::{
    frame::{kind, FrameHeader, HEADER_LEN, PREFACE},
    hpack::{Field, HpackError, Text},
};
use super::{Boxed, Chunk, Endpoints, Exchange, Options, Protocol, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};

/// Header fields kept per header block.
pub const MAX_KEPT_FIELDS: usize = 48;
/// Streams open at once on one connection; requests beyond are counted lost.
pub const MAX_OPEN_STREAMS: usize = 512;

/// HTTP/2 (and gRPC over it), in the [`REGISTRY`](super::REGISTRY).
pub struct Http2;

impl Protocol for Http2 {
    fn name(&self) -> &'static str {
        "http2"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        let b = chunk.bytes;
        let requests_side = Side::sending_requests(chunk.direction);
        let other = |s: Side| match s {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        if b.len() >= 4 && PREFACE.starts_with(b.get(..b.len().min(PREFACE.len()))?) {
            return Some(requests_side);
        }
        if is_initial_settings(b) {
            // A server's SETTINGS before anything else: the one who wrote it is the server.
            return Some(other(requests_side));
        }
        // Mid-way: frames, one of them a header block starting with a pseudo-header.
        if !frame::plausible_run(b) {
            return None;
        }
        let mut at = 0usize;
        while let Some(head) = b.get(at..at + HEADER_LEN).and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok()) {
            let h = FrameHeader::parse(head);
            let payload_start = at + HEADER_LEN;
            at = payload_start + h.len as usize;
            if h.kind != kind::HEADERS {
                continue;
            }
            let mut p = b.get(payload_start..at.min(b.len()))?;
            if h.has(frame::flag::PADDED) {
                p = p.get(1..)?;
            }
            if h.has(frame::flag::PRIORITY) {
                p = p.get(5..)?;
            }
            return match hpack::first_field_is_request(p)? {
                true => Some(requests_side),
                false => Some(other(requests_side)),
            };
        }
        None
    }

    fn parser(&self, side: Side, first: &[u8], _options: &Options) -> Box<dyn StreamParser> {
        Boxed::stream(self.name(), Http2Parser::new(side, first))
    }
}

/// True when `bytes` start with a `SETTINGS` frame (not an acknowledgement) on stream 0: the
/// first frame each peer sends.
fn is_initial_settings(bytes: &[u8]) -> bool {
    let Some(head) = bytes.get(..HEADER_LEN).and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok()) else {
        return false;
    };
    let h = FrameHeader::parse(head);
    h.kind == kind::SETTINGS && h.flags == 0 && h.stream == 0 && h.len.is_multiple_of(6) && h.len <= 6 * 16
}

/// The fields of one header block, as decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The first [`MAX_KEPT_FIELDS`] fields in order.
    pub fields: Vec<Field>,
    /// Fields that referred to HPACK entries ztrace never saw (name or value unknown).
    pub unknown: usize,
}

impl Head {
    /// The value of the first field named `name` whose value is known.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|f| f.name.known() == Some(name)).and_then(|f| f.value.known())
    }

    /// Known (name, value) pairs that are not pseudo-headers.
    pub fn regular(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().filter_map(|f| match (&f.name, &f.value) {
            (Text::Known(n), Text::Known(v)) if !n.starts_with(':') => Some((&**n, &**v)),
            _ => None,
        })
    }
}

/// One stream: a request and what answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http2Exchange {
    pub side: Side,
    pub stream_id: u32,
    pub request: Head,
    /// The final response head (interim `1xx` skipped); `None` when none came.
    pub response: Option<Head>,
    /// Trailers (gRPC's status is there).
    pub trailers: Option<Head>,
    /// `DATA` payload bytes, padding excluded.
    pub request_body_len: u64,
    pub response_body_len: u64,
    /// Kernel monotonic times: the request's `HEADERS` first byte, its last frame, the
    /// response's `HEADERS`, and its end (`END_STREAM`, a reset, or the close).
    pub request_start_ns: u64,
    pub request_end_ns: u64,
    pub response_start_ns: u64,
    pub response_end_ns: u64,
    pub request_tid: u32,
    pub response_tid: u32,
    /// The stream ended by `RST_STREAM` (its error code) or was refused by a `GOAWAY`.
    pub reset: Option<u32>,
    /// Stream 1 of a connection upgraded from HTTP/1.1: its request was an HTTP/1.1 request,
    /// which started as requests without streams do (it pairs as they do).
    pub upgraded: bool,
}

impl Http2Exchange {
    /// Fields of its header blocks that referred to HPACK entries ztrace never saw.
    pub fn unknown_fields(&self) -> usize {
        self.request.unknown
            + self.response.as_ref().map_or(0, |h| h.unknown)
            + self.trailers.as_ref().map_or(0, |h| h.unknown)
    }
}

impl Exchange for Http2Exchange {
    fn side(&self) -> Side {
        self.side
    }

    fn request_start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::span(self, endpoints, resource, clock)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn answered(&self) -> bool {
        self.response.is_some() || self.reset.is_some()
    }

    fn stream(&self) -> Option<u64> {
        (!self.upgraded).then_some(u64::from(self.stream_id))
    }
}

/// What went wrong with the bytes of an HTTP/2 connection. Each loses at most the header block
/// it happened in (and what later blocks refer to in it); the parser goes on.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2Error {
    #[error("frame payload shorter than its flags say")]
    BadFrame,
    #[error("header block cut by lost bytes or frames")]
    BrokenHeaderBlock,
    #[error("HPACK: {0}")]
    Hpack(HpackError),
    #[error("bytes lost across frame boundaries")]
    LostFraming,
}

#[cfg(test)]
mod tests;
