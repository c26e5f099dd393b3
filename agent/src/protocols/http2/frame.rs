//! HTTP/2 framing (RFC 9113 §4): one direction's byte stream cut into frames.
//!
//! A [`FrameReader`] is fed the chunks and gaps of one direction and hands out each [`Frame`]
//! once its last byte moved. It keeps the payload of the frames whose contents matter (header
//! blocks, `RST_STREAM`, `GOAWAY`, the pad length of `DATA`) up to [`MAX_KEPT_PAYLOAD`] bytes and
//! only counts the rest, so a 1 MB `DATA` frame costs nothing and a gap inside it loses nothing.
//!
//! A gap that runs past the frame being read, or a chunk that does not start like frames where
//! one was expected, loses the framing: the reader then skips chunks until one starts with a
//! plausible run of frame headers ([`plausible`]) and says so ([`Fed::lost`]), so that the HPACK
//! state of the direction can be forgotten. A reader made for a connection seen mid-way starts
//! that way.
//!
//! It also skips the client's connection preface (`PRI * HTTP/2.0...`) at the start of a stream.

use super::Chunk;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// Most payload bytes kept of one frame; a larger header block is lost (counted by the parser).
pub const MAX_KEPT_PAYLOAD: usize = 64 * 1024;
/// Largest frame length accepted as plausible when finding the framing again
/// (SETTINGS_MAX_FRAME_SIZE's maximum is 2^24-1; real peers stay near 16 KiB).
const MAX_PLAUSIBLE_LEN: u32 = 1 << 20;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Payload bytes worth keeping.
    fn keep(&self) -> usize {
        match self.kind {
            kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE => self.len as usize,
            kind::RST_STREAM | kind::GOAWAY => 8,
            kind::DATA if self.has(flag::PADDED) => 1,
            _ => 0,
        }
    }
}

/// True when `h` could be a frame a peer sends: a known type with a length and stream its type
/// allows. Used only to find the framing again; unknown types (allowed by the RFC) are not
/// accepted here.
pub fn plausible(h: &FrameHeader) -> bool {
    if h.len > MAX_PLAUSIBLE_LEN {
        return false;
    }
    let on_stream = h.stream != 0;
    match h.kind {
        kind::DATA | kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE => on_stream,
        kind::PRIORITY => on_stream && h.len == 5,
        kind::RST_STREAM => on_stream && h.len == 4,
        kind::SETTINGS => !on_stream && h.len.is_multiple_of(6) && (h.flags & !flag::ACK) == 0,
        kind::PING => !on_stream && h.len == 8 && (h.flags & !flag::ACK) == 0,
        kind::GOAWAY => !on_stream && h.len >= 8,
        kind::WINDOW_UPDATE => h.len == 4,
        _ => false,
    }
}

/// True when `bytes` (the start of a chunk) start with frame headers that are all plausible, as
/// far as the chunk goes (at least one whole header).
pub fn plausible_run(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    let mut seen = 0;
    while let Some(head) = bytes.get(at..at + HEADER_LEN) {
        let Ok(head) = <&[u8; HEADER_LEN]>::try_from(head) else { return false };
        let h = FrameHeader::parse(head);
        if !plausible(&h) {
            return false;
        }
        seen += 1;
        at += HEADER_LEN + h.len as usize;
    }
    seen > 0
}

/// Where the framing starts again in a chunk that follows lost bytes: at its start when it
/// starts with plausible frames ([`plausible_run`]); else (the end of a syscall after a gap, as
/// the kernel captures it) at the first offset from which plausible frames end exactly where the
/// chunk ends (writers write whole frames), with stream ids below 2^20.
pub fn find_framing(bytes: &[u8]) -> Option<usize> {
    if plausible_run(bytes) {
        return Some(0);
    }
    (1..bytes.len().saturating_sub(HEADER_LEN - 1)).find(|&at| ends_with_frames(bytes.get(at..).unwrap_or_default()))
}

/// True when `bytes` are whole plausible frames, the last ending where `bytes` end.
fn ends_with_frames(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + HEADER_LEN) {
        let Ok(head) = <&[u8; HEADER_LEN]>::try_from(head) else { return false };
        let h = FrameHeader::parse(head);
        if !plausible(&h) || h.stream >= 1 << 20 {
            return false;
        }
        at += HEADER_LEN + h.len as usize;
        if at == bytes.len() {
            return true;
        }
    }
    false
}

/// One frame, handed out when its last byte moved.
#[derive(Debug)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    /// The kept payload (see [`FrameHeader`]'s rules): the whole of a header block's frame.
    pub payload: &'a [u8],
    /// Every byte of the kept payload was seen (no gap inside it, not beyond the bound).
    pub complete: bool,
    /// When its first byte moved, and on which thread.
    pub start_ns: u64,
    pub tid: u32,
    /// When its last byte moved.
    pub end_ns: u64,
}

/// What a chunk or gap did to the framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of unknown content went by unread (the framing was lost, or bytes were skipped
    /// until it was found again).
    pub lost: bool,
}

struct Current {
    header: FrameHeader,
    /// Payload bytes still to come.
    remaining: u64,
    keep: usize,
    complete: bool,
    start_ns: u64,
    tid: u32,
}

/// One direction's framing (module docs).
pub struct FrameReader {
    /// Preface bytes matched so far; `None` once the preface is past or ruled out.
    preface: Option<usize>,
    head: [u8; HEADER_LEN],
    head_len: usize,
    head_start: (u64, u32),
    current: Option<Current>,
    payload: Vec<u8>,
    /// The framing is lost: chunks are skipped until one starts like frames.
    lost: bool,
    /// Lost bytes past a `DATA` frame were taken for more `DATA` frames of its size on its
    /// stream (a large body read or written in one syscall): the next frame header read must
    /// bear that out, or the framing is lost.
    guessed: Option<FrameHeader>,
}

impl FrameReader {
    /// A reader at the start of a direction (`preface`: a client's preface may come first), or,
    /// with `in_sync` false, one that looks for the framing first.
    pub fn new(preface: bool, in_sync: bool) -> Self {
        FrameReader {
            preface: preface.then_some(0),
            head: [0; HEADER_LEN],
            head_len: 0,
            head_start: (0, 0),
            current: None,
            payload: Vec::new(),
            lost: !in_sync,
            guessed: None,
        }
    }

    /// Feeds one chunk; `on_frame` gets every frame it completes.
    pub fn feed(&mut self, chunk: &Chunk<'_>, on_frame: &mut dyn FnMut(Frame<'_>)) -> Fed {
        let mut fed = Fed::default();
        let mut bytes = chunk.bytes;
        if self.lost {
            match find_framing(bytes) {
                Some(at) => {
                    self.lost = false;
                    self.head_len = 0;
                    self.current = None;
                    self.preface = None;
                    self.guessed = None;
                    // The loss was reported when it began (the HPACK table forgotten then):
                    // frames from here on are read, and what they insert is kept.
                    bytes = bytes.get(at..).unwrap_or_default();
                }
                None => return Fed { lost: true },
            }
        }
        if let Some(matched) = self.preface {
            let want = PREFACE.get(matched..).unwrap_or_default();
            let n = want.len().min(bytes.len());
            if bytes.get(..n) == want.get(..n) {
                let matched = matched + n;
                self.preface = (matched < PREFACE.len()).then_some(matched);
                bytes = bytes.get(n..).unwrap_or_default();
            } else {
                self.preface = None;
                if matched > 0 {
                    fed.lost = true; // a cut preface: what follows is not trusted
                    self.lost = true;
                    return fed;
                }
            }
        }
        while !bytes.is_empty() {
            match &mut self.current {
                None => {
                    if self.head_len == 0 {
                        self.head_start = (chunk.ts_ns, chunk.tid);
                    }
                    let n = (HEADER_LEN - self.head_len).min(bytes.len());
                    let (take, rest) = bytes.split_at(n);
                    if let Some(d) = self.head.get_mut(self.head_len..self.head_len + n) {
                        d.copy_from_slice(take);
                    }
                    self.head_len += n;
                    bytes = rest;
                    if self.head_len == HEADER_LEN {
                        self.head_len = 0;
                        let header = FrameHeader::parse(&self.head);
                        if let Some(template) = self.guessed.take() {
                            let same_stream = header.stream == template.stream;
                            let borne_out = plausible(&header)
                                && same_stream
                                && ((header.kind == kind::DATA && header.len <= template.len)
                                    || (header.kind == kind::HEADERS && header.has(flag::END_STREAM)));
                            if !borne_out {
                                self.lost = true;
                                return Fed { lost: true };
                            }
                        }
                        self.payload.clear();
                        self.current = Some(Current {
                            header,
                            remaining: u64::from(header.len),
                            keep: header.keep().min(MAX_KEPT_PAYLOAD),
                            complete: header.keep() <= MAX_KEPT_PAYLOAD,
                            start_ns: self.head_start.0,
                            tid: self.head_start.1,
                        });
                    }
                }
                Some(cur) => {
                    let n = usize::try_from(cur.remaining).unwrap_or(usize::MAX).min(bytes.len());
                    let (take, rest) = bytes.split_at(n);
                    let room = cur.keep.saturating_sub(self.payload.len());
                    self.payload.extend_from_slice(take.get(..room.min(n)).unwrap_or_default());
                    cur.remaining -= n as u64;
                    bytes = rest;
                }
            }
            self.finish_frame(chunk.ts_ns, on_frame);
        }
        // A frame with an empty payload completes with its header.
        self.finish_frame(chunk.ts_ns, on_frame);
        fed
    }

    fn finish_frame(&mut self, ts_ns: u64, on_frame: &mut dyn FnMut(Frame<'_>)) {
        if self.current.as_ref().is_some_and(|c| c.remaining == 0) {
            if let Some(cur) = self.current.take() {
                on_frame(Frame {
                    header: cur.header,
                    payload: &self.payload,
                    complete: cur.complete,
                    start_ns: cur.start_ns,
                    tid: cur.tid,
                    end_ns: ts_ns,
                });
            }
        }
    }

    /// `len` bytes moved uncaptured at `ts_ns`.
    pub fn gap(&mut self, len: u64, ts_ns: u64, on_frame: &mut dyn FnMut(Frame<'_>)) -> Fed {
        if self.lost {
            return Fed { lost: true };
        }
        if self.preface.is_some() {
            self.preface = None;
            self.lost = true;
            return Fed { lost: true };
        }
        match &mut self.current {
            Some(cur) if self.head_len == 0 && cur.remaining >= len => {
                cur.remaining -= len;
                if self.payload.len() < cur.keep {
                    cur.complete = false; // kept bytes hidden: a header block cut
                }
                self.finish_frame(ts_ns, on_frame);
                Fed::default()
            }
            Some(cur) if self.head_len == 0 && cur.header.kind == kind::DATA && cur.header.len > 0 => {
                // Past a DATA frame: take the rest for DATA frames of its size on its stream.
                let beyond = len - cur.remaining;
                cur.remaining = 0;
                let template = FrameHeader { flags: 0, ..cur.header };
                let tid = cur.tid;
                self.finish_frame(ts_ns, on_frame);
                let unit = HEADER_LEN as u64 + u64::from(template.len);
                for _ in 0..beyond / unit {
                    on_frame(Frame {
                        header: template,
                        payload: &[],
                        complete: false,
                        start_ns: ts_ns,
                        tid,
                        end_ns: ts_ns,
                    });
                }
                let into = beyond % unit;
                if into > 0 && into < HEADER_LEN as u64 {
                    self.lost = true; // inside a header: nothing to check it by
                    return Fed { lost: true };
                }
                if into >= HEADER_LEN as u64 {
                    self.current = Some(Current {
                        header: template,
                        remaining: unit - into,
                        keep: 0,
                        complete: false,
                        start_ns: ts_ns,
                        tid,
                    });
                }
                self.guessed = Some(template);
                Fed::default()
            }
            _ => {
                self.current = None;
                self.head_len = 0;
                self.lost = true;
                Fed { lost: true }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Direction;

    fn chunk(bytes: &[u8]) -> Chunk<'_> {
        Chunk { direction: Direction::Egress, ts_ns: 1, tid: 1, bytes }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn frames(reader: &mut FrameReader, bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>, bool)> {
        let mut out = Vec::new();
        reader.feed(&chunk(bytes), &mut |f| out.push((f.header.kind, f.header.stream, f.payload.to_vec(), f.complete)));
        out
    }

    #[test]
    fn preface_then_frames_at_any_split() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(kind::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        bytes.extend(frame(kind::HEADERS, flag::END_HEADERS, 1, &[0x82, 0x86]));
        bytes.extend(frame(kind::DATA, flag::END_STREAM, 1, &[7; 100]));
        for split in 0..bytes.len() {
            let mut r = FrameReader::new(true, true);
            let (a, b) = bytes.split_at(split);
            let mut got = frames(&mut r, a);
            got.extend(frames(&mut r, b));
            assert_eq!(got.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), [(4, 0), (1, 1), (0, 1)], "split {split}");
            assert_eq!(got[1].2, [0x82, 0x86]);
        }
    }

    #[test]
    fn a_gap_inside_data_keeps_the_framing_and_one_past_it_loses_it() {
        let data = frame(kind::DATA, 0, 1, &[0; 1000]);
        let headers = frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &[0x88]);
        let mut r = FrameReader::new(false, true);
        assert!(frames(&mut r, &data[..100]).is_empty());
        let mut n = 0;
        assert_eq!(r.gap(800, 2, &mut |_| n += 1), Fed::default());
        let mut rest = data[900..].to_vec();
        rest.extend(&headers);
        assert_eq!(frames(&mut r, &rest).len(), 2);
        // A gap past a DATA frame is taken for more such frames (two whole ones here), until
        // a header read where one should be belies it: lost until a chunk starts with frames.
        assert!(frames(&mut r, &data[..100]).is_empty());
        let mut virtual_frames = 0;
        assert_eq!(r.gap(909 + 2 * 1009 + 500, 3, &mut |_| virtual_frames += 1), Fed::default());
        assert_eq!(virtual_frames, 3);
        assert_eq!(frames(&mut r, &[0; 509]).len(), 1, "the third guessed frame ends");
        assert!(frames(&mut r, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).is_empty());
        assert!(frames(&mut r, &[0; 20]).is_empty());
        assert_eq!(frames(&mut r, &headers).len(), 1);
        // Borne out: the next header is the stream's trailers.
        assert!(frames(&mut r, &data[..100]).is_empty());
        assert_eq!(r.gap(909 + 1009, 4, &mut |_| ()), Fed::default());
        assert_eq!(frames(&mut r, &headers).len(), 1);
    }

    #[test]
    fn plausibility() {
        assert!(plausible_run(&frame(kind::HEADERS, 4, 3, &[0x82])));
        assert!(plausible_run(&frame(kind::SETTINGS, 1, 0, &[])));
        assert!(!plausible_run(&frame(kind::SETTINGS, 0, 5, &[])));
        assert!(!plausible_run(&frame(kind::HEADERS, 4, 0, &[0x82])));
        assert!(!plausible_run(b"GET / HTTP/1.1\r\n"));
        assert!(!plausible_run(&[0, 0]));
    }
}
