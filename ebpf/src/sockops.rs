//! The TCP option that carries a request's trace context between hosts (`sock_ops`, attached
//! to the traced cgroup; `BPF_SOCK_OPS_HDR_OPT_LEN_CB`/`WRITE_HDR_OPT_CB`/`PARSE_HDR_OPT_CB`,
//! Linux >= 5.10).
//!
//! Only connections to other hosts take part: between two loopback sockets `propagate` hands
//! the context over in `RX_CTX` directly, and their client's segments run no callback here
//! (but the close), unless `--propagate=all`. A client socket writes the option, a server socket reads
//! it; neither pays for the other's callbacks.
//!
//! Sending: while a client request's context is in `TX_CTX` (from its first write until its
//! answer is read, see `propagate`), every segment of the connection carries the option
//! `ztrace_common::tcp_option` (kind 254, ExID, trace id, span id: 28 bytes). A segment whose
//! option space is already taken (SACK blocks) goes without it (counted). Receiving: an
//! option with ztrace's ExID on a segment is stored in `RX_CTX` for the server request that
//! the next read starts; both maps lose a connection's entry when its socket reaches
//! `TCP_CLOSE` (`BPF_SOCK_OPS_STATE_CB`), however it closed. No application byte changes; a
//! middlebox that strips unknown options makes the receiving request start a new trace
//! (`Counter::PropagateServerNoContext`).
//!
//! Client connections, once established, also go into `inject::CLIENT_SOCKS` (when the agent
//! attached the `sk_msg` program that adds `traceparent` to their HTTP/1 requests).

use aya_ebpf::{
    helpers::generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use ztrace_common::{tcp_option, Counter};

use crate::{
    inject,
    maps::count,
    propagate::{handed_over, RxCtx, WireCtx, RX_CTX, TX_CTX},
    sock::FlowKey,
};

/// Reads one `u32` field of the context with a constant offset from the context pointer: the
/// verifier refuses a load through a context pointer moved first (as a copied array would be).
macro_rules! ctx_u32 {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: `ops` is this program's context; the field is read in place.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.ops).$($field)+)) }
    };
}

const AF_INET: u32 = 2;
const OP_ACTIVE_ESTABLISHED: u32 = 4;
const OP_PASSIVE_ESTABLISHED: u32 = 5;
const OP_STATE_CB: u32 = 10;
const OP_TCP_LISTEN: u32 = 11;
const OP_PARSE_HDR_OPT: u32 = 13;
const OP_HDR_OPT_LEN: u32 = 14;
const OP_WRITE_HDR_OPT: u32 = 15;
const FLAG_STATE_CB: i32 = 1 << 2;
const FLAG_PARSE_UNKNOWN_HDR_OPT: i32 = 1 << 5;
/// `TCP_CLOSE` of `enum tcp_state`: the socket is done (also when it moves to TIME_WAIT).
const TCP_CLOSE: u32 = 7;
const FLAG_WRITE_HDR_OPT: i32 = 1 << 6;
/// The callbacks of the option: one per segment sent, one per segment received with an
/// unknown option.
const OPTION_FLAGS: i32 = FLAG_WRITE_HDR_OPT | FLAG_PARSE_UNKNOWN_HDR_OPT;

/// The option as written on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct WireOption {
    kind: u8,
    len: u8,
    exid: [u8; 2],
    trace_id: [u8; 16],
    span_id: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<WireOption>() == tcp_option::LEN);

/// `sock_ops` program of the traced cgroup, which also puts client sockets in
/// `inject::CLIENT_SOCKS` (the agent loads it when that socket map could be created).
#[sock_ops]
pub fn zt_sockops(ctx: SockOpsContext) -> u32 {
    sock_ops(&ctx, true)
}

/// The same without the socket map (which the kernel creates only with `CAP_NET_ADMIN`): the
/// TCP option only. It names no `CLIENT_SOCKS`, so it loads when that map is a stand-in.
#[sock_ops]
pub fn zt_sockops_option(ctx: SockOpsContext) -> u32 {
    sock_ops(&ctx, false)
}

#[inline(always)]
fn sock_ops(ctx: &SockOpsContext, with_inject: bool) -> u32 {
    match ctx_u32!(ctx, op) {
        OP_ACTIVE_ESTABLISHED => {
            let mut key = flow(ctx);
            let flags = ctx_u32!(ctx, bpf_sock_ops_cb_flags) as i32 & !OPTION_FLAGS;
            if handed_over(&key) {
                let _ = ctx.set_cb_flags(flags | FLAG_STATE_CB);
                return 1;
            }
            // A client writes the option; it reads none (answers carry no context).
            let _ = ctx.set_cb_flags(flags | FLAG_WRITE_HDR_OPT | FLAG_STATE_CB);
            if with_inject && inject::on() {
                // SAFETY: `ops` is this program's context, as the helper wants it.
                if inject::CLIENT_SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, 0).is_err() {
                    count(Counter::InjectSockMapFull);
                }
            }
        }
        OP_PASSIVE_ESTABLISHED => {
            // A server reads the option; it writes none (its answers carry no context). Its
            // loopback connections keep the reading callback, which runs only for segments
            // with an unknown option: from a client with `--propagate=all`.
            let flags = ctx_u32!(ctx, bpf_sock_ops_cb_flags) as i32 & !FLAG_WRITE_HDR_OPT;
            let _ = ctx.set_cb_flags(flags | FLAG_PARSE_UNKNOWN_HDR_OPT | FLAG_STATE_CB);
        }
        OP_TCP_LISTEN => {
            // Inherited by the connections it accepts, until they are established.
            let _ = ctx.set_cb_flags(
                ctx_u32!(ctx, bpf_sock_ops_cb_flags) as i32 | FLAG_PARSE_UNKNOWN_HDR_OPT | FLAG_STATE_CB,
            );
        }
        OP_STATE_CB => {
            // args[1] is the new state. A socket closed by the kernel alone (its process exited
            // or was killed without `close`, as PostgreSQL backends exit) never reaches
            // `propagate::on_close`: its contexts go here, so that churn cannot fill the maps.
            if ctx_u32!(ctx, __bindgen_anon_1.args[1]) == TCP_CLOSE {
                let flow = flow(ctx);
                let _ = TX_CTX.remove(&flow);
                let _ = RX_CTX.remove(&flow);
            }
        }
        OP_HDR_OPT_LEN => {
            let flow = flow(ctx);
            // SAFETY: only tested for presence.
            if unsafe { TX_CTX.get(&flow) }.is_some() {
                // SAFETY: ctx is this program's context; the helper checks the length.
                if unsafe { bpf_reserve_hdr_opt(ctx.ops.cast(), tcp_option::LEN as u32, 0) } != 0 {
                    count(Counter::PropagateOptionNoRoom);
                }
            }
        }
        OP_WRITE_HDR_OPT => {
            let flow = flow(ctx);
            // SAFETY: copied out at once.
            let Some(c) = (unsafe { TX_CTX.get(&flow) }).copied() else { return 1 };
            let opt = WireOption {
                kind: tcp_option::KIND,
                len: tcp_option::LEN as u8,
                exid: tcp_option::EXID.to_be_bytes(),
                trace_id: c.trace_id,
                span_id: c.span_id,
            };
            // SAFETY: `opt` is on this program's stack, `LEN` bytes long.
            let ret = unsafe {
                bpf_store_hdr_opt(ctx.ops.cast(), core::ptr::addr_of!(opt).cast(), tcp_option::LEN as u32, 0)
            };
            if ret == 0 {
                count(Counter::PropagateOptionWritten);
            }
        }
        OP_PARSE_HDR_OPT => {
            let mut opt = WireOption { kind: tcp_option::KIND, len: 4, exid: tcp_option::EXID.to_be_bytes(), trace_id: [0; 16], span_id: [0; 8] };
            // SAFETY: `opt` is on this program's stack, `LEN` bytes long; the helper searches
            // for kind 254 with the ExID in bytes 2..4 and copies the whole option there.
            let n = unsafe { bpf_load_hdr_opt(ctx.ops.cast(), core::ptr::addr_of_mut!(opt).cast(), tcp_option::LEN as u32, 0) };
            if n == tcp_option::LEN as i64 && opt.span_id != [0; 8] {
                let flow = flow(ctx);
                let fresh = WireCtx { trace_id: opt.trace_id, span_id: opt.span_id };
                // SAFETY: copied out at once.
                let before = unsafe { RX_CTX.get(&flow) }.map(|r| (r.ctx.span_id == fresh.span_id, r.taken));
                if !before.is_some_and(|(same, _)| same) {
                    // Replacing a context no read took yet: a read that gets the bytes of both
                    // cannot tell them apart (HTTP/2 streams; `propagate::h2_server_read`).
                    let crowded = before.is_some_and(|(_, taken)| taken == 0) as u32;
                    let _ = RX_CTX.insert(&flow, &RxCtx { ctx: fresh, taken: 0, crowded }, 0);
                    count(Counter::PropagateOptionReceived);
                }
            }
        }
        _ => {}
    }
    1
}

/// The connection's 4-tuple, as `sock::flow_of` builds it.
#[inline(always)]
fn flow(ctx: &SockOpsContext) -> FlowKey {
    let family = ctx_u32!(ctx, family);
    let mut flow = FlowKey { family, local_port: ctx_u32!(ctx, local_port) as u16, remote_port: 0, local_addr: [0; 16], remote_addr: [0; 16] };
    // Network byte order, in the upper 16 bits on kernels that widened it (5.x), else the lower.
    let rp = ctx_u32!(ctx, remote_port);
    let raw = if rp > 0xffff { (rp >> 16) as u16 } else { rp as u16 };
    flow.remote_port = u16::from_be(raw);
    if family == AF_INET {
        flow.local_addr[..4].copy_from_slice(&ctx_u32!(ctx, local_ip4).to_ne_bytes());
        flow.remote_addr[..4].copy_from_slice(&ctx_u32!(ctx, remote_ip4).to_ne_bytes());
    } else {
        let l = [ctx_u32!(ctx, local_ip6[0]), ctx_u32!(ctx, local_ip6[1]), ctx_u32!(ctx, local_ip6[2]), ctx_u32!(ctx, local_ip6[3])];
        let r = [ctx_u32!(ctx, remote_ip6[0]), ctx_u32!(ctx, remote_ip6[1]), ctx_u32!(ctx, remote_ip6[2]), ctx_u32!(ctx, remote_ip6[3])];
        for i in 0..4 {
            flow.local_addr[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
            flow.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
        }
    }
    flow.unmapped()
}
