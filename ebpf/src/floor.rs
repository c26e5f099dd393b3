//! Programs that do nothing: `ztrace --empty-programs` attaches them at every hook the real
//! programs use, so that `cargo xtask bench` measures the floor of this way of hooking (the
//! traps and tracepoint calls alone) beside the real cost.

use aya_ebpf::{
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};

/// Stands in for every tracepoint program.
#[tracepoint]
pub fn zt_empty_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

/// Stands in for every entry uprobe program.
#[uprobe]
pub fn zt_empty_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

/// Stands in for every return uprobe program.
#[uretprobe]
pub fn zt_empty_uretprobe(_ctx: RetProbeContext) -> u32 {
    0
}
