//! Fuzzes the PostgreSQL parser with arbitrary bytes as the two directions of one connection.
//!
//! Input: byte 0 picks the side (bit 0), whether the stream starts with a startup packet (bit 1)
//! and the chunk size (bits 2..8, plus one); byte 1 where the rest splits into client-direction
//! bytes (before) and server-direction bytes (after); byte 2 how often a gap follows a chunk
//! (0: never). The two directions are fed in alternating chunks, then the connection is closed.
//! Bind parameter values are kept when byte 1 is odd (`--db-query-parameters`).
//! The parser must not panic nor grow without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztrace::protocols::{postgres::PgParser, Chunk, Direction, Gap, Side};

fuzz_target!(|data: &[u8]| feed(data));

fn feed(data: &[u8]) {
    let [control, split, gap_every, payload @ ..] = data else {
        return;
    };
    let side = if control & 1 == 0 { Side::Client } else { Side::Server };
    let from_startup = control & 2 != 0;
    let step = usize::from(control >> 2) + 1;
    let (frontend, backend) = payload.split_at(payload.len() * usize::from(*split) / 255);
    let (frontend_dir, backend_dir) = match side {
        Side::Client => (Direction::Egress, Direction::Ingress),
        Side::Server => (Direction::Ingress, Direction::Egress),
    };

    let mut parser = PgParser::new(side, from_startup).keep_parameters(split & 1 == 1);
    let mut out = Vec::new();
    let mut ts_ns = 0u64;
    let (mut front_chunks, mut back_chunks) = (frontend.chunks(step), backend.chunks(step));
    loop {
        let mut fed = false;
        for (direction, chunks) in [(frontend_dir, &mut front_chunks), (backend_dir, &mut back_chunks)] {
            let Some(bytes) = chunks.next() else { continue };
            fed = true;
            ts_ns += 1;
            let _ = parser.on_chunk(&Chunk { direction, ts_ns, tid: 1, bytes }, &mut out);
            if *gap_every != 0 && ts_ns % u64::from(*gap_every) == 0 {
                let len = u64::from(bytes.first().copied().unwrap_or(0));
                let _ = parser.on_gap(&Gap { direction, ts_ns, len }, &mut out);
            }
        }
        out.clear();
        if !fed {
            break;
        }
    }
    parser.on_close(ts_ns + 1, &mut out);
}
