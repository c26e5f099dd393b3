//! Decoding of ring-buffer records into typed kernel events. Pure: no I/O, no allocation.

use ztrace_common::{ConnEvent, DataEventHeader, EventHeader, EventKind};

/// One record from the kernel, borrowed from the ring buffer.
#[derive(Debug)]
pub enum KernelEvent<'a> {
    Conn(ConnEvent),
    Data { header: DataEventHeader, payload: &'a [u8] },
    Close(EventHeader),
}

/// Why a record could not be decoded (counted as `events_malformed`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("data event claims {claimed} captured bytes but carries {present}")]
    BadCapture { claimed: u32, present: usize },
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length was checked; T is a #[repr(C)] plain-old-data type from ztrace-common
    // (every bit pattern valid), and read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let header: EventHeader = read(bytes)?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Conn) => Ok(KernelEvent::Conn(read(bytes)?)),
        Some(EventKind::Close) => Ok(KernelEvent::Close(header)),
        Some(EventKind::Data) => {
            let data: DataEventHeader = read(bytes)?;
            let payload = &bytes[size_of::<DataEventHeader>()..];
            let claimed = data.captured as usize;
            if claimed > payload.len() || data.captured > data.len {
                return Err(DecodeError::BadCapture { claimed: data.captured, present: payload.len() });
            }
            Ok(KernelEvent::Data { header: data, payload: &payload[..claimed] })
        }
        None => Err(DecodeError::UnknownKind(header.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) POD value as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader { kind: kind as u32, tgid: 10, tid: 11, fd: 3, ts_ns: 99, conn_gen: 7 }
    }

    #[test]
    fn decodes_data_with_payload() {
        let h = DataEventHeader { header: header(EventKind::Data), direction: 1, source: 1, len: 10, captured: 3 };
        let mut rec = as_bytes(&h);
        rec.extend_from_slice(b"GET");
        match decode(&rec).expect("decode") {
            KernelEvent::Data { header, payload } => {
                assert_eq!(header.len, 10);
                assert_eq!(payload, b"GET");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_short_unknown_and_lying_records() {
        assert_eq!(decode(&[0u8; 5]).err(), Some(DecodeError::Short(5)));
        let mut h = header(EventKind::Close);
        h.kind = 77;
        assert_eq!(decode(&as_bytes(&h)).err(), Some(DecodeError::UnknownKind(77)));
        let d = DataEventHeader { header: header(EventKind::Data), direction: 1, source: 1, len: 10, captured: 8 };
        assert!(matches!(decode(&as_bytes(&d)), Err(DecodeError::BadCapture { .. })));
        let short_conn = as_bytes(&header(EventKind::Conn));
        assert!(matches!(decode(&short_conn), Err(DecodeError::Short(_))));
    }
}
