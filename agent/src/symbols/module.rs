//! One ELF file (executable or shared library) as the symbolizer needs it: its load segments
//! (file offset → ELF virtual address), its call-frame information (`.eh_frame`,
//! `.debug_frame`) indexed by address, its DWARF (for function, file, line and inlined frames;
//! from the file itself, a `.gnu_debuglink` file or a build-id file under a debug directory),
//! and its symbol table as a fallback.
//!
//! Loading copies the sections it keeps, so a module owns its memory ([`Module::bytes`]) and
//! the file can go away. It does no unwinding and keeps no per-process state; it remembers the
//! answers it gave per address (bounded memos), since the same call sites recur.

use std::{
    cell::RefCell,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EndianArcSlice, LittleEndian, Register,
    RegisterRule, UnwindContext, UnwindOffset, UnwindSection, UnwindTableRow,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache, ReadRef};

use crate::golang::pclntab::PcLnTable;

/// The reader every section is kept as: owned, shared bytes.
pub type R = EndianArcSlice<LittleEndian>;

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Object {
        path: PathBuf,
        source: object::Error,
    },
}

/// Where a module's DWARF came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugSource {
    /// The file has its own `.debug_info`.
    Embedded,
    /// The file named by its `.gnu_debuglink`.
    DebugLink,
    /// `<debug dir>/.build-id/xx/yyyy.debug`.
    BuildId,
    /// A Go binary without DWARF: its `.gopclntab` (names, files, lines, inlined frames).
    GoPclntab,
    /// No DWARF: names come from the symbol table.
    None,
}

/// A frame of source code at one address: innermost (inlined) first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceFrame {
    /// Demangled function name.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A PT_LOAD segment: `filesz` bytes at file `offset` are mapped at ELF address `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Call-frame information of one section, with an index of its FDEs sorted by address.
struct Cfi<S: UnwindSection<R>> {
    section: S,
    bases: BaseAddresses,
    /// (first address, end address, FDE offset)
    index: Vec<(u64, u64, usize)>,
}

impl<S: UnwindSection<R>> Cfi<S>
where
    S::Offset: UnwindOffset<usize>,
{
    fn new(section: S, bases: BaseAddresses) -> Self {
        let mut index = Vec::new();
        let mut entries = section.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let gimli::CieOrFde::Fde(partial) = entry {
                if let Ok(fde) = partial.parse(S::cie_from_offset) {
                    let start = fde.initial_address();
                    index.push((start, start.saturating_add(fde.len()), fde.offset()));
                }
            }
        }
        index.sort_unstable_by_key(|e| e.0);
        Cfi {
            section,
            bases,
            index,
        }
    }

    fn row(&self, ctx: &mut UnwindContext<usize>, addr: u64) -> Option<UnwindTableRow<usize>> {
        let i = self.index.partition_point(|e| e.0 <= addr).checked_sub(1)?;
        let (start, end, offset) = self.index[i];
        if addr < start || addr >= end {
            return None;
        }
        let fde = self
            .section
            .fde_from_offset(&self.bases, S::Offset::from(offset), S::cie_from_offset)
            .ok()?;
        fde.unwind_info_for_address(&self.section, &self.bases, ctx, addr)
            .ok()
            .cloned()
    }
}

/// How to find the caller's registers from this frame's (x86-64 DWARF register numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindRule {
    /// CFA = value of `cfa_register` + `cfa_offset`.
    pub cfa_register: u16,
    pub cfa_offset: i64,
    /// Return address at CFA + this offset.
    pub ra_offset: Option<i64>,
    /// Caller's rbp: at CFA + this offset, or unchanged when `None`.
    pub rbp_offset: Option<i64>,
}

pub const RSP: u16 = 7;
pub const RBP: u16 = 6;
const RA: u16 = 16;

fn rule_of(row: &UnwindTableRow<usize>) -> Option<UnwindRule> {
    let (cfa_register, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => (register.0, *offset),
        CfaRule::Expression(_) => return None,
    };
    let ra_offset = match row.register(Register(RA)) {
        RegisterRule::Offset(o) => Some(o),
        _ => None,
    };
    let rbp_offset = match row.register(Register(RBP)) {
        RegisterRule::Offset(o) => Some(o),
        _ => None,
    };
    Some(UnwindRule {
        cfa_register,
        cfa_offset,
        ra_offset,
        rbp_offset,
    })
}

/// A loaded ELF file.
pub struct Module {
    /// File name, for frames without a function.
    pub name: String,
    pub build_id: Option<Vec<u8>>,
    pub debug_source: DebugSource,
    /// Approximate heap bytes held (copied sections, symbol names, indexes).
    pub bytes: usize,
    /// The file has a `.gopclntab` (a Go binary).
    pub is_go: bool,
    segments: Vec<Segment>,
    eh_frame: Option<Cfi<EhFrame<R>>>,
    debug_frame: Option<Cfi<DebugFrame<R>>>,
    dwarf: Option<addr2line::Context<R>>,
    /// (address, size, demangled name), sorted by address.
    symbols: Vec<(u64, u64, String)>,
    /// Go's function table, for Go binaries without DWARF.
    go_table: Option<PcLnTable>,
    /// Answers already given, by address: the same call sites come back stack after stack.
    /// Each holds at most [`MEMO_ENTRIES`] entries (then starts over).
    frames_memo: RefCell<HashMap<u64, Vec<SourceFrame>>>,
    rules_memo: RefCell<HashMap<u64, Option<UnwindRule>>>,
}

/// Entries of each per-module memo before it is cleared.
const MEMO_ENTRIES: usize = 16_384;

fn memo<V: Clone>(map: &RefCell<HashMap<u64, V>>, addr: u64, compute: impl FnOnce() -> V) -> V {
    if let Some(v) = map.borrow().get(&addr) {
        return v.clone();
    }
    let v = compute();
    let mut m = map.borrow_mut();
    if m.len() >= MEMO_ENTRIES {
        m.clear();
    }
    m.insert(addr, v.clone());
    v
}

/// The `.gnu_debuglink` file name of an object.
fn debuglink<'d, D: ReadRef<'d>>(file: &object::File<'d, D>) -> Option<String> {
    let (name, _crc) = file.gnu_debuglink().ok().flatten()?;
    std::str::from_utf8(name).ok().map(str::to_owned)
}

fn section_reader<'d, D: ReadRef<'d>>(
    file: &object::File<'d, D>,
    name: &str,
    bytes: &mut usize,
) -> Option<R> {
    let section = file.section_by_name(name)?;
    let data = section.uncompressed_data().ok()?;
    *bytes += data.len();
    Some(EndianArcSlice::new(Arc::from(&*data), LittleEndian))
}

fn load_dwarf<'d, D: ReadRef<'d>>(
    file: &object::File<'d, D>,
    bytes: &mut usize,
) -> Option<addr2line::Context<R>> {
    file.section_by_name(".debug_info")?;
    let empty = EndianArcSlice::new(Arc::from(&[][..]), LittleEndian);
    let dwarf = gimli::Dwarf::load(|id| -> Result<R, gimli::Error> {
        // Variable locations, macros and type units name no function and no line: not kept
        // (location lists alone are a seventh of libc's DWARF).
        if matches!(
            id,
            gimli::SectionId::DebugLoc
                | gimli::SectionId::DebugLocLists
                | gimli::SectionId::DebugMacinfo
                | gimli::SectionId::DebugMacro
                | gimli::SectionId::DebugTypes
        ) {
            return Ok(empty.clone());
        }
        Ok(section_reader(file, id.name(), bytes).unwrap_or_else(|| empty.clone()))
    })
    .ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// Demangles a Rust (legacy or v0) or C++ (Itanium) symbol; other names are returned as they are.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(d) = sym.demangle(&cpp_demangle::DemangleOptions::default()) {
                return d;
            }
        }
    }
    name.to_owned()
}

/// The file at `path`, read on demand: only the sections a module keeps are read (and held
/// by the cache until loading ends), never the whole file at once.
fn open_lazy(path: &Path) -> Result<ReadCache<std::fs::File>, ModuleError> {
    std::fs::File::open(path)
        .map(ReadCache::new)
        .map_err(|source| ModuleError::Io {
            path: path.to_owned(),
            source,
        })
}

impl Module {
    /// Loads the ELF file at `path` (shown as `display_path`). `root` is the process's root
    /// (`/proc/PID/root`) under which debug files are searched; `debug_dirs` are directories
    /// holding `.build-id/xx/yyyy.debug` files (e.g. `/usr/lib/debug`).
    pub fn load(
        path: &Path,
        display_path: &str,
        root: &Path,
        debug_dirs: &[PathBuf],
    ) -> Result<Module, ModuleError> {
        let data = open_lazy(path)?;
        let file = object::File::parse(&data).map_err(|source| ModuleError::Object {
            path: path.to_owned(),
            source,
        })?;
        let mut bytes = 0usize;
        let segments: Vec<Segment> = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    offset,
                    vaddr: s.address(),
                    filesz,
                }
            })
            .collect();
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let text = file
            .section_by_name(".text")
            .map(|s| s.address())
            .unwrap_or(0);
        let eh_frame = file.section_by_name(".eh_frame").and_then(|s| {
            let addr = s.address();
            let reader = section_reader(&file, ".eh_frame", &mut bytes)?;
            let bases = BaseAddresses::default().set_eh_frame(addr).set_text(text);
            Some(Cfi::new(EhFrame::from(reader), bases))
        });
        let mut debug_frame = section_reader(&file, ".debug_frame", &mut bytes)
            .map(|r| Cfi::new(DebugFrame::from(r), BaseAddresses::default().set_text(text)));
        let is_go = file.section_by_name(".gopclntab").is_some();
        let mut symbols = symbols_of(&file, &mut bytes);

        let mut debug_source = DebugSource::None;
        let mut dwarf = load_dwarf(&file, &mut bytes);
        if dwarf.is_some() {
            debug_source = DebugSource::Embedded;
        } else if let Some((source, debug_data)) =
            find_debug_file(&file, display_path, build_id.as_deref(), root, debug_dirs)
        {
            if let Ok(debug_file) = object::File::parse(&debug_data) {
                dwarf = load_dwarf(&debug_file, &mut bytes);
                if dwarf.is_some() {
                    debug_source = source;
                }
                if debug_frame.is_none() {
                    debug_frame =
                        section_reader(&debug_file, ".debug_frame", &mut bytes).map(|r| {
                            Cfi::new(DebugFrame::from(r), BaseAddresses::default().set_text(text))
                        });
                }
                if symbols.is_empty() {
                    symbols = symbols_of(&debug_file, &mut bytes);
                }
            }
        }
        let go_table = if is_go && dwarf.is_none() {
            go_table_of(&file)
        } else {
            None
        };
        if let Some(t) = &go_table {
            bytes += t.bytes();
            debug_source = DebugSource::GoPclntab;
        }
        bytes += eh_frame.as_ref().map_or(0, |c| c.index.len() * 24);
        bytes += debug_frame.as_ref().map_or(0, |c| c.index.len() * 24);
        let name = Path::new(display_path).file_name().map_or_else(
            || display_path.to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Module {
            name,
            build_id,
            debug_source,
            bytes,
            is_go,
            segments,
            eh_frame,
            debug_frame,
            dwarf,
            symbols,
            go_table,
            frames_memo: RefCell::default(),
            rules_memo: RefCell::default(),
        })
    }

    /// The ELF virtual address of file offset `offset`, if a load segment maps it.
    pub fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.filesz > 0 && s.offset <= offset && offset < s.offset + s.filesz)
            .map(|s| offset - s.offset + s.vaddr)
    }

    /// How to unwind from ELF address `addr`, from `.eh_frame` or else `.debug_frame`.
    pub fn unwind_rule(&self, ctx: &mut UnwindContext<usize>, addr: u64) -> Option<UnwindRule> {
        memo(&self.rules_memo, addr, || self.find_unwind_rule(ctx, addr))
    }

    fn find_unwind_rule(&self, ctx: &mut UnwindContext<usize>, addr: u64) -> Option<UnwindRule> {
        if let Some(row) = self.eh_frame.as_ref().and_then(|c| c.row(ctx, addr)) {
            return rule_of(&row);
        }
        self.debug_frame
            .as_ref()
            .and_then(|c| c.row(ctx, addr))
            .and_then(|row| rule_of(&row))
    }

    /// Source frames at ELF address `addr`, innermost (inlined) first; empty when unknown.
    pub fn source_frames(&self, addr: u64) -> Vec<SourceFrame> {
        memo(&self.frames_memo, addr, || self.find_source_frames(addr))
    }

    fn find_source_frames(&self, addr: u64) -> Vec<SourceFrame> {
        if let Some(table) = &self.go_table {
            let frames = table.source_frames(addr).into_iter();
            return frames
                .map(|f| SourceFrame {
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect();
        }
        let mut out = Vec::new();
        if let Some(ctx) = &self.dwarf {
            if let Ok(mut frames) = ctx.find_frames(addr).skip_all_loads() {
                while let Ok(Some(frame)) = frames.next() {
                    let function = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.raw_name().ok())
                        .map(|n| demangle(n.as_ref()));
                    let (file, line) = match &frame.location {
                        Some(loc) => (loc.file.map(str::to_owned), loc.line),
                        None => (None, None),
                    };
                    out.push(SourceFrame {
                        function,
                        file,
                        line,
                    });
                }
            }
        }
        if out.iter().all(|f| f.function.is_none()) {
            if let Some(name) = self.symbol(addr) {
                match out.first_mut() {
                    Some(first) => first.function = Some(name.to_owned()),
                    None => out.push(SourceFrame {
                        function: Some(name.to_owned()),
                        file: None,
                        line: None,
                    }),
                }
            }
        }
        out
    }

    /// The symbol-table name of the function holding `addr`.
    pub fn symbol(&self, addr: u64) -> Option<&str> {
        let i = self
            .symbols
            .partition_point(|s| s.0 <= addr)
            .checked_sub(1)?;
        let (start, size, name) = &self.symbols[i];
        (addr < start + (*size).max(1)).then_some(name.as_str())
    }
}

/// The `.gopclntab` of a Go binary, with the data sections that lead to its inline trees.
fn go_table_of<'d, D: ReadRef<'d>>(file: &object::File<'d, D>) -> Option<PcLnTable> {
    let section = file.section_by_name(".gopclntab")?;
    let data = section.data().ok()?.to_vec();
    let sections: Vec<(u64, &[u8])> = [".noptrdata", ".data"]
        .iter()
        .filter_map(|n| file.section_by_name(n))
        .filter_map(|s| Some((s.address(), s.data().ok()?)))
        .collect();
    let rodata = file
        .section_by_name(".rodata")
        .and_then(|s| Some((s.address(), s.data().ok()?)));
    match PcLnTable::parse(data, section.address(), &sections, rodata) {
        Ok(t) => Some(t),
        Err(error) => {
            tracing::debug!(%error, "unreadable .gopclntab");
            None
        }
    }
}

fn symbols_of<'d, D: ReadRef<'d>>(
    file: &object::File<'d, D>,
    bytes: &mut usize,
) -> Vec<(u64, u64, String)> {
    let mut symbols: Vec<(u64, u64, String)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), demangle(s.name().ok()?))))
        .collect();
    symbols.sort_unstable_by_key(|s| s.0);
    symbols.dedup_by_key(|s| s.0);
    *bytes += symbols.iter().map(|s| s.2.len() + 40).sum::<usize>();
    symbols
}

/// The separate debug file of an object without DWARF: by build id under each debug directory
/// (and the process's own `/usr/lib/debug`), then by `.gnu_debuglink` beside the binary, in
/// its `.debug/` folder and under `/usr/lib/debug/<dir>/`.
fn find_debug_file<'d, D: ReadRef<'d>>(
    file: &object::File<'d, D>,
    display_path: &str,
    build_id: Option<&[u8]>,
    root: &Path,
    debug_dirs: &[PathBuf],
) -> Option<(DebugSource, ReadCache<std::fs::File>)> {
    let in_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex = crate::spans::hex(id);
        let rel = format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..]);
        let mut candidates: Vec<PathBuf> = debug_dirs.iter().map(|d| d.join(&rel)).collect();
        candidates.push(in_root(&Path::new("/usr/lib/debug").join(&rel)));
        for c in candidates {
            if let Ok(f) = std::fs::File::open(&c) {
                return Some((DebugSource::BuildId, ReadCache::new(f)));
            }
        }
    }
    let link = debuglink(file)?;
    let dir = Path::new(display_path).parent()?;
    let candidates = [
        in_root(&dir.join(&link)),
        in_root(&dir.join(".debug").join(&link)),
        in_root(
            &Path::new("/usr/lib/debug")
                .join(dir.strip_prefix("/").unwrap_or(dir))
                .join(&link),
        ),
    ];
    candidates
        .iter()
        .find_map(|c| std::fs::File::open(c).ok())
        .map(|f| (DebugSource::DebugLink, ReadCache::new(f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE"), "foo::bar");
        assert_eq!(
            demangle("_ZN9wikipedia7article6formatEv"),
            "wikipedia::article::format()"
        );
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }

    #[test]
    fn loads_its_own_test_binary() {
        // The test binary itself: an ELF with .eh_frame, symbols and (debug = 1) DWARF lines.
        let exe = std::env::current_exe().expect("current exe");
        let m = Module::load(&exe, &exe.to_string_lossy(), Path::new("/"), &[]).expect("load");
        assert!(m.bytes > 0);
        let addr = demangles_rust_and_cpp as *const () as u64;
        // Find the ELF address of this function through /proc/self/maps.
        let maps = super::super::procmaps::read(std::process::id()).expect("maps");
        let map = super::super::procmaps::find(&maps, addr).expect("mapping");
        let vaddr = m.vaddr_of_offset(map.file_offset(addr)).expect("vaddr");
        let frames = m.source_frames(vaddr);
        let f = frames.last().expect("frame");
        assert!(
            f.function
                .as_deref()
                .is_some_and(|n| n.ends_with("demangles_rust_and_cpp")),
            "{frames:?}"
        );
        let mut ctx = UnwindContext::new();
        assert!(m.unwind_rule(&mut ctx, vaddr).is_some());
    }

    /// Memory of loading the system's libc with its debug file and looking up its functions:
    /// `cargo test --release -p ztrace --lib libc_module_memory -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement"]
    fn libc_module_memory() {
        let kib = |field| crate::health::own_status_kib(field).unwrap_or(0);
        let rss = || format!("{} kB", kib("VmRSS"));
        let hwm = || format!("{} kB", kib("VmHWM"));
        let path = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        eprintln!("before: rss {} hwm {}", rss(), hwm());
        let m = Module::load(
            path,
            "libc.so.6",
            Path::new("/"),
            &[PathBuf::from("/usr/lib/debug")],
        )
        .expect("load");
        eprintln!(
            "loaded ({:?}, {} bytes): rss {} hwm {}",
            m.debug_source,
            m.bytes,
            rss(),
            hwm()
        );
        let mut n = 0;
        for (addr, _, _) in m.symbols.iter().step_by(50).take(40) {
            n += m.source_frames(*addr).len();
        }
        eprintln!("40 lookups ({n} frames): rss {} hwm {}", rss(), hwm());
    }
}
