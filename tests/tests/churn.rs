//! Process churn (issue 19, "Churn"): shell loops start short-lived `curl` (against nginx) and
//! `psql -c 'select 1'` (against PostgreSQL, each with its own backend process) for [`CHURN`]
//! while ztrace traces them. Asserted from `/metrics` once the loops stop and two sweeps have
//! passed: the kernel maps keyed by process hold no more than the living processes' entries
//! (without the sweep of exited processes they keep one per process and connection that ever
//! ran), so do the maps keyed by connection (`RX_CTX`, `TX_CTX`: a socket the kernel closed at
//! its process's exit must not keep its entries), the agent's connection and process tables, the
//! sets of processes checked for TLS and Go and the stacks kept per connection are back near idle
//! and within their bounds. The ten-minute run with figures
//! is `cargo xtask bench --faults`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use ztrace_e2e::backend::scrape;
use ztrace_e2e::nginx::{Config, Nginx};
use ztrace_e2e::postgres::{PgServer, BIN_DIR, USER};
use ztrace_e2e::{free_port, TempDir, Ztrace};

/// How long the loops run.
const CHURN: Duration = Duration::from_secs(60);
/// After the loops stop: two sweeps (every 10 s) and a fill count.
const SETTLE: Duration = Duration::from_secs(25);
/// Then until the stacks no span took have expired (60 s untouched) and a fill count.
const STACKS_EXPIRE: Duration = Duration::from_secs(50);
/// Entries a map keyed by process may hold once the churn is over: the servers' own, a few
/// processes of the machine, not one per process that ran.
const MAP_ENTRIES_AFTER: f64 = 200.0;
/// `discovery::DEFAULT_CAPACITY`.
const PROCESS_TABLE: f64 = 4096.0;

fn level(m: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    m.get(name)
        .copied()
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn churn_leaves_no_dead_processes_in_the_maps_and_tables() {
    let nginx = Nginx::start(
        &[("index.html", "hello from nginx\n")],
        &Config {
            http: true,
            tls: None,
            load: true,
            http2: false,
        },
    );
    let pg = PgServer::start();
    let url = format!("http://127.0.0.1:{}/index.html", nginx.port.expect("port"));
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let health_arg = health.to_string();
    let ztrace = Ztrace::start(&[
        "--print=json",
        "--health",
        &health_arg,
        "--exe",
        "curl",
        "--exe",
        "psql",
        "--exe",
        "nginx",
        "--exe",
        "postgres",
    ]);
    let idle = scrape(health).expect("/metrics");
    let dir = TempDir::new("churn");
    let psql = format!(
        "{BIN_DIR}/psql -X -q -h 127.0.0.1 -p {} -U {USER} -d postgres -c 'select 1'",
        pg.port
    );
    let curl = format!("curl -s -o /dev/null {url}");
    let mut loops = Vec::new();
    let mut counts = Vec::new();
    for (i, client) in [&curl, &curl, &curl, &psql, &psql].into_iter().enumerate() {
        let count = dir.join(&format!("count-{i}"));
        let script = format!(
            "i=0; while :; do {client} >/dev/null 2>&1; i=$((i+1)); echo $i > {}; done",
            count.display()
        );
        loops.push(
            Command::new("sh")
                .args(["-c", &script])
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sh"),
        );
        counts.push(count);
    }
    std::thread::sleep(CHURN / 2);
    let halfway = scrape(health).expect("/metrics");
    std::thread::sleep(CHURN / 2);
    for mut l in loops {
        // SAFETY: kill(2) of the process group of a child started with process_group(0).
        unsafe { libc::kill(-(l.id() as libc::pid_t), libc::SIGKILL) };
        let _ = l.wait();
    }
    let processes: u64 = counts
        .iter()
        .filter_map(|c| std::fs::read_to_string(c).ok()?.trim().parse::<u64>().ok())
        .sum();
    std::thread::sleep(SETTLE);
    let after = scrape(health).expect("/metrics");
    let rss = |m| level(m, "ztrace_resident_memory_bytes") / 1048576.0;
    eprintln!(
        "{processes} processes in {CHURN:?}; RSS {:.1} MiB idle, {:.1} MiB halfway, {:.1} MiB after; {} entries of exited processes swept",
        rss(&idle),
        rss(&halfway),
        rss(&after),
        level(&after, "ztrace_kernel_entries_swept_total")
    );
    assert!(
        processes >= 300,
        "the loops ran only {processes} processes: no churn to measure"
    );
    let mut entries = Vec::new();
    for map in [
        "SOCKS",
        "PROP_CONNS",
        "STACK_CONNS",
        "SEEN_TGIDS",
        "STACK_BUDGET",
        "RX_CTX",
        "TX_CTX",
    ] {
        let name = format!("ztrace_bpf_map_entries{{map=\"{map}\"}}");
        entries.push((map, level(&halfway, &name), level(&after, &name)));
    }
    eprintln!("map entries (halfway, after): {entries:?}");
    for (map, _, after) in &entries {
        assert!(
            *after <= MAP_ENTRIES_AFTER,
            "{map} keeps {after} entries after {processes} processes exited"
        );
    }
    let table = |m, t: &str| level(m, &format!("ztrace_table_entries{{table=\"{t}\"}}"));
    eprintln!(
        "agent tables (halfway, after): connections {} {}, processes {} {}, tls_processes_checked {} {}, go_processes_checked {} {}",
        table(&halfway, "connections"),
        table(&after, "connections"),
        table(&halfway, "processes"),
        table(&after, "processes"),
        table(&halfway, "tls_processes_checked"),
        table(&after, "tls_processes_checked"),
        table(&halfway, "go_processes_checked"),
        table(&after, "go_processes_checked"),
    );
    assert!(
        table(&after, "connections") <= MAP_ENTRIES_AFTER,
        "connections of exited processes are closed in the table"
    );
    assert!(table(&after, "processes") <= PROCESS_TABLE);
    for t in [
        "tls_processes_checked",
        "go_processes_checked",
        "stacks_pending_conns",
    ] {
        assert!(
            table(&after, t) <= MAP_ENTRIES_AFTER,
            "{t} keeps {} entries after {processes} processes exited",
            table(&after, t)
        );
    }
    assert!(
        level(&after, "ztrace_kernel_entries_swept_total") > 0.0,
        "exited processes' entries were swept"
    );
    // Stacks that no span took (~20 connections a second under churn leave one) go after 60 s.
    std::thread::sleep(STACKS_EXPIRE);
    let expired = scrape(health).expect("/metrics");
    assert!(
        table(&expired, "stacks_ready_conns") <= MAP_ENTRIES_AFTER,
        "stacks_ready_conns keeps {} entries (after: {}) 75 s after {processes} processes exited",
        table(&expired, "stacks_ready_conns"),
        table(&after, "stacks_ready_conns")
    );
    let stopped = ztrace.stop();
    let stats = stopped.stats.expect("ztrace stats");
    assert!(
        stats["spans_created"].as_u64().unwrap_or(0) > processes,
        "the churn was traced: {stats:?}"
    );
}
