//! A W3C `traceparent` that a plaintext HTTP/1 request brings with it, read by the kernel as
//! the server reads the request, so that the calls the server makes for it carry that trace on
//! the wire (an instrumented caller, a mesh proxy that adds the header, or the header a
//! client's host added where a middlebox stripped the TCP option).
//!
//! [`find`] checks that the read opens with an HTTP/1 method, copies its first [`MAX_HEAD`]
//! bytes into a per-CPU buffer, scans them for a line that starts with `traceparent:` (any
//! case) up to the head's blank line, and parses the value as the agent does (`agent/src/trace/context.rs`): `<version>-<32 hex>-<16
//! hex>-<2 hex>`, lower-case hex, version not `ff`, no trailing data after version `00`, ids
//! not all zero. Anything else (no such line, a head longer than the scan, a value split
//! across reads) finds nothing and the request keeps the ids it had.

use aya_ebpf::{helpers::generated::bpf_probe_read_user, macros::map, maps::PerCpuArray};

use crate::{
    bounds::at_most,
    http_head::{eq, is_method, low_bytes, lt, mask, MAX_HEAD, TRACEPARENT},
    propagate::WireCtx,
};

/// `<version>-<trace id>-<parent id>-<flags>`.
const VALUE_LEN: u64 = 55;
/// Room after the copied bytes for a value that starts near their end (its bytes past the copy
/// are never used: [`find`] checks the value's end against the bytes read).
const SLACK: u64 = 64;
const BUF_LEN: usize = (MAX_HEAD + SLACK) as usize;

/// The head being read, one per CPU.
#[map(name = "HEAD_COPY")]
static HEAD_COPY: PerCpuArray<[u8; BUF_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The context in the `traceparent` header of the HTTP/1 request head at `ptr` (user memory,
/// `len` bytes read), if it has a valid one.
#[inline(always)]
pub fn find(ptr: u64, len: u64) -> Option<WireCtx> {
    let n = if len < MAX_HEAD { len } else { MAX_HEAD };
    if n < 16 {
        return None;
    }
    // The method first: other protocols' requests (PostgreSQL, Redis, ...) cost 8 bytes.
    // SAFETY: user memory read through the helper, which checks the address.
    if !unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr as *const [u8; 8]) }.is_ok_and(is_method) {
        return None;
    }
    let buf = HEAD_COPY.get_ptr_mut(0)?;
    let size = at_most::<MAX_HEAD>(n);
    // SAFETY: the helper checks the user address; `size` bytes fit in the per-CPU buffer.
    if unsafe { bpf_probe_read_user(buf as *mut _, size as u32, ptr as *const _) } != 0 {
        return None;
    }
    let base = buf as *const u8;
    let at = value_start(base, n)?;
    // The value, and the byte after it, within the bytes read.
    if at + VALUE_LEN + 1 > n {
        return None;
    }
    parse(base, at_most::<{ MAX_HEAD - 1 }>(at))
}

/// Where the first `traceparent` line's value begins (after the colon and up to two spaces or
/// tabs), scanning the `n` bytes at `base` up to the head's blank line.
#[inline(always)]
fn value_start(base: *const u8, n: u64) -> Option<u64> {
    let (mut hi, mut lo, mut raw) = (0u64, 0u64, 0u64);
    let (mut line_pos, mut after_colon) = (0u64, 0u64);
    let mut i: u64 = 0;
    while i < MAX_HEAD {
        if i >= n {
            break;
        }
        // SAFETY: `i < MAX_HEAD`, within the buffer.
        let b = unsafe { *base.add(i as usize) } as u64;
        raw = ((raw << 8) | b) & 0xffff_ffff;
        hi = (hi << 8) | (lo >> 56);
        lo = (lo << 8) | (b | 0x20);
        line_pos += 1;
        let newline = eq(b, b'\n' as u64);
        let name = eq(line_pos, 12) & eq(lo, TRACEPARENT.1) & eq(hi & low_bytes(4), TRACEPARENT.0);
        after_colon |= mask(name & eq(after_colon, 0)) & (i + 1);
        line_pos &= mask(newline ^ 1);
        if newline & eq(raw, 0x0d0a_0d0a) != 0 {
            break;
        }
        i += 1;
    }
    if after_colon == 0 {
        return None;
    }
    let mut at = at_most::<MAX_HEAD>(after_colon);
    for _ in 0..2 {
        // SAFETY: `at <= MAX_HEAD + 1`, within the buffer.
        let b = unsafe { *base.add(at as usize) };
        if b == b' ' || b == b'\t' {
            at += 1;
        }
    }
    Some(at)
}

/// Parses the value at `base + at` (`at + VALUE_LEN < MAX_HEAD`, checked by the caller).
#[inline(always)]
fn parse(base: *const u8, at: u64) -> Option<WireCtx> {
    // SAFETY: `at < MAX_HEAD` and the reads below stay within `VALUE_LEN + 1` bytes after it,
    // inside the buffer's slack.
    let v = unsafe { base.add(at as usize) };
    // SAFETY: as above, for every `byte(i)` with `i <= VALUE_LEN`.
    let byte = |i: usize| unsafe { *v.add(i) } as u64;
    let mut bad = 0u64;
    let mut hex = |i: usize| {
        let (hi, ok_hi) = hex_digit(byte(i));
        let (lo, ok_lo) = hex_digit(byte(i + 1));
        bad |= (ok_hi & ok_lo) ^ 1;
        ((hi << 4) | lo) as u8
    };
    let version = hex(0) as u64;
    let mut ctx = WireCtx { trace_id: [0; 16], span_id: [0; 8] };
    for j in 0..16 {
        ctx.trace_id[j] = hex(3 + 2 * j);
    }
    for j in 0..8 {
        ctx.span_id[j] = hex(36 + 2 * j);
    }
    let _flags = hex(53);
    let dashes = eq(byte(2), b'-' as u64) & eq(byte(35), b'-' as u64) & eq(byte(52), b'-' as u64);
    // After the flags: the line's end or trailing space; a later version may add `-...`.
    let after = byte(VALUE_LEN as usize);
    let end = eq(after, b'\r' as u64) | eq(after, b'\n' as u64) | eq(after, b' ' as u64) | eq(after, b'\t' as u64);
    let more = eq(after, b'-' as u64) & (eq(version, 0) ^ 1);
    bad |= (dashes & (end | more)) ^ 1;
    bad |= eq(version, 0xff);
    let trace = u64::from_ne_bytes([ctx.trace_id[0], ctx.trace_id[1], ctx.trace_id[2], ctx.trace_id[3], ctx.trace_id[4], ctx.trace_id[5], ctx.trace_id[6], ctx.trace_id[7]])
        | u64::from_ne_bytes([ctx.trace_id[8], ctx.trace_id[9], ctx.trace_id[10], ctx.trace_id[11], ctx.trace_id[12], ctx.trace_id[13], ctx.trace_id[14], ctx.trace_id[15]]);
    bad |= eq(trace, 0) | eq(u64::from_ne_bytes(ctx.span_id), 0);
    if bad != 0 {
        None
    } else {
        Some(ctx)
    }
}

/// A lower-case hex digit's value and 1, or 0 and 0.
#[inline(always)]
fn hex_digit(c: u64) -> (u64, u64) {
    let digit = lt(c, b'9' as u64 + 1) & (lt(c, b'0' as u64) ^ 1);
    let letter = lt(c, b'f' as u64 + 1) & (lt(c, b'a' as u64) ^ 1);
    let value = (mask(digit) & c.wrapping_sub(b'0' as u64)) | (mask(letter) & c.wrapping_sub(b'a' as u64 - 10));
    (value & 0xf, digit | letter)
}
