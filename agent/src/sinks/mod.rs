//! Sinks: where finished spans go — `--print` ([`print`]), OTLP export ([`otlp`]) and the trace
//! store the viewer reads ([`store`]) — each behind the [`Sink`] trait.
//!
//! Every sink works on a thread or task of its own behind the same bounded queue ([`queue`]):
//! the capture task hands it a batch of spans with `try_send` and never waits; a full queue
//! drops the batch and counts its spans, under the counter users already know for that sink
//! (`spans_dropped_queue_full` for print and export, `store_dropped` for the store). Spans are
//! encoded as JSON in one place, `spans::json`.
//!
//! [`Sinks::open`] starts the sinks the configuration asks for; a store that cannot open is
//! logged and left out, the others go on.

pub mod otlp;
pub mod print;
pub mod queue;
pub mod store;

use std::{future::Future, path::PathBuf, pin::Pin, sync::Arc, time::Instant};

use crate::{
    config::{Config, PrintArg},
    metrics::Metrics,
    spans::Span,
};

/// What a sink's [`Sink::finish`] returns: done once it has sent or written what it held.
pub type Finishing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A destination of finished spans.
pub trait Sink: Send {
    /// Whether it takes `span`, asked once per span before the span is copied for it (the
    /// store's span budget; counted by the sink when it says no). Every span, by default.
    fn wants(&mut self, _span: &Span, _now: Instant) -> bool {
        true
    }

    /// Queues spans without blocking; a full queue drops them and counts them.
    fn send(&mut self, spans: Vec<Span>);

    /// The name of this sink's queue depth on `/metrics` and the spans waiting in it now.
    fn queued(&self) -> (&'static str, usize);

    /// Sends or writes what is queued, then stops.
    fn finish(self: Box<Self>) -> Finishing;
}

/// Every sink the agent runs, in the order spans are offered to them.
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
    /// Where the store keeps its database, when it opened (the viewer reads it there).
    pub store_dir: Option<PathBuf>,
    /// What is wrong with the store's writes now, when it opened (the viewer shows it).
    pub store_status: Option<Arc<store::writer::StoreStatus>>,
}

/// Why the sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("OTLP export: {0}")]
    Otlp(#[from] otlp::ExportError),
    #[error("cannot start the print thread: {0}")]
    Print(#[from] std::io::Error),
}

impl Sinks {
    /// Starts the sinks `config` asks for: `--print`, OTLP export when an endpoint is set, the
    /// store unless `--no-ui`.
    pub fn open(config: &Config, metrics: &Arc<Metrics>) -> Result<Sinks, SinkError> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(p) = config.print {
            let format = match p {
                PrintArg::Text => print::PrintFormat::Text,
                PrintArg::Json => print::PrintFormat::Json,
            };
            sinks.push(Box::new(print::PrintSink::start(format, metrics.clone())?));
        }
        let mut store_dir = None;
        let mut store_status = None;
        if !config.no_ui {
            let dir = store::data_dir(config.data_dir.as_deref());
            let retention = store::writer::Retention {
                max_age: config.retention,
                max_bytes: config.max_store_size,
            };
            let budget = config.store_max_spans_per_second;
            let status = Arc::new(store::writer::StoreStatus::default());
            if let Some(sink) =
                store::StoreSink::open(&dir, retention, budget, metrics.clone(), status.clone())
            {
                sinks.push(Box::new(sink));
                store_dir = Some(dir);
                store_status = Some(status);
            }
        }
        if let Some(otlp) = otlp::OtlpConfig::from_config(config)? {
            tracing::info!(endpoint = %otlp.endpoint, protocol = ?otlp.protocol, "exporting spans over OTLP");
            sinks.push(Box::new(otlp::OtlpSink::start(otlp, metrics.clone())?));
        }
        Ok(Sinks {
            sinks,
            store_dir,
            store_status,
        })
    }

    /// These sinks, in this order (tests and benchmarks bring their own).
    pub fn from_sinks(sinks: Vec<Box<dyn Sink>>) -> Sinks {
        Sinks {
            sinks,
            store_dir: None,
            store_status: None,
        }
    }

    /// Hands `spans` (emptied) to every sink that wants them; the last sink takes the originals,
    /// the others copies.
    pub fn send_all(&mut self, spans: &mut Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let now = Instant::now();
        let Some((last, others)) = self.sinks.split_last_mut() else {
            spans.clear();
            return;
        };
        for sink in others {
            let batch: Vec<Span> = spans
                .iter()
                .filter(|s| sink.wants(s, now))
                .cloned()
                .collect();
            sink.send(batch);
        }
        spans.retain(|s| last.wants(s, now));
        last.send(std::mem::take(spans));
    }

    /// The depth of every sink's queue, by name (`print_queue_spans`, ...).
    pub fn queue_depths(&self) -> Vec<(&'static str, u64)> {
        self.sinks
            .iter()
            .map(|s| s.queued())
            .map(|(name, n)| (name, n as u64))
            .collect()
    }

    /// Flushes and stops every sink.
    pub async fn finish(self) {
        for sink in self.sinks {
            sink.finish().await;
        }
    }
}
