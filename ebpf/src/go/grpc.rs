//! grpc-go clients: which goroutine created each client stream.
//!
//! grpc-go writes every frame of a client connection from the connection's `loopyWriter`
//! goroutine, so the goroutine a stream's first bytes are written on serves nothing. The
//! goroutine that made the call runs `(*http2Client).NewStream`, which gives the stream its id
//! (ids are handed out in the order the writer then writes the streams). Two uprobes, entry
//! and each RET (never uretprobes: Go moves stacks), report (goroutine, socket, stream id) as an
//! `EventKind::GoStream` stamped with the entry's time, before the writer can write the stream:
//! `go_grpc_stream` keeps the entry time per goroutine (`g` in R14), `go_grpc_stream_ret` reads
//! the returned `*transport.Stream` (RAX): its `id`, its `ct *http2Client`, whose `conn`
//! (a `net.Conn` interface: its data word) leads to the socket as for `crypto/tls` (`*net.TCPConn`
//! → `*netFD` → `Sysfd`). The offsets come from the binary's DWARF, in the attach cookie.
//! With stacks on, the RET also sends the creating goroutine's stack for that stream
//! (`stack::send_stream_stack`), so the request carries its caller's stack, not the writer's.
//! The entry also notes the creating goroutine as its connection's stream owner
//! (`GO_STREAM_OWNERS`), so that the request ids `propagate` draws when the writer sends the
//! stream continue the trace that goroutine serves, not a new one.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
    EbpfContext as _,
};
use ztrace_common::{Counter, EventKind, GoStreamEvent};

use super::{current_goid, GoKey};
use crate::{emit, filter, maps::count, sock, syscalls::ids};

/// `NewStream` calls in progress: (tgid, `g`) → entry time. LRU, 4096 entries (a forgotten one
/// only loses the link of that call).
#[map(name = "GO_STREAM_CALLS")]
static GO_STREAM_CALLS: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(4096, 0);

/// The goroutine that created a connection's newest client stream.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamOwner {
    /// The connection's generation (`SockEntry::conn_gen`): a reused fd's entry is stale.
    pub conn_gen: u64,
    /// Its low 32 bits, as `propagate`'s units of work keep goroutines (`go::acting_goid`).
    pub goid: u64,
    /// Streams created since the writer last wrote one.
    pub pending: u64,
}

/// For whom a grpc-go client connection's writer writes a stream ([`take_stream_owner`]).
pub enum StreamWriter {
    /// Not a grpc-go client connection, or no stream created since the last one written.
    Unknown,
    /// The one goroutine that created a stream since the last one written.
    Creator(u64),
    /// Several streams were created since: which of them this write opens is not known.
    Several,
}

/// Connections (`tgid << 32 | fd`) of grpc-go clients → the goroutine that created their newest
/// stream. LRU, 4096 entries (a forgotten one: that connection's requests start new traces on
/// the wire, as before).
#[map(name = "GO_STREAM_OWNERS")]
static GO_STREAM_OWNERS: LruHashMap<u64, StreamOwner> = LruHashMap::with_max_entries(4096, 0);

/// For whom a grpc-go client connection's writer writes the stream a write opens: the goroutine
/// that created it, when it is the one stream created since the last one written. The streams
/// created so far count as written.
#[inline(always)]
pub fn take_stream_owner(key: u64, conn_gen: u64) -> StreamWriter {
    let Some(owner) = GO_STREAM_OWNERS.get_ptr_mut(&key) else { return StreamWriter::Unknown };
    // SAFETY: a pointer into the map's value, valid during this program run.
    let owner = unsafe { &mut *owner };
    if owner.conn_gen != conn_gen {
        return StreamWriter::Unknown;
    }
    let pending = owner.pending;
    owner.pending = 0;
    match pending {
        0 => StreamWriter::Unknown,
        1 => StreamWriter::Creator(owner.goid),
        _ => StreamWriter::Several,
    }
}

/// Entry of grpc-go's `(*http2Client).NewStream`.
#[uprobe]
pub fn go_grpc_stream(ctx: ProbeContext) -> u32 {
    let (tgid, _, _) = ids();
    if !filter::is_traced(tgid) {
        return 0;
    }
    // SAFETY: `regs` is the probe's own register context; the helper has no preconditions.
    let (g, transport, now) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax, bpf_ktime_get_ns()) };
    let _ = GO_STREAM_CALLS.insert(&GoKey { value: g, tgid, _pad: 0 }, &now, 0);
    // The connection's writer may write the stream before NewStream returns: its owner is
    // noted now, from the receiver (`t *http2Client`, RAX).
    // SAFETY: the helper only reads the cookie of the running program's attachment.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie >> 63 == 1 {
        let fd = transport_fd(transport, cookie);
        let goid = current_goid(tgid);
        if let (Some(fd), true) = (fd, goid != 0) {
            if let Some(entry) = sock::lookup_tcp(tgid, fd as i32) {
                let key = sock::key(tgid, fd as i32);
                let pending = match GO_STREAM_OWNERS.get_ptr(&key) {
                    // SAFETY: a pointer into the map's value, read at once.
                    Some(o) if unsafe { (*o).conn_gen } == entry.conn_gen => unsafe { (*o).pending },
                    _ => 0,
                };
                let owner = StreamOwner { conn_gen: entry.conn_gen, goid: goid as u32 as u64, pending: pending + 1 };
                let _ = GO_STREAM_OWNERS.insert(&key, &owner, 0);
            }
        }
    }
    0
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: user memory read through the helper, which checks the address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The socket of a `*http2Client`: its `conn` interface's data word (`*net.TCPConn`) →
/// `*netFD` → `Sysfd`, at the offsets the cookie carries.
#[inline(always)]
fn transport_fd(transport: u64, cookie: u64) -> Option<u64> {
    let tcp_conn = read_u64(transport + (cookie & 0xffff))?;
    let netfd = read_u64(tcp_conn + ((cookie >> 32) & 0xff))?;
    read_u64(netfd + ((cookie >> 40) & 0xff))
}

/// Each RET of `(*http2Client).NewStream`: the new `*Stream` in RAX (nil on error).
#[uprobe]
pub fn go_grpc_stream_ret(ctx: ProbeContext) -> u32 {
    let (tgid, tid, _) = ids();
    // SAFETY: as above.
    let (stream, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    let key = GoKey { value: g, tgid, _pad: 0 };
    // SAFETY: copied out at once.
    let Some(entered) = (unsafe { GO_STREAM_CALLS.get(&key) }).copied() else { return 0 };
    let _ = GO_STREAM_CALLS.remove(&key);
    if stream == 0 {
        return 0;
    }
    // SAFETY: the helper only reads the cookie of the running program's attachment.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie >> 63 == 0 {
        return 0;
    }
    let stream_id = (cookie >> 16) & 0xff;
    let stream_ct = (cookie >> 24) & 0xff;
    let found = (|| {
        let id = read_u64(stream + stream_id)? & 0xffff_ffff;
        let transport = read_u64(stream + stream_ct)?;
        Some((id, transport_fd(transport, cookie)?))
    })();
    let Some((id, fd)) = found else {
        count(Counter::GoStreamNoSocket);
        return 0;
    };
    let goid = current_goid(tgid);
    if goid == 0 || id == 0 {
        return 0;
    }
    if let Some(mut ev) = emit::reserve::<GoStreamEvent>() {
        let mut header = emit::header(EventKind::GoStream, tgid, tid, fd as i32, 0);
        header.ts_ns = entered;
        ev.write(GoStreamEvent { header, goid, stream_id: id });
        ev.submit(emit::wakeup_flags_of::<GoStreamEvent>());
        count(Counter::GoStreamEvents);
    }
    // With stacks on, the caller's stack for the stream's request (still intact at the RET).
    crate::stack::send_stream_stack(&ctx, tgid, tid, fd as i32, entered, id);
    0
}
