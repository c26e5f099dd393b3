//! `cargo xtask bench`: what tracing costs a real server, measured, never asserted.
//!
//! nginx serves a small static page on 127.0.0.1 (config generated in a temp dir); wrk loads it
//! (`-t2 -c32 -d10s`) in three rounds of three runs (`bench/arms.rs`): without ztrace, with
//! ztrace's hooks holding empty programs (`ztrace ARGS --empty-programs`: the floor of this way
//! of hooking), and with `ztrace ARGS > /dev/null` (ARGS default to `--no-ui --print=json`: the
//! capture path; `cargo xtask bench -- ARGS` to choose). For each run with an agent it reads the
//! agent's CPU time (utime+stime of /proc/PID/stat, over the load), its peak RSS (VmHWM, just
//! before stopping it), its `ztrace stats: {...}` line (stderr, on exit) for the events handled
//! and dropped, and the kernel's run time of its programs (`kernel.bpf_stats_enabled`, `bpftool
//! prog show`). It prints a table, the median ratios (traced/untraced, floor/untraced,
//! traced/floor), the programs' run time per request, uprobe traps per request, and the exact
//! commands. Then the same over HTTPS (nginx `ssl`, wrk with OpenSSL: both traced through the
//! TLS uprobes) and for PostgreSQL under `pgbench -M prepared -S`. Needs root (the agent loads
//! eBPF).
//! Then the example system of `examples/` in Go (orders → users, inventory, each with its
//! PostgreSQL database: 13 spans per request) under `wrk -t2 -c16 -d5s` on `GET /orders/1`, the
//! same three arms, ztrace tracing the services and PostgreSQL (`--exe`): the throughput ratio
//! (target >= 0.90), the agent's peak RSS and the most inputs its hold-back window held
//! (`link_window_peak`); `cargo xtask bench --example` runs only this part.
//! Then the same system as Flask apps under gunicorn, untraced, under OpenTelemetry's zero-code
//! Python instrumentation and under ztrace (`bench/sdk.rs`; `cargo xtask bench --sdk` runs only
//! it): throughput ratios, CPU per request of every process involved, and the trace each gives.
//! Then stacks (`bench/stacks.rs`; `cargo xtask bench --stacks` runs only it): requests/s with
//! stacks on vs off, the symbolizer's cache hit rate, the first-span delay of large binaries
//! and the agent's memory after symbolizing them.
//! Then Redis under `redis-benchmark -P 16 -c 4 -t set,get` (16 commands per write, both the
//! client and redis-server traced: two spans per command), three alternating pairs;
//! `cargo xtask bench --redis` runs only this part.
//! Then gRPC: the grpc-go server of the end-to-end tests under `h2load -c 4 -m 16 -D 10` unary
//! calls (both traced), the three arms; `cargo xtask bench --grpc` runs only this part.
//! Then the trace store's own benchmark: spans/s inserted and query times with 100,000 traces
//! stored (`bench_insert_and_list` in `agent/src/sinks/store/tests.rs`), and the PostgreSQL parser's:
//! spans/s on one core from a recorded session (`postgres_throughput` in
//! `agent/src/protocols/postgres/tests.rs`).

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};
// The end-to-end tests' fixtures: temp dirs, ports, nginx, PostgreSQL, certificates.
use ztrace_e2e::{
    free_port,
    nginx::{self, Nginx},
    postgres::PgServer,
    redis::RedisServer,
    tail,
    tls::Certs,
    ztrace::{stats_line, READY_LINE},
    TempDir,
};

mod arms;
mod capture;
mod faults;
mod modes;
mod sdk;
mod stacks;

use arms::{last_programs, report_arms, three_arms, ProgramTime};

use crate::build::{self, Profile};
use crate::toolchain::{self, apt_install};
use crate::util::{self, say};

const PAIRS: usize = 3;
const WRK_ARGS: &[&str] = &["-t2", "-c32", "-d10s"];
const LOAD_SECONDS: f64 = 10.0;
/// The agent's arguments when none are given: the capture path with spans printed (stdout goes
/// to /dev/null), without the trace store and viewer.
const DEFAULT_ZTRACE_ARGS: &[&str] = &["--no-ui", "--print=json"];
/// The page wrk loads.
const PAGE: (&str, &str) = (
    "index.html",
    "<!doctype html><title>ztrace bench</title><p>hello from nginx</p>\n",
);

/// One wrk run, with the agent's figures when it was running.
#[derive(Debug, Default)]
struct Run {
    requests_per_sec: f64,
    agent: Option<AgentCost>,
}

#[derive(Debug, Default)]
struct AgentCost {
    cpu_seconds_per_second: f64,
    /// The agent's CPU time over the load.
    cpu_seconds: f64,
    peak_rss_kib: Option<u64>,
    stats: Option<Map<String, Value>>,
}

/// Which single part of the benchmark to run (none: all of it).
pub struct Only {
    pub example: bool,
    pub stacks: bool,
    pub capture: bool,
    pub modes: bool,
    pub fuzz: bool,
    /// Redis under `redis-benchmark -P 16`.
    pub redis: bool,
    /// nginx under wrk, plain HTTP/1.
    pub http: bool,
    /// PostgreSQL under pgbench.
    pub postgres: bool,
    /// nginx with propagation on and off.
    pub propagation: bool,
    /// The example under gunicorn: untraced, OpenTelemetry's Python SDK, ztrace.
    pub sdk: bool,
    /// gRPC under h2load.
    pub grpc: bool,
    /// The faults: OTLP backend down and silent, process churn (`bench/faults.rs`).
    pub faults: bool,
}

/// `cargo xtask bench`: all of it, or only the part `only` names.
pub fn bench(agent_args: &[String], only: Only) -> Result<()> {
    let agent_args: Vec<String> = if agent_args.is_empty() {
        DEFAULT_ZTRACE_ARGS.iter().map(|s| s.to_string()).collect()
    } else {
        agent_args.to_vec()
    };
    ensure!(
        util::is_root(),
        "the benchmark runs the agent, which needs root: run it as root"
    );
    toolchain::setup(false)?;
    apt_install(&["nginx", "wrk", "openssl", "bpftool"])?;
    let ztrace = build::build_after_setup(Profile::Release)?;
    if only.fuzz {
        return fuzz_bench();
    }
    if only.capture {
        return capture::capture_bench();
    }
    if only.example {
        return example_bench(&ztrace, &agent_args);
    }
    if only.stacks {
        return stacks::stacks_bench(&ztrace);
    }
    if only.redis {
        return redis_bench(&ztrace, &agent_args);
    }
    if only.postgres {
        return postgres_bench(&ztrace, &agent_args);
    }
    if only.grpc {
        return grpc_bench(&ztrace, &agent_args);
    }
    if only.modes {
        return modes::modes_bench(&ztrace);
    }
    if only.propagation {
        let dir = TempDir::new("bench");
        let nginx = bench_nginx(None);
        let url = format!("http://127.0.0.1:{}/index.html", nginx.port.unwrap_or(0));
        say!(
            "nginx (pid {}) serving {url}; warming up...",
            nginx.proc.pid()
        );
        wrk(&url, &["-t2", "-c32", "-d2s"])?;
        return propagation_bench(&ztrace, &agent_args, dir.path(), &url);
    }
    if only.sdk {
        return sdk::sdk_bench(&ztrace);
    }
    if only.faults {
        return faults::faults_bench(&ztrace);
    }
    // Instructions per span first: they hold on a busy machine, the timed loads below do not.
    if !only.http {
        capture::capture_bench()?;
    }

    let dir = TempDir::new("bench");
    let certs = Certs::make();
    let nginx = bench_nginx(Some(&certs));
    let url = format!("http://127.0.0.1:{}/index.html", nginx.port.unwrap_or(0));
    say!("nginx (pid {}) serving {url}", nginx.proc.pid());
    say!("warming up...");
    wrk(&url, &["-t2", "-c32", "-d2s"])?;

    let runs = three_arms(
        "HTTP",
        &ztrace,
        &agent_args,
        dir.path(),
        LOAD_SECONDS,
        || wrk(&url, WRK_ARGS),
    )?;
    report_arms(
        &runs,
        &ztrace,
        &agent_args,
        &format!(
            "wrk {} {url} (nginx, 1 worker, static page, access_log off)",
            WRK_ARGS.join(" ")
        ),
    );
    print_programs(&mut last_programs(&runs), "HTTP", LOAD_SECONDS);
    if only.http {
        return Ok(());
    }
    propagation_bench(&ztrace, &agent_args, dir.path(), &url)?;
    https_bench(
        &ztrace,
        &agent_args,
        dir.path(),
        nginx.tls_port.unwrap_or(0),
    )?;
    drop(nginx);
    modes::modes_bench(&ztrace)?;
    postgres_bench(&ztrace, &agent_args)?;
    redis_bench(&ztrace, &agent_args)?;
    grpc_bench(&ztrace, &agent_args)?;
    example_bench(&ztrace, &agent_args)?;
    sdk::sdk_bench(&ztrace)?;
    stacks::stacks_bench(&ztrace)?;
    store_bench()?;
    parser_bench()
}

/// Every fuzz target for [`crate::fuzz::BENCH_SECONDS`] (an hour each); fails on a crash.
fn fuzz_bench() -> Result<()> {
    let each = crate::fuzz::BENCH_SECONDS;
    let outcomes = crate::fuzz::run_all(each)?;
    println!();
    for o in &outcomes {
        println!(
            "{:<12} {:<6} {}",
            o.target,
            if o.passed { "ok" } else { "CRASH" },
            o.summary
        );
    }
    println!(
        "each target ran {each} s (cargo fuzz run TARGET -- -max_total_time={each}, in agent/)"
    );
    ensure!(
        outcomes.iter().all(|o| o.passed),
        "a fuzz target crashed (its input is under agent/fuzz/artifacts/)"
    );
    Ok(())
}

/// What carrying trace context costs (README "Traces across hosts"): nginx under wrk on
/// loopback, traced, in alternating triples with `--propagate=off`, `on` (the default: on
/// loopback the kernel hands the context over, nothing goes on the wire) and `all` (loopback
/// treated as another host: every request sent with the TCP option and a `traceparent` header,
/// and received with them — what a request between two hosts costs its two ends): the median
/// throughput ratios on/off and all/off, how many segments carried the option and how many
/// requests got a header.
fn propagation_bench(ztrace: &Path, agent_args: &[String], dir: &Path, url: &str) -> Result<()> {
    let base: Vec<String> = agent_args
        .iter()
        .filter(|a| !a.starts_with("--propagate"))
        .cloned()
        .collect();
    let (mut off, mut on, mut all) = (Vec::new(), Vec::new(), Vec::new());
    let (mut written, mut injected, mut handed_over) = (0, 0, 0);
    for round in 1..=PAIRS {
        for (setting, rates) in [("off", &mut off), ("on", &mut on), ("all", &mut all)] {
            say!("propagation round {round}/{PAIRS}: --propagate={setting}...");
            let mut args = base.clone();
            args.push(format!("--propagate={setting}"));
            let run = traced_run(ztrace, &args, dir, |_| wrk(url, WRK_ARGS))?;
            say!(
                "  {:.0} requests/s, agent {:.3} cpu s per s",
                run.requests_per_sec,
                run.agent.as_ref().map_or(0.0, |a| a.cpu_seconds_per_second)
            );
            let stats = run.agent.as_ref().and_then(|a| a.stats.as_ref());
            match setting {
                "on" => {
                    handed_over += stats.map_or(0, |s| counter(s, "kernel_propagate_handed_over"))
                }
                "all" => {
                    written += stats.map_or(0, |s| counter(s, "kernel_propagate_option_written"));
                    injected += stats.map_or(0, |s| counter(s, "kernel_inject_added"));
                }
                _ => {}
            }
            rates.push(run.requests_per_sec);
        }
    }
    if let (Some(off), Some(on), Some(all)) = (median(&off), median(&on), median(&all)) {
        println!();
        println!(
            "propagation: median {off:.0} requests/s with --propagate=off; on (loopback handed over in the kernel, {handed_over} requests): {on:.0}, ratio {:.3}; all (option and header on every request: {written} segments carried the option, {injected} requests got a traceparent): {all:.0}, ratio {:.3}",
            on / off,
            all / off
        );
        println!(
            "  ({} {url}, ztrace {} --propagate=off|on|all)",
            WRK_ARGS.join(" "),
            base.join(" ")
        );
    }
    Ok(())
}

/// PostgreSQL under `pgbench -M prepared -S`, alternating without and with the agent.
fn postgres_bench(ztrace: &Path, agent_args: &[String]) -> Result<()> {
    apt_install(&["postgresql"])?;
    let dir = TempDir::new("bench-pg");
    let pg = PgServer::start();
    let port = pg.port;
    say!("postgres serving 127.0.0.1:{port}; pgbench -i...");
    let init = pg.pgbench(&["-i", "-s", "1", "-q"]);
    ensure!(init.success, "pgbench -i failed: {}", init.stderr);
    let load = || tps(&pg, PGBENCH_ARGS);
    say!("warming up...");
    tps(
        &pg,
        &["-M", "prepared", "-S", "-c", "4", "-j", "2", "-T", "2"],
    )?;
    let runs = three_arms(
        "pgbench",
        ztrace,
        agent_args,
        dir.path(),
        PGBENCH_SECONDS,
        load,
    )?;
    drop(pg);
    report_arms(
        &runs,
        ztrace,
        agent_args,
        &format!(
            "(pgbench {} against 127.0.0.1:{port})",
            PGBENCH_ARGS.join(" ")
        ),
    );
    print_programs(&mut last_programs(&runs), "pgbench", PGBENCH_SECONDS);
    Ok(())
}

/// `redis-benchmark` load: pipelines of 16, 4 connections, SET then GET.
const REDIS_BENCHMARK_ARGS: &[&str] = &[
    "-P", "16", "-c", "4", "-n", "4000000", "-t", "set,get", "--csv",
];

/// Redis under `redis-benchmark -P 16`, in the three arms (without ztrace, its empty programs,
/// ztrace). redis-benchmark runs a count of commands, not a duration: the per-command kernel
/// times take [`REDIS_SECONDS`] as the run's length, an approximation.
fn redis_bench(ztrace: &Path, agent_args: &[String]) -> Result<()> {
    apt_install(&["redis-server", "redis-tools"])?;
    let dir = TempDir::new("bench-redis");
    let redis = RedisServer::start(None);
    let port = redis.port;
    say!("redis-server serving 127.0.0.1:{port}");
    say!("warming up...");
    redis_rps(
        &redis,
        &[
            "-P", "16", "-c", "4", "-n", "200000", "-t", "set,get", "--csv",
        ],
    )?;
    let runs = three_arms(
        "redis-benchmark",
        ztrace,
        agent_args,
        dir.path(),
        REDIS_SECONDS,
        || redis_rps(&redis, REDIS_BENCHMARK_ARGS),
    )?;
    drop(redis);
    report_arms(
        &runs,
        ztrace,
        agent_args,
        &format!(
            "(redis-benchmark {} against 127.0.0.1:{port})",
            REDIS_BENCHMARK_ARGS.join(" ")
        ),
    );
    Ok(())
}

/// h2load's gRPC load: unary `demo.Greeter/SayHello` calls (POST, the gRPC content type, one
/// length-prefixed message as the body), 16 streams at a time on each of 4 connections.
const GRPC_H2LOAD_ARGS: &[&str] = &[
    "-c",
    "4",
    "-m",
    "16",
    "-H",
    "content-type: application/grpc",
    "-H",
    "te: trailers",
];
/// The message: gRPC's 5-byte prefix (not compressed, length 5), then `world`.
const GRPC_HELLO: &[u8] = b"\0\0\0\0\x05world";

/// gRPC under h2load, in the three arms: the grpc-go server of the end-to-end tests
/// (tests/fixtures/grpc_go, Debian's grpc-go) answering SayHello, h2load (nghttp2-client)
/// calling it over h2c; both traced (two spans per call). `cargo xtask bench --grpc`.
fn grpc_bench(ztrace: &Path, agent_args: &[String]) -> Result<()> {
    apt_install(&["golang-go", "golang-google-grpc-dev", "nghttp2-client"])?;
    let dir = TempDir::new("bench-grpc");
    let binary = ztrace_e2e::grpc::build_go(dir.path());
    let server = ztrace_e2e::grpc::GrpcServer::go(&binary, None);
    let body = dir.path().join("hello.grpc");
    std::fs::write(&body, GRPC_HELLO).context("writing the gRPC message")?;
    let url = format!("http://127.0.0.1:{}/demo.Greeter/SayHello", server.port);
    say!("grpc-go (pid {}) serving {url}", server.pid());
    let load = |duration: &str| -> Result<f64> {
        let mut args: Vec<String> = GRPC_H2LOAD_ARGS.iter().map(|s| s.to_string()).collect();
        args.extend([
            "-D".into(),
            duration.into(),
            "-d".into(),
            body.display().to_string(),
            url.clone(),
        ]);
        h2load_rps(&args)
    };
    say!("warming up...");
    load("2")?;
    let seconds = LOAD_SECONDS as u64;
    let runs = three_arms("gRPC", ztrace, agent_args, dir.path(), LOAD_SECONDS, || {
        load(&seconds.to_string())
    })?;
    report_arms(
        &runs,
        ztrace,
        agent_args,
        &format!(
            "h2load {} -D {seconds} -d <SayHello message> {url} (grpc-go 1.33 server, unary calls)",
            GRPC_H2LOAD_ARGS
                .iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    print_programs(&mut last_programs(&runs), "gRPC", LOAD_SECONDS);
    Ok(())
}

/// Requests per second of one h2load run; fails unless every request succeeded.
fn h2load_rps(args: &[String]) -> Result<f64> {
    let out = Command::new("h2load")
        .args(args)
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "h2load failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains(" 0 failed, 0 errored"),
        "h2load: some requests failed: {}",
        tail(&text, 12)
    );
    h2load_requests_per_sec(&text)
        .with_context(|| format!("no req/s in h2load's output: {}", tail(&text, 12)))
}

/// `finished in 10.00s, 12345.67 req/s, 1.23MB/s` → 12345.67.
fn h2load_requests_per_sec(output: &str) -> Option<f64> {
    let line = output.lines().find(|l| l.starts_with("finished in"))?;
    let (_, after) = line.split_once(", ")?;
    after.split_once(" req/s")?.0.trim().parse().ok()
}

/// About how long one untraced `redis-benchmark` run of [`REDIS_BENCHMARK_ARGS`] takes.
const REDIS_SECONDS: f64 = 10.0;

/// Commands per second of one `redis-benchmark --csv` run: the mean over its tests.
fn redis_rps(redis: &RedisServer, args: &[&str]) -> Result<f64> {
    let run = redis.benchmark(args);
    ensure!(
        run.success,
        "redis-benchmark failed: {}{}",
        run.stdout,
        run.stderr
    );
    let rates: Vec<f64> = run
        .stdout
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    ensure!(
        !rates.is_empty(),
        "no rates in redis-benchmark's output: {}",
        run.stdout
    );
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// The example system under wrk: short runs, each request is 13 spans.
const EXAMPLE_WRK_ARGS: &[&str] = &["-t2", "-c16", "-d5s"];
const EXAMPLE_LOAD_SECONDS: f64 = 5.0;

/// The Go example system (PostgreSQL, users, inventory, orders) under wrk, alternating without
/// and with the agent, which traces the services and PostgreSQL only.
fn example_bench(ztrace: &Path, agent_args: &[String]) -> Result<()> {
    use crate::demo;
    apt_install(demo::PACKAGES)?;
    let dir = TempDir::new("bench-example");
    let pg_port = free_port();
    let _pg = demo::start_postgres(dir.path(), pg_port)?;
    let root = util::repo_root();
    demo::load_databases(&root, pg_port)?;
    let bin = demo::build_go(&root, dir.path())?;
    let mut services = Vec::new();
    let mut urls: Vec<(&str, String)> = Vec::new();
    for (name, _) in demo::SERVICES {
        let port = free_port();
        let mut cmd = Command::new(bin.join(name));
        cmd.env("PORT", port.to_string())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg_port.to_string())
            .env("PGUSER", "postgres")
            .stdout(Stdio::null());
        for (callee, url) in &urls {
            cmd.env(
                if *callee == "users" {
                    "USERS_URL"
                } else {
                    "INVENTORY_URL"
                },
                url,
            );
        }
        services.push(demo::Running::spawn(name, &mut cmd)?);
        demo::wait_listening(name, port)?;
        urls.push((name, format!("http://127.0.0.1:{port}")));
    }
    let url = format!(
        "{}/orders/1",
        urls.last().map(|(_, u)| u.as_str()).unwrap_or_default()
    );
    let mut args = agent_args.to_vec();
    for exe in ["postgres", "orders", "users", "inventory"] {
        args.extend(["--exe".to_owned(), exe.to_owned()]);
    }
    say!("the Go example: orders at {url}; warming up...");
    wrk(&url, &["-t2", "-c16", "-d2s"])?;
    let runs = three_arms(
        "example",
        ztrace,
        &args,
        dir.path(),
        EXAMPLE_LOAD_SECONDS,
        || wrk(&url, EXAMPLE_WRK_ARGS),
    )?;
    drop(services);
    report_arms(
        &runs,
        ztrace,
        &args,
        &format!(
            "wrk {} {url} (the Go example: 13 spans per request)",
            EXAMPLE_WRK_ARGS.join(" ")
        ),
    );
    let mut programs = last_programs(&runs);
    for (i, r) in runs.iter().enumerate() {
        let Some(agent) = r.run.agent.as_ref().filter(|_| r.arm == arms::Arm::On) else {
            continue;
        };
        let window = agent
            .stats
            .as_ref()
            .map_or(0, |s| counter(s, "link_window_peak"));
        let rss = agent
            .peak_rss_kib
            .map_or("?".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0));
        println!(
            "run {}: peak RSS {rss} with up to {window} inputs in the hold-back window",
            i + 1
        );
    }
    print_programs(&mut programs, "example", EXAMPLE_LOAD_SECONDS);
    window_memory_bench()
}

/// The hold-back window at its bound (65,536 inputs, far more than the example fills):
/// `hold_back_window_memory` in `agent/src/trace/tests.rs`.
fn window_memory_bench() -> Result<()> {
    say!("the hold-back window at its bound...");
    ignored_lib_test("trace::tests::hold_back_window_memory")
        .context("the hold-back window benchmark failed")
}

const PGBENCH_ARGS: &[&str] = &["-M", "prepared", "-S", "-c", "4", "-j", "2", "-T", "10"];
const PGBENCH_SECONDS: f64 = 10.0;

/// Transactions per second of one pgbench run.
fn tps(pg: &PgServer, args: &[&str]) -> Result<f64> {
    let run = pg.pgbench(args);
    ensure!(run.success, "pgbench failed: {}{}", run.stdout, run.stderr);
    run.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no `tps = ` line in pgbench's output: {}", run.stdout))
}

/// nginx serving [`PAGE`], tuned for load, over plain HTTP and, with `certs`, HTTPS.
fn bench_nginx(certs: Option<&Certs>) -> Nginx {
    Nginx::start(
        &[PAGE],
        &nginx::Config {
            http: true,
            tls: certs.map(|c| (c, None)),
            load: true,
            http2: false,
        },
    )
}

/// The trace store: insert throughput (spans/s) and list / trace / services query times.
fn store_bench() -> Result<()> {
    say!("the trace store: inserts and queries with 100,000 traces stored...");
    ignored_lib_test("sinks::store::tests::bench_insert_and_list")
        .context("the store benchmark failed")
}

/// The PostgreSQL parser and span builder alone, on one core, from a recorded `pgbench -M
/// prepared` session: spans per second.
fn parser_bench() -> Result<()> {
    say!("the PostgreSQL parser on one core, from a recorded pgbench -M prepared session...");
    ignored_lib_test("protocols::postgres::tests::postgres_throughput")
        .context("the parser benchmark failed")
}

/// Runs one `#[ignore]`d benchmark test of the agent's library, in release mode, showing its output.
fn ignored_lib_test(name: &str) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.current_dir(util::repo_root()).args([
        "test",
        "--release",
        "-p",
        "ztrace",
        "--lib",
        name,
        "--",
        "--ignored",
        "--nocapture",
    ]);
    util::run(&mut cmd)
}

/// HTTPS: the same wrk load over TLS (nginx and wrk both use the shared libssl, so both are
/// traced through the OpenSSL uprobes), alternating without and with the agent; then the kernel's
/// own run time of each of the agent's programs over the last traced run
/// (`kernel.bpf_stats_enabled`, read back with `bpftool prog show`).
fn https_bench(ztrace: &Path, agent_args: &[String], dir: &Path, tls_port: u16) -> Result<()> {
    let url = format!("https://127.0.0.1:{tls_port}/index.html");
    say!("HTTPS: nginx serving {url}");
    wrk(&url, &["-t2", "-c32", "-d2s"])?;
    let runs = three_arms("HTTPS", ztrace, agent_args, dir, LOAD_SECONDS, || {
        wrk(&url, WRK_ARGS)
    })?;
    report_arms(
        &runs,
        ztrace,
        agent_args,
        &format!(
            "wrk {} {url} (nginx, 1 worker, static page over TLS, access_log off)",
            WRK_ARGS.join(" ")
        ),
    );
    print_programs(&mut last_programs(&runs), "HTTPS", LOAD_SECONDS);
    Ok(())
}

/// Turns on the kernel's per-program run-time statistics; what to restore afterwards, `None`
/// when they could not be turned on.
fn bpf_stats_on() -> Option<String> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let were = std::fs::read_to_string(STATS).unwrap_or_default();
    if std::fs::write(STATS, "1").is_err() {
        say!("warning: could not enable {STATS}: no per-program run times");
        return None;
    }
    Some(were.trim().to_owned())
}

fn bpf_stats_restore(were: Option<String>) {
    if let Some(were) = were.filter(|w| w != "1") {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", were);
    }
}

/// The kernel's run time per program over one traced run of `seconds`.
fn print_programs(programs: &mut [ProgramTime], what: &str, seconds: f64) {
    if programs.is_empty() {
        return;
    }
    println!("kernel run time per program over the last {what} run with ztrace (bpftool prog show, bpf_stats_enabled):");
    println!(
        "{:<22} {:>12} {:>10} {:>16}",
        "program", "runs", "ns/run", "CPU ms per s"
    );
    programs.sort_by_key(|p| std::cmp::Reverse(p.ns));
    let mut total = 0u64;
    for p in programs.iter() {
        total += p.ns;
        if p.runs == 0 {
            continue;
        }
        println!(
            "{:<22} {:>12} {:>10.0} {:>16.1}",
            p.name,
            p.runs,
            p.ns as f64 / p.runs as f64,
            p.ns as f64 / 1e6 / seconds
        );
    }
    println!("all programs: {:.1} CPU ms per second of load (uprobe traps and context switches not included)", total as f64 / 1e6 / seconds);
}

/// Ids of the eBPF programs a process holds (its fds' `prog_id:` in /proc/PID/fdinfo).
fn agent_prog_ids(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// (id, name, run_cnt, run_time_ns) of the given programs, from `bpftool prog show --json`.
fn prog_stats(ids: &[u64]) -> Vec<(u64, ProgramTime)> {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return Vec::new();
    };
    let Ok(Value::Array(progs)) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    progs
        .iter()
        .filter_map(|p| {
            let id = p.get("id")?.as_u64()?;
            ids.contains(&id).then(|| {
                let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
                let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                (
                    id,
                    ProgramTime {
                        name: text("name"),
                        kind: text("type"),
                        runs: n("run_cnt"),
                        ns: n("run_time_ns"),
                    },
                )
            })
        })
        .collect()
}

/// (name, runs, ns) per program between two snapshots.
fn prog_delta(before: &[(u64, ProgramTime)], after: &[(u64, ProgramTime)]) -> Vec<ProgramTime> {
    after
        .iter()
        .map(|(id, p)| {
            let (runs, ns) = before
                .iter()
                .find(|b| b.0 == *id)
                .map_or((0, 0), |b| (b.1.runs, b.1.ns));
            ProgramTime {
                runs: p.runs.saturating_sub(runs),
                ns: p.ns.saturating_sub(ns),
                ..p.clone()
            }
        })
        .collect()
}

/// Starts the agent, waits until it is ready, loads nginx, measures the agent, stops it.
fn traced_run(
    ztrace: &Path,
    agent_args: &[String],
    dir: &Path,
    load: impl FnOnce(u32) -> Result<f64>,
) -> Result<Run> {
    let stderr_path = dir.join("ztrace.stderr");
    let stderr = std::fs::File::create(&stderr_path)?;
    let mut agent = Guard(
        Command::new(ztrace)
            .args(agent_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("could not start {}", ztrace.display()))?,
    );
    let pid = agent.0.id();
    wait_for_line(
        &mut agent.0,
        &stderr_path,
        READY_LINE,
        Duration::from_secs(60),
    )?;

    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let requests_per_sec = load(pid)?;
    let load_seconds = started.elapsed().as_secs_f64().max(LOAD_SECONDS);
    let cpu = cpu_seconds(pid)? - cpu_before;
    let peak_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| vm_hwm_kib(&s));

    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = wait_timeout(&mut agent.0, Duration::from_secs(30))?;
    let stderr_text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    if !status.is_some_and(|s| s.success()) {
        say!(
            "warning: ztrace exited with {status:?}; its stderr ends with:\n{}",
            tail(&stderr_text, 20)
        );
    }
    let stats = stats_line(&stderr_text);
    if stats.is_none() {
        say!("warning: no `ztrace stats: {{...}}` line in ztrace's stderr");
    }
    Ok(Run {
        requests_per_sec,
        agent: Some(AgentCost {
            cpu_seconds_per_second: cpu / load_seconds,
            cpu_seconds: cpu,
            peak_rss_kib,
            stats,
        }),
    })
}

/// Events the agent handled: those it read from the ring buffer.
fn events_handled(stats: &Map<String, Value>) -> u64 {
    counter(stats, "events_read")
}

/// Events lost anywhere: every counter that says it dropped or lost something, or found a queue full.
fn events_dropped(stats: &Map<String, Value>) -> u64 {
    stats
        .iter()
        .filter(|(name, _)| {
            name.contains("dropped") || name.contains("lost") || name.ends_with("_full")
        })
        .filter_map(|(_, value)| value.as_u64())
        .sum()
}

fn counter(stats: &Map<String, Value>, name: &str) -> u64 {
    stats.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("ztrace (pid {pid}) is gone"))?;
    let ticks = cpu_ticks(&stat).context("unexpected /proc/PID/stat")?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / per_second)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command may hold spaces and ')'.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// VmHWM (peak resident set) of a /proc/PID/status, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        line.strip_prefix("VmHWM:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Runs wrk and returns its `Requests/sec:`.
fn wrk(url: &str, args: &[&str]) -> Result<f64> {
    let text = wrk_output(url, args)?;
    requests_per_sec(&text).with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// Runs wrk and returns what it printed; an error when it failed.
fn wrk_output(url: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("wrk")
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("could not run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

fn requests_per_sec(wrk_output: &str) -> Option<f64> {
    wrk_output.lines().find_map(|line| {
        line.trim()
            .strip_prefix("Requests/sec:")?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until a file (a child's redirected stderr) holds a line containing `needle`.
fn wait_for_line(child: &mut Child, path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(path) {
            let _ = file.read_to_string(&mut text);
        }
        if text.lines().any(|line| line.contains(needle)) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "ztrace exited ({status}) before `{needle}`; its stderr:\n{}",
                tail(&text, 40)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "ztrace printed no `{needle}` within {timeout:?}; its stderr:\n{}",
                tail(&text, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(None)
}

/// A child process killed (and reaped) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_ticks() {
        let stat = "4242 (my (weird) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 4 0 100 200000 300 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("procfs");
        assert!(cpu_ticks(&own).is_some());
    }

    #[test]
    fn vm_hwm() {
        assert_eq!(
            vm_hwm_kib("Name:\tztrace\nVmPeak:\t  100 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n"),
            Some(20480)
        );
        assert_eq!(vm_hwm_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn stats_line_is_found_among_logs() {
        let stderr = "INFO attached 12 programs\nztrace is ready\nztrace stats: {\"events_read\": 120, \"kernel_ringbuf_full\": 3, \"spans_dropped_queue_full\": 2, \"spans_created\": 40}\n";
        let stats = stats_line(stderr).expect("found");
        assert_eq!(events_handled(&stats), 120);
        assert_eq!(events_dropped(&stats), 5);
        assert!(stats_line("ztrace stats: not json\n").is_none());
        assert!(stats_line("").is_none());
    }

    #[test]
    fn h2load_output() {
        let out = "starting benchmark...\nfinished in 10.00s, 12345.67 req/s, 1.23MB/s\nrequests: 5 total";
        assert_eq!(h2load_requests_per_sec(out), Some(12345.67));
        assert_eq!(h2load_requests_per_sec("nothing"), None);
    }

    #[test]
    fn wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\nRequests/sec:  41234.56\nTransfer/sec:      9.60MB\n";
        assert_eq!(requests_per_sec(out), Some(41234.56));
        assert_eq!(requests_per_sec("nothing"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.9, 0.7, 0.8]), Some(0.8));
        assert_eq!(median(&[1.0, 0.5]), Some(0.75));
    }
}
