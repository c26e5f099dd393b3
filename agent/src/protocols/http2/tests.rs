//! Tests of the HTTP/2 parser on recorded real sessions (`testdata/`, recorded with
//! `postgres/testdata/record.py` between the named client and server): whole, split at every
//! byte boundary, from both sides, with the kernel's capture limits (gaps inside large frames),
//! started mid-connection (never a wrong name), and the spans they make.

use std::sync::{Arc, LazyLock};

use super::{span::attr, *};
use crate::{
    protocols::{Chunk, Direction, Endpoints, Gap, Parser, Protocol},
    spans::{clock::Clock, testing, AttrValue, Span, SpanKind, StatusCode},
};

type Capture = LazyLock<Vec<(bool, &'static [u8])>>;

fn records(file: &'static [u8]) -> Vec<(bool, &'static [u8])> {
    crate::protocols::capture::records(file)
}

/// grpcio 1.85 client and server (tests/fixtures/grpc_py.py): hello, fail (NOT_FOUND), crash
/// (UNKNOWN), stream (3 messages), big (200 KB answer), many (8 concurrent hellos); one channel.
static GRPCIO: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpcio_calls.bin")));
/// grpc-go 1.33 client and server (tests/fixtures/grpc_go): hello, fail, stream, many.
static GRPC_GO: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpc_go_calls.bin")));
/// grpcio client, grpc-go server: hello, fail.
static GRPCIO_TO_GO: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpcio_client_go_server.bin")));
/// grpc-go client, grpcio server: hello, fail, stream.
static GO_TO_GRPCIO: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpc_go_client_grpcio_server.bin")));
/// @grpc/grpc-js 1.14 client and server on Node 20 (tests/fixtures/grpc_node.js, nghttp2's HPACK
/// under Node's http2): hello, fail (NOT_FOUND), crash (UNKNOWN: the handler threw), stream (3
/// messages), many (8 concurrent hellos); one channel.
static GRPC_JS: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpc_js_calls.bin")));
/// @grpc/grpc-js client, grpc-go 1.33 server: hello, fail, stream.
static GRPC_JS_TO_GO: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpc_js_client_go_server.bin")));
/// @grpc/grpc-js: Slow with a 200 ms deadline (stream 1: the client writes `RST_STREAM` `CANCEL`
/// when it runs out, the server answers nothing), then hello (stream 3).
static GRPC_JS_DEADLINE: Capture = LazyLock::new(|| records(include_bytes!("testdata/grpc_js_deadline.bin")));
/// h2load -n 20 -c 1 -m 10 against nginx 1.22 (h2c prior knowledge): 10 streams at a time.
static H2LOAD: Capture = LazyLock::new(|| records(include_bytes!("testdata/nginx_h2load_concurrent.bin")));
/// curl 7.88 --http2-prior-knowledge GET of a 135 KB file from nginx.
static CURL_LARGE: Capture = LazyLock::new(|| records(include_bytes!("testdata/nginx_curl_large_data.bin")));
/// curl POST with a `traceparent` header to nginx (201).
static CURL_POST: Capture = LazyLock::new(|| records(include_bytes!("testdata/nginx_curl_post_traceparent.bin")));
/// curl GET /api/orders/42 from nginx (404).
static CURL_404: Capture = LazyLock::new(|| records(include_bytes!("testdata/nginx_curl_404.bin")));

#[derive(Clone, Debug)]
enum Ev {
    /// (the client wrote them, ts, bytes)
    Bytes(bool, u64, Vec<u8>),
    Lost(bool, u64, u64),
    Close(u64),
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    exchanges: Vec<Http2Exchange>,
    errors: usize,
    unanswered: usize,
    lost: u64,
}

fn direction(side: Side, client_wrote: bool) -> Direction {
    match (side, client_wrote) {
        (Side::Client, true) | (Side::Server, false) => Direction::Egress,
        _ => Direction::Ingress,
    }
}

fn run_from(mut parser: Http2Parser, side: Side, events: &[Ev]) -> Outcome {
    let mut out = Outcome::default();
    for ev in events {
        let r = match ev {
            Ev::Bytes(client, ts_ns, bytes) => {
                let chunk = Chunk {
                    direction: direction(side, *client),
                    ts_ns: *ts_ns,
                    tid: if *client { 11 } else { 22 },
                    bytes,
                };
                parser.on_chunk(&chunk, &mut out.exchanges)
            }
            Ev::Lost(client, ts_ns, len) => parser
                .on_gap(&Gap { direction: direction(side, *client), ts_ns: *ts_ns, len: *len }, &mut out.exchanges),
            Ev::Close(ts) => {
                out.unanswered += parser.on_close(*ts, &mut out.exchanges);
                Ok(())
            }
        };
        out.errors += usize::from(r.is_err());
        out.lost += parser.take_lost();
        assert!(parser.streams.len() <= MAX_OPEN_STREAMS);
    }
    out
}

fn run(side: Side, events: &[Ev]) -> Outcome {
    let first = events.iter().find_map(|e| match e {
        Ev::Bytes(_, _, b) => Some(b.clone()),
        _ => None,
    });
    run_from(Http2Parser::new(side, first.as_deref().unwrap_or_default()), side, events)
}

/// Record `i` at `1000 * (i + 1)` ns, cut as `cut` says, then a close.
fn events(capture: &[(bool, &[u8])], cut: impl Fn(usize, usize) -> Vec<usize>) -> Vec<Ev> {
    let mut evs = Vec::new();
    for (i, (client, bytes)) in capture.iter().enumerate() {
        let ts = 1000 * (i as u64 + 1);
        let mut at = 0;
        for len in cut(i, bytes.len()) {
            evs.push(Ev::Bytes(*client, ts, bytes[at..at + len].to_vec()));
            at += len;
        }
    }
    evs.push(Ev::Close(1000 * (capture.len() as u64 + 1)));
    evs
}

fn whole(capture: &[(bool, &[u8])]) -> Vec<Ev> {
    events(capture, |_, len| vec![len])
}

/// (method, path, :status, grpc-status, reset) of each exchange, in stream order.
fn summary(out: &Outcome) -> Vec<Row> {
    let mut ex: Vec<&Http2Exchange> = out.exchanges.iter().collect();
    ex.sort_by_key(|e| e.stream_id);
    ex.iter()
        .map(|e| {
            let status = |h: &Option<Head>, n: &str| h.as_ref().and_then(|h| h.value(n)).map(str::to_owned);
            (
                e.request.value(":method").map(str::to_owned),
                e.request.value(":path").map(str::to_owned),
                status(&e.response, ":status"),
                status(&e.trailers, "grpc-status").or_else(|| status(&e.response, "grpc-status")),
                e.reset,
            )
        })
        .collect()
}

type Row = (Option<String>, Option<String>, Option<String>, Option<String>, Option<u32>);

fn row(method: &str, path: &str, status: &str, grpc: Option<&str>) -> Row {
    (Some(method.into()), Some(path.into()), Some(status.into()), grpc.map(Into::into), None)
}

/// Every element split at every byte boundary (elements above `limit` bytes at `limit` evenly
/// spread places), on both sides, gives what the whole capture gives.
fn assert_split_invariant(capture: &[(bool, &[u8])], limit: usize) {
    for side in [Side::Client, Side::Server] {
        let expected = run(side, &whole(capture));
        for (i, (_, bytes)) in capture.iter().enumerate() {
            let step = (bytes.len() / limit).max(1);
            for k in (1..bytes.len()).step_by(step) {
                let got = run(side, &events(capture, |j, len| if j == i { vec![k, len - k] } else { vec![len] }));
                assert_eq!(got, expected, "{side:?}: element {i} split at {k}");
            }
        }
    }
}

#[test]
fn grpcio_calls_pair_by_stream() {
    let out = run(Side::Client, &whole(&GRPCIO));
    assert_eq!(out.errors, 0);
    assert_eq!(out.unanswered, 0);
    let s = summary(&out);
    assert_eq!(
        s[..5],
        [
            row("POST", "/demo.Greeter/SayHello", "200", Some("0")),
            row("POST", "/demo.Greeter/Fail", "200", Some("5")),
            row("POST", "/demo.Greeter/Crash", "200", Some("2")),
            row("POST", "/demo.Greeter/Stream", "200", Some("0")),
            row("POST", "/demo.Greeter/Big", "200", Some("0")),
        ]
    );
    assert_eq!(s.len(), 13);
    assert!(s[5..].iter().all(|r| *r == row("POST", "/demo.Greeter/SayHello", "200", Some("0"))));
    let big = out.exchanges.iter().find(|e| e.request.value(":path") == Some("/demo.Greeter/Big")).expect("big");
    assert_eq!(big.response_body_len, 200_000 + 5, "one length-prefixed message");
    let stream =
        out.exchanges.iter().find(|e| e.request.value(":path") == Some("/demo.Greeter/Stream")).expect("stream");
    assert_eq!(stream.response_body_len, 3 * (5 + 6));
    assert_eq!(run(Side::Server, &whole(&GRPCIO)), out_with_side(out, Side::Server));
}

fn out_with_side(mut out: Outcome, side: Side) -> Outcome {
    for e in &mut out.exchanges {
        e.side = side;
    }
    out
}

#[test]
fn grpcio_split_at_every_byte() {
    assert_split_invariant(&GRPCIO, 64);
}

#[test]
fn grpc_go_calls_and_cross_language() {
    for (capture, n) in [(&GRPC_GO, 11), (&GRPCIO_TO_GO, 2), (&GO_TO_GRPCIO, 3)] {
        let out = run(Side::Client, &whole(capture));
        assert_eq!((out.errors, out.unanswered), (0, 0));
        let s = summary(&out);
        assert_eq!(s.len(), n, "{s:?}");
        assert_eq!(s[0], row("POST", "/demo.Greeter/SayHello", "200", Some("0")));
        assert_eq!(s[1], row("POST", "/demo.Greeter/Fail", "200", Some("5")));
        assert_split_invariant(capture, usize::MAX);
    }
}

#[test]
fn grpc_js_calls_and_grpc_js_to_go() {
    let out = run(Side::Client, &whole(&GRPC_JS));
    assert_eq!((out.errors, out.unanswered), (0, 0));
    let s = summary(&out);
    assert_eq!(
        s[..4],
        [
            row("POST", "/demo.Greeter/SayHello", "200", Some("0")),
            row("POST", "/demo.Greeter/Fail", "200", Some("5")),
            row("POST", "/demo.Greeter/Crash", "200", Some("2")),
            row("POST", "/demo.Greeter/Stream", "200", Some("0")),
        ]
    );
    assert_eq!(s.len(), 12, "{s:?}");
    assert!(s[4..].iter().all(|r| *r == row("POST", "/demo.Greeter/SayHello", "200", Some("0"))));
    let stream =
        out.exchanges.iter().find(|e| e.request.value(":path") == Some("/demo.Greeter/Stream")).expect("stream");
    assert_eq!(stream.response_body_len, 3 * (5 + 6), "three length-prefixed `part N`");
    assert_eq!(run(Side::Server, &whole(&GRPC_JS)), out_with_side(out, Side::Server));
    assert_split_invariant(&GRPC_JS, usize::MAX);

    let out = run(Side::Client, &whole(&GRPC_JS_TO_GO));
    assert_eq!((out.errors, out.unanswered), (0, 0));
    assert_eq!(
        summary(&out),
        [
            row("POST", "/demo.Greeter/SayHello", "200", Some("0")),
            row("POST", "/demo.Greeter/Fail", "200", Some("5")),
            row("POST", "/demo.Greeter/Stream", "200", Some("0")),
        ]
    );
    assert_split_invariant(&GRPC_JS_TO_GO, usize::MAX);
}

#[test]
fn nginx_concurrent_streams_large_data_post_404() {
    let out = run(Side::Server, &whole(&H2LOAD));
    assert_eq!((out.errors, out.unanswered), (0, 0));
    assert_eq!(summary(&out), vec![row("GET", "/index.html", "200", None); 20]);
    assert_split_invariant(&H2LOAD, usize::MAX);

    let out = run(Side::Client, &whole(&CURL_LARGE));
    assert_eq!(summary(&out), [row("GET", "/big.txt", "200", None)]);
    assert_eq!(out.exchanges[0].response_body_len, 135_091);
    assert_split_invariant(&CURL_LARGE, 16);

    let out = run(Side::Client, &whole(&CURL_POST));
    assert_eq!(summary(&out), [row("POST", "/post", "201", None)]);
    assert_eq!(out.exchanges[0].request_body_len, 3);
    assert_split_invariant(&CURL_POST, usize::MAX);

    let out = run(Side::Client, &whole(&CURL_404));
    assert_eq!(summary(&out), [row("GET", "/api/orders/42", "404", None)]);
}

/// The kernel copies a prefix of each syscall and its last 64 bytes: the middle is a gap.
fn kernel_events(capture: &[(bool, &[u8])], prefix: usize) -> Vec<Ev> {
    let mut evs = Vec::new();
    for (i, (client, bytes)) in capture.iter().enumerate() {
        let ts = 1000 * (i as u64 + 1);
        if bytes.len() > prefix + 64 {
            evs.push(Ev::Bytes(*client, ts, bytes[..prefix].to_vec()));
            evs.push(Ev::Lost(*client, ts, (bytes.len() - prefix - 64) as u64));
            evs.push(Ev::Bytes(*client, ts, bytes[bytes.len() - 64..].to_vec()));
        } else {
            evs.push(Ev::Bytes(*client, ts, bytes.to_vec()));
        }
    }
    evs.push(Ev::Close(1000 * (capture.len() as u64 + 1)));
    evs
}

#[test]
fn gaps_inside_large_data_frames_lose_nothing() {
    // nginx's 8 KiB DATA frames read 64 KiB at a time: the frames in a gap are taken for
    // frames of the size of the one it started in, which holds until the last, shorter one.
    let expected = summary(&run(Side::Client, &whole(&CURL_LARGE)));
    let out = run(Side::Client, &kernel_events(&CURL_LARGE, 4096));
    assert_eq!(summary(&out), expected);
    assert!(
        (128 * 1024..=135_091).contains(&out.exchanges[0].response_body_len),
        "{}",
        out.exchanges[0].response_body_len
    );
    // grpcio's 200 KB answer: every call still pairs right (a gap past a frame may lose some,
    // never mislabel one).
    let full = run(Side::Client, &whole(&GRPCIO));
    let out = run(Side::Client, &kernel_events(&GRPCIO, 4096));
    assert_never_wrong(&full, &out);
    assert!(out.exchanges.len() >= 12, "{:?}", summary(&out));
}

/// Every exchange of `got` is the exchange of the same stream in `full`, or has fields unknown
/// where `full` has them: never another stream's or another entry's text.
fn assert_never_wrong(full: &Outcome, got: &Outcome) {
    for e in &got.exchanges {
        let f = full.exchanges.iter().find(|f| f.stream_id == e.stream_id).expect("a stream of the full capture");
        for name in [":method", ":path", ":authority", "content-type", "user-agent"] {
            if let Some(v) = e.request.value(name) {
                assert_eq!(Some(v), f.request.value(name), "stream {} {name}", e.stream_id);
            }
        }
        for (h, fh) in [(&e.response, &f.response), (&e.trailers, &f.trailers)] {
            if let (Some(h), Some(fh)) = (h, fh) {
                for name in [":status", "grpc-status", "content-type"] {
                    if let Some(v) = h.value(name) {
                        assert_eq!(Some(v), fh.value(name), "stream {} {name}", e.stream_id);
                    }
                }
            }
        }
    }
}

/// The connection table's way in mid-connection: records from `from` on, each offered to
/// detection until one is recognized, the parser made from it.
fn run_mid_connection(capture: &[(bool, &[u8])], from: usize, side: Side) -> Option<Outcome> {
    let evs = whole(capture.get(from..)?);
    let start = evs.iter().position(|e| match e {
        Ev::Bytes(client, _, b) => {
            Http2.detect(&Chunk { direction: direction(side, *client), ts_ns: 0, tid: 0, bytes: b }) == Some(side)
        }
        _ => false,
    })?;
    let Ev::Bytes(_, _, first) = &evs[start] else { return None };
    Some(run_from(Http2Parser::new(side, first), side, &evs[start..]))
}

#[test]
fn started_mid_connection_never_names_wrongly() {
    for capture in [&GRPCIO, &GRPC_GO, &H2LOAD, &GO_TO_GRPCIO, &GRPC_JS, &GRPC_JS_TO_GO] {
        for side in [Side::Client, Side::Server] {
            let full = run(side, &whole(capture));
            let mut recognized = 0;
            for from in 1..capture.len() {
                if let Some(out) = run_mid_connection(capture, from, side) {
                    recognized += 1;
                    assert_never_wrong(&full, &out);
                }
            }
            assert!(recognized > 0, "some mid-connection start recognized");
        }
    }
}

#[test]
fn mid_connection_start_counts_unknown_fields_and_later_new_entries_decode() {
    // grpc-go's client inserts :path of a method on its first call; the calls before the
    // start are unknown, a method first called after the start decodes.
    let full = run(Side::Client, &whole(&GRPC_GO));
    let stream = full
        .exchanges
        .iter()
        .find(|e| e.request.value(":path") == Some("/demo.Greeter/Stream"))
        .expect("the Stream call");
    let from = (stream.request_start_ns / 1000 - 1) as usize;
    let out = run_mid_connection(&GRPC_GO, from, Side::Client).expect("recognized");
    let s = summary(&out);
    assert!(s.iter().any(|r| r.1.as_deref() == Some("/demo.Greeter/Stream")), "{s:?}");
    assert!(out.exchanges.iter().any(|e| e.unknown_fields() > 0));
}

#[test]
fn detection() {
    let d = |direction, bytes: &[u8]| Http2.detect(&Chunk { direction, ts_ns: 0, tid: 0, bytes });
    assert_eq!(d(Direction::Egress, frame::PREFACE), Some(Side::Client));
    assert_eq!(d(Direction::Ingress, &frame::PREFACE[..10]), Some(Side::Server));
    // A Go server writes its SETTINGS before reading the preface.
    let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x40, 0];
    assert_eq!(d(Direction::Egress, &settings), Some(Side::Server));
    assert_eq!(d(Direction::Egress, b"GET / HTTP/1.1\r\n"), None);
    assert_eq!(d(Direction::Egress, b"PR"), None);
    assert_eq!(d(Direction::Egress, b"Q\0\0\0\x0dSELECT 1\0"), None);
    // Mid-way: a HEADERS frame starting with :method POST (request) or :status 200.
    assert_eq!(d(Direction::Ingress, &[0, 0, 2, 1, 4, 0, 0, 0, 3, 0x83, 0x86]), Some(Side::Server));
    assert_eq!(d(Direction::Ingress, &[0, 0, 1, 1, 4, 0, 0, 0, 3, 0x88]), Some(Side::Client));
    assert_eq!(d(Direction::Ingress, &[0, 0, 1, 1, 4, 0, 0, 0, 3, 0xbe]), None);
}

#[test]
fn resets_goaway_and_close() {
    let headers = |stream: u32, block: &[u8], end: bool| {
        let mut f = (block.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([1, 4 | u8::from(end)]);
        f.extend(stream.to_be_bytes());
        f.extend(block);
        f
    };
    let rst = |stream: u32, code: u32| {
        let mut f = vec![0, 0, 4, 3, 0];
        f.extend(stream.to_be_bytes());
        f.extend(code.to_be_bytes());
        f
    };
    let mut c = frame::PREFACE.to_vec();
    c.extend(headers(1, &[0x82, 0x86, 0x84], true));
    c.extend(headers(3, &[0x82, 0x86, 0x84], true));
    c.extend(headers(5, &[0x82, 0x86, 0x84], true));
    c.extend(headers(7, &[0x82, 0x86, 0x84], true));
    let mut s = headers(1, &[0x88], false);
    s.extend(rst(1, 2));
    s.extend(rst(3, 8));
    // GOAWAY, last stream 5: 7 was never processed.
    s.extend([0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0]);
    let out = run(Side::Client, &[Ev::Bytes(true, 1, c), Ev::Bytes(false, 2, s), Ev::Close(3)]);
    let s = summary(&out);
    assert_eq!(
        s.iter().map(|r| (r.2.clone(), r.4)).collect::<Vec<_>>(),
        [(Some("200".into()), Some(2)), (None, Some(8)), (None, None), (None, Some(7)),]
    );
    assert_eq!(out.unanswered, 1, "stream 5 had no answer when the connection closed");
}

#[test]
fn an_answer_to_a_request_lost_in_a_gap_is_counted() {
    // grpcio writes frames with sendmsg of many iovecs; beyond 8 the kernel reports a gap.
    let mut c = frame::PREFACE.to_vec();
    c.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let answer = vec![0, 0, 1, 1, 5, 0, 0, 0, 1, 0x88];
    let out =
        run(Side::Client, &[Ev::Bytes(true, 1, c), Ev::Lost(true, 1, 40), Ev::Bytes(false, 2, answer), Ev::Close(3)]);
    assert_eq!((out.exchanges.len(), out.lost), (0, 1));
}

#[test]
fn garbage_and_truncation_never_panic() {
    let mut all: Vec<u8> = GRPCIO.iter().flat_map(|(_, b)| b.iter().copied()).take(5000).collect();
    for seed in 0..200u32 {
        let mut x = seed.wrapping_mul(2654435761);
        for _ in 0..20 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % all.len();
            all[i] ^= (x >> 8) as u8;
        }
        let evs: Vec<Ev> =
            all.chunks(97).enumerate().map(|(i, b)| Ev::Bytes(i % 3 == 0, i as u64, b.to_vec())).collect();
        let _ = run(Side::Client, &evs);
        let _ = run(Side::Server, &evs);
    }
}

// --- spans ---

fn endpoints() -> Endpoints {
    Endpoints {
        local: "127.0.0.1:40000".parse().expect("addr"),
        remote: "127.0.0.1:50051".parse().expect("addr"),
        tls: false,
    }
}

fn spans_of(capture: &[(bool, &[u8])], side: Side) -> Vec<Span> {
    let resource = testing::resource("svc", 1);
    let clock = Clock::from_offset_ns(0);
    let mut out = run(side, &whole(capture));
    out.exchanges.sort_by_key(|e| e.stream_id);
    out.exchanges.iter().map(|e| crate::protocols::Exchange::span(e, &endpoints(), &resource, &clock)).collect()
}

fn attr_of<'a>(span: &'a Span, key: &str) -> Option<&'a AttrValue> {
    span.attributes.iter().find(|a| a.key == key).map(|a| &a.value)
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr_of(span, key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

#[test]
fn grpc_spans_name_method_status_and_errors_by_side() {
    let client = spans_of(&GRPCIO, Side::Client);
    let server = spans_of(&GRPCIO, Side::Server);
    let names: Vec<&str> = client.iter().take(5).map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["demo.Greeter/SayHello", "demo.Greeter/Fail", "demo.Greeter/Crash", "demo.Greeter/Stream", "demo.Greeter/Big"]
    );
    let status = |s: &Span| {
        (
            str_attr(s, attr::RPC_RESPONSE_STATUS_CODE).map(str::to_owned),
            s.status,
            str_attr(s, attr::ERROR_TYPE).map(str::to_owned),
        )
    };
    assert_eq!(status(&client[0]), (Some("OK".into()), StatusCode::Unset, None));
    // NOT_FOUND: an error for the client, not for the server.
    assert_eq!(status(&client[1]), (Some("NOT_FOUND".into()), StatusCode::Error, Some("NOT_FOUND".into())));
    assert_eq!(status(&server[1]), (Some("NOT_FOUND".into()), StatusCode::Unset, None));
    // UNKNOWN: an error on both sides.
    assert_eq!(status(&server[2]), (Some("UNKNOWN".into()), StatusCode::Error, Some("UNKNOWN".into())));
    let s = &server[0];
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(str_attr(s, attr::RPC_SYSTEM_NAME), Some("grpc"));
    assert_eq!(str_attr(s, attr::RPC_METHOD), Some("demo.Greeter/SayHello"));
    assert_eq!(str_attr(s, attr::NETWORK_PROTOCOL_VERSION), Some("2"));
    assert_eq!(str_attr(s, attr::SERVER_ADDRESS), Some("127.0.0.1"));
    assert!(matches!(attr_of(s, attr::SERVER_PORT), Some(AttrValue::Int(_))));
    assert_eq!(client[0].kind, SpanKind::Client);
}

#[test]
fn a_stream_reset_once_its_grpc_timeout_ran_out_is_deadline_exceeded() {
    let capture = &GRPC_JS_DEADLINE;
    // Record 2 is Slow's request (with `grpc-timeout`), record 3 the client's RST_STREAM.
    let out = run(Side::Client, &whole(capture));
    let slow = out.exchanges.iter().find(|e| e.stream_id == 1).expect("stream 1");
    assert_eq!(slow.reset, Some(0x8));
    let timeout = slow.request.value("grpc-timeout").expect("grpc-timeout").to_owned();
    let ms: u64 = timeout.strip_suffix('m').and_then(|m| m.parse().ok()).expect("milliseconds");
    assert!((100..=200).contains(&ms), "{timeout}");
    let resource = testing::resource("svc", 1);
    let clock = Clock::from_offset_ns(0);
    // The reset `after` ns past the request: record 3 then, the others 1 µs apart around it.
    let status_after = |after: u64, side: Side| {
        let mut evs = whole(capture);
        for ev in &mut evs {
            match ev {
                Ev::Bytes(_, ts, _) | Ev::Lost(_, ts, _) | Ev::Close(ts) if *ts >= 4000 => *ts += after,
                _ => {}
            }
        }
        let mut out = run(side, &evs);
        out.exchanges.sort_by_key(|e| e.stream_id);
        let spans: Vec<Span> =
            out.exchanges.iter().map(|e| crate::protocols::Exchange::span(e, &endpoints(), &resource, &clock)).collect();
        assert_eq!(spans.len(), 2);
        assert_eq!(str_attr(&spans[1], attr::RPC_RESPONSE_STATUS_CODE), Some("OK"));
        let s = &spans[0];
        assert_eq!(s.name, "demo.Greeter/Slow");
        (str_attr(s, attr::RPC_RESPONSE_STATUS_CODE).map(str::to_owned), s.status, str_attr(s, attr::ERROR_TYPE).map(str::to_owned))
    };
    let deadline = Some("DEADLINE_EXCEEDED".to_owned());
    let cancelled = Some("CANCELLED".to_owned());
    for side in [Side::Client, Side::Server] {
        // Reset at the deadline, or a little before it (the header was computed before the write).
        for after in [ms * 1_000_000, ms * 1_000_000 - 1_000_000, 2 * ms * 1_000_000] {
            assert_eq!(status_after(after, side), (deadline.clone(), StatusCode::Error, deadline.clone()), "{side:?}");
        }
    }
    // Cancelled well before its deadline: CANCELLED, an error for the client only.
    assert_eq!(status_after(ms * 1_000_000 / 2, Side::Client), (cancelled.clone(), StatusCode::Error, cancelled));
    assert_eq!(status_after(ms * 1_000_000 / 2, Side::Server), (Some("CANCELLED".into()), StatusCode::Unset, None));
    // Every byte split.
    assert_split_invariant(capture, usize::MAX);
    for (v, ns) in [("200m", Some(200_000_000)), ("1S", Some(1_000_000_000)), ("99999999n", Some(99_999_999))] {
        assert_eq!(super::span::grpc_timeout_ns(v), ns, "{v}");
    }
    for v in ["", "m", "123456789m", "5x", "-5m", "5 m", "\u{e9}"] {
        assert_eq!(super::span::grpc_timeout_ns(v), None, "{v:?}");
    }
}

#[test]
fn http2_spans_follow_the_http_rules_with_version_2() {
    let s = &spans_of(&CURL_404, Side::Client)[0];
    assert_eq!(s.name, "GET /api/orders/{id}");
    assert_eq!(str_attr(s, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(s, "url.path"), Some("/api/orders/42"));
    assert_eq!(attr_of(s, "http.response.status_code"), Some(&AttrValue::Int(404)));
    assert_eq!(str_attr(s, attr::NETWORK_PROTOCOL_VERSION), Some("2"));
    assert_eq!(s.status, StatusCode::Error);
    assert!(attr_of(s, attr::RPC_SYSTEM_NAME).is_none());
    let post = &spans_of(&CURL_POST, Side::Server)[0];
    assert_eq!(post.name, "POST /post");
    assert_eq!(str_attr(post, attr::ZTRACE_LINK), Some("header"));
    assert_eq!(crate::spans::hex(&post.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(attr_of(post, "http.request.body.size"), Some(&AttrValue::Int(3)));
}

#[test]
fn unknown_fields_make_other_and_no_route() {
    let resource = testing::resource("svc", 1);
    let clock = Clock::from_offset_ns(0);
    let unknown = hpack::Field { name: hpack::Text::Unknown, value: hpack::Text::Unknown };
    let known =
        |n: &str, v: &str| hpack::Field { name: hpack::Text::Known(n.into()), value: hpack::Text::Known(v.into()) };
    let mut ex = Http2Exchange {
        side: Side::Server,
        stream_id: 9,
        request: Head { fields: vec![unknown.clone(), unknown.clone()], unknown: 2 },
        response: Some(Head { fields: vec![known(":status", "200")], unknown: 0 }),
        trailers: None,
        request_body_len: 0,
        response_body_len: 0,
        request_start_ns: 1,
        request_end_ns: 1,
        response_start_ns: 2,
        response_end_ns: 2,
        request_tid: 1,
        response_tid: 1,
        reset: None,
        upgraded: false,
    };
    let s = crate::protocols::Exchange::span(&ex, &endpoints(), &resource, &clock);
    assert_eq!(s.name, "HTTP");
    assert_eq!(str_attr(&s, "http.request.method"), Some("_OTHER"));
    assert!(attr_of(&s, "http.route").is_none());
    assert_eq!(attr_of(&s, attr::ZTRACE_HPACK_UNKNOWN), Some(&AttrValue::Int(2)));
    // Known method, unknown path: the method alone.
    ex.request.fields[0] = known(":method", "GET");
    ex.request.unknown = 1;
    let s = crate::protocols::Exchange::span(&ex, &endpoints(), &resource, &clock);
    assert_eq!(s.name, "GET");
    // gRPC recognized by its trailers, path unknown: named `grpc`, method _OTHER.
    ex.request.fields[0] = known(":method", "POST");
    ex.trailers = Some(Head { fields: vec![known("grpc-status", "0")], unknown: 0 });
    let s = crate::protocols::Exchange::span(&ex, &endpoints(), &resource, &clock);
    assert_eq!((s.name.as_str(), str_attr(&s, attr::RPC_METHOD)), ("grpc", Some("_OTHER")));
    assert_eq!(str_attr(&s, attr::RPC_RESPONSE_STATUS_CODE), Some("OK"));
    let _ = Arc::clone(&resource);
}

#[test]
fn the_fuzz_driver_runs_on_real_sessions() {
    // What `cargo fuzz run http2` starts from: real sessions under every control byte.
    for capture in [&GRPCIO, &GRPC_GO, &H2LOAD, &CURL_POST, &GRPC_JS] {
        let (client, server): (Vec<u8>, Vec<u8>) = (
            capture.iter().filter(|r| r.0).flat_map(|r| r.1.iter().copied()).collect(),
            capture.iter().filter(|r| !r.0).flat_map(|r| r.1.iter().copied()).collect(),
        );
        let split = (client.len() * 255 / (client.len() + server.len())) as u8;
        for control in [0u8, 1, 2, 0x41, 0xfd, 0xff] {
            for gap_every in [0u8, 3] {
                let mut data = vec![control, split, gap_every];
                data.extend(&client);
                data.extend(&server);
                data.truncate(40_000);
                crate::protocols::fuzz::feed(&Http2, &data);
            }
        }
    }
}

#[test]
fn whole_sessions_have_no_unknown_fields() {
    for (name, capture) in [
        ("grpcio", &GRPCIO),
        ("grpc-go", &GRPC_GO),
        ("grpcio→go", &GRPCIO_TO_GO),
        ("go→grpcio", &GO_TO_GRPCIO),
        ("h2load", &H2LOAD),
        ("grpc-js", &GRPC_JS),
        ("grpc-js→go", &GRPC_JS_TO_GO),
    ] {
        let out = run(Side::Client, &whole(capture));
        let unknown: Vec<(u32, usize)> =
            out.exchanges.iter().map(|e| (e.stream_id, e.unknown_fields())).filter(|u| u.1 > 0).collect();
        assert!(unknown.is_empty(), "{name}: {unknown:?}");
    }
}

#[test]
fn mid_connection_entries_inserted_after_the_start_decode() {
    // From the client's SETTINGS ACK on: the first call is whole, so every entry the later
    // calls refer to was inserted after the start.
    let out = run_mid_connection(&GRPC_GO, 2, Side::Client).expect("recognized");
    assert_eq!(out.exchanges.len(), 11);
    assert!(out.exchanges.iter().all(|e| e.unknown_fields() == 0), "{:?}", summary(&out));
}

/// curl 7.88 `--http2` on `http://` to Go's `x/net/http2/h2c` server (tests/fixtures/h2c_go):
/// GET /items/42 as HTTP/1.1 with `Upgrade: h2c`, answered `101` and then in HTTP/2 on stream
/// 1; GET /missing on stream 3 (404).
static H2C_UPGRADE: Capture = LazyLock::new(|| records(include_bytes!("testdata/go_h2c_upgrade_curl.bin")));

/// Feeds `chunks` (the client wrote them, the bytes) as the connection table does: the
/// parser the registry detects, handed over to its successor at a protocol switch. The
/// exchanges as (stream, pairs by stream, method, path, status, request start).
fn through_the_registry(side: Side, chunks: &[(bool, Vec<u8>)]) -> Vec<(u32, bool, String, String, String, u64)> {
    let mut parser: Option<Box<dyn crate::protocols::StreamParser>> = None;
    let mut out: crate::protocols::Exchanges = Vec::new();
    for (i, (client, bytes)) in chunks.iter().enumerate() {
        let chunk = Chunk { direction: direction(side, *client), ts_ns: 10 * (i as u64 + 1), tid: 1, bytes };
        let p = parser.get_or_insert_with(|| {
            crate::protocols::detect(&chunk, &Options::default()).expect("a protocol detected")
        });
        let _ = p.on_data(&chunk, 0, &[], &mut out);
        if let Some((mut next, rest)) = p.take_successor() {
            let _ = next.on_data(&Chunk { bytes: &rest, ..chunk }, 0, &[], &mut out);
            *p = next;
        }
    }
    if let Some(p) = parser.as_mut() {
        p.on_close(10_000, &mut out);
    }
    out.iter()
        .map(|e| {
            let ex = e.as_any().downcast_ref::<Http2Exchange>().expect("an HTTP/2 exchange");
            let value = |h: Option<&Head>, name| h.and_then(|h| h.value(name)).unwrap_or_default().to_owned();
            (
                ex.stream_id,
                e.stream().is_some(),
                value(Some(&ex.request), ":method"),
                value(Some(&ex.request), ":path"),
                value(ex.response.as_ref(), ":status"),
                ex.request_start_ns,
            )
        })
        .collect()
}

#[test]
fn an_http1_upgrade_to_h2c_hands_the_connection_to_http2() {
    let chunks: Vec<(bool, Vec<u8>)> = H2C_UPGRADE.iter().map(|(c, b)| (*c, b.to_vec())).collect();
    let expected = |first_ts| {
        vec![
            (1, false, "GET".to_owned(), "/items/42".to_owned(), "200".to_owned(), first_ts),
            (3, true, "GET".to_owned(), "/missing".to_owned(), "404".to_owned(), 0),
        ]
    };
    let normalize = |mut v: Vec<(u32, bool, String, String, String, u64)>| {
        v.sort();
        if let Some(last) = v.get_mut(1) {
            last.5 = 0;
        }
        v
    };
    for side in [Side::Client, Side::Server] {
        assert_eq!(normalize(through_the_registry(side, &chunks)), expected(10), "{side:?}");
        // The `101` and the server's SETTINGS in one chunk.
        let mut merged = chunks.clone();
        let settings = merged.remove(2);
        merged[1].1.extend_from_slice(&settings.1);
        assert_eq!(normalize(through_the_registry(side, &merged)), expected(10), "{side:?} merged");
        // Every record split in two at every byte.
        for at in 0..chunks.len() {
            for cut in 1..chunks[at].1.len() {
                let mut split = chunks.clone();
                let (client, bytes) = split.remove(at);
                split.insert(at, (client, bytes[cut..].to_vec()));
                split.insert(at, (client, bytes[..cut].to_vec()));
                assert_eq!(normalize(through_the_registry(side, &split)), expected(10), "{side:?} {at} {cut}");
            }
        }
    }
    // A websocket's `101` stays the end of HTTP/1 (tested in http1): only `h2c` on both hands over.
}

/// nghttp 1.52 `-u` (nghttp2-client) to Go's `x/net/http2/h2c` server: GET /items/42 upgraded
/// (stream 1), then the client's preface with PRIORITY frames for idle streams 3 to 11 (its
/// dependency tree: no request) and a PRIORITY on stream 1, and GET /missing on stream 13 (404).
static NGHTTP_UPGRADE: Capture = LazyLock::new(|| records(include_bytes!("testdata/nghttp_h2c_upgrade_go.bin")));

#[test]
fn nghttp_upgrade_with_priority_frames_for_idle_streams() {
    let chunks: Vec<(bool, Vec<u8>)> = NGHTTP_UPGRADE.iter().map(|(c, b)| (*c, b.to_vec())).collect();
    let expected = vec![
        (1, false, "GET".to_owned(), "/items/42".to_owned(), "200".to_owned(), 10),
        (13, true, "GET".to_owned(), "/missing".to_owned(), "404".to_owned(), 30),
    ];
    let sorted = |mut v: Vec<(u32, bool, String, String, String, u64)>| {
        v.sort();
        v
    };
    for side in [Side::Client, Side::Server] {
        assert_eq!(sorted(through_the_registry(side, &chunks)), expected, "{side:?}");
        for at in 0..chunks.len() {
            for cut in 1..chunks[at].1.len() {
                let mut split = chunks.clone();
                let (client, bytes) = split.remove(at);
                split.insert(at, (client, bytes[cut..].to_vec()));
                split.insert(at, (client, bytes[..cut].to_vec()));
                let mut got = sorted(through_the_registry(side, &split));
                // A record split at or before stream 13's request moves its start one record on.
                if let Some(late) = got.get_mut(1).filter(|g| g.5 == expected[1].5 + 10) {
                    late.5 = expected[1].5;
                }
                assert_eq!(got, expected, "{side:?} {at} {cut}");
            }
        }
    }
}

#[test]
fn the_upgraded_request_is_an_http2_span() {
    let chunks: Vec<(bool, Vec<u8>)> = H2C_UPGRADE.iter().map(|(c, b)| (*c, b.to_vec())).collect();
    let mut parser = crate::protocols::detect(
        &Chunk { direction: Direction::Ingress, ts_ns: 1, tid: 1, bytes: &chunks[0].1 },
        &Options::default(),
    )
    .expect("detected");
    let mut out: crate::protocols::Exchanges = Vec::new();
    for (i, (client, bytes)) in chunks.iter().enumerate() {
        let chunk = Chunk { direction: direction(Side::Server, *client), ts_ns: i as u64 + 1, tid: 1, bytes };
        let _ = parser.on_data(&chunk, 0, &[], &mut out);
        if let Some((next, _)) = parser.take_successor() {
            parser = next;
        }
    }
    let resource = testing::resource("h2c", 1);
    let span = out[0].span(&endpoints(), &resource, &Clock::from_offset_ns(0));
    assert_eq!(span.name, "GET /items/{id}");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(str_attr(&span, "network.protocol.version"), Some("2"));
    assert_eq!(str_attr(&span, "url.path"), Some("/items/42"));
    assert_eq!(attr_of(&span, "http.response.status_code"), Some(&AttrValue::Int(200)));
}
