//! Self-telemetry: typed counters of what the agent did and what it lost.
//!
//! Every stage that can drop or fail on something increments a counter here instead of logging
//! per event. The counters are shared (`Arc<Metrics>`) and read by the periodic report, the
//! shutdown summary and (later) the viewer.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Counters of the userspace agent. Kernel-side counters are read from the `COUNTERS` map.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        impl Metrics {
            /// `(name, value)` of every counter, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name.load(Ordering::Relaxed)), )*]
            }

            /// The `ztrace stats:` object printed at exit: every counter, then the kernel's.
            pub fn stats_json(&self, kernel: &[(&'static str, u64)]) -> serde_json::Value {
                let mut map = serde_json::Map::new();
                for (name, value) in self.snapshot().into_iter().chain(kernel.iter().copied()) {
                    map.insert(name.to_owned(), value.into());
                }
                serde_json::Value::Object(map)
            }
        }
    };
}

counters! {
    /// Records read from the ring buffer.
    events_read,
    /// Records that were too short or of an unknown kind.
    events_malformed,
    /// Data or close events for a connection the agent never saw opened (and could not adopt).
    events_unknown_conn,
    /// Connections whose first bytes matched no known protocol.
    conns_unrecognized,
    /// Connections whose bytes are TLS records: never parsed (their plaintext is, when a TLS
    /// probe sees it).
    conns_tls_records,
    /// Connections that are ztrace's own traffic (the receiving end of its OTLP export, clients
    /// of its viewer): not traced.
    conns_own,
    /// Connections dropped from the table because it was full.
    conns_evicted,
    /// Protocol parse errors (the connection's parser is reset or abandoned).
    parse_errors,
    /// Requests the connection closed on before their answer (a client that gave up, a server
    /// that did not answer). Each is still a span: error status, `error.type` `client_closed`
    /// (server side) or `no_response` (client side), ending at the close. Not a loss.
    exchanges_unanswered,
    /// Requests seen that never became a span: dropped by a parser (bytes lost where messages
    /// start or end, answers that could not be paired, too many waiting on one connection), or
    /// waiting on a connection dropped from the table (full: `conns_evicted`; idle for 10
    /// minutes, its process gone without closing it).
    exchanges_lost,
    /// Exchanges made into spans with header fields ztrace could not read: HTTP/2 fields that
    /// refer to HPACK table entries inserted before ztrace saw the connection (reported as
    /// unknown, `_OTHER`, never as another field's text).
    exchanges_fields_unknown,
    /// Processes whose libraries were not looked at for TLS because they are forks (no
    /// executable of their own) of a process whose libraries were: they map the same files.
    tls_forks_not_read,
    /// Spans produced.
    spans_created,
    /// Server spans whose client is a traced local process but whose client request was not
    /// found: roots with `ztrace.link=none`.
    spans_unlinked,
    /// Server spans whose parent came from the trace-context TCP option of another host
    /// (`ztrace.link=tcp_option`).
    spans_linked_tcp_option,
    /// Client spans linked to a server span by this agent whose kernel-born trace id (the one
    /// sent to the receiving host, in the TCP option and the added `traceparent`) was another:
    /// that host's part of the trace splits off (a traced server on this host follows the
    /// client span instead).
    propagation_trace_mismatch,
    /// Inputs of trace assembly handled before their hold-back window ended (too many waiting).
    link_window_overflow,
    /// The most inputs of trace assembly waiting in the hold-back window at once (a high-water
    /// mark, not a counter; bounded by 65,536).
    link_window_peak,
    /// Remembered client requests forgotten because too many connections had some.
    link_state_dropped,
    /// Go gRPC client streams whose first frame, written by the connection's writer
    /// goroutine, was credited to the goroutine that created the stream
    /// (`(*http2Client).NewStream`).
    go_stream_owners,
    /// Go gRPC client stream creations reported after the hold-back window had passed their
    /// time (the creating goroutine was held up for more than 100 ms between `NewStream`'s
    /// entry and its return): that stream's span links nothing in this process.
    go_stream_owners_late,
    /// Spans dropped because a sink's queue was full.
    spans_dropped_queue_full,
    /// Spans accepted by the OTLP endpoint.
    spans_exported,
    /// Spans given up on after export retries failed.
    spans_export_failed,
    /// Failed OTLP export attempts (each retry counts), whatever the reason; the two below
    /// count some of them by reason.
    export_errors,
    /// Export attempts that found no endpoint: connection refused or not established (the
    /// backend is down or unreachable).
    export_errors_unreachable,
    /// Export attempts that got no answer in time (the backend accepts connections but does not
    /// answer, or is too slow).
    export_errors_timeout,
    /// Spans the OTLP exporter's queue refused because it was full (the endpoint slow, failing
    /// or down); also counted in `spans_dropped_queue_full`.
    export_dropped_queue_full,
    /// Spans written to the embedded trace store.
    store_spans_written,
    /// Spans not stored: the store's queue was full, or their batch failed to write.
    store_dropped,
    /// Spans not stored because the store's span budget was spent (whole traces left out).
    store_sampled_out,
    /// Failed store writes (each batch counts once).
    store_write_errors,
    /// Entries of exited processes removed from the kernel's maps keyed by process (`SOCKS`,
    /// `PROP_CONNS`, `STACK_CONNS`, ...: nothing in the kernel removes them), every 10 s.
    kernel_entries_swept,
    /// Stacks from the kernel handed to the symbolizer.
    stacks_received,
    /// Stacks dropped because the symbolizer's queue was full.
    stacks_dropped_queue_full,
    /// Stacks unwound and symbolized.
    stacks_symbolized,
    /// Client spans that got their stack's attributes.
    stacks_attached,
    /// Client spans sent without their stack: it was not symbolized within the wait.
    stacks_timed_out,
    /// Symbolizer module cache: lookups that found the binary loaded (a gauge of the total).
    symbol_cache_hits,
    /// Symbolizer module cache: binaries that had to be loaded.
    symbol_cache_misses,
    /// Binaries whose symbols could not be loaded.
    symbol_load_errors,
    /// Binaries dropped from the symbol cache to stay within its size.
    symbol_modules_evicted,
    /// Bytes held by the symbol cache now (a gauge).
    symbol_bytes,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
