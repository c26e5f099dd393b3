//! The HTTP/2 state machine of one connection: frames of both directions → one
//! [`Http2Exchange`] per stream.
//!
//! Each direction has its own [`FrameReader`] and HPACK [`Decoder`]. A stream opens with the
//! request direction's `HEADERS` (plus `CONTINUATION`s), collects body sizes from `DATA`, and is
//! handed out when the response direction ends it (`END_STREAM` on `DATA` or trailers), when
//! either side resets it (`RST_STREAM`), when a `GOAWAY` says the server never processed it, or
//! at the connection's close. Frames of streams interleave in any order; pairing is by stream
//! id, so it is exact.
//!
//! Frames of streams whose request headers were never seen (opened before ztrace, or lost) are
//! ignored; server pushes' header blocks are decoded only to keep the table in step.

use std::collections::BTreeMap;

use super::{
    frame::{flag, kind, Frame, FrameReader, PREFACE},
    hpack::{Decoder, Field, Text},
    Head, Http2Error, Http2Exchange, MAX_KEPT_FIELDS, MAX_OPEN_STREAMS,
};
use crate::{
    protocols::{http1::HttpRequest, Chunk, Direction, Gap, Parser, Side, StreamOpened},
    trace::context::parse_traceparent,
};

/// A header block being assembled from `HEADERS`/`PUSH_PROMISE` and `CONTINUATION` frames.
struct Block {
    stream: u32,
    push: bool,
    end_stream: bool,
    start_ns: u64,
    tid: u32,
    fragment: Vec<u8>,
    complete: bool,
}

/// One direction: its framing, its HPACK table, a header block in progress.
struct Half {
    reader: FrameReader,
    hpack: Decoder,
    block: Option<Block>,
}

impl Half {
    fn new(preface: bool, in_sync: bool) -> Self {
        Half { reader: FrameReader::new(preface, in_sync), hpack: Decoder::default(), block: None }
    }
}

/// What a frame said, once its header block (if any) is decoded.
enum Event {
    Headers { stream: u32, head: Head, end_stream: bool, start_ns: u64, tid: u32, end_ns: u64 },
    Data { stream: u32, len: u64, end_stream: bool, start_ns: u64, tid: u32, end_ns: u64 },
    Reset { stream: u32, code: u32, ts_ns: u64 },
    GoAway { last_stream: u32, code: u32, ts_ns: u64 },
}

/// An open stream.
#[derive(Debug)]
pub(super) struct Stream {
    exchange: Http2Exchange,
    /// Response headers seen (later ones are trailers).
    response_head: bool,
}

/// HTTP/2 on one connection (module docs).
pub struct Http2Parser {
    side: Side,
    request: Half,
    response: Half,
    pub(super) streams: BTreeMap<u32, Stream>,
    lost: u64,
    /// The connection was seen from its start.
    fresh: bool,
    /// The highest stream id whose request headers were seen.
    newest_request: u32,
    /// Exchanges handed out with fields that referred to HPACK entries ztrace never saw.
    unknown: u64,
    events: Vec<Event>,
    first_error: Option<Http2Error>,
    /// Streams whose request headers opened them since [`Parser::take_opened`].
    opened: Vec<StreamOpened>,
}

impl Http2Parser {
    /// A parser for a connection whose first bytes seen were `first`: the client's preface or a
    /// server's first `SETTINGS` start a connection from its beginning; anything else is a
    /// connection seen mid-way (framing found again at a chunk that starts with frames, HPACK
    /// entries inserted before unknown).
    pub fn new(side: Side, first: &[u8]) -> Self {
        let fresh = first.starts_with(&PREFACE[..first.len().min(PREFACE.len())]) && !first.is_empty()
            || super::is_initial_settings(first);
        Http2Parser {
            side,
            request: Half::new(true, fresh),
            response: Half::new(false, fresh),
            streams: BTreeMap::new(),
            lost: 0,
            fresh,
            newest_request: 0,
            unknown: 0,
            events: Vec::new(),
            first_error: None,
            opened: Vec::new(),
        }
    }

    /// A parser for a connection that HTTP/1.1 upgraded (`Upgrade: h2c`, answered by `101`):
    /// `request`, read as HTTP/1.1 from `start_ns` to `end_ns` on thread `tid`, is stream 1,
    /// half-closed, its answer to come in HTTP/2 after the server's `SETTINGS`; the client's
    /// preface comes next in the request direction.
    pub fn upgraded(side: Side, request: &HttpRequest, start_ns: u64, end_ns: u64, tid: u32) -> Self {
        let mut parser = Http2Parser::new(side, PREFACE);
        let mut fields = vec![
            field(":method", &request.method),
            field(":scheme", "http"),
            field(":path", &request.target),
        ];
        if let Some(host) = request.header("host") {
            fields.push(field(":authority", &host));
        }
        for (name, value) in request.headers.iter() {
            let hop_by_hop = ["host", "connection", "upgrade", "http2-settings", "keep-alive", "transfer-encoding"];
            if fields.len() < MAX_KEPT_FIELDS && !hop_by_hop.contains(&name.as_str()) {
                fields.push(field(&name, &value));
            }
        }
        parser.newest_request = 1;
        parser.streams.insert(
            1,
            Stream {
                exchange: Http2Exchange {
                    side,
                    stream_id: 1,
                    request: Head { fields, unknown: 0 },
                    response: None,
                    trailers: None,
                    request_body_len: request.body_len,
                    response_body_len: 0,
                    request_start_ns: start_ns,
                    request_end_ns: end_ns,
                    response_start_ns: 0,
                    response_end_ns: 0,
                    request_tid: tid,
                    response_tid: 0,
                    reset: None,
                    upgraded: true,
                },
                response_head: false,
            },
        );
        parser
    }

    fn direction_is_request(&self, d: Direction) -> bool {
        d == self.side.request_direction()
    }

    fn half(&mut self, request: bool) -> &mut Half {
        if request {
            &mut self.request
        } else {
            &mut self.response
        }
    }

    /// Turns one frame into events (header blocks decoded with the direction's table).
    fn on_frame(
        hpack: &mut Decoder,
        open: &mut Option<Block>,
        f: Frame<'_>,
        events: &mut Vec<Event>,
        error: &mut Option<Http2Error>,
    ) {
        let h = f.header;
        match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                let push = h.kind == kind::PUSH_PROMISE;
                let mut p = f.payload;
                let mut complete = f.complete;
                let pad = if h.has(flag::PADDED) {
                    let Some((&pad, rest)) = p.split_first() else { return note(error, Http2Error::BadFrame) };
                    p = rest;
                    usize::from(pad)
                } else {
                    0
                };
                if push {
                    p = p.get(4..).unwrap_or_default(); // promised stream id
                } else if h.has(flag::PRIORITY) {
                    p = p.get(5..).unwrap_or_default();
                }
                let Some(fragment) = p.get(..p.len().saturating_sub(pad)) else { return };
                if p.len() < pad {
                    complete = false;
                }
                if open.is_some() {
                    // A block left open by a frame that never came: its fields are lost.
                    hpack.forget();
                    note(error, Http2Error::BrokenHeaderBlock);
                }
                *open = Some(Block {
                    stream: h.stream,
                    push,
                    end_stream: !push && h.has(flag::END_STREAM),
                    start_ns: f.start_ns,
                    tid: f.tid,
                    fragment: fragment.to_vec(),
                    complete,
                });
            }
            kind::CONTINUATION => match open {
                Some(b) if b.stream == h.stream => {
                    b.fragment.extend_from_slice(f.payload);
                    b.complete &= f.complete;
                }
                _ => {
                    // Its HEADERS came before ztrace looked, or was lost: the block's fields
                    // are unknown and so is what it inserted.
                    hpack.forget();
                    return;
                }
            },
            kind::DATA => {
                let pad = if h.has(flag::PADDED) { f.payload.first().map_or(0, |&p| u64::from(p) + 1) } else { 0 };
                events.push(Event::Data {
                    stream: h.stream,
                    len: u64::from(h.len).saturating_sub(pad),
                    end_stream: h.has(flag::END_STREAM),
                    start_ns: f.start_ns,
                    tid: f.tid,
                    end_ns: f.end_ns,
                });
                return;
            }
            kind::RST_STREAM => {
                let code = f.payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                events.push(Event::Reset { stream: h.stream, code, ts_ns: f.end_ns });
                return;
            }
            kind::GOAWAY => {
                if let Some(b) = f.payload.get(..8) {
                    let last_stream = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    events.push(Event::GoAway { last_stream, code, ts_ns: f.end_ns });
                }
                return;
            }
            // SETTINGS, PING, PRIORITY, WINDOW_UPDATE and unknown types: nothing for spans.
            _ => return,
        }
        if !h.has(flag::END_HEADERS) {
            return;
        }
        let Some(block) = open.take() else { return };
        if !block.complete {
            hpack.forget();
            return note(error, Http2Error::BrokenHeaderBlock);
        }
        let mut fields: Vec<Field> = Vec::new();
        match hpack.decode(&block.fragment, MAX_KEPT_FIELDS, &mut fields) {
            Ok(unknown) => {
                if !block.push {
                    events.push(Event::Headers {
                        stream: block.stream,
                        head: Head { fields, unknown },
                        end_stream: block.end_stream,
                        start_ns: block.start_ns,
                        tid: block.tid,
                        end_ns: f.end_ns,
                    });
                }
            }
            Err(e) => note(error, Http2Error::Hpack(e)),
        }
    }

    fn handle_events(&mut self, from_request: bool, out: &mut Vec<Http2Exchange>) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            match *event {
                Event::Headers { stream, ref head, end_stream, start_ns, tid, end_ns } => {
                    if from_request {
                        self.request_headers(stream, head, end_stream, start_ns, tid, end_ns);
                    } else {
                        self.response_headers(stream, head, end_stream, start_ns, tid, end_ns, out);
                    }
                }
                Event::Data { stream, len, end_stream, start_ns, tid, end_ns } => {
                    let Some(s) = self.streams.get_mut(&stream) else { continue };
                    let ex = &mut s.exchange;
                    if from_request {
                        ex.request_body_len += len;
                        ex.request_end_ns = end_ns;
                    } else {
                        if !s.response_head {
                            continue; // DATA before the response head: malformed, ignored
                        }
                        ex.response_body_len += len;
                        ex.response_end_ns = end_ns;
                        let _ = (start_ns, tid);
                        if end_stream {
                            self.finish(stream, out);
                        }
                    }
                }
                Event::Reset { stream, code, ts_ns } => {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.exchange.reset = Some(code);
                        s.exchange.response_end_ns = ts_ns;
                        self.finish(stream, out);
                    }
                }
                Event::GoAway { last_stream, code, ts_ns } => {
                    if from_request {
                        continue; // the client's GOAWAY concerns pushed streams
                    }
                    let refused: Vec<u32> =
                        self.streams.range(last_stream.saturating_add(1)..).map(|(&id, _)| id).collect();
                    for id in refused {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.exchange.reset = Some(code.max(REFUSED_STREAM));
                            s.exchange.response_end_ns = ts_ns;
                        }
                        self.finish(id, out);
                    }
                }
            }
        }
        self.events = events;
        self.events.clear();
    }

    fn request_headers(&mut self, stream: u32, head: &Head, end_stream: bool, start_ns: u64, tid: u32, end_ns: u64) {
        self.newest_request = self.newest_request.max(stream);
        if let Some(s) = self.streams.get_mut(&stream) {
            // Request trailers.
            s.exchange.request_end_ns = end_ns;
            return;
        }
        if self.streams.len() >= MAX_OPEN_STREAMS {
            self.lost += 1;
            return;
        }
        let _ = end_stream;
        if self.opened.len() < MAX_OPEN_STREAMS {
            self.opened.push(StreamOpened {
                stream: u64::from(stream),
                ts_ns: start_ns,
                traceparent: head.value("traceparent").and_then(parse_traceparent),
            });
        }
        self.streams.insert(
            stream,
            Stream {
                exchange: Http2Exchange {
                    side: self.side,
                    stream_id: stream,
                    request: head.clone(),
                    response: None,
                    trailers: None,
                    request_body_len: 0,
                    response_body_len: 0,
                    request_start_ns: start_ns,
                    request_end_ns: end_ns,
                    response_start_ns: 0,
                    response_end_ns: 0,
                    request_tid: tid,
                    response_tid: 0,
                    reset: None,
                    upgraded: false,
                },
                response_head: false,
            },
        );
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one decoded HEADERS event")]
    fn response_headers(
        &mut self,
        stream: u32,
        head: &Head,
        end_stream: bool,
        start_ns: u64,
        tid: u32,
        end_ns: u64,
        out: &mut Vec<Http2Exchange>,
    ) {
        let Some(s) = self.streams.get_mut(&stream) else {
            // An answer on a stream whose request ztrace should have seen (newer than every
            // request seen, on a connection seen from its start or from an earlier request):
            // the request's bytes were lost.
            if (self.fresh || self.newest_request > 0) && stream > self.newest_request && stream % 2 == 1 {
                self.newest_request = stream;
                self.lost += 1;
            }
            return;
        };
        let ex = &mut s.exchange;
        if !s.response_head {
            let interim = head.value(":status").is_some_and(|v| v.len() == 3 && v.starts_with('1'));
            if interim && !end_stream {
                return;
            }
            s.response_head = true;
            ex.response = Some(head.clone());
            ex.response_start_ns = start_ns;
            ex.response_tid = tid;
        } else {
            ex.trailers = Some(head.clone());
        }
        ex.response_end_ns = end_ns;
        if end_stream {
            self.finish(stream, out);
        }
    }

    fn finish(&mut self, stream: u32, out: &mut Vec<Http2Exchange>) {
        if let Some(s) = self.streams.remove(&stream) {
            if s.exchange.unknown_fields() > 0 {
                self.unknown += 1;
            }
            out.push(s.exchange);
        }
    }

    /// Exchanges handed out since the last call whose headers referred to HPACK entries ztrace
    /// never saw.
    pub fn take_unknown(&mut self) -> u64 {
        std::mem::take(&mut self.unknown)
    }
}

fn field(name: &str, value: &str) -> Field {
    Field { name: Text::Known(name.into()), value: Text::Known(value.into()) }
}

/// RFC 9113 §7: the stream was not processed.
const REFUSED_STREAM: u32 = 0x7;

fn note(error: &mut Option<Http2Error>, e: Http2Error) {
    error.get_or_insert(e);
}

impl Parser for Http2Parser {
    type Exchange = Http2Exchange;
    type Error = Http2Error;

    fn side(&self) -> Side {
        self.side
    }

    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Http2Exchange>) -> Result<(), Http2Error> {
        let from_request = self.direction_is_request(chunk.direction);
        let mut events = std::mem::take(&mut self.events);
        let mut error = None;
        let Half { reader, hpack, block } = self.half(from_request);
        let fed = reader.feed(chunk, &mut |f| Self::on_frame(hpack, block, f, &mut events, &mut error));
        if fed.lost {
            hpack.forget();
            *block = None;
        }
        self.events = events;
        self.handle_events(from_request, out);
        match error.or(self.first_error.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn on_gap(&mut self, gap: &Gap, out: &mut Vec<Http2Exchange>) -> Result<(), Http2Error> {
        let from_request = self.direction_is_request(gap.direction);
        let mut events = std::mem::take(&mut self.events);
        let mut error = None;
        let Half { reader, hpack, block } = self.half(from_request);
        let fed = reader.gap(gap.len, gap.ts_ns, &mut |f| Self::on_frame(hpack, block, f, &mut events, &mut error));
        if fed.lost {
            hpack.forget();
            *block = None;
            error.get_or_insert(Http2Error::LostFraming);
        }
        self.events = events;
        self.handle_events(from_request, out);
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Http2Exchange>) -> usize {
        let mut unanswered = 0;
        let streams = std::mem::take(&mut self.streams);
        for (_, mut s) in streams {
            if s.exchange.response.is_none() && s.exchange.reset.is_none() {
                unanswered += 1;
            }
            if s.exchange.response_end_ns < s.exchange.request_start_ns || s.exchange.response.is_none() {
                s.exchange.response_end_ns = ts_ns;
            }
            if s.exchange.unknown_fields() > 0 {
                self.unknown += 1;
            }
            out.push(s.exchange);
        }
        unanswered
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn take_unknown(&mut self) -> u64 {
        Http2Parser::take_unknown(self)
    }

    fn multiplexed(&self) -> bool {
        true
    }

    fn take_opened(&mut self, out: &mut Vec<StreamOpened>) {
        out.append(&mut self.opened);
    }
}
