//! Goroutines: what a Go binary must offer for ztrace to follow its goroutines.
//!
//! A Go program is an ELF file with a `.go.buildinfo` section; its Go version (the `go1.N`
//! string there, readable from Go 1.18) must be one whose `runtime.g` layout is known: the
//! goroutine id sits at byte 152 of `g` from Go 1.18 through 1.22 on x86-64, at 160 in Go 1.23
//! (`syscallbp` came before it), see [`goid_offset`]. The net/http hand-over probes
//! ([`HANDOFF_FUNCTIONS`]) attach by function name from the symbol table, or in a stripped
//! program at the file offset of the function's entry found in `.gopclntab`.
//! `runtime.newproc1` ([`NEWPROC`]) is probed at its entry and at each of its RET instructions
//! to learn which goroutine started which.

use std::path::Path;

use object::{Object, ReadCache};

use super::code::{self, Sites};

/// Offset of `goid` in `runtime.g` (amd64) for a Go minor version; `None`: not followed. Read
/// from the DWARF of go1.19.8 and go1.23.5 binaries (`llvm-dwarfdump --name=runtime.g`).
pub fn goid_offset(minor: u32) -> Option<u32> {
    match minor {
        18..=22 => Some(152),
        23 => Some(160),
        _ => None,
    }
}

/// The net/http functions probed at entry (program, function): helpers' entries and their
/// owners' hand-over, see `ebpf/src/go`.
pub const HANDOFF_FUNCTIONS: [(&str, &str); 5] = [
    ("go_helper", "net/http.(*persistConn).writeLoop"),
    ("go_owner", "net/http.(*persistConn).roundTrip"),
    // The issuing goroutine's stack for the request's write on writeLoop (returns at once
    // when stacks are off).
    ("go_owner_stack", "net/http.(*persistConn).roundTrip"),
    ("go_helper", "net/http.(*connReader).backgroundRead"),
    ("go_owner", "net/http.(*connReader).startBackgroundRead"),
];

/// The runtime function that starts goroutines (entry and RETs probed).
pub const NEWPROC: &str = "runtime.newproc1";

/// Functions (and the closures inside them: names that begin so) whose `go` statements start
/// the goroutine that serves one HTTP/2 or gRPC stream just read: grpc-go's per-stream
/// handler, net/http's bundled HTTP/2 server's and `x/net/http2`'s `runHandler`. Handlers
/// started later from a queue (`handlerDone` in Go 1.22 and later) are not among them: they do
/// not follow the read of their stream.
pub const STREAM_HANDLER_SPAWNERS: [&str; 7] = [
    "google.golang.org/grpc.(*Server).serveStreams",
    "net/http.(*http2serverConn).processHeaders",
    "net/http.(*http2serverConn).upgradeRequest",
    "net/http.(*http2serverConn).scheduleHandler",
    "golang.org/x/net/http2.(*serverConn).processHeaders",
    "golang.org/x/net/http2.(*serverConn).upgradeRequest",
    "golang.org/x/net/http2.(*serverConn).scheduleHandler",
];

/// What an executable is, for goroutine following.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoBinary {
    /// A Go program ztrace follows, with the [`HANDOFF_FUNCTIONS`] it has.
    Followed {
        version: String,
        goid_offset: u32,
        handoffs: Vec<Handoff>,
        stripped: bool,
        spawn: Option<Sites>,
        /// grpc-go's client stream creation: `None` without grpc-go's client, `Err(why)` when
        /// it cannot be probed.
        grpc: Option<Result<super::grpc::GrpcClient, String>>,
        /// The address ranges of [`STREAM_HANDLER_SPAWNERS`]: where a `go` statement starts a
        /// stream's handler. `None` when unknown (a stripped or position-independent binary).
        stream_spawners: Option<Vec<(u64, u64)>>,
    },
    /// A Go program ztrace cannot follow, and why.
    Unsupported(String),
    /// Not a Go program.
    NotGo,
}

/// A hand-over probe to attach: the kernel program and the function, with, in a stripped
/// binary, the file offset of the function's entry (from `.gopclntab`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    pub program: &'static str,
    pub function: &'static str,
    pub offset: Option<u64>,
}

/// Looks at the ELF file at `path`.
pub fn inspect(path: &Path) -> std::io::Result<GoBinary> {
    let file = std::fs::File::open(path)?;
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Ok(GoBinary::NotGo);
    };
    Ok(classify(&elf))
}

/// Classifies a parsed object file.
pub fn classify<'data, O: Object<'data>>(elf: &O) -> GoBinary {
    if elf.section_by_name(".go.buildinfo").is_none() {
        return GoBinary::NotGo;
    }
    if elf.architecture() != object::Architecture::X86_64 {
        return GoBinary::Unsupported("not x86-64".into());
    }
    let Some(version) = super::version(elf) else {
        return GoBinary::Unsupported(
            "Go version unknown (before go1.18?): runtime.g layout unknown".into(),
        );
    };
    let Some(goid_offset) = super::minor(&version).and_then(goid_offset) else {
        return GoBinary::Unsupported(format!(
            "{version}: runtime.g layout unknown (go1.18 to go1.23 are followed)"
        ));
    };
    let names: Vec<&'static str> = HANDOFF_FUNCTIONS
        .iter()
        .map(|(_, f)| *f)
        .chain([NEWPROC, super::grpc::NEW_STREAM])
        .collect();
    let (found, stripped) = code::locate(elf, &names);
    let mut handoffs = Vec::new();
    for f in &found {
        for &(program, function) in HANDOFF_FUNCTIONS.iter().filter(|(_, name)| *name == f.name) {
            // Unstripped: attached by name; stripped: at the entry's file offset.
            let offset = if stripped {
                let Some(offset) = code::file_offset(elf, f.vaddr) else {
                    continue;
                };
                Some(offset)
            } else {
                None
            };
            handoffs.push(Handoff {
                program,
                function,
                offset,
            });
        }
    }
    let spawn = found
        .iter()
        .find(|f| f.name == NEWPROC)
        .and_then(|f| code::sites(elf, f))
        .filter(|sites| !sites.rets.is_empty());
    let grpc = super::grpc::inspect(elf, &found).transpose();
    let stream_spawners = (!stripped && elf.kind() == object::ObjectKind::Executable)
        .then(|| code::ranges_with_prefix(elf, &STREAM_HANDLER_SPAWNERS));
    GoBinary::Followed {
        version,
        goid_offset,
        handoffs,
        stripped,
        spawn,
        grpc,
        stream_spawners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goid_offsets_by_go_version() {
        assert_eq!(goid_offset(17), None);
        assert_eq!(goid_offset(19), Some(152));
        assert_eq!(goid_offset(23), Some(160));
        assert_eq!(goid_offset(24), None);
    }

    #[test]
    fn the_test_binary_is_not_go() {
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(inspect(&exe).expect("inspect"), GoBinary::NotGo);
    }
}
