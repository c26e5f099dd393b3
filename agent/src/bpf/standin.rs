//! A stand-in for the socket map `CLIENT_SOCKS` when the kernel will not create it.
//!
//! aya creates every map of the object before any program is loaded, and the kernel creates a
//! socket map (`BPF_MAP_TYPE_SOCKHASH`) only for `CAP_NET_ADMIN` (recent kernels also take
//! `CAP_SYS_ADMIN` instead): without it the whole object would fail to load, for the sake of
//! one optional program (`sk_msg`, which adds `traceparent`). The object is then loaded again
//! with that map's definition turned into a plain hash map of the same sizes, which needs no
//! capability beyond `CAP_BPF`; no program that uses the map is loaded (`zt_sockops_option`
//! instead of `zt_sockops`, no `sk_msg`), and the attach table says what is missing.

use object::{Object, ObjectSection, ObjectSymbol};

/// `BPF_MAP_TYPE_HASH` and `BPF_MAP_TYPE_SOCKHASH` (linux/bpf.h).
const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_SOCKHASH: u32 = 18;

/// An object's bytes, 16-byte aligned as the loader wants them.
pub struct Aligned {
    words: Vec<u128>,
    len: usize,
}

impl Aligned {
    fn copy_of(bytes: &[u8]) -> Aligned {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(16)) {
            let mut b = [0u8; 16];
            b[..chunk.len()].copy_from_slice(chunk);
            *word = u128::from_ne_bytes(b);
        }
        Aligned {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Where the legacy map definition (`bpf_map_def`: type, key size, value size, ...) of the
/// map `name` lies in the ELF object: the file offset of its first byte.
fn definition_offset(object: &[u8], name: &str) -> Result<usize, String> {
    let file = object::File::parse(object).map_err(|e| format!("not an ELF object: {e}"))?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .ok_or_else(|| format!("no symbol {name}"))?;
    let index = symbol
        .section_index()
        .ok_or_else(|| format!("symbol {name} has no section"))?;
    let section = file
        .section_by_index(index)
        .map_err(|e| format!("symbol {name}: {e}"))?;
    let (start, size) = section
        .file_range()
        .ok_or_else(|| format!("the section of {name} has no bytes in the file"))?;
    let within = symbol.address().saturating_sub(section.address());
    if within + 12 > size {
        return Err(format!("symbol {name} lies outside its section"));
    }
    usize::try_from(start + within).map_err(|e| e.to_string())
}

/// A copy of `object` in which the socket map `name` is a plain hash map.
pub fn with_plain_map(object: &[u8], name: &str) -> Result<Aligned, String> {
    let at = definition_offset(object, name)?;
    let mut copy = Aligned::copy_of(object);
    let bytes = copy.bytes_mut();
    let field: &mut [u8; 4] = (&mut bytes[at..at + 4])
        .try_into()
        .map_err(|_| format!("symbol {name}: short definition"))?;
    let map_type = u32::from_le_bytes(*field);
    if map_type != MAP_TYPE_SOCKHASH {
        return Err(format!("{name} is not a socket map (type {map_type})"));
    }
    *field = MAP_TYPE_HASH.to_le_bytes();
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_map_becomes_a_hash_map_and_nothing_else_changes() {
        let object = super::super::OBJECT;
        if object.is_empty() {
            // Built without `cargo xtask build`: no object to patch (`cargo xtask test` has one).
            return;
        }
        let maps = ztrace_common::maps::CLIENT_SOCKS;
        let at = definition_offset(object, maps).expect("CLIENT_SOCKS's definition");
        assert_eq!(object[at..at + 4], MAP_TYPE_SOCKHASH.to_le_bytes());
        let copy = with_plain_map(object, maps).expect("patched");
        let patched = copy.bytes();
        assert_eq!(patched.len(), object.len());
        assert_eq!(copy.words.as_ptr() as usize % 16, 0);
        assert_eq!(patched[at..at + 4], MAP_TYPE_HASH.to_le_bytes());
        let changed = (0..object.len())
            .filter(|&i| object[i] != patched[i])
            .count();
        assert_eq!(changed, 1, "only the type's low byte");
        // Twice, or another map: refused.
        assert!(with_plain_map(patched, maps).is_err());
        assert!(with_plain_map(object, "TX_CTX").is_err());
        assert!(with_plain_map(object, "NO_SUCH_MAP").is_err());
        assert!(with_plain_map(b"not elf", maps).is_err());
    }
}
