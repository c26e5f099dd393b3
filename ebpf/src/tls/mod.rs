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

pub mod go;
pub mod openssl;

use aya_ebpf::helpers::bpf_probe_read_user;
use ztrace_common::Direction;

use crate::{
    maps::{call, SockEntry, SslKey, SslSocket, LAST_READ_FD, PENDING_SSL, SOCKS, SSL_FDS, TLS_ACTIVE, TLS_MEMBIO},
    sock,
};

/// Called at the entry of every read/write syscall on a TCP socket of a traced process, with
/// the syscall's kind (`call::*`) and buffer (or iovec array).
#[inline(always)]
pub fn note_syscall(tgid: u32, pid_tgid: u64, fd: i32, direction: u32, kind: u32, ptr: u64, entry: &mut SockEntry) {
    if let Some(call) = TLS_ACTIVE.get_ptr_mut(&pid_tgid) {
        // SAFETY: the pointer comes from a map lookup of this thread's own entry.
        unsafe { (*call).fd = fd };
        mark_tls(tgid, fd, entry);
        return;
    }
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
