//! HPACK (RFC 7541) header block decoding that survives a table it never saw being filled.
//!
//! A [`Decoder`] holds one direction's dynamic table. When ztrace starts after a connection
//! opened, or lost bytes that may have held header blocks, the entries inserted before are
//! unknown: the table then holds only the entries inserted since, which sit at the front (HPACK
//! inserts at the front and evicts from the back), so their indexes are exact. A reference past
//! them decodes as [`Text::Unknown`] — never as another entry's text — and the decoder goes on.
//!
//! Eviction follows the table size the encoder announced (dynamic table size updates), 4096
//! bytes until one comes: entries evicted early by a wrong guess only become unknown.
//!
//! What it deliberately does not do: encode; keep long strings (names and values are cut to
//! [`MAX_TEXT`] bytes; the table's size accounting uses their full lengths).

use std::collections::VecDeque;

use super::huffman;

/// Longest name or value kept, in bytes (the rest is decoded and dropped).
pub const MAX_TEXT: usize = 512;
/// Initial dynamic table size (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest table size an update may announce that the decoder follows; a larger one is taken as
/// this (entries then only look evicted early).
const MAX_TABLE_SIZE: usize = 1 << 20;
/// Per-entry overhead in the size accounting (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A header name or value: its text, or unknown (it refers to a table entry inserted before
/// ztrace saw the connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    Known(Box<str>),
    Unknown,
}

impl Text {
    pub fn known(&self) -> Option<&str> {
        match self {
            Text::Known(s) => Some(s),
            Text::Unknown => None,
        }
    }
}

/// One decoded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Text,
    pub value: Text,
}

/// A header block that is not valid HPACK. The table may have missed insertions: the decoder
/// forgets it (later references to older entries decode as unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    IntegerOverflow,
    #[error("index 0")]
    ZeroIndex,
    #[error(transparent)]
    Huffman(#[from] huffman::HuffmanError),
    #[error("table size update after a field")]
    LateSizeUpdate,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Unknown when inserted under the name of an entry ztrace never saw.
    name: Text,
    value: Box<str>,
    /// The name's full length (`name` may be cut).
    name_len: usize,
    /// Size as the encoder counts it: full lengths plus 32.
    size: usize,
}

/// One direction's HPACK state (module docs).
#[derive(Debug)]
pub struct Decoder {
    /// Entries known to ztrace, newest first.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { table: VecDeque::new(), size: 0, max_size: DEFAULT_TABLE_SIZE }
    }
}

impl Decoder {
    /// Entries the decoder knows.
    pub fn known_entries(&self) -> usize {
        self.table.len()
    }

    /// Forgets every entry: bytes that may have held header blocks were lost.
    pub fn forget(&mut self) {
        self.table.clear();
        self.size = 0;
    }

    /// Decodes one complete header block, appending at most `keep` fields to `out`; every field
    /// is decoded so that the table stays in step. Returns how many fields referred to unknown
    /// entries. On error the table is forgotten.
    pub fn decode(&mut self, block: &[u8], keep: usize, out: &mut Vec<Field>) -> Result<usize, HpackError> {
        let result = self.decode_inner(block, keep, out);
        if result.is_err() {
            self.forget();
        }
        result
    }

    fn decode_inner(&mut self, block: &[u8], keep: usize, out: &mut Vec<Field>) -> Result<usize, HpackError> {
        let mut rest = block;
        let mut unknown = 0;
        let mut any_field = false;
        let mut kept = 0;
        while let Some(&first) = rest.first() {
            let field = if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(&mut rest, 7)?;
                self.lookup(index)?
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing.
                let (field, name_len, value_len) = self.literal(&mut rest, 6)?;
                self.insert(&field, name_len, value_len);
                field
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if any_field {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = integer(&mut rest, 5)?;
                self.resize(size.min(MAX_TABLE_SIZE as u64) as usize);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                self.literal(&mut rest, 4)?.0
            };
            any_field = true;
            if field.name == Text::Unknown || field.value == Text::Unknown {
                unknown += 1;
            }
            if kept < keep {
                out.push(field);
                kept += 1;
            }
        }
        Ok(unknown)
    }

    /// A literal field whose name index has `prefix` bits: the field, and the full lengths of
    /// its name and value (for the table's accounting).
    fn literal(&self, rest: &mut &[u8], prefix: u8) -> Result<(Field, usize, usize), HpackError> {
        let index = integer(rest, prefix)?;
        let (name, name_len) = if index == 0 {
            let (text, len) = string(rest)?;
            (Text::Known(text), len)
        } else {
            match self.lookup(index)? {
                Field { name: Text::Known(n), .. } => {
                    let len = self.full_name_len(index).unwrap_or(n.len());
                    (Text::Known(n), len)
                }
                Field { name: Text::Unknown, .. } => (Text::Unknown, 0),
            }
        };
        let (value, value_len) = string(rest)?;
        Ok((Field { name, value: Text::Known(value) }, name_len, value_len))
    }

    /// The full length of the name at `index` (kept names may be cut).
    fn full_name_len(&self, index: u64) -> Option<usize> {
        if let Some((name, _)) = static_entry(index) {
            return Some(name.len());
        }
        let e = self.table.get(usize::try_from(index).ok()?.checked_sub(STATIC.len() + 1)?)?;
        Some(e.name_len)
    }

    fn lookup(&self, index: u64) -> Result<Field, HpackError> {
        if index == 0 {
            return Err(HpackError::ZeroIndex);
        }
        if let Some((name, value)) = static_entry(index) {
            return Ok(Field { name: Text::Known(name.into()), value: Text::Known(value.into()) });
        }
        let dynamic = usize::try_from(index).ok().and_then(|i| i.checked_sub(STATIC.len() + 1));
        Ok(match dynamic.and_then(|i| self.table.get(i)) {
            Some(e) => Field { name: e.name.clone(), value: Text::Known(e.value.clone()) },
            // An entry inserted before ztrace saw the connection (or evicted early by a wrong
            // guess of the table size): unknown, never another entry.
            None => Field { name: Text::Unknown, value: Text::Unknown },
        })
    }

    fn insert(&mut self, field: &Field, name_len: usize, value_len: usize) {
        let size = name_len + value_len + ENTRY_OVERHEAD;
        if size > self.max_size {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.forget();
            return;
        }
        self.evict_to(self.max_size - size);
        // Under an unknown name its size is under-counted (the name's length is unknown): the
        // table then keeps entries the encoder evicted, which it never refers to again.
        let value = match &field.value {
            Text::Known(v) => v.clone(),
            Text::Unknown => Box::from(""),
        };
        self.table.push_front(Entry { name: field.name.clone(), value, name_len, size });
        self.size += size;
    }

    fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1).
fn integer(rest: &mut &[u8], prefix: u8) -> Result<u64, HpackError> {
    let (&first, mut tail) = rest.split_first().ok_or(HpackError::Truncated)?;
    let max = (1u64 << prefix) - 1;
    let mut value = u64::from(first) & max;
    if value == max {
        let mut shift = 0u32;
        loop {
            let (&b, t) = tail.split_first().ok_or(HpackError::Truncated)?;
            tail = t;
            if shift > 56 {
                return Err(HpackError::IntegerOverflow);
            }
            value += u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *rest = tail;
    Ok(value)
}

/// A string literal: its text (cut to [`MAX_TEXT`] bytes, not UTF-8 shown as U+FFFD) and its
/// full decoded length.
fn string(rest: &mut &[u8]) -> Result<(Box<str>, usize), HpackError> {
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(rest, 7)?;
    let len = usize::try_from(len).map_err(|_| HpackError::Truncated)?;
    let (raw, tail) = rest.split_at_checked(len).ok_or(HpackError::Truncated)?;
    *rest = tail;
    if huffman {
        let mut out = Vec::new();
        let full = huffman::decode(raw, MAX_TEXT, &mut out)?;
        Ok((String::from_utf8_lossy(&out).into(), full))
    } else {
        let kept = raw.get(..MAX_TEXT).unwrap_or(raw);
        Ok((String::from_utf8_lossy(kept).into(), len))
    }
}

fn static_entry(index: u64) -> Option<(&'static str, &'static str)> {
    STATIC.get(usize::try_from(index).ok()?.checked_sub(1)?).copied()
}

/// The static table (RFC 7541 Appendix A).
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Which static-table entries a header block's first field names, for detection: `Some(true)`
/// for a request pseudo-header (`:authority`, `:method`, `:path`, `:scheme`), `Some(false)`
/// for `:status`, `None` when the first field is not such a static reference (or the block is
/// cut short). Size updates before it are skipped.
pub fn first_field_is_request(block: &[u8]) -> Option<bool> {
    let mut rest = block;
    loop {
        let &first = rest.first()?;
        let index = if first & 0x80 != 0 {
            integer(&mut rest, 7).ok()?
        } else if first & 0xc0 == 0x40 {
            integer(&mut rest, 6).ok()?
        } else if first & 0xe0 == 0x20 {
            integer(&mut rest, 5).ok()?;
            continue;
        } else {
            integer(&mut rest, 4).ok()?
        };
        return match index {
            1..=7 => Some(true),
            8..=14 => Some(false),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(fields: &[Field]) -> Vec<(Option<&str>, Option<&str>)> {
        fields.iter().map(|f| (f.name.known(), f.value.known())).collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"), 64, &mut out).expect("C.4.1");
        assert_eq!(
            texts(&out),
            [
                (Some(":method"), Some("GET")),
                (Some(":scheme"), Some("http")),
                (Some(":path"), Some("/")),
                (Some(":authority"), Some("www.example.com")),
            ]
        );
        out.clear();
        d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf"), 64, &mut out).expect("C.4.2");
        assert_eq!(texts(&out)[3], (Some(":authority"), Some("www.example.com")));
        assert_eq!(texts(&out)[4], (Some("cache-control"), Some("no-cache")));
        out.clear();
        d.decode(&hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"), 64, &mut out).expect("C.4.3");
        assert_eq!(
            texts(&out)[1..4],
            [
                (Some(":scheme"), Some("https")),
                (Some(":path"), Some("/index.html")),
                (Some(":authority"), Some("www.example.com")),
            ]
        );
        assert_eq!(texts(&out)[4], (Some("custom-key"), Some("custom-value")));
        assert_eq!(d.known_entries(), 3);
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc7541_c5_responses_with_eviction() {
        // C.5: a 256-byte table; the third response evicts.
        let mut d = Decoder::default();
        d.resize(256);
        let mut out = Vec::new();
        let r1 = hex("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        d.decode(&r1, 64, &mut out).expect("C.5.1");
        assert_eq!(d.size, 222);
        out.clear();
        d.decode(&hex("4803 3330 37c1 c0bf"), 64, &mut out).expect("C.5.2");
        assert_eq!(texts(&out)[0], (Some(":status"), Some("307")));
        assert_eq!(texts(&out)[3], (Some("location"), Some("https://www.example.com")));
        assert_eq!(d.size, 222);
        out.clear();
        let r3 = hex("88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31");
        d.decode(&r3, 64, &mut out).expect("C.5.3");
        assert_eq!(texts(&out)[4], (Some("content-encoding"), Some("gzip")));
        assert_eq!(d.size, 215);
        assert_eq!(d.known_entries(), 3);
    }

    #[test]
    fn references_to_entries_before_the_capture_are_unknown_and_new_ones_decode() {
        // The connection's earlier blocks inserted 2 entries ztrace never saw.
        let mut d = Decoder::default();
        let mut out = Vec::new();
        // :method POST, then index 62 and 63 (unknown), then a new literal with indexing.
        let mut block = hex("83 be bf");
        block.extend(hex("44 0d 2f 73 76 63 2e 41 2f 4d 65 74 68 6f 64")); // :path /svc.A/Method
        let unknown = d.decode(&block, 64, &mut out).expect("decodes");
        assert_eq!(unknown, 2);
        assert_eq!(
            texts(&out),
            [(Some(":method"), Some("POST")), (None, None), (None, None), (Some(":path"), Some("/svc.A/Method")),]
        );
        // The next block refers to the new entry (62 now) and to an old one (63 and beyond).
        out.clear();
        assert_eq!(d.decode(&hex("be c0"), 64, &mut out), Ok(1));
        assert_eq!(texts(&out), [(Some(":path"), Some("/svc.A/Method")), (None, None)]);
    }

    #[test]
    fn malformed_blocks_are_errors_and_forget_the_table() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(&hex("40 01 61 01 62"), 64, &mut out).expect("a: b");
        assert_eq!(d.known_entries(), 1);
        assert_eq!(d.decode(&hex("80"), 64, &mut out), Err(HpackError::ZeroIndex));
        assert_eq!(d.known_entries(), 0);
        assert_eq!(d.decode(&hex("40 05 61"), 64, &mut out), Err(HpackError::Truncated));
        assert!(d.decode(&hex("ff ff ff ff ff ff ff ff ff ff ff"), 64, &mut out).is_err());
        assert_eq!(d.decode(&hex("82 20"), 64, &mut out), Err(HpackError::LateSizeUpdate));
    }

    #[test]
    fn first_field_tells_requests_from_responses() {
        assert_eq!(first_field_is_request(&hex("83 86")), Some(true));
        assert_eq!(first_field_is_request(&hex("3f e1 1f 88")), Some(false));
        assert_eq!(first_field_is_request(&hex("44 01 2f")), Some(true));
        assert_eq!(first_field_is_request(&hex("be")), None);
        assert_eq!(first_field_is_request(&[]), None);
    }
}
