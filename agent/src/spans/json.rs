//! The one JSON encoding of a span: the DESIGN.md span object that `--print=json` writes, the
//! store keeps and the viewer API serves.
//!
//! Keys, in this order: `trace_id`, `span_id`, `parent_span_id` (or `null`), `name`, `kind`,
//! `service`, `start_unix_nano`, `end_unix_nano`, `status`, `attributes` and `resource`
//! (key → value; integers as JSON numbers; a non-finite double becomes `null`). [`SpanObject`]
//! is the shape; it is filled from a [`Span`] ([`SpanObject::of`]) or from the store's columns.

use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{hex, AttrValue, Resource, Span};

/// The DESIGN.md span object, field by field in the documented order. `A` and `R` are whatever
/// serializes as the attribute and resource objects ([`Attributes`] of a span, or JSON already
/// stored). Without its resource (`None`) it is every key but the last.
#[derive(Serialize)]
pub struct SpanObject<'a, A: Serialize, R: Serialize> {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: &'a str,
    pub kind: &'a str,
    pub service: &'a str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: &'a str,
    pub attributes: A,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<R>,
}

/// A span's attributes as the JSON object.
pub type SpanAttributes<'a> = Attributes<std::iter::Map<std::slice::Iter<'a, super::Attribute>, AttrPair>>;
/// A resource's attributes as the JSON object.
pub type ResourceAttributes<'a> = Attributes<std::iter::Map<std::slice::Iter<'a, (String, AttrValue)>, ResPair>>;
type AttrPair = for<'b> fn(&'b super::Attribute) -> (&'b str, &'b AttrValue);
type ResPair = for<'b> fn(&'b (String, AttrValue)) -> (&'b str, &'b AttrValue);

impl<'a> SpanObject<'a, SpanAttributes<'a>, ResourceAttributes<'a>> {
    /// The object of `span`, with its resource or (`with_resource` false) without.
    pub fn of(span: &'a Span, with_resource: bool) -> Self {
        SpanObject {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent_span_id: span.parent_span_id.map(|p| hex(&p)),
            name: &span.name,
            kind: span.kind.as_str(),
            service: &span.resource.service_name,
            start_unix_nano: span.start_unix_nano,
            end_unix_nano: span.end_unix_nano,
            status: span.status.as_str(),
            attributes: span_attributes(span),
            resource: with_resource.then(|| resource_attributes(&span.resource)),
        }
    }
}

/// The attribute object of a span.
pub fn span_attributes(span: &Span) -> SpanAttributes<'_> {
    Attributes(span.attributes.iter().map((|a| (a.key, &a.value)) as AttrPair))
}

/// The resource object of a span.
pub fn resource_attributes(resource: &Resource) -> ResourceAttributes<'_> {
    Attributes(resource.attributes.iter().map((|(k, v)| (k.as_str(), v)) as ResPair))
}

/// The DESIGN.md span object of `span` as a JSON value.
pub fn span_to_json(span: &Span) -> serde_json::Value {
    serde_json::to_value(SpanObject::of(span, true)).unwrap_or(serde_json::Value::Null)
}

/// A JSON object's text from attribute pairs, in their order (`{}` if it cannot be written).
pub fn to_string<T: Serialize>(object: &T) -> String {
    serde_json::to_string(object).unwrap_or_else(|_| "{}".to_owned())
}

/// A key → value JSON object from attribute pairs, in their order.
pub struct Attributes<I>(pub I);

impl<'a, I> Serialize for Attributes<I>
where
    I: Iterator<Item = (&'a str, &'a AttrValue)> + Clone,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0.clone() {
            map.serialize_entry(key, &Value(value))?;
        }
        map.end()
    }
}

/// An attribute value: strings, integers and booleans as such, a finite double as a number, any
/// other double as `null`.
struct Value<'a>(&'a AttrValue);

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            AttrValue::Str(s) => serializer.serialize_str(s),
            AttrValue::Int(i) => serializer.serialize_i64(*i),
            AttrValue::Bool(b) => serializer.serialize_bool(*b),
            AttrValue::Double(d) if d.is_finite() => serializer.serialize_f64(*d),
            AttrValue::Double(_) => serializer.serialize_none(),
        }
    }
}
