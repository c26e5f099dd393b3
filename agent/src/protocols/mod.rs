//! Protocol parsers: pure functions and state machines over the byte streams of one connection.
//!
//! Parsers never do I/O, never log per event and never panic on bad bytes: malformed input is an
//! error value that the caller counts. They see the bytes of one connection in the order the
//! process moved them, as [`Chunk`]s, plus [`Gap`]s where the kernel moved more bytes than it
//! captured. What they produce (an exchange: a request and its response, with timings) is turned
//! into spans by `spans/`.

pub mod http1;
pub mod postgres;

pub use ztrace_common::Direction;

/// Bytes moved by one syscall (or one iovec segment of it) on a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Relative to the traced process: `Egress` = it wrote the bytes.
    pub direction: Direction,
    /// Kernel monotonic time when the syscall returned.
    pub ts_ns: u64,
    /// Thread that moved the bytes.
    pub tid: u32,
    pub bytes: &'a [u8],
}

/// Bytes that moved but were not captured (beyond the capture prefix).
#[derive(Clone, Copy, Debug)]
pub struct Gap {
    pub direction: Direction,
    pub ts_ns: u64,
    pub len: u64,
}

/// Which end of the connection the traced process is, as shown by the protocol itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// It sends requests (egress requests).
    Client,
    /// It receives requests (ingress requests).
    Server,
}

/// Application protocols ztrace recognizes on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// PostgreSQL protocol v3; `from_startup` when the first bytes were the startup packet.
    Postgres { from_startup: bool },
}

/// Recognizes the protocol of a connection from the first bytes seen in one direction.
///
/// Returns `None` when the bytes match no known protocol (the connection is then ignored, and
/// counted), and the side the traced process is on when the bytes say it.
pub fn detect(chunk: &Chunk<'_>) -> Option<(Protocol, Side)> {
    if http1::looks_like_request(chunk.bytes) {
        let side = match chunk.direction {
            Direction::Egress => Side::Client,
            Direction::Ingress => Side::Server,
        };
        return Some((Protocol::Http1, side));
    }
    if http1::looks_like_response(chunk.bytes) {
        let side = match chunk.direction {
            Direction::Egress => Side::Server,
            Direction::Ingress => Side::Client,
        };
        return Some((Protocol::Http1, side));
    }
    // After HTTP: a Postgres client message is binary and never a request line, but checking
    // HTTP first keeps a text protocol from ever reaching these checks.
    let client_writes = chunk.direction == Direction::Egress;
    let frontend_side = if client_writes { Side::Client } else { Side::Server };
    if postgres::looks_like_startup(chunk.bytes) {
        return Some((Protocol::Postgres { from_startup: true }, frontend_side));
    }
    if postgres::looks_like_frontend_message(chunk.bytes) {
        return Some((Protocol::Postgres { from_startup: false }, frontend_side));
    }
    None
}
