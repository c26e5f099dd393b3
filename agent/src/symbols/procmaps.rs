//! `/proc/PID/maps`: which file is mapped where in a process, so that an address becomes a
//! (file, file offset) pair. Parsing is pure ([`parse`]); [`read`] does the I/O.

use std::path::{Path, PathBuf};

/// One file-backed, executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// `major:minor` of the device and the inode: the file's identity.
    pub dev: String,
    pub inode: u64,
    /// Path as the process sees it (without a ` (deleted)` suffix).
    pub path: String,
    /// The file was deleted or replaced after it was mapped.
    pub deleted: bool,
}

impl Mapping {
    /// The file's offset of address `addr` (which must be inside the mapping).
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }

    /// Paths to open the mapped file through, best first: `map_files` (right even when the file
    /// was deleted or replaced), the path inside the process's root (containers), and, when the
    /// process is already gone, the path on the host.
    pub fn open_paths(&self, pid: u32) -> Vec<PathBuf> {
        let mut paths = vec![
            PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                self.start, self.end
            )),
            Path::new(&format!("/proc/{pid}/root")).join(self.path.trim_start_matches('/')),
        ];
        if !self.deleted {
            paths.push(PathBuf::from(&self.path));
        }
        paths
    }

    /// Identity of the mapped file on this host.
    pub fn file_key(&self) -> String {
        format!("{}:{}", self.dev, self.inode)
    }
}

/// Executable file-backed mappings of a maps file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?.to_owned();
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start();
    if !perms.contains('x') || inode == 0 || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        dev,
        inode,
        path: path.to_owned(),
        deleted,
    })
}

/// The executable mappings of a running process.
pub fn read(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// The mapping holding `addr`.
pub fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.start <= addr && addr < m.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_file_mappings() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234 /usr/bin/client
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1234 /usr/bin/client
7f00aa000000-7f00aa100000 r-xp 00028000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00ab000000-7f00ab001000 r-xp 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f00ac000000-7f00ac001000 r-xp 00002000 08:01 77 /tmp/old binary (deleted)
garbage line
";
        let maps = parse(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/client");
        assert_eq!(maps[0].file_offset(0x55d0c0a01010), 0x1010);
        assert_eq!(maps[1].offset, 0x28000);
        assert_eq!(maps[2].path, "/tmp/old binary");
        assert!(maps[2].deleted);
        assert_eq!(find(&maps, 0x7f00aa000005).map(|m| m.inode), Some(99));
        assert!(find(&maps, 0x1).is_none());
        assert_eq!(
            maps[0].open_paths(7)[0],
            PathBuf::from("/proc/7/map_files/55d0c0a01000-55d0c0a02000")
        );
        assert_eq!(
            maps[0].open_paths(7)[1],
            PathBuf::from("/proc/7/root/usr/bin/client")
        );
    }
}
