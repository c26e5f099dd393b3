//! PostgreSQL exchanges → spans, following the OpenTelemetry database semantic conventions.
//!
//! [`postgres_span`] turns one executed statement (see `protocols::postgres`) into a CLIENT span
//! (the traced process sent it) or a SERVER span (the traced process is the postgres backend
//! that ran it). Both carry the same attributes, so a trace shows the database's own time
//! beside the application's.
//!
//! - `db.query.text` is the SQL with its literals replaced by `?` ([`sanitize_sql`]): string,
//!   dollar-quoted, numeric and hexadecimal literals; `$1` parameter placeholders, identifiers
//!   (quoted or not) and comments are kept. Bind parameter values are never seen by this module.
//! - `db.operation.name` and `db.collection.name` come from the SQL ([`operation_and_collection`]):
//!   the first keyword (the main statement's, after a `WITH`), and the one table the statement
//!   names after `FROM`, `INTO`, `UPDATE`, `TABLE`, `COPY`; none when it joins several.
//! - Span name: `{operation} {collection}`, or `{operation}`, or `postgresql` when the SQL is
//!   unknown (a statement prepared before ztrace saw the connection).
//! - The text, operation and table of a SQL text are worked out once per thread and remembered
//!   (at most 1024 texts): a prepared statement executed again costs a lookup.
//! - `db.user` is not exported: the conventions dropped it, and a role is often a person's login.
//!
//! Times are those of the exchange: from the first request message (for an `Execute`, its
//! `Parse`/`Bind`) to the message that completed the answer.


use std::{cell::RefCell, collections::HashMap, sync::Arc};

use super::{
    sql::{operation_and_collection, sanitize_sql},
    PgExchange, PgQueryKind, MAX_PARAMETERS,
};
use crate::{
    protocols::{Endpoints, Side},
    spans::{clock::Clock, ip_string, new_span_id, new_trace_id, Attribute, Resource, Span, SpanKind, StatusCode},
};

/// SQL texts whose summary is remembered per thread (a prepared statement runs many times).
const SUMMARY_CACHE: usize = 1024;

/// What a span takes from a SQL text.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    query_text: String,
    operation: Option<String>,
    collection: Option<String>,
}

thread_local! {
    /// Summaries of recent SQL texts, by text: the same statement executed again costs a hash
    /// lookup, not a rescan. Bounded (cleared when full); a span stays a function of its inputs.
    static SUMMARIES: RefCell<HashMap<Arc<str>, Arc<Summary>>> = RefCell::new(HashMap::new());
}

fn summary(sql: &Arc<str>) -> Arc<Summary> {
    SUMMARIES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(found) = cache.get(sql) {
            return found.clone();
        }
        let (operation, collection) = operation_and_collection(sql);
        let made = Arc::new(Summary { query_text: sanitize_sql(sql), operation, collection });
        if cache.len() >= SUMMARY_CACHE {
            cache.clear();
        }
        cache.insert(sql.clone(), made.clone());
        made
    })
}

/// The connection a statement travelled on, as the traced process sees it.
/// parameters: `$1` is `db.query.parameter.0`), for the [`MAX_PARAMETERS`] kept values.
const PARAMETER_KEYS: [&str; MAX_PARAMETERS] = [
    "db.query.parameter.0", "db.query.parameter.1", "db.query.parameter.2", "db.query.parameter.3",
    "db.query.parameter.4", "db.query.parameter.5", "db.query.parameter.6", "db.query.parameter.7",
    "db.query.parameter.8", "db.query.parameter.9", "db.query.parameter.10", "db.query.parameter.11",
    "db.query.parameter.12", "db.query.parameter.13", "db.query.parameter.14", "db.query.parameter.15",
    "db.query.parameter.16", "db.query.parameter.17", "db.query.parameter.18", "db.query.parameter.19",
    "db.query.parameter.20", "db.query.parameter.21", "db.query.parameter.22", "db.query.parameter.23",
    "db.query.parameter.24", "db.query.parameter.25", "db.query.parameter.26", "db.query.parameter.27",
    "db.query.parameter.28", "db.query.parameter.29", "db.query.parameter.30", "db.query.parameter.31",
];

/// Builds the span of one executed PostgreSQL statement.
pub fn postgres_span(ex: &PgExchange, conn: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
    let summary = ex.query.as_ref().map(summary);
    let collection = summary.as_ref().and_then(|s| s.collection.clone());
    let operation = summary.as_ref().and_then(|s| s.operation.clone()).or_else(|| ex.command.clone());
    let name = match (&operation, &collection) {
        (Some(op), Some(table)) => format!("{op} {table}"),
        (Some(op), None) => op.clone(),
        _ => "postgresql".to_owned(),
    };
    let kind = match ex.side {
        Side::Server => SpanKind::Server,
        Side::Client => SpanKind::Client,
    };
    let server = match ex.side {
        Side::Client => conn.remote,
        Side::Server => conn.local,
    };

    let mut attrs = Vec::with_capacity(16);
    attrs.push(Attribute::new("db.system.name", "postgresql"));
    if let Some(db) = ex.session.database() {
        attrs.push(Attribute::new("db.namespace", db));
    }
    if let Some(summary) = &summary {
        attrs.push(Attribute::new("db.query.text", summary.query_text.as_str()));
    }
    if let Some(op) = &operation {
        attrs.push(Attribute::new("db.operation.name", op.as_str()));
    }
    if let Some(table) = &collection {
        attrs.push(Attribute::new("db.collection.name", table.as_str()));
    }
    if ex.kind == PgQueryKind::Simple && ex.statements > 1 {
        attrs.push(Attribute::new("db.operation.batch.size", i64::from(ex.statements)));
    }
    let rows = ex.rows.unwrap_or(ex.data_rows);
    if (ex.error.is_none() && ex.answered) || rows > 0 {
        attrs.push(Attribute::new("db.response.returned_rows", i64::try_from(rows).unwrap_or(i64::MAX)));
    }
    if let Some(e) = &ex.error {
        attrs.push(Attribute::new("db.response.status_code", e.code.as_str()));
        attrs.push(Attribute::new("error.type", e.code.as_str()));
    }
    if let Some(values) = &ex.parameters {
        for (key, value) in PARAMETER_KEYS.iter().zip(values.iter()) {
            if let Some(value) = value {
                attrs.push(Attribute::new(key, value.as_str()));
            }
        }
    }
    if let Some(app) = ex.session.application_name.as_deref().filter(|a| !a.is_empty()) {
        attrs.push(Attribute::new("db.postgresql.application_name", app));
    }
    attrs.push(Attribute::new("server.address", ip_string(server.ip())));
    attrs.push(Attribute::new("server.port", i64::from(server.port())));
    if ex.side == Side::Server {
        attrs.push(Attribute::new("client.address", ip_string(conn.remote.ip())));
    }
    attrs.push(Attribute::new("network.peer.address", ip_string(conn.remote.ip())));
    attrs.push(Attribute::new("network.peer.port", i64::from(conn.remote.port())));
    attrs.push(Attribute::new("network.local.address", ip_string(conn.local.ip())));
    attrs.push(Attribute::new("network.local.port", i64::from(conn.local.port())));
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
        status: if ex.error.is_some() { StatusCode::Error } else { StatusCode::Unset },
        status_message: ex.error.as_ref().map(|e| e.message.clone()),
        attributes: attrs,
        resource: resource.clone(),
    }
}


#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        protocols::postgres::{PgError, PgSession},
        spans::AttrValue,
    };

    fn exchange(side: Side, sql: Option<&str>, error: Option<PgError>) -> PgExchange {
        PgExchange {
            side,
            kind: PgQueryKind::Extended,
            query: sql.map(Arc::from),
            statement: Some(Arc::from("P0_1")),
            parameters: None,
            session: Arc::new(PgSession {
                user: Some("app".into()),
                database: Some("shop".into()),
                application_name: Some("pgbench".into()),
            }),
            command: Some("SELECT".into()),
            rows: Some(3),
            data_rows: 3,
            statements: 1,
            suspended: false,
            error,
            answered: true,
            request_start_ns: 1_000,
            response_end_ns: 9_000,
            request_tid: 1,
            response_tid: 1,
        }
    }

    fn process() -> Arc<Resource> {
        crate::spans::testing::resource("app", 4242)
    }

    fn attr(span: &Span, key: &str) -> Option<AttrValue> {
        span.attributes.iter().find(|a| a.key == key).map(|a| a.value.clone())
    }

    fn s(v: &str) -> Option<AttrValue> {
        Some(AttrValue::Str(v.into()))
    }

    #[test]
    fn an_unanswered_statement_is_an_error_span() {
        use crate::protocols::Exchange;
        let clock = Clock::from_offset_ns(0);
        let conn = Endpoints { local: "127.0.0.1:40000".parse().expect("addr"), remote: "127.0.0.1:5433".parse().expect("addr"), tls: false };
        let mut ex = exchange(Side::Client, Some("SELECT pg_sleep(10)"), None);
        (ex.answered, ex.rows, ex.data_rows, ex.command) = (false, None, 0, None);
        let span = ex.span(&conn, &process(), &clock);
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(attr(&span, "error.type"), s("no_response"));
        assert_eq!(attr(&span, "db.response.returned_rows"), None);
        assert_eq!(attr(&span, "db.query.text"), s("SELECT pg_sleep(?)"));
        ex.side = Side::Server;
        assert_eq!(attr(&ex.span(&conn, &process(), &clock), "error.type"), s("client_closed"));
    }

    #[test]
    fn client_and_server_spans() {
        let clock = Clock::from_offset_ns(0);
        let conn = Endpoints { local: "127.0.0.1:40000".parse().expect("addr"), remote: "127.0.0.1:5433".parse().expect("addr"), tls: false };
        let ex = exchange(Side::Client, Some("SELECT * FROM items WHERE id = 7"), None);
        let span = postgres_span(&ex, &conn, &process(), &clock);
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.name, "SELECT items");
        assert_eq!(span.status, StatusCode::Unset);
        assert_eq!(attr(&span, "db.system.name"), s("postgresql"));
        assert_eq!(attr(&span, "db.namespace"), s("shop"));
        assert_eq!(attr(&span, "db.query.text"), s("SELECT * FROM items WHERE id = ?"));
        assert_eq!(attr(&span, "db.operation.name"), s("SELECT"));
        assert_eq!(attr(&span, "db.collection.name"), s("items"));
        assert_eq!(attr(&span, "db.response.returned_rows"), Some(AttrValue::Int(3)));
        assert_eq!(attr(&span, "server.address"), s("127.0.0.1"));
        assert_eq!(attr(&span, "server.port"), Some(AttrValue::Int(5433)));
        assert_eq!(attr(&span, "network.peer.port"), Some(AttrValue::Int(5433)));
        assert_eq!(attr(&span, "ztrace.link"), s("none"));
        assert_eq!(attr(&span, "db.user"), None);
        assert_eq!(span.end_unix_nano - span.start_unix_nano, 8_000);

        let server_conn = Endpoints { local: conn.remote, remote: conn.local, tls: false };
        let error = PgError { code: "42P01".into(), severity: "ERROR".into(), message: "relation \"x\" does not exist".into() };
        let ex = exchange(Side::Server, Some("SELECT * FROM x"), Some(error));
        let span = postgres_span(&ex, &server_conn, &process(), &clock);
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(span.status_message.as_deref(), Some("relation \"x\" does not exist"));
        assert_eq!(attr(&span, "db.response.status_code"), s("42P01"));
        assert_eq!(attr(&span, "server.port"), Some(AttrValue::Int(5433)));
        assert_eq!(attr(&span, "client.address"), s("127.0.0.1"));

        let ex = exchange(Side::Client, None, None);
        let span = postgres_span(&ex, &conn, &process(), &clock);
        assert_eq!(span.name, "SELECT", "the command tag names a statement whose SQL is unknown");
        assert!(span.attributes.iter().all(|a| !a.key.starts_with("db.query.parameter")));
    }

    #[test]
    fn kept_parameters_become_indexed_attributes_and_nulls_are_left_out() {
        let clock = Clock::from_offset_ns(0);
        let conn = Endpoints { local: "127.0.0.1:40000".parse().expect("addr"), remote: "127.0.0.1:5433".parse().expect("addr"), tls: false };
        let mut ex = exchange(Side::Client, Some("SELECT * FROM items WHERE id = $1 AND a = $2 AND b = $3"), None);
        ex.parameters = Some(vec![Some("7".to_owned()), None, Some("x".to_owned())].into());
        let span = postgres_span(&ex, &conn, &process(), &clock);
        assert_eq!(attr(&span, "db.query.parameter.0"), s("7"));
        assert_eq!(attr(&span, "db.query.parameter.1"), None);
        assert_eq!(attr(&span, "db.query.parameter.2"), s("x"));
        assert_eq!(attr(&span, "db.query.text"), s("SELECT * FROM items WHERE id = $1 AND a = $2 AND b = $3"));
    }
}
