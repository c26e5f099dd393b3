//! What a Redis command is, from its kept arguments: its name, its literal-free text (keys kept,
//! every value `?`), what it reads (for hit/miss) and how many replies it gets.
//!
//! Which arguments are keys follows the command table of Redis 7 for the commands applications
//! use (strings, hashes, lists, sets, sorted sets, streams, pub/sub, scripting): the first
//! argument by default; every argument (`DEL`, `MGET`, `SUBSCRIBE`, ...); every other one
//! (`MSET`); all but the last (`BLPOP`); the first two (`RENAME`, `LMOVE`); `numkeys` of them
//! (`EVAL`); the first half after `STREAMS` (`XREAD`). Option keywords (`EX`, `NX`, `WITHSCORES`,
//! ...) are kept, a subcommand (`CONFIG GET`, `CLIENT SETNAME`) too. `AUTH` and `HELLO` are their
//! name alone: their arguments are never read.

/// The longest text rendered; longer ones end with `…`.
pub const MAX_TEXT: usize = 1024;

/// What a command reads, for the hit/miss of its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Not a read (or not one hit/miss means anything for).
    No,
    /// One value: a nil reply is a miss.
    One,
    /// One value per key (`MGET`, `HMGET`): nil elements are misses.
    PerKey,
    /// A collection (`HGETALL`, `SMEMBERS`): an empty one is a miss.
    Collection,
}

/// How many replies a command gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replies {
    One,
    /// One per channel (`SUBSCRIBE a b` → two), each a push whose first element is the
    /// command's name in lower case.
    PerChannel(u32),
    /// `UNSUBSCRIBE` without channels: one per channel left, the last one saying 0 remain.
    UntilNoneLeft,
}

/// A command, as a span shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Upper-case name (`GET`, `CLIENT`); `UNKNOWN` when it is not a word.
    pub name: String,
    /// `db.query.text`.
    pub text: String,
    pub read: Read,
    pub replies: Replies,
    /// `SELECT n`: the database later commands use.
    pub selects: Option<u32>,
}

const ALL_KEYS: &[&str] = &[
    "DEL",
    "UNLINK",
    "EXISTS",
    "TOUCH",
    "MGET",
    "WATCH",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SSUBSCRIBE",
    "SUNSUBSCRIBE",
    "SINTER",
    "SUNION",
    "SDIFF",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "PFCOUNT",
    "PFMERGE",
];
const NO_KEYS: &[&str] = &[
    "PING",
    "ECHO",
    "SELECT",
    "MULTI",
    "EXEC",
    "DISCARD",
    "FLUSHDB",
    "FLUSHALL",
    "DBSIZE",
    "QUIT",
    "RESET",
    "TIME",
    "INFO",
    "SCAN",
    "RANDOMKEY",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "LASTSAVE",
    "ROLE",
    "READONLY",
    "READWRITE",
    "WAIT",
    "SWAPDB",
    "SHUTDOWN",
    "MONITOR",
    "SYNC",
    "PSYNC",
    "REPLCONF",
    "FAILOVER",
    "UNWATCH",
];
const FIRST_TWO_KEYS: &[&str] = &[
    "RENAME",
    "RENAMENX",
    "RPOPLPUSH",
    "BRPOPLPUSH",
    "LMOVE",
    "BLMOVE",
    "SMOVE",
    "COPY",
    "ZRANGESTORE",
    "GEOSEARCHSTORE",
];
const ALL_BUT_LAST_KEYS: &[&str] = &["BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"];
const EVERY_OTHER_KEY: &[&str] = &["MSET", "MSETNX"];
const NUMKEYS_SECOND: &[&str] = &[
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
];
/// Commands whose first argument is a subcommand (kept), with where their key is, if any.
const CONTAINERS: &[(&str, Option<usize>)] = &[
    ("CLIENT", None),
    ("CONFIG", None),
    ("CLUSTER", None),
    ("COMMAND", None),
    ("SCRIPT", None),
    ("FUNCTION", None),
    ("ACL", None),
    ("LATENCY", None),
    ("MODULE", None),
    ("SLOWLOG", None),
    ("DEBUG", None),
    ("PUBSUB", None),
    ("MEMORY", Some(2)),
    ("OBJECT", Some(2)),
    ("XINFO", Some(2)),
    ("XGROUP", Some(2)),
];
/// Words kept wherever they appear (options, not values).
const KEYWORDS: &[&str] = &[
    "EX",
    "PX",
    "EXAT",
    "PXAT",
    "NX",
    "XX",
    "GT",
    "LT",
    "CH",
    "INCR",
    "KEEPTTL",
    "GET",
    "PERSIST",
    "WITHSCORES",
    "WITHSCORE",
    "LIMIT",
    "COUNT",
    "BLOCK",
    "STREAMS",
    "GROUP",
    "NOACK",
    "MATCH",
    "TYPE",
    "BYSCORE",
    "BYLEX",
    "REV",
    "LEFT",
    "RIGHT",
    "BEFORE",
    "AFTER",
    "MAXLEN",
    "MINID",
    "NOMKSTREAM",
    "ASC",
    "DESC",
    "ALPHA",
    "BY",
    "STORE",
    "WEIGHTS",
    "AGGREGATE",
    "SUM",
    "MIN",
    "MAX",
    "REPLACE",
    "ABSTTL",
    "IDLETIME",
    "FREQ",
    "JUSTID",
    "FORCE",
    "WITHVALUES",
    "IDX",
    "LEN",
    "MINMATCHLEN",
    "WITHMATCHLEN",
    "RANK",
    "FIELDS",
    "FXX",
    "FNX",
];
const READ_ONE: &[&str] = &[
    "GET",
    "GETEX",
    "GETDEL",
    "HGET",
    "LINDEX",
    "ZSCORE",
    "ZRANK",
    "ZREVRANK",
    "LPOP",
    "RPOP",
    "SPOP",
    "SRANDMEMBER",
    "HRANDFIELD",
    "GETSET",
    "JSON.GET",
];
const READ_PER_KEY: &[&str] = &["MGET", "HMGET"];
const READ_COLLECTION: &[&str] = &[
    "HGETALL",
    "SMEMBERS",
    "LRANGE",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZREVRANGE",
    "XRANGE",
    "XREVRANGE",
    "HKEYS",
    "HVALS",
];

/// The command of a request whose first kept arguments are `args` and that had `argc`
/// arguments in all (the command name included).
pub fn command(args: &[Vec<u8>], argc: u32) -> Command {
    let name = args
        .first()
        .map(|a| upper_word(a))
        .unwrap_or_else(|| "UNKNOWN".to_owned());
    let n = name.as_str();
    let argc = argc as usize;
    let read = if READ_ONE.contains(&n) {
        Read::One
    } else if READ_PER_KEY.contains(&n) {
        Read::PerKey
    } else if READ_COLLECTION.contains(&n) {
        Read::Collection
    } else {
        Read::No
    };
    let replies = match n {
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => {
            Replies::PerChannel(argc.saturating_sub(1).max(1) as u32)
        }
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" if argc <= 1 => Replies::UntilNoneLeft,
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => {
            Replies::PerChannel(argc.saturating_sub(1) as u32)
        }
        _ => Replies::One,
    };
    let selects = (n == "SELECT")
        .then(|| {
            args.get(1)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
        })
        .flatten();
    Command {
        text: text(&name, args, argc),
        name,
        read,
        replies,
        selects,
    }
}

/// `db.query.text`: the name, then each argument as itself when it is a key, a subcommand or
/// an option keyword, else `?`.
fn text(name: &str, args: &[Vec<u8>], argc: usize) -> String {
    let mut text = name.to_owned();
    if matches!(name, "AUTH" | "HELLO" | "MIGRATE") || name == "UNKNOWN" {
        return text;
    }
    let container = CONTAINERS.iter().find(|(c, _)| *c == name);
    let streams_at = (name == "XREAD" || name == "XREADGROUP")
        .then(|| args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")))
        .flatten();
    let numkeys = NUMKEYS_SECOND
        .contains(&name)
        .then(|| {
            args.get(2)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse::<usize>().ok())
        })
        .flatten()
        .unwrap_or(0);
    for i in 1..argc {
        let Some(arg) = args.get(i) else {
            text.push_str(" …");
            break;
        };
        let is_key = if let Some((_, key_at)) = container {
            *key_at == Some(i)
        } else if let Some(s) = streams_at {
            i > s && i - s <= argc.saturating_sub(s + 1) / 2
        } else if NO_KEYS.contains(&name) {
            false
        } else if ALL_KEYS.contains(&name) {
            true
        } else if FIRST_TWO_KEYS.contains(&name) {
            i <= 2
        } else if ALL_BUT_LAST_KEYS.contains(&name) {
            i + 1 < argc
        } else if EVERY_OTHER_KEY.contains(&name) {
            i % 2 == 1
        } else if NUMKEYS_SECOND.contains(&name) {
            // `numkeys` comes off the wire: any number, `usize::MAX` included.
            i >= 3 && i - 3 < numkeys
        } else {
            i == 1
        };
        let shown = is_key
            || (container.is_some() && i == 1)
            || (NUMKEYS_SECOND.contains(&name) && i == 2)
            || is_keyword(arg);
        text.push(' ');
        if !shown {
            text.push('?');
        } else if (container.is_some() && i == 1) || !is_key {
            text.push_str(&upper_word(arg));
        } else {
            push_key(&mut text, arg);
        }
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
            break;
        }
    }
    text
}

fn is_keyword(arg: &[u8]) -> bool {
    arg.len() <= 12
        && KEYWORDS
            .iter()
            .any(|k| k.as_bytes().eq_ignore_ascii_case(arg))
}

/// A word in upper case; `UNKNOWN` when it is not a short printable ASCII word.
fn upper_word(arg: &[u8]) -> String {
    if arg.is_empty() || arg.len() > 32 || !arg.iter().all(|b| b.is_ascii_graphic()) {
        return "UNKNOWN".to_owned();
    }
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// A key as text: printable bytes as they are, others (and spaces) escaped as `\xNN`.
fn push_key(text: &mut String, key: &[u8]) {
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == ' ' {
                text.push_str(&format!("\\x{:02x}", c as u32 & 0xff));
            } else {
                text.push(c);
            }
        }
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &str) -> Command {
        let args: Vec<Vec<u8>> = words.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        command(&args, args.len() as u32)
    }

    #[test]
    fn keys_are_kept_and_values_are_not() {
        for (sent, text) in [
            ("set user:1 secret EX 60", "SET user:1 ? EX ?"),
            ("GET user:1", "GET user:1"),
            ("HSET h field value", "HSET h ? ?"),
            ("MSET a 1 b 2", "MSET a ? b ?"),
            ("MGET a b c", "MGET a b c"),
            ("DEL a b", "DEL a b"),
            ("BLPOP q1 q2 5", "BLPOP q1 q2 ?"),
            ("LMOVE src dst LEFT RIGHT", "LMOVE src dst LEFT RIGHT"),
            (
                "EVAL return_redis.call('get',KEYS[1]) 1 k arg",
                "EVAL ? 1 k ?",
            ),
            (
                "XREAD COUNT 10 STREAMS s1 s2 0 0",
                "XREAD COUNT ? STREAMS s1 s2 ? ?",
            ),
            ("CONFIG SET requirepass hunter2", "CONFIG SET ? ?"),
            ("OBJECT ENCODING k", "OBJECT ENCODING k"),
            ("PUBLISH news hello", "PUBLISH news ?"),
            ("SELECT 2", "SELECT ?"),
            ("AUTH user hunter2", "AUTH"),
            ("HELLO 3 AUTH user hunter2", "HELLO"),
            ("ZADD z 1 m", "ZADD z ? ?"),
            ("PING", "PING"),
        ] {
            assert_eq!(cmd(sent).text, text, "{sent}");
        }
    }

    #[test]
    fn reads_replies_and_select() {
        assert_eq!(cmd("GET k").read, Read::One);
        assert_eq!(cmd("MGET a b").read, Read::PerKey);
        assert_eq!(cmd("HGETALL h").read, Read::Collection);
        assert_eq!(cmd("SET k v").read, Read::No);
        assert_eq!(cmd("SUBSCRIBE a b").replies, Replies::PerChannel(2));
        assert_eq!(cmd("UNSUBSCRIBE").replies, Replies::UntilNoneLeft);
        assert_eq!(cmd("SELECT 3").selects, Some(3));
        assert_eq!(cmd("get k").name, "GET");
    }

    #[test]
    fn long_and_odd_keys() {
        let key = "k".repeat(2000);
        let c = cmd(&format!("GET {key}"));
        assert!(
            c.text.len() <= MAX_TEXT + 4 && c.text.ends_with('…'),
            "{}",
            c.text
        );
        let c = command(&[b"GET".to_vec(), b"a\x00\xffb".to_vec()], 2);
        assert_eq!(c.text, "GET a\\x00\\xffb");
        let c = command(&[b"GET".to_vec()], 5);
        assert_eq!(c.text, "GET …", "arguments that were not kept");
    }

    /// A `numkeys` as large as the wire can say (found by the fuzz target: `3 + numkeys`
    /// overflowed) makes every later argument a key.
    #[test]
    fn numkeys_at_its_largest() {
        assert_eq!(
            cmd("EVAL s 18446744073709551615 k1 k2").text,
            "EVAL ? 18446744073709551615 k1 k2"
        );
        assert_eq!(cmd("FCALL f 0 a").text, "FCALL ? 0 ?");
    }
}
