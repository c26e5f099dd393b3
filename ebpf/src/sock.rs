//! From a file descriptor of the current process to its TCP socket, and the socket's 4-tuple.
//!
//! Walks `current->files->fdt->fd[fd]` with offsets from the running kernel's BTF (see
//! `config`). The answer is cached in `SOCKS` per (tgid, fd), negative answers too, so a read on
//! a pipe costs one lookup after the first; `close`/`dup2`/`dup3` drop the entry and an exec
//! (a new `mm`) invalidates it.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel};
use ztrace_common::{ConnEvent, ConnRole, Counter, EventKind};

use crate::{
    config::offsets,
    emit,
    maps::{count, SockEntry, SEEN_TGIDS, SOCKS},
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

#[inline(always)]
pub fn key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| ())
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_current_task() }
}

#[inline(always)]
pub fn current_mm() -> u64 {
    read::<u64>(current_task() + offsets().task_struct_mm as u64).unwrap_or(0)
}

/// Comm of the current thread group leader (the executable name, for most processes).
#[inline(always)]
pub fn leader_comm() -> [u8; 16] {
    let o = offsets();
    let leader = read::<u64>(current_task() + o.task_struct_group_leader as u64).unwrap_or(0);
    if leader == 0 {
        return [0; 16];
    }
    read::<[u8; 16]>(leader + o.task_struct_comm as u64).unwrap_or([0; 16])
}

/// The `struct sock *` of `fd` when it is a TCP socket over IPv4/IPv6; `Ok(0)` when it is
/// anything else; `Err` when the kernel structures could not be read.
#[inline(always)]
fn tcp_sock_of_fd(fd: i32) -> Result<u64, ()> {
    if fd < 0 {
        return Ok(0);
    }
    let o = offsets();
    let files = read::<u64>(current_task() + o.task_struct_files as u64)?;
    let fdt = read::<u64>(files + o.files_struct_fdt as u64)?;
    let max_fds = read::<u32>(fdt + o.fdtable_max_fds as u64)?;
    if fd as u32 >= max_fds {
        return Ok(0);
    }
    let fd_array = read::<u64>(fdt + o.fdtable_fd as u64)?;
    let file = read::<u64>(fd_array + (fd as u64) * 8)?;
    if file == 0 {
        return Ok(0);
    }
    let inode = read::<u64>(file + o.file_f_inode as u64)?;
    let mode = read::<u16>(inode + o.inode_i_mode as u64)?;
    if mode & S_IFMT != S_IFSOCK {
        return Ok(0);
    }
    let socket = read::<u64>(file + o.file_private_data as u64)?;
    let sock_type = read::<u16>(socket + o.socket_type as u64)?;
    if sock_type != SOCK_STREAM {
        return Ok(0);
    }
    let sk = read::<u64>(socket + o.socket_sk as u64)?;
    if sk == 0 {
        return Ok(0);
    }
    let family = read::<u16>(sk + o.sock_common_skc_family as u64)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(0);
    }
    if o.sock_sk_protocol != u32::MAX {
        let protocol = read::<u16>(sk + o.sock_sk_protocol as u64)?;
        if protocol != IPPROTO_TCP {
            return Ok(0);
        }
    }
    Ok(sk)
}

/// Looks `fd` up in the cache, resolving and caching it on a miss. Returns the entry only for
/// TCP sockets.
#[inline(always)]
pub fn lookup_tcp(tgid: u32, fd: i32) -> Option<SockEntry> {
    let k = key(tgid, fd);
    let mm = current_mm();
    // SAFETY: the value is only read, and copied out at once.
    if let Some(entry) = unsafe { SOCKS.get(&k) } {
        if entry.mm == mm {
            return if entry.is_tcp == 1 { Some(*entry) } else { None };
        }
    }
    let sk = match tcp_sock_of_fd(fd) {
        Ok(sk) => sk,
        Err(()) => {
            count(Counter::SockReadFailed);
            return None;
        }
    };
    // Opaque to the compiler, so that the answer below tests this flag and not `sk` again: Linux
    // 6.1 cannot carry `sk != 0` from one test to the next, explores the impossible path and
    // rejects the caller's use of an entry that path never made (`R1 !read_ok`).
    let is_tcp = core::hint::black_box((sk != 0) as u32);
    let entry = SockEntry {
        // SAFETY: the helper has no preconditions.
        conn_gen: unsafe { bpf_ktime_get_ns() },
        mm,
        sock: sk,
        is_tcp,
        announced: 0,
        tls: 0,
        _pad: 0,
    };
    if SOCKS.insert(&k, &entry, 0).is_err() {
        count(Counter::SockMapFull);
    }
    if is_tcp == 1 {
        Some(entry)
    } else {
        None
    }
}

/// Marks `fd` as a new connection with a known role (after connect or accept) and announces it.
#[inline(always)]
pub fn open_conn(tgid: u32, tid: u32, fd: i32, role: ConnRole) {
    let sk = match tcp_sock_of_fd(fd) {
        Ok(sk) => sk,
        Err(()) => {
            count(Counter::SockReadFailed);
            return;
        }
    };
    let mut entry = SockEntry {
        // SAFETY: the helper has no preconditions.
        conn_gen: unsafe { bpf_ktime_get_ns() },
        mm: current_mm(),
        sock: sk,
        is_tcp: (sk != 0) as u32,
        announced: 0,
        tls: 0,
        _pad: 0,
    };
    if sk != 0 {
        announce(tgid, tid, fd, &mut entry, role);
    }
    if SOCKS.insert(&key(tgid, fd), &entry, 0).is_err() {
        count(Counter::SockMapFull);
    }
}

/// Sends the `ConnEvent` of a socket (once), with its 4-tuple read from `struct sock`.
#[inline(always)]
pub fn announce(tgid: u32, tid: u32, fd: i32, entry: &mut SockEntry, role: ConnRole) {
    let Some(mut ev) = emit::reserve::<ConnEvent>() else {
        return;
    };
    let o = offsets();
    let sk = entry.sock;
    let family = read::<u16>(sk + o.sock_common_skc_family as u64).unwrap_or(0);
    let mut local_addr = [0u8; 16];
    let mut remote_addr = [0u8; 16];
    if family == AF_INET {
        let l = read::<[u8; 4]>(sk + o.sock_common_skc_rcv_saddr as u64).unwrap_or([0; 4]);
        let r = read::<[u8; 4]>(sk + o.sock_common_skc_daddr as u64).unwrap_or([0; 4]);
        local_addr[..4].copy_from_slice(&l);
        remote_addr[..4].copy_from_slice(&r);
    } else {
        local_addr = read::<[u8; 16]>(sk + o.sock_common_skc_v6_rcv_saddr as u64).unwrap_or([0; 16]);
        remote_addr = read::<[u8; 16]>(sk + o.sock_common_skc_v6_daddr as u64).unwrap_or([0; 16]);
    }
    let local_port = read::<u16>(sk + o.sock_common_skc_num as u64).unwrap_or(0);
    let remote_port = u16::from_be(read::<u16>(sk + o.sock_common_skc_dport as u64).unwrap_or(0));
    let event = ConnEvent {
        header: emit::header(EventKind::Conn, tgid, tid, fd, entry.conn_gen),
        role: role as u32,
        family: family as u32,
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        _pad: 0,
        sock: sk,
        comm: leader_comm(),
    };
    ev.write(event);
    // The first connection of a process wakes the agent at once: it reads the process's
    // identity from /proc then, and a short-lived client may be gone 10 ms later.
    // SAFETY: only tested for presence.
    let flags = if unsafe { SEEN_TGIDS.get(&tgid) }.is_some() {
        emit::wakeup_flags_of::<ConnEvent>()
    } else {
        let _ = SEEN_TGIDS.insert(&tgid, &1, 0);
        emit::BPF_RB_FORCE_WAKEUP
    };
    ev.submit(flags);
    entry.announced = 1;
    count(Counter::ConnEvents);
}

/// Forgets `fd` of `tgid`, returning what was known of it.
#[inline(always)]
pub fn forget(tgid: u32, fd: i32) -> Option<SockEntry> {
    let k = key(tgid, fd);
    // SAFETY: the value is copied out at once.
    let entry = unsafe { SOCKS.get(&k) }.copied();
    if entry.is_some() {
        let _ = SOCKS.remove(&k);
    }
    entry
}

/// The cache entry of an fd, as it is (no lookup of the socket on a miss).
#[inline(always)]
pub fn cached(k: u64) -> Option<SockEntry> {
    // SAFETY: the value is copied out at once.
    unsafe { SOCKS.get(&k) }.copied()
}

/// A TCP connection's 4-tuple as one end sees it: the key under which the syscall programs and
/// `sockops` (which sees no fd) find the same connection. IPv4 addresses fill the first 4 bytes;
/// ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowKey {
    pub family: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

impl FlowKey {
    /// Whether both ends are this host's loopback (127.0.0.0/8 or ::1): the other end's socket
    /// is on this host and sees this 4-tuple [`reversed`](Self::reversed).
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        match self.family {
            AF_INET_U32 => self.remote_addr[0] == 127 && self.local_addr[0] == 127,
            AF_INET6_U32 => is_v6_loopback(&self.remote_addr) && is_v6_loopback(&self.local_addr),
            _ => false,
        }
    }

    /// An IPv4 connection on an IPv6 socket (addresses `::ffff:a.b.c.d`, as dual-stack servers
    /// such as Go's accept them) keyed as on an IPv4 socket, so that both ends and every
    /// program agree on one key whatever socket each end has.
    #[inline(always)]
    pub fn unmapped(mut self) -> FlowKey {
        if self.family == AF_INET6_U32 && is_v4_mapped(&self.local_addr) && is_v4_mapped(&self.remote_addr) {
            self.family = AF_INET_U32;
            for i in 0..4 {
                self.local_addr[i] = self.local_addr[12 + i];
                self.remote_addr[i] = self.remote_addr[12 + i];
            }
            self.local_addr[4..].fill(0);
            self.remote_addr[4..].fill(0);
        }
        self
    }

    /// The same connection as its other end sees it.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            family: self.family,
            local_port: self.remote_port,
            remote_port: self.local_port,
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
        }
    }
}

const AF_INET_U32: u32 = AF_INET as u32;
const AF_INET6_U32: u32 = AF_INET6 as u32;

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

#[inline(always)]
fn is_v6_loopback(a: &[u8; 16]) -> bool {
    a[..15] == [0; 15] && a[15] == 1
}

/// The 4-tuple of a `struct sock`.
#[inline(always)]
pub fn flow_of(sk: u64) -> FlowKey {
    let o = offsets();
    let family = read::<u16>(sk + o.sock_common_skc_family as u64).unwrap_or(0);
    let mut flow = FlowKey { family: family as u32, local_port: 0, remote_port: 0, local_addr: [0; 16], remote_addr: [0; 16] };
    if family == AF_INET {
        let l = read::<[u8; 4]>(sk + o.sock_common_skc_rcv_saddr as u64).unwrap_or([0; 4]);
        let r = read::<[u8; 4]>(sk + o.sock_common_skc_daddr as u64).unwrap_or([0; 4]);
        flow.local_addr[..4].copy_from_slice(&l);
        flow.remote_addr[..4].copy_from_slice(&r);
    } else {
        flow.local_addr = read::<[u8; 16]>(sk + o.sock_common_skc_v6_rcv_saddr as u64).unwrap_or([0; 16]);
        flow.remote_addr = read::<[u8; 16]>(sk + o.sock_common_skc_v6_daddr as u64).unwrap_or([0; 16]);
    }
    flow.local_port = read::<u16>(sk + o.sock_common_skc_num as u64).unwrap_or(0);
    flow.remote_port = u16::from_be(read::<u16>(sk + o.sock_common_skc_dport as u64).unwrap_or(0));
    flow.unmapped()
}
