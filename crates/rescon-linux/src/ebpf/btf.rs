//! BPF Type Format: what the programs need from the kernel's own type information, and the
//! smallest type blob a map can require.
//!
//! Tracing programs are loaded for one kernel function or BTF tracepoint, named by its type
//! id, and read the fields of the structures they are handed at offsets that differ between
//! kernels. [`Btf`] parses `/sys/kernel/btf/vmlinux` (about 5 MB, 100k+ types) once and
//! answers those questions: the id of a function or of a tracepoint's type, and the byte
//! offset of a field, looking through anonymous structs and unions as C does. This is the part of CO-RE our
//! hand-assembled programs need, done at load time instead of by a relocating loader.
//!
//! [`int_blob`] writes a type blob with an `int` and an 8-byte unsigned integer: socket
//! storage maps must be created with BTF ids for their key and value.
//!
//! # References
//! - `Documentation/bpf/btf.rst`; `include/uapi/linux/btf.h`.

use std::fmt;

/// Where the running kernel publishes its types.
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// Kinds (`BTF_KIND_*`).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// Why type information could not be read or lacks what we need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BtfError(pub String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(s: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(s.into()))
}

/// One type: where its record starts in the type section.
#[derive(Clone, Copy, Debug)]
struct Ty {
    off: usize,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    name_off: u32,
    /// `size` or `type`, by kind.
    size_type: u32,
}

/// Parsed type information. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Btf {
    types_sec: Vec<u8>,
    strings: Vec<u8>,
    /// Type `i` is `types[i - 1]` (id 0 is `void`).
    types: Vec<Ty>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| BtfError(format!("truncated at byte {off}")))
}

impl Btf {
    /// Reads the running kernel's types.
    pub(crate) fn vmlinux() -> Result<Btf, BtfError> {
        let bytes = std::fs::read(VMLINUX).map_err(|e| {
            BtfError(format!(
                "reading {VMLINUX}: {e} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
            ))
        })?;
        Btf::parse(&bytes)
    }

    /// Parses a type blob (little-endian, as on every target we build for).
    pub(crate) fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 {
            return err("shorter than a BTF header");
        }
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return err(format!(
                "bad magic {magic:#x} (big-endian BTF is not supported)"
            ));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let sec = |off: usize, len: usize, what: &str| {
            b.get(hdr_len + off..hdr_len + off + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| BtfError(format!("{what} section out of bounds")))
        };
        let types_sec = sec(type_off, type_len, "type")?;
        let strings = sec(str_off, str_len, "string")?;
        let mut types = Vec::new();
        let mut off = 0;
        while off < types_sec.len() {
            let name_off = u32_at(&types_sec, off)?;
            let info = u32_at(&types_sec, off + 4)?;
            let size_type = u32_at(&types_sec, off + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen as usize,
                ENUM | FUNC_PROTO => 8 * vlen as usize,
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
                k => return err(format!("type {}: unknown kind {k}", types.len() + 1)),
            };
            types.push(Ty {
                off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                name_off,
                size_type,
            });
            off += 12 + extra;
        }
        if off != types_sec.len() {
            return err("the last type runs past the type section");
        }
        Ok(Btf {
            types_sec,
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        &s[..end]
    }

    fn ty(&self, id: u32) -> Option<&Ty> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// The first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.name(t.name_off) == name.as_bytes())
            .map(|i| i as u32 + 1)
    }

    /// The id of BTF tracepoint `name`'s type (`typedef btf_trace_<name>`), for attaching a
    /// `tp_btf` program to it.
    pub(crate) fn tracepoint(&self, name: &str) -> Result<u32, BtfError> {
        self.find(TYPEDEF, &format!("btf_trace_{name}"))
            .ok_or_else(|| BtfError(format!("tracepoint {name} is not in the kernel's BTF")))
    }

    /// The byte offset of field `field` in `struct name`, looking through anonymous members;
    /// bit fields are refused (programs load whole bytes).
    pub(crate) fn field(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let id = self
            .find(STRUCT, name)
            .ok_or_else(|| BtfError(format!("struct {name} is not in the kernel's BTF")))?;
        match self.member_bits(id, field)? {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => err(format!("{name}.{field} is a bit field")),
            None => err(format!("struct {name} has no field {field} in this kernel")),
        }
    }

    /// The bit offset of `field` within struct or union `id`, searching anonymous members.
    fn member_bits(&self, id: u32, field: &str) -> Result<Option<u32>, BtfError> {
        let t = *self
            .ty(id)
            .ok_or_else(|| BtfError(format!("no type {id}")))?;
        if !matches!(t.kind, STRUCT | UNION) {
            return Ok(None);
        }
        for i in 0..t.vlen as usize {
            let m = t.off + 12 + 12 * i;
            let name_off = u32_at(&self.types_sec, m)?;
            let mty = u32_at(&self.types_sec, m + 4)?;
            let raw = u32_at(&self.types_sec, m + 8)?;
            let bits = if t.kind_flag { raw & 0x00ff_ffff } else { raw };
            if t.kind_flag && raw >> 24 != 0 && self.name(name_off) == field.as_bytes() {
                return err(format!("field {field} is a bit field"));
            }
            if name_off == 0 {
                if let Some(inner) = self.member_bits(self.strip(mty), field)? {
                    return Ok(Some(bits + inner));
                }
            } else if self.name(name_off) == field.as_bytes() {
                return Ok(Some(bits));
            }
        }
        Ok(None)
    }

    /// `id` without typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t) if matches!(t.kind, TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG) => {
                    id = t.size_type;
                }
                _ => break,
            }
        }
        id
    }

    /// How many types there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.types.len()
    }
}

/// A type blob with `[1] int` (4 bytes, signed) and `[2] u64` (8 bytes): key and value types
/// of a socket storage map.
pub(crate) fn int_blob() -> Vec<u8> {
    let strings = b"\0int\0u64\0";
    let mut types = Vec::new();
    // BTF_KIND_INT records: name, info (kind << 24), size, then encoding (signed << 24) | bits.
    for (name, size, signed) in [(1u32, 4u32, true), (5, 8, false)] {
        types.extend_from_slice(&name.to_le_bytes());
        types.extend_from_slice(&(INT << 24).to_le_bytes());
        types.extend_from_slice(&size.to_le_bytes());
        let enc = (u32::from(signed) << 24) | (size * 8);
        types.extend_from_slice(&enc.to_le_bytes());
    }
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.push(1); // version
    b.push(0); // flags
    b.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
    b.extend_from_slice(&0u32.to_le_bytes()); // type_off
    b.extend_from_slice(&(types.len() as u32).to_le_bytes());
    b.extend_from_slice(&(types.len() as u32).to_le_bytes()); // str_off
    b.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    b.extend_from_slice(&types);
    b.extend_from_slice(strings);
    b
}

/// Ids of [`int_blob`]'s types.
pub(crate) const INT_ID: u32 = 1;
pub(crate) const U64_ID: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a blob from raw type records and a string table.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let t: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    /// `struct sk_buff { int a; union { struct { int x; int len; }; long y; }; int flags:3; }`
    /// and `int f(void)`, as the kernel's BTF encodes them.
    fn fixture() -> Vec<u8> {
        // Strings: 0 "", 1 "int", 5 "sk_buff", 13 "a", 15 "len", 19 "x", 21 "y", 23 "f",
        // 25 "flags", 31 "btf_trace_f".
        let s = b"\0int\0sk_buff\0a\0len\0x\0y\0f\0flags\0btf_trace_f\0";
        let info = |kind: u32, vlen: u32, kf: bool| (u32::from(kf) << 31) | (kind << 24) | vlen;
        #[rustfmt::skip]
        let types = [
            // [1] int
            1, info(INT, 0, false), 4, (1 << 24) | 32,
            // [2] struct { int x; int len; } (anonymous)
            0, info(STRUCT, 2, false), 8, 19, 1, 0, 15, 1, 32,
            // [3] union { [2]; long y; } (anonymous)
            0, info(UNION, 2, false), 8, 0, 2, 0, 21, 1, 0,
            // [4] struct sk_buff { int a; [3] at 64; int flags:3 at 128 } (kind_flag: bitfields)
            5, info(STRUCT, 3, true), 24, 13, 1, 0, 0, 3, 64, 25, 1, (3 << 24) | 128,
            // [5] func proto int (void)
            0, info(FUNC_PROTO, 0, false), 1,
            // [6] func f
            23, info(FUNC, 0, false), 5,
            // [7] typedef btf_trace_f: the type of a tracepoint's probe (a pointer, here [5])
            31, info(TYPEDEF, 0, false), 5,
        ];
        blob(&types, s)
    }

    #[test]
    fn finds_tracepoints_and_fields_through_anonymous_members() {
        let btf = Btf::parse(&fixture()).unwrap();
        assert_eq!(btf.len(), 7);
        assert_eq!(btf.tracepoint("f").unwrap(), 7);
        assert!(
            btf.tracepoint("g")
                .unwrap_err()
                .0
                .contains("not in the kernel's BTF")
        );
        assert_eq!(btf.field("sk_buff", "a").unwrap(), 0);
        // 64 bits to the union, 32 more inside the anonymous struct.
        assert_eq!(btf.field("sk_buff", "len").unwrap(), 12);
        assert_eq!(btf.field("sk_buff", "y").unwrap(), 8);
        assert!(
            btf.field("sk_buff", "flags")
                .unwrap_err()
                .0
                .contains("bit field")
        );
        assert!(
            btf.field("sk_buff", "nope")
                .unwrap_err()
                .0
                .contains("no field nope")
        );
        assert!(btf.field("sock", "a").is_err());
    }

    #[test]
    fn refuses_damaged_blobs() {
        let mut b = fixture();
        b[0] = 0;
        assert!(Btf::parse(&b).unwrap_err().0.contains("magic"));
        let b = fixture();
        assert!(
            Btf::parse(&b[..b.len() - 30]).is_err(),
            "sections out of bounds"
        );
        // An unknown kind.
        let bad = blob(&[0, 31 << 24, 0], b"\0");
        assert!(Btf::parse(&bad).unwrap_err().0.contains("unknown kind"));
    }

    #[test]
    fn the_int_blob_parses_back() {
        let btf = Btf::parse(&int_blob()).unwrap();
        assert_eq!(btf.len(), 2);
        assert_eq!(btf.find(INT, "int"), Some(INT_ID));
        assert_eq!(btf.find(INT, "u64"), Some(U64_ID));
    }

    #[test]
    fn reads_this_kernel_when_it_has_btf() {
        // A pure test cannot require a kernel; the kernel tests load programs for real.
        let Ok(btf) = Btf::vmlinux() else { return };
        assert!(btf.len() > 1000);
        assert!(btf.field("sk_buff", "len").is_ok());
        assert!(btf.tracepoint("tcp_probe").is_ok());
    }
}
