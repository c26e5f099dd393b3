//! The headers an HTTP/1 message keeps: the first [`MAX_KEPT_HEADERS`] with a name of at most
//! [`MAX_HEADER_NAME_BYTES`], each value cut to [`MAX_HEADER_VALUE_BYTES`].
//!
//! Kept as one byte buffer (names and values back to back) and where each header lies in it:
//! one allocation per message, however many headers it has, instead of two strings per header.
//! Names compare without regard to case; a value reads as text when it is UTF-8 and with U+FFFD
//! for the bytes that are not, only when someone reads it.

use std::borrow::Cow;

use super::{MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES, MAX_KEPT_HEADERS};

/// Kept headers of one message, in the order they came.
#[derive(Clone, Default)]
pub struct Headers {
    /// Names and values back to back.
    bytes: Vec<u8>,
    /// (where the name starts, name length, value length), in `bytes`.
    fields: Vec<(u32, u16, u16)>,
}

impl Headers {
    /// The kept headers of a parsed header block.
    pub(super) fn keep(headers: &[httparse::Header<'_>]) -> Headers {
        let kept = || {
            headers
                .iter()
                .filter(|h| h.name.len() <= MAX_HEADER_NAME_BYTES)
                .take(MAX_KEPT_HEADERS)
                .map(|h| (h.name.as_bytes(), cut_value(h.value)))
        };
        let mut size = 0;
        let mut count = 0;
        for (name, value) in kept() {
            size += name.len() + value.len();
            count += 1;
        }
        let mut out = Headers { bytes: Vec::with_capacity(size), fields: Vec::with_capacity(count) };
        for (name, value) in kept() {
            out.push(name, value);
        }
        out
    }

    /// Headers from (name, value) pairs, as a test or a caller that builds a message writes them.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
        let mut out = Headers::default();
        for (name, value) in pairs.into_iter().take(MAX_KEPT_HEADERS) {
            if name.len() <= MAX_HEADER_NAME_BYTES {
                out.push(name.as_bytes(), cut_value(value.as_bytes()));
            }
        }
        out
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        // Both fit: names are at most MAX_HEADER_NAME_BYTES, values MAX_HEADER_VALUE_BYTES.
        self.fields.push((start, name.len() as u16, value.len() as u16));
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The name and raw value of each kept header, in order.
    fn raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|&(start, name_len, value_len)| {
            let start = start as usize;
            let value_at = start + usize::from(name_len);
            (&self.bytes[start..value_at], &self.bytes[value_at..value_at + usize::from(value_len)])
        })
    }

    /// The values of every kept header called `name` (any case), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.raw().filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| text(v))
    }

    /// The value of the first kept header called `name` (any case).
    pub fn get<'a>(&'a self, name: &'a str) -> Option<Cow<'a, str>> {
        self.all(name).next()
    }

    /// Each kept header as (name in lower case, value).
    pub fn iter(&self) -> impl Iterator<Item = (String, Cow<'_, str>)> + '_ {
        self.raw().map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), text(v)))
    }
}

/// Equal when the same headers come in the same order: names in any case, values byte for byte.
impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len()
            && self.raw().zip(other.raw()).all(|((n1, v1), (n2, v2))| n1.eq_ignore_ascii_case(n2) && v1 == v2)
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// At most [`MAX_HEADER_VALUE_BYTES`] of a value, cut at a character boundary when the value is
/// UTF-8 (a value that is not is cut at the byte bound and shown with U+FFFD).
fn cut_value(value: &[u8]) -> &[u8] {
    if value.len() <= MAX_HEADER_VALUE_BYTES {
        return value;
    }
    match std::str::from_utf8(value) {
        Ok(s) => super::framing::truncate_str(s, MAX_HEADER_VALUE_BYTES).as_bytes(),
        Err(_) => &value[..MAX_HEADER_VALUE_BYTES],
    }
}

fn text(value: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_in_any_case_and_values_keep_their_order() {
        let h = Headers::from_pairs([("Host", "a"), ("X-Twice", "1"), ("x-twice", "2"), ("Empty", "")]);
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("host").as_deref(), Some("a"));
        assert_eq!(h.get("HOST").as_deref(), Some("a"));
        assert_eq!(h.all("x-twice").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h.get("empty").as_deref(), Some(""));
        assert_eq!(h.get("missing"), None);
        let listed: Vec<(String, String)> = h.iter().map(|(n, v)| (n, v.into_owned())).collect();
        assert_eq!(listed[0], ("host".to_owned(), "a".to_owned()));
    }

    #[test]
    fn values_are_cut_and_bytes_that_are_not_utf8_are_replaced() {
        let long = "é".repeat(400);
        let h = Headers::from_pairs([("x-long", long.as_str())]);
        let v = h.get("x-long").expect("kept");
        assert!(v.len() <= MAX_HEADER_VALUE_BYTES && v.len() >= MAX_HEADER_VALUE_BYTES - 1, "{}", v.len());
        assert!(v.chars().all(|c| c == 'é'));
        let raw = [httparse::Header { name: "x-bin", value: b"a\xffb" }];
        assert_eq!(Headers::keep(&raw).get("x-bin").as_deref(), Some("a\u{fffd}b"));
    }

    #[test]
    fn long_names_are_skipped_and_the_count_is_bounded() {
        let long_name = "n".repeat(MAX_HEADER_NAME_BYTES + 1);
        let mut pairs: Vec<(String, String)> = vec![(long_name, "v".into())];
        pairs.extend((0..40).map(|i| (format!("x-{i}"), format!("{i}"))));
        let raw: Vec<httparse::Header<'_>> =
            pairs.iter().map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() }).collect();
        let h = Headers::keep(&raw);
        assert_eq!(h.len(), MAX_KEPT_HEADERS);
        assert_eq!(h.get("x-0").as_deref(), Some("0"));
        assert!(h.get(&pairs[0].0).is_none());
    }
}
