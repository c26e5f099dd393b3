//! Go programs: which goroutine each syscall is made for.
//!
//! Go multiplexes goroutines over threads, so a thread id says nothing about the unit of work.
//! On x86-64 the Go runtime keeps the running goroutine's `g` at `-8(FS)` (the thread's TLS
//! base, `task->thread.fsbase`, statically linked programs without cgo); its `goid` is at an
//! offset the agent gives per program (`GO_PROCS`).
//!
//! net/http moves some of a request's bytes on helper goroutines: the client writes each
//! request on the pooled connection's `writeLoop` goroutine, and the server may read the first
//! byte of the next request on a connection's `backgroundRead` goroutine. Four uprobes (entry
//! only, never uretprobes: Go moves stacks; the receiver in RAX, register ABI) hand the work
//! over: `go_helper` on the helper's entry (`(*persistConn).writeLoop`,
//! `(*connReader).backgroundRead`) records which object a helper goroutine works for,
//! `go_owner` on the owner's side (`(*persistConn).roundTrip`,
//! `(*connReader).startBackgroundRead`) which goroutine the object works for now. A syscall on
//! a helper goroutine is then reported for its owner (`Counter::GoHandoffs`).
//!
//! Goroutines a request's goroutine starts: `go_newproc` on the entry of `runtime.newproc1`
//! (`callergp`, the starting goroutine, in RBX; it runs on the thread's system stack, so the
//! thread keys the call) and `go_newproc_ret` on each of its RET instructions (the new `g` in
//! RAX, its `goid` already set) report the pair as an `EventKind::GoSpawn`; the agent walks
//! those links up to the goroutine serving a request.
//!
//! With stacks on, a fifth uprobe (`go_owner_stack`, also on `(*persistConn).roundTrip`) keeps
//! the owner goroutine's frame-pointer walk, so that the stack sent with the request's write on
//! `writeLoop` is the one of the code that issued the request ([`owner_stack`]).
//!
//! grpc-go's client streams, written by the connection's writer goroutine, are reported with
//! the goroutine that created them: [`grpc`].

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_get_stack},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::ProbeContext,
    EbpfContext,
};
use ztrace_common::{Counter, EventKind, GoOwnerStack, GoProc, GoSpawnEvent, MAX_STACK_DEPTH};

use crate::{config::offsets, emit, filter, maps::count, syscalls::ids};

pub mod grpc;

/// Go programs whose goroutines are followed: tgid → `goid` offset. Filled by the agent; 4096.
#[map(name = "GO_PROCS")]
pub static GO_PROCS: HashMap<u32, GoProc> = HashMap::with_max_entries(4096, 0);

/// Helper goroutines: (tgid, goid) → the object they work for (`*persistConn`, `*connReader`).
/// LRU, 16384 entries (a forgotten one only loses the goroutine link of its requests).
#[map(name = "GO_HELPERS")]
pub static GO_HELPERS: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// The goroutine an object works for now: (tgid, object) → goid. LRU, 16384 entries.
#[map(name = "GO_OWNERS")]
pub static GO_OWNERS: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// `runtime.newproc1` calls in progress: thread (`pid_tgid`) → the starting goroutine's id and
/// the `go` statement's address. LRU, 4096 entries.
#[map(name = "GO_SPAWNING")]
pub static GO_SPAWNING: LruHashMap<u64, Spawning> = LruHashMap::with_max_entries(4096, 0);

/// A `runtime.newproc1` call in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Spawning {
    pub parent: u64,
    pub caller_pc: u64,
}

/// Owner goroutines' stacks at their last `roundTrip`: (tgid, goid) → frame-pointer walk.
/// LRU, 4096 entries (a forgotten one: `Counter::StackGoOwnerMissing`).
#[map(name = "GO_OWNER_STACKS")]
pub static GO_OWNER_STACKS: LruHashMap<GoKey, GoOwnerStack> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU room to build a [`GoOwnerStack`] (larger than the BPF stack allows).
#[map(name = "GO_STACK_SCRATCH")]
static GO_STACK_SCRATCH: PerCpuArray<GoOwnerStack> = PerCpuArray::with_max_entries(1, 0);

/// Key of the goroutine maps: a process and a goroutine id or a pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    pub value: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// The running goroutine's id in a Go program `tgid`, 0 if it is not one or it cannot be read.
#[inline(always)]
pub(crate) fn current_goid(tgid: u32) -> u64 {
    // SAFETY: copied out at once.
    let Some(goid_offset) = (unsafe { GO_PROCS.get(&tgid) }).map(|p| p.goid_offset) else { return 0 };
    let fsbase_offset = offsets().task_struct_thread_fsbase;
    if fsbase_offset == u32::MAX {
        return 0;
    }
    // SAFETY: the current task pointer is read through bpf_probe_read_kernel, which checks the
    // address; user memory through bpf_probe_read_user likewise. A bad address is an error.
    let goid = unsafe {
        let task = bpf_get_current_task();
        match bpf_probe_read_kernel((task + u64::from(fsbase_offset)) as *const u64) {
            Ok(fsbase) if fsbase >= 8 => match bpf_probe_read_user((fsbase - 8) as *const u64) {
                Ok(g) if g != 0 => bpf_probe_read_user((g + u64::from(goid_offset)) as *const u64).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        }
    };
    if goid == 0 {
        count(Counter::GoGoidUnreadable);
    }
    goid
}

/// The goroutine the current syscall acts for (low 32 bits): the running one, or, on a helper
/// goroutine, the goroutine it works for now. 0 outside Go programs.
#[inline(always)]
pub fn acting_goid(tgid: u32) -> u32 {
    let goid = current_goid(tgid);
    if goid == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    if let Some(object) = unsafe { GO_HELPERS.get(&GoKey { value: goid, tgid, _pad: 0 }) }.copied() {
        // SAFETY: as above.
        if let Some(owner) = unsafe { GO_OWNERS.get(&GoKey { value: object, tgid, _pad: 0 }) }.copied() {
            count(Counter::GoHandoffs);
            return owner as u32;
        }
    }
    goid as u32
}

/// The first argument of a Go function (register ABI: RAX).
#[inline(always)]
fn go_arg0(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the probe's own register context, always valid to read.
    unsafe { (*ctx.regs).rax }
}

/// Entry of a helper goroutine's function (`(*persistConn).writeLoop`,
/// `(*connReader).backgroundRead`): this goroutine works for the receiver.
#[uprobe]
pub fn go_helper(ctx: ProbeContext) -> u32 {
    let (tgid, _, _) = ids();
    let goid = current_goid(tgid);
    if goid != 0 {
        let _ = GO_HELPERS.insert(&GoKey { value: goid, tgid, _pad: 0 }, &go_arg0(&ctx), 0);
    }
    0
}

/// Entry of an owner's function (`(*persistConn).roundTrip`,
/// `(*connReader).startBackgroundRead`): the receiver works for this goroutine now.
#[uprobe]
pub fn go_owner(ctx: ProbeContext) -> u32 {
    let (tgid, _, _) = ids();
    let goid = current_goid(tgid);
    if goid != 0 {
        let _ = GO_OWNERS.insert(&GoKey { value: go_arg0(&ctx), tgid, _pad: 0 }, &goid, 0);
    }
    0
}

/// Entry of `(*persistConn).roundTrip` with stacks on: keeps this goroutine's frame-pointer walk
/// (Go keeps frame pointers on x86-64) for the request's write on the `writeLoop` goroutine.
#[uprobe]
pub fn go_owner_stack(ctx: ProbeContext) -> u32 {
    if !crate::stack::enabled() {
        return 0;
    }
    let (tgid, _, _) = ids();
    let goid = current_goid(tgid);
    if goid == 0 {
        return 0;
    }
    // The request's write takes a stack only if the budget allows: without budget now, skip the
    // walk, and forget this goroutine's older stack so that it is never given to this request.
    if !crate::stack::has_budget(tgid) {
        let _ = GO_OWNER_STACKS.remove(&GoKey { value: goid, tgid, _pad: 0 });
        return 0;
    }
    let Some(scratch) = GO_STACK_SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: `scratch` is this CPU's slot; bpf_get_stack writes at most the size given, which
    // is the size of `ips`.
    unsafe {
        let n = bpf_get_stack(ctx.as_ptr(), (*scratch).ips.as_mut_ptr().cast(), (MAX_STACK_DEPTH * 8) as u32, 1 << 8);
        (*scratch).ips_len = if n > 0 { (n as u32) / 8 } else { 0 };
        let _ = GO_OWNER_STACKS.insert(&GoKey { value: goid, tgid, _pad: 0 }, &*scratch, 0);
    }
    0
}

/// On a helper goroutine that works for another one: the owner's stack saved at its last
/// `roundTrip`, or `Err(())` when there is none (counted). `Ok(None)` when the current
/// goroutine is no helper (or not Go): its own stack is the right one.
#[inline(always)]
pub fn owner_stack(tgid: u32) -> Result<Option<*const GoOwnerStack>, ()> {
    let goid = current_goid(tgid);
    if goid == 0 {
        return Ok(None);
    }
    // SAFETY: copied out at once.
    let Some(object) = unsafe { GO_HELPERS.get(&GoKey { value: goid, tgid, _pad: 0 }) }.copied() else { return Ok(None) };
    // SAFETY: as above.
    let Some(owner) = unsafe { GO_OWNERS.get(&GoKey { value: object, tgid, _pad: 0 }) }.copied() else { return Err(()) };
    match GO_OWNER_STACKS.get_ptr(&GoKey { value: owner, tgid, _pad: 0 }) {
        Some(p) => Ok(Some(p)),
        None => Err(()),
    }
}

/// The `goid` of the `g` at `g` in a followed program, 0 if unknown.
#[inline(always)]
fn goid_of(tgid: u32, g: u64) -> u64 {
    // SAFETY: copied out at once.
    let Some(goid_offset) = (unsafe { GO_PROCS.get(&tgid) }).map(|p| p.goid_offset) else { return 0 };
    if g == 0 {
        return 0;
    }
    // SAFETY: user memory read through the helper, which checks the address.
    unsafe { bpf_probe_read_user((g + u64::from(goid_offset)) as *const u64) }.unwrap_or(0)
}

/// Entry of `runtime.newproc1(fn, callergp, callerpc, ...)`: remember who starts a goroutine,
/// and where (`callerpc` in RCX).
#[uprobe]
pub fn go_newproc(ctx: ProbeContext) -> u32 {
    let (tgid, _, pid_tgid) = ids();
    if !filter::is_traced(tgid) {
        return 0;
    }
    // SAFETY: `regs` is the probe's own register context.
    let (callergp, caller_pc) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).rcx) };
    let parent = goid_of(tgid, callergp);
    if parent != 0 {
        let _ = GO_SPAWNING.insert(&pid_tgid, &Spawning { parent, caller_pc }, 0);
    }
    0
}

/// Each RET of `runtime.newproc1`: the new goroutine is in RAX; report the pair.
#[uprobe]
pub fn go_newproc_ret(ctx: ProbeContext) -> u32 {
    let (tgid, tid, pid_tgid) = ids();
    // SAFETY: copied out at once.
    let Some(Spawning { parent, caller_pc }) = (unsafe { GO_SPAWNING.get(&pid_tgid) }).copied() else { return 0 };
    let _ = GO_SPAWNING.remove(&pid_tgid);
    // SAFETY: as above.
    let child = goid_of(tgid, unsafe { (*ctx.regs).rax });
    if child == 0 {
        count(Counter::GoGoidUnreadable);
        return 0;
    }
    crate::propagate::on_go_spawn(tgid, parent, child);
    if let Some(mut ev) = emit::reserve::<GoSpawnEvent>() {
        ev.write(GoSpawnEvent { header: emit::header(EventKind::GoSpawn, tgid, tid, -1, 0), parent_goid: parent, child_goid: child, caller_pc });
        ev.submit(emit::wakeup_flags_of::<GoSpawnEvent>());
        count(Counter::GoSpawnEvents);
    }
    0
}
