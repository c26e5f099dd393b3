//! `sched/sched_process_exec`: a traced process ran a new executable. The agent is told at once
//! so it can probe the TLS library of the new program before its first connection.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use ztrace_common::{Counter, EventHeader, EventKind};

use crate::{emit, filter, maps::count, syscalls::ids};

/// `sched/sched_process_exec`.
#[tracepoint]
pub fn zt_sched_exec(_ctx: TracePointContext) -> u32 {
    let (tgid, tid, _) = ids();
    // A new program: whether its stacks name its code is decided again.
    let _ = crate::stack::STACK_SKIP.remove(&tgid);
    if !filter::is_traced(tgid) {
        return 0;
    }
    if let Some(mut ev) = emit::reserve::<EventHeader>() {
        ev.write(emit::header(EventKind::Exec, tgid, tid, -1, 0));
        ev.submit(emit::BPF_RB_FORCE_WAKEUP);
        count(Counter::ExecEvents);
    }
    0
}
