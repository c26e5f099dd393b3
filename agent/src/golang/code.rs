//! Where a Go binary's functions are, and the file offsets uprobes attach at.
//!
//! Functions are found by name in the symbol table or, in a stripped binary (no symbol table),
//! in Go's own function table (`.gopclntab`), where a function's size runs to the next
//! function's entry. Returns are probed at each RET instruction, found by decoding the
//! function's machine code with iced-x86 — never with uretprobes, which break when Go moves a
//! goroutine's stack.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol};

use super::pclntab::PcLnTable;

/// Longest function decoded for RETs, in bytes.
const MAX_FUNCTION_BYTES: u64 = 64 * 1024;

/// A function found in a binary: its name (one of those asked for), address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub name: &'static str,
    pub vaddr: u64,
    pub size: u64,
}

/// File offsets of a function's entry and of each of its RET instructions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sites {
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// The functions of `names` that the binary has, and whether it is stripped (they were then
/// found in `.gopclntab`).
pub fn locate<'data, O: Object<'data>>(elf: &O, names: &[&'static str]) -> (Vec<Located>, bool) {
    let mut found = Vec::new();
    let mut has_symtab = false;
    for sym in elf.symbols() {
        has_symtab = true;
        let Ok(name) = sym.name() else { continue };
        if let Some(&name) = names.iter().find(|n| **n == name) {
            found.push(Located {
                name,
                vaddr: sym.address(),
                size: sym.size(),
            });
        }
    }
    if has_symtab {
        (found, false)
    } else {
        (in_pclntab(elf, names), true)
    }
}

/// The address ranges `[start, end)` of the functions in the symbol table whose names begin
/// with one of `prefixes` (a function and its closures).
pub fn ranges_with_prefix<'data, O: Object<'data>>(elf: &O, prefixes: &[&str]) -> Vec<(u64, u64)> {
    elf.symbols()
        .filter(|sym| sym.size() > 0)
        .filter(|sym| {
            sym.name()
                .is_ok_and(|name| prefixes.iter().any(|p| name.starts_with(p)))
        })
        .map(|sym| (sym.address(), sym.address() + sym.size()))
        .collect()
}

/// The functions of `names` in the binary's `.gopclntab`.
fn in_pclntab<'data, O: Object<'data>>(elf: &O, names: &[&'static str]) -> Vec<Located> {
    let Some(section) = elf.section_by_name(".gopclntab") else {
        return Vec::new();
    };
    let Ok(data) = section.data() else {
        return Vec::new();
    };
    let table = match PcLnTable::parse(data.to_vec(), section.address(), &[], None) {
        Ok(table) => table,
        Err(error) => {
            tracing::debug!(%error, "stripped Go binary: unreadable .gopclntab");
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    let mut wanted = Vec::new();
    table.each_function(|name, entry| {
        entries.push(entry);
        if let Some(&name) = names.iter().find(|n| **n == name) {
            wanted.push((name, entry));
        }
    });
    entries.sort_unstable();
    wanted
        .into_iter()
        .filter_map(|(name, vaddr)| {
            let next = *entries.get(entries.partition_point(|&e| e <= vaddr))?;
            Some(Located {
                name,
                vaddr,
                size: next - vaddr,
            })
        })
        .collect()
}

/// The file offset of the ELF address `vaddr`, in the section that holds it.
pub fn file_offset<'data, O: Object<'data>>(elf: &O, vaddr: u64) -> Option<u64> {
    let text = elf
        .sections()
        .find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())?;
    let (file_start, _) = text.file_range()?;
    Some(vaddr - text.address() + file_start)
}

/// The entry and the RETs of a located function, as file offsets (the RETs may be none).
pub fn sites<'data, O: Object<'data>>(elf: &O, f: &Located) -> Option<Sites> {
    let vaddr = f.vaddr;
    let text = elf
        .sections()
        .find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())?;
    let (file_start, _) = text.file_range()?;
    let to_file = |addr: u64| addr - text.address() + file_start;
    let size = f
        .size
        .min(text.address() + text.size() - vaddr)
        .min(MAX_FUNCTION_BYTES);
    let code = text.data_range(vaddr, size).ok()??;
    Some(Sites {
        entry: to_file(vaddr),
        rets: rets(code, vaddr).into_iter().map(to_file).collect(),
    })
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
    fn functions_are_found_in_the_symbol_table() {
        // This test binary is Rust with a symbol table: not stripped, no Go functions.
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let elf = object::File::parse(&*exe).expect("parse");
        let (found, stripped) = locate(&elf, &["runtime.newproc1"]);
        assert!(found.is_empty() && !stripped);
    }
}
