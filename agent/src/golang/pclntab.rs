//! Go's own function table (`.gopclntab`, Go 1.18 and later on 64-bit): function names, entry
//! addresses, file and line of any address, and frames inlined there, for Go binaries built
//! without DWARF (`go build -ldflags="-s -w"`), whose runtime keeps this table anyway.
//!
//! Reads the Go 1.18–1.19 layout (magic `0xfffffff0`) and the 1.20+ one (`0xfffffff1`); older
//! tables are refused ([`PclnError::Version`]). Inlined frames need the inline tree, found
//! through `runtime.firstmoduledata.gofunc`: the module data is located in the binary's data
//! by its pointer to the table. Without it, each address gives only its physical function.
//! Parsing never panics: every read is bounds-checked and a bad table is an error.

/// A frame of source code at one address (see [`PcLnTable::source_frames`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PcFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Why a table could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PclnError {
    #[error("not a Go 1.18+ pclntab (magic {0:#x})")]
    Version(u32),
    #[error("pclntab is truncated or inconsistent")]
    Truncated,
}

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// `_PCDATA_InlTreeIndex` and `_FUNCDATA_InlTree` of the runtime.
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u32 = 3;
/// Inlined frames followed per address at most.
const MAX_INLINE_DEPTH: usize = 32;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

fn cstr_at(b: &[u8], at: usize) -> Option<&str> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Memory of the binary at ELF virtual addresses (a copied section).
#[derive(Clone, Debug, Default)]
pub struct Region {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

impl Region {
    fn slice_at(&self, addr: u64) -> Option<&[u8]> {
        let off = usize::try_from(addr.checked_sub(self.addr)?).ok()?;
        self.bytes.get(off..)
    }
}

/// A parsed `.gopclntab`.
pub struct PcLnTable {
    data: Vec<u8>,
    /// Go 1.20+ layout.
    go120: bool,
    text_start: u64,
    funcname: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    nfunc: usize,
    /// The inline trees' base (`moduledata.gofunc`) and the memory holding them.
    gofunc: Option<(u64, Region)>,
}

impl PcLnTable {
    /// Parses the table at ELF address `addr`. `data_sections` are the binary's data sections
    /// (where the module data lives) and `rodata` the one holding `go.func.*` (from which only
    /// the part from `gofunc` on is copied).
    pub fn parse(
        data: Vec<u8>,
        addr: u64,
        data_sections: &[(u64, &[u8])],
        rodata: Option<(u64, &[u8])>,
    ) -> Result<PcLnTable, PclnError> {
        let magic = u32_at(&data, 0).ok_or(PclnError::Truncated)?;
        let go120 = match magic {
            MAGIC_118 => false,
            MAGIC_120 => true,
            other => return Err(PclnError::Version(other)),
        };
        if data.get(6) != Some(&1) || data.get(7) != Some(&8) {
            return Err(PclnError::Truncated);
        }
        let word = |i: usize| u64_at(&data, 8 + 8 * i).ok_or(PclnError::Truncated);
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| PclnError::Truncated);
        let nfunc = to_usize(word(0)?)?;
        let text_start = word(2)?;
        let funcname = to_usize(word(3)?)?;
        let cutab = to_usize(word(4)?)?;
        let filetab = to_usize(word(5)?)?;
        let pctab = to_usize(word(6)?)?;
        let functab = to_usize(word(7)?)?;
        // nfunc entries and a sentinel (the end of the last function).
        let functab_end = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(functab))
            .ok_or(PclnError::Truncated)?;
        if [funcname, cutab, filetab, pctab]
            .iter()
            .any(|&o| o > data.len())
            || functab_end > data.len()
        {
            return Err(PclnError::Truncated);
        }
        let gofunc =
            find_gofunc(addr, addr + funcname as u64, go120, data_sections).and_then(|base| {
                let (raddr, bytes) = rodata?;
                let from = usize::try_from(base.checked_sub(raddr)?).ok()?;
                Some((
                    base,
                    Region {
                        addr: base,
                        bytes: bytes.get(from..)?.to_vec(),
                    },
                ))
            });
        Ok(PcLnTable {
            data,
            go120,
            text_start,
            funcname,
            cutab,
            filetab,
            pctab,
            functab,
            nfunc,
            gofunc,
        })
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.gofunc.as_ref().map_or(0, |(_, r)| r.bytes.len())
    }

    /// True when inlined frames can be shown.
    pub fn has_inline_trees(&self) -> bool {
        self.gofunc.is_some()
    }

    /// (entry address, offset of `_func`) of function `i`.
    fn func_entry(&self, i: usize) -> Option<(u64, usize)> {
        let at = self.functab + 8 * i;
        let entry = self.text_start + u64::from(u32_at(&self.data, at)?);
        let off = self.functab + u32_at(&self.data, at + 4)? as usize;
        Some((entry, off))
    }

    /// The `_func` holding `addr`: (entry, offset of `_func`).
    fn find(&self, addr: u64) -> Option<(u64, usize)> {
        if self.nfunc == 0 || addr < self.text_start {
            return None;
        }
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.func_entry(mid)?.0 <= addr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let found = self.func_entry(lo)?;
        // The table ends with a sentinel entry (end of text) after the last function.
        let end = self.func_entry(lo + 1)?.0;
        (found.0 <= addr && addr < end).then_some(found)
    }

    fn func_field(&self, func: usize, index: usize) -> Option<u32> {
        u32_at(&self.data, func + 4 * index)
    }

    fn name(&self, nameoff: u32) -> Option<String> {
        cstr_at(&self.data, self.funcname + nameoff as usize).map(str::to_owned)
    }

    /// Name and entry address of the function holding `addr`.
    pub fn function(&self, addr: u64) -> Option<(String, u64)> {
        let (entry, func) = self.find(addr)?;
        Some((self.name(self.func_field(func, 1)?)?, entry))
    }

    /// Calls `f` with the name and entry address of every function.
    pub fn each_function(&self, mut f: impl FnMut(&str, u64)) {
        for i in 0..self.nfunc {
            let Some((entry, func)) = self.func_entry(i) else {
                return;
            };
            if let Some(name) = self
                .func_field(func, 1)
                .and_then(|n| cstr_at(&self.data, self.funcname + n as usize))
            {
                f(name, entry);
            }
        }
    }

    /// The value of the pc-value table at `table` (offset in `pctab`) for `addr`.
    fn pcvalue(&self, table: u32, entry: u64, addr: u64) -> Option<i32> {
        if table == 0 {
            return None;
        }
        let mut p = self.data.get(self.pctab + table as usize..)?;
        let mut pc = entry;
        let mut val: i32 = -1;
        let mut first = true;
        loop {
            let (uvdelta, n) = varint(p)?;
            if uvdelta == 0 && !first {
                return None;
            }
            p = p.get(n..)?;
            let vdelta = ((uvdelta >> 1) as i32) ^ -((uvdelta & 1) as i32);
            let (pcdelta, n) = varint(p)?;
            p = p.get(n..)?;
            pc = pc.checked_add(u64::from(pcdelta))?;
            val = val.wrapping_add(vdelta);
            first = false;
            if addr < pc {
                return Some(val);
            }
        }
    }

    fn file_line(&self, func: usize, entry: u64, addr: u64) -> (Option<String>, Option<u32>) {
        let line = self
            .func_field(func, 6)
            .and_then(|t| self.pcvalue(t, entry, addr))
            .and_then(|l| u32::try_from(l).ok());
        let file = (|| {
            let fileno =
                u32::try_from(self.pcvalue(self.func_field(func, 5)?, entry, addr)?).ok()?;
            let cu = self.func_field(func, 8)?;
            let off = u32_at(&self.data, self.cutab + 4 * (cu as usize + fileno as usize))?;
            if off == u32::MAX {
                return None;
            }
            cstr_at(&self.data, self.filetab + off as usize).map(str::to_owned)
        })();
        (file, line)
    }

    /// (name offset, parent pc offset) of inline-tree entry `ix` of `func`.
    fn inlined_call(&self, func: usize, ix: i32) -> Option<(u32, u32)> {
        let (base, region) = self.gofunc.as_ref()?;
        let fixed = if self.go120 { 44 } else { 40 };
        let npcdata = self.func_field(func, 7)? as usize;
        let nfuncdata = *self.data.get(func + fixed - 1)? as u32;
        if FUNCDATA_INL_TREE >= nfuncdata {
            return None;
        }
        let off = u32_at(
            &self.data,
            func + fixed + 4 * npcdata + 4 * FUNCDATA_INL_TREE as usize,
        )?;
        if off == u32::MAX {
            return None;
        }
        let (size, name_at, parent_pc_at) = if self.go120 { (16, 4, 8) } else { (20, 12, 16) };
        let tree = region.slice_at(base.checked_add(u64::from(off))?)?;
        let at = usize::try_from(ix).ok()?.checked_mul(size)?;
        Some((
            u32_at(tree, at + name_at)?,
            u32_at(tree, at + parent_pc_at)?,
        ))
    }

    fn inline_index(&self, func: usize, entry: u64, addr: u64) -> Option<i32> {
        let npcdata = self.func_field(func, 7)?;
        if PCDATA_INL_TREE_INDEX >= npcdata {
            return None;
        }
        let fixed = if self.go120 { 44 } else { 40 };
        let table = u32_at(
            &self.data,
            func + fixed + 4 * PCDATA_INL_TREE_INDEX as usize,
        )?;
        self.pcvalue(table, entry, addr).filter(|&ix| ix >= 0)
    }

    /// Source frames at `addr`, innermost (inlined) first; empty when no function holds it.
    pub fn source_frames(&self, addr: u64) -> Vec<PcFrame> {
        let Some((entry, func)) = self.find(addr) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut pc = addr;
        while out.len() < MAX_INLINE_DEPTH {
            let (file, line) = self.file_line(func, entry, pc);
            match self
                .inline_index(func, entry, pc)
                .and_then(|ix| self.inlined_call(func, ix))
            {
                Some((nameoff, parent_pc)) => {
                    out.push(PcFrame {
                        function: self.name(nameoff),
                        file,
                        line,
                    });
                    pc = entry + u64::from(parent_pc);
                }
                None => {
                    let function = self.func_field(func, 1).and_then(|n| self.name(n));
                    out.push(PcFrame {
                        function,
                        file,
                        line,
                    });
                    break;
                }
            }
        }
        out
    }
}

/// An unsigned LEB128 value and its length.
fn varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, &b) in p.iter().enumerate().take(5) {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `moduledata.gofunc`: the module data starts with a pointer to the table (`pcHeader`)
/// followed by the `funcnametab` slice; `gofunc` is its 39th word (41st from Go 1.20).
fn find_gofunc(
    pcheader: u64,
    funcnametab: u64,
    go120: bool,
    data_sections: &[(u64, &[u8])],
) -> Option<u64> {
    let index = if go120 { 40 } else { 38 };
    for &(_, b) in data_sections {
        let mut at = 0;
        while at + 8 * (index + 1) <= b.len() {
            if u64_at(b, at) == Some(pcheader) && u64_at(b, at + 8) == Some(funcnametab) {
                return u64_at(b, at + 8 * index);
            }
            at += 8;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_bad_tables() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(varint(&[0x80, 0x80]), None);
        assert_eq!(varint(&[]), None);
        assert_eq!(
            PcLnTable::parse(vec![], 0, &[], None).err(),
            Some(PclnError::Truncated)
        );
        assert_eq!(
            PcLnTable::parse(vec![0xfa, 0xff, 0xff, 0xff, 0, 0, 1, 8], 0, &[], None).err(),
            Some(PclnError::Version(0xffff_fffa))
        );
        let mut header = vec![0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        header.extend_from_slice(&[0xff; 64]);
        assert_eq!(
            PcLnTable::parse(header, 0, &[], None).err(),
            Some(PclnError::Truncated)
        );
    }

    /// Every prefix of a real table's header and body is refused or read without panicking.
    #[test]
    fn truncated_headers_never_panic() {
        let mut t = vec![0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in [1u64, 0, 0x1000, 72, 72, 72, 72, 72] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        t.extend_from_slice(&[0u8; 32]);
        for n in 0..t.len() {
            if let Ok(table) = PcLnTable::parse(t[..n].to_vec(), 0, &[], None) {
                let _ = table.source_frames(0x1000);
                let _ = table.function(0x1004);
            }
        }
    }
}
