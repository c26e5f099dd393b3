//! The trace viewer: an HTTP/1 server (hyper) on `--ui` serving the embedded pages and the JSON API
//! of DESIGN.md over the trace store.
//!
//! - `GET /api/traces?service=&name=&status=&min_duration_ms=&since=&until=&trace_id=&limit=`:
//!   trace summaries, newest first. `since`/`until` are unix nanoseconds or a duration ago (`15m`).
//! - `GET /api/traces/{trace_id}`: `{trace_id, spans: [<DESIGN.md span>]}` (404 when unknown).
//! - `GET /api/services?minutes=N`: per service request rate, error rate, p50/p95/p99 (default 15).
//! - `GET /api/stats`: the agent's self-telemetry counters and the store's path, size and
//!   `problem` (why its writes fail now: a full disk, a damaged file — which stays reported —;
//!   `null` when they succeed) and `read_error` (the viewer's own read failing), or
//!   `"store": null` when it is disabled. The pages show each in a banner.
//! - `/`, `/app.js`, `/app.css`: the single-page viewer, compiled into the binary.
//!
//! [`start`] opens a read connection to the store the pipeline's store sink writes, and binds the
//! address; a failure of either is logged and leaves the rest of the agent running. Queries run
//! on the blocking pool against that connection. The viewer never writes the store.

mod api;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    metrics::Metrics,
    sinks::store::{writer::StoreStatus, Store},
};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What request handlers share.
pub(crate) struct State {
    /// A read connection to the store; `None` when the store could not be opened.
    pub store: Option<Mutex<Store>>,
    pub metrics: Arc<Metrics>,
    /// Why the store's writer fails now, if it does.
    pub store_status: Option<Arc<StoreStatus>>,
}

/// Serves the viewer on `config.ui` over the store in `store_dir` (none: the store sink did not
/// open). Returns the address it listens on. Never fails: a store that cannot be read or an
/// address that cannot be bound is logged, and the agent goes on capturing and exporting.
pub async fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    store_dir: Option<&Path>,
    store_status: Option<Arc<StoreStatus>>,
) -> Option<SocketAddr> {
    let reader = store_dir.and_then(|dir| match Store::open(dir).and_then(|r| r.set_cache_mib(8).map(|()| r)) {
        Ok(reader) => Some(reader),
        Err(error) => {
            tracing::error!(%error, dir = %dir.display(), "the viewer cannot read the trace store");
            None
        }
    });
    match TcpListener::bind(config.ui).await {
        Ok(listener) => {
            let addr = listener.local_addr().unwrap_or(config.ui);
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "THE VIEWER IS OPEN TO THE NETWORK: anyone who can reach {addr} can read every \
                    traced request (URLs, headers kept as attributes, SQL). Use --ui 127.0.0.1:PORT to keep it local");
            }
            let state = Arc::new(State {
                store: reader.map(Mutex::new),
                metrics,
                store_status,
            });
            tokio::spawn(crate::serve::serve(listener, "viewer", move |req| {
                route(req, state.clone())
            }));
            Some(addr)
        }
        Err(error) => {
            tracing::error!(%error, addr = %config.ui, "cannot serve the viewer (choose another --ui address); capture goes on");
            None
        }
    }
}

async fn route(req: Request<Incoming>, state: Arc<State>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match path.as_str() {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        "/api/traces" => api::traces(&query, state).await,
        "/api/services" => api::services(&query, state).await,
        "/api/stats" => api::stats(state).await,
        p => match p.strip_prefix("/api/traces/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                api::trace(id.to_owned(), state).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    response(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    )
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
