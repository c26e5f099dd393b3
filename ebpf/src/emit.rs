//! Writing events into the `EVENTS` ring buffer, counting every event that does not fit.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_probe_read_user, bpf_ringbuf_output},
    },
    maps::ring_buf::RingBufEntry,
};
use ztrace_common::{
    Counter, DataEvent, DataEventHeader, DataSource, EventHeader, EventKind, RequestIds, MAX_CAPTURE, TAIL_BYTES,
};

use crate::{
    bounds::at_most,
    config::settings,
    maps::{count, EVENTS, SCRATCH},
};

#[inline(always)]
pub fn header(kind: EventKind, tgid: u32, tid: u32, fd: i32, conn_gen: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid,
        tid,
        fd,
        // SAFETY: the helper has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_gen,
    }
}

/// Backlog (bytes waiting in the ring buffer) whose crossing wakes the agent at once.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Ring buffer flags for a record of `size` bytes: no wakeup (the agent polls every few
/// milliseconds), except for the record that takes the backlog past [`WAKEUP_BYTES`].
///
/// Only the crossing wakes: a wakeup is an interrupt (a self-IPI, a VM exit on a virtual
/// machine) costing more than the event itself, and while the agent is behind, the backlog
/// stays above the mark, so waking on every record above it (as this did) cost about a sixth of
/// all BPF time under load. Two CPUs crossing at once may both miss it; the poll catches up.
/// `reserved`: the record is already in the backlog (reserve/submit), not yet (output).
#[inline(always)]
pub fn wakeup_flags(size: u64, reserved: bool) -> u64 {
    let backlog = EVENTS.query(0);
    let before = if reserved { backlog.saturating_sub(size) } else { backlog };
    if before <= WAKEUP_BYTES && before + size > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// [`wakeup_flags`] for a reserved record of type `T`.
#[inline(always)]
pub fn wakeup_flags_of<T>() -> u64 {
    wakeup_flags(core::mem::size_of::<T>() as u64, true)
}

/// Reserves a fixed-size event, counting a full ring buffer.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(Counter::RingbufFull);
    }
    entry
}

/// Sends a header-only event (close).
#[inline(always)]
pub fn simple(kind: EventKind, tgid: u32, tid: u32, fd: i32, conn_gen: u64) {
    if let Some(mut ev) = reserve::<EventHeader>() {
        ev.write(header(kind, tgid, tid, fd, conn_gen));
        ev.submit(wakeup_flags_of::<EventHeader>());
    }
}

/// The connection and moment a data event belongs to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Conn {
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_gen: u64,
    pub ts_ns: u64,
}

/// Puts the ids of the request that this call's bytes start (`propagate`'s key `key`; 0:
/// none) into this CPU's scratch event, where `data` keeps them for every event of the call.
/// Every caller of `data` stages first. One map lookup per call, outside `data`, which the
/// vectored calls inline many times over: with the lookup inside it, verifying the syscall
/// exits took several times longer.
#[inline(always)]
pub fn stage_ids(key: u64) {
    let Some(event) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: `event` is this CPU's scratch slot and `c` a map value, both valid during this run.
    unsafe {
        (*event).hdr.ids_flags = 0;
        (*event).hdr.ids = RequestIds { trace_id: [0; 16], span_id: [0; 8], parent_id: [0; 8] };
        if key != 0 {
            if let Some(c) = crate::propagate::request_ids(key) {
                (*event).hdr.ids_flags = (*c).flags;
                (*event).hdr.ids = (*c).ids;
            }
        }
    }
}

/// Sends the bytes one syscall (or one iovec of it) moved: `len` bytes at user address `buf`,
/// of which the configured prefix and, for long segments, the last `TAIL_BYTES` are copied.
/// `buf == 0` sends the length alone (sendfile). `source` is a `DataSource`.
///
/// Every length and offset handed to a helper is re-bounded right before the call
/// ([`bounds::at_most`]): see that module for what older verifiers reject otherwise.
#[inline(always)]
pub fn data(conn: &Conn, direction: u32, source: u32, buf: u64, len: u64) {
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let limit = settings().capture_bytes as u64;
    let prefix = if buf == 0 { 0 } else if len < limit { len } else { limit };
    let wants_tail = buf != 0 && len > prefix + TAIL_BYTES as u64;
    let mut captured: u64 = 0;
    let mut tail: u64 = 0;
    // SAFETY: `event` points to this CPU's scratch slot, large enough for a whole DataEvent;
    // the prefix is at most MAX_CAPTURE bytes and the tail TAIL_BYTES after it, the size of `data`.
    unsafe {
        // The ids staged in the scratch header for this call (`stage_ids`) stay.
        let (ids_flags, ids) = ((*event).hdr.ids_flags, (*event).hdr.ids);
        (*event).hdr = DataEventHeader {
            header: EventHeader {
                kind: EventKind::Data as u32,
                tgid: conn.tgid,
                tid: conn.tid,
                fd: conn.fd,
                ts_ns: conn.ts_ns,
                conn_gen: conn.conn_gen,
            },
            direction,
            source,
            // A read or write moves at most MAX_RW_COUNT (INT_MAX rounded down to a page) bytes,
            // and SSL_read/SSL_write an int's worth: the length always fits.
            len: len as u32,
            captured: 0,
            tail: 0,
            goid: crate::go::acting_goid(conn.tgid),
            ids_flags,
            _pad: 0,
            ids,
        };
        let dst = (*event).data.as_mut_ptr();
        let mut read_failed = false;
        if prefix > 0 {
            let n = at_most::<{ MAX_CAPTURE as u64 }>(prefix);
            if bpf_probe_read_user(dst.cast(), n as u32, buf as *const _) == 0 {
                captured = n;
            } else {
                count(Counter::PayloadReadFailed);
                read_failed = true;
            }
        }
        if wants_tail && !read_failed {
            let at = at_most::<{ MAX_CAPTURE as u64 }>(captured);
            let from = buf + len - TAIL_BYTES as u64;
            if bpf_probe_read_user(dst.add(at as usize).cast(), TAIL_BYTES as u32, from as *const _) == 0 {
                tail = TAIL_BYTES as u64;
            }
        }
        (*event).hdr.captured = captured as u32;
        (*event).hdr.tail = tail as u32;
        let size = at_most::<{ core::mem::size_of::<DataEvent>() as u64 }>(
            core::mem::size_of::<DataEventHeader>() as u64 + captured + tail,
        );
        if bpf_ringbuf_output(core::ptr::addr_of!(EVENTS) as *mut _, event.cast(), size, wakeup_flags(size, false)) != 0 {
            count(Counter::RingbufFull);
            return;
        }
    }
    count(if source == DataSource::Syscall as u32 { Counter::DataEvents } else { Counter::TlsDataEvents });
}
