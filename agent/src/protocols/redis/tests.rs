//! Parser tests on sessions recorded between real clients (redis-cli 7.0, redis-benchmark with
//! `-P 16`, redis-py 8.2 in RESP2 and RESP3) and Redis 7.0.15, by the relaying proxy of
//! `protocols/postgres/testdata/record.py` (the format of `protocols::capture`): each replayed
//! from both sides, whole, split at every byte of every record (for long records: every byte
//! in their first and last 64 and every 61st between), and one byte per chunk.

use super::*;

use crate::protocols::capture::{self, assert_cuts_change_nothing, end_of, recorded, Event};

/// Feeds `events` as `side` (see `capture::feed`), then closes the connection at the end.
fn run_with(
    side: Side,
    events: &[Event],
    cuts: impl Fn(usize, &[u8]) -> Vec<usize>,
) -> (Vec<RedisExchange>, RedisParser) {
    let mut parser = RedisParser::new(side);
    let mut out = capture::feed(&mut parser, events, cuts);
    parser.on_close(end_of(events), &mut out);
    (out, parser)
}

fn run(side: Side, events: &[Event]) -> Vec<RedisExchange> {
    run_with(side, events, |_, _| Vec::new()).0
}

/// The exchanges of a recorded session: the same from both sides and for every split.
fn replay(file: &[u8]) -> Vec<RedisExchange> {
    let events = recorded(file);
    let client = run(Side::Client, &events);
    let server = run(Side::Server, &events);
    // Messages delivered to a subscriber are the client's alone (redis-server makes no span).
    let commands: Vec<&RedisExchange> = client
        .iter()
        .filter(|e| e.message.as_ref().is_none_or(|m| !m.receive))
        .collect();
    assert_eq!(commands.len(), server.len());
    for (c, s) in commands.into_iter().zip(&server) {
        assert_eq!(
            RedisExchange {
                side: Side::Server,
                ..c.clone()
            },
            *s
        );
    }
    assert_cuts_change_nothing(&events, &client, |cuts| {
        run_with(Side::Client, &events, cuts).0
    });
    client
}

fn texts(out: &[RedisExchange]) -> Vec<&str> {
    out.iter().map(|e| &*e.query_text).collect()
}

fn hit(e: &RedisExchange) -> Option<bool> {
    e.cache.filter(|c| c.single).map(|c| c.hits > 0)
}

#[test]
fn recorded_redis_cli_resp2_session() {
    let out = replay(include_bytes!("testdata/cli_resp2.bin"));
    assert_eq!(
        texts(&out),
        [
            "COMMAND DOCS",
            "SET user:1 ?",
            "GET user:1",
            "GET nokey",
            "HSET h:1 ? ? ? ?",
            "HGETALL h:1",
            "HGETALL nohash",
            "MGET user:1 nokey h:1x",
            "GET h:1",
            "NOSUCHCMD a ?",
            "SELECT ?",
            "SET k2 ? EX ?",
            "DEL user:1 k2",
            "INCR counter",
        ]
    );
    assert!(out.iter().all(|e| e.answered && e.side == Side::Client));
    assert_eq!(
        out[0].reply_size,
        65536 + 65536 + 41226,
        "a reply of 170 KiB, framed whole"
    );
    assert_eq!((hit(&out[2]), hit(&out[3])), (Some(true), Some(false)));
    assert_eq!(
        (hit(&out[5]), hit(&out[6])),
        (Some(true), Some(false)),
        "an empty hash is a miss"
    );
    assert_eq!(
        out[7].cache,
        Some(CacheResult {
            hits: 1,
            misses: 2,
            single: false
        })
    );
    let wrongtype = out[8].error.as_ref().expect("WRONGTYPE");
    assert_eq!(wrongtype.code, "WRONGTYPE");
    assert_eq!(
        wrongtype.message,
        "Operation against a key holding the wrong kind of value"
    );
    assert_eq!(hit(&out[8]), None, "an error is neither hit nor miss");
    let unknown = out[9].error.as_ref().expect("ERR");
    assert_eq!(unknown.code, "ERR");
    assert_eq!(
        unknown.message, "unknown command 'NOSUCHCMD'",
        "the echoed arguments are dropped"
    );
    assert_eq!(
        out.iter().map(|e| e.db).collect::<Vec<_>>(),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2]
    );
    let dump = format!("{out:?}");
    assert!(
        !dump.contains("alice") && !dump.contains("secretarg") && !dump.contains("bob"),
        "{dump}"
    );
    // Times: each command from its own write to the read of its reply.
    assert_eq!((out[1].request_start_ns, out[1].response_end_ns), (50, 60));
}

#[test]
fn recorded_resp3_session_with_an_attribute_frame() {
    let out = replay(include_bytes!("testdata/cli_resp3_attribute.bin"));
    assert_eq!(
        texts(&out),
        [
            "HELLO",
            "COMMAND DOCS",
            "HGETALL h:1",
            "SMEMBERS noset",
            "SADD s ? ?",
            "SMEMBERS s",
            "DEBUG PROTOCOL ?"
        ]
    );
    assert_eq!(
        (hit(&out[2]), hit(&out[3]), hit(&out[5])),
        (Some(true), Some(false), Some(true))
    );
    let attrib = &out[6];
    assert!(attrib.answered && attrib.error.is_none());
    assert_eq!(
        attrib.reply_size, 93,
        "the attribute frame belongs to the reply that follows it"
    );
}

#[test]
fn recorded_redis_benchmark_pipelines_pair_in_order() {
    for (file, text) in [
        (
            &include_bytes!("testdata/benchmark_set_p16.bin")[..],
            "SET key:__rand_int__ ?",
        ),
        (
            include_bytes!("testdata/benchmark_get_p16.bin"),
            "GET key:__rand_int__",
        ),
    ] {
        let events = recorded(file);
        let out = replay(file);
        assert_eq!(out.len(), 48, "48 commands, three batches of 16");
        assert!(out
            .iter()
            .all(|e| &*e.query_text == text && e.answered && e.error.is_none()));
        for (k, e) in out.iter().enumerate() {
            let batch = k / 16;
            // Each batch is one write and one read: the k-th reply ends in its batch's read.
            assert_eq!(e.request_start_ns, (2 * batch as u64 + 1) * 10, "{k}");
            assert_eq!(e.response_end_ns, (2 * batch as u64 + 2) * 10, "{k}");
        }
        assert_eq!(events.len(), 6);
    }
}

fn check_python_session(all: &[RedisExchange], resp3: bool) {
    // The two messages pushed to the subscription are deliveries (CONSUMER spans) of their own.
    let (deliveries, commands): (Vec<RedisExchange>, Vec<RedisExchange>) = all
        .iter()
        .cloned()
        .partition(|e| e.message.as_ref().is_some_and(|m| m.receive));
    let got: Vec<(&str, u64)> = deliveries
        .iter()
        .filter_map(|e| e.message.as_ref())
        .map(|m| (&*m.channel, m.size))
        .collect();
    assert_eq!(got, [("news", 5), ("alerts", 4)]);
    let key = deliveries[0].message.as_ref().map(|m| m.key);
    assert_eq!(
        key,
        Some(crate::trace::message_key("redis", "news", 5, b"hello")),
        "the key a publisher of `hello` has too"
    );
    assert!(deliveries
        .iter()
        .all(|e| e.side == Side::Client && e.request_tid == 7));
    let out = &commands[..];
    let mut expected = vec![];
    if resp3 {
        expected.extend(["HELLO", "CLIENT MAINT_NOTIFICATIONS ? ? ?"]);
    }
    expected.extend([
        "CLIENT SETINFO ? ?",
        "CLIENT SETINFO ? ?",
        "SELECT ?",
        "SET cart:7 ?",
        "GET cart:7",
        "GET cart:8",
        "INCRBY hits ?",
        "HGETALL nohash",
        "MULTI",
        "SET a ?",
        "LPUSH a ?",
        "GET a",
        "EXEC",
        "SUBSCRIBE news alerts",
        "PING",
        "UNSUBSCRIBE",
    ]);
    assert_eq!(texts(out), expected);
    let base = if resp3 { 2 } else { 0 };
    let at = |i: usize| &out[base + i];
    assert_eq!(at(0).error.as_ref().map(|e| e.code.as_str()), Some("ERR"));
    assert_eq!(
        at(3).db,
        1,
        "redis-py selects db 1 before its first command"
    );
    assert_eq!(
        (hit(at(4)), hit(at(5)), hit(at(7))),
        (Some(true), Some(false), Some(false))
    );
    for queued in 9..12 {
        assert!(at(queued).queued, "{:?}", at(queued));
        assert_eq!(at(queued).error, None, "queued commands fail at EXEC");
    }
    assert!(!at(12).queued && at(12).error.is_none());
    let subscribe = at(13);
    assert!(subscribe.answered);
    assert_eq!(
        subscribe.reply_size, 68,
        "two replies, one per channel; the messages are not replies"
    );
    assert_eq!(
        at(14).reply_size,
        if resp3 { 7 } else { 20 },
        "PING answered after two pushed messages"
    );
    assert!(at(15).answered);
    assert_eq!(
        at(15).reply_size,
        74,
        "UNSUBSCRIBE from all: a reply per channel until none is left"
    );
    assert!(out.iter().all(|e| e.answered));
}

#[test]
fn recorded_redis_py_pipeline_transaction_and_pubsub_resp2() {
    let file = include_bytes!("testdata/py_resp2_pipeline_multi_pubsub.bin");
    let out = replay(file);
    check_python_session(&out, false);
    let (_, parser) = run_with(Side::Client, &recorded(file), |_, _| Vec::new());
    assert_eq!(parser.pushes(), 2, "two messages");
}

#[test]
fn recorded_redis_py_pipeline_transaction_and_pubsub_resp3() {
    let file = include_bytes!("testdata/py_resp3_pipeline_multi_pubsub.bin");
    let out = replay(file);
    check_python_session(&out, true);
    let (_, parser) = run_with(Side::Client, &recorded(file), |_, _| Vec::new());
    assert_eq!(parser.pushes(), 2, "two message pushes");
}

#[test]
fn credentials_are_never_kept() {
    for file in [
        &include_bytes!("testdata/cli_auth_resp3.bin")[..],
        include_bytes!("testdata/cli_wrongpass.bin"),
        include_bytes!("testdata/py_hello_auth.bin"),
    ] {
        let out = replay(file);
        let (_, parser) = run_with(Side::Server, &recorded(file), |_, _| Vec::new());
        let dump = format!("{out:?} {parser:?}");
        assert!(!dump.contains("secret"), "{dump}");
        assert!(out
            .iter()
            .any(|e| matches!(&*e.operation, "AUTH" | "HELLO")));
        for e in out
            .iter()
            .filter(|e| matches!(&*e.operation, "AUTH" | "HELLO"))
        {
            assert_eq!(&*e.query_text, &*e.operation, "its name alone");
        }
    }
    let out = replay(include_bytes!("testdata/cli_wrongpass.bin"));
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].error.as_ref().map(|e| e.code.as_str()),
        Some("WRONGPASS")
    );
    assert_eq!(
        out[1].error.as_ref().map(|e| e.code.as_str()),
        Some("NOAUTH")
    );
    let out = replay(include_bytes!("testdata/cli_auth_resp3.bin"));
    assert_eq!(
        texts(&out)[..4],
        ["AUTH", "SELECT ?", "HELLO", "COMMAND DOCS"]
    );
    assert_eq!(out[3].db, 1);
}

#[test]
fn a_command_without_reply_is_unanswered_at_close() {
    let events: Vec<Event> = vec![(true, b"*2\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n".to_vec())];
    let (out, _) = run_with(Side::Client, &events, |_, _| Vec::new());
    assert_eq!(out.len(), 1);
    assert!(!out[0].answered);
    let mut parser = RedisParser::new(Side::Client);
    let mut out = Vec::new();
    let chunk = Chunk {
        direction: Direction::Egress,
        ts_ns: 1,
        tid: 1,
        bytes: b"*1\r\n$4\r\nPING\r\n",
    };
    parser.on_chunk(&chunk, &mut out).expect("ping");
    assert_eq!(parser.on_close(5, &mut out), 1);
    assert_eq!(out[0].response_end_ns, 5);
}

#[test]
fn damage_drops_the_waiting_commands_and_pairs_again_at_a_lull() {
    let mut parser = RedisParser::new(Side::Client);
    let mut out = Vec::new();
    let feed = |p: &mut RedisParser, out: &mut Vec<RedisExchange>, dir, bytes: &[u8], ts| {
        p.on_chunk(
            &Chunk {
                direction: dir,
                ts_ns: ts,
                tid: 1,
                bytes,
            },
            out,
        )
    };
    feed(
        &mut parser,
        &mut out,
        Direction::Egress,
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
        1,
    )
    .expect("get a");
    // The start of the reply is lost: the rest is not RESP where a value should start.
    assert!(feed(&mut parser, &mut out, Direction::Ingress, b"lo\r\n", 2).is_err());
    assert_eq!(parser.take_lost(), 1);
    feed(
        &mut parser,
        &mut out,
        Direction::Egress,
        b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n",
        3,
    )
    .expect("get b");
    feed(&mut parser, &mut out, Direction::Ingress, b"$-1\r\n", 4).expect("nil");
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].query_text, "GET b");
    assert_eq!(hit(&out[0]), Some(false));
    // A gap outside a bulk payload hides framing too.
    assert_eq!(
        parser.on_gap(
            &Gap {
                direction: Direction::Ingress,
                ts_ns: 5,
                len: 10
            },
            &mut out
        ),
        Err(RedisParseError::GapInFraming)
    );
}

#[test]
fn a_gap_inside_a_large_value_costs_nothing() {
    let mut parser = RedisParser::new(Side::Client);
    let mut out = Vec::new();
    let mut set = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$100000\r\n".to_vec();
    set.extend([b'v'; 1000]);
    parser
        .on_chunk(
            &Chunk {
                direction: Direction::Egress,
                ts_ns: 1,
                tid: 1,
                bytes: &set,
            },
            &mut out,
        )
        .expect("head");
    let gap = Gap {
        direction: Direction::Egress,
        ts_ns: 1,
        len: 100_000 - 1000 - 62,
    };
    parser.on_gap(&gap, &mut out).expect("gap in the value");
    let mut tail = vec![b'v'; 62];
    tail.extend(b"\r\n");
    parser
        .on_chunk(
            &Chunk {
                direction: Direction::Egress,
                ts_ns: 1,
                tid: 1,
                bytes: &tail,
            },
            &mut out,
        )
        .expect("tail");
    parser
        .on_chunk(
            &Chunk {
                direction: Direction::Ingress,
                ts_ns: 2,
                tid: 1,
                bytes: b"+OK\r\n",
            },
            &mut out,
        )
        .expect("ok");
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].query_text, "SET big ?");
}

#[test]
fn detection() {
    assert!(looks_like_command(b"*3\r\n$3\r\nSET\r\n"));
    assert!(looks_like_command(b"*1\r\n"));
    assert!(!looks_like_command(b"*0\r\n"));
    assert!(!looks_like_command(b"* 3\r\n"));
    assert!(!looks_like_command(b"GET / HTTP/1.1\r\n"));
    assert!(!looks_like_command(b"+OK\r\n"));
}

/// The fuzz target's driver over mutations of the recorded sessions (a smoke run of
/// `cargo fuzz run redis` that needs no nightly): no panic, whatever the bytes.
#[test]
fn mutated_recordings_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let files: [&[u8]; 4] = [
        include_bytes!("testdata/py_resp2_pipeline_multi_pubsub.bin"),
        include_bytes!("testdata/py_resp3_pipeline_multi_pubsub.bin"),
        include_bytes!("testdata/benchmark_get_p16.bin"),
        include_bytes!("testdata/cli_wrongpass.bin"),
    ];
    for round in 0..3000 {
        let file = files[round % files.len()];
        let (requests, replies): (Vec<_>, Vec<_>) =
            recorded(file).into_iter().partition(|(client, _)| *client);
        let requests: Vec<u8> = requests.into_iter().flat_map(|(_, b)| b).collect();
        let replies: Vec<u8> = replies.into_iter().flat_map(|(_, b)| b).collect();
        let mut data = vec![next() as u8, 0, (next() % 8) as u8];
        data.extend(&requests);
        data[1] = (requests.len() * 255 / (requests.len() + replies.len()).max(1)) as u8;
        data.extend(&replies);
        for _ in 0..(next() % 8) {
            let at = 3 + (next() as usize) % (data.len() - 3);
            data[at] = next() as u8;
        }
        crate::protocols::fuzz::feed(&Redis, &data);
    }
}

/// Streams, recorded between redis-py 8 and Redis 7.0 (`tests/fixtures/redis_stream_producer.py`
/// and `redis_stream_consumer.py` through `postgres/testdata/record.py`) in RESP2 and RESP3: each
/// XADD is a PRODUCER message whose key is its stream and the id the server returned; each entry
/// an XREADGROUP returned a CONSUMER message with the same key.
#[test]
fn recorded_redis_py_streams_link_xadd_to_xreadgroup_entries() {
    for (producer, consumer) in [
        (
            &include_bytes!("testdata/py_stream_producer_resp2.bin")[..],
            &include_bytes!("testdata/py_stream_consumer_resp2.bin")[..],
        ),
        (
            include_bytes!("testdata/py_stream_producer_resp3.bin"),
            include_bytes!("testdata/py_stream_consumer_resp3.bin"),
        ),
    ] {
        let added: Vec<RedisMessage> = replay(producer)
            .into_iter()
            .filter_map(|e| e.message)
            .collect();
        let read: Vec<RedisMessage> = replay(consumer)
            .into_iter()
            .filter_map(|e| e.message)
            .collect();
        assert_eq!(added.len(), 2, "{added:?}");
        assert_eq!(read.len(), 2, "{read:?}");
        for (a, r) in added.iter().zip(&read) {
            assert!(!a.receive && r.receive);
            assert_eq!(&*a.channel, "orders");
            assert_eq!(a.entry_id, r.entry_id);
            assert!(a.entry_id.as_deref().is_some_and(|id| is_entry_id(id.as_bytes())));
            assert_eq!(a.key, r.key);
        }
        assert_ne!(added[0].key, added[1].key);
    }
}

#[test]
fn entry_ids() {
    assert!(is_entry_id(b"1796575962382-0"));
    for not in [&b"1796575962382"[..], b"-0", b"1-", b"order", b"1-2-3", b""] {
        assert!(!is_entry_id(not), "{not:?}");
    }
}
