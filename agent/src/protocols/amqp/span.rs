//! AMQP messages → spans, following the OpenTelemetry messaging semantic conventions and their
//! RabbitMQ page.
//!
//! - A message the traced client published (`basic.publish`): a PRODUCER span
//!   `publish {destination}`, `messaging.operation.type` = `send`.
//! - A message pushed to it (`basic.deliver`): a CONSUMER span `deliver {destination}`,
//!   `messaging.operation.type` = `process` (the client library hands it to a callback), with
//!   `messaging.rabbitmq.message.delivery_tag`.
//! - A message it pulled (`basic.get` → `basic.get-ok`): a CONSUMER span `get {destination}`,
//!   `messaging.operation.type` = `receive`, from the `basic.get` to the message's last frame,
//!   with `messaging.rabbitmq.message.delivery_tag`.
//! - All: `messaging.system` = `rabbitmq`, `messaging.operation.name` (the AMQP method:
//!   `publish`, `deliver`, `get`), `messaging.destination.name`,
//!   `messaging.rabbitmq.destination.routing_key` (when not empty),
//!   `messaging.message.body.size` (never the body), `server.*`, `network.peer.*`.
//! - The destination is the exchange. The conventions name the default exchange (the empty
//!   name, which routes a message to the queue its routing key names) by an empty string, which
//!   says nothing in a span name; the routing key, the queue's name, is shown instead, and
//!   `amq.default` when both are empty.
//! - Trace: a `traceparent` in the message's `headers` property makes the span its child
//!   (`ztrace.link` = `header`); otherwise the message's key ([`MESSAGE_KEY`], an attribute
//!   that trace assembly removes before any sink sees it) lets trace assembly make the CONSUMER
//!   span the child of the PRODUCER span of the same message (`ztrace.link` = `message`).

use std::sync::Arc;

use super::{AmqpMessage, Operation};
use crate::{
    protocols::Endpoints,
    spans::{
        clock::Clock, ip_string, new_span_id, new_trace_id, Attribute, Resource, Span, SpanKind,
        StatusCode,
    },
};

/// The attribute that carries a message's key to trace assembly (removed there).
pub const MESSAGE_KEY: &str = crate::trace::MESSAGE_KEY_ATTR;

/// `messaging.destination.name` of a message: its exchange, else its routing key, else
/// `amq.default`.
pub fn destination(m: &AmqpMessage) -> &str {
    if !m.exchange.is_empty() {
        &m.exchange
    } else if !m.routing_key.is_empty() {
        &m.routing_key
    } else {
        "amq.default"
    }
}

/// Builds the span of one AMQP message.
pub fn amqp_span(
    m: &AmqpMessage,
    conn: &Endpoints,
    resource: &Arc<Resource>,
    clock: &Clock,
) -> Span {
    let (kind, verb, op_type) = match m.operation {
        Operation::Publish => (SpanKind::Producer, "publish", "send"),
        Operation::Deliver => (SpanKind::Consumer, "deliver", "process"),
        Operation::Get => (SpanKind::Consumer, "get", "receive"),
    };
    let dest = destination(m);
    let mut attrs = Vec::with_capacity(16);
    attrs.push(Attribute::new("messaging.system", "rabbitmq"));
    attrs.push(Attribute::new("messaging.operation.name", verb));
    attrs.push(Attribute::new("messaging.operation.type", op_type));
    attrs.push(Attribute::new("messaging.destination.name", dest));
    if !m.routing_key.is_empty() {
        attrs.push(Attribute::new(
            "messaging.rabbitmq.destination.routing_key",
            &*m.routing_key,
        ));
    }
    if let Some(tag) = m.delivery_tag {
        attrs.push(Attribute::new(
            "messaging.rabbitmq.message.delivery_tag",
            i64::try_from(tag).unwrap_or(i64::MAX),
        ));
    }
    attrs.push(Attribute::new(
        "messaging.message.body.size",
        i64::try_from(m.body_size).unwrap_or(i64::MAX),
    ));
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
    Span {
        trace_id,
        span_id: new_span_id(),
        parent_span_id: parent,
        name: format!("{verb} {dest}"),
        kind,
        start_unix_nano: clock.to_unix(m.start_ns),
        end_unix_nano: clock.to_unix(m.end_ns.max(m.start_ns)),
        status: StatusCode::Unset,
        status_message: None,
        attributes: attrs,
        resource: resource.clone(),
    }
}
