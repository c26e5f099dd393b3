//! Request ids born in the kernel, so that the trace context a request carries on the wire is
//! known at the moment it is sent (the agent's linking runs ~100 ms behind).
//!
//! Only connections whose role the kernel saw (`connect`/`accept` while ztrace runs) take part;
//! a request starts where the agent's connection table says it does: the first bytes in the
//! request direction after bytes in the other one.
//! - A **server** request starts at the first read after a write (or the first read): its span
//!   id is drawn here; its trace id and parent come from the context option that the client's
//!   host wrote on the request's segments (`sockops`, `RX_CTX`), else a new trace id — unless the
//!   request (plaintext HTTP/1, or its TLS plaintext) carries a `traceparent` of its own that
//!   says otherwise: then from that header (`on_request_head`, in a tail call). The
//!   thread (in a Go program, the goroutine) that read it now serves it (`UNIT_CTX`) until the
//!   connection's next write.
//! - A **client** request starts at the first write after a read (or the first write), at the
//!   syscall's *entry*, before its segments leave: its span id is drawn here; its trace id and
//!   parent are those of the server request the writing thread (goroutine) serves, else a new
//!   trace. The context is put in `TX_CTX` under the connection's 4-tuple, where `sockops`
//!   writes it into each segment's TCP options, until the client reads the answer. Between two
//!   loopback sockets (`--propagate=on`, not `all`) it goes straight into the receiving
//!   socket's `RX_CTX` entry instead: the other end is on this host, so no segment needs it.
//!
//! Both kinds are reported in the data event that starts the request (`DataEventHeader::ids`),
//! and the agent puts exactly those ids on the span. TLS plaintext takes part through its probes:
//! OpenSSL's calls pass `in_tls_call` to the syscalls made inside them (`tls::openssl`), Go's
//! `crypto/tls` calls start requests themselves (`tls::go`); a TLS socket's own syscalls outside
//! those calls (the handshake once the socket is known as TLS, the ciphertext) take no part;
//! calls that make no syscalls (memory BIOs: Node.js) start requests at their plaintext
//! (`tls::zt_tls_traceparent`, `tls::openssl::membio_write_start`). Not done here: connections
//! opened before ztrace started.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_get_prandom_u32},
    macros::map,
    maps::LruHashMap,
};
use ztrace_common::{ids, propagate, ConnRole, Counter, Direction, RequestIds};

use crate::{
    config::settings,
    go,
    maps::{call, count, SockEntry},
    sock::{self, FlowKey},
    traceparent,
};

const NONE: u32 = 0;
const EGRESS: u32 = Direction::Egress as u32;
const INGRESS: u32 = Direction::Ingress as u32;

/// A connection whose role is known, and where its current request stands.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PropConn {
    pub conn_gen: u64,
    /// `ConnRole::Client` or `ConnRole::Server`.
    pub role: u32,
    /// Direction of the last bytes: `NONE`, `EGRESS`, `INGRESS`.
    pub last: u32,
    /// The current request's ids (set at its start).
    pub ids: RequestIds,
    /// `ztrace_common::ids` flags of `ids`.
    pub flags: u32,
    /// 1 once the connection's bytes go through OpenSSL calls: from then on only the syscalls
    /// made inside those calls count (their direction is the plaintext's), not the handshake's.
    pub tls: u32,
    /// 1 when the connection's first bytes were HTTP/2's client preface (`PRI * HTTP/2.0`):
    /// its requests are streams, which do not take turns with their answers (`h2` rules).
    pub h2: u32,
    /// Reads seen, up to [`PREFACE_READS`]: a server may write first (grpc-go's settings), so the
    /// preface is looked for in the first reads, not only before any byte moved.
    pub reads: u32,
    /// 1 while the server request that started here is counted in its unit's
    /// `Serving::in_flight` (until the answer begins or the fd closes).
    pub counted: u32,
    /// The unit of work whose read started the current server request.
    pub unit: UnitKey,
}

/// The reads of a server connection in which HTTP/2's preface is looked for.
const PREFACE_READS: u32 = 2;

/// Connections opened by `connect`/`accept` while ztrace runs: key `tgid << 32 | fd`. LRU,
/// 65536 entries (a forgotten connection's requests get no kernel ids; the agent links them
/// as before). Full → `Counter::PropagateMapFull`.
#[map(name = "PROP_CONNS")]
static PROP_CONNS: LruHashMap<u64, PropConn> = LruHashMap::with_max_entries(65536, 0);

/// A unit of work: a thread, or in a Go program a goroutine.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnitKey {
    pub tgid: u32,
    /// 1 for a goroutine, 0 for a thread.
    pub go: u32,
    pub id: u64,
}

/// The server request a unit of work serves: its connection (`tgid << 32 | fd`, whose
/// `PROP_CONNS` entry holds the request's ids) and that connection's generation. The unit
/// serves the request while that connection has not written since.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Serving {
    pub conn: u64,
    pub conn_gen: u64,
    /// HTTP/1-style server requests the unit started that have not been answered yet (on any
    /// of its connections). More than one: an event loop serving several at once — which of
    /// them a call is for cannot be known here, so its calls carry none of their contexts.
    pub in_flight: u32,
    pub _pad: u32,
}

/// Server request served by each unit of work. LRU, 16384 entries.
#[map(name = "UNIT_CTX")]
static UNIT_CTX: LruHashMap<UnitKey, Serving> = LruHashMap::with_max_entries(16384, 0);

/// The request a goroutine was started for: the trace id and span id of the server request its
/// starter served at the `go` statement (`on_go_spawn`), for the calls it makes while it serves
/// nothing itself (grpc-go and Go's HTTP/2 servers read a stream on one goroutine and run its
/// handler on a new one). LRU, 16384 entries.
#[map(name = "UNIT_STARTED_FOR")]
static UNIT_STARTED_FOR: LruHashMap<UnitKey, WireCtx> = LruHashMap::with_max_entries(16384, 0);

/// The context a TCP option carries: trace id and the sender's span id.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WireCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// Client requests in flight, by their connection's 4-tuple: what `sockops` writes into their
/// segments. LRU, 65536 entries.
#[map(name = "TX_CTX")]
pub static TX_CTX: LruHashMap<FlowKey, WireCtx> = LruHashMap::with_max_entries(65536, 0);

/// A context received in a TCP option, and whether a server request took it already.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RxCtx {
    pub ctx: WireCtx,
    /// 1 once a server request started with it: the client's later segments (its ACKs of the
    /// answer, sent before it reads it) repeat the same context and must not hand it to the
    /// connection's next request. [`SPOILED`] on an HTTP/2 connection: it came `crowded`.
    pub taken: u32,
    /// 1 when it replaced a context no read had taken yet: a read that gets both cannot tell
    /// which bytes came with which (used on HTTP/2 connections).
    pub crowded: u32,
}

/// `RxCtx::taken` of a context that came crowded: never given to a stream.
pub const SPOILED: u32 = 2;

/// Where the bytes of a call are: `call` as in `maps::call` (buffer, iovec array or msghdr at
/// `ptr`; `len`: a plain buffer's bytes, an iovec array's entries), read only for a
/// connection's first bytes and for writes on HTTP/2 client connections.
#[derive(Clone, Copy)]
pub struct Head {
    pub call: u32,
    pub ptr: u64,
    pub len: u64,
}

/// HTTP/2 frames looked at in one buffer, and segments of a vectored write, for a `HEADERS`
/// frame.
const H2_FRAMES: u32 = 4;
const H2_SEGMENTS: u64 = 4;
const H2_HEADERS: u8 = 1;

/// Whether a write on an HTTP/2 client connection may open a stream: a `HEADERS` frame among
/// its first frames. A write that opens none (flow control, pings, settings, the rest of a
/// body) keeps the context of the stream before, so that the receiver does not get two
/// contexts where one stream starts (`RxCtx::crowded`). Vectored writes are walked segment by
/// segment while each holds whole frames (gRPC C-core writes a small frame in a segment of its
/// own); a walk that cannot tell says it may.
#[inline(always)]
fn may_open_stream(head: Head) -> bool {
    if head.call == call::PLAIN {
        return walk_frames(head.ptr, head.len) != Frames::Clean;
    }
    let Some((iov, count)) = iovec_array(head) else { return true };
    for i in 0..H2_SEGMENTS {
        if i >= count {
            return false;
        }
        // SAFETY: user memory read through the helper, which checks the address.
        let Ok([base, len]) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) }) else {
            return true;
        };
        if walk_frames(base, len) != Frames::Clean {
            return true;
        }
    }
    count > H2_SEGMENTS
}

/// What [`walk_frames`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frames {
    /// Whole frames, none of them `HEADERS`, ending where the buffer ends.
    Clean,
    Headers,
    /// A frame that goes on past the buffer, more frames than looked at, or unreadable.
    Unknown,
}

/// The HTTP/2 frames of `len` bytes at `base`, up to [`H2_FRAMES`] of them.
#[inline(always)]
fn walk_frames(base: u64, len: u64) -> Frames {
    let mut off: u64 = 0;
    for _ in 0..H2_FRAMES {
        if off == len {
            return Frames::Clean;
        }
        if off + 9 > len {
            return Frames::Unknown;
        }
        // SAFETY: user memory read through the helper, which checks the address.
        let Ok(frame) = (unsafe { bpf_probe_read_user((base + off) as *const [u8; 4]) }) else {
            return Frames::Unknown;
        };
        if frame[3] == H2_HEADERS {
            return Frames::Headers;
        }
        off += 9 + ((frame[0] as u64) << 16 | (frame[1] as u64) << 8 | frame[2] as u64);
    }
    if off == len {
        Frames::Clean
    } else {
        Frames::Unknown
    }
}

/// HTTP/2's client preface begins `PRI ` (little-endian).
const PREFACE: u32 = u32::from_le_bytes(*b"PRI ");

/// A vectored call's iovec array and its entries (`readv`/`writev`: the arguments;
/// `recvmsg`/`sendmsg`: `msg_iov`, `msg_iovlen` of the `user_msghdr`).
#[inline(always)]
fn iovec_array(head: Head) -> Option<(u64, u64)> {
    match head.call {
        call::VECTORED => Some((head.ptr, head.len)),
        // SAFETY: user memory read through the helper, which checks the address.
        call::MSG => unsafe { bpf_probe_read_user(head.ptr as *const [u64; 4]) }.ok().map(|m| (m[2], m[3])),
        _ => None,
    }
}

/// Whether the call's bytes begin with HTTP/2's client preface.
#[inline(always)]
fn is_preface(head: Head) -> bool {
    let first = match head.call {
        call::PLAIN => Some(head.ptr),
        // SAFETY: user memory read through the helper, which checks the address.
        _ => iovec_array(head).and_then(|(iov, _)| unsafe { bpf_probe_read_user(iov as *const u64) }.ok()),
    };
    first.is_some_and(|a| {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(a as *const u32) }.ok() == Some(PREFACE)
    })
}

/// Contexts received, by the receiving connection's 4-tuple (its own view: local = this
/// host). LRU, 65536 entries.
#[map(name = "RX_CTX")]
pub static RX_CTX: LruHashMap<FlowKey, RxCtx> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
pub fn enabled() -> bool {
    settings().propagate != 0
}

#[inline(always)]
fn random_u32() -> u32 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn random_span_id() -> [u8; 8] {
    let id = ((random_u32() as u64) << 32 | random_u32() as u64) | 1;
    id.to_le_bytes()
}

#[inline(always)]
fn random_trace_id() -> [u8; 16] {
    let hi = (random_u32() as u64) << 32 | random_u32() as u64;
    let lo = ((random_u32() as u64) << 32 | random_u32() as u64) | 1;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&hi.to_le_bytes());
    id[8..].copy_from_slice(&lo.to_le_bytes());
    id
}

#[inline(always)]
fn unit_key(tgid: u32, tid: u32) -> UnitKey {
    let goid = go::acting_goid(tgid);
    if goid != 0 {
        UnitKey { tgid, go: 1, id: goid as u64 }
    } else {
        UnitKey { tgid, go: 0, id: tid as u64 }
    }
}

#[inline(always)]
fn fresh_conn(conn_gen: u64, role: u32) -> PropConn {
    PropConn {
        conn_gen,
        role,
        last: NONE,
        ids: RequestIds::default(),
        flags: 0,
        tls: 0,
        h2: 0,
        reads: 0,
        counted: 0,
        unit: UnitKey { tgid: 0, go: 0, id: 0 },
    }
}

/// After `connect` or `accept` returned: the connection takes part, with its role.
#[inline(always)]
pub fn on_open(tgid: u32, fd: i32, role: ConnRole) {
    if !enabled() {
        return;
    }
    let k = sock::key(tgid, fd);
    let Some(entry) = sock::cached(k) else { return };
    if entry.is_tcp != 1 {
        return;
    }
    let conn = fresh_conn(entry.conn_gen, role as u32);
    if PROP_CONNS.insert(&k, &conn, 0).is_err() {
        count(Counter::PropagateMapFull);
    }
    let _ = SOCK_ROLES.insert(&entry.sock, &(role as u32), 0);
}

/// The role of each socket opened by `connect`/`accept` while ztrace runs, by `struct sock`
/// address: a process that inherits the fd (PostgreSQL's backend, forked by the postmaster
/// that accepted) takes part with that role. LRU, 65536 entries; an entry can outlive its
/// socket (the fd's last close is not seen), so a later socket at the same address that was
/// not opened while ztrace ran may take a stale role: its kernel ids are then ignored by the
/// agent unless its own request starts match them.
#[map(name = "SOCK_ROLES")]
static SOCK_ROLES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// The connection's state, adopted from the socket's role when this process did not open it.
#[inline(always)]
fn state_of(k: u64, entry: &SockEntry) -> Option<*mut PropConn> {
    if let Some(p) = PROP_CONNS.get_ptr_mut(&k) {
        return Some(p);
    }
    // SAFETY: copied out at once.
    let role = unsafe { SOCK_ROLES.get(&entry.sock) }.copied()?;
    let conn = fresh_conn(entry.conn_gen, role);
    if PROP_CONNS.insert(&k, &conn, 0).is_err() {
        count(Counter::PropagateMapFull);
    }
    PROP_CONNS.get_ptr_mut(&k)
}

/// At the entry of a write on a TCP socket, before its segments leave. Returns 1 when the
/// write starts a client request (its ids are then in `PROP_CONNS`, for the exit to report).
///
/// Ids are written straight into map values: the syscall programs have little BPF stack left.
#[inline(always)]
pub fn on_write_enter(tgid: u32, tid: u32, fd: i32, entry: &SockEntry, in_tls_call: u32, head: Head) -> u32 {
    if !enabled() || (entry.tls == 1 && in_tls_call == 0) {
        return 0;
    }
    let k = sock::key(tgid, fd);
    let Some(state) = state_of(k, entry) else { return 0 };
    // SAFETY: a pointer into the map's value, valid during this program run.
    let state = unsafe { &mut *state };
    if state.conn_gen != entry.conn_gen {
        return 0;
    }
    enter_tls(state, in_tls_call);
    if state.last == NONE && state.role == ConnRole::Client as u32 && is_preface(head) {
        // The preface's write: a request starts (the old rule), whatever frames follow.
        state.h2 = 1;
    } else if state.h2 == 1 && state.role == ConnRole::Client as u32 {
        // On HTTP/2 each write that may open a stream gets ids of its own, whatever came
        // before it (the agent gives them to the first stream the write opens); the others
        // leave the context as it is.
        if !may_open_stream(head) {
            state.last = EGRESS;
            return 0;
        }
    } else if state.last == EGRESS {
        return 0;
    }
    state.last = EGRESS;
    if state.role != ConnRole::Client as u32 {
        answered(state); // a server's answer begins: its unit no longer serves that request
        return 0;
    }
    // A grpc-go client's writer goroutine writes for the goroutine that created the stream
    // (grpc-go speaks HTTP/2 only: other connections skip the lookup).
    let writer = if state.h2 == 1 { go::grpc::take_stream_owner(k, entry.conn_gen) } else { go::grpc::StreamWriter::Unknown };
    let unit = match writer {
        go::grpc::StreamWriter::Creator(goid) => UnitKey { tgid, go: 1, id: goid },
        go::grpc::StreamWriter::Unknown => unit_key(tgid, tid),
        go::grpc::StreamWriter::Several => {
            // Several calls at once: the streams this write opens leave without a context
            // (a split at the receiver) rather than with another call's trace.
            state.flags = 0;
            let flow = sock::flow_of(entry.sock);
            if !handed_over(&flow) {
                let _ = TX_CTX.remove(&flow);
            }
            count(Counter::PropagateStreamsAmbiguous);
            return 0;
        }
    };
    state.ids.span_id = random_span_id();
    state.flags = ids::SET;
    let mut from_unit = false;
    let mut busy = false;
    // SAFETY: copied out at once.
    if let Some(s) = unsafe { UNIT_CTX.get(&unit) }.copied() {
        if s.in_flight > 1 {
            // An event loop with several requests unanswered: this call is for one of them,
            // which one is not known here. A new trace (a split) rather than another's.
            busy = true;
            count(Counter::PropagateUnitBusy);
        // SAFETY: the server connection's entry, copied field by field at once.
        } else if let Some(server) = unsafe { PROP_CONNS.get(&s.conn) } {
            if server.conn_gen == s.conn_gen && server.last == INGRESS {
                state.ids.trace_id = server.ids.trace_id;
                state.ids.parent_id = server.ids.span_id;
                from_unit = true;
            }
        }
    }
    if !from_unit && !busy {
        // SAFETY: a pointer into the map's value, read at once.
        if let Some(started) = UNIT_STARTED_FOR.get_ptr(&unit) {
            // SAFETY: as above.
            unsafe {
                state.ids.trace_id = (*started).trace_id;
                state.ids.parent_id = (*started).span_id;
            }
            from_unit = true;
        }
    }
    if from_unit {
        state.flags |= ids::FROM_UNIT;
    } else {
        state.ids.trace_id = random_trace_id();
        state.ids.parent_id = [0; 8];
    }
    count(Counter::PropagateClientIds);
    let ctx = WireCtx { trace_id: state.ids.trace_id, span_id: state.ids.span_id };
    let flow = sock::flow_of(entry.sock);
    let stored = if handed_over(&flow) {
        count(Counter::PropagateHandedOver);
        let server_end = flow.reversed();
        // SAFETY: copied out at once.
        let crowded = unsafe { RX_CTX.get(&server_end) }.is_some_and(|r| r.taken == 0) as u32;
        RX_CTX.insert(&server_end, &RxCtx { ctx, taken: 0, crowded }, 0)
    } else {
        TX_CTX.insert(&flow, &ctx, 0)
    };
    if stored.is_err() {
        count(Counter::PropagateMapFull);
    }
    1
}

/// A TLS write that started a client request at its entry wrote nothing (its handshake is not
/// done: it will be called again): the request has not begun, its retry starts it.
#[inline(always)]
pub fn unstart(key: u64) {
    if let Some(state) = PROP_CONNS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map's value, valid during this program run.
        unsafe {
            if (*state).role == ConnRole::Client as u32 {
                (*state).last = NONE;
            }
        }
    }
}

/// A goroutine of a Go program started another (`runtime.newproc1`): if the starter serves a
/// request now (or was itself started for one), the new goroutine is started for it.
#[inline(always)]
pub fn on_go_spawn(tgid: u32, parent: u64, child: u64) {
    if !enabled() {
        return;
    }
    let parent = UnitKey { tgid, go: 1, id: parent as u32 as u64 };
    let child = UnitKey { tgid, go: 1, id: child as u32 as u64 };
    // SAFETY: copied out at once.
    if let Some(s) = unsafe { UNIT_CTX.get(&parent) }.copied() {
        // SAFETY: as above.
        if let Some(server) = unsafe { PROP_CONNS.get(&s.conn) } {
            // An HTTP/2 server's reader may have written (flow control, pings) since.
            if server.conn_gen == s.conn_gen && (server.last == INGRESS || server.h2 == 1) {
                let ctx = WireCtx { trace_id: server.ids.trace_id, span_id: server.ids.span_id };
                let _ = UNIT_STARTED_FOR.insert(&child, &ctx, 0);
                return;
            }
        }
    }
    // SAFETY: copied out at once.
    if let Some(ctx) = unsafe { UNIT_STARTED_FOR.get(&parent) }.copied() {
        let _ = UNIT_STARTED_FOR.insert(&child, &ctx, 0);
    }
}

/// Whether a client request's context goes straight to the receiving socket's `RX_CTX` entry
/// (both ends on this host's loopback, `--propagate=on`) instead of into TCP options: the same
/// server ids without a callback per segment, and `sockops` leaves such connections alone.
#[inline(always)]
pub fn handed_over(flow: &FlowKey) -> bool {
    settings().propagate != propagate::ALL && flow.is_loopback()
}

/// The first syscall inside an OpenSSL call on a connection: what its handshake moved before
/// was no request; plaintext requests start from here.
#[inline(always)]
fn enter_tls(state: &mut PropConn, in_tls_call: u32) {
    if in_tls_call == 1 && state.tls == 0 {
        state.tls = 1;
        state.last = NONE;
    }
}

/// The ids of the request a connection's current bytes start, for `emit::data` to copy into
/// its event (`key` as given by `on_write_enter`/`on_read_exit`).
#[inline(always)]
pub fn request_ids(key: u64) -> Option<*const PropConn> {
    // SAFETY: a pointer into the map's value, valid during this program run.
    PROP_CONNS.get_ptr(&key).map(|p| p as *const PropConn)
}

/// At the exit of a read that moved bytes on a TCP socket: a server request may start (its
/// connection's key is returned, its ids in `PROP_CONNS`), or a client's answer arrived (its
/// context stops going out). 0 when no request starts.
#[inline(always)]
pub fn on_read_exit(tgid: u32, tid: u32, fd: i32, entry: &SockEntry, in_tls_call: u32, head: Head) -> u64 {
    if !enabled() || (entry.tls == 1 && in_tls_call == 0) {
        return 0;
    }
    let k = sock::key(tgid, fd);
    let Some(state) = state_of(k, entry) else { return 0 };
    // SAFETY: a pointer into the map's value, valid during this program run.
    let state = unsafe { &mut *state };
    if state.conn_gen != entry.conn_gen {
        return 0;
    }
    // The handshake's reads (outside OpenSSL calls, before the socket was known as TLS) may have
    // started a "request" that took the context the first plaintext request came with (its
    // segments can reach this host together with the handshake's last ones): give it back.
    let handshake_done = in_tls_call == 1 && state.tls == 0;
    enter_tls(state, in_tls_call);
    if state.role == ConnRole::Server as u32 && state.h2 == 0 && state.reads < PREFACE_READS {
        state.reads += 1;
        if is_preface(head) {
            state.h2 = 1;
        }
    }
    if state.h2 == 1 && state.role == ConnRole::Server as u32 {
        if let Some(k) = h2_server_read(tgid, tid, k, state, entry) {
            return k;
        }
    }
    if state.last == INGRESS {
        return 0;
    }
    state.last = INGRESS;
    let flow = sock::flow_of(entry.sock);
    if state.role != ConnRole::Server as u32 {
        if !handed_over(&flow) {
            let _ = TX_CTX.remove(&flow);
        }
        return 0;
    }
    state.ids.span_id = random_span_id();
    state.flags = ids::SET;
    let mut from_wire = false;
    if let Some(rx) = RX_CTX.get_ptr_mut(&flow) {
        // SAFETY: a pointer into the map's value, valid during this program run.
        let rx = unsafe { &mut *rx };
        if rx.taken == 0 || handshake_done {
            rx.taken = 1;
            state.ids.trace_id = rx.ctx.trace_id;
            state.ids.parent_id = rx.ctx.span_id;
            from_wire = true;
        }
    }
    if from_wire {
        state.flags |= ids::FROM_WIRE;
        count(Counter::PropagateServerFromWire);
    } else {
        state.ids.trace_id = random_trace_id();
        state.ids.parent_id = [0; 8];
        count(Counter::PropagateServerNoContext);
    }
    start_serving(unit_key(tgid, tid), k, entry.conn_gen, state);
    k
}

/// The unit of work `unit` now serves the server request that started on connection `k`: it
/// counts among the unit's unanswered ones (once per connection) until `answered`.
#[inline(always)]
fn start_serving(unit: UnitKey, k: u64, conn_gen: u64, state: &mut PropConn) {
    // This connection's last request, if never answered (a TLS handshake's flight before its
    // plaintext), is replaced, not added to: its unit (maybe another) serves one fewer first.
    answered(state);
    // SAFETY: copied out at once.
    let in_flight = unsafe { UNIT_CTX.get(&unit) }.map_or(0, |s| s.in_flight) + 1;
    let serving = Serving { conn: k, conn_gen, in_flight, _pad: 0 };
    if UNIT_CTX.insert(&unit, &serving, 0).is_err() {
        count(Counter::PropagateMapFull);
        return;
    }
    state.counted = 1;
    state.unit = unit;
}

/// The server request of this connection is answered (or its connection closed): its unit
/// serves one fewer.
#[inline(always)]
fn answered(state: &mut PropConn) {
    if state.counted == 0 {
        return;
    }
    state.counted = 0;
    if let Some(s) = UNIT_CTX.get_ptr_mut(&state.unit) {
        // SAFETY: a pointer into the map's value, valid during this program run.
        unsafe { (*s).in_flight = (*s).in_flight.saturating_sub(1) };
    }
}

/// The head of a plaintext request that started a server request (`key` as `on_read_exit`
/// returned it), `len` bytes at `ptr`: a `traceparent` of its own gives the request its trace
/// id and parent, as the agent's `header` rule gives them to the span, so that the server's
/// calls carry that trace on. Not when the header says what the TCP option said (the header
/// the client's host added), and not on HTTP/2 (its headers are compressed).
#[inline(always)]
pub fn on_request_head(key: u64, ptr: u64, len: u64) {
    let Some(state) = PROP_CONNS.get_ptr_mut(&key) else { return };
    // SAFETY: a pointer into the map's value, valid during this program run.
    let state = unsafe { &mut *state };
    if state.role != ConnRole::Server as u32 || state.h2 == 1 || state.flags & ids::SET == 0 {
        return;
    }
    let Some(tp) = traceparent::find(ptr, len) else { return };
    if state.flags & ids::FROM_WIRE != 0 && state.ids.trace_id == tp.trace_id && state.ids.parent_id == tp.span_id {
        return;
    }
    state.ids.trace_id = tp.trace_id;
    state.ids.parent_id = tp.span_id;
    state.flags = (state.flags & !ids::FROM_WIRE) | ids::FROM_HEADER;
    count(Counter::PropagateServerFromHeader);
}

/// A read on an HTTP/2 server connection, where streams do not take turns with their answers:
/// each context that arrives starts a request at the first read after it, whatever the
/// connection wrote in between; a read that follows the one that took it reports the same ids
/// again (the agent gives them to the first stream opened with them: the context may have come
/// on a segment before the stream's `HEADERS`). Two contexts arrived before one read (`crowded`):
/// none, the read's streams start new traces. `None` when no context arrived since the
/// connection's last request: the rules of other connections apply.
#[inline(always)]
fn h2_server_read(tgid: u32, tid: u32, k: u64, state: &mut PropConn, entry: &SockEntry) -> Option<u64> {
    let flow = sock::flow_of(entry.sock);
    let rx = RX_CTX.get_ptr_mut(&flow)?;
    // SAFETY: a pointer into the map's value, valid during this program run.
    let rx = unsafe { &mut *rx };
    if rx.crowded != 0 {
        rx.crowded = 0;
        rx.taken = SPOILED;
        count(Counter::PropagateServerCrowded);
    }
    match rx.taken {
        0 => {
            rx.taken = 1;
            state.last = INGRESS;
            state.ids.span_id = random_span_id();
            state.ids.trace_id = rx.ctx.trace_id;
            state.ids.parent_id = rx.ctx.span_id;
            state.flags = ids::SET | ids::FROM_WIRE;
            count(Counter::PropagateServerFromWire);
            // Streams are not counted (their handlers run on goroutines of their own).
            let serving = Serving { conn: k, conn_gen: entry.conn_gen, in_flight: 0, _pad: 0 };
            if UNIT_CTX.insert(&unit_key(tgid, tid), &serving, 0).is_err() {
                count(Counter::PropagateMapFull);
            }
            Some(k)
        }
        1 if state.flags & ids::FROM_WIRE != 0 && state.ids.parent_id == rx.ctx.span_id => {
            state.last = INGRESS;
            Some(k)
        }
        SPOILED => {
            state.last = INGRESS;
            Some(0)
        }
        _ => None,
    }
}

/// The process closed a TCP socket (`key`: `tgid << 32 | fd`): contexts kept under its 4-tuple
/// go (a later connection may reuse the 4-tuple), and a request it never answered no longer
/// keeps its unit busy.
#[inline(always)]
pub fn on_close(key: u64, sk: u64) {
    if !enabled() || sk == 0 {
        return;
    }
    if let Some(state) = PROP_CONNS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map's value, valid during this program run.
        answered(unsafe { &mut *state });
    }
    let flow = sock::flow_of(sk);
    let _ = TX_CTX.remove(&flow);
    let _ = RX_CTX.remove(&flow);
    let _ = crate::inject::INJECT_STATE.remove(&flow);
}
