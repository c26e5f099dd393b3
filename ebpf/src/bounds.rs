//! Sizes and offsets that every verifier from Linux 5.15 on can prove bounded.
//!
//! The compiler is free to reuse one register for several values and to replace a mask or a
//! compare it can prove redundant. Older verifiers then lose the bounds the code obviously has:
//! - Linux 6.1 narrows every register that shares an id with a compared one, also on branches it
//!   cannot rule out, and a pointer plus a scalar with contradictory bounds becomes a scalar
//!   (`R1 type=scalar expected=...` at the helper call);
//! - Linux 6.12 carries only a signed bound into a register linked to one narrowed by a
//!   register-register compare (`R2 unbounded memory access`).
//!
//! So a length or an offset handed to a helper, or added to a pointer, is made here right before
//! its use: [`at_most`] hides the value's history from the compiler (`black_box`, a spill and a
//! reload), masks it (an ALU result: a fresh register with bounds of its own), then compares it
//! with an immediate. No register-register compare and no linked register can reach it.

/// `x`, which the caller knows is at most `MAX`, in a form the verifier bounds by `[0, MAX]`.
///
/// A larger `x` is clamped to `MAX` (never wraps to a smaller value): the mask covers `MAX`.
#[inline(always)]
pub fn at_most<const MAX: u64>(x: u64) -> u64 {
    let x = if x > MAX { MAX } else { x };
    let masked = core::hint::black_box(x) & mask(MAX);
    if masked > MAX {
        MAX
    } else {
        masked
    }
}

/// The smallest all-ones mask that covers `max`.
const fn mask(max: u64) -> u64 {
    if max == 0 {
        0
    } else {
        u64::MAX >> max.leading_zeros()
    }
}
