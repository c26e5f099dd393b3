//! ztrace: a zero-code distributed tracing agent for Linux, built on eBPF.
//!
//! Kernel programs (the `ebpf/` crate) capture socket traffic; this crate loads them, rebuilds
//! connections and protocol exchanges from their events, turns exchanges into spans and sends the
//! spans to the sinks. See ARCHITECTURE.md for the code map; `pipeline` is where the stages meet.

pub mod bpf;
pub mod collections;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod golang;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod protocols;
pub mod serve;
pub mod sinks;
pub mod spans;
pub mod symbols;
pub mod tls;
pub mod trace;
pub mod ui;

/// mimalloc instead of glibc's malloc, for the binary and the tests alike: spans and events are
/// many small, short-lived allocations handed between threads, where glibc's malloc and free
/// took a fifth of the agent's instructions (README, Overhead).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
