//! Decoding of ring-buffer records into typed kernel events. Pure: no I/O, no allocation.

use ztrace_common::{
    ConnEvent, DataEventHeader, EventHeader, EventKind, GoSpawnEvent, GoStreamEvent,
    StackEventHeader,
};

/// One record from the kernel, borrowed from the ring buffer.
#[derive(Debug)]
pub enum KernelEvent<'a> {
    Conn(ConnEvent),
    /// `prefix` is the start of the bytes moved, `tail` their last bytes when the middle was
    /// not copied (see `DataEventHeader`).
    Data {
        header: DataEventHeader,
        prefix: &'a [u8],
        tail: &'a [u8],
    },
    Close(EventHeader),
    /// A traced process ran a new executable.
    Exec(EventHeader),
    /// The user stack at a request's first write: registers, frame-pointer addresses, and
    /// `stack`, the copied top of the stack from `header.rsp` up.
    Stack {
        header: Box<StackEventHeader>,
        stack: &'a [u8],
    },
    /// A followed Go program started a goroutine.
    GoSpawn(GoSpawnEvent),
    /// A followed Go program's gRPC client created a stream.
    GoStream(GoStreamEvent),
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

/// The bytes of a kernel record, as the kernel writes them (for tests and the capture benchmark,
/// which replay records without a kernel).
pub fn encode<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: T is a #[repr(C)] plain-old-data type from ztrace-common (`aya::Pod`): all of its
    // size_of::<T>() bytes are initialized (explicit padding fields), and the slice lives no
    // longer than `value`.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let header: EventHeader = read(bytes)?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Conn) => Ok(KernelEvent::Conn(read(bytes)?)),
        Some(EventKind::Close) => Ok(KernelEvent::Close(header)),
        Some(EventKind::Exec) => Ok(KernelEvent::Exec(header)),
        Some(EventKind::GoSpawn) => Ok(KernelEvent::GoSpawn(read(bytes)?)),
        Some(EventKind::GoStream) => Ok(KernelEvent::GoStream(read(bytes)?)),
        Some(EventKind::Data) => {
            let data: DataEventHeader = read(bytes)?;
            let payload = &bytes[size_of::<DataEventHeader>()..];
            let captured = data.captured as usize;
            let claimed = captured + data.tail as usize;
            if claimed > payload.len()
                || u64::from(data.captured) + u64::from(data.tail) > u64::from(data.len)
            {
                return Err(DecodeError::BadCapture {
                    claimed: claimed as u32,
                    present: payload.len(),
                });
            }
            Ok(KernelEvent::Data {
                header: data,
                prefix: &payload[..captured],
                tail: &payload[captured..claimed],
            })
        }
        Some(EventKind::Stack) => {
            let stack: StackEventHeader = read(bytes)?;
            let rest = &bytes[size_of::<StackEventHeader>()..];
            let len = stack.stack_len as usize;
            if len > rest.len() || stack.ips_len as usize > stack.ips.len() {
                return Err(DecodeError::BadCapture {
                    claimed: stack.stack_len,
                    present: rest.len(),
                });
            }
            Ok(KernelEvent::Stack {
                header: Box::new(stack),
                stack: &rest[..len],
            })
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
        EventHeader {
            kind: kind as u32,
            tgid: 10,
            tid: 11,
            fd: 3,
            ts_ns: 99,
            conn_gen: 7,
        }
    }

    #[test]
    fn decodes_a_goroutine_start_and_refuses_a_short_one() {
        let ev = GoSpawnEvent {
            header: header(EventKind::GoSpawn),
            parent_goid: 7,
            child_goid: 42,
            caller_pc: 0x40_1000,
        };
        let rec = as_bytes(&ev);
        assert!(
            matches!(decode(&rec), Ok(KernelEvent::GoSpawn(e)) if e.parent_goid == 7 && e.child_goid == 42)
        );
        assert_eq!(decode(&rec[..40]).err(), Some(DecodeError::Short(40)));
    }

    #[test]
    fn decodes_data_with_payload() {
        let h = DataEventHeader {
            header: header(EventKind::Data),
            direction: 1,
            source: 1,
            len: 10,
            captured: 3,
            tail: 2,
            goid: 0,
            ids_flags: 0,
            _pad: 0,
            ids: ztrace_common::RequestIds::default(),
        };
        let mut rec = as_bytes(&h);
        rec.extend_from_slice(b"GET\r\n");
        match decode(&rec).expect("decode") {
            KernelEvent::Data {
                header,
                prefix,
                tail,
            } => {
                assert_eq!(header.len, 10);
                assert_eq!(prefix, b"GET");
                assert_eq!(tail, b"\r\n");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_short_unknown_and_lying_records() {
        assert_eq!(decode(&[0u8; 5]).err(), Some(DecodeError::Short(5)));
        let mut h = header(EventKind::Close);
        h.kind = 77;
        assert_eq!(
            decode(&as_bytes(&h)).err(),
            Some(DecodeError::UnknownKind(77))
        );
        let d = DataEventHeader {
            header: header(EventKind::Data),
            direction: 1,
            source: 1,
            len: 10,
            captured: 8,
            tail: 0,
            goid: 0,
            ids_flags: 0,
            _pad: 0,
            ids: ztrace_common::RequestIds::default(),
        };
        assert!(matches!(
            decode(&as_bytes(&d)),
            Err(DecodeError::BadCapture { .. })
        ));
        let mut rec = as_bytes(&DataEventHeader {
            captured: 4,
            tail: 8,
            ..d
        });
        rec.extend_from_slice(&[0; 12]);
        assert!(
            matches!(decode(&rec), Err(DecodeError::BadCapture { .. })),
            "prefix + tail > len"
        );
        let stack = StackEventHeader {
            header: header(EventKind::Stack),
            rip: 1,
            rsp: 2,
            rbp: 3,
            ips_len: 1,
            stack_len: 16,
            stream: 0,
            ips: [0; ztrace_common::MAX_STACK_DEPTH],
        };
        let mut rec = as_bytes(&stack);
        rec.extend_from_slice(&[7; 8]);
        assert!(
            matches!(decode(&rec), Err(DecodeError::BadCapture { .. })),
            "stack shorter than claimed"
        );
        rec.extend_from_slice(&[7; 8]);
        assert!(matches!(decode(&rec), Ok(KernelEvent::Stack { stack, .. }) if stack.len() == 16));
        let short_conn = as_bytes(&header(EventKind::Conn));
        assert!(matches!(decode(&short_conn), Err(DecodeError::Short(_))));
    }
}
