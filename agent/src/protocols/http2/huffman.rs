//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B): decoding only.
//!
//! The code is canonical (codes of one length are consecutive, in symbol order, shorter codes
//! first), so the lengths of the 257 symbols are the whole table; decoding walks the bits,
//! comparing the code read so far with the first code of its length. Strings are header names
//! and values of at most a few KiB: a bit-at-a-time walk is enough.

/// Code length in bits of each symbol: bytes 0..=255, then EOS (256). RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code's decoding tables: per length, the first code, how many codes, and where
/// its symbols start in `SYMBOLS`.
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut count = [0u16; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut at = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        code <<= 1;
        first[len] = code;
        offset[len] = at;
        code += count[len] as u32;
        at += count[len];
        len += 1;
    }
    // Symbols sorted by (length, symbol).
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut s = 0;
    while s < 257 {
        let l = LENGTHS[s] as usize;
        symbols[next[l] as usize] = s as u16;
        next[l] += 1;
        s += 1;
    }
    Canonical { first, count, offset, symbols }
}

static CODE: Canonical = canonical();

/// Bytes that are not a valid Huffman-coded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Huffman-coded string")]
pub struct HuffmanError;

/// Decodes `bytes`, appending at most `limit` decoded bytes to `out` (the rest is decoded and
/// checked, not kept). Returns the decoded length, kept or not.
pub fn decode(bytes: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<usize, HuffmanError> {
    let mut code = 0u32;
    let mut len = 0usize;
    let mut kept = 0usize;
    for &byte in bytes {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            len += 1;
            if len > MAX_LEN {
                return Err(HuffmanError);
            }
            let first = CODE.first[len];
            if code >= first && code - first < u32::from(CODE.count[len]) {
                let at = usize::from(CODE.offset[len]) + (code - first) as usize;
                let symbol = CODE.symbols.get(at).copied().ok_or(HuffmanError)?;
                if symbol == EOS {
                    return Err(HuffmanError);
                }
                if kept < limit {
                    out.push(symbol as u8);
                }
                kept += 1;
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the EOS prefix).
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(HuffmanError);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(bytes, usize::MAX, &mut out).map(|_| out)
    }

    #[test]
    fn rfc7541_examples() {
        // C.4.1 and C.6.1.
        assert_eq!(
            dec(&[0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]).expect("decodes"),
            b"www.example.com"
        );
        assert_eq!(dec(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).expect("decodes"), b"no-cache");
        assert_eq!(dec(&[0x64, 0x02]).expect("decodes"), b"302");
        assert_eq!(dec(&[0xae, 0xc3, 0x77, 0x1a, 0x4b]).expect("decodes"), b"private");
        assert_eq!(dec(&[]).expect("decodes"), b"");
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        // '0' (00000) then three zero bits of padding.
        assert_eq!(dec(&[0x00]), Err(HuffmanError));
        // A whole byte of ones is padding longer than 7 bits.
        assert_eq!(dec(&[0xff]), Err(HuffmanError));
        // EOS itself (30 ones), padded.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError));
    }

    #[test]
    fn limit_keeps_a_prefix() {
        let mut out = Vec::new();
        decode(&[0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff], 3, &mut out)
            .expect("decodes");
        assert_eq!(out, b"www");
    }
}
