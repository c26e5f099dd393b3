//! The OTLP backend fails while ztrace exports under load (issue 19, "Backend down"): nginx under
//! `hey` (both ends traced), ztrace exporting OTLP/HTTP to a [`Backend`] that goes down
//! (connections refused) for [`OUTAGE`], comes back, goes silent (accepts, never answers) for
//! [`OUTAGE`], and comes back. Asserted from the agent's `/metrics`: capture goes on
//! (`spans_created` grows during each outage), the export queue stays within its bound, the drops
//! are counted by reason, and export resumes by itself once the endpoint is back (eventually,
//! within a generous bound: the time it took is printed, not asserted). The ten-minute version
//! with figures is `cargo xtask bench --faults`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ztrace_e2e::backend::{scrape, Backend, Mode};
use ztrace_e2e::nginx::{Config, Nginx};
use ztrace_e2e::process::Proc;
use ztrace_e2e::{free_port, wait_until, Ztrace};

/// How long each fault lasts.
const OUTAGE: Duration = Duration::from_secs(25);
/// Export must resume within this after the endpoint is back (it takes seconds; the bound is
/// generous for a busy machine: a batch in its last attempt may wait out a 10 s timeout).
const RECOVERY_BOUND: Duration = Duration::from_secs(90);
/// The export queue's bound in spans (`OtlpConfig::default().queue_spans`).
const QUEUE_SPANS: f64 = 4096.0;
/// The agent's memory may grow this much over its level before the faults (the queue, a batch
/// in flight, allocator slack); a leak of the refused spans would pass it within seconds.
const RSS_SLACK: f64 = 128.0 * 1024.0 * 1024.0;

fn metric(health: SocketAddr, name: &str) -> f64 {
    scrape(health)
        .and_then(|m| m.get(name).copied())
        .unwrap_or_else(|| panic!("{name} missing from http://{health}/metrics"))
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn export_survives_a_backend_that_is_down_then_silent() {
    let nginx = Nginx::start(
        &[("index.html", "hello from nginx\n")],
        &Config {
            http: true,
            tls: None,
            load: true,
            http2: false,
        },
    );
    let url = format!("http://127.0.0.1:{}/index.html", nginx.port.expect("port"));
    let mut backend = Backend::start();
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let endpoint = backend.endpoint();
    let health_arg = health.to_string();
    let ztrace = Ztrace::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--health",
        &health_arg,
        "--exe",
        "nginx",
        "--exe",
        "hey",
    ]);
    // ~800 requests/s, 1,600 spans/s: the queue fills within seconds of an outage.
    let _load = Proc::spawn(
        "hey",
        Command::new("hey").args(["-z", "300s", "-c", "4", "-q", "200", &url]),
    );
    wait_until(Duration::from_secs(60), || {
        (metric(health, "ztrace_spans_exported_total") > 0.0).then_some(())
    })
    .expect("spans exported while the backend is up");
    let rss_before = metric(health, "ztrace_resident_memory_bytes");
    let mut rss_max = rss_before;

    for (fault, reason) in [
        (Mode::Down, "ztrace_export_errors_unreachable_total"),
        (Mode::Silent, "ztrace_export_errors_timeout_total"),
    ] {
        let before = scrape(health).expect("metrics");
        backend.set(fault);
        let started = Instant::now();
        let mut queue_max: f64 = 0.0;
        while started.elapsed() < OUTAGE {
            std::thread::sleep(Duration::from_secs(1));
            if let Some(m) = scrape(health) {
                queue_max = queue_max.max(m["ztrace_export_queue_spans"]);
                rss_max = rss_max.max(m["ztrace_resident_memory_bytes"]);
            }
        }
        let during = scrape(health).expect("metrics");
        let grew = |name: &str| during[name] - before[name];
        eprintln!(
            "{fault:?} for {OUTAGE:?}: spans created {}, refused by the full queue {}, given up after retries {}, attempts failed {} ({reason}: {}), queue at most {queue_max} spans",
            grew("ztrace_spans_created_total"),
            grew("ztrace_export_dropped_queue_full_total"),
            grew("ztrace_spans_export_failed_total"),
            grew("ztrace_export_errors_total"),
            grew(reason),
        );
        assert!(
            grew("ztrace_spans_created_total") > 0.0,
            "capture went on during the outage"
        );
        assert!(
            grew("ztrace_export_dropped_queue_full_total")
                + grew("ztrace_spans_export_failed_total")
                > 0.0,
            "the spans that could not go are counted"
        );
        assert!(grew(reason) > 0.0, "{fault:?} counted under {reason}");
        assert!(
            queue_max <= QUEUE_SPANS,
            "the export queue stays within {QUEUE_SPANS} spans: {queue_max}"
        );

        let exported = metric(health, "ztrace_spans_exported_total");
        let requests = backend.requests();
        backend.set(Mode::Up);
        let back = Instant::now();
        wait_until(RECOVERY_BOUND, || {
            (backend.requests() > requests
                && metric(health, "ztrace_spans_exported_total") > exported)
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!("export did not resume within {RECOVERY_BOUND:?} after {fault:?}")
        });
        eprintln!(
            "{fault:?}: export resumed {:.1} s after the endpoint came back",
            back.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "agent RSS {:.1} MiB before the faults, at most {:.1} MiB during them",
        rss_before / 1048576.0,
        rss_max / 1048576.0
    );
    assert!(
        rss_max <= rss_before + RSS_SLACK,
        "memory stays bounded: {rss_before} → {rss_max} bytes"
    );
    let stopped = ztrace.stop();
    let stats = stopped.stats.expect("ztrace stats at exit");
    assert!(
        stats["spans_exported"].as_u64().unwrap_or(0) > 0,
        "{stats:?}"
    );
}
