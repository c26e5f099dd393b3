//! A replay benchmark of the agent's own work per span, without a kernel: records of keep-alive
//! HTTP/1 exchanges seen at both ends of local connections (what the kernel sends for a client
//! and a server on one host) go through [`Capture::on_record`] — decoding, the connection table,
//! the parser, span building, trace assembly — and the `--print=json` encoding, on one thread.
//!
//! `cargo xtask bench --capture` runs it under `valgrind --tool=callgrind` twice (with N and 2N
//! exchanges) and prints the difference per span: instructions, which stay the same on a busy
//! machine, unlike time. Run alone it prints wall time per span as well.

use std::{net::Ipv4Addr, sync::Arc, time::Instant};

use ztrace_common::{
    ConnEvent, ConnRole, DataEventHeader, DataSource, Direction, EventHeader, EventKind,
};

use super::capture::{Capture, STACK_WAIT};
use crate::{
    bpf::events::encode,
    discovery::go::GoDiscovery,
    metrics::Metrics,
    sinks::{
        print::{PrintFormat, Printer},
        Finishing, Sink, Sinks,
    },
    spans::Span,
    symbols::join::StackJoin,
    tls::TlsDiscovery,
    trace,
};

/// Keep-alive connections the exchanges are spread over.
const CONNECTIONS: u32 = 32;
const REQUEST: &[u8] = b"GET /orders/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";

/// `--print=json` on this thread, into nothing.
struct JsonSink {
    printer: Printer<std::io::Sink>,
    spans: Arc<std::sync::atomic::AtomicU64>,
}

impl Sink for JsonSink {
    fn send(&mut self, spans: Vec<Span>) {
        for span in &spans {
            let _ = self.printer.print(span);
        }
        self.spans
            .fetch_add(spans.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn queued(&self) -> (&'static str, usize) {
        ("replay", 0)
    }

    fn finish(self: Box<Self>) -> Finishing {
        Box::pin(async {})
    }
}

fn header(kind: EventKind, tgid: u32, fd: i32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid,
        tid: tgid,
        fd,
        ts_ns,
        conn_gen: 1,
    }
}

fn conn(
    tgid: u32,
    fd: i32,
    role: ConnRole,
    local_port: u16,
    remote_port: u16,
    ts_ns: u64,
) -> Vec<u8> {
    let mut local_addr = [0u8; 16];
    local_addr[..4].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"bench");
    encode(&ConnEvent {
        header: header(EventKind::Conn, tgid, fd, ts_ns),
        role: role as u32,
        family: 2,
        local_addr,
        remote_addr: local_addr,
        local_port,
        remote_port,
        _pad: 0,
        sock: u64::from(local_port) << 16 | u64::from(remote_port),
        comm,
    })
}

fn data(tgid: u32, fd: i32, direction: Direction, bytes: &[u8], ts_ns: u64) -> Vec<u8> {
    let mut record = encode(&DataEventHeader {
        header: header(EventKind::Data, tgid, fd, ts_ns),
        direction: direction as u32,
        source: DataSource::Syscall as u32,
        len: bytes.len() as u32,
        captured: bytes.len() as u32,
        tail: 0,
        goid: 0,
        ids_flags: 0,
        _pad: 0,
        ids: ztrace_common::RequestIds::default(),
    });
    record.extend_from_slice(bytes);
    record
}

/// The records of `exchanges` requests over [`CONNECTIONS`] connections between a client
/// process and a server process, in the kernel's order, 10 µs apart.
fn records(exchanges: usize, client: u32, server: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(exchanges * 4 + CONNECTIONS as usize * 2);
    let mut ts = 1_000_000_000u64;
    let mut tick = || {
        ts += 10_000;
        ts
    };
    for c in 0..CONNECTIONS {
        let (client_port, server_port) = (40_000 + c as u16, 8080);
        out.push(conn(
            client,
            100 + c as i32,
            ConnRole::Client,
            client_port,
            server_port,
            tick(),
        ));
        out.push(conn(
            server,
            200 + c as i32,
            ConnRole::Server,
            server_port,
            client_port,
            tick(),
        ));
    }
    for i in 0..exchanges {
        let c = (i % CONNECTIONS as usize) as i32;
        out.push(data(client, 100 + c, Direction::Egress, REQUEST, tick()));
        out.push(data(server, 200 + c, Direction::Ingress, REQUEST, tick()));
        out.push(data(server, 200 + c, Direction::Egress, RESPONSE, tick()));
        out.push(data(client, 100 + c, Direction::Ingress, RESPONSE, tick()));
    }
    out
}

/// The timestamp in a record's header.
fn ts_of(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[16..24].try_into().unwrap_or_default())
}

#[test]
#[ignore = "a benchmark: cargo xtask bench --capture (or run alone with --ignored --nocapture)"]
fn capture_replay() {
    let exchanges: usize = std::env::var("ZTRACE_BENCH_EXCHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    // Two real processes for the resource (their /proc entries are read once): this one's
    // parent plays the client, init the server.
    let (client, server) = (std::os::unix::process::parent_id(), 1);
    let records = records(exchanges, client, server);
    let metrics = Arc::new(Metrics::default());
    let spans = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = JsonSink {
        printer: Printer::new(std::io::sink(), PrintFormat::Json),
        spans: spans.clone(),
    };
    let mut sinks = Sinks::from_sinks(vec![Box::new(sink)]);
    let mut capture = Capture::new(
        metrics.clone(),
        false,
        TlsDiscovery::new(std::process::id()),
        StackJoin::new(None, STACK_WAIT),
        GoDiscovery::new(false),
    );
    let started = Instant::now();
    // As the capture task does: a batch of records, then what is older than the window goes on.
    for batch in records.chunks(256) {
        for record in batch {
            capture.on_record(record);
        }
        let newest = batch.last().map(|r| ts_of(r)).unwrap_or(0);
        capture.release(newest.saturating_sub(trace::WINDOW_NS), &mut sinks);
    }
    capture.flush(&mut sinks);
    let elapsed = started.elapsed();
    let made = spans.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        made,
        2 * exchanges as u64,
        "every exchange gives a client and a server span"
    );
    assert_eq!(
        metrics
            .spans_unlinked
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every server span is linked"
    );
    let peak = crate::health::own_status_kib("VmHWM")
        .map_or_else(|| "?".to_owned(), |kib| format!("{kib} kB"));
    println!(
        "capture replay: {exchanges} exchanges, {made} spans in {:.3} s: {:.2} µs per span on one thread, peak RSS {peak}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / made as f64
    );
}
