//! Go's `crypto/tls`: `(*Conn).Write` and `(*Conn).Read`, Go >= 1.17 (register ABI).
//!
//! Entry: receiver `*tls.Conn` in RAX, the slice's pointer in RBX and length in RCX; the current
//! goroutine (`g`) in R14. Return: `n` in RAX. `Write` is sent at its entry (all its bytes are
//! written before it returns). `Read`'s returns are caught by plain uprobes on each of its RET
//! instructions (the agent finds them by decoding its machine code): uretprobes rewrite the return
//! address on the stack, which Go moves when it grows a goroutine's stack.
//!
//! A goroutine can move between threads while it waits for the network, so calls are keyed by
//! (tgid, g), not by thread, and the socket comes from the connection itself: `tls.Conn.conn`
//! (a `net.Conn` interface, data word at +8) → `*net.TCPConn` → `conn.fd *netFD` (+0) →
//! `netFD.pfd` (+0) → `poll.FD.Sysfd` (+16). These offsets hold from Go 1.17 to at least 1.24;
//! the agent reads them from the binary's DWARF when it has some (else from its table by Go
//! version) and passes them in each entry probe's attach cookie; it probes only binaries whose
//! offsets it knows. The fd is checked to be a TCP socket before anything is sent.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user},
    EbpfContext as _,
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use ztrace_common::{ConnRole, Counter, DataSource, Direction};

use crate::{
    emit, filter,
    maps::{call, count, SOCKS},
    propagate::{self, Head},
    sock,
    syscalls::ids,
    tls::mark_tls,
};

const EGRESS: u32 = Direction::Egress as u32;
const INGRESS: u32 = Direction::Ingress as u32;

/// `tls.Conn.conn`'s data word, `net.conn.fd`, `netFD.pfd` + `poll.FD.Sysfd`: used when a probe
/// carries no cookie (the agent always gives one; these are its table's values).
const CONN_IFACE_DATA: u64 = 8;
const TCPCONN_FD: u64 = 0;
const NETFD_SYSFD: u64 = 16;

/// The offsets of the probed binary: bit 63 of the attach cookie says it carries them, 16 bits
/// each from bit 0 (`conn_iface_data`), 16 (`tcpconn_fd`) and 32 (`netfd_sysfd`).
#[inline(always)]
fn offsets(ctx: &ProbeContext) -> (u64, u64, u64) {
    // SAFETY: the helper only reads the cookie of the running program's attachment.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie >> 63 == 0 {
        return (CONN_IFACE_DATA, TCPCONN_FD, NETFD_SYSFD);
    }
    (cookie & 0xffff, (cookie >> 16) & 0xffff, (cookie >> 32) & 0xffff)
}

/// Key of a Go call in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    /// The goroutine (`g` pointer).
    pub g: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// A Go `crypto/tls` `Read` in progress (a `Write` is sent at its entry).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoCall {
    pub buf: u64,
    pub enter_ns: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// Go calls in progress: (tgid, g) → call. 16384 entries. Full → `Counter::TlsArgsMapFull`.
#[map(name = "GO_TLS_ACTIVE")]
pub static GO_TLS_ACTIVE: HashMap<GoKey, GoCall> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: user memory read through the helper, which checks the address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: u32) -> u32 {
    let (tgid, _, _) = ids();
    if !filter::is_traced(tgid) {
        return 0;
    }
    // SAFETY: a uprobe's context is the user registers at the probed instruction.
    let (conn, buf, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    let (iface_data, tcpconn_fd, netfd_sysfd) = offsets(ctx);
    let fd = (|| {
        let tcp_conn = read_u64(conn + iface_data)?;
        let netfd = read_u64(tcp_conn + tcpconn_fd)?;
        read_u64(netfd + netfd_sysfd)
    })();
    let Some(fd) = fd else {
        count(Counter::TlsNoSocket);
        return 0;
    };
    let fd = fd as i32;
    if direction == EGRESS {
        // The plaintext is all there at entry, and Write returns only once it is all written
        // (or the connection failed): sent now, it is in the ring buffer before the answer,
        // which another thread may read before this goroutine reaches its RET.
        // SAFETY: as above.
        let len = unsafe { (*ctx.regs).rcx };
        // SAFETY: the helper has no preconditions.
        send(ctx, tgid, fd, EGRESS, buf, len as i64, unsafe { bpf_ktime_get_ns() });
        return 0;
    }
    // The socket's own bytes are ciphertext from now on.
    if let Some(mut entry) = sock::lookup_tcp(tgid, fd) {
        mark_tls(tgid, fd, &mut entry);
    }
    let call = GoCall {
        buf,
        // SAFETY: the helper has no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd,
        _pad: 0,
    };
    if GO_TLS_ACTIVE.insert(&GoKey { g, tgid, _pad: 0 }, &call, 0).is_err() {
        count(Counter::TlsArgsMapFull);
    }
    0
}

#[inline(always)]
fn ret(ctx: &ProbeContext) -> u32 {
    let (tgid, _, _) = ids();
    // SAFETY: as in `enter`.
    let (n, g) = unsafe { ((*ctx.regs).rax as i64, (*ctx.regs).r14) };
    let key = GoKey { g, tgid, _pad: 0 };
    // SAFETY: copied out at once.
    let Some(call) = (unsafe { GO_TLS_ACTIVE.get(&key) }).copied() else { return 0 };
    let _ = GO_TLS_ACTIVE.remove(&key);
    // SAFETY: the helper has no preconditions.
    // Only reads wait for their RET (a write is sent at its entry): the direction is a
    // constant, which keeps the write's rules out of this program (its stack is near 6.1's limit).
    send(ctx, tgid, call.fd, INGRESS, call.buf, n, unsafe { bpf_ktime_get_ns() });
    0
}

/// Announces the connection if needed, marks it TLS, and sends `n` plaintext bytes at `buf`.
#[inline(always)]
fn send(ctx: &ProbeContext, tgid: u32, fd: i32, direction: u32, buf: u64, n: i64, ts: u64) {
    let (_, tid, _) = ids();
    let Some(mut entry) = sock::lookup_tcp(tgid, fd) else {
        if n > 0 {
            count(Counter::TlsNoSocket);
        }
        return;
    };
    if entry.tls == 0 || entry.announced == 0 {
        if entry.announced == 0 {
            sock::announce(tgid, tid, fd, &mut entry, ConnRole::Unknown);
        }
        entry.tls = 1;
        let _ = SOCKS.insert(&sock::key(tgid, fd), &entry, 0);
    }
    if n <= 0 {
        return;
    }
    // The request these plaintext bytes start, if any (`propagate`): a Write is a client
    // request's first bytes at its entry, before the syscalls inside send its segments; a Read's
    // bytes are in hand at its RET. The ciphertext syscalls inside take no part (`entry.tls`).
    let ids_key = if direction == EGRESS {
        if propagate::on_write_enter(tgid, tid, fd, &entry, 1, Head { call: call::PLAIN, ptr: buf, len: n as u64 }) == 1 {
            sock::key(tgid, fd)
        } else {
            0
        }
    } else {
        propagate::on_read_exit(tgid, tid, fd, &entry, 1, Head { call: call::PLAIN, ptr: buf, len: n as u64 })
    };
    let conn = emit::Conn { tgid, tid, fd, conn_gen: entry.conn_gen, ts_ns: ts };
    if direction == INGRESS {
        crate::tls::emit_read(ctx, &conn, DataSource::GoTls as u32, ids_key, false, buf, n as u64);
    } else {
        emit::stage_ids(ids_key);
        emit::data(&conn, direction, DataSource::GoTls as u32, buf, n as u64);
    }
}

/// Uprobe on the entry of `crypto/tls.(*Conn).Write`.
#[uprobe]
pub fn zt_go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, EGRESS)
}

/// Uprobe on the entry of `crypto/tls.(*Conn).Read`.
#[uprobe]
pub fn zt_go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, INGRESS)
}

/// Uprobe on each RET instruction of `(*Conn).Read`.
#[uprobe]
pub fn zt_go_tls_ret(ctx: ProbeContext) -> u32 {
    ret(&ctx)
}
