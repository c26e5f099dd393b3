//! Trace assembly: every span gets its trace id, span id and parent when its request *starts*,
//! so that ids flow causally down a chain of calls and a span leaves as soon as it finishes.
//!
//! Rules, in order (the first that applies wins; `ztrace.link` says which one did):
//! - `header`: the request carries a W3C `traceparent`: its trace id, its span as the parent.
//!   Not a header that ztrace's kernel added (`ebpf/src/inject.rs`), which counts no more than
//!   the TCP option: on this host, the client's own bytes (captured before `sk_msg` added it)
//!   carried none and the header's parent is that client's span; from another host, its ids
//!   are the TCP option's. The rules below then decide (the same-host rules can give the client
//!   span another trace than the kernel wrote: `propagation_trace_mismatch`), and the one that
//!   found the ids names the link. If the option was stripped on the way, the header is all
//!   that arrived: it links as `header`.
//! - `connection` (server spans): the other end of the connection is a traced process on this
//!   host whose request on it is in flight: that client span is the parent, its trace the trace.
//!   Requests on a keep-alive connection pair in order (the latest client request written before
//!   the server read it); requests of a multiplexed protocol (HTTP/2) pair by their stream
//!   (`RequestStart::stream`, `Exchange::stream`), whatever the order and batching of either end.
//! - `thread` (client spans): the thread that writes the request is serving exactly one server
//!   exchange (read its request, not yet finished): that server span is the parent. Threads
//!   serving several at once (event loops) give no thread link rather than a wrong one.
//! - `goroutine` (client spans of Go programs): the same with the goroutine the kernel reports
//!   for each syscall (`ebpf/src/go`: the running one, or for net/http's client connection
//!   goroutine, the goroutine whose request it writes) instead of the thread; a goroutine serving
//!   nothing takes the link of the nearest goroutine up its chain of starters (`spawned`, at most
//!   [`MAX_SPAWN_DEPTH`] up) that serves exactly one exchange which began before the goroutine
//!   below it on the chain was started (so a goroutine outliving its request never joins the
//!   next request of its starter).
//! - `tcp_option` (server spans): the client's host runs ztrace and its kernel wrote the
//!   request's trace context (trace id, client span id) in a TCP option of the request's
//!   segments (`ebpf/src/sockops.rs`); this host's kernel read it before the server read the
//!   request and reported it with the request's first bytes (`RequestStart::born`).
//! - `none`: a root with a new trace id.
//!
//! Ids born in the kernel (`RequestStart::born`, with `--propagate`) are the ones the request's
//! context carried on the wire: the span keeps that span id always, and that trace id wherever
//! no rule above gave one (a client span linked here to a server span whose trace differs from
//! the kernel's is counted, `propagation_trace_mismatch`: the receiving host's part splits). A server span whose client is a traced local process
//!   that could not be found is counted (`spans_unlinked`).
//!
//! Inputs come from one ring buffer in the order syscalls *returned*, but a write's timestamp is
//! its entry: the server's read of a request can come before the client's write of it. Starts,
//! finished spans and closes therefore wait in a hold-back window ([`WINDOW_NS`] of kernel time,
//! at most [`MAX_PENDING`] items) and are handled in timestamp order. Spans are never held for
//! their parent to finish: a parent's ids are known when its request started.

pub mod context;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    net::SocketAddr,
};

use crate::{
    collections::HashMap,
    conn::{ConnKey, RequestStart},
    metrics::Metrics,
    protocols::Side,
    spans::{new_span_id, new_trace_id, AttrValue, Attribute, Span, SpanKind},
};

/// How long (kernel time) inputs wait before they are handled in timestamp order.
pub const WINDOW_NS: u64 = 100_000_000;
/// Most inputs waiting at once; beyond that the oldest is handled early (counted).
pub const MAX_PENDING: usize = 65_536;
/// Request starts remembered per connection (a start is forgotten once its exchange finished).
const MAX_STARTS_PER_CONN: usize = 64;
/// Client requests remembered per connection for the server end.
const MAX_IN_FLIGHT_PER_CONN: usize = 64;
/// Streams of a multiplexed connection remembered at once, on either end (as many as the
/// HTTP/2 parser keeps open).
const MAX_STREAMS_PER_CONN: usize = crate::protocols::http2::MAX_OPEN_STREAMS;
/// Connections with remembered client requests; beyond that the map is emptied (counted).
const MAX_IN_FLIGHT_CONNS: usize = 65_536;
/// State older than this (kernel time) is forgotten by [`Tracer::expire`].
const STALE_NS: u64 = 60_000_000_000;
/// Longest time between two reads of one pipelined batch by its server for the second to
/// continue the batch ([`Tracer::continued_batch`]).
const BATCH_CONTINUATION_NS: u64 = 1_000_000_000;

/// The attribute that says how a span's parent was found.
pub const LINK_ATTR: &str = "ztrace.link";
/// The attribute through which a messaging span hands trace assembly its message's key (an
/// integer equal on the producer's and the consumer's end); removed here, never exported.
pub const MESSAGE_KEY_ATTR: &str = "ztrace.internal.message_key";
/// Payload bytes a message key covers.
pub const MESSAGE_KEY_BYTES: usize = 256;

/// The key of a message, equal on the producer's and the consumer's end: FNV-1a of the
/// messaging system, the destination (subject, channel), the payload's size and its first
/// [`MESSAGE_KEY_BYTES`] bytes. Computed in memory, never exported.
pub fn message_key(system: &str, destination: &str, size: u64, prefix: &[u8]) -> i64 {
    fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
    let mut h = fnv(0xcbf2_9ce4_8422_2325, system.as_bytes());
    h = fnv(h, &[0]);
    h = fnv(h, destination.as_bytes());
    h = fnv(h, &size.to_le_bytes());
    fnv(h, &prefix[..prefix.len().min(MESSAGE_KEY_BYTES)]) as i64
}

/// Messages remembered for their consumers: (key → the PRODUCER span's ids).
const MAX_MESSAGES: usize = 65_536;
/// How long after a message was read its thread's calls may still be its processing.
const CONSUMER_PROCESSING_NS: u64 = 10_000_000_000;

/// How a span's parent was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Header,
    Connection,
    Thread,
    Goroutine,
    /// The trace context came from another host in the TCP option of the request's segments.
    TcpOption,
    /// A CONSUMER span whose PRODUCER span sent the same message on this host.
    Message,
    None,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Header => "header",
            Link::Connection => "connection",
            Link::Thread => "thread",
            Link::Goroutine => "goroutine",
            Link::TcpOption => "tcp_option",
            Link::Message => "message",
            Link::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Ids {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    link: Link,
    /// A parent was expected (the client is a traced local process) but not found.
    missing_parent: bool,
    /// The request's `traceparent` is one ztrace's kernel added (`ebpf/src/inject.rs`): the
    /// rules that found these ids win over it, also where the protocol's span applied it.
    added_header: bool,
}

struct StartRecord {
    ts: u64,
    ids: Ids,
    /// The stream the request opened (multiplexed protocols).
    stream: Option<u64>,
    /// For a server start linked by connection: the client request's span id.
    peer_span: Option<[u8; 8]>,
    /// The first of this start's exchanges is the `peer_offset`-th of the client's batch: a
    /// pipelined batch the client wrote after one start and the server read in several reads.
    peer_offset: u64,
    /// Exchanges that took their ids from this start so far (a pipelined batch is several).
    claims: u64,
}

/// The span id of the `k`-th exchange of one start (`k` = 0 is the start's own id): both ends
/// of a connection see the same pipelined exchanges after one start each, so the k-th server
/// exchange finds the k-th client exchange as its parent without waiting for it.
fn nth_id(base: [u8; 8], k: u64) -> [u8; 8] {
    if k == 0 {
        return base;
    }
    // splitmix64 of the base and k: distinct for distinct k, never zero.
    let mut z = u64::from_le_bytes(base).wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == 0 {
        z = 1;
    }
    z.to_le_bytes()
}

struct InFlight {
    ts: u64,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The stream the request opened (multiplexed protocols; 0 otherwise).
    stream: u64,
    /// The request's bytes, as the client wrote them, carried a `traceparent`: one the server
    /// end reads is then the application's, not one ztrace's kernel added on the way.
    had_header: bool,
}

/// A server exchange whose request was read on a thread and that has not finished.
struct Serving {
    conn: ConnKey,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    ts: u64,
    /// A delivered message's processing: it ends at the thread's next message on the
    /// connection, or [`CONSUMER_PROCESSING_NS`] after it was read.
    consumer: bool,
}

/// A finished span and where it came from.
pub struct Finished {
    pub span: Span,
    pub key: ConnKey,
    pub side: Side,
    /// The exchange's `request_start_ns`: finds the start that holds the span's ids.
    pub request_start_ns: u64,
    /// The client end of a server span is a traced local process.
    pub peer_traced: bool,
    /// A delivered message: the thread that read it (see `Exchange::consumer_thread`).
    pub consumer_tid: Option<u32>,
    /// The exchange's stream on a multiplexed protocol (see `Exchange::stream`): it takes the
    /// ids of the start of that stream.
    pub stream: Option<u64>,
}

enum Input {
    Start {
        start: RequestStart,
        peer_traced: bool,
    },
    Spawn {
        tgid: u32,
        parent: u32,
        child: u32,
        stream_handler: Option<bool>,
    },
    /// A Go gRPC client: goroutine `goid` created client stream `stream` on connection fd `fd`.
    StreamOwner {
        tgid: u32,
        fd: i32,
        stream: u64,
        goid: u32,
    },
    Done(Box<Finished>),
    Close(ConnKey),
}

impl Input {
    /// At equal timestamps: starts, then finished spans, then closes.
    fn rank(&self) -> u8 {
        match self {
            Input::Spawn { .. } | Input::StreamOwner { .. } | Input::Start { .. } => 0,
            Input::Done(_) => 1,
            Input::Close(_) => 2,
        }
    }
}

struct Pending {
    ts: u64,
    input: Input,
}

/// The hold-back window: inputs in (timestamp, rank, arrival) order. Inputs arrive almost in
/// timestamp order (the ring buffer's order, disturbed only by write timestamps taken at entry
/// and by the CPUs' interleaving), so most keys go into a deque kept sorted: a new key is placed
/// by a short scan from the back and the next one is taken from the front — no sifting through
/// a heap that no longer fits in the cache. A key that lands further back than the scan (a
/// write's entry time reported after a long call, a batch of one CPU's records after another's)
/// goes into a small heap instead: inserting it into the middle of the deque would move every
/// key behind it, which under load (tens of thousands of keys) made each such input cost
/// microseconds and the agent fall behind for good. The inputs themselves (up to ~150 bytes)
/// stay in a slab, so only 24-byte keys move.
#[derive(Default)]
struct Window {
    /// (ts, rank, seq, slot), sorted.
    order: VecDeque<WindowKey>,
    /// Keys that arrived too far out of order for `order`, smallest first.
    late: BinaryHeap<Reverse<WindowKey>>,
    slots: Vec<Option<Input>>,
    free: Vec<u32>,
}

/// (ts, rank, seq, slot): the order inputs are handled in, and where the input is.
type WindowKey = (u64, u8, u64, u32);

/// Keys compared one by one from the back of the deque before a key goes to the heap.
const WINDOW_SCAN: usize = 8;

impl Window {
    fn len(&self) -> usize {
        self.order.len() + self.late.len()
    }

    fn push(&mut self, ts: u64, rank: u8, seq: u64, input: Input) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(input);
                slot
            }
            None => {
                self.slots.push(Some(input));
                (self.slots.len() - 1) as u32
            }
        };
        let key = (ts, rank, seq, slot);
        // `seq` grows with every push, so a key is never equal to one already here.
        let mut at = self.order.len();
        while at > 0 && self.order.len() - at < WINDOW_SCAN && self.order[at - 1] > key {
            at -= 1;
        }
        if at > 0 && self.order[at - 1] > key {
            self.late.push(Reverse(key));
        } else if at == self.order.len() {
            self.order.push_back(key);
        } else {
            self.order.insert(at, key);
        }
    }

    /// Whether the input that comes next waits in `late` (else at the front of `order`).
    fn late_first(&self) -> bool {
        match (self.order.front(), self.late.peek()) {
            (Some(a), Some(Reverse(b))) => b < a,
            (None, late) => late.is_some(),
            (Some(_), None) => false,
        }
    }

    /// The input that comes next, if its timestamp is at or before `watermark`.
    fn pop_through(&mut self, watermark: u64) -> Option<Pending> {
        let (ts, _, _, slot) = if self.late_first() {
            if self.late.peek()?.0 .0 > watermark {
                return None;
            }
            self.late.pop()?.0
        } else {
            if self.order.front()?.0 > watermark {
                return None;
            }
            self.order.pop_front()?
        };
        let input = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(Pending { ts, input })
    }

    fn pop(&mut self) -> Option<Pending> {
        self.pop_through(u64::MAX)
    }
}

/// Gives spans their trace ids and parents (module docs).
#[derive(Default)]
pub struct Tracer {
    pending: Window,
    seq: u64,
    /// Starts of each connection whose exchange has not finished, oldest first.
    starts: HashMap<ConnKey, VecDeque<StartRecord>>,
    /// Client requests not yet read by a traced server end, by (client end, server end).
    in_flight: HashMap<(SocketAddr, SocketAddr), VecDeque<InFlight>>,
    /// The same for requests of multiplexed protocols, each with its stream, in stream order.
    in_flight_streams: HashMap<(SocketAddr, SocketAddr), VecDeque<InFlight>>,
    /// Starts of each multiplexed connection's streams whose exchange has not finished.
    stream_starts: HashMap<ConnKey, VecDeque<StartRecord>>,
    /// Messages published, by key, for the CONSUMER spans of their deliveries (bounded, oldest
    /// forgotten first).
    messages: HashMap<i64, ([u8; 16], [u8; 8])>,
    message_order: VecDeque<i64>,
    /// Open server exchanges of each unit of work, by (tgid, [`unit`]).
    serving: HashMap<(u32, u64), Vec<Serving>>,
    /// The unit of work whose `serving` holds a connection's open server exchange.
    serving_thread: HashMap<ConnKey, u64>,
    /// Newest timestamp handled.
    last_ts: u64,
    /// Go: (tgid, goroutine) → (the goroutine that started it, when), at most
    /// [`MAX_GOROUTINES`], the oldest forgotten first (`spawn_order`).
    spawned_by: HashMap<(u32, u32), (u32, u64)>,
    spawn_order: VecDeque<(u32, u32)>,
    /// Go: the server streams the latest read of a goroutine opened, in stream order, not yet
    /// handed to a goroutine it started: (tgid, reading goroutine) → (the read's time, streams).
    opened: HashMap<(u32, u32), (u64, VecDeque<Handed>)>,
    /// Go: the reading goroutine whose streams a goroutine starts handlers for when it is not
    /// the reader itself (net/http's HTTP/2 server: the serve goroutine starts the frame
    /// reader, then a handler per stream the reader reads): (tgid, starter) → reader.
    reader_of: HashMap<(u32, u32), u32>,
    /// Go: the server stream each handler goroutine was started for, (tgid, goroutine) →
    /// stream (at most [`MAX_GOROUTINES`]).
    handlers: HashMap<(u32, u32), Handed>,
    /// The handler goroutine of each handed stream, (connection, stream) → goroutine: the
    /// stream's end forgets its handler.
    handler_of: HashMap<(ConnKey, u64), u32>,
    /// Go gRPC clients: the goroutines that created the client streams of a connection not yet
    /// written, (tgid, fd) → (stream, goroutine, when), at most [`MAX_STREAMS_PER_CONN`] each.
    stream_owners: HashMap<(u32, i32), VecDeque<StreamOwner>>,
}

/// A client stream's creation: (stream id, the goroutine that created it, when).
type StreamOwner = (u64, u32, u64);

/// A server stream of a Go program handed to the goroutine started to serve it.
#[derive(Clone, Copy)]
struct Handed {
    conn: ConnKey,
    stream: u64,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    ts: u64,
}

/// Goroutine starts remembered (about 40 bytes each).
pub const MAX_GOROUTINES: usize = 65_536;

impl Tracer {
    /// Sizes of its tables (the hold-back window, the per-connection and per-unit state).
    pub fn table_sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("trace_window", self.pending.len()),
            ("trace_conn_starts", self.starts.len()),
            ("trace_in_flight_conns", self.in_flight.len()),
            ("trace_messages", self.messages.len()),
            ("trace_serving_units", self.serving.len()),
            ("trace_goroutine_starts", self.spawned_by.len()),
            ("trace_stream_handlers", self.handlers.len()),
            ("trace_stream_owners", self.stream_owners.len()),
        ]
    }
}
/// How far up a chain of goroutine starts a client request looks for the request it serves.
pub const MAX_SPAWN_DEPTH: usize = 8;

/// The unit of work of a start: its goroutine in a Go program (tagged above 32 bits), else its
/// thread.
fn unit(s: &RequestStart) -> u64 {
    if s.goid != 0 {
        1 << 32 | u64::from(s.goid)
    } else {
        u64::from(s.tid)
    }
}

fn set_link(span: &mut Span, link: Link) {
    match span.attributes.iter_mut().find(|a| a.key == LINK_ATTR) {
        Some(a) => a.value = AttrValue::from(link.as_str()),
        None => span
            .attributes
            .push(Attribute::new(LINK_ATTR, link.as_str())),
    }
}

/// Removes the message key a messaging span carries (see [`MESSAGE_KEY_ATTR`]).
fn take_message_key(span: &mut Span) -> Option<i64> {
    let i = span
        .attributes
        .iter()
        .position(|a| a.key == MESSAGE_KEY_ATTR)?;
    match span.attributes.remove(i).value {
        AttrValue::Int(key) => Some(key),
        _ => None,
    }
}

fn link_of(span: &Span) -> Option<&str> {
    span.attributes
        .iter()
        .find(|a| a.key == LINK_ATTR)
        .and_then(|a| match &a.value {
            AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
}

impl Tracer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inputs waiting in the hold-back window.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn push(&mut self, ts: u64, input: Input, metrics: &Metrics, out: &mut Vec<Span>) {
        self.seq += 1;
        let rank = input.rank();
        self.pending.push(ts, rank, self.seq, input);
        metrics.link_window_peak.fetch_max(
            self.pending.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.pending.len() > MAX_PENDING {
            Metrics::inc(&metrics.link_window_overflow);
            if let Some(oldest) = self.pending.pop() {
                self.handle(oldest, metrics, out);
            }
        }
    }

    /// A request started (see [`RequestStart`]); `peer_traced` says whether the other end of
    /// the connection is a traced process on this host.
    pub fn start(
        &mut self,
        start: RequestStart,
        peer_traced: bool,
        metrics: &Metrics,
        out: &mut Vec<Span>,
    ) {
        self.push(
            start.ts_ns,
            Input::Start { start, peer_traced },
            metrics,
            out,
        );
    }

    /// A span finished at kernel time `ts` (the event that completed its exchange). A PRODUCER
    /// span is handled at its request's start: its message left then, and a consumer may read
    /// it before the producer's exchange completes (Redis answers a blocked `XREADGROUP` before
    /// the producer reads the id its `XADD` returned, which the message's key needs).
    pub fn finished(
        &mut self,
        ts: u64,
        finished: Finished,
        metrics: &Metrics,
        out: &mut Vec<Span>,
    ) {
        let ts = match finished.request_start_ns {
            start if finished.span.kind == SpanKind::Producer && start > 0 => ts.min(start),
            _ => ts,
        };
        self.push(ts, Input::Done(Box::new(finished)), metrics, out);
    }

    /// In a Go program `tgid`, goroutine `parent` started `child` at kernel time `ts`.
    pub fn spawned(
        &mut self,
        ts: u64,
        tgid: u32,
        parent: u32,
        child: u32,
        metrics: &Metrics,
        out: &mut Vec<Span>,
    ) {
        self.spawned_by_site(ts, tgid, parent, child, None, metrics, out);
    }

    /// [`Tracer::spawned`], saying whether the `go` statement is one where Go's HTTP/2 or gRPC
    /// server starts a stream's handler (`Some(true)`), another one (`Some(false)`), or not
    /// known in this program (`None`).
    #[allow(clippy::too_many_arguments)]
    pub fn spawned_by_site(
        &mut self,
        ts: u64,
        tgid: u32,
        parent: u32,
        child: u32,
        stream_handler: Option<bool>,
        metrics: &Metrics,
        out: &mut Vec<Span>,
    ) {
        self.push(
            ts,
            Input::Spawn {
                tgid,
                parent,
                child,
                stream_handler,
            },
            metrics,
            out,
        );
    }

    /// In a Go gRPC client `tgid`, goroutine `goid` created client stream `stream` on the
    /// connection of fd `fd`; `ts` is when that creation began (before the stream's id was
    /// given, so before any goroutine could write the stream's first frame).
    #[allow(clippy::too_many_arguments)]
    pub fn stream_created(
        &mut self,
        ts: u64,
        tgid: u32,
        fd: i32,
        stream: u64,
        goid: u32,
        metrics: &Metrics,
        out: &mut Vec<Span>,
    ) {
        self.push(
            ts,
            Input::StreamOwner {
                tgid,
                fd,
                stream,
                goid,
            },
            metrics,
            out,
        );
    }

    /// The process closed the connection at kernel time `ts`.
    pub fn closed(&mut self, ts: u64, key: ConnKey, metrics: &Metrics, out: &mut Vec<Span>) {
        self.push(ts, Input::Close(key), metrics, out);
    }

    /// Handles, in timestamp order, every input at or before `watermark` (kernel time): the
    /// caller passes the time its last complete drain of the ring buffer began minus
    /// [`WINDOW_NS`].
    pub fn release(&mut self, watermark: u64, metrics: &Metrics, out: &mut Vec<Span>) {
        while let Some(p) = self.pending.pop_through(watermark) {
            self.handle(p, metrics, out);
        }
    }

    /// Handles everything waiting (at shutdown).
    pub fn flush(&mut self, metrics: &Metrics, out: &mut Vec<Span>) {
        self.release(u64::MAX, metrics, out);
    }

    /// Forgets state not touched for a minute of kernel time (exchanges that never finished,
    /// requests whose server end never read them).
    pub fn expire(&mut self) {
        let Some(cutoff) = self.last_ts.checked_sub(STALE_NS) else {
            return;
        };
        self.starts.retain(|_, q| {
            q.retain(|r| r.ts >= cutoff);
            !q.is_empty()
        });
        self.in_flight.retain(|_, q| {
            q.retain(|r| r.ts >= cutoff);
            !q.is_empty()
        });
        self.in_flight_streams.retain(|_, q| {
            q.retain(|r| r.ts >= cutoff);
            !q.is_empty()
        });
        self.stream_starts.retain(|_, q| {
            q.retain(|r| r.ts >= cutoff);
            !q.is_empty()
        });
        self.serving.retain(|_, open| {
            open.retain(|s| s.ts >= cutoff);
            !open.is_empty()
        });
        self.opened.retain(|_, (ts, _)| *ts >= cutoff);
        let opened = &self.opened;
        self.reader_of
            .retain(|&(tgid, _), reader| opened.contains_key(&(tgid, *reader)));
        self.handlers.retain(|_, h| h.ts >= cutoff);
        let handlers = &self.handlers;
        self.handler_of
            .retain(|(conn, _), g| handlers.contains_key(&(conn.tgid, *g)));
        self.stream_owners.retain(|_, q| {
            q.retain(|&(_, _, ts)| ts >= cutoff);
            !q.is_empty()
        });
        let serving = &self.serving;
        self.serving_thread.retain(|conn, tid| {
            serving
                .get(&(conn.tgid, *tid))
                .is_some_and(|v| v.iter().any(|s| s.conn == *conn))
        });
    }

    fn handle(&mut self, p: Pending, metrics: &Metrics, out: &mut Vec<Span>) {
        let last_ts = self.last_ts;
        self.last_ts = self.last_ts.max(p.ts);
        match p.input {
            Input::Start { start, peer_traced } => self.on_start(&start, peer_traced, metrics),
            Input::Done(f) => self.on_done(*f, metrics, out),
            Input::Spawn {
                tgid,
                parent,
                child,
                stream_handler,
            } => {
                if self.spawn_order.len() >= MAX_GOROUTINES {
                    if let Some(old) = self.spawn_order.pop_front() {
                        self.spawned_by.remove(&old);
                    }
                }
                if self
                    .spawned_by
                    .insert((tgid, child), (parent, p.ts))
                    .is_none()
                {
                    self.spawn_order.push_back((tgid, child));
                }
                self.hand_over(tgid, parent, child, stream_handler);
            }
            Input::StreamOwner {
                tgid,
                fd,
                stream,
                goid,
            } => {
                if p.ts < last_ts {
                    Metrics::inc(&metrics.go_stream_owners_late);
                }
                let q = self.stream_owners.entry((tgid, fd)).or_default();
                if q.len() >= MAX_STREAMS_PER_CONN {
                    q.pop_front();
                }
                q.push_back((stream, goid, p.ts));
            }
            Input::Close(key) => {
                self.stream_owners.remove(&(key.tgid, key.fd));
                self.starts.remove(&key);
                self.stream_starts.remove(&key);
                self.stop_serving(key);
            }
        }
    }

    fn on_start(&mut self, s: &RequestStart, peer_traced: bool, metrics: &Metrics) {
        // A Go gRPC client stream is written by the connection's writer goroutine: it acts for
        // the goroutine that created the stream.
        let owned;
        let s = match (s.side, s.stream) {
            (Side::Client, Some(stream)) => match self.take_stream_owner(s.key, stream, s.ts_ns) {
                Some(goid) => {
                    Metrics::inc(&metrics.go_stream_owners);
                    owned = RequestStart { goid, ..*s };
                    &owned
                }
                None => s,
            },
            _ => s,
        };
        // Ids the kernel gave the request went on the wire: the span keeps its span id, and
        // where no rule of this host applies, its trace id and the parent the other host sent.
        let born = s.born;
        let span_id = born.map_or_else(new_span_id, |b| b.span_id);
        let fresh = |missing_parent| Ids {
            trace_id: born.map_or_else(new_trace_id, |b| b.trace_id),
            span_id,
            parent: None,
            link: Link::None,
            missing_parent,
            added_header: false,
        };
        let mut peer_span = None;
        let mut peer_offset = 0;
        let added_header = s
            .traceparent
            .is_some_and(|tp| self.added_by_ztrace(s, &tp, born));
        let mut ids = if let Some(tp) = s.traceparent.filter(|_| !added_header) {
            Ids {
                trace_id: tp.trace_id,
                span_id,
                parent: Some(tp.parent_id),
                link: Link::Header,
                missing_parent: false,
                added_header: false,
            }
        } else {
            match s.side {
                Side::Server => {
                    match self.claim_in_flight((s.remote, s.local), s.ts_ns, s.stream) {
                        Some(c) => {
                            peer_span = Some(c.span_id);
                            Ids {
                                trace_id: c.trace_id,
                                span_id,
                                parent: Some(c.span_id),
                                link: Link::Connection,
                                missing_parent: false,
                                added_header: false,
                            }
                        }
                        None => match self.continued_batch(s).filter(|_| s.stream.is_none()) {
                            Some((ids, peer, offset)) => {
                                peer_span = Some(peer);
                                peer_offset = offset;
                                ids
                            }
                            None => match born {
                                Some(b) if b.from_wire => {
                                    Metrics::inc(&metrics.spans_linked_tcp_option);
                                    Ids {
                                        trace_id: b.trace_id,
                                        span_id,
                                        parent: b.parent_id,
                                        link: Link::TcpOption,
                                        missing_parent: false,
                                        added_header: false,
                                    }
                                }
                                _ => fresh(peer_traced),
                            },
                        },
                    }
                }
                Side::Client => {
                    let handed = self
                        .handed_to(s.key.tgid, s.goid)
                        .map(|h| (h.trace_id, h.span_id, Link::Goroutine));
                    let linked = handed.or_else(|| {
                        match self.serving.get(&(s.key.tgid, unit(s))).map(Vec::as_slice) {
                            // A message's consumer serves its thread for a while only.
                            Some([one])
                                if !one.consumer
                                    || s.ts_ns.saturating_sub(one.ts) <= CONSUMER_PROCESSING_NS =>
                            {
                                Some((
                                    one.trace_id,
                                    one.span_id,
                                    if s.goid != 0 {
                                        Link::Goroutine
                                    } else {
                                        Link::Thread
                                    },
                                ))
                            }
                            _ => self
                                .started_by_serving(s)
                                .map(|(t, p)| (t, p, Link::Goroutine)),
                        }
                    });
                    match linked {
                        Some((trace_id, parent, link)) => {
                            if born.is_some_and(|b| b.trace_id != trace_id) {
                                Metrics::inc(&metrics.propagation_trace_mismatch);
                            }
                            Ids {
                                trace_id,
                                span_id,
                                parent: Some(parent),
                                link,
                                missing_parent: false,
                                added_header: false,
                            }
                        }
                        None => fresh(false),
                    }
                }
            }
        };
        ids.added_header = added_header;
        match s.side {
            Side::Server => {
                // A new request on the connection ends any earlier one's hold on its thread;
                // streams opened by the same read serve it together (a thread, or goroutine,
                // serving several links none of its calls rather than a wrong one).
                match s.stream {
                    None => self.stop_serving(s.key),
                    Some(_) => self.stop_serving_before(s.key, s.ts_ns),
                }
                self.serving
                    .entry((s.key.tgid, unit(s)))
                    .or_default()
                    .push(Serving {
                        conn: s.key,
                        trace_id: ids.trace_id,
                        span_id: ids.span_id,
                        ts: s.ts_ns,
                        consumer: false,
                    });
                self.serving_thread.insert(s.key, unit(s));
                if let (Some(stream), true) = (s.stream, s.goid != 0) {
                    self.opened_by_read(s, stream, &ids);
                }
            }
            Side::Client => {
                if self.in_flight.len() >= MAX_IN_FLIGHT_CONNS {
                    Metrics::add(&metrics.link_state_dropped, self.in_flight.len() as u64);
                    self.in_flight.clear();
                }
                let (q, most) = match s.stream {
                    None => (&mut self.in_flight, MAX_IN_FLIGHT_PER_CONN),
                    Some(_) => (&mut self.in_flight_streams, MAX_STREAMS_PER_CONN),
                };
                let q = q.entry((s.local, s.remote)).or_default();
                if q.len() >= most {
                    q.pop_front();
                }
                q.push_back(InFlight {
                    ts: s.ts_ns,
                    trace_id: ids.trace_id,
                    span_id: ids.span_id,
                    stream: s.stream.unwrap_or(0),
                    had_header: s.traceparent.is_some(),
                });
            }
        }
        let (q, most) = match s.stream {
            None => (&mut self.starts, MAX_STARTS_PER_CONN),
            Some(_) => (&mut self.stream_starts, MAX_STREAMS_PER_CONN),
        };
        let q = q.entry(s.key).or_default();
        if q.len() >= most {
            q.pop_front();
        }
        q.push_back(StartRecord {
            ts: s.ts_ns,
            ids,
            stream: s.stream,
            peer_span,
            peer_offset,
            claims: 0,
        });
    }

    /// Whether a server request's `traceparent` is one ztrace's kernel added
    /// (`ebpf/src/inject.rs`) rather than the application's: on this host, the client end's
    /// request in flight on the connection is that header's parent and its own bytes carried
    /// none (the header was added after ztrace captured them); from another host, the header
    /// says what the TCP option that came with the request says.
    fn added_by_ztrace(
        &self,
        s: &RequestStart,
        tp: &context::TraceParent,
        born: Option<context::BornIds>,
    ) -> bool {
        if s.side != Side::Server {
            return false;
        }
        let local_client = self
            .in_flight
            .get(&(s.remote, s.local))
            .is_some_and(|q| q.iter().any(|c| !c.had_header && c.span_id == tp.parent_id));
        let same_as_option = born.is_some_and(|b| {
            b.from_wire && b.trace_id == tp.trace_id && b.parent_id == Some(tp.parent_id)
        });
        local_client || same_as_option
    }

    /// A server start that no client request written before it explains, right after a
    /// start of the same connection linked by connection whose exchanges have finished: the
    /// server read the rest of the client's pipelined batch. Its exchanges continue that batch
    /// (the ids, the client's span base and the offset they start at).
    fn continued_batch(&self, s: &RequestStart) -> Option<(Ids, [u8; 8], u64)> {
        let last = self.starts.get(&s.key)?.back()?;
        let peer = last.peer_span?;
        if last.claims == 0 || s.ts_ns.saturating_sub(last.ts) > BATCH_CONTINUATION_NS {
            return None;
        }
        let ids = Ids {
            span_id: new_span_id(),
            ..last.ids
        };
        Some((ids, peer, last.peer_offset + last.claims))
    }

    /// A PRODUCER span is remembered under its message's key; a CONSUMER span of the same
    /// message (published earlier on this host) becomes its child, unless the message's own
    /// headers linked it (`header`).
    fn link_message(&mut self, span: &mut Span, message: i64) {
        match span.kind {
            SpanKind::Producer => {
                if self.messages.len() >= MAX_MESSAGES {
                    if let Some(old) = self.message_order.pop_front() {
                        self.messages.remove(&old);
                    }
                }
                if self
                    .messages
                    .insert(message, (span.trace_id, span.span_id))
                    .is_none()
                {
                    self.message_order.push_back(message);
                }
            }
            SpanKind::Consumer if link_of(span) != Some("header") => {
                if let Some(&(trace_id, span_id)) = self.messages.get(&message) {
                    span.trace_id = trace_id;
                    span.parent_span_id = Some(span_id);
                    set_link(span, Link::Message);
                }
            }
            _ => {}
        }
    }

    /// For a client start on a Go goroutine serving nothing: the one exchange served by the
    /// nearest goroutine up its chain of starters, if it began before the start below it.
    fn started_by_serving(&self, s: &RequestStart) -> Option<([u8; 16], [u8; 8])> {
        if s.goid == 0 || self.serving.contains_key(&(s.key.tgid, unit(s))) {
            return None;
        }
        let mut goid = s.goid;
        for _ in 0..MAX_SPAWN_DEPTH {
            let &(parent, spawned_at) = self.spawned_by.get(&(s.key.tgid, goid))?;
            if let Some(h) = self.handed_to(s.key.tgid, parent) {
                return (h.ts <= spawned_at).then_some((h.trace_id, h.span_id));
            }
            match self
                .serving
                .get(&(s.key.tgid, 1 << 32 | u64::from(parent)))
                .map(Vec::as_slice)
            {
                Some([one]) if one.ts <= spawned_at => return Some((one.trace_id, one.span_id)),
                Some(_) => return None,
                None => goid = parent,
            }
        }
        None
    }

    /// A Go server stream `stream` opened by the read of goroutine `s.goid` at `s.ts_ns`: kept,
    /// in stream order with the other streams of that read, for the goroutines the reading
    /// goroutine starts next (a read's streams are those frames in order, and Go's gRPC server
    /// starts one goroutine per stream as it reads them). A newer read forgets the streams of
    /// the older one that no goroutine took.
    fn opened_by_read(&mut self, s: &RequestStart, stream: u64, ids: &Ids) {
        if self.opened.len() >= MAX_GOROUTINES {
            self.opened.clear();
            self.reader_of.clear();
        }
        if let Some(&(starter, _)) = self.spawned_by.get(&(s.key.tgid, s.goid)) {
            self.reader_of.insert((s.key.tgid, starter), s.goid);
        }
        let (read_ts, q) = self
            .opened
            .entry((s.key.tgid, s.goid))
            .or_insert_with(|| (s.ts_ns, VecDeque::new()));
        if *read_ts != s.ts_ns {
            *read_ts = s.ts_ns;
            q.clear();
        }
        if q.len() >= MAX_STREAMS_PER_CONN {
            return;
        }
        let at = q.partition_point(|h| h.stream < stream);
        q.insert(
            at,
            Handed {
                conn: s.key,
                stream,
                trace_id: ids.trace_id,
                span_id: ids.span_id,
                ts: s.ts_ns,
            },
        );
    }

    /// Goroutine `parent` started `child`: if `parent`'s latest read opened server streams no
    /// goroutine took yet, `child` serves the first of them. Where the program's `go`
    /// statements that start stream handlers are known (`stream_handler` is `Some`), only those
    /// take a stream, and when `parent` read none they take them from the reader `parent`
    /// started (net/http's serve goroutine and its frame reader) or from the goroutine that
    /// started `parent` (grpc-go's connection goroutine, which reads the connection's first
    /// bytes — the preface and, from a client that sent its calls at once, their streams —
    /// before it starts the goroutine that serves the streams).
    fn hand_over(&mut self, tgid: u32, parent: u32, child: u32, stream_handler: Option<bool>) {
        let has_streams = |g: u32| self.opened.contains_key(&(tgid, g));
        let reader = match stream_handler {
            Some(false) => return,
            Some(true) if !has_streams(parent) => {
                let started = self.reader_of.get(&(tgid, parent)).copied();
                let starter = self.spawned_by.get(&(tgid, parent)).map(|&(s, _)| s);
                match (
                    started.filter(|&g| has_streams(g)),
                    starter.filter(|&g| has_streams(g)),
                ) {
                    (Some(reader), _) | (None, Some(reader)) => reader,
                    (None, None) => return,
                }
            }
            _ => parent,
        };
        let Some((_, q)) = self.opened.get_mut(&(tgid, reader)) else {
            return;
        };
        let Some(h) = q.pop_front() else { return };
        if q.is_empty() {
            self.opened.remove(&(tgid, reader));
        }
        if self.handlers.len() >= MAX_GOROUTINES {
            self.handlers.clear();
            self.handler_of.clear();
        }
        self.handler_of.insert((h.conn, h.stream), child);
        self.handlers.insert((tgid, child), h);
    }

    /// The server stream goroutine `goid` was started for, while that stream's exchange is open.
    fn handed_to(&self, tgid: u32, goid: u32) -> Option<&Handed> {
        if goid == 0 {
            return None;
        }
        let h = self.handlers.get(&(tgid, goid))?;
        let open = self.stream_starts.get(&h.conn).is_some_and(|q| {
            q.iter()
                .any(|r| r.stream == Some(h.stream) && r.ids.span_id == h.span_id)
        });
        open.then_some(h)
    }

    /// The goroutine that created client stream `stream` of connection `key` before `ts`.
    fn take_stream_owner(&mut self, key: ConnKey, stream: u64, ts: u64) -> Option<u32> {
        let q = self.stream_owners.get_mut(&(key.tgid, key.fd))?;
        let i = q.iter().position(|&(s, _, at)| s == stream && at <= ts)?;
        let (_, goid, _) = q.remove(i)?;
        // Streams are written in the order they were created: older ones are never written now.
        q.retain(|&(s, _, _)| s > stream);
        if q.is_empty() {
            self.stream_owners.remove(&(key.tgid, key.fd));
        }
        Some(goid)
    }

    /// The latest client request on `tuple` written at or before `ts`; it and older ones are
    /// no longer available. On a multiplexed protocol: the client request of the same
    /// `stream`; it and the streams below it (which a server reads in order) are no longer
    /// available.
    fn claim_in_flight(
        &mut self,
        tuple: (SocketAddr, SocketAddr),
        ts: u64,
        stream: Option<u64>,
    ) -> Option<InFlight> {
        let map = match stream {
            None => &mut self.in_flight,
            Some(_) => &mut self.in_flight_streams,
        };
        let q = map.get_mut(&tuple)?;
        let claimed = match stream {
            None => {
                let i = q.iter().rposition(|c| c.ts <= ts)?;
                q.drain(..i);
                q.pop_front()
            }
            Some(stream) => {
                let found = q
                    .iter()
                    .position(|c| c.stream == stream)
                    .and_then(|i| q.remove(i));
                q.retain(|c| c.stream > stream);
                found
            }
        };
        if q.is_empty() {
            map.remove(&tuple);
        }
        claimed
    }

    /// Ends the hold on their unit of work of `conn`'s server exchanges that started before
    /// `ts` (a multiplexed connection: the streams of earlier reads).
    fn stop_serving_before(&mut self, conn: ConnKey, ts: u64) {
        self.stop_serving_where(conn, |s| s.ts < ts);
    }

    /// Ends the hold of `conn`'s server exchange `span_id` on its unit of work.
    fn stop_serving_span(&mut self, conn: ConnKey, span_id: [u8; 8]) {
        self.stop_serving_where(conn, |s| s.span_id == span_id);
    }

    fn stop_serving_where(&mut self, conn: ConnKey, ends: impl Fn(&Serving) -> bool) {
        let Some(&unit) = self.serving_thread.get(&conn) else {
            return;
        };
        let mut left = false;
        if let Some(open) = self.serving.get_mut(&(conn.tgid, unit)) {
            open.retain(|s| s.conn != conn || !ends(s));
            left = open.iter().any(|s| s.conn == conn);
            if open.is_empty() {
                self.serving.remove(&(conn.tgid, unit));
            }
        }
        if !left {
            self.serving_thread.remove(&conn);
        }
    }

    fn stop_serving(&mut self, conn: ConnKey) {
        if let Some(tid) = self.serving_thread.remove(&conn) {
            if let Some(open) = self.serving.get_mut(&(conn.tgid, tid)) {
                open.retain(|s| s.conn != conn);
                if open.is_empty() {
                    self.serving.remove(&(conn.tgid, tid));
                }
            }
        }
    }

    /// The ids of an exchange of a protocol without streams: the latest start of its
    /// connection at or before its first bytes (older ones are done with; the start stays for
    /// further exchanges of a pipelined batch, the k-th taking the k-th derived ids). A
    /// delivered message (CONSUMER) is read, not requested: it claims no start.
    fn unkeyed_record(
        &mut self,
        key: ConnKey,
        consumer: bool,
        request_start_ns: u64,
    ) -> Option<Ids> {
        let q = self.starts.get_mut(&key).filter(|_| !consumer)?;
        let i = q.iter().rposition(|r| r.ts <= request_start_ns)?;
        q.drain(..i);
        let r = q.front_mut()?;
        let k = r.claims;
        r.claims += 1;
        let mut ids = r.ids;
        ids.span_id = nth_id(r.ids.span_id, k);
        if let Some(peer) = r.peer_span {
            ids.parent = Some(nth_id(peer, r.peer_offset + k));
        }
        Some(ids)
    }

    fn on_done(&mut self, f: Finished, metrics: &Metrics, out: &mut Vec<Span>) {
        let Finished {
            mut span,
            key,
            side,
            request_start_ns,
            peer_traced,
            consumer_tid,
            stream,
        } = f;
        let message_key = take_message_key(&mut span);
        let consumer = span.kind == SpanKind::Consumer;
        let record = match stream {
            // A stream's exchange takes its own stream's start, whatever the order they end in.
            Some(stream) => self.stream_starts.get_mut(&key).and_then(|q| {
                let i = q.iter().position(|r| r.stream == Some(stream))?;
                q.remove(i).map(|r| r.ids)
            }),
            None => self.unkeyed_record(key, consumer, request_start_ns),
        };
        let missing_parent = match record {
            Some(ids) => {
                span.span_id = ids.span_id;
                // A traceparent the start's bytes did not show (a head split over reads) still
                // wins, as http_span already applied it — unless it is one ztrace added: the
                // start said so, or it names as parent the client span the rules found (a
                // local client's span id is ztrace's own, no application's header holds it).
                let header_agrees =
                    span.trace_id == ids.trace_id && span.parent_span_id == ids.parent;
                let header_is_ours = header_agrees
                    || ids.added_header
                    || (ids.link == Link::Connection && span.parent_span_id == ids.parent);
                if header_is_ours || !(link_of(&span) == Some("header") && ids.link != Link::Header)
                {
                    span.trace_id = ids.trace_id;
                    span.parent_span_id = ids.parent;
                    set_link(&mut span, ids.link);
                }
                if side == Side::Server {
                    match stream {
                        None => self.stop_serving(key),
                        Some(stream) => {
                            self.stop_serving_span(key, ids.span_id);
                            if let Some(g) = self.handler_of.remove(&(key, stream)) {
                                self.handlers.remove(&(key.tgid, g));
                            }
                        }
                    }
                }
                ids.missing_parent
            }
            // No start seen (its bytes were lost): the span keeps the ids it was built with.
            None => side == Side::Server && peer_traced && link_of(&span) != Some("header"),
        };
        if let Some(message) = message_key {
            self.link_message(&mut span, message);
        }
        let serving_a_request = |t: &Self, tid: u32| {
            t.serving
                .get(&(key.tgid, u64::from(tid)))
                .is_some_and(|open| open.iter().any(|o| !o.consumer))
        };
        if let Some(tid) = consumer_tid
            .filter(|&tid| span.kind == SpanKind::Consumer && !serving_a_request(self, tid))
        {
            // What the reading thread does next is this message's processing (unless it is
            // serving a request: a reply it awaited is part of that request's work). Messages
            // read together (one read, a backlog) are processed one after the other, with
            // nothing that tells where one's processing ends: the thread then serves them all,
            // and its calls get no thread link rather than the wrong message's.
            let same_read = self
                .serving
                .get(&(key.tgid, u64::from(tid)))
                .is_some_and(|open| {
                    open.iter()
                        .any(|o| o.conn == key && o.consumer && o.ts == request_start_ns)
                });
            if !same_read {
                self.stop_serving(key);
            }
            self.serving
                .entry((key.tgid, u64::from(tid)))
                .or_default()
                .push(Serving {
                    conn: key,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    ts: request_start_ns,
                    consumer: true,
                });
            self.serving_thread.insert(key, u64::from(tid));
        }
        if missing_parent && span.parent_span_id.is_none() {
            Metrics::inc(&metrics.spans_unlinked);
        }
        out.push(span);
    }
}

#[cfg(test)]
mod tests;
