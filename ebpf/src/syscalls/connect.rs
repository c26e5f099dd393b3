//! connect(2) and accept(2)/accept4(2): a TCP connection begins; its role is known.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use ztrace_common::{ConnRole, Counter};

use super::{arg, ids, read_i64, RET};
use crate::{
    filter,
    maps::{call, count, PendingCall, SockEntry, ACTIVE},
    sock,
};

const EINPROGRESS: i64 = 115;

#[inline(always)]
fn save(call_kind: u32, fd: i32) -> u32 {
    let (tgid, _, pid_tgid) = ids();
    if !filter::is_traced(tgid) && !filter::is_agent(tgid) {
        return 0;
    }
    let pending = PendingCall {
        call: call_kind,
        direction: 0,
        fd,
        starts_request: 0,
        enter_ns: 0,
        ptr: 0,
        count: 0,
        sock: SockEntry { conn_gen: 0, mm: 0, sock: 0, is_tcp: 0, announced: 0, tls: 0, _pad: 0 },
        ids_key: 0,
    };
    if ACTIVE.insert(&pid_tgid, &pending, 0).is_err() {
        count(Counter::ArgsMapFull);
    }
    0
}

#[inline(always)]
fn take(call_kind: u32) -> Option<PendingCall> {
    let (_, _, pid_tgid) = ids();
    // SAFETY: copied out at once.
    let pending = unsafe { ACTIVE.get(&pid_tgid) }.copied()?;
    let _ = ACTIVE.remove(&pid_tgid);
    (pending.call == call_kind).then_some(pending)
}

/// `syscalls/sys_enter_connect`: fd at arg 0.
#[tracepoint]
pub fn zt_enter_connect(ctx: TracePointContext) -> u32 {
    save(call::CONNECT, read_i64(&ctx, arg(0)) as i32)
}

/// `syscalls/sys_exit_connect`: success, or EINPROGRESS for a non-blocking socket.
#[tracepoint]
pub fn zt_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(pending) = take(call::CONNECT) else { return 0 };
    let ret = read_i64(&ctx, RET);
    if ret == 0 || ret == -EINPROGRESS {
        let (tgid, tid, _) = ids();
        sock::open_conn(tgid, tid, pending.fd, ConnRole::Client);
        crate::propagate::on_open(tgid, pending.fd, ConnRole::Client);
        crate::stack::on_connect(tgid, pending.fd);
    }
    0
}

/// `syscalls/sys_enter_accept`.
#[tracepoint]
pub fn zt_enter_accept(_ctx: TracePointContext) -> u32 {
    save(call::ACCEPT, -1)
}

/// `syscalls/sys_enter_accept4`.
#[tracepoint]
pub fn zt_enter_accept4(_ctx: TracePointContext) -> u32 {
    save(call::ACCEPT, -1)
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) -> u32 {
    if take(call::ACCEPT).is_none() {
        return 0;
    }
    let ret = read_i64(ctx, RET);
    if ret >= 0 {
        let (tgid, tid, _) = ids();
        if filter::is_traced(tgid) {
            sock::open_conn(tgid, tid, ret as i32, ConnRole::Server);
            crate::propagate::on_open(tgid, ret as i32, ConnRole::Server);
        }
    }
    0
}

/// `syscalls/sys_exit_accept`: the new fd is the return value.
#[tracepoint]
pub fn zt_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx)
}

/// `syscalls/sys_exit_accept4`.
#[tracepoint]
pub fn zt_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx)
}
