//! The health endpoint (`--health ADDR`): `/healthz` for liveness, `/readyz` for readiness (200
//! once the kernel programs are attached and capture runs), `/metrics` with every counter of
//! `ztrace stats` in the Prometheus text format (0.0.4), plus the agent's resident memory.
//!
//! A small HTTP/1 server of its own ([`crate::serve`]), apart from the viewer, so that an export-only agent
//! (`--no-ui`, the DaemonSet) still answers its probes. It serves no request data. Kernel
//! counters are read by the pipeline (which owns the maps) once a second and kept here.
//!
//! Queue depths: each sink's (`<sink>_queue_spans`, gauges), set by the pipeline every second.
//! Not done: histograms.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Prefix of every metric name.
const PREFIX: &str = "ztrace_";

/// Counters that are levels, not totals: exposed as gauges, without `_total`.
const GAUGES: &[&str] = &["link_window_peak", "symbol_bytes"];

/// What the endpoint reports.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    metrics: Arc<Metrics>,
    kernel: Mutex<Vec<(&'static str, u64)>>,
    /// Spans waiting in the sinks' queues (`export_queue_spans`, `print_queue_spans`, ...).
    queues: Mutex<Vec<(&'static str, u64)>>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Health> {
        Arc::new(Health {
            ready: AtomicBool::new(false),
            metrics,
            kernel: Mutex::new(Vec::new()),
            queues: Mutex::new(Vec::new()),
        })
    }

    /// Capture runs: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The kernel's counters, as last read.
    pub fn set_kernel(&self, counters: Vec<(&'static str, u64)>) {
        if let Ok(mut kernel) = self.kernel.lock() {
            *kernel = counters;
        }
    }

    /// Spans waiting in each sink's queue now, by name (`export_queue_spans`, ...).
    pub fn set_queues(&self, depths: Vec<(&'static str, u64)>) {
        if let Ok(mut queues) = self.queues.lock() {
            *queues = depths;
        }
    }

    /// The `/metrics` page.
    fn render(&self) -> String {
        let mut all = self.metrics.snapshot();
        for levels in [&self.kernel, &self.queues] {
            all.extend(levels.lock().map(|k| k.clone()).unwrap_or_default());
        }
        encode_prometheus(&all, resident_bytes())
    }
}

/// `--health ADDR`: starts the endpoint; a port that cannot be bound is logged and the agent
/// runs on without it (the probes will then say so).
pub async fn start_if(
    addr: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Option<(Arc<Health>, SocketAddr)> {
    let health = Health::new(metrics.clone());
    match start(addr?, health.clone()).await {
        Ok(bound) => {
            eprintln!("health: http://{bound}/healthz, /readyz, /metrics");
            Some((health, bound))
        }
        Err(error) => {
            tracing::error!(%error, addr = ?addr, "cannot serve the health endpoint (--health)");
            None
        }
    }
}

/// Binds `addr` and serves the endpoint until the runtime stops; returns the bound address.
pub async fn start(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(crate::serve::serve(
        listener,
        "health endpoint",
        move |req| {
            let response = route(&req, &health);
            async move { response }
        },
    ));
    Ok(bound)
}

fn route(req: &Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting: programs not attached yet\n".into(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            health.render(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /healthz, /readyz, /metrics\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// The Prometheus text format of `(name, value)` counters: `ztrace_<name>_total` counters,
/// [`GAUGES`] and `*_queue_spans` as `ztrace_<name>`, and `ztrace_resident_memory_bytes` when known. Names are
/// made of `[a-z0-9_]` already; anything else becomes `_`.
pub fn encode_prometheus(counters: &[(&str, u64)], resident_bytes: Option<u64>) -> String {
    let mut out = String::with_capacity(counters.len() * 96);
    let mut metric = |name: String, kind: &str, value: u64| {
        out.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
    };
    for (name, value) in counters {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if GAUGES.contains(name) || name.ends_with("_queue_spans") {
            metric(format!("{PREFIX}{clean}"), "gauge", *value);
        } else {
            metric(format!("{PREFIX}{clean}_total"), "counter", *value);
        }
    }
    if let Some(rss) = resident_bytes {
        metric(format!("{PREFIX}resident_memory_bytes"), "gauge", rss);
    }
    out
}

/// The agent's resident memory (`VmRSS` of `/proc/self/status`, in kB).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_in_the_text_format() {
        let text = encode_prometheus(
            &[
                ("spans_created", 12),
                ("link_window_peak", 3),
                ("kernel_ringbuf_full", 0),
                ("odd-name", 1),
            ],
            Some(4096),
        );
        assert_eq!(
            text,
            "# TYPE ztrace_spans_created_total counter\nztrace_spans_created_total 12\n\
             # TYPE ztrace_link_window_peak gauge\nztrace_link_window_peak 3\n\
             # TYPE ztrace_kernel_ringbuf_full_total counter\nztrace_kernel_ringbuf_full_total 0\n\
             # TYPE ztrace_odd_name_total counter\nztrace_odd_name_total 1\n\
             # TYPE ztrace_resident_memory_bytes gauge\nztrace_resident_memory_bytes 4096\n"
        );
        assert_eq!(encode_prometheus(&[], None), "");
    }

    #[test]
    fn every_agent_counter_is_exposed_once() {
        let health = Health::new(Arc::new(Metrics::default()));
        health.set_kernel(vec![("kernel_ringbuf_full", 7)]);
        health.set_queues(vec![("export_queue_spans", 3)]);
        let page = health.render();
        for (name, _) in Metrics::default().snapshot() {
            let exposed = page
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("{PREFIX}{name} "))
                        || l.starts_with(&format!("{PREFIX}{name}_total "))
                })
                .count();
            assert_eq!(exposed, 1, "{name}");
        }
        assert!(page.contains("\nztrace_kernel_ringbuf_full_total 7\n"));
        assert!(page.contains("\nztrace_export_queue_spans 3\n"));
        assert!(!page.contains("print_queue"));
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(page.contains("ztrace_resident_memory_bytes "));
    }
}
