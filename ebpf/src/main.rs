//! ztrace's kernel programs: syscall tracepoints that see the TCP traffic of every process.
//!
//! One module per job: `maps` (every map and its size), `config` (globals set by the agent),
//! `filter` (which processes are traced), `sock` (fd → TCP socket and its 4-tuple), `emit`
//! (events into the ring buffer), `syscalls/` (one file per syscall family), `tls/` (uprobes on
//! TLS libraries), `go/` (goroutines of Go programs), `exec` (new programs, for the agent to
//! probe), `propagate`/`sockops`/`inject` (trace context carried to other hosts: ids, the
//! TCP option, the `traceparent` header; `traceparent` the header a server reads, `http_head` the HTTP/1 head scan they share), `stack` (user stacks of client requests) and `floor` (empty programs for the
//! benchmark's floor).
#![no_std]
#![no_main]

mod bounds;
mod config;
mod emit;
mod exec;
mod filter;
mod floor;
mod go;
mod http_head;
mod inject;
mod maps;
mod propagate;
mod sock;
mod sockops;
mod stack;
mod syscalls;
mod tls;
mod traceparent;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
