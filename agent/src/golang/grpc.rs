//! grpc-go clients: where a binary creates its gRPC client streams, and the struct offsets the
//! kernel follows from a new stream to its connection's socket (see `ebpf/src/go/grpc.rs`).
//!
//! `google.golang.org/grpc/internal/transport.(*http2Client).NewStream` is probed at its entry
//! and each RET; the returned `*Stream` has the stream's `id` and its transport `ct`, whose
//! `conn` (a `net.Conn`) is, on a plaintext channel, a `*net.TCPConn`. The offsets come from the
//! binary's DWARF only: grpc-go's structs change between its releases, and a binary without
//! DWARF does not say which release it has. A channel over TLS has a `*tls.Conn` there: its
//! "socket" read that way is no socket of a stream the agent saw, and links nothing.

use object::Object;

use super::code::{self, Located, Sites};
use super::offsets;

/// The function probed.
pub const NEW_STREAM: &str = "google.golang.org/grpc/internal/transport.(*http2Client).NewStream";

const PACKAGE: &str = "google.golang.org/grpc/internal/transport";
const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const TRANSPORT: &str = "google.golang.org/grpc/internal/transport.http2Client";

/// What the kernel needs to report a binary's client streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcClient {
    pub sites: Sites,
    /// The offsets, packed as `ebpf/src/go/grpc.rs` reads them: bit 63 set; bits 0–15 the
    /// `conn` interface's data word in `http2Client`, 16–23 `Stream.id`, 24–31 `Stream.ct`,
    /// 32–39 `*net.TCPConn` → `*netFD`, 40–47 `*netFD` → `Sysfd`.
    pub cookie: u64,
}

/// The offsets the kernel follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOffsets {
    pub stream_id: u8,
    pub stream_ct: u8,
    pub transport_conn_data: u16,
    pub tcpconn_fd: u8,
    pub netfd_sysfd: u8,
}

impl StreamOffsets {
    pub fn cookie(self) -> u64 {
        1 << 63
            | u64::from(self.netfd_sysfd) << 40
            | u64::from(self.tcpconn_fd) << 32
            | u64::from(self.stream_ct) << 24
            | u64::from(self.stream_id) << 16
            | u64::from(self.transport_conn_data)
    }
}

/// The client-stream probe of a binary that has grpc-go's client (`found` holds [`NEW_STREAM`]
/// if it has it): `Ok(None)` without grpc-go, `Err(why)` when it cannot be probed.
pub fn inspect<'data, O: Object<'data>>(
    elf: &O,
    found: &[Located],
) -> Result<Option<GrpcClient>, String> {
    let Some(f) = found.iter().find(|f| f.name == NEW_STREAM) else {
        return Ok(None);
    };
    let sites = code::sites(elf, f)
        .filter(|s| !s.rets.is_empty())
        .ok_or("no RET found in NewStream")?;
    let offsets = stream_offsets(elf).ok_or("no DWARF with grpc-go's transport structs")?;
    Ok(Some(GrpcClient {
        sites,
        cookie: offsets.cookie(),
    }))
}

/// The offsets, from the binary's DWARF.
pub fn stream_offsets<'data, O: Object<'data>>(elf: &O) -> Option<StreamOffsets> {
    let wanted = [
        (STREAM, "id"),
        (STREAM, "ct"),
        (TRANSPORT, "conn"),
        ("net.TCPConn", "conn"),
        ("net.conn", "fd"),
        ("net.netFD", "pfd"),
        ("internal/poll.FD", "Sysfd"),
        ("runtime.iface", "data"),
    ];
    let packages = [PACKAGE, "net", "internal/poll", "runtime"];
    let found = offsets::members_in(elf, &wanted, &packages)?;
    let get = |s: &str, m: &str| {
        found
            .iter()
            .find(|(st, mb, _)| st == s && mb == m)
            .map(|(_, _, off)| *off)
    };
    let iface_data = get("runtime.iface", "data").unwrap_or(8);
    Some(StreamOffsets {
        stream_id: u8::try_from(get(STREAM, "id")?).ok()?,
        stream_ct: u8::try_from(get(STREAM, "ct")?).ok()?,
        transport_conn_data: u16::try_from(get(TRANSPORT, "conn")? + iface_data).ok()?,
        tcpconn_fd: u8::try_from(get("net.TCPConn", "conn")? + get("net.conn", "fd")?).ok()?,
        netfd_sysfd: u8::try_from(get("net.netFD", "pfd")? + get("internal/poll.FD", "Sysfd")?)
            .ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_packs_the_offsets_as_the_kernel_reads_them() {
        let c = StreamOffsets {
            stream_id: 0,
            stream_ct: 24,
            transport_conn_data: 72,
            tcpconn_fd: 0,
            netfd_sysfd: 16,
        }
        .cookie();
        assert_eq!(c >> 63, 1);
        assert_eq!(c & 0xffff, 72);
        assert_eq!((c >> 16) & 0xff, 0);
        assert_eq!((c >> 24) & 0xff, 24);
        assert_eq!((c >> 32) & 0xff, 0);
        assert_eq!((c >> 40) & 0xff, 16);
    }

    #[test]
    fn a_binary_without_grpc_has_no_probe() {
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let elf = object::File::parse(&*exe).expect("parse");
        assert_eq!(inspect(&elf, &[]), Ok(None));
    }
}
