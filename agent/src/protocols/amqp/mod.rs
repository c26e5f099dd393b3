//! RabbitMQ over AMQP 0-9-1: messages published and delivered, from the two byte streams of one
//! client connection, on any port.
//!
//! An [`AmqpParser`] on an AMQP client's connection appends an [`AmqpMessage`] for each message
//! the client publishes (`basic.publish` with its content header and body frames: a PRODUCER
//! span), each message pushed to it (`basic.deliver`: a CONSUMER span) and each message it
//! pulls (`basic.get` answered by `basic.get-ok`: a CONSUMER span). A message is an exchange as
//! soon as its last body frame moved; acks, `basic.get-empty`, `basic.return` and every
//! `connection.*`, `channel.*`, `exchange.*` and `queue.*` method are framed and skipped.
//!
//! Each message carries what identifies it on both ends, so that trace assembly can make the
//! CONSUMER span the child of the PRODUCER span that sent it (`ztrace.link` = `message`): its
//! exchange and routing key (a delivery carries those it was published with), its body's size
//! and a digest of its first [`DIGEST_BYTES`] bytes (never the body). A message whose `headers`
//! property carries a W3C `traceparent` joins that trace instead (`ztrace.link` = `header`).
//!
//! Frames of different channels interleave; a message's frames are assembled per channel. Bytes
//! that are no frames, or a gap that hides a frame boundary, are an error: the messages then
//! half read are dropped (counted by [`Parser::take_lost`]) and the direction waits for a write
//! that starts with a frame. The credentials of `connection.start-ok` are never decoded nor
//! kept: method frames on channel 0 keep only their class and method ids.
//!
//! On the broker's side of a connection (rabbitmq-server itself) the parser produces nothing:
//! the broker's own work is not a span.

pub mod frame;
pub mod method;
pub mod span;

use std::collections::HashMap;
use std::sync::Arc;

use frame::{Frame, FrameError, FrameReader};
use method::{ContentHeader, Method, Truncated};

use super::{Boxed, Chunk, Direction, Endpoints, Gap, Options, Parser, Side, StreamParser};
use crate::spans::{clock::Clock, Resource, Span};
use crate::trace::context::TraceParent;

/// Body bytes hashed into a message's digest.
pub const DIGEST_BYTES: usize = crate::trace::MESSAGE_KEY_BYTES;
/// Method payload bytes kept (a `basic.deliver`'s arguments are at most 530 bytes).
const METHOD_BYTES: usize = 1024;
/// Content header payload bytes kept (properties, with the `headers` table).
const HEADER_BYTES: usize = 16 * 1024;
/// Channels with a message half read, per direction; beyond that new ones are not followed.
const MAX_OPEN: usize = 256;

/// Publishing, or delivery by push or by pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `basic.publish`, written by the traced client.
    Publish,
    /// `basic.deliver`, pushed to the traced client (a consumer).
    Deliver,
    /// `basic.get-ok`, the answer to the traced client's `basic.get`.
    Get,
}

/// One message published or delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpMessage {
    pub operation: Operation,
    pub channel: u16,
    /// The exchange it was published to (empty: the default exchange).
    pub exchange: Arc<str>,
    pub routing_key: Arc<str>,
    /// The delivery tag of a delivery.
    pub delivery_tag: Option<u64>,
    /// The consumer a push delivery is for.
    pub consumer_tag: Option<Arc<str>>,
    /// The queue a pull named (when its `basic.get` was seen).
    pub queue: Option<Arc<str>>,
    pub redelivered: bool,
    pub body_size: u64,
    /// FNV-1a of the exchange and routing key, the body size and its first [`DIGEST_BYTES`]
    /// bytes: equal on the producer's and the consumer's end of one message.
    pub digest: u64,
    pub traceparent: Option<TraceParent>,
    /// The method's first byte (a pull: its `basic.get`'s).
    pub start_ns: u64,
    /// The last body frame's first byte.
    pub end_ns: u64,
    /// The thread that wrote the publish or read the delivery.
    pub tid: u32,
}

impl AmqpMessage {
    /// The key that identifies this message on both ends.
    pub fn key(&self) -> u64 {
        self.digest
    }
}

/// Why bytes could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmqpParseError {
    #[error(transparent)]
    Framing(#[from] FrameError),
    #[error(transparent)]
    Method(#[from] Truncated),
    #[error("AMQP content header too short for its body size")]
    BadContentHeader,
}

/// The digest of a message: its exchange and routing key, body size and body prefix
/// ([`crate::trace::message_key`]).
pub fn digest(exchange: &str, routing_key: &str, body_size: u64, body_prefix: &[u8]) -> u64 {
    let destination = format!("{exchange}\0{routing_key}");
    crate::trace::message_key("rabbitmq", &destination, body_size, body_prefix) as u64
}

/// A message whose method was read, waiting for its content.
#[derive(Debug)]
struct Pending {
    method: Method,
    start_ns: u64,
    tid: u32,
    header: Option<ContentHeader>,
    received: u64,
    prefix: Vec<u8>,
    /// A gap fell in the body's first bytes: the digest cannot match.
    prefix_cut: bool,
    queue: Option<Arc<str>>,
}

/// Message assembly of one direction.
#[derive(Debug, Default)]
struct Assembly {
    pending: HashMap<u16, Pending>,
    /// `basic.get`s awaiting their answer, by channel: (time, queue).
    gets: HashMap<u16, (u64, Arc<str>)>,
    lost: u64,
    error: Option<AmqpParseError>,
}

/// How many payload bytes of a frame to keep.
fn keep(kind: u8, channel: u16) -> usize {
    match kind {
        // Channel 0 carries `connection.*` only (credentials): its class and method ids.
        frame::METHOD if channel == 0 => 4,
        frame::METHOD => METHOD_BYTES,
        frame::HEADER => HEADER_BYTES,
        frame::BODY => DIGEST_BYTES,
        _ => 0,
    }
}

impl Assembly {
    fn drop_all(&mut self) {
        self.lost += self.pending.len() as u64;
        self.pending.clear();
    }

    /// One complete frame; a finished message is appended to `out` (when `produce`). A pull's
    /// answer takes its start from `gets`, the other direction's `basic.get`s.
    fn on_frame_into(
        &mut self,
        f: Frame<'_>,
        produce: bool,
        gets: &HashMap<u16, (u64, Arc<str>)>,
        out: &mut Vec<AmqpMessage>,
    ) {
        match f.kind {
            frame::METHOD => {
                if f.channel == 0 {
                    return;
                }
                if self.pending.remove(&f.channel).is_some() {
                    self.lost += 1; // a method in the middle of a message's content
                }
                let method = match method::decode(f.kept) {
                    Ok(m) => m,
                    Err(e) => {
                        self.error = Some(e.into());
                        return;
                    }
                };
                if let Method::Get { queue } = &method {
                    if self.gets.len() < MAX_OPEN || self.gets.contains_key(&f.channel) {
                        self.gets.insert(f.channel, (f.ts_ns, queue.clone()));
                    }
                    return;
                }
                if !method.has_content() {
                    return;
                }
                if self.pending.len() >= MAX_OPEN {
                    self.lost += 1;
                    return;
                }
                let (start_ns, queue) = match (&method, gets.get(&f.channel)) {
                    (Method::GetOk { .. }, Some((ts, queue))) => (*ts, Some(queue.clone())),
                    _ => (f.ts_ns, None),
                };
                self.pending.insert(
                    f.channel,
                    Pending {
                        method,
                        start_ns,
                        tid: f.tid,
                        header: None,
                        received: 0,
                        prefix: Vec::new(),
                        prefix_cut: false,
                        queue,
                    },
                );
            }
            frame::HEADER => {
                let Some(p) = self.pending.get_mut(&f.channel) else {
                    return; // content of a method not seen (picked up mid-stream)
                };
                if p.header.is_some() {
                    self.pending.remove(&f.channel);
                    self.lost += 1;
                    return;
                }
                match method::content_header(f.kept) {
                    Some(h) => p.header = Some(h),
                    None => {
                        self.pending.remove(&f.channel);
                        self.lost += 1;
                        self.error = Some(AmqpParseError::BadContentHeader);
                        return;
                    }
                }
                self.finish_if_whole(f.channel, f.ts_ns, produce, out);
            }
            frame::BODY => {
                let Some(p) = self.pending.get_mut(&f.channel) else {
                    return;
                };
                if p.header.is_none() {
                    self.pending.remove(&f.channel);
                    self.lost += 1;
                    return;
                }
                p.received += u64::from(f.size);
                if !p.prefix_cut && p.prefix.len() < DIGEST_BYTES {
                    let n = (DIGEST_BYTES - p.prefix.len()).min(f.kept.len());
                    p.prefix.extend_from_slice(&f.kept[..n]);
                    // A cut frame, or one whose kept bytes stop short of its size, ends the
                    // prefix that can be trusted.
                    if f.cut {
                        p.prefix_cut = true;
                    }
                }
                self.finish_if_whole(f.channel, f.ts_ns, produce, out);
            }
            _ => {} // heartbeats
        }
    }

    fn finish_if_whole(
        &mut self,
        channel: u16,
        ts_ns: u64,
        produce: bool,
        out: &mut Vec<AmqpMessage>,
    ) {
        let whole = self
            .pending
            .get(&channel)
            .and_then(|p| Some(p.received >= p.header.as_ref()?.body_size))
            .unwrap_or(false);
        if !whole {
            return;
        }
        let Some(p) = self.pending.remove(&channel) else {
            return;
        };
        let Some(header) = p.header else { return };
        if !produce {
            return;
        }
        let (operation, exchange, routing_key, delivery_tag, consumer_tag, redelivered) =
            match p.method {
                Method::Publish {
                    exchange,
                    routing_key,
                } => (Operation::Publish, exchange, routing_key, None, None, false),
                Method::Deliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                } => (
                    Operation::Deliver,
                    exchange,
                    routing_key,
                    Some(delivery_tag),
                    Some(consumer_tag),
                    redelivered,
                ),
                Method::GetOk {
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                } => (
                    Operation::Get,
                    exchange,
                    routing_key,
                    Some(delivery_tag),
                    None,
                    redelivered,
                ),
                _ => return, // basic.return: the broker sent content back
            };
        out.push(AmqpMessage {
            digest: digest(&exchange, &routing_key, header.body_size, &p.prefix),
            operation,
            channel,
            exchange,
            routing_key,
            delivery_tag,
            consumer_tag,
            queue: if operation == Operation::Get {
                p.queue
            } else {
                None
            },
            redelivered,
            body_size: header.body_size,
            traceparent: header.traceparent,
            start_ns: p.start_ns,
            end_ns: ts_ns,
            tid: p.tid,
        });
    }
}

/// One direction of a connection: its framing and its messages.
#[derive(Debug, Default)]
struct Stream {
    frames: FrameReader,
    assembly: Assembly,
}

/// The parser of one connection.
#[derive(Debug)]
pub struct AmqpParser {
    side: Side,
    /// What the client wrote.
    client: Stream,
    /// What the broker wrote.
    broker: Stream,
    out: Vec<AmqpMessage>,
}

impl AmqpParser {
    pub fn new(side: Side) -> Self {
        AmqpParser {
            side,
            client: Stream::default(),
            broker: Stream::default(),
            out: Vec::new(),
        }
    }
}

/// The sender of a method, when only one end sends it: `Some(Side::Client)` for what only a
/// client sends (`basic.publish`, `basic.get`, `channel.open`, ...). `basic.ack` and
/// `basic.nack` go both ways (publisher confirms): they say nothing.
fn method_sender(class: u16, method: u16) -> Option<Side> {
    match (class, method) {
        (10, 11 | 31 | 40) | (20, 10) | (40 | 50, 10 | 20 | 30 | 40) | (60, 10 | 20 | 30 | 40)
        | (60, 70 | 90 | 100 | 110) => Some(Side::Client),
        (10, 10 | 30 | 41) | (20, 11) | (60, 11 | 21 | 31 | 50 | 60 | 71 | 72 | 111) => {
            Some(Side::Server)
        }
        _ => None,
    }
}

/// The first bytes of an AMQP 0-9-1 connection: the client's protocol header, or (a connection
/// picked up later) a whole method frame whose method only one end sends.
pub fn detect_side(chunk: &Chunk<'_>) -> Option<Side> {
    let b = chunk.bytes;
    let sender = if b.starts_with(frame::PROTOCOL_HEADER) {
        Side::Client
    } else {
        let [frame::METHOD, _, _, s0, s1, s2, s3, c0, c1, m0, m1, ..] = *b else {
            return None;
        };
        let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
        if size < 4 || b.get(7 + size) != Some(&frame::FRAME_END) {
            return None;
        }
        method_sender(u16::from_be_bytes([c0, c1]), u16::from_be_bytes([m0, m1]))?
    };
    // The traced process wrote the bytes (Egress): it is the sender; else the other end.
    Some(match (chunk.direction, sender) {
        (Direction::Egress, s) => s,
        (Direction::Ingress, Side::Server) => Side::Client,
        (Direction::Ingress, Side::Client) => Side::Server,
    })
}

/// RabbitMQ's AMQP 0-9-1, in the [`REGISTRY`](super::REGISTRY).
pub struct Amqp;

impl super::Protocol for Amqp {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn detect(&self, chunk: &Chunk<'_>) -> Option<Side> {
        detect_side(chunk)
    }

    fn parser(&self, side: Side, _first: &[u8], _options: &Options) -> Box<dyn StreamParser> {
        Boxed::stream(self.name(), AmqpParser::new(side))
    }
}

impl Parser for AmqpParser {
    type Exchange = AmqpMessage;
    type Error = AmqpParseError;

    fn side(&self) -> Side {
        self.side
    }

    fn on_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<AmqpMessage>,
    ) -> Result<(), AmqpParseError> {
        let from_client = chunk.direction == self.side.request_direction();
        let produce = self.side == Side::Client;
        let (stream, other) = if from_client {
            (&mut self.client, &self.broker)
        } else {
            (&mut self.broker, &self.client)
        };
        if stream.frames.damaged() {
            // Each write of an AMQP peer starts at a frame: framing is found again there.
            if !stream.frames.resync(chunk.bytes) {
                return Ok(());
            }
            stream.assembly.drop_all();
        }
        let Stream { frames, assembly } = stream;
        // A pull's `basic.get` went the other way.
        let gets = &other.assembly.gets;
        let fed = frames.feed(chunk.bytes, chunk.ts_ns, chunk.tid, keep, &mut |f| {
            assembly.on_frame_into(f, produce, gets, &mut self.out)
        });
        out.append(&mut self.out);
        if fed.is_err() {
            assembly.drop_all();
        }
        match (fed, assembly.error.take()) {
            (Err(e), _) => Err(e.into()),
            (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        }
    }

    fn on_gap(&mut self, gap: &Gap, _out: &mut Vec<AmqpMessage>) -> Result<(), AmqpParseError> {
        let stream = if gap.direction == self.side.request_direction() {
            &mut self.client
        } else {
            &mut self.broker
        };
        if gap.len == 0 || stream.frames.damaged() {
            return Ok(());
        }
        stream.frames.on_gap(gap.len).map_err(|e| {
            stream.assembly.drop_all();
            e.into()
        })
    }

    fn on_close(&mut self, _ts_ns: u64, _out: &mut Vec<AmqpMessage>) -> usize {
        // A message is a span once written or read whole; nothing waits for an answer.
        self.client.assembly.drop_all();
        self.broker.assembly.drop_all();
        0
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.client.assembly.lost)
            + std::mem::take(&mut self.broker.assembly.lost)
    }
}

impl super::Exchange for AmqpMessage {
    fn side(&self) -> Side {
        Side::Client
    }

    fn request_start_ns(&self) -> u64 {
        self.start_ns
    }

    fn to_span(&self, endpoints: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
        span::amqp_span(self, endpoints, resource, clock)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn consumer_thread(&self) -> Option<u32> {
        (self.operation != Operation::Publish).then_some(self.tid)
    }
}

#[cfg(test)]
mod tests;
