//! The example's cache-and-messaging flow end to end (issue 18): one request is one trace from
//! an HTTP handler through Redis, PostgreSQL and NATS to a subscriber process and the service it
//! calls. PostgreSQL, redis-server, nats-server, users, catalog and notifier
//! (`examples/python/`) are started as a user would start them, all before ztrace (the
//! notifier's NATS connection is picked up mid-stream), and ztrace exports to a real OTLP
//! receiver. `GET /items/{id}` the first time (a cache miss) must give exactly this trace
//! (`service kind name (ztrace.link)`, children sorted):
//!
//! ```text
//! catalog server GET /items/{id} (none)
//!   catalog client GET (thread)                          Redis GET item:{id}, a miss
//!     redis-server server GET (connection)
//!   catalog client SELECT stock (thread)
//!     postgres server SELECT stock (connection)
//!   catalog client SET (thread)                          Redis SET item:{id} ... EX 60
//!     redis-server server SET (connection)
//!   catalog producer publish items.viewed (thread)       NATS PUB
//!     notifier consumer receive items.viewed (message)   NATS MSG, in another process
//!       notifier client GET /profiles/{id} (thread)      its processing
//!         users server GET /profiles/{id} (connection)
//!           users client SELECT users (thread)
//!             postgres server SELECT users (connection)
//! ```
//!
//! The second request for the same item is a cache hit: no query, no `SET`, the rest the same.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use ztrace_e2e::example::Flow;
use ztrace_e2e::otlp::{OtlpReceiver, OtlpSpan};
use ztrace_e2e::{wait_until, Ztrace};

const TIMEOUT: Duration = Duration::from_secs(60);

const MISS: &str = "\
catalog server GET /items/{id} (none)
  catalog client GET (thread)
    redis-server server GET (connection)
  catalog client SELECT stock (thread)
    postgres server SELECT stock (connection)
  catalog client SET (thread)
    redis-server server SET (connection)
  catalog producer publish items.viewed (thread)
    notifier consumer receive items.viewed (message)
      notifier client GET /profiles/{id} (thread)
        users server GET /profiles/{id} (connection)
          users client SELECT users (thread)
            postgres server SELECT users (connection)
";

const HIT: &str = "\
catalog server GET /items/{id} (none)
  catalog client GET (thread)
    redis-server server GET (connection)
  catalog producer publish items.viewed (thread)
    notifier consumer receive items.viewed (message)
      notifier client GET /profiles/{id} (thread)
        users server GET /profiles/{id} (connection)
          users client SELECT users (thread)
            postgres server SELECT users (connection)
";

/// `service kind name (ztrace.link)`.
fn label(s: &OtlpSpan) -> String {
    let kind = s
        .kind()
        .unwrap_or("?")
        .trim_start_matches("SPAN_KIND_")
        .to_lowercase();
    format!(
        "{} {kind} {} ({})",
        s.resource_str("service.name").unwrap_or("?"),
        s.name().unwrap_or("?"),
        s.attr_str("ztrace.link").unwrap_or("?")
    )
}

/// The spans as one tree per trace id, in the format of [`MISS`]; spans whose parent is not
/// among them are roots.
fn render(spans: &[&OtlpSpan]) -> String {
    let ids: HashSet<&str> = spans.iter().filter_map(|s| s.span_id()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&OtlpSpan>> = BTreeMap::new();
    for s in spans {
        children
            .entry(s.parent().filter(|p| ids.contains(p)))
            .or_default()
            .push(s);
    }
    fn walk(
        out: &mut String,
        children: &BTreeMap<Option<&str>, Vec<&OtlpSpan>>,
        parent: Option<&str>,
        depth: usize,
    ) {
        let mut kids = children.get(&parent).cloned().unwrap_or_default();
        kids.sort_by_key(|s| label(s));
        for k in kids {
            out.push_str(&format!("{}{}\n", "  ".repeat(depth), label(k)));
            walk(out, children, k.span_id(), depth + 1);
        }
    }
    let mut out = String::new();
    walk(&mut out, &children, None, 0);
    if ids.len() != spans.len() {
        out.push_str("(a span id appears twice)\n");
    }
    out
}

/// `GET path` over HTTP/1.0 from this (untraced) process: the reply's body.
fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to catalog");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.0 200"), "GET {path}: {reply}");
    reply.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

/// Sends `GET /items/{item}?user={user}`, waits for notifier to have handled its event, then
/// for the trace of `want`'s size; returns the spans of that request (those in the trace of
/// its catalog SERVER span, and any of ours that are in no trace of a catalog SERVER span).
fn request(
    flow: &mut Flow,
    receiver: &mut OtlpReceiver,
    ours: &dyn Fn(&OtlpSpan) -> bool,
    seen: &mut HashSet<String>,
    item: u32,
    user: u32,
    want: &str,
) -> Vec<OtlpSpan> {
    let body = get(flow.catalog.port, &format!("/items/{item}?user={user}"));
    assert!(body.contains(&format!("\"item\": {item}")), "{body}");
    flow.notifier.wait_for_stdout(
        &format!("item {item} viewed by user{user}@example.com"),
        TIMEOUT,
    );
    let n = want.lines().count();
    let fresh = |receiver: &OtlpReceiver| -> Vec<OtlpSpan> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| ours(s) && !s.span_id().is_some_and(|id| seen.contains(id)))
            .collect()
    };
    wait_until(TIMEOUT, || (fresh(receiver).len() >= n).then_some(()));
    // Late spans (one too many) must be seen too.
    std::thread::sleep(Duration::from_millis(1500));
    let spans = fresh(receiver);
    seen.extend(spans.iter().filter_map(|s| s.span_id().map(str::to_owned)));
    spans
}

/// Checks that `spans` are one trace of exactly `want`, with the Redis GET's hit/miss.
fn check(spans: &[OtlpSpan], want: &str, hit: bool) {
    let traces: HashSet<&str> = spans.iter().filter_map(|s| s.trace_id()).collect();
    let got = render(&spans.iter().collect::<Vec<_>>());
    assert!(
        traces.len() == 1 && got == want,
        "{} trace(s) (want one), tree:\n{got}\nexpected:\n{want}",
        traces.len()
    );
    let find = |label_prefix: &str| -> &OtlpSpan {
        spans
            .iter()
            .find(|s| label(s).starts_with(label_prefix))
            .unwrap_or_else(|| panic!("no span {label_prefix}"))
    };
    let cache = find("catalog client GET");
    assert_eq!(cache.attr_str("db.system.name"), Some("redis"), "{cache:?}");
    assert_eq!(cache.attr_str("db.query.text"), Some("GET item:3"));
    assert_eq!(
        cache.attr("ztrace.cache.hit").and_then(Value::as_bool),
        Some(hit),
        "{cache:?}"
    );
    if !hit {
        let set = find("catalog client SET");
        assert_eq!(
            set.attr_str("db.query.text"),
            Some("SET item:3 ? EX ?"),
            "values are never exported: {set:?}"
        );
        let select = find("catalog client SELECT stock");
        assert_eq!(select.attr_str("db.system.name"), Some("postgresql"));
    }
    let publish = find("catalog producer publish items.viewed");
    let receive = find("notifier consumer receive items.viewed");
    for span in [publish, receive] {
        assert_eq!(span.attr_str("messaging.system"), Some("nats"), "{span:?}");
        assert_eq!(
            span.attr_str("messaging.destination.name"),
            Some("items.viewed")
        );
        assert!(
            span.attr_i64("messaging.message.body.size")
                .is_some_and(|n| n > 0),
            "{span:?}"
        );
    }
    assert_eq!(receive.parent(), publish.span_id());
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_request_through_redis_postgres_and_nats_to_a_subscriber_is_one_trace() {
    let mut flow = Flow::start();
    let mut receiver = OtlpReceiver::start();
    let endpoint = receiver.grpc_endpoint();
    let ztrace = Ztrace::start(&[
        "--otlp-endpoint",
        endpoint.as_str(),
        "--exe",
        "python3",
        "--exe",
        "postgres",
        "--exe",
        "redis-server",
        "--exe",
        "nats-server",
    ]);

    let pids: HashSet<u32> = [
        flow.catalog.pid(),
        flow.notifier.pid(),
        flow.users.pid(),
        flow.redis.pid(),
        flow.nats.pid(),
    ]
    .into();
    let pg_port = i64::from(flow.pg.port);
    let ours = move |s: &OtlpSpan| {
        s.pid().is_some_and(|p| pids.contains(&p))
            || (s.resource_str("service.name") == Some("postgres")
                && s.attr_i64("server.port") == Some(pg_port))
    };
    let mut seen = HashSet::new();
    let miss = request(&mut flow, &mut receiver, &ours, &mut seen, 3, 5, MISS);
    check(&miss, MISS, false);
    let hit = request(&mut flow, &mut receiver, &ours, &mut seen, 3, 7, HIT);
    check(&hit, HIT, true);
    assert_ne!(
        miss[0].trace_id(),
        hit[0].trace_id(),
        "each request its own trace"
    );
    ztrace.stop();
}
