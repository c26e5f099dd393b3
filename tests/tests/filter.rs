//! Process filters end to end: `--pid` traces only the processes it names.

use std::time::Duration;

use ztrace_e2e::clients;
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::Ztrace;

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn pid_filter_traces_only_that_process() {
    let traced = Server::python_http("127.0.0.1");
    let other = Server::python_http("127.0.0.1");
    let pid = traced.pid().to_string();
    let mut ztrace = Ztrace::start(&["--print=json", "--pid", &pid]);

    let run = clients::curl(&[other.url("/hello"), traced.url("/hello")]);
    assert_eq!(
        run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        [200, 200]
    );

    let spans = ztrace.wait_for_spans(|s| s.server_port() == Some(traced.port), SPAN_TIMEOUT);
    assert_eq!(spans.len(), 1, "one span for the traced server:\n{spans:?}");
    assert_eq!(spans[0].kind(), Some("server"), "{:?}", spans[0]);
    assert_eq!(spans[0].pid(), Some(traced.pid()), "{:?}", spans[0]);

    let strangers = ztrace.spans_within(Duration::from_secs(2), |s| s.pid() != Some(traced.pid()));
    assert!(
        strangers.is_empty(),
        "spans of processes other than pid {pid} (curl {}, other server {}):\n{strangers:?}",
        run.pid,
        other.pid()
    );
    ztrace.stop();
}
