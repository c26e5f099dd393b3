//! The example system end to end (issue 6): orders, users and inventory with their PostgreSQL
//! databases, traced by the real agent. 50 requests from 10 concurrent clients make 50 traces,
//! each exactly the tree below (service, kind, name and parent of every span), with no span left
//! over and no span in two traces — in `--print=json` and in a real OTLP receiver alike.
//!
//! ```text
//! orders    server GET /orders/{id}
//!   orders    client SELECT orders
//!     postgres  server SELECT orders
//!   orders    client GET /profiles/{id}
//!     users     server GET /profiles/{id}
//!       users     client SELECT users
//!         postgres  server SELECT users
//!   orders    client GET /stock/{id}
//!     inventory server GET /stock/{id}
//!       inventory client SELECT stock
//!         postgres  server SELECT stock
//!       inventory client SELECT reservations
//!         postgres  server SELECT reservations
//! ```
//!
//! Both implementations (Python, Go) and chains across them (Python orders calling the Go users and
//! inventory, and the other way) give the same traces.
//!
//! The load comes from this test process over plain TCP, and ztrace traces only the services'
//! executables and PostgreSQL (`--exe`), so the orders SERVER span is the root of each trace.
//!
//! With a client instrumented by the OpenTelemetry SDK (`opentelemetry-instrument`, exporting to
//! the same receiver), the SDK's CLIENT span is the root instead and every ztrace span carries
//! the SDK's trace id (W3C `traceparent`, `ztrace.link=header` on the orders SERVER span).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use ztrace_e2e::example::{Example, Lang};
use ztrace_e2e::otlp::{OtlpReceiver, OtlpSpan};
use ztrace_e2e::process::Proc;
use ztrace_e2e::{fixture, python, Span, Ztrace};

const CLIENTS: u32 = 10;
const REQUESTS_PER_CLIENT: u32 = 5;
const SPANS_PER_TRACE: usize = 13;
const TIMEOUT: Duration = Duration::from_secs(90);

/// The tree every trace must be, one line per span (`service kind name`), children sorted, two
/// spaces of indent per level.
const TREE: &str = "\
orders server GET /orders/{id}
  orders client GET /profiles/{id}
    users server GET /profiles/{id}
      users client SELECT users
        postgres server SELECT users
  orders client GET /stock/{id}
    inventory server GET /stock/{id}
      inventory client SELECT reservations
        postgres server SELECT reservations
      inventory client SELECT stock
        postgres server SELECT stock
  orders client SELECT orders
    postgres server SELECT orders
";

/// What the tree check needs of a span, from either source.
#[derive(Clone, Debug)]
struct Node {
    trace: String,
    id: String,
    parent: Option<String>,
    /// `service kind name`.
    label: String,
    link: Option<String>,
}

fn from_print(s: &Span) -> Node {
    Node {
        trace: s.trace_id().unwrap_or_default().to_owned(),
        id: s.span_id().unwrap_or_default().to_owned(),
        parent: s.parent_span_id().flatten().map(str::to_owned),
        label: format!(
            "{} {} {}",
            s.service().unwrap_or("?"),
            s.kind().unwrap_or("?"),
            s.name().unwrap_or("?")
        ),
        link: s.attr_str("ztrace.link").map(str::to_owned),
    }
}

fn from_otlp(s: &OtlpSpan) -> Node {
    let kind = s
        .kind()
        .unwrap_or("?")
        .trim_start_matches("SPAN_KIND_")
        .to_lowercase();
    let parent =
        s.0.get("parent_span_id")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
    Node {
        trace: s.trace_id().unwrap_or_default().to_owned(),
        id: s.span_id().unwrap_or_default().to_owned(),
        parent,
        label: format!(
            "{} {} {}",
            s.resource_str("service.name").unwrap_or("?"),
            kind,
            s.name().unwrap_or("?")
        ),
        link: s.attr_str("ztrace.link").map(str::to_owned),
    }
}

/// The tree of one trace as text (see [`TREE`]); spans whose parent is not in the trace are
/// extra roots, and a span id seen twice is reported.
fn render(nodes: &[&Node]) -> String {
    let ids: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Node>> = BTreeMap::new();
    for n in nodes {
        let parent = n.parent.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(n);
    }
    fn walk(
        out: &mut String,
        children: &BTreeMap<Option<&str>, Vec<&Node>>,
        parent: Option<&str>,
        depth: usize,
    ) {
        let mut kids = children.get(&parent).cloned().unwrap_or_default();
        kids.sort_by(|a, b| a.label.cmp(&b.label));
        for k in kids {
            out.push_str(&"  ".repeat(depth));
            out.push_str(&k.label);
            out.push('\n');
            walk(out, children, Some(k.id.as_str()), depth + 1);
        }
    }
    let mut out = String::new();
    walk(&mut out, &children, None, 0);
    if ids.len() != nodes.len() {
        out.push_str("(a span id appears twice)\n");
    }
    out
}

/// Checks that `nodes` (the spans of this example only) are `n` traces of exactly [`TREE`].
fn check_traces(source: &str, nodes: &[Node], n: usize, go_services: &[&str]) {
    check_traces_of(source, nodes, n, TREE, "none", go_services);
}

/// Checks that `nodes` are `n` traces of exactly `tree`; `root_link` is the `ztrace.link` of the
/// orders SERVER span; CLIENT spans under a SERVER span of their process have `goroutine` in
/// `go_services`, `thread` in the others.
fn check_traces_of(
    source: &str,
    nodes: &[Node],
    n: usize,
    tree: &str,
    root_link: &str,
    go_services: &[&str],
) {
    let mut traces: HashMap<&str, Vec<&Node>> = HashMap::new();
    for node in nodes {
        traces.entry(node.trace.as_str()).or_default().push(node);
    }
    let mut bad = Vec::new();
    for (trace, spans) in &traces {
        let got = render(spans);
        if got != tree {
            bad.push(format!("trace {trace} ({} spans):\n{got}", spans.len()));
        }
    }
    bad.sort();
    assert!(
        bad.is_empty() && traces.len() == n,
        "{source}: {} traces (want {n}), {} not the expected tree; first ones:\n{}\nexpected:\n{tree}",
        traces.len(),
        bad.len(),
        bad.iter().take(4).cloned().collect::<Vec<_>>().join("\n")
    );
    let ids: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        nodes.len(),
        "{source}: no span in two traces, no span twice"
    );
    for node in nodes.iter().filter(|n| n.link.is_some()) {
        let want = match (
            node.label.as_str(),
            node.label.split(' ').nth(1),
            node.parent.is_some(),
        ) {
            ("orders server GET /orders/{id}", _, _) => root_link,
            (_, _, false) => "none",
            (_, Some("server"), true) => "connection",
            _ if go_services.contains(&node.label.split(' ').next().unwrap_or_default()) => {
                "goroutine"
            }
            _ => "thread",
        };
        assert_eq!(
            node.link.as_deref(),
            Some(want),
            "{source}: ztrace.link of {node:?}"
        );
    }
}

/// `GET path` over HTTP/1.0 from this (untraced) process; the status code.
fn get(port: u16, path: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to orders");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The example with orders in `orders_lang` and users and inventory in `lang`.
fn run(orders_lang: Lang, lang: Lang) {
    run_with(orders_lang, lang, &[]);
}

/// [`run`] with extra environment variables for the services.
fn run_with(orders_lang: Lang, lang: Lang, envs: &[(&str, &str)]) {
    let example = Example::start_with(lang, orders_lang, envs);
    let mut receiver = OtlpReceiver::start();
    let endpoint = receiver.grpc_endpoint();
    let mut args = vec![
        "--print=json",
        "--otlp-endpoint",
        endpoint.as_str(),
        "--exe",
        "postgres",
    ];
    let mut go_services = Vec::new();
    for (service, lang) in [
        ("orders", orders_lang),
        ("users", lang),
        ("inventory", lang),
    ] {
        let exe = match lang {
            Lang::Python => "python3",
            Lang::Go => {
                go_services.push(service);
                service
            }
        };
        if !args.contains(&exe) {
            args.extend(["--exe", exe]);
        }
    }
    let mut ztrace = Ztrace::start(&args);

    let port = example.service("orders").port;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    (0..REQUESTS_PER_CLIENT)
                        .map(|i| get(port, &format!("/orders/{}", 1 + c * 10 + i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client thread"))
            .collect()
    });
    assert!(
        statuses.iter().all(|&s| s == 200),
        "every order is found: {statuses:?}"
    );
    let n = (CLIENTS * REQUESTS_PER_CLIENT) as usize;

    let pids: HashSet<u32> = example.services.iter().map(|s| s.pid()).collect();
    let pg_port = i64::from(example.pg.port);
    let ours = |pid: Option<u32>, service: Option<&str>, server_port: Option<i64>| {
        pid.is_some_and(|p| pids.contains(&p))
            || (service == Some("postgres") && server_port == Some(pg_port))
    };
    let printed = ztrace.wait_for_n_spans(
        n * SPANS_PER_TRACE,
        |s| ours(s.pid(), s.service(), s.attr_i64("server.port")),
        TIMEOUT,
    );
    let exported = receiver.wait_for_spans(
        n * SPANS_PER_TRACE,
        |s| {
            let pid =
                s.0.get("resource")
                    .and_then(|r| r.get("process.pid"))
                    .and_then(|v| match v {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => s.parse().ok(),
                        _ => None,
                    });
            ours(
                pid.map(|p| p as u32),
                s.resource_str("service.name"),
                s.attr_i64("server.port"),
            )
        },
        TIMEOUT,
    );
    let stopped = ztrace.stop();
    check_traces(
        "--print=json",
        &printed.iter().map(from_print).collect::<Vec<_>>(),
        n,
        &go_services,
    );
    check_traces(
        "OTLP",
        &exported.iter().map(from_otlp).collect::<Vec<_>>(),
        n,
        &go_services,
    );
    let stats = stopped.stats.expect("ztrace stats line");
    assert!(
        stats.contains_key("spans_unlinked"),
        "spans_unlinked is reported: {stats:?}"
    );
    if orders_lang == Lang::Go {
        // The requests to users and inventory went over pooled connections, written by their
        // writeLoop goroutines: handed over to the handler goroutine, not guessed.
        let handoffs = stats
            .get("kernel_go_handoffs")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        assert!(
            handoffs > 0,
            "net/http writeLoop hand-overs were seen: {stats:?}"
        );
        let spawns = stats
            .get("kernel_go_spawn_events")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        assert!(spawns > 0, "goroutine starts were seen: {stats:?}");
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn an_opentelemetry_sdk_client_and_ztrace_spans_form_one_trace() {
    const REQUESTS: usize = 5;
    let example = Example::start(Lang::Python);
    let mut receiver = OtlpReceiver::start();
    let endpoint = receiver.grpc_endpoint();
    let ztrace = Ztrace::start(&[
        "--otlp-endpoint",
        endpoint.as_str(),
        "--exe",
        "python3",
        "--exe",
        "postgres",
    ]);

    // The SDK client: urllib auto-instrumented, its spans to the same receiver over gRPC.
    let instrument = python().with_file_name("opentelemetry-instrument");
    let mut cmd = std::process::Command::new(&instrument);
    cmd.arg(python())
        .arg(fixture("otel_client.py"))
        .args((1..=REQUESTS).map(|i| example.order_url(i as u32)))
        .env("OTEL_SERVICE_NAME", "sdk-client")
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env(
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
            "grpc_client,requests",
        );
    let mut client = Proc::spawn("otel client", &mut cmd);
    client.close_stdin();
    let status = client
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|| panic!("the SDK client did not finish:\n{}", client.describe()));
    assert!(
        status.success(),
        "the SDK client failed:\n{}",
        client.describe()
    );
    assert_eq!(
        client.stdout_lines(),
        vec!["200"; REQUESTS],
        "{}",
        client.describe()
    );

    let pids: HashSet<u32> = example.services.iter().map(|s| s.pid()).collect();
    let pg_port = i64::from(example.pg.port);
    // The SDK's own export to the receiver is gRPC, which ztrace traces too: not part of the
    // requests' traces.
    let ours = |s: &OtlpSpan| {
        (s.resource_str("service.name") == Some("sdk-client")
            && s.attr_str("rpc.system.name").is_none())
            || s.pid().is_some_and(|p| pids.contains(&p))
            || (s.resource_str("service.name") == Some("postgres")
                && s.attr_i64("server.port") == Some(pg_port))
    };
    let spans = receiver.wait_for_spans(REQUESTS * (SPANS_PER_TRACE + 1), ours, TIMEOUT);
    ztrace.stop();
    let sdk: Vec<&OtlpSpan> = spans
        .iter()
        .filter(|s| s.resource_str("service.name") == Some("sdk-client"))
        .collect();
    assert_eq!(sdk.len(), REQUESTS, "one SDK span per request: {sdk:#?}");
    let sdk_name = sdk[0].name().unwrap_or("?");
    let mut tree = format!("sdk-client client {sdk_name}\n");
    for line in TREE.lines() {
        tree.push_str(&format!("  {line}\n"));
    }
    let nodes: Vec<Node> = spans.iter().map(from_otlp).collect();
    check_traces_of(
        "OTLP with the SDK client",
        &nodes,
        REQUESTS,
        &tree,
        "header",
        &[],
    );
    let sdk_ids: HashSet<&str> = sdk.iter().filter_map(|s| s.span_id()).collect();
    for node in nodes
        .iter()
        .filter(|n| n.label.starts_with("orders server"))
    {
        assert!(
            node.parent.as_deref().is_some_and(|p| sdk_ids.contains(p)),
            "the SDK client span is the parent: {node:?}"
        );
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn python_example_gives_fifty_complete_traces() {
    run(Lang::Python, Lang::Python);
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_example_gives_fifty_complete_traces_over_pooled_connections() {
    run(Lang::Go, Lang::Go);
}

/// Go orders calling users and inventory at the same time from two goroutines it starts
/// (`FANOUT=parallel`): the client spans made on those goroutines are children of the orders
/// SERVER span (`ztrace.link=goroutine`, through the goroutine starts).
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_requests_made_from_goroutines_the_handler_starts_join_its_trace() {
    run_with(Lang::Go, Lang::Go, &[("FANOUT", "parallel")]);
}

/// A chain across languages: Python orders (thread links) calling the Go users and inventory
/// (goroutine links), and Go orders calling the Python ones.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_chain_across_python_and_go_links_just_as_well() {
    run(Lang::Python, Lang::Go);
    run(Lang::Go, Lang::Python);
}
