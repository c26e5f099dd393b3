//! Recorded captures, the `testdata/*.bin` files of each protocol: the byte streams of real
//! sessions, recorded by a TCP proxy between a real client and server, one record per `recv()`
//! of the proxy: a tag (`F`: the client wrote the bytes, `B`: the server did), the length as a
//! big-endian `u32`, the bytes.

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
