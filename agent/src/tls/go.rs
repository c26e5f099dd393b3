//! Go programs: the Go version (`.go.buildinfo`), where `crypto/tls.(*Conn).Write` and `Read`
//! are (the symbol table, or `.gopclntab` in stripped binaries), and the file offsets of their
//! entry and of every RET instruction (their machine code decoded with iced-x86): returns are
//! probed there, never with uretprobes, which break when Go moves a goroutine's stack.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol};

use super::go_offsets::{self, GoOffsets, Source};

/// The Go functions probed: symbol name, short name for the attach table.
pub const FUNCTIONS: [(&str, &str); 2] =
    [("crypto/tls.(*Conn).Write", "(*Conn).Write"), ("crypto/tls.(*Conn).Read", "(*Conn).Read")];

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
            return Some("Go version unknown (unreadable .go.buildinfo): struct offsets unknown".into());
        };
        match minor(version) {
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
}

impl GoTls {
    /// The offsets the probes use, and where they came from (call once `unsupported` said none).
    pub fn offsets(&self) -> (GoOffsets, Source) {
        match self.dwarf_offsets {
            Some(o) => (o, Source::Dwarf),
            None => (go_offsets::TABLE, Source::VersionTable),
        }
    }
}

/// `go1.19.8` → 19.
pub(crate) fn minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Inspects a Go binary (one with `.go.buildinfo`); `None` if it has no `crypto/tls` at all.
pub fn inspect<'data, O: Object<'data>>(elf: &O) -> Option<GoTls> {
    let version = elf.section_by_name(".go.buildinfo").and_then(|s| s.data().ok()).and_then(build_version);
    let mut found: Vec<(&'static str, u64, u64)> = Vec::new(); // (name, vaddr, size)
    let mut has_symtab = false;
    for sym in elf.symbols() {
        has_symtab = true;
        let Ok(name) = sym.name() else { continue };
        if let Some((_, short)) = FUNCTIONS.iter().find(|(full, _)| *full == name) {
            found.push((short, sym.address(), sym.size()));
        }
    }
    let stripped = !has_symtab;
    if stripped {
        let pcln = elf.section_by_name(".gopclntab")?;
        found = pclntab_functions(pcln.data().ok()?);
    }
    if found.is_empty() {
        return None;
    }
    let mut functions = Vec::new();
    for (name, vaddr, size) in found {
        let Some(text) = elf.sections().find(|s| s.address() <= vaddr && vaddr < s.address() + s.size()) else { continue };
        let Some((file_start, _)) = text.file_range() else { continue };
        let to_file = |addr: u64| addr - text.address() + file_start;
        let size = size.min(text.address() + text.size() - vaddr).min(64 * 1024);
        let Ok(Some(code)) = text.data_range(vaddr, size) else { continue };
        functions.push(GoFunction { name, entry: to_file(vaddr), rets: rets(code, vaddr).into_iter().map(to_file).collect() });
    }
    functions.sort_by_key(|f| FUNCTIONS.iter().position(|(_, short)| *short == f.name));
    let dwarf_offsets = go_offsets::from_dwarf(elf);
    Some(GoTls { version, stripped, functions, dwarf_offsets })
}

/// Addresses of the RET instructions in `code`, which starts at `ip`.
pub fn rets(code: &[u8], ip: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let instr = decoder.decode();
        if instr.mnemonic() == Mnemonic::Ret {
            out.push(instr.ip());
        }
    }
    out
}

/// The Go version from `.go.buildinfo` (Go >= 1.18 layout: the version string inline).
pub(crate) fn build_version(data: &[u8]) -> Option<String> {
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

/// The probed functions found in a `.gopclntab` (Go 1.18+ layout: magic 0xfffffff0/0xfffffff1):
/// (short name, address, size up to the next function).
fn pclntab_functions(tab: &[u8]) -> Vec<(&'static str, u64, u64)> {
    let mut out = Vec::new();
    let u32_at = |at: usize| tab.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let Some(magic) = u32_at(0) else { return out };
    if !(magic == 0xffff_fff0 || magic == 0xffff_fff1) || tab.get(7) != Some(&8) {
        return out;
    }
    let word = |i: usize| tab.get(8 + 8 * i..16 + 8 * i).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let (Some(nfunc), Some(text_start), Some(funcname_off), Some(pcln_off)) = (word(0), word(2), word(3), word(7)) else {
        return out;
    };
    let (nfunc, funcname_off, pcln_off) = (nfunc as usize, funcname_off as usize, pcln_off as usize);
    for i in 0..nfunc {
        let at = pcln_off + 8 * i;
        let (Some(entry_off), Some(func_off), Some(next_entry)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) else {
            break;
        };
        let Some(name_off) = u32_at(pcln_off + func_off as usize + 4) else { continue };
        let start = funcname_off + name_off as usize;
        let Some(rest) = tab.get(start..) else { continue };
        let name = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        if let Some((_, short)) = FUNCTIONS.iter().find(|(full, _)| full.as_bytes() == name) {
            out.push((*short, text_start + u64::from(entry_off), u64::from(next_entry.saturating_sub(entry_off))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rets_are_found_among_other_instructions() {
        // mov rax, rbx; ret; xor eax, eax; ret 8; int3
        let code = [0x48, 0x89, 0xd8, 0xc3, 0x31, 0xc0, 0xc2, 0x08, 0x00, 0xcc];
        assert_eq!(rets(&code, 0x1000), vec![0x1003, 0x1006]);
        // A byte 0xc3 inside an instruction (mov eax, 0xc3) is not a RET.
        assert!(rets(&[0xb8, 0xc3, 0, 0, 0], 0).is_empty());
    }

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
    fn versions_outside_the_table_are_refused_with_a_reason() {
        let tls = |v: &str| GoTls {
            version: Some(v.into()),
            stripped: false,
            functions: FUNCTIONS.iter().map(|(_, n)| GoFunction { name: n, entry: 1, rets: vec![2] }).collect(),
            dwarf_offsets: None,
        };
        assert_eq!(tls("go1.19.8").unsupported(), None);
        assert_eq!(tls("go1.19.8").offsets(), (go_offsets::TABLE, Source::VersionTable));
        assert!(tls("go1.16.2").unsupported().is_some_and(|r| r.contains("stack")));
        assert!(tls("go1.30").unsupported().is_some_and(|r| r.contains("unknown")));
        assert!(GoTls { version: None, ..tls("go1.19") }.unsupported().is_some());
        // A version the table does not know, with DWARF: probed with the offsets read there.
        let dwarf = GoOffsets { conn_iface_data: 24, tcpconn_fd: 8, netfd_sysfd: 32 };
        let newer = GoTls { dwarf_offsets: Some(dwarf), ..tls("go1.30") };
        assert_eq!(newer.unsupported(), None);
        assert_eq!(newer.offsets(), (dwarf, Source::Dwarf));
        assert!(GoTls { dwarf_offsets: Some(dwarf), ..tls("go1.16.2") }.unsupported().is_some());
    }

    #[test]
    fn a_garbage_pclntab_gives_nothing() {
        assert!(pclntab_functions(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]).is_empty());
        assert!(pclntab_functions(&[]).is_empty());
    }
}
