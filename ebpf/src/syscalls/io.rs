//! The read/write family on TCP sockets: read, write, recvfrom, sendto, readv, writev,
//! recvmsg, sendmsg, sendfile64. Each exit with a positive result emits the bytes moved.
//!
//! Vectored calls emit one data event per iovec segment, up to `MAX_IOVECS`; bytes beyond
//! that are reported as a length without payload, so the agent's byte count stays exact.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use ztrace_common::{ConnRole, Counter, DataSource, Direction, MAX_IOVECS};

use super::{arg, ids, read_i64, read_u64, RET};
use crate::{
    emit, filter,
    maps::{call, count, PendingCall, ACTIVE, SOCKS},
    propagate, sock, tls,
};

const EGRESS: u32 = Direction::Egress as u32;
const INGRESS: u32 = Direction::Ingress as u32;
const SYSCALL: u32 = DataSource::Syscall as u32;

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
    let (tgid, tid, pid_tgid) = ids();
    if !filter::is_traced(tgid) {
        return 0;
    }
    let Some(mut entry) = sock::lookup_tcp(tgid, fd) else {
        return 0;
    };
    // Inside an OpenSSL call: these bytes are ciphertext, and this is the call's socket.
    // (The exit still needs the saved call: without one, a read looks like one blocked since
    // before ztrace started.)
    let in_tls_call = tls::note_syscall(tgid, pid_tgid, fd, direction, call_kind, ptr, &mut entry);
    // SAFETY: the helper has no preconditions.
    let enter_ns = unsafe { bpf_ktime_get_ns() };
    // A client request gets its ids before its segments leave (they carry its context).
    let starts_request =
        if direction == EGRESS { propagate::on_write_enter(tgid, tid, fd, &entry, in_tls_call) } else { 0 };
    if starts_request == 1 && in_tls_call == 1 {
        tls::note_request_start(pid_tgid, sock::key(tgid, fd));
    }
    let pending = PendingCall {
        call: call_kind,
        direction,
        fd,
        starts_request,
        enter_ns,
        ptr,
        count: count_arg,
        sock: entry,
    };
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

/// x86-64 `struct pt_regs`: offsets of the first syscall arguments (rdi, rsi, rdx).
const PT_REGS_DI: u64 = 14 * 8;
const PT_REGS_SI: u64 = 13 * 8;

/// A read that was already blocked when ztrace started has no saved arguments: take fd and
/// buffer from the thread's saved user registers, which syscalls leave unchanged (x86-64;
/// `bpf_task_pt_regs`, Linux >= 5.15). Typical of thread-per-connection servers idle on a
/// keep-alive connection.
#[inline(always)]
fn recover_plain_read(tgid: u32) -> Option<PendingCall> {
    if !filter::is_traced(tgid) {
        return None;
    }
    // SAFETY: both helpers take/return kernel pointers the verifier tracks; the registers are
    // then read through bpf_probe_read_kernel, which checks the address.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // SAFETY: as above.
    let fd = unsafe { bpf_probe_read_kernel((regs + PT_REGS_DI) as *const u64) }.ok()? as i32;
    let entry = sock::lookup_tcp(tgid, fd)?;
    // SAFETY: as above.
    let buf = unsafe { bpf_probe_read_kernel((regs + PT_REGS_SI) as *const u64) }.ok()?;
    Some(PendingCall { call: call::PLAIN, direction: INGRESS, fd, starts_request: 0, enter_ns: 0, ptr: buf, count: 0, sock: entry })
}

#[inline(always)]
fn exit(ctx: &TracePointContext, plain_read: bool) -> u32 {
    let (tgid, tid, pid_tgid) = ids();
    let ret = read_i64(ctx, RET);
    // SAFETY: copied out at once.
    let pending = match unsafe { ACTIVE.get(&pid_tgid) }.copied() {
        Some(p) => {
            let _ = ACTIVE.remove(&pid_tgid);
            p
        }
        None if plain_read && ret > 0 => match recover_plain_read(tgid) {
            Some(p) => p,
            None => return 0,
        },
        None => return 0,
    };
    if ret <= 0 {
        return 0;
    }
    let fd = pending.fd;
    let mut entry = pending.sock;
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
    // The request these bytes start, if any: its ids go into the data events. On a TLS socket
    // only the reads inside an OpenSSL call count, and the call's plaintext event takes the ids.
    let in_tls_call = if entry.tls == 1 {
        // SAFETY: only tested for presence.
        unsafe { crate::maps::TLS_ACTIVE.get(&pid_tgid) }.is_some() as u32
    } else {
        0
    };
    let ids_key = if pending.direction == EGRESS {
        if pending.starts_request == 1 {
            sock::key(tgid, fd)
        } else {
            0
        }
    } else {
        propagate::on_read_exit(tgid, tid, fd, &entry, in_tls_call)
    };
    if entry.tls == 1 {
        if ids_key != 0 && pending.direction == INGRESS {
            tls::note_request_start(pid_tgid, ids_key);
        }
        return 0; // ciphertext: the plaintext comes from the TLS probes
    }
    emit::stage_ids(ids_key);
    let conn = emit::Conn { tgid, tid, fd, conn_gen: entry.conn_gen, ts_ns: ts };
    crate::stack::on_data(ctx, &conn, pending.direction);
    match pending.call {
        call::PLAIN => emit::data(&conn, pending.direction, SYSCALL, pending.ptr, moved),
        call::SENDFILE => emit::data(&conn, pending.direction, SYSCALL, 0, moved),
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
        emit::data(conn, direction, SYSCALL, seg.base, n);
        remaining -= n;
    }
    if remaining > 0 {
        count(Counter::IovecsTruncated);
        emit::data(conn, direction, SYSCALL, 0, remaining);
    }
}

macro_rules! io_pair {
    ($enter:ident, $exit:ident, $tp:literal, $call:expr, $dir:expr, $plain_read:expr) => {
        #[doc = concat!("`syscalls/sys_enter_", $tp, "`.")]
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_std(&ctx, $call, $dir)
        }

        #[doc = concat!("`syscalls/sys_exit_", $tp, "`.")]
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $plain_read)
        }
    };
}

io_pair!(zt_enter_read, zt_exit_read, "read", call::PLAIN, INGRESS, true);
io_pair!(zt_enter_write, zt_exit_write, "write", call::PLAIN, EGRESS, false);
io_pair!(zt_enter_recvfrom, zt_exit_recvfrom, "recvfrom", call::PLAIN, INGRESS, true);
io_pair!(zt_enter_sendto, zt_exit_sendto, "sendto", call::PLAIN, EGRESS, false);
io_pair!(zt_enter_readv, zt_exit_readv, "readv", call::VECTORED, INGRESS, false);
io_pair!(zt_enter_writev, zt_exit_writev, "writev", call::VECTORED, EGRESS, false);
io_pair!(zt_enter_recvmsg, zt_exit_recvmsg, "recvmsg", call::MSG, INGRESS, false);
io_pair!(zt_enter_sendmsg, zt_exit_sendmsg, "sendmsg", call::MSG, EGRESS, false);

/// `syscalls/sys_enter_sendfile64`: out_fd at arg 0, count at arg 3; the bytes come from a
/// file and are reported as a length only.
#[tracepoint]
pub fn zt_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(call::SENDFILE, EGRESS, read_i64(&ctx, arg(0)) as i32, 0, read_u64(&ctx, arg(3)))
}

/// `syscalls/sys_exit_sendfile64`.
#[tracepoint]
pub fn zt_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit(&ctx, false)
}
