//! memcached exchanges → spans, following the OpenTelemetry database semantic conventions.
//!
//! One CLIENT span per command (the traced process sent it) or SERVER span (the traced process
//! is memcached), with the same attributes:
//! - name: the command (`get`, `set`, `mg`, ...);
//! - `db.system.name` = `memcached`, `db.operation.name`, `db.query.text` (the command with its
//!   keys; every other argument `?`, meta flags as their letter; never a value);
//! - `db.response.status_code`: the reply word (`STORED`, `NOT_FOUND`, `DELETED`, `HD`, `EN`,
//!   ...), or for an error reply (`ERROR`, `CLIENT_ERROR`, `SERVER_ERROR`) its word, also as
//!   `error.type`, with status error;
//! - retrievals: `ztrace.cache.hit` for one key; `ztrace.cache.hits`, `ztrace.cache.misses` and
//!   `ztrace.cache.missed_keys` (space-separated) for several;
//! - `ztrace.memcached.noreply` for a command sent with `noreply` (or quiet);
//! - `server.*`, `network.peer.*`, `network.local.*`, and `client.address` on SERVER spans.

use std::sync::Arc;

use super::MemcachedExchange;
use crate::{
    protocols::{Endpoints, Side},
    spans::{
        clock::Clock, ip_string, new_span_id, new_trace_id, Attribute, Resource, Span, SpanKind,
        StatusCode,
    },
};

/// Longest `ztrace.cache.missed_keys`.
const MAX_MISSED_KEYS_TEXT: usize = 1024;

/// Builds the span of one memcached command.
pub fn memcached_span(
    ex: &MemcachedExchange,
    conn: &Endpoints,
    resource: &Arc<Resource>,
    clock: &Clock,
) -> Span {
    let (kind, server) = match ex.side {
        Side::Client => (SpanKind::Client, conn.remote),
        Side::Server => (SpanKind::Server, conn.local),
    };
    let mut attrs = Vec::with_capacity(16);
    attrs.push(Attribute::new("db.system.name", "memcached"));
    attrs.push(Attribute::new("db.operation.name", &*ex.operation));
    attrs.push(Attribute::new("db.query.text", &*ex.query_text));
    if let Some((code, _)) = &ex.error {
        attrs.push(Attribute::new("db.response.status_code", code.as_str()));
        attrs.push(Attribute::new("error.type", code.as_str()));
    } else if let Some(status) = &ex.status {
        attrs.push(Attribute::new("db.response.status_code", status.as_str()));
    }
    if let Some(cache) = &ex.cache {
        if ex.keys == 1 {
            attrs.push(Attribute::new("ztrace.cache.hit", cache.hits > 0));
        } else {
            attrs.push(Attribute::new("ztrace.cache.hits", i64::from(cache.hits)));
            attrs.push(Attribute::new(
                "ztrace.cache.misses",
                i64::from(cache.misses),
            ));
            if !cache.missed_keys.is_empty() {
                let mut missed = cache.missed_keys.join(" ");
                if missed.len() > MAX_MISSED_KEYS_TEXT {
                    let mut cut = MAX_MISSED_KEYS_TEXT;
                    while !missed.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    missed.truncate(cut);
                    missed.push('…');
                }
                attrs.push(Attribute::new("ztrace.cache.missed_keys", missed));
            }
        }
    }
    if ex.noreply {
        attrs.push(Attribute::new("ztrace.memcached.noreply", true));
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
        name: ex.operation.to_string(),
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
            .map(|(code, message)| format!("{code} {message}").trim_end().to_owned()),
        attributes: attrs,
        resource: resource.clone(),
    }
}
