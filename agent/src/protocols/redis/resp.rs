//! RESP framing (RESP2 and RESP3): one direction of a Redis connection read as a stream of
//! top-level values, whatever the chunking.
//!
//! A [`RespReader`] is fed the bytes of one direction and appends a [`Value`] each time a
//! top-level value completes. It keeps only a summary of each value: its type, its length or
//! integer, a bounded prefix of a top-level string, and a bounded prefix of the first few direct
//! children of a top-level aggregate (a command's arguments, the kind of a pub/sub push).
//! Deeper values are framed and counted, never kept; bulk payloads are skipped by their length,
//! so bytes the kernel did not capture inside one ([`RespReader::on_gap`]) cost nothing.
//!
//! RESP3 attribute frames (`|`) are framed and dropped: they never count as a value, at the top
//! level or inside an aggregate. Inline commands (a plain line such as `PING`) are read on the
//! request direction only. Streamed strings and aggregates (`$?`, `*?`) are not supported: they
//! are an error, and the direction is lost until the parser finds the framing again.

/// Deepest aggregate nesting framed.
pub const MAX_DEPTH: usize = 32;
/// Longest line (type byte, length, simple string, error, inline command) accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Nested ids kept per reply ([`Value::nested_ids`]).
pub const MAX_NESTED_IDS: usize = 256;
/// Longest nested id kept: a stream entry id is at most 41 bytes (`u64-u64`).
pub const MAX_ID_BYTES: usize = 41;
/// Bytes of a line kept for a summary.
const MAX_KEPT_LINE: usize = 512;

/// What this direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Commands (arrays of bulk strings, or inline lines).
    Requests,
    /// Replies and pushes.
    Replies,
}

/// Bytes that are not RESP where a value should start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespError {
    #[error("unexpected RESP type byte {0:#04x}")]
    Type(u8),
    #[error("malformed RESP length or number")]
    Number,
    #[error("RESP line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("RESP aggregates nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("streamed RESP3 values are not supported")]
    Streamed,
}

/// A complete top-level value, summarized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Value {
    /// The RESP type byte (`*`, `$`, `+`, `-`, `>`, ...); `0` for an inline command.
    pub kind: u8,
    /// `$-1`, `*-1` or `_`.
    pub nil: bool,
    /// Integer value (`:`), bulk length, or number of direct children of an aggregate.
    pub len: i64,
    /// A top-level string's prefix (simple string, error line, bulk payload).
    pub text: Vec<u8>,
    /// The first direct children of a top-level aggregate, as kept prefixes (strings and
    /// numbers as sent; other children as empty entries).
    pub elements: Vec<Vec<u8>>,
    /// The full length of each kept element (a bulk string's announced length).
    pub element_lens: Vec<u64>,
    /// Short strings that open an aggregate nested three or more deep in a reply (at most
    /// [`MAX_NESTED_IDS`] of [`MAX_ID_BYTES`] bytes or less): the entry ids of an `XREAD` or
    /// `XREADGROUP` reply, among field names.
    pub nested_ids: Vec<Vec<u8>>,
    /// Direct children that were nil.
    pub nil_children: u32,
    /// Direct children seen.
    pub children: u32,
    /// Bytes the value took on the wire.
    pub size: u64,
    /// Kernel time of the chunk holding its first byte, and the thread that moved it.
    pub start_ns: u64,
    pub tid: u32,
    /// Kernel time of the chunk holding its last byte, and the thread.
    pub end_ns: u64,
    pub end_tid: u32,
}

impl Value {
    /// An error reply (`-ERR ...` or a RESP3 blob error).
    pub fn is_error(&self) -> bool {
        matches!(self.kind, b'-' | b'!')
    }

    /// An aggregate (array, map, set, push).
    pub fn is_aggregate(&self) -> bool {
        matches!(self.kind, b'*' | b'%' | b'~' | b'>')
    }

    /// The first kept element, lower-cased, when it is short ASCII (`message`, `subscribe`).
    pub fn first_word(&self) -> Option<String> {
        let first = self.elements.first()?;
        (first.len() <= 16 && first.is_ascii())
            .then(|| String::from_utf8_lossy(first).to_ascii_lowercase())
    }
}

/// An open aggregate.
#[derive(Debug)]
struct Open {
    /// Children still to come.
    remaining: u64,
    /// Children in all (the first is coming while `remaining == total`).
    total: u64,
    /// An attribute frame: it does not count as a child of its parent.
    attribute: bool,
}

/// The string being read.
#[derive(Debug)]
enum Reading {
    /// A line: `len` bytes so far (the kept ones are in `line`).
    Line { len: usize },
    /// A bulk payload and its CRLF: `remaining` bytes to go; `keep`: where its bytes go.
    Bulk { remaining: u64, keep: Keep },
}

/// Where a string's bytes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    Nowhere,
    /// The top-level value's `text`.
    Text,
    /// The last of the top-level aggregate's `elements`.
    Element,
    /// The last of the `nested_ids`.
    Nested,
}

/// One direction's RESP reader.
#[derive(Debug)]
pub struct RespReader {
    role: Role,
    /// Direct children of a top-level aggregate kept, and bytes kept of each.
    keep_elements: usize,
    keep_bytes: usize,
    reading: Reading,
    line: Vec<u8>,
    stack: Vec<Open>,
    value: Value,
    /// A value has begun (its start time is set).
    begun: bool,
    /// Stop keeping elements of this value (a command whose arguments are secrets).
    withheld: bool,
}

/// Commands whose arguments are never kept, not even in memory: credentials.
const SECRET_COMMANDS: &[&[u8]] = &[b"auth", b"hello", b"migrate"];

impl RespReader {
    pub fn new(role: Role, keep_elements: usize, keep_bytes: usize) -> Self {
        RespReader {
            role,
            keep_elements,
            keep_bytes,
            reading: Reading::Line { len: 0 },
            line: Vec::new(),
            stack: Vec::new(),
            value: Value::default(),
            begun: false,
            withheld: false,
        }
    }

    /// Forgets any partial value: the next byte starts a new one.
    pub fn reset(&mut self) {
        self.reading = Reading::Line { len: 0 };
        self.line.clear();
        self.stack.clear();
        self.value = Value::default();
        self.begun = false;
        self.withheld = false;
    }

    /// Feeds bytes moved at `ts_ns` by `tid`; complete values are appended to `out`. After an
    /// error the reader is left mid-value: the caller resets it where framing is found again.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        ts_ns: u64,
        tid: u32,
        out: &mut Vec<Value>,
    ) -> Result<(), RespError> {
        while !bytes.is_empty() {
            if !self.begun {
                self.begun = true;
                self.value.start_ns = ts_ns;
                self.value.tid = tid;
            }
            match &mut self.reading {
                Reading::Bulk { remaining, keep } => {
                    let take = (*remaining).min(bytes.len() as u64) as usize;
                    // Payload bytes are those before the final CRLF.
                    let payload = (*remaining).saturating_sub(2).min(take as u64) as usize;
                    let keep = *keep;
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    self.keep_bytes_of(keep, &bytes[..payload]);
                    self.value.size += take as u64;
                    bytes = &bytes[take..];
                    if done {
                        self.reading = Reading::Line { len: 0 };
                        self.complete(false, false, ts_ns, tid, out);
                    }
                }
                Reading::Line { len } => {
                    let newline = bytes.iter().position(|&b| b == b'\n');
                    let take = newline.map_or(bytes.len(), |i| i + 1);
                    let content = &bytes[..newline.unwrap_or(bytes.len())];
                    *len += take;
                    let too_long = *len > MAX_LINE;
                    let room = MAX_KEPT_LINE
                        .saturating_sub(self.line.len())
                        .min(content.len());
                    self.line.extend_from_slice(&content[..room]);
                    self.value.size += take as u64;
                    bytes = &bytes[take..];
                    if too_long {
                        return Err(RespError::LineTooLong);
                    }
                    if newline.is_some() {
                        if self.line.last() == Some(&b'\r') {
                            self.line.pop();
                        }
                        let line = std::mem::take(&mut self.line);
                        self.reading = Reading::Line { len: 0 };
                        let result = self.on_line(&line, ts_ns, tid, out);
                        self.line = line;
                        self.line.clear();
                        result?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `len` bytes moved that were not captured. False when they cannot be skipped (they are
    /// not all inside one bulk payload): the direction's framing is lost.
    pub fn on_gap(&mut self, len: u64, ts_ns: u64, tid: u32, out: &mut Vec<Value>) -> bool {
        match &mut self.reading {
            Reading::Bulk { remaining, .. } if *remaining >= len => {
                *remaining -= len;
                self.value.size += len;
                if *remaining == 0 {
                    self.reading = Reading::Line { len: 0 };
                    self.complete(false, false, ts_ns, tid, out);
                }
                true
            }
            _ => len == 0,
        }
    }

    fn keep_bytes_of(&mut self, keep: Keep, bytes: &[u8]) {
        let target = match keep {
            Keep::Nowhere => return,
            Keep::Text => &mut self.value.text,
            Keep::Element => match self.value.elements.last_mut() {
                Some(e) => e,
                None => return,
            },
            Keep::Nested => match self.value.nested_ids.last_mut() {
                Some(e) => {
                    let room = MAX_ID_BYTES.saturating_sub(e.len()).min(bytes.len());
                    e.extend_from_slice(&bytes[..room]);
                    return;
                }
                None => return,
            },
        };
        let room = self
            .keep_bytes
            .saturating_sub(target.len())
            .min(bytes.len());
        target.extend_from_slice(&bytes[..room]);
    }

    /// The string being kept is `len` bytes long; returns where its bytes go (a nested string
    /// too long for an id is not kept).
    fn set_element_len(&mut self, keep: Keep, len: u64) -> Keep {
        match keep {
            Keep::Element => {
                if let Some(last) = self.value.element_lens.last_mut() {
                    *last = len;
                }
                keep
            }
            Keep::Nested if len > MAX_ID_BYTES as u64 => {
                self.value.nested_ids.pop();
                Keep::Nowhere
            }
            _ => keep,
        }
    }

    /// Where the string starting now is kept: the top-level value itself, one of the first
    /// direct children of a top-level aggregate, or nowhere.
    fn keep_for_new_string(&mut self) -> Keep {
        match self.stack.as_slice() {
            [] => Keep::Text,
            [top]
                if !top.attribute
                    && !self.withheld
                    && self.value.elements.len() < self.keep_elements =>
            {
                self.value.elements.push(Vec::new());
                self.value.element_lens.push(0);
                Keep::Element
            }
            [_, _, .., parent]
                if self.role == Role::Replies
                    && !parent.attribute
                    && parent.remaining == parent.total
                    && self.value.nested_ids.len() < MAX_NESTED_IDS =>
            {
                self.value.nested_ids.push(Vec::new());
                Keep::Nested
            }
            _ => Keep::Nowhere,
        }
    }

    fn on_line(
        &mut self,
        line: &[u8],
        ts_ns: u64,
        tid: u32,
        out: &mut Vec<Value>,
    ) -> Result<(), RespError> {
        let Some((&kind, rest)) = line.split_first() else {
            if self.stack.is_empty() {
                // An empty line between commands (inline protocol): nothing.
                self.begun = false;
                self.value = Value::default();
                return Ok(());
            }
            return Err(RespError::Type(b'\n'));
        };
        if self.stack.is_empty() {
            self.value.kind = kind;
        }
        match kind {
            b'+' | b'-' | b':' | b'#' | b',' | b'(' | b'_' => {
                let keep = self.keep_for_new_string();
                let keep = self.set_element_len(keep, rest.len() as u64);
                self.keep_bytes_of(keep, rest);
                if kind == b':' && self.stack.is_empty() {
                    self.value.len = number(rest)?;
                }
                self.complete(kind == b'_', false, ts_ns, tid, out);
            }
            b'$' | b'=' | b'!' => {
                if rest == b"?" {
                    return Err(RespError::Streamed);
                }
                let n = number(rest)?;
                if n < 0 {
                    if self.stack.len() == 1 {
                        let _ = self.keep_for_new_string(); // keeps elements aligned with children
                    }
                    self.complete(true, false, ts_ns, tid, out);
                } else {
                    if self.stack.is_empty() {
                        self.value.len = n;
                    }
                    let keep = self.keep_for_new_string();
                    let keep = self.set_element_len(keep, n as u64);
                    self.reading = Reading::Bulk {
                        remaining: n as u64 + 2,
                        keep,
                    };
                }
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                if rest == b"?" {
                    return Err(RespError::Streamed);
                }
                let n = number(rest)?;
                let attribute = kind == b'|';
                if n < 0 {
                    if self.stack.len() == 1 && !attribute {
                        let _ = self.keep_for_new_string();
                    }
                    self.complete(true, attribute, ts_ns, tid, out);
                    return Ok(());
                }
                if self.stack.is_empty() {
                    self.value.len = n;
                }
                let children = if matches!(kind, b'%' | b'|') {
                    (n as u64).saturating_mul(2)
                } else {
                    n as u64
                };
                if self.stack.len() == 1 && !attribute {
                    // An aggregate child is kept as an empty element.
                    let _ = self.keep_for_new_string();
                }
                if children == 0 {
                    self.complete(false, attribute, ts_ns, tid, out);
                } else {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(RespError::TooDeep);
                    }
                    self.stack.push(Open {
                        remaining: children,
                        total: children,
                        attribute,
                    });
                }
            }
            _ if self.stack.is_empty() && self.role == Role::Requests => {
                // An inline command: words separated by spaces.
                self.value.kind = 0;
                for word in line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                {
                    if self.withheld || self.value.elements.len() >= self.keep_elements {
                        self.value.children += 1;
                        continue;
                    }
                    let cut = word.len().min(self.keep_bytes);
                    self.value.elements.push(word[..cut].to_vec());
                    self.value.element_lens.push(word.len() as u64);
                    self.value.children += 1;
                    self.check_secret();
                }
                self.value.len = i64::from(self.value.children);
                self.emit(ts_ns, tid, out);
            }
            other => return Err(RespError::Type(other)),
        }
        Ok(())
    }

    /// After a command's first argument: its arguments are kept only if it is no secret.
    fn check_secret(&mut self) {
        if self.role == Role::Requests && self.value.elements.len() == 1 {
            let name = &self.value.elements[0];
            if SECRET_COMMANDS.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                self.withheld = true;
            }
        }
    }

    /// A value at the current depth completed; aggregates it completes complete in turn.
    fn complete(
        &mut self,
        mut nil: bool,
        mut attribute: bool,
        ts_ns: u64,
        tid: u32,
        out: &mut Vec<Value>,
    ) {
        loop {
            let depth = self.stack.len();
            let Some(parent) = self.stack.last_mut() else {
                if attribute {
                    // An attribute frame before a reply: the reply is what follows.
                    let (start_ns, start_tid, size) =
                        (self.value.start_ns, self.value.tid, self.value.size);
                    self.value = Value {
                        start_ns,
                        tid: start_tid,
                        size,
                        ..Value::default()
                    };
                    return;
                }
                self.value.nil = nil;
                self.emit(ts_ns, tid, out);
                return;
            };
            if attribute {
                return; // an attribute inside an aggregate is no child of it
            }
            parent.remaining -= 1;
            let open = parent.remaining > 0;
            if depth == 1 {
                self.value.children += 1;
                if nil {
                    self.value.nil_children += 1;
                }
                self.check_secret();
            }
            if open {
                return;
            }
            let done = self.stack.pop();
            attribute = done.is_some_and(|d| d.attribute);
            nil = false;
        }
    }

    fn emit(&mut self, ts_ns: u64, tid: u32, out: &mut Vec<Value>) {
        let mut value = std::mem::take(&mut self.value);
        value.end_ns = ts_ns;
        value.end_tid = tid;
        self.begun = false;
        self.withheld = false;
        out.push(value);
    }
}

/// A RESP length or integer.
fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(RespError::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(role: Role, bytes: &[u8]) -> Vec<Value> {
        let mut whole = Vec::new();
        let mut r = RespReader::new(role, 4, 16);
        r.feed(bytes, 1, 1, &mut whole).expect("whole");
        for cut in 1..bytes.len() {
            let mut out = Vec::new();
            let mut r = RespReader::new(role, 4, 16);
            r.feed(&bytes[..cut], 1, 1, &mut out).expect("first part");
            r.feed(&bytes[cut..], 1, 1, &mut out).expect("second part");
            assert_eq!(out, whole, "split at {cut}");
        }
        whole
    }

    #[test]
    fn a_command_keeps_its_first_arguments() {
        let out = read(
            Role::Requests,
            b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$5\r\nhello\r\n",
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].elements,
            [b"SET".to_vec(), b"user:1".to_vec(), b"hello".to_vec()]
        );
        assert_eq!(out[0].children, 3);
    }

    #[test]
    fn credentials_are_never_kept() {
        let out = read(
            Role::Requests,
            b"*3\r\n$4\r\nAUTH\r\n$5\r\nadmin\r\n$6\r\ns3cret\r\nAUTH pw\r\n",
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].elements, [b"AUTH".to_vec()]);
        assert_eq!(out[0].children, 3);
        assert_eq!(out[1].elements, [b"AUTH".to_vec()]);
    }

    #[test]
    fn replies_of_every_type() {
        let bytes = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n$3\r\nabc\r\n*2\r\n$1\r\na\r\n$-1\r\n_\r\n%1\r\n+k\r\n*1\r\n:1\r\n\
|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\np\r\n*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n";
        let out = read(Role::Replies, bytes);
        let kinds: Vec<u8> = out.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, b"+-:$$*_%$>*".to_vec());
        assert_eq!(out[2].len, 42);
        assert!(out[3].nil);
        assert_eq!(out[4].text, b"abc");
        assert_eq!((out[5].children, out[5].nil_children), (2, 1));
        assert!(out[6].nil);
        assert_eq!(out[8].text, b"x", "the attribute frame is no reply");
        assert_eq!(out[9].first_word().as_deref(), Some("message"));
        assert_eq!(
            out[10].children, 2,
            "an attribute inside an aggregate is no child"
        );
    }

    #[test]
    fn a_gap_inside_a_bulk_payload_is_skipped() {
        let mut r = RespReader::new(Role::Replies, 4, 16);
        let mut out = Vec::new();
        r.feed(b"$100\r\n0123456789", 1, 1, &mut out).expect("head");
        assert!(r.on_gap(80, 2, 1, &mut out));
        r.feed(b"0123456789\r\n+OK\r\n", 3, 1, &mut out)
            .expect("tail");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len, 100);
        assert_eq!(out[0].size, 108);
        assert!(
            !r.on_gap(10, 4, 1, &mut out),
            "a gap between values hides framing"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut r = RespReader::new(Role::Replies, 4, 16);
        assert_eq!(
            r.feed(b"GET x\r\n", 1, 1, &mut Vec::new()),
            Err(RespError::Type(b'G'))
        );
        let mut r = RespReader::new(Role::Requests, 4, 16);
        assert_eq!(
            r.feed(b"*x\r\n", 1, 1, &mut Vec::new()),
            Err(RespError::Number)
        );
    }
}
