//! Protocols: one folder each (`http1/`, `http2/`, `redis/`, `memcached/`, `nats/`, `amqp/`, `postgres/`), behind two traits, listed once in
//! [`REGISTRY`].
//!
//! A protocol folder holds everything that protocol is: how its first bytes are recognized
//! ([`Protocol::detect`]), its parser ([`Parser`]: a state machine over the byte streams of one
//! connection), its finished exchange and the rules that make a span of it ([`Exchange`]), its
//! tests and its recorded captures (`testdata/`). The connection table (`conn/`) holds parsers as
//! [`StreamParser`]s and never names a protocol.
//!
//! Parsers never do I/O, never log per event and never panic on bad bytes: malformed input is an
//! error value that the caller counts. They see the bytes of one connection in the order the
//! process moved them, as [`Chunk`]s, plus [`Gap`]s where the kernel moved more bytes than it
//! captured.
//!
//! This module deliberately knows nothing of processes, connections' identity or sinks: an
//! exchange becomes a span from its own fields, the connection's [`Endpoints`] and the
//! process's [`Resource`].

#[cfg(test)]
pub(crate) mod capture;
#[doc(hidden)]
pub mod fuzz;
pub mod lines;

use std::{any::Any, fmt, net::SocketAddr, sync::Arc};

pub use ztrace_common::Direction;

use crate::{
    spans::{clock::Clock, Attribute, Resource, Span, StatusCode},
    trace::context::TraceParent,
};

/// Declares each protocol's folder and lists its [`Protocol`] in [`REGISTRY`]: one line a
/// protocol.
macro_rules! registry {
    ($($folder:ident :: $protocol:ident),* $(,)?) => {
        $(pub mod $folder;)*

        /// Every protocol ztrace parses, in detection order: the first whose
        /// [`Protocol::detect`] accepts a connection's first bytes parses it. Text protocols with
        /// an unmistakable start come before binary ones, so a binary check never sees text.
        pub static REGISTRY: &[&dyn Protocol] = &[$(&$folder::$protocol),*];
    };
}

registry! {
    http1::Http1,
    http2::Http2,
    redis::Redis,
    memcached::Memcached,
    nats::Nats,
    amqp::Amqp,
    postgres::Postgres,
}

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

impl Side {
    /// The side of the process that moved a protocol's first message in `direction`, for a
    /// message only a client sends (a request).
    pub fn sending_requests(direction: Direction) -> Side {
        match direction {
            Direction::Egress => Side::Client,
            Direction::Ingress => Side::Server,
        }
    }

    /// The direction requests flow in, seen from this side.
    pub fn request_direction(self) -> Direction {
        match self {
            Side::Client => Direction::Egress,
            Side::Server => Direction::Ingress,
        }
    }
}

/// A request of a multiplexed protocol opened its own stream (an HTTP/2 stream's request
/// `HEADERS`): trace assembly gives it its ids at that moment, and pairs the two ends of a
/// connection by the stream rather than by the order of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOpened {
    /// The stream's id: the same on both ends of the connection.
    pub stream: u64,
    /// Kernel monotonic time of the request's first bytes.
    pub ts_ns: u64,
    /// Trace context among the request's fields (a W3C `traceparent` header).
    pub traceparent: Option<TraceParent>,
}

/// What the agent's settings tell the parsers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Database protocols keep the values bound to each execution (`--db-query-parameters`).
    pub db_query_parameters: bool,
}

/// The connection an exchange travelled on, as the traced process sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// The traced process's own address.
    pub local: SocketAddr,
    /// The peer's address (IPv4-mapped IPv6 already shown as IPv4).
    pub remote: SocketAddr,
    /// The bytes were read as plaintext at a TLS library.
    pub tls: bool,
}

/// A parser met bytes it could not read. The message it was in is lost; the parser goes on.
#[derive(Debug, thiserror::Error)]
#[error("{protocol}: {source}")]
pub struct ParseError {
    pub protocol: &'static str,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One protocol: how a connection of it is recognized, and a parser for it.
pub trait Protocol: Sync {
    /// Its name in logs.
    fn name(&self) -> &'static str;

    /// The side the traced process is on, when the first bytes seen on a connection (in either
    /// direction) start a conversation of this protocol.
    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side>;

    /// A parser for a connection this protocol detected; `first` are the bytes it detected.
    fn parser(&self, side: Side, first: &[u8], options: &Options) -> Box<dyn StreamParser>;
}

/// A protocol's parser for one connection: the typed contract each protocol implements.
pub trait Parser: Send + 'static {
    type Exchange: Exchange;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Which end of the connection the traced process is.
    fn side(&self) -> Side;

    /// Bytes moved by one syscall. Exchanges completed by them are appended to `out`, also when
    /// an error is returned.
    fn on_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<Self::Exchange>,
    ) -> Result<(), Self::Error>;

    /// Bytes that moved but were not captured.
    fn on_gap(&mut self, gap: &Gap, out: &mut Vec<Self::Exchange>) -> Result<(), Self::Error>;

    /// The connection closed at `ts_ns`. Every request still waiting is appended as an exchange:
    /// those it completes (a response delimited by the close, one whose head was seen and whose
    /// body was cut short), and the requests left without an answer, as exchanges whose
    /// [`Exchange::answered`] is false, ending at `ts_ns`. Returns how many of those were
    /// unanswered. An unanswered request is a span, never a hole in a trace: its children (the
    /// calls a server made while serving it) and its peer (the server span of a client's
    /// request) already named it as their parent.
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Self::Exchange>) -> usize;

    /// Requests seen since the last call that will never be an exchange, because damage (lost
    /// bytes, unpairable answers) dropped them. The connection table counts them
    /// (`exchanges_lost`).
    fn take_lost(&mut self) -> u64 {
        0
    }

    /// Exchanges handed out since the last call with header fields the parser could not read
    /// back (HTTP/2 fields referring to HPACK entries inserted before ztrace saw the
    /// connection). The connection table counts them (`exchanges_fields_unknown`).
    fn take_unknown(&mut self) -> u64 {
        0
    }

    /// The connection turned into something this parser does not read (PostgreSQL switching to
    /// TLS): its later bytes are ignored.
    fn stopped(&self) -> bool {
        false
    }

    /// Trace context among the first bytes of a request (an HTTP `traceparent` header).
    fn trace_context(&self, _request_bytes: &[u8]) -> Option<TraceParent> {
        None
    }

    /// Requests travel on streams of their own, interleaved (HTTP/2): a request starts when
    /// [`Parser::take_opened`] says so, not at the first bytes after an answer, and its
    /// exchange names its stream ([`Exchange::stream`]).
    fn multiplexed(&self) -> bool {
        false
    }

    /// Requests get no answer (publishing to NATS is fire and forget): every write in the
    /// request direction starts a request, not only the first after bytes in the other one.
    fn unanswered(&self) -> bool {
        false
    }

    /// Streams whose request the last bytes opened, in order (multiplexed protocols only).
    fn take_opened(&mut self, _out: &mut Vec<StreamOpened>) {}

    /// The connection switched, in the last bytes, to a protocol this parser hands it over to
    /// (HTTP/1.1 `Upgrade: h2c` → HTTP/2): the parser that reads it from now on, and the bytes
    /// of the last chunk after the switch (that chunk's direction), which that parser has not
    /// read yet.
    fn take_successor(&mut self) -> Option<(Box<dyn StreamParser>, Vec<u8>)> {
        None
    }
}

/// A finished exchange (a request and its answer) and the rules that make a span of it.
pub trait Exchange: fmt::Debug + Send + 'static {
    /// Which end of the connection the traced process is.
    fn side(&self) -> Side;

    /// Kernel monotonic time of the request's first bytes.
    fn request_start_ns(&self) -> u64;

    /// The span of this exchange, following the protocol's semantic conventions. Trace ids are
    /// fresh (or from the request's own trace context); `trace/` links them afterwards.
    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span;

    /// For tests and tools that look at one protocol's exchanges.
    fn as_any(&self) -> &dyn Any;

    /// The stream the exchange travelled on, for a multiplexed protocol ([`Parser::multiplexed`]):
    /// both ends of a connection pair their exchanges by it.
    fn stream(&self) -> Option<u64> {
        None
    }

    /// For a message delivered to the traced process (a CONSUMER span): the thread that read
    /// it. Trace assembly takes the calls that thread makes next as the message's processing
    /// (its children, `ztrace.link` = `thread`).
    fn consumer_thread(&self) -> Option<u32> {
        None
    }

    /// False when the connection closed before any answer to the request (see
    /// [`Parser::on_close`]); the exchange then ends at the close and carries nothing of an
    /// answer.
    fn answered(&self) -> bool {
        true
    }

    /// The span of this exchange: [`Exchange::to_span`], and for an unanswered request the
    /// marks every protocol's unanswered span has ([`mark_unanswered`]). What the pipeline calls.
    fn span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        let mut span = self.to_span(endpoints, resource, clock);
        if !self.answered() {
            mark_unanswered(&mut span, self.side());
        }
        span
    }
}

/// `error.type` of a SERVER span whose request got no answer before the connection closed: the
/// client went away (closed or reset the connection: a timeout, a cancelled call) and the server
/// gave up, or could not write the answer. (A server that closes a connection without answering
/// for reasons of its own looks the same.)
pub const CLIENT_CLOSED: &str = "client_closed";
/// `error.type` of a CLIENT span whose request got no answer before the client closed the
/// connection: it gave up waiting (a timeout, a cancelled call), or the server closed first.
pub const NO_RESPONSE: &str = "no_response";

/// Marks the span of an unanswered request, whatever its protocol: error status, `error.type`
/// [`CLIENT_CLOSED`] (server side) or [`NO_RESPONSE`] (client side), replacing any other.
pub fn mark_unanswered(span: &mut Span, side: Side) {
    let (error_type, message) = match side {
        Side::Server => (
            CLIENT_CLOSED,
            "the connection closed before the response was sent",
        ),
        Side::Client => (
            NO_RESPONSE,
            "the connection closed before a response arrived",
        ),
    };
    span.status = StatusCode::Error;
    span.status_message = Some(message.to_owned());
    span.attributes.retain(|a| a.key != "error.type");
    span.attributes
        .push(Attribute::new("error.type", error_type));
}

/// Finished exchanges of any protocol, as parsers hand them to the connection table.
pub type Exchanges = Vec<Box<dyn Exchange>>;

/// A parser as the connection table holds it, whatever its protocol.
pub trait StreamParser: Send {
    /// Which end of the connection the traced process is.
    fn side(&self) -> Side;

    /// One data event: the captured prefix (`chunk`), then `missing` bytes not captured, then
    /// the captured `tail`. Finished exchanges are appended to `out`; the first error met is
    /// returned (every part is fed regardless).
    fn on_data(
        &mut self,
        chunk: &Chunk<'_>,
        missing: u64,
        tail: &[u8],
        out: &mut Exchanges,
    ) -> Result<(), ParseError>;

    /// See [`Parser::on_close`].
    fn on_close(&mut self, ts_ns: u64, out: &mut Exchanges) -> usize;

    /// See [`Parser::take_lost`].
    fn take_lost(&mut self) -> u64;

    /// See [`Parser::take_unknown`].
    fn take_unknown(&mut self) -> u64;

    /// See [`Parser::stopped`].
    fn stopped(&self) -> bool;

    /// See [`Parser::trace_context`].
    fn trace_context(&self, request_bytes: &[u8]) -> Option<TraceParent>;

    /// See [`Parser::multiplexed`].
    fn multiplexed(&self) -> bool;

    /// See [`Parser::unanswered`].
    fn unanswered(&self) -> bool;

    /// See [`Parser::take_opened`].
    fn take_opened(&mut self, out: &mut Vec<StreamOpened>);

    /// See [`Parser::take_successor`].
    fn take_successor(&mut self) -> Option<(Box<dyn StreamParser>, Vec<u8>)>;
}

/// A typed [`Parser`] as a [`StreamParser`]: its exchanges are collected, then boxed.
pub struct Boxed<P: Parser> {
    protocol: &'static str,
    parser: P,
    scratch: Vec<P::Exchange>,
}

impl<P: Parser> Boxed<P> {
    /// `parser` of `protocol`, for the connection table.
    pub fn stream(protocol: &'static str, parser: P) -> Box<dyn StreamParser> {
        Box::new(Boxed {
            protocol,
            parser,
            scratch: Vec::new(),
        })
    }

    fn hand_over(&mut self, out: &mut Exchanges) {
        out.extend(
            self.scratch
                .drain(..)
                .map(|e| Box::new(e) as Box<dyn Exchange>),
        );
    }
}

impl<P: Parser> StreamParser for Boxed<P> {
    fn side(&self) -> Side {
        self.parser.side()
    }

    fn on_data(
        &mut self,
        chunk: &Chunk<'_>,
        missing: u64,
        tail: &[u8],
        out: &mut Exchanges,
    ) -> Result<(), ParseError> {
        let mut first = None;
        if !chunk.bytes.is_empty() {
            first = self.parser.on_chunk(chunk, &mut self.scratch).err();
        }
        if missing > 0 {
            let gap = Gap {
                direction: chunk.direction,
                ts_ns: chunk.ts_ns,
                len: missing,
            };
            let e = self.parser.on_gap(&gap, &mut self.scratch).err();
            first = first.or(e);
        }
        if !tail.is_empty() {
            let e = self
                .parser
                .on_chunk(
                    &Chunk {
                        bytes: tail,
                        ..*chunk
                    },
                    &mut self.scratch,
                )
                .err();
            first = first.or(e);
        }
        self.hand_over(out);
        match first {
            None => Ok(()),
            Some(e) => Err(ParseError {
                protocol: self.protocol,
                source: Box::new(e),
            }),
        }
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Exchanges) -> usize {
        let unanswered = self.parser.on_close(ts_ns, &mut self.scratch);
        self.hand_over(out);
        unanswered
    }

    fn take_lost(&mut self) -> u64 {
        self.parser.take_lost()
    }

    fn take_unknown(&mut self) -> u64 {
        self.parser.take_unknown()
    }

    fn stopped(&self) -> bool {
        self.parser.stopped()
    }

    fn trace_context(&self, request_bytes: &[u8]) -> Option<TraceParent> {
        self.parser.trace_context(request_bytes)
    }

    fn multiplexed(&self) -> bool {
        self.parser.multiplexed()
    }

    fn unanswered(&self) -> bool {
        self.parser.unanswered()
    }

    fn take_opened(&mut self, out: &mut Vec<StreamOpened>) {
        self.parser.take_opened(out);
    }

    fn take_successor(&mut self) -> Option<(Box<dyn StreamParser>, Vec<u8>)> {
        self.parser.take_successor()
    }
}

/// The parser of the first protocol in [`REGISTRY`] that recognizes `chunk`, the first bytes
/// seen on a connection; `None` when none does.
pub fn detect(chunk: &Chunk<'_>, options: &Options) -> Option<Box<dyn StreamParser>> {
    REGISTRY
        .iter()
        .find_map(|p| Some(p.parser(p.detect(chunk)?, chunk.bytes, options)))
}
