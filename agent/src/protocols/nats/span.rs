//! NATS messages → spans, following the OpenTelemetry messaging semantic conventions.
//!
//! - A message the traced client published: a PRODUCER span `publish {subject}`,
//!   `messaging.operation.type` = `send`, `messaging.operation.name` = `publish`.
//! - A message delivered to it: a CONSUMER span `receive {subject}`,
//!   `messaging.operation.type` = `receive`, `messaging.operation.name` = `receive`,
//!   `messaging.destination.subscription.name` (the subscription id).
//! - Both: `messaging.system` = `nats`, `messaging.destination.name` (the subject; an `_INBOX.`
//!   reply subject is `messaging.destination.temporary` and names the span `... _INBOX`),
//!   `messaging.message.body.size` (never the body), `messaging.nats.reply_to` (request/reply),
//!   `server.*`, `network.peer.*`.
//! - Trace: a `traceparent` in the message's headers makes the span its child
//!   (`ztrace.link` = `header`); otherwise the message's key ([`MESSAGE_KEY`], an attribute that
//!   trace assembly removes before any sink sees it) lets trace assembly make the CONSUMER span
//!   the child of the PRODUCER span of the same message (`ztrace.link` = `message`).

use std::sync::Arc;

use super::{NatsMessage, Operation};
use crate::{
    protocols::Endpoints,
    spans::{
        clock::Clock, ip_string, new_span_id, new_trace_id, Attribute, Resource, Span, SpanKind,
        StatusCode,
    },
};

/// The attribute that carries a message's key to trace assembly (removed there).
pub const MESSAGE_KEY: &str = crate::trace::MESSAGE_KEY_ATTR;

/// Builds the span of one NATS message.
pub fn nats_span(
    m: &NatsMessage,
    conn: &Endpoints,
    resource: &Arc<Resource>,
    clock: &Clock,
) -> Span {
    let temporary = m.subject.starts_with("_INBOX.");
    let shown = if temporary { "_INBOX" } else { &*m.subject };
    let (kind, verb, op_type) = match m.operation {
        Operation::Publish => (SpanKind::Producer, "publish", "send"),
        Operation::Receive => (SpanKind::Consumer, "receive", "receive"),
    };
    let mut attrs = Vec::with_capacity(16);
    attrs.push(Attribute::new("messaging.system", "nats"));
    attrs.push(Attribute::new("messaging.operation.name", verb));
    attrs.push(Attribute::new("messaging.operation.type", op_type));
    attrs.push(Attribute::new("messaging.destination.name", &*m.subject));
    if temporary {
        attrs.push(Attribute::new("messaging.destination.temporary", true));
    }
    if let Some(sid) = &m.sid {
        attrs.push(Attribute::new(
            "messaging.destination.subscription.name",
            &**sid,
        ));
    }
    attrs.push(Attribute::new(
        "messaging.message.body.size",
        i64::try_from(m.body_size).unwrap_or(i64::MAX),
    ));
    if let Some(reply) = &m.reply_to {
        attrs.push(Attribute::new("messaging.nats.reply_to", &**reply));
    }
    attrs.push(Attribute::new(
        "server.address",
        ip_string(conn.remote.ip()),
    ));
    attrs.push(Attribute::new("server.port", i64::from(conn.remote.port())));
    attrs.push(Attribute::new(
        "network.peer.address",
        ip_string(conn.remote.ip()),
    ));
    attrs.push(Attribute::new(
        "network.peer.port",
        i64::from(conn.remote.port()),
    ));
    attrs.push(Attribute::new(
        "network.local.address",
        ip_string(conn.local.ip()),
    ));
    attrs.push(Attribute::new(
        "network.local.port",
        i64::from(conn.local.port()),
    ));
    attrs.push(Attribute::new(MESSAGE_KEY, m.key() as i64));
    let (trace_id, parent) = match &m.traceparent {
        Some(tp) => (tp.trace_id, Some(tp.parent_id)),
        None => (new_trace_id(), None),
    };
    attrs.push(Attribute::new(
        "ztrace.link",
        if parent.is_some() { "header" } else { "none" },
    ));
    let at = clock.to_unix(m.ts_ns);
    Span {
        trace_id,
        span_id: new_span_id(),
        parent_span_id: parent,
        name: format!("{verb} {shown}"),
        kind,
        start_unix_nano: at,
        end_unix_nano: at,
        status: StatusCode::Unset,
        status_message: None,
        attributes: attrs,
        resource: resource.clone(),
    }
}
