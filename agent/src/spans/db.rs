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

use std::{cell::RefCell, collections::HashMap, net::SocketAddr, sync::Arc};

use crate::{
    discovery::ProcessInfo,
    protocols::{
        postgres::{PgExchange, PgQueryKind, MAX_PARAMETERS},
        Side,
    },
};

use super::{clock::Clock, new_span_id, new_trace_id, Attribute, Span, SpanKind, StatusCode};

/// Longest `db.query.text`, in bytes (the parser already cuts SQL to 4096 bytes).
const MAX_QUERY_TEXT: usize = 4096;
/// Longest collection name kept.
const MAX_COLLECTION_LEN: usize = 128;
/// Tokens looked at when finding the operation and collection.
const MAX_TOKENS: usize = 256;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// `db.query.parameter.<index>` (0-based, as the semantic conventions ask for positional
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
pub fn postgres_span(ex: &PgExchange, conn: &ConnInfo, process: &ProcessInfo, clock: &Clock) -> Span {
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
    if ex.error.is_none() || rows > 0 {
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
    attrs.push(Attribute::new("server.address", super::ip_string(server.ip())));
    attrs.push(Attribute::new("server.port", i64::from(server.port())));
    if ex.side == Side::Server {
        attrs.push(Attribute::new("client.address", super::ip_string(conn.remote.ip())));
    }
    attrs.push(Attribute::new("network.peer.address", super::ip_string(conn.remote.ip())));
    attrs.push(Attribute::new("network.peer.port", i64::from(conn.remote.port())));
    attrs.push(Attribute::new("network.local.address", super::ip_string(conn.local.ip())));
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
        resource: process.resource.clone(),
    }
}

/// The SQL with literals replaced by `?`: `'...'` strings (with `''` inside, and `E'...'` with
/// backslash escapes, `B'..'`, `X'..'`, `U&'..'`), `$tag$...$tag$` strings, numbers (`42`,
/// `3.5e-3`, `0x1F`) that do not continue an identifier. Kept: `$1` placeholders, `"quoted"`
/// identifiers, comments, keywords, whitespace.
pub fn sanitize_sql(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT));
    let mut i = 0;
    // Start of the run of bytes copied as is.
    let mut copied = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let literal_end = match c {
            b'\'' => {
                // A string prefix (E, B, X, U&, N) is part of the literal.
                let mut start = i;
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
                if i > 0 && matches!(b[i - 1], b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
                    && (i < 2 || !ident(b[i - 2]))
                {
                    start = i - 1;
                } else if i > 1 && b[i - 1] == b'&' && matches!(b[i - 2], b'u' | b'U') && (i < 3 || !ident(b[i - 3])) {
                    start = i - 2;
                }
                let end = quoted_end(b, i + 1, escapes);
                Some((start, end))
            }
            b'"' => {
                let end = b[i + 1..].iter().position(|&x| x == b'"').map_or(b.len(), |p| i + 2 + p);
                i = end;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = b[i + 2..].windows(2).position(|w| w == b"*/").map_or(b.len(), |p| i + 2 + p + 2);
                continue;
            }
            b'$' if i == 0 || !ident(b[i - 1]) => match dollar_quote_end(b, i) {
                Some(end) => Some((i, end)),
                None => {
                    // `$1`: a placeholder, kept.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
            },
            b'0'..=b'9' if i == 0 || !ident(b[i - 1]) => Some((i, number_end(b, i))),
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && (i == 0 || !ident(b[i - 1])) => {
                Some((i, number_end(b, i)))
            }
            _ => None,
        };
        match literal_end {
            Some((start, end)) => {
                out.push_str(&sql[copied..start]);
                out.push('?');
                i = end;
                copied = end;
            }
            None => i += if c >= 0x80 { utf8_len(c) } else { 1 },
        }
        if out.len() > MAX_QUERY_TEXT {
            break;
        }
    }
    if copied < b.len() && out.len() <= MAX_QUERY_TEXT {
        out.push_str(&sql[copied..i.min(b.len())]);
    }
    if out.len() > MAX_QUERY_TEXT {
        let mut cut = MAX_QUERY_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// End (exclusive) of a `'...'` string whose body starts at `from`.
fn quoted_end(b: &[u8], mut i: usize, backslash_escapes: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// End of a `$tag$...$tag$` string starting at `i`, if one starts there.
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    let tag_len = b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))?;
    let close = i + 1 + tag_len;
    if b.get(close) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &b[i..=close];
    let body = close + 1;
    Some(b[body..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |p| body + p + tag.len()))
}

fn number_end(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
        i += 1;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'+' | b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

/// The operation (upper-case first keyword; for `WITH`, the main statement's) and the one table
/// the statement is about, if evident.
pub fn operation_and_collection(sql: &str) -> (Option<String>, Option<String>) {
    let tokens = tokens(sql);
    let Some(first) = tokens.first() else { return (None, None) };
    let first_kw = first.text.to_ascii_uppercase();
    if !first.text.bytes().all(|c| c.is_ascii_alphabetic()) {
        return (None, None);
    }
    let mut op = first_kw;
    let mut at = 0;
    if op == "WITH" {
        if let Some(i) = tokens
            .iter()
            .position(|t| t.depth == 0 && ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"].iter().any(|k| t.is(k)))
        {
            op = tokens[i].upper();
            at = i;
        }
    }
    let rest = &tokens[at + 1..];
    let word_is = |i: usize, kw: &str| rest.get(i).is_some_and(|t| t.is(kw));
    let table_after = |kw: &str| -> Option<String> {
        let i = rest.iter().position(|t| t.depth == 0 && t.is(kw))?;
        table_at(rest, i + 1)
    };
    let collection = match op.as_str() {
        "SELECT" | "DELETE" => {
            let t = table_after("FROM");
            let joined = rest.iter().any(|t| t.depth == 0 && t.is("JOIN"));
            let listed = rest
                .iter()
                .position(|t| t.depth == 0 && t.is("FROM"))
                .and_then(|i| rest.get(i + 2))
                .is_some_and(|t| t.text == ",");
            if joined || listed {
                None
            } else {
                t
            }
        }
        "INSERT" | "MERGE" => table_after("INTO"),
        "UPDATE" => table_at(rest, usize::from(word_is(0, "ONLY"))),
        "COPY" | "TRUNCATE" | "LOCK" => {
            let skip = usize::from(word_is(0, "TABLE") || word_is(0, "ONLY"));
            table_at(rest, skip)
        }
        "CREATE" | "DROP" | "ALTER" => {
            let Some(i) = rest.iter().position(|t| t.is("TABLE")).filter(|&i| i <= 3) else {
                return (Some(op), None);
            };
            let mut j = i + 1;
            while ["IF", "NOT", "EXISTS", "ONLY"].iter().any(|k| word_is(j, k)) {
                j += 1;
            }
            return (Some(op), table_at(rest, j));
        }
        _ => None,
    };
    (Some(op), collection)
}

fn table_at(tokens: &[Tok<'_>], i: usize) -> Option<String> {
    let t = tokens.get(i)?;
    if t.depth != 0 || t.text == "(" || !t.is_name {
        return None;
    }
    Some(t.text.chars().take(MAX_COLLECTION_LEN).collect())
}

struct Tok<'a> {
    text: &'a str,
    depth: u32,
    is_name: bool,
}

impl Tok<'_> {
    fn upper(&self) -> String {
        self.text.to_ascii_uppercase()
    }

    fn is(&self, keyword: &str) -> bool {
        self.text.eq_ignore_ascii_case(keyword)
    }
}

/// Words (identifiers, `schema.table`, `"quoted"`), and single punctuation bytes, with their
/// parenthesis depth; literals and comments skipped. At most [`MAX_TOKENS`].
fn tokens(sql: &str) -> Vec<Tok<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth = 0u32;
    let name_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'"' || c == b'$' || c >= 0x80;
    while i < b.len() && out.len() < MAX_TOKENS {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b';' && out.is_empty() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p + 1);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = b[i + 2..].windows(2).position(|w| w == b"*/").map_or(b.len(), |p| i + 2 + p + 2);
        } else if c == b'\'' {
            i = quoted_end(b, i + 1, false);
        } else if name_byte(c) {
            let start = i;
            let mut quoted = false;
            while i < b.len() && (name_byte(b[i]) || quoted) {
                if b[i] == b'"' {
                    quoted = !quoted;
                }
                i += 1;
            }
            // `start..i` ends at a byte < 0x80 or the end: a char boundary.
            let text = &sql[start..i];
            let is_name = !text.as_bytes()[0].is_ascii_digit() && text.as_bytes()[0] != b'$';
            out.push(Tok { text, depth, is_name });
        } else {
            if c == b'(' {
                depth += 1;
            }
            if c == b')' {
                depth = depth.saturating_sub(1);
            }
            if c == b'(' || c == b',' || c == b')' {
                out.push(Tok { text: &sql[i..=i], depth, is_name: false });
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        protocols::postgres::{PgError, PgSession},
        spans::{AttrValue, Resource},
    };

    #[test]
    fn literals_become_placeholders() {
        for (sql, want) in [
            ("SELECT * FROM t WHERE a = 'x''y' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
            ("SELECT 1", "SELECT ?"),
            ("select -3.5e-3, .5, 0x1F, t2.c1 from t2", "select -?, ?, ?, t2.c1 from t2"),
            ("UPDATE a SET b = $1 WHERE id = $2", "UPDATE a SET b = $1 WHERE id = $2"),
            ("SELECT E'a\\'b', X'1F', U&'d\\0061t'", "SELECT ?, ?, ?"),
            ("SELECT $$it's$$, $tag$x$tag$", "SELECT ?, ?"),
            ("SELECT \"col 1\" FROM \"T9\" -- it's 5\n WHERE x IN (1, 2)", "SELECT \"col 1\" FROM \"T9\" -- it's 5\n WHERE x IN (?, ?)"),
            ("/* app:7 */ INSERT INTO t VALUES ('héllo', 7)", "/* app:7 */ INSERT INTO t VALUES (?, ?)"),
            ("SELECT 'unterminated", "SELECT ?"),
            ("INSERT INTO pgbench_history (tid, bid) VALUES (3, 1)", "INSERT INTO pgbench_history (tid, bid) VALUES (?, ?)"),
        ] {
            assert_eq!(sanitize_sql(sql), want, "{sql}");
        }
    }

    #[test]
    fn operations_and_collections() {
        let oc = |sql: &str| {
            let (o, c) = operation_and_collection(sql);
            (o.unwrap_or_default(), c.unwrap_or_default())
        };
        let s = |o: &str, c: &str| (o.to_owned(), c.to_owned());
        assert_eq!(oc("select * from orders where id = 1"), s("SELECT", "orders"));
        assert_eq!(oc("SELECT a FROM public.items i WHERE x"), s("SELECT", "public.items"));
        assert_eq!(oc("SELECT * FROM a JOIN b ON a.id = b.id"), s("SELECT", ""));
        assert_eq!(oc("SELECT * FROM a, b"), s("SELECT", ""));
        assert_eq!(oc("SELECT x FROM (SELECT 1) s"), s("SELECT", ""));
        assert_eq!(oc("SELECT (SELECT max(a) FROM b) FROM c"), s("SELECT", "c"));
        assert_eq!(oc("SELECT 1"), s("SELECT", ""));
        assert_eq!(oc("INSERT INTO pgbench_history (tid) VALUES ($1)"), s("INSERT", "pgbench_history"));
        assert_eq!(oc("update only accounts set a = 1"), s("UPDATE", "accounts"));
        assert_eq!(oc("DELETE FROM \"Users\" WHERE id = $1"), s("DELETE", "\"Users\""));
        assert_eq!(oc("WITH x AS (SELECT 1 FROM y) UPDATE z SET a = 1"), s("UPDATE", "z"));
        assert_eq!(oc("COPY pgbench_accounts FROM STDIN"), s("COPY", "pgbench_accounts"));
        assert_eq!(oc("CREATE TABLE IF NOT EXISTS t1 (a int)"), s("CREATE", "t1"));
        assert_eq!(oc("drop table pgbench_branches"), s("DROP", "pgbench_branches"));
        assert_eq!(oc("BEGIN"), s("BEGIN", ""));
        assert_eq!(oc("  ; -- c\nvacuum analyze"), s("VACUUM", ""));
        assert_eq!(oc(""), s("", ""));
    }

    #[test]
    fn odd_text_never_panics_and_stays_bounded() {
        let pieces = ["'", "\"", "$", "$$", "$a$", "--", "/*", "*/", "\n", "\\", "E'", "U&'", "0x", "1e", ".5", "é", "日本", "🦀", "(", ")", ",", ";", " ", "FROM", "select", "WITH", "x"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut sql = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut r = seed;
            for _ in 0..(r % 24) {
                sql.push_str(pieces[(r % pieces.len() as u64) as usize]);
                r = r.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d);
            }
            let text = sanitize_sql(&sql);
            assert!(text.len() <= sql.len() + 1, "{sql:?} → {text:?}");
            let _ = operation_and_collection(&sql);
        }
        let long = "SELECT 'é', 1 FROM t WHERE a = 'x' ".repeat(500);
        assert!(sanitize_sql(&long).len() <= MAX_QUERY_TEXT);
    }

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
            request_start_ns: 1_000,
            response_end_ns: 9_000,
            request_tid: 1,
            response_tid: 1,
        }
    }

    fn process() -> ProcessInfo {
        let mut info = ProcessInfo::from_comm(4242, "app", "box");
        info.resource = Arc::new(Resource { service_name: "app".into(), attributes: Vec::new() });
        info
    }

    fn attr(span: &Span, key: &str) -> Option<AttrValue> {
        span.attributes.iter().find(|a| a.key == key).map(|a| a.value.clone())
    }

    fn s(v: &str) -> Option<AttrValue> {
        Some(AttrValue::Str(v.into()))
    }

    #[test]
    fn client_and_server_spans() {
        let clock = Clock::from_offset_ns(0);
        let conn = ConnInfo { local: "127.0.0.1:40000".parse().expect("addr"), remote: "127.0.0.1:5433".parse().expect("addr") };
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

        let server_conn = ConnInfo { local: conn.remote, remote: conn.local };
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
        let conn = ConnInfo { local: "127.0.0.1:40000".parse().expect("addr"), remote: "127.0.0.1:5433".parse().expect("addr") };
        let mut ex = exchange(Side::Client, Some("SELECT * FROM items WHERE id = $1 AND a = $2 AND b = $3"), None);
        ex.parameters = Some(vec![Some("7".to_owned()), None, Some("x".to_owned())].into());
        let span = postgres_span(&ex, &conn, &process(), &clock);
        assert_eq!(attr(&span, "db.query.parameter.0"), s("7"));
        assert_eq!(attr(&span, "db.query.parameter.1"), None);
        assert_eq!(attr(&span, "db.query.parameter.2"), s("x"));
        assert_eq!(attr(&span, "db.query.text"), s("SELECT * FROM items WHERE id = $1 AND a = $2 AND b = $3"));
    }
}
