//! TLS plaintext at the library boundary: uprobes on OpenSSL's `SSL_read`/`SSL_write` (and
//! their `_ex` forms), tied to the socket without reading OpenSSL's structs.
//!
//! The uprobe saves the call in `TLS_ACTIVE` (keyed by pid_tgid); a read/write syscall the
//! library makes on a TCP socket during the call records its fd there (`note_syscall`) and
//! marks the socket as TLS, so its ciphertext is no longer sent; the uretprobe sends the
//! plaintext as a data event of that connection (`DataSource::Tls`). `SSL_FDS` remembers the
//! socket of each `SSL*` for calls that make no syscall. Processes whose TLS calls make none
//! (a memory BIO, as in Node.js, which moves the ciphertext itself) are marked in `TLS_MEMBIO`:
//! there, an `SSL*` without a known socket is tied to the thread's next write of a TLS record on
//! a TCP socket (`PENDING_SSL`: the handshake or record the call just produced), and failing
//! that, a read that returns plaintext to the socket the thread last read.
//!
//! A plaintext read that starts a server request is emitted by `zt_tls_traceparent` (a tail
//! call), which first looks for the request's own `traceparent` (`propagate::on_request_head`):
//! the TLS return programs have no verifier budget left for the scan. A read whose call made no
//! syscall (a memory BIO; plaintext OpenSSL had buffered) takes the same turn, and there its
//! plaintext starts the request (`propagate::on_read_exit`); a memory-BIO `SSL_write` starts
//! its client request at its entry (`openssl::membio_write_start`).

pub mod go;
pub mod openssl;

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe},
    maps::{PerCpuArray, ProgramArray},
    programs::ProbeContext,
    EbpfContext,
};
use ztrace_common::Direction;

use crate::{
    emit,
    maps::{call, SockEntry, SslKey, SslSocket, LAST_READ_FD, PENDING_SSL, SOCKS, SSL_FDS, TLS_ACTIVE, TLS_MEMBIO},
    propagate, sock,
};

const INGRESS: u32 = Direction::Ingress as u32;

/// A plaintext read that started a server request (or may start one), handed to
/// `zt_tls_traceparent` on this CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsRead {
    pub conn: emit::Conn,
    pub source: u32,
    /// 1 when no syscall inside the call could start the request: the plaintext may.
    pub may_start: u32,
    pub ids_key: u64,
    pub buf: u64,
    pub len: u64,
}

#[map(name = "TLS_READ")]
static TLS_READ: PerCpuArray<TlsRead> = PerCpuArray::with_max_entries(1, 0);

/// `zt_tls_traceparent` at index 0 and `zt_tls_read_emit` at 1 (put there by the agent; empty
/// → the read is emitted at once, its `traceparent` unread by the kernel). One program doing
/// both would pass the verifier's budget.
#[map(name = "TLS_TRACEPARENT")]
static TLS_TRACEPARENT: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Emits `len` plaintext bytes read at `buf`; `ids_key` (`propagate`'s key) when they start a
/// server request, which then goes through `zt_tls_traceparent` first — as do bytes that
/// `may_start` one (no syscall inside the call saw the request begin: a memory BIO).
#[inline(always)]
pub fn emit_read<C: EbpfContext>(ctx: &C, conn: &emit::Conn, source: u32, ids_key: u64, may_start: bool, buf: u64, len: u64) {
    if ids_key != 0 || may_start {
        if let Some(slot) = TLS_READ.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, read by the program tail-called next on this CPU; the
            // tail call returns only when it failed.
            unsafe {
                *slot = TlsRead { conn: *conn, source, may_start: may_start as u32, ids_key, buf, len };
                let _ = TLS_TRACEPARENT.tail_call(ctx, 0);
            }
        }
    }
    emit::stage_ids(ids_key);
    emit::data(conn, INGRESS, source, buf, len);
}

/// The plaintext of a TLS read that started a server request: its own `traceparent` gives the
/// request its trace (`propagate::on_request_head`), then `zt_tls_read_emit` emits it.
/// Tail-called by the OpenSSL and Go `crypto/tls` return programs; never attached.
#[uprobe]
pub fn zt_tls_traceparent(ctx: ProbeContext) -> u32 {
    if let Some(slot) = TLS_READ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, written by the program that tail-called.
        let read = unsafe { &mut *slot };
        if read.may_start == 1 && read.ids_key == 0 {
            read.ids_key = start_from_plaintext(read);
        }
        if read.ids_key != 0 {
            propagate::on_request_head(read.ids_key, read.buf, read.len);
        }
    }
    // SAFETY: a tail call with this program's own context; it returns only when it failed.
    let _ = unsafe { TLS_TRACEPARENT.tail_call(&ctx, 1) };
    // Not reached: the agent puts `zt_tls_read_emit` in place before this program (emitting
    // here would be the one program too large).
    0
}

/// The request these plaintext bytes start, if any (`propagate::on_read_exit`, as for a
/// syscall read inside the call): its key, else 0.
#[inline(always)]
fn start_from_plaintext(read: &TlsRead) -> u64 {
    let conn = &read.conn;
    let Some(entry) = sock::lookup_tcp(conn.tgid, conn.fd) else { return 0 };
    if entry.conn_gen != conn.conn_gen {
        return 0;
    }
    let head = propagate::Head { call: call::PLAIN, ptr: read.buf, len: read.len };
    propagate::on_read_exit(conn.tgid, conn.tid, conn.fd, &entry, 1, head)
}

/// Emits the read `zt_tls_traceparent` handed on; never attached.
#[uprobe]
pub fn zt_tls_read_emit(_ctx: ProbeContext) -> u32 {
    if let Some(read) = TLS_READ.get(0).copied() {
        emit::stage_ids(read.ids_key);
        emit::data(&read.conn, INGRESS, read.source, read.buf, read.len);
    }
    0
}

/// Called at the entry of every read/write syscall on a TCP socket of a traced process, with
/// the syscall's kind (`call::*`) and buffer (or iovec array). Returns 1 when the syscall is
/// made inside an OpenSSL call (its bytes are that call's ciphertext).
#[inline(always)]
pub fn note_syscall(tgid: u32, pid_tgid: u64, fd: i32, direction: u32, kind: u32, ptr: u64, entry: &mut SockEntry) -> u32 {
    if let Some(call) = TLS_ACTIVE.get_ptr_mut(&pid_tgid) {
        // SAFETY: the pointer comes from a map lookup of this thread's own entry.
        unsafe { (*call).fd = fd };
        mark_tls(tgid, fd, entry);
        return 1;
    }
    note_membio(tgid, pid_tgid, fd, direction, kind, ptr, entry);
    0
}

/// A request that a syscall inside this thread's OpenSSL call started (`propagate`'s `key`):
/// the call's plaintext event carries its ids.
#[inline(always)]
pub fn note_request_start(pid_tgid: u64, key: u64) {
    if let Some(call) = TLS_ACTIVE.get_ptr_mut(&pid_tgid) {
        // SAFETY: the pointer comes from a map lookup of this thread's own entry.
        unsafe { (*call).ids_key = key };
    }
}

#[inline(always)]
fn note_membio(tgid: u32, pid_tgid: u64, fd: i32, direction: u32, kind: u32, ptr: u64, entry: &mut SockEntry) {
    // SAFETY: only tested for presence.
    if unsafe { TLS_MEMBIO.get(&tgid) }.is_none() {
        return;
    }
    if direction == Direction::Ingress as u32 {
        let _ = LAST_READ_FD.insert(&pid_tgid, &fd, 0);
        return;
    }
    // SAFETY: copied out at once.
    let Some(ssl) = (unsafe { PENDING_SSL.get(&pid_tgid) }).copied() else { return };
    let first = match kind {
        call::PLAIN => ptr,
        // SAFETY: user memory read through the helper, which checks the address.
        call::VECTORED => unsafe { bpf_probe_read_user(ptr as *const u64) }.unwrap_or(0),
        _ => 0,
    };
    if first == 0 {
        return;
    }
    // SAFETY: as above.
    let Ok(head) = (unsafe { bpf_probe_read_user(first as *const [u8; 3]) }) else { return };
    if !(20..=23).contains(&head[0]) || head[1] != 3 || head[2] > 4 {
        return; // not a TLS record: some other write of the thread
    }
    let _ = PENDING_SSL.remove(&pid_tgid);
    let key = SslKey { ssl, tgid, _pad: 0 };
    let _ = SSL_FDS.insert(&key, &SslSocket { conn_gen: entry.conn_gen, fd, _pad: 0 }, 0);
    mark_tls(tgid, fd, entry);
}

/// True while the thread is inside an OpenSSL read or write call.
#[inline(always)]
pub fn in_call(pid_tgid: u64) -> bool {
    // SAFETY: only tested for presence.
    unsafe { TLS_ACTIVE.get(&pid_tgid) }.is_some()
}

/// Marks the socket as carrying TLS: its syscall bytes are no longer sent.
#[inline(always)]
pub fn mark_tls(tgid: u32, fd: i32, entry: &mut SockEntry) {
    if entry.tls == 0 {
        entry.tls = 1;
        let _ = SOCKS.insert(&sock::key(tgid, fd), entry, 0);
    }
}
