//! PostgreSQL frontend/backend protocol v3: executed statements rebuilt from the two byte streams
//! of one connection.
//!
//! A [`PgParser`] is fed the [`Chunk`]s and [`Gap`]s of one connection, in the order the traced
//! process moved them, and appends a [`PgExchange`] each time the server finishes answering one
//! executed statement. The framing (a type byte and a big-endian `i32` length that counts itself;
//! no type byte on the startup packet) is this module's own, so messages may be split across
//! chunks at any byte or several may share one chunk.
//!
//! What it handles:
//! - the startup packet (`user`, `database`, `application_name` kept; nothing else), and the
//!   `SSLRequest` / `GSSENCRequest` answers: `N` goes on in plain text, `S` or `G` means the rest
//!   of the connection is encrypted, and the parser stops ([`PgParser::encrypted`]); a
//!   `CancelRequest` (its own short connection) produces nothing;
//! - authentication (`R` from the server, `p` from the client): skipped without keeping a byte,
//!   so passwords and SASL data never leave the framing layer;
//! - simple query (`Q`): **one exchange per query string**, even when the string holds several
//!   statements (`SELECT 1; SELECT 2`): the string is what the application sent in one call,
//!   its statements run as one implicit transaction, and an error stops the rest. The exchange
//!   ends at `ReadyForQuery`, counts the statements that completed and sums their rows;
//! - extended query (`Parse`/`Bind`/`Describe`/`Execute`/`Sync`/`Close`), named and unnamed
//!   statements and portals, and pipelines of many `Execute` before one `Sync`: **one exchange per
//!   `Execute`**, carrying the SQL of the statement bound to its portal, however long ago it was
//!   parsed (at most [`MAX_STATEMENTS`] statements and [`MAX_PORTALS`] portals are remembered per
//!   connection). `Bind` parameter values are read only when asked for
//!   ([`PgParser::keep_parameters`], off by default: they are often personal data), each cut to
//!   [`MAX_PARAMETER_BYTES`], at most [`MAX_PARAMETERS`] per execution;
//! - results: `CommandComplete` tags (command and row count), `DataRow`s counted, never read,
//!   `EmptyQueryResponse`, `PortalSuspended`, and `ErrorResponse` (SQLSTATE and message). After an
//!   error the server skips to the next `Sync`: `Execute`s it skipped produce nothing. A `Parse`
//!   the server rejects is an exchange of its own (with its SQL and the error): drivers that
//!   prepare before they bind (lib/pq, JDBC) would otherwise show no span for a failing statement;
//! - `COPY` in and out (the data is counted as bytes, the `COPY n` tag gives the rows), notices,
//!   notifications and parameter status messages, which are skipped;
//! - bytes the kernel did not capture ([`Gap`]): inside a message (a large `DataRow` or
//!   `CopyData`) they are skipped using its length. A gap that hides a message boundary loses the
//!   framing of that direction; the server direction finds it again at the end of a later chunk
//!   that ends with a well-formed run of messages ending in `ReadyForQuery` (the kernel captures
//!   the last 64 bytes of each syscall, where `CommandComplete` and `ReadyForQuery` usually are),
//!   the client direction at the next chunk that starts like a message or ends with a run of
//!   messages ending in `Sync`. A `Query` or `Parse` whose end a gap hides (SQL longer than the
//!   capture) is kept, its SQL cut: with the `Bind`/`Execute`/`Sync` in the kernel's copy of the
//!   end of the write, the execution still becomes an exchange.
//!
//! What it deliberately does not do: decode values (row contents, `COPY` data; `Bind`
//! parameters unless asked), keep more than [`MAX_SQL_BYTES`] of a query, follow a connection after it switched to
//! TLS (the TLS plaintext, once captured, is fed to a new parser), or protocol 2.
//!
//! # This folder
//!
//! `mod.rs`: the parser and its exchange; `framing.rs`: where messages start (detection, finding
//! the framing again); `message.rs`: message bodies (bound values, command
//! tags, errors); `span.rs`: the span rules with `sql.rs` (literal-free SQL, operation and
//! table); `tests.rs` and `testdata/`: the parser's tests on recorded sessions.

mod framing;
mod message;
pub mod span;
pub mod sql;


use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

pub use framing::{looks_like_frontend_message, looks_like_startup};
use framing::resync_offset;
use message::*;

use super::{Boxed, Chunk, Direction, Endpoints, Gap, Options, Parser, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};

/// Longest query text kept, in bytes; longer queries are cut.
pub const MAX_SQL_BYTES: usize = 4096;
/// Prepared statements remembered per connection (drivers cache a few hundred: pgx 512); beyond
/// that the least recently used is forgotten (its executions then carry no SQL).
pub const MAX_STATEMENTS: usize = 512;
/// Bound portals remembered per connection.
pub const MAX_PORTALS: usize = 64;
/// Statements executed and not yet answered on one connection (pipelining depth).
pub const MAX_PENDING: usize = 256;
/// Longest error message kept, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 512;
/// Bind parameters kept per execution (when parameters are kept at all).
pub const MAX_PARAMETERS: usize = 32;
/// Longest kept parameter value, in bytes (binary values: bytes before hex encoding).
pub const MAX_PARAMETER_BYTES: usize = 128;

/// The values bound to a portal, in order: `None` for SQL `NULL`. Text-format values as sent;
/// binary-format values decoded when their type is known (from the `Parse` or from the server's
/// `ParameterDescription`) and is a boolean, integer, float, text or uuid type, else as `\x` and
/// lower-case hex; either cut to [`MAX_PARAMETER_BYTES`] with a trailing `…`.
pub type PgParameters = Arc<[Option<String>]>;

/// Largest startup packet accepted (the server's own limit is 10000).
const MAX_STARTUP_LEN: u32 = 10_000;
/// Largest message length taken as plausible when looking for message boundaries.
const MAX_SANE_LEN: u32 = 1 << 30;
/// Bytes of a message body kept for parsing: enough for the SQL of `Query`/`Parse`.
const MAX_KEPT_BODY: usize = MAX_SQL_BYTES + 512;
/// Bytes at the end of a chunk searched for a message boundary after framing was lost.
const RESYNC_WINDOW: usize = 512;
/// A body buffer that grew beyond this is released once its message is parsed.
const BODY_CAPACITY_KEPT: usize = 512;
/// Longest kept value of a startup parameter.
const MAX_PARAM_LEN: usize = 256;

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Message types a client sends after startup.
const FRONTEND_TYPES: &[u8] = b"QPBEDCSHXFdcfp";
/// Message types a server sends.
const BACKEND_TYPES: &[u8] = b"RSKZTDCEINnst123GHWdcAvV";

/// What the client said at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgSession {
    pub user: Option<String>,
    /// The `database` parameter; the server defaults it to the user name.
    pub database: Option<String>,
    pub application_name: Option<String>,
}

impl PgSession {
    /// The database the connection uses, as the server resolves it.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref().filter(|d| !d.is_empty()).or(self.user.as_deref())
    }
}

/// How the statement was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgQueryKind {
    /// A `Query` message: one string, possibly several statements.
    Simple,
    /// An `Execute` of a portal bound to a parsed statement.
    Extended,
}

/// An `ErrorResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    /// SQLSTATE (`42P01`, ...).
    pub code: String,
    /// `S` field: `ERROR`, `FATAL`, `PANIC`.
    pub severity: String,
    /// Primary message, cut to [`MAX_ERROR_MESSAGE`].
    pub message: String,
}

/// One executed statement (or simple-query string) and how the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgExchange {
    /// Which end of the connection the traced process is.
    pub side: Side,
    pub kind: PgQueryKind,
    /// The SQL as sent, cut to [`MAX_SQL_BYTES`] (bytes that are not UTF-8 shown as U+FFFD);
    /// `None` for an `Execute` of a statement parsed before the parser saw the connection.
    pub query: Option<Arc<str>>,
    /// The name of the prepared statement (`""` = unnamed), for extended queries.
    pub statement: Option<Arc<str>>,
    /// The `Bind` parameter values of an extended query, when the parser keeps them.
    pub parameters: Option<PgParameters>,
    pub session: Arc<PgSession>,
    /// Command of the first `CommandComplete` tag (`SELECT`, `INSERT`, ...).
    pub command: Option<String>,
    /// Rows from the `CommandComplete` tags (selected, inserted, updated, deleted, copied, ...),
    /// summed over the statements of a simple query.
    pub rows: Option<u64>,
    /// `DataRow` messages received.
    pub data_rows: u64,
    /// Statements that completed (`CommandComplete` or `EmptyQueryResponse`).
    pub statements: u32,
    /// The execution stopped at `max_rows` (`PortalSuspended`).
    pub suspended: bool,
    pub error: Option<PgError>,
    /// False when the connection closed before the server finished answering (an unanswered
    /// statement: its time ends at the close, rows and status are what was seen).
    pub answered: bool,
    /// Kernel monotonic time of the first chunk of the request (for an `Execute`, of the first
    /// message since the previous `Execute`: its `Parse`/`Bind`).
    pub request_start_ns: u64,
    /// Kernel monotonic time of the chunk that completed the answer.
    pub response_end_ns: u64,
    pub request_tid: u32,
    pub response_tid: u32,
}

/// Why bytes could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PgParseError {
    #[error("malformed postgres message (type {0:#04x})")]
    Malformed(u8),
    #[error("bytes not captured hid a postgres message boundary")]
    GapInFraming,
}

/// Which stream of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Frontend,
    Backend,
}

#[derive(Debug)]
enum Framing {
    /// Collecting the header: `have` bytes of `len` needed (5 for a typed message, 4 for the
    /// length of an untyped startup packet).
    Header { buf: [u8; 5], have: u8 },
    /// Inside a message body.
    Body { typ: u8, remaining: u32, keep: bool, lost: bool },
    /// Waiting for the one-byte answer to an `SSLRequest` / `GSSENCRequest`.
    EncryptionAnswer,
    /// A gap hid a message boundary.
    Lost,
}

/// One direction's framing state.
#[derive(Debug)]
struct Reader {
    stream: Stream,
    framing: Framing,
    /// The next message has no type byte (startup packet).
    untyped_next: bool,
    body: Vec<u8>,
}

/// A message of one direction, framed; its body is the kept part only.
struct Message<'a> {
    /// `0` for an untyped startup packet.
    typ: u8,
    body: &'a [u8],
}

impl Reader {
    fn new(stream: Stream, untyped_next: bool) -> Self {
        Reader { stream, framing: Framing::Header { buf: [0; 5], have: 0 }, untyped_next, body: Vec::new() }
    }

    fn header_len(&self) -> u8 {
        if self.untyped_next {
            4
        } else {
            5
        }
    }

    fn keeps(&self, typ: u8) -> bool {
        match self.stream {
            // Never `p` (passwords, SASL) nor `d` (COPY data); `B` values are read only when
            // parameters are kept.
            Stream::Frontend => matches!(typ, 0 | b'Q' | b'P' | b'B' | b'E' | b'C' | b'D'),
            Stream::Backend => matches!(typ, b'C' | b'E' | b'Z' | b't'),
        }
    }
}

/// A statement sent and not yet answered.
#[derive(Debug)]
struct Pending {
    kind: PgQueryKind,
    /// A `Parse`: it leaves silently at `ParseComplete`, and becomes the exchange if the server
    /// rejects it (a statement that fails to prepare is never executed).
    prepare: bool,
    query: Option<Arc<str>>,
    statement: Option<Arc<str>>,
    parameters: Option<PgParameters>,
    /// Number of `Sync`/`Query` (each answered by one `ReadyForQuery`) sent before this one.
    batch: u64,
    start_ns: u64,
    tid: u32,
    command: Option<String>,
    rows: Option<u64>,
    data_rows: u64,
    statements: u32,
    error: Option<PgError>,
}

/// What a statement or portal name stands for.
#[derive(Clone, Debug, Default)]
struct Named {
    sql: Option<Arc<str>>,
    /// For a portal, the statement it was bound to.
    statement: Option<Arc<str>>,
    /// For a portal, the values bound to it (when kept).
    parameters: Option<PgParameters>,
    /// For a statement, the type OIDs of its parameters (when parameters are kept and known).
    types: Option<Arc<[u32]>>,
}

/// A bounded name → [`Named`] map that forgets the least recently used name when full.
#[derive(Debug)]
struct Names {
    map: HashMap<Arc<str>, (Named, u64)>,
    next: u64,
    max: usize,
}

impl Names {
    fn new(max: usize) -> Self {
        Names { map: HashMap::new(), next: 0, max }
    }

    fn insert(&mut self, name: Arc<str>, named: Named) {
        if self.map.len() >= self.max && !self.map.contains_key(&name) {
            if let Some(oldest) = self.map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| k.clone()) {
                self.map.remove(&oldest);
            }
        }
        self.next += 1;
        self.map.insert(name, (named, self.next));
    }

    fn get(&mut self, name: &str) -> Option<Named> {
        self.next += 1;
        let next = self.next;
        self.map.get_mut(name).map(|v| {
            v.1 = next;
            v.0.clone()
        })
    }

    fn remove(&mut self, name: &str) {
        self.map.remove(name);
    }

    fn set_types(&mut self, name: &str, types: Arc<[u32]>) {
        if let Some((named, _)) = self.map.get_mut(name) {
            named.types = Some(types);
        }
    }
}

/// The parser of one connection.
#[derive(Debug)]
pub struct PgParser {
    side: Side,
    frontend: Reader,
    backend: Reader,
    session: Arc<PgSession>,
    statements: Names,
    portals: Names,
    pending: VecDeque<Pending>,
    /// `ReadyForQuery` messages the client has asked for so far (startup, `Sync`, `Query`).
    batches_sent: u64,
    /// `ReadyForQuery` messages the server has sent so far.
    batches_done: u64,
    /// Start of the extended-protocol messages that lead to the next `Execute`.
    unit_start: Option<(u64, u32)>,
    encrypted: bool,
    keep_parameters: bool,
    /// Statements the client asked to describe (`Describe` `S`), with the batch they belong to:
    /// the server's `ParameterDescription` answers say their parameter types.
    describes: VecDeque<(u64, Arc<str>)>,
    /// Executions dropped (lost framing, unpairable answers, too many waiting) since
    /// [`Parser::take_lost`] last asked.
    lost: u64,
}

impl PgParser {
    /// A parser for a connection whose first bytes are a startup packet (`from_startup`), or one
    /// picked up in the middle, at a typed client message.
    pub fn new(side: Side, from_startup: bool) -> Self {
        PgParser {
            side,
            frontend: Reader::new(Stream::Frontend, from_startup),
            backend: Reader::new(Stream::Backend, false),
            session: Arc::new(PgSession::default()),
            statements: Names::new(MAX_STATEMENTS),
            portals: Names::new(MAX_PORTALS),
            pending: VecDeque::new(),
            batches_sent: 0,
            batches_done: 0,
            unit_start: None,
            encrypted: false,
            keep_parameters: false,
            describes: VecDeque::new(),
            lost: 0,
        }
    }

    /// Also keep the `Bind` parameter values of each execution ([`PgExchange::parameters`]).
    pub fn keep_parameters(mut self, keep: bool) -> Self {
        self.keep_parameters = keep;
        self
    }

    /// The connection switched to TLS or GSSAPI encryption: every later byte is ciphertext.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// What the client said at startup (empty when the connection was picked up later).
    pub fn session(&self) -> &PgSession {
        &self.session
    }

    fn stream_of(&self, direction: Direction) -> Stream {
        match (self.side, direction) {
            (Side::Client, Direction::Egress) | (Side::Server, Direction::Ingress) => Stream::Frontend,
            _ => Stream::Backend,
        }
    }

    fn reader(&self, stream: Stream) -> &Reader {
        match stream {
            Stream::Frontend => &self.frontend,
            Stream::Backend => &self.backend,
        }
    }

    fn reader_mut(&mut self, stream: Stream) -> &mut Reader {
        match stream {
            Stream::Frontend => &mut self.frontend,
            Stream::Backend => &mut self.backend,
        }
    }

    /// The server direction found its framing again at a run of messages that ends with
    /// `ReadyForQuery`. How many answers the lost bytes held is unknown; a client waits for its
    /// answers, so the run most likely answers the newest batch sent: older statements are
    /// dropped rather than paired with a later answer.
    fn resync_pairing(&mut self) {
        let Some(newest) = self.pending.back().map(|p| p.batch) else {
            self.batches_done = self.batches_sent.saturating_sub(1);
            return;
        };
        while self.pending.front().is_some_and(|p| p.batch < newest) {
            if let Some(p) = self.pending.pop_front() {
                self.lost += u64::from(!p.prepare);
            }
        }
        self.batches_done = newest;
    }

    /// A direction lost its framing. Lost client messages make the server's answers unpairable:
    /// what waits is dropped and pairing starts over.
    fn lost_framing(&mut self, stream: Stream) {
        if stream == Stream::Frontend {
            // A lost Parse or Bind may have redefined the unnamed statement and portal.
            self.statements.remove("");
            self.portals.remove("");
            self.lost += self.pending.iter().filter(|p| !p.prepare).count() as u64;
            self.pending.clear();
            self.unit_start = None;
            self.batches_done = self.batches_sent;
        }
    }

    fn finish_message(&mut self, stream: Stream, chunk: &Chunk<'_>, out: &mut Vec<PgExchange>) {
        let reader = self.reader_mut(stream);
        let Framing::Body { typ, .. } = reader.framing else { return };
        reader.framing = Framing::Header { buf: [0; 5], have: 0 };
        let body = std::mem::take(&mut reader.body);
        let message = Message { typ, body: &body };
        match stream {
            Stream::Frontend => self.on_frontend(&message, chunk),
            Stream::Backend => self.on_backend(&message, chunk, out),
        }
        // Give the buffer back unless a long message grew it.
        let reader = self.reader_mut(stream);
        if reader.body.capacity() == 0 && body.capacity() <= BODY_CAPACITY_KEPT {
            reader.body = body;
            reader.body.clear();
        }
    }

    fn on_frontend(&mut self, m: &Message<'_>, chunk: &Chunk<'_>) {
        let here = (chunk.ts_ns, chunk.tid);
        // An Execute's time starts at the first extended-protocol message that leads to it.
        let start = if matches!(m.typ, b'P' | b'B' | b'D' | b'E' | b'C' | b'H') {
            *self.unit_start.get_or_insert(here)
        } else {
            here
        };
        match m.typ {
            0 => {
                self.unit_start = None;
                self.on_startup(m.body);
            }
            b'Q' => {
                self.unit_start = None;
                let sql = sql_text(cstr(m.body).0);
                self.push_pending(Pending::new(PgQueryKind::Simple, Some(sql), None, self.batches_sent, start));
                self.batches_sent += 1;
            }
            b'P' => {
                let (name, rest) = cstr(m.body);
                let (sql, types) = cstr(rest);
                let (name, sql) = (name_text(name), sql_text(sql));
                let types = if self.keep_parameters { type_oids(types) } else { None };
                self.statements.insert(name.clone(), Named { sql: Some(sql.clone()), types, ..Named::default() });
                let mut parse = Pending::new(PgQueryKind::Extended, Some(sql), Some(name), self.batches_sent, start);
                parse.prepare = true;
                self.push_pending(parse);
            }
            b'B' => {
                let (portal, rest) = cstr(m.body);
                let (statement, values) = cstr(rest);
                let statement = name_text(statement);
                let named = self.statements.get(&statement).unwrap_or_default();
                let sql = named.sql;
                let parameters = self.keep_parameters.then(|| bind_parameters(values, named.types.as_deref()));
                self.portals.insert(name_text(portal), Named { sql, statement: Some(statement), parameters, types: None });
            }
            b'E' => {
                self.unit_start = None;
                let portal = cstr(m.body).0;
                // An unnamed portal unknown here had its Bind lost: drivers bind it to the
                // unnamed statement (if that is unknown too, the SQL is).
                let named = match self.portals.get(&String::from_utf8_lossy(portal)) {
                    Some(named) => named,
                    None if portal.is_empty() => self.statements.get("").unwrap_or_default(),
                    None => Named::default(),
                };
                let mut execute = Pending::new(PgQueryKind::Extended, named.sql, named.statement, self.batches_sent, start);
                execute.parameters = named.parameters;
                self.push_pending(execute);
            }
            b'D' if self.keep_parameters => {
                if let Some((b'S', rest)) = m.body.split_first() {
                    if self.describes.len() >= MAX_PENDING {
                        self.describes.pop_front();
                    }
                    self.describes.push_back((self.batches_sent, name_text(cstr(rest).0)));
                }
            }
            b'C' => {
                if let Some((&what, rest)) = m.body.split_first() {
                    let name = String::from_utf8_lossy(cstr(rest).0);
                    match what {
                        b'S' => self.statements.remove(&name),
                        b'P' => self.portals.remove(&name),
                        _ => {}
                    }
                }
            }
            // Sync and FunctionCall are each answered by one ReadyForQuery.
            b'S' | b'F' => {
                self.unit_start = None;
                self.batches_sent += 1;
            }
            // Describe, Flush, Terminate, FunctionCall, COPY data/done/fail, passwords: nothing
            // to keep (a Describe or Flush may precede the Execute, so the unit stays open).
            _ => {}
        }
    }

    fn on_startup(&mut self, body: &[u8]) {
        if body.len() < 4 {
            return;
        }
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                self.frontend.untyped_next = true;
                self.backend.framing = Framing::EncryptionAnswer;
            }
            CANCEL_REQUEST => {}
            _ if code >> 16 == 3 => {
                let mut session = PgSession::default();
                let mut rest = &body[4..];
                while !rest.is_empty() && rest[0] != 0 {
                    let (key, after) = cstr(rest);
                    let (value, after) = cstr(after);
                    rest = after;
                    let value = || Some(truncate_lossy(value, MAX_PARAM_LEN));
                    match key {
                        b"user" => session.user = value(),
                        b"database" => session.database = value(),
                        b"application_name" => session.application_name = value(),
                        _ => {}
                    }
                }
                self.session = Arc::new(session);
                // The server ends the startup with ReadyForQuery.
                self.batches_sent += 1;
            }
            _ => {}
        }
    }

    fn push_pending(&mut self, p: Pending) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push_back(p);
        } else {
            self.lost += u64::from(!p.prepare);
        }
    }

    /// The statement the server is answering now, if it belongs to the current batch.
    fn current(&mut self) -> Option<&mut Pending> {
        let batch = self.batches_done;
        self.pending.front_mut().filter(|p| p.batch == batch)
    }

    /// The statement being executed now: `Parse` steps still ahead of it were answered (their
    /// `ParseComplete` may have been lost) and leave.
    fn executing(&mut self) -> Option<&mut Pending> {
        while self.current().is_some_and(|p| p.prepare) {
            self.pending.pop_front();
        }
        self.current()
    }

    fn on_backend(&mut self, m: &Message<'_>, chunk: &Chunk<'_>, out: &mut Vec<PgExchange>) {
        match m.typ {
            b'1' if self.current().is_some_and(|p| p.prepare) => {
                self.pending.pop_front();
            }
            b't' => {
                // Answers a Describe of the current batch; those of batches an error cut short
                // were never answered.
                let batch = self.batches_done;
                while self.describes.front().is_some_and(|(b, _)| *b < batch) {
                    self.describes.pop_front();
                }
                if let Some((_, name)) = self.describes.pop_front() {
                    if let Some(types) = type_oids(m.body) {
                        self.statements.set_types(&name, types);
                    }
                }
            }
            b'D' => {
                if let Some(p) = self.executing() {
                    p.data_rows += 1;
                }
            }
            b'C' | b'I' | b's' => {
                let tag = (m.typ == b'C').then(|| CommandTag::parse(cstr(m.body).0));
                let Some(p) = self.executing() else { return };
                p.statements += u32::from(m.typ != b's');
                if let Some(tag) = tag {
                    if p.command.is_none() {
                        p.command = Some(tag.command);
                    }
                    if let Some(rows) = tag.rows {
                        p.rows = Some(p.rows.unwrap_or(0).saturating_add(rows));
                    }
                }
                if p.kind == PgQueryKind::Extended {
                    let suspended = m.typ == b's';
                    if let Some(p) = self.pending.pop_front() {
                        out.push(self.exchange(p, suspended, chunk));
                    }
                }
            }
            b'E' => {
                let error = parse_error(m.body);
                // An error outside any statement (a FATAL at startup) has no span to go to.
                let Some(p) = self.current() else { return };
                p.error = Some(error);
                if p.kind == PgQueryKind::Extended {
                    if let Some(p) = self.pending.pop_front() {
                        out.push(self.exchange(p, false, chunk));
                    }
                }
            }
            b'Z' => {
                // Simple queries end here; Parse and Execute steps the server skipped after an
                // error end with nothing.
                let batch = self.batches_done;
                while self.pending.front().is_some_and(|p| p.batch <= batch) {
                    if let Some(p) = self.pending.pop_front() {
                        if p.kind == PgQueryKind::Simple && p.batch == batch {
                            out.push(self.exchange(p, false, chunk));
                        } else if p.kind == PgQueryKind::Simple {
                            // An older batch's answer was never seen.
                            self.lost += 1;
                        }
                    }
                }
                self.batches_done += 1;
                if self.batches_done > self.batches_sent {
                    // Answers to requests sent before the parser saw the connection.
                    self.batches_done = self.batches_sent;
                }
            }
            _ => {}
        }
    }

    fn exchange(&self, p: Pending, suspended: bool, chunk: &Chunk<'_>) -> PgExchange {
        PgExchange {
            side: self.side,
            kind: p.kind,
            query: p.query,
            statement: p.statement,
            parameters: p.parameters,
            session: self.session.clone(),
            command: p.command,
            rows: p.rows,
            data_rows: p.data_rows,
            statements: p.statements,
            suspended,
            error: p.error,
            answered: true,
            request_start_ns: p.start_ns,
            response_end_ns: chunk.ts_ns.max(p.start_ns),
            request_tid: p.tid,
            response_tid: chunk.tid,
        }
    }
}

impl Pending {
    fn new(
        kind: PgQueryKind,
        query: Option<Arc<str>>,
        statement: Option<Arc<str>>,
        batch: u64,
        (start_ns, tid): (u64, u32),
    ) -> Self {
        Pending {
            kind,
            prepare: false,
            query,
            statement,
            parameters: None,
            batch,
            start_ns,
            tid,
            command: None,
            rows: None,
            data_rows: 0,
            statements: 0,
            error: None,
        }
    }
}

/// PostgreSQL protocol v3, in the [`REGISTRY`](super::REGISTRY). After HTTP: a client message
/// is binary and never a request line.
pub struct Postgres;

impl super::Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        (looks_like_startup(chunk.bytes) || looks_like_frontend_message(chunk.bytes))
            .then(|| Side::sending_requests(chunk.direction))
    }

    fn parser(&self, side: Side, first: &[u8], options: &Options) -> Box<dyn StreamParser> {
        let parser = PgParser::new(side, looks_like_startup(first)).keep_parameters(options.db_query_parameters);
        Boxed::stream(self.name(), parser)
    }
}

impl Parser for PgParser {
    type Exchange = PgExchange;
    type Error = PgParseError;

    /// Which end of the connection the traced process is.
    fn side(&self) -> Side {
        self.side
    }

    /// Bytes moved in one direction.
    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<PgExchange>) -> Result<(), PgParseError> {
        if self.encrypted {
            return Ok(());
        }
        let stream = self.stream_of(chunk.direction);
        let mut bytes = chunk.bytes;
        let mut result = Ok(());
        if matches!(self.reader(stream).framing, Framing::Lost) {
            match resync_offset(stream, bytes) {
                Some(at) => {
                    bytes = &bytes[at..];
                    self.reader_mut(stream).framing = Framing::Header { buf: [0; 5], have: 0 };
                    if stream == Stream::Backend {
                        self.resync_pairing();
                    }
                }
                None => return Ok(()),
            }
        }
        while !bytes.is_empty() && !self.encrypted {
            let reader = self.reader_mut(stream);
            let need = reader.header_len();
            match &mut reader.framing {
                Framing::Lost => break,
                Framing::EncryptionAnswer => {
                    let answer = bytes[0];
                    bytes = &bytes[1..];
                    reader.framing = Framing::Header { buf: [0; 5], have: 0 };
                    match answer {
                        b'N' => {}
                        b'S' | b'G' => self.encrypted = true,
                        // An old server answering with an error: take it as a message.
                        b'E' => {
                            reader.framing = Framing::Header { buf: [b'E', 0, 0, 0, 0], have: 1 };
                        }
                        other => {
                            reader.framing = Framing::Lost;
                            result = Err(PgParseError::Malformed(other));
                        }
                    }
                }
                Framing::Header { buf, have } => {
                    let take = usize::from(need - *have).min(bytes.len());
                    buf[usize::from(*have)..usize::from(*have) + take].copy_from_slice(&bytes[..take]);
                    *have += take as u8;
                    bytes = &bytes[take..];
                    if *have < need {
                        break;
                    }
                    let (typ, len) = if need == 4 {
                        (0, u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]))
                    } else {
                        (buf[0], u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
                    };
                    let sane = if typ == 0 {
                        (8..=MAX_STARTUP_LEN).contains(&len)
                    } else {
                        (4..=MAX_SANE_LEN).contains(&len)
                            && match stream {
                                Stream::Frontend => FRONTEND_TYPES.contains(&typ),
                                Stream::Backend => BACKEND_TYPES.contains(&typ),
                            }
                    };
                    if !sane {
                        reader.framing = Framing::Lost;
                        result = Err(PgParseError::Malformed(typ));
                        self.lost_framing(stream);
                        break;
                    }
                    reader.untyped_next = false;
                    let keep = reader.keeps(typ);
                    reader.body.clear();
                    reader.framing = Framing::Body { typ, remaining: len - 4, keep, lost: false };
                    if len == 4 {
                        self.finish_message(stream, chunk, out);
                    }
                }
                Framing::Body { remaining, keep, lost, .. } => {
                    let take = (*remaining as usize).min(bytes.len());
                    // After a gap the kept prefix stays a prefix: bytes past the gap are not kept.
                    if *keep && !*lost {
                        let room = MAX_KEPT_BODY.saturating_sub(reader.body.len()).min(take);
                        reader.body.extend_from_slice(&bytes[..room]);
                    }
                    *remaining -= take as u32;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        self.finish_message(stream, chunk, out);
                    }
                }
            }
        }
        result
    }

    /// Bytes moved in one direction but not captured.
    fn on_gap(&mut self, gap: &Gap, out: &mut Vec<PgExchange>) -> Result<(), PgParseError> {
        if self.encrypted || gap.len == 0 {
            return Ok(());
        }
        let stream = self.stream_of(gap.direction);
        let reader = self.reader_mut(stream);
        match &mut reader.framing {
            Framing::Lost => Ok(()),
            Framing::Body { remaining, lost, .. } if u64::from(*remaining) >= gap.len => {
                *remaining -= gap.len as u32;
                *lost = true;
                if *remaining == 0 {
                    // The message ends with the gap: it is parsed from what was kept.
                    let at_gap = Chunk { direction: gap.direction, ts_ns: gap.ts_ns, tid: 0, bytes: &[] };
                    self.finish_message(stream, &at_gap, out);
                }
                Ok(())
            }
            framing => {
                // A `Query` or `Parse` longer than the capture (SQL of many KiB) is cut by the
                // gap, which also hides what follows it: the message is taken from its kept
                // prefix (its SQL cut), then framing is sought again.
                let cut = match framing {
                    Framing::Body { typ: typ @ (b'Q' | b'P'), .. } if stream == Stream::Frontend => Some(*typ),
                    _ => None,
                };
                reader.framing = Framing::Lost;
                self.lost_framing(stream);
                if let Some(typ) = cut {
                    let reader = self.reader_mut(stream);
                    reader.framing = Framing::Body { typ, remaining: 0, keep: true, lost: true };
                    let at_gap = Chunk { direction: gap.direction, ts_ns: gap.ts_ns, tid: 0, bytes: &[] };
                    self.finish_message(stream, &at_gap, out);
                    self.reader_mut(stream).framing = Framing::Lost;
                }
                Err(PgParseError::GapInFraming)
            }
        }
    }

    /// The connection closed at `ts_ns`: every execution still waiting for its answer is an
    /// unanswered exchange ending there (a `Parse` still waiting is no execution and leaves).
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<PgExchange>) -> usize {
        let at_close = Chunk { direction: Direction::Ingress, ts_ns, tid: 0, bytes: &[] };
        let mut unanswered = 0;
        while let Some(p) = self.pending.pop_front() {
            if p.prepare {
                continue;
            }
            unanswered += 1;
            let mut exchange = self.exchange(p, false, &at_close);
            exchange.answered = false;
            out.push(exchange);
        }
        unanswered
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn stopped(&self) -> bool {
        self.encrypted
    }
}

impl super::Exchange for PgExchange {
    fn side(&self) -> Side {
        self.side
    }

    fn request_start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::postgres_span(self, endpoints, resource, clock)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn answered(&self) -> bool {
        self.answered
    }
}

#[cfg(test)]
mod tests;
