//! HTTP/1.x framing: message heads (through `httparse`, bounded) and chunked bodies, including
//! finding the end of a chunked body whose framing a gap hid.

use super::*;

/// Position inside a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// Hex digits of a chunk size.
    Size { size: u64, digits: u8 },
    /// After the size: extensions and line end, up to LF.
    SizeLine { size: u64, len: u16 },
    /// Chunk data.
    Data { remaining: u64 },
    /// The CRLF after chunk data.
    DataEnd { cr: bool },
    /// Trailer section after the last chunk: `line` counts bytes of the current line.
    Trailer { line: u16, total: u32 },
}

pub(super) enum ChunkStep {
    More,
    End,
    Bad,
}

/// Advances a chunked body over `bytes`. Returns the bytes read, how many of them are body data,
/// and whether the body ended (its final empty line was the last byte read) or is malformed.
pub(super) fn decode_chunked(state: &mut ChunkState, bytes: &[u8]) -> (usize, u64, ChunkStep) {
    let mut i = 0;
    let mut data = 0u64;
    while let Some(rest) = bytes.get(i..).filter(|r| !r.is_empty()) {
        if let ChunkState::Data { remaining } = *state {
            let n = remaining.min(rest.len() as u64);
            i += n as usize;
            data += n;
            *state = if n == remaining {
                ChunkState::DataEnd { cr: false }
            } else {
                ChunkState::Data {
                    remaining: remaining - n,
                }
            };
            continue;
        }
        let Some(&b) = rest.first() else { break };
        i += 1;
        match chunk_byte(state, b) {
            Ok(false) => {}
            Ok(true) => return (i, data, ChunkStep::End),
            Err(()) => return (i, data, ChunkStep::Bad),
        }
    }
    (i, data, ChunkStep::More)
}

/// Where a chunked body stands after `len` lost bytes, and how many of them were data; `None`
/// when the framing is lost. Lost bytes inside chunk data are data; up to two more are taken to
/// be the CRLF that must follow chunk data (a write of `data\r\n` captured as a prefix); past
/// that they would hide a chunk size, and the framing is lost.
pub(super) fn chunked_after_gap(state: ChunkState, len: u64) -> Option<(u64, ChunkState)> {
    let (data, framing) = match state {
        ChunkState::Data { remaining } if len < remaining => {
            return Some((
                len,
                ChunkState::Data {
                    remaining: remaining - len,
                },
            ));
        }
        ChunkState::Data { remaining } => (remaining, len - remaining),
        ChunkState::DataEnd { cr: false } => (0, len),
        ChunkState::DataEnd { cr: true } => (0, len.saturating_add(1)),
        _ => return None,
    };
    match framing {
        0 => Some((data, ChunkState::DataEnd { cr: false })),
        1 => Some((data, ChunkState::DataEnd { cr: true })),
        2 => Some((data, ChunkState::Size { size: 0, digits: 0 })),
        _ => None,
    }
}

/// One byte of chunk framing; `Ok(true)` when it ends the body.
pub(super) fn chunk_byte(state: &mut ChunkState, b: u8) -> Result<bool, ()> {
    let end_of_size_line = |size: u64| {
        if size == 0 {
            ChunkState::Trailer { line: 0, total: 0 }
        } else {
            ChunkState::Data { remaining: size }
        }
    };
    *state = match *state {
        ChunkState::Size { size, digits } => match (b as char).to_digit(16) {
            Some(v) if digits < 16 => ChunkState::Size {
                size: (size << 4) | u64::from(v),
                digits: digits + 1,
            },
            Some(_) => return Err(()),
            None if digits == 0 => return Err(()),
            None => match b {
                b'\n' => end_of_size_line(size),
                b'\r' | b';' | b' ' | b'\t' => ChunkState::SizeLine { size, len: 1 },
                _ => return Err(()),
            },
        },
        ChunkState::SizeLine { size, len } => match b {
            b'\n' => end_of_size_line(size),
            _ if len >= MAX_CHUNK_LINE => return Err(()),
            b'\t' | b'\r' | b' '..=b'~' | 0x80..=0xff => {
                ChunkState::SizeLine { size, len: len + 1 }
            }
            _ => return Err(()),
        },
        ChunkState::DataEnd { cr } => match b {
            b'\r' if !cr => ChunkState::DataEnd { cr: true },
            b'\n' => ChunkState::Size { size: 0, digits: 0 },
            _ => return Err(()),
        },
        ChunkState::Trailer { line, total } => {
            if total >= MAX_TRAILER_BYTES {
                return Err(());
            }
            match b {
                b'\n' if line == 0 => return Ok(true),
                b'\n' => ChunkState::Trailer {
                    line: 0,
                    total: total + 1,
                },
                b'\r' => ChunkState::Trailer {
                    line,
                    total: total + 1,
                },
                _ => ChunkState::Trailer {
                    line: line.saturating_add(1),
                    total: total + 1,
                },
            }
        }
        // Handled in bulk by the caller; a zero-length data state means the data is over.
        ChunkState::Data { .. } => ChunkState::DataEnd { cr: false },
    };
    Ok(false)
}

/// Whether `buf`, the last bytes of a chunked body whose framing was lost, ends with the end of
/// that body: the CRLF that ends chunk data, the last-chunk line (`0`, extensions allowed),
/// trailer fields, and the final empty line, every line ended by CRLF. When `from_gap`, `buf`
/// holds every byte since a gap, and the last-chunk line may start it (the CRLF before it
/// taken to be lost). Returns how many bytes at the end of `buf` are that framing.
///
/// Chunk data that happens to end the same way at the end of a chunk is taken for the end.
pub(super) fn last_chunk_at_end(buf: &[u8], from_gap: bool) -> Option<usize> {
    // The final empty line, and the CRLF that ends the line before it.
    let mut end = buf.len().checked_sub(2)?;
    if buf.get(end..)? != b"\r\n" {
        return None;
    }
    loop {
        let line_end = end.checked_sub(2)?;
        if buf.get(line_end..end)? != b"\r\n" {
            return None;
        }
        let line_start = buf
            .get(..line_end)?
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        let line = buf.get(line_start..line_end)?;
        if is_last_chunk_line(line) {
            let before = buf.get(..line_start)?;
            return if before.ends_with(b"\r\n") {
                Some(buf.len() - line_start + 2)
            } else if from_gap && (before.is_empty() || before == b"\n") {
                Some(buf.len())
            } else {
                None
            };
        }
        if line_start == 0 || !is_trailer_line(line) {
            return None;
        }
        end = line_start;
    }
}

/// `0` (one or more zeros), then nothing or extensions: the size line of the last chunk.
pub(super) fn is_last_chunk_line(line: &[u8]) -> bool {
    let zeros = line.iter().take_while(|&&b| b == b'0').count();
    let rest = line.get(zeros..).unwrap_or_default();
    (1..=16).contains(&zeros)
        && rest
            .first()
            .is_none_or(|b| matches!(b, b';' | b' ' | b'\t'))
        && rest
            .iter()
            .all(|&b| matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff))
}

/// `name: value`: a trailer field.
pub(super) fn is_trailer_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = line.split_at(colon);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff))
}

/// A character of an HTTP token (RFC 9110 §5.6.2).
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a request's body is delimited.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RequestBody {
    None,
    Fixed(u64),
    Chunked,
}

/// What the headers say about a body, before the status and method are known.
pub(super) struct BodyHeaders {
    /// `Some(chunked is the final coding)` when `Transfer-Encoding` is present.
    pub(super) transfer_encoding_chunked: Option<bool>,
    /// `Err` when invalid or conflicting.
    pub(super) content_length: Result<Option<u64>, ()>,
}

pub(super) fn parser_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    config
}

/// Parses a complete request head (it ends with its empty line).
pub(super) fn parse_request_head(head: &[u8]) -> Result<(HttpRequest, RequestBody), Http1Error> {
    fn parse<'b>(
        head: &'b [u8],
        headers: &mut [httparse::Header<'b>],
    ) -> Result<(HttpRequest, RequestBody), Http1Error> {
        let mut req = httparse::Request::new(headers);
        match parser_config().parse_request(&mut req, head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            Ok(_) => return Err(Http1Error::BadHead(httparse::Error::NewLine)),
            Err(e) => return Err(map_httparse(e)),
        }
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(Http1Error::BadHead(httparse::Error::Token));
        };
        let body = body_headers(req.headers);
        let framing = match body.transfer_encoding_chunked {
            Some(true) => RequestBody::Chunked,
            Some(false) => return Err(Http1Error::BadTransferEncoding),
            None => match body
                .content_length
                .map_err(|()| Http1Error::BadContentLength)?
            {
                None | Some(0) => RequestBody::None,
                Some(n) => RequestBody::Fixed(n),
            },
        };
        let request = HttpRequest {
            method: method.to_owned(),
            target: truncate_str(target, MAX_TARGET_BYTES).to_owned(),
            version_minor: version,
            headers: Headers::keep(req.headers),
            body_len: 0,
        };
        Ok((request, framing))
    }
    with_header_buffer(head, parse)
}

/// Parses a complete response head (it ends with its empty line).
pub(super) fn parse_response_head(head: &[u8]) -> Result<(HttpResponse, BodyHeaders), Http1Error> {
    fn parse<'b>(
        head: &'b [u8],
        headers: &mut [httparse::Header<'b>],
    ) -> Result<(HttpResponse, BodyHeaders), Http1Error> {
        let mut resp = httparse::Response::new(headers);
        match parser_config().parse_response(&mut resp, head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            Ok(_) => return Err(Http1Error::BadHead(httparse::Error::NewLine)),
            Err(e) => return Err(map_httparse(e)),
        }
        let (Some(status), Some(version)) = (resp.code, resp.version) else {
            return Err(Http1Error::BadHead(httparse::Error::Status));
        };
        let response = HttpResponse {
            status,
            version_minor: version,
            headers: Headers::keep(resp.headers),
            body_len: 0,
        };
        Ok((response, body_headers(resp.headers)))
    }
    with_header_buffer(head, parse)
}

/// Runs `parse` with a header buffer on the stack, and with a larger one on the heap when the
/// message has more headers than that.
pub(super) fn with_header_buffer<T>(
    head: &[u8],
    parse: for<'h, 'b> fn(&'b [u8], &'h mut [httparse::Header<'b>]) -> Result<T, Http1Error>,
) -> Result<T, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    match parse(head, &mut headers) {
        Err(Http1Error::TooManyHeaders) => {
            let mut headers = vec![httparse::EMPTY_HEADER; MAX_PARSED_HEADERS];
            parse(head, &mut headers)
        }
        other => other,
    }
}

pub(super) fn map_httparse(e: httparse::Error) -> Http1Error {
    match e {
        httparse::Error::TooManyHeaders => Http1Error::TooManyHeaders,
        other => Http1Error::BadHead(other),
    }
}

pub(super) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Reads `Transfer-Encoding` and `Content-Length` from every header (kept or not).
pub(super) fn body_headers(headers: &[httparse::Header<'_>]) -> BodyHeaders {
    let mut transfer_encoding_chunked = None;
    let mut content_length: Result<Option<u64>, ()> = Ok(None);
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The final coding of the last header decides; parameters (`;q=..`) do not matter.
            let last = h
                .value
                .split(|&b| b == b',')
                .map(trim)
                .rev()
                .find(|t| !t.is_empty());
            if let Some(coding) = last {
                let name = trim(coding.split(|&b| b == b';').next().unwrap_or_default());
                transfer_encoding_chunked = Some(name.eq_ignore_ascii_case(b"chunked"));
            } else if transfer_encoding_chunked.is_none() {
                transfer_encoding_chunked = Some(false);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // `Content-Length: 5, 5` and repeated equal headers are accepted (RFC 9110 §8.6).
            for part in h.value.split(|&b| b == b',').map(trim) {
                content_length = match (content_length, parse_decimal(part)) {
                    (Ok(None), Some(n)) => Ok(Some(n)),
                    (Ok(Some(m)), Some(n)) if m == n => Ok(Some(n)),
                    _ => Err(()),
                };
            }
        }
    }
    BodyHeaders {
        transfer_encoding_chunked,
        content_length,
    }
}

pub(super) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

pub(super) fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

