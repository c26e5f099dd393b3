//! A memcached command line: its name, keys, literal-free text, whether a data block follows,
//! and whether the server answers it.

/// Keys of a multi-key retrieval kept (for per-key hit/miss and the text).
pub const MAX_KEYS: usize = 64;
/// Longest key kept (memcached's own limit is 250 bytes).
const MAX_KEY: usize = 250;

/// What a command does, for its reply's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `get`, `gets`, `gat`, `gats`: `VALUE` lines, then `END`.
    Retrieval,
    /// `mg`: `VA` (with a value), `HD` (hit), `EN` (miss).
    MetaGet,
    /// `ms`, `md`, `ma`: `HD` on success.
    MetaOther,
    /// Every other command: one reply line.
    Other,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub text: String,
    pub kind: Kind,
    /// The keys named (the first [`MAX_KEYS`]), and how many there were.
    pub keys: Vec<String>,
    pub key_count: u32,
    /// `noreply` (classic), or the meta quiet flag `q`.
    pub noreply: bool,
    pub quiet: bool,
    /// A data block follows: `Some(Some(len))`; `Some(None)` when its length is no number.
    pub block: Option<Option<u64>>,
}

const COMMANDS: &[&str] = &[
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "delete",
    "incr",
    "decr",
    "touch",
    "flush_all",
    "version",
    "stats",
    "verbosity",
    "quit",
    "mg",
    "ms",
    "md",
    "ma",
    "mn",
    "me",
    "shutdown",
    "cache_memlimit",
    "lru_crawler",
    "slabs",
    "watch",
    "misbehave",
];

/// A command word of the text protocol.
pub fn is_command_word(word: &[u8]) -> bool {
    COMMANDS.iter().any(|c| c.as_bytes() == word)
}

/// The command of a line; `None` for an empty line.
pub fn parse(line: &[u8]) -> Option<Command> {
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let (&first, args) = words.split_first()?;
    let name = if first.len() <= 32 && first.iter().all(u8::is_ascii_graphic) {
        String::from_utf8_lossy(first).to_ascii_lowercase()
    } else {
        "unknown".to_owned()
    };
    let last_is_noreply = args.last() == Some(&&b"noreply"[..]);
    let number = |i: usize| {
        args.get(i).map(|a| {
            std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        })
    };
    let (kind, key_args, block, noreply, quiet): (Kind, &[&[u8]], _, bool, bool) =
        match name.as_str() {
            "get" | "gets" => (Kind::Retrieval, args, None, false, false),
            "gat" | "gats" => (
                Kind::Retrieval,
                args.get(1..).unwrap_or_default(),
                None,
                false,
                false,
            ),
            "set" | "add" | "replace" | "append" | "prepend" | "cas" => (
                Kind::Other,
                args.get(..1).unwrap_or_default(),
                Some(number(3).flatten()),
                last_is_noreply,
                false,
            ),
            "mg" | "ms" | "md" | "ma" | "me" => {
                let quiet = args.iter().skip(1).any(|f| *f == b"q");
                let kind = match name.as_str() {
                    "mg" => Kind::MetaGet,
                    "me" => Kind::Other,
                    _ => Kind::MetaOther,
                };
                let block = (name == "ms").then(|| number(1).flatten());
                (kind, args.get(..1).unwrap_or_default(), block, quiet, quiet)
            }
            "delete" | "incr" | "decr" | "touch" => (
                Kind::Other,
                args.get(..1).unwrap_or_default(),
                None,
                last_is_noreply,
                false,
            ),
            "quit" => (Kind::Other, &[][..], None, true, false),
            _ => (Kind::Other, &[][..], None, last_is_noreply, false),
        };
    let keys: Vec<String> = key_args
        .iter()
        .take(MAX_KEYS)
        .map(|k| key_text(k))
        .collect();
    let mut text = name.clone();
    let mut keys_left = key_args.len();
    for (i, arg) in args.iter().enumerate() {
        text.push(' ');
        let is_key = match name.as_str() {
            "get" | "gets" => true,
            "gat" | "gats" => i >= 1,
            _ => i == 0 && !key_args.is_empty(),
        };
        if is_key && keys_left > 0 {
            keys_left -= 1;
            text.push_str(&key_text(arg));
        } else if *arg == b"noreply" {
            text.push_str("noreply");
        } else if matches!(kind, Kind::MetaGet | Kind::MetaOther) || name == "me" {
            // Meta flags: the flag letter, never its token (an opaque, a TTL, a CAS value).
            text.push(if arg[0].is_ascii_alphabetic() {
                char::from(arg[0])
            } else {
                '?'
            });
        } else if name == "stats" && i == 0 {
            text.push_str(&key_text(arg));
        } else {
            text.push('?');
        }
        if text.len() > 1024 {
            text.push('…');
            break;
        }
    }
    Some(Command {
        name,
        text,
        kind,
        keys,
        key_count: key_args.len().min(u32::MAX as usize) as u32,
        noreply,
        quiet,
        block,
    })
}

/// A key as text: printable ASCII as it is, other bytes as `\xNN`, cut to [`MAX_KEY`].
fn key_text(key: &[u8]) -> String {
    let mut out = String::new();
    for &b in &key[..key.len().min(MAX_KEY)] {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A reply the server suppresses for a quiet command of `kind` (so it cannot be that
/// command's).
pub fn suppressed(kind: Kind, word: &[u8]) -> bool {
    match kind {
        Kind::MetaGet => word == b"EN",
        Kind::MetaOther => word == b"HD",
        _ => false,
    }
}

/// Whether a reply starting with `word` can answer a command of `kind`.
pub fn can_answer(kind: Kind, word: &[u8]) -> bool {
    let error = matches!(word, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR");
    error
        || match kind {
            Kind::MetaGet => matches!(word, b"VA" | b"HD" | b"EN"),
            Kind::MetaOther => matches!(word, b"VA" | b"HD" | b"NS" | b"EX" | b"NF" | b"EN"),
            _ => true,
        }
}

/// What the silence of a quiet command of `kind` means.
pub fn suppressed_outcome(kind: Kind) -> &'static str {
    match kind {
        Kind::MetaGet => "EN",
        _ => "HD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_and_everything_else_is_a_placeholder() {
        for (line, text) in [
            ("set user:1 0 300 5", "set user:1 ? ? ?"),
            ("set user:1 0 300 5 noreply", "set user:1 ? ? ? noreply"),
            ("cas k 1 2 3 99", "cas k ? ? ? ?"),
            ("get a b c", "get a b c"),
            ("gat 60 a b", "gat ? a b"),
            ("incr hits 5", "incr hits ?"),
            ("delete k noreply", "delete k noreply"),
            ("mg foo v t k O123 q", "mg foo v t k O q"),
            ("ms foo 5 T60 F3", "ms foo ? T F"),
            ("stats slabs", "stats slabs"),
            ("version", "version"),
        ] {
            assert_eq!(parse(line.as_bytes()).expect(line).text, text, "{line}");
        }
    }

    #[test]
    fn blocks_replies_and_keys() {
        let set = parse(b"set k 0 0 12 noreply").expect("set");
        assert_eq!(
            (set.block, set.noreply, set.quiet),
            (Some(Some(12)), true, false)
        );
        let ms = parse(b"ms k 3 q").expect("ms");
        assert_eq!(
            (ms.block, ms.noreply, ms.quiet, ms.kind),
            (Some(Some(3)), true, true, Kind::MetaOther)
        );
        let get = parse(b"gets a b").expect("gets");
        assert_eq!(
            (get.kind, get.key_count, get.keys.clone()),
            (Kind::Retrieval, 2, vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(parse(b"set k 0 0 x").expect("bad").block, Some(None));
        assert!(parse(b"").is_none());
    }
}
