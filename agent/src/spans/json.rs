//! The one JSON encoding of a span: the DESIGN.md span object that `--print=json` writes, the
//! store keeps and the viewer API serves.
//!
//! Keys, in this order: `trace_id`, `span_id`, `parent_span_id` (or `null`), `name`, `kind`,
//! `service`, `start_unix_nano`, `end_unix_nano`, `status`, `attributes` and `resource`
//! (key → value; integers as JSON numbers; a non-finite double becomes `null`).
//!
//! Written by hand into a byte buffer rather than through serde: this runs for every span, and
//! most strings in a span need no escape at all, so they are copied as they are ([`write_str`]).
//! The output is what `serde_json` writes for the same object, byte for byte (tested below).
//! [`Head`] is the scalar part, from a [`Span`] ([`Head::of`]) or from the store's columns; the
//! attribute and resource objects come as [`Object`]s: a span's attributes, a resource, or JSON
//! text already encoded (the store's columns, a resource's cached object).

use super::{AttrValue, Attribute, Span};

/// An id: raw bytes (written as lowercase hex) or hex text as stored.
#[derive(Clone, Copy, Debug)]
pub enum Id<'a> {
    Bytes(&'a [u8]),
    Hex(&'a str),
}

/// The scalar fields of the span object.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub trace_id: Id<'a>,
    pub span_id: Id<'a>,
    pub parent_span_id: Option<Id<'a>>,
    pub name: &'a str,
    pub kind: &'a str,
    pub service: &'a str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: &'a str,
}

impl<'a> Head<'a> {
    /// The scalar fields of `span`.
    pub fn of(span: &'a Span) -> Self {
        Head {
            trace_id: Id::Bytes(&span.trace_id),
            span_id: Id::Bytes(&span.span_id),
            parent_span_id: span.parent_span_id.as_ref().map(|p| Id::Bytes(p)),
            name: &span.name,
            kind: span.kind.as_str(),
            service: &span.resource.service_name,
            start_unix_nano: span.start_unix_nano,
            end_unix_nano: span.end_unix_nano,
            status: span.status.as_str(),
        }
    }
}

/// A key → value object of the span: its attributes, a resource, or JSON text.
#[derive(Clone, Copy, Debug)]
pub enum Object<'a> {
    Attributes(&'a [Attribute]),
    Resource(&'a [(String, AttrValue)]),
    /// An object already encoded (`{...}`), copied as it is.
    Raw(&'a [u8]),
}

/// Appends the DESIGN.md span object; without `resource` it has every key but the last.
pub fn write_span(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    attributes: Object<'_>,
    resource: Option<Object<'_>>,
) {
    // A span's line is rarely longer: one growth at most instead of several.
    out.reserve(1024);
    out.extend_from_slice(b"{\"trace_id\":");
    write_id(out, head.trace_id);
    out.extend_from_slice(b",\"span_id\":");
    write_id(out, head.span_id);
    out.extend_from_slice(b",\"parent_span_id\":");
    match head.parent_span_id {
        Some(id) => write_id(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"name\":");
    write_str(out, head.name);
    out.extend_from_slice(b",\"kind\":");
    write_str(out, head.kind);
    out.extend_from_slice(b",\"service\":");
    write_str(out, head.service);
    out.extend_from_slice(b",\"start_unix_nano\":");
    out.extend_from_slice(itoa::Buffer::new().format(head.start_unix_nano).as_bytes());
    out.extend_from_slice(b",\"end_unix_nano\":");
    out.extend_from_slice(itoa::Buffer::new().format(head.end_unix_nano).as_bytes());
    out.extend_from_slice(b",\"status\":");
    write_str(out, head.status);
    out.extend_from_slice(b",\"attributes\":");
    write_object(out, attributes);
    if let Some(resource) = resource {
        out.extend_from_slice(b",\"resource\":");
        write_object(out, resource);
    }
    out.push(b'}');
}

/// Appends a key → value object.
pub fn write_object(out: &mut Vec<u8>, object: Object<'_>) {
    match object {
        Object::Attributes(attributes) => {
            write_pairs(out, attributes.iter().map(|a| (a.key, &a.value)))
        }
        Object::Resource(pairs) => write_pairs(out, pairs.iter().map(|(k, v)| (k.as_str(), v))),
        Object::Raw([]) => out.extend_from_slice(b"{}"),
        Object::Raw(json) => out.extend_from_slice(json),
    }
}

/// A key → value object's text (`{}` for none).
pub fn object_string(object: Object<'_>) -> String {
    let mut out = Vec::new();
    write_object(&mut out, object);
    // Only whole UTF-8 strings and ASCII went in.
    String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
}

/// The DESIGN.md span object of `span` as a JSON value (tests and callers that want a value).
pub fn span_to_json(span: &Span) -> serde_json::Value {
    let mut out = Vec::new();
    write_span(
        &mut out,
        &Head::of(span),
        Object::Attributes(&span.attributes),
        Some(Object::Resource(&span.resource.attributes)),
    );
    serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)
}

fn write_pairs<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a str, &'a AttrValue)>) {
    out.push(b'{');
    for (i, (key, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// Strings, integers and booleans as such, a finite double as a number, any other double as
/// `null`.
fn write_value(out: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Str(s) => write_str(out, s),
        AttrValue::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        AttrValue::Bool(true) => out.extend_from_slice(b"true"),
        AttrValue::Bool(false) => out.extend_from_slice(b"false"),
        AttrValue::Double(d) if d.is_finite() => {
            // Rare: serde_json's own shortest round-trip form.
            let _ = serde_json::to_writer(&mut *out, d);
        }
        AttrValue::Double(_) => out.extend_from_slice(b"null"),
    }
}

fn write_id(out: &mut Vec<u8>, id: Id<'_>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    match id {
        // A trace or span id: built on the stack, written once.
        Id::Bytes(bytes) if bytes.len() <= 16 => {
            let mut buf = [0u8; 34];
            buf[0] = b'"';
            for (i, b) in bytes.iter().enumerate() {
                buf[1 + 2 * i] = DIGITS[usize::from(b >> 4)];
                buf[2 + 2 * i] = DIGITS[usize::from(b & 0xf)];
            }
            let end = 1 + 2 * bytes.len();
            buf[end] = b'"';
            out.extend_from_slice(&buf[..=end]);
        }
        Id::Bytes(bytes) => {
            out.push(b'"');
            for b in bytes {
                out.push(DIGITS[usize::from(b >> 4)]);
                out.push(DIGITS[usize::from(b & 0xf)]);
            }
            out.push(b'"');
        }
        Id::Hex(text) => write_str(out, text),
    }
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes: `"` `\` and control
/// characters; everything else, non-ASCII included, as it is.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_body(out, s);
}

/// The string's contents and its closing quote.
fn write_str_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !any_needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(DIGITS[usize::from(b >> 4)]);
                out.push(DIGITS[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte needs an escape, eight bytes at a time: a byte below 0x20, or equal to `"`
/// or `\\`, sets the top bit of its lane in one of three masks.
fn any_needs_escape(bytes: &[u8]) -> bool {
    // Most attribute values are short: a table lookup per byte beats the 8-byte lanes there.
    if bytes.len() < 16 {
        return bytes.iter().any(|&b| ESCAPED[usize::from(b)]);
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut lane = [0u8; 8];
        lane.copy_from_slice(chunk);
        let x = u64::from_le_bytes(lane);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        if below_space
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| needs_escape(b))
}

/// The bytes JSON strings must escape (see [`needs_escape`]).
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = needs_escape(b as u8);
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::testing;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let strings = [
            "",
            "plain",
            "GET /orders/{id}",
            "quote \" and backslash \\ here",
            "lines\nand\rtabs\t",
            "\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "non-ASCII: é ☃ 𝄞",
            "\"",
            "\\",
            "end\u{1}",
        ];
        for s in strings {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                serde_json::to_string(s).expect("serde"),
                "{s:?}"
            );
        }
        for b in 0u8..0x80 {
            let s = (b as char).to_string();
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                serde_json::to_string(&s).expect("serde"),
                "byte {b:#x}"
            );
        }
    }

    #[test]
    fn the_eight_byte_scan_finds_every_byte_that_needs_an_escape_and_no_other() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(
                        any_needs_escape(&bytes),
                        needs_escape(b),
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!any_needs_escape(
            "non-ASCII é ☃ 𝄞 stays as it is".as_bytes()
        ));
    }

    #[test]
    fn a_span_is_the_documented_object_in_the_documented_order() {
        let mut span = testing::span("GET /orders/{id}", &testing::resource("orders", 42));
        span.parent_span_id = Some([0x33; 8]);
        span.attributes
            .push(Attribute::new("weird", "a \"quoted\"\nvalue"));
        span.attributes.push(Attribute {
            key: "ratio",
            value: AttrValue::Double(0.25),
        });
        span.attributes.push(Attribute {
            key: "nan",
            value: AttrValue::Double(f64::NAN),
        });
        span.attributes.push(Attribute {
            key: "ok",
            value: AttrValue::Bool(true),
        });
        span.attributes.push(Attribute {
            key: "neg",
            value: AttrValue::Int(-42),
        });
        let mut out = Vec::new();
        write_span(
            &mut out,
            &Head::of(&span),
            Object::Attributes(&span.attributes),
            Some(Object::Resource(&span.resource.attributes)),
        );
        let text = String::from_utf8(out).expect("utf-8");
        let keys = [
            "trace_id",
            "span_id",
            "parent_span_id",
            "name",
            "kind",
            "service",
            "start_unix_nano",
            "end_unix_nano",
            "status",
            "attributes",
            "resource",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| {
                text.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("{k} missing in {text}"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "keys out of order: {text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["trace_id"], crate::spans::hex(&span.trace_id));
        assert_eq!(value["name"], "GET /orders/{id}");
        assert_eq!(value["attributes"]["weird"], "a \"quoted\"\nvalue");
        assert_eq!(value["attributes"]["ratio"], 0.25);
        assert_eq!(value["attributes"]["nan"], serde_json::Value::Null);
        assert_eq!(value["attributes"]["ok"], true);
        assert_eq!(value["attributes"]["neg"], -42);
        assert_eq!(
            value["resource"]["service.name"],
            span.resource.service_name.as_str()
        );
        assert_eq!(value, span_to_json(&span));
    }

    #[test]
    fn stored_columns_give_the_same_object() {
        let span = testing::span("SELECT", &testing::resource("users", 7));
        let (trace_id, span_id) = (
            crate::spans::hex(&span.trace_id),
            crate::spans::hex(&span.span_id),
        );
        let attributes = object_string(Object::Attributes(&span.attributes));
        let resource = object_string(Object::Resource(&span.resource.attributes));
        let head = Head {
            trace_id: Id::Hex(&trace_id),
            span_id: Id::Hex(&span_id),
            parent_span_id: None,
            ..Head::of(&span)
        };
        let mut out = Vec::new();
        write_span(
            &mut out,
            &head,
            Object::Raw(attributes.as_bytes()),
            Some(Object::Raw(resource.as_bytes())),
        );
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(value, span_to_json(&span));
        let mut empty = Vec::new();
        write_object(&mut empty, Object::Raw(b""));
        assert_eq!(empty, b"{}");
    }
}
