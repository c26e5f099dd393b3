//! `traceparent` added to plaintext HTTP/1 requests that carry none (`sk_msg` on the socket
//! map `CLIENT_SOCKS`, Linux >= 4.17 for the program, `bpf_msg_push_data` >= 4.20).
//!
//! `sockops` puts each client socket of the traced cgroup in `CLIENT_SOCKS` when its
//! connection is established (once the agent attached this program, `INJECT_ON`). Every
//! message such a socket sends then passes [`zt_inject`] before TCP sees it. When the message
//! is the first of a client request to which `propagate` gave ids at the write's entry (its
//! context is in `TX_CTX`), and it opens with a whole HTTP/1 request head that has no
//! `traceparent`, the program inserts `traceparent: 00-<trace id>-<client span id>-01\r\n`
//! right after the request line: the ids of the CLIENT span and of the TCP option.
//!
//! Left as they were (and counted by reason): a head not whole within the message or the
//! scan window ([`MAX_HEAD`] bytes), a request that carries a `traceparent` already, a
//! message the kernel could not grow. Never touched: any message that is not the first of a
//! request (`INJECT_STATE` remembers the request it decided on, so its later writes, the
//! rest of a pipelined batch and bodies pass as they are), a body announced by
//! `Content-Length` that follows its head in later messages — also after a
//! `100 Continue`, which `propagate` takes for a new request —, TLS records and anything
//! that does not open with an HTTP/1 request line. The writer's syscall returns the bytes
//! it passed; ztrace's own capture of the write sees the original bytes.

use aya_ebpf::{
    helpers::generated::{bpf_msg_pull_data, bpf_msg_push_data},
    macros::{map, sk_msg},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, SockHash},
    programs::SkMsgContext,
};
use ztrace_common::Counter;

use crate::{
    bounds::at_most,
    http_head::{self, eq, is_method, low_bytes, lt, mask, MAX_HEAD, TRACEPARENT},
    maps::count,
    propagate::TX_CTX,
    sock::FlowKey,
};

/// `traceparent: 00-` + 32 + `-` + 16 + `-01\r\n`.
const HEADER_LEN: u64 = 70;
const SK_PASS: u32 = 1;
const AF_INET: u32 = 2;

/// Client sockets whose messages [`zt_inject`] sees, by 4-tuple. 65536 entries; full →
/// `Counter::InjectSockMapFull` (that socket's requests go without a header). A socket leaves
/// the map when it closes.
#[map(name = "CLIENT_SOCKS")]
pub static CLIENT_SOCKS: SockHash<FlowKey> = SockHash::with_max_entries(65536, 0);

/// `[0]` = 1 once the agent attached [`zt_inject`] to `CLIENT_SOCKS`.
#[map(name = "INJECT_ON")]
static INJECT_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Whether `sockops` should put client sockets in `CLIENT_SOCKS`.
#[inline(always)]
pub fn on() -> bool {
    INJECT_ON.get(0).is_some_and(|v| *v == 1)
}

/// Where a connection's requests stand for injection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InjectState {
    /// The client span id of the request last decided on (injected or left).
    pub span_id: [u8; 8],
    /// Body bytes its head announced that have not been sent yet.
    pub body_left: u64,
}

/// Injection state by the connection's 4-tuple (as `TX_CTX`). LRU, 65536 entries; removed at
/// close (`propagate::on_close`).
#[map(name = "INJECT_STATE")]
pub static INJECT_STATE: LruHashMap<FlowKey, InjectState> = LruHashMap::with_max_entries(65536, 0);

/// `[0]` = [`zt_inject_write`]: the scan hands the write over by a tail call, so that the
/// verifier walks the write once, not once for every byte position where the scan may stop.
#[map(name = "INJECT_JUMP")]
static INJECT_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What the scan hands the write: where and which ids.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingHeader {
    pub line_end: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// One per CPU: the scan and the write it tail-calls run on one CPU, one after the other.
#[map(name = "INJECT_PENDING")]
static INJECT_PENDING: PerCpuArray<PendingHeader> = PerCpuArray::with_max_entries(1, 0);

/// Reads one `u32` field of `sk_msg_md` in place (constant offset from the context).
macro_rules! msg_u32 {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: `msg` is this program's context; the field is read in place.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.msg).$($field)+)) }
    };
}

/// `sk_msg` program on `CLIENT_SOCKS`: adds the request's `traceparent`, never drops or
/// redirects a message.
#[sk_msg]
pub fn zt_inject(ctx: SkMsgContext) -> u32 {
    inject(&ctx);
    SK_PASS
}

#[inline(always)]
fn inject(ctx: &SkMsgContext) {
    let flow = flow(ctx);
    // SAFETY: copied out at once.
    let Some(wire) = (unsafe { TX_CTX.get(&flow) }).copied() else { return };
    let size = msg_u32!(ctx, size) as u64;
    // SAFETY: only tested for presence.
    if unsafe { INJECT_STATE.get(&flow) }.is_none() {
        let fresh = InjectState { span_id: [0; 8], body_left: 0 };
        if INJECT_STATE.insert(&flow, &fresh, 0).is_err() {
            count(Counter::PropagateMapFull);
            return;
        }
    }
    let Some(state) = INJECT_STATE.get_ptr_mut(&flow) else { return };
    // SAFETY: a pointer into the map's value, valid during this program run.
    let state = unsafe { &mut *state };
    let new_request = state.span_id != wire.span_id;
    state.span_id = wire.span_id;
    if !new_request || state.body_left > 0 {
        // More of a request decided on already (its body, the rest of a pipelined batch), or
        // a body sent after a `100 Continue`.
        state.body_left = state.body_left.saturating_sub(size);
        return;
    }
    if !opens_with_method(ctx) {
        return; // TLS, another protocol, or too short a first piece to tell
    }
    let want = if size < MAX_HEAD { size } else { MAX_HEAD };
    // The head in one piece (a no-op when the first part of the message holds it already).
    // SAFETY: the helper checks the range against the message.
    unsafe { bpf_msg_pull_data(ctx.msg, 0, want as u32, 0) };
    let head = scan(ctx);
    match head.outcome {
        Outcome::NotHttp => return,
        Outcome::Split => {
            count(if size > MAX_HEAD { Counter::InjectHeadTooLong } else { Counter::InjectHeadSplit });
            return;
        }
        Outcome::Whole => {}
    }
    let after_head = size.saturating_sub(head.head_end);
    state.body_left = head.content_length.saturating_sub(after_head);
    if head.has_traceparent {
        count(Counter::InjectHadOne);
        return;
    }
    let Some(pending) = INJECT_PENDING.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, valid during this program run.
    unsafe { *pending = PendingHeader { line_end: head.line_end, trace_id: wire.trace_id, span_id: wire.span_id } };
    // SAFETY: the context is this program's; on success the call does not return.
    unsafe { INJECT_JUMP.tail_call(ctx, 0) };
    count(Counter::InjectFailed);
}

/// The second half of [`zt_inject`], reached by its tail call: grows the message and writes
/// the header that [`PendingHeader`] describes.
#[sk_msg]
pub fn zt_inject_write(ctx: SkMsgContext) -> u32 {
    let Some(pending) = INJECT_PENDING.get(0).copied() else { return SK_PASS };
    let at = at_most::<MAX_HEAD>(pending.line_end);
    if write_header(&ctx, at as u32, &pending.trace_id, &pending.span_id) {
        count(Counter::InjectAdded);
    } else {
        count(Counter::InjectFailed);
    }
    SK_PASS
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The message does not open with an HTTP/1 request line.
    NotHttp,
    /// A request line, but the head does not end within the bytes scanned.
    Split,
    Whole,
}

struct Head {
    outcome: Outcome,
    /// Offset just after the request line's CRLF: where the header goes.
    line_end: u64,
    /// Offset just after the head's blank line.
    head_end: u64,
    content_length: u64,
    has_traceparent: bool,
}

const CONTENT_LENGTH: (u64, u64) = http_head::window(b"content-length:");
const HTTP11: u64 = http_head::window(b"tp/1.1\r\n").1;
const HTTP10: u64 = http_head::window(b"tp/1.0\r\n").1;

/// Whether the message's first part opens with an HTTP/1 method.
#[inline(always)]
fn opens_with_method(ctx: &SkMsgContext) -> bool {
    let data = ctx.data();
    if data + 8 > ctx.data_end() {
        return false;
    }
    // SAFETY: checked above: 8 bytes of the message are readable at `data`.
    is_method(unsafe { core::ptr::read_unaligned(data as *const [u8; 8]) })
}

/// Scans the message's first bytes (at most [`MAX_HEAD`]) for the request line, the end of
/// the head, and the `traceparent` and `Content-Length` header lines. The loop's body has two
/// branches (the end of the bytes, the end of the scan); everything else is arithmetic.
#[inline(always)]
fn scan(ctx: &SkMsgContext) -> Head {
    let mut head = Head { outcome: Outcome::NotHttp, line_end: 0, head_end: 0, content_length: 0, has_traceparent: false };
    let data = ctx.data();
    let end = ctx.data_end();
    if data + 8 > end {
        return head;
    }
    // SAFETY: checked above: 8 bytes of the message are readable at `data`.
    let first = unsafe { core::ptr::read_unaligned(data as *const [u8; 8]) };
    if !is_method(first) {
        return head;
    }
    let (mut hi, mut lo, mut raw) = (0u64, 0u64, 0u64);
    let (mut line_pos, mut line_end, mut head_end) = (0u64, 0u64, 0u64);
    let (mut bad, mut traceparent, mut in_length, mut length) = (0u64, 0u64, 0u64, 0u64);
    let mut i: u64 = 0;
    while i < MAX_HEAD {
        let p = data + i as usize;
        if p + 1 > end {
            break;
        }
        // SAFETY: checked above: the byte at `p` is within the message.
        let b = unsafe { *(p as *const u8) } as u64;
        raw = ((raw << 8) | b) & 0xffff_ffff;
        hi = (hi << 8) | (lo >> 56);
        lo = (lo << 8) | (b | 0x20);
        line_pos += 1;
        let newline = eq(b, b'\n' as u64);
        // The request line ends at the first newline: `... HTTP/1.x\r\n`.
        let first_line = newline & eq(line_end, 0);
        let good_line = eq(raw & 0xffff, 0x0d0a) & (eq(lo, HTTP11) | eq(lo, HTTP10));
        bad |= first_line & (good_line ^ 1);
        line_end |= mask(first_line) & (i + 1);
        let blank = newline & (first_line ^ 1) & eq(raw, 0x0d0a_0d0a);
        head_end |= mask(blank) & (i + 1);
        traceparent |= eq(line_pos, 12) & eq(lo, TRACEPARENT.1) & eq(hi & low_bytes(4), TRACEPARENT.0);
        // Content-Length: digits after the colon (spaces allowed before them).
        let digit = lt(b, b'9' as u64 + 1) & (lt(b, b'0' as u64) ^ 1);
        let space = eq(b, b' ' as u64) | eq(b, b'\t' as u64);
        let take = in_length & digit & lt(length, 1 << 40);
        length += mask(take) & (length * 9 + b.wrapping_sub(b'0' as u64));
        let starts = eq(line_pos, 15) & eq(lo, CONTENT_LENGTH.1) & eq(hi & low_bytes(7), CONTENT_LENGTH.0);
        in_length = (in_length & (digit | space)) | starts;
        line_pos &= mask(newline ^ 1);
        if bad | blank != 0 {
            break;
        }
        i += 1;
    }
    if bad != 0 {
        return head;
    }
    head.outcome = if head_end != 0 { Outcome::Whole } else { Outcome::Split };
    head.line_end = line_end;
    head.head_end = head_end;
    head.content_length = length;
    head.has_traceparent = traceparent != 0;
    head
}

/// One hex digit, lower case.
#[inline(always)]
fn hex_digit(n: u8) -> u8 {
    let n = n & 0xf;
    // 39 = 'a' - '0' - 10: added when n > 9 (9 - n wraps to >= 0xf7).
    n + b'0' + ((9u8.wrapping_sub(n) >> 7) & 1) * 39
}

/// Grows the message by [`HEADER_LEN`] bytes at `at` and writes the header there.
#[inline(always)]
fn write_header(ctx: &SkMsgContext, at: u32, trace_id: &[u8; 16], span_id: &[u8; 8]) -> bool {
    // SAFETY: the helper checks `at` against the message.
    if unsafe { bpf_msg_push_data(ctx.msg, at, HEADER_LEN as u32, 0) } != 0 {
        return false;
    }
    // The inserted bytes are a scatterlist element of their own: point the message's data at
    // them (no copy: the range lies within that one element).
    // SAFETY: the helper checks the range against the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + HEADER_LEN as u32, 0) } != 0 {
        return false;
    }
    let p = ctx.data();
    if p + HEADER_LEN as usize > ctx.data_end() {
        return false;
    }
    let out = p as *mut u8;
    let put = |i: usize, b: u8| {
        // SAFETY: `i < HEADER_LEN`, and `HEADER_LEN` bytes from `p` are within the message.
        unsafe { *out.add(i) = b };
    };
    let name = b"traceparent: 00-";
    let mut i = 0;
    while i < name.len() {
        put(i, name[i]);
        i += 1;
    }
    let mut j = 0;
    while j < 16 {
        put(16 + 2 * j, hex_digit(trace_id[j] >> 4));
        put(17 + 2 * j, hex_digit(trace_id[j]));
        j += 1;
    }
    put(48, b'-');
    let mut j = 0;
    while j < 8 {
        put(49 + 2 * j, hex_digit(span_id[j] >> 4));
        put(50 + 2 * j, hex_digit(span_id[j]));
        j += 1;
    }
    let tail = b"-01\r\n";
    let mut k = 0;
    while k < tail.len() {
        put(65 + k, tail[k]);
        k += 1;
    }
    true
}

/// The connection's 4-tuple, as `sock::flow_of` and `sockops` build it.
#[inline(always)]
fn flow(ctx: &SkMsgContext) -> FlowKey {
    let family = msg_u32!(ctx, family);
    let mut flow = FlowKey { family, local_port: msg_u32!(ctx, local_port) as u16, remote_port: 0, local_addr: [0; 16], remote_addr: [0; 16] };
    let rp = msg_u32!(ctx, remote_port);
    let raw = if rp > 0xffff { (rp >> 16) as u16 } else { rp as u16 };
    flow.remote_port = u16::from_be(raw);
    if family == AF_INET {
        flow.local_addr[..4].copy_from_slice(&msg_u32!(ctx, local_ip4).to_ne_bytes());
        flow.remote_addr[..4].copy_from_slice(&msg_u32!(ctx, remote_ip4).to_ne_bytes());
    } else {
        let l = [msg_u32!(ctx, local_ip6[0]), msg_u32!(ctx, local_ip6[1]), msg_u32!(ctx, local_ip6[2]), msg_u32!(ctx, local_ip6[3])];
        let r = [msg_u32!(ctx, remote_ip6[0]), msg_u32!(ctx, remote_ip6[1]), msg_u32!(ctx, remote_ip6[2]), msg_u32!(ctx, remote_ip6[3])];
        for i in 0..4 {
            flow.local_addr[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
            flow.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
        }
    }
    flow.unmapped()
}
