//! Framing shared by the line-based text protocols (memcached, NATS): lines ending in `\r\n`,
//! some followed by a data block whose length the line gave. One [`LineReader`] per direction;
//! data blocks are skipped by their length (at most a requested prefix is kept), so a gap inside
//! one costs nothing.

/// Longest line accepted (memcached's own limit for a command line is 2048 bytes plus keys;
/// a NATS `INFO` line is a few KiB).
pub const MAX_LINE: usize = 8192;

/// What a direction delivers.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A line without its `\r\n` (bytes beyond [`MAX_LINE`] are not kept), when it began, and
    /// its size on the wire.
    Line {
        text: Vec<u8>,
        start_ns: u64,
        tid: u32,
        size: u64,
    },
    /// The end of a data block announced by the previous line, its size (with the CRLF), and
    /// the prefix of it that was asked for.
    BlockEnd { size: u64, kept: Vec<u8> },
}

/// Bytes that are not the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

#[derive(Debug)]
enum State {
    Line {
        len: usize,
    },
    Block {
        remaining: u64,
        size: u64,
        keep: usize,
    },
}

/// One direction's reader.
#[derive(Debug)]
pub struct LineReader {
    state: State,
    line: Vec<u8>,
    /// The kept prefix of the data block being read.
    block: Vec<u8>,
    start_ns: u64,
    tid: u32,
}

impl Default for LineReader {
    fn default() -> Self {
        LineReader {
            state: State::Line { len: 0 },
            line: Vec::new(),
            block: Vec::new(),
            start_ns: 0,
            tid: 0,
        }
    }
}

impl LineReader {
    /// The next `len` bytes (and their CRLF) are a data block, of which the first `keep` bytes
    /// are handed over with its end (bytes a gap hid, and those after them, are not).
    pub fn expect_block(&mut self, len: u64, keep: usize) {
        self.block.clear();
        self.state = State::Block {
            remaining: len.saturating_add(2),
            size: 0,
            keep: keep.min(len as usize),
        };
    }

    /// Feeds bytes moved at `ts_ns`; `on_piece` gets each piece as it completes, and may call
    /// [`LineReader::expect_block`] (through the reader it is handed) after a line.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        ts_ns: u64,
        tid: u32,
        on_piece: &mut dyn FnMut(&mut LineReader, Piece),
    ) -> Result<(), FramingError> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Block {
                    remaining,
                    size,
                    keep,
                } => {
                    let take = (*remaining).min(bytes.len() as u64);
                    let room = keep.saturating_sub(self.block.len()).min(take as usize);
                    if *size as usize == self.block.len() {
                        self.block.extend_from_slice(&bytes[..room]);
                    }
                    *remaining -= take;
                    *size += take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        let size = *size;
                        self.state = State::Line { len: 0 };
                        let kept = std::mem::take(&mut self.block);
                        on_piece(self, Piece::BlockEnd { size, kept });
                    }
                }
                State::Line { len } => {
                    if *len == 0 {
                        self.start_ns = ts_ns;
                        self.tid = tid;
                        self.line.clear();
                    }
                    let newline = bytes.iter().position(|&b| b == b'\n');
                    let take = newline.map_or(bytes.len(), |i| i + 1);
                    let content = &bytes[..newline.unwrap_or(bytes.len())];
                    *len += take;
                    let size = *len as u64;
                    let room = MAX_LINE.saturating_sub(self.line.len()).min(content.len());
                    self.line.extend_from_slice(&content[..room]);
                    bytes = &bytes[take..];
                    if newline.is_none() {
                        if size as usize > MAX_LINE {
                            return Err(FramingError::LineTooLong);
                        }
                        continue;
                    }
                    self.state = State::Line { len: 0 };
                    let mut text = std::mem::take(&mut self.line);
                    if text.last() == Some(&b'\r') {
                        text.pop();
                    }
                    on_piece(
                        self,
                        Piece::Line {
                            text,
                            start_ns: self.start_ns,
                            tid: self.tid,
                            size,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// `len` bytes not captured: skipped inside a data block; false when they hide a line.
    pub fn on_gap(&mut self, len: u64, on_piece: &mut dyn FnMut(&mut LineReader, Piece)) -> bool {
        match &mut self.state {
            State::Block {
                remaining, size, ..
            } if *remaining >= len => {
                *remaining -= len;
                *size += len;
                if *remaining == 0 {
                    let size = *size;
                    self.state = State::Line { len: 0 };
                    let kept = std::mem::take(&mut self.block);
                    on_piece(self, Piece::BlockEnd { size, kept });
                }
                true
            }
            _ => len == 0,
        }
    }

    /// Forgets any partial piece.
    pub fn reset(&mut self) {
        *self = LineReader::default();
    }
}
