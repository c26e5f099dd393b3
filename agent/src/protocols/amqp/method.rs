//! The AMQP 0-9-1 methods and content header that messages are made of, decoded from a frame's
//! kept payload bytes: `basic.publish`, `basic.deliver`, `basic.get`, `basic.get-ok`,
//! `basic.return` (content the broker sends back, no span) and the basic class's content header
//! (body size, and a W3C `traceparent` among its `headers` table).
//!
//! Every other method (`connection.*` with its credentials in `start-ok`, `channel.*`,
//! `queue.*`, `basic.ack`, ...) is only named by its class and method ids: its arguments are
//! never decoded nor kept.

use std::sync::Arc;

use crate::trace::context::{parse_traceparent, TraceParent};

/// The basic class.
pub const BASIC: u16 = 60;
pub const PUBLISH: u16 = 40;
pub const RETURN: u16 = 50;
pub const DELIVER: u16 = 60;
pub const GET: u16 = 70;
pub const GET_OK: u16 = 71;
/// Longest exchange or routing key kept (AMQP short strings are at most 255 bytes).
const MAX_NAME: usize = 255;

/// A method this parser reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `basic.publish`, followed by content.
    Publish {
        exchange: Arc<str>,
        routing_key: Arc<str>,
    },
    /// `basic.deliver` (pushed to a consumer), followed by content.
    Deliver {
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        redelivered: bool,
        exchange: Arc<str>,
        routing_key: Arc<str>,
    },
    /// `basic.get-ok` (the answer to a pull), followed by content.
    GetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: Arc<str>,
        routing_key: Arc<str>,
    },
    /// `basic.get`, a pull: the queue.
    Get { queue: Arc<str> },
    /// `basic.return`: content the broker could not route, sent back (no span).
    Return,
    /// Any other method (no content follows), by class and method id.
    Other(u16, u16),
}

impl Method {
    /// Content (a header and body frames) follows this method on its channel.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::Publish { .. } | Method::Deliver { .. } | Method::GetOk { .. } | Method::Return
        )
    }
}

/// A method's arguments were shorter than their fields.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("AMQP method {0}.{1} with truncated arguments")]
pub struct Truncated(pub u16, pub u16);

/// A cursor over kept payload bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn short_str(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn long_str(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(usize::try_from(n).ok()?)
    }
}

fn name(bytes: &[u8]) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_NAME)]).as_ref())
}

/// The method of a method frame's payload (its first bytes; arguments of the methods read must
/// be whole).
pub fn decode(payload: &[u8]) -> Result<Method, Truncated> {
    let mut c = Cursor(payload);
    let (Some(class), Some(method)) = (c.u16(), c.u16()) else {
        return Err(Truncated(0, 0));
    };
    let truncated = Truncated(class, method);
    if class != BASIC {
        return Ok(Method::Other(class, method));
    }
    let decoded = match method {
        PUBLISH => (|| {
            c.u16()?; // reserved (ticket)
            Some(Method::Publish {
                exchange: name(c.short_str()?),
                routing_key: name(c.short_str()?),
            })
        })(),
        DELIVER => (|| {
            Some(Method::Deliver {
                consumer_tag: name(c.short_str()?),
                delivery_tag: c.u64()?,
                redelivered: c.u8()? & 1 != 0,
                exchange: name(c.short_str()?),
                routing_key: name(c.short_str()?),
            })
        })(),
        GET_OK => (|| {
            Some(Method::GetOk {
                delivery_tag: c.u64()?,
                redelivered: c.u8()? & 1 != 0,
                exchange: name(c.short_str()?),
                routing_key: name(c.short_str()?),
            })
        })(),
        GET => (|| {
            c.u16()?; // reserved (ticket)
            Some(Method::Get {
                queue: name(c.short_str()?),
            })
        })(),
        RETURN => Some(Method::Return),
        _ => Some(Method::Other(class, method)),
    };
    decoded.ok_or(truncated)
}

/// What a content header says of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHeader {
    pub body_size: u64,
    /// A W3C `traceparent` in the `headers` property.
    pub traceparent: Option<TraceParent>,
}

/// A content header frame's payload (class, weight, body size, property flags, properties).
/// `None` when even the body size is missing; the properties are read as far as they are whole.
pub fn content_header(payload: &[u8]) -> Option<ContentHeader> {
    let mut c = Cursor(payload);
    let class = c.u16()?;
    c.u16()?; // weight
    let body_size = c.u64()?;
    let traceparent = if class == BASIC {
        headers_traceparent(&mut c)
    } else {
        None
    };
    Some(ContentHeader {
        body_size,
        traceparent,
    })
}

/// The basic class's property flags: content-type (bit 15), content-encoding (14), headers (13).
fn headers_traceparent(c: &mut Cursor<'_>) -> Option<TraceParent> {
    let flags = c.u16()?;
    let mut extra = flags;
    while extra & 1 != 0 {
        extra = c.u16()?; // further flag words (none defined for the basic class)
    }
    if flags & (1 << 15) != 0 {
        c.short_str()?;
    }
    if flags & (1 << 14) != 0 {
        c.short_str()?;
    }
    if flags & (1 << 13) == 0 {
        return None;
    }
    let table = c.long_str()?;
    table_traceparent(table)
}

/// The `traceparent` entry (a string) of a field table, walking entries up to it.
fn table_traceparent(table: &[u8]) -> Option<TraceParent> {
    let mut c = Cursor(table);
    while !c.0.is_empty() {
        let key = c.short_str()?;
        let kind = c.u8()?;
        if key.eq_ignore_ascii_case(b"traceparent") && matches!(kind, b'S' | b'x') {
            return parse_traceparent(std::str::from_utf8(c.long_str()?).ok()?);
        }
        skip_value(&mut c, kind)?;
    }
    None
}

/// Skips one field value of type `kind` (RabbitMQ's and the 0-9-1 errata's type letters).
fn skip_value(c: &mut Cursor<'_>, kind: u8) -> Option<()> {
    let n = match kind {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'A' | b'F' | b'x' => {
            c.long_str()?;
            return Some(());
        }
        _ => return None,
    };
    c.take(n).map(|_| ())
}
