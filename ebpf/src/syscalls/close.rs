//! close(2), dup2(2), dup3(2): an fd stops meaning what ztrace knew of it.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use ztrace_common::EventKind;

use super::{arg, ids, read_i64};
use crate::{emit, filter, sock};

#[inline(always)]
fn closed(fd: i32) -> u32 {
    let (tgid, tid, _) = ids();
    if let Some(entry) = sock::forget(tgid, fd) {
        if entry.is_tcp == 1 {
            crate::propagate::on_close(sock::key(tgid, fd), entry.sock);
        }
        if entry.is_tcp == 1 && entry.announced == 1 && filter::is_traced(tgid) {
            emit::simple(EventKind::Close, tgid, tid, fd, entry.conn_gen);
        }
    }
    0
}

/// `syscalls/sys_enter_close`: fd at arg 0.
#[tracepoint]
pub fn zt_enter_close(ctx: TracePointContext) -> u32 {
    closed(read_i64(&ctx, arg(0)) as i32)
}

/// `syscalls/sys_enter_dup2`: newfd (arg 1) is closed first if open.
#[tracepoint]
pub fn zt_enter_dup2(ctx: TracePointContext) -> u32 {
    closed(read_i64(&ctx, arg(1)) as i32)
}

/// `syscalls/sys_enter_dup3`: as dup2.
#[tracepoint]
pub fn zt_enter_dup3(ctx: TracePointContext) -> u32 {
    closed(read_i64(&ctx, arg(1)) as i32)
}
