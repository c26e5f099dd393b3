//! The store sink: a bounded queue from the capture task to a writer thread that inserts spans
//! in batches (one transaction per batch) and runs retention in the background.
//!
//! The capture task only ever hands it spans through the sinks' bounded queue (`sinks::queue`): a
//! full queue is a counted drop (`store_dropped`), a failed batch is a counted error
//! (`store_write_errors`) with a log line at most once a minute. The thread never stops on a
//! write error (a full disk may be freed). The last failure, until a write succeeds again, is
//! kept in [`StoreStatus`] for the viewer, which shows it (`/api/stats`, a banner on the pages).
//!
//! **Span budget.** Storing costs CPU on the traced host (SQLite inserts, about 13 µs a span), so
//! the store takes at most `--store-max-spans-per-second` spans a second (default
//! `config::DEFAULT_STORE_MAX_SPANS_PER_SECOND`). Beyond it, whole traces are left out rather than random
//! spans: a span is admitted when its trace id, read as a number, is below a threshold; each
//! second the threshold becomes `budget / spans offered in the last second` of the id space. The
//! offered count does not depend on the threshold, so a steady load gives a steady fraction, and
//! every span of a kept trace is kept (ids are random, so the traces kept are a fair sample).
//! Left-out spans are counted (`store_sampled_out`); OTLP export and `--print` get every span.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{Store, StoreError};
use crate::{
    metrics::Metrics,
    sinks::{
        queue::{self, Received, Worker},
        Finishing, Sink,
    },
    spans::Span,
};

/// Spans waiting for the writer thread.
pub const QUEUE: usize = 16_384;
/// Most spans written in one transaction.
pub const BATCH: usize = 8192;
/// How often the admission threshold follows the load.
const BUDGET_WINDOW: Duration = Duration::from_secs(1);
/// How often retention runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Least time between two log lines about failed writes.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

/// The store as a sink: the sending end of its writer thread.
/// What is wrong with the store now, as its writer last found it: shared with the viewer.
#[derive(Debug, Default)]
pub struct StoreStatus {
    problem: std::sync::Mutex<Option<StoreProblem>>,
}

/// Writes have been failing since `since`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoreProblem {
    /// The last write's error (SQLite's words: `database or disk is full`, `database disk image
    /// is malformed`, ...).
    pub message: String,
    /// When the writes began to fail, in unix milliseconds.
    pub since_unix_ms: u64,
    /// Batches and spans lost since then.
    pub failed_batches: u64,
    pub lost_spans: u64,
    /// The file is damaged: the problem stays (later writes may succeed, the file is not whole
    /// again) until ztrace is restarted on a sound file.
    pub damaged: bool,
}

impl StoreStatus {
    /// The problem now, if writes are failing.
    pub fn problem(&self) -> Option<StoreProblem> {
        self.problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, error: &StoreError, spans: u64) {
        self.report(&error.to_string(), error.is_damage(), spans);
    }

    /// A read (the viewer's) found the file damaged: reported as the writer's failures are, and
    /// it stays.
    pub fn read_failed(&self, error: &StoreError) {
        if error.is_damage() {
            self.report(&error.to_string(), true, 0);
        }
    }

    fn report(&self, error: &str, damage: bool, spans: u64) {
        let mut problem = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = problem.get_or_insert_with(|| StoreProblem {
            message: String::new(),
            since_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
            failed_batches: 0,
            lost_spans: 0,
            damaged: false,
        });
        p.message = error.to_owned();
        if damage {
            p.damaged = true;
            p.message = format!(
                "{error}: the database file is damaged; move it away and restart ztrace, or choose another --data-dir"
            );
        }
        p.failed_batches += 1;
        p.lost_spans += spans;
    }

    /// A write succeeded: the problem, if any, is over (unless the file is damaged). True if
    /// one just ended.
    fn succeeded(&self) -> bool {
        let mut problem = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if problem.as_ref().is_some_and(|p| p.damaged) {
            return false;
        }
        problem.take().is_some()
    }
}

/// How often the writer checks that its file still starts with SQLite's header (SQLite itself
/// may not notice a file overwritten under it for a long time: in WAL mode new pages go to the
/// `-wal` file and recent ones are cached).
const HEADER_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether the file at `path` starts with SQLite's header; `None` when it cannot be read.
pub(super) fn has_sqlite_header(path: &Path) -> Option<bool> {
    use std::io::Read as _;
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).ok()?;
    file.read_exact(&mut head).ok()?;
    Some(&head == SQLITE_HEADER)
}

pub struct StoreSink {
    writer: Worker,
    admission: Admission,
    metrics: Arc<Metrics>,
}

/// Which traces the store takes under its span budget (see the module documentation).
#[derive(Debug)]
pub struct Admission {
    /// Spans a second; 0 = no limit.
    budget: u64,
    /// Trace ids whose first 8 bytes (big-endian) are at most this are admitted.
    threshold: u64,
    window_start: Instant,
    offered: u64,
}

impl Admission {
    pub fn new(budget: u64, now: Instant) -> Self {
        Admission {
            budget,
            threshold: u64::MAX,
            window_start: now,
            offered: 0,
        }
    }

    /// Whether a span of `trace_id`, offered at `now`, is stored.
    pub fn admit(&mut self, trace_id: &[u8; 16], now: Instant) -> bool {
        if self.budget == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= BUDGET_WINDOW {
            let per_second = self.offered as f64 / elapsed.as_secs_f64();
            self.threshold = if per_second <= self.budget as f64 {
                u64::MAX
            } else {
                (u64::MAX as f64 * (self.budget as f64 / per_second)) as u64
            };
            self.window_start = now;
            self.offered = 0;
        }
        self.offered += 1;
        let mut head = [0; 8];
        head.copy_from_slice(&trace_id[..8]);
        u64::from_be_bytes(head) <= self.threshold
    }
}

impl StoreSink {
    /// Opens the store in `dir` and starts its writer (see [`StoreSink::start`]); `None`
    /// (logged) when it cannot: the agent then goes on capturing and exporting without it.
    pub fn open(
        dir: &Path,
        retention: Retention,
        max_spans_per_second: u64,
        metrics: Arc<Metrics>,
        status: Arc<StoreStatus>,
    ) -> Option<StoreSink> {
        let opened = Store::open(dir).and_then(|store| {
            let path = store.path().to_owned();
            StoreSink::start(store, retention, max_spans_per_second, metrics, status)
                .map(|sink| (sink, path))
                .map_err(|source| StoreError::Dir {
                    path: dir.to_owned(),
                    source,
                })
        });
        match opened {
            Ok((sink, path)) => {
                tracing::info!(path = %path.display(), "trace store opened");
                Some(sink)
            }
            Err(error) => {
                tracing::error!(%error, dir = %dir.display(),
                    "the trace store is disabled: spans are not kept for the viewer (capture and export go on). \
                     Fix or remove the file, or choose another --data-dir");
                None
            }
        }
    }

    /// Starts the writer thread on `store`.
    /// `max_spans_per_second`: the span budget (0 = none).
    pub fn start(
        store: Store,
        retention: Retention,
        max_spans_per_second: u64,
        metrics: Arc<Metrics>,
        status: Arc<StoreStatus>,
    ) -> std::io::Result<StoreSink> {
        let (for_drops, for_writer) = (metrics.clone(), metrics.clone());
        let dropped = move |n| Metrics::add(&for_drops.store_dropped, n);
        let writer = Worker::spawn("ztrace-store", QUEUE, dropped, move |mut rx| {
            Writer {
                store,
                retention,
                metrics: for_writer,
                last_error_log: None,
                status,
                last_header_check: Instant::now(),
            }
            .run(&mut rx);
        })?;
        Ok(StoreSink {
            writer,
            admission: Admission::new(max_spans_per_second, Instant::now()),
            metrics,
        })
    }
}

impl Sink for StoreSink {
    /// Within the span budget; counts the spans it leaves out (`store_sampled_out`).
    fn wants(&mut self, span: &Span, now: Instant) -> bool {
        let admitted = self.admission.admit(&span.trace_id, now);
        if !admitted {
            Metrics::inc(&self.metrics.store_sampled_out);
        }
        admitted
    }

    fn send(&mut self, spans: Vec<Span>) {
        self.writer.send(spans);
    }

    fn queued(&self) -> (&'static str, usize) {
        ("store_queue_spans", self.writer.queued())
    }

    /// Writes what is queued and stops the thread.
    fn finish(self: Box<Self>) -> Finishing {
        self.writer.finish()
    }
}

struct Writer {
    store: Store,
    retention: Retention,
    metrics: Arc<Metrics>,
    last_error_log: Option<Instant>,
    status: Arc<StoreStatus>,
    last_header_check: Instant,
}

impl Writer {
    fn run(mut self, rx: &mut queue::Receiver) {
        let mut batch = Vec::with_capacity(BATCH);
        self.retain();
        let mut last_retention = Instant::now();
        loop {
            let timeout = RETENTION_INTERVAL.saturating_sub(last_retention.elapsed());
            match rx.recv_timeout(timeout) {
                Received::Batch(spans) => {
                    batch.extend(spans);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Received::Batch(spans) => batch.extend(spans),
                            Received::Empty | Received::Ended => break,
                        }
                    }
                    self.write(&mut batch);
                }
                Received::Empty => {}
                Received::Ended => break,
            }
            if last_retention.elapsed() >= RETENTION_INTERVAL {
                self.retain();
                last_retention = Instant::now();
            }
        }
    }

    fn write(&mut self, batch: &mut Vec<Span>) {
        if self.last_header_check.elapsed() >= HEADER_CHECK_INTERVAL {
            self.last_header_check = Instant::now();
            if has_sqlite_header(self.store.path()) == Some(false) {
                tracing::error!(path = %self.store.path().display(),
                    "the trace store's file no longer starts with SQLite's header: it was overwritten or damaged");
                self.status.report(
                    "the file no longer starts with SQLite's header (overwritten or damaged)",
                    true,
                    0,
                );
            }
        }
        match self.store.insert(batch) {
            Ok(()) => {
                Metrics::add(&self.metrics.store_spans_written, batch.len() as u64);
                if self.status.succeeded() {
                    tracing::info!(path = %self.store.path().display(), "the trace store is written again");
                }
            }
            Err(error) => {
                self.status.failed(&error, batch.len() as u64);
                Metrics::inc(&self.metrics.store_write_errors);
                Metrics::add(&self.metrics.store_dropped, batch.len() as u64);
                if self
                    .last_error_log
                    .is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL)
                {
                    self.last_error_log = Some(Instant::now());
                    tracing::error!(%error, path = %self.store.path().display(), spans = batch.len(),
                        "cannot write spans to the trace store (disk full or file damaged?); they are lost, capture and export go on");
                }
            }
        }
        batch.clear();
    }

    fn retain(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        match self
            .store
            .retain(now, self.retention.max_age, self.retention.max_bytes)
        {
            Ok(removed) if removed.traces > 0 => {
                tracing::debug!(
                    traces = removed.traces,
                    spans = removed.spans,
                    "retention removed old traces"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "trace store retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        let mut id = [7; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn under_the_budget_every_span_is_admitted() {
        let t0 = Instant::now();
        let mut a = Admission::new(100, t0);
        for second in 0..5u32 {
            let now = t0 + Duration::from_secs(u64::from(second)) + Duration::from_millis(1);
            for i in 0..90 {
                assert!(a.admit(&id(u64::MAX - i), now), "second {second}, span {i}");
            }
        }
    }

    #[test]
    fn over_the_budget_whole_traces_are_kept_in_proportion() {
        let t0 = Instant::now();
        let mut a = Admission::new(1_000, t0);
        // First second: 4,000 spans offered (all admitted: nothing measured yet).
        for i in 0..4_000u64 {
            assert!(a.admit(&id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), t0));
        }
        // From then on a quarter of the id space is kept, every span of a kept trace with it.
        let later = t0 + Duration::from_secs(1);
        let traces: Vec<u64> = (0..4_000u64)
            .map(|i| (i + 17).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let kept: Vec<bool> = traces.iter().map(|&t| a.admit(&id(t), later)).collect();
        let n = kept.iter().filter(|k| **k).count();
        assert!((800..1_200).contains(&n), "about a quarter kept: {n}");
        for (t, k) in traces.iter().zip(&kept) {
            assert_eq!(
                a.admit(&id(*t), later),
                *k,
                "a trace's other spans follow its first"
            );
        }
        // The load falls: the window that held the burst still limits, the next quiet one not.
        let quiet = later + Duration::from_secs(2);
        assert!(
            !a.admit(&id(u64::MAX), quiet),
            "8,000 spans in the last 2 s: still over"
        );
        assert!(
            a.admit(&id(u64::MAX), quiet + Duration::from_secs(1)),
            "one span in the last second"
        );
    }

    #[test]
    fn no_budget_admits_everything() {
        let t0 = Instant::now();
        let mut a = Admission::new(0, t0);
        for i in 0..100_000u64 {
            assert!(a.admit(&id(i << 40), t0 + Duration::from_millis(i / 10)));
        }
    }
}
