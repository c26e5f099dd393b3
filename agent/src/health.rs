//! The health endpoint (`--health ADDR`): `/healthz` for liveness, `/readyz` for readiness (200
//! once the kernel programs are attached and capture runs), `/metrics` with every counter of
//! `ztrace stats` in the Prometheus text format (0.0.4), plus the agent's resident memory.
//!
//! A small HTTP/1 server of its own ([`crate::serve`]), apart from the viewer, so that an export-only agent
//! (`--no-ui`, the DaemonSet) still answers its probes. It serves no request data. Kernel
//! counters are read by the pipeline (which owns the maps) once a second and kept here.
//!
//! Queue depths: each sink's (`<sink>_queue_spans`, gauges), set by the pipeline every second.
//! Fill levels ([`Levels`]): `ztrace_bpf_map_entries{map="SOCKS"}` and
//! `ztrace_bpf_map_max_entries{map="SOCKS"}` for each kernel hash map, and
//! `ztrace_table_entries{table="connections"}` for each of the agent's own tables, set by the
//! pipeline every [`crate::pipeline::FILL_INTERVAL`].
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

use crate::{bpf::fill::MapFill, metrics::Metrics};

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
    levels: Mutex<Levels>,
}

/// How full the kernel's hash maps and the agent's own tables are.
#[derive(Clone, Debug, Default)]
pub struct Levels {
    pub maps: Vec<MapFill>,
    /// Entries in each of the agent's tables (`connections`, `processes`, ...).
    pub tables: Vec<(&'static str, u64)>,
}

impl Levels {
    /// `{"bpf_maps": {"SOCKS": {"entries": N, "max_entries": M}, ...}, "tables": {...}}`, for
    /// `ztrace stats`.
    pub fn to_json(&self) -> serde_json::Value {
        let maps: serde_json::Map<String, serde_json::Value> = self
            .maps
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    serde_json::json!({ "entries": m.entries, "max_entries": m.max_entries }),
                )
            })
            .collect();
        let tables: serde_json::Map<String, serde_json::Value> = self
            .tables
            .iter()
            .map(|(name, n)| ((*name).to_owned(), (*n).into()))
            .collect();
        serde_json::json!({ "bpf_maps": maps, "tables": tables })
    }

    /// The Prometheus lines: labelled gauges.
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut family =
            |name: &str, label: &str, values: &mut dyn Iterator<Item = (&str, u64)>| {
                let mut first = true;
                for (key, value) in values {
                    if first {
                        let _ = writeln!(out, "# TYPE {PREFIX}{name} gauge");
                        first = false;
                    }
                    let _ = writeln!(out, "{PREFIX}{name}{{{label}=\"{key}\"}} {value}");
                }
            };
        family(
            "bpf_map_entries",
            "map",
            &mut self
                .maps
                .iter()
                .map(|m| (m.name.as_str(), u64::from(m.entries))),
        );
        family(
            "bpf_map_max_entries",
            "map",
            &mut self
                .maps
                .iter()
                .map(|m| (m.name.as_str(), u64::from(m.max_entries))),
        );
        family(
            "table_entries",
            "table",
            &mut self.tables.iter().map(|(n, v)| (*n, *v)),
        );
    }
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Health> {
        Arc::new(Health {
            ready: AtomicBool::new(false),
            metrics,
            kernel: Mutex::new(Vec::new()),
            queues: Mutex::new(Vec::new()),
            levels: Mutex::new(Levels::default()),
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

    /// Fill levels of the kernel's maps and the agent's tables, as last counted.
    pub fn set_levels(&self, levels: Levels) {
        if let Ok(mut current) = self.levels.lock() {
            *current = levels;
        }
    }

    /// The `/metrics` page.
    fn render(&self) -> String {
        let mut all = self.metrics.snapshot();
        for levels in [&self.kernel, &self.queues] {
            all.extend(levels.lock().map(|k| k.clone()).unwrap_or_default());
        }
        let mut page = encode_prometheus(&all, resident_bytes());
        if let Ok(levels) = self.levels.lock() {
            levels.render(&mut page);
        }
        page
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

/// The agent's resident memory (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    own_status_kib("VmRSS").map(|kb| kb * 1024)
}

/// A memory figure of `/proc/self/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn own_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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

    #[test]
    fn fill_levels_are_labelled_gauges() {
        let health = Health::new(Arc::new(Metrics::default()));
        health.set_levels(Levels {
            maps: vec![MapFill {
                name: "SOCKS".into(),
                entries: 12,
                max_entries: 65536,
            }],
            tables: vec![("connections", 3)],
        });
        let page = health.render();
        assert!(
            page.contains(
                "# TYPE ztrace_bpf_map_entries gauge\nztrace_bpf_map_entries{map=\"SOCKS\"} 12\n"
            ),
            "{page}"
        );
        assert!(
            page.contains("ztrace_bpf_map_max_entries{map=\"SOCKS\"} 65536\n"),
            "{page}"
        );
        assert!(
            page.contains("ztrace_table_entries{table=\"connections\"} 3\n"),
            "{page}"
        );
        let json = health.levels.lock().expect("levels").to_json();
        assert_eq!(json["bpf_maps"]["SOCKS"]["entries"], 12);
        assert_eq!(json["tables"]["connections"], 3);
    }
}
