//! The embedded trace store: every span in a SQLite database under `--data-dir`, for the viewer.
//!
//! Three tables: `spans` (one row per span; attributes as the JSON object of the DESIGN.md span),
//! `traces` (one summary row per trace, kept up to date on every insert: root service and name,
//! start, end, span count, error), with indexes for the viewer's list filters, and `resources`
//! (each distinct resource JSON object once, keyed by its hash, shared by the spans of a process).
//! The database runs in WAL mode so the viewer reads while the writer writes; writes come in
//! batches, one transaction each, from the writer thread of [`writer::StoreSink`] — never from
//! the capture path. Retention (by age and by size) is [`Store::retain`], run by that thread.
//!
//! This module does not decide what to do when the database fails: it returns [`StoreError`] and
//! the caller logs it and carries on without the store.

pub mod writer;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::spans::{hex, json, Span, StatusCode};

pub use writer::StoreSink;

/// The database file inside the data directory.
pub const DB_FILE: &str = "ztrace.db";
/// Most traces one list query returns.
pub const MAX_LIST: usize = 1000;
/// Most spans the services view reads (the newest): bounds its time under heavy traffic.
pub const MAX_SERVICE_SAMPLES: usize = 200_000;
/// Traces a list query returns when it does not say.
pub const DEFAULT_LIST: usize = 100;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the trace store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the trace store {path} has schema version {found}, this ztrace uses {SCHEMA_VERSION}: move the file away or choose another --data-dir")]
    Schema { path: PathBuf, found: i64 },
    #[error("trace store: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl StoreError {
    /// The database file is damaged (SQLite: `database disk image is malformed`, `file is not a
    /// database`): writes that succeed after it do not make the file whole again.
    pub fn is_damage(&self) -> bool {
        let sqlite = match self {
            StoreError::Sql(e) | StoreError::Open { source: e, .. } => e,
            _ => return false,
        };
        matches!(
            sqlite.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    }
}

/// `PRAGMA user_version` of the schema below; a database with another (non-empty) one is refused.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spans (
    trace_key      INTEGER NOT NULL,
    span_id        TEXT NOT NULL,
    parent_span_id TEXT,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    service        TEXT NOT NULL,
    start_ns       INTEGER NOT NULL,
    end_ns         INTEGER NOT NULL,
    status         TEXT NOT NULL,
    status_message TEXT,
    attributes     TEXT NOT NULL,
    resource_id    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS resources (
    id        INTEGER PRIMARY KEY,
    json      TEXT NOT NULL,
    last_used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_by_trace ON spans(trace_key);
CREATE INDEX IF NOT EXISTS spans_by_start ON spans(start_ns);
CREATE TABLE IF NOT EXISTS traces (
    key          INTEGER PRIMARY KEY,
    trace_id     TEXT NOT NULL UNIQUE,
    root_service TEXT NOT NULL,
    root_name    TEXT NOT NULL,
    root_rank    INTEGER NOT NULL,
    root_start   INTEGER NOT NULL,
    start_ns     INTEGER NOT NULL,
    end_ns       INTEGER NOT NULL,
    span_count   INTEGER NOT NULL,
    error        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces(start_ns);
";

/// Keeps a trace's summary current: the root is the span without a parent (rank 0), else the
/// earliest span; start is the earliest start, end the latest end; error if any span failed.
const UPSERT_TRACE: &str = "
INSERT INTO traces (trace_id, root_service, root_name, root_rank, root_start, start_ns, end_ns, span_count, error)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
ON CONFLICT(trace_id) DO UPDATE SET
    root_service = CASE WHEN (excluded.root_rank, excluded.root_start) < (root_rank, root_start)
                        THEN excluded.root_service ELSE root_service END,
    root_name    = CASE WHEN (excluded.root_rank, excluded.root_start) < (root_rank, root_start)
                        THEN excluded.root_name ELSE root_name END,
    root_rank    = min(root_rank, excluded.root_rank),
    root_start   = CASE WHEN (excluded.root_rank, excluded.root_start) < (root_rank, root_start)
                        THEN excluded.root_start ELSE root_start END,
    start_ns     = min(start_ns, excluded.start_ns),
    end_ns       = max(end_ns, excluded.end_ns),
    span_count   = span_count + excluded.span_count,
    error        = max(error, excluded.error)
RETURNING key
";

/// `id` is a hash of `json`; `last_used` the latest start of a span that refers to it (retention
/// removes a resource once every trace that started before then is gone).
const UPSERT_RESOURCE: &str = "
INSERT INTO resources (id, json, last_used) VALUES (?1, ?2, ?3)
ON CONFLICT(id) DO UPDATE SET last_used = max(last_used, excluded.last_used)
";

const INSERT_SPAN: &str = "
INSERT INTO spans (trace_key, span_id, parent_span_id, name, kind, service, start_ns, end_ns, status,
                   status_message, attributes, resource_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
";

/// One row of the trace list (`GET /api/traces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    pub start_unix_nano: u64,
    pub duration_ns: u64,
    pub span_count: u64,
    pub error: bool,
}

/// `status=` of the trace list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Traces with at least one failed span.
    Error,
    /// Traces without one.
    Ok,
}

/// The filters of the trace list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// A span of this service is in the trace.
    pub service: Option<String>,
    /// A span whose name contains this (case-insensitive) is in the trace.
    pub name: Option<String>,
    pub status: Option<StatusFilter>,
    pub min_duration_ns: Option<u64>,
    /// The trace started at or after this time.
    pub since_unix_nano: Option<u64>,
    /// The trace started before this time.
    pub until_unix_nano: Option<u64>,
    /// The trace id starts with this (lower-case hex).
    pub trace_id_prefix: Option<String>,
    /// At most this many (newest first); 0 means [`DEFAULT_LIST`], capped at [`MAX_LIST`].
    pub limit: usize,
}

/// One row of the services view (`GET /api/services`), over a recent window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStats {
    pub service: String,
    /// Which spans count as requests: `server` spans when the service has any, else `client`
    /// spans (a service seen only as a caller).
    pub kind: &'static str,
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the window.
    pub request_rate: f64,
    /// Failed requests / requests.
    pub error_rate: f64,
    pub p50_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
}

/// Size of the database and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoreSize {
    /// Bytes in use (pages that are not free).
    pub bytes: u64,
    pub traces: u64,
    pub spans: u64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub traces: u64,
    pub spans: u64,
}

/// A connection to the trace store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating when needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let found = Self::init(&conn).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Schema { path, found });
        }
        Ok(Store { conn, path })
    }

    /// Sets this connection's page cache (64 MiB by default: right for the writer, whose index
    /// inserts land all over the B-trees; a reader needs less).
    pub fn set_cache_mib(&self, mib: u32) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(mib) * 1024)?;
        Ok(())
    }

    /// Sets the connection up and creates the schema in a new database; returns the database's
    /// schema version.
    fn init(conn: &Connection) -> Result<i64, rusqlite::Error> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // Only takes effect on a new database (before the first table): lets retention give
        // space back to the file system.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::debug!(mode, "trace store is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Trace ids are random: index inserts land all over the B-trees; keep them in memory.
        conn.pragma_update(None, "cache_size", -64 * 1024)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )?;
        if version == 0 && tables == 0 {
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            return Ok(SCHEMA_VERSION);
        }
        Ok(version)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes spans in one transaction and updates their traces' summaries (one update per trace
    /// per batch).
    pub fn insert(&mut self, spans: &[Span]) -> Result<(), StoreError> {
        let mut summaries: HashMap<[u8; 16], BatchSummary<'_>> = HashMap::new();
        for span in spans {
            let candidate = BatchSummary {
                root: span,
                root_rank: i64::from(span.parent_span_id.is_some()),
                start: to_sql_ns(span.start_unix_nano),
                end: to_sql_ns(span.end_unix_nano.max(span.start_unix_nano)),
                count: 1,
                error: span.status == StatusCode::Error,
                key: 0,
            };
            summaries
                .entry(span.trace_id)
                .and_modify(|s| s.merge(&candidate))
                .or_insert(candidate);
        }
        // Spans of one process share their resource: serialise and store it once per batch.
        let mut resources: HashMap<*const crate::spans::Resource, (i64, String, i64)> =
            HashMap::new();
        for span in spans {
            let start = to_sql_ns(span.start_unix_nano);
            resources
                .entry(std::sync::Arc::as_ptr(&span.resource))
                .and_modify(|r| r.2 = r.2.max(start))
                .or_insert_with(|| {
                    let json =
                        json::object_string(json::Object::Resource(&span.resource.attributes));
                    (resource_id(&json), json, start)
                });
        }
        let tx = self.conn.transaction()?;
        {
            let mut upsert_resource = tx.prepare_cached(UPSERT_RESOURCE)?;
            for (id, json, last_used) in resources.values() {
                upsert_resource.execute(params![id, json, last_used])?;
            }
            // Summaries first: their row keys (in order of arrival, so span index inserts land near
            // the end of the index rather than all over it) go with the spans.
            let mut upsert_trace = tx.prepare_cached(UPSERT_TRACE)?;
            for (trace_id, s) in &mut summaries {
                s.key = upsert_trace.query_row(
                    params![
                        hex(trace_id),
                        s.root.resource.service_name,
                        s.root.name,
                        s.root_rank,
                        to_sql_ns(s.root.start_unix_nano),
                        s.start,
                        s.end,
                        s.count,
                        i64::from(s.error),
                    ],
                    |row| row.get(0),
                )?;
            }
            let mut insert_span = tx.prepare_cached(INSERT_SPAN)?;
            for span in spans {
                let key = summaries.get(&span.trace_id).map_or(0, |s| s.key);
                let resource = resources
                    .get(&std::sync::Arc::as_ptr(&span.resource))
                    .map_or(0, |r| r.0);
                insert_span.execute(params![
                    key,
                    hex(&span.span_id),
                    span.parent_span_id.map(|p| hex(&p)),
                    span.name,
                    span.kind.as_str(),
                    span.resource.service_name,
                    to_sql_ns(span.start_unix_nano),
                    to_sql_ns(span.end_unix_nano.max(span.start_unix_nano)),
                    span.status.as_str(),
                    span.status_message,
                    json::object_string(json::Object::Attributes(&span.attributes)),
                    resource,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The trace list, newest first.
    pub fn list(&self, q: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        use rusqlite::types::Value;
        let mut sql = String::from(
            "SELECT trace_id, root_service, root_name, start_ns, end_ns - start_ns, span_count, error FROM traces WHERE 1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(service) = &q.service {
            sql.push_str(" AND EXISTS (SELECT 1 FROM spans s WHERE s.trace_key = traces.key AND s.service = ?)");
            args.push(Value::Text(service.clone()));
        }
        if let Some(name) = &q.name {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM spans s WHERE s.trace_key = traces.key AND instr(lower(s.name), lower(?)) > 0)",
            );
            args.push(Value::Text(name.clone()));
        }
        match q.status {
            Some(StatusFilter::Error) => sql.push_str(" AND error = 1"),
            Some(StatusFilter::Ok) => sql.push_str(" AND error = 0"),
            None => {}
        }
        if let Some(d) = q.min_duration_ns {
            sql.push_str(" AND end_ns - start_ns >= ?");
            args.push(Value::Integer(to_sql_ns(d)));
        }
        if let Some(t) = q.since_unix_nano {
            sql.push_str(" AND start_ns >= ?");
            args.push(Value::Integer(to_sql_ns(t)));
        }
        if let Some(t) = q.until_unix_nano {
            sql.push_str(" AND start_ns < ?");
            args.push(Value::Integer(to_sql_ns(t)));
        }
        if let Some(prefix) = &q.trace_id_prefix {
            sql.push_str(" AND substr(trace_id, 1, ?) = ?");
            args.push(Value::Integer(
                i64::try_from(prefix.len()).unwrap_or(i64::MAX),
            ));
            args.push(Value::Text(prefix.to_ascii_lowercase()));
        }
        let limit = match q.limit {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        sql.push_str(" ORDER BY start_ns DESC LIMIT ?");
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
            Ok(TraceSummary {
                trace_id: row.get(0)?,
                root_service: row.get(1)?,
                root_name: row.get(2)?,
                start_unix_nano: from_sql_ns(row.get(3)?),
                duration_ns: from_sql_ns(row.get(4)?),
                span_count: from_sql_ns(row.get(5)?),
                error: row.get::<_, i64>(6)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every span of a trace as the DESIGN.md JSON span, by start time; `None` if none is stored.
    pub fn trace(&self, trace_id: &str) -> Result<Option<Vec<serde_json::Value>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.service, s.start_ns, s.end_ns, s.status,
                    s.status_message, s.attributes, r.json
             FROM traces t JOIN spans s ON s.trace_key = t.key LEFT JOIN resources r ON r.id = s.resource_id
             WHERE t.trace_id = ? ORDER BY s.start_ns, s.end_ns DESC",
        )?;
        let rows = stmt.query_map([trace_id.to_ascii_lowercase()], |row| {
            let attributes: String = row.get(10)?;
            let resource: String = row.get::<_, Option<String>>(11)?.unwrap_or_default();
            let (name, kind, service, status): (String, String, String, String) =
                (row.get(3)?, row.get(4)?, row.get(5)?, row.get(8)?);
            let (trace_id, span_id, parent): (String, String, Option<String>) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let head = json::Head {
                trace_id: json::Id::Hex(&trace_id),
                span_id: json::Id::Hex(&span_id),
                parent_span_id: parent.as_deref().map(json::Id::Hex),
                name: &name,
                kind: &kind,
                service: &service,
                start_unix_nano: from_sql_ns(row.get(6)?),
                end_unix_nano: from_sql_ns(row.get(7)?),
                status: &status,
            };
            let mut bytes = Vec::new();
            json::write_span(
                &mut bytes,
                &head,
                json::Object::Raw(attributes.as_bytes()),
                Some(json::Object::Raw(resource.as_bytes())),
            );
            let mut span: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            // Not in the DESIGN.md span; added only when there is one, for the span panel.
            if let Some(message) = row.get::<_, Option<String>>(9)? {
                span["status_message"] = message.into();
            }
            Ok(span)
        })?;
        let spans: Vec<serde_json::Value> = rows.collect::<Result<_, _>>()?;
        Ok(if spans.is_empty() { None } else { Some(spans) })
    }

    /// Request rate, error rate and latency percentiles per service over the spans that started
    /// in `[now - window, now]` — or over the newest [`MAX_SERVICE_SAMPLES`] of them when there are
    /// more (the rates then cover the time those span, so they stay right).
    pub fn services(
        &self,
        now_unix_nano: u64,
        window: Duration,
    ) -> Result<Vec<ServiceStats>, StoreError> {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        let since = now_unix_nano.saturating_sub(window_ns);
        let mut stmt = self.conn.prepare_cached(
            "SELECT service, kind, end_ns - start_ns, status = 'error', start_ns FROM spans
             WHERE start_ns >= ? ORDER BY start_ns DESC LIMIT ?",
        )?;
        // service → (server durations and errors, client durations and errors)
        type Samples = (Vec<u64>, u64);
        let mut by_service: BTreeMap<String, (Samples, Samples)> = BTreeMap::new();
        let limit = i64::try_from(MAX_SERVICE_SAMPLES).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![to_sql_ns(since), limit], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                from_sql_ns(row.get(2)?),
                row.get::<_, bool>(3)?,
                from_sql_ns(row.get(4)?),
            ))
        })?;
        let (mut samples_seen, mut oldest) = (0usize, now_unix_nano);
        for row in rows {
            let (service, kind, duration, error, start) = row?;
            samples_seen += 1;
            oldest = oldest.min(start);
            let entry = by_service.entry(service).or_default();
            let samples = match kind.as_str() {
                "server" | "consumer" => &mut entry.0,
                _ => &mut entry.1,
            };
            samples.0.push(duration);
            samples.1 += u64::from(error);
        }
        let covered_ns = if samples_seen >= MAX_SERVICE_SAMPLES {
            now_unix_nano - oldest
        } else {
            window_ns
        };
        let secs = (covered_ns as f64 / 1e9).max(1.0);
        Ok(by_service
            .into_iter()
            .map(|(service, (server, client))| {
                let (kind, (mut durations, errors)) = if server.0.is_empty() {
                    ("client", client)
                } else {
                    ("server", server)
                };
                durations.sort_unstable();
                let requests = durations.len() as u64;
                ServiceStats {
                    service,
                    kind,
                    requests,
                    errors,
                    request_rate: requests as f64 / secs,
                    error_rate: if requests == 0 {
                        0.0
                    } else {
                        errors as f64 / requests as f64
                    },
                    p50_ns: percentile(&durations, 50),
                    p95_ns: percentile(&durations, 95),
                    p99_ns: percentile(&durations, 99),
                }
            })
            .collect())
    }

    /// Bytes in use, traces and spans.
    pub fn size(&self) -> Result<StoreSize, StoreError> {
        let bytes = self.used_bytes()?;
        let traces: i64 = self
            .conn
            .query_row("SELECT count(*) FROM traces", [], |r| r.get(0))?;
        let spans: i64 = self
            .conn
            .query_row("SELECT count(*) FROM spans", [], |r| r.get(0))?;
        Ok(StoreSize {
            bytes,
            traces: from_sql_ns(traces),
            spans: from_sql_ns(spans),
        })
    }

    fn used_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let page_size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(from_sql_ns((pages - free).max(0)).saturating_mul(from_sql_ns(page_size)))
    }

    /// Removes traces that started before `now - max_age`, then the oldest traces until the data
    /// takes at most `max_bytes`, and gives the freed space back to the file system.
    pub fn retain(
        &mut self,
        now_unix_nano: u64,
        max_age: Duration,
        max_bytes: u64,
    ) -> Result<Removed, StoreError> {
        let max_age_ns = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        let mut removed = self.remove_before(now_unix_nano.saturating_sub(max_age_ns))?;
        // Over the size limit: drop the oldest traces, a slice at a time (at least a tenth of them).
        for _ in 0..32 {
            let used = self.used_bytes()?;
            if used <= max_bytes {
                break;
            }
            let count: i64 = self
                .conn
                .query_row("SELECT count(*) FROM traces", [], |r| r.get(0))?;
            if count == 0 {
                break;
            }
            let over = 1.0 - max_bytes as f64 / used as f64;
            let n = ((count as f64 * (over + 0.05).max(0.1)).ceil() as i64).clamp(1, count);
            let cutoff: Option<i64> = self
                .conn
                .query_row(
                    "SELECT start_ns FROM traces ORDER BY start_ns LIMIT 1 OFFSET ?",
                    [n - 1],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(cutoff) = cutoff else { break };
            let r = self.remove_before(from_sql_ns(cutoff).saturating_add(1))?;
            removed.traces += r.traces;
            removed.spans += r.spans;
        }
        if removed.traces > 0 {
            self.conn.execute(
                "DELETE FROM resources WHERE last_used < coalesce((SELECT min(start_ns) FROM traces), 9223372036854775807)",
                [],
            )?;
            // incremental_vacuum frees pages as its statement is stepped: run it to the end.
            let mut vacuum = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut rows = vacuum.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            drop(vacuum);
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(removed)
    }

    /// Removes every trace that started before `cutoff`, with its spans.
    fn remove_before(&mut self, cutoff: u64) -> Result<Removed, StoreError> {
        let cutoff = to_sql_ns(cutoff);
        let tx = self.conn.transaction()?;
        let spans = tx.execute(
            "DELETE FROM spans WHERE trace_key IN (SELECT key FROM traces WHERE start_ns < ?)",
            [cutoff],
        )?;
        let traces = tx.execute("DELETE FROM traces WHERE start_ns < ?", [cutoff])?;
        tx.commit()?;
        Ok(Removed {
            traces: traces as u64,
            spans: spans as u64,
        })
    }
}

/// The summary of one trace's spans within a batch.
struct BatchSummary<'a> {
    root: &'a Span,
    root_rank: i64,
    start: i64,
    end: i64,
    count: i64,
    error: bool,
    /// The trace's row key, once written.
    key: i64,
}

impl BatchSummary<'_> {
    fn merge(&mut self, other: &Self) {
        if (other.root_rank, other.root.start_unix_nano)
            < (self.root_rank, self.root.start_unix_nano)
        {
            self.root = other.root;
            self.root_rank = other.root_rank;
        }
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
        self.count += other.count;
        self.error |= other.error;
    }
}

/// The key of a resource: a 64-bit hash of its JSON text.
fn resource_id(json: &str) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    json.hash(&mut hasher);
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

/// The `p`th percentile (nearest rank) of sorted values; 0 when there are none.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Unix nanoseconds fit an `i64` until 2262.
fn to_sql_ns(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

fn from_sql_ns(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The data directory: `--data-dir` when given, else `/var/lib/ztrace` when it can be created
/// and written, else `$XDG_STATE_HOME/ztrace` (`~/.local/state/ztrace`).
pub fn data_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_owned();
    }
    let system = PathBuf::from("/var/lib/ztrace");
    if writable(&system) {
        return system;
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir);
    state.join("ztrace")
}

/// Whether `dir` exists or can be created, and a file can be created in it.
fn writable(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".ztrace-write-test-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests;
