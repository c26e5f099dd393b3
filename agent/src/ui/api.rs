//! The viewer's JSON API: query-string parsing and the handlers over the store.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::{response, text, State};
use crate::{
    config::parse_duration,
    sinks::store::{StatusFilter, Store, StoreError, TraceQuery},
};

/// Default window of `/api/services`.
const DEFAULT_SERVICES_MINUTES: u64 = 15;

pub(super) async fn traces(query: &str, state: Arc<State>) -> Response<Full<Bytes>> {
    let q = match parse_trace_query(query, now_unix_nano()) {
        Ok(q) => q,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    with_store(state, move |store| {
        Ok(serde_json::to_value(store.list(&q)?).unwrap_or_default())
    })
    .await
}

pub(super) async fn trace(trace_id: String, state: Arc<State>) -> Response<Full<Bytes>> {
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return text(StatusCode::BAD_REQUEST, "a trace id is 32 hex digits");
    }
    let id = trace_id.to_ascii_lowercase();
    with_store(state, move |store| {
        Ok(match store.trace(&id)? {
            Some(spans) => serde_json::json!({ "trace_id": id, "spans": spans }),
            None => serde_json::Value::Null,
        })
    })
    .await
}

pub(super) async fn services(query: &str, state: Arc<State>) -> Response<Full<Bytes>> {
    let minutes = match params(query).find(|(k, _)| k == "minutes") {
        Some((_, v)) => match v.parse::<u64>() {
            Ok(m) if (1..=7 * 24 * 60).contains(&m) => m,
            _ => return text(StatusCode::BAD_REQUEST, "minutes: a number from 1 to 10080"),
        },
        None => DEFAULT_SERVICES_MINUTES,
    };
    let now = now_unix_nano();
    with_store(state, move |store| {
        let services = store.services(now, Duration::from_secs(minutes * 60))?;
        Ok(serde_json::json!({ "window_minutes": minutes, "services": services }))
    })
    .await
}

pub(super) async fn stats(state: Arc<State>) -> Response<Full<Bytes>> {
    let counters: serde_json::Map<String, serde_json::Value> = state
        .metrics
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    if state.store.is_none() {
        return json(
            StatusCode::OK,
            &serde_json::json!({ "counters": counters, "store": null }),
        );
    }
    let problem = state
        .store_status
        .as_ref()
        .and_then(|s| s.problem())
        .map(|p| serde_json::to_value(p).unwrap_or_default());
    with_store(state, move |store| {
        // A file too damaged to tell its size still has a problem to show.
        let (size, read_error) = match store.size() {
            Ok(size) => (Some(size), None),
            Err(error) => (None, Some(error.to_string())),
        };
        Ok(serde_json::json!({ "counters": counters,
            "store": { "path": store.path(), "size": size, "problem": problem, "read_error": read_error } }))
    })
    .await
}

/// Runs `f` on the blocking pool with the store's read connection. A `Null` result is a 404.
async fn with_store<F>(state: Arc<State>, f: F) -> Response<Full<Bytes>>
where
    F: FnOnce(&Store) -> Result<serde_json::Value, StoreError> + Send + 'static,
{
    if state.store.is_none() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the trace store is disabled (see ztrace's log)",
        );
    }
    let status = state.store_status.clone();
    let result = tokio::task::spawn_blocking(move || {
        let Some(store) = &state.store else {
            return Ok(serde_json::Value::Null);
        };
        let store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&store)
    })
    .await;
    match result {
        Ok(Ok(serde_json::Value::Null)) => text(StatusCode::NOT_FOUND, "no such trace"),
        Ok(Ok(value)) => json(StatusCode::OK, &value),
        Ok(Err(error)) => {
            tracing::warn!(%error, "viewer query failed");
            if let Some(status) = &status {
                status.read_failed(&error);
            }
            text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "query task failed"),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    response(status, "application/json", Bytes::from(value.to_string()))
}

/// The filters of `/api/traces`; an empty value means no filter.
pub(super) fn parse_trace_query(query: &str, now: u64) -> Result<TraceQuery, String> {
    let mut q = TraceQuery::default();
    for (key, value) in params(query) {
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "service" => q.service = Some(value),
            "name" => q.name = Some(value),
            "status" => {
                q.status = match value.as_str() {
                    "error" => Some(StatusFilter::Error),
                    "ok" => Some(StatusFilter::Ok),
                    "all" | "any" => None,
                    _ => return Err("status: error, ok or all".into()),
                }
            }
            "min_duration_ms" => {
                let ms: f64 = value
                    .parse()
                    .map_err(|_| "min_duration_ms: a number of milliseconds")?;
                if !(ms.is_finite() && ms >= 0.0) {
                    return Err("min_duration_ms: a number of milliseconds".into());
                }
                q.min_duration_ns = Some((ms * 1e6) as u64);
            }
            "since" => {
                q.since_unix_nano =
                    Some(time_param(&value, now).map_err(|e| format!("since: {e}"))?)
            }
            "until" => {
                q.until_unix_nano =
                    Some(time_param(&value, now).map_err(|e| format!("until: {e}"))?)
            }
            "trace_id" => {
                if value.len() > 32 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("trace_id: hex digits".into());
                }
                q.trace_id_prefix = Some(value.to_ascii_lowercase());
            }
            "limit" => q.limit = value.parse().map_err(|_| "limit: a number")?,
            _ => {}
        }
    }
    Ok(q)
}

/// Unix nanoseconds, or a duration before `now` (`15m`, `2h`).
fn time_param(value: &str, now: u64) -> Result<u64, String> {
    if let Ok(ns) = value.parse::<u64>() {
        return Ok(ns);
    }
    let ago = parse_duration(value)?;
    Ok(now.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX)))
}

/// `key=value` pairs of a query string, percent- and `+`-decoded.
fn params(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = parse_trace_query(
            "service=orders&name=GET+%2Forders&status=error&min_duration_ms=1.5&since=1000&limit=20&trace_id=AB&x=1",
            0,
        )
        .expect("parse");
        assert_eq!(q.service.as_deref(), Some("orders"));
        assert_eq!(q.name.as_deref(), Some("GET /orders"));
        assert_eq!(q.status, Some(StatusFilter::Error));
        assert_eq!(q.min_duration_ns, Some(1_500_000));
        assert_eq!(q.since_unix_nano, Some(1000));
        assert_eq!(q.limit, 20);
        assert_eq!(q.trace_id_prefix.as_deref(), Some("ab"));
        let q =
            parse_trace_query("since=15m&service=&status=all", 3_600_000_000_000).expect("parse");
        assert_eq!(q.since_unix_nano, Some(2_700_000_000_000));
        assert_eq!(q.service, None);
        assert_eq!(q.status, None);
        assert!(parse_trace_query("status=maybe", 0).is_err());
        assert!(parse_trace_query("min_duration_ms=-1", 0).is_err());
        assert!(parse_trace_query("trace_id=xyz", 0).is_err());
    }

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(decode("a%20b%"), "a b%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%C3%A9"), "é");
    }
}
