//! Parser tests on sessions recorded between Debian's pika 1.2 (`BlockingConnection`) and
//! rabbitmq-server 3.10.8 by the relaying proxy of `protocols/postgres/testdata/record.py`
//! (the fixtures `tests/fixtures/amqp_publisher.py` and `amqp_consumer.py`): the publisher's
//! connection (two messages to the default exchange, the second with a `traceparent` among its
//! headers, one to the exchange `jobs.x`) and the consumer's (the two pushed by
//! `basic.deliver`, the third pulled by `basic.get`, after two `basic.get-empty`), each
//! replayed whole, split at every byte of every record, and one byte per chunk.

use super::*;

use crate::protocols::capture::{self, assert_cuts_change_nothing, recorded, Event};

fn run_with(
    side: Side,
    events: &[Event],
    cuts: &dyn Fn(usize, &[u8]) -> Vec<usize>,
) -> Vec<AmqpMessage> {
    let mut parser = AmqpParser::new(side);
    let out = capture::feed(&mut parser, events, cuts);
    assert_eq!(parser.take_lost(), 0);
    out
}

fn replay(file: &[u8]) -> Vec<AmqpMessage> {
    let events = recorded(file);
    let whole = run_with(Side::Client, &events, &|_, _| Vec::new());
    assert!(
        run_with(Side::Server, &events, &|_, _| Vec::new()).is_empty(),
        "the broker's side makes no spans"
    );
    assert_cuts_change_nothing(&events, &whole, |cuts| {
        run_with(Side::Client, &events, cuts)
    });
    whole
}

const PUBLISHER: &[u8] = include_bytes!("testdata/pika_publisher.bin");
const CONSUMER: &[u8] = include_bytes!("testdata/pika_consumer.bin");

#[test]
fn recorded_publisher_and_consumer_see_the_same_messages() {
    let published = replay(PUBLISHER);
    let delivered = replay(CONSUMER);
    let summary = |out: &[AmqpMessage]| -> Vec<(Operation, String, String, u64, Option<u64>)> {
        out.iter()
            .map(|m| {
                (
                    m.operation,
                    m.exchange.to_string(),
                    m.routing_key.to_string(),
                    m.body_size,
                    m.delivery_tag,
                )
            })
            .collect()
    };
    let order = |op, tag| (op, String::new(), "orders".to_owned(), 36, tag);
    let job = |op, tag| (op, "jobs.x".to_owned(), "nightly".to_owned(), 26, tag);
    assert_eq!(
        summary(&published),
        [
            order(Operation::Publish, None),
            order(Operation::Publish, None),
            job(Operation::Publish, None)
        ]
    );
    assert_eq!(
        summary(&delivered),
        [
            order(Operation::Deliver, Some(1)),
            order(Operation::Deliver, Some(2)),
            job(Operation::Get, Some(3))
        ]
    );
    // The key of each message is the same on both ends, and differs between messages with the
    // same destination and size but another body.
    let keys = |out: &[AmqpMessage]| out.iter().map(AmqpMessage::key).collect::<Vec<_>>();
    assert_eq!(keys(&published), keys(&delivered));
    assert_ne!(published[0].key(), published[1].key());
    // The second order carries a traceparent among its headers, on both ends.
    for out in [&published, &delivered] {
        let tp = out[1].traceparent.expect("traceparent");
        assert_eq!(tp.trace_id[..4], [0x0a, 0xf7, 0x65, 0x19]);
        assert_eq!(
            tp.parent_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert_eq!(out[0].traceparent, None);
    }
    assert!(delivered[0].consumer_tag.as_deref().is_some_and(|t| t.starts_with("ctag")));
    // The pull starts at its basic.get (the third; the first two found the queue empty).
    let get = &delivered[2];
    assert_eq!(get.queue.as_deref(), Some("jobs"));
    assert!(get.start_ns < get.end_ns, "{get:?}");
    let dump = format!("{published:?} {delivered:?}");
    assert!(
        !dump.contains("payload-never") && !dump.contains("guest"),
        "bodies and credentials are never kept: {dump}"
    );
}

/// A frame: type, channel, payload, end byte.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend(channel.to_be_bytes());
    f.extend((payload.len() as u32).to_be_bytes());
    f.extend(payload);
    f.push(frame::FRAME_END);
    f
}

fn publish(channel: u16, exchange: &str, key: &str, body: &[u8], frame_max: usize) -> Vec<u8> {
    let mut m = vec![0, 60, 0, 40, 0, 0, exchange.len() as u8];
    m.extend(exchange.as_bytes());
    m.push(key.len() as u8);
    m.extend(key.as_bytes());
    m.push(0);
    let mut h = vec![0, 60, 0, 0];
    h.extend((body.len() as u64).to_be_bytes());
    h.extend([0, 0]);
    let mut out = frame(1, channel, &m);
    out.extend(frame(2, channel, &h));
    for part in body.chunks(frame_max) {
        out.extend(frame(3, channel, part));
    }
    out
}

fn feed(parser: &mut AmqpParser, bytes: &[u8], out: &mut Vec<AmqpMessage>) -> Result<(), AmqpParseError> {
    parser.on_chunk(
        &Chunk {
            direction: Direction::Egress,
            ts_ns: 1,
            tid: 1,
            bytes,
        },
        out,
    )
}

#[test]
fn interleaved_channels_and_bodies_over_many_frames_with_a_gap() {
    let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let mut parser = AmqpParser::new(Side::Client);
    let mut out = Vec::new();
    let a = publish(1, "x", "k", &body, 4096);
    let b = publish(2, "", "q", b"small", 4096);
    // Channel 2's message goes out between channel 1's method (19 bytes) and its content.
    feed(&mut parser, &a[..19], &mut out).expect("frames");
    feed(&mut parser, &b, &mut out).expect("frames");
    // 100 bytes not captured in the first body frame (it starts at byte 41), after the
    // digest's bytes.
    let hole_at = 41 + 7 + 1000;
    feed(&mut parser, &a[19..hole_at], &mut out).expect("frames");
    let gap = Gap {
        direction: Direction::Egress,
        ts_ns: 2,
        len: 100,
    };
    parser.on_gap(&gap, &mut out).expect("a gap inside a body frame");
    feed(&mut parser, &a[hole_at + 100..], &mut out).expect("frames");
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!((&*out[0].routing_key, out[0].body_size), ("q", 5));
    assert_eq!((&*out[1].exchange, out[1].body_size), ("x", 100_000));
    assert_eq!(
        out[1].key(),
        digest("x", "k", 100_000, &body[..DIGEST_BYTES]),
        "the gap fell after the digest's bytes"
    );
}

#[test]
fn a_gap_across_a_frame_boundary_is_an_error_and_framing_is_found_again() {
    let mut parser = AmqpParser::new(Side::Client);
    let mut out = Vec::new();
    let a = publish(1, "x", "k", b"hello", 4096);
    feed(&mut parser, &a[..25], &mut out).expect("frames"); // the method and part of the header
    let gap = Gap {
        direction: Direction::Egress,
        ts_ns: 2,
        len: 1000,
    };
    assert!(parser.on_gap(&gap, &mut out).is_err());
    feed(&mut parser, b"garbage that is no frame", &mut out).expect("skipped while damaged");
    assert_eq!(parser.take_lost(), 1, "the message half read");
    feed(&mut parser, &a, &mut out).expect("a fresh frame");
    assert_eq!(out.len(), 1);
}

#[test]
fn bytes_that_are_no_frames_are_errors() {
    for bad in [
        &b"\x05\x00\x01\x00\x00\x00\x00\xce"[..], // unknown type
        b"\x01\x00\x01\x00\x00\x00\x01\x00\x00",  // no end byte
        b"AMQX\x00\x00\x09\x01",
    ] {
        let mut parser = AmqpParser::new(Side::Client);
        assert!(feed(&mut parser, bad, &mut Vec::new()).is_err(), "{bad:?}");
    }
}

#[test]
fn detection_from_either_end() {
    let chunk = |direction, bytes: &'static [u8]| Chunk {
        direction,
        ts_ns: 1,
        tid: 1,
        bytes,
    };
    assert_eq!(
        detect_side(&chunk(Direction::Egress, b"AMQP\x00\x00\x09\x01")),
        Some(Side::Client)
    );
    assert_eq!(
        detect_side(&chunk(Direction::Ingress, b"AMQP\x00\x00\x09\x01")),
        Some(Side::Server)
    );
    // Picked up mid-stream: a delivery read by the client, a publish read by the broker.
    let events = recorded(CONSUMER);
    let deliver = events
        .iter()
        .find(|(client, b)| !client && b.get(7..11) == Some(&[0, 60, 0, 60][..]))
        .expect("a basic.deliver");
    let c = Chunk {
        direction: Direction::Ingress,
        ts_ns: 1,
        tid: 1,
        bytes: &deliver.1,
    };
    assert_eq!(detect_side(&c), Some(Side::Client));
    let publish = publish(1, "", "q", b"x", 10);
    let c = Chunk {
        direction: Direction::Ingress,
        ts_ns: 1,
        tid: 1,
        bytes: &publish,
    };
    assert_eq!(detect_side(&c), Some(Side::Server));
    assert_eq!(
        detect_side(&chunk(Direction::Egress, b"GET / HTTP/1.1\r\n")),
        None
    );
    assert_eq!(
        detect_side(&chunk(Direction::Egress, b"\x08\x00\x00\x00\x00\x00\x00\xce")),
        None,
        "a heartbeat says not which end sent it"
    );
    assert_eq!(
        detect_side(&chunk(
            Direction::Ingress,
            b"\x01\x00\x01\x00\x00\x00\x0d\x00\x3c\x00\x50\x00\x00\x00\x00\x00\x00\x00\x01\x00\xce"
        )),
        None,
        "basic.ack goes both ways (publisher confirms)"
    );
}

#[test]
fn mutated_recordings_never_panic() {
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let files: [&[u8]; 2] = [PUBLISHER, CONSUMER];
    for round in 0..2000 {
        let (requests, replies): (Vec<_>, Vec<_>) = recorded(files[round % 2])
            .into_iter()
            .partition(|(c, _)| *c);
        let requests: Vec<u8> = requests.into_iter().flat_map(|(_, b)| b).collect();
        let replies: Vec<u8> = replies.into_iter().flat_map(|(_, b)| b).collect();
        let mut data = vec![
            next() as u8 & !1,
            (requests.len() * 255 / (requests.len() + replies.len())) as u8,
            (next() % 8) as u8,
        ];
        data.extend(&requests);
        data.extend(&replies);
        for _ in 0..(next() % 8) {
            let at = 3 + (next() as usize) % (data.len() - 3);
            data[at] = next() as u8;
        }
        crate::protocols::fuzz::feed(&Amqp, &data);
    }
}
