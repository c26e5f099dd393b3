//! The read/write family on TCP sockets: read, write, recvfrom, sendto, readv, writev,
//! recvmsg, sendmsg, sendfile64. Each exit with a positive result emits the bytes moved.
//!
//! Vectored calls emit one data event per iovec segment, `MAX_IOVECS` per program: the next
//! ones are emitted by tail calls of `zt_iovecs_more` (gRPC C-core and Node.js write HTTP/2
//! frames with dozens of segments), up to `MAX_IOVEC_TAIL_CALLS`; bytes beyond are reported
//! as a length without payload, so the agent's byte count stays exact.
//!
//! `read` and `recvfrom` have no entry program: their data is in hand when they return, stamped
//! with the exit time, and their arguments (fd, buffer) are still in the thread's saved user
//! registers, which a syscall leaves unchanged (x86-64, `bpf_task_pt_regs`). That halves the
//! programs a request/response runs. Writes keep their entry program: a write's bytes leave as
//! it begins, and the request's start time (which the server's read must follow) is its entry.
//! So do `readv`/`recvmsg`: their exits, which walk iovecs, would grow past the verifier's
//! budget with the socket lookup inside. The entry saves the call in the thread's own storage
//! (`CALLS`), the exit takes it. A vectored read may start a server request (gRPC C-core reads
//! with `recvmsg`): its exit (`zt_exit_readv_ids`, `zt_exit_recvmsg_ids`) draws the ids only and
//! tail-calls `zt_saved_exit`, which emits the bytes as the plain exit would.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use ztrace_common::{ConnRole, Counter, DataSource, Direction, MAX_IOVECS, MAX_IOVEC_TAIL_CALLS};

use super::{arg, ids, read_i64, read_u64, RET};
use crate::{
    emit, filter,
    maps::{call, count, IovecsLeft, PendingCall, CALLS, IOVECS_LEFT, IOVECS_MORE, SAVED_EXIT, SOCKS, TRACEPARENT_READ},
    propagate::{self, Head},
    sock, tls,
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
        if direction == EGRESS { propagate::on_write_enter(tgid, tid, fd, &entry, in_tls_call, Head { call: call_kind, ptr, len: count_arg }) } else { 0 };
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
        ids_key: 0,
    };
    match CALLS.current(true) {
        // SAFETY: the pointer is this thread's own storage value, valid during this run.
        Some(slot) => unsafe { *slot = pending },
        None => count(Counter::ArgsMapFull),
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

/// A returning `read`/`recvfrom`'s call, rebuilt from the thread's saved user registers (fd in
/// rdi, buffer in rsi); `None` when the fd is not a TCP socket of a traced process. Also tells the TLS probes which socket a read inside an
/// OpenSSL call used, whatever it returned.
#[inline(always)]
fn ingress_call(tgid: u32, pid_tgid: u64) -> Option<PendingCall> {
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
    let mut entry = sock::lookup_tcp(tgid, fd)?;
    // SAFETY: as above.
    let ptr = unsafe { bpf_probe_read_kernel((regs + PT_REGS_SI) as *const u64) }.ok()?;
    tls::note_syscall(tgid, pid_tgid, fd, INGRESS, call::PLAIN, ptr, &mut entry);
    Some(PendingCall {
        call: call::PLAIN,
        direction: INGRESS,
        fd,
        starts_request: 0,
        enter_ns: 0,
        ptr,
        count: 0,
        sock: entry,
        ids_key: 0,
    })
}

/// `sys_exit_read`/`sys_exit_recvfrom`: no entry program ran (module docs).
#[inline(always)]
fn read_exit(ctx: &TracePointContext) -> u32 {
    let (tgid, tid, pid_tgid) = ids();
    let ret = read_i64(ctx, RET);
    if ret <= 0 {
        // Nothing moved; the TLS probes still learn the socket of a read inside an OpenSSL
        // call that found no data yet (a non-blocking read returning EAGAIN).
        if tls::in_call(pid_tgid) {
            let _ = ingress_call(tgid, pid_tgid);
        }
        return 0;
    }
    match ingress_call(tgid, pid_tgid) {
        Some(pending) => finish(ctx, tgid, tid, pending, ret, true),
        None => 0,
    }
}

/// `sys_exit_*` of a call whose entry program saved it in `CALLS`.
#[inline(always)]
fn saved_exit(ctx: &TracePointContext) -> u32 {
    let (tgid, tid, _) = ids();
    let ret = read_i64(ctx, RET);
    let Some(slot) = CALLS.current(false) else { return 0 };
    // SAFETY: the pointer is this thread's own storage value, valid during this run; the call
    // is copied out and marked taken.
    let pending = unsafe {
        let pending = *slot;
        (*slot).call = 0;
        pending
    };
    if pending.call == 0 {
        return 0;
    }
    if ret <= 0 {
        return 0;
    }
    finish(ctx, tgid, tid, pending, ret, false)
}

/// A vectored read's exit: the request its bytes may start gets its ids here (`propagate`), then
/// `zt_saved_exit` emits the bytes — one program doing both would pass the verifier's budget.
#[inline(always)]
fn vectored_read_exit(ctx: &TracePointContext) -> u32 {
    let (tgid, tid, pid_tgid) = ids();
    if read_i64(ctx, RET) > 0 {
        if let Some(slot) = CALLS.current(false) {
            // SAFETY: this thread's own storage value, valid during this run.
            let pending = unsafe { &mut *slot };
            if pending.call != 0 && pending.direction == INGRESS {
                let entry = pending.sock;
                let in_tls_call = if entry.tls == 1 { tls::in_call(pid_tgid) as u32 } else { 0 };
                let head = Head { call: pending.call, ptr: pending.ptr, len: 0 };
                pending.ids_key = propagate::on_read_exit(tgid, tid, pending.fd, &entry, in_tls_call, head);
                if pending.ids_key != 0 && entry.tls == 0 {
                    // SAFETY: as below; `zt_read_traceparent` goes on to `zt_saved_exit`.
                    let _ = unsafe { TRACEPARENT_READ.tail_call(ctx, 0) };
                }
            }
        }
    }
    // SAFETY: a tail call with this program's own context; it returns only when it failed.
    let _ = unsafe { SAVED_EXIT.tail_call(ctx, 0) };
    // Not reached: the agent fills SAVED_EXIT before it attaches these exits. The call is
    // dropped rather than emitted here (that would be the one program too large).
    if let Some(slot) = CALLS.current(false) {
        // SAFETY: as above.
        unsafe { (*slot).call = 0 };
    }
    0
}

/// Emits what a call that moved `ret` (> 0) bytes moved. `server_starts`: a read here may
/// start a server request that gets ids (`propagate`) — for `read`/`recvfrom`; the vectored
/// reads' ids come drawn in `pending.ids_key` (`vectored_read_exit`).
#[inline(always)]
fn finish(ctx: &TracePointContext, tgid: u32, tid: u32, pending: PendingCall, ret: i64, server_starts: bool) -> u32 {
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
    let pid_tgid = (tgid as u64) << 32 | tid as u64;
    let in_tls_call = if entry.tls == 1 { tls::in_call(pid_tgid) as u32 } else { 0 };
    let ids_key = if pending.direction == EGRESS {
        if pending.starts_request == 1 {
            sock::key(tgid, fd)
        } else {
            0
        }
    } else if server_starts {
        propagate::on_read_exit(tgid, tid, fd, &entry, in_tls_call, Head { call: pending.call, ptr: pending.ptr, len: 0 })
    } else {
        pending.ids_key
    };
    if entry.tls == 1 {
        if ids_key != 0 && pending.direction == INGRESS {
            tls::note_request_start(pid_tgid, ids_key);
        }
        return 0; // ciphertext: the plaintext comes from the TLS probes
    }
    if server_starts && ids_key != 0 {
        read_head_first(ctx, PendingCall { sock: entry, ids_key, ..pending });
    }
    emit::stage_ids(ids_key);
    let conn = emit::Conn { tgid, tid, fd, conn_gen: entry.conn_gen, ts_ns: ts };
    crate::stack::on_data(ctx, &conn, pending.direction);
    match pending.call {
        call::PLAIN => emit::data(&conn, pending.direction, SYSCALL, pending.ptr, moved),
        call::SENDFILE => emit::data(&conn, pending.direction, SYSCALL, 0, moved),
        call::VECTORED => iovecs(ctx, &conn, pending.direction, pending.ptr, pending.count, moved),
        call::MSG => {
            // SAFETY: user memory read through the helper, which checks the address.
            let iov = unsafe { bpf_probe_read_user((pending.ptr + MSG_IOV) as *const u64) }.unwrap_or(0);
            // SAFETY: as above.
            let iovlen = unsafe { bpf_probe_read_user((pending.ptr + MSG_IOVLEN) as *const u64) }.unwrap_or(0);
            iovecs(ctx, &conn, pending.direction, iov, iovlen, moved)
        }
        _ => {}
    }
    0
}

/// A read that started a server request: `zt_read_traceparent` looks for the request's own
/// `traceparent` before `zt_saved_exit` emits the call (this program would pass the verifier's
/// budget doing both). Returns only when the tail call could not be made (the program is not
/// loaded): the caller then emits the call itself.
#[inline(always)]
fn read_head_first(ctx: &TracePointContext, pending: PendingCall) {
    let Some(slot) = CALLS.current(true) else { return };
    // SAFETY: this thread's own storage value, valid during this run; a tail call with this
    // program's own context returns only when it failed, and the call is then dropped again.
    unsafe {
        *slot = pending;
        let _ = TRACEPARENT_READ.tail_call(ctx, 0);
        (*slot).call = 0;
    }
}

#[inline(always)]
fn iovecs(ctx: &TracePointContext, conn: &emit::Conn, direction: u32, iov: u64, iovcnt: u64, moved: u64) {
    // The same loop as `segments` from entry 0, written out: the 6.1 verifier loses the
    // scratch pointer's type in `emit::data` when this exit shares the general form.
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
    if remaining > 0 && iovcnt > MAX_IOVECS as u64 {
        continue_segments(ctx, conn, direction, iov, iovcnt, MAX_IOVECS as u64, remaining, 0);
    }
    truncated(conn, direction, remaining);
}

/// Emits up to `MAX_IOVECS` segments of `iov` from entry `from`: the next entry and the bytes
/// left.
#[inline(always)]
fn segments(conn: &emit::Conn, direction: u32, iov: u64, from: u64, iovcnt: u64, moved: u64) -> (u64, u64) {
    let mut remaining = moved;
    let mut i = from;
    for _ in 0..MAX_IOVECS {
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
        i += 1;
    }
    (i, remaining)
}

/// Hands the rest of a vectored call to `zt_iovecs_more` (a tail call: returns only when it
/// could not be made).
#[expect(clippy::too_many_arguments, reason = "the state of one vectored call")]
#[inline(always)]
fn continue_segments(
    ctx: &TracePointContext,
    conn: &emit::Conn,
    direction: u32,
    iov: u64,
    iovcnt: u64,
    next: u64,
    remaining: u64,
    hops: u64,
) {
    if hops >= u64::from(MAX_IOVEC_TAIL_CALLS) {
        return;
    }
    let Some(left) = IOVECS_LEFT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
    unsafe {
        *left = IovecsLeft {
            tgid: conn.tgid,
            tid: conn.tid,
            fd: conn.fd,
            direction,
            conn_gen: conn.conn_gen,
            ts_ns: conn.ts_ns,
            iov,
            iovcnt,
            next,
            remaining,
            hops: hops + 1,
        };
        IOVECS_MORE.tail_call(ctx, 0);
    }
}

/// Bytes of a vectored call no program copied: a length without payload.
#[inline(always)]
fn truncated(conn: &emit::Conn, direction: u32, remaining: u64) {
    if remaining > 0 {
        count(Counter::IovecsTruncated);
        emit::data(conn, direction, SYSCALL, 0, remaining);
    }
}

/// The next `MAX_IOVECS` segments of the vectored call in `IOVECS_LEFT` (a tail call from a
/// `writev`/`readv`/`sendmsg`/`recvmsg` exit or from itself; never attached). Linux 5.10+.
#[tracepoint]
pub fn zt_iovecs_more(ctx: TracePointContext) -> u32 {
    let Some(left) = IOVECS_LEFT.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU array, written by the program that tail-called.
    let left = unsafe { *left };
    let conn = emit::Conn {
        tgid: left.tgid,
        tid: left.tid,
        fd: left.fd,
        conn_gen: left.conn_gen,
        ts_ns: left.ts_ns,
    };
    let (next, remaining) = segments(&conn, left.direction, left.iov, left.next, left.iovcnt, left.remaining);
    if remaining > 0 && next < left.iovcnt {
        continue_segments(&ctx, &conn, left.direction, left.iov, left.iovcnt, next, remaining, left.hops);
    }
    truncated(&conn, left.direction, remaining);
    0
}

/// An entry program that saves the call and an exit program that emits it.
macro_rules! saved_pair {
    ($enter:ident, $exit:ident, $tp:literal, $call:expr, $dir:expr) => {
        #[doc = concat!("`syscalls/sys_enter_", $tp, "`.")]
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_std(&ctx, $call, $dir)
        }

        #[doc = concat!("`syscalls/sys_exit_", $tp, "`.")]
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            saved_exit(&ctx)
        }
    };
}

/// `read`/`recvfrom`: an exit program only (module docs).
macro_rules! read_exit {
    ($exit:ident, $tp:literal) => {
        #[doc = concat!("`syscalls/sys_exit_", $tp, "`.")]
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            read_exit(&ctx)
        }
    };
}

read_exit!(zt_exit_read, "read");
saved_pair!(zt_enter_write, zt_exit_write, "write", call::PLAIN, EGRESS);
read_exit!(zt_exit_recvfrom, "recvfrom");
saved_pair!(zt_enter_sendto, zt_exit_sendto, "sendto", call::PLAIN, EGRESS);
saved_pair!(zt_enter_readv, zt_exit_readv, "readv", call::VECTORED, INGRESS);
saved_pair!(zt_enter_writev, zt_exit_writev, "writev", call::VECTORED, EGRESS);
saved_pair!(zt_enter_recvmsg, zt_exit_recvmsg, "recvmsg", call::MSG, INGRESS);
saved_pair!(zt_enter_sendmsg, zt_exit_sendmsg, "sendmsg", call::MSG, EGRESS);
/// `syscalls/sys_enter_sendfile64`: out_fd at arg 0, count at arg 3; the bytes come from a
/// file and are reported as a length only.
#[tracepoint]
pub fn zt_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(call::SENDFILE, EGRESS, read_i64(&ctx, arg(0)) as i32, 0, read_u64(&ctx, arg(3)))
}

/// `syscalls/sys_exit_readv` when propagation draws server ids (the agent attaches it instead
/// of `zt_exit_readv` once `zt_saved_exit` is loaded).
#[tracepoint]
pub fn zt_exit_readv_ids(ctx: TracePointContext) -> u32 {
    vectored_read_exit(&ctx)
}

/// `syscalls/sys_exit_recvmsg`, as `zt_exit_readv_ids`.
#[tracepoint]
pub fn zt_exit_recvmsg_ids(ctx: TracePointContext) -> u32 {
    vectored_read_exit(&ctx)
}

/// The exit of a saved call, tail-called by `zt_exit_readv_ids`/`zt_exit_recvmsg_ids`; never
/// attached.
#[tracepoint]
pub fn zt_saved_exit(ctx: TracePointContext) -> u32 {
    saved_exit(&ctx)
}

/// The head of a request a read started: its own `traceparent` gives the request its trace
/// (`propagate::on_request_head`), then `zt_saved_exit` emits the call. Tail-called by the read
/// exits (`read`/`recvfrom` save their call first); never attached.
#[tracepoint]
pub fn zt_read_traceparent(ctx: TracePointContext) -> u32 {
    let ret = read_i64(&ctx, RET);
    if ret > 0 {
        if let Some(slot) = CALLS.current(false) {
            // SAFETY: this thread's own storage value, valid during this run.
            let pending = unsafe { &*slot };
            if pending.call != 0 && pending.ids_key != 0 {
                if let Some((ptr, len)) = first_bytes(pending.call, pending.ptr) {
                    let len = if len < ret as u64 { len } else { ret as u64 };
                    propagate::on_request_head(pending.ids_key, ptr, len);
                }
            }
        }
    }
    // SAFETY: a tail call with this program's own context; it returns only when it failed.
    let _ = unsafe { SAVED_EXIT.tail_call(&ctx, 0) };
    if let Some(slot) = CALLS.current(false) {
        // SAFETY: as above; the call is dropped (not reached once the agent filled SAVED_EXIT).
        unsafe { (*slot).call = 0 };
    }
    0
}

/// The first bytes of a call: a plain buffer (its length is the call's result), or the first
/// segment of an iovec array or a msghdr's.
#[inline(always)]
fn first_bytes(call_kind: u32, ptr: u64) -> Option<(u64, u64)> {
    let iov = match call_kind {
        call::PLAIN => return Some((ptr, u64::MAX)),
        call::VECTORED => ptr,
        // SAFETY: user memory read through the helper, which checks the address.
        call::MSG => unsafe { bpf_probe_read_user((ptr + MSG_IOV) as *const u64) }.ok()?,
        _ => return None,
    };
    // SAFETY: as above.
    let seg = unsafe { bpf_probe_read_user(iov as *const Iovec) }.ok()?;
    Some((seg.base, seg.len))
}

/// `syscalls/sys_exit_sendfile64`.
#[tracepoint]
pub fn zt_exit_sendfile64(ctx: TracePointContext) -> u32 {
    saved_exit(&ctx)
}
