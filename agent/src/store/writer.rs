//! The store sink: a bounded queue from the capture task to a writer thread that inserts spans
//! in batches (one transaction per batch) and runs retention in the background.
//!
//! The capture task only ever calls [`StoreSink::send`], a `try_send`: a full queue is a counted
//! drop (`store_dropped`), a failed batch is a counted error (`store_write_errors`) with a log
//! line at most once a minute. The thread never stops on a write error (a full disk may be freed).

use std::{
    sync::{mpsc, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::Store;
use crate::{metrics::Metrics, spans::Span};

/// Spans waiting for the writer thread.
pub const QUEUE: usize = 16_384;
/// Most spans written in one transaction.
pub const BATCH: usize = 8192;
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

/// The sending end held by the pipeline's `Sinks`.
pub struct StoreSink {
    tx: mpsc::SyncSender<Span>,
    thread: std::thread::JoinHandle<()>,
}

impl StoreSink {
    /// Starts the writer thread on `store`.
    pub fn start(store: Store, retention: Retention, metrics: Arc<Metrics>) -> std::io::Result<StoreSink> {
        let (tx, rx) = mpsc::sync_channel::<Span>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("ztrace-store".into())
            .spawn(move || Writer { store, retention, metrics, last_error_log: None }.run(&rx))?;
        Ok(StoreSink { tx, thread })
    }

    /// Queues a span for the store; never blocks.
    pub fn send(&self, span: Span, metrics: &Metrics) {
        if self.tx.try_send(span).is_err() {
            Metrics::inc(&metrics.store_dropped);
        }
    }

    /// Writes what is queued and stops the thread.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

struct Writer {
    store: Store,
    retention: Retention,
    metrics: Arc<Metrics>,
    last_error_log: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Span>) {
        let mut batch = Vec::with_capacity(BATCH);
        self.retain();
        let mut last_retention = Instant::now();
        loop {
            let timeout = RETENTION_INTERVAL.saturating_sub(last_retention.elapsed());
            match rx.recv_timeout(timeout) {
                Ok(span) => {
                    batch.push(span);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(span) => batch.push(span),
                            Err(_) => break,
                        }
                    }
                    self.write(&mut batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_retention.elapsed() >= RETENTION_INTERVAL {
                self.retain();
                last_retention = Instant::now();
            }
        }
    }

    fn write(&mut self, batch: &mut Vec<Span>) {
        match self.store.insert(batch) {
            Ok(()) => Metrics::add(&self.metrics.store_spans_written, batch.len() as u64),
            Err(error) => {
                Metrics::inc(&self.metrics.store_write_errors);
                Metrics::add(&self.metrics.store_dropped, batch.len() as u64);
                if self.last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                    self.last_error_log = Some(Instant::now());
                    tracing::error!(%error, path = %self.store.path().display(), spans = batch.len(),
                        "cannot write spans to the trace store (disk full or file damaged?); they are lost, capture and export go on");
                }
            }
        }
        batch.clear();
    }

    fn retain(&mut self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        match self.store.retain(now, self.retention.max_age, self.retention.max_bytes) {
            Ok(removed) if removed.traces > 0 => {
                tracing::debug!(traces = removed.traces, spans = removed.spans, "retention removed old traces");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "trace store retention failed"),
        }
    }
}
