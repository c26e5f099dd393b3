//! What ztrace knows about Go binaries (x86-64, Go 1.17 and later), in one place for `tls/`
//! (crypto/tls probes), `discovery/` (following goroutines) and `symbols/` (stacks of binaries
//! without DWARF). The kernel side is in `ebpf/src/go` and `ebpf/src/tls/go.rs`.
//!
//! - this module: the Go version from `.go.buildinfo`;
//! - [`code`]: where functions are (symbol table, or `.gopclntab` in stripped binaries) and the
//!   file offsets of their entry and RET instructions;
//! - [`pclntab`]: Go's own function table (names, files, lines, inlined frames);
//! - [`offsets`]: the struct offsets from a `crypto/tls.Conn` to its socket;
//! - [`runtime`]: goroutines — where `runtime.g` keeps the goroutine id, net/http's hand-overs
//!   between goroutines, `runtime.newproc1`;
//! - [`grpc`]: grpc-go's client stream creation and the offsets from a stream to its socket;
//! - [`tls`]: the `crypto/tls` functions ztrace probes and whether a binary can be probed.
//!
//! Everything here reads files and bytes; nothing attaches probes or blocks capture.

pub mod code;
pub mod grpc;
pub mod offsets;
pub mod pclntab;
pub mod runtime;
pub mod tls;

use object::{Object, ObjectSection};

/// The Go version of a binary (`go1.19.8`), from its `.go.buildinfo`; `None` when it has none or
/// it is older than Go 1.18.
pub fn version<'data, O: Object<'data>>(elf: &O) -> Option<String> {
    elf.section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .and_then(build_version)
}

/// `go1.19.8` → 19.
pub fn minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The Go version from `.go.buildinfo` (Go >= 1.18 layout: the version string inline).
pub fn build_version(data: &[u8]) -> Option<String> {
    if data.len() < 32 || &data[..14] != b"\xff Go buildinf:" || data[15] & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(&data[32..])?;
    let start = 32 + used;
    let bytes = data.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_version_reads_the_inline_string() {
        let mut data = b"\xff Go buildinf:\x08\x02".to_vec();
        data.resize(32, 0);
        data.push(8);
        data.extend_from_slice(b"go1.19.8");
        assert_eq!(build_version(&data).as_deref(), Some("go1.19.8"));
        assert_eq!(build_version(b"short"), None);
        data[15] = 0; // pre-1.18 layout: pointers, not read
        assert_eq!(build_version(&data), None);
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor("go1.19.8"), Some(19));
        assert_eq!(minor("go1.23"), Some(23));
        assert_eq!(minor("devel"), None);
    }
}
