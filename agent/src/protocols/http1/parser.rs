//! The HTTP/1.x state machine: two readers (requests, responses), the requests waiting for
//! their responses, pairing, and what damage (lost bytes, malformed messages) costs. See the
//! folder's docs (`mod.rs`) for what it handles and what it deliberately does not.

use std::collections::VecDeque;

use super::{framing::*, *};
use crate::{
    protocols::{http2::Http2Parser, Boxed, Gap, Parser, StreamParser},
    trace::context::TraceParent,
};


/// The two message streams of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stream {
    Requests,
    Responses,
}

impl Stream {
    fn other(self) -> Stream {
        match self {
            Stream::Requests => Stream::Responses,
            Stream::Responses => Stream::Requests,
        }
    }
}

/// Where one direction is in its sequence of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// Between messages.
    Idle,
    /// Collecting a header block in `Reader::head`.
    Head,
    /// Counting a `Content-Length` body.
    Fixed { remaining: u64 },
    /// Decoding a chunked body.
    Chunked(ChunkState),
    /// Counting a response body that the end of the connection delimits.
    UntilClose,
    /// Chunked framing lost to a gap: every byte counts as body until a chunk ends with the
    /// last chunk (see [`last_chunk_at_end`]). `seen`: bytes moved since the framing was lost.
    /// `from_gap`: `Reader::head` holds every byte since the last gap.
    Seeking { seen: u64, from_gap: bool },
    /// Message boundaries lost: skipping chunks until one starts like a message.
    Resync,
    /// Protocol switched (or connection closed): every byte is ignored.
    Done,
}

/// The message a direction is reading.
#[derive(Debug, Default)]
pub(super) struct Progress {
    start_ns: u64,
    end_ns: u64,
    tid: u32,
    body_len: u64,
    /// Requests: their entry in `pending`. Responses: the entry they answer. `None`: dropped.
    seq: Option<u64>,
    /// Responses: the head, kept until the body ends.
    response: Option<HttpResponse>,
}

/// One direction of the connection.
#[derive(Debug)]
pub(super) struct Reader {
    framing: Framing,
    /// The header block being collected; while seeking, the last bytes seen (at most
    /// [`SEEK_CONTEXT`]).
    head: Vec<u8>,
    msg: Progress,
}

impl Reader {
    fn new() -> Self {
        Reader {
            framing: Framing::Idle,
            head: Vec::new(),
            msg: Progress::default(),
        }
    }

    /// Between messages, or resynchronizing (a message that was in progress is abandoned).
    fn between_messages(&self) -> bool {
        matches!(self.framing, Framing::Idle | Framing::Resync)
    }

    /// Seeking the end of a chunked body whose framing was lost.
    fn seeking(&self) -> bool {
        matches!(self.framing, Framing::Seeking { .. })
    }

    /// Keeps the last [`SEEK_CONTEXT`] bytes seen in `head`. Returns false when bytes had to be
    /// dropped from its front.
    fn keep_last(&mut self, bytes: &[u8]) -> bool {
        if let Some(last) = bytes
            .len()
            .checked_sub(SEEK_CONTEXT)
            .and_then(|from| bytes.get(from..))
        {
            let whole = self.head.is_empty() && bytes.len() == SEEK_CONTEXT;
            self.head.clear();
            self.head.extend_from_slice(last);
            return whole;
        }
        self.head.extend_from_slice(bytes);
        let excess = self.head.len().saturating_sub(SEEK_CONTEXT);
        self.head.drain(..excess);
        excess == 0
    }

    fn release_head(&mut self) {
        if self.head.capacity() > HEAD_CAPACITY_KEPT {
            self.head = Vec::new();
        } else {
            self.head.clear();
        }
    }

    /// Takes bytes of `rest` into the head buffer, up to the end of the header block.
    /// Returns how many bytes of `rest` belong to the head.
    fn take_head(&mut self, rest: &[u8]) -> (usize, HeadStep) {
        let old = self.head.len();
        let take = rest.len().min(MAX_HEAD_BYTES.saturating_sub(old));
        self.head
            .extend_from_slice(rest.get(..take).unwrap_or_default());
        match find_head_end(&self.head, old.saturating_sub(2)) {
            Some(end) => {
                self.head.truncate(end);
                (end.saturating_sub(old), HeadStep::Complete)
            }
            None if self.head.len() >= MAX_HEAD_BYTES => (take, HeadStep::TooLarge),
            None => (take, HeadStep::More),
        }
    }
}

pub(super) enum HeadStep {
    More,
    Complete,
    TooLarge,
}

/// End (exclusive) of the first empty line found at or after `from`: `\n\n` or `\n\r\n`.
pub(super) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// What a final response answers.
#[derive(Debug)]
pub(super) enum Answer {
    /// No response yet.
    Awaiting,
    /// A response head arrived; its body is in progress.
    InProgress,
    /// The response is complete; waiting for the request's own end (early responses).
    Done(Box<Answered>),
}

#[derive(Debug)]
pub(super) struct Answered {
    response: HttpResponse,
    start_ns: u64,
    end_ns: u64,
    tid: u32,
}

/// A request whose head was seen and whose exchange is not emitted yet.
#[derive(Debug)]
pub(super) struct Pending {
    seq: u64,
    request: HttpRequest,
    start_ns: u64,
    end_ns: u64,
    tid: u32,
    /// The whole request, body included, was seen.
    complete: bool,
    /// Seen while pairing was unsure: answered in turn, but its exchange is not emitted.
    reliable: bool,
    answer: Answer,
}

/// HTTP/1.x parser for one connection: feed it the connection's chunks and gaps in order.
///
/// It owns its buffering: at most one header block per direction ([`MAX_HEAD_BYTES`]) and up to
/// [`MAX_PENDING_REQUESTS`] parsed requests waiting for responses. It never panics on bad
/// bytes; errors are returned for counting and the parser keeps going.
#[derive(Debug)]
pub struct Http1Parser {
    side: Side,
    requests: Reader,
    responses: Reader,
    /// Requests in the order they were sent, oldest first.
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Final responses still to come for requests no longer in `pending` (dropped by damage);
    /// they answer requests older than every entry of `pending` and are discarded.
    owed: u32,
    /// Pairing is unsure since damage; new requests are paired again from a lull on.
    desynced: bool,
    /// The response direction moved (bytes or a gap) since the request direction last did.
    response_moved: bool,
    /// A request was seen on this connection.
    request_seen: bool,
    /// A request once started while an earlier one could still be waiting for its response.
    pipelining_seen: bool,
    /// Requests dropped (damage, unsure pairing) since [`Parser::take_lost`] last asked.
    lost: u64,
    /// The connection upgraded to HTTP/2 (`Upgrade: h2c` answered by `101`): the parser for
    /// what follows, until the connection table takes it ([`Parser::take_successor`]).
    upgrade: Option<Upgrade>,
}

/// An HTTP/1.1 connection upgraded to HTTP/2 in the chunk just read.
struct Upgrade {
    /// Its stream 1 is the upgraded request, waiting for its answer.
    parser: Http2Parser,
    /// Bytes of the chunk after the `101` head: already HTTP/2.
    rest: Vec<u8>,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade").field("rest", &self.rest.len()).finish_non_exhaustive()
    }
}

impl Http1Parser {
    /// A parser for a fresh connection. `Side::Client`: the traced process sends the requests
    /// (they flow `Egress`); `Side::Server`: it receives them (they flow `Ingress`).
    pub fn new(side: Side) -> Self {
        Http1Parser {
            side,
            requests: Reader::new(),
            responses: Reader::new(),
            pending: VecDeque::new(),
            next_seq: 0,
            owed: 0,
            desynced: false,
            response_moved: false,
            request_seen: false,
            pipelining_seen: false,
            lost: 0,
            upgrade: None,
        }
    }

    /// Bytes or a gap went by on `stream`.
    fn moved(&mut self, stream: Stream) {
        self.response_moved = stream == Stream::Responses;
    }

    fn stream_of(&self, direction: Direction) -> Stream {
        match (self.side, direction) {
            (Side::Client, Direction::Egress) | (Side::Server, Direction::Ingress) => {
                Stream::Requests
            }
            (Side::Client, Direction::Ingress) | (Side::Server, Direction::Egress) => {
                Stream::Responses
            }
        }
    }

    fn reader(&self, stream: Stream) -> &Reader {
        match stream {
            Stream::Requests => &self.requests,
            Stream::Responses => &self.responses,
        }
    }

    fn reader_mut(&mut self, stream: Stream) -> &mut Reader {
        match stream {
            Stream::Requests => &mut self.requests,
            Stream::Responses => &mut self.responses,
        }
    }

    /// Runs one chunk through the framing of its direction.
    fn feed(
        &mut self,
        stream: Stream,
        chunk: &Chunk<'_>,
        error: &mut Option<Http1Error>,
        out: &mut Vec<HttpExchange>,
    ) {
        let bytes = chunk.bytes;
        let mut pos = 0;
        // Bytes of a message of this direction were already read from this chunk.
        let mut message_before = false;
        while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
            let framing = self.reader(stream).framing;
            match framing {
                Framing::Done => {
                    if let Some(upgrade) = &mut self.upgrade {
                        upgrade.rest.extend_from_slice(rest);
                    }
                    return;
                }
                Framing::Resync => {
                    let start = rest.get(leading_newlines(rest)..).unwrap_or_default();
                    if pos != 0 || start.is_empty() || !looks_like_start(stream, start) {
                        return;
                    }
                    self.reader_mut(stream).framing = Framing::Idle;
                }
                Framing::Idle => {
                    let skip = leading_newlines(rest);
                    pos += skip;
                    let start = rest.get(skip..).unwrap_or_default();
                    if start.is_empty() {
                        continue;
                    }
                    if !looks_like_start(stream, start) {
                        note(error, Http1Error::NotHttp);
                        self.damage(stream, false);
                        return;
                    }
                    if stream == Stream::Requests && self.responses.seeking() {
                        // A client waits for a response before it sends its next request (and
                        // seeking starts only with no other request waiting): the end of the
                        // response being sought was missed.
                        note(error, Http1Error::GapInFraming);
                        self.damage(Stream::Responses, false);
                    }
                    self.begin_message(stream, chunk, !message_before);
                }
                Framing::Head => {
                    let reader = self.reader_mut(stream);
                    let (taken, step) = reader.take_head(rest);
                    reader.msg.end_ns = chunk.ts_ns;
                    pos += taken;
                    message_before = true;
                    match step {
                        HeadStep::More => {}
                        HeadStep::TooLarge => {
                            note(error, Http1Error::HeadersTooLarge);
                            self.damage(stream, true);
                            return;
                        }
                        HeadStep::Complete => {
                            let result = match stream {
                                Stream::Requests => self.on_request_head(out),
                                Stream::Responses => self.on_response_head(error, out),
                            };
                            if let Err(e) = result {
                                note(error, e);
                                self.damage(stream, true);
                                return;
                            }
                        }
                    }
                }
                Framing::Fixed { remaining } => {
                    let n = remaining.min(rest.len() as u64);
                    let reader = self.reader_mut(stream);
                    reader.msg.body_len = reader.msg.body_len.saturating_add(n);
                    reader.msg.end_ns = chunk.ts_ns;
                    reader.framing = Framing::Fixed {
                        remaining: remaining - n,
                    };
                    pos += n as usize;
                    message_before = true;
                    if n == remaining {
                        self.end_message(stream, out);
                    }
                }
                Framing::Chunked(mut state) => {
                    let (taken, data, step) = decode_chunked(&mut state, rest);
                    let reader = self.reader_mut(stream);
                    reader.msg.body_len = reader.msg.body_len.saturating_add(data);
                    reader.msg.end_ns = chunk.ts_ns;
                    reader.framing = Framing::Chunked(state);
                    pos += taken;
                    message_before = true;
                    match step {
                        ChunkStep::More => {}
                        ChunkStep::End => self.end_message(stream, out),
                        ChunkStep::Bad => {
                            note(error, Http1Error::BadChunkEncoding);
                            self.damage(stream, false);
                            return;
                        }
                    }
                }
                Framing::UntilClose => {
                    let reader = self.reader_mut(stream);
                    reader.msg.body_len = reader.msg.body_len.saturating_add(rest.len() as u64);
                    reader.msg.end_ns = chunk.ts_ns;
                    return;
                }
                // Entered only at a gap, so `rest` is the whole chunk.
                Framing::Seeking { seen, from_gap } => {
                    if self.seek_chunk(stream, rest, chunk.ts_ns, seen, from_gap, error, out) {
                        return;
                    }
                    // Given up: the chunk starts like a message, which `Resync` takes.
                }
            }
        }
    }

    /// Whether a chunked body of `stream` whose framing was just lost may be sought to its end
    /// instead of being dropped: its message must be paired, and a response must have no
    /// request waiting behind it (a response after it would otherwise be taken for its body
    /// when its end is missed).
    fn may_seek(&self, stream: Stream) -> bool {
        let Some(seq) = self.reader(stream).msg.seq else {
            return false;
        };
        let tracked = self.pending.iter().any(|p| p.seq == seq);
        tracked
            && (stream == Stream::Requests
                || !self
                    .pending
                    .iter()
                    .any(|p| matches!(p.answer, Answer::Awaiting)))
    }

    /// A gap while seeking the end of a chunked body (`seen` bytes moved since its framing was
    /// lost): body bytes, up to [`MAX_SEEK_BYTES`].
    fn seek_gap(&mut self, stream: Stream, gap: &Gap, seen: u64, error: &mut Option<Http1Error>) {
        let seen = seen.saturating_add(gap.len);
        let reader = self.reader_mut(stream);
        reader.msg.body_len = reader.msg.body_len.saturating_add(gap.len);
        reader.msg.end_ns = gap.ts_ns;
        reader.head.clear();
        reader.framing = Framing::Seeking {
            seen,
            from_gap: true,
        };
        if seen > MAX_SEEK_BYTES {
            note(error, Http1Error::GapInFraming);
            self.damage(stream, false);
        }
    }

    /// The `bytes` of a chunk moved at `ts_ns`, while seeking the end of a chunked body. Returns
    /// false when seeking was given up because they start like a message, so that the caller
    /// reads them again as one.
    #[allow(clippy::too_many_arguments)]
    fn seek_chunk(
        &mut self,
        stream: Stream,
        bytes: &[u8],
        ts_ns: u64,
        seen: u64,
        from_gap: bool,
        error: &mut Option<Http1Error>,
        out: &mut Vec<HttpExchange>,
    ) -> bool {
        let start = bytes.get(leading_newlines(bytes)..).unwrap_or_default();
        if !start.is_empty() && looks_like_start(stream, start) {
            // The end was missed and the next message starts here (as `Resync` would see it).
            note(error, Http1Error::GapInFraming);
            self.damage(stream, false);
            return false;
        }
        let seen = seen.saturating_add(bytes.len() as u64);
        let reader = self.reader_mut(stream);
        let from_gap = reader.keep_last(bytes) && from_gap;
        reader.msg.body_len = reader.msg.body_len.saturating_add(bytes.len() as u64);
        reader.msg.end_ns = ts_ns;
        reader.framing = Framing::Seeking { seen, from_gap };
        if let Some(framing) = last_chunk_at_end(&reader.head, from_gap) {
            reader.msg.body_len = reader.msg.body_len.saturating_sub(framing as u64);
            reader.release_head();
            self.end_message(stream, out);
            if stream == Stream::Requests {
                // Where the request really ended is a guess: a request pipelined after it could
                // have been taken for its body. Pair again only from a lull on (module docs).
                self.desynced = true;
            }
        } else if seen > MAX_SEEK_BYTES {
            note(error, Http1Error::GapInFraming);
            self.damage(stream, false);
        }
        true
    }

    /// A message starts in `chunk` (its first byte is at the chunk's start when `at_chunk_start`).
    fn begin_message(&mut self, stream: Stream, chunk: &Chunk<'_>, at_chunk_start: bool) {
        if stream == Stream::Requests {
            self.request_starts(at_chunk_start);
        }
        let reader = self.reader_mut(stream);
        reader.head.clear();
        reader.msg = Progress {
            start_ns: chunk.ts_ns,
            end_ns: chunk.ts_ns,
            tid: chunk.tid,
            ..Progress::default()
        };
        reader.framing = Framing::Head;
    }

    /// A request starts: watch for pipelining, and restart pairing at a lull (module docs).
    fn request_starts(&mut self, at_chunk_start: bool) {
        // The response direction moved since the last request bytes and is between messages:
        // a client that waits for each response has all its earlier requests answered.
        let quiet = at_chunk_start && self.response_moved && self.responses.between_messages();
        if self.request_seen && !quiet {
            self.pipelining_seen = true;
        }
        self.request_seen = true;
        if !quiet {
            return;
        }
        if !self.pipelining_seen {
            // Whatever still waits was answered in bytes the parser did not see.
            self.drop_pending();
            self.owed = 0;
            self.desynced = false;
        } else if self.desynced
            && self.owed == 0
            && !self
                .pending
                .iter()
                .any(|p| matches!(p.answer, Answer::Awaiting))
        {
            self.desynced = false;
        }
    }

    /// The request head in `requests.head` is complete.
    fn on_request_head(&mut self, out: &mut Vec<HttpExchange>) -> Result<(), Http1Error> {
        let (request, framing) = parse_request_head(&self.requests.head)?;
        self.requests.release_head();
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            self.lost += 1;
            return Err(Http1Error::TooManyPending);
        }
        let reliable = !self.desynced;
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = &mut self.requests.msg;
        msg.seq = Some(seq);
        self.pending.push_back(Pending {
            seq,
            request,
            start_ns: msg.start_ns,
            end_ns: msg.end_ns,
            tid: msg.tid,
            complete: false,
            reliable,
            answer: Answer::Awaiting,
        });
        match framing {
            RequestBody::None => self.end_message(Stream::Requests, out),
            RequestBody::Fixed(n) => self.requests.framing = Framing::Fixed { remaining: n },
            RequestBody::Chunked => {
                self.requests.framing = Framing::Chunked(ChunkState::Size { size: 0, digits: 0 })
            }
        }
        Ok(())
    }

    /// The response head in `responses.head` is complete. Errors that do not break the framing
    /// (an unpaired response) go to `error`; those that do are returned.
    fn on_response_head(
        &mut self,
        error: &mut Option<Http1Error>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), Http1Error> {
        let (response, body) = parse_response_head(&self.responses.head)?;
        self.responses.release_head();
        let status = response.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 102, 103): answers nothing, has no body.
            self.responses.framing = Framing::Idle;
            self.responses.msg = Progress::default();
            return Ok(());
        }

        if self.requests.seeking() {
            let seeking = self.requests.msg.seq;
            let answered = self
                .pending
                .iter()
                .find(|p| Some(p.seq) == seeking)
                .is_none_or(|p| !matches!(p.answer, Answer::Awaiting));
            if answered {
                // A second final response answers a request sent after the one being sought,
                // so that one ended unseen, and the next was taken for its body.
                note(error, Http1Error::GapInFraming);
                self.damage(Stream::Requests, true);
            }
        }

        // Which request this final response answers: one dropped by damage (owed), else the
        // oldest request not answered yet. Nothing is assigned before the framing is known to
        // be valid, so that an error here leaves the answer to `damage`.
        let answers = if self.owed > 0 {
            None
        } else {
            self.pending
                .iter()
                .position(|p| matches!(p.answer, Answer::Awaiting))
        };
        let method = answers
            .and_then(|i| self.pending.get(i))
            .map(|p| p.request.method.as_str())
            .unwrap_or_default();
        let method_head = method.eq_ignore_ascii_case("HEAD");
        let method_connect = method.eq_ignore_ascii_case("CONNECT");
        let switched = status == 101 || (method_connect && (200..300).contains(&status));
        let framing = if switched || method_head || status == 204 || status == 304 {
            None
        } else if let Some(chunked) = body.transfer_encoding_chunked {
            Some(if chunked {
                Framing::Chunked(ChunkState::Size { size: 0, digits: 0 })
            } else {
                Framing::UntilClose
            })
        } else {
            match body
                .content_length
                .map_err(|()| Http1Error::BadContentLength)?
            {
                Some(0) => None,
                Some(n) => Some(Framing::Fixed { remaining: n }),
                None => Some(Framing::UntilClose),
            }
        };

        let seq = if self.owed > 0 {
            self.owed -= 1;
            None
        } else if let Some(p) = answers.and_then(|i| self.pending.get_mut(i)) {
            p.answer = Answer::InProgress;
            if switched {
                p.complete = true;
            }
            Some(p.seq)
        } else {
            if !self.desynced {
                note(error, Http1Error::UnpairedResponse);
                self.desynced = true;
            }
            None
        };
        if status == 101 && seq.is_some() && self.upgrade_to_h2c(answers, &response) {
            // The request's answer comes on HTTP/2 stream 1: it is the new parser's.
            self.responses.msg = Progress::default();
            self.drop_pending();
            self.requests.framing = Framing::Done;
            self.responses.framing = Framing::Done;
            return Ok(());
        }
        self.responses.msg.seq = seq;
        self.responses.msg.response = Some(response);

        match framing {
            None => self.end_message(Stream::Responses, out),
            Some(f) => self.responses.framing = f,
        }
        if switched {
            // The connection left HTTP/1.x: this exchange is the last, every later byte is ignored.
            self.drop_pending();
            self.requests.framing = Framing::Done;
            self.responses.framing = Framing::Done;
        }
        Ok(())
    }

    /// The message of `stream` ended (its body is complete).
    fn end_message(&mut self, stream: Stream, out: &mut Vec<HttpExchange>) {
        let reader = self.reader_mut(stream);
        if reader.framing != Framing::Done {
            reader.framing = Framing::Idle;
        }
        let msg = std::mem::take(&mut reader.msg);
        match stream {
            Stream::Requests => {
                if let Some(p) = self.pending.iter_mut().find(|p| Some(p.seq) == msg.seq) {
                    p.complete = true;
                    p.end_ns = msg.end_ns;
                    p.request.body_len = msg.body_len;
                }
            }
            Stream::Responses => {
                if let (Some(p), Some(mut response)) = (
                    self.pending.iter_mut().find(|p| Some(p.seq) == msg.seq),
                    msg.response,
                ) {
                    response.body_len = msg.body_len;
                    p.answer = Answer::Done(Box::new(Answered {
                        response,
                        start_ns: msg.start_ns,
                        end_ns: msg.end_ns,
                        tid: msg.tid,
                    }));
                }
            }
        }
        self.flush(out);
    }

    /// Emits the oldest exchanges that are complete on both sides.
    fn flush(&mut self, out: &mut Vec<HttpExchange>) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.complete && matches!(p.answer, Answer::Done(_)))
        {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            match (p.reliable, p.answer) {
                (true, Answer::Done(answered)) => out.push(exchange(
                    self.side, p.request, p.start_ns, p.end_ns, p.tid, *answered,
                )),
                _ => self.lost += 1,
            }
        }
    }

    /// `stream` lost its message boundaries: drop its message in progress, resynchronize, and
    /// restart pairing. `lost_head`: the damage hid the head of a message not accounted for yet
    /// (a request never queued, or a response not yet assigned to a request).
    fn damage(&mut self, stream: Stream, lost_head: bool) {
        let reader = self.reader_mut(stream);
        if reader.framing != Framing::Done {
            reader.framing = Framing::Resync;
        }
        reader.msg = Progress::default();
        reader.release_head();
        let other = self.reader_mut(stream.other());
        if other.seeking() {
            // Its message is dropped with `pending` below, and its end can only be guessed.
            other.framing = Framing::Resync;
            other.msg = Progress::default();
            other.release_head();
        }

        let awaiting = self
            .pending
            .iter()
            .filter(|p| matches!(p.answer, Answer::Awaiting))
            .count();
        let awaiting = u32::try_from(awaiting).unwrap_or(u32::MAX);
        self.owed = self.owed.saturating_add(awaiting);
        match (stream, lost_head) {
            // The server will answer the request it could not read either.
            (Stream::Requests, true) => self.owed = self.owed.saturating_add(1),
            // The damaged response answered the oldest request it did not already.
            (Stream::Responses, true) => self.owed = self.owed.saturating_sub(1),
            (_, false) => {}
        }
        self.drop_pending();
        self.desynced = true;
    }

    /// Drops every request waiting: those that would have been exchanges count as lost.
    /// A `101` answers pending request `answers`: when it switched to HTTP/2 (`Upgrade: h2c`
    /// on both), that request becomes stream 1 of an HTTP/2 parser that reads the rest of the
    /// connection, and leaves `pending`.
    fn upgrade_to_h2c(&mut self, answers: Option<usize>, response: &HttpResponse) -> bool {
        let is_h2c = |v: Option<std::borrow::Cow<'_, str>>| {
            v.is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
        };
        let Some(i) = answers.filter(|_| is_h2c(response.header("upgrade"))) else {
            return false;
        };
        if !self.pending.get(i).is_some_and(|p| p.reliable && is_h2c(p.request.header("upgrade"))) {
            return false;
        }
        let Some(p) = self.pending.remove(i) else {
            return false;
        };
        let parser = Http2Parser::upgraded(self.side, &p.request, p.start_ns, p.end_ns, p.tid);
        self.upgrade = Some(Upgrade { parser, rest: Vec::new() });
        true
    }

    fn drop_pending(&mut self) {
        self.lost += self.pending.iter().filter(|p| p.reliable).count() as u64;
        self.pending.clear();
    }
}

impl Parser for Http1Parser {
    type Exchange = HttpExchange;
    type Error = Http1Error;

    fn take_successor(&mut self) -> Option<(Box<dyn StreamParser>, Vec<u8>)> {
        let Upgrade { parser, rest } = self.upgrade.take()?;
        Some((Boxed::stream("http2", parser), rest))
    }

    /// Which end of the connection the traced process is.
    fn side(&self) -> Side {
        self.side
    }

    /// Bytes moved by one syscall. Exchanges completed by them are appended to `out`, also when
    /// an error is returned; the error is the first one met in the chunk (later bytes of the
    /// chunk are still read when the framing allows).
    fn on_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), Http1Error> {
        if chunk.bytes.is_empty() {
            return Ok(());
        }
        let stream = self.stream_of(chunk.direction);
        let mut error = None;
        self.feed(stream, chunk, &mut error, out);
        self.moved(stream);
        error.map_or(Ok(()), Err)
    }

    /// Bytes that moved but were not captured. Inside a body they count as body bytes; where
    /// they hide chunked framing, the direction seeks the end of the body; where they hide a
    /// header block or a message boundary, the message is dropped and the direction
    /// resynchronizes (see the module docs).
    fn on_gap(&mut self, gap: &Gap, out: &mut Vec<HttpExchange>) -> Result<(), Http1Error> {
        if gap.len == 0 {
            return Ok(());
        }
        let stream = self.stream_of(gap.direction);
        let mut error = None;
        let framing = self.reader(stream).framing;
        match framing {
            Framing::Done | Framing::Resync => {}
            Framing::Idle => {
                // Bytes after a message's end hide (at least) the start of the next one.
                note(&mut error, Http1Error::GapInFraming);
                self.damage(stream, true);
            }
            Framing::Head => {
                note(&mut error, Http1Error::GapInHead);
                self.damage(stream, true);
            }
            Framing::Fixed { remaining } => {
                let counted = gap.len.min(remaining);
                let reader = self.reader_mut(stream);
                reader.msg.body_len = reader.msg.body_len.saturating_add(counted);
                reader.msg.end_ns = gap.ts_ns;
                reader.framing = Framing::Fixed {
                    remaining: remaining - counted,
                };
                if counted == remaining {
                    self.end_message(stream, out);
                    if gap.len > counted {
                        note(&mut error, Http1Error::GapInFraming);
                        self.damage(stream, true);
                    }
                }
            }
            Framing::Chunked(state) => match chunked_after_gap(state, gap.len) {
                Some((data, next)) => {
                    let reader = self.reader_mut(stream);
                    reader.msg.body_len = reader.msg.body_len.saturating_add(data);
                    reader.msg.end_ns = gap.ts_ns;
                    reader.framing = Framing::Chunked(next);
                }
                None if self.may_seek(stream) => self.seek_gap(stream, gap, 0, &mut error),
                None => {
                    note(&mut error, Http1Error::GapInFraming);
                    self.damage(stream, false);
                }
            },
            Framing::Seeking { seen, .. } => self.seek_gap(stream, gap, seen, &mut error),
            Framing::UntilClose => {
                let reader = self.reader_mut(stream);
                reader.msg.body_len = reader.msg.body_len.saturating_add(gap.len);
                reader.msg.end_ns = gap.ts_ns;
            }
        }
        self.moved(stream);
        error.map_or(Ok(()), Err)
    }

    /// The connection closed at `ts_ns`. A response delimited by the close ends here and its
    /// exchange is appended to `out`, as are responses that came before their request's body
    /// ended, and responses whose head was seen but whose body was not (all of it): the
    /// exchange has the response as far as it was seen. Requests with no response head are
    /// appended as unanswered exchanges (no response, ending at `ts_ns`); returns how many.
    /// Requests seen while pairing was unsure are dropped ([`Parser::take_lost`]). Later bytes
    /// are ignored.
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<HttpExchange>) -> usize {
        if self.responses.framing == Framing::UntilClose {
            let msg = &mut self.responses.msg;
            msg.end_ns = msg.end_ns.max(ts_ns);
            self.end_message(Stream::Responses, out);
        }
        // A response cut short by the close: what was seen of it answers, if its head was
        // (a head still being collected has no response yet, and answers nothing).
        if !self.responses.between_messages() && self.responses.framing != Framing::Done {
            self.end_message(Stream::Responses, out);
        }
        // A request cut short by the close: what was seen of it.
        let cut_short = &self.requests.msg;
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| Some(p.seq) == cut_short.seq)
        {
            p.end_ns = cut_short.end_ns;
            p.request.body_len = cut_short.body_len;
        }
        let mut unanswered = 0;
        for p in self.pending.drain(..) {
            match p.answer {
                _ if !p.reliable => self.lost += 1,
                Answer::Done(answered) => out.push(exchange(
                    self.side, p.request, p.start_ns, p.end_ns, p.tid, *answered,
                )),
                // `InProgress` with its head gone cannot happen (the head is taken above).
                Answer::Awaiting | Answer::InProgress => {
                    unanswered += 1;
                    out.push(HttpExchange {
                        side: self.side,
                        request: p.request,
                        response: None,
                        request_start_ns: p.start_ns,
                        request_end_ns: p.end_ns,
                        response_start_ns: ts_ns.max(p.end_ns),
                        response_end_ns: ts_ns.max(p.end_ns),
                        request_tid: p.tid,
                        response_tid: 0,
                    });
                }
            }
        }
        for reader in [&mut self.requests, &mut self.responses] {
            reader.framing = Framing::Done;
            reader.msg = Progress::default();
            reader.head = Vec::new();
        }
        unanswered
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn trace_context(&self, request_bytes: &[u8]) -> Option<TraceParent> {
        super::span::find_traceparent(request_bytes)
    }
}

pub(super) fn note(error: &mut Option<Http1Error>, e: Http1Error) {
    error.get_or_insert(e);
}

pub(super) fn exchange(
    side: Side,
    request: HttpRequest,
    start_ns: u64,
    end_ns: u64,
    tid: u32,
    answered: Answered,
) -> HttpExchange {
    HttpExchange {
        side,
        request,
        response: Some(answered.response),
        request_start_ns: start_ns,
        request_end_ns: end_ns,
        response_start_ns: answered.start_ns,
        response_end_ns: answered.end_ns,
        request_tid: tid,
        response_tid: answered.tid,
    }
}

pub(super) fn looks_like_start(stream: Stream, bytes: &[u8]) -> bool {
    match stream {
        Stream::Requests => looks_like_request(bytes),
        Stream::Responses => looks_like_response(bytes),
    }
}

/// Empty lines before a message (RFC 9112 §2.2 asks servers to ignore at least one).
pub(super) fn leading_newlines(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}


#[cfg(test)]
#[path = "tests.rs"]
mod tests;
