//! The one driver of every protocol's fuzz target (`agent/fuzz/`): arbitrary bytes as the two
//! directions of one connection, fed to the protocol's parser in alternating chunks, with gaps,
//! then a close; a parser's successor at a protocol switch reads on. The parser must not panic
//! nor grow without bound.
//!
//! Input: byte 0 picks the side (bit 0), whether the database protocols keep bound values
//! (bit 1) and the chunk size (bits 2..8, plus one); byte 1 where the rest splits into
//! request-direction bytes (before) and answer-direction bytes (after); byte 2 how often a gap
//! follows a chunk (0: never).

use super::{Chunk, Options, Protocol, Side};

/// Feeds `data` (see the module docs) to a fresh parser of `protocol`.
pub fn feed(protocol: &dyn Protocol, data: &[u8]) {
    let [control, split, gap_every, payload @ ..] = data else {
        return;
    };
    let side = if control & 1 == 0 {
        Side::Client
    } else {
        Side::Server
    };
    let options = Options {
        db_query_parameters: control & 2 != 0,
    };
    let step = usize::from(control >> 2) + 1;
    let (requests, answers) = payload.split_at(payload.len() * usize::from(*split) / 255);
    let request_dir = side.request_direction();
    let answer_dir = match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
    .request_direction();

    let mut parser = protocol.parser(side, requests, &options);
    let mut out = Vec::new();
    let mut ts_ns = 0u64;
    let (mut request_chunks, mut answer_chunks) = (requests.chunks(step), answers.chunks(step));
    loop {
        let mut fed = false;
        for (direction, chunks) in [
            (request_dir, &mut request_chunks),
            (answer_dir, &mut answer_chunks),
        ] {
            let Some(bytes) = chunks.next() else { continue };
            fed = true;
            ts_ns += 1;
            let gap = if ts_ns.checked_rem(u64::from(*gap_every)) == Some(0) {
                u64::from(bytes.first().copied().unwrap_or(0))
            } else {
                0
            };
            let _ = parser.on_data(
                &Chunk {
                    direction,
                    ts_ns,
                    tid: 1,
                    bytes,
                },
                gap,
                &[],
                &mut out,
            );
            // A protocol switch (HTTP/1.1 upgraded to h2c): the successor reads on, as in the
            // connection table.
            if let Some((mut next, rest)) = parser.take_successor() {
                let _ = next.on_data(
                    &Chunk {
                        direction,
                        ts_ns,
                        tid: 1,
                        bytes: &rest,
                    },
                    0,
                    &[],
                    &mut out,
                );
                parser = next;
            }
            let mut opened = Vec::new();
            parser.take_opened(&mut opened);
        }
        out.clear();
        if !fed {
            break;
        }
    }
    parser.on_close(ts_ns + 1, &mut out);
}
