//! Every map of the kernel programs, with its size and what happens when it is full.

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::{btf_map, map},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use ztrace_common::{Counter, DataEvent, COUNTER_SLOTS};

/// Events to the agent. 16 MiB: at the default 4 KiB capture about 4000 data events of
/// slack while the agent catches up. Full → `Counter::RingbufFull`.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU loss and activity counters, indexed by `Counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-CPU scratch space to build a data event larger than the BPF stack.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// The program that copies a vectored call's next `MAX_IOVECS` segments, at index 0 (put
/// there by the agent; empty → the rest is reported as a length, `Counter::IovecsTruncated`).
#[map(name = "IOVECS_MORE")]
pub static IOVECS_MORE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The program that emits a saved call after a vectored read's exit drew its ids, at index 0
/// (put there by the agent, which attaches the `_ids` exits only then).
#[map(name = "SAVED_EXIT")]
pub static SAVED_EXIT: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The program that reads the `traceparent` of a plaintext request a read started, at index 0
/// (put there by the agent with `SAVED_EXIT`; empty → the read emits at once, without it).
#[map(name = "TRACEPARENT_READ")]
pub static TRACEPARENT_READ: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// A vectored call's segments still to copy, handed to the tail call on this CPU.
#[map(name = "IOVECS_LEFT")]
pub static IOVECS_LEFT: PerCpuArray<IovecsLeft> = PerCpuArray::with_max_entries(1, 0);

/// The rest of a vectored call (see `IOVECS_LEFT`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IovecsLeft {
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub direction: u32,
    pub conn_gen: u64,
    pub ts_ns: u64,
    /// The user's iovec array, its length, and the next entry to copy.
    pub iov: u64,
    pub iovcnt: u64,
    pub next: u64,
    /// Bytes of the call not yet emitted.
    pub remaining: u64,
    /// Tail calls made so far.
    pub hops: u64,
}

/// What ztrace knows of an fd: key `tgid << 32 | fd`. 65536 entries, LRU: the oldest
/// entries make room (a forgotten socket is rediscovered on its next use).
#[map(name = "SOCKS")]
pub static SOCKS: LruHashMap<u64, SockEntry> = LruHashMap::with_max_entries(65536, 0);

/// A read/write-family call in progress on a TCP socket (every one but `read`/`recvfrom`, which
/// need no entry program), saved by its entry program in the calling thread's own storage and
/// taken by its exit program: no hashing, no shared bucket lock, freed with the thread.
/// `call == 0`: none. No storage (the kernel refused: memory, or a nested use on this
/// CPU) → `Counter::ArgsMapFull`.
#[btf_map(name = "CALLS")]
pub static CALLS: TaskStorage<PendingCall> = TaskStorage::new();

/// Arguments of a connect or accept in progress, saved at entry and used at exit: key pid_tgid.
/// 16384 entries (threads blocked in a traced syscall at once). Full → `Counter::ArgsMapFull`.
#[map(name = "ACTIVE")]
pub static ACTIVE: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Processes that already had a connection announced: tgid → 1. The first connection of a
/// process wakes the agent at once (it reads the process's identity while it runs); later ones
/// wait for the agent's next poll. LRU, 16384 entries.
#[map(name = "SEEN_TGIDS")]
pub static SEEN_TGIDS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Processes to trace when the filter is on (`--pid`, `--exe` matches): tgid → 1.
#[map(name = "PID_ALLOW")]
pub static PID_ALLOW: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// Executable names (thread group leader's comm) to trace when the filter is on.
#[map(name = "COMM_ALLOW")]
pub static COMM_ALLOW: HashMap<[u8; 16], u32> = HashMap::with_max_entries(256, 0);

/// OpenSSL calls in progress (`SSL_read`/`SSL_write` and `_ex`), saved at the uprobe and
/// completed at the uretprobe: key pid_tgid. The read/write syscalls made inside the call
/// record their fd here. 16384 entries. Full → `Counter::TlsArgsMapFull`.
#[map(name = "TLS_ACTIVE")]
pub static TLS_ACTIVE: HashMap<u64, TlsCall> = HashMap::with_max_entries(16384, 0);

/// The socket an `SSL*` was last seen on, for calls that make no syscall (served from
/// OpenSSL's buffer, or a memory BIO as in Node.js). LRU, 65536 entries.
#[map(name = "SSL_FDS")]
pub static SSL_FDS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(65536, 0);

/// Processes whose TLS calls make no socket syscalls (memory BIO, as Node.js): tgid → 1. For
/// these, the fd of the last TCP read of each thread is kept in `LAST_READ_FD`. LRU, 4096.
#[map(name = "TLS_MEMBIO")]
pub static TLS_MEMBIO: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// Last TCP fd read by a thread of a `TLS_MEMBIO` process: pid_tgid → fd. An event loop reads
/// the ciphertext from the socket, then hands it to `SSL_read` on the same thread. LRU, 16384.
#[map(name = "LAST_READ_FD")]
pub static LAST_READ_FD: LruHashMap<u64, i32> = LruHashMap::with_max_entries(16384, 0);

/// A TLS call of a `TLS_MEMBIO` thread whose socket is not known yet: pid_tgid → `SSL*`. The
/// thread's next write of a TLS record on a TCP socket (the ciphertext the call produced, as
/// Node.js writes it right after) names the socket. LRU, 16384 entries.
#[map(name = "PENDING_SSL")]
pub static PENDING_SSL: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Key of `SSL_FDS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Value of `SSL_FDS`: the fd, and the generation of its connection (a reused fd number is
/// another connection, and is not taken for this `SSL*`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSocket {
    pub conn_gen: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// An OpenSSL call in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The `SSL*`.
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `_ex` forms: where the byte count is written (0 for the plain forms).
    pub len_ptr: u64,
    /// `bpf_ktime_get_ns` at entry.
    pub enter_ns: u64,
    /// `ztrace_common::Direction`.
    pub direction: u32,
    /// fd of the last TCP read/write syscall made inside the call, -1 if none.
    pub fd: i32,
    /// 1 for `SSL_read_ex`/`SSL_write_ex`.
    pub ex: u32,
    /// Nested calls of the same thread (an `_ex` form calling the plain one).
    pub depth: u32,
    /// `propagate`'s key of the connection when a syscall inside the call started a request
    /// (its ids go into the plaintext event), else 0.
    pub ids_key: u64,
}

/// One fd of one process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockEntry {
    /// Kernel time the connection was first seen: the connection's generation.
    pub conn_gen: u64,
    /// `task->mm` when cached: an exec replaces it, which invalidates the entry.
    pub mm: u64,
    /// `struct sock *` (0 when not a TCP socket).
    pub sock: u64,
    /// 1 for a TCP socket, 0 for anything else (cached so the next call is one lookup).
    pub is_tcp: u32,
    /// 1 once a `ConnEvent` was sent for it.
    pub announced: u32,
    /// 1 once a TLS library call was seen on it: its syscall bytes are ciphertext and are not
    /// sent (the plaintext comes from the TLS probes).
    pub tls: u32,
    pub _pad: u32,
}

/// The kind of syscall saved in `PendingCall`.
pub mod call {
    pub const CONNECT: u32 = 1;
    pub const ACCEPT: u32 = 2;
    /// buf, count
    pub const PLAIN: u32 = 3;
    /// iovec *, iovcnt
    pub const VECTORED: u32 = 4;
    /// user_msghdr *
    pub const MSG: u32 = 5;
    /// sendfile: bytes come from a file, never captured
    pub const SENDFILE: u32 = 6;
}

/// A syscall in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// One of `call::*`.
    pub call: u32,
    /// `ztrace_common::Direction`.
    pub direction: u32,
    pub fd: i32,
    /// 1 when this write starts a client request that `propagate` gave ids at entry.
    pub starts_request: u32,
    /// `bpf_ktime_get_ns` at entry.
    pub enter_ns: u64,
    /// Buffer, iovec array or msghdr, depending on `call`.
    pub ptr: u64,
    /// Buffer size or iovec count.
    pub count: u64,
    /// The socket's cache entry as found at entry (read/write family only), so the exit needs
    /// no second lookup.
    pub sock: SockEntry,
    /// A read whose bytes start a server request: its `PROP_CONNS` key, set by a vectored read's
    /// exit (`zt_exit_readv_ids`) before it hands the call on to `zt_saved_exit`.
    pub ids_key: u64,
}

/// BTF definition of a task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`, Linux >= 5.11, in
/// tracing programs >= 5.13), which aya-ebpf 0.2 does not define: a value per thread, reached
/// from the thread's `task_struct`. The fields only describe the map to the loader.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; Rust never dereferences them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current thread's value, created zeroed when `create` and it has none; `None` when
    /// it has none (or the kernel could not make one).
    #[inline(always)]
    pub fn current(&self, create: bool) -> Option<*mut T> {
        let flags = if create { BPF_LOCAL_STORAGE_GET_F_CREATE as u64 } else { 0 };
        // SAFETY: the map pointer is this map's definition, which the loader replaces by the
        // map; the task is the current one (a BTF pointer the verifier tracks).
        let ptr = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf().cast(),
                core::ptr::null_mut(),
                flags,
            )
        };
        (!ptr.is_null()).then_some(ptr.cast())
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a per-CPU array lookup: valid and only this CPU's.
        unsafe { *slot += 1 };
    }
}
