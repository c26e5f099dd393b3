//! How full the kernel's hash maps are: entries present against `max_entries`, for `/metrics`
//! and `ztrace stats`.
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
    if key_size == 0 || key_size > MAX_KEY_SIZE {
        return None;
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0u32;
    let mut first = true;
    while count < max_entries {
        let mut attr = MapElemAttr {
            map_fd: u32::try_from(fd).ok()?,
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
        std::mem::swap(&mut key, &mut next);
    }
    Some(count)
}
