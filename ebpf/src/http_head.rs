//! HTTP/1 request heads as the kernel programs scan them: one byte per loop step, every test
//! computed as arithmetic rather than branched on, so that the verifier walks a scan of
//! [`MAX_HEAD`] bytes once per byte position instead of once per combination of states. Used by
//! `inject` (the head a client writes) and `traceparent` (the head a server reads).

/// Bytes of a request head a program scans for its end and its headers.
pub const MAX_HEAD: u64 = 1024;

/// The last 16 bytes seen, lower-cased with `| 0x20` (which maps `\r` to `-` and `\n` to `*`),
/// as the scan's two shift registers hold them: `(older 8, newer 8)`, the newest byte lowest.
pub const fn window(name: &[u8]) -> (u64, u64) {
    let mut hi = 0u64;
    let mut lo = 0u64;
    let mut i = 0;
    while i < name.len() {
        hi = (hi << 8) | (lo >> 56);
        lo = (lo << 8) | (name[i] | 0x20) as u64;
        i += 1;
    }
    (hi, lo)
}

/// A mask of the `n` lowest bytes of a `u64`.
pub const fn low_bytes(n: u32) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

/// The header name both scans look for, as [`window`] holds it.
pub const TRACEPARENT: (u64, u64) = window(b"traceparent:");

/// Whether the first bytes are an HTTP/1 method and a space.
#[inline(always)]
pub fn is_method(first: [u8; 8]) -> bool {
    matches!(&first[..4], b"GET " | b"PUT ")
        || matches!(&first[..5], b"POST " | b"HEAD ")
        || matches!(&first[..6], b"PATCH " | b"TRACE ")
        || &first[..7] == b"DELETE "
        || &first == b"OPTIONS "
}

/// 1 when `x != 0`, else 0, computed without a compare. Every flag of the scan is such a
/// value: the verifier then never decides a branch on a value it knows exactly, marks no scan
/// state precise, and walks each byte position once instead of once per combination of
/// states. `black_box` hides the value's range from the compiler, which would otherwise turn
/// the arithmetic back into a compare and a branch.
#[inline(always)]
pub fn nonzero(x: u64) -> u64 {
    let folded = (x >> 32) | (x & 0xffff_ffff);
    (core::hint::black_box(folded) + 0xffff_ffff) >> 32
}

/// 1 when `a == b`, else 0.
#[inline(always)]
pub fn eq(a: u64, b: u64) -> u64 {
    nonzero(a ^ b) ^ 1
}

/// 1 when `a < b`, for values below 2^63.
#[inline(always)]
pub fn lt(a: u64, b: u64) -> u64 {
    core::hint::black_box(core::hint::black_box(a.wrapping_sub(b)) >> 63)
}

/// All ones when `flag` is 1, zero when 0.
#[inline(always)]
pub fn mask(flag: u64) -> u64 {
    0u64.wrapping_sub(flag)
}
