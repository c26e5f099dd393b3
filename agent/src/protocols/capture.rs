//! Recorded captures, the `testdata/*.bin` files of each protocol: the byte streams of real
//! sessions, recorded by a TCP proxy between a real client and server, one record per `recv()`
//! of the proxy: a tag (`F`: the client wrote the bytes, `B`: the server did), the length as a
//! big-endian `u32`, the bytes. And how tests replay them through a parser ([`feed`]) and check
//! that cutting the bytes differently changes nothing ([`assert_cuts_change_nothing`]).

/// The records of a capture file, in order: (the client wrote them, the bytes).
pub fn records(file: &[u8]) -> Vec<(bool, &[u8])> {
    let mut records = Vec::new();
    let mut rest = file;
    while let [tag, a, b, c, d, tail @ ..] = rest {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let Some((bytes, after)) = tail.split_at_checked(len) else {
            break;
        };
        records.push((*tag == b'F', bytes));
        rest = after;
    }
    records
}

/// One record, owned: (the client wrote the bytes, the bytes).
pub type Event = (bool, Vec<u8>);

/// The records of a capture file, owned.
pub fn recorded(file: &[u8]) -> Vec<Event> {
    records(file)
        .into_iter()
        .map(|(client, bytes)| (client, bytes.to_vec()))
        .collect()
}

/// How the end `side` of the connection saw bytes the client wrote (`client`) or the server did.
pub fn direction(side: super::Side, client: bool) -> super::Direction {
    match (side, client) {
        (super::Side::Client, true) | (super::Side::Server, false) => super::Direction::Egress,
        _ => super::Direction::Ingress,
    }
}

/// Feeds `events` to `parser` as its end of the connection saw them: event `i` at time
/// `(i + 1) * 10` on thread 7, cut into chunks at the positions `cuts(i, bytes)` gives. Panics
/// on a parse error: a recorded session is valid.
pub fn feed<P: super::Parser>(
    parser: &mut P,
    events: &[Event],
    cuts: impl Fn(usize, &[u8]) -> Vec<usize>,
) -> Vec<P::Exchange> {
    let side = parser.side();
    let mut out = Vec::new();
    for (i, (client, bytes)) in events.iter().enumerate() {
        let ts_ns = (i as u64 + 1) * 10;
        let mut at = 0;
        let mut points = cuts(i, bytes);
        points.push(bytes.len());
        for p in points {
            if p > at {
                let chunk = super::Chunk {
                    direction: direction(side, *client),
                    ts_ns,
                    tid: 7,
                    bytes: &bytes[at..p],
                };
                if let Err(e) = parser.on_chunk(&chunk, &mut out) {
                    panic!("event {i} cut at {p}: {e}");
                }
                at = p;
            }
        }
    }
    out
}

/// The time just after the last of `events`, for closing the connection.
pub fn end_of(events: &[Event]) -> u64 {
    events.len() as u64 * 10 + 10
}

/// Asserts that cutting the records changes nothing: `run(cuts)` (a replay with those cuts)
/// gives `whole` for a cut at every byte of every record (of records longer than 2048 bytes:
/// every byte in their first and last 64 and every 61st between) and for one byte per chunk.
pub fn assert_cuts_change_nothing<T: PartialEq + std::fmt::Debug>(
    events: &[Event],
    whole: &[T],
    run: impl Fn(&dyn Fn(usize, &[u8]) -> Vec<usize>) -> Vec<T>,
) {
    for (e, (_, bytes)) in events.iter().enumerate() {
        let n = bytes.len();
        for cut in (1..n).filter(|&c| n <= 2048 || c < 64 || c + 64 > n || c % 61 == 0) {
            let split = run(&|i, _| if i == e { vec![cut] } else { Vec::new() });
            assert_eq!(split, whole, "event {e} split at {cut}");
        }
    }
    let bytewise = run(&|_, b| (1..b.len()).collect());
    assert_eq!(bytewise, whole, "one byte per chunk");
}
