//! A small assembler for extended BPF: instructions, registers, labels.
//!
//! Programs are written as Rust calls that read like the assembly they emit (`a.ldx(W, R2,
//! R1, 0)` is `r2 = *(u32 *)(r1 + 0)`); jumps name [`Label`]s, resolved by
//! [`Asm::finish`]. Code shared by several programs is a Rust function that emits it.
//!
//! ```text
//! let mut a = Asm::new();
//! let out = a.label();
//! a.jmp(Eq, R2, Imm(0), out);   // if r2 == 0 goto out
//! a.mov_imm(R0, 1);
//! a.place(out);
//! a.exit();
//! ```
//!
//! # References
//! - `Documentation/bpf/standardization/instruction-set.rst`; `include/uapi/linux/bpf.h`.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub(crate) const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src.0 << 4) | dst.0,
            off,
            imm,
        }
    }

    #[cfg(test)]
    pub(crate) fn dst(self) -> u8 {
        self.regs & 0x0f
    }

    #[cfg(test)]
    pub(crate) fn src(self) -> u8 {
        self.regs >> 4
    }

    /// The instruction class (`BPF_CLASS`).
    #[cfg(test)]
    pub(crate) fn class(self) -> u8 {
        self.code & 0x07
    }

    /// Whether this is a conditional or unconditional jump with an offset (not a call or
    /// an exit).
    #[cfg(test)]
    pub(crate) fn is_jump(self) -> bool {
        matches!(self.class(), JMP | JMP32) && !matches!(self.code & 0xf0, CALL | EXIT)
    }
}

/// A register. `R10` is the read-only frame pointer; `R1`-`R5` carry a call's arguments and
/// are clobbered by it; `R6`-`R9` survive calls; `R0` holds a call's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reg(u8);

pub(crate) const R0: Reg = Reg(0);
pub(crate) const R1: Reg = Reg(1);
pub(crate) const R2: Reg = Reg(2);
pub(crate) const R3: Reg = Reg(3);
pub(crate) const R4: Reg = Reg(4);
pub(crate) const R5: Reg = Reg(5);
pub(crate) const R6: Reg = Reg(6);
pub(crate) const R7: Reg = Reg(7);
pub(crate) const R8: Reg = Reg(8);
pub(crate) const R9: Reg = Reg(9);
pub(crate) const R10: Reg = Reg(10);

// Instruction classes, sizes, modes and operations (`linux/bpf_common.h`, `linux/bpf.h`).
pub(crate) const LD: u8 = 0x00;
pub(crate) const LDX: u8 = 0x01;
pub(crate) const ST: u8 = 0x02;
pub(crate) const STX: u8 = 0x03;
pub(crate) const ALU: u8 = 0x04;
pub(crate) const JMP: u8 = 0x05;
pub(crate) const JMP32: u8 = 0x06;
pub(crate) const ALU64: u8 = 0x07;
const IMM: u8 = 0x00;
const ABS: u8 = 0x20;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const AND: u8 = 0x50;
const RSH: u8 = 0x70;
const MOV: u8 = 0xb0;
pub(crate) const CALL: u8 = 0x80;
pub(crate) const EXIT: u8 = 0x90;
/// `BPF_PSEUDO_MAP_FD`: a 64-bit immediate load whose value is a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// The width of a load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Size {
    /// 8 bits.
    B,
    /// 16 bits.
    H,
    /// 32 bits.
    W,
    /// 64 bits.
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

/// A jump's condition (unsigned comparisons, and bit test; add the others as programs need
/// them: `BPF_JGE` 0x30, `BPF_JLT` 0xa0, `BPF_JLE` 0xb0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cond {
    Eq,
    Ne,
    Gt,
    /// `dst & src != 0`.
    Set,
}

impl Cond {
    fn op(self) -> u8 {
        match self {
            Cond::Eq => 0x10,
            Cond::Gt => 0x20,
            Cond::Set => 0x40,
            Cond::Ne => 0x50,
        }
    }
}

/// A jump's right-hand side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Imm(i32),
    Reg(Reg),
}

/// The kernel helpers called (`enum bpf_func_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Helper {
    MapLookupElem = 1,
    MapUpdateElem = 2,
    KtimeGetNs = 5,
    GetCurrentPidTgid = 14,
    SkbLoadBytesRelative = 68,
    SkStorageGet = 107,
}

/// A jump target, placed once with [`Asm::place`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// Emits a program; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub(crate) fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, i: Insn) -> &mut Self {
        self.insns.push(i);
        self
    }

    /// A new label, not yet placed.
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub(crate) fn place(&mut self, l: Label) -> &mut Self {
        assert!(self.labels[l.0].is_none(), "label placed twice");
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    /// `dst = src` (64 bits).
    pub(crate) fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(ALU64 | MOV | X, dst, src, 0, 0))
    }

    /// `dst = imm` (sign-extended to 64 bits).
    pub(crate) fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(ALU64 | MOV | K, dst, R0, 0, imm))
    }

    /// `dst += imm` (64 bits).
    pub(crate) fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(ALU64 | ADD | K, dst, R0, 0, imm))
    }

    /// `dst += src` (64 bits).
    pub(crate) fn add(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(ALU64 | ADD | X, dst, src, 0, 0))
    }

    /// `dst -= src` (64 bits).
    pub(crate) fn sub(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(ALU64 | SUB | X, dst, src, 0, 0))
    }

    /// `dst = (u32)dst & imm` (32 bits: the immediate is not sign-extended into the top half,
    /// which is cleared).
    pub(crate) fn and32_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(ALU | AND | K, dst, R0, 0, imm))
    }

    /// `dst >>= imm` (64 bits, logical).
    pub(crate) fn rsh_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(ALU64 | RSH | K, dst, R0, 0, imm))
    }

    /// `dst = *(size *)(src + off)`, zero-extended.
    pub(crate) fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(Insn::new(LDX | MEM | size.bits(), dst, src, off, 0))
    }

    /// `*(size *)(dst + off) = src`.
    pub(crate) fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::new(STX | MEM | size.bits(), dst, src, off, 0))
    }

    /// `*(size *)(dst + off) = imm`.
    pub(crate) fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(Insn::new(ST | MEM | size.bits(), dst, R0, off, imm))
    }

    /// `lock *(size *)(dst + off) += src` (`W` or `DW`).
    pub(crate) fn atomic_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        assert!(
            matches!(size, Size::W | Size::DW),
            "atomics are 32 or 64 bits"
        );
        self.push(Insn::new(STX | ATOMIC | size.bits(), dst, src, off, 0))
    }

    /// `dst = map` (the map's address, from its descriptor at load time).
    pub(crate) fn ld_map(&mut self, dst: Reg, map: BorrowedFd<'_>) -> &mut Self {
        self.push(Insn::new(
            LD | IMM | Size::DW.bits(),
            dst,
            Reg(PSEUDO_MAP_FD),
            0,
            map.as_raw_fd(),
        ));
        self.push(Insn::new(0, R0, R0, 0, 0))
    }

    /// `r0 = ntoh(*(size *)(skb->data + off))` (`BPF_LD | BPF_ABS`: socket filters only,
    /// with the skb in `r6`; a load beyond the packet ends the program with 0).
    pub(crate) fn ld_abs(&mut self, size: Size, off: i32) -> &mut Self {
        self.push(Insn::new(LD | ABS | size.bits(), R0, R0, 0, off))
    }

    /// `r0 = helper(r1, ..., r5)`.
    pub(crate) fn call(&mut self, h: Helper) -> &mut Self {
        self.push(Insn::new(JMP | CALL, R0, R0, 0, h as i32))
    }

    /// `return r0`.
    pub(crate) fn exit(&mut self) -> &mut Self {
        self.push(Insn::new(JMP | EXIT, R0, R0, 0, 0))
    }

    /// `if dst <cond> src goto to` (64-bit comparison).
    pub(crate) fn jmp(&mut self, c: Cond, dst: Reg, src: Src, to: Label) -> &mut Self {
        self.jump(JMP, c, dst, src, to)
    }

    /// `if (u32)dst <cond> (u32)src goto to` (32-bit comparison: an immediate is compared
    /// with the low half, not sign-extended).
    pub(crate) fn jmp32(&mut self, c: Cond, dst: Reg, src: Src, to: Label) -> &mut Self {
        self.jump(JMP32, c, dst, src, to)
    }

    fn jump(&mut self, class: u8, c: Cond, dst: Reg, src: Src, to: Label) -> &mut Self {
        let i = match src {
            Src::Imm(k) => Insn::new(class | c.op() | K, dst, R0, 0, k),
            Src::Reg(r) => Insn::new(class | c.op() | X, dst, r, 0, 0),
        };
        self.fixups.push((self.insns.len(), to));
        self.push(i)
    }

    /// `goto to`.
    pub(crate) fn ja(&mut self, to: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), to));
        self.push(Insn::new(JMP, R0, R0, 0, 0))
    }

    /// The program, with every jump resolved. Panics on a label used but never placed, or a
    /// jump beyond 32k instructions: both are bugs of the program's author.
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for &(at, to) in &self.fixups {
            let target = self.labels[to.0].expect("jump to a label never placed");
            let off = target as isize - at as isize - 1;
            self.insns[at].off = i16::try_from(off).expect("jump within 32k instructions");
        }
        self.insns
    }
}

#[cfg(test)]
/// Checks what the kernel's verifier would refuse first, for programs built in unit tests
/// without a kernel: every jump lands inside the program, the last instruction is an exit
/// or a jump, and wide immediate loads have their second half.
pub(crate) fn check_shape(p: &[Insn]) -> Result<(), String> {
    let last = p.last().ok_or("empty program")?;
    if !(last.code == JMP | EXIT || (last.class() == JMP && last.code & 0xf0 == 0)) {
        return Err(format!("the last instruction is not an exit: {last:?}"));
    }
    let mut i = 0;
    while i < p.len() {
        let x = p[i];
        if x.code == LD | IMM | Size::DW.bits() {
            if i + 1 >= p.len() || p[i + 1].code != 0 {
                return Err(format!(
                    "insn {i}: 64-bit immediate without its second half"
                ));
            }
            i += 2;
            continue;
        }
        if x.is_jump() {
            let to = i as isize + 1 + x.off as isize;
            if to < 0 || to as usize >= p.len() {
                return Err(format!("insn {i} jumps to {to}, outside 0..{}", p.len()));
            }
        }
        if x.dst() > 10 || x.src() > 10 {
            return Err(format!("insn {i}: no such register in {x:?}"));
        }
        i += 1;
    }
    Ok(())
}

/// A 16-bit field in network order as a little-endian 16-bit load reads it (x86-64 and
/// arm64, the targets we build for).
pub(crate) fn be16(v: u16) -> i32 {
    i32::from(u16::from_le_bytes(v.to_be_bytes()))
}

/// A 32-bit field in network order as a little-endian 32-bit load reads it.
pub(crate) fn be32(v: u32) -> i32 {
    u32::from_le_bytes(v.to_be_bytes()) as i32
}

#[cfg(test)]
mod tests {
    use super::Size::*;
    use super::*;

    #[test]
    fn labels_resolve_forward_and_backward() {
        let mut a = Asm::new();
        let top = a.label();
        let out = a.label();
        a.place(top);
        a.mov_imm(R0, 0);
        a.jmp(Cond::Eq, R1, Src::Imm(0), out);
        a.add_imm(R1, -1);
        a.ja(top);
        a.place(out);
        a.exit();
        let p = a.finish();
        assert_eq!(p[1].off, 2, "over the add and the jump back");
        assert_eq!(p[3].off, -4, "back to the top");
        check_shape(&p).unwrap();
    }

    #[test]
    fn encodings_match_the_kernel_headers() {
        let mut a = Asm::new();
        a.ldx(W, R2, R1, 4)
            .stx(DW, R10, -8, R3)
            .st_imm(W, R10, -4, 7)
            .atomic_add(DW, R0, 8, R1)
            .call(Helper::MapLookupElem)
            .mov_imm(R0, 2)
            .exit();
        let p = a.finish();
        // BPF_LDX|BPF_MEM|BPF_W = 0x61, r2 <- r1.
        assert_eq!(
            p[0],
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 4,
                imm: 0
            }
        );
        // BPF_STX|BPF_MEM|BPF_DW = 0x7b.
        assert_eq!(
            p[1],
            Insn {
                code: 0x7b,
                regs: 0x3a,
                off: -8,
                imm: 0
            }
        );
        // BPF_ST|BPF_MEM|BPF_W = 0x62.
        assert_eq!(p[2].code, 0x62);
        // BPF_STX|BPF_ATOMIC|BPF_DW = 0xdb, imm BPF_ADD.
        assert_eq!(
            p[3],
            Insn {
                code: 0xdb,
                regs: 0x10,
                off: 8,
                imm: 0
            }
        );
        assert_eq!(
            p[4],
            Insn {
                code: 0x85,
                regs: 0,
                off: 0,
                imm: 1
            }
        );
        assert_eq!(p[5].code, 0xb7);
        assert_eq!(p[6].code, 0x95);
    }

    #[test]
    fn shape_check_finds_bad_jumps_and_missing_exits() {
        let mut p = vec![
            Insn::new(JMP | Cond::Eq.op(), R1, R0, 5, 0),
            Insn::new(JMP | EXIT, R0, R0, 0, 0),
        ];
        assert!(check_shape(&p).unwrap_err().contains("jumps to 6"));
        p[0].off = 0;
        check_shape(&p).unwrap();
        p.pop();
        assert!(check_shape(&p).unwrap_err().contains("not an exit"));
    }

    #[test]
    fn network_order_constants() {
        // 0x0800 arrives as bytes 08 00, which a little-endian 16-bit load reads as 0x0008.
        assert_eq!(be16(0x0800), 0x0008);
        assert_eq!(be32(0x0a01_0203), 0x0302_010a);
    }
}
