//! Syscall tracepoints (`syscalls/sys_enter_*`, `sys_exit_*`; Linux >= 4.7 for BPF on
//! tracepoints, every architecture with `CONFIG_FTRACE_SYSCALLS`). One file per family.
//!
//! Entry programs save the arguments in `ACTIVE` (keyed by pid_tgid) only for fds that are TCP
//! sockets; exit programs read the result and emit events. Reads have no entry program: their
//! exit takes the arguments from the thread's saved registers (`io`). Argument offsets are those of the
//! syscall tracepoint format: the first argument at 16, each 8 bytes; the return value at 16.

pub mod close;
pub mod connect;
pub mod io;

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};

/// Offset of syscall argument `n` in a `sys_enter_*` record.
pub const fn arg(n: usize) -> usize {
    16 + 8 * n
}

/// Offset of the return value in a `sys_exit_*` record.
pub const RET: usize = 16;

/// (tgid, tid, pid_tgid) of the current thread.
#[inline(always)]
pub fn ids() -> (u32, u32, u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32, pid_tgid)
}

#[inline(always)]
pub fn read_u64(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets are those of the tracepoint's format; read_at bounds-checks via the helper.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

#[inline(always)]
pub fn read_i64(ctx: &TracePointContext, offset: usize) -> i64 {
    // SAFETY: as above.
    unsafe { ctx.read_at::<i64>(offset) }.unwrap_or(-1)
}
