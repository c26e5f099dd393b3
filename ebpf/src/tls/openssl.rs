//! OpenSSL (1.1, 3.x, and BoringSSL, which keeps the same four functions): `SSL_read`,
//! `SSL_write`, `SSL_read_ex`, `SSL_write_ex`, in a shared `libssl.so.*` or linked into an
//! executable (Node.js). Uprobes at entry, one uretprobe program for all four returns.
//!
//! Results: the plain forms return the byte count, or <= 0 (WANT_READ on a non-blocking socket,
//! an alert, a handshake step): nothing is sent then, but the socket learned is remembered.
//! The `_ex` forms return 1 and write the count through their fourth argument.
//! `SSL_set_fd` (entry only) ties an `SSL*` to its socket before the first data call.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use ztrace_common::{ConnRole, Counter, DataSource, Direction};

use crate::{
    emit, filter,
    maps::{call, count, SslKey, SslSocket, TlsCall, LAST_READ_FD, PENDING_SSL, SOCKS, SSL_FDS, TLS_ACTIVE, TLS_MEMBIO},
    propagate::{self, Head},
    sock,
    syscalls::ids,
    tls,
};

const EGRESS: u32 = Direction::Egress as u32;
const INGRESS: u32 = Direction::Ingress as u32;

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: u32, ex: bool) -> u32 {
    let (tgid, _, pid_tgid) = ids();
    if !filter::is_traced(tgid) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(call) = TLS_ACTIVE.get_ptr_mut(&pid_tgid) {
        // SAFETY: this thread's own entry. The same SSL* again: a nested call (an `_ex` form
        // through the plain one); another SSL*: a stale entry whose return was never seen.
        unsafe {
            if (*call).ssl == ssl {
                (*call).depth += 1;
                return 0;
            }
        }
    }
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    // A write in a memory-BIO process starts its request here: no syscall inside the call will.
    let ids_key = if direction == EGRESS { membio_write_start(tgid, ssl, buf, ctx.arg(2).unwrap_or(0)) } else { 0 };
    let call = TlsCall {
        ssl,
        buf,
        len_ptr: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        // SAFETY: the helper has no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        direction,
        fd: -1,
        ex: ex as u32,
        depth: 0,
        ids_key,
    };
    if TLS_ACTIVE.insert(&pid_tgid, &call, 0).is_err() {
        count(Counter::TlsArgsMapFull);
    }
    0
}

/// The entry of an `SSL_write` in a process whose TLS calls make no syscalls (a memory BIO:
/// Node.js), on an `SSL*` whose socket is known: a client request may start here, before the
/// ciphertext this call produces is written (`propagate::on_write_enter`). Its key, else 0.
/// A call that then writes nothing (the handshake is not done) takes the start back at its
/// return (`propagate::unstart`): the retry starts it again.
#[inline(always)]
fn membio_write_start(tgid: u32, ssl: u64, buf: u64, len: u64) -> u64 {
    // SAFETY: only tested for presence.
    if unsafe { TLS_MEMBIO.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(known) = (unsafe { SSL_FDS.get(&SslKey { ssl, tgid, _pad: 0 }) }).copied() else { return 0 };
    let Some(entry) = sock::lookup_tcp(tgid, known.fd) else { return 0 };
    if entry.conn_gen != known.conn_gen {
        return 0;
    }
    let (_, tid, _) = ids();
    if propagate::on_write_enter(tgid, tid, known.fd, &entry, 1, Head { call: call::PLAIN, ptr: buf, len }) == 1 {
        sock::key(tgid, known.fd)
    } else {
        0
    }
}

/// Uprobe on `SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn zt_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, INGRESS, false)
}

/// Uprobe on `SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn zt_ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, INGRESS, true)
}

/// Uprobe on `SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn zt_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, EGRESS, false)
}

/// Uprobe on `SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn zt_ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, EGRESS, true)
}

/// Uprobe on `SSL_set_fd(SSL *ssl, int fd)`: the socket of an `SSL*` known before any data
/// call. A server that reads the client's Finished and the first request in one read (nginx
/// with TLS 1.3) gets that request from OpenSSL's buffer in an `SSL_read` that makes no
/// syscall: without this, nothing would tie it to its socket.
#[uprobe]
pub fn zt_ssl_set_fd(ctx: ProbeContext) -> u32 {
    let (tgid, _, _) = ids();
    if !filter::is_traced(tgid) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let fd: i32 = ctx.arg(1).unwrap_or(-1);
    if ssl == 0 || fd < 0 {
        return 0;
    }
    if let Some(entry) = sock::lookup_tcp(tgid, fd) {
        let key = SslKey { ssl, tgid, _pad: 0 };
        let _ = SSL_FDS.insert(&key, &SslSocket { conn_gen: entry.conn_gen, fd, _pad: 0 }, 0);
    }
    0
}

/// Uretprobe on all four: sends the plaintext moved, on the call's socket.
#[uretprobe]
pub fn zt_ssl_ret(ctx: RetProbeContext) -> u32 {
    let (tgid, tid, pid_tgid) = ids();
    let Some(ptr) = TLS_ACTIVE.get_ptr_mut(&pid_tgid) else { return 0 };
    // SAFETY: this thread's own entry, copied out before it is removed.
    let call = unsafe {
        if (*ptr).depth > 0 {
            (*ptr).depth -= 1;
            return 0;
        }
        *ptr
    };
    let _ = TLS_ACTIVE.remove(&pid_tgid);
    let ret = ctx.ret::<u64>() as i32;
    let moved: u64 = if call.ex == 1 {
        if ret == 1 {
            // SAFETY: user memory read through the helper, which checks the address.
            unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    finish(&ctx, tgid, tid, pid_tgid, &call, moved);
    0
}

#[inline(always)]
fn finish(ctx: &RetProbeContext, tgid: u32, tid: u32, pid_tgid: u64, call: &TlsCall, moved: u64) {
    let key = SslKey { ssl: call.ssl, tgid, _pad: 0 };
    let mut fd = call.fd;
    let mut learned = fd >= 0;
    let mut entry = None;
    if fd >= 0 {
        entry = sock::lookup_tcp(tgid, fd);
    } else {
        // SAFETY: copied out at once.
        if let Some(known) = unsafe { SSL_FDS.get(&key) }.copied() {
            match sock::lookup_tcp(tgid, known.fd) {
                Some(e) if e.conn_gen == known.conn_gen => {
                    fd = known.fd;
                    entry = Some(e);
                }
                // The connection is gone (its fd number may be another one now): the SSL*
                // was freed and this address reused for a new one.
                _ => {
                    let _ = SSL_FDS.remove(&key);
                }
            }
        }
        if entry.is_none() {
            // No syscall inside the call and no socket known for this SSL*: a memory BIO
            // (Node.js). The ciphertext this call produced is written next; plaintext read
            // came from the socket the thread read last.
            let _ = TLS_MEMBIO.insert(&tgid, &1, 0);
            let _ = PENDING_SSL.insert(&pid_tgid, &call.ssl, 0);
            if call.direction == INGRESS && moved > 0 {
                // SAFETY: copied out at once.
                if let Some(last) = unsafe { LAST_READ_FD.get(&pid_tgid) }.copied() {
                    fd = last;
                    learned = true;
                    entry = sock::lookup_tcp(tgid, fd);
                }
            }
        }
    }
    let Some(mut entry) = entry else {
        if moved > 0 {
            count(Counter::TlsNoSocket);
        }
        return;
    };
    if learned {
        let _ = SSL_FDS.insert(&key, &SslSocket { conn_gen: entry.conn_gen, fd, _pad: 0 }, 0);
    }
    if entry.tls == 0 || entry.announced == 0 {
        if entry.announced == 0 {
            sock::announce(tgid, tid, fd, &mut entry, ConnRole::Unknown);
        }
        entry.tls = 1;
        let _ = SOCKS.insert(&sock::key(tgid, fd), &entry, 0);
    }
    if moved == 0 {
        if call.direction == EGRESS && call.ids_key != 0 {
            propagate::unstart(call.ids_key);
        }
        return;
    }
    let ts = if call.direction == EGRESS {
        call.enter_ns
    } else {
        // SAFETY: the helper has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    };
    let conn = emit::Conn { tgid, tid, fd, conn_gen: entry.conn_gen, ts_ns: ts };
    if call.direction == INGRESS {
        // No syscall inside the call (a memory BIO, or plaintext OpenSSL had buffered): these
        // plaintext bytes may start a server request themselves, as Go's `Read` does.
        let may_start = call.ids_key == 0 && call.fd < 0;
        tls::emit_read(ctx, &conn, DataSource::Tls as u32, call.ids_key, may_start, call.buf, moved);
    } else {
        emit::stage_ids(call.ids_key);
        emit::data(&conn, call.direction, DataSource::Tls as u32, call.buf, moved);
    }
}
