//! memcached's text protocol (classic and meta commands): commands and their replies rebuilt
//! from the two byte streams of one connection, on any port.
//!
//! A [`MemcachedParser`] is fed the [`Chunk`]s and [`Gap`]s of one connection and appends a
//! [`MemcachedExchange`] per command:
//! - retrieval (`get`, `gets`, `gat`, `gats`): the keys asked for, and per key whether it was a
//!   hit (a `VALUE` line named it) or a miss;
//! - storage (`set`, `add`, `replace`, `append`, `prepend`, `cas`), `delete`, `incr`/`decr`,
//!   `touch`, `flush_all`, `stats`, `version`, ...: the reply word (`STORED`, `NOT_FOUND`, ...);
//! - `noreply`: the command is an exchange of its own, ending when it was sent;
//! - meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`): `mg` hit (`VA`/`HD`) or miss (`EN`);
//!   quiet mode (`q`): a command whose reply the server suppressed ends at the next reply that
//!   cannot be its own (`MN` after a batch, or the reply of a later command) with the outcome
//!   the suppression means (a miss for `mg`, success for the others). A quiet `mg` hit without
//!   `k` or `O` flags is taken as the first quiet `mg` waiting's;
//! - errors (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`).
//!
//! Data blocks (values) are skipped by their length, never kept; a gap inside one is free. A gap
//! that hides a line, or bytes that are not the protocol, drop the commands waiting (counted)
//! and both directions wait for a command line that starts a chunk after the server answered.
//!
//! Not covered: the binary protocol (magic byte `0x80`), which is deprecated.

mod command;
pub mod span;

use std::{collections::VecDeque, sync::Arc};

use super::lines::{FramingError, LineReader, Piece};
use command::{Command, Kind};

use super::{Boxed, Chunk, Direction, Endpoints, Gap, Options, Parser, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};

/// Commands sent and not yet answered on one connection.
pub const MAX_PENDING: usize = 1024;
/// Longest error message kept.
const MAX_ERROR_MESSAGE: usize = 256;

/// Hits and misses of a retrieval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheResult {
    pub hits: u32,
    pub misses: u32,
    /// The keys that missed, for a retrieval of several keys (at most [`command::MAX_KEYS`]).
    pub missed_keys: Vec<String>,
}

/// One command and its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcachedExchange {
    pub side: Side,
    /// The command as sent (`get`, `set`, `mg`, ...).
    pub operation: Arc<str>,
    /// The command with its keys; every other argument `?`; never a value.
    pub query_text: Arc<str>,
    /// Keys the command names.
    pub keys: u32,
    /// The reply's status word (`STORED`, `NOT_FOUND`, `HD`, `EN`, ...); `None` for a retrieval.
    pub status: Option<String>,
    /// `ERROR`, `CLIENT_ERROR`, `SERVER_ERROR` and its message.
    pub error: Option<(String, String)>,
    pub cache: Option<CacheResult>,
    /// Sent with `noreply` (or quiet and answered by silence).
    pub noreply: bool,
    pub request_size: u64,
    pub reply_size: u64,
    pub answered: bool,
    pub request_start_ns: u64,
    pub response_end_ns: u64,
    pub request_tid: u32,
    pub response_tid: u32,
}

/// Why bytes could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemcachedParseError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("a data block length that is not a number")]
    BadLength,
    #[error("bytes not captured hid a memcached line boundary")]
    GapInFraming,
}

#[derive(Debug)]
struct Pending {
    command: Command,
    start_ns: u64,
    tid: u32,
    size: u64,
    /// Its data block is still being sent.
    sending: bool,
    reply_size: u64,
    hit_keys: Vec<Vec<u8>>,
    values: u32,
}

/// The parser of one connection.
#[derive(Debug)]
pub struct MemcachedParser {
    side: Side,
    requests: LineReader,
    replies: LineReader,
    pending: VecDeque<Pending>,
    /// A multi-line reply (`VALUE`..., `STAT`...) is open; a `VA` block ends its reply.
    block_ends_reply: bool,
    damaged: bool,
    last_direction: Option<Direction>,
    lost: u64,
    out: Vec<MemcachedExchange>,
    error: Option<MemcachedParseError>,
}

impl MemcachedParser {
    pub fn new(side: Side) -> Self {
        MemcachedParser {
            side,
            requests: LineReader::default(),
            replies: LineReader::default(),
            pending: VecDeque::new(),
            block_ends_reply: false,
            damaged: false,
            last_direction: None,
            lost: 0,
            out: Vec::new(),
            error: None,
        }
    }

    fn on_request(&mut self, reader: &mut LineReader, piece: Piece, ts_ns: u64, tid: u32) {
        match piece {
            Piece::Line {
                text,
                start_ns,
                tid: line_tid,
                size,
            } => {
                let Some(command) = command::parse(&text) else {
                    return;
                };
                let block = command.block;
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.lost += 1;
                }
                self.pending.push_back(Pending {
                    command,
                    start_ns,
                    tid: line_tid,
                    size,
                    sending: block.is_some(),
                    reply_size: 0,
                    hit_keys: Vec::new(),
                    values: 0,
                });
                match block {
                    Some(Some(len)) => reader.expect_block(len, 0),
                    Some(None) => self.error = Some(MemcachedParseError::BadLength),
                    None => self.sent(ts_ns, tid),
                }
            }
            Piece::BlockEnd { size, .. } => {
                if let Some(p) = self.pending.back_mut() {
                    p.size += size;
                    p.sending = false;
                }
                self.sent(ts_ns, tid);
            }
        }
    }

    /// The last command was sent whole: one that gets no reply is finished now.
    fn sent(&mut self, ts_ns: u64, tid: u32) {
        let no_reply = self
            .pending
            .back()
            .is_some_and(|p| p.command.noreply && !p.command.quiet);
        if no_reply {
            if let Some(p) = self.pending.pop_back() {
                self.out.push(self.exchange(p, None, None, ts_ns, tid));
            }
        }
    }

    fn on_reply_line(
        &mut self,
        reader: &mut LineReader,
        text: Vec<u8>,
        size: u64,
        ts_ns: u64,
        tid: u32,
    ) {
        let mut words = text.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let word = words.next().unwrap_or_default();
        // Quiet commands whose reply was suppressed end at the first reply that is not theirs.
        while let Some(front) = self.pending.front() {
            let not_its = word == b"MN"
                || command::suppressed(front.command.kind, word)
                || !command::can_answer(front.command.kind, word);
            if front.sending || !(front.command.quiet && not_its) {
                break;
            }
            let status = command::suppressed_outcome(front.command.kind);
            self.finish_front(Some(status.to_owned()), None, ts_ns, tid);
        }
        let Some(front) = self.pending.front_mut() else {
            return; // an answer to a command sent before the parser saw the connection
        };
        front.reply_size += size;
        match word {
            b"VALUE" => {
                let key = words.next().unwrap_or_default().to_vec();
                let len = words
                    .nth(1)
                    .and_then(|l| std::str::from_utf8(l).ok()?.parse::<u64>().ok());
                front.values += 1;
                if front.hit_keys.len() < command::MAX_KEYS {
                    front.hit_keys.push(key);
                }
                match len {
                    Some(len) => reader.expect_block(len, 0),
                    None => self.error = Some(MemcachedParseError::BadLength),
                }
            }
            b"STAT" => {}
            b"VA" => {
                match words
                    .next()
                    .and_then(|l| std::str::from_utf8(l).ok()?.parse::<u64>().ok())
                {
                    Some(len) => {
                        // A hit: the reply ends with its data block.
                        reader.expect_block(len, 0);
                        self.block_ends_reply = true;
                    }
                    None => self.error = Some(MemcachedParseError::BadLength),
                }
            }
            b"END" => self.finish_front(None, None, ts_ns, tid),
            b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR" => {
                let code = String::from_utf8_lossy(word).into_owned();
                let rest = text.get(word.len() + 1..).unwrap_or_default();
                let message = String::from_utf8_lossy(&rest[..rest.len().min(MAX_ERROR_MESSAGE)])
                    .into_owned();
                self.finish_front(None, Some((code, message)), ts_ns, tid);
            }
            _ => {
                let status = if word.iter().all(u8::is_ascii_digit) && !word.is_empty() {
                    "VALUE".to_owned() // incr/decr: the new value
                } else {
                    String::from_utf8_lossy(&word[..word.len().min(32)]).into_owned()
                };
                self.finish_front(Some(status), None, ts_ns, tid);
            }
        }
    }

    fn finish_front(
        &mut self,
        status: Option<String>,
        error: Option<(String, String)>,
        ts_ns: u64,
        tid: u32,
    ) {
        if let Some(p) = self.pending.pop_front() {
            let exchange = self.exchange(p, status, error, ts_ns, tid);
            self.out.push(exchange);
        }
    }

    fn exchange(
        &self,
        p: Pending,
        status: Option<String>,
        error: Option<(String, String)>,
        ts_ns: u64,
        tid: u32,
    ) -> MemcachedExchange {
        let cache = match p.command.kind {
            _ if error.is_some() => None,
            Kind::Retrieval => {
                let missed: Vec<String> = p
                    .command
                    .keys
                    .iter()
                    .filter(|k| !p.hit_keys.iter().any(|h| h.as_slice() == k.as_bytes()))
                    .cloned()
                    .collect();
                let misses = missed.len() as u32;
                Some(CacheResult {
                    hits: p.values.min(p.command.key_count),
                    misses,
                    missed_keys: missed,
                })
            }
            Kind::MetaGet => {
                let hit = matches!(status.as_deref(), Some("VA" | "HD"));
                let missed = if hit {
                    Vec::new()
                } else {
                    p.command.keys.clone()
                };
                Some(CacheResult {
                    hits: u32::from(hit),
                    misses: u32::from(!hit),
                    missed_keys: missed,
                })
            }
            _ => None,
        };
        let answered = status.is_some()
            || error.is_some()
            || p.command.kind == Kind::Retrieval
            || p.command.noreply;
        MemcachedExchange {
            side: self.side,
            operation: Arc::from(p.command.name.as_str()),
            query_text: Arc::from(p.command.text.as_str()),
            keys: p.command.key_count,
            status: if p.command.kind == Kind::Retrieval {
                None
            } else {
                status
            },
            error,
            cache,
            noreply: p.command.noreply,
            request_size: p.size,
            reply_size: p.reply_size,
            answered,
            request_start_ns: p.start_ns,
            response_end_ns: ts_ns.max(p.start_ns),
            request_tid: p.tid,
            response_tid: tid,
        }
    }

    fn damage(&mut self) {
        self.lost += self.pending.len() as u64;
        self.pending.clear();
        self.damaged = true;
        self.block_ends_reply = false;
    }
}

/// The first bytes of a memcached text command: a known lower-case command word, then a
/// space or the end of the line, in a line that ends in `\r\n`.
pub fn looks_like_command(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let line = &bytes[..end];
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    command::is_command_word(word) && line.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
}

/// memcached's text protocol, in the [`REGISTRY`](super::REGISTRY).
pub struct Memcached;

impl super::Protocol for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        looks_like_command(chunk.bytes).then(|| Side::sending_requests(chunk.direction))
    }

    fn parser(&self, side: Side, _first: &[u8], _options: &Options) -> Box<dyn StreamParser> {
        Boxed::stream(self.name(), MemcachedParser::new(side))
    }
}

impl Parser for MemcachedParser {
    type Exchange = MemcachedExchange;
    type Error = MemcachedParseError;

    fn side(&self) -> Side {
        self.side
    }

    fn on_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<MemcachedExchange>,
    ) -> Result<(), MemcachedParseError> {
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
        let (ts_ns, tid) = (chunk.ts_ns, chunk.tid);
        let fed = if is_request {
            let mut reader = std::mem::take(&mut self.requests);
            let fed = reader.feed(chunk.bytes, ts_ns, tid, &mut |r, piece| {
                self.on_request(r, piece, ts_ns, tid)
            });
            self.requests = reader;
            fed
        } else {
            let mut reader = std::mem::take(&mut self.replies);
            let fed = reader.feed(chunk.bytes, ts_ns, tid, &mut |r, piece| {
                self.on_reply_at(r, piece, ts_ns, tid)
            });
            self.replies = reader;
            fed
        };
        out.append(&mut self.out);
        let result = match (fed, self.error.take()) {
            (Err(e), _) => Err(e.into()),
            (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        };
        if result.is_err() {
            self.damage();
        }
        result
    }

    fn on_gap(
        &mut self,
        gap: &Gap,
        out: &mut Vec<MemcachedExchange>,
    ) -> Result<(), MemcachedParseError> {
        if self.damaged || gap.len == 0 {
            return Ok(());
        }
        let is_request = gap.direction == self.side.request_direction();
        let (ts_ns, tid) = (gap.ts_ns, 0);
        let skipped = if is_request {
            let mut reader = std::mem::take(&mut self.requests);
            let ok = reader.on_gap(gap.len, &mut |r, piece| {
                self.on_request(r, piece, ts_ns, tid)
            });
            self.requests = reader;
            ok
        } else {
            let mut reader = std::mem::take(&mut self.replies);
            let ok = reader.on_gap(gap.len, &mut |r, piece| {
                self.on_reply_at(r, piece, ts_ns, tid)
            });
            self.replies = reader;
            ok
        };
        out.append(&mut self.out);
        if !skipped {
            self.damage();
            return Err(MemcachedParseError::GapInFraming);
        }
        Ok(())
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<MemcachedExchange>) -> usize {
        let mut unanswered = 0;
        while let Some(p) = self.pending.pop_front() {
            let mut exchange = self.exchange(p, None, None, ts_ns, 0);
            exchange.answered = false;
            exchange.cache = None;
            unanswered += 1;
            out.push(exchange);
        }
        unanswered
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }
}

impl MemcachedParser {
    /// A piece of the reply direction that completed in a chunk at `ts_ns`: a reply ends when
    /// its last line (or, for a meta `VA`, its data block) arrived.
    fn on_reply_at(&mut self, reader: &mut LineReader, piece: Piece, ts_ns: u64, tid: u32) {
        match piece {
            Piece::BlockEnd { size, .. } => {
                if let Some(p) = self.pending.front_mut() {
                    p.reply_size += size;
                }
                if std::mem::take(&mut self.block_ends_reply) {
                    self.finish_front(Some("VA".to_owned()), None, ts_ns, tid);
                }
            }
            Piece::Line { text, size, .. } => self.on_reply_line(reader, text, size, ts_ns, tid),
        }
    }
}

impl super::Exchange for MemcachedExchange {
    fn side(&self) -> Side {
        self.side
    }

    fn request_start_ns(&self) -> u64 {
        self.request_start_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::memcached_span(self, endpoints, resource, clock)
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
