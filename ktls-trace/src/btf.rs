//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`, and a module's split
//! BTF such as `/sys/kernel/btf/tls` on top of it): just enough to find the byte offset of
//! a struct member, so the eBPF programs can read `msghdr.msg_flags` or a kernel TLS
//! socket's record sequence number on whatever kernel they run on. Rust eBPF gets no CO-RE
//! relocations (aya-rs/aya#349), so offsets are computed here and handed to the programs.
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst. Split BTF (a module's)
//! numbers its types after the base's last one and its strings after the base's string
//! section, so a split blob is parsed as an extension of the parsed base.

use std::path::Path;

/// Why a BTF lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a BTF blob (bad magic)")]
    BadMagic,
    #[error("BTF blob truncated")]
    Truncated,
    #[error("unknown BTF type kind {0}")]
    UnknownKind(u32),
    #[error("struct {0} not found in BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("enumerator {0} not found in BTF")]
    NoEnumerator(String),
}

const MAGIC: u16 = 0xeb9f;

// BTF_KIND_* values.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// What a struct member is, as far as reading it from eBPF matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    Pointer,
    Array,
    Other,
}

/// Indexed BTF: the raw type records and strings, and where each type id's record starts.
///
/// Records are decoded only when a lookup reaches them. Parsing vmlinux's BTF (some
/// 100,000 types, half a million members) into owned names cost 1.7-2 s of every command's
/// start in an emulated guest; indexing it is one pass over the record headers, and the few
/// lookups a command makes (a dozen struct members, two enumerators, the hooked functions'
/// prototypes) scan names in place.
#[derive(Debug, Clone)]
pub struct Btf {
    /// The type sections, the base's first for split BTF.
    types: Vec<u8>,
    /// Where type id `i`'s record starts in `types` (id 0, void, has none: `u32::MAX`).
    offs: Vec<u32>,
    /// The string sections, the base's first (a split blob's offsets continue after it).
    strings: Vec<u8>,
    /// Ids of the named structs, of the enums (32- and 64-bit) and of the functions, in
    /// id order: the kinds lookups search by name, so that a lookup reads a few thousand
    /// names instead of every record (a dozen lookups over all of vmlinux's records took
    /// 0.8 s in an emulated guest).
    structs: Vec<u32>,
    enums: Vec<u32>,
    funcs: Vec<u32>,
}

/// One decoded record header.
#[derive(Debug, Clone, Copy)]
struct Record {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Where the kind-specific data after the 12-byte header starts in `Btf::types`.
    tail: usize,
}

/// A kernel function some probe hooks: the only ones whose prototypes are asked for.
fn hooked_function(name: &str) -> bool {
    ktls_trace_common::probes::PROBES
        .iter()
        .any(|s| matches!(s.hook, ktls_trace_common::probes::Hook::Kfunc(f) if f == name))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Truncated)
}

/// Bytes of a record after its 12-byte header.
fn tail_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FUNC | KIND_FWD | KIND_FLOAT | KIND_TYPEDEF | KIND_VOLATILE
        | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        other => return Err(BtfError::UnknownKind(other)),
    })
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Reads a module's split BTF (`/sys/kernel/btf/<module>`) on top of this (vmlinux) BTF.
    pub fn with_module(&self, module: &str) -> Result<Btf, BtfError> {
        let path = Path::new("/sys/kernel/btf").join(module);
        let data = std::fs::read(&path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_with_base(&data, Some(self))
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        Self::parse_with_base(data, None)
    }

    /// Parses a blob; with `base`, as split BTF extending it (type ids and string offsets
    /// continue after the base's).
    pub fn parse_with_base(data: &[u8], base: Option<&Btf>) -> Result<Btf, BtfError> {
        let magic = data
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or(BtfError::Truncated)?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated)?;
        let own_strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated)?;
        let mut btf = match base {
            Some(b) => b.clone(),
            // Type id 0 is void.
            None => Btf {
                types: Vec::new(),
                offs: vec![u32::MAX],
                strings: Vec::new(),
                structs: Vec::new(),
                enums: Vec::new(),
                funcs: Vec::new(),
            },
        };
        let Btf {
            types,
            offs,
            strings,
            structs,
            enums,
            funcs,
        } = &mut btf;
        strings.extend_from_slice(own_strings);
        let first = types.len();
        types.extend_from_slice(types_sec);
        let mut p = 0usize;
        while p < types_sec.len() {
            let name_off = u32_at(types_sec, p)?;
            let info = u32_at(types_sec, p + 4)?;
            // The header's third word must be there too.
            u32_at(types_sec, p + 8)?;
            let kind = (info >> 24) & 0x1f;
            let len = 12 + tail_len(kind, (info & 0xffff) as usize)?;
            if p + len > types_sec.len() {
                return Err(BtfError::Truncated);
            }
            let id = offs.len() as u32;
            match kind {
                KIND_STRUCT if name_off != 0 => structs.push(id),
                KIND_ENUM | KIND_ENUM64 => enums.push(id),
                KIND_FUNC => funcs.push(id),
                _ => {}
            }
            offs.push(u32::try_from(first + p).map_err(|_| BtfError::Truncated)?);
            p += len;
        }
        Ok(btf)
    }

    /// The record of type `id` (None: void or out of range).
    fn record(&self, id: u32) -> Option<Record> {
        let at = *self.offs.get(id as usize)? as usize;
        if at == u32::MAX as usize {
            return None;
        }
        let info = u32_at(&self.types, at + 4).ok()?;
        Some(Record {
            name_off: u32_at(&self.types, at).ok()?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(&self.types, at + 8).ok()?,
            tail: at + 12,
        })
    }

    /// The name at a string offset, as bytes (empty when out of range).
    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The first of `ids` (lowest id, so vmlinux's before a module's) named `name`.
    fn find(&self, ids: &[u32], name: &str) -> Option<(u32, Record)> {
        ids.iter().find_map(|&id| {
            let r = self.record(id)?;
            (self.name(r.name_off) == name.as_bytes()).then_some((id, r))
        })
    }

    /// How many parameters the kernel function `name` takes (None: no BTF for it, or it
    /// is not one the probes hook). A BPF trampoline reads the arguments from an array
    /// whose length is this, so its programs are used only when it matches.
    pub fn function_params(&self, name: &str) -> Option<usize> {
        if !hooked_function(name) {
            return None;
        }
        let (_, func) = self.find(&self.funcs, name)?;
        let proto = self.record(func.size_or_type)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.vlen)
    }

    /// Follows typedef/const/volatile chains to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Record> {
        for _ in 0..32 {
            let r = self.record(id)?;
            match r.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = r.size_or_type
                }
                _ => return Some(r),
            }
        }
        None
    }

    /// The members of a struct or union record: (name offset, type id, bit offset).
    fn members(&self, r: Record) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        (0..r.vlen).filter_map(move |i| {
            let at = r.tail + i * 12;
            let off = u32_at(&self.types, at + 8).ok()?;
            Some((
                u32_at(&self.types, at).ok()?,
                u32_at(&self.types, at + 4).ok()?,
                // With kind_flag the top 8 bits hold a bitfield size.
                if r.kind_flag { off & 0x00ff_ffff } else { off },
            ))
        })
    }

    /// Bit offset and type of `member` inside the composite `id`, looking into anonymous
    /// struct/union members as C does.
    fn find_bits(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let r = self.resolve(id)?;
        if !matches!(r.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        if let Some((_, ty, bits)) = self
            .members(r)
            .find(|(name, ..)| self.name(*name) == member.as_bytes())
        {
            return Some((bits, ty));
        }
        self.members(r)
            .filter(|(name, ..)| self.name(*name).is_empty())
            .find_map(|(_, ty, bits)| {
                let (inner, t) = self.find_bits(ty, member, depth + 1)?;
                Some((bits + inner, t))
            })
    }

    /// Byte offset and kind of a member reached through nested members, e.g.
    /// `member_path("tls_context", &["tx", "rec_seq"])`.
    pub fn member_path(&self, strukt: &str, path: &[&str]) -> Result<(u32, MemberKind), BtfError> {
        let (mut id, _) = self
            .find(&self.structs, strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let mut bits = 0;
        for member in path {
            let (b, ty) = self
                .find_bits(id, member, 0)
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_string(),
                    member: path.join("."),
                })?;
            bits += b;
            id = ty;
        }
        let kind = match self.resolve(id).map(|r| r.kind) {
            Some(KIND_PTR) => MemberKind::Pointer,
            Some(KIND_ARRAY) => MemberKind::Array,
            _ => MemberKind::Other,
        };
        Ok((bits / 8, kind))
    }

    /// Value of a C enumerator, e.g. `ITER_UBUF` (C enumerator names are global; the
    /// first found wins).
    pub fn enum_value(&self, name: &str) -> Result<i64, BtfError> {
        self.enums
            .iter()
            .filter_map(|&id| self.record(id))
            .find_map(|r| match r.kind {
                KIND_ENUM => (0..r.vlen).find_map(|i| {
                    let at = r.tail + i * 8;
                    if self.name(u32_at(&self.types, at).ok()?) != name.as_bytes() {
                        return None;
                    }
                    let val = u32_at(&self.types, at + 4).ok()?;
                    // kind_flag set: signed values.
                    Some(if r.kind_flag {
                        val as i32 as i64
                    } else {
                        val as i64
                    })
                }),
                KIND_ENUM64 => (0..r.vlen).find_map(|i| {
                    let at = r.tail + i * 12;
                    if self.name(u32_at(&self.types, at).ok()?) != name.as_bytes() {
                        return None;
                    }
                    let lo = u32_at(&self.types, at + 4).ok()? as u64;
                    let hi = u32_at(&self.types, at + 8).ok()? as u64;
                    Some(((hi << 32) | lo) as i64)
                }),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoEnumerator(name.to_string()))
    }

    /// Byte offset of `member` in `struct strukt`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        self.member_path(strukt, &[member]).map(|(off, _)| off)
    }

    /// Is there a `struct name`?
    pub fn has_struct(&self, name: &str) -> bool {
        self.find(&self.structs, name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `int`, `struct inner { int a; int b; }`, and
    /// `struct outer { int x; union { struct inner in; int y; }; int z; }` with the
    /// anonymous union at byte 8 and `z` at byte 16, plus a typedef of outer.
    fn blob() -> Vec<u8> {
        let strings =
            b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0z\0outer_t\0iter_type\0ITER_A\0ITER_B\0"
                .to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap_or(0)
        };
        // One BTF record per line: a type's header (name, info, size or type), then its
        // members (name, type, bit offset) or enumerators (name, value).
        let t = words(&[
            // 1: int
            &[s("int"), KIND_INT << 24, 4, 32],
            // 2: struct inner { a @0, b @32 bits }
            &[s("inner"), (KIND_STRUCT << 24) | 2, 8],
            &[s("a"), 1, 0, s("b"), 1, 32],
            // 3: anonymous union { struct inner in; int y; }
            &[0, (KIND_UNION << 24) | 2, 8],
            &[s("in"), 2, 0, s("y"), 1, 0],
            // 4: struct outer { x @0, <anon union> @64 bits, z @128 bits }
            &[s("outer"), (KIND_STRUCT << 24) | 3, 20],
            &[s("x"), 1, 0, 0, 3, 64, s("z"), 1, 128],
            // 5: typedef outer_t -> 4
            &[s("outer_t"), KIND_TYPEDEF << 24, 4],
            // 6: enum iter_type { ITER_A = 0, ITER_B = 6 }
            &[s("iter_type"), (KIND_ENUM << 24) | 2, 4],
            &[s("ITER_A"), 0, s("ITER_B"), 6],
            // 7: a struct after the enum still parses
            &[s("z"), (KIND_STRUCT << 24) | 1, 4],
            &[s("x"), 1, 0],
        ]);
        wrap(&t, &strings)
    }

    /// `int tcp_sendmsg(int, int, int)` and an unhooked `int other(int)`: the hooked
    /// function's parameter count is kept, the other function is not.
    #[test]
    fn counts_the_parameters_of_hooked_functions() {
        let strings = b"\0int\0tcp_sendmsg\0other\0".to_vec();
        let t = words(&[
            // 1: int
            &[1, KIND_INT << 24, 4, 32],
            // 2: proto (int, int, int) -> int
            &[0, (KIND_FUNC_PROTO << 24) | 3, 1],
            &[0, 1, 0, 1, 0, 1],
            // 3: func tcp_sendmsg -> 2
            &[5, KIND_FUNC << 24, 2],
            // 4: proto (int) -> int
            &[0, (KIND_FUNC_PROTO << 24) | 1, 1],
            &[0, 1],
            // 5: func other -> 4
            &[17, KIND_FUNC << 24, 4],
        ]);
        let btf = Btf::parse(&wrap(&t, &strings)).unwrap();
        assert_eq!(btf.function_params("tcp_sendmsg"), Some(3));
        assert_eq!(btf.function_params("other"), None, "not hooked: not kept");
        assert_eq!(btf.function_params("do_sendfile"), None, "not in this BTF");
    }

    /// The little-endian bytes of BTF type records given as 32-bit words.
    fn words(records: &[&[u32]]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| r.iter())
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// A BTF blob of a type and a string section, after the 24-byte header.
    fn wrap(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        for v in [24, 0, types.len(), types.len(), strings.len()] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "z").unwrap(), 16);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
        assert_eq!(btf.enum_value("ITER_B").unwrap(), 6);
        assert_eq!(btf.enum_value("ITER_A").unwrap(), 0);
        assert!(matches!(
            btf.enum_value("ITER_C"),
            Err(BtfError::NoEnumerator(_))
        ));
        assert_eq!(btf.member_offset("z", "x").unwrap(), 0);
        // `a` sits in `in`, a named member of the anonymous union: not reachable by
        // name from `outer` in C either.
        assert!(matches!(
            btf.member_offset("outer", "a"),
            Err(BtfError::NoMember { .. })
        ));
    }

    /// A module's split BTF: type ids and string offsets continue after the base's.
    #[test]
    fn split_btf_extends_the_base() {
        let base_blob = blob();
        let base = Btf::parse(&base_blob).unwrap();
        let base_strings = base.strings.len() as u32;
        let base_types = base.offs.len() as u32; // 8: void + 7 types
        let strings = b"\0modstruct\0ptr_member\0".to_vec();
        let own = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            let at = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32;
            base_strings + at + 1
        };
        let base_str = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            base.strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let t = words(&[
            // base_types: struct modstruct { struct outer o @0 (base type 4); int *ptr_member @192 }
            &[own("modstruct"), (KIND_STRUCT << 24) | 2, 32],
            &[base_str("x"), 4, 0, own("ptr_member"), base_types + 1, 192],
            // base_types + 1: int * (base type 1)
            &[0, KIND_PTR << 24, 1],
        ]);
        let m = Btf::parse_with_base(&wrap(&t, &strings), Some(&base)).unwrap();
        // A member named with a base string, whose type is a base struct: nested lookup.
        assert_eq!(
            m.member_path("modstruct", &["x", "z"]).unwrap(),
            (16, MemberKind::Other)
        );
        assert_eq!(
            m.member_path("modstruct", &["ptr_member"]).unwrap(),
            (24, MemberKind::Pointer)
        );
        // The base's own types are still there.
        assert_eq!(m.member_offset("outer", "z").unwrap(), 16);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(Btf::parse(&[0, 1, 2]), Err(BtfError::BadMagic)));
        let mut b = blob();
        b.truncate(40);
        assert!(matches!(Btf::parse(&b), Err(BtfError::Truncated)));
        assert!(matches!(
            Btf::parse(&blob()).unwrap().member_offset("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    /// The running kernel's BTF (every machine and guest this project runs on has one):
    /// plain members, members inside anonymous unions, nested paths and enumerators are
    /// found (attach/offsets.rs checks every member the programs read).
    #[test]
    fn kernel_btf_has_the_members_we_read() {
        let btf = Btf::from_sys_fs().unwrap();
        let flags = btf.member_offset("msghdr", "msg_flags").unwrap();
        let sk = btf.member_offset("socket", "sk").unwrap();
        assert!(flags > 0 && flags < 256, "msg_flags at {flags}");
        assert!(sk > 0 && sk < 128, "socket.sk at {sk}");
        // skc_daddr lives in an anonymous union/struct of sock_common.
        let daddr = btf.member_offset("sock_common", "skc_daddr").unwrap();
        let (nested, kind) = btf
            .member_path("sock", &["__sk_common", "skc_daddr"])
            .unwrap();
        assert_eq!(nested, daddr, "sock starts with its sock_common");
        assert_eq!(kind, MemberKind::Other);
        let (_, kind) = btf.member_path("task_struct", &["group_leader"]).unwrap();
        assert_eq!(kind, MemberKind::Pointer);
        let (_, kind) = btf.member_path("task_struct", &["comm"]).unwrap();
        assert_eq!(kind, MemberKind::Array);
        assert!(btf.enum_value("ITER_IOVEC").is_ok());
        assert!(btf.has_struct("inet_connection_sock"));
    }
}
