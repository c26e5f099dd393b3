//! Request ids born in the kernel, so that the trace context a request carries on the wire is
//! known at the moment it is sent (the agent's linking runs ~100 ms behind).
//!
//! Only connections whose role the kernel saw (`connect`/`accept` while ztrace runs) take part;
//! a request starts where the agent's connection table says it does: the first bytes in the
//! request direction after bytes in the other one.
//! - A **server** request starts at the first read after a write (or the first read): its span
//!   id is drawn here; its trace id and parent come from the context option that the client's
//!   host wrote on the request's segments (`sockops`, `RX_CTX`), else a new trace id. The
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
//! and the agent puts exactly those ids on the span. Not done here: TLS plaintext (its request
//! boundaries are in the TLS probes, which do not take part yet) and connections opened before
//! ztrace started.

use aya_ebpf::{helpers::generated::bpf_get_prandom_u32, macros::map, maps::LruHashMap};
use ztrace_common::{ids, propagate, ConnRole, Counter, Direction, RequestIds};

use crate::{
    config::settings,
    go,
    maps::{count, SockEntry},
    sock::{self, FlowKey},
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
}

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
}

/// Server request served by each unit of work. LRU, 16384 entries.
#[map(name = "UNIT_CTX")]
static UNIT_CTX: LruHashMap<UnitKey, Serving> = LruHashMap::with_max_entries(16384, 0);

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
    /// connection's next request.
    pub taken: u32,
    pub _pad: u32,
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
    let conn = PropConn { conn_gen: entry.conn_gen, role: role as u32, last: NONE, ids: RequestIds::default(), flags: 0, tls: 0 };
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
    let conn = PropConn { conn_gen: entry.conn_gen, role, last: NONE, ids: RequestIds::default(), flags: 0, tls: 0 };
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
pub fn on_write_enter(tgid: u32, tid: u32, fd: i32, entry: &SockEntry, in_tls_call: u32) -> u32 {
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
    if state.last == EGRESS {
        return 0;
    }
    state.last = EGRESS;
    if state.role != ConnRole::Client as u32 {
        return 0; // a server's answer begins: its unit no longer serves that request
    }
    state.ids.span_id = random_span_id();
    state.flags = ids::SET;
    let mut from_unit = false;
    // SAFETY: copied out at once.
    if let Some(s) = unsafe { UNIT_CTX.get(&unit_key(tgid, tid)) }.copied() {
        // SAFETY: the server connection's entry, copied field by field at once.
        if let Some(server) = unsafe { PROP_CONNS.get(&s.conn) } {
            if server.conn_gen == s.conn_gen && server.last == INGRESS {
                state.ids.trace_id = server.ids.trace_id;
                state.ids.parent_id = server.ids.span_id;
                from_unit = true;
            }
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
        RX_CTX.insert(&flow.reversed(), &RxCtx { ctx, taken: 0, _pad: 0 }, 0)
    } else {
        TX_CTX.insert(&flow, &ctx, 0)
    };
    if stored.is_err() {
        count(Counter::PropagateMapFull);
    }
    1
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
pub fn on_read_exit(tgid: u32, tid: u32, fd: i32, entry: &SockEntry, in_tls_call: u32) -> u64 {
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
    let serving = Serving { conn: k, conn_gen: entry.conn_gen };
    if UNIT_CTX.insert(&unit_key(tgid, tid), &serving, 0).is_err() {
        count(Counter::PropagateMapFull);
    }
    k
}

/// The process closed a TCP socket: contexts kept under its 4-tuple go (a later connection
/// may reuse the 4-tuple).
#[inline(always)]
pub fn on_close(sk: u64) {
    if !enabled() || sk == 0 {
        return;
    }
    let flow = sock::flow_of(sk);
    let _ = TX_CTX.remove(&flow);
    let _ = RX_CTX.remove(&flow);
    let _ = crate::inject::INJECT_STATE.remove(&flow);
}
