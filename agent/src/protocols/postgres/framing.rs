//! Where PostgreSQL messages start: the first bytes of a connection (a startup packet, or a
//! frontend message when the connection was picked up later), and where the framing of a
//! direction is found again after a gap hid a message boundary.

use super::*;

/// Where, in a chunk seen after framing was lost, messages can be read again.
///
/// Client: the chunk starts with a plausible message (clients write whole messages), or ends with
/// a well-formed run of messages ending with `Sync`. Server: the chunk ends with a well-formed run
/// of messages ending with `ReadyForQuery`. Of such runs, the one starting earliest within the
/// last [`RESYNC_WINDOW`] bytes is taken.
pub(super) fn resync_offset(stream: Stream, bytes: &[u8]) -> Option<usize> {
    let n = bytes.len();
    match stream {
        Stream::Frontend if looks_like_frontend_message(bytes) => Some(0),
        // The tail of a write of a long Parse/Bind/Execute/Sync pipeline.
        Stream::Frontend => {
            if n < 5 || bytes[n - 5..] != *b"S\0\0\0\x04" {
                return None;
            }
            (n.saturating_sub(RESYNC_WINDOW)..n - 5).find(|&i| runs_to_end(&bytes[i..], FRONTEND_TYPES))
        }
        Stream::Backend => {
            if n < 6 || bytes[n - 6] != b'Z' || bytes[n - 5..n - 1] != [0, 0, 0, 5] {
                return None;
            }
            (n.saturating_sub(RESYNC_WINDOW)..n - 5).find(|&i| runs_to_end(&bytes[i..], BACKEND_TYPES))
        }
    }
}

/// Whether `bytes` is exactly a sequence of whole messages of these types.
fn runs_to_end(mut bytes: &[u8], types: &[u8]) -> bool {
    while !bytes.is_empty() {
        if bytes.len() < 5 || !types.contains(&bytes[0]) {
            return false;
        }
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len < 4 || len + 1 > bytes.len() {
            return false;
        }
        bytes = &bytes[len + 1..];
    }
    true
}

/// Whether the first bytes of a stream are a startup packet: a protocol 3 `StartupMessage` with
/// a parameter name first, an `SSLRequest`, a `GSSENCRequest` or a `CancelRequest`, each sent as
/// one write.
pub fn looks_like_startup(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return false;
    }
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8 && bytes.len() == 8,
        CANCEL_REQUEST => len == 16 && bytes.len() == 16,
        PROTOCOL_3 => {
            if !(9..=MAX_STARTUP_LEN).contains(&len) || bytes.len() > len as usize {
                return false;
            }
            // A parameter name, NUL-terminated: lower-case letters and `_`.
            let params = &bytes[8..];
            let (name, _) = cstr(params);
            name.len() < params.len()
                && (1..=64).contains(&name.len())
                && name.iter().all(|b| b.is_ascii_lowercase() || *b == b'_')
        }
        _ => false,
    }
}

/// Whether a chunk starts with a client message that a connection already past its startup
/// sends to begin a request: a `Query` or a `Parse` with a plausible length and text, or a `Bind`
/// whose names are text (a prepared statement executed again). Used to pick up connections opened
/// before ztrace started; the HTTP checks run first. Text protocols never match: any printable
/// bytes after the type byte make a length above the 64 MiB accepted here.
pub fn looks_like_frontend_message(bytes: &[u8]) -> bool {
    if bytes.len() < 6 {
        return false;
    }
    let typ = bytes[0];
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if !(6..=(64 << 20)).contains(&len) {
        return false;
    }
    let whole = bytes.len() > len;
    let body = &bytes[5..bytes.len().min(len + 1)];
    let text = |s: &[u8]| s.iter().all(|&b| b >= 0x20 || b == b'\n' || b == b'\r' || b == b'\t');
    match typ {
        b'Q' => {
            let (sql, _) = cstr(body);
            let shape_ok = if whole { sql.len() + 1 == body.len() } else { sql.len() == body.len() };
            !sql.is_empty() && shape_ok && text(sql)
        }
        b'P' | b'B' => {
            let (name, rest) = cstr(body);
            if name.len() == body.len() || name.len() > 256 || !text(name) {
                return false;
            }
            let (second, _) = cstr(rest);
            let terminated = second.len() < rest.len();
            (terminated || !whole) && text(second) && (typ == b'B' || !second.is_empty())
        }
        _ => false,
    }
}
