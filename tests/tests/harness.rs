//! The harness itself, without the agent: every server, client and the OTLP receiver the other
//! tests rely on starts, answers as they expect, and stops. A failure here is the harness's or
//! the machine's, never the agent's.

use ztrace_e2e::clients::{self, KeepaliveClient};
use ztrace_e2e::otlp::OtlpReceiver;
use ztrace_e2e::servers::Server;

#[test]
#[ignore = "needs nginx, curl and the test venv; run by cargo xtask test"]
fn python_http_server_answers_on_ipv4_and_ipv6() {
    for host in ["127.0.0.1", "::1"] {
        let server = Server::python_http(host);
        let run = clients::curl(&[server.url("/hello?x=1"), server.url("/missing")]);
        assert_eq!(
            run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
            [200, 404],
            "{host}"
        );
        assert_eq!(run.sizes[0], ztrace_e2e::servers::HELLO_BODY.len() as u64);
    }
}

#[test]
#[ignore = "needs nginx, curl and the test venv; run by cargo xtask test"]
fn nginx_serves_keep_alive_with_its_routes() {
    let server = Server::nginx();
    let run =
        clients::curl(&["/hello", "/items/42", "/index.html", "/error"].map(|p| server.url(p)));
    assert_eq!(run.transfers, [(200, 1), (200, 0), (200, 0), (500, 0)]);
    let (_, codes) =
        clients::python_urllib(&[server.url("/items/7?full=1"), server.url("/error")], &[]);
    assert_eq!(codes, [200, 500]);
}

#[test]
#[ignore = "needs nginx, curl and the test venv; run by cargo xtask test"]
fn fixture_server_sends_a_large_chunked_body_and_keeps_connections() {
    let server = Server::fixture("127.0.0.1");
    let run = clients::curl(&["/large", "/status/503", "/ok"].map(|p| server.url(p)));
    assert_eq!(run.transfers, [(200, 1), (503, 0), (200, 0)]);
    assert_eq!(run.sizes[0], 64 * 16384);

    let mut client = KeepaliveClient::start("127.0.0.1", server.port, "/ok", "/items/1");
    client.second();
}

#[test]
#[ignore = "needs nginx, curl and the test venv; run by cargo xtask test"]
fn otlp_receiver_starts() {
    let receiver = OtlpReceiver::start();
    assert!(receiver.spans().is_empty());
    for port in [receiver.grpc_port, receiver.http_port] {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("receiver port {port}: {e}"));
    }
}
