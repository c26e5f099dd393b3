//! Go's `crypto/tls`: the functions ztrace probes for plaintext, and whether a binary can be
//! probed (its Go version, its functions and their RETs, the struct offsets to its socket).

use object::Object;

use super::{
    code,
    offsets::{self, GoOffsets, Source},
};

/// The Go functions probed: symbol name, short name for the attach table.
pub const FUNCTIONS: [(&str, &str); 2] = [
    ("crypto/tls.(*Conn).Write", "(*Conn).Write"),
    ("crypto/tls.(*Conn).Read", "(*Conn).Read"),
];

/// Go minor versions whose struct offsets (tls.Conn → net.Conn → netFD → Sysfd) the version
/// table knows, and which pass arguments in registers (Go >= 1.17). Newer versions are probed
/// when their DWARF gives the offsets.
const KNOWN_MINORS: std::ops::RangeInclusive<u32> = 17..=24;

/// One probed function: file offsets of its entry and of each RET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunction {
    pub name: &'static str,
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// What a Go binary offers to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTls {
    /// `go1.19.8`, or `None` when the build info could not be read.
    pub version: Option<String>,
    /// True when the symbols came from `.gopclntab` (no symbol table).
    pub stripped: bool,
    pub functions: Vec<GoFunction>,
    /// The struct offsets read from its DWARF, if it has some.
    pub dwarf_offsets: Option<GoOffsets>,
}

impl GoTls {
    /// Why the binary cannot be probed, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        let Some(version) = &self.version else {
            return Some(
                "Go version unknown (unreadable .go.buildinfo): struct offsets unknown".into(),
            );
        };
        match super::minor(version) {
            Some(m) if m < 17 => return Some(format!("{version} passes arguments on the stack (Go < 1.17): not supported")),
            Some(m) if KNOWN_MINORS.contains(&m) || self.dwarf_offsets.is_some() => {}
            _ => {
                return Some(format!(
                    "{version}: struct offsets unknown (no DWARF in the binary, and the Go version table knows go1.17 to go1.24)"
                ))
            }
        }
        if self.functions.len() < FUNCTIONS.len() {
            return Some("crypto/tls.(*Conn).Write/Read not found".into());
        }
        if self.functions.iter().any(|f| f.rets.is_empty()) {
            return Some("no RET instruction found in crypto/tls.(*Conn).Write/Read".into());
        }
        None
    }

    /// The offsets the probes use, and where they came from (call once `unsupported` said none).
    pub fn offsets(&self) -> (GoOffsets, Source) {
        match self.dwarf_offsets {
            Some(o) => (o, Source::Dwarf),
            None => (offsets::TABLE, Source::VersionTable),
        }
    }
}

/// Inspects a Go binary (one with `.go.buildinfo`); `None` if it has no `crypto/tls` at all.
pub fn inspect<'data, O: Object<'data>>(elf: &O) -> Option<GoTls> {
    let version = super::version(elf);
    let names = FUNCTIONS.map(|(full, _)| full);
    let (found, stripped) = code::locate(elf, &names);
    if found.is_empty() {
        return None;
    }
    let mut functions: Vec<GoFunction> = found
        .iter()
        .filter_map(|f| {
            let (_, short) = FUNCTIONS.iter().find(|(full, _)| *full == f.name)?;
            let sites = code::sites(elf, f)?;
            Some(GoFunction {
                name: short,
                entry: sites.entry,
                rets: sites.rets,
            })
        })
        .collect();
    functions.sort_by_key(|f| FUNCTIONS.iter().position(|(_, short)| *short == f.name));
    let dwarf_offsets = offsets::from_dwarf(elf);
    Some(GoTls {
        version,
        stripped,
        functions,
        dwarf_offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_table_are_refused_with_a_reason() {
        let tls = |v: &str| GoTls {
            version: Some(v.into()),
            stripped: false,
            functions: FUNCTIONS
                .iter()
                .map(|(_, n)| GoFunction {
                    name: n,
                    entry: 1,
                    rets: vec![2],
                })
                .collect(),
            dwarf_offsets: None,
        };
        assert_eq!(tls("go1.19.8").unsupported(), None);
        assert_eq!(
            tls("go1.19.8").offsets(),
            (offsets::TABLE, Source::VersionTable)
        );
        assert!(tls("go1.16.2")
            .unsupported()
            .is_some_and(|r| r.contains("stack")));
        assert!(tls("go1.30")
            .unsupported()
            .is_some_and(|r| r.contains("unknown")));
        assert!(GoTls {
            version: None,
            ..tls("go1.19")
        }
        .unsupported()
        .is_some());
        // A version the table does not know, with DWARF: probed with the offsets read there.
        let dwarf = GoOffsets {
            conn_iface_data: 24,
            tcpconn_fd: 8,
            netfd_sysfd: 32,
        };
        let newer = GoTls {
            dwarf_offsets: Some(dwarf),
            ..tls("go1.30")
        };
        assert_eq!(newer.unsupported(), None);
        assert_eq!(newer.offsets(), (dwarf, Source::Dwarf));
        assert!(GoTls {
            dwarf_offsets: Some(dwarf),
            ..tls("go1.16.2")
        }
        .unsupported()
        .is_some());
    }
}
