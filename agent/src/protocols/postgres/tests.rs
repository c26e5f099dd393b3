//! Parser tests over byte streams built from the protocol specification (message layouts of
//! PostgreSQL 15's "Message Formats"), in the order real clients and servers send them, each
//! replayed whole, split at every byte boundary, and one byte per chunk.

use super::*;

use crate::protocols::capture::{self, assert_cuts_change_nothing, recorded, Event};

fn msg(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![typ];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cs(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend(cs(k));
        body.extend(cs(v));
    }
    body.push(0);
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn ssl_request() -> Vec<u8> {
    let mut v = 8u32.to_be_bytes().to_vec();
    v.extend(SSL_REQUEST.to_be_bytes());
    v
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cs(sql))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cs(name);
    b.extend(cs(sql));
    b.extend(0u16.to_be_bytes());
    msg(b'P', &b)
}

fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = cs(portal);
    b.extend(cs(stmt));
    b.extend(0u16.to_be_bytes()); // all parameters in text format
    b.extend((params.len() as u16).to_be_bytes());
    for p in params {
        b.extend((p.len() as u32).to_be_bytes());
        b.extend(p.as_bytes());
    }
    b.extend(0u16.to_be_bytes()); // results in text format
    msg(b'B', &b)
}

fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    b.extend(cs(portal));
    msg(b'D', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = cs(portal);
    b.extend(0u32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(cs(name));
    msg(b'C', &b)
}

fn password(p: &str) -> Vec<u8> {
    msg(b'p', &cs(p))
}

fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(extra);
    msg(b'R', &b)
}

fn param_status(k: &str, v: &str) -> Vec<u8> {
    let mut b = cs(k);
    b.extend(cs(v));
    msg(b'S', &b)
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row_description(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(cs(c));
        b.extend([0u8; 18]);
    }
    msg(b'T', &b)
}

fn data_row(values: &[&str]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        b.extend((v.len() as u32).to_be_bytes());
        b.extend(v.as_bytes());
    }
    msg(b'D', &b)
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cs(tag))
}

fn error(code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (f, v) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', message), (b'F', "parse_relation.c")] {
        b.push(f);
        b.extend(cs(v));
    }
    b.push(0);
    msg(b'E', &b)
}

fn notice(message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (f, v) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', message)] {
        b.push(f);
        b.extend(cs(v));
    }
    b.push(0);
    msg(b'N', &b)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// What the server sends from the end of authentication to the first ReadyForQuery.
fn server_hello() -> Vec<u8> {
    cat(&[
        auth(0, &[]),
        param_status("server_version", "15.18"),
        param_status("client_encoding", "UTF8"),
        msg(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]),
        ready(),
    ])
}

/// A psql-like session: startup, password, one simple query.
fn psql_session(sql: &str, answer: Vec<u8>) -> Vec<Event> {
    vec![
        (true, startup(&[("user", "app"), ("database", "shop"), ("application_name", "psql"), ("client_encoding", "UTF8")])),
        (false, auth(3, &[])),
        (true, password("s3cret")),
        (false, server_hello()),
        (true, query(sql)),
        (false, answer),
        (true, msg(b'X', &[])),
    ]
}

/// Feeds `events` as the given side (see `capture::feed`).
fn run_with(side: Side, events: &[Event], cuts: impl Fn(usize, &[u8]) -> Vec<usize>) -> (Vec<PgExchange>, PgParser) {
    let mut parser = PgParser::new(side, true);
    let out = capture::feed(&mut parser, events, cuts);
    (out, parser)
}

/// One chunk to the parser.
fn feed(parser: &mut PgParser, out: &mut Vec<PgExchange>, direction: Direction, bytes: &[u8], ts_ns: u64) {
    parser.on_chunk(&Chunk { direction, ts_ns, tid: 1, bytes }, out).expect("parse");
}

fn run(side: Side, events: &[Event]) -> Vec<PgExchange> {
    run_with(side, events, |_, _| Vec::new()).0
}

/// The same result however the bytes are split (see `capture::assert_cuts_change_nothing`).
fn run_all_splits(side: Side, events: &[Event]) -> Vec<PgExchange> {
    let whole = run(side, events);
    assert_cuts_change_nothing(events, &whole, |cuts| run_with(side, events, cuts).0);
    whole
}

#[test]
fn simple_query_from_psql_on_both_sides() {
    let answer = cat(&[
        row_description(&["id", "name"]),
        data_row(&["1", "pen"]),
        data_row(&["2", "ink"]),
        complete("SELECT 2"),
        ready(),
    ]);
    let events = psql_session("SELECT id, name FROM items WHERE price > 10", answer);
    for side in [Side::Client, Side::Server] {
        let out = run_all_splits(side, &events);
        assert_eq!(out.len(), 1, "{out:?}");
        let ex = &out[0];
        assert_eq!(ex.side, side);
        assert_eq!(ex.kind, PgQueryKind::Simple);
        assert_eq!(ex.query.as_deref(), Some("SELECT id, name FROM items WHERE price > 10"));
        assert_eq!(ex.session.user.as_deref(), Some("app"));
        assert_eq!(ex.session.database(), Some("shop"));
        assert_eq!(ex.session.application_name.as_deref(), Some("psql"));
        assert_eq!(ex.command.as_deref(), Some("SELECT"));
        assert_eq!(ex.rows, Some(2));
        assert_eq!(ex.data_rows, 2);
        assert_eq!(ex.statements, 1);
        assert_eq!(ex.error, None);
        assert_eq!((ex.request_start_ns, ex.response_end_ns), (50, 60));
    }
}

#[test]
fn the_password_never_reaches_the_output() {
    let events = psql_session("SELECT 1", cat(&[row_description(&["?column?"]), data_row(&["1"]), complete("SELECT 1"), ready()]));
    let (out, parser) = run_with(Side::Client, &events, |_, _| Vec::new());
    let dump = format!("{out:?} {parser:?}");
    assert!(!dump.contains("s3cret"), "{dump}");
}

#[test]
fn multi_statement_string_is_one_exchange() {
    let answer = cat(&[
        complete("BEGIN"),
        complete("INSERT 0 1"),
        notice("there is no transaction in progress"),
        complete("UPDATE 3"),
        complete("COMMIT"),
        ready(),
    ]);
    let events = psql_session("BEGIN; INSERT INTO t VALUES (1); UPDATE t SET a = 2; COMMIT", answer);
    let out = run_all_splits(Side::Client, &events);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].statements, 4);
    assert_eq!(out[0].rows, Some(4));
    assert_eq!(out[0].command.as_deref(), Some("BEGIN"));
}

#[test]
fn an_error_carries_sqlstate_and_message() {
    let answer = cat(&[error("42P01", "relation \"nope\" does not exist"), ready()]);
    let events = psql_session("SELECT * FROM nope", answer);
    let out = run_all_splits(Side::Server, &events);
    assert_eq!(out.len(), 1);
    let e = out[0].error.as_ref().expect("error");
    assert_eq!(e.code, "42P01");
    assert_eq!(e.severity, "ERROR");
    assert_eq!(e.message, "relation \"nope\" does not exist");
    assert_eq!(out[0].rows, None);
}

#[test]
fn empty_query_completes() {
    let events = psql_session(";", cat(&[msg(b'I', &[]), ready()]));
    let out = run_all_splits(Side::Client, &events);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].statements, 1);
}

/// pgbench `-M prepared`: each statement parsed once (`P0_1`...), then Bind/Execute/Sync per run.
fn pgbench_prepared() -> Vec<Event> {
    let mut events = vec![(true, startup(&[("user", "postgres"), ("database", "bench")])), (false, server_hello())];
    let sql = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;";
    for round in 0..3 {
        let mut front = Vec::new();
        if round == 0 {
            front.extend(parse("P0_1", sql));
        }
        front.extend(bind("", "P0_1", &["-1234", "42"]));
        front.extend(describe_portal(""));
        front.extend(execute(""));
        front.extend(sync());
        events.push((true, front));
        let mut back = Vec::new();
        if round == 0 {
            back.extend(msg(b'1', &[]));
        }
        back.extend(msg(b'2', &[]));
        back.extend(msg(b'n', &[]));
        back.extend(complete("UPDATE 1"));
        back.extend(ready());
        events.push((false, back));
    }
    events
}

#[test]
fn prepared_statements_carry_their_sql_on_every_execution() {
    let out = run_all_splits(Side::Client, &pgbench_prepared());
    assert_eq!(out.len(), 3);
    for (i, ex) in out.iter().enumerate() {
        assert_eq!(ex.kind, PgQueryKind::Extended);
        assert_eq!(ex.query.as_deref(), Some("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"));
        assert_eq!(ex.statement.as_deref(), Some("P0_1"));
        assert_eq!(ex.command.as_deref(), Some("UPDATE"));
        assert_eq!(ex.rows, Some(1));
        assert_eq!(ex.session.database(), Some("bench"));
        let t = 30 + 20 * i as u64;
        assert_eq!((ex.request_start_ns, ex.response_end_ns), (t, t + 10));
    }
    let dump = format!("{out:?}");
    assert!(!dump.contains("-1234"), "bind values are never kept: {dump}");
}

#[test]
fn pipelined_executes_before_one_sync_and_an_error_skips_the_rest() {
    let front = cat(&[
        parse("", "INSERT INTO t VALUES ($1)"),
        bind("", "", &["1"]),
        execute(""),
        parse("s2", "SELECT a FROM t"),
        bind("p2", "s2", &[]),
        execute("p2"),
        parse("", "INSERT INTO missing VALUES ($1)"),
        bind("", "", &["3"]),
        execute(""),
        bind("p2", "s2", &[]),
        execute("p2"),
        sync(),
    ]);
    let back = cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        complete("INSERT 0 1"),
        msg(b'1', &[]),
        msg(b'2', &[]),
        data_row(&["1"]),
        data_row(&["2"]),
        complete("SELECT 2"),
        error("42P01", "relation \"missing\" does not exist"),
        ready(),
    ]);
    let events = vec![(true, startup(&[("user", "u")])), (false, server_hello()), (true, front), (false, back)];
    let out = run_all_splits(Side::Client, &events);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0].query.as_deref(), Some("INSERT INTO t VALUES ($1)"));
    assert_eq!(out[0].rows, Some(1));
    assert_eq!(out[1].query.as_deref(), Some("SELECT a FROM t"));
    assert_eq!((out[1].data_rows, out[1].rows), (2, Some(2)));
    assert_eq!(out[2].query.as_deref(), Some("INSERT INTO missing VALUES ($1)"));
    assert_eq!(out[2].error.as_ref().map(|e| e.code.as_str()), Some("42P01"));
    assert_eq!(out[0].session.database(), Some("u"), "database defaults to the user");
}

#[test]
fn a_statement_that_fails_to_prepare_is_an_exchange() {
    // lib/pq: Parse, Describe, Sync first; Bind and Execute only once that succeeded.
    let events = vec![
        (true, startup(&[("user", "u")])),
        (false, server_hello()),
        (true, cat(&[parse("", "SELECT * FROM missing WHERE id = $1"), msg(b'D', b"S\0"), sync()])),
        (false, cat(&[error("42P01", "relation \"missing\" does not exist"), ready()])),
        (true, cat(&[parse("1", "SELECT $1::int"), msg(b'D', b"S1\0"), sync()])),
        (false, cat(&[msg(b'1', &[]), msg(b't', &[0, 1, 0, 0, 0, 23]), row_description(&["int4"]), ready()])),
        (true, cat(&[bind("", "1", &["7"]), execute(""), sync()])),
        (false, cat(&[msg(b'2', &[]), data_row(&["7"]), complete("SELECT 1"), ready()])),
    ];
    let out = run_all_splits(Side::Client, &events);
    assert_eq!(queries(&out), ["SELECT * FROM missing WHERE id = $1", "SELECT $1::int"]);
    assert_eq!(out[0].error.as_ref().map(|e| e.code.as_str()), Some("42P01"));
    assert_eq!((out[0].request_start_ns, out[0].response_end_ns), (30, 40));
    assert_eq!((out[1].error.as_ref(), out[1].rows), (None, Some(1)));
    assert_eq!((out[1].request_start_ns, out[1].response_end_ns), (70, 80), "the Execute's own round trip");
}

#[test]
fn closed_statements_are_forgotten_and_the_map_is_bounded() {
    let mut events = vec![(true, startup(&[("user", "u")])), (false, server_hello())];
    let mut front = Vec::new();
    for i in 0..MAX_STATEMENTS + 10 {
        front.extend(parse(&format!("s{i}"), &format!("SELECT {i}")));
    }
    // s10 is the oldest left; using it keeps it, so the next statement pushes out s11.
    front.extend(bind("", "s10", &[]));
    front.extend(parse("late", "SELECT 'late'"));
    front.extend(close_statement("s300"));
    front.extend(sync());
    events.push((true, front));
    let (_, mut parser) = run_with(Side::Client, &events, |_, _| Vec::new());
    assert_eq!(parser.statements.map.len(), MAX_STATEMENTS - 1, "full, less the closed one");
    assert!(parser.statements.get("s0").is_none(), "the least recently used went first");
    assert!(parser.statements.get("s10").is_some(), "used, so kept");
    assert!(parser.statements.get("s11").is_none());
    assert!(parser.statements.get("s300").is_none(), "closed");
    assert!(parser.statements.get("late").is_some());
}

#[test]
fn copy_in_and_out() {
    let events = vec![
        (true, startup(&[("user", "u"), ("database", "d")])),
        (false, server_hello()),
        (true, query("COPY t FROM STDIN")),
        (false, msg(b'G', &[0, 0, 1, 0, 0])),
        (true, cat(&[msg(b'd', b"1\tpen\n"), msg(b'd', b"2\tink\n"), msg(b'c', &[])])),
        (false, cat(&[complete("COPY 2"), ready()])),
        (true, query("COPY t TO STDOUT")),
        (false, cat(&[msg(b'H', &[0, 0, 1, 0, 0]), msg(b'd', b"1\tpen\n"), msg(b'c', &[]), complete("COPY 1"), ready()])),
    ];
    let out = run_all_splits(Side::Client, &events);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].command.as_deref(), out[0].rows), (Some("COPY"), Some(2)));
    assert_eq!((out[1].command.as_deref(), out[1].rows), (Some("COPY"), Some(1)));
    assert_eq!((out[0].request_start_ns, out[0].response_end_ns), (30, 60));
}

#[test]
fn ssl_refused_goes_on_in_plain_text_and_ssl_accepted_stops() {
    let mut events = vec![(true, ssl_request()), (false, b"N".to_vec())];
    events.extend(psql_session("SELECT 1", cat(&[complete("SELECT 0"), ready()])));
    let out = run_all_splits(Side::Client, &events);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].session.database(), Some("shop"));

    let events = vec![(true, ssl_request()), (false, b"S".to_vec()), (true, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc".to_vec())];
    let (out, parser) = run_with(Side::Client, &events, |_, _| Vec::new());
    assert!(out.is_empty());
    assert!(parser.encrypted());
}

#[test]
fn cancel_request_produces_nothing() {
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend(CANCEL_REQUEST.to_be_bytes());
    cancel.extend([0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    assert!(looks_like_startup(&cancel));
    let (out, parser) = run_with(Side::Server, &[(true, cancel)], |_, _| Vec::new());
    assert!(out.is_empty());
    assert!(parser.pending.is_empty());
}

#[test]
fn a_big_data_row_behind_a_gap_is_skipped_by_its_length() {
    let big = "x".repeat(100_000);
    let answer = cat(&[row_description(&["blob"]), data_row(&[&big]), complete("SELECT 1"), ready()]);
    let mut parser = PgParser::new(Side::Client, true);
    let mut out = Vec::new();
    feed(&mut parser, &mut out, Direction::Egress, &startup(&[("user", "u")]), 1);
    feed(&mut parser, &mut out, Direction::Ingress, &server_hello(), 2);
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT blob FROM b"), 3);
    // The kernel captured 4096 bytes, then the last 64 of the read.
    let (head, tail) = (&answer[..4096], &answer[answer.len() - 64..]);
    feed(&mut parser, &mut out, Direction::Ingress, head, 4);
    let gap = Gap { direction: Direction::Ingress, ts_ns: 4, len: (answer.len() - 4096 - 64) as u64 };
    parser.on_gap(&gap, &mut out).expect("gap inside a message");
    feed(&mut parser, &mut out, Direction::Ingress, tail, 4);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].data_rows, out[0].rows), (1, Some(1)));
}

#[test]
fn a_gap_over_many_rows_resyncs_on_the_tail() {
    let mut answer = row_description(&["n"]);
    for i in 0..2000 {
        answer.extend(data_row(&[&i.to_string()]));
    }
    answer.extend(complete("SELECT 2000"));
    answer.extend(ready());
    let mut parser = PgParser::new(Side::Client, true);
    let mut out = Vec::new();
    feed(&mut parser, &mut out, Direction::Egress, &startup(&[("user", "u")]), 1);
    feed(&mut parser, &mut out, Direction::Ingress, &server_hello(), 2);
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT n FROM generate_series(1, 2000) n"), 3);
    feed(&mut parser, &mut out, Direction::Ingress, &answer[..4096], 4);
    let gap = Gap { direction: Direction::Ingress, ts_ns: 4, len: (answer.len() - 4096 - 64) as u64 };
    assert_eq!(parser.on_gap(&gap, &mut out), Err(PgParseError::GapInFraming));
    feed(&mut parser, &mut out, Direction::Ingress, &answer[answer.len() - 64..], 4);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rows, Some(2000));
    // And the connection goes on.
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT 1"), 5);
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[complete("SELECT 1"), ready()]), 6);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].query.as_deref(), Some("SELECT 1"));
}

#[test]
fn after_lost_framing_the_answer_goes_to_the_newest_query() {
    let mut parser = PgParser::new(Side::Client, true);
    let mut out = Vec::new();
    feed(&mut parser, &mut out, Direction::Egress, &startup(&[("user", "u")]), 1);
    feed(&mut parser, &mut out, Direction::Ingress, &server_hello(), 2);
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT a FROM one"), 3);
    // The answer to the first query starts, then a gap hides its end.
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[row_description(&["a"]), data_row(&["1"])]), 4);
    let gap = Gap { direction: Direction::Ingress, ts_ns: 4, len: 100 };
    assert_eq!(parser.on_gap(&gap, &mut out), Err(PgParseError::GapInFraming));
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT b FROM two"), 5);
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[row_description(&["b"]), data_row(&["2"]), data_row(&["3"]), complete("SELECT 2"), ready()]), 6);
    assert_eq!(queries(&out), ["SELECT b FROM two"]);
    assert_eq!((out[0].rows, out[0].data_rows), (Some(2), 2));
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT 3"), 7);
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[complete("SELECT 0"), ready()]), 8);
    assert_eq!(queries(&out), ["SELECT b FROM two", "SELECT 3"], "pairing goes on");
}

#[test]
fn a_gap_that_ends_a_message_keeps_the_framing() {
    let row = data_row(&[&"y".repeat(5000)]);
    let mut parser = PgParser::new(Side::Client, true);
    let mut out = Vec::new();
    feed(&mut parser, &mut out, Direction::Egress, &startup(&[("user", "u")]), 1);
    feed(&mut parser, &mut out, Direction::Ingress, &server_hello(), 2);
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT y FROM big"), 3);
    feed(&mut parser, &mut out, Direction::Ingress, &row[..4096], 4);
    let gap = Gap { direction: Direction::Ingress, ts_ns: 4, len: (row.len() - 4096) as u64 };
    assert_eq!(parser.on_gap(&gap, &mut out), Ok(()));
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[complete("SELECT 1"), ready()]), 5);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].rows, out[0].data_rows), (Some(1), 1));
}

#[test]
fn sql_longer_than_the_capture_still_makes_its_exchange() {
    let sql = format!("SELECT * FROM orders WHERE id IN ({})", (0..3000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    let long_value = "v".repeat(100);
    // The gap ends inside the Parse (little follows it), or hides its end and the Bind's start.
    for (params, gap_in_framing) in [(Vec::new(), false), (vec![long_value.as_str()], true)] {
        let write = cat(&[parse("", &sql), bind("", "", &params), describe_portal(""), execute(""), sync()]);
        let mut parser = PgParser::new(Side::Client, true);
        let mut out = Vec::new();
        feed(&mut parser, &mut out, Direction::Egress, &startup(&[("user", "u")]), 1);
        feed(&mut parser, &mut out, Direction::Ingress, &server_hello(), 2);
        // As the kernel delivers one long write: 4096 bytes, a gap, the last 64.
        feed(&mut parser, &mut out, Direction::Egress, &write[..4096], 3);
        let gap = Gap { direction: Direction::Egress, ts_ns: 3, len: (write.len() - 4160) as u64 };
        assert_eq!(parser.on_gap(&gap, &mut out).is_err(), gap_in_framing);
        feed(&mut parser, &mut out, Direction::Egress, &write[write.len() - 64..], 3);
        let answer =
            cat(&[msg(b'1', &[]), msg(b'2', &[]), row_description(&["id"]), data_row(&["7"]), complete("SELECT 1"), ready()]);
        feed(&mut parser, &mut out, Direction::Ingress, &answer, 4);
        assert_eq!(out.len(), 1, "{out:?}");
        let kept = out[0].query.as_deref().expect("the SQL, cut");
        assert!(sql.starts_with(kept) && kept.len() > 4000 && kept.len() < sql.len(), "{} bytes", kept.len());
        assert_eq!((out[0].rows, out[0].request_start_ns, out[0].response_end_ns), (Some(1), 3, 4));
        // And the connection goes on.
        feed(&mut parser, &mut out, Direction::Egress, &query("SELECT 2"), 5);
        feed(&mut parser, &mut out, Direction::Ingress, &cat(&[complete("SELECT 1"), ready()]), 6);
        assert_eq!(out.len(), 2);
    }
}

#[test]
fn a_connection_picked_up_mid_stream() {
    let q = query("SELECT * FROM orders WHERE id = 7");
    assert!(looks_like_frontend_message(&q));
    let p = cat(&[parse("", "SELECT 1"), bind("", "", &[]), execute(""), sync()]);
    assert!(looks_like_frontend_message(&p));
    let mut parser = PgParser::new(Side::Client, false);
    let mut out = Vec::new();
    feed(&mut parser, &mut out, Direction::Egress, &q, 1);
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[row_description(&["id"]), data_row(&["7"]), complete("SELECT 1"), ready()]), 2);
    feed(&mut parser, &mut out, Direction::Egress, &p, 3);
    feed(&mut parser, &mut out, Direction::Ingress, &cat(&[msg(b'1', &[]), msg(b'2', &[]), data_row(&["1"]), complete("SELECT 1"), ready()]), 4);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].session.database(), None);
    assert_eq!(out[1].query.as_deref(), Some("SELECT 1"));
}

#[test]
fn detection_rejects_other_protocols() {
    assert!(looks_like_startup(&startup(&[("user", "u")])));
    assert!(looks_like_startup(&ssl_request()));
    for not_pg in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\n",
        b"PING\r\n",
        b"QUIT\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"*1\r\n$4\r\nPING\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"Q\x00\x00\x00\x05\x00",
        b"Q\x00\x00\x00\x09ab\x00cd\x00",
        b"\x00\x00\x00\x08\x00\x00\x00\x00",
    ] {
        assert!(!looks_like_startup(not_pg), "{not_pg:?}");
        assert!(!looks_like_frontend_message(not_pg), "{not_pg:?}");
    }
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = cat(&[pgbench_prepared().into_iter().flat_map(|(_, b)| b).collect::<Vec<u8>>()]);
    for _ in 0..2000 {
        let mut bytes = base.clone();
        for _ in 0..(next() % 8) {
            let i = (next() as usize) % bytes.len();
            bytes[i] = next() as u8;
        }
        let mut parser = PgParser::new(Side::Client, next() % 2 == 0);
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = ((next() % 64) as usize + 1).min(bytes.len() - at);
            let direction = if next() % 2 == 0 { Direction::Egress } else { Direction::Ingress };
            let _ = parser.on_chunk(&Chunk { direction, ts_ns: at as u64, tid: 1, bytes: &bytes[at..at + n] }, &mut out);
            if next() % 16 == 0 {
                let _ = parser.on_gap(&Gap { direction, ts_ns: 0, len: next() % 100_000 }, &mut out);
            }
            at += n;
        }
        parser.on_close(0, &mut out);
        assert!(parser.pending.len() <= MAX_PENDING);
    }
}

/// The exchanges of a recorded session (one between a real client and PostgreSQL 15.18, see
/// `capture`), the same from both sides and for every split of every recv.
fn replay(file: &[u8]) -> Vec<PgExchange> {
    let events = recorded(file);
    let client = run(Side::Client, &events);
    let server = run_all_splits(Side::Server, &events);
    assert_eq!(client.len(), server.len());
    for (c, s) in client.iter().zip(&server) {
        assert_eq!(PgExchange { side: Side::Server, ..c.clone() }, *s);
    }
    client
}

fn queries(out: &[PgExchange]) -> Vec<&str> {
    out.iter().map(|e| e.query.as_deref().unwrap_or("<none>")).collect()
}

#[test]
fn recorded_psql_sessions() {
    let out = replay(include_bytes!("testdata/psql_select.bin"));
    assert_eq!(
        queries(&out),
        [
            "INSERT INTO items VALUES (1, 'pen', 1.5), (2, 'ink', 12) ON CONFLICT DO NOTHING",
            "SELECT id, name FROM items WHERE price > 1 ORDER BY id"
        ]
    );
    assert_eq!((out[0].command.as_deref(), out[0].rows), (Some("INSERT"), Some(2)));
    assert_eq!((out[1].command.as_deref(), out[1].rows, out[1].data_rows), (Some("SELECT"), Some(2), 2));
    assert_eq!(out[0].session.user.as_deref(), Some("postgres"));
    assert_eq!(out[0].session.application_name.as_deref(), Some("psql"));

    let out = replay(include_bytes!("testdata/psql_error.bin"));
    assert_eq!(queries(&out), ["SELECT * FROM no_such_table"]);
    let e = out[0].error.as_ref().expect("an error");
    assert_eq!((e.code.as_str(), e.message.as_str()), ("42P01", "relation \"no_such_table\" does not exist"));

    let out = replay(include_bytes!("testdata/psql_multi.bin"));
    assert_eq!(queries(&out), ["BEGIN; UPDATE items SET price = price + 1 WHERE id = 1; SELECT count(*) FROM items; COMMIT"]);
    assert_eq!((out[0].statements, out[0].data_rows), (4, 1));
}

#[test]
fn recorded_copy_in_and_out() {
    let out = replay(include_bytes!("testdata/copy.bin"));
    assert_eq!(
        queries(&out),
        ["COPY  items FROM STDIN ", "COPY (SELECT * FROM items ORDER BY id) TO STDOUT", "DELETE FROM items WHERE id >= 10"]
    );
    let rows: Vec<_> = out.iter().map(|e| (e.command.as_deref(), e.rows)).collect();
    assert_eq!(rows, [(Some("COPY"), Some(2)), (Some("COPY"), Some(4)), (Some("DELETE"), Some(2))]);
}

const PGBENCH_STATEMENTS: [&str; 7] = [
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
    "END;",
];

#[test]
fn recorded_pgbench_extended_and_prepared() {
    for file in [&include_bytes!("testdata/pgbench_extended.bin")[..], include_bytes!("testdata/pgbench_prepared.bin")] {
        let out = replay(file);
        assert_eq!(out.len(), 21, "three transactions of seven statements");
        for (i, ex) in out.iter().enumerate() {
            assert_eq!(ex.kind, PgQueryKind::Extended);
            assert_eq!(ex.query.as_deref(), Some(PGBENCH_STATEMENTS[i % 7]), "statement {i}");
            assert_eq!(ex.error, None);
            assert!(ex.request_start_ns <= ex.response_end_ns);
        }
        assert_eq!(out[2].data_rows, 1);
    }
}

#[test]
fn recorded_pgbench_simple() {
    let out = replay(include_bytes!("testdata/pgbench_simple.bin"));
    assert_eq!(out.len(), 21);
    assert!(out.iter().all(|e| e.kind == PgQueryKind::Simple));
    assert_eq!(out[0].query.as_deref(), Some("BEGIN;"));
    assert!(out[1].query.as_deref().is_some_and(|q| q.starts_with("UPDATE pgbench_accounts SET abalance = abalance + ")));
    assert_eq!(out[6].command.as_deref(), Some("COMMIT"));
}

#[test]
fn recorded_psycopg2_server_side_cursor() {
    let out = replay(include_bytes!("testdata/psycopg2_cursor.bin"));
    assert_eq!(
        queries(&out),
        [
            "BEGIN",
            "DECLARE \"big\" CURSOR WITHOUT HOLD FOR SELECT aid, abalance FROM pgbench_accounts WHERE aid <= 1200",
            "FETCH FORWARD 500 FROM \"big\"",
            "FETCH FORWARD 500 FROM \"big\"",
            "FETCH FORWARD 500 FROM \"big\"",
            "FETCH FORWARD 500 FROM \"big\"",
            "CLOSE \"big\"",
            "COMMIT"
        ]
    );
    let fetched: Vec<_> = out[2..6].iter().map(|e| (e.rows, e.data_rows)).collect();
    assert_eq!(fetched, [(Some(500), 500), (Some(500), 500), (Some(200), 200), (Some(0), 0)]);
}

#[test]
fn recorded_cancel() {
    let out = replay(include_bytes!("testdata/cancel_query.bin"));
    assert_eq!(queries(&out), ["BEGIN", "SELECT pg_sleep(5)"]);
    assert_eq!(out[1].error.as_ref().map(|e| e.code.as_str()), Some("57014"), "query_canceled");
    let request = recorded(include_bytes!("testdata/cancel_request.bin"));
    assert!(looks_like_startup(&request[0].1));
    assert!(replay(include_bytes!("testdata/cancel_request.bin")).is_empty());
}

/// The recorded server-side cursor session as the kernel delivers it: of each recv longer than
/// 4160 bytes, the first 4096, a gap, the last 64.
#[test]
fn recorded_cursor_through_the_kernel_capture_keeps_every_exchange() {
    let events = recorded(include_bytes!("testdata/psycopg2_cursor.bin"));
    assert!(events.iter().any(|(_, b)| b.len() > 4160), "the recording has long reads");
    let mut parser = PgParser::new(Side::Client, true);
    let mut out = Vec::new();
    for (i, (frontend, bytes)) in events.iter().enumerate() {
        let direction = if *frontend { Direction::Egress } else { Direction::Ingress };
        let ts_ns = i as u64;
        if bytes.len() <= 4160 {
            feed(&mut parser, &mut out, direction, bytes, ts_ns);
            continue;
        }
        feed(&mut parser, &mut out, direction, &bytes[..4096], ts_ns);
        let _ = parser.on_gap(&Gap { direction, ts_ns, len: (bytes.len() - 4160) as u64 }, &mut out);
        feed(&mut parser, &mut out, direction, &bytes[bytes.len() - 64..], ts_ns);
    }
    assert_eq!(out.len(), 8, "{:?}", queries(&out));
    let fetched: Vec<_> = out[2..6].iter().map(|e| e.rows).collect();
    assert_eq!(fetched, [Some(500), Some(500), Some(200), Some(0)], "row counts come from the tags");
}

/// Spans per second that the parser and the span builder make on one core from the recorded
/// `pgbench -M prepared` session (the parser benchmark). Prints its figure; run with
/// `cargo test --release -p ztrace --lib postgres_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: meaningful only in a release build"]
fn postgres_throughput() {
    use crate::spans::clock::Clock;
    let events = recorded(include_bytes!("testdata/pgbench_prepared.bin"));
    // Keep the startup and the first (preparing) transaction once; repeat the rest.
    let resource = crate::spans::testing::resource("bench", 1);
    let clock = Clock::from_offset_ns(0);
    let conn = Endpoints { local: "127.0.0.1:40000".parse().expect("addr"), remote: "127.0.0.1:5432".parse().expect("addr"), tls: false };
    let started = std::time::Instant::now();
    let (mut exchanges, mut spans, mut in_spans) = (0u64, 0u64, std::time::Duration::ZERO);
    let mut out = Vec::new();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let mut parser = PgParser::new(Side::Client, true);
        for (i, (frontend, bytes)) in events.iter().enumerate() {
            let direction = if *frontend { Direction::Egress } else { Direction::Ingress };
            let _ = parser.on_chunk(&Chunk { direction, ts_ns: i as u64, tid: 1, bytes }, &mut out);
        }
        exchanges += out.len() as u64;
        let building = std::time::Instant::now();
        for ex in out.drain(..) {
            let span = span::postgres_span(&ex, &conn, &resource, &clock);
            spans += u64::from(!span.name.is_empty());
        }
        in_spans += building.elapsed();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "postgres: {:.0} spans/s on one core ({:.0} exchanges/s parsed, {:.0}% of the time building spans)",
        spans as f64 / secs,
        exchanges as f64 / (secs - in_spans.as_secs_f64()),
        100.0 * in_spans.as_secs_f64() / secs
    );
}

/// A `Bind` with explicit per-parameter format codes: `(format, value)`, `None` = NULL.
fn bind_formats(portal: &str, stmt: &str, params: &[(u16, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = cs(portal);
    b.extend(cs(stmt));
    b.extend((params.len() as u16).to_be_bytes());
    for (format, _) in params {
        b.extend(format.to_be_bytes());
    }
    b.extend((params.len() as u16).to_be_bytes());
    for (_, value) in params {
        match value {
            Some(v) => {
                b.extend((v.len() as u32).to_be_bytes());
                b.extend(*v);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
    }
    b.extend(0u16.to_be_bytes());
    msg(b'B', &b)
}

fn run_keeping_parameters(side: Side, events: &[Event]) -> Vec<PgExchange> {
    let mut parser = PgParser::new(side, true).keep_parameters(true);
    let mut out = Vec::new();
    for (i, (frontend, bytes)) in events.iter().enumerate() {
        let direction = match (side, frontend) {
            (Side::Client, true) | (Side::Server, false) => Direction::Egress,
            _ => Direction::Ingress,
        };
        // One byte per chunk: the values survive any split.
        for b in bytes.chunks(1) {
            parser.on_chunk(&Chunk { direction, ts_ns: i as u64, tid: 1, bytes: b }, &mut out).expect("parse");
        }
    }
    out
}

#[test]
fn bind_values_are_kept_only_when_asked() {
    let events = pgbench_prepared();
    for side in [Side::Client, Side::Server] {
        let out = run_keeping_parameters(side, &events);
        assert_eq!(out.len(), 3);
        for ex in &out {
            let values: Vec<Option<&str>> = ex.parameters.as_deref().expect("kept").iter().map(|v| v.as_deref()).collect();
            assert_eq!(values, [Some("-1234"), Some("42")]);
        }
    }
    assert!(run(Side::Client, &events).iter().all(|ex| ex.parameters.is_none()));
}

#[test]
fn bind_values_in_binary_null_and_long_forms() {
    let long = "x".repeat(MAX_PARAMETER_BYTES + 10);
    let front = cat(&[
        parse("s1", "SELECT $1::int4, $2::text, $3::bytea, $4::text"),
        bind_formats("", "s1", &[(1, Some(&[0, 0, 1, 0])), (0, None), (1, Some(&[0xde, 0xad])), (0, Some(long.as_bytes()))]),
        execute(""),
        sync(),
    ]);
    let back = cat(&[msg(b'1', &[]), msg(b'2', &[]), data_row(&["256"]), complete("SELECT 1"), ready()]);
    let mut events = vec![(true, startup(&[("user", "u")])), (false, server_hello())];
    events.push((true, front));
    events.push((false, back));
    let out = run_keeping_parameters(Side::Client, &events);
    assert_eq!(out.len(), 1);
    let values = out[0].parameters.as_deref().expect("kept");
    let cut = format!("{}…", &long[..MAX_PARAMETER_BYTES]);
    assert_eq!(values, [Some("\\x00000100".to_owned()), None, Some("\\xdead".to_owned()), Some(cut)]);
}

#[test]
fn a_bind_body_cut_short_gives_the_values_it_holds() {
    let mut body = 0u16.to_be_bytes().to_vec();
    body.extend(3u16.to_be_bytes());
    body.extend(2u32.to_be_bytes());
    body.extend(b"ok");
    body.extend(10u32.to_be_bytes());
    body.extend(b"hal"); // the rest was not captured
    let values = bind_parameters(&body, None);
    assert_eq!(&*values, [Some("ok".to_owned()), Some("hal…".to_owned())]);
    for n in 0..body.len() {
        let _ = bind_parameters(&body[..n], Some(&[23, 25, 2950])); // never panics
    }
    assert!(bind_parameters(&[], None).is_empty());
}

/// `ParameterDescription`: the server's list of parameter type OIDs.
fn parameter_description(oids: &[u32]) -> Vec<u8> {
    let mut b = (oids.len() as u16).to_be_bytes().to_vec();
    for o in oids {
        b.extend(o.to_be_bytes());
    }
    msg(b't', &b)
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(cs(name));
    msg(b'D', &b)
}

#[test]
fn binary_values_are_decoded_with_the_types_the_server_described() {
    // pgx: prepare and describe in one batch, then bind binary values typed by the answer.
    let uuid = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    let sql = "SELECT * FROM users WHERE id = $1 AND org = $2 AND active = $3";
    let mut events = vec![(true, startup(&[("user", "u")])), (false, server_hello())];
    events.push((true, cat(&[parse("lrupsc_1_0", sql), describe_statement("lrupsc_1_0"), sync()])));
    events.push((false, cat(&[msg(b'1', &[]), parameter_description(&[20, 2950, 16]), row_description(&["id"]), ready()])));
    for id in [42i64, -7] {
        events.push((
            true,
            cat(&[
                bind_formats("", "lrupsc_1_0", &[(1, Some(&id.to_be_bytes())), (1, Some(&uuid)), (1, Some(&[1]))]),
                describe_portal(""),
                execute(""),
                sync(),
            ]),
        ));
        events.push((false, cat(&[msg(b'2', &[]), row_description(&["id"]), data_row(&["1"]), complete("SELECT 1"), ready()])));
    }
    for side in [Side::Client, Side::Server] {
        let out = run_keeping_parameters(side, &events);
        let values: Vec<Vec<Option<String>>> = out.iter().map(|ex| ex.parameters.as_deref().expect("kept").to_vec()).collect();
        let uuid = Some("12345678-9abc-def0-0123-456789abcdef".to_owned());
        assert_eq!(
            values,
            [vec![Some("42".to_owned()), uuid.clone(), Some("t".to_owned())], vec![Some("-7".to_owned()), uuid, Some("t".to_owned())]]
        );
    }
}

#[test]
fn types_given_in_the_parse_decode_binary_values() {
    let mut p = cs("s");
    p.extend(cs("INSERT INTO t VALUES ($1, $2)"));
    p.extend(2u16.to_be_bytes());
    p.extend(23u32.to_be_bytes());
    p.extend(701u32.to_be_bytes());
    let front = cat(&[
        msg(b'P', &p),
        bind_formats("", "s", &[(1, Some(&7i32.to_be_bytes())), (1, Some(&2.5f64.to_be_bytes()))]),
        execute(""),
        sync(),
    ]);
    let back = cat(&[msg(b'1', &[]), msg(b'2', &[]), complete("INSERT 0 1"), ready()]);
    let events = vec![(true, startup(&[("user", "u")])), (false, server_hello()), (true, front), (false, back)];
    let out = run_keeping_parameters(Side::Client, &events);
    assert_eq!(out[0].parameters.as_deref().expect("kept"), [Some("7".to_owned()), Some("2.5".to_owned())]);
}

#[test]
fn recorded_pgx_cached_statements_a_batch_and_a_rejected_prepare() {
    let file = include_bytes!("testdata/pgx_batch.bin");
    let out = replay(file);
    assert_eq!(
        queries(&out),
        [
            "SELECT $1::int8 + 1 AS next",
            "SELECT $1::int8 + 1 AS next",
            "SELECT $1::int8 + 1 AS next",
            "SELECT upper($1::text) AS word",
            "SELECT upper($1::text) AS word",
            "INSERT INTO missing_table VALUES ($1)",
        ]
    );
    assert_eq!(out[0].statement.as_deref(), Some("lrupsc_1_0"));
    assert_eq!(out[5].error.as_ref().map(|e| e.code.as_str()), Some("42P01"));
    assert!(out.iter().all(|ex| ex.parameters.is_none()));
    let events = recorded(file);
    for side in [Side::Client, Side::Server] {
        let kept = run_keeping_parameters(side, &events);
        let values: Vec<Option<String>> =
            kept.iter().map(|ex| ex.parameters.as_deref().and_then(|p| p.first().cloned()).flatten()).collect();
        let expected = ["1", "2", "3", "alpha", "beta"].map(|v| Some(v.to_owned()));
        assert_eq!(values[..5], expected, "int8 in binary, decoded with the described type");
        assert_eq!(values[5], None, "a statement rejected at Parse was never bound");
    }
}

#[test]
fn statements_unanswered_at_close_are_exchanges() {
    for side in [Side::Client, Side::Server] {
        let mut events = psql_session("SELECT pg_sleep(10)", Vec::new());
        events.pop(); // no Terminate: the client gives up and closes
        events.pop(); // no answer
        let (out, mut parser) = run_with(side, &events, |_, _| Vec::new());
        assert!(out.is_empty());
        let mut out = Vec::new();
        assert_eq!(parser.on_close(99, &mut out), 1);
        assert_eq!(out.len(), 1, "{out:?}");
        let ex = &out[0];
        assert!(!ex.answered);
        assert_eq!((ex.side, ex.query.as_deref()), (side, Some("SELECT pg_sleep(10)")));
        assert_eq!((ex.request_start_ns, ex.response_end_ns), (50, 99));
        assert_eq!(parser.take_lost(), 0);
    }
    // Extended protocol: the Parse still waiting is no execution; the Execute is the exchange.
    let mut parser = PgParser::new(Side::Client, false);
    let mut out = Vec::new();
    let batch = cat(&[parse("s1", "SELECT 1"), bind("", "s1", &[]), execute(""), sync()]);
    feed(&mut parser, &mut out, Direction::Egress, &batch, 1);
    assert_eq!(parser.on_close(5, &mut out), 1);
    assert_eq!((out.len(), out[0].answered, out[0].query.as_deref()), (1, false, Some("SELECT 1")));
}

#[test]
fn executions_dropped_by_lost_framing_are_counted() {
    let mut parser = PgParser::new(Side::Client, false);
    let mut out = Vec::new();
    feed(&mut parser, &mut out, Direction::Egress, &query("SELECT 1"), 1);
    // Bytes lost between client messages: what waits can no longer be paired.
    let gap = Gap { direction: Direction::Egress, ts_ns: 2, len: 100 };
    assert!(parser.on_gap(&gap, &mut out).is_err());
    assert_eq!(parser.take_lost(), 1);
    assert_eq!(parser.on_close(3, &mut out), 0);
}
