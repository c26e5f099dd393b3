//! OTLP trace export: spans go to an OpenTelemetry backend over gRPC or HTTP/protobuf.
//!
//! [`spawn`] starts one tokio task that owns the connection. Producers hold an [`ExportHandle`]
//! (the pipeline: an [`OtlpSink`]) whose sends never block: spans go through the sinks' bounded
//! queue (`sinks::queue`), and a full queue drops them and counts them
//! (`spans_dropped_queue_full`). The task batches spans (by count or after `batch_timeout`),
//! groups each batch by resource (see [`convert`]) and sends it, retrying retryable failures with
//! exponential backoff and jitter for a bounded number of attempts and a bounded time; a batch
//! that still fails is dropped and counted (`spans_export_failed`). Memory is bounded by the queue
//! plus one batch in flight, so a dead or slow endpoint costs dropped spans, never a blocked
//! caller or a growing heap. Failures are logged at warn level at most once per
//! [`WARN_INTERVAL`], with counts.
//!
//! Endpoints follow the OpenTelemetry exporter rules (see [`OtlpConfig::traces_url`]).
//!
//! Not done here: TLS (`https://` endpoints are refused at [`spawn`]), compression, gRPC
//! `RetryInfo` details, metrics and logs signals.

pub mod convert;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use super::{queue, Finishing, Sink};
use crate::metrics::Metrics;
use crate::spans::Span;
use transport::{AttemptError, Payload, Transport};

/// Default gRPC endpoint (OpenTelemetry's).
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default HTTP endpoint (OpenTelemetry's); `/v1/traces` is appended.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// Path appended to a base endpoint for http/protobuf.
pub const TRACES_PATH: &str = "v1/traces";

/// Attempts per batch, the first included.
const MAX_ATTEMPTS: u32 = 5;
/// Time from a batch's first attempt after which it is not retried again.
const MAX_RETRY_ELAPSED: Duration = Duration::from_secs(30);
/// First backoff delay; doubled after each failure up to [`MAX_BACKOFF`], then jittered.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Bound on one request (OpenTelemetry's default `OTEL_EXPORTER_OTLP_TIMEOUT`).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is requested, the task sends what it holds for at most this long.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Failed exports are logged at warn level at most once per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Errors of OTLP export: configuration errors returned by [`spawn`] and [`parse_headers`], and
/// the failures of single export attempts (logged and counted, never returned to producers).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("invalid OTLP protocol {0:?}: expected \"grpc\" or \"http/protobuf\"")]
    InvalidProtocol(String),
    #[error("invalid OTLP header: {0}")]
    InvalidHeader(String),
    #[error("invalid OTLP exporter configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("the OTLP exporter must be spawned inside a tokio runtime")]
    NoRuntime,
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("gRPC export failed: {0}")]
    Grpc(tonic::Status),
    #[error("HTTP export failed: {0}")]
    Http(#[source] reqwest::Error),
    #[error("HTTP export failed with status {status}: {message}")]
    HttpStatus { status: u16, message: String },
    #[error("export attempt timed out after {0:?}")]
    Timeout(Duration),
    #[error("endpoint rejected {rejected} spans: {message}")]
    PartialSuccess { rejected: u64, message: String },
}

/// Why an export attempt failed, where that is one of the reasons counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// No connection to the endpoint (refused, unroutable, connect timed out).
    Unreachable,
    /// Connected (or connecting took no time) but no answer came within the attempt's time.
    Timeout,
}

impl ExportError {
    /// The reason of a failed attempt, when it is one of [`FailureReason`]'s.
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            ExportError::Timeout(_) => Some(FailureReason::Timeout),
            ExportError::Http(e) if e.is_connect() => Some(FailureReason::Unreachable),
            ExportError::Http(e) if e.is_timeout() => Some(FailureReason::Timeout),
            ExportError::Grpc(status) => match status.code() {
                tonic::Code::Unavailable => Some(FailureReason::Unreachable),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    Some(FailureReason::Timeout)
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// OTLP transport protocol (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// `grpc`: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    #[default]
    Grpc,
    /// `http/protobuf`: `POST` of a protobuf body to `.../v1/traces`.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The OpenTelemetry spelling: `grpc` or `http/protobuf`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// OpenTelemetry's default endpoint for this protocol.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT,
            OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
        }
    }
}

impl std::str::FromStr for OtlpProtocol {
    type Err = ExportError;

    /// Parses `grpc` or `http/protobuf` (`http/json` is not supported).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(ExportError::InvalidProtocol(other.to_owned())),
        }
    }
}

impl std::fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Configuration of the OTLP exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// Base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`), or the full traces endpoint
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) when `traces_endpoint_is_full`. `http://` only;
    /// an endpoint without a scheme gets `http://`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Request headers (HTTP) or metadata (gRPC), e.g. from [`parse_headers`].
    pub headers: Vec<(String, String)>,
    /// Spans waiting to be batched; more are dropped and counted.
    pub queue_spans: usize,
    /// Spans per export request.
    pub batch_spans: usize,
    /// A non-full batch is sent this long after its first span arrived.
    pub batch_timeout: Duration,
    /// `endpoint` is used as is, with no `/v1/traces` appended (a signal-specific endpoint).
    pub traces_endpoint_is_full: bool,
}

impl Default for OtlpConfig {
    /// gRPC to `http://localhost:4317`, no headers, a queue of 4096 spans, batches of 512 spans
    /// or 1 s.
    fn default() -> Self {
        OtlpConfig {
            endpoint: DEFAULT_GRPC_ENDPOINT.to_owned(),
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            queue_spans: 4096,
            batch_spans: 512,
            batch_timeout: Duration::from_secs(1),
            traces_endpoint_is_full: false,
        }
    }
}

impl OtlpConfig {
    /// A default configuration whose endpoint follows OpenTelemetry's precedence rules:
    /// `traces_endpoint` (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) wins and is used as is; else
    /// `endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`) is a base URL (`/v1/traces` appended for
    /// http/protobuf); else the protocol's default base endpoint. Empty strings count as unset.
    pub fn resolve(
        protocol: OtlpProtocol,
        endpoint: Option<&str>,
        traces_endpoint: Option<&str>,
    ) -> Self {
        let non_empty = |s: Option<&str>| {
            s.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (endpoint, traces_endpoint_is_full) =
            match (non_empty(traces_endpoint), non_empty(endpoint)) {
                (Some(full), _) => (full, true),
                (None, Some(base)) => (base, false),
                (None, None) => (protocol.default_endpoint().to_owned(), false),
            };
        OtlpConfig {
            endpoint,
            protocol,
            traces_endpoint_is_full,
            ..OtlpConfig::default()
        }
    }

    /// The exporter configuration that the command line (and its OpenTelemetry environment
    /// variables) asks for, or `None` when no endpoint is set (export off). Without
    /// `--otlp-protocol`, the protocol is http/protobuf when the endpoint's port is 4318, else gRPC.
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Self>, ExportError> {
        let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
        if !set(&config.otlp_endpoint) && !set(&config.otlp_traces_endpoint) {
            return Ok(None);
        }
        let protocol = match config
            .otlp_protocol
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            Some(p) => p.parse()?,
            None => {
                let endpoint = config
                    .otlp_traces_endpoint
                    .as_deref()
                    .filter(|s| !s.trim().is_empty());
                guess_protocol(
                    endpoint
                        .or(config.otlp_endpoint.as_deref())
                        .unwrap_or_default(),
                )
            }
        };
        let mut otlp = OtlpConfig::resolve(
            protocol,
            config.otlp_endpoint.as_deref(),
            config.otlp_traces_endpoint.as_deref(),
        );
        otlp.headers = parse_headers(config.otlp_headers.as_deref().unwrap_or_default())?;
        Ok(Some(otlp))
    }

    /// The URL requests go to. gRPC: the endpoint, as the channel URI. http/protobuf: the
    /// endpoint as is if `traces_endpoint_is_full`, else the base endpoint with `v1/traces`
    /// appended after exactly one `/` (`http://c:4318/mypath` → `http://c:4318/mypath/v1/traces`).
    /// An endpoint without `scheme://` is taken as `http://`.
    pub fn traces_url(&self) -> String {
        let endpoint = self.endpoint.trim();
        let url = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        };
        match self.protocol {
            OtlpProtocol::HttpProtobuf if !self.traces_endpoint_is_full => {
                format!("{}/{TRACES_PATH}", url.trim_end_matches('/'))
            }
            _ => url,
        }
    }
}

/// http/protobuf for an endpoint on port 4318 (OTLP/HTTP's default port), else gRPC.
fn guess_protocol(endpoint: &str) -> OtlpProtocol {
    let endpoint = endpoint.trim();
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    match reqwest::Url::parse(&url).ok().and_then(|u| u.port()) {
        Some(4318) => OtlpProtocol::HttpProtobuf,
        _ => OtlpProtocol::Grpc,
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `key1=value1,key2=value2`. Keys and values are trimmed;
/// values are percent-decoded (`%20` → space; `+` stays `+`); empty items are skipped. A key must
/// be a valid HTTP header name and a decoded value a valid header value.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, ExportError> {
    let mut headers = Vec::new();
    for item in s.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(ExportError::InvalidHeader(format!(
                "{:?} has no '='",
                item.trim()
            )));
        };
        let key = key.trim();
        if key.is_empty() || reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(ExportError::InvalidHeader(format!(
                "{key:?} is not a valid header name"
            )));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| {
            ExportError::InvalidHeader(format!(
                "value of {key:?} is not valid percent-encoded UTF-8"
            ))
        })?;
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(ExportError::InvalidHeader(format!(
                "value of {key:?} has characters not allowed in a header"
            )));
        }
        headers.push((key.to_owned(), value));
    }
    Ok(headers)
}

/// `%XX` → byte; `None` on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The producers' side of the exporter. Cheap to clone; when every clone is dropped (or
/// [`shutdown`](Self::shutdown) is called) the task flushes what it holds, for at most
/// [`SHUTDOWN_GRACE`], and ends.
#[derive(Clone, Debug)]
pub struct ExportHandle {
    queue: Arc<queue::Sender>,
    shutdown: Arc<watch::Sender<bool>>,
    metrics: Arc<Metrics>,
}

impl ExportHandle {
    /// Spans waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.queue.queued()
    }

    /// Queues a span for export without blocking. If the queue is full, or the exporter has
    /// ended, the span is dropped and counted in `spans_dropped_queue_full`.
    pub fn send(&self, span: Span) {
        self.send_batch(vec![span]);
    }

    /// Queues spans for export without blocking, as [`send`](Self::send) does.
    pub fn send_batch(&self, spans: Vec<Span>) {
        if let Err(dropped) = self.queue.try_send(spans) {
            Metrics::add(&self.metrics.spans_dropped_queue_full, dropped.len() as u64);
            Metrics::add(
                &self.metrics.export_dropped_queue_full,
                dropped.len() as u64,
            );
        }
    }

    /// Asks the task to send what it holds and end, even while other handles live. Spans sent
    /// afterwards are dropped. Await the task's `JoinHandle` to wait for the flush.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// The exporter as a sink: its handle and its task.
pub struct OtlpSink {
    handle: ExportHandle,
    task: JoinHandle<()>,
}

impl OtlpSink {
    /// Starts the exporter task (see [`spawn`]).
    pub fn start(config: OtlpConfig, metrics: Arc<Metrics>) -> Result<OtlpSink, ExportError> {
        let (handle, task) = spawn(config, metrics)?;
        Ok(OtlpSink { handle, task })
    }
}

impl Sink for OtlpSink {
    fn send(&mut self, spans: Vec<Span>) {
        self.handle.send_batch(spans);
    }

    fn queued(&self) -> (&'static str, usize) {
        ("export_queue_spans", self.handle.queued())
    }

    /// Asks the task to flush, and waits for it at most 10 s.
    fn finish(self: Box<Self>) -> Finishing {
        let OtlpSink { handle, task } = *self;
        handle.shutdown();
        drop(handle);
        Box::pin(async move {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                warn!("OTLP export did not finish flushing within 10 s; pending spans dropped");
            }
        })
    }
}

/// Starts the exporter task on the current tokio runtime. Connects nothing: a dead endpoint
/// shows up as failed, counted exports, never as an error here. Errors are configuration errors
/// (bad endpoint, header or sizes) and a missing runtime.
pub fn spawn(
    config: OtlpConfig,
    metrics: Arc<Metrics>,
) -> Result<(ExportHandle, JoinHandle<()>), ExportError> {
    if config.queue_spans == 0 {
        return Err(ExportError::InvalidConfig("queue_spans must be at least 1"));
    }
    if config.batch_spans == 0 {
        return Err(ExportError::InvalidConfig("batch_spans must be at least 1"));
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let transport = {
        // The lazy gRPC channel spawns its worker on the current runtime.
        let _guard = runtime.enter();
        Transport::new(&config)?
    };
    let (queue, rx) = queue::bounded(config.queue_spans);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = ExportHandle {
        queue: Arc::new(queue),
        shutdown: Arc::new(shutdown),
        metrics: Arc::clone(&metrics),
    };
    let exporter = Exporter {
        url: config.traces_url(),
        protocol: config.protocol,
        batch_spans: config.batch_spans,
        batch_timeout: config.batch_timeout,
        transport,
        metrics,
        shutdown: Shutdown {
            rx: shutdown_rx,
            deadline: None,
        },
        failures: FailureLog::default(),
    };
    debug!(url = %exporter.url, protocol = %config.protocol, "OTLP exporter started");
    Ok((handle, runtime.spawn(exporter.run(rx))))
}

/// The task's state.
struct Exporter {
    url: String,
    protocol: OtlpProtocol,
    batch_spans: usize,
    batch_timeout: Duration,
    transport: Transport,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    failures: FailureLog,
}

impl Exporter {
    async fn run(mut self, mut rx: queue::Receiver) {
        let mut batch: Vec<Span> = Vec::with_capacity(self.batch_capacity());
        let mut flush_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.requested() => break,
                spans = rx.recv() => match spans {
                    Some(spans) => {
                        if batch.is_empty() {
                            flush_at = Some(Instant::now() + self.batch_timeout);
                        }
                        if self.take(&mut batch, spans).await {
                            flush_at = (!batch.is_empty()).then(|| Instant::now() + self.batch_timeout);
                        }
                    }
                    None => break,
                },
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.export(&mut batch).await;
                    flush_at = None;
                }
            }
        }
        // Flush: take what is queued (bounded by the queue size) and send it before the grace
        // period ends; `export` gives up on whatever is left once it has.
        self.shutdown.begin();
        rx.close();
        while let queue::Received::Batch(spans) = rx.try_recv() {
            self.take(&mut batch, spans).await;
        }
        self.export(&mut batch).await;
        self.failures.flush();
        debug!(url = %self.url, "OTLP exporter stopped");
    }

    /// Adds `spans` to `batch`, exporting each full batch; true if it exported one (what is left
    /// in `batch` then started after the last export).
    async fn take(&mut self, batch: &mut Vec<Span>, spans: Vec<Span>) -> bool {
        let mut exported = false;
        for span in spans {
            batch.push(span);
            if batch.len() >= self.batch_spans {
                self.export(batch).await;
                exported = true;
            }
        }
        exported
    }

    /// Capacity reserved for a batch (a huge `batch_spans` grows the vector as spans come).
    fn batch_capacity(&self) -> usize {
        self.batch_spans.min(1024)
    }

    /// Sends `batch` (emptied) with retries; counts the outcome.
    async fn export(&mut self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len();
        let count = u64::try_from(spans).unwrap_or(u64::MAX);
        let payload = Payload::new(self.protocol, convert::to_request(std::mem::take(batch)));
        *batch = Vec::with_capacity(self.batch_capacity());
        let deadline = Instant::now() + MAX_RETRY_ELAPSED;
        let mut attempt = 0;
        let last_error = loop {
            attempt += 1;
            let Some(remaining) = self
                .shutdown
                .deadline(deadline)
                .checked_duration_since(Instant::now())
            else {
                break ExportError::Timeout(MAX_RETRY_ELAPSED);
            };
            let result = self
                .shutdown
                .bounded(
                    self.transport
                        .attempt(&payload, ATTEMPT_TIMEOUT.min(remaining)),
                    deadline,
                )
                .await;
            let failure = match result {
                Some(Ok(accepted)) => {
                    let rejected = accepted.rejected_spans.min(count);
                    Metrics::add(&self.metrics.spans_exported, count - rejected);
                    if rejected > 0 {
                        Metrics::add(&self.metrics.spans_export_failed, rejected);
                        let error = ExportError::PartialSuccess {
                            rejected,
                            message: accepted.message,
                        };
                        self.failures.failed(&self.url, &error, rejected);
                    } else {
                        self.failures.succeeded(&self.url);
                    }
                    return;
                }
                Some(Err(failure)) => failure,
                None => AttemptError {
                    error: ExportError::Timeout(remaining),
                    retryable: true,
                    retry_after: None,
                },
            };
            Metrics::inc(&self.metrics.export_errors);
            match failure.error.reason() {
                Some(FailureReason::Unreachable) => {
                    Metrics::inc(&self.metrics.export_errors_unreachable);
                }
                Some(FailureReason::Timeout) => Metrics::inc(&self.metrics.export_errors_timeout),
                None => {}
            }
            debug!(error = %failure.error, attempt, spans, retryable = failure.retryable, "OTLP export attempt failed");
            if !failure.retryable || attempt >= MAX_ATTEMPTS {
                break failure.error;
            }
            let delay = failure
                .retry_after
                .unwrap_or(Duration::ZERO)
                .max(backoff(attempt))
                .min(MAX_RETRY_ELAPSED);
            if Instant::now() + delay >= self.shutdown.deadline(deadline) {
                break failure.error;
            }
            self.shutdown
                .bounded(tokio::time::sleep(delay), deadline)
                .await;
        };
        Metrics::add(&self.metrics.spans_export_failed, count);
        self.failures.failed(&self.url, &last_error, count);
    }
}

/// The delay before retry number `attempt` (1-based): exponential, capped, with "equal jitter"
/// (uniform in the upper half) so that many agents do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let exp = INITIAL_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = exp / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Shutdown as the task sees it: the request, and the deadline that it sets.
struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Set once shutdown is requested: the end of the grace period.
    deadline: Option<Instant>,
}

impl Shutdown {
    /// Resolves once, when shutdown is requested or every handle is gone; then never again.
    async fn requested(&mut self) {
        if self.deadline.is_some() {
            return std::future::pending().await;
        }
        loop {
            if *self.rx.borrow_and_update() {
                break;
            }
            if self.rx.changed().await.is_err() {
                break; // every handle is gone
            }
        }
        self.begin();
    }

    /// Starts the grace period (if not started).
    fn begin(&mut self) {
        self.deadline
            .get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
    }

    /// `deadline`, brought forward to the end of the grace period once shutdown began.
    fn deadline(&self, deadline: Instant) -> Instant {
        self.deadline.map_or(deadline, |d| d.min(deadline))
    }

    /// Runs `fut` until it completes (`Some`) or `deadline` — brought forward if shutdown is
    /// requested meanwhile — passes (`None`).
    async fn bounded<F: std::future::Future>(
        &mut self,
        fut: F,
        deadline: Instant,
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let until = self.deadline(deadline);
            tokio::select! {
                out = &mut fut => return Some(out),
                () = sleep_until(until) => return None,
                () = self.requested(), if self.deadline.is_none() => {}
            }
        }
    }
}

/// Rate-limited logging of failed exports: one warn line per [`WARN_INTERVAL`] at most, carrying
/// the number of batches and spans lost since the previous line.
#[derive(Default)]
struct FailureLog {
    last_warn: Option<std::time::Instant>,
    batches: u64,
    spans: u64,
    /// Failures were reported and no success followed yet.
    failing: bool,
}

impl FailureLog {
    fn failed(&mut self, url: &str, error: &ExportError, spans: u64) {
        self.batches += 1;
        self.spans += spans;
        self.failing = true;
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
            warn!(%url, %error, failed_batches = self.batches, failed_spans = self.spans, "OTLP export failed, spans dropped");
            self.last_warn = Some(std::time::Instant::now());
            self.batches = 0;
            self.spans = 0;
        }
    }

    fn succeeded(&mut self, url: &str) {
        if self.failing {
            self.failing = false;
            info!(%url, "OTLP export succeeded again");
        }
    }

    /// Reports failures not logged yet (at shutdown).
    fn flush(&mut self) {
        if self.batches > 0 {
            warn!(
                failed_batches = self.batches,
                failed_spans = self.spans,
                "OTLP export failures since the last report"
            );
            self.batches = 0;
            self.spans = 0;
        }
    }
}

#[cfg(test)]
mod tests;
