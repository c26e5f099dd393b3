//! Redis (RESP2 and RESP3): commands and their replies rebuilt from the two byte streams of one
//! connection, on any port.
//!
//! A [`RedisParser`] is fed the [`Chunk`]s and [`Gap`]s of one connection and appends a
//! [`RedisExchange`] each time a command's reply completes: one per command, pipelined or
//! not, paired first in, first out.
//!
//! What it handles:
//! - any split of the byte streams into chunks, down to one byte per chunk; bulk payloads are
//!   skipped by their length, so a gap (bytes the kernel did not capture) inside one is free;
//! - pipelines (`redis-benchmark -P 16`): replies pair with commands in order;
//! - `MULTI`/`EXEC`: each queued command is an exchange answered by `+QUEUED` (flagged
//!   [`RedisExchange::queued`]), `EXEC` one answered by the results;
//! - `SELECT n`: later commands carry database `n` ([`RedisExchange::db`]); `RESET` goes back
//!   to 0. A connection picked up after its `SELECT` shows database 0;
//! - `AUTH` and `HELLO` (RESP3): exchanges whose text is the command's name alone; their
//!   arguments (credentials) are never kept, not even in memory;
//! - pub/sub: `SUBSCRIBE a b` gets one reply per channel (a RESP2 array or a RESP3 push), and
//!   the messages pushed to a subscribed connection (`message`, `pmessage`, `smessage` arrays in
//!   RESP2, any push in RESP3 that answers no subscription command, e.g. client-side caching
//!   invalidations) pair with nothing: they are counted in [`RedisParser::pushes`];
//! - RESP3 attribute frames (`|`), which precede a reply and are no reply of their own;
//! - errors (`-ERR ...`, `-WRONGTYPE ...`, RESP3 blob errors): the prefix is the status code;
//! - reads: a nil reply is a miss, an empty collection too; `MGET`/`HMGET` count hits and
//!   misses per key.
//!
//! After damage (bytes that are not RESP, a gap outside a bulk payload) the commands waiting
//! are dropped and counted ([`Parser::take_lost`]), and both directions wait for a command that
//! starts a chunk after the server has answered (a lull) to pair again: the parser loses
//! exchanges rather than pairing them wrongly.
//!
//! What it deliberately does not do: keep values (only keys reach a span), follow `MONITOR`'s
//! stream (the parser stops after its reply), `CLIENT REPLY OFF|SKIP` (a connection that turns
//! replies off mis-pairs until it closes), RESP3 streamed strings (`$?`).
//!
//! # This folder
//!
//! `mod.rs`: the parser and its exchange; `resp.rs`: RESP framing; `command.rs`: a command's
//! name, literal-free text, and what it reads; `span.rs`: the span rules; `tests.rs` and
//! `testdata/`: recorded sessions.

mod command;
mod resp;
pub mod span;

use std::{collections::VecDeque, sync::Arc};

use command::{Read, Replies};
use resp::{RespError, RespReader, Role, Value};

use super::{Boxed, Chunk, Direction, Endpoints, Gap, Options, Parser, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};

/// Commands sent and not yet answered on one connection (pipelining depth).
pub const MAX_PENDING: usize = 1024;
/// Arguments of a command kept (for its text), and bytes of each.
const KEPT_ARGS: usize = 64;
const KEPT_ARG_BYTES: usize = 256;
/// Elements of a reply kept (the kind and count of a pub/sub reply), and bytes of each; bytes
/// of a top-level reply string kept (an error message).
const KEPT_REPLY_ELEMENTS: usize = 4;
const KEPT_REPLY_BYTES: usize = 256;
/// Longest error message kept, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 256;

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisError {
    /// The error's prefix: `ERR`, `WRONGTYPE`, `NOAUTH`, `EXECABORT`, ...
    pub code: String,
    /// The message after it, cut to [`MAX_ERROR_MESSAGE`], without the arguments Redis echoes
    /// back for an unknown command.
    pub message: String,
}

/// Hits and misses of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheResult {
    pub hits: u32,
    pub misses: u32,
    /// The command reads one key (`GET`): the span says hit or miss.
    pub single: bool,
}

/// A pub/sub message: published (`PUBLISH`/`SPUBLISH`, a PRODUCER span) or delivered to a
/// subscriber (a `message`/`pmessage`/`smessage` push, a CONSUMER span); or a stream entry:
/// added (`XADD`, a PRODUCER span) or read (an entry of an `XREAD`/`XREADGROUP` reply, a
/// CONSUMER span). Never its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisMessage {
    /// Delivered to the traced process (else published by it).
    pub receive: bool,
    /// The channel, or the stream's key.
    pub channel: Arc<str>,
    /// The payload's size (pub/sub; 0 for a stream entry).
    pub size: u64,
    /// A stream entry's id (`1700000000000-0`): the same in `XADD`'s reply and where it is read.
    pub entry_id: Option<Arc<str>>,
    /// [`crate::trace::message_key`] of the message: equal on both ends.
    pub key: i64,
}

impl RedisMessage {
    fn new(receive: bool, channel: &[u8], size: u64, prefix: &[u8]) -> Self {
        let channel: Arc<str> = Arc::from(String::from_utf8_lossy(channel).as_ref());
        let key = crate::trace::message_key("redis", &channel, size, prefix);
        RedisMessage {
            receive,
            channel,
            size,
            entry_id: None,
            key,
        }
    }

    /// A stream entry: its key is the stream's key and the entry's id.
    fn stream_entry(receive: bool, stream: &Arc<str>, id: &[u8]) -> Self {
        let id: Arc<str> = Arc::from(String::from_utf8_lossy(id).as_ref());
        let key = crate::trace::message_key("redis-stream", stream, 0, id.as_bytes());
        RedisMessage {
            receive,
            channel: stream.clone(),
            size: 0,
            entry_id: Some(id),
            key,
        }
    }
}

/// A stream entry id: `ms-seq`, both decimal.
fn is_entry_id(bytes: &[u8]) -> bool {
    let mut parts = bytes.splitn(2, |&b| b == b'-');
    let whole = |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    whole(parts.next()) && whole(parts.next())
}

/// The stream a command adds to (`XADD key ...`) or reads from (`XREAD`/`XREADGROUP ... STREAMS
/// key id`: one stream only, else the entries read cannot be told apart by stream).
fn stream_of(name: &str, args: &[Vec<u8>], children: u32) -> Option<Arc<str>> {
    let key = match name {
        "XADD" => args.get(1)?,
        "XREAD" | "XREADGROUP" => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            if children as usize != at + 3 {
                return None;
            }
            args.get(at + 1)?
        }
        _ => return None,
    };
    Some(Arc::from(String::from_utf8_lossy(key).as_ref()))
}

/// One command and its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisExchange {
    pub side: Side,
    /// Upper-case command name.
    pub operation: Arc<str>,
    /// The command with its keys and every value as `?`.
    pub query_text: Arc<str>,
    /// The database index the command ran in.
    pub db: u32,
    pub error: Option<RedisError>,
    pub cache: Option<CacheResult>,
    /// Queued inside `MULTI` (answered `+QUEUED`; it runs at `EXEC`).
    pub queued: bool,
    /// Bytes of the command and of its reply (replies, for a subscription).
    pub request_size: u64,
    pub reply_size: u64,
    /// False when the connection closed before the reply.
    pub answered: bool,
    /// A pub/sub message this exchange published or is the delivery of.
    pub message: Option<RedisMessage>,
    pub request_start_ns: u64,
    pub response_end_ns: u64,
    pub request_tid: u32,
    pub response_tid: u32,
}

/// Why bytes could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedisParseError {
    #[error("malformed RESP: {0}")]
    Malformed(#[from] RespError),
    #[error("a command that is not an array of strings (RESP type {0:#04x})")]
    NotACommand(u8),
    #[error("bytes not captured hid a RESP value boundary")]
    GapInFraming,
}

/// A command sent and not yet (fully) answered.
#[derive(Debug)]
struct Pending {
    command: command::Command,
    db: u32,
    start_ns: u64,
    tid: u32,
    size: u64,
    /// Replies still due (subscriptions get one per channel).
    replies: Replies,
    reply_size: u64,
    replied: bool,
    error: Option<RedisError>,
    cache: Option<CacheResult>,
    queued: bool,
    message: Option<RedisMessage>,
    /// The stream an `XADD`, `XREAD` or `XREADGROUP` names.
    stream: Option<Arc<str>>,
}

/// The parser of one connection.
#[derive(Debug)]
pub struct RedisParser {
    side: Side,
    requests: RespReader,
    replies: RespReader,
    pending: VecDeque<Pending>,
    /// The database later commands run in.
    db: u32,
    /// The connection subscribed to channels (RESP2 messages are arrays, not pushes).
    subscribed: bool,
    /// Damage: both directions wait for a command at a lull.
    damaged: bool,
    last_direction: Option<Direction>,
    /// `MONITOR` answered: the rest is its stream.
    monitoring: bool,
    values: Vec<Value>,
    lost: u64,
    pushes: u64,
}

impl RedisParser {
    pub fn new(side: Side) -> Self {
        RedisParser {
            side,
            requests: RespReader::new(Role::Requests, KEPT_ARGS, KEPT_ARG_BYTES),
            replies: RespReader::new(Role::Replies, KEPT_REPLY_ELEMENTS, KEPT_REPLY_BYTES),
            pending: VecDeque::new(),
            db: 0,
            subscribed: false,
            damaged: false,
            last_direction: None,
            monitoring: false,
            values: Vec::new(),
            lost: 0,
            pushes: 0,
        }
    }

    /// Out-of-band pushes seen (pub/sub messages, invalidations): they pair with no command.
    pub fn pushes(&self) -> u64 {
        self.pushes
    }

    fn damage(&mut self) {
        self.lost += self.pending.len() as u64;
        self.pending.clear();
        self.damaged = true;
    }

    fn on_command(&mut self, value: Value) -> Result<(), RedisParseError> {
        if !matches!(value.kind, b'*' | 0) {
            return Err(RedisParseError::NotACommand(value.kind));
        }
        if value.elements.is_empty() {
            return Ok(()); // `*0`: nothing to run, and Redis answers nothing
        }
        let command = command::command(&value.elements, value.children);
        let db = self.db;
        if let Some(n) = command.selects {
            self.db = n;
        }
        match command.name.as_str() {
            "RESET" => {
                self.db = 0;
                self.subscribed = false;
            }
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => self.subscribed = true,
            _ => {}
        }
        let publishes =
            matches!(command.name.as_str(), "PUBLISH" | "SPUBLISH") && value.elements.len() >= 3;
        let message = publishes.then(|| {
            RedisMessage::new(
                false,
                &value.elements[1],
                value.element_lens.get(2).copied().unwrap_or(0),
                &value.elements[2],
            )
        });
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.lost += 1;
        }
        let stream = stream_of(&command.name, &value.elements, value.children);
        self.pending.push_back(Pending {
            stream,
            message,
            replies: command.replies,
            command,
            db,
            start_ns: value.start_ns,
            tid: value.tid,
            size: value.size,
            reply_size: 0,
            replied: false,
            error: None,
            cache: None,
            queued: false,
        });
        Ok(())
    }

    fn on_reply(&mut self, value: Value, out: &mut Vec<RedisExchange>) {
        let word = value.first_word();
        let word = word.as_deref();
        let subscription_word = matches!(
            word,
            Some(
                "subscribe"
                    | "unsubscribe"
                    | "psubscribe"
                    | "punsubscribe"
                    | "ssubscribe"
                    | "sunsubscribe"
            )
        );
        let front_is = |p: &Pending, w: Option<&str>| {
            w.is_some_and(|w| p.command.name.eq_ignore_ascii_case(w))
        };
        loop {
            let answers_front = self.pending.front().is_some_and(|p| front_is(p, word));
            if value.kind == b'>' && !(subscription_word && answers_front) {
                self.on_push(&value, word, out); // a message or an invalidation, not a reply
                return;
            }
            if self.subscribed
                && value.kind == b'*'
                && matches!(word, Some("message" | "pmessage" | "smessage"))
            {
                self.on_push(&value, word, out);
                return;
            }
            let Some(front) = self.pending.front_mut() else {
                return; // a reply to a command sent before the parser saw the connection
            };
            if front.replies == Replies::UntilNoneLeft && front.replied && !answers_front {
                // An `UNSUBSCRIBE` from nothing ended: this reply is the next command's.
                self.finish_front(value.start_ns, value.tid, out);
                continue;
            }
            front.replied = true;
            front.reply_size += value.size;
            if value.is_error() {
                front.error = Some(error_of(&value.text));
            } else if value.kind == b'+' && value.text == b"QUEUED" {
                front.queued = true;
            } else {
                front.cache = cache_result(front.command.read, &value);
            }
            let remaining = value
                .elements
                .get(2)
                .and_then(|c| std::str::from_utf8(c).ok()?.parse::<i64>().ok());
            if subscription_word
                && word.is_some_and(|w| w.contains("unsub"))
                && remaining == Some(0)
            {
                self.subscribed = false;
            }
            let done = match &mut front.replies {
                Replies::One => true,
                Replies::PerChannel(n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                Replies::UntilNoneLeft => remaining.is_none_or(|r| r <= 0),
            };
            if done {
                if front.command.name == "MONITOR" && front.error.is_none() {
                    self.monitoring = true;
                }
                // Streams: the id XADD returns, and the entries XREAD/XREADGROUP return.
                let mut entries = Vec::new();
                if let Some(stream) = &front.stream {
                    if front.command.name == "XADD" {
                        if value.kind == b'$' && !value.nil && is_entry_id(&value.text) {
                            front.message =
                                Some(RedisMessage::stream_entry(false, stream, &value.text));
                        }
                    } else if self.side == Side::Client {
                        entries = value
                            .nested_ids
                            .iter()
                            .filter(|id| is_entry_id(id))
                            .map(|id| RedisMessage::stream_entry(true, stream, id))
                            .collect();
                    }
                }
                let operation = front.command.name.clone();
                self.finish_front(value.end_ns, value.end_tid, out);
                for message in entries {
                    out.push(RedisExchange {
                        side: Side::Client,
                        operation: Arc::from(operation.as_str()),
                        query_text: Arc::from(""),
                        db: self.db,
                        error: None,
                        cache: None,
                        queued: false,
                        request_size: 0,
                        reply_size: 0,
                        answered: true,
                        message: Some(message),
                        request_start_ns: value.end_ns,
                        response_end_ns: value.end_ns,
                        request_tid: value.end_tid,
                        response_tid: value.end_tid,
                    });
                }
            }
            return;
        }
    }

    /// An out-of-band push; a pub/sub message delivered to a client is an exchange of its own
    /// (a CONSUMER span).
    fn on_push(&mut self, value: &Value, word: Option<&str>, out: &mut Vec<RedisExchange>) {
        self.pushes += 1;
        let (channel, payload) = match word {
            Some("message" | "smessage") => (1, 2),
            Some("pmessage") => (2, 3),
            _ => return,
        };
        if self.side != Side::Client || value.elements.len() <= payload {
            return;
        }
        let size = value.element_lens.get(payload).copied().unwrap_or(0);
        let message = RedisMessage::new(
            true,
            &value.elements[channel],
            size,
            &value.elements[payload],
        );
        out.push(RedisExchange {
            side: Side::Client,
            operation: Arc::from(word.unwrap_or("message")),
            query_text: Arc::from(""),
            db: self.db,
            error: None,
            cache: None,
            queued: false,
            request_size: 0,
            reply_size: value.size,
            answered: true,
            message: Some(message),
            request_start_ns: value.start_ns,
            response_end_ns: value.end_ns,
            request_tid: value.tid,
            response_tid: value.end_tid,
        });
    }

    fn finish_front(&mut self, end_ns: u64, end_tid: u32, out: &mut Vec<RedisExchange>) {
        if let Some(p) = self.pending.pop_front() {
            out.push(exchange(self.side, p, true, end_ns, end_tid));
        }
    }
}

fn exchange(side: Side, p: Pending, answered: bool, end_ns: u64, end_tid: u32) -> RedisExchange {
    RedisExchange {
        side,
        operation: Arc::from(p.command.name),
        query_text: Arc::from(p.command.text),
        db: p.db,
        error: p.error,
        cache: p.cache,
        queued: p.queued,
        request_size: p.size,
        reply_size: p.reply_size,
        answered,
        message: p.message,
        request_start_ns: p.start_ns,
        response_end_ns: end_ns.max(p.start_ns),
        request_tid: p.tid,
        response_tid: end_tid,
    }
}

/// `ERR unknown command 'x', with args beginning with: 'secret'` → `ERR`, `unknown command 'x'`.
fn error_of(text: &[u8]) -> RedisError {
    let text = String::from_utf8_lossy(text);
    let (code, message) = match text.split_once(' ') {
        Some((code, rest))
            if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
        {
            (code, rest)
        }
        _ if !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase()) => (&*text, ""),
        _ => ("ERR", &*text),
    };
    let message = message
        .split(", with args beginning with")
        .next()
        .unwrap_or("");
    let mut cut = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    RedisError {
        code: code.to_owned(),
        message: message[..cut].to_owned(),
    }
}

fn cache_result(read: Read, value: &Value) -> Option<CacheResult> {
    match read {
        Read::No => None,
        Read::One => {
            let hit = !value.nil;
            Some(CacheResult {
                hits: u32::from(hit),
                misses: u32::from(!hit),
                single: true,
            })
        }
        Read::PerKey if value.is_aggregate() && !value.nil => Some(CacheResult {
            hits: value.children - value.nil_children,
            misses: value.nil_children,
            single: false,
        }),
        Read::Collection if value.is_aggregate() => {
            let hit = !value.nil && value.len > 0;
            Some(CacheResult {
                hits: u32::from(hit),
                misses: u32::from(!hit),
                single: true,
            })
        }
        _ => None,
    }
}

/// The first bytes of a command: an array of bulk strings (`*3\r\n$3\r\nSET...`).
pub fn looks_like_command(bytes: &[u8]) -> bool {
    let Some(rest) = bytes.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 7 || rest[0] == b'0' {
        return false;
    }
    match &rest[digits..] {
        [b'\r', b'\n', b'$', d, ..] => d.is_ascii_digit(),
        [b'\r', b'\n'] => true,
        _ => false,
    }
}

/// Redis, in the [`REGISTRY`](super::REGISTRY): a connection whose first bytes are a command
/// array.
pub struct Redis;

impl super::Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        looks_like_command(chunk.bytes).then(|| Side::sending_requests(chunk.direction))
    }

    fn parser(&self, side: Side, _first: &[u8], _options: &Options) -> Box<dyn StreamParser> {
        Boxed::stream(self.name(), RedisParser::new(side))
    }
}

impl Parser for RedisParser {
    type Exchange = RedisExchange;
    type Error = RedisParseError;

    fn side(&self) -> Side {
        self.side
    }

    fn on_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<RedisExchange>,
    ) -> Result<(), RedisParseError> {
        if self.monitoring {
            return Ok(());
        }
        let is_request = chunk.direction == self.side.request_direction();
        let lull = self.last_direction.is_some_and(|d| d != chunk.direction);
        self.last_direction = Some(chunk.direction);
        if self.damaged {
            if !(is_request && lull && looks_like_command(chunk.bytes)) {
                return Ok(());
            }
            self.damaged = false;
            self.requests.reset();
            self.replies.reset();
        }
        let mut values = std::mem::take(&mut self.values);
        let reader = if is_request {
            &mut self.requests
        } else {
            &mut self.replies
        };
        let fed = reader.feed(chunk.bytes, chunk.ts_ns, chunk.tid, &mut values);
        let mut result = Ok(());
        for value in values.drain(..) {
            if is_request {
                if let Err(e) = self.on_command(value) {
                    result = Err(e);
                    break;
                }
            } else {
                self.on_reply(value, out);
            }
        }
        values.clear();
        self.values = values;
        if let Err(e) = fed {
            result = Err(e.into());
        }
        if result.is_err() {
            self.damage();
        }
        result
    }

    fn on_gap(&mut self, gap: &Gap, out: &mut Vec<RedisExchange>) -> Result<(), RedisParseError> {
        if self.monitoring || self.damaged || gap.len == 0 {
            return Ok(());
        }
        let is_request = gap.direction == self.side.request_direction();
        let mut values = std::mem::take(&mut self.values);
        let reader = if is_request {
            &mut self.requests
        } else {
            &mut self.replies
        };
        let skipped = reader.on_gap(gap.len, gap.ts_ns, 0, &mut values);
        let mut result = Ok(());
        for value in values.drain(..) {
            if is_request {
                if let Err(e) = self.on_command(value) {
                    result = Err(e);
                }
            } else {
                self.on_reply(value, out);
            }
        }
        self.values = values;
        if !skipped {
            result = Err(RedisParseError::GapInFraming);
        }
        if result.is_err() {
            self.damage();
        }
        result
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<RedisExchange>) -> usize {
        let mut unanswered = 0;
        while let Some(p) = self.pending.pop_front() {
            let answered = p.replied;
            unanswered += usize::from(!answered);
            out.push(exchange(self.side, p, answered, ts_ns, 0));
        }
        unanswered
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn stopped(&self) -> bool {
        self.monitoring
    }
}

impl super::Exchange for RedisExchange {
    fn side(&self) -> Side {
        self.side
    }

    fn request_start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::redis_span(self, endpoints, resource, clock)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn answered(&self) -> bool {
        self.answered
    }

    fn consumer_thread(&self) -> Option<u32> {
        self.message
            .as_ref()
            .filter(|m| m.receive)
            .map(|_| self.request_tid)
    }
}

#[cfg(test)]
mod tests;
