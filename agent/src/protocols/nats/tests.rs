//! Parser tests on sessions recorded between nats-py 2.16 and nats-server 2.9.10 by the relaying
//! proxy of `protocols/postgres/testdata/record.py`: a publisher/requester connection (`PUB`,
//! `HPUB` with a `traceparent`, a request to `svc.ping` with an `_INBOX` reply subject, its reply
//! delivered) and the subscriber/responder's (`MSG`, `HMSG`, the request delivered with its
//! reply subject, the reply published), each replayed whole, split at every byte of every
//! record, and one byte per chunk.

use super::*;

use crate::protocols::capture::{assert_cuts_change_nothing, feed, recorded, Event};

fn run_with(
    side: Side,
    events: &[Event],
    cuts: &dyn Fn(usize, &[u8]) -> Vec<usize>,
) -> Vec<NatsMessage> {
    feed(&mut NatsParser::new(side), events, cuts)
}

fn replay(file: &[u8]) -> Vec<NatsMessage> {
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

#[test]
fn recorded_publisher_and_subscriber_see_the_same_messages() {
    let published = replay(include_bytes!("testdata/py_publisher_requester.bin"));
    let delivered = replay(include_bytes!("testdata/py_subscriber_responder.bin"));
    let summary = |out: &[NatsMessage]| -> Vec<(Operation, String, u64)> {
        out.iter()
            .map(|m| (m.operation, m.subject.to_string(), m.body_size))
            .collect()
    };
    assert_eq!(
        summary(&published),
        [
            (Operation::Publish, "orders.created".to_owned(), 12),
            (Operation::Publish, "orders.created".to_owned(), 12),
            (Operation::Publish, "svc.ping".to_owned(), 2),
            (
                Operation::Receive,
                "_INBOX.K3f5qsZEBW1bgTiEPxQP7N.K3f5qsZEBW1bgTiEPxQPBA20ae".to_owned(),
                7
            ),
        ]
    );
    assert_eq!(
        summary(&delivered),
        [
            (Operation::Receive, "orders.created".to_owned(), 12),
            (Operation::Receive, "orders.created".to_owned(), 12),
            (Operation::Receive, "svc.ping".to_owned(), 2),
            (
                Operation::Publish,
                "_INBOX.K3f5qsZEBW1bgTiEPxQP7N.K3f5qsZEBW1bgTiEPxQPBA20ae".to_owned(),
                7
            ),
        ]
    );
    // The key of each message is the same on both ends, and differs between messages with the
    // same subject and size but another payload.
    let keys = |out: &[NatsMessage]| out.iter().map(NatsMessage::key).collect::<Vec<_>>();
    assert_eq!(keys(&published), keys(&delivered));
    assert_ne!(
        published[0].key(),
        published[1].key(),
        "{{\"order\":42}} and {{\"order\":43}}"
    );
    // The second message carries a traceparent in its headers, on both ends.
    for out in [&published, &delivered] {
        let tp = out[1].traceparent.expect("traceparent");
        assert_eq!(
            tp.parent_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert_eq!(out[1].header_size, 82);
        assert_eq!(out[0].traceparent, None);
    }
    assert_eq!(
        published[2].reply_to.as_deref(),
        Some("_INBOX.K3f5qsZEBW1bgTiEPxQP7N.K3f5qsZEBW1bgTiEPxQPBA20ae")
    );
    assert_eq!(
        delivered[2].reply_to, published[2].reply_to,
        "the request arrives with its reply subject"
    );
    assert_eq!(delivered[0].sid.as_deref(), Some("1"));
    let dump = format!("{published:?} {delivered:?}");
    assert!(
        !dump.contains("order\":4") && !dump.contains("pong:hi"),
        "payloads are never kept: {dump}"
    );
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
        detect_side(&chunk(
            Direction::Ingress,
            b"INFO {\"server_id\":\"x\"}\r\n"
        )),
        Some(Side::Client)
    );
    assert_eq!(
        detect_side(&chunk(Direction::Egress, b"INFO {\"server_id\":\"x\"}\r\n")),
        Some(Side::Server)
    );
    assert_eq!(
        detect_side(&chunk(Direction::Egress, b"PUB a  1\r\nx\r\n")),
        Some(Side::Client)
    );
    assert_eq!(
        detect_side(&chunk(Direction::Egress, b"GET / HTTP/1.1\r\n")),
        None
    );
    // Picked up mid-stream: a subscriber's connection first shows a delivery.
    assert_eq!(
        detect_side(&chunk(
            Direction::Ingress,
            b"MSG items.viewed 1 2\r\n{}\r\n"
        )),
        Some(Side::Client)
    );
    assert_eq!(
        detect_side(&chunk(
            Direction::Ingress,
            b"HMSG a 7 _INBOX.x 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        )),
        Some(Side::Client)
    );
    for not_nats in [
        &b"MSG from a chat server\r\n"[..],
        b"MSG a 1 x\r\n",
        b"MSG a 1 2",
        b"HMSG a 1 9 2\r\n",
    ] {
        assert_eq!(
            detect_side(&chunk(Direction::Ingress, not_nats)),
            None,
            "{:?}",
            String::from_utf8_lossy(not_nats)
        );
    }
}

#[test]
fn a_subscriber_picked_up_mid_stream_gets_its_deliveries() {
    let first = b"MSG items.viewed 1 2\r\n{}\r\n";
    let chunk = Chunk {
        direction: Direction::Ingress,
        ts_ns: 5,
        tid: 9,
        bytes: first,
    };
    let side = detect_side(&chunk).expect("a delivery is NATS");
    let mut parser = NatsParser::new(side);
    let mut out = Vec::new();
    parser.on_chunk(&chunk, &mut out).expect("parsed");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].operation, Operation::Receive);
    assert_eq!(&*out[0].subject, "items.viewed");
    assert_eq!(out[0].body_size, 2);
}

#[test]
fn bad_sizes_are_errors_and_framing_is_found_again() {
    let mut parser = NatsParser::new(Side::Client);
    let mut out = Vec::new();
    let mut feed = |bytes: &[u8]| {
        parser.on_chunk(
            &Chunk {
                direction: Direction::Egress,
                ts_ns: 1,
                tid: 1,
                bytes,
            },
            &mut out,
        )
    };
    assert!(feed(b"PUB a  x\r\n").is_err());
    feed(b"garbage").expect("skipped while damaged");
    feed(b"PUB a  1\r\nz\r\n").expect("a fresh line");
    assert_eq!(out.len(), 1);
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
    let files: [&[u8]; 2] = [
        include_bytes!("testdata/py_publisher_requester.bin"),
        include_bytes!("testdata/py_subscriber_responder.bin"),
    ];
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
        crate::protocols::fuzz::feed(&Nats, &data);
    }
}
