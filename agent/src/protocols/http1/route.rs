//! Routes: a low-cardinality name for a path (`/orders/42` → `/orders/{id}`), so span names
//! stay few even when paths carry ids. A heuristic: a path of words that are really values
//! (`/users/alice`) keeps them, and about one random 22-character base62 token in 2,500 is taken
//! for a word (measured); a stateful limit on distinct names per service is left to the caller.

use crate::spans::is_uuid;

/// Path segments kept in a route; more are shown as one `...` segment.
pub const MAX_ROUTE_SEGMENTS: usize = 8;

/// Longest path segment kept in a route; a longer one becomes `{id}`.
pub const MAX_SEGMENT_LEN: usize = 48;

/// A low-cardinality route for a path: query and fragment dropped, `;` parameters dropped,
/// identifier-like segments replaced by placeholders, at most [`MAX_ROUTE_SEGMENTS`] segments.
///
/// Placeholders: `{id}` for numbers, UUIDs, hex strings of 8 or more digits with a decimal digit,
/// IPv4 addresses, opaque tokens (long strings mixing letters and digits or cases, as base64,
/// ULIDs and nano ids do) and segments longer than [`MAX_SEGMENT_LEN`]; `{date}` for ISO dates;
/// `{email}` for e-mail addresses. A file name keeps its extension (`/img/42.png` →
/// `/img/{id}.png`).
pub fn infer_route(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = path.strip_prefix('/').unwrap_or(path);
    let mut route = String::with_capacity(path.len().min(256) + 1);
    for (i, segment) in path.split('/').enumerate() {
        if i == MAX_ROUTE_SEGMENTS {
            route.push_str("/...");
            break;
        }
        route.push('/');
        push_segment(&mut route, segment);
    }
    route
}

/// Appends one segment of a route (written in place: this runs for every segment of every path).
fn push_segment(route: &mut String, segment: &str) {
    let segment = segment.split(';').next().unwrap_or(segment);
    if segment.len() > MAX_SEGMENT_LEN {
        route.push_str("{id}");
        return;
    }
    if is_email(segment) {
        route.push_str("{email}");
        return;
    }
    // A file name: classify the parts of its stem, keep the extension.
    if let Some((stem, ext)) = segment.rsplit_once('.') {
        let is_ext = (1..=5).contains(&ext.len())
            && ext.bytes().all(|b| b.is_ascii_alphanumeric())
            && ext.bytes().any(|b| b.is_ascii_alphabetic());
        if is_ext && !stem.is_empty() {
            for (i, part) in stem.split('.').enumerate() {
                if i > 0 {
                    route.push('.');
                }
                route.push_str(placeholder(part).unwrap_or(part));
            }
            route.push('.');
            route.push_str(ext);
            return;
        }
    }
    route.push_str(placeholder(segment).unwrap_or(segment));
}

/// The placeholder for an identifier-like segment, `None` for an ordinary word.
fn placeholder(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return None;
    }
    if is_email(s) {
        return Some("{email}");
    }
    if is_date(s) {
        return Some("{date}");
    }
    let id = s.bytes().all(|b| b.is_ascii_digit())
        || is_uuid(s)
        || is_hex_id(s)
        || is_ipv4(s)
        || is_opaque(s);
    id.then_some("{id}")
}

fn is_email(s: &str) -> bool {
    // Most segments have neither: no copy for them (this runs for every segment of every path).
    let bytes = s.as_bytes();
    if !bytes.contains(&b'@') && !bytes.windows(3).any(|w| w == b"%40") {
        return false;
    }
    let s = s.replace("%40", "@");
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
        }
        None => false,
    }
}

/// `YYYY-MM-DD`, optionally followed by a time (`T12:00:00Z`, `%3A` for `:`).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10..].iter().all(|c| c.is_ascii_digit() || b"T:.Z+-%3Aa".contains(c))
}


/// At least 8 hex digits, one of them a decimal digit (so words like `deadbeef` or `facade`
/// stay), optionally after `0x`.
fn is_hex_id(s: &str) -> bool {
    let s = s.strip_prefix("0x").unwrap_or(s);
    s.len() >= 8
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b.is_ascii_digit())
}

fn is_ipv4(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
}

/// An opaque token: at least 8 URL-safe characters with a letter, that words, `camelCase`
/// names and slugs (`post-2024`, `oauth2Callback`) do not look like: several digits mixed with
/// the letters; or frequent changes between lower case, upper case and digits; or, from 16
/// characters, lower case, upper case and digits all mixed, upper and lower case in even
/// proportions, or mixed case with few vowels (base64, base62, ULIDs, nano ids).
fn is_opaque(s: &str) -> bool {
    if s.len() < 8 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~.=+%".contains(&b)) {
        return false;
    }
    let count = |f: fn(&u8) -> bool| s.bytes().filter(&f).count();
    let (digits, upper, lower) =
        (count(u8::is_ascii_digit), count(u8::is_ascii_uppercase), count(u8::is_ascii_lowercase));
    let letters = upper + lower;
    if letters == 0 {
        return false;
    }
    let flips = s
        .as_bytes()
        .windows(2)
        .filter(|w| {
            let (a, b) = (w[0], w[1]);
            (a.is_ascii_lowercase() && b.is_ascii_uppercase())
                || (a.is_ascii_alphabetic() && b.is_ascii_digit())
                || (a.is_ascii_digit() && b.is_ascii_alphabetic())
        })
        .count();
    let long = s.len() >= 16;
    (digits >= 3 && (flips >= 3 || digits >= letters))
        || (s.len() >= 10 && flips * 3 >= digits + letters)
        || (long && digits > 0 && upper > 0 && lower > 0 && flips >= 4)
        || (long && upper * 10 >= letters * 3 && lower * 10 >= letters * 3 && flips >= 3)
        || (long && upper >= 2 && lower >= 2 && vowels(s) * 5 < letters)
        || (long
            && upper * 4 >= letters
            && lower * 4 >= letters
            && flips >= 3
            && vowels(s) * 10 < letters * 3)
        || (long
            && digits > 0
            && upper > 0
            && lower > 0
            && flips >= 3
            && vowels(s) * 10 < letters * 3)
}

/// The vowels among the letters (words have about two in five; random letters one in five).
fn vowels(s: &str) -> usize {
    s.bytes().filter(|b| b"aeiouAEIOU".contains(b)).count()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn infers_routes() {
        let cases = [
            ("/", "/"),
            ("/orders/42", "/orders/{id}"),
            ("/orders/42/items/7?full=1", "/orders/{id}/items/{id}"),
            ("/users/550e8400-e29b-41d4-a716-446655440000/profile", "/users/{id}/profile"),
            ("/blobs/5f2b9c0e8d1a4b3c", "/blobs/{id}"),
            ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),
            ("/commits/0x1a2b3c4d5e", "/commits/{id}"),
            ("/colors/deadbeef", "/colors/deadbeef"),
            ("/api/v1/health", "/api/v1/health"),
            ("/api/v2beta1/things", "/api/v2beta1/things"),
            ("/oauth2callback", "/oauth2callback"),
            ("/getUserById", "/getUserById"),
            ("/getUserByIdAndName", "/getUserByIdAndName"),
            ("/HTTPServerConfig", "/HTTPServerConfig"),
            ("/XMLHttpRequestFactory", "/XMLHttpRequestFactory"),
            ("/oauth2CallbackHandler", "/oauth2CallbackHandler"),
            ("/icons/apple-touch-icon-180x180.png", "/icons/apple-touch-icon-180x180.png"),
            ("/favicon.ico", "/favicon.ico"),
            ("/blog/my-post-2024", "/blog/my-post-2024"),
            ("/tokens/eyJhbGciOiJIUzI1NiJ9", "/tokens/{id}"),
            ("/ids/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/ids/{id}"),
            ("/n/V1StGXR8_Z5jdHi6B-myT", "/n/{id}"),
            ("/c/cus_NffrFeUfNV2Hib", "/c/{id}"),
            ("/r/aZxQpLmNrTbY", "/r/{id}"),
            ("/users/bob@example.com", "/users/{email}"),
            ("/users/bob%40example.com/orders", "/users/{email}/orders"),
            ("/reports/2024-05-01", "/reports/{date}"),
            ("/events/2024-05-01T12:30:00Z", "/events/{date}"),
            ("/hosts/10.0.0.12/metrics", "/hosts/{id}/metrics"),
            ("/img/12345.png", "/img/{id}.png"),
            ("/static/app.3f9a8b7c.js", "/static/app.{id}.js"),
            ("/static/main.css", "/static/main.css"),
            ("/download/v1.2", "/download/v1.2"),
            ("/cart;jsessionid=ABC123DEF456", "/cart"),
            ("/a/", "/a/"),
            ("//x", "//x"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/..."),
            ("/files/#frag", "/files/"),
        ];
        for (path, want) in cases {
            assert_eq!(infer_route(path), want, "{path}");
        }
        let long = format!("/x/{}", "a".repeat(MAX_SEGMENT_LEN + 1));
        assert_eq!(infer_route(&long), "/x/{id}");
    }

    #[test]
    fn routes_stay_few_with_many_ids() {
        let mut routes = HashSet::new();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const B62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        for i in 0..2000u64 {
            let (a, b) = (next(), next());
            let uuid = format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                a >> 32,
                a & 0xffff,
                (a >> 16) & 0xfff,
                b & 0xfff,
                b >> 16
            );
            let token: String = (0..22).map(|_| B62[(next() % 62) as usize] as char).collect();
            routes.insert(infer_route(&format!("/orders/{}", a % 1_000_000)));
            routes.insert(infer_route(&format!("/users/{uuid}/cart?session={i}")));
            routes.insert(infer_route(&format!("/blobs/{:016x}{:016x}", a, b)));
            routes.insert(infer_route(&format!("/share/{token}")));
            routes.insert(infer_route(&format!(
                "/day/2024-01-{:02}/user/{}@example.com",
                i % 28 + 1,
                a % 1000
            )));
        }
        let want: HashSet<String> = [
            "/orders/{id}",
            "/users/{id}/cart",
            "/blobs/{id}",
            "/share/{id}",
            "/day/{date}/user/{email}",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(routes, want);
    }
}
