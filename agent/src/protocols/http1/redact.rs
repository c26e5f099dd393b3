//! What of a URL may leave the host: query values under sensitive keys become `REDACTED`.

/// What replaces a sensitive value.
pub const REDACTED: &str = "REDACTED";

/// True when a query parameter name is sensitive: one of its words (split at `-`, `_`, `.`
/// and lower-to-upper case changes) contains `token`, `secret`, `password`, `passwd`,
/// `signature`, `session` or `credential`, starts with `auth`, or is `key`, `apikey`,
/// `accesskey`, `sig`, `code`, `sid` or `pwd` (the whole name is also tried as one word).
pub fn is_sensitive_query_key(key: &str) -> bool {
    const CONTAINS: [&str; 7] =
        ["token", "secret", "password", "passwd", "signature", "session", "credential"];
    const EXACT: [&str; 7] = ["key", "apikey", "accesskey", "sig", "code", "sid", "pwd"];
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        let boundary = matches!(c, '-' | '_' | '.' | '[' | ']') || (c.is_uppercase() && prev_lower);
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        if !matches!(c, '-' | '_' | '.' | '[' | ']') {
            current.extend(c.to_lowercase());
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let whole: String = words.concat();
    words.iter().chain(std::iter::once(&whole)).any(|w| {
        CONTAINS.iter().any(|p| w.contains(p))
            || w.starts_with("auth")
            || EXACT.contains(&w.as_str())
    })
}

/// The query string with the values of sensitive parameters (see [`is_sensitive_query_key`])
/// replaced by `REDACTED`; everything else kept as sent.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_sensitive_query_key(&percent_decode_lossy(k)) => {
                format!("{k}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes `%XX` escapes (for matching names only); invalid escapes are kept.
fn percent_decode_lossy(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_sensitive_query_values() {
        let cases = [
            ("a=1&b=2", "a=1&b=2"),
            ("access_token=abc&page=2", "access_token=REDACTED&page=2"),
            ("apiKey=abc", "apiKey=REDACTED"),
            ("api_key=abc", "api_key=REDACTED"),
            ("key=abc", "key=REDACTED"),
            ("X-Amz-Signature=abc&X-Amz-Date=1", "X-Amz-Signature=REDACTED&X-Amz-Date=1"),
            ("AWSAccessKeyId=AKIA&Expires=1", "AWSAccessKeyId=REDACTED&Expires=1"),
            ("sig=abc", "sig=REDACTED"),
            ("code=xyz&state=s", "code=REDACTED&state=s"),
            ("sessionid=1", "sessionid=REDACTED"),
            ("client_secret=s&password=p", "client_secret=REDACTED&password=REDACTED"),
            ("authorization=x", "authorization=REDACTED"),
            ("monkey=banana&zipcode=1", "monkey=banana&zipcode=1"),
            ("to%6Ben=x", "to%6Ben=REDACTED"),
            ("token", "token"),
            ("&&x=1&", "&&x=1&"),
        ];
        for (q, want) in cases {
            assert_eq!(redact_query(q), want, "{q}");
        }
    }
}
