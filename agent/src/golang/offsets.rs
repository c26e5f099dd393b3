//! Where a Go binary keeps the socket of a `crypto/tls.Conn`: the three struct offsets the kernel
//! follows from the connection to its fd, read from the binary's DWARF when it has some, else
//! taken from a table by Go version.
//!
//! The chain: `tls.Conn.conn` (a `net.Conn` interface; its data word is 8 bytes after the field)
//! → `*net.TCPConn` (which embeds `net.conn`) → `conn.fd` (`*net.netFD`) → `netFD.pfd`
//! (`internal/poll.FD`) → `FD.Sysfd`. Only the compile units of the three packages involved are
//! walked, so a large binary costs little more than a small one.

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

/// The offsets the kernel program follows (see `ebpf/src/tls/go.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    /// From a `*tls.Conn` to the data word of its `conn` interface.
    pub conn_iface_data: u16,
    /// From a `*net.TCPConn` to its `*netFD`.
    pub tcpconn_fd: u16,
    /// From a `*netFD` to its `Sysfd`.
    pub netfd_sysfd: u16,
}

/// The offsets of Go 1.17 to 1.24 (the same in each), used when a binary has no DWARF.
pub const TABLE: GoOffsets = GoOffsets {
    conn_iface_data: 8,
    tcpconn_fd: 0,
    netfd_sysfd: 16,
};

/// Where the offsets of a binary came from, for the attach table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Dwarf,
    VersionTable,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Dwarf => "struct offsets from its DWARF",
            Source::VersionTable => "struct offsets from the Go version table",
        }
    }
}

impl GoOffsets {
    /// The attach cookie the kernel program reads: bit 63 set, then 16 bits per offset.
    pub fn cookie(self) -> u64 {
        1 << 63
            | u64::from(self.netfd_sysfd) << 32
            | u64::from(self.tcpconn_fd) << 16
            | u64::from(self.conn_iface_data)
    }
}

/// The (struct, member) pairs read, and the compile units (Go packages) they live in.
const WANTED: [(&str, &str); 6] = [
    ("crypto/tls.Conn", "conn"),
    ("net.TCPConn", "conn"),
    ("net.conn", "fd"),
    ("net.netFD", "pfd"),
    ("internal/poll.FD", "Sysfd"),
    ("runtime.iface", "data"),
];
const PACKAGES: [&str; 4] = ["crypto/tls", "net", "internal/poll", "runtime"];

/// Reads the offsets from the binary's DWARF; `None` without DWARF or when a member is missing.
pub fn from_dwarf<'data, O: Object<'data>>(elf: &O) -> Option<GoOffsets> {
    let found = members_in(elf, &WANTED, &PACKAGES)?;
    let get = |s: &str, m: &str| {
        found
            .iter()
            .find(|(st, mb, _)| st == s && mb == m)
            .map(|(_, _, off)| *off)
    };
    let iface_data = get("runtime.iface", "data").unwrap_or(8);
    let offsets = GoOffsets {
        conn_iface_data: u16::try_from(get("crypto/tls.Conn", "conn")? + iface_data).ok()?,
        tcpconn_fd: u16::try_from(get("net.TCPConn", "conn")? + get("net.conn", "fd")?).ok()?,
        netfd_sysfd: u16::try_from(get("net.netFD", "pfd")? + get("internal/poll.FD", "Sysfd")?)
            .ok()?,
    };
    Some(offsets)
}

/// (struct, member, offset) of the `wanted` members that the compile units of `packages` (Go
/// packages) declare, from the binary's DWARF; `None` without DWARF.
pub fn members_in<'data, O: Object<'data>>(
    elf: &O,
    wanted: &[(&str, &str)],
    packages: &[&str],
) -> Option<Vec<(String, String, u64)>> {
    let info = elf
        .section_by_name(".debug_info")?
        .uncompressed_data()
        .ok()?;
    let abbrev = elf
        .section_by_name(".debug_abbrev")?
        .uncompressed_data()
        .ok()?;
    let strs = elf
        .section_by_name(".debug_str")
        .and_then(|s| s.uncompressed_data().ok());
    let line_str = elf
        .section_by_name(".debug_line_str")
        .and_then(|s| s.uncompressed_data().ok());
    let empty: &[u8] = &[];
    let dwarf = gimli::Dwarf {
        debug_info: gimli::DebugInfo::new(&info, LittleEndian),
        debug_abbrev: gimli::DebugAbbrev::new(&abbrev, LittleEndian),
        debug_str: gimli::DebugStr::new(strs.as_deref().unwrap_or(empty), LittleEndian),
        debug_line_str: gimli::DebugLineStr::new(
            line_str.as_deref().unwrap_or(empty),
            LittleEndian,
        ),
        ..Default::default()
    };
    members(&dwarf, wanted, packages)
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// (struct, member, offset) of the `wanted` members found in the units of `packages`. Units
/// are read from their headers alone (no line programs or other sections needed).
fn members(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    wanted: &[(&str, &str)],
    packages: &[&str],
) -> Option<Vec<(String, String, u64)>> {
    let mut found = Vec::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(abbrevs) = dwarf.abbreviations(&header) else {
            continue;
        };
        let Ok(mut tree) = header.entries_tree(&abbrevs, None) else {
            continue;
        };
        let Ok(root) = tree.root() else { continue };
        let unit_name = name_of(dwarf, root.entry()).unwrap_or_default();
        if !packages.contains(&unit_name.as_str()) {
            continue;
        }
        let mut children = root.children();
        while let Ok(Some(node)) = children.next() {
            let entry = node.entry();
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = name_of(dwarf, entry) else {
                continue;
            };
            if !wanted.iter().any(|(s, _)| *s == name) {
                continue;
            }
            let mut fields = node.children();
            while let Ok(Some(field)) = fields.next() {
                let f = field.entry();
                if f.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let Some(member) = name_of(dwarf, f) else {
                    continue;
                };
                if !wanted.contains(&(name.as_str(), member.as_str())) {
                    continue;
                }
                let offset = match f.attr_value(gimli::DW_AT_data_member_location) {
                    Ok(Some(AttributeValue::Udata(off))) => off,
                    Ok(Some(v)) => match v.udata_value() {
                        Some(off) => off,
                        None => continue,
                    },
                    _ => continue,
                };
                found.push((name.clone(), member, offset));
            }
        }
    }
    Some(found)
}

/// An entry's `DW_AT_name`, inline or in `.debug_str`.
fn name_of(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Slice<'_>>,
) -> Option<String> {
    let s = match entry.attr_value(gimli::DW_AT_name).ok()?? {
        AttributeValue::String(s) => s,
        AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok()?,
        _ => return None,
    };
    Some(s.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_packs_the_offsets_with_a_flag() {
        let c = GoOffsets {
            conn_iface_data: 8,
            tcpconn_fd: 0,
            netfd_sysfd: 16,
        }
        .cookie();
        assert_eq!(c >> 63, 1);
        assert_eq!(c & 0xffff, 8);
        assert_eq!((c >> 16) & 0xffff, 0);
        assert_eq!((c >> 32) & 0xffff, 16);
    }

    #[test]
    fn a_binary_without_dwarf_gives_none() {
        // This test binary is Rust, not Go: it has DWARF but none of Go's packages.
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let elf = object::File::parse(&*exe).expect("parse");
        assert_eq!(from_dwarf(&elf), None);
    }
}
