//! The contract between ztrace's kernel programs (`ebpf/`) and its agent (`agent/`).
//!
//! Everything that crosses the kernel/user boundary is defined here once: the `#[repr(C)]`
//! events written to the ring buffer, the names of the maps, the indexes of the loss
//! counters and the names of the globals the agent sets at load time. The crate is `no_std`
//! and has no logic beyond layout; with the `user` feature it implements `aya::Pod`.
//!
//! Layout rules: explicit `_pad` fields, `u32` instead of `bool`, and a size assertion beside
//! every type, so that a change on one side that the other does not follow fails to compile.
#![no_std]

use core::mem::size_of;

/// Largest payload prefix one data event can carry. The agent chooses the actual prefix
/// (`--capture-bytes`) up to this bound; the kernel clamps to it.
pub const MAX_CAPTURE: usize = 16 * 1024;

/// Bytes copied from the end of a segment longer than the capture prefix: enough to see how a
/// chunked body ends (`0\r\n\r\n`) even when its middle was not copied.
pub const TAIL_BYTES: usize = 64;

/// `iovec` entries of one vectored call that one program copies; the next ones are copied by
/// tail calls of the `iovecs_more` program, [`MAX_IOVECS`] each.
pub const MAX_IOVECS: u32 = 8;
/// Tail calls that go on copying one vectored call's segments (the kernel allows 32 per
/// program run): at most `MAX_IOVECS * (1 + MAX_IOVEC_TAIL_CALLS)` = 248 segments are copied;
/// the bytes of later ones are reported as a length.
pub const MAX_IOVEC_TAIL_CALLS: u32 = 30;
/// Name of the program that copies further segments of a vectored call (a tail call, never
/// attached), and of the program array that holds it at index 0.
pub const IOVECS_MORE_PROGRAM: &str = "zt_iovecs_more";
/// Name of the program that emits a saved call's bytes (`sys_exit_*` of the entry-paired calls)
/// when a vectored read's exit has drawn its request ids first (a tail call, never attached), and
/// of the program array that holds it at index 0.
pub const SAVED_EXIT_PROGRAM: &str = "zt_saved_exit";
/// Name of the program that reads the `traceparent` of a plaintext request a read started
/// (a tail call from the read exits, never attached; it hands on to [`SAVED_EXIT_PROGRAM`]),
/// and of the program array that holds it at index 0.
pub const TRACEPARENT_PROGRAM: &str = "zt_read_traceparent";
/// The same for the plaintext of TLS reads (a uprobe program tail-called by the OpenSSL and Go
/// `crypto/tls` return programs), at index 0 of its program array, and the program it hands the
/// read on to, which emits it, at index 1.
pub const TLS_TRACEPARENT_PROGRAM: &str = "zt_tls_traceparent";
pub const TLS_READ_EMIT_PROGRAM: &str = "zt_tls_read_emit";
/// The `sys_exit_readv`/`sys_exit_recvmsg` programs that draw server request ids before they
/// tail-call [`SAVED_EXIT_PROGRAM`], by the program they replace.
pub const READ_IDS_PROGRAMS: &[(&str, &str)] = &[
    ("zt_exit_readv", "zt_exit_readv_ids"),
    ("zt_exit_recvmsg", "zt_exit_recvmsg_ids"),
];

/// Names of the maps, so the agent never spells one as a literal.
pub mod maps {
    /// RingBuf of events (`EventHeader`-prefixed records).
    pub const EVENTS: &str = "EVENTS";
    /// PerCpuArray<u64> of loss and activity counters, indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// HashMap<u32 tgid, u32> of processes the user asked for (`--pid`, `--exe` matches).
    pub const PID_ALLOW: &str = "PID_ALLOW";
    /// HashMap<[u8; 16] comm, u32> of executable names the user asked for (`--exe`).
    pub const COMM_ALLOW: &str = "COMM_ALLOW";
    /// HashMap<u32 tgid, [`super::GoProc`]> of Go programs whose goroutines are followed.
    pub const GO_PROCS: &str = "GO_PROCS";
    pub const STACK_SKIP: &str = "STACK_SKIP";
    /// SockHash<u64 socket cookie> of client sockets whose messages `zt_inject` sees.
    pub const CLIENT_SOCKS: &str = "CLIENT_SOCKS";
    /// Array<u32>[1]: 1 once the agent attached `zt_inject`; `sock_ops` fills `CLIENT_SOCKS`
    /// only then.
    pub const INJECT_ON: &str = "INJECT_ON";
    /// ProgramArray[1]: `zt_inject`'s tail call to `zt_inject_write`.
    pub const INJECT_JUMP: &str = "INJECT_JUMP";
    /// ProgramArray with [`super::IOVECS_MORE_PROGRAM`] at index 0.
    pub const IOVECS_MORE: &str = "IOVECS_MORE";
    /// ProgramArray with [`super::SAVED_EXIT_PROGRAM`] at index 0.
    pub const SAVED_EXIT: &str = "SAVED_EXIT";
    /// ProgramArray with [`super::TRACEPARENT_PROGRAM`] at index 0.
    pub const TRACEPARENT_READ: &str = "TRACEPARENT_READ";
    /// ProgramArray with [`super::TLS_TRACEPARENT_PROGRAM`] at index 0 and
    /// [`super::TLS_READ_EMIT_PROGRAM`] at 1.
    pub const TLS_TRACEPARENT: &str = "TLS_TRACEPARENT";
    /// LruHashMap<u64 `tgid << 32 | fd`, SockEntry>: what the kernel knows of each fd.
    pub const SOCKS: &str = "SOCKS";
    /// LruHashMap<u64 `tgid << 32 | fd`, PropConn>: connections carrying request ids.
    pub const PROP_CONNS: &str = "PROP_CONNS";
    /// LruHashMap<u64 `tgid << 32 | fd`, StackConn>: client connections taking stacks.
    pub const STACK_CONNS: &str = "STACK_CONNS";
    /// LruHashMap<u32 tgid, u32>: processes that had a connection announced.
    pub const SEEN_TGIDS: &str = "SEEN_TGIDS";
    /// LruHashMap<u32 tgid, Budget>: each process's stack budget.
    pub const STACK_BUDGET: &str = "STACK_BUDGET";
    /// LruHashMap<UnitKey (u32 tgid first), Serving>: the request each thread or goroutine serves.
    pub const UNIT_CTX: &str = "UNIT_CTX";
    /// LruHashMap<SslKey {ssl: u64, tgid: u32, _pad}, SslSocket>: each `SSL*`'s socket.
    pub const SSL_FDS: &str = "SSL_FDS";
    /// LruHashMap<u32 tgid, u32>: processes whose TLS uses a memory BIO.
    pub const TLS_MEMBIO: &str = "TLS_MEMBIO";
    /// LruHashMap<u64 pid_tgid, i32>: the last TCP fd each memory-BIO thread read.
    pub const LAST_READ_FD: &str = "LAST_READ_FD";
    /// LruHashMap<u64 pid_tgid, u64>: a memory-BIO thread's TLS call waiting for its socket.
    pub const PENDING_SSL: &str = "PENDING_SSL";
}

/// Names of the global constants the agent sets with `EbpfLoader::set_global`.
pub mod globals {
    /// [`super::KernelOffsets`], computed from the running kernel's BTF.
    pub const OFFSETS: &str = "OFFSETS";
    /// [`super::Settings`].
    pub const SETTINGS: &str = "SETTINGS";
    /// [`super::StackSettings`].
    pub const STACK_SETTINGS: &str = "STACK_SETTINGS";
}

/// Kinds of events in the ring buffer; the first field of every [`EventHeader`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP connection became known: [`ConnEvent`].
    Conn = 1,
    /// Bytes moved on a known TCP connection: [`DataEvent`].
    Data = 2,
    /// The process closed its fd of a known TCP connection: [`EventHeader`] alone.
    Close = 3,
    /// A traced process called exec (`sched/sched_process_exec`): [`EventHeader`] alone, `fd`
    /// -1. The agent looks at its new executable and libraries for TLS libraries to probe.
    Exec = 4,
    /// The user stack of the thread that began a request on a client connection:
    /// [`StackEventHeader`] and the copied top of the stack.
    Stack = 5,
    /// A followed Go program started a goroutine: [`GoSpawnEvent`].
    GoSpawn = 6,
    /// A followed Go program's gRPC client created a stream: [`GoStreamEvent`].
    GoStream = 7,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Conn),
            2 => Some(Self::Data),
            3 => Some(Self::Close),
            4 => Some(Self::Exec),
            5 => Some(Self::Stack),
            6 => Some(Self::GoSpawn),
            7 => Some(Self::GoStream),
            _ => None,
        }
    }
}

/// Common prefix of every event.
///
/// A connection is identified by `(tgid, fd, conn_gen)`: `conn_gen` is the kernel time at which
/// ztrace first saw the connection, so a reused fd number is a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Process (thread group) id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    pub fd: i32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the syscall returned.
    pub ts_ns: u64,
    pub conn_gen: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 32);

/// How a connection became known.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRole {
    /// `connect()` returned: this process is the client.
    Client = 1,
    /// `accept()` returned: this process is the server.
    Server = 2,
    /// First seen on a read or write (opened before ztrace started): role unknown.
    Unknown = 3,
}

impl ConnRole {
    pub fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Client,
            2 => Self::Server,
            _ => Self::Unknown,
        }
    }
}

/// A TCP connection became known, with its 4-tuple as seen by this process.
///
/// Addresses are IPv6-sized; for `family == AF_INET` only the first 4 bytes are used.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// [`ConnRole`].
    pub role: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u32,
    /// Kernel address of the `struct sock`: the same socket seen through two fds or processes.
    pub sock: u64,
    /// Thread group leader's `comm`, NUL-padded.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ConnEvent>() == 32 + 8 + 32 + 8 + 8 + 16);

/// A goroutine of a followed Go program (`maps::GO_PROCS`) started another (`runtime.newproc1`
/// returned): `header.fd` is -1, `header.ts_ns` the time of the return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoSpawnEvent {
    pub header: EventHeader,
    /// The goroutine that ran the `go` statement.
    pub parent_goid: u64,
    /// The goroutine it started.
    pub child_goid: u64,
    /// Where the `go` statement is (`runtime.newproc1`'s `callerpc`): the agent tells the
    /// goroutines Go's HTTP/2 and gRPC servers start for a stream from the others.
    pub caller_pc: u64,
}
const _: () = assert!(size_of::<GoSpawnEvent>() == 56);

/// A goroutine of a followed Go program created a gRPC client stream (grpc-go's
/// `(*http2Client).NewStream` returned it): `header.fd` is the connection's socket,
/// `header.ts_ns` the time `NewStream` was entered (before the stream had its id, so before
/// the connection's writer goroutine could write its first frame).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoStreamEvent {
    pub header: EventHeader,
    /// The goroutine that created the stream.
    pub goid: u64,
    /// The stream's HTTP/2 id.
    pub stream_id: u64,
}
const _: () = assert!(size_of::<GoStreamEvent>() == 48);

/// Direction of bytes relative to the traced process.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process wrote them (write, send*, writev).
    Egress = 1,
    /// The process read them (read, recv*, readv).
    Ingress = 2,
}

/// Where the bytes of a data event were read.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A read/write family syscall on the socket.
    Syscall = 1,
    /// Plaintext at an OpenSSL call (`SSL_read`/`SSL_write` and their `_ex` forms) on the socket.
    Tls = 2,
    /// Plaintext at Go's `crypto/tls.(*Conn).Read`/`Write` on the socket.
    GoTls = 3,
}

impl DataSource {
    /// True for plaintext seen at a TLS library (the socket's own bytes are ciphertext).
    pub fn is_tls(v: u32) -> bool {
        v == DataSource::Tls as u32 || v == DataSource::GoTls as u32
    }
}

/// Bytes moved on a known TCP connection.
///
/// The record in the ring buffer is `size_of::<DataEventHeader>() + captured + tail` bytes
/// long: the captured prefix, then, when the segment was longer than the prefix plus
/// [`TAIL_BYTES`], its last `tail` bytes. `len` is the number of bytes the syscall (or this
/// iovec segment of it) moved; `len - captured - tail` bytes in the middle were not copied.
///
/// `header.ts_ns` is the time the bytes moved: the syscall's entry for egress (the bytes leave
/// as the write begins), its exit for ingress (the bytes are in hand when the read returns).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEventHeader {
    pub header: EventHeader,
    /// [`Direction`].
    pub direction: u32,
    /// [`DataSource`].
    pub source: u32,
    pub len: u32,
    /// Bytes of the prefix that follow the header.
    pub captured: u32,
    /// Bytes of the segment's end that follow the prefix (0 unless `len > captured + TAIL_BYTES`).
    pub tail: u32,
    /// In a Go program (`maps::GO_PROCS`): the low 32 bits of the id of the goroutine the bytes
    /// were moved for — the running goroutine, or for a net/http client connection's
    /// `writeLoop`, the goroutine whose request it writes. 0 elsewhere or when unknown.
    pub goid: u32,
    /// [`ids`] flags: whether `ids` holds the ids the kernel gave the request these bytes
    /// start (client: at its first write; server: at its first read), and where they came from.
    pub ids_flags: u32,
    pub _pad: u32,
    /// The request's ids, born in the kernel (`--propagate`); zeros unless `ids_flags` has
    /// [`ids::SET`].
    pub ids: RequestIds,
}
const _: () = assert!(size_of::<DataEventHeader>() == 96);

/// Trace ids the kernel gives a request when it starts on a connection whose role it knows
/// (`--propagate`): the same ids it writes on the wire (a TCP header option) and that the
/// agent puts on the span, so a receiving host continues the trace without waiting for this
/// host's agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestIds {
    pub trace_id: [u8; 16],
    /// The span of this request (client or server end).
    pub span_id: [u8; 8],
    /// Its parent: for a client request, the server request its thread (goroutine) serves;
    /// for a server request, the client span that the TCP option carried. Zeros: none.
    pub parent_id: [u8; 8],
}
const _: () = assert!(size_of::<RequestIds>() == 32);

/// Flags of [`DataEventHeader::ids_flags`].
pub mod ids {
    /// The event's `ids` are set: these bytes start a request.
    pub const SET: u32 = 1;
    /// Server request: trace id and parent came from the TCP option of the client's host.
    pub const FROM_WIRE: u32 = 2;
    /// Client request: trace id and parent came from the server request the thread serves.
    pub const FROM_UNIT: u32 = 4;
    /// Server request: trace id and parent came from the request's own `traceparent` header
    /// (plaintext HTTP/1), which differed from the TCP option's or came without one.
    pub const FROM_HEADER: u32 = 8;
}

/// The TCP option that carries a request's trace context between hosts (RFC 6994 shared
/// experimental option, kind 254, with ztrace's 16-bit experiment id): kind, length, ExID,
/// trace id (16 bytes), the client span id (8 bytes) = 28 bytes, which fit beside the
/// timestamps option in the 40 bytes of TCP option space.
pub mod tcp_option {
    pub const KIND: u8 = 254;
    /// Experiment id (RFC 6994 ExID), not registered with IANA: 0x7a74 ("zt").
    pub const EXID: u16 = 0x7a74;
    pub const LEN: usize = 28;
}

/// A data event with room for the largest capture; the kernel fills it in a per-CPU scratch
/// map and sends only `size_of::<DataEventHeader>() + captured` bytes of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub hdr: DataEventHeader,
    pub data: [u8; MAX_CAPTURE + TAIL_BYTES],
}
const _: () = assert!(size_of::<DataEvent>() == 96 + MAX_CAPTURE + TAIL_BYTES);

/// Most return addresses of one stack walked by the kernel (frame pointers).
pub const MAX_STACK_DEPTH: usize = 64;

/// Largest copy of the top of a user stack (`--stack-bytes`), for CFI unwinding in userspace.
pub const MAX_STACK_BYTES: usize = 16 * 1024;

/// The user stack of the thread that wrote the first bytes of a request on a client connection.
///
/// `header` is that of the data event it belongs to (same tgid, tid, fd, conn_gen and ts_ns).
/// The record is `size_of::<StackEventHeader>() + stack_len` bytes: `stack_len` bytes of user
/// memory from `rsp` upwards follow the header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackEventHeader {
    pub header: EventHeader,
    /// User registers at the syscall (x86-64): instruction, stack and frame pointers.
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// Entries of `ips` filled by the kernel's frame-pointer walk (`bpf_get_stack`), innermost first.
    pub ips_len: u32,
    /// Bytes of stack that follow the header.
    pub stack_len: u32,
    /// Not 0: the stack of the goroutine that created this HTTP/2 stream of the connection
    /// (grpc-go's `NewStream`), for that stream's request whichever goroutine writes it.
    pub stream: u64,
    pub ips: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(size_of::<StackEventHeader>() == 32 + 24 + 8 + 8 + 8 * MAX_STACK_DEPTH);

/// A stack event with room for the largest copy, built in a per-CPU scratch map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackEvent {
    pub hdr: StackEventHeader,
    pub stack: [u8; MAX_STACK_BYTES],
}
const _: () = assert!(size_of::<StackEvent>() == size_of::<StackEventHeader>() + MAX_STACK_BYTES);

/// Loss and activity counters, one per-CPU slot each in the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be written: the ring buffer was full.
    RingbufFull = 0,
    /// Syscall arguments could not be saved at entry (map full).
    ArgsMapFull = 1,
    /// A socket could not be remembered (map full).
    SockMapFull = 2,
    /// Reading user memory for a payload failed; the event carries no bytes.
    PayloadReadFailed = 3,
    /// Reading kernel structures for a socket failed.
    SockReadFailed = 4,
    /// Vectored I/O with more segments than its programs copy (`MAX_IOVECS` each, with
    /// [`MAX_IOVEC_TAIL_CALLS`] tail calls): the rest was not copied.
    IovecsTruncated = 5,
    /// Data events written.
    DataEvents = 6,
    /// Connection events written.
    ConnEvents = 7,
    /// TLS plaintext dropped: the socket of the TLS call could not be found (no syscall inside
    /// the call and no earlier call of the same `SSL*` on a socket, or not a TCP socket).
    TlsNoSocket = 8,
    /// A TLS call's arguments could not be saved at entry (map full).
    TlsArgsMapFull = 9,
    /// TLS plaintext data events written.
    TlsDataEvents = 10,
    /// Exec events written.
    ExecEvents = 11,
    /// Stack events written.
    StackEvents = 12,
    /// Stacks not captured: the process had used its stack budget.
    StackBudgetSkipped = 13,
    /// The top of a user stack could not be copied (the event has only frame-pointer addresses).
    StackCopyFailed = 14,
    /// A client connection could not be remembered for stack capture (map full).
    StackConnMapFull = 15,
    /// A syscall of a followed Go program whose goroutine id could not be read: it is linked by
    /// thread, which in Go may give no parent.
    GoGoidUnreadable = 16,
    /// Syscalls on a net/http helper goroutine reported for the goroutine it works for.
    GoHandoffs = 17,
    /// Goroutine starts reported (`EventKind::GoSpawn`).
    GoSpawnEvents = 18,
    /// Client requests on loopback whose context the kernel handed to the receiving socket
    /// directly (`--propagate=on`: no TCP option, no header on this host's own connections).
    PropagateHandedOver = 19,
    /// Stacks of requests written by a net/http helper goroutine (`writeLoop`) that carry the
    /// frame-pointer walk of the goroutine that issued the request (taken at `roundTrip`).
    StackFromGoOwner = 20,
    /// A helper goroutine wrote a request whose owner's stack was not saved (the owner's
    /// `roundTrip` ran before its uprobe was attached, or the map dropped it): the span carries
    /// the helper's own stack.
    StackGoOwnerMissing = 21,
    /// Client requests given ids in the kernel (their context goes out in a TCP option).
    PropagateClientIds = 22,
    /// Data segments of client requests that carried the context option.
    PropagateOptionWritten = 23,
    /// Segments of client requests that had no room left for the option (other options such
    /// as SACK blocks took the space): that segment goes without it.
    PropagateOptionNoRoom = 24,
    /// Segments received with the context option.
    PropagateOptionReceived = 25,
    /// Server requests that started with a context from the wire.
    PropagateServerFromWire = 26,
    /// Server requests that started without one (the client's host runs no ztrace, or a
    /// middlebox stripped the option): a new trace begins there.
    PropagateServerNoContext = 27,
    /// A connection or context could not be remembered (map full).
    PropagateMapFull = 28,
    /// Plaintext HTTP/1 requests that left with a `traceparent` header added (`inject`).
    InjectAdded = 29,
    /// HTTP/1 requests left as they were because they carry a `traceparent` already.
    InjectHadOne = 30,
    /// HTTP/1 requests left as they were because their head was not whole in the message that
    /// started them (split across writes, or its request line unrecognizable).
    InjectHeadSplit = 31,
    /// HTTP/1 requests left as they were because their head is longer than the kernel scans.
    InjectHeadTooLong = 32,
    /// HTTP/1 requests left as they were because the kernel refused to grow the message
    /// (`bpf_msg_push_data`/`bpf_msg_pull_data` failed).
    InjectFailed = 33,
    /// Client sockets that could not be put in the injection program's socket map (full, or
    /// a socket type it refuses): their requests carry no header.
    InjectSockMapFull = 34,
    /// gRPC client streams reported with the goroutine that created them (`EventKind::GoStream`).
    GoStreamEvents = 35,
    /// gRPC client streams whose socket could not be read from the transport's structs.
    GoStreamNoSocket = 36,
    /// An HTTP/2 server read found two or more contexts arrived since the last one it took:
    /// which stream came with which is not known, the read's streams start new traces.
    PropagateServerCrowded = 37,
    /// A grpc-go client wrote streams of several calls created at once: sent without a
    /// context (their receivers start new traces) rather than with one call's for all.
    PropagateStreamsAmbiguous = 38,
    /// Server requests whose trace id and parent came from their own `traceparent` header
    /// (an instrumented caller's, or the one the client's host added where the option was
    /// stripped), read by the kernel so that the server's calls carry that trace on.
    PropagateServerFromHeader = 39,
    /// Client requests written by a thread (goroutine) that had several server requests
    /// unanswered at once (an event loop): sent with a new trace id rather than one of theirs.
    PropagateUnitBusy = 40,
}

/// Number of slots in the `COUNTERS` map.
pub const COUNTER_SLOTS: u32 = 41;

impl Counter {
    pub const ALL: &'static [Counter] = &[
        Counter::RingbufFull,
        Counter::ArgsMapFull,
        Counter::SockMapFull,
        Counter::PayloadReadFailed,
        Counter::SockReadFailed,
        Counter::IovecsTruncated,
        Counter::DataEvents,
        Counter::ConnEvents,
        Counter::TlsNoSocket,
        Counter::TlsArgsMapFull,
        Counter::TlsDataEvents,
        Counter::ExecEvents,
        Counter::StackEvents,
        Counter::StackBudgetSkipped,
        Counter::StackCopyFailed,
        Counter::StackConnMapFull,
        Counter::GoGoidUnreadable,
        Counter::GoHandoffs,
        Counter::StackFromGoOwner,
        Counter::StackGoOwnerMissing,
        Counter::GoSpawnEvents,
        Counter::PropagateClientIds,
        Counter::PropagateHandedOver,
        Counter::PropagateOptionWritten,
        Counter::PropagateOptionNoRoom,
        Counter::PropagateOptionReceived,
        Counter::PropagateServerFromWire,
        Counter::PropagateServerNoContext,
        Counter::PropagateMapFull,
        Counter::InjectAdded,
        Counter::InjectHadOne,
        Counter::InjectHeadSplit,
        Counter::InjectHeadTooLong,
        Counter::InjectFailed,
        Counter::InjectSockMapFull,
        Counter::GoStreamEvents,
        Counter::GoStreamNoSocket,
        Counter::PropagateServerCrowded,
        Counter::PropagateStreamsAmbiguous,
        Counter::PropagateServerFromHeader,
        Counter::PropagateUnitBusy,
    ];

    /// Name used in the agent's self-metrics.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RingbufFull => "kernel_ringbuf_full",
            Counter::ArgsMapFull => "kernel_args_map_full",
            Counter::SockMapFull => "kernel_sock_map_full",
            Counter::PayloadReadFailed => "kernel_payload_read_failed",
            Counter::SockReadFailed => "kernel_sock_read_failed",
            Counter::IovecsTruncated => "kernel_iovecs_truncated",
            Counter::DataEvents => "kernel_data_events",
            Counter::ConnEvents => "kernel_conn_events",
            Counter::TlsNoSocket => "kernel_tls_no_socket",
            Counter::TlsArgsMapFull => "kernel_tls_args_map_full",
            Counter::TlsDataEvents => "kernel_tls_data_events",
            Counter::ExecEvents => "kernel_exec_events",
            Counter::StackEvents => "kernel_stack_events",
            Counter::StackBudgetSkipped => "kernel_stack_budget_skipped",
            Counter::StackCopyFailed => "kernel_stack_copy_failed",
            Counter::StackConnMapFull => "kernel_stack_conn_map_full",
            Counter::GoGoidUnreadable => "kernel_go_goid_unreadable",
            Counter::GoHandoffs => "kernel_go_handoffs",
            Counter::StackFromGoOwner => "kernel_stack_from_go_owner",
            Counter::StackGoOwnerMissing => "kernel_stack_go_owner_missing",
            Counter::GoSpawnEvents => "kernel_go_spawn_events",
            Counter::PropagateClientIds => "kernel_propagate_client_ids",
            Counter::PropagateHandedOver => "kernel_propagate_handed_over",
            Counter::PropagateOptionWritten => "kernel_propagate_option_written",
            Counter::PropagateOptionNoRoom => "kernel_propagate_option_no_room",
            Counter::PropagateOptionReceived => "kernel_propagate_option_received",
            Counter::PropagateServerFromWire => "kernel_propagate_server_from_wire",
            Counter::PropagateServerNoContext => "kernel_propagate_server_no_context",
            Counter::PropagateMapFull => "kernel_propagate_map_full",
            Counter::InjectAdded => "kernel_inject_added",
            Counter::InjectHadOne => "kernel_inject_had_traceparent",
            Counter::InjectHeadSplit => "kernel_inject_head_split",
            Counter::InjectHeadTooLong => "kernel_inject_head_too_long",
            Counter::InjectFailed => "kernel_inject_failed",
            Counter::InjectSockMapFull => "kernel_inject_sock_map_full",
            Counter::GoStreamEvents => "kernel_go_stream_events",
            Counter::GoStreamNoSocket => "kernel_go_stream_no_socket",
            Counter::PropagateServerCrowded => "kernel_propagate_server_crowded",
            Counter::PropagateStreamsAmbiguous => "kernel_propagate_streams_ambiguous",
            Counter::PropagateServerFromHeader => "kernel_propagate_server_from_header",
            Counter::PropagateUnitBusy => "kernel_propagate_unit_busy",
        }
    }

    /// True for counters that count lost data (as opposed to activity).
    pub fn is_loss(self) -> bool {
        !matches!(
            self,
            Counter::DataEvents
                | Counter::ConnEvents
                | Counter::TlsDataEvents
                | Counter::ExecEvents
                | Counter::StackEvents
                | Counter::GoHandoffs
                | Counter::StackFromGoOwner
                | Counter::GoSpawnEvents
                | Counter::GoStreamEvents
                | Counter::PropagateClientIds
                | Counter::PropagateHandedOver
                | Counter::PropagateOptionWritten
                | Counter::PropagateOptionReceived
                | Counter::PropagateServerFromWire
                | Counter::PropagateServerNoContext
                | Counter::PropagateServerCrowded
                | Counter::PropagateStreamsAmbiguous
                | Counter::InjectAdded
                | Counter::InjectHadOne
        )
    }
}

/// Byte offsets of kernel struct members, computed by the agent from the running kernel's
/// BTF (aya-ebpf has no CO-RE relocations). Field names are `<struct>_<member>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_struct_files: u32,
    pub task_struct_mm: u32,
    pub task_struct_group_leader: u32,
    pub task_struct_comm: u32,
    pub files_struct_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_mode: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_common_skc_family: u32,
    pub sock_common_skc_daddr: u32,
    pub sock_common_skc_rcv_saddr: u32,
    pub sock_common_skc_dport: u32,
    pub sock_common_skc_num: u32,
    pub sock_common_skc_v6_daddr: u32,
    pub sock_common_skc_v6_rcv_saddr: u32,
    /// Offset of `sk_protocol` in `struct sock`, or `u32::MAX` where it is a bitfield.
    pub sock_sk_protocol: u32,
    /// Offset of `thread.fsbase` in `struct task_struct` (x86-64: the user TLS base, where Go
    /// keeps the running goroutine), or `u32::MAX` where the kernel has none.
    pub task_struct_thread_fsbase: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 21 * 4);

/// A Go program whose goroutine ids are read at each syscall (value of `maps::GO_PROCS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoProc {
    /// Offset of `goid` in the runtime's `g` struct.
    pub goid_offset: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<GoProc>() == 8);

/// The frame-pointer walk of a goroutine when it began an HTTP round trip (net/http
/// `(*persistConn).roundTrip`), kept so that the request's write on the `writeLoop` goroutine
/// can carry the stack of the code that issued it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoOwnerStack {
    /// Entries of `ips` filled, innermost first.
    pub ips_len: u32,
    pub _pad: u32,
    pub ips: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(size_of::<GoOwnerStack>() == 8 + 8 * MAX_STACK_DEPTH);

/// Values of [`Settings::propagate`].
pub mod propagate {
    /// No ids in the kernel, nothing on the wire.
    pub const OFF: u32 = 0;
    /// Request ids born in the kernel; to other hosts the context goes in a TCP option and in a
    /// `traceparent` header; between loopback sockets the kernel hands it over directly.
    pub const ON: u32 = 1;
    /// As `ON`, and loopback connections carry the option and the header too (for
    /// OpenTelemetry SDKs on this host).
    pub const ALL: u32 = 2;
}

/// Run-time settings chosen by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// The agent's own tgid: never traced.
    pub agent_tgid: u32,
    /// Payload prefix per event, at most [`MAX_CAPTURE`].
    pub capture_bytes: u32,
    /// 1 when only processes in `PID_ALLOW` / `COMM_ALLOW` are traced.
    pub filter_enabled: u32,
    /// `--propagate`: one of [`propagate`]'s values.
    pub propagate: u32,
    /// When non-zero, only processes in this cgroup (v2 id, `--cgroup`) are traced.
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<Settings>() == 24);

/// Stack capture settings chosen by the agent (`--stacks`, `--stack-bytes`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StackSettings {
    /// 1 when stacks are captured.
    pub enabled: u32,
    /// Bytes of user stack copied per stack, at most [`MAX_STACK_BYTES`].
    pub stack_bytes: u32,
    /// Stacks per second each process may send on average...
    pub per_second: u32,
    /// ...and in a burst.
    pub burst: u32,
}
const _: () = assert!(size_of::<StackSettings>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made of integers and byte arrays with explicit padding,
    // so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DataEventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackEventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RequestIds {}
}
