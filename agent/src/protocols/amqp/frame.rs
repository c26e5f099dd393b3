//! AMQP 0-9-1 framing of one direction of a connection: the protocol header
//! (`AMQP\x00\x00\x09\x01`) and frames (type, channel, payload size, payload, the `0xCE` end
//! byte), fed in pieces split at any byte, with gaps.
//!
//! A [`FrameReader`] keeps only the first bytes of each payload (what the caller asks for by
//! frame type: a method's arguments, a content header's properties, a body's prefix for the
//! message key) and skips the rest by its size, so a gap (bytes the kernel did not capture)
//! inside a payload costs nothing. A frame type that does not exist, a size beyond
//! [`MAX_FRAME`], a missing end byte or a gap that hides a frame boundary is an error: the reader
//! then stays damaged until [`FrameReader::resync`] finds a frame at the start of a later write.

/// Method frame.
pub const METHOD: u8 = 1;
/// Content header frame.
pub const HEADER: u8 = 2;
/// Content body frame.
pub const BODY: u8 = 3;
/// Heartbeat frame.
pub const HEARTBEAT: u8 = 8;
/// The frame end byte.
pub const FRAME_END: u8 = 0xCE;
/// The protocol header a client opens a connection with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Largest payload accepted (RabbitMQ negotiates at most 128 KiB by default; clients may ask
/// for more, never this much).
pub const MAX_FRAME: u32 = 64 * 1024 * 1024;
/// Type, channel, size.
const HEAD: usize = 7;

/// Why bytes are no AMQP frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("AMQP frame of unknown type {0}")]
    BadType(u8),
    #[error("AMQP frame of {0} bytes")]
    TooLarge(u32),
    #[error("AMQP frame not closed by 0xCE")]
    BadEnd,
    #[error("bytes not captured hid an AMQP frame boundary")]
    GapInFraming,
}

/// A complete frame, with the first bytes of its payload.
#[derive(Debug)]
pub struct Frame<'a> {
    pub kind: u8,
    pub channel: u16,
    /// The payload's full size.
    pub size: u32,
    /// Its first bytes, as many as asked for; fewer when a gap fell among them.
    pub kept: &'a [u8],
    /// A gap fell among the bytes to keep: `kept` stops there.
    pub cut: bool,
    /// Kernel time and thread of the frame's first byte.
    pub ts_ns: u64,
    pub tid: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame's head (or the protocol header).
    #[default]
    Head,
    /// Reading (keeping or skipping) the payload.
    Payload,
    /// Expecting the end byte.
    End,
    /// After an error: nothing is read until [`FrameReader::resync`].
    Damaged,
}

/// The framing state of one direction.
#[derive(Debug, Default)]
pub struct FrameReader {
    state: State,
    head: [u8; 8],
    head_len: usize,
    kind: u8,
    channel: u16,
    size: u32,
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes to keep of this frame.
    keep: usize,
    /// Payload bytes lost to a gap before `keep` was reached: the kept bytes stop there.
    kept_cut: bool,
    kept: Vec<u8>,
    ts_ns: u64,
    tid: u32,
}

/// Whether `bytes`, the start of a write, start a frame or the protocol header: a known type and
/// a plausible size, and the end byte where the size says when the frame is all there.
pub fn starts_frame(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"AMQP") {
        return bytes.len() < 8 || bytes.starts_with(PROTOCOL_HEADER);
    }
    let [kind, _, _, s0, s1, s2, s3, ..] = *bytes else {
        return false;
    };
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if !matches!(kind, METHOD | HEADER | BODY | HEARTBEAT) || size > MAX_FRAME {
        return false;
    }
    match bytes.get(HEAD + size as usize) {
        Some(&end) => end == FRAME_END,
        None => true,
    }
}

impl FrameReader {
    pub fn damaged(&self) -> bool {
        self.state == State::Damaged
    }

    /// Marks the direction damaged (the caller found its frames inconsistent).
    pub fn damage(&mut self) {
        self.state = State::Damaged;
        self.kept.clear();
    }

    /// A write starting with `bytes` arrived while damaged: reading starts again there if they
    /// start a frame. Returns whether it did.
    pub fn resync(&mut self, bytes: &[u8]) -> bool {
        if !starts_frame(bytes) {
            return false;
        }
        *self = FrameReader::default();
        true
    }

    /// Feeds bytes; `keep(kind)` says how many payload bytes of a frame of that type to keep;
    /// `on_frame` gets each complete frame. Stops at the first error (the reader is then
    /// damaged).
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        ts_ns: u64,
        tid: u32,
        keep: fn(u8, u16) -> usize,
        on_frame: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            match self.state {
                State::Damaged => return Ok(()),
                State::Head => {
                    if self.head_len == 0 {
                        self.ts_ns = ts_ns;
                        self.tid = tid;
                    }
                    let protocol_header = self.head[0] == b'A' && self.head_len > 0
                        || self.head_len == 0 && bytes[0] == b'A';
                    let want = if protocol_header { 8 } else { HEAD };
                    let n = (want - self.head_len).min(bytes.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                    self.head_len += n;
                    bytes = &bytes[n..];
                    if self.head_len < want {
                        continue;
                    }
                    self.head_len = 0;
                    if protocol_header {
                        if !self.head.starts_with(b"AMQP") {
                            return self.fail(FrameError::BadType(b'A'));
                        }
                        continue; // the protocol header: nothing to hand on
                    }
                    let [kind, c0, c1, s0, s1, s2, s3, _] = self.head;
                    if !matches!(kind, METHOD | HEADER | BODY | HEARTBEAT) {
                        return self.fail(FrameError::BadType(kind));
                    }
                    let size = u32::from_be_bytes([s0, s1, s2, s3]);
                    if size > MAX_FRAME {
                        return self.fail(FrameError::TooLarge(size));
                    }
                    self.kind = kind;
                    self.channel = u16::from_be_bytes([c0, c1]);
                    self.size = size;
                    self.remaining = u64::from(size);
                    self.keep = keep(kind, self.channel).min(size as usize);
                    self.kept.clear();
                    self.kept_cut = false;
                    self.state = if size == 0 {
                        State::End
                    } else {
                        State::Payload
                    };
                }
                State::Payload => {
                    let n = (self.remaining.min(bytes.len() as u64)) as usize;
                    if !self.kept_cut && self.kept.len() < self.keep {
                        let k = (self.keep - self.kept.len()).min(n);
                        self.kept.extend_from_slice(&bytes[..k]);
                    }
                    self.remaining -= n as u64;
                    bytes = &bytes[n..];
                    if self.remaining == 0 {
                        self.state = State::End;
                    }
                }
                State::End => {
                    if bytes[0] != FRAME_END {
                        return self.fail(FrameError::BadEnd);
                    }
                    bytes = &bytes[1..];
                    self.state = State::Head;
                    on_frame(Frame {
                        kind: self.kind,
                        channel: self.channel,
                        size: self.size,
                        kept: &self.kept,
                        cut: self.kept_cut,
                        ts_ns: self.ts_ns,
                        tid: self.tid,
                    });
                    self.kept.clear();
                }
            }
        }
        Ok(())
    }

    /// `len` bytes moved but were not captured. Free inside a payload; anywhere else they hide
    /// a frame boundary.
    pub fn on_gap(&mut self, len: u64) -> Result<(), FrameError> {
        match self.state {
            State::Damaged => Ok(()),
            State::Payload if len <= self.remaining => {
                if self.kept.len() < self.keep {
                    self.kept_cut = true;
                }
                self.remaining -= len;
                if self.remaining == 0 {
                    self.state = State::End;
                }
                Ok(())
            }
            _ => self.fail(FrameError::GapInFraming),
        }
    }

    fn fail(&mut self, error: FrameError) -> Result<(), FrameError> {
        self.damage();
        Err(error)
    }
}
