//! SQL text as spans show it: literals replaced by `?` ([`sanitize_sql`]), and the operation and
//! the one table a statement names ([`operation_and_collection`]). Heuristic and bounded: never
//! a SQL parser, never more than [`MAX_QUERY_TEXT`] bytes or [`MAX_TOKENS`] tokens.

/// Longest `db.query.text`, in bytes (the parser already cuts SQL to 4096 bytes).
const MAX_QUERY_TEXT: usize = 4096;
/// Longest collection name kept.
const MAX_COLLECTION_LEN: usize = 128;
/// Tokens looked at when finding the operation and collection.
const MAX_TOKENS: usize = 256;

/// The SQL with literals replaced by `?`: `'...'` strings (with `''` inside, and `E'...'` with
/// backslash escapes, `B'..'`, `X'..'`, `U&'..'`), `$tag$...$tag$` strings, numbers (`42`,
/// `3.5e-3`, `0x1F`) that do not continue an identifier. Kept: `$1` placeholders, `"quoted"`
/// identifiers, comments, keywords, whitespace.
pub fn sanitize_sql(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT));
    let mut i = 0;
    // Start of the run of bytes copied as is.
    let mut copied = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let literal_end = match c {
            b'\'' => {
                // A string prefix (E, B, X, U&, N) is part of the literal.
                let mut start = i;
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
                if i > 0 && matches!(b[i - 1], b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
                    && (i < 2 || !ident(b[i - 2]))
                {
                    start = i - 1;
                } else if i > 1 && b[i - 1] == b'&' && matches!(b[i - 2], b'u' | b'U') && (i < 3 || !ident(b[i - 3])) {
                    start = i - 2;
                }
                let end = quoted_end(b, i + 1, escapes);
                Some((start, end))
            }
            b'"' => {
                let end = b[i + 1..].iter().position(|&x| x == b'"').map_or(b.len(), |p| i + 2 + p);
                i = end;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = b[i + 2..].windows(2).position(|w| w == b"*/").map_or(b.len(), |p| i + 2 + p + 2);
                continue;
            }
            b'$' if i == 0 || !ident(b[i - 1]) => match dollar_quote_end(b, i) {
                Some(end) => Some((i, end)),
                None => {
                    // `$1`: a placeholder, kept.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
            },
            b'0'..=b'9' if i == 0 || !ident(b[i - 1]) => Some((i, number_end(b, i))),
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && (i == 0 || !ident(b[i - 1])) => {
                Some((i, number_end(b, i)))
            }
            _ => None,
        };
        match literal_end {
            Some((start, end)) => {
                out.push_str(&sql[copied..start]);
                out.push('?');
                i = end;
                copied = end;
            }
            None => i += if c >= 0x80 { utf8_len(c) } else { 1 },
        }
        if out.len() > MAX_QUERY_TEXT {
            break;
        }
    }
    if copied < b.len() && out.len() <= MAX_QUERY_TEXT {
        out.push_str(&sql[copied..i.min(b.len())]);
    }
    if out.len() > MAX_QUERY_TEXT {
        let mut cut = MAX_QUERY_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// End (exclusive) of a `'...'` string whose body starts at `from`.
fn quoted_end(b: &[u8], mut i: usize, backslash_escapes: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// End of a `$tag$...$tag$` string starting at `i`, if one starts there.
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    let tag_len = b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))?;
    let close = i + 1 + tag_len;
    if b.get(close) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &b[i..=close];
    let body = close + 1;
    Some(b[body..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |p| body + p + tag.len()))
}

fn number_end(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
        i += 1;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'+' | b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

/// The operation (upper-case first keyword; for `WITH`, the main statement's) and the one table
/// the statement is about, if evident.
pub fn operation_and_collection(sql: &str) -> (Option<String>, Option<String>) {
    let tokens = tokens(sql);
    let Some(first) = tokens.first() else { return (None, None) };
    let first_kw = first.text.to_ascii_uppercase();
    if !first.text.bytes().all(|c| c.is_ascii_alphabetic()) {
        return (None, None);
    }
    let mut op = first_kw;
    let mut at = 0;
    if op == "WITH" {
        if let Some(i) = tokens
            .iter()
            .position(|t| t.depth == 0 && ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"].iter().any(|k| t.is(k)))
        {
            op = tokens[i].upper();
            at = i;
        }
    }
    let rest = &tokens[at + 1..];
    let word_is = |i: usize, kw: &str| rest.get(i).is_some_and(|t| t.is(kw));
    let table_after = |kw: &str| -> Option<String> {
        let i = rest.iter().position(|t| t.depth == 0 && t.is(kw))?;
        table_at(rest, i + 1)
    };
    let collection = match op.as_str() {
        "SELECT" | "DELETE" => {
            let t = table_after("FROM");
            let joined = rest.iter().any(|t| t.depth == 0 && t.is("JOIN"));
            let listed = rest
                .iter()
                .position(|t| t.depth == 0 && t.is("FROM"))
                .and_then(|i| rest.get(i + 2))
                .is_some_and(|t| t.text == ",");
            if joined || listed {
                None
            } else {
                t
            }
        }
        "INSERT" | "MERGE" => table_after("INTO"),
        "UPDATE" => table_at(rest, usize::from(word_is(0, "ONLY"))),
        "COPY" | "TRUNCATE" | "LOCK" => {
            let skip = usize::from(word_is(0, "TABLE") || word_is(0, "ONLY"));
            table_at(rest, skip)
        }
        "CREATE" | "DROP" | "ALTER" => {
            let Some(i) = rest.iter().position(|t| t.is("TABLE")).filter(|&i| i <= 3) else {
                return (Some(op), None);
            };
            let mut j = i + 1;
            while ["IF", "NOT", "EXISTS", "ONLY"].iter().any(|k| word_is(j, k)) {
                j += 1;
            }
            return (Some(op), table_at(rest, j));
        }
        _ => None,
    };
    (Some(op), collection)
}

fn table_at(tokens: &[Tok<'_>], i: usize) -> Option<String> {
    let t = tokens.get(i)?;
    if t.depth != 0 || t.text == "(" || !t.is_name {
        return None;
    }
    Some(t.text.chars().take(MAX_COLLECTION_LEN).collect())
}

struct Tok<'a> {
    text: &'a str,
    depth: u32,
    is_name: bool,
}

impl Tok<'_> {
    fn upper(&self) -> String {
        self.text.to_ascii_uppercase()
    }

    fn is(&self, keyword: &str) -> bool {
        self.text.eq_ignore_ascii_case(keyword)
    }
}

/// Words (identifiers, `schema.table`, `"quoted"`), and single punctuation bytes, with their
/// parenthesis depth; literals and comments skipped. At most [`MAX_TOKENS`].
fn tokens(sql: &str) -> Vec<Tok<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth = 0u32;
    let name_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'"' || c == b'$' || c >= 0x80;
    while i < b.len() && out.len() < MAX_TOKENS {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b';' && out.is_empty() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p + 1);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = b[i + 2..].windows(2).position(|w| w == b"*/").map_or(b.len(), |p| i + 2 + p + 2);
        } else if c == b'\'' {
            i = quoted_end(b, i + 1, false);
        } else if name_byte(c) {
            let start = i;
            let mut quoted = false;
            while i < b.len() && (name_byte(b[i]) || quoted) {
                if b[i] == b'"' {
                    quoted = !quoted;
                }
                i += 1;
            }
            // `start..i` ends at a byte < 0x80 or the end: a char boundary.
            let text = &sql[start..i];
            let is_name = !text.as_bytes()[0].is_ascii_digit() && text.as_bytes()[0] != b'$';
            out.push(Tok { text, depth, is_name });
        } else {
            if c == b'(' {
                depth += 1;
            }
            if c == b')' {
                depth = depth.saturating_sub(1);
            }
            if c == b'(' || c == b',' || c == b')' {
                out.push(Tok { text: &sql[i..=i], depth, is_name: false });
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders() {
        for (sql, want) in [
            ("SELECT * FROM t WHERE a = 'x''y' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
            ("SELECT 1", "SELECT ?"),
            ("select -3.5e-3, .5, 0x1F, t2.c1 from t2", "select -?, ?, ?, t2.c1 from t2"),
            ("UPDATE a SET b = $1 WHERE id = $2", "UPDATE a SET b = $1 WHERE id = $2"),
            ("SELECT E'a\\'b', X'1F', U&'d\\0061t'", "SELECT ?, ?, ?"),
            ("SELECT $$it's$$, $tag$x$tag$", "SELECT ?, ?"),
            ("SELECT \"col 1\" FROM \"T9\" -- it's 5\n WHERE x IN (1, 2)", "SELECT \"col 1\" FROM \"T9\" -- it's 5\n WHERE x IN (?, ?)"),
            ("/* app:7 */ INSERT INTO t VALUES ('héllo', 7)", "/* app:7 */ INSERT INTO t VALUES (?, ?)"),
            ("SELECT 'unterminated", "SELECT ?"),
            ("INSERT INTO pgbench_history (tid, bid) VALUES (3, 1)", "INSERT INTO pgbench_history (tid, bid) VALUES (?, ?)"),
        ] {
            assert_eq!(sanitize_sql(sql), want, "{sql}");
        }
    }

    #[test]
    fn operations_and_collections() {
        let oc = |sql: &str| {
            let (o, c) = operation_and_collection(sql);
            (o.unwrap_or_default(), c.unwrap_or_default())
        };
        let s = |o: &str, c: &str| (o.to_owned(), c.to_owned());
        assert_eq!(oc("select * from orders where id = 1"), s("SELECT", "orders"));
        assert_eq!(oc("SELECT a FROM public.items i WHERE x"), s("SELECT", "public.items"));
        assert_eq!(oc("SELECT * FROM a JOIN b ON a.id = b.id"), s("SELECT", ""));
        assert_eq!(oc("SELECT * FROM a, b"), s("SELECT", ""));
        assert_eq!(oc("SELECT x FROM (SELECT 1) s"), s("SELECT", ""));
        assert_eq!(oc("SELECT (SELECT max(a) FROM b) FROM c"), s("SELECT", "c"));
        assert_eq!(oc("SELECT 1"), s("SELECT", ""));
        assert_eq!(oc("INSERT INTO pgbench_history (tid) VALUES ($1)"), s("INSERT", "pgbench_history"));
        assert_eq!(oc("update only accounts set a = 1"), s("UPDATE", "accounts"));
        assert_eq!(oc("DELETE FROM \"Users\" WHERE id = $1"), s("DELETE", "\"Users\""));
        assert_eq!(oc("WITH x AS (SELECT 1 FROM y) UPDATE z SET a = 1"), s("UPDATE", "z"));
        assert_eq!(oc("COPY pgbench_accounts FROM STDIN"), s("COPY", "pgbench_accounts"));
        assert_eq!(oc("CREATE TABLE IF NOT EXISTS t1 (a int)"), s("CREATE", "t1"));
        assert_eq!(oc("drop table pgbench_branches"), s("DROP", "pgbench_branches"));
        assert_eq!(oc("BEGIN"), s("BEGIN", ""));
        assert_eq!(oc("  ; -- c\nvacuum analyze"), s("VACUUM", ""));
        assert_eq!(oc(""), s("", ""));
    }

    #[test]
    fn odd_text_never_panics_and_stays_bounded() {
        let pieces = ["'", "\"", "$", "$$", "$a$", "--", "/*", "*/", "\n", "\\", "E'", "U&'", "0x", "1e", ".5", "é", "日本", "🦀", "(", ")", ",", ";", " ", "FROM", "select", "WITH", "x"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut sql = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut r = seed;
            for _ in 0..(r % 24) {
                sql.push_str(pieces[(r % pieces.len() as u64) as usize]);
                r = r.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d);
            }
            let text = sanitize_sql(&sql);
            assert!(text.len() <= sql.len() + 1, "{sql:?} → {text:?}");
            let _ = operation_and_collection(&sql);
        }
        let long = "SELECT 'é', 1 FROM t WHERE a = 'x' ".repeat(500);
        assert!(sanitize_sql(&long).len() <= MAX_QUERY_TEXT);
    }
}
