//! Unwinding a user stack from the registers and the copy of its top that the kernel sent:
//! call-frame information (`.eh_frame`/`.debug_frame`) where the module has it, the frame
//! pointer chain where it does not. Pure: the caller answers "how to unwind at this address".

use super::module::{UnwindRule, RBP, RSP};

/// The copied top of a stack: `bytes` start at user address `base` (the thread's rsp).
pub struct StackMemory<'a> {
    pub base: u64,
    pub bytes: &'a [u8],
}

impl StackMemory<'_> {
    /// The 8 bytes at `addr`, when they were copied.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let b = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// How to leave the frame at one address.
pub enum Step {
    /// The module's CFI says how.
    Cfi(UnwindRule),
    /// The address is in a known module without CFI for it: follow rbp.
    FramePointer,
    /// The address is in no known module: the walk ends.
    Unknown,
}

/// User registers at the syscall.
#[derive(Clone, Copy, Debug)]
pub struct Regs {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
}

/// Return addresses of the stack, innermost first (the first is `regs.rip` itself).
///
/// `step(addr)` is asked about `rip` for the first frame and about `return address - 1` (the
/// call instruction) for the others.
pub fn unwind(
    regs: Regs,
    mem: &StackMemory<'_>,
    max_frames: usize,
    mut step: impl FnMut(u64) -> Step,
) -> Vec<u64> {
    let mut pcs = vec![regs.rip];
    let (mut pc, mut rsp, mut rbp) = (regs.rip, regs.rsp, regs.rbp);
    while pcs.len() < max_frames {
        let probe = if pcs.len() == 1 {
            pc
        } else {
            pc.saturating_sub(1)
        };
        let (ra, new_rsp, new_rbp) = match step(probe) {
            Step::Cfi(rule) => {
                let base = match rule.cfa_register {
                    RSP => rsp,
                    RBP => rbp,
                    _ => break,
                };
                let cfa = base.wrapping_add_signed(rule.cfa_offset);
                let Some(ra) = rule
                    .ra_offset
                    .and_then(|o| mem.read_u64(cfa.wrapping_add_signed(o)))
                else {
                    break;
                };
                let new_rbp = match rule.rbp_offset {
                    Some(o) => match mem.read_u64(cfa.wrapping_add_signed(o)) {
                        Some(v) => v,
                        None => break,
                    },
                    None => rbp,
                };
                (ra, cfa, new_rbp)
            }
            Step::FramePointer => {
                if rbp < rsp {
                    break;
                }
                let (Some(ra), Some(saved)) =
                    (mem.read_u64(rbp.wrapping_add(8)), mem.read_u64(rbp))
                else {
                    break;
                };
                (ra, rbp.wrapping_add(16), saved)
            }
            Step::Unknown => break,
        };
        // The stack grows down: each caller's frame is above its callee's.
        if ra == 0 || new_rsp <= rsp {
            break;
        }
        pcs.push(ra);
        (pc, rsp, rbp) = (ra, new_rsp, new_rbp);
    }
    pcs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn cfi_then_frame_pointer_then_unknown() {
        // rsp = 0x1000. Frame 0 (pc 0x10): CFA = rsp+16, RA at CFA-8 → 0x20.
        // Frame 1 (pc 0x20): rbp chain; rbp = 0x1010 → [0x1010] = 0x1030 saved rbp, [0x1018] = 0x30.
        // Frame 2 (pc 0x30): unknown module: stop.
        let words = [0, 0x20, 0x1030, 0x30, 0, 0, 0, 0];
        let bytes = stack(&words);
        let mem = StackMemory {
            base: 0x1000,
            bytes: &bytes,
        };
        let regs = Regs {
            rip: 0x10,
            rsp: 0x1000,
            rbp: 0x1010,
        };
        let pcs = unwind(regs, &mem, 16, |pc| match pc {
            0x10 => Step::Cfi(UnwindRule {
                cfa_register: RSP,
                cfa_offset: 16,
                ra_offset: Some(-8),
                rbp_offset: None,
            }),
            0x1f => Step::FramePointer,
            _ => Step::Unknown,
        });
        assert_eq!(pcs, vec![0x10, 0x20, 0x30]);
    }

    #[test]
    fn stops_outside_the_copy_and_on_loops() {
        let bytes = stack(&[0x10, 0x10]);
        let mem = StackMemory {
            base: 0x1000,
            bytes: &bytes,
        };
        let regs = Regs {
            rip: 0x10,
            rsp: 0x1000,
            rbp: 0,
        };
        // RA at CFA-8 with CFA = rsp + 0: the caller's frame would not be above: stop.
        let pcs = unwind(regs, &mem, 16, |_| {
            Step::Cfi(UnwindRule {
                cfa_register: RSP,
                cfa_offset: 0,
                ra_offset: Some(0),
                rbp_offset: None,
            })
        });
        assert_eq!(pcs, vec![0x10]);
        assert_eq!(mem.read_u64(0x1010), None);
        assert_eq!(mem.read_u64(0xfff), None);
        assert_eq!(mem.read_u64(0x1008), Some(0x10));
    }
}
