//! The connection table: every TCP connection of every traced process, its 4-tuple, and the
//! protocol parser fed by its two byte streams.
//!
//! A connection is keyed by `(tgid, fd, conn_gen)` as the kernel reports it. The table decides
//! the protocol from the first bytes, feeds chunks and gaps to the parser, and hands finished
//! exchanges, with the connection's addresses, to the caller. It does no I/O and holds no
//! payload beyond what a parser buffers for an incomplete header block.
//!
//! It also notes when a request starts on a connection ([`RequestStart`]: the first bytes in the
//! request direction after bytes in the other one, or the first bytes at all; every write, for a
//! protocol whose requests get no answer), so that trace
//! assembly (`trace/`) can give the request its ids while it is still in flight.
//!
//! It deliberately names no protocol (they are found through `protocols::REGISTRY` and held as
//! `StreamParser`s), does not build spans nor know about processes (`discovery/`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ztrace_common::{
    ids, ConnEvent, ConnRole, DataEventHeader, DataSource, Direction, EventHeader,
};

use crate::{
    collections::{HashMap, HashSet},
    metrics::Metrics,
    protocols::{self, Chunk, Endpoints, Exchange, Options, Side, StreamOpened, StreamParser},
    trace::context::{BornIds, TraceParent},
};

/// Identity of a connection as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
    pub conn_gen: u64,
}

impl ConnInfo {
    /// The addresses an exchange's span shows.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            local: self.local,
            remote: self.remote,
            tls: self.tls,
        }
    }
}

impl ConnKey {
    fn of(h: &EventHeader) -> Self {
        ConnKey {
            tgid: h.tgid,
            fd: h.fd,
            conn_gen: h.conn_gen,
        }
    }
}

/// What the table knows of a connection, handed out with each exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub key: ConnKey,
    pub role: ConnRole,
    /// Addresses as seen by the traced process; IPv4-mapped IPv6 addresses are shown as IPv4.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel `struct sock` address.
    pub sock: u64,
    /// Process name from the kernel (the thread group leader's comm).
    pub comm: String,
    /// Its exchanges are read as plaintext at a TLS library.
    pub tls: bool,
}

enum State {
    /// No payload seen yet.
    Undetected,
    /// Recognized: the protocol's parser.
    Parsed(Box<dyn StreamParser>),
    /// Not a protocol ztrace knows, or ztrace's own traffic: bytes are dropped unread.
    Ignored,
    /// TLS records (ciphertext): never parsed. Plaintext from a TLS probe replaces this state.
    TlsRecords,
}

struct Connection {
    info: ConnInfo,
    state: State,
    last_ts: u64,
    /// Chunks of a connection picked up mid-stream that matched no protocol yet.
    undetected_chunks: u8,
    /// Plaintext was seen at a TLS library: only that stream is parsed, the socket's own
    /// (encrypted) bytes are dropped.
    plaintext: bool,
    /// Direction of the last bytes moved, to see where a request starts.
    last_direction: Option<Direction>,
    /// The span id the kernel gave the last stream opened on a multiplexed connection: the
    /// events of one vectored call (one per iovec segment) all carry the ids of that one call.
    last_born: Option<[u8; 8]>,
}

/// A request started on a connection: its first bytes moved (a client wrote them, a server read
/// them). Exchanges finish later with `request_start_ns` at or after this `ts_ns`. On a
/// multiplexed protocol (HTTP/2) each request starts on its own `stream`, and its exchange names
/// that stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestStart {
    pub key: ConnKey,
    pub side: Side,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The thread that moved the bytes.
    pub tid: u32,
    /// In a Go program, the goroutine they were moved for (low 32 bits; 0: not Go, unknown).
    pub goid: u32,
    pub ts_ns: u64,
    /// Trace context among the request's first bytes (a W3C `traceparent` HTTP header).
    pub traceparent: Option<TraceParent>,
    /// The ids the kernel gave the request (`--propagate`), when it saw the same start.
    pub born: Option<BornIds>,
    /// The stream the request opened, on a multiplexed protocol.
    pub stream: Option<u64>,
}

/// The ids the kernel gave the request a data event starts, if it gave any.
fn born_ids(h: &DataEventHeader) -> Option<BornIds> {
    if h.ids_flags & ids::SET == 0 || h.ids.span_id == [0; 8] || h.ids.trace_id == [0; 16] {
        return None;
    }
    Some(BornIds {
        trace_id: h.ids.trace_id,
        span_id: h.ids.span_id,
        parent_id: (h.ids.parent_id != [0; 8]).then_some(h.ids.parent_id),
        from_wire: h.ids_flags & ids::FROM_WIRE != 0,
    })
}

/// A finished request/response exchange, with the connection it travelled on.
#[derive(Debug)]
pub struct ConnExchange {
    pub conn: ConnInfo,
    pub exchange: Box<dyn Exchange>,
}

/// All open connections of traced processes.
pub struct ConnTable {
    conns: HashMap<ConnKey, Connection>,
    /// (local, remote) → connection, to find the other end of a local connection.
    by_tuple: HashMap<(SocketAddr, SocketAddr), ConnKey>,
    max_conns: usize,
    own_tgid: u32,
    /// The agent's own connections (its OTLP export) as `(local, remote)`: a traced server
    /// connection that is the other end of one of them is the agent talking to a receiver, not
    /// traced. Matched on the whole 4-tuple: the agent's local port alone is soon reused by
    /// other clients' connections (issue 19: those lost their server spans, uncounted).
    own_conns: HashSet<(SocketAddr, SocketAddr)>,
    /// Addresses the agent listens on (the viewer): a traced client connected to one of them
    /// is someone reading the agent's own data, not traced.
    own_listeners: Vec<SocketAddr>,
    scratch: protocols::Exchanges,
    /// What the parsers are told of the agent's settings.
    options: Options,
    starts: Vec<RequestStart>,
    /// Streams a multiplexed protocol's parser opened in the bytes just fed.
    opened: Vec<StreamOpened>,
}

/// The agent's own connections remembered (emptied when full: an entry only matters while
/// the receiver's end of that connection is open).
const MAX_OWN_CONNS: usize = 4096;
/// Payload chunks a connection opened before ztrace started may show before one is recognized
/// (the first ones seen can be answers, or the rest of a message whose start was missed).
const MIDSTREAM_TRIES: u8 = 8;

impl ConnTable {
    pub fn new(max_conns: usize, own_tgid: u32) -> Self {
        ConnTable {
            conns: HashMap::default(),
            by_tuple: HashMap::default(),
            max_conns,
            own_tgid,
            own_conns: HashSet::default(),
            own_listeners: Vec::new(),
            scratch: Vec::new(),
            options: Options::default(),
            starts: Vec::new(),
            opened: Vec::new(),
        }
    }

    /// Connections to `addr`, where the agent listens, are ztrace's own traffic: their client
    /// side (a browser or curl reading the viewer) is not traced.
    pub fn ignore_clients_of(&mut self, addr: SocketAddr) {
        self.own_listeners.push(addr);
    }

    /// Settings the parsers of new connections get.
    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Requests started since the last call, in the order their bytes were handed in.
    pub fn take_starts(&mut self) -> std::vec::Drain<'_, RequestStart> {
        self.starts.drain(..)
    }

    /// Number of connections tracked.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection became known.
    pub fn on_conn(&mut self, ev: &ConnEvent, metrics: &Metrics) {
        let (local, remote) = addresses(ev);
        if ev.header.tgid == self.own_tgid {
            if self.own_conns.len() >= MAX_OWN_CONNS {
                self.own_conns.clear();
            }
            self.own_conns.insert((local, remote));
            return;
        }
        let key = ConnKey::of(&ev.header);
        if self.conns.contains_key(&key) {
            return; // announced twice by racing threads
        }
        if self.conns.len() >= self.max_conns {
            self.evict_oldest(metrics);
        }
        let info = ConnInfo {
            key,
            role: ConnRole::from_u32(ev.role),
            local,
            remote,
            sock: ev.sock,
            comm: comm_string(&ev.comm),
            tls: false,
        };
        self.by_tuple.insert((local, remote), key);
        self.conns.insert(
            key,
            Connection {
                info,
                state: State::Undetected,
                last_ts: ev.header.ts_ns,
                undetected_chunks: 0,
                plaintext: false,
                last_direction: None,
                last_born: None,
            },
        );
    }

    /// True when the other end of this connection (`remote → local`) is a traced connection on
    /// this host.
    pub fn peer_traced(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.by_tuple.contains_key(&(remote, local))
    }

    fn remove(&mut self, key: &ConnKey) -> Option<Connection> {
        let conn = self.conns.remove(key)?;
        let tuple = (conn.info.local, conn.info.remote);
        if self.by_tuple.get(&tuple) == Some(key) {
            self.by_tuple.remove(&tuple);
        }
        Some(conn)
    }

    /// Bytes moved on a connection: the captured `prefix`, then `len - prefix - tail` bytes not
    /// copied, then the `tail`. Finished exchanges are appended to `out`.
    pub fn on_data(
        &mut self,
        header: &DataEventHeader,
        payload: &[u8],
        tail: &[u8],
        metrics: &Metrics,
        out: &mut Vec<ConnExchange>,
    ) {
        let key = ConnKey::of(&header.header);
        let Some(conn) = self.conns.get_mut(&key) else {
            Metrics::inc(&metrics.events_unknown_conn);
            return;
        };
        let direction = if header.direction == Direction::Egress as u32 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let ts_ns = header.header.ts_ns;
        conn.last_ts = ts_ns;
        if DataSource::is_tls(header.source) {
            if !conn.plaintext {
                // From now on this connection is parsed from its plaintext only.
                conn.plaintext = true;
                conn.info.tls = true;
                conn.state = State::Undetected;
                conn.undetected_chunks = 0;
                conn.last_direction = None;
            }
        } else if conn.plaintext {
            return; // ciphertext of a connection whose plaintext the TLS probes give
        }
        let chunk = Chunk {
            direction,
            ts_ns,
            tid: header.header.tid,
            bytes: payload,
        };

        if let State::Undetected = conn.state {
            if payload.is_empty() {
                return; // a length without bytes (sendfile) says nothing about the protocol
            }
            let own = self
                .own_conns
                .contains(&(conn.info.remote, conn.info.local))
                || (conn.info.role != ConnRole::Server
                    && to_listener(&self.own_listeners, conn.info.local, conn.info.remote));
            conn.state = if own {
                Metrics::inc(&metrics.conns_own);
                State::Ignored
            } else if !conn.plaintext && is_tls_record(payload) {
                Metrics::inc(&metrics.conns_tls_records);
                State::TlsRecords
            } else {
                match protocols::detect(&chunk, &self.options) {
                    Some(parser) => State::Parsed(parser),
                    // Picked up mid-stream: the first bytes seen may be an answer (a database
                    // client reading results) rather than a request; wait for one. TLS
                    // plaintext can start mid-stream too: a program whose TLS library was probed
                    // after its connection's first writes (an HTTP/2 client's preface).
                    None if (conn.info.role == ConnRole::Unknown || conn.plaintext)
                        && conn.undetected_chunks < MIDSTREAM_TRIES =>
                    {
                        conn.undetected_chunks += 1;
                        return;
                    }
                    None => {
                        Metrics::inc(&metrics.conns_unrecognized);
                        State::Ignored
                    }
                }
            };
        }

        let State::Parsed(parser) = &mut conn.state else {
            return;
        };
        let side = parser.side();
        let multiplexed = parser.multiplexed();
        if !multiplexed
            && direction == side.request_direction()
            && (conn.last_direction != Some(direction) || parser.unanswered())
        {
            self.starts.push(RequestStart {
                key,
                side,
                local: conn.info.local,
                remote: conn.info.remote,
                tid: header.header.tid,
                goid: header.goid,
                ts_ns,
                traceparent: parser.trace_context(payload),
                born: born_ids(header),
                stream: None,
            });
        }
        conn.last_direction = Some(direction);

        let missing =
            u64::from(header.len).saturating_sub(payload.len() as u64 + tail.len() as u64);
        if let Err(error) = parser.on_data(&chunk, missing, tail, &mut self.scratch) {
            Metrics::inc(&metrics.parse_errors);
            tracing::debug!(%error, tgid = key.tgid, fd = key.fd, "bytes a parser could not read");
        }
        if let Some((mut next, rest)) = parser.take_successor() {
            // The connection switched protocols (an HTTP/1.1 upgrade to h2c): the rest is the
            // successor's.
            let rest_chunk = Chunk {
                bytes: &rest,
                ..chunk
            };
            if let Err(error) = next.on_data(&rest_chunk, 0, &[], &mut self.scratch) {
                Metrics::inc(&metrics.parse_errors);
                tracing::debug!(%error, tgid = key.tgid, fd = key.fd, "bytes a parser could not read");
            }
            *parser = next;
        }
        if parser.multiplexed() {
            // Each stream opened is a request start; the kernel's ids (one request per write
            // batch to it) go to the first.
            parser.take_opened(&mut self.opened);
            let mut born = born_ids(header).filter(|b| conn.last_born != Some(b.span_id));
            for o in self.opened.drain(..) {
                if let Some(b) = born {
                    conn.last_born = Some(b.span_id);
                }
                self.starts.push(RequestStart {
                    key,
                    side,
                    local: conn.info.local,
                    remote: conn.info.remote,
                    tid: header.header.tid,
                    goid: header.goid,
                    ts_ns: o.ts_ns,
                    traceparent: o.traceparent,
                    born: born.take(),
                    stream: Some(o.stream),
                });
            }
        }
        Metrics::add(&metrics.exchanges_lost, parser.take_lost());
        Metrics::add(&metrics.exchanges_fields_unknown, parser.take_unknown());
        if parser.stopped() {
            conn.state = State::Ignored;
        }
        for exchange in self.scratch.drain(..) {
            out.push(ConnExchange {
                conn: conn.info.clone(),
                exchange,
            });
        }
    }

    /// The process closed its fd: responses delimited by close end here.
    pub fn on_close(
        &mut self,
        header: &EventHeader,
        metrics: &Metrics,
        out: &mut Vec<ConnExchange>,
    ) {
        let key = ConnKey::of(header);
        let Some(mut conn) = self.remove(&key) else {
            return;
        };
        self.finish(&mut conn, header.ts_ns, metrics, out);
    }

    /// Drops connections idle since before `cutoff_ts` (processes that died without closing).
    pub fn sweep(&mut self, cutoff_ts: u64, metrics: &Metrics) {
        let by_tuple = &mut self.by_tuple;
        self.conns.retain(|k, c| {
            let keep = c.last_ts >= cutoff_ts;
            if !keep {
                // Trace assembly forgot these requests' ids long ago: spans made now could
                // not join their traces, so they are counted as lost instead.
                drop_connection(c, metrics);
                let tuple = (c.info.local, c.info.remote);
                if by_tuple.get(&tuple) == Some(k) {
                    by_tuple.remove(&tuple);
                }
            }
            keep
        });
    }

    /// Closes the connections of processes that exited without closing them (killed, or
    /// exiting with sockets open: the kernel closes those fds without a `close` call, so no
    /// close event comes), whatever their state (one whose protocol was not recognized yet
    /// would otherwise stay until the 10-minute idle sweep). Connections idle since before
    /// `idle_before` (kernel time) whose process `alive` says is gone are finished as a close
    /// at `ts_ns` would finish them: their unanswered requests become exchanges ending at
    /// `ts_ns` (when the exit was noticed: at most a housekeeping tick after it). Returns the
    /// keys closed, for trace assembly.
    pub fn close_exited(
        &mut self,
        idle_before: u64,
        ts_ns: u64,
        mut alive: impl FnMut(u32) -> bool,
        metrics: &Metrics,
        out: &mut Vec<ConnExchange>,
    ) -> Vec<ConnKey> {
        let mut checked: HashMap<u32, bool> = HashMap::default();
        let gone: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_ts < idle_before)
            .map(|(k, _)| *k)
            .filter(|k| !*checked.entry(k.tgid).or_insert_with(|| alive(k.tgid)))
            .collect();
        for key in &gone {
            if let Some(mut conn) = self.remove(key) {
                let at = ts_ns.max(conn.last_ts);
                self.finish(&mut conn, at, metrics, out);
            }
        }
        gone
    }

    /// Forgets every connection of a process that exited (what waited on them is counted lost).
    pub fn forget_process(&mut self, tgid: u32, metrics: &Metrics) {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for key in keys {
            if let Some(mut conn) = self.remove(&key) {
                drop_connection(&mut conn, metrics);
            }
        }
    }

    fn finish(
        &mut self,
        conn: &mut Connection,
        ts_ns: u64,
        metrics: &Metrics,
        out: &mut Vec<ConnExchange>,
    ) {
        if let State::Parsed(parser) = &mut conn.state {
            let unanswered = parser.on_close(ts_ns, &mut self.scratch);
            Metrics::add(&metrics.exchanges_unanswered, unanswered as u64);
            Metrics::add(&metrics.exchanges_lost, parser.take_lost());
            Metrics::add(&metrics.exchanges_fields_unknown, parser.take_unknown());
            for exchange in self.scratch.drain(..) {
                out.push(ConnExchange {
                    conn: conn.info.clone(),
                    exchange,
                });
            }
        }
    }

    /// Makes room by dropping the least recently active eighth of the table (at least one),
    /// so that a flood of new connections costs O(log n) each, not a scan each.
    fn evict_oldest(&mut self, metrics: &Metrics) {
        let mut by_age: Vec<(u64, ConnKey)> =
            self.conns.iter().map(|(k, c)| (c.last_ts, *k)).collect();
        let n = (by_age.len() / 8).max(1).min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable(n - 1);
        for (_, key) in &by_age[..n] {
            if let Some(mut conn) = self.remove(key) {
                drop_connection(&mut conn, metrics);
            }
        }
        Metrics::add(&metrics.conns_evicted, n as u64);
    }
}

/// A connection leaves the table without its close: every request still waiting on it (and
/// every one its parser dropped) is counted as lost (`exchanges_lost`).
fn drop_connection(conn: &mut Connection, metrics: &Metrics) {
    if let State::Parsed(parser) = &mut conn.state {
        let mut waiting = Vec::new();
        parser.on_close(conn.last_ts, &mut waiting);
        Metrics::add(
            &metrics.exchanges_lost,
            waiting.len() as u64 + parser.take_lost(),
        );
    }
}

/// True when `bytes` start with a TLS record header: content type change_cipher_spec (20),
/// alert (21), handshake (22) or application_data (23), then version 3.0 to 3.4.
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, 0..=4, ..])
}

/// A kernel `comm` (NUL-padded) as text.
pub fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// True when a connection from `local` to `remote` goes to one of the `listeners` (the agent's
/// listening sockets). A wildcard listener (`0.0.0.0:9400`) is reached on its port at a loopback
/// address or at the connection's own local address (this host).
fn to_listener(listeners: &[SocketAddr], local: SocketAddr, remote: SocketAddr) -> bool {
    let remote_ip = remote.ip().to_canonical();
    listeners.iter().any(|l| {
        l.port() == remote.port()
            && if l.ip().is_unspecified() {
                remote_ip.is_loopback() || remote_ip == local.ip().to_canonical()
            } else {
                l.ip().to_canonical() == remote_ip
            }
    })
}

/// The 4-tuple of a connection event, with IPv4-mapped IPv6 addresses shown as IPv4.
fn addresses(ev: &ConnEvent) -> (SocketAddr, SocketAddr) {
    const AF_INET: u32 = 2;
    let ip = |raw: &[u8; 16]| -> IpAddr {
        if ev.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            let v6 = Ipv6Addr::from(*raw);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
    };
    (
        SocketAddr::new(ip(&ev.local_addr), ev.local_port),
        SocketAddr::new(ip(&ev.remote_addr), ev.remote_port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{http1::HttpExchange, postgres::PgExchange};
    use ztrace_common::EventKind;

    fn as_http(ex: &ConnExchange) -> &HttpExchange {
        ex.exchange
            .as_any()
            .downcast_ref()
            .expect("an HTTP exchange")
    }

    fn as_postgres(ex: &ConnExchange) -> &PgExchange {
        ex.exchange
            .as_any()
            .downcast_ref()
            .expect("a PostgreSQL exchange")
    }

    fn header(kind: EventKind, tgid: u32, ts: u64) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tgid,
            tid: tgid,
            fd: 5,
            ts_ns: ts,
            conn_gen: 1,
        }
    }

    fn conn_event(
        tgid: u32,
        role: ConnRole,
        family: u32,
        local: [u8; 16],
        remote: [u8; 16],
    ) -> ConnEvent {
        ConnEvent {
            header: header(EventKind::Conn, tgid, 1),
            role: role as u32,
            family,
            local_addr: local,
            remote_addr: remote,
            local_port: 8000,
            remote_port: 40000,
            _pad: 0,
            sock: 0xffff_8888,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    fn data(tgid: u32, ts: u64, direction: Direction, bytes: &[u8]) -> DataEventHeader {
        DataEventHeader {
            header: header(EventKind::Data, tgid, ts),
            direction: direction as u32,
            source: 1,
            len: bytes.len() as u32,
            captured: bytes.len() as u32,
            tail: 0,
            goid: 0,
            ids_flags: 0,
            _pad: 0,
            ids: ztrace_common::RequestIds::default(),
        }
    }

    #[test]
    fn addresses_unmap_ipv4_mapped_ipv6() {
        let mapped = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        let ev = conn_event(
            1,
            ConnRole::Server,
            10,
            mapped,
            Ipv6Addr::LOCALHOST.octets(),
        );
        let (local, remote) = addresses(&ev);
        assert_eq!(local, "127.0.0.1:8000".parse().expect("addr"));
        assert_eq!(remote, "[::1]:40000".parse().expect("addr"));
    }

    #[test]
    fn server_exchange_from_split_reads_and_writes() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Server,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        let req = b"GET /hello?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let (a, b) = req.split_at(10);
        table.on_data(
            &data(7, 10, Direction::Ingress, a),
            a,
            &[],
            &metrics,
            &mut out,
        );
        table.on_data(
            &data(7, 11, Direction::Ingress, b),
            b,
            &[],
            &metrics,
            &mut out,
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        table.on_data(
            &data(7, 20, Direction::Egress, resp),
            resp,
            &[],
            &metrics,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let ex = &out[0];
        let http = as_http(ex);
        assert_eq!(ex.conn.comm, "python3");
        assert_eq!(ex.conn.role, ConnRole::Server);
        assert_eq!(http.request.method, "GET");
        assert_eq!(http.response().status, 200);
        assert_eq!(http.request_start_ns, 10);
        assert_eq!(http.response_end_ns, 20);
    }

    #[test]
    fn postgres_server_connection_from_its_startup_packet() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Server,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        let mut feed = |ts, direction, bytes: &[u8]| {
            table.on_data(
                &data(7, ts, direction, bytes),
                bytes,
                &[],
                &metrics,
                &mut out,
            );
        };
        feed(1, Direction::Ingress, b"\0\0\0\x08\x04\xd2\x16\x2f");
        feed(2, Direction::Egress, b"N");
        feed(3, Direction::Ingress, b"\0\0\0\x12\0\x03\0\0user\0app\0\0");
        feed(4, Direction::Egress, b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I");
        feed(5, Direction::Ingress, b"Q\0\0\0\x0dSELECT 1\0");
        feed(6, Direction::Egress, b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I");
        assert_eq!(out.len(), 1, "{out:?}");
        let pg = as_postgres(&out[0]);
        assert_eq!(pg.side, protocols::Side::Server);
        assert_eq!(pg.query.as_deref(), Some("SELECT 1"));
        assert_eq!((pg.request_start_ns, pg.response_end_ns), (5, 6));
        assert_eq!(
            metrics
                .parse_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn postgres_switching_to_tls_is_ignored_from_then_on() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Client,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        let ssl = b"\0\0\0\x08\x04\xd2\x16\x2f";
        table.on_data(
            &data(7, 1, Direction::Egress, ssl),
            ssl,
            &[],
            &metrics,
            &mut out,
        );
        table.on_data(
            &data(7, 2, Direction::Ingress, b"S"),
            b"S",
            &[],
            &metrics,
            &mut out,
        );
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        table.on_data(
            &data(7, 3, Direction::Egress, hello),
            hello,
            &[],
            &metrics,
            &mut out,
        );
        assert!(out.is_empty());
        let conn = table.conns.values().next().expect("connection kept");
        assert!(matches!(conn.state, State::Ignored));
        assert_eq!(
            metrics
                .parse_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn a_connection_picked_up_mid_stream_is_recognized_at_its_next_request() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Unknown,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        // The tail of an answer to a query sent before ztrace started, then a new query.
        let answer = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
        table.on_data(
            &data(7, 1, Direction::Ingress, answer),
            answer,
            &[],
            &metrics,
            &mut out,
        );
        let query = b"Q\0\0\0\x0dSELECT 2\0";
        table.on_data(
            &data(7, 2, Direction::Egress, query),
            query,
            &[],
            &metrics,
            &mut out,
        );
        table.on_data(
            &data(7, 3, Direction::Ingress, answer),
            answer,
            &[],
            &metrics,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let pg = as_postgres(&out[0]);
        assert_eq!(
            (pg.side, pg.query.as_deref()),
            (protocols::Side::Client, Some("SELECT 2"))
        );
        assert_eq!(
            metrics
                .conns_unrecognized
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn every_publish_of_a_nats_client_starts_a_request_of_its_own() {
        // Publishing gets no answer: the second PUB follows the first with nothing read in
        // between, written by another thread (another request's handler). Each needs its own
        // start, with its own thread, for its PRODUCER span's thread link.
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Client,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        let mut feed = |tid: u32, ts, direction, bytes: &[u8]| {
            let mut h = data(7, ts, direction, bytes);
            h.header.tid = tid;
            table.on_data(&h, bytes, &[], &metrics, &mut out);
        };
        feed(7, 1, Direction::Ingress, b"INFO {\"server_id\":\"x\"}\r\n");
        feed(7, 2, Direction::Egress, b"CONNECT {}\r\nPING\r\n");
        feed(7, 3, Direction::Ingress, b"PONG\r\n");
        feed(8, 10, Direction::Egress, b"PUB items.viewed 2\r\n{}\r\n");
        feed(9, 20, Direction::Egress, b"PUB items.viewed 3\r\n{ }\r\n");
        assert_eq!(out.len(), 2, "two messages: {out:?}");
        let starts: Vec<(u32, u64)> = table.take_starts().map(|s| (s.tid, s.ts_ns)).collect();
        assert_eq!(starts, vec![(7, 2), (8, 10), (9, 20)]);
    }

    #[test]
    fn garbage_is_ignored_and_counted() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Client,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        // (A TLS handshake is recognized as such: see tls_connection_is_parsed_from_its_plaintext_only.)
        let junk = b"\x01\x02\x03 no protocol \xfc\x03\x03";
        table.on_data(
            &data(7, 10, Direction::Egress, junk),
            junk,
            &[],
            &metrics,
            &mut out,
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        table.on_data(
            &data(7, 11, Direction::Ingress, resp),
            resp,
            &[],
            &metrics,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(
            metrics
                .conns_unrecognized
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn own_export_traffic_is_ignored_by_its_whole_4_tuple() {
        // The agent (tgid 999) connected from 127.0.0.1:40000 to a receiver on 4318.
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        let mut own = conn_event(
            999,
            ConnRole::Client,
            2,
            v4([127, 0, 0, 1]),
            v4([127, 0, 0, 1]),
        );
        (own.local_port, own.remote_port) = (40000, 4318);
        table.on_conn(&own, &metrics);
        // A server (tgid 7) on `port` accepts a connection from 127.0.0.1:40000 (generation
        // `gen`) and answers one request on it: the exchanges and request starts it gives.
        let mut serve = |port: u16, gen: u64| {
            let mut server = conn_event(
                7,
                ConnRole::Server,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            );
            (server.local_port, server.header.conn_gen) = (port, gen);
            table.on_conn(&server, &metrics);
            let mut out = Vec::new();
            let mut data = |ts, direction, bytes: &[u8]| {
                let mut h = data(7, ts, direction, bytes);
                h.header.conn_gen = gen;
                table.on_data(&h, bytes, &[], &metrics, &mut out);
            };
            data(
                10,
                Direction::Ingress,
                b"POST /v1/traces HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            );
            data(
                11,
                Direction::Egress,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            );
            (out.len(), table.take_starts().count())
        };
        // The receiver's end of the agent's connection: not traced.
        assert_eq!(serve(4318, 1), (0, 0));
        assert_eq!(
            metrics.conns_own.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Issue 19: another client got port 40000 for a connection to a server on 8000. Taken
        // for the agent's own traffic by its port alone, it lost its server span, uncounted.
        assert_eq!(serve(8000, 2), (1, 1));
        assert_eq!(
            metrics.conns_own.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn connections_of_a_process_gone_without_closing_them_are_closed() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        let client = |tgid| {
            let mut ev = conn_event(
                tgid,
                ConnRole::Client,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            );
            ev.header.tgid = tgid;
            ev
        };
        let mut out = Vec::new();
        let req = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
        for tgid in [7, 8] {
            table.on_conn(&client(tgid), &metrics);
            table.on_data(
                &data(tgid, 10, Direction::Egress, req),
                req,
                &[],
                &metrics,
                &mut out,
            );
        }
        // Process 7 was killed while waiting for the response; 8 still runs.
        let closed = table.close_exited(1_000, 5_000, |tgid| tgid != 7, &metrics, &mut out);
        assert_eq!(closed.iter().map(|k| k.tgid).collect::<Vec<_>>(), [7]);
        assert_eq!(out.len(), 1);
        assert!(!out[0].exchange.answered());
        assert_eq!(as_http(&out[0]).response_end_ns, 5_000);
        assert_eq!(table.len(), 1);
        assert_eq!(
            metrics
                .exchanges_unanswered
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Activity after `idle_before`: not looked at.
        assert!(table
            .close_exited(5, 6_000, |_| false, &metrics, &mut out)
            .is_empty());
    }

    #[test]
    fn clients_of_the_viewer_are_ignored() {
        let metrics = Metrics::default();
        let req = b"GET /api/traces HTTP/1.1\r\nHost: x\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";
        // A client (tgid 7) connected to 127.0.0.1:8000 (conn_event's remote port is the local one
        // here: swap them to make the client's view).
        let client_conn = |remote: [u8; 4]| {
            let mut ev = conn_event(7, ConnRole::Client, 2, v4([127, 0, 0, 1]), v4(remote));
            (ev.local_port, ev.remote_port) = (40000, 9400);
            ev
        };
        let exchanges = |listener: &str, remote: [u8; 4]| {
            let mut table = ConnTable::new(16, 999);
            table.ignore_clients_of(listener.parse().expect("addr"));
            table.on_conn(&client_conn(remote), &metrics);
            let mut out = Vec::new();
            table.on_data(
                &data(7, 10, Direction::Egress, req),
                req,
                &[],
                &metrics,
                &mut out,
            );
            table.on_data(
                &data(7, 11, Direction::Ingress, resp),
                resp,
                &[],
                &metrics,
                &mut out,
            );
            out.len()
        };
        assert_eq!(exchanges("127.0.0.1:9400", [127, 0, 0, 1]), 0);
        assert_eq!(exchanges("0.0.0.0:9400", [127, 0, 0, 1]), 0);
        assert_eq!(exchanges("[::]:9400", [127, 0, 0, 1]), 0);
        // Another port, or another host's agent on the same port: traced.
        assert_eq!(exchanges("127.0.0.1:9401", [127, 0, 0, 1]), 1);
        assert_eq!(exchanges("0.0.0.0:9400", [10, 0, 0, 9]), 1);
        assert_eq!(exchanges("127.0.0.2:9400", [127, 0, 0, 1]), 1);
    }

    #[test]
    fn tls_connection_is_parsed_from_its_plaintext_only() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Server,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        // The handshake's ClientHello, as the socket carries it: recognized as TLS, not parsed.
        let hello = [22u8, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
        table.on_data(
            &data(7, 5, Direction::Ingress, &hello),
            &hello,
            &[],
            &metrics,
            &mut out,
        );
        assert_eq!(
            metrics
                .conns_tls_records
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            metrics
                .conns_unrecognized
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let tls = |mut h: DataEventHeader| {
            h.source = DataSource::Tls as u32;
            h
        };
        let req = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n";
        table.on_data(
            &tls(data(7, 10, Direction::Ingress, req)),
            req,
            &[],
            &metrics,
            &mut out,
        );
        // Ciphertext of the same connection arriving after the plaintext is dropped unread,
        // even when it happens to look like HTTP.
        let fake = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        table.on_data(
            &data(7, 11, Direction::Egress, fake),
            fake,
            &[],
            &metrics,
            &mut out,
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        table.on_data(
            &tls(data(7, 12, Direction::Egress, resp)),
            resp,
            &[],
            &metrics,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let h = as_http(&out[0]);
        assert_eq!(
            (h.request.target.as_str(), h.response().status),
            ("/secret", 200)
        );
    }

    #[test]
    fn tls_plaintext_starting_mid_stream_is_recognized_at_a_later_chunk() {
        // A Go HTTP/2 client probed after its preface: the first plaintext is a WINDOW_UPDATE,
        // then a request's HEADERS (`:method GET`, `:scheme https`, `:path /`).
        let metrics = Metrics::default();
        let mut table = ConnTable::new(16, 999);
        table.on_conn(
            &conn_event(
                7,
                ConnRole::Client,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            ),
            &metrics,
        );
        let mut out = Vec::new();
        let tls = |mut h: DataEventHeader| {
            h.source = DataSource::Tls as u32;
            h
        };
        let window_update = [0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        table.on_data(
            &tls(data(7, 10, Direction::Egress, &window_update)),
            &window_update,
            &[],
            &metrics,
            &mut out,
        );
        let headers = [0, 0, 3, 1, 5, 0, 0, 0, 3, 0x82, 0x87, 0x84];
        table.on_data(
            &tls(data(7, 11, Direction::Egress, &headers)),
            &headers,
            &[],
            &metrics,
            &mut out,
        );
        let answer = [0, 0, 1, 1, 5, 0, 0, 0, 3, 0x88];
        table.on_data(
            &tls(data(7, 12, Direction::Ingress, &answer)),
            &answer,
            &[],
            &metrics,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            metrics
                .conns_unrecognized
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn unknown_connection_data_is_counted_and_table_is_bounded() {
        let metrics = Metrics::default();
        let mut table = ConnTable::new(2, 999);
        let mut out = Vec::new();
        table.on_data(
            &data(7, 10, Direction::Egress, b"x"),
            b"x",
            &[],
            &metrics,
            &mut out,
        );
        assert_eq!(
            metrics
                .events_unknown_conn
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        for gen in 0..5u64 {
            let mut ev = conn_event(
                7,
                ConnRole::Client,
                2,
                v4([127, 0, 0, 1]),
                v4([127, 0, 0, 1]),
            );
            ev.header.conn_gen = gen;
            ev.header.ts_ns = gen;
            table.on_conn(&ev, &metrics);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(
            metrics
                .conns_evicted
                .load(std::sync::atomic::Ordering::Relaxed),
            3,
            "one per insert into a full table of 2"
        );
    }
}
