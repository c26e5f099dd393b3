//! Struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! aya-ebpf has no CO-RE relocations, so the kernel programs read kernel structs at offsets the
//! agent computes here at start and passes in as globals ([`KernelOffsets`]). This is a minimal
//! reader of the BTF format (header, type section, string section): it indexes structs and
//! unions by name and finds a member by name, descending into anonymous struct/union members.
//! It does not resolve anything else (no typedef chasing beyond what member lookup needs).

use std::collections::HashMap;

use ztrace_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Errors of BTF reading and offset lookup.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF has no member {member} in struct {name}")]
    NoMember { name: String, member: String },
    #[error("member {member} of struct {name} is a bitfield")]
    Bitfield { name: String, member: String },
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset within the struct.
    bit_offset: u32,
    /// Bitfield size, 0 when the member is not a bitfield.
    bitfield_size: u32,
}

#[derive(Debug)]
enum Type {
    Composite { members: Vec<Member> },
    Other,
}

/// The parsed type and string sections of one BTF blob.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    composites_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let data = std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Read {
            path: VMLINUX_BTF.into(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        // Type id 0 is void.
        let mut types = vec![Type::Other];
        let mut name_offs = vec![0u32];
        let mut pos = 0;
        while pos < types_sec.len() {
            let name_off = u32_at(types_sec, pos)?;
            let info = u32_at(types_sec, pos + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let raw_offset = u32_at(types_sec, m + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (raw_offset & 0xff_ffff, raw_offset >> 24)
                        } else {
                            (raw_offset, 0)
                        };
                        members.push(Member {
                            name_off: u32_at(types_sec, m)?,
                            type_id: u32_at(types_sec, m + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    pos += vlen * 12;
                    Type::Composite { members }
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    pos += 12;
                    Type::Other
                }
                KIND_ENUM | KIND_FUNC_PROTO => {
                    pos += vlen * 8;
                    Type::Other
                }
                KIND_DATASEC | KIND_ENUM64 => {
                    pos += vlen * 12;
                    Type::Other
                }
                0..=19 => Type::Other,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
            name_offs.push(name_off);
        }

        let mut btf = Btf {
            types,
            strings,
            composites_by_name: HashMap::new(),
        };
        for (id, name_off) in name_offs.iter().enumerate() {
            if matches!(btf.types[id], Type::Composite { .. }) && *name_off != 0 {
                let name = btf.string_at(*name_off).to_owned();
                // The first definition wins (later ones are usually duplicates from modules).
                btf.composites_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string_at(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in struct (or union) `name`, looking inside anonymous members.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .composites_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.find_member(id, member, 0) {
            Some((bits, 0)) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield {
                name: name.into(),
                member: member.into(),
            }),
            None => Err(BtfError::NoMember {
                name: name.into(),
                member: member.into(),
            }),
        }
    }

    /// (bit offset, bitfield size) of `member` in composite type `id`.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members } = self.types.get(id as usize)? else {
            return None;
        };
        for m in members {
            if m.name_off != 0 {
                if self.string_at(m.name_off) == member {
                    return Some((m.bit_offset, m.bitfield_size));
                }
            } else if let Some((inner, size)) = self.find_member(m.type_id, member, depth + 1) {
                return Some((m.bit_offset + inner, size));
            }
        }
        None
    }

    /// The offsets the kernel programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let sk_protocol = match self.member_offset("sock", "sk_protocol") {
            Ok(off) => off,
            // Kernels before 5.6 pack sk_protocol in a bitfield: the programs then skip the
            // protocol check (socket type SOCK_STREAM over INET/INET6 is TCP or MPTCP).
            Err(BtfError::Bitfield { .. }) => u32::MAX,
            Err(e) => return Err(e),
        };
        Ok(KernelOffsets {
            task_struct_files: self.member_offset("task_struct", "files")?,
            task_struct_mm: self.member_offset("task_struct", "mm")?,
            task_struct_group_leader: self.member_offset("task_struct", "group_leader")?,
            task_struct_comm: self.member_offset("task_struct", "comm")?,
            files_struct_fdt: self.member_offset("files_struct", "fdt")?,
            fdtable_max_fds: self.member_offset("fdtable", "max_fds")?,
            fdtable_fd: self.member_offset("fdtable", "fd")?,
            file_f_inode: self.member_offset("file", "f_inode")?,
            file_private_data: self.member_offset("file", "private_data")?,
            inode_i_mode: self.member_offset("inode", "i_mode")?,
            socket_type: self.member_offset("socket", "type")?,
            socket_sk: self.member_offset("socket", "sk")?,
            sock_common_skc_family: self.member_offset("sock_common", "skc_family")?,
            sock_common_skc_daddr: self.member_offset("sock_common", "skc_daddr")?,
            sock_common_skc_rcv_saddr: self.member_offset("sock_common", "skc_rcv_saddr")?,
            sock_common_skc_dport: self.member_offset("sock_common", "skc_dport")?,
            sock_common_skc_num: self.member_offset("sock_common", "skc_num")?,
            sock_common_skc_v6_daddr: self.member_offset("sock_common", "skc_v6_daddr")?,
            sock_common_skc_v6_rcv_saddr: self.member_offset("sock_common", "skc_v6_rcv_saddr")?,
            sock_sk_protocol: sk_protocol,
            task_struct_thread_fsbase: match (
                self.member_offset("task_struct", "thread"),
                self.member_offset("thread_struct", "fsbase"),
            ) {
                (Ok(thread), Ok(fsbase)) => thread + fsbase,
                _ => u32::MAX,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob with one struct `outer { int a; union { int b; int c; }; int d:3; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0d\0int\0".to_vec();
        let s = |name: &str| -> u32 {
            let pos = strings
                .windows(name.len() + 2)
                .position(|w| {
                    w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0
                })
                .expect("name in table");
            (pos + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(s("int"));
        push(KIND_INT << 24);
        push(4);
        push(32);
        // 2: anonymous union { b; c; }
        push(0);
        push((KIND_UNION << 24) | 2);
        push(4);
        for n in ["b", "c"] {
            push(s(n));
            push(1);
            push(0);
        }
        // 3: struct outer { a @0; <anon> @32; d:3 @64 } with kind_flag for bitfields
        push(s("outer"));
        push((1 << 31) | (KIND_STRUCT << 24) | 3);
        push(12);
        push(s("a"));
        push(1);
        push(0);
        push(0);
        push(2);
        push(32);
        push(s("d"));
        push(1);
        push((3 << 24) | 64);

        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.push(1);
        blob.push(0);
        blob.extend_from_slice(&24u32.to_le_bytes());
        blob.extend_from_slice(&0u32.to_le_bytes());
        blob.extend_from_slice(&(types.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(types.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_direct_anonymous_and_bitfield_members() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.member_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.member_offset("outer", "c").expect("c"), 4);
        assert!(matches!(
            btf.member_offset("outer", "d"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(b"\x9f\xeb\x01\x00").is_err());
        let blob = sample();
        for cut in 0..blob.len() {
            // Any prefix must either parse (never) or fail cleanly, without panicking.
            let _ = Btf::parse(&blob[..cut]);
        }
    }

    #[test]
    fn running_kernel_has_every_offset() {
        // Every Linux this agent supports has /sys/kernel/btf/vmlinux; a machine without it
        // cannot run the agent at all, so this is a real requirement, not an environment quirk.
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        let off = btf.kernel_offsets().expect("offsets");
        assert!(off.task_struct_files > 0);
        assert_ne!(off.sock_common_skc_dport, off.sock_common_skc_num);
    }
}
