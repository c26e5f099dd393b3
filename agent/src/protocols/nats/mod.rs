//! NATS (the client protocol, text): messages published and delivered, from the two byte
//! streams of one client connection, on any port.
//!
//! A [`NatsParser`] on a NATS client's connection appends a [`NatsMessage`] for each message
//! the client publishes (`PUB`, `HPUB`: a PRODUCER span) and each message delivered to it
//! (`MSG`, `HMSG`: a CONSUMER span). Publishing is fire-and-forget: the message is an exchange
//! as soon as it was written. Request/reply is two messages: the request published with a
//! reply subject (an `_INBOX.` subject), and the reply published by the responder to it.
//!
//! Each message carries what identifies it on both ends, so that trace assembly can make the
//! CONSUMER span the child of the PRODUCER span that sent it (`ztrace.link` = `message`): its
//! subject, its payload's size and a digest of its first [`DIGEST_BYTES`] bytes (never the
//! payload). A message whose headers (`HPUB`/`HMSG`) carry a W3C `traceparent` joins that trace
//! instead (`ztrace.link` = `header`).
//!
//! On the server's side of a connection (nats-server itself) the parser reads and produces
//! nothing: the broker's own work is not a span. `CONNECT` (credentials), `INFO`, `SUB`,
//! `UNSUB`, `PING`/`PONG`, `+OK`/`-ERR` are framed and skipped.

pub mod span;

use std::sync::Arc;

use super::lines::{FramingError, LineReader, Piece};
use super::{Boxed, Chunk, Direction, Endpoints, Gap, Options, Parser, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};
use crate::trace::context::{parse_traceparent, TraceParent};

/// Payload bytes hashed into a message's digest.
pub const DIGEST_BYTES: usize = crate::trace::MESSAGE_KEY_BYTES;
/// Header bytes read for a `traceparent`.
const MAX_HEADER_BYTES: usize = 2048;
/// Longest subject kept.
const MAX_SUBJECT: usize = 256;

/// Publishing or delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `PUB`/`HPUB`, written by the traced client.
    Publish,
    /// `MSG`/`HMSG`, read by the traced client.
    Receive,
}

/// One message published or delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsMessage {
    pub operation: Operation,
    pub subject: Arc<str>,
    /// The reply subject (request/reply), if any.
    pub reply_to: Option<Arc<str>>,
    /// The subscription id a delivery is for.
    pub sid: Option<Arc<str>>,
    /// Payload bytes (headers excluded).
    pub body_size: u64,
    /// Header bytes (`HPUB`/`HMSG`).
    pub header_size: u64,
    /// FNV-1a of the subject, the payload size and its first [`DIGEST_BYTES`] bytes: equal on
    /// the producer's and the consumer's end of one message.
    pub digest: u64,
    pub traceparent: Option<TraceParent>,
    pub ts_ns: u64,
    pub tid: u32,
}

impl NatsMessage {
    /// The key that identifies this message on both ends.
    pub fn key(&self) -> u64 {
        self.digest
    }
}

/// Why bytes could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatsParseError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("a NATS message line with a size that is not a number")]
    BadSize,
    #[error("bytes not captured hid a NATS line boundary")]
    GapInFraming,
}

/// A message line read, waiting for its payload.
#[derive(Debug)]
struct Open {
    operation: Operation,
    subject: Arc<str>,
    reply_to: Option<Arc<str>>,
    sid: Option<Arc<str>>,
    header_size: u64,
    body_size: u64,
    ts_ns: u64,
    tid: u32,
}

/// The parser of one connection.
#[derive(Debug)]
pub struct NatsParser {
    side: Side,
    client_out: LineReader,
    server_out: LineReader,
    open_pub: Option<Open>,
    open_msg: Option<Open>,
    damaged_out: bool,
    damaged_in: bool,
    out: Vec<NatsMessage>,
    error: Option<NatsParseError>,
}

/// The digest of a message: its subject, payload size and payload prefix
/// ([`crate::trace::message_key`]).
pub fn digest(subject: &str, body_size: u64, body_prefix: &[u8]) -> u64 {
    crate::trace::message_key("nats", subject, body_size, body_prefix) as u64
}

fn text(bytes: &[u8]) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_SUBJECT)]).as_ref())
}

fn size(word: Option<&&[u8]>) -> Option<u64> {
    std::str::from_utf8(word?).ok()?.parse().ok()
}

/// The message line (`PUB s [reply] n`, `HPUB s [reply] h n`, `MSG s sid [reply] n`,
/// `HMSG s sid [reply] h n`) as an open message; `Err` when its sizes are no numbers; `None`
/// for any other line.
fn message_line(line: &[u8], ts_ns: u64, tid: u32) -> Option<Result<Open, NatsParseError>> {
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .collect();
    let verb = words.first()?.to_ascii_uppercase();
    let (operation, with_sid, headers) = match verb.as_slice() {
        b"PUB" => (Operation::Publish, false, false),
        b"HPUB" => (Operation::Publish, false, true),
        b"MSG" => (Operation::Receive, true, false),
        b"HMSG" => (Operation::Receive, true, true),
        _ => return None,
    };
    let fixed = 2 + usize::from(with_sid) + usize::from(headers) + 1; // verb, subject, [sid], [hdr], total
    let reply = match words.len() {
        n if n == fixed => None,
        n if n == fixed + 1 => Some(text(words[2 + usize::from(with_sid)])),
        _ => return Some(Err(NatsParseError::BadSize)),
    };
    let total = size(words.last());
    let header_size = if headers {
        size(words.get(words.len() - 2))
    } else {
        Some(0)
    };
    let (Some(total), Some(header_size)) = (total, header_size) else {
        return Some(Err(NatsParseError::BadSize));
    };
    if header_size > total {
        return Some(Err(NatsParseError::BadSize));
    }
    Some(Ok(Open {
        operation,
        subject: text(words[1]),
        reply_to: reply,
        sid: with_sid.then(|| text(words[2])),
        header_size,
        body_size: total - header_size,
        ts_ns,
        tid,
    }))
}

impl NatsParser {
    pub fn new(side: Side) -> Self {
        NatsParser {
            side,
            client_out: LineReader::default(),
            server_out: LineReader::default(),
            open_pub: None,
            open_msg: None,
            damaged_out: false,
            damaged_in: false,
            out: Vec::new(),
            error: None,
        }
    }

    /// A piece of one direction; `from_client`: the NATS client wrote it.
    fn on_piece(
        &mut self,
        reader: &mut LineReader,
        piece: Piece,
        from_client: bool,
        ts_ns: u64,
        tid: u32,
    ) {
        match piece {
            Piece::Line { text, .. } => match message_line(&text, ts_ns, tid) {
                None => {}
                Some(Err(e)) => self.error = Some(e),
                Some(Ok(open)) => {
                    let keep = (open.header_size as usize).min(MAX_HEADER_BYTES) + DIGEST_BYTES;
                    reader.expect_block(open.header_size + open.body_size, keep);
                    if from_client {
                        self.open_pub = Some(open);
                    } else {
                        self.open_msg = Some(open);
                    }
                }
            },
            Piece::BlockEnd { kept, .. } => {
                let open = if from_client {
                    self.open_pub.take()
                } else {
                    self.open_msg.take()
                };
                let Some(open) = open else { return };
                // Only the client's own connection makes spans; nats-server's side is the broker.
                if self.side != Side::Client {
                    return;
                }
                let header_len = (open.header_size as usize).min(kept.len());
                let (headers, body) = kept.split_at(header_len);
                // The digest needs the body's prefix; headers longer than what was kept hide it.
                let body = if open.header_size as usize <= MAX_HEADER_BYTES {
                    body
                } else {
                    &[][..]
                };
                self.out.push(NatsMessage {
                    digest: digest(&open.subject, open.body_size, body),
                    traceparent: traceparent_of(headers),
                    operation: open.operation,
                    subject: open.subject,
                    reply_to: open.reply_to,
                    sid: open.sid,
                    body_size: open.body_size,
                    header_size: open.header_size,
                    ts_ns: open.ts_ns,
                    tid: open.tid,
                });
            }
        }
    }
}

/// The `traceparent` of a NATS header block (`NATS/1.0\r\nName: value\r\n...\r\n\r\n`).
fn traceparent_of(headers: &[u8]) -> Option<TraceParent> {
    headers.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("traceparent")
            .then(|| parse_traceparent(value))
            .flatten()
    })
}

/// The first bytes of a NATS connection: the server's `INFO {`, or a client's `CONNECT {`,
/// `PUB `, `HPUB `, `SUB ` (a connection picked up later).
pub fn detect_side(chunk: &Chunk<'_>) -> Option<Side> {
    let b = chunk.bytes;
    // A delivery (`MSG`/`HMSG` with sizes that are numbers) is the server's too: a subscriber
    // whose connection predates ztrace shows nothing else until its next message.
    let delivery = || {
        let end = b.windows(2).position(|w| w == b"\r\n")?;
        matches!(
            message_line(&b[..end], 0, 0),
            Some(Ok(Open {
                operation: Operation::Receive,
                ..
            }))
        )
        .then_some(())
    };
    let sender_is_server = b.starts_with(b"INFO {")
        || ([&b"MSG "[..], b"HMSG "].iter().any(|p| b.starts_with(p)) && delivery().is_some());
    let sender_is_client = [&b"CONNECT {"[..], b"PUB ", b"HPUB ", b"SUB "]
        .iter()
        .any(|p| b.starts_with(p))
        && b.windows(2).any(|w| w == b"\r\n");
    let sender = if sender_is_server {
        Side::Server
    } else if sender_is_client {
        Side::Client
    } else {
        return None;
    };
    // The traced process wrote the bytes (Egress): it is the sender; else the other end.
    Some(match (chunk.direction, sender) {
        (Direction::Egress, s) => s,
        (Direction::Ingress, Side::Server) => Side::Client,
        (Direction::Ingress, Side::Client) => Side::Server,
    })
}

/// NATS, in the [`REGISTRY`](super::REGISTRY).
pub struct Nats;

impl super::Protocol for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        detect_side(chunk)
    }

    fn parser(&self, side: Side, _first: &[u8], _options: &Options) -> Box<dyn StreamParser> {
        Boxed::stream(self.name(), NatsParser::new(side))
    }
}

impl Parser for NatsParser {
    type Exchange = NatsMessage;
    type Error = NatsParseError;

    fn side(&self) -> Side {
        self.side
    }

    /// A client publishes without answers: each of its writes may be a new message, written by
    /// whichever thread publishes it (the thread link of each PRODUCER span).
    fn unanswered(&self) -> bool {
        self.side == Side::Client
    }

    fn on_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<NatsMessage>,
    ) -> Result<(), NatsParseError> {
        // The client writes in the request direction.
        let from_client = chunk.direction == self.side.request_direction();
        let damaged = if from_client {
            &mut self.damaged_out
        } else {
            &mut self.damaged_in
        };
        if *damaged {
            // Each write of a NATS client or server starts at a line: framing is found again there.
            let b = chunk.bytes;
            let starts_line = [
                &b"PUB "[..],
                b"HPUB ",
                b"MSG ",
                b"HMSG ",
                b"PING",
                b"PONG",
                b"SUB ",
                b"UNSUB ",
                b"INFO ",
                b"+OK",
                b"-ERR",
            ]
            .iter()
            .any(|p| b.starts_with(p));
            if !starts_line {
                return Ok(());
            }
            *damaged = false;
            if from_client {
                self.client_out.reset();
                self.open_pub = None;
            } else {
                self.server_out.reset();
                self.open_msg = None;
            }
        }
        let (ts_ns, tid) = (chunk.ts_ns, chunk.tid);
        let mut reader = std::mem::take(if from_client {
            &mut self.client_out
        } else {
            &mut self.server_out
        });
        let fed = reader.feed(chunk.bytes, ts_ns, tid, &mut |r, piece| {
            self.on_piece(r, piece, from_client, ts_ns, tid)
        });
        *(if from_client {
            &mut self.client_out
        } else {
            &mut self.server_out
        }) = reader;
        out.append(&mut self.out);
        let result = match (fed, self.error.take()) {
            (Err(e), _) => Err(e.into()),
            (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        };
        if result.is_err() {
            *(if from_client {
                &mut self.damaged_out
            } else {
                &mut self.damaged_in
            }) = true;
        }
        result
    }

    fn on_gap(&mut self, gap: &Gap, out: &mut Vec<NatsMessage>) -> Result<(), NatsParseError> {
        let from_client = gap.direction == self.side.request_direction();
        if gap.len == 0
            || (if from_client {
                self.damaged_out
            } else {
                self.damaged_in
            })
        {
            return Ok(());
        }
        let (ts_ns, tid) = (gap.ts_ns, 0);
        let mut reader = std::mem::take(if from_client {
            &mut self.client_out
        } else {
            &mut self.server_out
        });
        let ok = reader.on_gap(gap.len, &mut |r, piece| {
            self.on_piece(r, piece, from_client, ts_ns, tid)
        });
        *(if from_client {
            &mut self.client_out
        } else {
            &mut self.server_out
        }) = reader;
        out.append(&mut self.out);
        if !ok {
            *(if from_client {
                &mut self.damaged_out
            } else {
                &mut self.damaged_in
            }) = true;
            return Err(NatsParseError::GapInFraming);
        }
        Ok(())
    }

    fn on_close(&mut self, _ts_ns: u64, _out: &mut Vec<NatsMessage>) -> usize {
        0 // a message is a span once written or read whole; nothing waits for an answer
    }
}

impl super::Exchange for NatsMessage {
    fn side(&self) -> Side {
        Side::Client
    }

    fn request_start_ns(&self) -> u64 {
        self.ts_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::nats_span(self, endpoints, resource, clock)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn consumer_thread(&self) -> Option<u32> {
        (self.operation == Operation::Receive).then_some(self.tid)
    }
}

#[cfg(test)]
mod tests;
