//! User stacks of client requests: at the first write of a request on a client connection
//! (an egress after connect or after an ingress), the calling thread's user stack is sent as a
//! `Stack` event keyed like the data event it belongs to.
//!
//! Two views of the stack travel together: the kernel's frame-pointer walk (`bpf_get_stack`
//! with `BPF_F_USER_STACK`, right for Go and for code built with frame pointers), and the user
//! registers plus a copy of the top of the stack, which the agent unwinds with the binary's
//! call-frame information when frame pointers are missing. A token bucket per process bounds
//! the rate (`Counter::StackBudgetSkipped`). Only connections opened by `connect` while ztrace
//! runs are client connections here; the role of older ones is unknown.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{bpf_get_current_task_btf, bpf_get_stack, bpf_probe_read_user, bpf_ringbuf_output, bpf_task_pt_regs},
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, TracePointContext},
    EbpfContext,
};
use ztrace_common::{
    Counter, Direction, EventHeader, EventKind, StackEvent, StackEventHeader, StackSettings, MAX_STACK_BYTES,
    MAX_STACK_DEPTH,
};

use crate::{
    emit, go,
    maps::{count, EVENTS, SOCKS},
    sock,
};

#[unsafe(no_mangle)]
static STACK_SETTINGS: StackSettings = StackSettings { enabled: 0, stack_bytes: 8192, per_second: 100, burst: 200 };

#[inline(always)]
fn settings() -> StackSettings {
    // SAFETY: a plain static of a Copy type, read volatile so the defaults are not folded.
    unsafe { core::ptr::read_volatile(&STACK_SETTINGS) }
}

/// True when the agent turned stacks on.
#[inline(always)]
pub fn enabled() -> bool {
    settings().enabled != 0
}

const PAGE: u64 = 4096;
const BPF_F_USER_STACK: u64 = 1 << 8;
/// x86-64 `struct pt_regs` offsets.
const PT_REGS_BP: u64 = 4 * 8;
const PT_REGS_IP: u64 = 16 * 8;
const PT_REGS_SP: u64 = 19 * 8;

const NONE: u32 = 0;
const EGRESS: u32 = Direction::Egress as u32;
const INGRESS: u32 = Direction::Ingress as u32;

/// A client connection and the direction of its last bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackConn {
    pub conn_gen: u64,
    /// `NONE`, `EGRESS` or `INGRESS`.
    pub last: u32,
    pub _pad: u32,
}

/// Client connections opened while ztrace runs: key `tgid << 32 | fd`. 65536 entries, LRU (a
/// forgotten connection gets no more stacks). Full → `Counter::StackConnMapFull`.
#[map(name = "STACK_CONNS")]
static STACK_CONNS: LruHashMap<u64, StackConn> = LruHashMap::with_max_entries(65536, 0);

/// Processes whose stacks cannot name their code (interpreters: the agent tells, see
/// `discovery::cmdline::Runtime`): tgid → 1. Their connections get no stacks. An exec removes
/// the entry. LRU, 16384 entries.
#[map(name = "STACK_SKIP")]
pub static STACK_SKIP: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// A process's stack budget.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Budget {
    /// Credit in nanoseconds-times-rate: one stack costs 1e9.
    pub credit: u64,
    pub last_ns: u64,
}

/// Stack budgets per tgid. 16384 entries, LRU.
#[map(name = "STACK_BUDGET")]
static STACK_BUDGET: LruHashMap<u32, Budget> = LruHashMap::with_max_entries(16384, 0);

/// A stack event plus slack, so that a page-sized copy at any offset below `MAX_STACK_BYTES`
/// stays inside the buffer (what the verifier checks).
#[repr(C)]
pub struct StackScratch {
    pub event: StackEvent,
    pub slack: [u8; PAGE as usize],
}

/// Per-CPU scratch space to build a stack event larger than the BPF stack.
#[map(name = "STACK_SCRATCH")]
static STACK_SCRATCH: PerCpuArray<StackScratch> = PerCpuArray::with_max_entries(1, 0);

/// After `connect` returned: `fd` of `tgid` is a client connection.
#[inline(always)]
pub fn on_connect(tgid: u32, fd: i32) {
    if settings().enabled == 0 {
        return;
    }
    // SAFETY: only tested for presence.
    if unsafe { STACK_SKIP.get(&tgid) }.is_some() {
        return;
    }
    let k = sock::key(tgid, fd);
    // SAFETY: copied out at once.
    let Some(entry) = (unsafe { SOCKS.get(&k) }).copied() else { return };
    if entry.is_tcp != 1 {
        return;
    }
    let conn = StackConn { conn_gen: entry.conn_gen, last: NONE, _pad: 0 };
    if STACK_CONNS.insert(&k, &conn, 0).is_err() {
        count(Counter::StackConnMapFull);
    }
}

/// After bytes moved on a connection: the first write after connect or after a read sends the
/// thread's stack.
#[inline(always)]
pub fn on_data(ctx: &TracePointContext, conn: &emit::Conn, direction: u32) {
    let k = sock::key(conn.tgid, conn.fd);
    let Some(state) = STACK_CONNS.get_ptr_mut(&k) else { return };
    // SAFETY: a pointer into the map's value, valid during this program run.
    let state = unsafe { &mut *state };
    if state.conn_gen != conn.conn_gen {
        return;
    }
    if direction == INGRESS {
        if state.last != INGRESS {
            state.last = INGRESS;
        }
        return;
    }
    if state.last == EGRESS {
        return;
    }
    state.last = EGRESS;
    if take_budget(conn.tgid) {
        send(ctx, conn);
    } else {
        count(Counter::StackBudgetSkipped);
    }
}

/// True when the process's token bucket holds a stack now (nothing is taken).
#[inline(always)]
pub fn has_budget(tgid: u32) -> bool {
    let s = settings();
    let rate = s.per_second as u64;
    let cap = s.burst as u64 * 1_000_000_000;
    // SAFETY: copied out at once.
    let Some(b) = (unsafe { STACK_BUDGET.get(&tgid) }).copied() else { return true };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut elapsed = now.saturating_sub(b.last_ns);
    if rate > 0 && elapsed > cap / rate {
        elapsed = cap / rate;
    }
    b.credit + elapsed * rate >= 1_000_000_000
}

/// Takes one stack from the process's token bucket.
#[inline(always)]
fn take_budget(tgid: u32) -> bool {
    let s = settings();
    let rate = s.per_second as u64;
    let cap = s.burst as u64 * 1_000_000_000;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(b) = STACK_BUDGET.get_ptr_mut(&tgid) {
        // SAFETY: a pointer into the map's value, valid during this program run.
        let b = unsafe { &mut *b };
        let mut elapsed = now.saturating_sub(b.last_ns);
        if rate > 0 && elapsed > cap / rate {
            elapsed = cap / rate;
        }
        let mut credit = b.credit + elapsed * rate;
        if credit > cap {
            credit = cap;
        }
        b.last_ns = now;
        if credit < 1_000_000_000 {
            b.credit = credit;
            return false;
        }
        b.credit = credit - 1_000_000_000;
        return true;
    }
    let fresh = Budget { credit: cap.saturating_sub(1_000_000_000), last_ns: now };
    let _ = STACK_BUDGET.insert(&tgid, &fresh, 0);
    cap >= 1_000_000_000
}

/// At the return of grpc-go's `NewStream` on the goroutine that created `stream` of the
/// connection `fd`: that goroutine's frame-pointer walk, sent for the stream (the connection's
/// writer goroutine writes its first frame; see `go::grpc`). Budgeted like every stack.
#[inline(always)]
pub fn send_stream_stack(ctx: &ProbeContext, tgid: u32, tid: u32, fd: i32, ts_ns: u64, stream: u64) {
    if settings().enabled == 0 {
        return;
    }
    // SAFETY: only tested for presence.
    if unsafe { STACK_SKIP.get(&tgid) }.is_some() {
        return;
    }
    // A connection opened before ztrace may not be in the socket cache yet: resolved here.
    let Some(entry) = sock::lookup_tcp(tgid, fd) else { return };
    if !take_budget(tgid) {
        count(Counter::StackBudgetSkipped);
        return;
    }
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: `scratch` is this CPU's slot of STACK_SCRATCH; bpf_get_stack writes at most the
    // size of `ips`; the record sent is the header alone.
    unsafe {
        let ev = &mut (*scratch).event;
        ev.hdr.header = EventHeader {
            kind: EventKind::Stack as u32,
            tgid,
            tid,
            fd,
            ts_ns,
            conn_gen: entry.conn_gen,
        };
        let n = bpf_get_stack(ctx.as_ptr(), ev.hdr.ips.as_mut_ptr().cast(), (MAX_STACK_DEPTH * 8) as u32, BPF_F_USER_STACK);
        if n <= 0 {
            count(Counter::StackCopyFailed);
            return;
        }
        ev.hdr.ips_len = (n as u32) / 8;
        ev.hdr.rip = ev.hdr.ips[0];
        ev.hdr.rsp = 0;
        ev.hdr.rbp = 0;
        ev.hdr.stack_len = 0;
        ev.hdr.stream = stream;
        let size = core::mem::size_of::<StackEventHeader>() as u64;
        if bpf_ringbuf_output(core::ptr::addr_of!(EVENTS) as *mut _, scratch.cast(), size, emit::BPF_RB_FORCE_WAKEUP) != 0 {
            count(Counter::RingbufFull);
            return;
        }
    }
    count(Counter::StackEvents);
}

#[inline(always)]
fn send(ctx: &TracePointContext, conn: &emit::Conn) {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: the helpers take/return kernel pointers the verifier tracks; the registers are
    // read through bpf_probe_read_kernel, which checks the address.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return;
    }
    // SAFETY: as above.
    let reg = |off: u64| unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0);
    let (rip, rsp, rbp) = (reg(PT_REGS_IP), reg(PT_REGS_SP), reg(PT_REGS_BP));
    // SAFETY: `scratch` is this CPU's slot of STACK_SCRATCH; every write below stays inside it
    // (ips: MAX_STACK_DEPTH entries; stack copies: offset < MAX_STACK_BYTES, length <= PAGE,
    // within `stack` plus `slack`).
    unsafe {
        let ev = &mut (*scratch).event;
        ev.hdr.header = EventHeader {
            kind: EventKind::Stack as u32,
            tgid: conn.tgid,
            tid: conn.tid,
            fd: conn.fd,
            ts_ns: conn.ts_ns,
            conn_gen: conn.conn_gen,
        };
        ev.hdr.rip = rip;
        ev.hdr.rsp = rsp;
        ev.hdr.rbp = rbp;
        ev.hdr.stream = 0;
        // A Go request written by net/http's writeLoop goroutine: the stack that matters is the
        // one of the goroutine that issued it, saved at its roundTrip.
        match go::owner_stack(conn.tgid) {
            Ok(Some(owner)) => {
                let n = bpf_probe_read_kernel_buf(
                    core::ptr::addr_of!((*owner).ips).cast(),
                    core::slice::from_raw_parts_mut(ev.hdr.ips.as_mut_ptr().cast::<u8>(), MAX_STACK_DEPTH * 8),
                );
                let len = bpf_probe_read_kernel(core::ptr::addr_of!((*owner).ips_len)).unwrap_or(0);
                if n.is_ok() && len > 0 {
                    ev.hdr.ips_len = if len > MAX_STACK_DEPTH as u32 { MAX_STACK_DEPTH as u32 } else { len };
                    ev.hdr.rip = ev.hdr.ips[0];
                    ev.hdr.rsp = 0;
                    ev.hdr.rbp = 0;
                    ev.hdr.stack_len = 0;
                    let size = core::mem::size_of::<StackEventHeader>() as u64;
                    if bpf_ringbuf_output(core::ptr::addr_of!(EVENTS) as *mut _, scratch.cast(), size, emit::BPF_RB_FORCE_WAKEUP) != 0 {
                        count(Counter::RingbufFull);
                        return;
                    }
                    count(Counter::StackFromGoOwner);
                    count(Counter::StackEvents);
                    return;
                }
                count(Counter::StackGoOwnerMissing);
            }
            Ok(None) => {}
            Err(()) => count(Counter::StackGoOwnerMissing),
        }
        let n = bpf_get_stack(
            ctx.as_ptr(),
            ev.hdr.ips.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK,
        );
        ev.hdr.ips_len = if n > 0 { (n as u32) / 8 } else { 0 };

        // The top of the stack, page by page: a copy that crosses the stack's end stops there.
        let mut want = settings().stack_bytes as u64;
        if want > MAX_STACK_BYTES as u64 {
            want = MAX_STACK_BYTES as u64;
        }
        let dst = ev.stack.as_mut_ptr();
        let mut copied: u64 = 0;
        let mut src = rsp;
        for i in 0..(MAX_STACK_BYTES as u64 / PAGE + 1) {
            if copied >= want || rsp == 0 {
                break;
            }
            let mut len = if i == 0 { PAGE - (rsp & (PAGE - 1)) } else { PAGE };
            if len > want - copied {
                len = want - copied;
            }
            let at = copied & (MAX_STACK_BYTES as u64 - 1);
            if len == 0 || len > PAGE || at != copied {
                break;
            }
            if bpf_probe_read_user(dst.add(at as usize).cast(), len as u32, src as *const _) != 0 {
                break;
            }
            copied += len;
            src += len;
        }
        if copied == 0 && want > 0 {
            count(Counter::StackCopyFailed);
        }
        ev.hdr.stack_len = copied as u32;
        let size = core::mem::size_of::<StackEventHeader>() as u64 + (copied & (MAX_STACK_BYTES as u64 * 2 - 1));
        if size > core::mem::size_of::<StackEvent>() as u64 {
            return;
        }
        // Woken at once: the agent reads the process's maps while it surely still runs (stacks are
        // budgeted, so this cannot become a wakeup per write).
        if bpf_ringbuf_output(core::ptr::addr_of!(EVENTS) as *mut _, scratch.cast(), size, emit::BPF_RB_FORCE_WAKEUP) != 0 {
            count(Counter::RingbufFull);
            return;
        }
    }
    count(Counter::StackEvents);
}
