//! The read/write family on TCP sockets: read, write, recvfrom, sendto, readv, writev,
//! recvmsg, sendmsg, sendfile64. Each exit with a positive result emits the bytes moved.
//!
//! Vectored calls emit one data event per iovec segment, up to `MAX_IOVECS`; bytes beyond
//! that are reported as a length without payload, so the agent's byte count stays exact.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use ztrace_common::{ConnRole, Counter, Direction, MAX_IOVECS};

use super::{arg, ids, read_i64, read_u64, RET};
use crate::{
    emit, filter,
    maps::{call, count, PendingCall, ACTIVE, SOCKS},
    sock,
};

const EGRESS: u32 = Direction::Egress as u32;
const INGRESS: u32 = Direction::Ingress as u32;

/// Offsets in `struct user_msghdr`.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

#[inline(always)]
fn enter(call_kind: u32, direction: u32, fd: i32, ptr: u64, count_arg: u64) -> u32 {
    let (tgid, _, pid_tgid) = ids();
    if !filter::is_traced(tgid) || sock::lookup_tcp(tgid, fd).is_none() {
        return 0;
    }
    // SAFETY: the helper has no preconditions.
    let enter_ns = unsafe { bpf_ktime_get_ns() };
    let pending = PendingCall { call: call_kind, direction, fd, _pad: 0, enter_ns, ptr, count: count_arg };
    if ACTIVE.insert(&pid_tgid, &pending, 0).is_err() {
        count(Counter::ArgsMapFull);
    }
    0
}

#[inline(always)]
fn enter_std(ctx: &TracePointContext, call_kind: u32, direction: u32) -> u32 {
    enter(
        call_kind,
        direction,
        read_i64(ctx, arg(0)) as i32,
        read_u64(ctx, arg(1)),
        read_u64(ctx, arg(2)),
    )
}

#[inline(always)]
fn exit(ctx: &TracePointContext) -> u32 {
    let (tgid, tid, pid_tgid) = ids();
    // SAFETY: copied out at once.
    let Some(pending) = unsafe { ACTIVE.get(&pid_tgid) }.copied() else {
        return 0;
    };
    let _ = ACTIVE.remove(&pid_tgid);
    let ret = read_i64(ctx, RET);
    if ret <= 0 {
        return 0;
    }
    let fd = pending.fd;
    let Some(mut entry) = sock::lookup_tcp(tgid, fd) else {
        return 0;
    };
    if entry.announced == 0 {
        sock::announce(tgid, tid, fd, &mut entry, ConnRole::Unknown);
        let _ = SOCKS.insert(&sock::key(tgid, fd), &entry, 0);
    }
    let moved = ret as u64;
    // Egress bytes leave as the write begins; ingress bytes are in hand when the read returns.
    let ts = if pending.direction == EGRESS {
        pending.enter_ns
    } else {
        // SAFETY: the helper has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    };
    let conn = emit::Conn { tgid, tid, fd, conn_gen: entry.conn_gen, ts_ns: ts };
    match pending.call {
        call::PLAIN => emit::data(&conn, pending.direction, pending.ptr, moved),
        call::SENDFILE => emit::data(&conn, pending.direction, 0, moved),
        call::VECTORED => iovecs(&conn, pending.direction, pending.ptr, pending.count, moved),
        call::MSG => {
            // SAFETY: user memory read through the helper, which checks the address.
            let iov = unsafe { bpf_probe_read_user((pending.ptr + MSG_IOV) as *const u64) }.unwrap_or(0);
            // SAFETY: as above.
            let iovlen = unsafe { bpf_probe_read_user((pending.ptr + MSG_IOVLEN) as *const u64) }.unwrap_or(0);
            iovecs(&conn, pending.direction, iov, iovlen, moved)
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn iovecs(conn: &emit::Conn, direction: u32, iov: u64, iovcnt: u64, moved: u64) {
    let mut remaining = moved;
    for i in 0..MAX_IOVECS as u64 {
        if remaining == 0 || i >= iovcnt {
            break;
        }
        // SAFETY: user memory read through the helper, which checks the address.
        let Ok(seg) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const Iovec) }) else {
            break;
        };
        let n = if seg.len < remaining { seg.len } else { remaining };
        emit::data(conn, direction, seg.base, n);
        remaining -= n;
    }
    if remaining > 0 {
        count(Counter::IovecsTruncated);
        emit::data(conn, direction, 0, remaining);
    }
}

macro_rules! io_pair {
    ($enter:ident, $exit:ident, $tp:literal, $call:expr, $dir:expr) => {
        #[doc = concat!("`syscalls/sys_enter_", $tp, "`.")]
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_std(&ctx, $call, $dir)
        }

        #[doc = concat!("`syscalls/sys_exit_", $tp, "`.")]
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx)
        }
    };
}

io_pair!(zt_enter_read, zt_exit_read, "read", call::PLAIN, INGRESS);
io_pair!(zt_enter_write, zt_exit_write, "write", call::PLAIN, EGRESS);
io_pair!(zt_enter_recvfrom, zt_exit_recvfrom, "recvfrom", call::PLAIN, INGRESS);
io_pair!(zt_enter_sendto, zt_exit_sendto, "sendto", call::PLAIN, EGRESS);
io_pair!(zt_enter_readv, zt_exit_readv, "readv", call::VECTORED, INGRESS);
io_pair!(zt_enter_writev, zt_exit_writev, "writev", call::VECTORED, EGRESS);
io_pair!(zt_enter_recvmsg, zt_exit_recvmsg, "recvmsg", call::MSG, INGRESS);
io_pair!(zt_enter_sendmsg, zt_exit_sendmsg, "sendmsg", call::MSG, EGRESS);

/// `syscalls/sys_enter_sendfile64`: out_fd at arg 0, count at arg 3; the bytes come from a
/// file and are reported as a length only.
#[tracepoint]
pub fn zt_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(call::SENDFILE, EGRESS, read_i64(&ctx, arg(0)) as i32, 0, read_u64(&ctx, arg(3)))
}

/// `syscalls/sys_exit_sendfile64`.
#[tracepoint]
pub fn zt_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}
