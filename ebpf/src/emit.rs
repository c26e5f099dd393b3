//! Writing events into the `EVENTS` ring buffer, counting every event that does not fit.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_probe_read_user, bpf_ringbuf_output},
    },
    maps::ring_buf::RingBufEntry,
};
use ztrace_common::{Counter, DataEventHeader, DataSource, EventHeader, EventKind, MAX_CAPTURE};

use crate::{
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
        ev.submit(0);
    }
}

/// Sends the bytes one syscall (or one iovec of it) moved: `len` bytes at user address `buf`,
/// of which the configured prefix is copied. `buf == 0` sends the length alone (sendfile).
#[inline(always)]
pub fn data(tgid: u32, tid: u32, fd: i32, conn_gen: u64, direction: u32, buf: u64, len: u64) {
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let limit = settings().capture_bytes as u64;
    let mut captured = if buf == 0 { 0 } else if len < limit { len } else { limit };
    if captured > MAX_CAPTURE as u64 {
        captured = MAX_CAPTURE as u64;
    }
    // SAFETY: `event` points to this CPU's scratch slot, large enough for a whole DataEvent;
    // the copy length is bounded by MAX_CAPTURE, the size of `data`.
    unsafe {
        (*event).hdr = DataEventHeader {
            header: header(EventKind::Data, tgid, tid, fd, conn_gen),
            direction,
            source: DataSource::Syscall as u32,
            len: if len > u32::MAX as u64 { u32::MAX } else { len as u32 },
            captured: captured as u32,
        };
        if captured > 0 {
            let dst = (*event).data.as_mut_ptr();
            if bpf_probe_read_user(dst.cast(), captured as u32, buf as *const _) != 0 {
                count(Counter::PayloadReadFailed);
                captured = 0;
                (*event).hdr.captured = 0;
            }
        }
        let size = core::mem::size_of::<DataEventHeader>() as u64 + captured;
        if bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS) as *mut _,
            event.cast(),
            size,
            0,
        ) != 0
        {
            count(Counter::RingbufFull);
            return;
        }
    }
    count(Counter::DataEvents);
}
