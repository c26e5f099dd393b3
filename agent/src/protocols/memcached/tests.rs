//! Parser tests on sessions recorded between real clients and memcached 1.6.18 by the relaying
//! proxy of `protocols/postgres/testdata/record.py`: pymemcache 4.0 (classic commands,
//! `noreply`, multi-get, a 5000-byte value) and a socket sending meta commands (`ms`, `mg`,
//! quiet mode with `mn`, `md`), each replayed from both sides, whole, split at every byte of
//! every record, and one byte per chunk.

use super::*;

use crate::protocols::capture::{assert_cuts_change_nothing, end_of, feed, recorded, Event};

fn run_with(
    side: Side,
    events: &[Event],
    cuts: &dyn Fn(usize, &[u8]) -> Vec<usize>,
) -> Vec<MemcachedExchange> {
    let mut parser = MemcachedParser::new(side);
    let mut out = feed(&mut parser, events, cuts);
    parser.on_close(end_of(events), &mut out);
    out
}

fn replay(file: &[u8]) -> Vec<MemcachedExchange> {
    let events = recorded(file);
    let client = run_with(Side::Client, &events, &|_, _| Vec::new());
    let server = run_with(Side::Server, &events, &|_, _| Vec::new());
    assert_eq!(client.len(), server.len());
    for (c, s) in client.iter().zip(&server) {
        assert_eq!(
            MemcachedExchange {
                side: Side::Server,
                ..c.clone()
            },
            *s
        );
    }
    assert_cuts_change_nothing(&events, &client, |cuts| {
        run_with(Side::Client, &events, cuts)
    });
    client
}

fn texts(out: &[MemcachedExchange]) -> Vec<&str> {
    out.iter().map(|e| &*e.query_text).collect()
}

fn status(e: &MemcachedExchange) -> Option<&str> {
    e.status.as_deref()
}

#[test]
fn recorded_pymemcache_session() {
    let out = replay(include_bytes!("testdata/pymemcache_classic.bin"));
    assert_eq!(
        texts(&out),
        [
            "set user:1 ? ? ? noreply",
            "get user:1",
            "get user:missing",
            "get user:1 nope:1 nope:2",
            "gets user:1",
            "set fire ? ? ? noreply",
            "add user:1 ? ? ?",
            "delete user:1",
            "delete user:1",
            "set n ? ? ? noreply",
            "incr n ?",
            "decr nope ?",
            "touch n ?",
            "set big ? ? ? noreply",
            "get big",
        ]
    );
    assert!(out.iter().all(|e| e.answered));
    let set = &out[0];
    assert!(set.noreply);
    assert_eq!(set.request_size, 29 + 13, "the line and the data block");
    assert_eq!(
        (set.request_start_ns, set.response_end_ns),
        (10, 10),
        "a noreply command ends when sent"
    );
    let single = |e: &MemcachedExchange| e.cache.as_ref().map(|c| (c.hits, c.misses));
    assert_eq!(
        (single(&out[1]), single(&out[2])),
        (Some((1, 0)), Some((0, 1)))
    );
    let multi = out[3].cache.as_ref().expect("multi-get");
    assert_eq!(
        (multi.hits, multi.misses, multi.missed_keys.clone()),
        (1, 2, vec!["nope:1".to_owned(), "nope:2".to_owned()])
    );
    assert_eq!(single(&out[4]), Some((1, 0)));
    assert_eq!(status(&out[6]), Some("NOT_STORED"));
    assert_eq!(
        (status(&out[7]), status(&out[8])),
        (Some("DELETED"), Some("NOT_FOUND"))
    );
    assert_eq!(
        (status(&out[10]), status(&out[11]), status(&out[12])),
        (Some("VALUE"), Some("NOT_FOUND"), Some("TOUCHED"))
    );
    assert_eq!(out[13].request_size, 5028);
    assert_eq!(out[14].reply_size, 5025);
    assert_eq!(single(&out[14]), Some((1, 0)));
    assert_eq!(out.iter().filter(|e| e.error.is_some()).count(), 0);
    let dump = format!("{out:?}");
    assert!(
        !dump.contains("alice") && !dump.contains("forget"),
        "{dump}"
    );
}

#[test]
fn recorded_meta_commands_with_quiet_mode() {
    let out = replay(include_bytes!("testdata/meta_commands.bin"));
    assert_eq!(
        texts(&out),
        [
            "ms meta:1 ? T",
            "mg meta:1 v t",
            "mg meta:none v",
            "mg meta:1 v q k",
            "mg meta:none v q",
            "md meta:gone q",
            "mn",
            "md meta:1",
            "bogus",
            "version"
        ]
    );
    let statuses: Vec<Option<&str>> = out.iter().map(status).collect();
    assert_eq!(
        statuses,
        [
            Some("HD"),
            Some("VA"),
            Some("EN"),
            Some("VA"),
            Some("EN"),
            Some("NF"),
            Some("MN"),
            Some("HD"),
            None,
            Some("VERSION")
        ]
    );
    let hit = |e: &MemcachedExchange| e.cache.as_ref().map(|c| c.hits == 1);
    assert_eq!(
        (hit(&out[1]), hit(&out[2]), hit(&out[3]), hit(&out[4])),
        (Some(true), Some(false), Some(true), Some(false))
    );
    assert_eq!(out[8].error, Some(("ERROR".to_owned(), String::new())));
    assert_eq!(&*out[8].operation, "bogus");
}

#[test]
fn damage_drops_waiting_commands_and_a_lull_pairs_again() {
    let mut parser = MemcachedParser::new(Side::Client);
    let mut out = Vec::new();
    let mut feed = |dir, bytes: &[u8], ts| {
        parser.on_chunk(
            &Chunk {
                direction: dir,
                ts_ns: ts,
                tid: 1,
                bytes,
            },
            &mut out,
        )
    };
    feed(Direction::Egress, b"get a\r\n", 1).expect("get");
    feed(Direction::Ingress, b"VALUE a 0 zz\r\n", 2).expect_err("a length that is no number");
    feed(Direction::Ingress, b"xx\r\nEND\r\n", 3).expect("ignored while damaged");
    feed(Direction::Egress, b"get b\r\n", 4).expect("get b");
    feed(Direction::Ingress, b"END\r\n", 5).expect("end");
    assert_eq!(texts(&out), ["get b"]);
    assert_eq!(parser.take_lost(), 1);
}

#[test]
fn detection() {
    assert!(looks_like_command(b"get user:1\r\n"));
    assert!(looks_like_command(b"set k 0 0 5\r\nhello\r\n"));
    assert!(looks_like_command(b"version\r\n"));
    assert!(looks_like_command(b"mn\r\n"));
    assert!(!looks_like_command(b"GET / HTTP/1.1\r\n"));
    assert!(!looks_like_command(b"get user:1"), "a whole line");
    assert!(!looks_like_command(b"getaway\r\n"));
}

#[test]
fn mutated_recordings_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let files: [&[u8]; 2] = [
        include_bytes!("testdata/pymemcache_classic.bin"),
        include_bytes!("testdata/meta_commands.bin"),
    ];
    for round in 0..2000 {
        let (requests, replies): (Vec<_>, Vec<_>) = recorded(files[round % 2])
            .into_iter()
            .partition(|(c, _)| *c);
        let requests: Vec<u8> = requests.into_iter().flat_map(|(_, b)| b).collect();
        let replies: Vec<u8> = replies.into_iter().flat_map(|(_, b)| b).collect();
        let mut data = vec![
            next() as u8,
            (requests.len() * 255 / (requests.len() + replies.len())) as u8,
            (next() % 8) as u8,
        ];
        data.extend(&requests);
        data.extend(&replies);
        for _ in 0..(next() % 8) {
            let at = 3 + (next() as usize) % (data.len() - 3);
            data[at] = next() as u8;
        }
        crate::protocols::fuzz::feed(&Memcached, &data);
    }
}
