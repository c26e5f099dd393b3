//! Redis exchanges → spans, following the OpenTelemetry database semantic conventions.
//!
//! One CLIENT span per command (the traced process sent it) or SERVER span (the traced process
//! is the Redis server that ran it), with the same attributes:
//! - name: the command (`GET`, `HSET`, ...);
//! - `db.system.name` = `redis`, `db.operation.name`, `db.namespace` (the database index),
//!   `db.query.text` (the command with its keys; every value is `?`);
//! - an error reply: status error, its message as the status message, its prefix (`ERR`,
//!   `WRONGTYPE`, ...) as `db.response.status_code` and `error.type`;
//! - reads: `ztrace.cache.hit` (`true`/`false`) for one key (a nil reply, or an empty
//!   collection, is a miss), `ztrace.cache.hits` and `ztrace.cache.misses` for `MGET`/`HMGET`;
//! - `ztrace.redis.queued` for a command queued by `MULTI` (it runs at `EXEC`);
//! - `server.*`, `network.peer.*`, `network.local.*`, and `client.address` on SERVER spans.
//! - Pub/sub: the client's `PUBLISH` is a PRODUCER span `publish {channel}` (the database
//!   attributes and `messaging.*`), a message delivered to a subscriber a CONSUMER span
//!   `receive {channel}` (`messaging.*` only); both carry the message key trace assembly links
//!   them by (see `trace::message_key`).
//! - Streams: `XADD` is a PRODUCER span `publish {stream}` (the database attributes and
//!   `messaging.*`, with `messaging.message.id` = the id it returned), each entry an
//!   `XREAD`/`XREADGROUP` of one stream returned a CONSUMER span `receive {stream}` beside that
//!   command's CLIENT span, keyed by stream and entry id.

use std::sync::Arc;

use super::RedisExchange;
use crate::{
    protocols::{Endpoints, Side},
    spans::{
        clock::Clock, ip_string, new_span_id, new_trace_id, Attribute, Resource, Span, SpanKind,
        StatusCode,
    },
};

/// Builds the span of one Redis command.
pub fn redis_span(
    ex: &RedisExchange,
    conn: &Endpoints,
    resource: &Arc<Resource>,
    clock: &Clock,
) -> Span {
    let (mut kind, server) = match ex.side {
        Side::Client => (SpanKind::Client, conn.remote),
        Side::Server => (SpanKind::Server, conn.local),
    };
    let mut attrs = Vec::with_capacity(16);
    let mut name = ex.operation.to_string();
    // Pub/sub: the client's PUBLISH is a PRODUCER span, a delivered message a CONSUMER span.
    if let Some(m) = ex.message.as_ref().filter(|_| ex.side == Side::Client) {
        let verb = if m.receive { "receive" } else { "publish" };
        kind = if m.receive {
            SpanKind::Consumer
        } else {
            SpanKind::Producer
        };
        name = format!("{verb} {}", m.channel);
        attrs.push(Attribute::new("messaging.system", "redis"));
        attrs.push(Attribute::new("messaging.operation.name", verb));
        attrs.push(Attribute::new(
            "messaging.operation.type",
            if m.receive { "receive" } else { "send" },
        ));
        attrs.push(Attribute::new("messaging.destination.name", &*m.channel));
        match &m.entry_id {
            // A stream entry: its id, not a size (its fields are not counted).
            Some(id) => attrs.push(Attribute::new("messaging.message.id", &**id)),
            None => attrs.push(Attribute::new(
                "messaging.message.body.size",
                i64::try_from(m.size).unwrap_or(i64::MAX),
            )),
        }
        attrs.push(Attribute::new(crate::trace::MESSAGE_KEY_ATTR, m.key));
    }
    if ex.message.as_ref().is_some_and(|m| m.receive) {
        return message_span(ex, name, kind, attrs, conn, server, resource, clock);
    }
    attrs.push(Attribute::new("db.system.name", "redis"));
    attrs.push(Attribute::new("db.namespace", ex.db.to_string()));
    attrs.push(Attribute::new("db.operation.name", &*ex.operation));
    attrs.push(Attribute::new("db.query.text", &*ex.query_text));
    if let Some(e) = &ex.error {
        attrs.push(Attribute::new("db.response.status_code", e.code.as_str()));
        attrs.push(Attribute::new("error.type", e.code.as_str()));
    }
    if let Some(cache) = &ex.cache {
        if cache.single {
            attrs.push(Attribute::new("ztrace.cache.hit", cache.hits > 0));
        } else {
            attrs.push(Attribute::new("ztrace.cache.hits", i64::from(cache.hits)));
            attrs.push(Attribute::new(
                "ztrace.cache.misses",
                i64::from(cache.misses),
            ));
        }
    }
    if ex.queued {
        attrs.push(Attribute::new("ztrace.redis.queued", true));
    }
    attrs.push(Attribute::new("server.address", ip_string(server.ip())));
    attrs.push(Attribute::new("server.port", i64::from(server.port())));
    if ex.side == Side::Server {
        attrs.push(Attribute::new(
            "client.address",
            ip_string(conn.remote.ip()),
        ));
    }
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
    attrs.push(Attribute::new("ztrace.link", "none"));

    let start_unix_nano = clock.to_unix(ex.request_start_ns);
    let end_unix_nano = clock.to_unix(ex.response_end_ns).max(start_unix_nano);
    Span {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        parent_span_id: None,
        name,
        kind,
        start_unix_nano,
        end_unix_nano,
        status: if ex.error.is_some() {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: ex
            .error
            .as_ref()
            .map(|e| format!("{} {}", e.code, e.message).trim_end().to_owned()),
        attributes: attrs,
        resource: resource.clone(),
    }
}

/// The CONSUMER span of a message delivered to a subscriber: messaging attributes only.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one span, built in one place"
)]
fn message_span(
    ex: &RedisExchange,
    name: String,
    kind: SpanKind,
    mut attrs: Vec<Attribute>,
    conn: &Endpoints,
    server: std::net::SocketAddr,
    resource: &Arc<Resource>,
    clock: &Clock,
) -> Span {
    attrs.push(Attribute::new("server.address", ip_string(server.ip())));
    attrs.push(Attribute::new("server.port", i64::from(server.port())));
    attrs.push(Attribute::new(
        "network.peer.address",
        ip_string(conn.remote.ip()),
    ));
    attrs.push(Attribute::new(
        "network.peer.port",
        i64::from(conn.remote.port()),
    ));
    attrs.push(Attribute::new("ztrace.link", "none"));
    let at = clock.to_unix(ex.request_start_ns);
    Span {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        parent_span_id: None,
        name,
        kind,
        start_unix_nano: at,
        end_unix_nano: clock.to_unix(ex.response_end_ns).max(at),
        status: StatusCode::Unset,
        status_message: None,
        attributes: attrs,
        resource: resource.clone(),
    }
}
