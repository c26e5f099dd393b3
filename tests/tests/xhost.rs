//! One trace across hosts (issue 16). Two simulated hosts on this machine (`hosts::Hosts`:
//! network namespaces joined by a veth pair, a cgroup each), one ztrace per host that traces only
//! its own host's processes (`--cgroup`), both exporting to one OTLP receiver.
//!
//! The chain A (host 1) → B (host 2) → C (host 1), Python HTTP/1 services each calling the next
//! with the body they received: one trace whose tree is the one a single host would give, the
//! links across hosts made by the TCP option (`ztrace.link=tcp_option`), and every server
//! receiving the exact bytes sent (a SHA-256 per hop). With `--propagate=off` host 2's part of
//! the trace splits off; a "middlebox" that strips the option (iptables TCPOPTSTRIP in host 2)
//! is counted by host 2's kernel (a request without a context), and the `traceparent` host 1's
//! kernel added to the plaintext request still joins b to the trace. The same chain also runs
//! over three hosts (A → B → C, a bridge between them). A hop over one host's loopback hands its
//! context over in the kernel and adds nothing to the wire (unless `--propagate=all`).

use std::path::Path;
use std::time::Duration;

use ztrace_e2e::hosts::{Host, Hosts};
use ztrace_e2e::otlp::{OtlpReceiver, OtlpSpan};
use ztrace_e2e::postgres::PgServer;
use ztrace_e2e::process::Proc;
use ztrace_e2e::tls::Certs;
use ztrace_e2e::ztrace::Stopped;
use ztrace_e2e::{fixture, free_port, python, TempDir, Ztrace};

const READY: Duration = Duration::from_secs(20);
const SPANS: Duration = Duration::from_secs(30);

/// An `xhost.py server` on `host`, named `service` (OTEL_SERVICE_NAME), calling `calls`;
/// HTTPS with `tls`.
fn service(host: &Host, service: &str, port: u16, calls: &[String], tls: Option<&Certs>) -> Proc {
    service_on(host, &host.addr.to_string(), service, port, calls, tls)
}

/// The same, listening on `bind` (e.g. the host's loopback).
fn service_on(
    host: &Host,
    bind: &str,
    service: &str,
    port: u16,
    calls: &[String],
    tls: Option<&Certs>,
) -> Proc {
    let mut cmd = host.command(python());
    cmd.arg("-u")
        .arg(fixture("xhost.py"))
        .args(["server", "--bind", bind, "--port", &port.to_string()])
        .env("OTEL_SERVICE_NAME", service);
    if let Some(certs) = tls {
        cmd.arg("--tls").arg(&certs.cert).arg(&certs.key);
    }
    for url in calls {
        cmd.args(["--call", url]);
    }
    let mut proc = Proc::spawn(service, &mut cmd);
    proc.wait_for_stdout("ready", READY);
    proc
}

/// One request from `host` to `url` with a body of `body_size` bytes; returns the answer's
/// lines (one SHA-256 per hop that received the body) and the SHA-256 of the body sent.
fn request(host: &Host, url: &str, body_size: usize) -> (Vec<String>, String) {
    request_with(host, url, body_size, None)
}

/// The same, the request carrying `traceparent` of its own when given.
fn request_with(
    host: &Host,
    url: &str,
    body_size: usize,
    traceparent: Option<&str>,
) -> (Vec<String>, String) {
    let mut cmd = host.command(python());
    cmd.arg("-u")
        .arg(fixture("xhost.py"))
        .args([
            "request",
            "--url",
            url,
            "--body-size",
            &body_size.to_string(),
        ])
        .env("OTEL_SERVICE_NAME", "client");
    if let Some(value) = traceparent {
        cmd.args(["--traceparent", value]);
    }
    let mut proc = Proc::spawn("client", &mut cmd);
    let status = proc.wait_exit(READY);
    assert!(
        status.is_some_and(|s| s.success()),
        "client failed: {}",
        proc.describe()
    );
    let mut lines = proc.stdout_lines();
    let sent = lines
        .pop()
        .and_then(|l| l.strip_prefix("sent ").map(str::to_owned));
    (
        lines,
        sent.unwrap_or_else(|| panic!("client printed no hash: {}", proc.describe())),
    )
}

/// The host's agent: only its cgroup, exporting to `otlp`.
fn agent(host: &Host, otlp: &OtlpReceiver, extra: &[&str]) -> Ztrace {
    let cgroup = host.cgroup.to_string_lossy().into_owned();
    let endpoint = otlp.grpc_endpoint();
    let mut args = vec![
        "--cgroup",
        &cgroup,
        "--otlp-endpoint",
        &endpoint,
        "--stacks=off",
    ];
    args.extend_from_slice(extra);
    Ztrace::start(&args)
}

/// `(service, kind)` of a span, e.g. `("b", "SPAN_KIND_SERVER")`.
fn who(s: &OtlpSpan) -> (String, String) {
    (
        s.resource_str("service.name").unwrap_or("?").to_owned(),
        s.kind().unwrap_or("?").to_owned(),
    )
}

fn find<'a>(spans: &'a [OtlpSpan], service: &str, kind: &str) -> &'a OtlpSpan {
    spans
        .iter()
        .find(|s| who(s) == (service.to_owned(), kind.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} span of {service} among:\n{spans:#?}"))
}

const SERVER: &str = "SPAN_KIND_SERVER";
const CLIENT: &str = "SPAN_KIND_CLIENT";

/// How the middle service B is run.
#[derive(Clone, Copy)]
enum Middle<'a> {
    /// `xhost.py server` (thread per connection); HTTPS for B and C with certificates.
    Python(Option<&'a Certs>),
    /// The Go twin (`tests/fixtures/xhost_go`, net/http), built at this path; with certificates,
    /// B serves HTTPS through Go's crypto/tls and calls C (Python, OpenSSL) over HTTPS.
    Go(&'a Path, Option<&'a Certs>),
}

impl Middle<'_> {
    /// How B's call links to B's request on one host: Go's handler goroutine, Python's thread.
    fn serving_link(&self) -> &'static str {
        match self {
            Middle::Go(..) => "goroutine",
            Middle::Python(_) => "thread",
        }
    }
}

/// Services on fresh ports: A (host 1) → B (host 2) → C (host 1). Returns them (kept alive by
/// the caller) and A's URL.
fn chain(hosts: &Hosts, middle: Middle) -> (Vec<Proc>, String) {
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let tls = match middle {
        Middle::Python(tls) | Middle::Go(_, tls) => tls,
    };
    let https = |url: String| {
        if tls.is_some() {
            url.replacen("http://", "https://", 1)
        } else {
            url
        }
    };
    let c = service(h1, "c", pc, &[], tls);
    let b = middle_service(h2, middle, pb, &https(h1.url(pc, "/c")));
    let a = service(h1, "a", pa, &[https(h2.url(pb, "/b"))], None);
    (vec![a, b, c], h1.url(pa, "/a"))
}

/// B, run as `middle` says on `host`'s port `port`, calling `call`.
fn middle_service(host: &Host, middle: Middle, port: u16, call: &str) -> Proc {
    match middle {
        Middle::Python(tls) => service(host, "b", port, &[call.to_owned()], tls),
        Middle::Go(binary, tls) => {
            let mut cmd = host.command(binary);
            cmd.args(["-listen", &format!("{}:{port}", host.addr), "-call", call])
                .env("OTEL_SERVICE_NAME", "b");
            if let Some(certs) = tls {
                cmd.arg("-tls")
                    .arg(format!("{},{}", certs.cert.display(), certs.key.display()));
            }
            let mut proc = Proc::spawn("b", &mut cmd);
            proc.wait_for_stdout("ready", READY);
            proc
        }
    }
}

/// Spans of the six ends of the chain (client → a → b → c), waited for.
fn chain_spans(otlp: &mut OtlpReceiver) -> Vec<OtlpSpan> {
    let ours = |s: &OtlpSpan| {
        matches!(
            s.resource_str("service.name"),
            Some("a" | "b" | "c" | "client")
        )
    };
    otlp.wait_for_spans(6, ours, SPANS)
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn http1_chain_across_two_hosts_is_one_trace() {
    chain_across_two_hosts_is_one_trace(Middle::Python(None));
}

/// B in Go (net/http server and client): its handler goroutine serves the request and the
/// request to C is written by the connection's `writeLoop` goroutine for it.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_go_service_in_the_middle_of_the_chain() {
    let dir = TempDir::new("xhost-go");
    chain_across_two_hosts_is_one_trace(Middle::Go(&build_go_twin(&dir), None));
}

/// The same over HTTPS with B in Go: Go's crypto/tls probes start B's server request at its
/// `Read` (ids from the option of the segments that brought it) and its call to C at its
/// `Write`'s entry, before the ciphertext leaves with the option.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_go_https_service_in_the_middle_of_the_chain() {
    let dir = TempDir::new("xhost-go-tls");
    let certs = Certs::make();
    chain_across_two_hosts_is_one_trace(Middle::Go(&build_go_twin(&dir), Some(&certs)));
}

/// `tests/fixtures/xhost_go` built into `dir`.
fn build_go_twin(dir: &TempDir) -> std::path::PathBuf {
    let binary = dir.join("xhost_go");
    let out = std::process::Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(fixture("xhost_go/main.go"))
        .envs([
            ("GO111MODULE", "off"),
            ("GOPATH", "/usr/share/gocode"),
            ("GOPROXY", "off"),
            ("CGO_ENABLED", "0"),
        ])
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

/// The same chain with B and C serving HTTPS (OpenSSL through Python's ssl): the context goes
/// below the encrypted bytes, in the TCP option of the segments that carry them.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn https_chain_across_two_hosts_is_one_trace() {
    let certs = Certs::make();
    chain_across_two_hosts_is_one_trace(Middle::Python(Some(&certs)));
}

fn chain_across_two_hosts_is_one_trace(middle: Middle) {
    let hosts = Hosts::two();
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(hosts.get(0), &otlp, &[]);
    let z2 = agent(hosts.get(1), &otlp, &[]);
    let (services, url) = chain(&hosts, middle);

    let (answer, sent) = request(hosts.get(0), &url, 100_000);
    assert_eq!(
        answer,
        [sent.clone(), sent.clone(), sent],
        "every hop received the exact body sent"
    );

    let spans = chain_spans(&mut otlp);
    drop(services);
    let s1 = z1.stop();
    let s2 = z2.stop();
    let report = report(&spans, &s1, &s2, &["propagat", "tls"]);
    assert_eq!(spans.len(), 6, "six spans:\n{report}");
    let trace = spans[0].trace_id();
    assert!(
        spans.iter().all(|s| s.trace_id() == trace),
        "one trace:\n{report}"
    );

    let client = find(&spans, "client", CLIENT);
    let a_server = find(&spans, "a", SERVER);
    let a_client = find(&spans, "a", CLIENT);
    let b_server = find(&spans, "b", SERVER);
    let b_client = find(&spans, "b", CLIENT);
    let c_server = find(&spans, "c", SERVER);
    // The tree, and how each link was made: on one host by connection or thread, across
    // hosts by the TCP option.
    assert_links(
        &[
            (a_server, client, "connection"),
            (a_client, a_server, "thread"),
            (b_server, a_client, "tcp_option"),
            (b_client, b_server, middle.serving_link()),
            (c_server, b_client, "tcp_option"),
        ],
        &report,
    );
    assert_eq!(client.parent(), None, "the client is the root:\n{report}");
    assert!(
        s1.stat("kernel_propagate_option_written") >= 1,
        "host 1 wrote the option: {:?}",
        s1.stats
    );
    // Over plain HTTP each request is one start; over TLS the handshake's flights (read outside
    // OpenSSL calls, before the socket is known as TLS) count as starts too.
    if matches!(middle, Middle::Python(None)) {
        assert_eq!(
            s2.stat("kernel_propagate_server_from_wire"),
            1,
            "b's request came with its context: {:?}",
            s2.stats
        );
        assert_eq!(
            s2.stat("kernel_propagate_server_no_context"),
            0,
            "{:?}",
            s2.stats
        );
    } else {
        assert!(
            s2.stat("kernel_propagate_server_from_wire") >= 1,
            "{:?}",
            s2.stats
        );
    }
    assert_eq!(
        s1.stat("spans_linked_tcp_option"),
        1,
        "c's parent came by option: {:?}",
        s1.stats
    );
    assert_eq!(s2.stat("spans_linked_tcp_option"), 1, "{:?}", s2.stats);
}

/// A (host 1) → B (host 2) → C (host 3), Python services, each host with its own ztrace: one
/// trace, both host boundaries crossed by the TCP option (the `traceparent` each client's
/// kernel added says the same and leaves the link to the option), every body byte-exact.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_chain_across_three_hosts_is_one_trace() {
    let hosts = Hosts::many(3);
    let (h1, h2, h3) = (hosts.get(0), hosts.get(1), hosts.get(2));
    let mut otlp = OtlpReceiver::start();
    let agents: Vec<Ztrace> = [h1, h2, h3].iter().map(|h| agent(h, &otlp, &[])).collect();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let c = service(h3, "c", pc, &[], None);
    let b = service(h2, "b", pb, &[h3.url(pc, "/c")], None);
    let a = service(h1, "a", pa, &[h2.url(pb, "/b")], None);
    let (answer, sent) = request(h1, &h1.url(pa, "/a"), 50_000);
    assert_eq!(
        answer,
        [sent.clone(), sent.clone(), sent],
        "every hop received the exact body sent"
    );
    let spans = chain_spans(&mut otlp);
    drop((a, b, c));
    let stats: Vec<_> = agents.into_iter().map(Ztrace::stop).collect();
    let report = format!(
        "{spans:#?}\n{:#?}",
        stats.iter().map(|s| &s.stats).collect::<Vec<_>>()
    );
    assert_eq!(spans.len(), 6, "six spans:\n{report}");
    let trace = spans[0].trace_id();
    assert!(
        spans.iter().all(|s| s.trace_id() == trace),
        "one trace:\n{report}"
    );
    let client = find(&spans, "client", CLIENT);
    let a_server = find(&spans, "a", SERVER);
    let a_client = find(&spans, "a", CLIENT);
    let b_server = find(&spans, "b", SERVER);
    let b_client = find(&spans, "b", CLIENT);
    let c_server = find(&spans, "c", SERVER);
    assert_links(
        &[
            (a_server, client, "connection"),
            (a_client, a_server, "thread"),
            (b_server, a_client, "tcp_option"),
            (b_client, b_server, "thread"),
            (c_server, b_client, "tcp_option"),
        ],
        &report,
    );
    // Hosts 1 and 2 each sent one request to the next host, with the header added.
    for (i, s) in stats.iter().enumerate().take(2) {
        assert!(
            s.stat("kernel_inject_added") >= 1,
            "host {} added a traceparent:\n{report}",
            i + 1
        );
    }
}

/// The split that the chain test above would show without propagation.
fn assert_host2_split(spans: &[OtlpSpan]) {
    let report = format!("{spans:#?}");
    let a_client = find(spans, "a", CLIENT);
    let b_server = find(spans, "b", SERVER);
    let b_client = find(spans, "b", CLIENT);
    assert_ne!(
        b_server.trace_id(),
        a_client.trace_id(),
        "host 2 starts its own trace:\n{report}"
    );
    assert_eq!(b_server.parent(), None, "{report}");
    assert_eq!(b_server.attr_str("ztrace.link"), Some("none"), "{report}");
    // On each host the rules of one host still hold.
    assert_eq!(b_client.parent(), b_server.span_id(), "{report}");
    assert_eq!(
        find(spans, "a", SERVER).trace_id(),
        a_client.trace_id(),
        "{report}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn without_propagation_the_trace_splits_at_the_host_boundary() {
    let hosts = Hosts::two();
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(hosts.get(0), &otlp, &["--propagate=off"]);
    let mut z2 = agent(hosts.get(1), &otlp, &["--propagate=off"]);
    z2.wait_for_log("sock_ops: --propagate=off", READY);
    let (services, url) = chain(&hosts, Middle::Python(None));
    let (answer, sent) = request(hosts.get(0), &url, 1000);
    assert_eq!(answer, [sent.clone(), sent.clone(), sent]);
    assert_host2_split(&chain_spans(&mut otlp));
    drop(services);
    drop((z1, z2));
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_middlebox_that_strips_the_option_is_counted_and_the_added_header_still_joins() {
    let hosts = Hosts::two();
    // Host 2's firewall removes TCP option 254 from every segment it receives.
    hosts.get(1).exec(
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "TCPOPTSTRIP",
            "--strip-options",
            "254",
        ],
    );
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(hosts.get(0), &otlp, &[]);
    let z2 = agent(hosts.get(1), &otlp, &[]);
    let (services, url) = chain(&hosts, Middle::Python(None));
    let (answer, sent) = request(hosts.get(0), &url, 1000);
    assert_eq!(
        answer,
        [sent.clone(), sent.clone(), sent],
        "stripping options changes no byte"
    );
    let spans = chain_spans(&mut otlp);
    drop(services);
    let s2 = z2.stop();
    let report = format!("{}\nhost 2: {}", table(&spans), s2.counters(&["propagat"]));
    // The option is gone, but host 1's kernel also added a traceparent to a's plaintext
    // request: b's span joins a's trace by that header (HTTPS or any other protocol would
    // split here, as `without_propagation...` shows), and host 2's kernel read the same
    // header, so that b's call to c carries a's trace on.
    let trace = spans[0].trace_id();
    assert!(
        spans.iter().all(|s| s.trace_id() == trace),
        "one trace:\n{report}"
    );
    let a_client = find(&spans, "a", CLIENT);
    let b_server = find(&spans, "b", SERVER);
    let b_client = find(&spans, "b", CLIENT);
    let c_server = find(&spans, "c", SERVER);
    assert_links(
        &[
            (b_server, a_client, "header"),
            (b_client, b_server, "thread"),
            (c_server, b_client, "tcp_option"),
        ],
        &report,
    );
    assert_eq!(
        s2.stat("kernel_propagate_server_no_context"),
        1,
        "host 2 counts b's request that came without a context:\n{report}"
    );
    assert_eq!(
        s2.stat("kernel_propagate_server_from_header"),
        1,
        "host 2's kernel took b's ids from the header:\n{report}"
    );
    drop(z1);
}

/// A caller with a `traceparent` of its own calls B (host 2) over HTTPS, which calls C (host 1)
/// over HTTPS: B's kernel read the header from the TLS plaintext (`zt_tls_traceparent`), so
/// that B's call carried the caller's trace to host 1. B in Python (OpenSSL) or Go
/// (crypto/tls).
fn a_callers_own_traceparent_over_https(middle: Middle) {
    const TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
    const CALLER: &str = "01f067aa0ba902b8";
    let certs = match middle {
        Middle::Python(Some(certs)) | Middle::Go(_, Some(certs)) => certs,
        _ => panic!("HTTPS needs certificates"),
    };
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp, &[]);
    let z2 = agent(h2, &otlp, &[]);
    let (pb, pc) = (free_port(), free_port());
    let https = |url: String| url.replacen("http://", "https://", 1);
    let c = service(h1, "c", pc, &[], Some(certs));
    let b = middle_service(h2, middle, pb, &https(h1.url(pc, "/c")));
    let (answer, sent) = request_with(
        h1,
        &https(h2.url(pb, "/b")),
        1000,
        Some(&format!("00-{TRACE}-{CALLER}-01")),
    );
    assert_eq!(answer, [sent.clone(), sent]);
    let ours = |s: &OtlpSpan| matches!(s.resource_str("service.name"), Some("b" | "c"));
    let spans = otlp.wait_for_spans(3, ours, SPANS);
    drop((b, c));
    let s1 = z1.stop();
    let s2 = z2.stop();
    let report = report(&spans, &s1, &s2, &["propagat", "tls"]);
    let b_server = find(&spans, "b", SERVER);
    let b_client = find(&spans, "b", CLIENT);
    let c_server = find(&spans, "c", SERVER);
    for span in [b_server, b_client, c_server] {
        assert_eq!(
            span.trace_id(),
            Some(TRACE),
            "{:?} continues the caller's trace:\n{report}",
            who(span)
        );
    }
    assert_eq!(b_server.parent(), Some(CALLER), "{report}");
    assert_eq!(b_server.attr_str("ztrace.link"), Some("header"), "{report}");
    assert_links(
        &[
            (b_client, b_server, middle.serving_link()),
            (c_server, b_client, "tcp_option"),
        ],
        &report,
    );
    assert!(
        s2.stat("kernel_propagate_server_from_header") >= 1,
        "host 2's kernel took b's ids from the caller's header:\n{report}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_callers_own_traceparent_over_openssl_is_carried_on() {
    let certs = Certs::make();
    a_callers_own_traceparent_over_https(Middle::Python(Some(&certs)));
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_callers_own_traceparent_over_go_crypto_tls_is_carried_on() {
    let certs = Certs::make();
    let dir = TempDir::new("xhost-go-tp");
    a_callers_own_traceparent_over_https(Middle::Go(&build_go_twin(&dir), Some(&certs)));
}

/// `xhost_node.js` as B on `host`: calls `base` + each request's path `delay_ms` after it
/// arrived; HTTPS with `tls`.
fn node_service(host: &Host, port: u16, base: &str, delay_ms: u32, tls: Option<&Certs>) -> Proc {
    let mut cmd = host.command("node");
    cmd.arg(fixture("xhost_node.js"))
        .args([
            &host.addr.to_string(),
            &port.to_string(),
            base,
            &delay_ms.to_string(),
        ])
        .env("OTEL_SERVICE_NAME", "b");
    if let Some(certs) = tls {
        cmd.arg(&certs.cert).arg(&certs.key);
    }
    let mut proc = Proc::spawn("b", &mut cmd);
    proc.wait_for_stdout("ready", READY);
    proc
}

/// Client (host 1) → B, Node.js over HTTPS (host 2) → C, Python over HTTPS (host 1): Node's
/// OpenSSL works on memory BIOs (its TLS calls make no syscalls), so B's server request starts
/// at the plaintext its `SSL_read` returns and its call to C at its `SSL_write`'s entry, before
/// Node writes the ciphertext; one trace, both boundaries crossed by the TCP option.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_node_https_service_in_the_middle_of_the_chain() {
    let certs = Certs::make();
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp, &[]);
    let z2 = agent(h2, &otlp, &[]);
    let (pb, pc) = (free_port(), free_port());
    let https = |url: String| url.replacen("http://", "https://", 1);
    let c = service(h1, "c", pc, &[], Some(&certs));
    let b = node_service(h2, pb, &https(h1.url(pc, "")), 0, Some(&certs));
    // Node's OpenSSL is linked into its executable (NodeSource's build): host 2's agent probes
    // it once it sees the new process. Requests until one of b's spans shows it did.
    let deadline = std::time::Instant::now() + SPANS;
    for n in 0.. {
        let (answer, sent) = request(h1, &https(h2.url(pb, &format!("/warm{n}"))), 0);
        assert_eq!(answer, [sent], "c's answer, passed on by b");
        std::thread::sleep(Duration::from_millis(500));
        let probed = otlp
            .spans()
            .iter()
            .any(|s| who(s) == ("b".to_owned(), SERVER.to_owned()));
        if probed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span of b's came: is node's TLS probed?"
        );
    }
    let (answer, sent) = request(h1, &https(h2.url(pb, "/second")), 0);
    assert_eq!(answer, [sent], "c's answer, passed on by b");
    // The last request's four spans.
    let second = |s: &OtlpSpan| {
        matches!(s.resource_str("service.name"), Some("b" | "c" | "client"))
            && s.attr_str("url.path") == Some("/second")
    };
    let spans = otlp.wait_for_spans(4, second, SPANS);
    drop((b, c));
    let s1 = z1.stop();
    let s2 = z2.stop();
    let report = report(&spans, &s1, &s2, &["propagat", "tls"]);
    let on = |service: &str, kind: &str| {
        spans
            .iter()
            .find(|s| {
                who(s) == (service.to_owned(), kind.to_owned())
                    && s.attr_str("url.path") == Some("/second")
            })
            .unwrap_or_else(|| panic!("no {kind} span of {service} for /second:\n{report}"))
    };
    let (client, b_server, b_client, c_server) = (
        on("client", CLIENT),
        on("b", SERVER),
        on("b", CLIENT),
        on("c", SERVER),
    );
    for span in [b_server, b_client, c_server] {
        assert_eq!(span.trace_id(), client.trace_id(), "one trace:\n{report}");
    }
    assert_links(
        &[
            (b_server, client, "tcp_option"),
            (b_client, b_server, "thread"),
            (c_server, b_client, "tcp_option"),
        ],
        &report,
    );
}

/// B an event loop (Node.js: one thread for all its connections) on host 2, with two requests
/// from host 1 unanswered when it calls C (host 1) for each: its kernel cannot know which call is
/// for which request, so a call made while both are unanswered starts a trace of its own
/// (`kernel_propagate_unit_busy`) instead of joining the other request's trace.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn an_event_loop_with_two_requests_at_once_puts_no_call_in_the_wrong_trace() {
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp, &[]);
    let z2 = agent(h2, &otlp, &[]);
    let (pb, pc) = (free_port(), free_port());
    let c = service(h1, "c", pc, &[], None);
    let b = node_service(h2, pb, &h1.url(pc, ""), 1000, None);
    let paths = ["/one", "/two"];
    std::thread::scope(|scope| {
        let calls: Vec<_> = paths
            .iter()
            .map(|path| scope.spawn(move || request(h1, &h2.url(pb, path), 0)))
            .collect();
        for call in calls {
            let (answer, sent) = call.join().expect("a client thread panicked");
            assert_eq!(answer, [sent], "c's answer, passed on by b");
        }
    });
    let ours = |s: &OtlpSpan| matches!(s.resource_str("service.name"), Some("b" | "c" | "client"));
    let spans = otlp.wait_for_spans(8, ours, SPANS);
    drop((b, c));
    let s1 = z1.stop();
    let s2 = z2.stop();
    let report = report(&spans, &s1, &s2, &["propagat"]);
    let on = |service: &str, kind: &str, path: &str| {
        spans
            .iter()
            .find(|s| {
                who(s) == (service.to_owned(), kind.to_owned())
                    && s.attr_str("url.path") == Some(path)
            })
            .unwrap_or_else(|| panic!("no {kind} span of {service} for {path}:\n{report}"))
    };
    for (path, other) in [("/one", "/two"), ("/two", "/one")] {
        let client = on("client", CLIENT, path);
        let b_server = on("b", SERVER, path);
        let b_client = on("b", CLIENT, path);
        let c_server = on("c", SERVER, path);
        assert_links(
            &[
                (b_server, client, "tcp_option"),
                (c_server, b_client, "tcp_option"),
            ],
            &report,
        );
        assert_eq!(c_server.trace_id(), b_client.trace_id(), "{report}");
        assert_ne!(
            b_client.trace_id(),
            on("client", CLIENT, other).trace_id(),
            "b's call for {path} is in the trace of {other}:\n{report}"
        );
    }
    assert!(
        s2.stat("kernel_propagate_unit_busy") >= 1,
        "b called while both requests were unanswered:\n{report}"
    );
}

/// A request that comes with a `traceparent` of its own (an instrumented caller, a mesh proxy)
/// into the chain A (host 1) → B (host 2) → C (host 1): A's span continues that trace (the
/// `header` rule), and so does everything after it on both hosts — A's kernel read the header
/// as A read the request, so A's call to B carried that trace in the option.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_callers_own_traceparent_is_carried_on_across_hosts() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER: &str = "00f067aa0ba902b7";
    let hosts = Hosts::two();
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(hosts.get(0), &otlp, &[]);
    let z2 = agent(hosts.get(1), &otlp, &[]);
    let (services, url) = chain(&hosts, Middle::Python(None));
    let (answer, sent) = request_with(
        hosts.get(0),
        &url,
        1000,
        Some(&format!("00-{TRACE}-{CALLER}-01")),
    );
    assert_eq!(answer, [sent.clone(), sent.clone(), sent]);
    let spans = chain_spans(&mut otlp);
    drop(services);
    let s1 = z1.stop();
    let s2 = z2.stop();
    let report = report(&spans, &s1, &s2, &["propagat"]);
    let a_server = find(&spans, "a", SERVER);
    let a_client = find(&spans, "a", CLIENT);
    let b_server = find(&spans, "b", SERVER);
    let b_client = find(&spans, "b", CLIENT);
    let c_server = find(&spans, "c", SERVER);
    for span in [a_server, a_client, b_server, b_client, c_server] {
        assert_eq!(
            span.trace_id(),
            Some(TRACE),
            "{:?} continues the caller's trace:\n{report}",
            who(span)
        );
    }
    assert_eq!(a_server.parent(), Some(CALLER), "{report}");
    assert_eq!(a_server.attr_str("ztrace.link"), Some("header"), "{report}");
    assert_links(
        &[
            (a_client, a_server, "thread"),
            (b_server, a_client, "tcp_option"),
            (b_client, b_server, "thread"),
            (c_server, b_client, "tcp_option"),
        ],
        &report,
    );
    assert_eq!(
        s1.stat("kernel_propagate_server_from_header"),
        1,
        "host 1's kernel took a's ids from the caller's header:\n{report}"
    );
    assert_eq!(s1.stat("propagation_trace_mismatch"), 0, "{report}");
}

/// A (host 1, HTTP) queries PostgreSQL on host 2 (psycopg2, plain protocol v3): the backend's
/// server span joins A's trace under A's query span, by the TCP option.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_postgresql_query_across_hosts_joins_the_trace() {
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp, &[]);
    let z2 = agent(h2, &otlp, &[]);
    let pg = PgServer::start_on(h2);
    let port = free_port();
    // Debian's python3: it has psycopg2.
    let mut cmd = h1.command("/usr/bin/python3");
    cmd.arg("-u")
        .arg(fixture("xhost.py"))
        .args([
            "server",
            "--bind",
            &h1.addr.to_string(),
            "--port",
            &port.to_string(),
            "--pg",
        ])
        .arg(format!(
            "host={} port={} user=postgres dbname=postgres sslmode=disable",
            h2.addr, pg.port
        ))
        .env("OTEL_SERVICE_NAME", "a");
    let mut a = Proc::spawn("a", &mut cmd);
    a.wait_for_stdout("ready", READY);

    let (answer, sent) = request(h1, &h1.url(port, "/a"), 1000);
    assert_eq!(answer, [sent, "pg 1000".to_owned()], "{}", a.describe());

    let db = |s: &OtlpSpan| {
        s.attr_str("db.system.name") == Some("postgresql")
            && s.attr_str("db.operation.name") == Some("SELECT")
    };
    let spans = otlp.wait_for_spans(2, db, SPANS);
    let all = otlp.spans();
    drop((a, pg));
    let s2 = z2.stop();
    drop(z1);
    let report = format!("{all:#?}\n{:?}", s2.stats);
    let [query, backend] = [CLIENT, SERVER].map(|kind| {
        let found: Vec<_> = spans.iter().filter(|s| s.kind() == Some(kind)).collect();
        assert_eq!(found.len(), 1, "one {kind} SELECT span:\n{report}");
        found[0]
    });
    let a_server = find(&all, "a", SERVER);
    assert_eq!(query.resource_str("service.name"), Some("a"), "{report}");
    assert_eq!(
        (query.parent(), query.attr_str("ztrace.link")),
        (a_server.span_id(), Some("thread")),
        "{report}"
    );
    assert_eq!(
        backend.trace_id(),
        a_server.trace_id(),
        "one trace:\n{report}"
    );
    assert_eq!(backend.parent(), query.span_id(), "{report}");
    assert_eq!(
        backend.attr_str("ztrace.link"),
        Some("tcp_option"),
        "{report}"
    );
}

/// client → a over host 1's loopback, a → b across hosts. By default the loopback hop's context
/// goes from the client's socket to a's in the kernel (no option, no header on it), and a's call
/// still carries the client's trace to host 2; with `--propagate=all` the loopback request gets
/// the header too. Either way one trace.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_loopback_hop_hands_its_context_over_in_the_kernel() {
    for setting in ["on", "all"] {
        let hosts = Hosts::two();
        let (h1, h2) = (hosts.get(0), hosts.get(1));
        let mut otlp = OtlpReceiver::start();
        let propagate = format!("--propagate={setting}");
        let z1 = agent(h1, &otlp, &[&propagate]);
        let z2 = agent(h2, &otlp, &[]);
        let (pa, pb) = (free_port(), free_port());
        let b = service(h2, "b", pb, &[], None);
        let a = service_on(h1, "127.0.0.1", "a", pa, &[h2.url(pb, "/b")], None);
        let (answer, sent) = request(h1, &format!("http://127.0.0.1:{pa}/a"), 1000);
        assert_eq!(
            answer,
            [sent.clone(), sent],
            "every hop received the exact body sent"
        );

        let ours =
            |s: &OtlpSpan| matches!(s.resource_str("service.name"), Some("a" | "b" | "client"));
        let spans = otlp.wait_for_spans(4, ours, SPANS);
        drop((a, b));
        let s1 = z1.stop();
        let s2 = z2.stop();
        let report = format!(
            "--propagate={setting}\n{spans:#?}\nhost 1: {}\nhost 2: {}",
            s1.counters(&["propagat", "inject", "link"]),
            s2.counters(&["propagat", "inject", "link"])
        );
        let trace = spans[0].trace_id();
        assert!(
            spans.iter().all(|s| s.trace_id() == trace),
            "one trace:\n{report}"
        );
        let client = find(&spans, "client", CLIENT);
        let a_server = find(&spans, "a", SERVER);
        let a_client = find(&spans, "a", CLIENT);
        let b_server = find(&spans, "b", SERVER);
        assert_links(
            &[
                (a_server, client, "connection"),
                (a_client, a_server, "thread"),
                (b_server, a_client, "tcp_option"),
            ],
            &report,
        );
        // One request on loopback, one across hosts.
        let (handed_over, headers) = if setting == "on" { (1, 1) } else { (0, 2) };
        assert_eq!(
            s1.stat("kernel_propagate_handed_over"),
            handed_over,
            "{report}"
        );
        assert_eq!(s1.stat("kernel_inject_added"), headers, "{report}");
        assert_eq!(
            s2.stat("kernel_propagate_server_from_wire"),
            1,
            "b's request came with its context:\n{report}"
        );
    }
}

/// The span table and both hosts' counters whose names contain one of `parts`.
fn report(spans: &[OtlpSpan], s1: &Stopped, s2: &Stopped, parts: &[&str]) -> String {
    format!(
        "{}\nhost 1: {}\nhost 2: {}",
        table(spans),
        s1.counters(parts),
        s2.counters(parts)
    )
}

/// Each `(child, parent, link)`: the child's parent span and `ztrace.link`.
fn assert_links(links: &[(&OtlpSpan, &OtlpSpan, &str)], report: &str) {
    for (child, parent, link) in links {
        assert_eq!(
            child.parent(),
            parent.span_id(),
            "parent of {:?}:\n{report}",
            who(child)
        );
        assert_eq!(
            child.attr_str("ztrace.link"),
            Some(*link),
            "link of {:?}:\n{report}",
            who(child)
        );
    }
}

/// One line per span, by start time: service, kind, trace, span, parent, link.
fn table(spans: &[OtlpSpan]) -> String {
    let mut rows: Vec<&OtlpSpan> = spans.iter().collect();
    rows.sort_by_key(|s| s.start_time_unix_nano());
    rows.iter()
        .map(|s| {
            let (service, kind) = who(s);
            format!(
                "{service:>6} {kind:<17} trace {} span {} parent {:<16} {}",
                s.trace_id().unwrap_or("?"),
                s.span_id().unwrap_or("?"),
                s.parent().unwrap_or("-"),
                s.attr_str("ztrace.link").unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// gRPC (HTTP/2) across hosts: a grpcio client (host 1) → a grpc-go service B (host 2) that
/// forwards each call → a grpcio server C (host 1). `calls` are `grpc_py.py client` calls made
/// one after another on one channel; each is one trace client → b → c. Returns the spans and the
/// two agents' stops.
fn grpc_chain(
    calls: &[&str],
    spans_each: usize,
) -> (Vec<OtlpSpan>, String, [ztrace_e2e::ztrace::Stopped; 2]) {
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let dir = TempDir::new("xhost-grpc");
    let go = ztrace_e2e::grpc::build_go(dir.path());
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp, &[]);
    let z2 = agent(h2, &otlp, &[]);
    let (pb, pc) = (free_port(), free_port());
    let grpc_py = |host: &Host, name: &str, args: &[String]| {
        let mut cmd = host.command(python());
        cmd.arg("-u")
            .arg(fixture("grpc_py.py"))
            .args(args)
            .env("GRPC_HOST", host.addr.to_string())
            .env("OTEL_SERVICE_NAME", name);
        Proc::spawn(name, &mut cmd)
    };
    let mut c = grpc_py(h1, "c", &["server".into(), pc.to_string()]);
    c.wait_for_stdout("ready", READY);
    let mut cmd = h2.command(&go);
    cmd.args(["serve", &pb.to_string(), &format!("{}:{pc}", h1.addr)])
        .env("GRPC_HOST", h2.addr.to_string())
        .env("OTEL_SERVICE_NAME", "b");
    let mut b = Proc::spawn("b", &mut cmd);
    b.wait_for_stdout("ready", READY);
    let mut args = vec!["client".to_owned(), pb.to_string()];
    args.extend(calls.iter().map(|c| c.to_string()));
    // The client calls host 2's address: GRPC_HOST is where it connects.
    let mut cmd = h1.command(python());
    cmd.arg("-u")
        .arg(fixture("grpc_py.py"))
        .args(&args)
        .env("GRPC_HOST", h2.addr.to_string())
        .env("OTEL_SERVICE_NAME", "client");
    let mut client = Proc::spawn("client", &mut cmd);
    let status = client.wait_exit(READY);
    assert!(
        status.is_some_and(|s| s.success()) && !client.stdout().contains("StatusCode"),
        "client failed: {}",
        client.describe()
    );
    let ours = |s: &OtlpSpan| matches!(s.resource_str("service.name"), Some("b" | "c" | "client"));
    let spans = otlp.wait_for_spans(spans_each * 4, ours, SPANS);
    drop((b, c));
    let (s1, s2) = (z1.stop(), z2.stop());
    let report = report(&spans, &s1, &s2, &["propagat", "stream"]);
    (spans, report, [s1, s2])
}

/// Unary gRPC calls one after another on one channel, across hosts: each call is one trace
/// client → b → c with b's SERVER span the child of the client's CLIENT span and c's of b's
/// CLIENT span, both by the TCP option its stream's HEADERS came with.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn grpc_calls_across_hosts_are_one_trace_each() {
    let (spans, report, [s1, s2]) = grpc_chain(&["hello", "hello", "hello"], 1);
    assert_eq!(spans.len(), 12, "three calls, four spans each:\n{report}");
    let mut traces: Vec<Option<&str>> = spans.iter().map(|s| s.trace_id()).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 3, "three traces:\n{report}");
    for trace in traces {
        let one: Vec<OtlpSpan> = spans
            .iter()
            .filter(|s| s.trace_id() == trace)
            .cloned()
            .collect();
        assert_eq!(one.len(), 4, "four spans in trace {trace:?}:\n{report}");
        let client = find(&one, "client", CLIENT);
        let b_server = find(&one, "b", SERVER);
        let b_client = find(&one, "b", CLIENT);
        let c_server = find(&one, "c", SERVER);
        assert_links(
            &[
                (b_server, client, "tcp_option"),
                (b_client, b_server, "goroutine"),
                (c_server, b_client, "tcp_option"),
            ],
            &report,
        );
        assert_eq!(client.parent(), None, "the client is the root:\n{report}");
    }
    assert_eq!(s1.stat("spans_linked_tcp_option"), 3, "{:?}", s1.stats);
    assert_eq!(s2.stat("spans_linked_tcp_option"), 3, "{:?}", s2.stats);
}
