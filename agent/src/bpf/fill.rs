//! How full the kernel's hash maps are: entries present against `max_entries`, for `/metrics`
//! and `ztrace stats`; and [`sweep_exited`], which removes the entries of exited processes from
//! the maps keyed by process.
//!
//! Counting walks a map's keys with `BPF_MAP_GET_NEXT_KEY` (one system call per entry, about a
//! microsecond each: ~65 ms for a full 65,536-entry map), so the pipeline asks for it every
//! [`crate::pipeline`] fill interval, never per event. The walk races the kernel's updates: a key
//! deleted under it restarts the walk at the first key, so the count is an estimate, capped at
//! `max_entries`. Arrays, task storage and the ring buffer are not counted (they are always
//! "full" or not keyed).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Map, MapData};

/// One hash map's fill level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub name: String,
    pub entries: u32,
    pub max_entries: u32,
}

#[cfg(test)]
mod tests {
    use super::one_pid_namespace;

    #[test]
    fn the_sweep_runs_only_where_proc_shows_the_kernels_pids() {
        assert!(one_pid_namespace(
            "Name:\tztrace\nNSpid:\t4242\nNSpgid:\t4242\n"
        ));
        assert!(!one_pid_namespace("Name:\tztrace\nNSpid:\t4242\t7\n"));
        assert!(one_pid_namespace("Name:\tztrace\n"));
    }
}

/// `BPF_MAP_GET_NEXT_KEY` (linux/bpf.h `enum bpf_cmd`).
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// Keys longer than this are not walked (none of ztrace's maps comes close).
const MAX_KEY_SIZE: usize = 512;

/// The map-element part of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

/// The fill level of every hash map among `maps`, sorted by name.
pub fn hash_maps<'a>(maps: impl Iterator<Item = (&'a str, &'a Map)>) -> Vec<MapFill> {
    let mut fill: Vec<MapFill> = maps
        .filter_map(|(name, map)| {
            let data = match map {
                Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuLruHashMap(d) => d,
                _ => return None,
            };
            let info = data.info().ok()?;
            let entries = count_keys(data, info.key_size() as usize, info.max_entries())?;
            Some(MapFill {
                name: name.to_owned(),
                entries,
                max_entries: info.max_entries(),
            })
        })
        .collect();
    fill.sort_by(|a, b| a.name.cmp(&b.name));
    fill
}

/// Keys in the map, walked at most `max_entries` times; `None` when the walk fails.
fn count_keys(map: &MapData, key_size: usize, max_entries: u32) -> Option<u32> {
    walk_keys(map, key_size, max_entries, |_| {})
}

/// Calls `each` with every key of the map (at most `max_entries` of them) and returns how many
/// it saw; `None` when the walk fails.
fn walk_keys(
    map: &MapData,
    key_size: usize,
    max_entries: u32,
    mut each: impl FnMut(&[u8]),
) -> Option<u32> {
    if key_size == 0 || key_size > MAX_KEY_SIZE {
        return None;
    }
    let map_fd = u32::try_from(map.fd().as_fd().as_raw_fd()).ok()?;
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0u32;
    let mut first = true;
    while count < max_entries {
        let mut attr = MapElemAttr {
            map_fd,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` is the map-element layout of `union bpf_attr` and lives across the
        // call; `key` and `next` are `key_size` bytes, the map's key size, so the kernel reads
        // and writes within them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                std::ptr::addr_of_mut!(attr),
                std::mem::size_of::<MapElemAttr>(),
            )
        };
        if rc != 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOENT) => Some(count), // past the last key
                _ => None,
            };
        }
        count += 1;
        first = false;
        each(&next);
        std::mem::swap(&mut key, &mut next);
    }
    Some(count)
}

/// `BPF_MAP_DELETE_ELEM` (linux/bpf.h `enum bpf_cmd`).
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Where a map's key holds the process id.
#[derive(Clone, Copy, Debug)]
enum TgidAt {
    /// A `u64` `tgid << 32 | fd` (or `pid_tgid`): bytes 4..8.
    High32,
    /// A struct with a `u64` then the `u32` tgid: bytes 8..12.
    After64,
    /// A `u32` tgid, or a struct that starts with one: bytes 0..4.
    First32,
}

/// The maps keyed by process whose entries outlive it: the kernel adds them on a process's
/// connections and threads, but nothing in the kernel removes them when the process exits
/// without closing (or when they are LRU maps that a close does not touch). Under process churn
/// they would fill with dead processes' entries and, being LRU, evict live ones.
const PER_PROCESS: &[(&str, TgidAt)] = &[
    (ztrace_common::maps::SOCKS, TgidAt::High32),
    (ztrace_common::maps::PROP_CONNS, TgidAt::High32),
    (ztrace_common::maps::STACK_CONNS, TgidAt::High32),
    (ztrace_common::maps::SEEN_TGIDS, TgidAt::First32),
    (ztrace_common::maps::STACK_BUDGET, TgidAt::First32),
    (ztrace_common::maps::STACK_SKIP, TgidAt::First32),
    (ztrace_common::maps::UNIT_CTX, TgidAt::First32),
    (ztrace_common::maps::SSL_FDS, TgidAt::After64),
    (ztrace_common::maps::TLS_MEMBIO, TgidAt::First32),
    (ztrace_common::maps::LAST_READ_FD, TgidAt::High32),
    (ztrace_common::maps::PENDING_SSL, TgidAt::High32),
];

/// Removes the entries of processes that no longer exist (no `/proc/TGID`) from the
/// [`PER_PROCESS`] maps; returns how many it removed. A pid reused between the check and the
/// delete loses an entry the kernel makes again on its next use (a socket is looked up again;
/// a connection opened in that instant gets no request ids or stacks).
///
/// Only in the host's PID namespace (a DaemonSet has `hostPID: true`): elsewhere `/proc` does
/// not show the kernel's process ids, and every entry would look dead.
pub fn sweep_exited<'a>(maps: impl Iterator<Item = (&'a str, &'a Map)>) -> u64 {
    static HOST_PIDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*HOST_PIDS.get_or_init(in_host_pid_namespace) {
        return 0;
    }
    let mut alive: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
    let mut removed = 0u64;
    for (name, map) in maps {
        let Some(&(_, at)) = PER_PROCESS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let (Map::HashMap(data) | Map::LruHashMap(data)) = map else {
            continue;
        };
        let Ok(info) = data.info() else { continue };
        let key_size = info.key_size() as usize;
        let range = match at {
            TgidAt::High32 if key_size == 8 => 4..8,
            TgidAt::First32 if key_size >= 4 => 0..4,
            TgidAt::After64 if key_size >= 12 => 8..12,
            _ => continue,
        };
        let mut dead = Vec::new();
        let _ = walk_keys(data, key_size, info.max_entries(), |key| {
            let Some(tgid) = key
                .get(range.clone())
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
            else {
                return;
            };
            let exists = *alive
                .entry(tgid)
                .or_insert_with(|| std::path::Path::new(&format!("/proc/{tgid}")).exists());
            if !exists {
                dead.push(key.to_vec());
            }
        });
        for key in dead {
            if delete_key(data, &key) {
                removed += 1;
            }
        }
    }
    removed
}

/// This process sees the kernel's process ids: `NSpid` in `/proc/self/status` has one id (no
/// nested PID namespace). Unknown (an old kernel without `NSpid`) counts as yes.
fn in_host_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| one_pid_namespace(&s))
}

/// `NSpid` of a `/proc/PID/status` names one id, or is missing.
fn one_pid_namespace(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_none_or(|ids| ids.split_whitespace().count() == 1)
}

/// Deletes one key; false if it was gone already or the call failed.
fn delete_key(map: &MapData, key: &[u8]) -> bool {
    let Ok(map_fd) = u32::try_from(map.fd().as_fd().as_raw_fd()) else {
        return false;
    };
    let mut attr = MapElemAttr {
        map_fd,
        _pad: 0,
        key: key.as_ptr() as u64,
        next_key: 0,
        flags: 0,
    };
    // SAFETY: `attr` is the map-element layout of `union bpf_attr`; `key` is a key read from
    // this map by `walk_keys`, so it has the map's key size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    rc == 0
}
